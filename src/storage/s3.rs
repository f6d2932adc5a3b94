//! S3 and S3-compatible servers through aws-sdk-s3: multipart uploads with a SHA-256 checksum per part that the server checks, aborted when they fail or are dropped.

use std::time::Duration;

use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart, ServerSideEncryption};
use base64::Engine as _;
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use tokio::io::AsyncRead;
use tokio::task::JoinSet;

use super::{ObjectInfo, StorageError, Stored, check_key, fill};
use crate::config::StorageConfig;

/// S3's smallest part (except the last).
pub const MIN_PART_SIZE: u64 = 5 * 1024 * 1024;

/// S3's most parts per upload.
const MAX_PARTS: i32 = 10_000;

/// While a multipart upload of `KEY` is open, the object `KEY.uploading` holds its upload
/// id, so that a later attempt can abort it even on servers that cannot list open uploads
/// (s3s-fs, some appliances). Listings leave these markers out.
const OPEN_MARKER: &str = ".uploading";

/// The size of part `number`: the configured size for the first 1,000 parts, then one
/// more multiple of it per 1,000 parts, so 10,000 parts of 8 MiB hold about 430 GiB (a
/// fixed size would stop at 78 GiB) while small and medium tenants never buffer more.
fn part_size_of(base: usize, number: i32) -> usize {
    base * (1 + (number.max(1) as usize - 1) / 1000)
}

pub struct S3Store {
    client: Client,
    bucket: String,
    /// Without a trailing slash; empty for none.
    prefix: String,
    sse: Option<ServerSideEncryption>,
    kms_key_id: Option<String>,
}

impl S3Store {
    pub async fn open(config: &StorageConfig, prefix: String) -> Result<Self, StorageError> {
        let bucket = config.bucket.clone().ok_or_else(|| StorageError::permanent("storage.bucket is not set"))?;
        let keys = config.access_key_id.as_deref().zip(config.secret_access_key.as_ref());
        let shared = crate::aws::sdk_config(config.region.as_deref(), keys).await;
        let mut builder = aws_sdk_s3::config::Builder::from(&shared);
        if shared.region().is_none() {
            // Servers other than AWS ignore the region, but the signer needs one.
            builder = builder.region(aws_config::Region::new(crate::aws::EMULATOR_REGION));
        }
        if let Some(endpoint) = &config.endpoint {
            builder = builder.endpoint_url(endpoint);
        }
        builder = builder.force_path_style(config.path_style.unwrap_or(config.endpoint.is_some()));
        let sse = config.sse.as_deref().map(ServerSideEncryption::from);
        Ok(Self {
            client: Client::from_conf(builder.build()),
            bucket,
            prefix,
            sse,
            kms_key_id: config.kms_key_id.clone(),
        })
    }

    fn full_key(&self, key: &str) -> Result<String, StorageError> {
        check_key(key)?;
        Ok(if self.prefix.is_empty() { key.to_string() } else { format!("{}/{key}", self.prefix) })
    }

