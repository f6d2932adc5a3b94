//! Starting runs: snapshot the workflow and the selected tenants into a run spec, write it, and dispatch the first tenants.

use std::collections::{BTreeMap, BTreeSet};

use super::model::{Placements, RunSpec, TenantSnapshot, Unit};
use super::store::new_run_id;
use crate::catalog::Catalog;
use crate::config::LoadedConfig;
use crate::workflow::{Wave, Workflow, assign, target};

/// Builds the immutable snapshot of a run of `workflow` over the tenants it targets
/// (narrowed to `only`). Tenants for which no step applies are left out.
pub fn snapshot(workflow: &Workflow, catalog: &Catalog, config: &LoadedConfig, only: &[String]) -> RunSpec {
    let spec = &workflow.spec;
    let tenants = target::select(&spec.target, catalog, only);
    let services = target::target_services(&spec.target, catalog);
    let read: BTreeSet<String> = spec.steps.iter().flat_map(|s| s.kind.def().labels(s)).collect();
    let mut snapshots = BTreeMap::new();
    for tenant in &tenants {
        let mut units = Vec::new();
        let mut placements = Placements::default();
        for (i, step) in spec.steps.iter().enumerate() {
            for service in target::step_services(step, &services, catalog) {
                if let Some(p) = tenant.placements.get(service) {
                    units.push(Unit { step: i, service: service.to_string(), skip: None });
                    placements.insert(service.to_string(), p.clone());
                }
            }
        }
        if units.is_empty() {
            continue;
        }
        let hosts: BTreeSet<&str> = placements.values().map(|p| p.host.as_str()).collect();
        let group = hosts.into_iter().collect::<Vec<_>>().join("+");
        let labels =
            tenant.labels.iter().filter(|(k, _)| read.contains(*k)).map(|(k, v)| (k.clone(), v.clone())).collect();
        snapshots.insert(tenant.id.to_string(), TenantSnapshot { wave: 0, placements, units, group, labels });
    }
    let included: Vec<&crate::catalog::Tenant> =
        tenants.iter().copied().filter(|t| snapshots.contains_key(t.id.as_str())).collect();
    let waves = assign(&spec.waves, &included, &workflow.name);
    for wave in &waves {
        for id in &wave.tenants {
            if let Some(s) = snapshots.get_mut(id.as_str()) {
                s.wave = wave.index;
            }
        }
    }
    let mut migrations = BTreeMap::new();
    for t in snapshots.values() {
        for u in &t.units {
            let kind = spec.steps[u.step].kind;
            let migrates = matches!(kind, crate::steps::StepKind::Migrate | crate::steps::StepKind::Provision);
            if migrates && !migrations.contains_key(&u.service) {
                let set = catalog.services.get(&u.service).and_then(|s| s.migrations.as_ref()).map(|dir| {
                    let (set, _) = crate::migrations::MigrationSet::scan(&config.resolve_path(dir));
                    set.migrations.iter().map(|m| (m.version.to_string(), m.up.checksum.clone())).collect::<Vec<_>>()
                });
                migrations.insert(u.service.clone(), set.unwrap_or_default());
            }
        }
    }
    RunSpec {
        id: new_run_id(),
        migrations,
        workflow: workflow.name.clone(),
        steps: spec.steps.clone(),
        retry: spec.retry.clone(),
        timeout: spec.timeout,
        run_concurrency: spec.concurrency.run,
        host_limits: host_limits(catalog, config, spec.concurrency.per_host),
        waves,
        tenants: snapshots,
        receipt_run: None,
        timezone: spec.timezone.clone(),
        report: spec.report,
        throttle: spec.throttle.clone(),
    }
}

/// Per host: the workflow's `per_host`, else the host's `max_concurrency`, else the default.
fn host_limits(catalog: &Catalog, config: &LoadedConfig, per_host: Option<u32>) -> BTreeMap<String, u32> {
    catalog
        .hosts
        .iter()
        .map(|(name, host)| {
            let limit = per_host.or(host.max_concurrency).unwrap_or(config.config.limits.per_host).max(1);
            (name.clone(), limit)
        })
        .collect()
}

