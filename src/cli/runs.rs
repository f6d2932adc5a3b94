//! Operator commands on runs: `run`, `runs`, `status`, `approve`, `pause`, `resume`, `cancel`, `retry`.

use std::collections::BTreeMap;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde::Serialize;

use super::{Context, Failure};
use crate::runtime::launch;
use crate::runtime::model::{Checkpoint, RunRecord, RunSpec, RunState, TenantState, Trigger};
use crate::runtime::worker::Runtime;

/// `tenantry run WORKFLOW`: snapshot, write and dispatch a run; with `--wait`, follow it.
pub async fn run(
    ctx: &Context,
    name: &str,
    only: &[String],
    changed_by: Option<&str>,
    wait: bool,
    json: bool,
) -> Result<(), Failure> {
    let runtime = ctx.runtime().await?;
    let started = start(ctx, &runtime, name, only, changed_by, &Trigger::Operator).await?;
    if !json {
        for note in &started.notes {
            eprintln!("{note}");
        }
    }
    report_started(&runtime, &started.id, json).await?;
    if wait { follow(&runtime, &started.id, json).await } else { Ok(()) }
}

/// A run just started, and what the operator should know about its tenants.
pub struct Started {
    pub id: String,
    pub notes: Vec<String>,
}

/// Starts a run of workflow `name` (over `only`, or the tenants `changed_by` run changed),
/// as `tenantry run` and the API's enqueue do.
pub async fn start(
    ctx: &Context,
    runtime: &Runtime,
    name: &str,
    only: &[String],
    changed_by: Option<&str>,
    trigger: &Trigger,
) -> Result<Started, Failure> {
    let (catalog, wf) = ctx.checked_workflow(name, only).await?;
    let loaded = &ctx.config;
    let mut notes = Vec::new();
    let mut only = only.to_vec();
    if let Some(previous) = changed_by {
        let changed = changed_tenants(runtime, previous).await?;
        if changed.is_empty() {
            return Err(Failure::Failed(format!("run {previous} changed no tenant's migrations: nothing to undo")));
        }
        only = if only.is_empty() { changed } else { only.into_iter().filter(|t| changed.contains(t)).collect() };
    }
    let mut spec = launch::snapshot(&wf, &catalog, loaded, &only);
    let up_to_date = launch::skip_up_to_date(&mut spec, &catalog, loaded).await;
    if up_to_date > 0 {
        notes.push(format!("{up_to_date} tenant(s) have nothing pending: recorded as done without dispatching them"));
    }
    let outside = launch::apply_selections(&mut spec, &catalog, loaded).await;
    if outside > 0 {
        notes.push(format!(
            "{outside} step target(s) are outside their step's sample in this run: recorded as skipped (see `tenantry plan {}`)",
            wf.name
        ));
    }
    if spec.tenants.is_empty() {
        return Err(Failure::Failed(format!(
            "workflow {} selects no tenant: nothing to run (see `tenantry plan {}`)",
            wf.name, wf.name
        )));
    }
    let id = runtime.start(spec, trigger).await.map_err(store_failure)?;
    Ok(Started { id, notes })
}

/// Tenants for which a `migrate` step of `run` applied or reverted something.
async fn changed_tenants(runtime: &Runtime, run: &str) -> Result<Vec<String>, Failure> {
    let checkpoints = runtime.store.checkpoints(run).await.map_err(store_failure)?;
    Ok(checkpoints
        .into_iter()
        .filter(|(_, c)| {
            c.outputs.values().any(|out| out["changed"].as_array().is_some_and(|changed| !changed.is_empty()))
        })
        .map(|(t, _)| t)
        .collect())
}

async fn report_started(runtime: &Runtime, id: &str, json: bool) -> Result<(), Failure> {
    let record = runtime.store.record(id).await.map_err(store_failure)?;
    if json {
        println!("{}", serde_json::to_string(&record).expect("serialises"));
    } else {
        println!("{id}");
        eprintln!("run {id} of {}: {} tenant(s), {}", record.workflow, record.tenants, record.state);
    }
    Ok(())
}

