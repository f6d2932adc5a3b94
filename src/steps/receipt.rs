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

/// Whether the step already committed in an earlier attempt.
pub async fn exists(
    tx: &mut Transaction<'_, Postgres>,
    schema: &str,
    run: &str,
    tenant: &str,
    step: &str,
) -> Result<bool, StepError> {
    let sql = format!(
        "SELECT EXISTS (SELECT 1 FROM {}.{} WHERE run_id = $1 AND tenant = $2 AND step = $3)",
        quote_ident(schema),
        quote_ident(RECEIPTS_TABLE)
    );
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
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
pub async fn write(
    tx: &mut Transaction<'_, Postgres>,
    schema: &str,
    run: &str,
    tenant: &str,
    step: &str,
) -> Result<bool, StepError> {
    let sql = format!(
        "INSERT INTO {}.{} (run_id, tenant, step) VALUES ($1, $2, $3)",
        quote_ident(schema),
        quote_ident(RECEIPTS_TABLE)
    );
    match sqlx::query(sqlx::AssertSqlSafe(sql)).bind(run).bind(tenant).bind(step).execute(&mut **tx).await {
        Ok(_) => Ok(true),
        Err(e) if e.as_database_error().and_then(|d| d.code()).as_deref() == Some("23505") => Ok(false),
        Err(e) => Err(StepError::from_sqlx("writing the receipt", &e)),
    }
}

/// What a step reports when a concurrent attempt applied it first.
pub fn applied_concurrently() -> serde_json::Value {
    serde_json::json!({ "skipped": "applied by a concurrent attempt of this run (its receipt won); nothing was applied twice" })
}
