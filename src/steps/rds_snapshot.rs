//! The `rds_snapshot` step: a DB snapshot of the tenant's own RDS instance, named from the tenant and the run, tagged with tenant, service and run, waited for until available (bounded, resumable), and this tenant's older tenantry snapshots beyond `keep_last` deleted.
//!
//! - **Where**: the placement's `rds_instance` (the service's `rds_instance` template, or
//!   the tenant's placement override). A target without one cannot run the step: `validate`
//!   warns, `plan` shows it blocked, a run fails it (see [`needs`]).
//! - **Exactly one snapshot per run**: the name is [`snapshot_name`] of the tenant and the
//!   run whose receipts the step uses (a retry's root run), so every attempt of a run
//!   computes the same one. An attempt first looks it up; one that finds it (a retry, or
//!   the worker that took the tenant over from one killed mid-wait) waits for it instead of
//!   creating another, and RDS itself refuses a second snapshot of the same name.
//! - **Bounded, resumable wait**: polls with backoff until the snapshot is `available`, for
//!   at most `wait_timeout` counted from the first request (its `tenantry:requested-at`
//!   tag), whichever attempt waits. A snapshot still not available then is left in place:
//!   the step fails, and a retry of the run waits for the same snapshot again.
//! - **Retention**: then the instance's manual snapshots that tenantry made for this
//!   tenant and service (name prefix and tags) are listed, a plan keeps the `keep_last`
//!   newest available ones and always the one just made ([`prune_plan`]), and the rest are
//!   deleted. Snapshots tenantry did not make, automated ones, and ones not `available`
//!   are never touched.
//! - **Fenced effects**: the create and every delete check the lease's fence right before
//!   they happen.

use std::time::{Duration, Instant};

use aws_sdk_rds::Client;
use aws_sdk_rds::types::DbSnapshot;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::define::{Findings, Step};
use super::{StepContext, StepError};
use crate::catalog::{Engine, Isolation, Placement, ServiceSpec};
use crate::rds::{self, NAME_PREFIX, Polled};
use crate::units::HumanDuration;

pub struct RdsSnapshot;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Options {
    /// Tenantry's snapshots of the tenant's instance that are kept, the newest, the one
    /// just made included (default 7).
    pub keep_last: Option<u32>,
    /// How long the snapshot may take to become available, from its first request
    /// (default 20m, under the default step timeout of 30m: raise both for large instances).
    pub wait_timeout: Option<HumanDuration>,
}

/// `keep_last` unless set.
pub const DEFAULT_KEEP_LAST: u32 = 7;

/// `wait_timeout` unless set (both RDS steps).
pub const DEFAULT_WAIT: Duration = Duration::from_secs(20 * 60);

impl Step for RdsSnapshot {
    type Options = Options;

    fn fits(service: &ServiceSpec) -> Result<(), String> {
        fits("rds_snapshot", service)
    }

    fn needs(placement: &Placement, tenant: &str) -> Result<(), String> {
        needs(placement, tenant)
    }

    fn check(o: &Options, out: &mut Findings) {
        if o.keep_last == Some(0) {
            out.push(("keep_last".into(), "keep_last = 0 would delete the snapshot just taken".to_string()));
        }
        check_wait(o.wait_timeout, out);
    }

    fn runs_on(_engine: Engine) -> Result<(), String> {
        // The RDS API is the same whatever engine the instance runs.
        Ok(())
    }

    async fn run(ctx: &StepContext<'_>, options: &Options) -> Result<serde_json::Value, StepError> {
        run(ctx, options).await
    }
}

/// Both RDS steps run on tenants with an instance of their own: database isolation.
pub(super) fn fits(kind: &str, service: &ServiceSpec) -> Result<(), String> {
    if service.isolation != Isolation::Database {
        return Err(format!(
            "{kind} needs a managed instance per tenant (database isolation), not {} isolation",
            service.isolation
        ));
    }
    Ok(())
}

/// Both RDS steps need the placement's instance, and a valid identifier for it.
pub(super) fn needs(placement: &Placement, tenant: &str) -> Result<(), String> {
    let service = &placement.service;
    match &placement.rds_instance {
        None => Err(format!(
            "tenant {tenant}, service {service}: no RDS instance; set services.{service}.rds_instance (a template such as \"tenant-{{tenant}}\") or rds_instance in the tenant's placement of {service}"
        )),
        Some(id) => {
            rds::check_instance_id(id).map_err(|e| format!("tenant {tenant}, service {service}: rds_instance {e}"))
        }
    }
}

pub(super) fn check_wait(wait: Option<HumanDuration>, out: &mut Findings) {
    if wait.is_some_and(|d| d.0.is_zero()) {
        out.push(("wait_timeout".into(), "wait_timeout must be longer than zero".to_string()));
    }
}

