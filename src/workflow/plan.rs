//! `plan`: what a workflow would do per wave, per tenant and per step, from the catalog and the targets' current state. Changes nothing.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{Wave, Workflow, assign, target};
use crate::catalog::{Catalog, Placement, TenantId};
use crate::config::LoadedConfig;
use crate::steps::StepKind;
use crate::steps::define::PlanEnv;
use crate::steps::migrate::MigrationStatus;

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub workflow: String,
    pub tenants: usize,
    pub waves: Vec<WavePlan>,
}

#[derive(Debug, Clone, Serialize)]
pub struct WavePlan {
    #[serde(flatten)]
    pub wave: Wave,
    pub plans: Vec<TenantPlan>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TenantPlan {
    pub tenant: TenantId,
    pub steps: Vec<StepPlan>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StepPlan {
    pub step: String,
    pub kind: StepKind,
    pub service: String,
    /// `host/database/schema` the step works on.
    pub target: String,
    #[serde(flatten)]
    pub action: StepAction,
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum StepAction {
    /// The step runs.
    Run,
    /// `migrate`: what the target's history says.
    Migrate {
        #[serde(flatten)]
        status: MigrationStatus,
        /// `row` isolation: the target is shared with other tenants, and the first tenant
        /// of the run to reach it applies the migrations for all.
        shared: bool,
    },
    /// The step could run here but does not in this run (the target is not in the step's
    /// sample); the reason says why. A run records the step as skipped with this reason.
    Skip { reason: String },
    /// The step cannot run here; the reason says why.
    Blocked { reason: String },
}

impl StepAction {
    pub fn is_blocked(&self) -> bool {
        match self {
            Self::Blocked { .. } => true,
            Self::Migrate { status, .. } => !status.problems.is_empty(),
            Self::Run | Self::Skip { .. } => false,
        }
    }
}

impl Plan {
    /// Targets `migrate` would refuse (drift, dirty, ...), and steps that cannot run.
    pub fn blocked(&self) -> usize {
        self.waves.iter().flat_map(|w| &w.plans).flat_map(|p| &p.steps).filter(|s| s.action.is_blocked()).count()
    }
}

/// (host, database, schema) of a target.
pub type TargetKey = (String, String, String);

/// Builds the plan of `workflow` for the tenants it targets (narrowed to `only` when given).
pub async fn build(workflow: &Workflow, catalog: &Catalog, config: &LoadedConfig, only: &[String]) -> Plan {
    let spec = &workflow.spec;
    let tenants = target::select(&spec.target, catalog, only);
    let waves = assign(&spec.waves, &tenants, &workflow.name);
    let services = target::target_services(&spec.target, catalog);

    // Each step's kind looks at all of its targets at once (migrate reads the histories in
    // bulk), then the answers are laid out per wave, tenant and step.
    let mut actions: Vec<BTreeMap<(&TenantId, &str), StepAction>> = Vec::new();
    for step in &spec.steps {
        let mut keys = Vec::new();
        let mut targets: Vec<&Placement> = Vec::new();
        for tenant in &tenants {
            for service in target::step_services(step, &services, catalog) {
                if let Some(placement) = tenant.placements.get(service) {
                    keys.push((&tenant.id, service));
                    targets.push(placement);
                }
            }
        }
        // Targets on an engine the kind does not run on yet, or without what the kind
        // needs of a placement, are blocked without asking it.
        let unready = |i: usize| {
            step.kind.runs_on(targets[i].engine).and_then(|()| step.kind.def().needs(targets[i], keys[i].0.as_str()))
        };
        let (runnable, blocked): (Vec<usize>, Vec<usize>) = (0..targets.len()).partition(|&i| unready(i).is_ok());
        let asked: Vec<&Placement> = runnable.iter().map(|&i| targets[i]).collect();
        let asked_tenants: Vec<&str> = runnable.iter().map(|&i| keys[i].0.as_str()).collect();
        let env = PlanEnv { catalog, config, tenants: &asked_tenants };
        let answers = step.kind.def().plan(step, &asked, env).await;
        let mut by_key = BTreeMap::new();
        for (i, action) in runnable.into_iter().zip(answers) {
            by_key.insert(keys[i], action);
        }
        for i in blocked {
            let reason = unready(i).unwrap_err();
            by_key.insert(keys[i], StepAction::Blocked { reason });
        }
        actions.push(by_key);
    }

    let by_id: BTreeMap<&TenantId, &crate::catalog::Tenant> = tenants.iter().map(|t| (&t.id, *t)).collect();
    let waves = waves
        .into_iter()
        .map(|wave| {
            let plans = wave
                .tenants
                .iter()
                .map(|id| {
                    let tenant = by_id[id];
                    let mut steps = Vec::new();
                    for (step, actions) in spec.steps.iter().zip(&actions) {
                        for service in target::step_services(step, &services, catalog) {
                            let (Some(placement), Some(action)) =
                                (tenant.placements.get(service), actions.get(&(&tenant.id, service)))
                            else {
                                continue;
                            };
                            steps.push(StepPlan {
                                step: step.label(),
                                kind: step.kind,
                                service: service.to_string(),
                                target: placement.target_key(),
                                action: action.clone(),
                            });
                        }
                    }
                    TenantPlan { tenant: id.clone(), steps }
                })
                .collect();
            WavePlan { wave, plans }
        })
        .collect();
    Plan { workflow: workflow.name.clone(), tenants: tenants.len(), waves }
}
