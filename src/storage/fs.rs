//! A local directory as the object store, for a single machine: each object a file, written under a temporary name and renamed into place when complete.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWriteExt};

use super::{ObjectInfo, StorageError, Stored, check_key};

/// Temporary files end with this, followed by a random suffix; listings skip them.
const PARTIAL: &str = ".partial-";

pub struct FsStore {
    root: PathBuf,
}

impl FsStore {
    pub fn open(root: PathBuf) -> Result<Self, StorageError> {
        std::fs::create_dir_all(&root)
            .map_err(|e| StorageError::permanent(format!("cannot create {}: {e}", root.display())))?;
        Ok(Self { root })
    }

    fn path(&self, key: &str) -> Result<PathBuf, StorageError> {
        check_key(key)?;
        Ok(self.root.join(key))
    }

    pub async fn put(&self, key: &str, bytes: &[u8]) -> Result<(), StorageError> {
        self.upload(key, &mut &bytes[..]).await.map(|_| ())
    }

    /// Writes a temporary file, then links it to `key` unless that exists (a link, unlike a
    /// rename, never replaces).
    pub async fn put_new(&self, key: &str, bytes: &[u8]) -> Result<bool, StorageError> {
        let path = self.path(key)?;
        let tmp = format!("{key}{PARTIAL}new-{:016x}", rand_suffix());
        self.upload(&tmp, &mut &bytes[..]).await?;
        let tmp_path = self.root.join(&tmp);
        let linked = tokio::fs::hard_link(&tmp_path, &path).await;
        let _ = tokio::fs::remove_file(&tmp_path).await;
        match linked {
            Ok(()) => {
                sync_dir(&path).await;
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(StorageError::transient(format!("linking {}: {e}", path.display()))),
        }
    }

    pub async fn upload(
        &self,
        key: &str,
        reader: &mut (impl AsyncRead + Unpin + Send),
    ) -> Result<Stored, StorageError> {
        let path = self.path(key)?;
        let io = |what: &str, e: std::io::Error| StorageError::transient(format!("{what} {}: {e}", path.display()));
        if let Some(dir) = path.parent() {
            tokio::fs::create_dir_all(dir).await.map_err(|e| io("creating the directory of", e))?;
        }
        let mut partial =
            Partial { path: PathBuf::from(format!("{}{PARTIAL}{:016x}", path.display(), rand_suffix())), armed: true };
        let mut file = tokio::fs::File::create(&partial.path).await.map_err(|e| io("creating", e))?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut buf = Vec::with_capacity(1 << 20);
        loop {
            buf.clear();
            let n = super::fill(reader, &mut buf, 1 << 20)
                .await
                .map_err(|e| StorageError::permanent(format!("reading the data for {}: {e}", path.display())))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf);
            size += n as u64;
            file.write_all(&buf).await.map_err(|e| io("writing", e))?;
        }
        file.sync_all().await.map_err(|e| io("syncing", e))?;
        drop(file);
        tokio::fs::rename(&partial.path, &path).await.map_err(|e| io("renaming into", e))?;
        partial.armed = false;
        sync_dir(&path).await;
        Ok(Stored { key: key.to_string(), size, sha256: hex::encode(hasher.finalize()) })
    }

    pub async fn get(&self, key: &str) -> Result<Option<Box<dyn AsyncRead + Unpin + Send>>, StorageError> {
        let path = self.path(key)?;
        match tokio::fs::File::open(&path).await {
            Ok(f) => Ok(Some(Box::new(f))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StorageError::transient(format!("reading {}: {e}", path.display()))),
        }
    }

    pub async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StorageError> {
        let root = self.root.clone();
        let prefix = prefix.to_string();
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            walk(&root, &prefix_dir(&root, &prefix), &mut |key, meta| {
                if key.starts_with(&prefix) && !key.contains(PARTIAL) {
                    out.push(ObjectInfo {
                        key,
                        size: meta.len(),
                        modified: meta.modified().map(DateTime::<Utc>::from).unwrap_or_default(),
                    });
                }
            })
            .map_err(|e| StorageError::transient(format!("listing {}: {e}", root.display())))?;
            Ok(out)
        })
        .await
        .map_err(|e| StorageError::permanent(format!("listing: {e}")))?
    }

    /// Deletes the file, then its directory if that is now empty (a pruned backup folder
    /// leaves no empty directory behind; a writer that races it recreates the directory).
    pub async fn delete(&self, key: &str) -> Result<(), StorageError> {
        let path = self.path(key)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(StorageError::transient(format!("deleting {}: {e}", path.display()))),
        }
        if let Some(dir) = path.parent().filter(|d| *d != self.root.as_path()) {
            // Fails, as it should, while the directory holds anything.
            let _ = tokio::fs::remove_dir(dir).await;
        }
        Ok(())
    }

    /// Temporary files older than `older_than` (left by killed workers).
    pub async fn abort_stale_uploads(&self, prefix: &str, older_than: Duration) -> Result<usize, StorageError> {
        let root = self.root.clone();
        let prefix = prefix.to_string();
        tokio::task::spawn_blocking(move || {
            let mut stale = Vec::new();
            walk(&root, &prefix_dir(&root, &prefix), &mut |key, meta| {
                let old = meta.modified().ok().and_then(|m| m.elapsed().ok()).is_some_and(|age| age > older_than);
                if key.starts_with(&prefix) && key.contains(PARTIAL) && old {
                    stale.push(root.join(&key));
                }
            })
            .map_err(|e| StorageError::transient(format!("listing {}: {e}", root.display())))?;
            let n = stale.len();
            for path in stale {
                let _ = std::fs::remove_file(path);
            }
            Ok(n)
        })
        .await
        .map_err(|e| StorageError::permanent(format!("listing: {e}")))?
    }
}

/// Removes a temporary file that was not renamed into place (an error, a dropped future).
struct Partial {
    path: PathBuf,
    armed: bool,
}

impl Drop for Partial {
    fn drop(&mut self) {
        if self.armed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Makes a rename or link into `path`'s directory durable.
async fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent()
        && let Ok(d) = tokio::fs::File::open(dir).await
    {
        let _ = d.sync_all().await;
    }
}

/// The directory under `root` that holds every key starting with `prefix`.
fn prefix_dir(root: &Path, prefix: &str) -> PathBuf {
    match prefix.rfind('/') {
        Some(i) => root.join(&prefix[..i]),
        None => root.to_path_buf(),
    }
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
    h.finish()
}

fn walk(root: &Path, dir: &Path, f: &mut impl FnMut(String, std::fs::Metadata)) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let meta = entry.metadata()?;
        let path = entry.path();
        if meta.is_dir() {
            walk(root, &path, f)?;
        } else if let Ok(rel) = path.strip_prefix(root) {
            f(rel.to_string_lossy().replace('\\', "/"), meta);
        }
    }
    Ok(())
}
