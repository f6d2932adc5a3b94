//! The `backup` step: a tenant's database or schema dumped with `pg_dump --format=custom` from an exported snapshot, streamed into the object store, with per-table row counts from that same snapshot in a manifest written last.
//!
//! Layout: `{service}/{tenant}/{stamp}_{run}/` under the store's prefix, where `stamp` is the
//! UTC time of the run (its id starts with it) and `run` the run whose receipts the step uses
//! (a retry's root run), so every attempt of a run writes to the same folder. In it:
//! `dump-{attempt}.pgdump` (each attempt has its own name, so a worker that lost its lease
//! can never overwrite the dump the new owner's manifest describes) and `manifest.json`,
//! which names its dump. The manifest is the commit point: written last, behind the fence;
//! a folder without one is not a backup, and a run's second attempt after it exists does
//! nothing. Dumps that no manifest names (a killed attempt) are deleted by the attempt that
//! writes the manifest.

use std::time::Instant;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::Row;

use super::define::{Findings, PlanEnv, Step};
use super::{StepContext, StepError};
use crate::catalog::{Isolation, Placement};
use crate::engine::postgres::quote_ident;
use crate::storage::{ObjectStore, StorageError};
use crate::workflow::plan::StepAction;

pub struct Backup;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Options {
    /// `pg_dump` compression level, 0-9 (default: pg_dump's, gzip level 6 for the custom
    /// format).
    pub compression: Option<u32>,
}

/// The manifest's name in a backup folder.
pub const MANIFEST: &str = "manifest.json";

