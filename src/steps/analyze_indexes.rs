//! The `analyze_indexes` step: the tenant's unused, duplicate, redundant (left-prefix), invalid and bloated indexes as findings, from one catalog read per database; optionally `REINDEX INDEX CONCURRENTLY` of the invalid ones.
//!
//! - **Unused**: no scan since the statistics began (`pg_stat_user_indexes.idx_scan = 0`,
//!   with the database's `stats_reset` stated), not unique and not backing a primary key,
//!   unique or exclusion constraint (those enforce something even when never read).
//! - **Duplicate**: the same table, method, columns, operator classes, expressions and
//!   predicate as another index; the one backing a constraint (else a unique one, else the
//!   most scanned, else the oldest) is kept, the others are the findings.
//! - **Redundant**: a plain b-tree whose columns are the leading columns of another b-tree
//!   of the same table (same operator classes), not unique, no predicate or expression.
//! - **Invalid**: `indisvalid = false` (a `CREATE INDEX CONCURRENTLY` that failed): it is
//!   maintained on every write and never used. With `reindex_invalid = true` it is rebuilt
//!   with `REINDEX INDEX CONCURRENTLY` under `lock_timeout`, behind the lease's fence.
//! - **Bloated**: a b-tree of at least 1 MiB whose size is `min_bloat_ratio` (default 0.3)
//!   or more above the estimate from its rows and the columns' average widths in
//!   `pg_stats` (the usual estimate; it needs the table analysed, and says so otherwise).
//!
//! For `schema` isolation one query reads the indexes of every schema of the database, and
//! the tenants of that database on this worker share it for a minute (see
//! [`SharedReads`]); each takes its own schema's part. The output's `findings` are stable
//! records (`kind`, `schema`, `table`, `index`, `bytes`, `detail`) so a run's report can
//! count them across the fleet ("unused in 183 of 200 tenants").

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::define::{Findings, Step};
use super::{StepContext, StepError};
use crate::catalog::{Engine, Isolation, ServiceSpec};
use crate::engine::postgres::quote_ident;
use crate::engine::shared_reads::SharedReads;
use crate::units::HumanDuration;

pub struct AnalyzeIndexes;

const DEFAULT_MIN_BLOAT_RATIO: f64 = 0.3;
/// Smaller indexes are not worth a bloat finding (and their estimate is noise).
const MIN_BLOAT_BYTES: i64 = 1 << 20;
const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(5);
const CATALOG_TTL: Duration = Duration::from_secs(60);

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Options {
    /// Rebuild invalid indexes with `REINDEX INDEX CONCURRENTLY` (default false: report).
    pub reindex_invalid: Option<bool>,
    /// Report a b-tree whose size is this much above its estimate (default 0.3).
    pub min_bloat_ratio: Option<f64>,
    /// How long a `REINDEX` waits for a lock before the index is left for another night.
    pub lock_timeout: Option<HumanDuration>,
}

impl Step for AnalyzeIndexes {
    type Options = Options;

    fn fits(service: &ServiceSpec) -> Result<(), String> {
        if service.engine != Engine::Postgres {
            return Err(format!("analyze_indexes runs on PostgreSQL services only, not {}", service.engine));
        }
        Ok(())
    }

    fn check(o: &Options, out: &mut Findings) {
        super::checks::check_ratio("min_bloat_ratio", o.min_bloat_ratio, out);
        super::seed::check_lock_timeout(o.lock_timeout, out);
    }

    async fn run(ctx: &StepContext<'_>, options: &Options) -> Result<serde_json::Value, StepError> {
        run(ctx, options).await
    }
}

/// One index, as the catalog describes it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct IndexInfo {
    pub schema: String,
    pub table: String,
    pub index: String,
    /// Older indexes have smaller oids (until oids wrap around).
    pub oid: i64,
    pub method: String,
    pub columns: Vec<String>,
    /// `indkey` and `indclass` as text: equal text, equal columns and operator classes.
    pub keys: String,
    pub classes: String,
    pub expressions: Option<String>,
    pub predicate: Option<String>,
    pub unique: bool,
    pub backs_constraint: bool,
    pub valid: bool,
    pub scans: i64,
    pub bytes: i64,
    pub pages: i64,
    pub tuples: f64,
    /// Sum of the average widths of its columns (`pg_stats`); `None` before an ANALYZE.
    pub width: Option<i64>,
}

/// A finding about one index.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Finding {
    pub kind: &'static str,
    pub schema: String,
    pub table: String,
    pub index: String,
    pub bytes: i64,
    pub detail: String,
}

