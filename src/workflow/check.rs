//! `validate` for workflow files: schedule, target, waves, budgets, concurrency, retry and per-kind step options, each reported at its line.

use std::collections::{BTreeMap, BTreeSet};

use super::{Schedule, WorkflowSpec, wave_name};
use crate::catalog::{Catalog, ServiceSpec, TenantId};
use crate::diagnostic::Diagnostic;
use crate::path;
use crate::source::{KeyPath, SourceFile};
use crate::steps::COMMON_OPTIONS;

/// What a workflow is checked against: the configured services and, when it could be
/// resolved, the catalog (to check that named tenants exist).
pub struct CheckContext<'a> {
    pub services: &'a BTreeMap<String, ServiceSpec>,
    pub catalog: Option<&'a Catalog>,
}

/// All problems of one parsed workflow file.
pub fn check(spec: &WorkflowSpec, name: &str, source: &SourceFile, ctx: &CheckContext<'_>) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    let mut err = |p: KeyPath, m: String| out.push(source.error_at(&p, m));

    let name_path = if spec.name.is_some() { path!["name"] } else { KeyPath::root() };
    if let Err(e) = crate::catalog::check_name(name, "workflow name") {
        err(name_path, format!("{e} (the name is used in Redis keys and run ids; set `name` or rename the file)"));
    }

    match (&spec.schedule, &spec.timezone) {
        (Some(expr), tz) => {
            if let Err(e) = Schedule::parse(expr, tz.as_deref()) {
                let at = match e {
                    super::ScheduleError::Cron(_) => path!["schedule"],
                    super::ScheduleError::Timezone(_) => path!["timezone"],
                };
                err(at, e.to_string());
            }
        }
        // The zone also sets where prune_backups' days, weeks and months begin.
        (None, Some(tz)) if spec.steps.iter().any(|s| s.kind == crate::steps::StepKind::PruneBackups) => {
            if let Err(e) = super::parse_timezone(tz) {
                err(path!["timezone"], e.to_string());
            }
        }
        (None, Some(_)) => err(
            path!["timezone"],
            "timezone is set but there is no schedule (nor a prune_backups step, whose days, weeks and months it sets)"
                .to_string(),
        ),
        (None, None) => {}
    }

    // Target.
    for (i, service) in spec.target.services.iter().enumerate() {
        if !ctx.services.contains_key(service) {
            err(path!["target", "services", i], unknown_service(service, ctx.services));
        }
    }
    for key in ["tenants", "exclude"] {
        let ids = if key == "tenants" { &spec.target.tenants } else { &spec.target.exclude };
        for (i, id) in ids.iter().enumerate() {
            check_tenant_ref(id, path!["target", key, i], ctx, &mut err);
        }
    }
    if spec.target.status.is_empty() {
        err(path!["target", "status"], "target.status is empty, so no tenant can be selected".to_string());
    }

    check_waves(spec, ctx, &mut err);

    if spec.report == Some(super::ReportKind::Drill)
        && !spec.steps.iter().any(|s| s.kind == crate::steps::StepKind::VerifyRestore)
    {
        err(
            path!["report"],
            "report = \"drill\" reports on the workflow's verify_restore steps, and it has none".to_string(),
        );
    }

    if spec.concurrency.run == 0 {
        err(path!["concurrency", "run"], "concurrency.run must be at least 1".to_string());
    }
    if spec.concurrency.per_host == Some(0) {
        err(path!["concurrency", "per_host"], "concurrency.per_host must be at least 1".to_string());
    }
    if spec.retry.attempts == 0 {
        err(
            path!["retry", "attempts"],
            "retry.attempts counts the first attempt too and must be at least 1".to_string(),
        );
    }
    if spec.retry.backoff > spec.retry.max_backoff {
        err(
            path!["retry", "max_backoff"],
            format!(
                "retry.max_backoff ({}) is shorter than retry.backoff ({})",
                spec.retry.max_backoff, spec.retry.backoff
            ),
        );
    }
    if spec.timeout.0.is_zero() {
        err(path!["timeout"], "timeout must be longer than zero".to_string());
    }
    for (key, message) in spec.throttle.as_ref().map(|t| t.check()).unwrap_or_default() {
        err(path!["throttle", key.as_str()], format!("throttle.{key}: {message}"));
    }

    check_steps(spec, source, ctx, &mut err);
    out
}

fn check_tenant_ref(id: &str, at: KeyPath, ctx: &CheckContext<'_>, err: &mut impl FnMut(KeyPath, String)) {
    if let Err(e) = TenantId::parse(id) {
        err(at, e);
    } else if let Some(catalog) = ctx.catalog
        && catalog.tenant(id).is_none()
    {
        err(at, format!("tenant {id:?} is not in the catalog"));
    }
}