/// The snapshot of `tenant` that `run` (a retry's root run) takes: `tenantry-`, the tenant
/// id as an identifier may hold it, 6 hex digits of the id (`a_b` and `a-b` read alike),
/// the run, and the step's name when it is not the kind's (two snapshot steps in one
/// workflow take two snapshots).
pub fn snapshot_name(tenant: &str, run: &str, step: &str) -> String {
    let mut name = format!(
        "{NAME_PREFIX}{}-{}-{}",
        rds::identifier_part(tenant, 63),
        rds::digest(&[tenant], 6),
        rds::identifier_part(run, 100)
    );
    if step != "rds_snapshot" {
        name.push('-');
        name.push_str(&rds::identifier_part(step, 60));
    }
    name.trim_end_matches('-').to_string()
}

/// "tenant acme, service core, instance tenant-acme": who an error is about.
pub(super) fn who(ctx: &StepContext<'_>) -> String {
    format!(
        "tenant {}, service {}, instance {}",
        ctx.tenant,
        ctx.placement.service,
        ctx.placement.rds_instance.as_deref().unwrap_or("?")
    )
}

/// The placement's instance and the RDS client, or why the step cannot run.
pub(super) async fn prepare<'c>(ctx: &'c StepContext<'c>) -> Result<(&'c Client, &'c str), StepError> {
    needs(ctx.placement, ctx.tenant).map_err(StepError::permanent)?;
    let rds = ctx.rds.ok_or_else(|| StepError::permanent(format!("{}: no RDS API in this process", who(ctx))))?;
    let client = rds.client().await.map_err(|e| StepError { message: format!("{}: {}", who(ctx), e.message), ..e })?;
    Ok((client, ctx.placement.rds_instance.as_deref().unwrap_or_default()))
}

/// `wait_timeout` or the default.
pub(super) fn wait_of(option: Option<HumanDuration>) -> chrono::TimeDelta {
    chrono::TimeDelta::from_std(option.map_or(DEFAULT_WAIT, |d| d.0)).unwrap_or(chrono::TimeDelta::days(36_500))
}

#[tracing::instrument(name = "rds_snapshot", skip_all, fields(run = ctx.run, tenant = ctx.tenant, service = %ctx.placement.service, step = %ctx.step.label()))]
async fn run(ctx: &StepContext<'_>, options: &Options) -> Result<serde_json::Value, StepError> {
    let (client, instance) = prepare(ctx).await?;
    let who = who(ctx);
    let name = snapshot_name(ctx.tenant, ctx.receipt_run(), &ctx.step.label());
    let started = Instant::now();

    let (snapshot, created) = match describe(client, &name, &who).await? {
        Some(found) => {
            if !found.db_instance_identifier().is_some_and(|i| i.eq_ignore_ascii_case(instance)) {
                return Err(StepError::permanent(format!(
                    "{who}: snapshot {name} exists but is of instance {}; it is not this tenant's (rename one of the instances)",
                    found.db_instance_identifier().unwrap_or("?")
                )));
            }
            (found, false)
        }
        None => (create(ctx, client, instance, &name, &who).await?, true),
    };
    let requested = rds::requested_at(snapshot.tag_list()).unwrap_or_else(|| ctx.clock.now());
    let what = format!("{who}: snapshot {name}");
    let then = "it was left in place, and a retry of this run waits for it again (raise wait_timeout, and the step's timeout, for large instances)";
    let deadline = requested + wait_of(options.wait_timeout);
    let (snapshot, polls) = rds::wait(&what, then, deadline, ctx.clock, ctx.cancel, || async {
        let Some(s) = describe(client, &name, &who).await? else {
            return Err(StepError::transient(format!("{what} is gone while being waited for")));
        };
        match s.status().unwrap_or("unknown") {
            "available" => Ok(Polled::Ready(s)),
            "failed" | "error" => Err(failed(ctx, client, &name, &what, s.status()).await),
            other => Ok(Polled::Pending(other.to_string())),
        }
    })
    .await?;
    let available_after_ms = (ctx.clock.now() - requested).num_milliseconds().max(0);

    let listed = list(client, instance, &who).await?;
    let plan =
        prune_plan(&listed, ctx.tenant, &ctx.placement.service, &name, options.keep_last.unwrap_or(DEFAULT_KEEP_LAST));
    let mut deleted = Vec::new();
    for id in &plan.delete {
        ctx.fence.check().await?;
        match client.delete_db_snapshot().db_snapshot_identifier(id).send().await {
            Ok(_) => deleted.push(id.clone()),
            Err(e) if rds::code(&e) == Some("DBSnapshotNotFound") => {}
            Err(e) => return Err(rds::error(&format!("{who}: deleting the old snapshot {id}"), e)),
        }
    }
    Ok(serde_json::json!({
        "snapshot": name,
        "instance": instance,
        "created": created,
        "status": snapshot.status(),
        "engine": snapshot.engine(),
        "allocated_storage_gib": snapshot.allocated_storage(),
        "requested_at": requested,
        "available_after_ms": available_after_ms,
        "polls": polls,
        "duration_ms": started.elapsed().as_millis() as u64,
        "kept": plan.keep,
        "deleted": deleted,
    }))
}

