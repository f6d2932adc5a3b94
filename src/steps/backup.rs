//! The `backup` step: a tenant's database or schema dumped with `pg_dump --format=custom` (a row-isolated tenant's rows as a `psql` script, see `backup_rows`) from an exported snapshot, streamed into the object store, with per-table row counts from that same snapshot in a manifest written last.
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
use crate::storage::ObjectStore;
use crate::workflow::plan::StepAction;

pub struct Backup;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Options {
    /// `pg_dump` compression level, 0-9 (default: pg_dump's, gzip level 6 for the custom
    /// format).
    pub compression: Option<u32>,
    /// How long `pg_dump` waits for a table lock held by someone else (default 1m).
    pub lock_timeout: Option<crate::units::HumanDuration>,
    /// `row` isolation: tables without the tenant column whose rows are copied whole
    /// (reference data the tenant's rows need), besides those found through foreign keys.
    pub reference_tables: Vec<String>,
}

pub use crate::storage::backups::MANIFEST;

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
    /// `row` isolation: which rows of each table the script holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub row_export: Option<super::backup_rows::RowExport>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DumpInfo {
    /// Relative to the store's prefix.
    pub key: String,
    /// `pg_dump_custom`: restore with `pg_restore`; `psql_script_gzip` (row isolation):
    /// `gunzip -c | psql`.
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
        super::seed::check_lock_timeout(options.lock_timeout, out);
    }

    async fn plan(_options: &Options, targets: &[&Placement], env: PlanEnv<'_>) -> Vec<StepAction> {
        let storage = env.config.config.storage.is_some();
        targets
            .iter()
            .map(|_| match storage {
                false => StepAction::Blocked { reason: "backup needs [storage] in the config".to_string() },
                true => StepAction::Run,
            })
            .collect()
    }

    async fn run(ctx: &StepContext<'_>, options: &Options) -> Result<serde_json::Value, StepError> {
        run(ctx, options).await
    }
}

/// The folder of the run's backup of this tenant's target. A step with a name of its own
/// (a second backup in one workflow: before and after a migration) gets a folder of its own.
pub fn folder(service: &str, tenant: &str, receipt_run: &str, step: &str) -> String {
    let base = format!("{service}/{tenant}/{}_{receipt_run}", run_stamp(receipt_run));
    if step == "backup" {
        return base;
    }
    let step: String =
        step.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '-' }).collect();
    format!("{base}_{step}")
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

