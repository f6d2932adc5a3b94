//! The `purge` step: a table's rows older than the retention deleted in bounded batches, with a pause between batches and a time budget per tenant, resumable from a cursor committed with each batch.
//!
//! - **Retention**: the tenant's `retention_label` (days, `"30"`, or a duration, `"30d"`)
//!   when it has that label, else `older_than`. The cutoff (now − retention) is fixed by the
//!   first attempt and kept in the cursor, so a purge resumed an hour later deletes exactly
//!   the rows older than the same cutoff, none newer.
//! - **Batches**: with an index whose first column is `column` (for `row` isolation also
//!   `(tenant_column, column)`), each batch deletes the oldest `batch_size` rows from the
//!   cursor's timestamp on, found through that index and deleted by `ctid`. Without such an
//!   index the step refuses, unless `allow_scan = true`: then batches walk the table by block
//!   ranges (TID range scans), each reading about `batch_size` rows' worth of blocks, so no
//!   batch scans the whole table. Each batch is one transaction under `lock_timeout` that
//!   also advances the cursor row (`tenantry.purge_cursors`), which it locks first and
//!   checks against the attempt's own count: two attempts of one purge cannot interleave
//!   their batches, and a crash loses at most the uncommitted batch.
//! - **Safety**: for `row` isolation the tenant column is in every statement's predicate
//!   (the table must have it). A table without `column`, with a column that is not a
//!   timestamp or date, a partitioned table, and a table that other tables reference by
//!   foreign key are refused, naming the referencing tables and their `ON DELETE` actions,
//!   unless the workflow lists them in `referenced_by` (accepting what their actions do).
//!   Before each batch: the workflow's `[throttle]` (the batch waits while the host is over
//!   a load limit), the lease's fence and the step's cancellation.
//! - **Budget**: once `time_budget` is spent no new batch starts; the step succeeds with
//!   `complete = false` and the next run continues with the rest. `dry_run = true` counts
//!   the rows the purge would delete and deletes nothing.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::define::{Findings, Step};
use super::{StepContext, StepError, receipt};
use crate::catalog::{Engine, Isolation, ServiceSpec};
use crate::engine::postgres::quote_ident;
use crate::units::HumanDuration;

pub struct Purge;

const DEFAULT_BATCH_SIZE: u32 = 1000;
const DEFAULT_PAUSE: Duration = Duration::from_millis(100);
const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(2);
/// How many times one batch may wait out `lock_timeout` before the step gives up (transient).
const LOCK_RETRIES: u32 = 5;
/// Cursor rows of finished purges are kept this long (what a retry reads); unfinished ones
/// (a run paused for weeks) three times as long.
const CURSOR_RETENTION_DAYS: i32 = 30;
/// The shortest retention a purge accepts unless the step sets `min_retention`: a label
/// written as "6m" (six minutes, not months) must not empty a tenant's table.
const DEFAULT_MIN_RETENTION: Duration = Duration::from_secs(86_400);
/// The longest: anything beyond is a typo, not a retention.
const MAX_RETENTION: Duration = Duration::from_secs(100 * 366 * 86_400);
/// An open batch transaction whose worker vanished (its machine died) ends after this,
/// releasing the cursor row's lock for the next attempt.
const IDLE_IN_BATCH: Duration = Duration::from_secs(60);

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Options {
    /// The table to delete from, in the tenant's schema.
    pub table: Option<String>,
    /// Its timestamp (or date) column compared with the cutoff.
    pub column: Option<String>,
    /// The retention when the tenant has no `retention_label`.
    pub older_than: Option<HumanDuration>,
    /// A catalog label whose value (days, or a duration) is the tenant's own retention.
    pub retention_label: Option<String>,
    /// Rows per batch (default 1000).
    pub batch_size: Option<u32>,
    /// Pause between batches (default 100ms).
    pub pause: Option<HumanDuration>,
    /// Time per tenant after which no new batch starts.
    pub time_budget: Option<HumanDuration>,
    /// Count, do not delete.
    pub dry_run: Option<bool>,
    /// Purge a table with no index on `column` by walking its blocks.
    pub allow_scan: Option<bool>,
    /// Tables whose foreign keys into this table the workflow accepts (their `ON DELETE`
    /// actions apply to their rows).
    pub referenced_by: Vec<String>,
    /// How long a batch waits for locks before it is tried again (default 2s).
    pub lock_timeout: Option<HumanDuration>,
    /// The shortest retention accepted, from a label or `older_than` (default 1d).
    pub min_retention: Option<HumanDuration>,
}