/// The snapshot named `name`, if there is one.
pub(super) async fn describe(client: &Client, name: &str, who: &str) -> Result<Option<DbSnapshot>, StepError> {
    match client.describe_db_snapshots().db_snapshot_identifier(name).send().await {
        // RDS keeps identifiers in lower case.
        Ok(out) => Ok(out
            .db_snapshots()
            .iter()
            .find(|s| s.db_snapshot_identifier().is_some_and(|id| id.eq_ignore_ascii_case(name)))
            .cloned()),
        Err(e) if rds::code(&e) == Some("DBSnapshotNotFound") => Ok(None),
        Err(e) => Err(rds::error(&format!("{who}: looking up snapshot {name}"), e)),
    }
}

/// The tags of what this step makes for the tenant, requested now.
pub(super) fn step_tags(ctx: &StepContext<'_>) -> Vec<aws_sdk_rds::types::Tag> {
    rds::tags(ctx.tenant, &ctx.placement.service, ctx.receipt_run(), &ctx.step.label(), ctx.clock.now())
}

/// Creates the snapshot behind the fence; when another attempt created it first, that one.
async fn create(
    ctx: &StepContext<'_>,
    client: &Client,
    instance: &str,
    name: &str,
    who: &str,
) -> Result<DbSnapshot, StepError> {
    let tags = step_tags(ctx);
    ctx.fence.check().await?;
    let sent = client
        .create_db_snapshot()
        .db_instance_identifier(instance)
        .db_snapshot_identifier(name)
        .set_tags(Some(tags))
        .send()
        .await;
    match sent {
        Ok(out) => out.db_snapshot().cloned().ok_or_else(|| {
            StepError::transient(format!("{who}: creating snapshot {name}: the answer held no snapshot"))
        }),
        Err(e) if rds::code(&e) == Some("DBSnapshotAlreadyExists") => describe(client, name, who)
            .await?
            .ok_or_else(|| StepError::transient(format!("{who}: snapshot {name} exists and vanished again"))),
        Err(e) if rds::code(&e) == Some("DBInstanceNotFound") => Err(StepError::permanent(format!(
            "{who}: creating snapshot {name}: there is no RDS instance {instance} (check the rds_instance of service {} or of the tenant's placement)",
            ctx.placement.service
        ))),
        Err(e) => Err(rds::error(&format!("{who}: creating snapshot {name}"), e)),
    }
}

/// A snapshot that failed: deleted (fenced), so that a retry of the run can take it
/// again under the same name; the error says so.
async fn failed(ctx: &StepContext<'_>, client: &Client, name: &str, what: &str, status: Option<&str>) -> StepError {
    let removed = match ctx.fence.check().await {
        Ok(()) => client.delete_db_snapshot().db_snapshot_identifier(name).send().await.is_ok(),
        Err(_) => false,
    };
    let then = if removed { "it was deleted; a retry takes it again" } else { "it could not be deleted" };
    StepError::permanent(format!("{what} failed (status {}); {then}", status.unwrap_or("unknown")))
}

/// A snapshot as retention sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub id: String,
    pub created: Option<DateTime<Utc>>,
    pub status: String,
    pub tenant: Option<String>,
    pub service: Option<String>,
}

/// The manual snapshots of `instance`.
pub(super) async fn list(client: &Client, instance: &str, who: &str) -> Result<Vec<Listed>, StepError> {
    let mut pages =
        client.describe_db_snapshots().db_instance_identifier(instance).snapshot_type("manual").into_paginator().send();
    let mut out = Vec::new();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| rds::error(&format!("{who}: listing the instance's snapshots"), e))?;
        for s in page.db_snapshots() {
            let tags = s.tag_list();
            out.push(Listed {
                id: s.db_snapshot_identifier().unwrap_or_default().to_string(),
                created: s.snapshot_create_time().and_then(chrono_time).or_else(|| rds::requested_at(tags)),
                status: s.status().unwrap_or("unknown").to_string(),
                tenant: rds::tag(tags, rds::TAG_TENANT).map(str::to_string),
                service: rds::tag(tags, rds::TAG_SERVICE).map(str::to_string),
            });
        }
    }
    Ok(out)
}

pub(super) fn chrono_time(t: &aws_sdk_rds::primitives::DateTime) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(t.secs(), t.subsec_nanos())
}