async fn run(ctx: &StepContext<'_>, options: &Options) -> Result<serde_json::Value, StepError> {
    let store = ctx.objects.ok_or_else(|| StepError::permanent("backup needs [storage] in the config"))?;
    let p = ctx.placement;
    let folder = folder(&p.service, ctx.tenant, ctx.receipt_run(), &ctx.step.label());
    let manifest_key = format!("{folder}/{MANIFEST}");
    if let Some(existing) = read_manifest(store, &manifest_key).await? {
        tidy(ctx, store, &folder, &existing).await;
        return Ok(serde_json::json!({
            "skipped": "already backed up in this run (manifest found)",
            "manifest": manifest_key,
            "size": existing.dump.size,
        }));
    }
    // Uploads an earlier attempt of this run left open (its worker was killed, or the store
    // went away before the abort reached it): only this tenant's attempts write here, and
    // only the lease's owner aborts them.
    ctx.fence.check().await?;
    store.abort_stale_uploads(&format!("{folder}/"), std::time::Duration::ZERO).await.map_err(StepError::from)?;

    let started_at = ctx.clock.now();
    let started = Instant::now();
    let tool_version = crate::engine::tools::version("pg_dump").await.map_err(StepError::permanent)?;
    let mut session = ctx.session().await?;
    let outcome = dump(ctx, options, store, &folder, &tool_version, &mut session).await;
    // The snapshot's transaction ends here whatever happened; a dropped step terminates it.
    // `dump` commits it when the dump is complete; a failure leaves it open (sqlx does not
    // know of a raw BEGIN, so the reset's own `BEGIN` would draw a server warning). A row
    // export may have stopped in the middle of a `COPY`: that session is terminated.
    match &outcome {
        Err(_) if p.isolation == Isolation::Row => drop(session),
        Err(_) => {
            let _ = sqlx::raw_sql("ROLLBACK").execute(&mut *session).await;
            session.release().await;
        }
        Ok(_) => session.release().await,
    }
    let Dumped { dump, tables, schema_version, server_version, row_export } = outcome?;

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
        row_export,
    };
    let bytes = serde_json::to_vec_pretty(&manifest).map_err(|e| StepError::permanent(e.to_string()))?;
    // The commit point: only the lease's owner writes it, and only once (the store refuses
    // a second manifest, so a stale owner that passed the fence just before losing its
    // lease cannot replace the new owner's).
    let committed = match ctx.fence.check().await {
        Ok(()) => store.put_new(&manifest_key, bytes).await.map_err(StepError::from),
        Err(e) => Err(e),
    };
    match committed {
        Ok(true) => {}
        Ok(false) => {
            let _ = store.delete(&manifest.dump.key).await;
            return Ok(serde_json::json!({
                "skipped": "another attempt of this run wrote the manifest first",
                "manifest": manifest_key,
            }));
        }
        Err(e) => {
            // This dump will never be named by a manifest.
            let _ = store.delete(&manifest.dump.key).await;
            return Err(e);
        }
    }
    tidy(ctx, store, &folder, &manifest).await;
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

async fn read_manifest(store: &ObjectStore, key: &str) -> Result<Option<Manifest>, StepError> {
    match store.get_bytes(key).await.map_err(StepError::from)? {
        None => Ok(None),
        Some(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StepError::permanent(format!("{key} is not a manifest: {e}"))),
    }
}

/// Deletes the dumps of other attempts of this run (killed, or stale owners that finished
/// after the manifest): no manifest names them. Best effort and fenced; a failure leaves an
/// orphan for the next attempt or `prune_backups`, never fails a committed backup.
async fn tidy(ctx: &StepContext<'_>, store: &ObjectStore, folder: &str, manifest: &Manifest) {
    if ctx.fence.check().await.is_err() {
        return;
    }
    let listed = match store.list(&format!("{folder}/")).await {
        Ok(listed) => listed,
        Err(e) => {
            tracing::warn!(folder, error = %e, "could not list the backup folder to remove other attempts' dumps");
            return;
        }
    };
    for o in listed {
        if o.key != manifest.dump.key
            && !o.key.ends_with(&format!("/{MANIFEST}"))
            && let Err(e) = store.delete(&o.key).await
        {
            tracing::warn!(key = o.key, error = %e, "could not delete another attempt's dump");
        }
    }
}

struct Dumped {
    dump: DumpInfo,
    tables: Vec<TableRows>,
    schema_version: Option<String>,
    server_version: String,
    row_export: Option<super::backup_rows::RowExport>,
}