fn check_waves(spec: &WorkflowSpec, ctx: &CheckContext<'_>, err: &mut impl FnMut(KeyPath, String)) {
    let mut names = BTreeMap::new();
    let mut claimed: BTreeMap<&str, usize> = BTreeMap::new();
    let mut catch_all: Option<usize> = None;
    for (i, wave) in spec.waves.iter().enumerate() {
        let at = |key: &str| path!["waves", i, key];
        let name = wave_name(wave, i);
        if let Some(first) = names.insert(name.clone(), i) {
            err(at("name"), format!("duplicate wave name {name:?} (also waves[{first}])"));
        }
        if let Some(previous) = catch_all {
            err(
                path!["waves", i],
                format!(
                    "wave {name:?} can never get a tenant: wave {:?} before it has no selector and takes every remaining tenant",
                    wave_name(&spec.waves[previous], previous)
                ),
            );
        }
        let selectors = [wave.tenants.is_some(), wave.labels.is_some(), wave.percent.is_some()];
        match selectors.iter().filter(|s| **s).count() {
            0 => catch_all = Some(i),
            1 => {}
            _ => err(
                path!["waves", i],
                format!("wave {name:?} has more than one selector; use one of `tenants`, `labels` or `percent`"),
            ),
        }
        if let Some(ids) = &wave.tenants {
            if ids.is_empty() {
                err(at("tenants"), format!("wave {name:?} is empty: `tenants` lists no tenant"));
            }
            for (j, id) in ids.iter().enumerate() {
                let id_at = path!["waves", i, "tenants", j];
                if let Some(first) = claimed.insert(id.as_str(), i) {
                    err(
                        id_at.clone(),
                        format!(
                            "waves overlap: tenant {id:?} is in wave {name:?} and in wave {:?}",
                            wave_name(&spec.waves[first], first)
                        ),
                    );
                }
                if !spec.target.tenants.is_empty() && !spec.target.tenants.contains(id) {
                    err(
                        id_at.clone(),
                        format!("wave {name:?} names tenant {id:?}, which target.tenants does not include"),
                    );
                }
                if spec.target.exclude.contains(id) {
                    err(id_at.clone(), format!("wave {name:?} names tenant {id:?}, which target.exclude excludes"));
                }
                check_tenant_ref(id, id_at, ctx, err);
            }
        }
        if let Some(labels) = &wave.labels
            && labels.is_empty()
        {
            err(
                at("labels"),
                format!(
                    "wave {name:?} is empty: an empty label selector; remove `labels` to take every remaining tenant"
                ),
            );
        }
        if let Some(p) = wave.percent
            && !(p > 0.0 && p <= 100.0)
        {
            err(at("percent"), format!("wave {name:?}: percent must be in (0, 100], not {p}"));
        }
        if let Some(rate) = wave.max_failure_rate
            && !(0.0..=1.0).contains(&rate)
        {
            err(
                at("max_failure_rate"),
                format!(
                    "wave {name:?}: max_failure_rate is a share of the wave in [0, 1] (0.05 = 5 %), so {rate} can never be met"
                ),
            );
        }
        if let (Some(ids), Some(max)) = (&wave.tenants, wave.max_failures)
            && !ids.is_empty()
            && max as usize >= ids.len()
        {
            err(
                at("max_failures"),
                format!(
                    "wave {name:?} has {} tenant(s), so max_failures = {max} can never be exceeded and the budget never halts the run; lower it",
                    ids.len()
                ),
            );
        }
        if let Some(soak) = wave.soak
            && soak.0.is_zero()
        {
            err(at("soak"), format!("wave {name:?}: soak must be longer than zero (or removed)"));
        }
    }
}

