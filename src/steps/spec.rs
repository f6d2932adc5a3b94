//! A step as written in a workflow file: the kind, the common keys and every kind's options in one flat, strictly checked table.
//!
//! One flat struct (rather than a tagged enum) keeps toml's exact positions for unknown
//! keys and wrong types; which options belong to which kind is checked by `validate`
//! against [`StepKind::options`].

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::StepKind;
use crate::units::HumanDuration;

/// Keys every step may have.
pub const COMMON_OPTIONS: [&str; 4] = ["kind", "name", "services", "timeout"];

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StepSpec {
    pub kind: StepKind,
    /// A label for output; defaults to the kind.
    #[serde(default)]
    pub name: Option<String>,
    /// Services this step runs on; default: every service of the workflow's target.
    #[serde(default)]
    pub services: Option<Vec<String>>,
    /// Per-tenant time limit of this step; default: the workflow's `timeout`.
    #[serde(default)]
    pub timeout: Option<HumanDuration>,

    // migrate, seed, provision
    #[serde(default)]
    pub to: Option<String>,
    #[serde(default)]
    pub allow_out_of_order: Option<bool>,
    #[serde(default)]
    pub lock_timeout: Option<HumanDuration>,
    #[serde(default)]
    pub statement_timeout: Option<HumanDuration>,
    #[serde(default)]
    pub seed: Option<bool>,

    // backup, prune_backups, verify_restore, rds_snapshot, verify_snapshot
    #[serde(default)]
    pub compression: Option<u32>,
    #[serde(default)]
    pub keep_last: Option<u32>,
    #[serde(default)]
    pub keep_daily: Option<u32>,
    #[serde(default)]
    pub keep_weekly: Option<u32>,
    #[serde(default)]
    pub keep_monthly: Option<u32>,
    #[serde(default)]
    pub backup: Option<String>,
    #[serde(default)]
    pub sample: Option<f64>,
    #[serde(default)]
    pub smoke_queries: Option<Vec<String>>,
    #[serde(default)]
    pub scratch_host: Option<String>,

    // vacuum, analyze_indexes
    #[serde(default)]
    pub min_dead_tuples: Option<u64>,
    #[serde(default)]
    pub min_dead_ratio: Option<f64>,
    #[serde(default)]
    pub analyze: Option<bool>,
    #[serde(default)]
    pub reindex_invalid: Option<bool>,
    #[serde(default)]
    pub min_bloat_ratio: Option<f64>,

    // purge
    #[serde(default)]
    pub table: Option<String>,
    #[serde(default)]
    pub column: Option<String>,
    #[serde(default)]
    pub older_than: Option<HumanDuration>,
    #[serde(default)]
    pub retention_label: Option<String>,
    #[serde(default)]
    pub batch_size: Option<u32>,
    #[serde(default)]
    pub pause: Option<HumanDuration>,
    #[serde(default)]
    pub time_budget: Option<HumanDuration>,
    #[serde(default)]
    pub dry_run: Option<bool>,

    // health
    #[serde(default)]
    pub long_transaction: Option<HumanDuration>,
    #[serde(default)]
    pub max_xid_age: Option<u64>,

    // sql
    #[serde(default)]
    pub sql: Option<String>,
    #[serde(default)]
    pub file: Option<PathBuf>,
    #[serde(default)]
    pub transaction: Option<bool>,

    // drift
    #[serde(default)]
    pub reference: Option<String>,
}

impl StepSpec {
    pub fn label(&self) -> String {
        self.name.clone().unwrap_or_else(|| self.kind.to_string())
    }
}

impl StepSpec {
    /// Checks of option values that serde cannot express. Each finding names the key it is
    /// about, so `validate` can point at its line.
    pub fn check_values(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        let kind = self.kind;
        match kind {
            StepKind::Sql => match (&self.sql, &self.file) {
                (None, None) => {
                    out.push(("kind", "sql step needs `sql` (the statement) or `file` (a path to it)".to_string()))
                }
                (Some(_), Some(_)) => out.push(("file", "sql step takes `sql` or `file`, not both".to_string())),
                (Some(sql), None) if sql.trim().is_empty() => out.push(("sql", "sql step: `sql` is empty".to_string())),
                _ => {}
            },
            StepKind::Purge => {
                if self.table.as_deref().unwrap_or("").is_empty() {
                    out.push(("kind", "purge step needs `table` (the table to delete from)".to_string()));
                }
                if self.column.as_deref().unwrap_or("").is_empty() {
                    out.push((
                        "kind",
                        "purge step needs `column` (the timestamp column compared with the retention)".to_string(),
                    ));
                }
                if self.older_than.is_none() && self.retention_label.is_none() {
                    out.push((
                        "kind",
                        "purge step needs `older_than` (e.g. \"90d\") or `retention_label` (a tenant label holding days), or both"
                            .to_string(),
                    ));
                }
                if self.batch_size == Some(0) {
                    out.push(("batch_size", "batch_size must be at least 1".to_string()));
                }
            }
            StepKind::PruneBackups => {
                let keeps = [self.keep_last, self.keep_daily, self.keep_weekly, self.keep_monthly];
                if keeps.iter().all(|k| k.unwrap_or(0) == 0) {
                    out.push((
                        "kind",
                        "prune_backups without any keep_* would delete every backup; set keep_last, keep_daily, keep_weekly or keep_monthly"
                            .to_string(),
                    ));
                }
            }
            StepKind::RdsSnapshot if self.keep_last == Some(0) => {
                out.push(("keep_last", "keep_last = 0 would delete the snapshot just taken".to_string()));
            }
            _ => {}
        }
        if let Some(level) = self.compression
            && level > 9
        {
            out.push(("compression", format!("compression must be 0-9, not {level}")));
        }
        if let Some(sample) = self.sample
            && !(sample > 0.0 && sample <= 100.0)
        {
            out.push(("sample", format!("sample is a percentage of tenants and must be in (0, 100], not {sample}")));
        }
        for (key, ratio) in [("min_dead_ratio", self.min_dead_ratio), ("min_bloat_ratio", self.min_bloat_ratio)] {
            if let Some(r) = ratio
                && !(0.0..=1.0).contains(&r)
            {
                out.push((key, format!("{key} is a ratio and must be in [0, 1], not {r}")));
            }
        }
        if let Some(to) = &self.to
            && to.parse::<crate::migrations::Version>().is_err()
        {
            out.push(("to", format!("`to` must be a migration version such as \"3\" or \"1.2\", not {to:?}")));
        }
        if let Some(reference) = &self.reference
            && let Err(e) = crate::catalog::TenantId::parse(reference)
        {
            out.push(("reference", e));
        }
        for (key, d) in
            [("timeout", self.timeout), ("lock_timeout", self.lock_timeout), ("time_budget", self.time_budget)]
        {
            if d.is_some_and(|d| d.0.is_zero()) {
                out.push((key, format!("{key} must be longer than zero")));
            }
        }
        if let Some(queries) = &self.smoke_queries
            && queries.iter().any(|q| q.trim().is_empty())
        {
            out.push(("smoke_queries", "smoke_queries contains an empty query".to_string()));
        }
        out
    }
}
