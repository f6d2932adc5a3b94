//! The fleet reader: one read per target (migration histories, schema fingerprints, maintenance statistics) for many targets, one connection per database, bounded per host.
//!
//! `plan`, `run`'s fast path, `drift` and the maintenance steps all need "the same query for
//! every tenant schema of a fleet". Tenants are grouped per (host, database); each database
//! is read over one connection with a reader that takes all its schemas at once (a few
//! queries, not one per schema), at most `per_host` databases of a host at a time. Errors are
//! per target, so one unreachable database does not hide the rest of the fleet.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use sqlx::postgres::PgConnection;
use tokio::sync::Semaphore;

use super::postgres;
use crate::catalog::HostSpec;
use crate::steps::StepError;

/// How long to wait for a connection before calling a database unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// `(host, database, schema)`.
pub type TargetKey = (String, String, String);

/// Why a target could not be read: `unreachable` is true when the database could not be
/// reached right now (exit status 3 at the command line), as opposed to one that is there
/// but wrong (missing, no such schema, no permission).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadError {
    pub unreachable: bool,
    pub message: String,
}

/// Reads every target of `groups` ((host, database) -> schemas) with `read`, which gets one
/// connection to a database and all its schemas and returns a value per schema it found.
/// `what` names what is read, for messages ("the migration history"). A schema `read` does
/// not return is reported as missing.
pub async fn read_targets<T, R>(
    hosts: &BTreeMap<String, HostSpec>,
    groups: BTreeMap<(String, String), BTreeSet<String>>,
    per_host: usize,
    what: &str,
    read: R,
) -> BTreeMap<TargetKey, Result<T, ReadError>>
where
    T: Clone,
    R: AsyncFn(&mut PgConnection, &[String]) -> Result<BTreeMap<String, T>, sqlx::Error>,
{
    let per_host = per_host.max(1);
    let semaphores: BTreeMap<&str, Arc<Semaphore>> =
        hosts.keys().map(|h| (h.as_str(), Arc::new(Semaphore::new(per_host)))).collect();
    let total = per_host * semaphores.len().max(1);
    let read = &read;
    let results = futures::stream::iter(groups)
        .map(|((host, database), schemas)| {
            let semaphore = semaphores.get(host.as_str()).cloned();
            let url = hosts.get(&host).map(|h| h.url.with_database(&database));
            async move {
                let schemas: Vec<String> = schemas.into_iter().collect();
                let result = match (semaphore, url) {
                    (Some(semaphore), Some(url)) => {
                        let _permit = semaphore.acquire().await.expect("semaphore is never closed");
                        read_database(&url, &host, &database, &schemas, what, read).await
                    }
                    _ => Err(ReadError { unreachable: false, message: format!("unknown host {host:?}") }),
                };
                (host, database, schemas, result)
            }
        })
        .buffer_unordered(total)
        .collect::<Vec<_>>()
        .await;
    let mut out = BTreeMap::new();
    for (host, database, schemas, result) in results {
        let mut found = match result {
            Ok(found) => found,
            Err(e) => {
                for schema in schemas {
                    out.insert((host.clone(), database.clone(), schema), Err(e.clone()));
                }
                continue;
            }
        };
        for schema in schemas {
            let entry = found.remove(&schema).ok_or_else(|| ReadError {
                unreachable: false,
                message: format!("schema {schema:?} does not exist in database {database:?} on host {host}"),
            });
            out.insert((host.clone(), database.clone(), schema), entry);
        }
    }
    out
}

async fn read_database<T, R>(
    url: &crate::secret::SecretUrl,
    host: &str,
    database: &str,
    schemas: &[String],
    what: &str,
    read: &R,
) -> Result<BTreeMap<String, T>, ReadError>
where
    R: AsyncFn(&mut PgConnection, &[String]) -> Result<BTreeMap<String, T>, sqlx::Error>,
{
    let connect_error = |e: &sqlx::Error| match e.as_database_error().and_then(|d| d.code()) {
        Some(code) if code == "3D000" => {
            ReadError { unreachable: false, message: format!("database {database:?} does not exist on host {host}") }
        }
        _ => ReadError {
            unreachable: StepError::from_sqlx("", e).is_transient(),
            message: format!("cannot connect to database {database:?} on host {host} ({}): {e}", url.server()),
        },
    };
    let mut conn = match tokio::time::timeout(CONNECT_TIMEOUT, postgres::connect(url)).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => return Err(connect_error(&e)),
        Err(_) => {
            return Err(ReadError {
                unreachable: true,
                message: format!(
                    "cannot connect to database {database:?} on host {host} ({}): no answer within {}s",
                    url.server(),
                    CONNECT_TIMEOUT.as_secs()
                ),
            });
        }
    };
    let result = read(&mut conn, schemas).await.map_err(|e| ReadError {
        unreachable: StepError::from_sqlx("", &e).is_transient(),
        message: format!("cannot read {what} of database {database:?} on host {host}: {e}"),
    });
    postgres::close(conn).await;
    result
}
