//! `plan`: what a workflow would do per wave, per tenant and per step, from the catalog and the targets' current state. Changes nothing.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::{Wave, Workflow, assign, target};
use crate::catalog::{Catalog, Engine, Placement, TenantId};
use crate::config::LoadedConfig;
use crate::migrations::MigrationSet;
use crate::steps::StepKind;
use crate::steps::migrate::{AppliedMigration, MigrationStatus, compare, read_histories};

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
    /// The step cannot run here; the reason says why.
    Blocked { reason: String },
}

impl StepAction {
    pub fn is_blocked(&self) -> bool {
        match self {
            Self::Blocked { .. } => true,
            Self::Migrate { status, .. } => !status.problems.is_empty(),
            Self::Run => false,
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

    // Per migrate step's service: its migration set, and every target to read.
    let mut sets: BTreeMap<String, Result<MigrationSet, String>> = BTreeMap::new();
    let mut to_read: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for step in spec.steps.iter().filter(|s| s.kind == StepKind::Migrate) {
        for service in target::step_services(step, &services, catalog) {
            let Some(service_spec) = catalog.services.get(service) else {
                continue;
            };
            sets.entry(service.to_string()).or_insert_with(|| match &service_spec.migrations {
                None => Err("the service has no migrations directory".to_string()),
                Some(dir) => MigrationSet::load(&config.resolve_path(dir)).map_err(|e| e.to_string()),
            });
            for t in &tenants {
                if let Some(p) = t.placements.get(service)
                    && p.engine == Engine::Postgres
                {
                    to_read.entry((p.host.clone(), p.database.clone())).or_default().insert(p.schema.clone());
                }
            }
        }
    }
    let histories = read_all_histories(catalog, config, to_read).await;

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
                    for step in &spec.steps {
                        for service in target::step_services(step, &services, catalog) {
                            let Some(placement) = tenant.placements.get(service) else {
                                continue;
                            };
                            let action = match step.kind {
                                _ if let Err(reason) = crate::steps::can_run(step.kind, placement.engine) => {
                                    StepAction::Blocked { reason }
                                }
                                StepKind::Migrate => migrate_action(
                                    placement,
                                    &sets,
                                    &histories,
                                    step.allow_out_of_order.unwrap_or(false),
                                ),
                                _ => StepAction::Run,
                            };
                            steps.push(StepPlan {
                                step: step.label(),
                                kind: step.kind,
                                service: service.to_string(),
                                target: placement.target_key(),
                                action,
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

fn migrate_action(
    placement: &Placement,
    sets: &BTreeMap<String, Result<MigrationSet, String>>,
    histories: &BTreeMap<TargetKey, Result<Vec<AppliedMigration>, String>>,
    allow_out_of_order: bool,
) -> StepAction {
    if placement.engine != Engine::Postgres {
        return StepAction::Blocked { reason: format!("migrate on {} is not supported yet", placement.engine) };
    }
    let set = match sets.get(&placement.service) {
        Some(Ok(set)) => set,
        Some(Err(e)) => return StepAction::Blocked { reason: e.clone() },
        None => {
            return StepAction::Blocked { reason: "no migrations".to_string() };
        }
    };
    let key = (placement.host.clone(), placement.database.clone(), placement.schema.clone());
    match histories.get(&key) {
        Some(Ok(history)) => StepAction::Migrate {
            status: compare(set, history, allow_out_of_order),
            shared: placement.isolation == crate::catalog::Isolation::Row,
        },
        Some(Err(e)) => StepAction::Blocked { reason: e.clone() },
        None => StepAction::Blocked { reason: "history was not read".to_string() },
    }
}

/// Reads the histories of every (host, database) group, at most `limits.plan_connections`
/// connections per host at a time. Errors are per target, so one unreachable database
/// shows up in its tenants' plans without hiding the rest of the fleet.
pub async fn read_all_histories(
    catalog: &Catalog,
    config: &LoadedConfig,
    groups: BTreeMap<(String, String), BTreeSet<String>>,
) -> BTreeMap<TargetKey, Result<Vec<AppliedMigration>, String>> {
    let per_host = config.config.limits.plan_connections as usize;
    crate::engine::fleet::read_targets(
        &catalog.hosts,
        groups,
        per_host,
        "the migration history",
        async |conn, schemas| read_histories(conn, schemas).await,
    )
    .await
    .into_iter()
    .map(|(key, result)| (key, result.map_err(|e| e.message)))
    .collect()
}