/// Exports a snapshot, counts the rows in it, and streams `pg_dump` of that snapshot into
/// the store while the snapshot's transaction stays open.
async fn dump(
    ctx: &StepContext<'_>,
    options: &Options,
    store: &ObjectStore,
    folder: &str,
    tool_version: &str,
    session: &mut crate::engine::session::PgSession,
) -> Result<Dumped, StepError> {
    let p = ctx.placement;
    let sql_error = |what: &'static str| move |e: sqlx::Error| StepError::from_sqlx(what, &e);
    session.mark_dirty();
    // The exporting session sits idle in its transaction for the whole dump: a server's
    // idle-in-transaction limit must not end it (and the snapshot) half-way.
    sqlx::raw_sql(
        "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY; SET LOCAL idle_in_transaction_session_timeout = 0",
    )
    .execute(&mut **session)
    .await
    .map_err(sql_error("starting the snapshot"))?;
    let snapshot: String = sqlx::query_scalar("SELECT pg_export_snapshot()")
        .fetch_one(&mut **session)
        .await
        .map_err(sql_error("exporting the snapshot"))?;
    let (server_version, server_major): (String, i32) =
        sqlx::query_as("SELECT current_setting('server_version'), current_setting('server_version_num')::int / 10000")
            .fetch_one(&mut **session)
            .await
            .map_err(sql_error("reading the server version"))?;
    if let Some(tool_major) = major_version(tool_version)
        && tool_major < server_major
    {
        return Err(StepError::permanent(format!(
            "{tool_version} cannot dump a PostgreSQL {server_major} server; install the client tools of version {server_major} or newer on this worker"
        )));
    }
    let schema_version = schema_version(session, &p.schema).await?;
    let attempt = attempt_id();
    if p.isolation == Isolation::Row {
        let key = format!("{folder}/dump-{attempt}.sql.gz");
        let exported = super::backup_rows::dump(ctx, options, store, &key, &snapshot, &attempt, session).await?;
        let _ = sqlx::raw_sql("COMMIT").execute(&mut **session).await;
        return Ok(Dumped {
            dump: exported.dump,
            tables: exported.tables,
            schema_version,
            server_version,
            row_export: Some(exported.export),
        });
    }
    let schema_only = p.isolation == Isolation::Schema;
    let tables = count_rows(session, schema_only.then_some(p.schema.as_str())).await?;

    let host = ctx.databases.host(&p.host).map_err(StepError::permanent)?;
    let mut cmd = crate::engine::tools::libpq_command("pg_dump", &host.url, &p.database);
    // Its own application name, so that its backend can be found and stopped with the step.
    let app_name = format!("tenantry-backup-{attempt}");
    cmd.env("PGAPPNAME", &app_name);
    cmd.arg("--format=custom").arg(format!("--snapshot={snapshot}")).arg("--no-password");
    cmd.arg(format!("--lock-wait-timeout={}", options.lock_timeout.map_or(60_000, |d| d.0.as_millis())));
    if let Some(level) = options.compression {
        cmd.arg(format!("--compress={level}"));
    }
    if schema_only {
        // A pattern: in double quotes the name is taken literally.
        cmd.arg(format!("--schema=\"{}\"", p.schema.replace('"', "\"\"")));
    }
    cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let child = cmd.spawn().map_err(|e| StepError::permanent(format!("cannot run pg_dump: {e}")))?;
    let _stop = StopBackend::new(ctx, &app_name);
    let mut output = crate::engine::tools::CheckedOutput::new("pg_dump", child);
    let key = format!("{folder}/dump-{attempt}.pgdump");
    let uploaded = store.upload(&key, &mut output).await;
    if let Some(failure) = output.failure() {
        // pg_dump reports a lost connection like any other error; one more attempt is
        // allowed, not more. The upload saw an error, not an end: nothing was stored.
        return Err(StepError { retry: super::Retry::TransientOnce, message: failure, cause: None });
    }
    let stored = uploaded.map_err(StepError::from)?;
    // The dump is complete: a failing COMMIT of the read-only snapshot changes nothing.
    let _ = sqlx::raw_sql("COMMIT").execute(&mut **session).await;
    let dump = DumpInfo {
        key: stored.key,
        format: "pg_dump_custom".to_string(),
        compression: options.compression,
        size: stored.size,
        sha256: stored.sha256,
    };
    Ok(Dumped { dump, tables, schema_version, server_version, row_export: None })
}

/// `15` from "pg_dump (PostgreSQL) 15.19 (Debian 15.19-0+deb12u1)".
fn major_version(tool_version: &str) -> Option<i32> {
    tool_version.split_whitespace().find_map(|w| w.split('.').next()?.parse().ok())
}

/// Terminates `pg_dump`'s backend when the step ends before it did (timeout, lost lease,
/// cancel): killing the client alone can leave its backend waiting in a lock queue.
pub(super) struct StopBackend {
    pool: Option<sqlx::PgPool>,
    app_name: String,
}

