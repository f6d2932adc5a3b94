//! Receipts: proof inside the tenant's own database that a transactional step committed, so a retry after a crash skips instead of applying twice.

use std::collections::HashSet;
use std::sync::{Mutex, OnceLock};

use sqlx::{PgConnection, Postgres, Transaction};

use super::StepError;
use crate::engine::postgres::quote_ident;

pub const RECEIPTS_TABLE: &str = "tenantry_receipts";

/// Targets whose receipts table this process already made sure of.
fn known() -> &'static Mutex<HashSet<String>> {
    static KNOWN: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    KNOWN.get_or_init(|| Mutex::new(HashSet::new()))
}

/// Creates the receipts table in `schema` when missing, outside the step's transaction
/// (concurrent `CREATE TABLE IF NOT EXISTS` can collide; that is reported as transient).
pub async fn ensure_table(conn: &mut PgConnection, target: &str, schema: &str) -> Result<(), StepError> {
    if known().lock().expect("lock").contains(target) {
        return Ok(());
    }
    let sql = format!(
        "CREATE TABLE IF NOT EXISTS {}.{} (run_id text NOT NULL, tenant text NOT NULL, step text NOT NULL, \
         completed_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (run_id, tenant, step))",
        quote_ident(schema),
        quote_ident(RECEIPTS_TABLE)
    );
    match sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut *conn).await {
        Ok(_) => {}
        // A concurrent creator won the race on the catalog's unique index: the table exists.
        Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("23505") => {}
        Err(e) => return Err(StepError::from_sqlx("creating the receipts table", &e)),
    }
    known().lock().expect("lock").insert(target.to_string());
    Ok(())
}

/// Whether the step already committed in an earlier attempt. The table is named without a
/// schema: the caller's transaction has `search_path` set to the target's schema, which
/// keeps this statement's text the same for every tenant (prepared once per connection).
pub async fn exists(
    tx: &mut Transaction<'_, Postgres>,
    run: &str,
    tenant: &str,
    step: &str,
) -> Result<bool, StepError> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM tenantry_receipts WHERE run_id = $1 AND tenant = $2 AND step = $3)",
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
/// Like [`exists`], it relies on the transaction's `search_path`.
pub async fn write(tx: &mut Transaction<'_, Postgres>, run: &str, tenant: &str, step: &str) -> Result<bool, StepError> {
    let insert = sqlx::query("INSERT INTO tenantry_receipts (run_id, tenant, step) VALUES ($1, $2, $3)");
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