/// Follows a run until it ends, with a progress bar per wave on stderr. Exit 1 unless it
/// succeeded.
async fn follow(runtime: &Runtime, id: &str, json: bool) -> Result<(), Failure> {
    let spec = runtime.store.spec(id).await.map_err(store_failure)?;
    let bars = MultiProgress::new();
    let style = ProgressStyle::with_template("{prefix:>16} [{bar:30}] {pos}/{len} {msg}")
        .expect("static template")
        .progress_chars("=> ");
    let wave_bars: Vec<ProgressBar> = spec
        .waves
        .iter()
        .map(|w| {
            let bar = bars.add(ProgressBar::new(w.tenants.len() as u64));
            bar.set_style(style.clone());
            bar.set_prefix(w.name.clone());
            bar
        })
        .collect();
    let started = std::time::Instant::now();
    let record = loop {
        let record = runtime.store.record(id).await.map_err(store_failure)?;
        let all_counts = runtime.store.wave_counts(id).await.map_err(store_failure)?;
        for (i, bar) in wave_bars.iter().enumerate() {
            let counts = all_counts.get(&i).cloned().unwrap_or_default();
            let done: u64 = counts.values().sum();
            bar.set_position(done);
            let failed = counts.get("failed").copied().unwrap_or(0);
            bar.set_message(if failed > 0 { format!("{failed} failed") } else { String::new() });
        }
        if record.state.is_terminal() {
            break record;
        }
        if record.state == RunState::AwaitingApproval {
            if let Some(b) = wave_bars.get(record.wave) {
                b.set_message(format!("awaiting approval: tenantry approve {id}"));
            }
        } else if record.succeeded + record.failed == 0
            && started.elapsed() > Duration::from_secs(10)
            && let Some(b) = wave_bars.first()
        {
            b.set_message("waiting for workers (start `tenantry worker` or `tenantry serve`)");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    for bar in &wave_bars {
        bar.finish();
    }
    if json {
        println!("{}", serde_json::to_string(&record).expect("serialises"));
    } else {
        eprintln!("run {id} {}: {}", record.state, record.reason.clone().unwrap_or_default());
    }
    if record.report.is_some() {
        await_report(runtime, &record, json).await;
    }
    if record.state == RunState::Succeeded { Ok(()) } else { Err(Failure::Reported) }
}

/// After a run with a report ended: waits (a minute at most) until a worker has written
/// its report, and says where it is, so that `status` right after shows it.
async fn await_report(runtime: &Runtime, record: &RunRecord, json: bool) {
    let kind = record.report.as_deref().unwrap_or("drill");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let current = runtime.store.record(&record.id).await.unwrap_or_else(|_| record.clone());
        let status = report_status(runtime, &current, kind).await;
        let done = status.state != "pending" || status.error.is_some();
        if done || std::time::Instant::now() > deadline {
            if !json {
                match (status.state, &status.error) {
                    ("written", _) => {
                        eprintln!("{kind} report written: {} (see `tenantry status {}`)", status.markdown, record.id)
                    }
                    (_, Some(e)) => eprintln!("{kind} report not written: {e}"),
                    _ => {
                        eprintln!("{kind} report not written yet; a worker writes it (`tenantry status {}`)", record.id)
                    }
                }
            }
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `tenantry runs`: recent runs, newest first.
pub async fn list(ctx: &Context, limit: usize, json: bool) -> Result<(), Failure> {
    let runtime = ctx.runtime().await?;
    let runs = runtime.store.list(limit).await.map_err(store_failure)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&runs).expect("serialises"));
        return Ok(());
    }
    println!("{:24} {:16} {:18} {:>7} {:>7} {:>7}  CREATED", "RUN", "WORKFLOW", "STATE", "TENANTS", "DONE", "FAILED");
    for r in runs {
        println!(
            "{:24} {:16} {:18} {:>7} {:>7} {:>7}  {}",
            r.id,
            r.workflow,
            r.state.as_str(),
            r.tenants,
            r.succeeded,
            r.failed,
            time(r.created_ms)
        );
    }
    Ok(())
}

/// What `status --json` prints and the API's run detail returns.
#[derive(Serialize)]
pub struct Status {
    pub run: RunRecord,
    waves: Vec<WaveStatus>,
    tenants: BTreeMap<String, Checkpoint>,
    events: Vec<serde_json::Value>,
    /// The run's report, for a workflow that writes one (`report = "drill"`).
    #[serde(skip_serializing_if = "Option::is_none")]
    report: Option<ReportStatus>,
    /// `analyze_indexes` findings counted across the run's tenants.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    index_findings: Vec<crate::steps::analyze_indexes::FleetFinding>,
}

#[derive(Serialize)]
struct ReportStatus {
    kind: String,
    /// `written`, `pending` (the run is going, or its report is being written), `failed`.
    state: &'static str,
    /// Keys relative to the store's prefix.
    json: String,
    markdown: String,
    /// Why it could not be written, or read.
    error: Option<String>,
    report: Option<crate::runtime::report::DrillReport>,
}

#[derive(Serialize)]
struct WaveStatus {
    index: usize,
    name: String,
    tenants: usize,
    counts: BTreeMap<&'static str, usize>,
}

/// `tenantry status RUN [--watch]`: per wave and per tenant, which are done, failed,
/// running, not started, and why.
pub async fn status(ctx: &Context, id: &str, watch: bool, verbose: bool, json: bool) -> Result<(), Failure> {
    let runtime = ctx.runtime().await?;
    loop {
        let status = load_status(&runtime, id).await?;
        if json {
            println!("{}", serde_json::to_string_pretty(&status).expect("serialises"));
        } else {
            if watch {
                print!("\x1b[2J\x1b[H");
            }
            print_status(&status, verbose);
        }
        if !watch || status.run.state.is_terminal() {
            return match status.run.state {
                RunState::Failed | RunState::Cancelled if !watch => Ok(()),
                RunState::Failed | RunState::Cancelled => Err(Failure::Reported),
                _ => Ok(()),
            };
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

pub async fn load_status(runtime: &Runtime, id: &str) -> Result<Status, Failure> {
    let run = runtime.store.record(id).await.map_err(store_failure)?;
    let spec = runtime.store.spec(id).await.map_err(store_failure)?;
    let tenants = runtime.store.checkpoints(id).await.map_err(store_failure)?;
    let events = runtime.store.events(id).await.map_err(store_failure)?;
    let waves = spec
        .waves
        .iter()
        .map(|w| {
            let mut counts: BTreeMap<&'static str, usize> = BTreeMap::new();
            for t in &w.tenants {
                if let Some(cp) = tenants.get(t.as_str()) {
                    *counts.entry(cp.state.as_str()).or_default() += 1;
                }
            }
            WaveStatus { index: w.index, name: w.name.clone(), tenants: w.tenants.len(), counts }
        })
        .collect();
    let report = match &run.report {
        Some(kind) => Some(report_status(runtime, &run, kind).await),
        None => None,
    };
    // Units are keyed `{step label}/{service}`.
    let labels: Vec<String> = spec
        .steps
        .iter()
        .filter(|st| st.kind == crate::steps::StepKind::AnalyzeIndexes)
        .map(|st| format!("{}/", st.label()))
        .collect();
    let index_findings = crate::steps::analyze_indexes::aggregate(tenants.values().flat_map(|cp| {
        cp.outputs.iter().filter_map(|(unit, output)| {
            labels.iter().find_map(|l| unit.strip_prefix(l.as_str())).map(|service| (service, output))
        })
    }));
    Ok(Status { run, waves, tenants, events, report, index_findings })
}

/// Where the run's report stands, with the report once it is written.
async fn report_status(runtime: &Runtime, run: &RunRecord, kind: &str) -> ReportStatus {
    use crate::runtime::report;
    let (json, markdown) = report::keys(&run.workflow, &run.id);
    let mut status =
        ReportStatus { kind: kind.to_string(), state: "pending", json, markdown, error: None, report: None };
    if let Some(e) = &run.report_error {
        status.state = "failed";
        status.error = Some(e.clone());
        return status;
    }
    let Some(store) = runtime.objects() else {
        status.error = Some("this config has no [storage] to read the report from".to_string());
        return status;
    };
    match report::read(store, &run.workflow, &run.id).await {
        Ok(Some(r)) => {
            status.state = "written";
            status.report = Some(r);
        }
        Ok(None) => {}
        Err(e) => status.error = Some(e.to_string()),
    }
    status
}

fn print_status(s: &Status, verbose: bool) {
    let r = &s.run;
    println!("run {}  workflow {}  trigger {}", r.id, r.workflow, r.trigger);
    println!("state {}{}", r.state, r.reason.as_ref().map(|x| format!(": {x}")).unwrap_or_default());
    if let Some(until) =
        r.soak_until_ms.filter(|u| *u > chrono::Utc::now().timestamp_millis() && !r.state.is_terminal())
    {
        println!("soaking until {} (the next wave starts then)", time(until));
    }
    if let (Some(halting), false) = (&r.halting, r.state.is_terminal()) {
        println!("{halting}; waiting for the tenants in flight");
    }
    if let Some(parent) = &r.parent {
        println!("retry of {parent}");
    }
    println!(
        "tenants {}: {} succeeded, {} failed, {} in flight, {} cancelled, {} skipped; created {}",
        r.tenants,
        r.succeeded,
        r.failed,
        r.inflight,
        r.cancelled,
        r.skipped,
        time(r.created_ms)
    );
    for w in &s.waves {
        let marker = if w.index == r.wave && !r.state.is_terminal() { "->" } else { "  " };
        let counts: Vec<String> = w.counts.iter().map(|(k, v)| format!("{v} {k}")).collect();
        println!("{marker} wave {} {}: {} tenant(s): {}", w.index + 1, w.name, w.tenants, counts.join(", "));
    }
    let notable: Vec<(&String, &Checkpoint)> = s
        .tenants
        .iter()
        .filter(|(_, c)| !matches!(c.state, TenantState::Succeeded | TenantState::Pending) || c.throttled.is_some())
        .collect();
    let detail = |c: &Checkpoint| match c.state {
        TenantState::Running | TenantState::Pending if c.throttled.is_some() => {
            format!("throttled: {}", c.throttled.as_deref().unwrap_or_default())
        }
        TenantState::Running | TenantState::Queued => c.worker.clone().unwrap_or_default(),
        _ => c.last_error.clone().unwrap_or_default(),
    };
    if !notable.is_empty() && verbose {
        println!("\n{:24} {:10} {:>4} {:>7}  DETAIL", "TENANT", "STATE", "STEP", "ATTEMPT");
        for (t, c) in notable.iter().take(200) {
            println!("{:24} {:10} {:>4} {:>7}  {}", t, c.state.as_str(), c.unit, c.attempt, detail(c));
        }
        if notable.len() > 200 {
            println!("... {} more (use --json)", notable.len() - 200);
        }
    } else if !notable.is_empty() {
        // One line per state, step and reason (running tenants are not told apart by their
        // worker here); `--verbose` has a line per tenant.
        println!();
        let lines: Vec<(String, String)> = notable
            .iter()
            .map(|(t, c)| {
                let why = match c.state {
                    TenantState::Running | TenantState::Queued if c.throttled.is_none() => String::new(),
                    _ => format!(": {}", detail(c)),
                };
                (t.to_string(), format!("{} at step {}{why}", c.state.as_str(), c.unit + 1))
            })
            .collect();
        super::plan::print_grouped(&lines);
    }
    if let Some(report) = &s.report {
        print_report(report, r.state.is_terminal());
    }
    if !s.index_findings.is_empty() {
        println!("\nindex findings across the fleet (analyze_indexes):");
        for f in s.index_findings.iter().take(INDEX_LINES) {
            println!(
                "  {:9} {} on {}: in {} of {} tenants of {}",
                f.kind, f.index, f.table, f.tenants, f.of, f.service
            );
        }
        if s.index_findings.len() > INDEX_LINES {
            println!("  ... {} more (use --json)", s.index_findings.len() - INDEX_LINES);
        }
    }
}

/// Fleet-wide index findings printed by `status`; `--json` has them all.
const INDEX_LINES: usize = 30;

/// Targets of a drill report printed by `status`; the rest are in the stored report.
const REPORT_LINES: usize = 100;

fn print_report(status: &ReportStatus, ended: bool) {
    use crate::runtime::report::{Outcome, duration};
    println!();
    let Some(r) = &status.report else {
        let why = match (&status.error, ended) {
            (Some(e), _) => format!("not available: {e}"),
            (None, true) => "being written by a worker".to_string(),
            (None, false) => "written when the run ends".to_string(),
        };
        println!("{} report {}: {why}", status.kind, status.json);
        return;
    };
    let s = &r.summary;
    println!(
        "drill report: {} of {} restores verified, {} failed, {} skipped, {} not run",
        s.passed, s.targets, s.failed, s.skipped, s.not_run
    );
    for (name, spread) in [("RTO", &s.rto), ("RPO", &s.rpo)] {
        if let Some(x) = spread {
            println!("  {name} worst {} ({}), median {}", duration(x.worst_ms), x.worst, duration(x.median_ms));
        }
    }
    println!("\n{:24} {:10} {:8} {:>9} {:>9}  BACKUP / REASON", "TENANT", "SERVICE", "OUTCOME", "RTO", "RPO");
    for t in r.targets.iter().take(REPORT_LINES) {
        let detail = match t.outcome {
            Outcome::Passed => t.backup.clone().unwrap_or_default(),
            _ => t.reason.clone().unwrap_or_default(),
        };
        let ms = |v: Option<u64>| v.map_or("-".to_string(), duration);
        println!(
            "{:24} {:10} {:8} {:>9} {:>9}  {}",
            t.tenant,
            t.service,
            t.outcome.as_str(),
            ms(t.rto_ms),
            ms(t.rpo_ms),
            detail
        );
    }
    if r.targets.len() > REPORT_LINES {
        println!("... {} more in the report", r.targets.len() - REPORT_LINES);
    }
    println!("report: {} and {} (under [storage] prefix)", status.json, status.markdown);
}

/// `approve`, `pause`, `resume`, `cancel`.
pub async fn control(ctx: &Context, id: &str, action: &'static str, json: bool) -> Result<(), Failure> {
    let runtime = ctx.runtime().await?;
    let record = apply(&runtime, id, action).await?;
    if json {
        println!("{}", serde_json::to_string(&record).expect("serialises"));
    } else {
        println!("run {id}: {}", record.state);
    }
    Ok(())
}

/// Applies `approve`, `pause`, `resume` or `cancel` to run `id`; its record afterwards.
pub async fn apply(runtime: &Runtime, id: &str, action: &str) -> Result<RunRecord, Failure> {
    let record = runtime.store.record(id).await.map_err(store_failure)?;
    let (action, from, to, fields): (&'static str, &[RunState], RunState, Vec<(String, String)>) = match action {
        // The approval is for the wave the run waits at; advance checks this marker.
        "approve" => (
            "approve",
            &[RunState::AwaitingApproval],
            RunState::Running,
            vec![(format!("approved:{}", record.wave), "1".to_string())],
        ),
        "pause" => ("pause", &[RunState::Running, RunState::AwaitingApproval], RunState::Paused, vec![]),
        "resume" => ("resume", &[RunState::Paused], RunState::Running, vec![]),
        "cancel" => (
            "cancel",
            &[RunState::Queued, RunState::Running, RunState::AwaitingApproval, RunState::Paused],
            RunState::Cancelled,
            vec![("reason".to_string(), "cancelled by an operator".to_string())],
        ),
        other => return Err(Failure::Failed(format!("no action {other:?} on runs"))),
    };
    if to == RunState::Cancelled {
        runtime.store.cancel(id, "cancelled by an operator").await.map_err(store_failure)?;
    } else {
        runtime.store.transition(id, action, from, to, &fields).await.map_err(store_failure)?;
    }
    if to == RunState::Running {
        let spec = runtime.store.spec(id).await.map_err(store_failure)?;
        runtime.advance(&spec).await.map_err(store_failure)?;
    }
    runtime.store.record(id).await.map_err(store_failure)
}

/// `tenantry retry RUN`: a new run of only the tenants that failed, linked to the old one.
pub async fn retry(ctx: &Context, id: &str, wait: bool, json: bool) -> Result<(), Failure> {
    let runtime = ctx.runtime().await?;
    let new_id = start_retry(&runtime, id).await?;
    report_started(&runtime, &new_id, json).await?;
    if wait { follow(&runtime, &new_id, json).await } else { Ok(()) }
}

/// Starts a retry of run `id`'s failed tenants; the new run's id.
pub async fn start_retry(runtime: &Runtime, id: &str) -> Result<String, Failure> {
    let record = runtime.store.record(id).await.map_err(store_failure)?;
    if !record.state.is_terminal() {
        return Err(Failure::Failed(format!(
            "run {id} is {}; retry it once it has ended (or cancel it)",
            record.state
        )));
    }
    // Each failed tenant with the unit it failed at, where the retry starts it.
    let failed: BTreeMap<String, usize> = runtime
        .store
        .checkpoints(id)
        .await
        .map_err(store_failure)?
        .into_iter()
        .filter(|(_, c)| c.state == TenantState::Failed)
        .map(|(t, c)| (t, c.unit))
        .collect();
    if failed.is_empty() {
        return Err(Failure::Failed(format!("run {id} has no failed tenants to retry")));
    }
    let parent: RunSpec = runtime.store.spec(id).await.map_err(store_failure)?;
    let spec = launch::retry_snapshot(&parent, &failed);
    runtime.start(spec, &Trigger::Retry { parent: id.to_string() }).await.map_err(store_failure)
}

pub(crate) fn store_failure(e: crate::runtime::store::StoreError) -> Failure {
    use crate::runtime::store::StoreError;
    match e {
        StoreError::Unreachable { .. } | StoreError::Redis(_) => Failure::Unreachable(e.to_string()),
        StoreError::NoSuchRun(_) => Failure::NotFound(e.to_string()),
        other => Failure::Failed(other.to_string()),
    }
}

fn time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string()).unwrap_or_default()
}