    fn relative<'k>(&self, full: &'k str) -> &'k str {
        if self.prefix.is_empty() {
            full
        } else {
            full.strip_prefix(&self.prefix).map_or(full, |k| k.trim_start_matches('/'))
        }
    }

    pub async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), StorageError> {
        let full = self.full_key(key)?;
        let checksum = b64(&Sha256::digest(&bytes));
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(&full)
            .checksum_algorithm(ChecksumAlgorithm::Sha256)
            .checksum_sha256(checksum)
            .set_server_side_encryption(self.sse.clone())
            .set_ssekms_key_id(self.kms_key_id.clone())
            .body(ByteStream::from(bytes))
            .send()
            .await
            .map_err(|e| sdk_error(&format!("storing {full}"), e))?;
        Ok(())
    }

    /// Stores `bytes` at `key` unless an object is there already: `Ok(false)` then. The
    /// server decides (`If-None-Match: *`), so of two writers exactly one wins.
    pub async fn put_new(&self, key: &str, bytes: Vec<u8>) -> Result<bool, StorageError> {
        let full = self.full_key(key)?;
        let checksum = b64(&Sha256::digest(&bytes));
        let result = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(&full)
            .if_none_match("*")
            .checksum_algorithm(ChecksumAlgorithm::Sha256)
            .checksum_sha256(checksum)
            .set_server_side_encryption(self.sse.clone())
            .set_ssekms_key_id(self.kms_key_id.clone())
            .body(ByteStream::from(bytes))
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(e) if status_of(&e) == Some(412) => Ok(false),
            Err(e) => Err(sdk_error(&format!("storing {full}"), e)),
        }
    }

    pub async fn upload(
        &self,
        key: &str,
        reader: &mut (impl AsyncRead + Unpin + Send),
        part_size: usize,
        parts_in_flight: usize,
    ) -> Result<Stored, StorageError> {
        let full = self.full_key(key)?;
        let read_error = |e: std::io::Error| StorageError::permanent(format!("reading the data for {full}: {e}"));
        let mut whole = Sha256::new();
        let mut buf = Vec::new();
        let mut n = fill(reader, &mut buf, part_size).await.map_err(read_error)?;
        if n < part_size {
            // It fits in one part: one request.
            whole.update(&buf);
            self.put(key, buf).await?;
            return Ok(Stored { key: key.to_string(), size: n as u64, sha256: hex::encode(whole.finalize()) });
        }
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(&full)
            .checksum_algorithm(ChecksumAlgorithm::Sha256)
            .set_server_side_encryption(self.sse.clone())
            .set_ssekms_key_id(self.kms_key_id.clone())
            .send()
            .await
            .map_err(|e| sdk_error(&format!("starting the upload of {full}"), e))?;
        let upload_id =
            created.upload_id().ok_or_else(|| StorageError::transient("the server returned no upload id"))?.to_string();
        // From here on, any way out but completion aborts the upload (also a dropped future).
        let mut guard = AbortOnDrop {
            client: self.client.clone(),
            bucket: self.bucket.clone(),
            key: full.clone(),
            upload_id: Some(upload_id.clone()),
        };
        self.put_marker(&full, &upload_id).await?;
        let mut parts: JoinSet<Result<CompletedPart, StorageError>> = JoinSet::new();
        let outcome: Result<(Vec<CompletedPart>, u64), StorageError> = async {
            let mut done: Vec<CompletedPart> = Vec::new();
            let mut size = 0u64;
            let mut number = 0i32;
            while n > 0 {
                whole.update(&buf);
                size += n as u64;
                number += 1;
                while parts.len() >= parts_in_flight {
                    done.push(joined(parts.join_next().await)?);
                }
                let body = std::mem::take(&mut buf);
                let (client, bucket, key, id) =
                    (self.client.clone(), self.bucket.clone(), full.clone(), upload_id.clone());
                parts.spawn(async move { upload_part(client, bucket, key, id, number, body).await });
                n = fill(reader, &mut buf, part_size_of(part_size, number + 1)).await.map_err(read_error)?;
                if n > 0 && number >= MAX_PARTS {
                    return Err(StorageError::permanent(format!(
                        "{full} needs more than {MAX_PARTS} parts; raise storage.part_size"
                    )));
                }
            }
            while let Some(part) = parts.join_next().await {
                done.push(joined(Some(part))?);
            }
            Ok((done, size))
        }
        .await;
        let (mut done, size) = match outcome {
            Ok(v) => v,
            Err(e) => {
                // No part request may land after the abort.
                parts.shutdown().await;
                return Err(e);
            }
        };
        done.sort_by_key(|p| p.part_number());
        let completed = self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(&full)
            .upload_id(&upload_id)
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(done)).build())
            .send()
            .await;
        match completed {
            Ok(_) => {}
            // A retry of a completion whose answer was lost finds the upload gone: the object
            // is there if the first one worked.
            Err(e) if status_of(&e) == Some(404) => {
                let head = self.client.head_object().bucket(&self.bucket).key(&full).send().await;
                if !head.is_ok_and(|h| h.content_length() == Some(size as i64)) {
                    return Err(StorageError::transient(format!(
                        "completing the upload of {full}: the upload is gone and the object is not there"
                    )));
                }
            }
            Err(e) => return Err(sdk_error(&format!("completing the upload of {full}"), e)),
        }
        guard.upload_id = None;
        // A marker left behind (this delete failing) only costs a later sweep an abort that
        // finds nothing.
        let _ = self.client.delete_object().bucket(&self.bucket).key(format!("{full}{OPEN_MARKER}")).send().await;
        Ok(Stored { key: key.to_string(), size, sha256: hex::encode(whole.finalize()) })
    }

    async fn put_marker(&self, full: &str, upload_id: &str) -> Result<(), StorageError> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(format!("{full}{OPEN_MARKER}"))
            .body(ByteStream::from(upload_id.as_bytes().to_vec()))
            .send()
            .await
            .map_err(|e| sdk_error(&format!("recording the upload of {full}"), e))?;
        Ok(())
    }

    pub async fn get(&self, key: &str) -> Result<Option<Box<dyn AsyncRead + Unpin + Send>>, StorageError> {
        let full = self.full_key(key)?;
        match self.client.get_object().bucket(&self.bucket).key(&full).send().await {
            Ok(out) => Ok(Some(Box::new(out.body.into_async_read()))),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => Ok(None),
            Err(e) => Err(sdk_error(&format!("reading {full}"), e)),
        }
    }

    pub async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StorageError> {
        let full = if self.prefix.is_empty() { prefix.to_string() } else { format!("{}/{prefix}", self.prefix) };
        let mut out = Vec::new();
        let mut pages = self.client.list_objects_v2().bucket(&self.bucket).prefix(&full).into_paginator().send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| sdk_error(&format!("listing {full}"), e))?;
            for o in page.contents() {
                let Some(key) = o.key().filter(|k| !k.ends_with(OPEN_MARKER)) else { continue };
                out.push(ObjectInfo {
                    key: self.relative(key).to_string(),
                    size: o.size().unwrap_or(0).max(0) as u64,
                    modified: o.last_modified().map_or(DateTime::<Utc>::UNIX_EPOCH, chrono_time),
                });
            }
        }
        Ok(out)
    }

    pub async fn delete(&self, key: &str) -> Result<(), StorageError> {
        let full = self.full_key(key)?;
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(&full)
            .send()
            .await
            .map_err(|e| sdk_error(&format!("deleting {full}"), e))?;
        Ok(())
    }

    pub async fn abort_stale_uploads(&self, prefix: &str, older_than: Duration) -> Result<usize, StorageError> {
        let full = if self.prefix.is_empty() { prefix.to_string() } else { format!("{}/{prefix}", self.prefix) };
        let cutoff = Utc::now() - chrono::Duration::from_std(older_than).unwrap_or_default();
        let mut aborted = 0;
        // Uploads recorded by their markers.
        let mut markers = Vec::new();
        let mut pages = self.client.list_objects_v2().bucket(&self.bucket).prefix(&full).into_paginator().send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| sdk_error(&format!("listing {full}"), e))?;
            for o in page.contents() {
                if let Some(key) = o.key().filter(|k| k.ends_with(OPEN_MARKER))
                    && o.last_modified().map(chrono_time).is_none_or(|t| t <= cutoff)
                {
                    markers.push(key.to_string());
                }
            }
        }
        for marker in markers {
            let key = marker.trim_end_matches(OPEN_MARKER);
            let id = match self.client.get_object().bucket(&self.bucket).key(&marker).send().await {
                Ok(out) => out.body.collect().await.map(|b| String::from_utf8_lossy(&b.into_bytes()).into_owned()).ok(),
                Err(_) => None,
            };
            if let Some(id) = id.filter(|id| !id.is_empty()) {
                match self.client.abort_multipart_upload().bucket(&self.bucket).key(key).upload_id(&id).send().await {
                    Ok(_) => aborted += 1,
                    // Completed or aborted already (s3s-fs answers 403 for an id it no longer
                    // knows): only the marker was left.
                    Err(e) if matches!(status_of(&e), Some(404 | 403)) => {}
                    Err(e) => return Err(sdk_error(&format!("aborting the upload of {key}"), e)),
                }
            }
            self.client
                .delete_object()
                .bucket(&self.bucket)
                .key(&marker)
                .send()
                .await
                .map_err(|e| sdk_error(&format!("deleting {marker}"), e))?;
        }
        // Uploads without a marker (their worker died between the two requests), where the
        // server can list them.
        let (mut key_marker, mut id_marker) = (None::<String>, None::<String>);
        loop {
            let listed = self
                .client
                .list_multipart_uploads()
                .bucket(&self.bucket)
                .prefix(&full)
                .set_key_marker(key_marker.clone())
                .set_upload_id_marker(id_marker.clone())
                .send()
                .await;
            let page = match listed {
                Ok(page) => page,
                Err(e) if status_of(&e) == Some(501) => break,
                Err(e) => return Err(sdk_error(&format!("listing the open uploads under {full}"), e)),
            };
            for u in page.uploads() {
                let (Some(key), Some(id)) = (u.key(), u.upload_id()) else { continue };
                if u.initiated().map(chrono_time).is_some_and(|t| t <= cutoff) {
                    match self.client.abort_multipart_upload().bucket(&self.bucket).key(key).upload_id(id).send().await
                    {
                        Ok(_) => aborted += 1,
                        Err(e) if status_of(&e) == Some(404) => {}
                        Err(e) => return Err(sdk_error(&format!("aborting the upload of {key}"), e)),
                    }
                }
            }
            if !page.is_truncated().unwrap_or(false) {
                break;
            }
            key_marker = page.next_key_marker().map(str::to_string);
            id_marker = page.next_upload_id_marker().map(str::to_string);
            if key_marker.is_none() && id_marker.is_none() {
                break;
            }
        }
        Ok(aborted)
    }
}