/// What a backup holds, stored as `manifest.json` beside the dump. Restore and
/// verification trust nothing else.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub format: u32,
    pub tenant: String,
    pub service: String,
    pub engine: String,
    pub isolation: String,
    /// The configured host's name (never its URL), database and schema backed up.
    pub host: String,
    pub database: String,
    pub schema: String,
    /// The newest applied migration of the target's history, if it has one.
    pub schema_version: Option<String>,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub dump: DumpInfo,
    /// Rows per table, counted in the snapshot the dump was taken from.
    pub tables: Vec<TableRows>,
    pub tool_version: String,
    pub server_version: String,
    pub run: String,
    /// The run whose folder this is (a retry's root run).
    pub receipt_run: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DumpInfo {
    /// Relative to the store's prefix.
    pub key: String,
    /// `pg_dump_custom`: restore with `pg_restore`.
    pub format: String,
    pub compression: Option<u32>,
    pub size: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TableRows {
    pub schema: String,
    pub table: String,
    pub rows: i64,
}

impl Step for Backup {
    type Options = Options;

    fn check(options: &Options, out: &mut Findings) {
        if let Some(level) = options.compression
            && level > 9
        {
            out.push(("compression".into(), format!("compression must be 0-9, not {level}")));
        }
    }

    async fn plan(_options: &Options, targets: &[&Placement], env: PlanEnv<'_>) -> Vec<StepAction> {
        let storage = env.config.config.storage.is_some();
        targets
            .iter()
            .map(|p| match p.isolation {
                _ if !storage => StepAction::Blocked { reason: "backup needs [storage] in the config".to_string() },
                Isolation::Row => {
                    StepAction::Blocked { reason: "backup of row isolation tenants is not built yet".to_string() }
                }
                _ => StepAction::Run,
            })
            .collect()
    }

    async fn run(ctx: &StepContext<'_>, options: &Options) -> Result<serde_json::Value, StepError> {
        run(ctx, options).await
    }
}

/// The folder of the run's backup of this tenant's target.
pub fn folder(service: &str, tenant: &str, receipt_run: &str) -> String {
    format!("{service}/{tenant}/{}_{receipt_run}", run_stamp(receipt_run))
}

/// `20261124T230501Z` from a run id `20261124-230501-3fa9c1` (ids start with their UTC
/// creation time); the id itself when it does not.
fn run_stamp(run: &str) -> String {
    match (run.get(..8), run.get(9..15)) {
        (Some(date), Some(time)) if date.bytes().chain(time.bytes()).all(|b| b.is_ascii_digit()) => {
            format!("{date}T{time}Z")
        }
        _ => run.to_string(),
    }
}

fn store_error(e: StorageError) -> StepError {
    if e.transient { StepError::transient(e.to_string()) } else { StepError::permanent(e.to_string()) }
}

async fn run(ctx: &StepContext<'_>, options: &Options) -> Result<serde_json::Value, StepError> {
    let store = ctx.objects.ok_or_else(|| StepError::permanent("backup needs [storage] in the config"))?;
    let p = ctx.placement;
    if p.isolation == Isolation::Row {
        return Err(StepError::permanent("backup of row isolation tenants is not built yet"));
    }
    let folder = folder(&p.service, ctx.tenant, ctx.receipt_run());
    let manifest_key = format!("{folder}/{MANIFEST}");
    if let Some(bytes) = store.get_bytes(&manifest_key).await.map_err(store_error)? {
        let existing: Manifest = serde_json::from_slice(&bytes)
            .map_err(|e| StepError::permanent(format!("{manifest_key} is not a manifest: {e}")))?;
        return Ok(serde_json::json!({
            "skipped": "already backed up in this run (manifest found)",
            "manifest": manifest_key,
            "size": existing.dump.size,
        }));
    }

    let started_at = ctx.clock.now();
    let started = Instant::now();
    let tool_version = crate::engine::tools::version("pg_dump").await.map_err(StepError::permanent)?;
    let mut session = ctx.session().await?;
    let outcome = dump(ctx, options, store, &folder, &mut session).await;
    // The snapshot's transaction ends here whatever happened; a dropped step terminates it.
    session.release().await;
    let (dump, tables, schema_version, server_version) = outcome?;

    let manifest = Manifest {
        format: 1,
        tenant: ctx.tenant.to_string(),
        service: p.service.clone(),
        engine: p.engine.to_string(),
        isolation: p.isolation.to_string(),
        host: p.host.clone(),
        database: p.database.clone(),
        schema: p.schema.clone(),
        schema_version,
        started_at,
        finished_at: ctx.clock.now(),
        dump,
        tables,
        tool_version,
        server_version,
        run: ctx.run.to_string(),
        receipt_run: ctx.receipt_run().to_string(),
    };
    let bytes = serde_json::to_vec_pretty(&manifest).map_err(|e| StepError::permanent(e.to_string()))?;
    // The commit point: only the lease's owner writes it.
    ctx.fence.check().await?;
    store.put(&manifest_key, bytes).await.map_err(store_error)?;
    // Dumps of earlier, killed attempts of this run: no manifest names them.
    for o in store.list(&format!("{folder}/")).await.map_err(store_error)? {
        if o.key != manifest.dump.key && o.key != manifest_key {
            store.delete(&o.key).await.map_err(store_error)?;
        }
    }
    Ok(serde_json::json!({
        "manifest": manifest_key,
        "dump": manifest.dump.key,
        "size": manifest.dump.size,
        "sha256": manifest.dump.sha256,
        "tables": manifest.tables.len(),
        "rows": manifest.tables.iter().map(|t| t.rows).sum::<i64>(),
        "duration_ms": started.elapsed().as_millis() as u64,
    }))
}

type Dumped = (DumpInfo, Vec<TableRows>, Option<String>, String);

/// Exports a snapshot, counts the rows in it, and streams `pg_dump` of that snapshot into
/// the store while the snapshot's transaction stays open.
async fn dump(
    ctx: &StepContext<'_>,
    options: &Options,
    store: &ObjectStore,
    folder: &str,
    session: &mut crate::engine::session::PgSession,
) -> Result<Dumped, StepError> {
    let p = ctx.placement;
    let sql_error = |what: &'static str| move |e: sqlx::Error| StepError::from_sqlx(what, &e);
    session.mark_dirty();
    sqlx::raw_sql("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut **session)
        .await
        .map_err(sql_error("starting the snapshot"))?;
    let snapshot: String = sqlx::query_scalar("SELECT pg_export_snapshot()")
        .fetch_one(&mut **session)
        .await
        .map_err(sql_error("exporting the snapshot"))?;
    let server_version: String = sqlx::query_scalar("SHOW server_version")
        .fetch_one(&mut **session)
        .await
        .map_err(sql_error("reading the server version"))?;
    let schema_only = p.isolation == Isolation::Schema;
    let tables = count_rows(session, schema_only.then_some(p.schema.as_str())).await?;
    let schema_version = schema_version(session, &p.schema).await?;

    let host = ctx.databases.host(&p.host).map_err(StepError::permanent)?;
    let mut cmd = crate::engine::tools::libpq_command("pg_dump", &host.url, &p.database);
    cmd.arg("--format=custom").arg(format!("--snapshot={snapshot}")).arg("--no-password");
    if let Some(level) = options.compression {
        cmd.arg(format!("--compress={level}"));
    }
    if schema_only {
        // A pattern: in double quotes the name is taken literally.
        cmd.arg(format!("--schema=\"{}\"", p.schema.replace('"', "\"\"")));
    }
    cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| StepError::permanent(format!("cannot run pg_dump: {e}")))?;
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let errors = tokio::spawn(async move {
        let mut buf = Vec::new();
        let _ = tokio::io::AsyncReadExt::read_to_end(&mut stderr, &mut buf).await;
        buf
    });
    let key = format!("{folder}/dump-{}.pgdump", attempt_id());
    let uploaded = store.upload(&key, &mut stdout).await;
    // Closing the pipe ends a pg_dump whose output is no longer read.
    drop(stdout);
    if let Err(e) = uploaded {
        let _ = child.kill().await;
        return Err(store_error(e));
    }
    let status = child.wait().await.map_err(|e| StepError::permanent(format!("waiting for pg_dump: {e}")))?;
    let stderr = errors.await.unwrap_or_default();
    if !status.success() {
        let _ = store.delete(&key).await;
        // pg_dump reports a lost connection like any other error; one more attempt is
        // allowed, not more.
        return Err(StepError {
            retry: super::Retry::TransientOnce,
            message: format!("pg_dump failed ({status}): {}", crate::engine::tools::tail(&stderr, 2000)),
            cause: None,
        });
    }
    let stored = uploaded.map_err(store_error)?;
    sqlx::raw_sql("COMMIT").execute(&mut **session).await.map_err(sql_error("ending the snapshot"))?;
    let dump = DumpInfo {
        key: stored.key,
        format: "pg_dump_custom".to_string(),
        compression: options.compression,
        size: stored.size,
        sha256: stored.sha256,
    };
    Ok((dump, tables, schema_version, server_version))
}

/// Row counts of every table (of `schema`, or of the whole database), in the session's
/// snapshot.
pub async fn count_rows(
    session: &mut crate::engine::session::PgSession,
    schema: Option<&str>,
) -> Result<Vec<TableRows>, StepError> {
    let list: Vec<(String, String)> = sqlx::query_as(
        "SELECT n.nspname::text, c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition \
           AND ($1::text IS NULL AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
                AND n.nspname NOT LIKE 'pg\\_%' OR n.nspname = $1) \
         ORDER BY 1, 2",
    )
    .bind(schema)
    .fetch_all(&mut **session)
    .await
    .map_err(|e| StepError::from_sqlx("listing the tables", &e))?;
    let mut out = Vec::with_capacity(list.len());
    for chunk in list.chunks(200) {
        let sql = chunk
            .iter()
            .enumerate()
            .map(|(i, (s, t))| {
                format!("SELECT {i}::int AS idx, count(*) AS n FROM {}.{}", quote_ident(s), quote_ident(t))
            })
            .collect::<Vec<_>>()
            .join(" UNION ALL ");
        let mut counts = vec![0i64; chunk.len()];
        for row in sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(&mut **session)
            .await
            .map_err(|e| StepError::from_sqlx("counting rows", &e))?
        {
            counts[row.get::<i32, _>("idx") as usize] = row.get("n");
        }
        out.extend(chunk.iter().zip(counts).map(|((s, t), rows)| TableRows {
            schema: s.clone(),
            table: t.clone(),
            rows,
        }));
    }
    Ok(out)
}

