//! The kinds SPEC §4 declares that this version does not run yet: their options, fit rules and checks, so `validate` checks workflows that use them and `plan` shows them as blocked.
//!
//! Building one of them means moving its struct and `Options` into a file of its own (as
//! `sql.rs`), writing its `run`, and pointing its registry line in `kind.rs` there.

use serde::Deserialize;

use super::define::{Findings, Step};
use super::{StepContext, StepError};
use crate::catalog::Engine;
use crate::units::HumanDuration;

fn not_yet(_engine: Engine) -> Result<(), String> {
    Err("does not run yet in this version of tenantry".to_string())
}

async fn unreachable_run(ctx: &StepContext<'_>) -> Result<serde_json::Value, StepError> {
    // `runs_on` refuses first; this is for a registry pointing here by mistake.
    Err(StepError::permanent(format!("step kind {} has no implementation", ctx.step.kind)))
}

pub(super) fn check_sample(sample: Option<f64>, out: &mut Findings) {
    if let Some(sample) = sample
        && !(sample > 0.0 && sample <= 100.0)
    {
        out.push(("sample".into(), format!("sample is a percentage of tenants and must be in (0, 100], not {sample}")));
    }
}

pub(super) fn check_smoke_queries(queries: &Option<Vec<String>>, out: &mut Findings) {
    if queries.as_ref().is_some_and(|q| q.iter().any(|q| q.trim().is_empty())) {
        out.push(("smoke_queries".into(), "smoke_queries contains an empty query".to_string()));
    }
}

pub(super) fn check_ratio(key: &str, ratio: Option<f64>, out: &mut Findings) {
    if let Some(r) = ratio
        && !(0.0..=1.0).contains(&r)
    {
        out.push((key.into(), format!("{key} is a ratio and must be in [0, 1], not {r}")));
    }
}

/// `purge`: rows past the retention deleted in bounded batches.
pub struct Purge;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PurgeOptions {
    pub table: Option<String>,
    pub column: Option<String>,
    pub older_than: Option<HumanDuration>,
    pub retention_label: Option<String>,
    pub batch_size: Option<u32>,
    pub pause: Option<HumanDuration>,
    pub time_budget: Option<HumanDuration>,
    pub dry_run: Option<bool>,
}

impl Step for Purge {
    type Options = PurgeOptions;

    fn check(o: &PurgeOptions, out: &mut Findings) {
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
        if o.batch_size == Some(0) {
            out.push(("batch_size".into(), "batch_size must be at least 1".to_string()));
        }
        if o.time_budget.is_some_and(|d| d.0.is_zero()) {
            out.push(("time_budget".into(), "time_budget must be longer than zero".to_string()));
        }
    }

    fn runs_on(engine: Engine) -> Result<(), String> {
        not_yet(engine)
    }

    async fn run(ctx: &StepContext<'_>, _options: &PurgeOptions) -> Result<serde_json::Value, StepError> {
        unreachable_run(ctx).await
    }
}
