//! A run's report, for people (Markdown) and for machines (JSON, the same data), as `tenantry report RUN` prints it and a workflow with `report = "run"` leaves in the object store when its run ends: how many tenants ended how, the ones that failed and why, the time tenants waited for their hosts' load, and what each maintenance step found across the fleet — backups taken, restores verified, tables vacuumed or skipped, transaction-id warnings, index findings counted per service, rows purged per tenant.
//!
//! It is built from the run's record, spec and checkpoints (what `status` reads). Step outputs are summed per step (`{step}/{service}` units of the same step
//! together); a kind without a summary here still counts its tenants.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::model::{Checkpoint, RunRecord, RunSpec, TenantState};
use crate::steps::StepKind;
use crate::steps::analyze_indexes::{FleetFinding, aggregate};
use crate::storage::{ObjectStore, StorageError};

#[derive(Debug, Serialize)]
pub struct RunReport {
    run: String,
    workflow: String,
    state: String,
    reason: Option<String>,
    tenants: u64,
    /// Tenants per final state.
    outcomes: BTreeMap<&'static str, usize>,
    /// The tenants that failed or were cancelled, with the error.
    problems: Vec<Problem>,
    /// Tenants that waited for their hosts' load (`[throttle]`), and the time in all.
    throttled_tenants: usize,
    throttled_ms: u64,
    steps: Vec<StepSummary>,
}

#[derive(Debug, Serialize)]
struct Problem {
    tenant: String,
    state: &'static str,
    error: Option<String>,
}

#[derive(Debug, Default, Serialize)]
struct StepSummary {
    step: String,
    kind: String,
    /// Tenants (and services) whose unit of this step recorded an output.
    units: usize,
    /// Sums of the kind's numbers (bytes backed up, tables vacuumed, …), by name.
    totals: BTreeMap<&'static str, i64>,
    /// Transaction-id ages over the warning (vacuum): tenant, service, age, status.
    xid: Vec<serde_json::Value>,
    /// analyze_indexes findings counted across the fleet.
    index_findings: Vec<FleetFinding>,
    /// Rows purged per tenant and service (purge), most first.
    purged: Vec<serde_json::Value>,
}

/// The report of a run from its record, spec and checkpoints.
pub fn build(spec: &RunSpec, record: &RunRecord, tenants: &BTreeMap<String, Checkpoint>) -> RunReport {
    let mut outcomes: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut problems = Vec::new();
    let throttled_tenants = tenants.values().filter(|cp| cp.throttled_ms > 0).count();
    let throttled_ms = tenants.values().map(|cp| cp.throttled_ms).sum();
    for (tenant, cp) in tenants {
        *outcomes.entry(cp.state.as_str()).or_default() += 1;
        if matches!(cp.state, TenantState::Failed | TenantState::Cancelled) {
            problems.push(Problem { tenant: tenant.clone(), state: cp.state.as_str(), error: cp.last_error.clone() });
        }
    }
    let mut steps = Vec::new();
    for step in &spec.steps {
        let prefix = format!("{}/", step.label());
        let units: Vec<(&str, &str, &serde_json::Value)> = tenants
            .iter()
            .flat_map(|(tenant, cp)| {
                cp.outputs.iter().filter_map(|(unit, out)| {
                    unit.strip_prefix(prefix.as_str()).map(|service| (tenant.as_str(), service, out))
                })
            })
            .collect();
        steps.push(summary(step.label(), step.kind, &units));
    }
    RunReport {
        run: record.id.clone(),
        workflow: record.workflow.clone(),
        state: record.state.as_str().to_string(),
        reason: record.reason.clone(),
        tenants: record.tenants,
        outcomes,
        problems,
        throttled_tenants,
        throttled_ms,
        steps,
    }
}

/// Writes the report to the object store beside the run's other reports
/// ([`super::report::keys`]): its JSON, then its Markdown. Writing it again writes the same.
pub async fn store(store: &ObjectStore, report: &RunReport) -> Result<String, StorageError> {
    let (json_key, md_key) = super::report::keys(&report.workflow, &report.run);
    store.put(&json_key, serde_json::to_vec_pretty(report).expect("a report serialises")).await?;
    store.put(&md_key, markdown(report).into_bytes()).await?;
    Ok(json_key)
}