fn check_steps(
    spec: &WorkflowSpec,
    source: &SourceFile,
    ctx: &CheckContext<'_>,
    err: &mut impl FnMut(KeyPath, String),
) {
    if spec.steps.is_empty() {
        err(KeyPath::root(), "workflow has no steps; add at least one [[steps]] table".to_string());
    }
    let target_services: Vec<&str> = if spec.target.services.is_empty() {
        ctx.services.keys().map(String::as_str).collect()
    } else {
        spec.target.services.iter().map(String::as_str).collect()
    };
    let mut labels = BTreeSet::new();
    for (i, step) in spec.steps.iter().enumerate() {
        let at = |key: &str| path!["steps", i, key];
        let label = step.label();
        if step.name.is_some() && !labels.insert(label.clone()) {
            err(at("name"), format!("duplicate step name {label:?}"));
        }
        let allowed = step.kind.options();
        for key in source.keys_at(&path!["steps", i]) {
            if !COMMON_OPTIONS.contains(&key.as_str()) && !allowed.contains(&key.as_str()) {
                let takes = if allowed.is_empty() { "no options".to_string() } else { allowed.join(", ") };
                err(
                    at(&key),
                    format!("option `{key}` does not apply to step kind `{}` (it takes: {takes})", step.kind),
                );
            }
        }
        for (key, message) in step.check_values() {
            err(at(&key), format!("step {label}: {message}"));
        }
        match &step.services {
            Some(list) => {
                if list.is_empty() {
                    err(at("services"), format!("step {label}: `services` is empty, so the step would run nowhere"));
                }
                for (j, service_name) in list.iter().enumerate() {
                    let service_at = path!["steps", i, "services", j];
                    let Some(service) = ctx.services.get(service_name) else {
                        err(service_at, unknown_service(service_name, ctx.services));
                        continue;
                    };
                    if !target_services.contains(&service_name.as_str()) {
                        err(
                            service_at.clone(),
                            format!("step {label}: service {service_name} is not in target.services"),
                        );
                    }
                    if let Err(why) = step.kind.fits(service) {
                        err(service_at, format!("step {label} does not fit service {service_name}: {why}"));
                    }
                }
            }
            // Without an explicit list, a step runs on the target's services it fits (a
            // vacuum in a mixed fleet skips the MariaDB services); fitting none is an error.
            None => {
                let known: Vec<(&str, &ServiceSpec)> =
                    target_services.iter().filter_map(|s| ctx.services.get(*s).map(|spec| (*s, spec))).collect();
                if !known.is_empty() && known.iter().all(|(_, spec)| step.kind.fits(spec).is_err()) {
                    let why: Vec<String> = known
                        .iter()
                        .map(|(name, spec)| format!("{name}: {}", step.kind.fits(spec).unwrap_err()))
                        .collect();
                    err(at("kind"), format!("step {label} fits none of the workflow's services ({})", why.join("; ")));
                }
            }
        }
    }
}

/// What `validate` reports without failing: steps of a kind this version cannot run yet
/// (on every service they would run on), and, given the catalog, targets that lack what
/// their step's kind needs of a placement (an RDS instance). A run of the workflow fails
/// those steps there; the other tenants are not held back by them.
pub fn warnings(
    spec: &WorkflowSpec,
    source: &SourceFile,
    services: &BTreeMap<String, ServiceSpec>,
    catalog: Option<&Catalog>,
) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    if let Some(catalog) = catalog {
        out.extend(unready_targets(spec, source, catalog));
    }
    for (i, step) in spec.steps.iter().enumerate() {
        let names: Vec<&String> = match &step.services {
            Some(list) => list.iter().collect(),
            None if spec.target.services.is_empty() => services.keys().collect(),
            None => spec.target.services.iter().collect(),
        };
        let reasons: BTreeSet<String> = names
            .iter()
            .filter_map(|n| services.get(*n))
            .filter(|svc| step.kind.fits(svc).is_ok())
            .filter_map(|svc| step.kind.runs_on(svc.engine).err())
            .collect();
        for reason in reasons {
            out.push(source.error_at(
                &path!["steps", i, "kind"],
                format!("warning: step {}: {reason}; a run fails this step on every tenant", step.label()),
            ));
        }
    }
    out
}

/// How many targets of each step lack what its kind needs, with the first few reasons.
fn unready_targets(spec: &WorkflowSpec, source: &SourceFile, catalog: &Catalog) -> Vec<Diagnostic> {
    const SHOWN: usize = 3;
    let tenants = super::target::select(&spec.target, catalog, &[]);
    let target_services = super::target::target_services(&spec.target, catalog);
    let mut out = Vec::new();
    for (i, step) in spec.steps.iter().enumerate() {
        let services = super::target::step_services(step, &target_services, catalog);
        let mut reasons = Vec::new();
        let mut targets = 0;
        for tenant in &tenants {
            for placement in services.iter().filter_map(|s| tenant.placements.get(*s)) {
                if step.kind.runs_on(placement.engine).is_err() {
                    continue;
                }
                targets += 1;
                if let Err(why) = step.kind.def().needs(placement, tenant.id.as_str()) {
                    reasons.push(why);
                }
            }
        }
        if reasons.is_empty() {
            continue;
        }
        let more = if reasons.len() > SHOWN { format!("; and {} more", reasons.len() - SHOWN) } else { String::new() };
        out.push(source.error_at(
            &path!["steps", i, "kind"],
            format!(
                "warning: step {}: {} of {targets} target(s) cannot run it: {}{more}; a run fails this step there",
                step.label(),
                reasons.len(),
                reasons.iter().take(SHOWN).cloned().collect::<Vec<_>>().join("; ")
            ),
        ));
    }
    out
}

fn unknown_service(name: &str, services: &BTreeMap<String, ServiceSpec>) -> String {
    let known: Vec<&str> = services.keys().map(String::as_str).collect();
    format!(
        "unknown service {name:?} (services: {})",
        if known.is_empty() { "none".to_string() } else { known.join(", ") }
    )
}