/// What makes two indexes the same: schema, table, method, keys, operator classes,
/// expressions, predicate.
type Definition<'a> = (&'a str, &'a str, &'a str, &'a str, &'a str, Option<&'a str>, Option<&'a str>);

/// The findings about `indexes` (all of one target).
pub fn findings(indexes: &[IndexInfo], min_bloat_ratio: f64, block_size: i64, since: &str) -> Vec<Finding> {
    let finding = |i: &IndexInfo, kind, detail: String| Finding {
        kind,
        schema: i.schema.clone(),
        table: i.table.clone(),
        index: i.index.clone(),
        bytes: i.bytes,
        detail,
    };
    let mut out = Vec::new();
    // Duplicates: group identical definitions; keep the one backing a constraint, else a
    // unique one, else the most scanned, else the oldest.
    let mut same: BTreeMap<Definition<'_>, Vec<&IndexInfo>> = BTreeMap::new();
    for i in indexes.iter().filter(|i| i.valid) {
        let key = (
            i.schema.as_str(),
            i.table.as_str(),
            i.method.as_str(),
            i.keys.as_str(),
            i.classes.as_str(),
            i.expressions.as_deref(),
            i.predicate.as_deref(),
        );
        same.entry(key).or_default().push(i);
    }
    let mut duplicate = std::collections::BTreeSet::new();
    for group in same.values().filter(|g| g.len() > 1) {
        let mut group = group.clone();
        group.sort_by_key(|i| (!i.backs_constraint, !i.unique, -i.scans, i.oid));
        for extra in &group[1..] {
            duplicate.insert(extra.index.clone());
            out.push(finding(extra, "duplicate", format!("same definition as {}", group[0].index)));
        }
    }
    for i in indexes {
        if !i.valid {
            out.push(finding(
                i,
                "invalid",
                "not valid (a CREATE INDEX CONCURRENTLY that failed): maintained on every write, never used"
                    .to_string(),
            ));
            continue;
        }
        if duplicate.contains(&i.index) {
            continue;
        }
        if i.scans == 0 && !i.unique && !i.backs_constraint {
            out.push(finding(i, "unused", format!("no scan since {since}")));
        }
        let plain = |x: &IndexInfo| x.method == "btree" && x.expressions.is_none() && x.predicate.is_none();
        if plain(i) && !i.unique && !i.backs_constraint {
            let classes: Vec<&str> = i.classes.split_whitespace().collect();
            let wider = indexes.iter().find(|o| {
                o.index != i.index
                    && o.valid
                    && o.schema == i.schema
                    && o.table == i.table
                    && plain(o)
                    && o.columns.len() > i.columns.len()
                    && o.columns.starts_with(&i.columns)
                    && o.classes.split_whitespace().take(classes.len()).eq(classes.iter().copied())
            });
            if let Some(o) = wider {
                out.push(finding(i, "redundant", format!("its columns lead {} ({})", o.index, o.columns.join(", "))));
            }
        }
        if i.method == "btree" && i.bytes >= MIN_BLOAT_BYTES && i.pages > 1 {
            match i.width {
                Some(width) if i.tuples >= 0.0 => {
                    // An index tuple: 8 bytes of header, the key aligned to 8, a 4-byte line
                    // pointer; a leaf page holds (block − 24 header − 16 special) × 90 %.
                    let per_tuple = 8 + (width + 7) / 8 * 8 + 4;
                    let usable = (block_size - 40) as f64 * 0.9;
                    let expected = (i.tuples * per_tuple as f64 / usable).ceil() + 1.0;
                    let ratio = 1.0 - expected / i.pages as f64;
                    if ratio >= min_bloat_ratio {
                        out.push(finding(
                            i,
                            "bloated",
                            format!(
                                "about {:.0}% bloat: {} pages for an estimated {expected:.0}",
                                ratio * 100.0,
                                i.pages
                            ),
                        ));
                    }
                }
                _ => {}
            }
        }
    }
    out
}

/// Every index of a database (or of one schema), read once per database for
/// [`CATALOG_TTL`] for `schema` isolation.
static CATALOG: LazyLock<SharedReads<Vec<IndexInfo>>> = LazyLock::new(|| SharedReads::new(CATALOG_TTL));

async fn read_indexes(conn: &mut sqlx::PgConnection, schema: Option<&str>) -> Result<Vec<IndexInfo>, StepError> {
    sqlx::query_as(include_str!("analyze_indexes.sql"))
        .bind(schema)
        .fetch_all(conn)
        .await
        .map_err(|e| StepError::from_sqlx("reading the indexes", &e))
}