impl Step for Purge {
    type Options = Options;

    fn fits(service: &ServiceSpec) -> Result<(), String> {
        if service.engine != Engine::Postgres {
            return Err(format!("purge runs on PostgreSQL services only, not {}", service.engine));
        }
        Ok(())
    }

    fn check(o: &Options, out: &mut Findings) {
        if o.table.as_deref().unwrap_or("").is_empty() {
            out.push(("kind".into(), "purge step needs `table` (the table to delete from)".to_string()));
        }
        if o.column.as_deref().unwrap_or("").is_empty() {
            out.push((
                "kind".into(),
                "purge step needs `column` (the timestamp column compared with the retention)".to_string(),
            ));
        }
        if o.older_than.is_none() && o.retention_label.is_none() {
            out.push((
                "kind".into(),
                "purge step needs `older_than` (e.g. \"90d\") or `retention_label` (a tenant label holding days), or both"
                    .to_string(),
            ));
        }
        if o.older_than.is_some_and(|d| d.0.is_zero()) {
            out.push(("older_than".into(), "older_than must be longer than zero".to_string()));
        }
        if o.batch_size == Some(0) {
            out.push(("batch_size".into(), "batch_size must be at least 1".to_string()));
        }
        if o.time_budget.is_some_and(|d| d.0.is_zero()) {
            out.push(("time_budget".into(), "time_budget must be longer than zero".to_string()));
        }
        super::seed::check_lock_timeout(o.lock_timeout, out);
    }

    fn labels(o: &Options) -> Vec<String> {
        o.retention_label.iter().cloned().collect()
    }

    async fn run(ctx: &StepContext<'_>, options: &Options) -> Result<serde_json::Value, StepError> {
        run(ctx, options).await
    }
}

/// The tenant's retention and where it comes from. Refused: a retention under
/// `min_retention` (default one day) or over a century.
pub fn retention(
    o: &Options,
    labels: &std::collections::BTreeMap<String, String>,
) -> Result<(Duration, String), String> {
    let (retention, from) = if let Some(label) = &o.retention_label
        && let Some(value) = labels.get(label)
    {
        let value = value.trim();
        let parsed = match value.parse::<u64>() {
            Ok(days) => days.checked_mul(86_400).map(Duration::from_secs).ok_or_else(|| "too long".to_string()),
            Err(_) => HumanDuration::parse(value).map(|d| d.0),
        };
        match parsed {
            Ok(d) => (d, format!("label {label} = {value:?}")),
            Err(_) => {
                return Err(format!(
                    "label {label} = {value:?} is not a retention (days, like \"30\", or a duration, like \"36h\")"
                ));
            }
        }
    } else {
        match (o.older_than, &o.retention_label) {
            (Some(d), _) => (d.0, "older_than".to_string()),
            (None, Some(label)) => {
                return Err(format!("the tenant has no label {label} and the step has no older_than"));
            }
            (None, None) => return Err("the step has neither older_than nor retention_label".to_string()),
        }
    };
    let min = o.min_retention.map_or(DEFAULT_MIN_RETENTION, |d| d.0);
    if retention < min || retention > MAX_RETENTION {
        return Err(format!(
            "{from} gives a retention of {}, outside the accepted {} to 100 years (a step's min_retention lowers the floor)",
            humantime::format_duration(retention),
            humantime::format_duration(min)
        ));
    }
    Ok((retention, from))
}

/// What the catalog says about the table.
#[derive(Debug, sqlx::FromRow)]
struct TableFacts {
    oid: i64,
    kind: String,
    has_children: bool,
    column_type: Option<String>,
    tenant_type: Option<String>,
    index: Option<String>,
    rows_per_block: f64,
}

