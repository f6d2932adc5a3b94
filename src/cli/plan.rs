//! `tenantry plan WORKFLOW`: per wave, what the workflow would do to its tenants — one line per distinct plan with a count and the first ids (`--verbose` or `--tenant`: a line per tenant). Changes nothing.

use super::{Context, Failure};
use crate::workflow::plan::{StepAction, build};

pub async fn run(ctx: &Context, name: &str, only: &[String], verbose: bool, json: bool) -> Result<(), Failure> {
    let (catalog, wf) = ctx.checked_workflow(name, only).await?;
    let loaded = &ctx.config;
    let plan = build(&wf, &catalog, loaded, only).await;
    if json {
        println!("{}", serde_json::to_string_pretty(&plan).expect("plan serialises"));
        return Ok(());
    }
    println!(
        "plan: workflow {} — {} tenant(s) in {} wave(s); nothing is changed",
        plan.workflow,
        plan.tenants,
        plan.waves.len()
    );
    for wp in &plan.waves {
        let w = &wp.wave;
        let mut notes = Vec::new();
        if let Some(n) = w.max_failures {
            notes.push(format!("max_failures {n}"));
        }
        if let Some(r) = w.max_failure_rate {
            notes.push(format!("max_failure_rate {r}"));
        }
        if w.approval {
            notes.push("waits for approval".to_string());
        }
        if let Some(s) = w.soak {
            notes.push(format!("soak {s}"));
        }
        let notes = if notes.is_empty() { String::new() } else { format!(" ({})", notes.join(", ")) };
        println!("\nwave {} {}: {} tenant(s){notes}", w.index + 1, w.name, w.tenants.len());
        let mut lines: Vec<(String, String)> = Vec::with_capacity(wp.plans.len());
        for tp in &wp.plans {
            let steps: Vec<String> = tp
                .steps
                .iter()
                .map(|s| {
                    let what = match &s.action {
                        StepAction::Run => "run".to_string(),
                        StepAction::Skip { reason } => format!("skip: {reason}"),
                        StepAction::Blocked { reason } => format!("BLOCKED: {reason}"),
                        StepAction::Migrate { status, shared } => {
                            let shared = if *shared { " (shared target)" } else { "" };
                            if !status.problems.is_empty() {
                                format!("REFUSED: {}", status.problems.join("; "))
                            } else if status.pending.is_empty() {
                                format!("up to date, {} applied{shared}", status.applied)
                            } else {
                                format!("{} pending: {}{shared}", status.pending.len(), status.pending.join(", "))
                            }
                        }
                    };
                    format!("{}[{}] {what}", s.step, s.service)
                })
                .collect();
            lines.push((tp.tenant.as_str().to_string(), steps.join("; ")));
        }
        if verbose {
            for (tenant, line) in &lines {
                println!("  {tenant:24} {line}");
            }
        } else {
            print_grouped(&lines);
        }
    }
    let blocked = plan.blocked();
    if blocked > 0 {
        println!("\n{blocked} step(s) would be refused or cannot run; see above");
    }
    Ok(())
}

/// How many ids a grouped line names before "… and N more".
const FIRST_IDS: usize = 5;

/// One line per distinct text with the count of tenants that have it and the first ids,
/// in the order each text first appears; a text only one tenant has is printed as its own
/// line.
pub(super) fn print_grouped(lines: &[(String, String)]) {
    let mut groups: Vec<(&str, Vec<&str>)> = Vec::new();
    let mut at: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for (tenant, text) in lines {
        let i = *at.entry(text.as_str()).or_insert_with(|| {
            groups.push((text.as_str(), Vec::new()));
            groups.len() - 1
        });
        groups[i].1.push(tenant.as_str());
    }
    for (text, tenants) in groups {
        if let [one] = tenants.as_slice() {
            println!("  {one:24} {text}");
            continue;
        }
        let first = tenants.iter().take(FIRST_IDS).copied().collect::<Vec<_>>().join(", ");
        let more = tenants.len().saturating_sub(FIRST_IDS);
        let more = if more > 0 { format!(", … and {more} more") } else { String::new() };
        println!("  {:>5} tenants: {text}\n          {first}{more}", tenants.len());
    }
}