/// What one step's outputs add up to.
fn summary(step: String, kind: StepKind, units: &[(&str, &str, &serde_json::Value)]) -> StepSummary {
    let mut s = StepSummary { step, kind: kind.to_string(), units: units.len(), ..Default::default() };
    let mut add = |name: &'static str, n: i64| *s.totals.entry(name).or_default() += n;
    let len = |v: &serde_json::Value| v.as_array().map_or(0, |a| a.len() as i64);
    for (tenant, service, out) in units {
        // A unit left out (outside a sample, done by a concurrent attempt): `{"skipped": why}`.
        if out["skipped"].is_string() {
            add("skipped", 1);
            continue;
        }
        match kind {
            StepKind::Backup => {
                add("backups", 1);
                add("bytes", out["size"].as_i64().unwrap_or(0));
                add("rows", out["rows"].as_i64().unwrap_or(0));
            }
            StepKind::VerifyRestore => {
                add(if out["passed"] == true { "passed" } else { "failed" }, 1);
            }
            StepKind::Vacuum => {
                add("tables_vacuumed", len(&out["vacuumed"]));
                add("tables_skipped", len(&out["skipped"]));
                add("tables_failed", len(&out["failed"]));
                add("tables_not_started", len(&out["not_started"]));
                if out["window_closed"] == true {
                    add("window_closed", 1);
                }
                if out["xid_status"].as_str().is_some_and(|x| x != "ok") {
                    s.xid.push(serde_json::json!({
                        "tenant": tenant, "service": service, "xid_age": out["xid_age"], "status": out["xid_status"],
                    }));
                }
            }
            StepKind::PruneBackups => {
                add("deleted", len(&out["deleted"]));
            }
            StepKind::Purge => {
                let deleted = out["deleted"].as_i64().or(out["would_delete"].as_i64()).unwrap_or(0);
                add(if out["dry_run"] == true { "rows_would_delete" } else { "rows_deleted" }, deleted);
                add("batches", out["batches"].as_i64().unwrap_or(0));
                add("throttled_ms", out["throttled_ms"].as_i64().unwrap_or(0));
                if out["complete"] == false {
                    add("stopped_by_time_budget", 1);
                }
                s.purged.push(serde_json::json!({
                    "tenant": tenant, "service": service, "rows": deleted, "complete": out["complete"],
                }));
            }
            _ => {}
        }
    }
    s.purged.sort_by_key(|p| std::cmp::Reverse(p["rows"].as_i64().unwrap_or(0)));
    if kind == StepKind::AnalyzeIndexes {
        s.index_findings = aggregate(units.iter().map(|(_, service, out)| (*service, *out)));
    }
    s
}

/// Lines of index findings in the Markdown; the JSON has them all.
const INDEX_LINES: usize = 50;
/// Tenants listed per purge step in the Markdown (those with the most rows first).
const PURGE_LINES: usize = 20;

pub fn markdown(r: &RunReport) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# Run {} of {}\n", r.run, r.workflow);
    let _ = writeln!(md, "**{}**{}\n", r.state, r.reason.as_ref().map(|x| format!(": {x}")).unwrap_or_default());
    let counts: Vec<String> = r.outcomes.iter().map(|(k, v)| format!("{v} {k}")).collect();
    let _ = writeln!(md, "{} tenant(s): {}\n", r.tenants, counts.join(", "));
    if r.throttled_tenants > 0 {
        let _ = writeln!(
            md,
            "{} tenant(s) waited {:.0} s in all for their hosts' load (`[throttle]`)\n",
            r.throttled_tenants,
            r.throttled_ms as f64 / 1000.0
        );
    }
    if !r.problems.is_empty() {
        let _ = writeln!(md, "## Tenants that did not succeed\n\n| tenant | state | error |\n|---|---|---|");
        for p in &r.problems {
            let error = p.error.as_deref().unwrap_or("").replace('|', "\\|").replace('\n', " ");
            let _ = writeln!(md, "| {} | {} | {} |", p.tenant, p.state, error);
        }
        md.push('\n');
    }
    for s in &r.steps {
        let _ = writeln!(md, "## Step {} ({})\n", s.step, s.kind);
        let totals: Vec<String> = s.totals.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let _ = writeln!(
            md,
            "{} unit(s){}\n",
            s.units,
            if totals.is_empty() { String::new() } else { format!(": {}", totals.join(", ")) }
        );
        if !s.xid.is_empty() {
            let _ = writeln!(md, "| tenant | service | transaction-id age | status |\n|---|---|---:|---|");
            for x in &s.xid {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} |",
                    x["tenant"].as_str().unwrap_or(""),
                    x["service"].as_str().unwrap_or(""),
                    x["xid_age"],
                    x["status"].as_str().unwrap_or("")
                );
            }
            md.push('\n');
        }
        if !s.purged.is_empty() {
            let _ = writeln!(md, "| tenant | service | rows purged | complete |\n|---|---|---:|---|");
            for p in s.purged.iter().take(PURGE_LINES) {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} |",
                    p["tenant"].as_str().unwrap_or(""),
                    p["service"].as_str().unwrap_or(""),
                    p["rows"],
                    if p["complete"] == false { "no: time budget spent" } else { "yes" }
                );
            }
            if s.purged.len() > PURGE_LINES {
                let _ = writeln!(md, "\n… {} more tenants (`--json`)", s.purged.len() - PURGE_LINES);
            }
            md.push('\n');
        }
        if !s.index_findings.is_empty() {
            let _ = writeln!(md, "| finding | index | table | tenants | service |\n|---|---|---|---:|---|");
            for f in s.index_findings.iter().take(INDEX_LINES) {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} of {} | {} |",
                    f.kind, f.index, f.table, f.tenants, f.of, f.service
                );
            }
            if s.index_findings.len() > INDEX_LINES {
                let _ = writeln!(md, "\n… {} more findings (`--json`)", s.index_findings.len() - INDEX_LINES);
            }
            md.push('\n');
        }
    }
    md
}