#[derive(Debug, sqlx::FromRow)]
struct Referencing {
    name: String,
    table: String,
    relname: String,
    on_delete: String,
}

/// The cursor of one purge (run, tenant, step): fixed cutoff, how far it got.
#[derive(Debug, sqlx::FromRow)]
struct Cursor {
    cutoff: DateTime<Utc>,
    position: Option<DateTime<Utc>>,
    block: Option<i64>,
    deleted: i64,
    /// Rows a batch found older than the cutoff but did not delete (updated meanwhile,
    /// kept by a trigger): left for the next run.
    not_deleted: i64,
    batches: i32,
    finished: bool,
}

#[derive(Debug, Serialize)]
struct Report {
    table: String,
    column: String,
    cutoff: DateTime<Utc>,
    retention: String,
    retention_from: String,
    /// `index NAME` or `scan`.
    mode: String,
    deleted: i64,
    /// Rows found older than the cutoff but not deleted (updated meanwhile, kept by a
    /// trigger): the next run takes them.
    not_deleted: i64,
    batches: i32,
    /// Batches of earlier attempts this one resumed after (0: it started the purge).
    resumed_after: i32,
    max_batch_ms: u64,
    /// Time spent waiting for the host's load between batches (`[throttle]`).
    throttled_ms: u64,
    complete: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    stopped: Option<String>,
}

/// How the batches walk the table.
enum Walk {
    /// Through the index on the column, by timestamp.
    Index(String),
    /// By block ranges of this many blocks.
    Blocks(i64),
}