/// What retention does: each of this tenant's snapshots kept, with why, or deleted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PrunePlan {
    /// (snapshot, why: `current`, `last`, or the status that is not `available`).
    pub keep: Vec<(String, String)>,
    pub delete: Vec<String>,
}

/// Whether a listed snapshot is one tenantry made for this tenant and service.
pub(super) fn is_ours(s: &Listed, tenant: &str, service: &str) -> bool {
    s.id.starts_with(NAME_PREFIX) && s.tenant.as_deref() == Some(tenant) && s.service.as_deref() == Some(service)
}

/// Keeps `current` (the snapshot just made) and the `keep_last` newest available snapshots
/// of the tenant (`current` among them), and any not `available` (being made, or failed:
/// RDS refuses to delete a snapshot being made); deletes the others. Snapshots that are
/// not this tenant's tenantry snapshots are not in the plan at all.
pub fn prune_plan(listed: &[Listed], tenant: &str, service: &str, current: &str, keep_last: u32) -> PrunePlan {
    let mut ours: Vec<&Listed> = listed.iter().filter(|s| is_ours(s, tenant, service)).collect();
    // Newest first; without a time, last; ties by name (which holds the run's time).
    ours.sort_by(|a, b| b.created.cmp(&a.created).then_with(|| b.id.cmp(&a.id)));
    let mut plan = PrunePlan { keep: Vec::new(), delete: Vec::new() };
    let mut kept = u32::from(ours.iter().any(|s| s.id == current));
    for s in ours {
        if s.id == current {
            plan.keep.push((s.id.clone(), "current".to_string()));
        } else if s.status != "available" {
            plan.keep.push((s.id.clone(), s.status.clone()));
        } else if kept < keep_last {
            kept += 1;
            plan.keep.push((s.id.clone(), "last".to_string()));
        } else {
            plan.delete.push(s.id.clone());
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_names_are_valid_deterministic_and_per_tenant() {
        let run = "20261124-230501-3fa9c1";
        let a = snapshot_name("acme_corp", run, "rds_snapshot");
        assert_eq!(a, snapshot_name("acme_corp", run, "rds_snapshot"));
        assert!(a.starts_with("tenantry-acme-corp-"), "{a}");
        assert!(a.ends_with(run), "{a}");
        assert_ne!(a, snapshot_name("acme-corp", run, "rds_snapshot"), "ids that read alike differ by their digest");
        assert_ne!(a, snapshot_name("acme_corp", run, "before migrate"));
        assert!(snapshot_name("acme_corp", run, "before migrate").ends_with("-before-migrate"));
        for n in [a, snapshot_name(&"z".repeat(63), run, &"s_".repeat(40))] {
            assert!(n.len() <= 255 && !n.contains("--") && !n.ends_with('-'), "{n}");
            assert!(n.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'), "{n}");
        }
    }

    fn listed(id: &str, day: u32, status: &str, tenant: &str) -> Listed {
        Listed {
            id: id.to_string(),
            created: DateTime::parse_from_rfc3339(&format!("2026-11-{day:02}T02:00:00Z")).ok().map(|t| t.to_utc()),
            status: status.to_string(),
            tenant: Some(tenant.to_string()),
            service: Some("core".to_string()),
        }
    }

    #[test]
    fn retention_keeps_the_newest_and_the_current_and_touches_nothing_else() {
        let mut all: Vec<Listed> = (1..=6).map(|d| listed(&format!("tenantry-a-{d}"), d, "available", "a")).collect();
        all.push(listed("tenantry-a-7", 7, "creating", "a"));
        all.push(listed("tenantry-b-1", 1, "available", "b"));
        all.push(listed("manual-by-hand", 1, "available", "a"));
        let mut other_service = listed("tenantry-a-x", 1, "available", "a");
        other_service.service = Some("billing".into());
        all.push(other_service);
        // The current snapshot is the oldest here (a clock gone wrong): still kept.
        let plan = prune_plan(&all, "a", "core", "tenantry-a-1", 3);
        let keep: Vec<(&str, &str)> = plan.keep.iter().map(|(i, w)| (i.as_str(), w.as_str())).collect();
        assert_eq!(
            keep,
            [
                ("tenantry-a-7", "creating"),
                ("tenantry-a-6", "last"),
                ("tenantry-a-5", "last"),
                ("tenantry-a-1", "current")
            ]
        );
        assert_eq!(plan.delete, ["tenantry-a-4", "tenantry-a-3", "tenantry-a-2"]);
        let plan = prune_plan(&all, "a", "core", "tenantry-a-6", 1);
        assert_eq!(plan.delete, ["tenantry-a-5", "tenantry-a-4", "tenantry-a-3", "tenantry-a-2", "tenantry-a-1"]);
        assert!(prune_plan(&all, "c", "core", "x", 1).keep.is_empty());
    }
}
