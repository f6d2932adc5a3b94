//! The `vacuum` step: the tenant's tables past their thresholds (dead tuples, time since the last vacuum or analyse, transaction-id age) vacuumed and analysed one by one under a `lock_timeout`, inside an optional daily window, with the tenant's transaction-id age against warning and critical limits.
//!
//! - **Which tables**: those of the tenant's database (`database` isolation) or schema
//!   (`schema`, `row`), from `pg_stat_user_tables`. For `schema` isolation the statistics of
//!   every schema of the database are read in one query and shared by the tenants of that
//!   database that start within a minute on this worker ([`SharedReads`]), not read once per
//!   schema. A table is taken when it has at least `min_dead_tuples` dead tuples making at
//!   least `min_dead_ratio` of its tuples, when its `relfrozenxid` age is over
//!   `max_table_xid_age` (then `FREEZE`), or when its last vacuum (analyse) is older than
//!   `max_since_vacuum` (`max_since_analyze`, for tables changed since). Oldest
//!   transaction ids first, then the most dead tuples.
//! - **How**: `VACUUM (ANALYZE)` (`analyze = false`: without), `ANALYZE` for a table that
//!   only needs statistics, `VACUUM (FULL, ANALYZE)` only for the tables the workflow names
//!   in `full` (it rewrites the table under an exclusive lock). Each statement runs under
//!   `lock_timeout` (default 5s): a table locked by another session is skipped and
//!   reported, and the others go on. A table that fails otherwise is reported too; the step
//!   fails at the end, naming them. Before each table: the lease's fence, the step's
//!   cancellation, and the window.
//! - **Window**: `window = "01:00-05:00"` in the workflow's time zone: once it is closed no
//!   new table starts (the one running finishes); those left are reported as not started.
//! - **Transaction-id age** of the tenant (the database's `datfrozenxid` age for `database`
//!   isolation, the oldest table of the schema otherwise) is reported, with a warning over
//!   `xid_warning` and the step failing over `xid_critical`, after vacuuming what it could.
//! - `row` isolation: the tenants of a target share its tables; one vacuum of a target runs
//!   at a time (an advisory lock), and the tenants after the first find nothing over the
//!   thresholds.

use std::sync::LazyLock;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::define::{Findings, Step};
use super::{StepContext, StepError};
use crate::catalog::{Engine, Isolation, ServiceSpec};
use crate::engine::postgres::quote_ident;
use crate::engine::shared_reads::SharedReads;
use crate::units::{DailyWindow, HumanDuration};

pub struct Vacuum;

const DEFAULT_MIN_DEAD_TUPLES: u64 = 1000;
const DEFAULT_MIN_DEAD_RATIO: f64 = 0.1;
/// PostgreSQL's `vacuum_freeze_table_age` default: past it, a vacuum scans the whole table.
const DEFAULT_MAX_TABLE_XID_AGE: u64 = 150_000_000;
const DEFAULT_XID_WARNING: u64 = 500_000_000;
/// Wraparound protection stops writes at about 2.1 billion; autovacuum's emergency starts
/// at 200 million by default. 1.2 billion leaves days to act at high write rates.
const DEFAULT_XID_CRITICAL: u64 = 1_200_000_000;
const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one statistics read of a database serves the tenants of its schemas.
const STATS_TTL: Duration = Duration::from_secs(60);

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Options {
    /// Dead tuples a table needs before it is vacuumed (default 1000).
    pub min_dead_tuples: Option<u64>,
    /// And the share of its tuples they make (default 0.1).
    pub min_dead_ratio: Option<f64>,
    /// `VACUUM (ANALYZE)` rather than a plain `VACUUM` (default true).
    pub analyze: Option<bool>,
    /// A table whose oldest transaction id is older than this is vacuumed with `FREEZE`
    /// (default 150 million).
    pub max_table_xid_age: Option<u64>,
    /// A table not vacuumed for this long is vacuumed whatever its dead tuples.
    pub max_since_vacuum: Option<HumanDuration>,
    /// A table changed since its last analyse, which is older than this, is analysed.
    pub max_since_analyze: Option<HumanDuration>,
    /// Tables (by name, in the tenant's schema) to vacuum with `FULL` when taken.
    pub full: Vec<String>,
    /// How long a statement waits for a table's lock before the table is skipped.
    pub lock_timeout: Option<HumanDuration>,
    /// When new tables may start, in the workflow's time zone (`"01:00-05:00"`).
    pub window: Option<DailyWindow>,
    /// Transaction-id age of the tenant reported as a warning (default 500 million).
    pub xid_warning: Option<u64>,
    /// Transaction-id age that fails the step (default 1.2 billion).
    pub xid_critical: Option<u64>,
}

impl Step for Vacuum {
    type Options = Options;

