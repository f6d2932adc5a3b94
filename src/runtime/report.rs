//! The disaster-recovery drill report that a run of a workflow with `report = "drill"` writes when it ends: per tenant and service, how its `verify_restore` went (RTO, RPO, the verdict, or why not), the fleet's worst and median RTO and RPO, in JSON and Markdown in the object store.
//!
//! - **Derived, never accumulated**: the report is computed from what the run stored — the
//!   spec, the run record, the checkpoints' step outputs (`verify_restore` returns `rto_ms`,
//!   `rpo_ms`, `backup`, `verdict`), and for failed verifications the verdict objects this
//!   run wrote beside the backups. Nothing is kept in Redis for it, and any worker computes
//!   the same report, any number of times: it carries no time of its own making.
//! - **Written once**: `{prefix}/_reports/{workflow}/{run}.json` first, created only if
//!   absent (a second writer reads the stored one instead), then the Markdown rendered from
//!   that stored JSON, so the two always agree. (`_reports` cannot be a service's folder:
//!   service names start with a letter or a digit.)
//! - **Even when a worker dies at the end**: a run with a report stays in the active set
//!   until its report is written (`Runtime::conclude`); the maintenance pass of any worker
//!   writes the report of a finished run it finds there, then retires the run.
//! - RTO is a verification's restore and checks time; RPO the backup's age when verified.
//!   The fleet's worst and median are over the verifications that passed; failed ones are
//!   listed with their reason.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use super::model::{Checkpoint, RunRecord, RunSpec, TenantState, unit_label};
use crate::steps::StepKind;
use crate::storage::backups::{Verdict, tenant_backups};
use crate::storage::{ObjectStore, StorageError};

/// Failed verifications whose verdict objects are read for the report (the rest are
/// reported with their error alone): a report must not cost a listing per tenant of a
/// fleet whose backups all broke.
const VERDICTS_READ: usize = 200;

/// Listings read at once while reading those verdicts.
const AT_ONCE: usize = 8;

