//! The `health` step: connectivity, size, long transactions, transaction-id age and connections of a tenant's database, and (`backups = true`) the freshness of its backups.
//!
//! It changes nothing. A tenant whose database is unreachable fails (after retries); one
//! with a transaction open longer than `long_transaction` or a transaction-id age over
//! `max_xid_age` fails permanently with the numbers, so unhealthy tenants stand out in the run.
//! Replication slots of the server holding more WAL than `max_slot_wal` (default 4GiB) make
//! it unhealthy. With `rls = true`, a `row` isolation tenant's tables with the tenant column
//! must have row-level security enabled and forced, with a policy on a setting.
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
    /// A replication slot holding more WAL than this makes the tenant's server unhealthy
    /// (default 4GiB): an abandoned slot fills the disk.
    pub max_slot_wal: Option<crate::units::ByteSize>,
    /// `row` isolation: every table with the tenant column must have row-level security
    /// enabled and forced, with a policy comparing the tenant column with a setting.
    pub rls: bool,
}

/// WAL a replication slot may hold back before the server is unhealthy.
const DEFAULT_MAX_SLOT_WAL: u64 = 4 << 30;

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
    let slots: Vec<(String, bool, Option<i64>)> = sqlx::query_as(
        "SELECT slot_name::text, active, \
                CASE WHEN pg_is_in_recovery() OR restart_lsn IS NULL THEN NULL \
                     ELSE pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::int8 END \
         FROM pg_replication_slots WHERE database IS NULL OR database = current_database() ORDER BY 1",
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(|e| StepError::from_sqlx("reading replication slots", &e))?;
    let rls = if options.rls && ctx.placement.isolation == Isolation::Row {
        Some(rls_findings(&mut conn, ctx).await?)
    } else {
        None
    };
    conn.release().await;
    let max_slot_wal = options.max_slot_wal.map_or(DEFAULT_MAX_SLOT_WAL, |b| b.0) as i64;
    let report = serde_json::json!({
        "connect_ms": connect_ms,
        "database_bytes": database_bytes,
        "schema_bytes": schema_bytes,
        "xid_age": xid_age,
        "connections": connections,
        "long_transactions": long_transactions,
        "oldest_transaction_s": oldest_s,
        "replication_slots": slots
            .iter()
            .map(|(name, active, wal)| serde_json::json!({ "name": name, "active": active, "wal_bytes": wal }))
            .collect::<Vec<_>>(),
        "rls_findings": rls,
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
    for (name, active, wal) in &slots {
        if let Some(wal) = wal.filter(|w| *w > max_slot_wal) {
            let state = if *active { "active" } else { "inactive" };
            problems.push(format!(
                "replication slot {name} ({state}) holds {wal} bytes of WAL, over max_slot_wal ({max_slot_wal})"
            ));
        }
    }
    if let Some(findings) = rls.as_ref().filter(|f| !f.is_empty()) {
        problems.push(format!("row-level security: {}", findings.join("; ")));
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
        .map_err(StepError::from)?;
    let complete = folders.iter().filter(|f| f.complete);
    report["latest_backup"] = serde_json::json!(complete.clone().map(|f| f.taken_at).max());
    report["last_verified"] = serde_json::json!(complete.filter_map(|f| f.last_verified()).max());
    let stale = crate::storage::backups::staleness(&folders, ctx.clock.now(), ctx.backup_limits);
    report["backups_stale"] = serde_json::json!(stale);
    Ok(stale)
}

/// `row` isolation: the tables with the tenant column whose row-level security is missing,
/// not forced (the owner bypasses it), or without a policy that compares the tenant column
/// with a setting (`current_setting(...)`), one finding per table.
async fn rls_findings(conn: &mut sqlx::PgConnection, ctx: &StepContext<'_>) -> Result<Vec<String>, StepError> {
    let column = ctx.placement.tenant_column.as_deref().unwrap_or_default();
    let tables: Vec<(String, bool, bool, bool)> = sqlx::query_as(
        "SELECT c.relname::text, c.relrowsecurity, c.relforcerowsecurity, \
                EXISTS (SELECT 1 FROM pg_policy pol WHERE pol.polrelid = c.oid \
                        AND pg_get_expr(pol.polqual, pol.polrelid) LIKE '%current_setting(%' \
                        AND strpos(pg_get_expr(pol.polqual, pol.polrelid), $2) > 0) \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND NOT c.relispartition \
           AND EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = $2 \
                       AND a.attnum > 0 AND NOT a.attisdropped) \
         ORDER BY 1",
    )
    .bind(&ctx.placement.schema)
    .bind(column)
    .fetch_all(conn)
    .await
    .map_err(|e| StepError::from_sqlx("reading row-level security", &e))?;
    let mut out = Vec::new();
    for (table, enabled, forced, policy) in tables {
        let mut missing = Vec::new();
        if !enabled {
            missing.push("not enabled");
        } else if !forced {
            missing.push("not forced (the table's owner bypasses it)");
        }
        if !policy {
            missing.push("no policy comparing the tenant column with current_setting(...)");
        }
        if !missing.is_empty() {
            out.push(format!("{table}: {}", missing.join(", ")));
        }
    }
    Ok(out)
}
