//! `tenantry plan WORKFLOW`: per wave, per tenant, what the workflow would do. Changes nothing.

use super::{Context, Failure};
use crate::workflow::plan::{StepAction, build};

pub async fn run(ctx: &Context, name: &str, only: &[String], json: bool) -> Result<(), Failure> {
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
            println!("  {:24} {}", tp.tenant.as_str(), steps.join("; "));
        }
    }
    let blocked = plan.blocked();
    if blocked > 0 {
        println!("\n{blocked} step(s) would be refused or cannot run; see above");
    }
    Ok(())
}