/// The report's keys in the store: (JSON, Markdown).
pub fn keys(workflow: &str, run: &str) -> (String, String) {
    let base = format!("_reports/{workflow}/{run}");
    (format!("{base}.json"), format!("{base}.md"))
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrillReport {
    pub format: u32,
    pub run: String,
    pub workflow: String,
    pub trigger: String,
    /// The run this one retried, for a retry.
    pub parent: Option<String>,
    /// How the run ended, and why.
    pub state: String,
    pub reason: Option<String>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub summary: Summary,
    /// One per verify_restore unit of the run: tenant, service (and step, when a workflow
    /// has several), sorted.
    pub targets: Vec<Target>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub targets: usize,
    pub passed: usize,
    pub failed: usize,
    /// Left out by the step (outside its sample).
    pub skipped: usize,
    /// Never reached: the tenant failed at an earlier step, or the run stopped.
    pub not_run: usize,
    /// Over the passed verifications; null when none passed.
    pub rto: Option<Spread>,
    pub rpo: Option<Spread>,
}

/// The worst and the median of a measure across the fleet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spread {
    pub worst_ms: u64,
    /// `tenant/service` of the worst.
    pub worst: String,
    pub median_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Passed,
    Failed,
    Skipped,
    NotRun,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Passed => "passed",
            Self::Failed => "failed",
            Self::Skipped => "skipped",
            Self::NotRun => "not run",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Target {
    pub tenant: String,
    pub service: String,
    /// The unit (`step/service`).
    pub unit: String,
    pub outcome: Outcome,
    /// The verified backup's folder.
    pub backup: Option<String>,
    /// The verdict object's key.
    pub verdict: Option<String>,
    pub rto_ms: Option<u64>,
    pub rpo_ms: Option<u64>,
    /// Why it failed, was skipped or did not run.
    pub reason: Option<String>,
}

/// The report of a finished run, from what it stored (see the module's documentation).
/// `verdicts` are the verdicts the run stored for failed verifications, by (tenant,
/// service), when they could be read.
pub fn build(
    spec: &RunSpec,
    record: &RunRecord,
    checkpoints: &BTreeMap<String, Checkpoint>,
    verdicts: &BTreeMap<(String, String), (String, Verdict)>,
) -> DrillReport {
    let mut targets = Vec::new();
    for (tenant, snapshot) in &spec.tenants {
        let checkpoint = checkpoints.get(tenant);
        for (index, unit) in snapshot.units.iter().enumerate() {
            let step = &spec.steps[unit.step];
            if step.kind != StepKind::VerifyRestore {
                continue;
            }
            let label = unit_label(step, &unit.service);
            let mut t = Target {
                tenant: tenant.clone(),
                service: unit.service.clone(),
                unit: label.clone(),
                outcome: Outcome::NotRun,
                backup: None,
                verdict: None,
                rto_ms: None,
                rpo_ms: None,
                reason: None,
            };
            let Some(cp) = checkpoint else {
                t.reason = Some("no checkpoint".to_string());
                targets.push(t);
                continue;
            };
            let text = |v: &serde_json::Value| v.as_str().map(str::to_string);
            match cp.outputs.get(&label) {
                Some(out) if out["passed"] == true => {
                    t.outcome = Outcome::Passed;
                    t.backup = text(&out["backup"]);
                    t.verdict = text(&out["verdict"]);
                    t.rto_ms = out["rto_ms"].as_u64();
                    t.rpo_ms = out["rpo_ms"].as_u64();
                }
                Some(out) => {
                    t.outcome = Outcome::Skipped;
                    t.reason = Some(text(&out["skipped"]).unwrap_or_else(|| out.to_string()));
                }
                None if cp.state == TenantState::Failed && cp.unit == index => {
                    t.outcome = Outcome::Failed;
                    t.reason = cp.last_error.clone();
                    if let Some((key, v)) = verdicts.get(&(tenant.clone(), unit.service.clone())) {
                        let failed: Vec<String> = v
                            .checks
                            .iter()
                            .filter(|c| !c.passed)
                            .map(|c| format!("{}: {}", c.name, c.detail))
                            .collect();
                        t.backup = Some(v.backup.clone());
                        t.verdict = Some(key.clone());
                        t.rto_ms = Some(v.rto_ms);
                        t.rpo_ms = Some(v.rpo_ms);
                        t.reason = Some(failed.join("; "));
                    }
                }
                None => {
                    t.reason = Some(match cp.state {
                        TenantState::Failed => format!(
                            "the tenant failed before this step: {}",
                            cp.last_error.as_deref().unwrap_or("no error recorded")
                        ),
                        TenantState::Cancelled => "the run was cancelled first".to_string(),
                        TenantState::Skipped => "the run stopped before the tenant started".to_string(),
                        other => format!("the tenant is {}", other.as_str()),
                    });
                }
            }
            targets.push(t);
        }
    }
    targets.sort_by(|a, b| (&a.tenant, &a.service, &a.unit).cmp(&(&b.tenant, &b.service, &b.unit)));
    let count = |o: Outcome| targets.iter().filter(|t| t.outcome == o).count();
    let passed: Vec<&Target> = targets.iter().filter(|t| t.outcome == Outcome::Passed).collect();
    let summary = Summary {
        targets: targets.len(),
        passed: passed.len(),
        failed: count(Outcome::Failed),
        skipped: count(Outcome::Skipped),
        not_run: count(Outcome::NotRun),
        rto: spread(&passed, |t| t.rto_ms),
        rpo: spread(&passed, |t| t.rpo_ms),
    };
    let time = |ms: Option<i64>| ms.and_then(DateTime::from_timestamp_millis);
    DrillReport {
        format: 1,
        run: spec.id.clone(),
        workflow: spec.workflow.clone(),
        trigger: record.trigger.clone(),
        parent: record.parent.clone(),
        state: record.state.to_string(),
        reason: record.reason.clone(),
        started_at: time(record.started_ms),
        finished_at: time(record.finished_ms),
        summary,
        targets,
    }
}

/// The worst and the median of `measure` over `targets` (the mean of the middle two for
/// an even count).
fn spread(targets: &[&Target], measure: impl Fn(&Target) -> Option<u64>) -> Option<Spread> {
    let mut values: Vec<(u64, String)> =
        targets.iter().filter_map(|t| Some((measure(t)?, format!("{}/{}", t.tenant, t.service)))).collect();
    if values.is_empty() {
        return None;
    }
    values.sort();
    let n = values.len();
    let median_ms = if n % 2 == 1 { values[n / 2].0 } else { (values[n / 2 - 1].0 + values[n / 2].0) / 2 };
    let (worst_ms, worst) = values.pop().expect("not empty");
    Some(Spread { worst_ms, worst, median_ms })
}

/// The verdicts the run stored for its failed verifications (the first [`VERDICTS_READ`]),
/// by (tenant, service): their keys and contents. One listing of the tenant's backups each;
/// a listing or verdict that cannot be read leaves that target with its error alone.
pub async fn failed_verdicts(
    store: &ObjectStore,
    spec: &RunSpec,
    checkpoints: &BTreeMap<String, Checkpoint>,
) -> BTreeMap<(String, String), (String, Verdict)> {
    let mut wanted: Vec<(String, String)> = Vec::new();
    for (tenant, snapshot) in &spec.tenants {
        let Some(cp) = checkpoints.get(tenant).filter(|cp| cp.state == TenantState::Failed) else { continue };
        if let Some(unit) = snapshot.units.get(cp.unit)
            && spec.steps[unit.step].kind == StepKind::VerifyRestore
        {
            wanted.push((tenant.clone(), unit.service.clone()));
        }
    }
    wanted.truncate(VERDICTS_READ);
    let run = spec.id.clone();
    futures::stream::iter(wanted)
        .map(|(tenant, service)| {
            let run = run.clone();
            async move {
                let folders = tenant_backups(store, &service, &tenant).await.ok()?;
                let found = folders.iter().flat_map(|f| &f.verdicts).filter(|v| v.run == run).max_by_key(|v| v.at)?;
                let bytes = store.get_bytes(&found.key).await.ok()??;
                let verdict: Verdict = serde_json::from_slice(&bytes).ok()?;
                Some(((tenant, service), (found.key.clone(), verdict)))
            }
        })
        .buffered(AT_ONCE)
        .filter_map(std::future::ready)
        .collect()
        .await
}

/// Writes the report's JSON (unless a report of the run is stored already, which then
/// stands) and its Markdown, rendered from the stored JSON. Returns the stored report.
pub async fn store(store: &ObjectStore, report: &DrillReport) -> Result<DrillReport, StorageError> {
    let (json_key, md_key) = keys(&report.workflow, &report.run);
    let bytes = serde_json::to_vec_pretty(report).expect("a report serialises");
    let stored = if store.put_new(&json_key, bytes).await? {
        report.clone()
    } else {
        read(store, &report.workflow, &report.run).await?.unwrap_or_else(|| report.clone())
    };
    // Same content from every writer: overwriting is harmless, and repairs a Markdown that
    // a writer killed between the two objects never wrote.
    store.put(&md_key, markdown(&stored).into_bytes()).await?;
    Ok(stored)
}

/// The stored report of a run, if there is one.
pub async fn read(store: &ObjectStore, workflow: &str, run: &str) -> Result<Option<DrillReport>, StorageError> {
    let (json_key, _) = keys(workflow, run);
    match store.get_bytes(&json_key).await? {
        None => Ok(None),
        Some(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StorageError::permanent(format!("{json_key} is not a drill report: {e}"))),
    }
}

/// `850 ms`, `2.3 s`, `4m 12s`, `3h 12m`, `2d 4h`.
pub fn duration(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0 => format!("{ms} ms"),
        1..60 => format!("{:.1} s", ms as f64 / 1000.0),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        3600..86_400 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// A table cell: no line breaks, no pipes.
fn cell(text: &str) -> String {
    text.replace(['\n', '\r'], " ").replace('|', "\\|")
}

fn or_dash(ms: Option<u64>) -> String {
    ms.map_or("-".to_string(), duration)
}

/// The report as Markdown, for people and auditors.
pub fn markdown(r: &DrillReport) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let s = &r.summary;
    let when = |t: Option<DateTime<Utc>>| t.map_or("-".to_string(), |t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string());
    let _ = writeln!(out, "# Disaster-recovery drill: {}, run {}\n", r.workflow, r.run);
    let _ = writeln!(
        out,
        "- Run `{}` of workflow `{}` (trigger: {}{}), **{}**{}",
        r.run,
        r.workflow,
        r.trigger,
        r.parent.as_ref().map(|p| format!(", retry of `{p}`")).unwrap_or_default(),
        r.state,
        r.reason.as_ref().map(|x| format!(": {}", cell(x))).unwrap_or_default()
    );
    let _ = writeln!(out, "- Started {}, finished {}", when(r.started_at), when(r.finished_at));
    let _ = writeln!(
        out,
        "- Restores verified: {} of {}; failed {}, skipped {}, not run {}\n",
        s.passed, s.targets, s.failed, s.skipped, s.not_run
    );
    let _ = writeln!(out, "| measure (over the {} passed) | worst | median |", s.passed);
    let _ = writeln!(out, "|---|---|---|");
    for (name, spread) in [("RTO: restore and checks", &s.rto), ("RPO: backup age when verified", &s.rpo)] {
        match spread {
            Some(x) => {
                let _ =
                    writeln!(out, "| {name} | {} ({}) | {} |", duration(x.worst_ms), x.worst, duration(x.median_ms));
            }
            None => {
                let _ = writeln!(out, "| {name} | - | - |");
            }
        }
    }
    let failed: Vec<&Target> = r.targets.iter().filter(|t| t.outcome == Outcome::Failed).collect();
    if !failed.is_empty() {
        let _ = writeln!(out, "\n## Failed\n\n| tenant | service | backup | reason |\n|---|---|---|---|");
        for t in failed {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} |",
                t.tenant,
                t.service,
                t.backup.as_deref().unwrap_or("-"),
                cell(t.reason.as_deref().unwrap_or("-"))
            );
        }
    }
    let _ = writeln!(out, "\n## Per tenant\n\n| tenant | service | outcome | RTO | RPO | backup | verdict or reason |");
    let _ = writeln!(out, "|---|---|---|---|---|---|---|");
    for t in &r.targets {
        let detail = match t.outcome {
            Outcome::Passed => t.verdict.clone().unwrap_or_default(),
            _ => cell(t.reason.as_deref().unwrap_or("-")),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} |",
            t.tenant,
            t.service,
            t.outcome.as_str(),
            or_dash(t.rto_ms),
            or_dash(t.rpo_ms),
            t.backup.as_deref().unwrap_or("-"),
            detail
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(tenant: &str, outcome: Outcome, rto: Option<u64>, rpo: Option<u64>) -> Target {
        Target {
            tenant: tenant.to_string(),
            service: "core".to_string(),
            unit: "verify_restore/core".to_string(),
            outcome,
            backup: None,
            verdict: None,
            rto_ms: rto,
            rpo_ms: rpo,
            reason: None,
        }
    }

    #[test]
    fn the_worst_and_the_median_of_the_passed() {
        let ts = [
            target("a", Outcome::Passed, Some(300), Some(10)),
            target("b", Outcome::Passed, Some(100), Some(40)),
            target("c", Outcome::Passed, Some(200), Some(20)),
        ];
        let refs: Vec<&Target> = ts.iter().collect();
        let rto = spread(&refs, |t| t.rto_ms).unwrap();
        assert_eq!(rto, Spread { worst_ms: 300, worst: "a/core".into(), median_ms: 200 });
        let rpo = spread(&refs[..2], |t| t.rpo_ms).unwrap();
        assert_eq!(rpo, Spread { worst_ms: 40, worst: "b/core".into(), median_ms: 25 });
        assert_eq!(spread(&[], |t| t.rto_ms), None);
    }

    /// A run of `backup` then `verify_restore` on service `core` over tenants a to e, with
    /// a checkpoint per tenant.
    fn finished(checkpoints: serde_json::Value) -> (RunSpec, RunRecord, BTreeMap<String, Checkpoint>) {
        let units = serde_json::json!([{ "step": 0, "service": "core" }, { "step": 1, "service": "core" }]);
        let tenant = serde_json::json!({ "wave": 0, "placements": {}, "units": units, "group": "main" });
        let spec: RunSpec = serde_json::from_value(serde_json::json!({
            "id": "r1", "workflow": "dr", "steps": [{ "kind": "backup" }, { "kind": "verify_restore" }],
            "retry": {}, "timeout": "1m", "run_concurrency": 1, "host_limits": {},
            "waves": [{ "index": 0, "name": "all", "tenants": ["a", "b", "c", "d", "e"], "max_failures": null,
                        "max_failure_rate": null, "approval": false }],
            "tenants": { "a": tenant, "b": tenant, "c": tenant, "d": tenant, "e": tenant },
            "report": "drill",
        }))
        .unwrap();
        let record = RunRecord {
            id: "r1".into(),
            workflow: "dr".into(),
            trigger: "operator".into(),
            parent: None,
            state: super::super::model::RunState::Failed,
            reason: Some("completed: 2 tenant(s) failed".into()),
            halting: None,
            wave: 0,
            tenants: 5,
            succeeded: 2,
            failed: 2,
            cancelled: 1,
            skipped: 0,
            inflight: 0,
            created_ms: 1_764_554_400_000,
            started_ms: Some(1_764_554_400_000),
            finished_ms: Some(1_764_554_460_000),
            soak_until_ms: None,
            report: Some("drill".into()),
            report_error: None,
        };
        let checkpoints = serde_json::from_value(checkpoints).unwrap();
        (spec, record, checkpoints)
    }

    #[test]
    fn each_verification_is_passed_failed_skipped_or_not_run_with_why() {
        let output = |v: serde_json::Value| serde_json::Value::String(v.to_string());
        let passed = output(serde_json::json!({ "passed": true, "backup": "core/a/f", "verdict": "core/a/f/v.json",
                                                 "rto_ms": 1200, "rpo_ms": 3_600_000 }));
        let (spec, record, checkpoints) = finished(serde_json::json!({
            "a": { "state": "succeeded", "wave": 0, "unit": 2, "outputs": { "verify_restore/core": passed } },
            "b": { "state": "failed", "wave": 0, "unit": 1, "last_error": "step verify_restore/core: sha256 differs" },
            "c": { "state": "succeeded", "wave": 0, "unit": 2,
                   "outputs": { "verify_restore/core": output(serde_json::json!({ "skipped": "not in this run's sample" })) } },
            "d": { "state": "failed", "wave": 0, "unit": 0, "last_error": "step backup/core: pg_dump failed" },
            "e": { "state": "cancelled", "wave": 0, "unit": 0 },
        }));
        let r = build(&spec, &record, &checkpoints, &BTreeMap::new());
        let outcomes: Vec<(&str, Outcome)> = r.targets.iter().map(|t| (t.tenant.as_str(), t.outcome)).collect();
        assert_eq!(
            outcomes,
            [
                ("a", Outcome::Passed),
                ("b", Outcome::Failed),
                ("c", Outcome::Skipped),
                ("d", Outcome::NotRun),
                ("e", Outcome::NotRun)
            ]
        );
        assert_eq!((r.targets[0].rto_ms, r.targets[0].rpo_ms), (Some(1200), Some(3_600_000)));
        assert_eq!(r.targets[1].reason.as_deref(), Some("step verify_restore/core: sha256 differs"));
        assert!(r.targets[3].reason.as_deref().unwrap().contains("failed before this step: step backup/core"));
        assert_eq!(r.targets[4].reason.as_deref(), Some("the run was cancelled first"));
        assert_eq!((r.summary.passed, r.summary.failed, r.summary.skipped, r.summary.not_run), (1, 1, 1, 2));
        assert_eq!(r.summary.rto, Some(Spread { worst_ms: 1200, worst: "a/core".into(), median_ms: 1200 }));
        assert_eq!(r.finished_at.unwrap().to_rfc3339(), "2025-12-01T02:01:00+00:00");
        let md = markdown(&r);
        assert!(md.contains("Restores verified: 1 of 5; failed 1, skipped 1, not run 2"), "{md}");
        assert!(md.contains("| RTO: restore and checks | 1.2 s (a/core) | 1.2 s |"), "{md}");
        assert!(md.contains("| b | core | - | step verify_restore/core: sha256 differs |"), "{md}");
        // The same stored results, the same report: nothing in it is of the writer's making.
        assert_eq!(build(&spec, &record, &checkpoints, &BTreeMap::new()), r);
    }

    #[test]
    fn durations_read_like_people_write_them() {
        assert_eq!(duration(850), "850 ms");
        assert_eq!(duration(2_340), "2.3 s");
        assert_eq!(duration(252_000), "4m 12s");
        assert_eq!(duration(11_520_000), "3h 12m");
        assert_eq!(duration(187_200_000), "2d 4h");
        assert_eq!(cell("a|b\nc"), "a\\|b c");
    }
}