async fn run(ctx: &StepContext<'_>, o: &Options) -> Result<serde_json::Value, StepError> {
    let p = ctx.placement;
    let table = o.table.as_deref().unwrap_or_default();
    let column = o.column.as_deref().unwrap_or_default();
    let who = format!("tenant {}, service {}, table {}.{table}", ctx.tenant, p.service, p.schema);
    let (retention, retention_from) =
        retention(o, ctx.labels).map_err(|e| StepError::permanent(format!("{who}: {e}")))?;
    let tenant_column = match p.isolation {
        Isolation::Row => Some(p.tenant_column.as_deref().ok_or_else(|| {
            StepError::permanent(format!("{who}: service {} has row isolation but no tenant_column", p.service))
        })?),
        _ => None,
    };
    let mut session = ctx.session().await?;
    let facts: Option<TableFacts> = sqlx::query_as(include_str!("purge_table.sql"))
        .bind(&p.schema)
        .bind(table)
        .bind(column)
        .bind(tenant_column)
        .fetch_optional(&mut *session)
        .await
        .map_err(|e| StepError::from_sqlx("reading the table's catalog", &e))?;
    let facts = facts.ok_or_else(|| StepError::permanent(format!("{who}: no such table")))?;
    let refuse = |why: String| Err(StepError::permanent(format!("{who}: {why}; nothing was deleted")));
    if facts.kind == "p" {
        return refuse("is partitioned: drop its old partitions instead, or purge each partition".into());
    }
    if facts.has_children {
        return refuse("has inheritance children: purge each child table".into());
    }
    match facts.column_type.as_deref() {
        None => return refuse(format!("has no column {column}")),
        Some("timestamp with time zone" | "timestamp without time zone" | "date") => {}
        Some(other) => return refuse(format!("column {column} is {other}, not a timestamp or date")),
    }
    if let Some(tc) = tenant_column
        && facts.tenant_type.is_none()
    {
        return refuse(format!(
            "has no tenant column {tc}, so a row-isolation purge cannot tell its tenants' rows apart"
        ));
    }
    let referencing: Vec<Referencing> = sqlx::query_as(
        "SELECT k.conname::text AS name, format('%I.%I', n.nspname, c.relname) AS table, c.relname::text AS relname, \
                CASE k.confdeltype WHEN 'c' THEN 'CASCADE' WHEN 'n' THEN 'SET NULL' WHEN 'd' THEN 'SET DEFAULT' \
                     WHEN 'r' THEN 'RESTRICT' ELSE 'NO ACTION' END AS on_delete \
         FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE k.contype = 'f' AND k.conparentid = 0 \
           AND (k.confrelid = $1::int8::oid OR k.confrelid IN (SELECT relid FROM pg_partition_ancestors($1::int8::oid))) \
         ORDER BY 2, 1",
    )
    .bind(facts.oid)
    .fetch_all(&mut *session)
    .await
    .map_err(|e| StepError::from_sqlx("reading the foreign keys into the table", &e))?;
    let unaccepted: Vec<String> = referencing
        .iter()
        .filter(|r| !o.referenced_by.iter().any(|a| a == &r.relname || a == &r.table))
        .map(|r| format!("{} ({}, ON DELETE {})", r.table, r.name, r.on_delete))
        .collect();
    if !unaccepted.is_empty() {
        return refuse(format!(
            "its rows are referenced by {}: purge those rows first, or name the tables in referenced_by to accept what their ON DELETE does",
            unaccepted.join(", ")
        ));
    }
    let batch_size = o.batch_size.unwrap_or(DEFAULT_BATCH_SIZE).max(1);
    let walk = match (&facts.index, o.allow_scan.unwrap_or(false)) {
        (Some(index), _) => Walk::Index(index.clone()),
        (None, true) if tenant_column.is_some() => {
            return refuse(format!(
                "has no index on ({}, {column}); allow_scan does not apply to row isolation (every tenant would read the whole shared table)",
                tenant_column.unwrap_or_default()
            ));
        }
        (None, true) => Walk::Blocks(((batch_size as f64 / facts.rows_per_block.max(1.0)).ceil() as i64).max(1)),
        (None, false) => {
            let wanted = match tenant_column {
                Some(tc) => format!("({tc}, {column})"),
                None => format!("({column})"),
            };
            return refuse(format!(
                "has no index on {wanted}: create one, or set allow_scan = true to walk the table by blocks"
            ));
        }
    };
    let target = format!("{}.{}", quote_ident(&p.schema), quote_ident(table));
    let tenant_filter = match (tenant_column, &facts.tenant_type) {
        (Some(tc), Some(ty)) => format!(" AND {} = CAST($3::text AS {ty})", quote_ident(tc)),
        _ => String::new(),
    };
    let col = quote_ident(column);
    // A date column is compared with the cutoff's date: a row dated on the cutoff's own
    // day is not older than the cutoff.
    let cutoff_param = if facts.column_type.as_deref() == Some("date") { "$1::date" } else { "$1" };
    let mode = match &walk {
        Walk::Index(name) => format!("index {name}"),
        Walk::Blocks(n) => format!("scan ({n} blocks per batch)"),
    };

    if o.dry_run.unwrap_or(false) {
        let cutoff = cutoff_of(ctx.clock.now(), retention).map_err(|e| StepError::permanent(format!("{who}: {e}")))?;
        let count: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM {target} WHERE {col} < {cutoff_param}{tenant_filter}"
        )))
        .bind(cutoff)
        .bind(None::<DateTime<Utc>>)
        .bind(ctx.tenant)
        .fetch_one(&mut *session)
        .await
        .map_err(|e| StepError::from_sqlx("counting the rows to purge", &e))?;
        session.release().await;
        return Ok(serde_json::json!({
            "dry_run": true,
            "table": format!("{}.{table}", p.schema),
            "column": column,
            "cutoff": cutoff,
            "retention": humantime::format_duration(retention).to_string(),
            "retention_from": retention_from,
            "mode": mode,
            "would_delete": count,
        }));
    }

    // The cursor: made by the first attempt with its cutoff, read by every later one.
    receipt::ensure_table(&mut session, &p.host, &p.database).await?;
    let step = ctx.unit;
    let run_id = ctx.receipt_run();
    let now = ctx.clock.now();
    let cutoff = cutoff_of(now, retention).map_err(|e| StepError::permanent(format!("{who}: {e}")))?;
    // Two statements, so the read sees a row another attempt inserted meanwhile.
    sqlx::query(
        "INSERT INTO tenantry.purge_cursors (run_id, tenant, step, cutoff) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
    )
    .bind(run_id)
    .bind(ctx.tenant)
    .bind(step)
    .bind(cutoff)
    .execute(&mut *session)
    .await
    .map_err(|e| StepError::from_sqlx("making the purge cursor", &e))?;
    let mut cursor: Cursor = sqlx::query_as(
        "SELECT cutoff, position, block, deleted, not_deleted, batches, finished FROM tenantry.purge_cursors \
         WHERE run_id = $1 AND tenant = $2 AND step = $3",
    )
    .bind(run_id)
    .bind(ctx.tenant)
    .bind(step)
    .fetch_one(&mut *session)
    .await
    .map_err(|e| StepError::from_sqlx("reading the purge cursor", &e))?;
    let mut report = Report {
        table: format!("{}.{table}", p.schema),
        column: column.to_string(),
        cutoff: cursor.cutoff,
        retention: humantime::format_duration(retention).to_string(),
        retention_from,
        mode,
        deleted: cursor.deleted,
        not_deleted: cursor.not_deleted,
        batches: cursor.batches,
        resumed_after: cursor.batches,
        max_batch_ms: 0,
        throttled_ms: 0,
        complete: cursor.finished,
        stopped: None,
    };
    let batch_sql = match &walk {
        Walk::Index(_) => format!(
            "WITH doomed AS (SELECT ctid, {col} AS at FROM {target} WHERE {col} < {cutoff_param} AND {col} >= coalesce($2, '-infinity'::timestamptz){tenant_filter} ORDER BY {col} LIMIT $4), \
                  gone AS (DELETE FROM {target} WHERE ctid = ANY (ARRAY(SELECT ctid FROM doomed)) AND {col} < {cutoff_param}{tenant_filter} RETURNING 1) \
             SELECT (SELECT count(*) FROM doomed) AS seen, (SELECT count(*) FROM gone) AS deleted, \
                    (SELECT max(at)::timestamptz FROM doomed) AS position, NULL::int8 AS block, false AS last"
        ),
        Walk::Blocks(_) => format!(
            "WITH gone AS (DELETE FROM {target} WHERE ctid >= format('(%s,0)', $5::int8)::tid \
                              AND ctid < format('(%s,0)', $5::int8 + $4)::tid AND {col} < {cutoff_param}{tenant_filter} RETURNING 1) \
             SELECT 0::int8 AS seen, (SELECT count(*) FROM gone) AS deleted, NULL::timestamptz AS position, \
                    $5::int8 + $4 AS block, \
                    $5::int8 + $4 >= pg_relation_size($6::int8::oid) / current_setting('block_size')::int8 AS last"
        ),
    };
    let limit = match walk {
        Walk::Index(_) => i64::from(batch_size),
        Walk::Blocks(blocks) => blocks,
    };
    let pause = o.pause.map_or(DEFAULT_PAUSE, |d| d.0);
    let lock_timeout = o.lock_timeout.map_or(DEFAULT_LOCK_TIMEOUT, |d| d.0);
    let started = Instant::now();
    let mut waits = 0;
    while !cursor.finished {
        if let Some(budget) = o.time_budget
            && started.elapsed() >= budget.0
        {
            report.stopped = Some(format!("time budget {budget} spent; the next run goes on from here"));
            break;
        }
        if ctx.cancel.is_cancelled() {
            return Err(StepError::transient(format!("{who}: stopped after batch {}", cursor.batches)));
        }
        if let Some(throttle) = ctx.throttle {
            let (waited, gave_up) = crate::engine::load::hold(throttle, ctx.databases, &p.host, ctx.cancel).await;
            report.throttled_ms += waited.as_millis() as u64;
            if let Some(why) = gave_up {
                report.stopped = Some(format!(
                    "held for max_wait ({}) by the host's load ({why}); the next run goes on from here",
                    humantime::format_duration(throttle.max_wait())
                ));
                break;
            }
            if ctx.cancel.is_cancelled() {
                continue;
            }
        }
        ctx.fence.check().await?;
        let batch_started = Instant::now();
        match batch(&mut session, ctx, &batch_sql, &cursor, limit, facts.oid, lock_timeout).await {
            Ok(next) => {
                report.max_batch_ms = report.max_batch_ms.max(batch_started.elapsed().as_millis() as u64);
                cursor = next;
                waits = 0;
            }
            Err(BatchError::Locked) if waits < LOCK_RETRIES => waits += 1,
            Err(BatchError::Locked) => {
                return Err(StepError::transient(format!(
                    "{who}: batch {} waited for locks longer than lock_timeout ({}ms) {} times",
                    cursor.batches + 1,
                    lock_timeout.as_millis(),
                    waits + 1
                )));
            }
            Err(BatchError::Moved(batches)) => {
                return Err(StepError::transient(format!(
                    "{who}: another attempt of this purge advanced its cursor (batch {batches}, this one expected {}); stopping",
                    cursor.batches
                )));
            }
            Err(BatchError::Step(e)) => return Err(e.within(&who)),
        }
        if !cursor.finished && !pause.is_zero() {
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = ctx.cancel.cancelled() => {}
            }
        }
    }
    report.deleted = cursor.deleted;
    report.not_deleted = cursor.not_deleted;
    report.batches = cursor.batches;
    report.complete = cursor.finished;
    // Old cursors of this database go with the purge that finds them.
    let _ = sqlx::query(
        "DELETE FROM tenantry.purge_cursors WHERE updated_at < now() - make_interval(days => $1 * CASE WHEN finished THEN 1 ELSE 3 END)",
    )
    .bind(CURSOR_RETENTION_DAYS)
        .execute(&mut *session)
        .await;
    session.release().await;
    serde_json::to_value(report).map_err(|e| StepError::permanent(e.to_string()))
}

