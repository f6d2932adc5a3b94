//! The object store that holds backups: S3 (or any S3-compatible server) through aws-sdk-s3, or a local directory; uploads stream with their SHA-256 computed on the fly.
//!
//! Keys given to the store are relative to the configured `prefix`. An upload never
//! presents a partial object as complete: S3 uploads are multipart (a failed or dropped one
//! is aborted) and local files are written under a temporary name and renamed at the end.

pub mod backups;
mod fs;
mod s3;

use std::time::Duration;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::config::{StorageConfig, StorageKind};

/// Part size of multipart uploads unless configured (S3's minimum is 5 MiB).
pub const DEFAULT_PART_SIZE: u64 = 8 * 1024 * 1024;
/// The most [`ObjectStore::get_bytes`] reads: manifests and verdicts are far smaller.
pub const SMALL_OBJECT_LIMIT: u64 = 16 * 1024 * 1024;
/// Parts uploaded at once unless configured: memory per upload is at most
/// `(parts_in_flight + 1) × part_size` up to 1,000 parts (8 GiB at the default size);
/// beyond, parts grow by one `part_size` per 1,000 (see `s3::part_size_of`).
pub const DEFAULT_PARTS_IN_FLIGHT: usize = 3;

#[derive(Debug, thiserror::Error)]
#[error("object store: {message}")]
pub struct StorageError {
    pub message: String,
    /// Whether trying again can help (a network error, a 5xx, a throttled request).
    pub transient: bool,
}

impl StorageError {
    pub fn permanent(message: impl Into<String>) -> Self {
        Self { message: message.into(), transient: false }
    }

    pub fn transient(message: impl Into<String>) -> Self {
        Self { message: message.into(), transient: true }
    }
}

/// What an upload stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub key: String,
    pub size: u64,
    /// Hex SHA-256 of the whole object.
    pub sha256: String,
}

/// One object of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Relative to the store's prefix, like the keys given to it.
    pub key: String,
    pub size: u64,
    pub modified: DateTime<Utc>,
}

enum Backend {
    S3(s3::S3Store),
    Fs(fs::FsStore),
}

/// An object store, as configured in `[storage]`.
pub struct ObjectStore {
    backend: Backend,
    part_size: u64,
    parts_in_flight: usize,
}

impl std::fmt::Debug for ObjectStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.backend {
            Backend::S3(_) => "ObjectStore(s3)",
            Backend::Fs(_) => "ObjectStore(fs)",
        })
    }
}

impl ObjectStore {
    /// The store of a `[storage]` section; relative `path`s are resolved by the caller.
    pub async fn open(config: &StorageConfig) -> Result<Self, StorageError> {
        let prefix = config.prefix.trim_matches('/').to_string();
        let backend = match config.kind {
            StorageKind::S3 => Backend::S3(s3::S3Store::open(config, prefix).await?),
            StorageKind::Fs => {
                let root = config.path.clone().ok_or_else(|| StorageError::permanent("storage.path is not set"))?;
                Backend::Fs(fs::FsStore::open(root.join(&prefix))?)
            }
        };
        Ok(Self {
            backend,
            part_size: config.part_size.map_or(DEFAULT_PART_SIZE, |s| s.0).max(s3::MIN_PART_SIZE),
            parts_in_flight: config.parts_in_flight.map_or(DEFAULT_PARTS_IN_FLIGHT, |n| n.max(1) as usize),
        })
    }

    /// The store of a loaded configuration's `[storage]` (a relative `path` is relative to
    /// the config file), or `None` when it has none.
    pub async fn open_loaded(loaded: &crate::config::LoadedConfig) -> Option<Result<Self, StorageError>> {
        let mut storage = loaded.config.storage.clone()?;
        storage.path = storage.path.as_ref().map(|p| loaded.resolve_path(p));
        Some(Self::open(&storage).await)
    }