fn status_of<E>(e: &SdkError<E, HttpResponse>) -> Option<u16> {
    e.raw_response().map(|r| r.status().as_u16())
}

async fn upload_part(
    client: Client,
    bucket: String,
    key: String,
    upload_id: String,
    number: i32,
    body: Vec<u8>,
) -> Result<CompletedPart, StorageError> {
    let checksum = b64(&Sha256::digest(&body));
    let out = client
        .upload_part()
        .bucket(bucket)
        .key(&key)
        .upload_id(upload_id)
        .part_number(number)
        .checksum_algorithm(ChecksumAlgorithm::Sha256)
        .checksum_sha256(&checksum)
        .body(ByteStream::from(body))
        .send()
        .await
        .map_err(|e| sdk_error(&format!("uploading part {number} of {key}"), e))?;
    Ok(CompletedPart::builder()
        .part_number(number)
        .set_e_tag(out.e_tag().map(str::to_string))
        .checksum_sha256(checksum)
        .build())
}

fn joined(
    part: Option<Result<Result<CompletedPart, StorageError>, tokio::task::JoinError>>,
) -> Result<CompletedPart, StorageError> {
    match part {
        Some(Ok(result)) => result,
        Some(Err(e)) => Err(StorageError::permanent(format!("a part upload panicked or was cancelled: {e}"))),
        None => Err(StorageError::permanent("no part upload to wait for")),
    }
}