/// `now` − `retention`, or why it cannot be.
fn cutoff_of(now: DateTime<Utc>, retention: Duration) -> Result<DateTime<Utc>, String> {
    chrono::TimeDelta::from_std(retention)
        .ok()
        .and_then(|d| now.checked_sub_signed(d))
        .ok_or_else(|| format!("a retention of {} reaches before the calendar", humantime::format_duration(retention)))
}

enum BatchError {
    /// `lock_timeout` passed (the batch is rolled back; try again).
    Locked,
    /// The cursor is not where this attempt left it: another attempt is purging.
    Moved(i32),
    Step(StepError),
}

#[derive(sqlx::FromRow)]
struct Batch {
    seen: i64,
    deleted: i64,
    position: Option<DateTime<Utc>>,
    block: Option<i64>,
    last: bool,
}

/// One batch in one transaction: lock the cursor row and check it, delete, advance it.
async fn batch(
    conn: &mut sqlx::PgConnection,
    ctx: &StepContext<'_>,
    sql: &str,
    cursor: &Cursor,
    limit: i64,
    oid: i64,
    lock_timeout: Duration,
) -> Result<Cursor, BatchError> {
    let failed = |e: sqlx::Error| match e.as_database_error().and_then(|d| d.code()).as_deref() {
        Some("55P03") => BatchError::Locked,
        _ => BatchError::Step(StepError::from_sqlx("deleting a batch", &e)),
    };
    let mut tx = receipt::begin(conn, &ctx.placement.schema, ctx.run, ctx.tenant).await.map_err(BatchError::Step)?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "SET LOCAL lock_timeout = {}; SET LOCAL idle_in_transaction_session_timeout = {}",
        lock_timeout.as_millis(),
        IDLE_IN_BATCH.as_millis()
    )))
    .execute(&mut *tx)
    .await
    .map_err(failed)?;
    let batches: i32 = sqlx::query_scalar(
        "SELECT batches FROM tenantry.purge_cursors WHERE run_id = $1 AND tenant = $2 AND step = $3 FOR UPDATE",
    )
    .bind(ctx.receipt_run())
    .bind(ctx.tenant)
    .bind(ctx.unit)
    .fetch_one(&mut *tx)
    .await
    .map_err(failed)?;
    if batches != cursor.batches {
        return Err(BatchError::Moved(batches));
    }
    let b: Batch = sqlx::query_as(sqlx::AssertSqlSafe(sql.to_string()))
        .bind(cursor.cutoff)
        .bind(cursor.position)
        .bind(ctx.tenant)
        .bind(limit)
        .bind(cursor.block.unwrap_or(0))
        .bind(oid)
        .fetch_one(&mut *tx)
        .await
        .map_err(failed)?;
    if b.block.is_none() && b.deleted == 0 && b.seen == limit && b.position == cursor.position {
        // The same rows again: every one refused (a trigger, row-level security) or moved
        // by concurrent updates. Going on would loop; the transaction is rolled back.
        return Err(BatchError::Step(StepError::transient(format!(
            "batch {} found {limit} rows older than the cutoff at {} and could delete none of them (a BEFORE DELETE trigger, row-level security, or rows updated meanwhile)",
            cursor.batches + 1,
            b.position.map(|p| p.to_rfc3339()).unwrap_or_default()
        ))));
    }
    let finished = if b.block.is_some() { b.last } else { b.seen < limit };
    let next = Cursor {
        cutoff: cursor.cutoff,
        position: b.position.or(cursor.position),
        block: b.block,
        deleted: cursor.deleted + b.deleted,
        not_deleted: cursor.not_deleted + (b.seen - b.deleted).max(0),
        batches: cursor.batches + 1,
        finished,
    };
    sqlx::query(
        "UPDATE tenantry.purge_cursors SET position = $4, block = $5, deleted = $6, batches = $7, finished = $8, not_deleted = $9, \
                updated_at = now() WHERE run_id = $1 AND tenant = $2 AND step = $3",
    )
    .bind(ctx.receipt_run())
    .bind(ctx.tenant)
    .bind(ctx.unit)
    .bind(next.position)
    .bind(next.block)
    .bind(next.deleted)
    .bind(next.batches)
    .bind(next.finished)
    .bind(next.not_deleted)
    .execute(&mut *tx)
    .await
    .map_err(failed)?;
    tx.commit().await.map_err(failed)?;
    Ok(next)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn a_tenant_label_overrides_the_default_retention() {
        let o = Options {
            older_than: Some(HumanDuration(Duration::from_secs(90 * 86_400))),
            retention_label: Some("retention_days".into()),
            ..Options::default()
        };
        let none = BTreeMap::new();
        assert_eq!(retention(&o, &none).unwrap(), (Duration::from_secs(90 * 86_400), "older_than".into()));
        let days = BTreeMap::from([("retention_days".to_string(), "30".to_string())]);
        assert_eq!(retention(&o, &days).unwrap().0, Duration::from_secs(30 * 86_400));
        let hours = BTreeMap::from([("retention_days".to_string(), "36h".to_string())]);
        assert_eq!(retention(&o, &hours).unwrap().0, Duration::from_secs(36 * 3600));
        // "6m" is six minutes: under a day, refused rather than emptying the table.
        let minutes = BTreeMap::from([("retention_days".to_string(), "6m".to_string())]);
        assert!(retention(&o, &minutes).unwrap_err().contains("outside the accepted 1day"));
        let huge = BTreeMap::from([("retention_days".to_string(), "213503982334602".to_string())]);
        assert!(retention(&o, &huge).is_err(), "an overflowing day count is refused");
        let hourly = Options {
            older_than: Some(HumanDuration(Duration::from_secs(7200))),
            min_retention: Some(HumanDuration(Duration::from_secs(3600))),
            ..Options::default()
        };
        assert!(retention(&hourly, &none).is_ok(), "min_retention lowers the floor");
        let bad = BTreeMap::from([("retention_days".to_string(), "forever".to_string())]);
        assert!(retention(&o, &bad).unwrap_err().contains("\"forever\" is not a retention"));
        let zero = BTreeMap::from([("retention_days".to_string(), "0".to_string())]);
        assert!(retention(&o, &zero).is_err(), "a zero retention would purge everything");
        let label_only = Options { retention_label: Some("retention_days".into()), ..Options::default() };
        assert!(retention(&label_only, &none).unwrap_err().contains("has no label retention_days"));
    }
}