/// The newest applied migration in `schema`'s history table, if there is one.
pub async fn schema_version(
    session: &mut crate::engine::session::PgSession,
    schema: &str,
) -> Result<Option<String>, StepError> {
    let table = format!("{}.{}", quote_ident(schema), quote_ident(super::migrate::HISTORY_TABLE));
    let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(&table)
        .fetch_one(&mut **session)
        .await
        .map_err(|e| StepError::from_sqlx("looking for the migration history", &e))?;
    if !exists {
        return Ok(None);
    }
    let versions: Vec<String> =
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT version FROM {table} WHERE state = 'applied'")))
            .fetch_all(&mut **session)
            .await
            .map_err(|e| StepError::from_sqlx("reading the migration history", &e))?;
    Ok(versions
        .into_iter()
        .filter_map(|v| v.parse::<crate::migrations::Version>().ok().map(|p| (p, v)))
        .max()
        .map(|(_, v)| v))
}

/// A name for this attempt's dump, unique across workers and attempts.
fn attempt_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
    format!("{:016x}", h.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folders_start_with_the_runs_time() {
        assert_eq!(folder("core", "t1", "20261124-230501-3fa9c1"), "core/t1/20261124T230501Z_20261124-230501-3fa9c1");
        assert_eq!(run_stamp("manual"), "manual");
    }
}