    fn fits(service: &ServiceSpec) -> Result<(), String> {
        if service.engine != Engine::Postgres {
            return Err(format!("vacuum runs on PostgreSQL services only, not {}", service.engine));
        }
        Ok(())
    }

    fn check(o: &Options, out: &mut Findings) {
        super::checks::check_ratio("min_dead_ratio", o.min_dead_ratio, out);
        super::seed::check_lock_timeout(o.lock_timeout, out);
        if let (Some(w), Some(c)) = (o.xid_warning, o.xid_critical)
            && w > c
        {
            out.push(("xid_warning".into(), format!("xid_warning ({w}) is above xid_critical ({c})")));
        }
        if o.full.iter().any(|t| t.trim().is_empty()) {
            out.push(("full".into(), "full names an empty table".to_string()));
        }
    }

    async fn run(ctx: &StepContext<'_>, options: &Options) -> Result<serde_json::Value, StepError> {
        run(ctx, options).await
    }
}

/// One table's statistics.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TableStats {
    pub schema: String,
    pub table: String,
    pub live: i64,
    pub dead: i64,
    pub modified_since_analyze: i64,
    pub last_vacuum: Option<DateTime<Utc>>,
    pub last_analyze: Option<DateTime<Utc>>,
    pub xid_age: i64,
}

/// What the step does to a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Vacuum,
    VacuumAnalyze,
    VacuumFreeze,
    VacuumFull,
    Analyze,
}

impl Action {
    fn statement(self, table: &str) -> String {
        let options = match self {
            Self::Analyze => return format!("ANALYZE {table}"),
            Self::Vacuum => "",
            Self::VacuumAnalyze => " (ANALYZE)",
            Self::VacuumFreeze => " (FREEZE, ANALYZE)",
            Self::VacuumFull => " (FULL, ANALYZE)",
        };
        format!("VACUUM{options} {table}")
    }
}

/// A table chosen, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Chosen {
    pub index: usize,
    pub action: Action,
    pub reasons: Vec<String>,
}

/// The tables past the thresholds at `now`, in the order to vacuum them.
pub fn choose(tables: &[TableStats], o: &Options, now: DateTime<Utc>) -> Vec<Chosen> {
    let min_dead = o.min_dead_tuples.unwrap_or(DEFAULT_MIN_DEAD_TUPLES) as i64;
    let min_ratio = o.min_dead_ratio.unwrap_or(DEFAULT_MIN_DEAD_RATIO);
    let max_xid = o.max_table_xid_age.unwrap_or(DEFAULT_MAX_TABLE_XID_AGE) as i64;
    let older = |at: Option<DateTime<Utc>>, limit: Option<HumanDuration>| match (limit, at) {
        (None, _) => None,
        (Some(l), None) => Some(format!("never (limit {l})")),
        (Some(l), Some(at)) => {
            let age = (now - at).to_std().unwrap_or_default();
            (age > l.0).then(|| format!("{} ago (limit {l})", crate::storage::backups::age(now - at)))
        }
    };
    let mut out = Vec::new();
    for (index, t) in tables.iter().enumerate() {
        let mut reasons = Vec::new();
        let mut vacuum = false;
        let total = (t.live + t.dead).max(1);
        let ratio = t.dead as f64 / total as f64;
        if t.dead >= min_dead && ratio >= min_ratio {
            reasons.push(format!("{} dead tuples ({:.0}%)", t.dead, ratio * 100.0));
            vacuum = true;
        }
        let freeze = t.xid_age > max_xid;
        if freeze {
            reasons.push(format!("transaction-id age {} > {max_xid}", t.xid_age));
        }
        if let Some(why) = older(t.last_vacuum, o.max_since_vacuum) {
            reasons.push(format!("last vacuum {why}"));
            vacuum = true;
        }
        let stale_stats = t.modified_since_analyze > 0 && o.max_since_analyze.is_some();
        let analyze_only = match older(t.last_analyze, o.max_since_analyze) {
            Some(why) if stale_stats => {
                reasons.push(format!("last analyse {why}, {} rows changed since", t.modified_since_analyze));
                !vacuum && !freeze
            }
            _ => false,
        };
        if reasons.is_empty() {
            continue;
        }
        let action = if o.full.iter().any(|f| f == &t.table) && (vacuum || freeze) {
            Action::VacuumFull
        } else if freeze {
            Action::VacuumFreeze
        } else if analyze_only {
            Action::Analyze
        } else if o.analyze.unwrap_or(true) {
            Action::VacuumAnalyze
        } else {
            Action::Vacuum
        };
        out.push(Chosen { index, action, reasons });
    }
    out.sort_by_key(|c| (-tables[c.index].xid_age, -tables[c.index].dead, tables[c.index].table.clone()));
    out
}