/// Aborts a multipart upload that was neither completed nor aborted (an error or a dropped
/// future): the server drops its parts, and no partial object is ever presented.
struct AbortOnDrop {
    client: Client,
    bucket: String,
    key: String,
    upload_id: Option<String>,
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        let Some(upload_id) = self.upload_id.take() else { return };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let (client, bucket, key) = (self.client.clone(), self.bucket.clone(), self.key.clone());
        runtime.spawn(async move {
            match client.abort_multipart_upload().bucket(&bucket).key(&key).upload_id(upload_id).send().await {
                Ok(_) => {
                    let _ = client.delete_object().bucket(&bucket).key(format!("{key}{OPEN_MARKER}")).send().await;
                }
                // The marker stays: the tenant's next attempt aborts it.
                Err(e) => tracing::warn!(key, error = %DisplayErrorContext(&e), "could not abort an unfinished upload"),
            }
        });
    }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn chrono_time(t: &aws_sdk_s3::primitives::DateTime) -> DateTime<Utc> {
    DateTime::from_timestamp(t.secs(), t.subsec_nanos()).unwrap_or_default()
}

/// An SDK error as a message an operator can act on, with whether a retry can help:
/// throttling, server errors and network failures can; a refusal (403, a missing bucket,
/// a bad checksum) cannot.
fn sdk_error<E>(what: &str, e: SdkError<E, HttpResponse>) -> StorageError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let transient = crate::aws::is_transient(&e, &[]);
    let detail = crate::aws::detail(&e);
    StorageError { message: format!("{what}: {detail}"), transient }
}