async fn run(ctx: &StepContext<'_>, o: &Options) -> Result<serde_json::Value, StepError> {
    let p = ctx.placement;
    let who = format!("tenant {}, service {}", ctx.tenant, p.service);
    let mut session = ctx.session().await?;
    let (block_size, stats_reset): (String, Option<DateTime<Utc>>) = sqlx::query_as(
        "SELECT current_setting('block_size'), (SELECT stats_reset FROM pg_stat_database WHERE datname = current_database())",
    )
    .fetch_one(&mut *session)
    .await
    .map_err(|e| StepError::from_sqlx("reading the statistics' age", &e))?;
    let indexes: Arc<Vec<IndexInfo>> = match p.isolation {
        Isolation::Schema => {
            // On the step's own session: asking the pool for a second connection while the
            // tenants holding its others wait for this read would stall them all.
            let conn: &mut sqlx::PgConnection = &mut session;
            let all = CATALOG
                .get(&format!("{}/{}", p.host, p.database), move || async move { read_indexes(conn, None).await })
                .await?;
            Arc::new(all.iter().filter(|i| i.schema == p.schema).cloned().collect())
        }
        Isolation::Row => Arc::new(read_indexes(&mut session, Some(&p.schema)).await?),
        Isolation::Database => Arc::new(read_indexes(&mut session, None).await?),
    };
    let since = match stats_reset {
        Some(at) => format!(
            "the statistics were reset {} ago ({})",
            crate::storage::backups::age(ctx.clock.now() - at),
            at.format("%Y-%m-%d %H:%M UTC")
        ),
        None => "the statistics began (never reset)".to_string(),
    };
    let found = findings(
        &indexes,
        o.min_bloat_ratio.unwrap_or(DEFAULT_MIN_BLOAT_RATIO),
        block_size.parse().unwrap_or(8192),
        &since,
    );

    let mut reindexed = Vec::new();
    let mut not_reindexed = Vec::new();
    if o.reindex_invalid.unwrap_or(false) {
        let lock_timeout = o.lock_timeout.map_or(DEFAULT_LOCK_TIMEOUT, |d| d.0);
        session.mark_dirty();
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("SET lock_timeout = {}", lock_timeout.as_millis())))
            .execute(&mut *session)
            .await
            .map_err(|e| StepError::from_sqlx("setting lock_timeout", &e))?;
        for f in found.iter().filter(|f| f.kind == "invalid") {
            let name = format!("{}.{}", f.schema, f.index);
            if ctx.cancel.is_cancelled() {
                return Err(StepError::transient(format!("{who}: stopped before rebuilding {name}")));
            }
            ctx.fence.check().await?;
            let statement = format!("REINDEX INDEX CONCURRENTLY {}.{}", quote_ident(&f.schema), quote_ident(&f.index));
            match sqlx::raw_sql(sqlx::AssertSqlSafe(statement)).execute(&mut *session).await {
                Ok(_) => reindexed.push(name),
                Err(sqlx::Error::Database(e)) => {
                    not_reindexed.push(serde_json::json!({ "index": name, "reason": e.message() }))
                }
                Err(e) => return Err(StepError::from_sqlx(&format!("{who}: rebuilding {name}"), &e)),
            }
        }
    }
    session.release().await;
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for f in &found {
        *counts.entry(f.kind).or_default() += 1;
    }
    Ok(serde_json::json!({
        "indexes": indexes.len(),
        "counts": counts,
        "findings": found,
        "statistics_since": stats_reset,
        "reindexed": reindexed,
        "not_reindexed": not_reindexed,
    }))
}

/// One finding counted across the fleet: how many of the service's tenants that ran the
/// step have it ("`visits_patient_idx` unused in 183 of 200 tenants of clinic").
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FleetFinding {
    pub service: String,
    pub kind: String,
    pub table: String,
    pub index: String,
    pub tenants: usize,
    pub of: usize,
}