    /// Streams `reader` to `key` and returns its size and SHA-256. The object appears only
    /// when the whole stream was stored; an error, or dropping the future, leaves nothing
    /// behind (the multipart upload is aborted, the temporary file removed).
    pub async fn upload(
        &self,
        key: &str,
        reader: &mut (impl AsyncRead + Unpin + Send),
    ) -> Result<Stored, StorageError> {
        match &self.backend {
            Backend::S3(s) => s.upload(key, reader, self.part_size as usize, self.parts_in_flight).await,
            Backend::Fs(f) => f.upload(key, reader).await,
        }
    }

    /// Stores a small object (a manifest, a verdict) in one request.
    pub async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<Stored, StorageError> {
        let stored =
            Stored { key: key.to_string(), size: bytes.len() as u64, sha256: hex::encode(Sha256::digest(&bytes)) };
        match &self.backend {
            Backend::S3(s) => s.put(key, bytes).await?,
            Backend::Fs(f) => f.put(key, &bytes).await?,
        }
        Ok(stored)
    }

    /// Stores a small object unless one exists at `key` already (`Ok(false)`): of two
    /// writers racing for a key, exactly one wins. Commit points (manifests) use this.
    pub async fn put_new(&self, key: &str, bytes: Vec<u8>) -> Result<bool, StorageError> {
        match &self.backend {
            Backend::S3(s) => s.put_new(key, bytes).await,
            Backend::Fs(f) => f.put_new(key, &bytes).await,
        }
    }

    /// A small object's bytes (at most [`SMALL_OBJECT_LIMIT`]), or `None` when there is no
    /// such object.
    pub async fn get_bytes(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        let Some(reader) = self.get(key).await? else { return Ok(None) };
        let mut out = Vec::new();
        reader
            .take(SMALL_OBJECT_LIMIT + 1)
            .read_to_end(&mut out)
            .await
            .map_err(|e| StorageError::transient(format!("reading {key}: {e}")))?;
        if out.len() as u64 > SMALL_OBJECT_LIMIT {
            return Err(StorageError::permanent(format!("{key} is larger than {SMALL_OBJECT_LIMIT} bytes")));
        }
        Ok(Some(out))
    }

    /// A stream of an object's bytes, or `None` when there is no such object.
    pub async fn get(&self, key: &str) -> Result<Option<Box<dyn AsyncRead + Unpin + Send>>, StorageError> {
        match &self.backend {
            Backend::S3(s) => s.get(key).await,
            Backend::Fs(f) => f.get(key).await,
        }
    }

    /// Every object under `prefix` (relative to the store's prefix), sorted by key.
    pub async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StorageError> {
        let mut out = match &self.backend {
            Backend::S3(s) => s.list(prefix).await?,
            Backend::Fs(f) => f.list(prefix).await?,
        };
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    /// Deletes an object; deleting one that does not exist is not an error.
    pub async fn delete(&self, key: &str) -> Result<(), StorageError> {
        match &self.backend {
            Backend::S3(s) => s.delete(key).await,
            Backend::Fs(f) => f.delete(key).await,
        }
    }

    /// Aborts multipart uploads under `prefix` started longer than `older_than` ago (left by
    /// killed workers); returns how many. Temporary files of the local store likewise.
    pub async fn abort_stale_uploads(&self, prefix: &str, older_than: Duration) -> Result<usize, StorageError> {
        match &self.backend {
            Backend::S3(s) => s.abort_stale_uploads(prefix, older_than).await,
            Backend::Fs(f) => f.abort_stale_uploads(prefix, older_than).await,
        }
    }
}

/// Reads until `buf` is full or the stream ends; returns how many bytes it holds.
async fn fill(reader: &mut (impl AsyncRead + Unpin), buf: &mut Vec<u8>, size: usize) -> std::io::Result<usize> {
    buf.clear();
    buf.reserve_exact(size);
    while buf.len() < size {
        let n = (&mut *reader).take((size - buf.len()) as u64).read_buf(buf).await?;
        if n == 0 {
            break;
        }
    }
    Ok(buf.len())
}

/// Rejects keys that could leave the prefix (`..`, absolute, empty segments).
fn check_key(key: &str) -> Result<(), StorageError> {
    if key.is_empty() || key.starts_with('/') || key.split('/').any(|s| s.is_empty() || s == "." || s == "..") {
        return Err(StorageError::permanent(format!("invalid object key {key:?}")));
    }
    Ok(())
}
