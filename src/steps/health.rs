//! The `health` step: connectivity, size, long transactions, transaction-id age and connections of a tenant's database, and (`backups = true`) the freshness of its backups.
//!
//! It changes nothing. A tenant whose database is unreachable fails (after retries); one
//! with a transaction open longer than `long_transaction` or a transaction-id age over
//! `max_xid_age` fails permanently with the numbers, so unhealthy tenants stand out in the run.
//! With `backups = true`, a tenant whose newest backup or newest passed verification of the
//! service is older than `[backups]` allows (what `tenantry backups --stale` lists) is
//! unhealthy too: one listing of the tenant's backups per service.

use std::time::{Duration, Instant};

use serde::Deserialize;

use super::define::Step;
use super::{StepContext, StepError};
use crate::catalog::Isolation;
use crate::units::HumanDuration;

/// Transaction-id age at which PostgreSQL starts warning is 1.4 billion (autovacuum
/// emergencies start at 200 million by default); 1 billion leaves room to act.
const DEFAULT_MAX_XID_AGE: u64 = 1_000_000_000;
const DEFAULT_LONG_TRANSACTION: Duration = Duration::from_secs(5 * 60);

pub struct Health;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Options {
    /// A transaction open longer than this makes the tenant unhealthy (default 5m).
    pub long_transaction: Option<HumanDuration>,
    /// A transaction-id age above this makes the tenant unhealthy (default 1 billion).
    pub max_xid_age: Option<u64>,
    /// Also check the tenant's backups of the service against `[backups]`'
    /// `max_backup_age` and `max_verify_age` (needs `[storage]`).
    pub backups: bool,
}

impl Step for Health {
    type Options = Options;

    async fn run(ctx: &StepContext<'_>, options: &Options) -> Result<serde_json::Value, StepError> {
        run(ctx, options).await
    }
}

async fn run(ctx: &StepContext<'_>, options: &Options) -> Result<serde_json::Value, StepError> {
    let started = Instant::now();
    let mut conn = ctx.session().await?;
    let connect_ms = started.elapsed().as_millis() as u64;
    let long = options.long_transaction.map_or(DEFAULT_LONG_TRANSACTION, |d| d.0);
    let max_xid_age = options.max_xid_age.unwrap_or(DEFAULT_MAX_XID_AGE);

    let (database_bytes, xid_age, connections, long_transactions, oldest_s): (i64, i64, i64, i64, Option<f64>) =
        sqlx::query_as(include_str!("health_database.sql"))
            .bind(long.as_secs_f64())
            .fetch_one(&mut *conn)
            .await
            .map_err(|e| StepError::from_sqlx("reading database health", &e))?;
    // For schema isolation the tenant's own footprint is its schema, not the shared database.
    let schema_bytes: Option<i64> = if ctx.placement.isolation == Isolation::Schema {
        let bytes: Option<i64> = sqlx::query_scalar(include_str!("health_schema.sql"))
            .bind(&ctx.placement.schema)
            .fetch_one(&mut *conn)
            .await
            .map_err(|e| StepError::from_sqlx("reading schema size", &e))?;
        Some(bytes.unwrap_or(0))
    } else {
        None
    };
    conn.release().await;
    let report = serde_json::json!({
        "connect_ms": connect_ms,
        "database_bytes": database_bytes,
        "schema_bytes": schema_bytes,
        "xid_age": xid_age,
        "connections": connections,
        "long_transactions": long_transactions,
        "oldest_transaction_s": oldest_s,
    });
    let mut report = report;
    let mut problems = Vec::new();
    if options.backups {
        let stale = backup_freshness(ctx, &mut report).await?;
        if !stale.is_empty() {
            problems.push(format!("backups stale: {}", stale.join("; ")));
        }
    }
    if long_transactions > 0 {
        problems.push(format!(
            "{long_transactions} transaction(s) open longer than {}s (oldest {:.0}s)",
            long.as_secs(),
            oldest_s.unwrap_or_default()
        ));
    }
    if xid_age as u64 > max_xid_age {
        problems.push(format!("transaction-id age {xid_age} exceeds {max_xid_age}: vacuum (freeze) this database"));
    }
    if problems.is_empty() {
        Ok(report)
    } else {
        Err(StepError::permanent(format!("unhealthy: {} ({report})", problems.join("; "))))
    }
}

/// Adds the tenant's newest backup and newest passed verification of the service to
/// `report`; returns why they are stale (empty: they are not).
async fn backup_freshness(ctx: &StepContext<'_>, report: &mut serde_json::Value) -> Result<Vec<String>, StepError> {
    let store =
        ctx.objects.ok_or_else(|| StepError::permanent("health with backups = true needs [storage] in the config"))?;
    let folders = crate::storage::backups::tenant_backups(store, &ctx.placement.service, ctx.tenant)
        .await
        .map_err(super::backup::store_error)?;
    let complete = folders.iter().filter(|f| f.complete);
    report["latest_backup"] = serde_json::json!(complete.clone().map(|f| f.taken_at).max());
    report["last_verified"] = serde_json::json!(complete.filter_map(|f| f.last_verified()).max());
    let stale = crate::storage::backups::staleness(&folders, ctx.clock.now(), ctx.backup_limits);
    report["backups_stale"] = serde_json::json!(stale);
    Ok(stale)
}