/// A retry run: the failed tenants of `parent` (each with the index of the unit it failed
/// at), with the same steps and their original waves (so budgets still apply), as a new
/// run linked to the old one.
///
/// Each tenant starts at the unit it failed at: the units before it succeeded in the
/// parent, and running them again would at best cost a round of no-ops. The retry also
/// keeps the receipts of the chain's first run, so a unit that committed but was not
/// recorded (its worker died in between, and the tenant failed on lost leases) is skipped,
/// not applied a second time.
pub fn retry_snapshot(parent: &RunSpec, failed: &BTreeMap<String, usize>) -> RunSpec {
    let tenants: BTreeMap<String, TenantSnapshot> = parent
        .tenants
        .iter()
        .filter_map(|(id, t)| {
            let from = *failed.get(id)?;
            let mut t = t.clone();
            if from < t.units.len() {
                t.units.drain(..from);
            }
            Some((id.clone(), t))
        })
        .collect();
    let waves: Vec<Wave> = parent
        .waves
        .iter()
        .map(|w| Wave {
            tenants: w.tenants.iter().filter(|t| failed.contains_key(t.as_str())).cloned().collect(),
            ..w.clone()
        })
        .collect();
    RunSpec { id: new_run_id(), tenants, waves, receipt_run: Some(parent.receipt_run().to_string()), ..parent.clone() }
}

/// Asks the plan of every step that chooses its targets (a sample, see
/// [`crate::steps::define::Step::selects`]) which of the run's targets to skip, and marks
/// those units skipped with the plan's reason: the run does what `plan` shows. Returns how
/// many units were marked.
pub async fn apply_selections(spec: &mut RunSpec, catalog: &Catalog, config: &LoadedConfig) -> usize {
    use crate::steps::define::PlanEnv;
    use crate::workflow::plan::StepAction;
    let mut marked = 0;
    for (index, step) in spec.steps.iter().enumerate() {
        let kind = step.kind.def();
        if !kind.selects(step) {
            continue;
        }
        // (tenant, unit index) of each of the step's targets that the kind runs on.
        let mut at: Vec<(String, usize)> = Vec::new();
        let mut targets: Vec<&crate::catalog::Placement> = Vec::new();
        for (id, t) in &spec.tenants {
            for (i, u) in t.units.iter().enumerate() {
                if u.step == index
                    && let Some(p) = t.placements.get(&u.service)
                    && step.kind.runs_on(p.engine).is_ok()
                {
                    at.push((id.clone(), i));
                    targets.push(p);
                }
            }
        }
        let tenants: Vec<&str> = at.iter().map(|(id, _)| id.as_str()).collect();
        let answers = kind.plan(step, &targets, PlanEnv { catalog, config, tenants: &tenants }).await;
        let skips: Vec<(String, usize, String)> = at
            .into_iter()
            .zip(answers)
            .filter_map(|((id, i), action)| match action {
                StepAction::Skip { reason } => Some((id, i, reason)),
                _ => None,
            })
            .collect();
        for (id, i, reason) in skips {
            if let Some(t) = spec.tenants.get_mut(&id) {
                t.units[i].skip = Some(reason);
                marked += 1;
            }
        }
    }
    marked
}