/// Statistics of every user table of a database, by schema, read once per database for
/// [`STATS_TTL`] for `schema` isolation.
static STATS: LazyLock<SharedReads<Vec<TableStats>>> = LazyLock::new(|| SharedReads::new(STATS_TTL));

async fn read_stats(conn: &mut sqlx::PgConnection, schema: Option<&str>) -> Result<Vec<TableStats>, StepError> {
    sqlx::query_as(
        "SELECT s.schemaname::text AS schema, s.relname::text AS table, s.n_live_tup AS live, \
                s.n_dead_tup AS dead, s.n_mod_since_analyze AS modified_since_analyze, \
                greatest(s.last_vacuum, s.last_autovacuum) AS last_vacuum, \
                greatest(s.last_analyze, s.last_autoanalyze) AS last_analyze, \
                CASE WHEN c.relfrozenxid = '0'::xid THEN 0 ELSE age(c.relfrozenxid)::int8 END AS xid_age \
         FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid \
         WHERE ($1::text IS NULL OR s.schemaname = $1) \
         ORDER BY 1, 2",
    )
    .bind(schema)
    .fetch_all(conn)
    .await
    .map_err(|e| StepError::from_sqlx("reading table statistics", &e))
}

#[derive(Debug, Serialize)]
struct Done {
    table: String,
    action: Action,
    reasons: Vec<String>,
    dead_tuples: i64,
    ms: u64,
}

#[derive(Debug, Serialize)]
struct Skipped {
    table: String,
    reason: String,
}