impl StopBackend {
    pub(super) fn new(ctx: &StepContext<'_>, app_name: &str) -> Self {
        let pool = ctx.databases.postgres(&ctx.placement.host, &ctx.placement.database).ok();
        Self { pool, app_name: app_name.to_string() }
    }
}

impl Drop for StopBackend {
    fn drop(&mut self) {
        let (Some(pool), Ok(runtime)) = (self.pool.take(), tokio::runtime::Handle::try_current()) else { return };
        let app_name = std::mem::take(&mut self.app_name);
        runtime.spawn(async move {
            let _ = sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1")
                .bind(app_name)
                .execute(&pool)
                .await;
        });
    }
}

/// Row counts of every table (of `schema`, or of the whole database), in the session's
/// snapshot. `verify_restore` counts a restored copy with the same query.
pub async fn count_rows(conn: &mut sqlx::PgConnection, schema: Option<&str>) -> Result<Vec<TableRows>, StepError> {
    // A table's own rows (`ONLY`: an inheritance parent's count would include its children,
    // which pg_dump copies as tables of their own); a partitioned table with its partitions.
    // Tables of extensions are left out: pg_dump does not copy their rows.
    let list: Vec<(String, String, bool)> = sqlx::query_as(
        "SELECT n.nspname::text, c.relname::text, c.relkind = 'p' FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition \
           AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass \
                           AND d.objid = c.oid AND d.deptype = 'e') \
           AND ($1::text IS NULL AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
                AND n.nspname NOT LIKE 'pg\\_%' OR n.nspname = $1) \
         ORDER BY 1, 2",
    )
    .bind(schema)
    .fetch_all(&mut *conn)
    .await
    .map_err(|e| StepError::from_sqlx("listing the tables", &e))?;
    let mut out = Vec::with_capacity(list.len());
    for chunk in list.chunks(200) {
        let sql = chunk
            .iter()
            .enumerate()
            .map(|(i, (s, t, partitioned))| {
                let only = if *partitioned { "" } else { "ONLY " };
                format!("SELECT {i}::int AS idx, count(*) AS n FROM {only}{}.{}", quote_ident(s), quote_ident(t))
            })
            .collect::<Vec<_>>()
            .join(" UNION ALL ");
        let mut counts = vec![0i64; chunk.len()];
        for row in sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(&mut *conn)
            .await
            .map_err(|e| StepError::from_sqlx("counting rows", &e))?
        {
            counts[row.get::<i32, _>("idx") as usize] = row.get("n");
        }
        out.extend(chunk.iter().zip(counts).map(|((s, t, _), rows)| TableRows {
            schema: s.clone(),
            table: t.clone(),
            rows,
        }));
    }
    Ok(out)
}

/// The newest applied migration in `schema`'s history table, if there is one.
pub async fn schema_version(conn: &mut sqlx::PgConnection, schema: &str) -> Result<Option<String>, StepError> {
    let table = format!("{}.{}", quote_ident(schema), quote_ident(super::migrate::HISTORY_TABLE));
    let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(&table)
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| StepError::from_sqlx("looking for the migration history", &e))?;
    if !exists {
        return Ok(None);
    }
    let versions: Vec<String> =
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT version FROM {table} WHERE state = 'applied'")))
            .fetch_all(&mut *conn)
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
        assert_eq!(
            folder("core", "t1", "20261124-230501-3fa9c1", "backup"),
            "core/t1/20261124T230501Z_20261124-230501-3fa9c1"
        );
        assert_eq!(folder("core", "t1", "r", "before migrate/x"), "core/t1/r_r_before-migrate-x");
        assert_eq!(major_version("pg_dump (PostgreSQL) 15.19 (Debian 15.19-0+deb12u1)"), Some(15));
        assert_eq!(run_stamp("manual"), "manual");
    }
}