/// The fast path for rollouts: reads the migration histories of the run's targets in bulk
/// (a few queries per database, like `plan`) and drops `migrate` units whose target has
/// nothing pending and nothing wrong. A tenant left with no unit is recorded as succeeded
/// when the run is created, without being dispatched, so a rollout over a fleet that is
/// already up to date costs a handful of queries instead of a task per tenant. Targets
/// whose history cannot be read, or that `migrate` would refuse, keep their unit: the step
/// reports them. Returns how many tenants need no work.
pub async fn skip_up_to_date(spec: &mut RunSpec, catalog: &Catalog, config: &LoadedConfig) -> usize {
    use crate::steps::StepKind;
    use crate::steps::migrate::{Options, compare};
    // A migrate step's options (validated when the run was made); `to` pins a version, so
    // its targets are never skipped.
    let options: Vec<Option<Options>> = spec
        .steps
        .iter()
        .map(|s| (s.kind == StepKind::Migrate).then(|| s.options_as::<Options>().ok()).flatten())
        .map(|o| o.filter(|o| o.to.is_none()))
        .collect();
    let mut groups: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for t in spec.tenants.values() {
        for u in &t.units {
            if options[u.step].is_some()
                && let Some(p) = t.placements.get(&u.service)
                && p.engine == crate::catalog::Engine::Postgres
            {
                groups.entry((p.host.clone(), p.database.clone())).or_default().insert(p.schema.clone());
            }
        }
    }
    if groups.is_empty() {
        return 0;
    }
    let histories = crate::steps::migrate::read_all_histories(catalog, config, groups).await;
    // The migration sets of the services this run migrates (not every service's).
    let mut sets = BTreeMap::new();
    for service in spec.migrations.keys() {
        if let Some(dir) = catalog.services.get(service).and_then(|s| s.migrations.as_ref())
            && let Ok(set) = crate::migrations::MigrationSet::load(&config.resolve_path(dir))
        {
            sets.insert(service.clone(), set);
        }
    }
    let mut skipped = 0;
    for t in spec.tenants.values_mut() {
        let before = t.units.len();
        t.units.retain(|u| {
            let Some(options) = &options[u.step] else { return true };
            let (Some(p), Some(set)) = (t.placements.get(&u.service), sets.get(&u.service)) else { return true };
            match histories.get(&(p.host.clone(), p.database.clone(), p.schema.clone())) {
                Some(Ok(history)) => {
                    let status = compare(set, history, options.allow_out_of_order());
                    !(status.pending.is_empty() && status.problems.is_empty())
                }
                _ => true,
            }
        });
        if before > 0 && t.units.is_empty() {
            skipped += 1;
        }
    }
    skipped
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run of two tenants with three units each (no steps needed: retry only slices).
    fn run() -> RunSpec {
        let units: Vec<serde_json::Value> =
            (0..3).map(|i| serde_json::json!({ "step": i, "service": "app" })).collect();
        let tenant = serde_json::json!({ "wave": 0, "placements": {}, "units": units, "group": "main" });
        serde_json::from_value(serde_json::json!({
            "id": "root", "workflow": "w", "steps": [], "retry": {}, "timeout": "1m", "run_concurrency": 1,
            "host_limits": {},
            "waves": [{ "index": 0, "name": "all", "tenants": ["a", "b"], "max_failures": null,
                        "max_failure_rate": null, "approval": false }],
            "tenants": { "a": tenant, "b": tenant },
        }))
        .unwrap()
    }

    #[test]
    fn a_retry_starts_at_the_failed_unit_and_keeps_the_root_runs_receipts() {
        let root = run();
        assert_eq!(root.receipt_run(), "root");
        let first = retry_snapshot(&root, &BTreeMap::from([("b".to_string(), 2)]));
        assert_ne!(first.id, "root");
        assert_eq!(first.receipt_run(), "root");
        assert_eq!(first.tenants.keys().collect::<Vec<_>>(), ["b"]);
        assert_eq!(first.tenants["b"].units, [Unit { step: 2, service: "app".into(), skip: None }]);
        assert_eq!(first.waves[0].tenants.iter().map(|t| t.as_str()).collect::<Vec<_>>(), ["b"]);
        // A retry of the retry: indices are the retry's own; receipts still the root's.
        let second = retry_snapshot(&first, &BTreeMap::from([("b".to_string(), 0)]));
        assert_eq!(second.receipt_run(), "root");
        assert_eq!(second.tenants["b"].units, [Unit { step: 2, service: "app".into(), skip: None }]);
    }
}
