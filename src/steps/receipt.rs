//! Receipts: proof inside the tenant's own database that a transactional step committed, so a retry after a crash skips instead of applying twice.

use std::collections::HashSet;
use std::sync::{Mutex, OnceLock};

use sqlx::{PgConnection, Postgres, Transaction};

use super::StepError;
use crate::engine::postgres::quote_ident;

/// Receipts live in one table per database, in tenantry's own schema, whatever the
/// isolation model: the step's work and its receipt are always in the same database, so
/// they commit together, and a fleet of schema tenants costs one table, not one per schema.
pub const RECEIPTS_TABLE: &str = "tenantry.receipts";

/// Databases (host/database) whose receipts table this process already made sure of.
fn known() -> &'static Mutex<HashSet<String>> {
    static KNOWN: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    KNOWN.get_or_init(|| Mutex::new(HashSet::new()))
}

/// Creates the `tenantry` schema, its receipts table and the purge cursors (see
/// [`super::purge`]) when missing, outside the step's
/// transaction. Concurrent creators (every worker's first tenants of a database arrive
/// together) are serialised by a transaction-scoped advisory lock: `IF NOT EXISTS` alone
/// still lets two of them collide in the catalog.
pub async fn ensure_table(conn: &mut PgConnection, host: &str, database: &str) -> Result<(), StepError> {
    let key = format!("{host}/{database}");
    if known().lock().expect("lock").contains(&key) {
        return Ok(());
    }
    let created = sqlx::raw_sql(
        "BEGIN; SELECT pg_advisory_xact_lock(hashtextextended('tenantry:receipts', 0)); \
         CREATE SCHEMA IF NOT EXISTS tenantry; \
         CREATE TABLE IF NOT EXISTS tenantry.receipts (run_id text NOT NULL, tenant text NOT NULL, step text NOT NULL, \
         completed_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (run_id, tenant, step)); \
         CREATE TABLE IF NOT EXISTS tenantry.purge_cursors (run_id text NOT NULL, tenant text NOT NULL, step text NOT NULL, \
         cutoff timestamptz NOT NULL, position timestamptz, block int8, deleted int8 NOT NULL DEFAULT 0, not_deleted int8 NOT NULL DEFAULT 0, \
         batches int4 NOT NULL DEFAULT 0, finished bool NOT NULL DEFAULT false, updated_at timestamptz NOT NULL DEFAULT now(), \
         PRIMARY KEY (run_id, tenant, step)); COMMIT",
    )
    .execute(&mut *conn)
    .await;
    if let Err(e) = created {
        // The failed script leaves an open, aborted transaction on this pooled connection.
        let _ = sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await;
        return Err(StepError::from_sqlx("creating the receipts table", &e));
    }
    known().lock().expect("lock").insert(key);
    Ok(())
}

/// Whether the step already committed in an earlier attempt. The statement's text is the
/// same for every tenant, so it is prepared once per connection.
pub async fn exists(
    tx: &mut Transaction<'_, Postgres>,
    run: &str,
    tenant: &str,
    step: &str,
) -> Result<bool, StepError> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM tenantry.receipts WHERE run_id = $1 AND tenant = $2 AND step = $3)",
    )
    .bind(run)
    .bind(tenant)
    .bind(step)
    .fetch_one(&mut **tx)
    .await
    .map_err(|e| StepError::from_sqlx("reading the receipt", &e))
}

/// Writes the receipt inside the step's transaction. Returns false when another attempt
/// committed the same step first (a worker that lost its lease and still ran, racing the
/// one that took over): the primary key refuses the second receipt, the caller's
/// transaction is aborted and must be dropped, and the step counts as done — exactly once.
pub async fn write(tx: &mut Transaction<'_, Postgres>, run: &str, tenant: &str, step: &str) -> Result<bool, StepError> {
    let insert = sqlx::query("INSERT INTO tenantry.receipts (run_id, tenant, step) VALUES ($1, $2, $3)");
    match insert.bind(run).bind(tenant).bind(step).execute(&mut **tx).await {
        Ok(_) => Ok(true),
        Err(e) if e.as_database_error().and_then(|d| d.code()).as_deref() == Some("23505") => Ok(false),
        Err(e) => Err(StepError::from_sqlx("writing the receipt", &e)),
    }
}

/// What a step reports when a concurrent attempt applied it first.
pub fn applied_concurrently() -> serde_json::Value {
    serde_json::json!({ "skipped": "applied by a concurrent attempt of this run (its receipt won); nothing was applied twice" })
}

/// Starts a step's transaction in one round trip: `BEGIN`, `search_path` to the target's
/// schema (so the receipt statements above find their table), and the session settings
/// `tenantry.tenant` and `tenantry.run` that the step's SQL can read.
pub async fn begin<'c>(
    conn: &'c mut sqlx::PgConnection,
    schema: &str,
    run: &str,
    tenant: &str,
) -> Result<Transaction<'c, Postgres>, StepError> {
    use sqlx::Connection;
    let begin = format!(
        "BEGIN; SET LOCAL search_path TO {}; SELECT set_config('tenantry.tenant', {}, true), set_config('tenantry.run', {}, true)",
        quote_ident(schema),
        crate::engine::postgres::quote_literal(tenant),
        crate::engine::postgres::quote_literal(run)
    );
    conn.begin_with(sqlx::AssertSqlSafe(begin)).await.map_err(|e| StepError::from_sqlx("starting the transaction", &e))
}