async fn run(ctx: &StepContext<'_>, o: &Options) -> Result<serde_json::Value, StepError> {
    let p = ctx.placement;
    let who = format!("tenant {}, service {}", ctx.tenant, p.service);
    let mut session = ctx.session().await?;
    session.mark_dirty();
    if p.isolation == Isolation::Row {
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
            .bind(format!("tenantry_vacuum:{}", p.target_key()))
            .fetch_one(&mut *session)
            .await
            .map_err(|e| StepError::from_sqlx("taking the vacuum lock of the shared tables", &e))?;
        if !locked {
            session.release().await;
            return Ok(serde_json::json!({
                "skipped": "another tenant of these shared tables is vacuuming them now",
            }));
        }
    }
    let tables: std::sync::Arc<Vec<TableStats>> = match p.isolation {
        Isolation::Schema => {
            let key = format!("{}/{}", p.host, p.database);
            // On the step's own session: asking the pool for a second connection while the
            // tenants holding its others wait for this read would stall them all.
            let conn: &mut sqlx::PgConnection = &mut session;
            let all = STATS.get(&key, move || async move { read_stats(conn, None).await }).await?;
            std::sync::Arc::new(all.iter().filter(|t| t.schema == p.schema).cloned().collect())
        }
        Isolation::Row => std::sync::Arc::new(read_stats(&mut session, Some(&p.schema)).await?),
        Isolation::Database => std::sync::Arc::new(read_stats(&mut session, None).await?),
    };
    let xid_age: i64 = match p.isolation {
        Isolation::Database => {
            sqlx::query_scalar("SELECT age(datfrozenxid)::int8 FROM pg_database WHERE datname = current_database()")
                .fetch_one(&mut *session)
                .await
                .map_err(|e| StepError::from_sqlx("reading the database's transaction-id age", &e))?
        }
        _ => tables.iter().map(|t| t.xid_age).max().unwrap_or(0),
    };
    let chosen = choose(&tables, o, ctx.clock.now());
    let lock_timeout = o.lock_timeout.map_or(DEFAULT_LOCK_TIMEOUT, |d| d.0);
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("SET lock_timeout = {}", lock_timeout.as_millis())))
        .execute(&mut *session)
        .await
        .map_err(|e| StepError::from_sqlx("setting lock_timeout", &e))?;

    let mut done = Vec::new();
    let mut locked = Vec::new();
    let mut failed = Vec::new();
    let mut not_started = Vec::new();
    let mut window_closed = false;
    for c in &chosen {
        let t = &tables[c.index];
        let name = format!("{}.{}", t.schema, t.table);
        if window_closed || o.window.is_some_and(|w| !w.contains(ctx.clock.now().with_timezone(&ctx.timezone).time())) {
            window_closed = true;
            not_started.push(name);
            continue;
        }
        if ctx.cancel.is_cancelled() {
            return Err(StepError::transient(format!("{who}: stopped before vacuuming {name}")));
        }
        ctx.fence.check().await?;
        let statement = c.action.statement(&format!("{}.{}", quote_ident(&t.schema), quote_ident(&t.table)));
        let started = Instant::now();
        match sqlx::raw_sql(sqlx::AssertSqlSafe(statement)).execute(&mut *session).await {
            Ok(_) => done.push(Done {
                table: name,
                action: c.action,
                reasons: c.reasons.clone(),
                dead_tuples: t.dead,
                ms: started.elapsed().as_millis() as u64,
            }),
            Err(e) => {
                let code = match &e {
                    sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()),
                    _ => None,
                };
                match code.as_deref() {
                    // lock_not_available: another session holds a conflicting lock.
                    Some("55P03") => locked.push(Skipped {
                        table: name,
                        reason: format!(
                            "locked by another session for more than lock_timeout ({}ms)",
                            lock_timeout.as_millis()
                        ),
                    }),
                    // undefined_table: dropped since the statistics were read.
                    Some("42P01") => locked.push(Skipped { table: name, reason: "dropped meanwhile".to_string() }),
                    Some(_) => failed.push(Skipped { table: name, reason: e.to_string() }),
                    // Not the database's answer (the connection): the session is unusable.
                    None => return Err(StepError::from_sqlx(&format!("{who}: vacuuming {name}"), &e)),
                }
            }
        }
    }
    session.release().await;

    let warning = o.xid_warning.unwrap_or(DEFAULT_XID_WARNING) as i64;
    let critical = o.xid_critical.unwrap_or(DEFAULT_XID_CRITICAL) as i64;
    let xid_status = if xid_age > critical {
        "critical"
    } else if xid_age > warning {
        "warning"
    } else {
        "ok"
    };
    let report = serde_json::json!({
        "tables": tables.len(),
        "vacuumed": done,
        "skipped": locked,
        "failed": failed,
        "not_started": not_started,
        "window": o.window,
        "window_closed": window_closed,
        "xid_age": xid_age,
        "xid_status": xid_status,
    });
    let mut problems = Vec::new();
    if !failed.is_empty() {
        problems.push(format!(
            "{} table(s) failed: {}",
            failed.len(),
            failed.iter().map(|f| format!("{} ({})", f.table, f.reason)).collect::<Vec<_>>().join("; ")
        ));
    }
    if xid_status == "critical" {
        problems.push(format!("transaction-id age {xid_age} is over xid_critical ({critical}): wraparound is near"));
    }
    if problems.is_empty() {
        Ok(report)
    } else {
        Err(StepError::permanent(format!("{who}: {} ({report})", problems.join("; "))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(table: &str, live: i64, dead: i64, xid_age: i64) -> TableStats {
        TableStats {
            schema: "s".into(),
            table: table.into(),
            live,
            dead,
            modified_since_analyze: 0,
            last_vacuum: None,
            last_analyze: None,
            xid_age,
        }
    }

    #[test]
    fn tables_past_a_threshold_are_chosen_oldest_xids_first_then_most_dead() {
        let now = Utc::now();
        let mut analysed = stats("stale_stats", 100, 0, 10);
        analysed.modified_since_analyze = 50;
        analysed.last_analyze = Some(now - chrono::TimeDelta::days(3));
        analysed.last_vacuum = Some(now);
        let tables = [
            stats("clean", 10_000, 10, 100),
            stats("bloated", 10_000, 5_000, 100),
            stats("few_dead", 100, 900, 100),
            stats("old_xids", 10, 0, 200_000_000),
            stats("small_ratio", 1_000_000, 5_000, 100),
            analysed,
        ];
        let o = Options {
            full: vec!["bloated".into()],
            max_since_analyze: Some(HumanDuration(Duration::from_secs(86_400))),
            ..Options::default()
        };
        let chosen: Vec<(&str, Action)> =
            choose(&tables, &o, now).iter().map(|c| (tables[c.index].table.as_str(), c.action)).collect();
        assert_eq!(
            chosen,
            [("old_xids", Action::VacuumFreeze), ("bloated", Action::VacuumFull), ("stale_stats", Action::Analyze)]
        );
        let plain = Options { analyze: Some(false), min_dead_tuples: Some(500), ..Options::default() };
        let chosen: Vec<(&str, Action)> =
            choose(&tables, &plain, now).iter().map(|c| (tables[c.index].table.as_str(), c.action)).collect();
        assert_eq!(
            chosen,
            [("old_xids", Action::VacuumFreeze), ("bloated", Action::Vacuum), ("few_dead", Action::Vacuum)]
        );
        let never = Options { max_since_vacuum: Some(HumanDuration(Duration::from_secs(3600))), ..Options::default() };
        assert_eq!(choose(&tables, &never, now).len(), 5, "never vacuumed counts as too long ago");
    }

    #[test]
    fn statements_quote_nothing_themselves() {
        assert_eq!(Action::VacuumFreeze.statement("\"s\".\"t\""), "VACUUM (FREEZE, ANALYZE) \"s\".\"t\"");
        assert_eq!(Action::Analyze.statement("x"), "ANALYZE x");
        assert_eq!(Action::Vacuum.statement("x"), "VACUUM x");
    }
}