/// Counts the findings of `outputs` (each an `analyze_indexes` output of one tenant, with
/// its service) by service, kind, table and index; the most widespread first. Indexes are
/// named without their schema: schema tenants have the same index in every schema.
pub fn aggregate<'a>(outputs: impl IntoIterator<Item = (&'a str, &'a serde_json::Value)>) -> Vec<FleetFinding> {
    let mut ran: BTreeMap<&str, usize> = BTreeMap::new();
    let mut counts: BTreeMap<(&str, &str, &str, &str), usize> = BTreeMap::new();
    for (service, output) in outputs {
        let Some(found) = output["findings"].as_array() else { continue };
        *ran.entry(service).or_default() += 1;
        let mut seen = std::collections::BTreeSet::new();
        for f in found {
            let key = (
                service,
                f["kind"].as_str().unwrap_or_default(),
                f["table"].as_str().unwrap_or_default(),
                f["index"].as_str().unwrap_or_default(),
            );
            if seen.insert(key) {
                *counts.entry(key).or_default() += 1;
            }
        }
    }
    let mut out: Vec<FleetFinding> = counts
        .into_iter()
        .map(|((service, kind, table, index), tenants)| FleetFinding {
            service: service.to_string(),
            kind: kind.to_string(),
            table: table.to_string(),
            index: index.to_string(),
            tenants,
            of: ran.get(service).copied().unwrap_or_default(),
        })
        .collect();
    out.sort_by(|a, b| {
        b.tenants.cmp(&a.tenants).then_with(|| (&a.service, &a.kind, &a.index).cmp(&(&b.service, &b.kind, &b.index)))
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(name: &str, columns: &[&str]) -> IndexInfo {
        IndexInfo {
            schema: "s".into(),
            table: "t".into(),
            index: name.into(),
            oid: name.len() as i64,
            method: "btree".into(),
            columns: columns.iter().map(|c| c.to_string()).collect(),
            keys: columns.iter().map(|c| (c.as_bytes()[0] - b'a' + 1).to_string()).collect::<Vec<_>>().join(" "),
            classes: columns.iter().map(|_| "1978").collect::<Vec<_>>().join(" "),
            expressions: None,
            predicate: None,
            unique: false,
            backs_constraint: false,
            valid: true,
            scans: 5,
            bytes: 8192,
            pages: 1,
            tuples: 0.0,
            width: None,
        }
    }

    #[test]
    fn unused_duplicate_redundant_invalid_and_bloated_indexes_are_told_apart() {
        let mut pkey = index("t_pkey", &["a"]);
        pkey.unique = true;
        pkey.backs_constraint = true;
        pkey.scans = 0;
        let mut unused = index("t_c_idx", &["c"]);
        unused.scans = 0;
        let dup = index("t_a_dup", &["a"]);
        let prefix = index("t_b_idx", &["b"]);
        let wide = index("t_b_c_idx", &["b", "c"]);
        let mut invalid = index("t_d_idx", &["d"]);
        invalid.valid = false;
        invalid.scans = 0;
        let mut bloated = index("t_e_idx", &["e"]);
        (bloated.bytes, bloated.pages, bloated.tuples, bloated.width) = (8 << 20, 1024, 10_000.0, Some(4));
        let found = findings(&[pkey, unused, dup, prefix, wide, invalid, bloated], 0.3, 8192, "then");
        let kinds: Vec<(&str, &str)> = found.iter().map(|f| (f.kind, f.index.as_str())).collect();
        assert_eq!(
            kinds,
            [
                ("duplicate", "t_a_dup"),
                ("unused", "t_c_idx"),
                ("redundant", "t_b_idx"),
                ("invalid", "t_d_idx"),
                ("bloated", "t_e_idx"),
            ]
        );
        assert_eq!(found[0].detail, "same definition as t_pkey");
        assert!(found[4].detail.starts_with("about 97% bloat"), "{}", found[4].detail);
    }

    #[test]
    fn findings_are_counted_across_the_fleet_per_service() {
        let output = |indexes: &[(&str, &str)]| {
            serde_json::json!({ "findings": indexes.iter().map(|(k, i)| serde_json::json!({
                "kind": k, "schema": "s", "table": "visits", "index": i, "bytes": 1, "detail": ""
            })).collect::<Vec<_>>() })
        };
        let a = output(&[("unused", "visits_patient_idx"), ("duplicate", "visits_dup")]);
        let b = output(&[("unused", "visits_patient_idx")]);
        let c = output(&[]);
        let failed = serde_json::json!({ "error": "no findings: the step failed" });
        let fleet = aggregate([("clinic", &a), ("clinic", &b), ("clinic", &c), ("core", &b), ("clinic", &failed)]);
        let lines: Vec<String> =
            fleet.iter().map(|f| format!("{} {} {} {}/{}", f.service, f.kind, f.index, f.tenants, f.of)).collect();
        assert_eq!(
            lines,
            [
                "clinic unused visits_patient_idx 2/3",
                "clinic duplicate visits_dup 1/3",
                "core unused visits_patient_idx 1/1"
            ]
        );
    }
}
