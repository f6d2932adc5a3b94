//! The `verify_snapshot` step: the tenant's newest (or a named) tenantry snapshot restored to a temporary RDS instance with a name derived from the tenant and the run, waited for (bounded, resumable), checked as far as the RDS API shows, and deleted whatever happened; the verdict, with the time to available (RTO), is the step's output and tags the snapshot.
//!
//! - **Which snapshot**: `snapshot = "ID"`, which must be of the tenant's instance or carry
//!   the tenant's tag; else the newest available snapshot that `rds_snapshot` took of the
//!   tenant's instance for this tenant and service.
//! - **One temporary instance per run**: named [`temp_name`] (the tenant's
//!   [`temp_prefix`], a digest of the run and step, and the tenant id as far as it fits).
//!   An attempt looks the name up first and waits for the instance it finds, so a retry,
//!   or the worker that took the tenant over from one killed mid-wait, never restores a
//!   second one.
//! - **Bounded, resumable wait**: until `available`, for `wait_timeout` from the first
//!   request (its `tenantry:requested-at` tag); RTO is the time from that request to the
//!   poll that saw it available (so it is accurate to the poll interval).
//! - **Checks** (what the API shows; no SQL reaches the copy): `status` (available),
//!   `engine` (and version) and `storage` (at least the snapshot's) as in the snapshot,
//!   `encryption` as the snapshot's, `instance_class` when the step sets one, `tags` (the
//!   tenant and run), `endpoint` (an address and port). Against the local emulator (moto)
//!   the instance is a record, not a database: these checks are all a test there can make.
//! - **Deleted whatever happens**: at the end of the step, passed or failed (fenced,
//!   without a final snapshot); when the step's future is dropped instead (its timeout),
//!   by a task of its own, if this worker still holds the lease (when it does not, the new
//!   owner resumes and deletes the same instance). What a killed worker leaves behind and
//!   nobody resumed (a cancelled run) is deleted by the tenant's next verification:
//!   instances with the tenant's prefix whose request is older than `wait_timeout` plus
//!   [`LEFTOVER_GRACE`] (younger ones may be another run's verification in progress).
//! - **Verdict**: the output (every check, `passed`, `rto_ms`), and tags on the snapshot:
//!   `tenantry:verified-at`, `tenantry:verdict`, `tenantry:verified-by` (the run). A failed
//!   check fails the step with a permanent error naming it.

use std::time::Instant;

use aws_sdk_rds::Client;
use aws_sdk_rds::types::{DbInstance, DbSnapshot, Tag};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::define::{Findings, Step};
use super::rds_snapshot::{check_wait, chrono_time, is_ours, list, prepare, step_tags, wait_of, who};
use super::{StepContext, StepError};
use crate::catalog::{Engine, Placement, ServiceSpec};
use crate::rds::{self, NAME_PREFIX, Polled};
use crate::runtime::fence::Fence;
use crate::units::HumanDuration;

pub struct VerifySnapshot;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Options {
    /// The snapshot to verify (its identifier); default: the tenant's newest tenantry
    /// snapshot of its instance.
    pub snapshot: Option<String>,
    /// The temporary instance's class (`db.t3.micro`); default: the snapshot's instance's.
    pub instance_class: Option<String>,
    /// The DB subnet group the temporary instance is placed in; default: the account's.
    pub subnet_group: Option<String>,
    /// How long the temporary instance may take to become available, from its first
    /// request (default 20m).
    pub wait_timeout: Option<HumanDuration>,
}

/// How much longer than `wait_timeout` a temporary instance of another run may exist
/// before it counts as left behind: its own verification has stopped waiting by then, and
/// checks and deletes it within seconds.
pub const LEFTOVER_GRACE: chrono::TimeDelta = chrono::TimeDelta::minutes(15);

/// Statuses from which a restore never becomes available.
const DEAD_ENDS: [&str; 6] = [
    "failed",
    "incompatible-restore",
    "incompatible-parameters",
    "incompatible-network",
    "storage-full",
    "inaccessible-encryption-credentials",
];

impl Step for VerifySnapshot {
    type Options = Options;

    fn fits(service: &ServiceSpec) -> Result<(), String> {
        super::rds_snapshot::fits("verify_snapshot", service)
    }

    fn needs(placement: &Placement, tenant: &str) -> Result<(), String> {
        super::rds_snapshot::needs(placement, tenant)
    }

    fn check(o: &Options, out: &mut Findings) {
        if o.snapshot.as_deref().is_some_and(str::is_empty) {
            out.push(("snapshot".into(), "snapshot is empty; name a snapshot identifier or remove it".to_string()));
        }
        if let Some(class) = &o.instance_class
            && !class.starts_with("db.")
        {
            out.push((
                "instance_class".into(),
                format!("instance_class {class:?} is not an RDS class (db.t3.micro, ...)"),
            ));
        }
        if o.subnet_group.as_deref().is_some_and(str::is_empty) {
            out.push(("subnet_group".into(), "subnet_group is empty; name a DB subnet group or remove it".to_string()));
        }
        check_wait(o.wait_timeout, out);
    }

    fn runs_on(_engine: Engine) -> Result<(), String> {
        Ok(())
    }

    async fn run(ctx: &StepContext<'_>, options: &Options) -> Result<serde_json::Value, StepError> {
        run(ctx, options).await
    }
}

/// The prefix of every temporary instance of `tenant`: `tenantry-verify-` and 10 hex
/// digits of the tenant id (ids may contain `_`, which identifiers may not, so the id
/// itself cannot make an unambiguous prefix).
pub fn temp_prefix(tenant: &str) -> String {
    format!("{NAME_PREFIX}verify-{}-", rds::digest(&[tenant], 10))
}

/// The temporary instance of `run` (a retry's root) and `step` on `tenant`: the tenant's
/// [`temp_prefix`], 8 hex digits of the run and step, and the tenant id as far as it fits
/// in 63 characters, for people reading the console.
pub fn temp_name(tenant: &str, run: &str, step: &str) -> String {
    let base = format!("{}{}", temp_prefix(tenant), rds::digest(&[run, step], 8));
    let readable = rds::identifier_part(tenant, 63 - base.len() - 1);
    if readable.is_empty() { base } else { format!("{base}-{readable}") }
}

/// One check of the verdict.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Check {
    pub name: &'static str,
    pub passed: bool,
    pub detail: String,
}

fn check(name: &'static str, passed: bool, detail: impl Into<String>) -> Check {
    Check { name, passed, detail: detail.into() }
}

#[tracing::instrument(name = "verify_snapshot", skip_all, fields(run = ctx.run, tenant = ctx.tenant, service = %ctx.placement.service, step = %ctx.step.label()))]
async fn run(ctx: &StepContext<'_>, options: &Options) -> Result<serde_json::Value, StepError> {
    let (client, instance) = prepare(ctx).await?;
    let who = who(ctx);
    let started = Instant::now();
    let source = choose(ctx, client, instance, options.snapshot.as_deref(), &who).await?;
    let source_id = source.db_snapshot_identifier().unwrap_or_default().to_string();
    let name = temp_name(ctx.tenant, ctx.receipt_run(), &ctx.step.label());
    let wait = wait_of(options.wait_timeout);
    let swept = sweep(ctx, client, &name, wait, &who).await?;

    let (found, created) = match describe(client, &name, &who).await? {
        Some(found) => (found, false),
        None => (restore(ctx, client, options, &source_id, &name, &who).await?, true),
    };
    // From here on the instance is deleted however the step ends.
    let mut guard = TempGuard { client: Some(client.clone()), fence: ctx.fence.clone(), name: name.clone() };
    let requested = rds::requested_at(found.tag_list()).unwrap_or_else(|| ctx.clock.now());
    let outcome = wait_and_check(ctx, client, options, &source, &name, requested + wait, &who).await;
    let deleted = delete(ctx.fence, client, &name).await;
    guard.client = None;

    let (checks, rto_ms, polls) = outcome.map_err(|e| StepError {
        message: format!("{}; the temporary instance {}", e.message, deleted_phrase(&deleted)),
        ..e
    })?;
    let passed = checks.iter().all(|c| c.passed);
    record(ctx, client, &source, passed).await;
    let failed: Vec<String> =
        checks.iter().filter(|c| !c.passed).map(|c| format!("{} ({})", c.name, c.detail)).collect();
    if !failed.is_empty() {
        return Err(StepError::permanent(format!(
            "{who}: snapshot {source_id} restored to {name} failed verification: {}; the temporary instance {}",
            failed.join("; "),
            deleted_phrase(&deleted)
        )));
    }
    Ok(serde_json::json!({
        "snapshot": source_id,
        "snapshot_created_at": source.snapshot_create_time().and_then(chrono_time),
        "temporary_instance": name,
        "created": created,
        "passed": passed,
        "checks": checks,
        "rto_ms": rto_ms,
        "polls": polls,
        "requested_at": requested,
        "duration_ms": started.elapsed().as_millis() as u64,
        "deleted": deleted.is_ok(),
        "delete_error": deleted.err(),
        "leftovers_deleted": swept,
    }))
}

fn deleted_phrase(deleted: &Result<(), String>) -> String {
    match deleted {
        Ok(()) => "was deleted".to_string(),
        Err(e) => format!("could not be deleted ({e}); the tenant's next verification deletes it"),
    }
}

/// Waits for the temporary instance, then checks it: (checks, RTO in ms, polls).
async fn wait_and_check(
    ctx: &StepContext<'_>,
    client: &Client,
    options: &Options,
    source: &DbSnapshot,
    name: &str,
    deadline: DateTime<Utc>,
    who: &str,
) -> Result<(Vec<Check>, i64, u32), StepError> {
    let what = format!("{who}: temporary instance {name}");
    let (instance, polls) = rds::wait(&what, "the verification failed", deadline, ctx.clock, ctx.cancel, || async {
        let Some(i) = describe(client, name, who).await? else {
            return Err(StepError::transient(format!("{what} is gone while being waited for")));
        };
        match i.db_instance_status().unwrap_or("unknown") {
            "available" => Ok(Polled::Ready(i)),
            dead if DEAD_ENDS.contains(&dead) => {
                Err(StepError::permanent(format!("{what}: the restore ended in status {dead}")))
            }
            other => Ok(Polled::Pending(other.to_string())),
        }
    })
    .await?;
    let requested = rds::requested_at(instance.tag_list()).unwrap_or_else(|| ctx.clock.now());
    let rto_ms = (ctx.clock.now() - requested).num_milliseconds().max(0);
    Ok((checks(&instance, source, options, ctx.tenant, ctx.receipt_run()), rto_ms, polls))
}

/// What the API shows of the restored instance, against the snapshot and the request.
pub fn checks(i: &DbInstance, s: &DbSnapshot, options: &Options, tenant: &str, run: &str) -> Vec<Check> {
    let mut out = Vec::new();
    let status = i.db_instance_status().unwrap_or("unknown");
    out.push(check("status", status == "available", format!("status {status}")));
    let (engine, version) = (i.engine().unwrap_or("?"), i.engine_version().unwrap_or("?"));
    let (want_engine, want_version) = (s.engine().unwrap_or("?"), s.engine_version().unwrap_or("?"));
    out.push(check(
        "engine",
        engine == want_engine && version == want_version,
        format!("{engine} {version}; the snapshot's: {want_engine} {want_version}"),
    ));
    let (storage, want_storage) = (i.allocated_storage().unwrap_or(0), s.allocated_storage().unwrap_or(0));
    out.push(check(
        "storage",
        storage >= want_storage && storage > 0,
        format!("{storage} GiB; the snapshot's: {want_storage} GiB"),
    ));
    let (encrypted, want_encrypted) = (i.storage_encrypted().unwrap_or(false), s.encrypted().unwrap_or(false));
    out.push(check(
        "encryption",
        encrypted == want_encrypted,
        format!("encrypted: {encrypted}; the snapshot's: {want_encrypted}"),
    ));
    if let Some(want) = &options.instance_class {
        let class = i.db_instance_class().unwrap_or("?");
        out.push(check("instance_class", class == want, format!("{class}; asked for {want}")));
    }
    let tags = i.tag_list();
    let (t, r) = (rds::tag(tags, rds::TAG_TENANT), rds::tag(tags, rds::TAG_RUN));
    out.push(check(
        "tags",
        t == Some(tenant) && r == Some(run),
        format!("tenant {}, run {}", t.unwrap_or("none"), r.unwrap_or("none")),
    ));
    let endpoint = i.endpoint().and_then(|e| Some((e.address()?, e.port()?)));
    out.push(match endpoint {
        Some((address, port)) => check("endpoint", !address.is_empty() && port > 0, format!("{address}:{port}")),
        None => check("endpoint", false, "no endpoint"),
    });
    out
}

/// The snapshot to verify: the named one (of this tenant), or the tenant's newest.
async fn choose(
    ctx: &StepContext<'_>,
    client: &Client,
    instance: &str,
    named: Option<&str>,
    who: &str,
) -> Result<DbSnapshot, StepError> {
    let service = &ctx.placement.service;
    let id = match named {
        Some(id) => id.to_string(),
        None => {
            let listed = list(client, instance, who).await?;
            let newest = listed
                .iter()
                .filter(|s| is_ours(s, ctx.tenant, service) && s.status == "available")
                .max_by(|a, b| a.created.cmp(&b.created).then_with(|| a.id.cmp(&b.id)));
            match newest {
                Some(s) => s.id.clone(),
                None => {
                    return Err(StepError::permanent(format!(
                        "{who}: no available snapshot that tenantry took of this tenant's instance; run rds_snapshot first (or name one with `snapshot`)"
                    )));
                }
            }
        }
    };
    let Some(snapshot) = super::rds_snapshot::describe(client, &id, who).await? else {
        return Err(StepError::permanent(format!("{who}: there is no snapshot {id}")));
    };
    let of_instance = snapshot.db_instance_identifier().is_some_and(|i| i.eq_ignore_ascii_case(instance));
    if !of_instance && rds::tag(snapshot.tag_list(), rds::TAG_TENANT) != Some(ctx.tenant) {
        return Err(StepError::permanent(format!(
            "{who}: snapshot {id} is of instance {} and not tagged as this tenant's; refusing to verify another tenant's snapshot",
            snapshot.db_instance_identifier().unwrap_or("?")
        )));
    }
    match snapshot.status() {
        Some("available") => Ok(snapshot),
        status => Err(StepError::transient(format!(
            "{who}: snapshot {id} is {} and cannot be restored yet",
            status.unwrap_or("of unknown status")
        ))),
    }
}

/// The instance named `name`, if there is one.
async fn describe(client: &Client, name: &str, who: &str) -> Result<Option<DbInstance>, StepError> {
    match client.describe_db_instances().db_instance_identifier(name).send().await {
        Ok(out) => Ok(out.db_instances().iter().find(|i| i.db_instance_identifier() == Some(name)).cloned()),
        Err(e) if rds::code(&e) == Some("DBInstanceNotFound") => Ok(None),
        Err(e) => Err(rds::error(&format!("{who}: looking up instance {name}"), e)),
    }
}

/// Restores the snapshot to the temporary instance, behind the fence; when another
/// attempt restored it first, that one.
async fn restore(
    ctx: &StepContext<'_>,
    client: &Client,
    options: &Options,
    snapshot: &str,
    name: &str,
    who: &str,
) -> Result<DbInstance, StepError> {
    let tags = step_tags(ctx);
    ctx.fence.check().await?;
    let sent = client
        .restore_db_instance_from_db_snapshot()
        .db_snapshot_identifier(snapshot)
        .db_instance_identifier(name)
        .set_db_instance_class(options.instance_class.clone())
        .set_db_subnet_group_name(options.subnet_group.clone())
        .publicly_accessible(false)
        .deletion_protection(false)
        .set_tags(Some(tags))
        .send()
        .await;
    match sent {
        Ok(out) => out
            .db_instance()
            .cloned()
            .ok_or_else(|| StepError::transient(format!("{who}: restoring {snapshot}: the answer held no instance"))),
        Err(e) if rds::code(&e) == Some("DBInstanceAlreadyExists") => describe(client, name, who)
            .await?
            .ok_or_else(|| StepError::transient(format!("{who}: instance {name} exists and vanished again"))),
        Err(e) => Err(rds::error(&format!("{who}: restoring snapshot {snapshot} to {name}"), e)),
    }
}

/// Deletes the temporary instance (fenced, no final snapshot). Already gone counts as done.
async fn delete(fence: &Fence, client: &Client, name: &str) -> Result<(), String> {
    fence.check().await.map_err(|e| e.message)?;
    match client
        .delete_db_instance()
        .db_instance_identifier(name)
        .skip_final_snapshot(true)
        .delete_automated_backups(true)
        .send()
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if rds::code(&e) == Some("DBInstanceNotFound") => Ok(()),
        Err(e) => Err(crate::aws::detail(&e)),
    }
}

/// Deletes the tenant's temporary instances that other verifications left behind (see the
/// module's documentation); returns their names.
async fn sweep(
    ctx: &StepContext<'_>,
    client: &Client,
    current: &str,
    wait: chrono::TimeDelta,
    who: &str,
) -> Result<Vec<String>, StepError> {
    let prefix = temp_prefix(ctx.tenant);
    let cutoff = ctx.clock.now() - wait - LEFTOVER_GRACE;
    let mut pages = client.describe_db_instances().into_paginator().send();
    let mut left = Vec::new();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| rds::error(&format!("{who}: listing instances for leftover verifications"), e))?;
        for i in page.db_instances() {
            let Some(id) = i.db_instance_identifier() else { continue };
            let since = rds::requested_at(i.tag_list()).or_else(|| i.instance_create_time().and_then(chrono_time));
            if id.starts_with(&prefix)
                && id != current
                && i.db_instance_status() != Some("deleting")
                && since.is_none_or(|t| t < cutoff)
            {
                left.push(id.to_string());
            }
        }
    }
    let mut deleted = Vec::new();
    for id in left {
        match delete(ctx.fence, client, &id).await {
            Ok(()) => deleted.push(id),
            Err(e) => tracing::warn!(instance = id, error = e, "could not delete a leftover temporary instance"),
        }
    }
    Ok(deleted)
}

/// Tags the snapshot with the verdict (fenced, best effort: the output has it anyway).
async fn record(ctx: &StepContext<'_>, client: &Client, snapshot: &DbSnapshot, passed: bool) {
    let Some(arn) = snapshot.db_snapshot_arn() else { return };
    if ctx.fence.check().await.is_err() {
        return;
    }
    let tags = [
        ("tenantry:verified-at", ctx.clock.now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
        ("tenantry:verdict", if passed { "passed" } else { "failed" }.to_string()),
        ("tenantry:verified-by", ctx.receipt_run().to_string()),
    ]
    .into_iter()
    .map(|(k, v)| Tag::builder().key(k).value(v).build())
    .collect();
    if let Err(e) = client.add_tags_to_resource().resource_name(arn).set_tags(Some(tags)).send().await {
        tracing::warn!(snapshot = arn, error = %crate::aws::detail(&e), "could not tag the snapshot with its verdict");
    }
}

/// Deletes the temporary instance when the step's future is dropped before it did (its
/// timeout), from a task of its own, if this worker still holds the lease.
struct TempGuard {
    /// `None` once the step deleted the instance itself.
    client: Option<Client>,
    fence: Fence,
    name: String,
}

impl Drop for TempGuard {
    fn drop(&mut self) {
        let (Some(client), Ok(runtime)) = (self.client.take(), tokio::runtime::Handle::try_current()) else { return };
        let (fence, name) = (self.fence.clone(), std::mem::take(&mut self.name));
        runtime.spawn(async move {
            match delete(&fence, &client, &name).await {
                Ok(()) => tracing::debug!(instance = name, "deleted the temporary instance of a stopped verification"),
                Err(e) => tracing::warn!(
                    instance = name, error = e,
                    "did not delete the temporary instance of a stopped verification; whoever resumes the tenant, or its next verification, does"
                ),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporary_names_are_valid_per_run_and_start_with_the_tenants_own_prefix() {
        let long = "t_".repeat(31) + "t";
        for tenant in ["a", "a_b", "acme-corp", long.as_str(), "0abc"] {
            let name = temp_name(tenant, "20261124-230501-3fa9c1", "verify_snapshot");
            assert!(rds::check_instance_id(&name).is_ok(), "{name}");
            assert!(name.starts_with(&temp_prefix(tenant)), "{name}");
            assert_eq!(name, temp_name(tenant, "20261124-230501-3fa9c1", "verify_snapshot"));
            assert_ne!(name, temp_name(tenant, "20261125-230501-3fa9c1", "verify_snapshot"));
        }
        assert!(!temp_name("a_b", "r", "s").starts_with(&temp_prefix("a")));
        assert!(temp_name("acme", "r", "s").ends_with("-acme"));
    }

    fn snapshot() -> DbSnapshot {
        DbSnapshot::builder().engine("postgres").engine_version("16.4").allocated_storage(20).encrypted(false).build()
    }

    fn instance(status: &str, storage: i32) -> DbInstance {
        DbInstance::builder()
            .db_instance_status(status)
            .engine("postgres")
            .engine_version("16.4")
            .allocated_storage(storage)
            .storage_encrypted(false)
            .db_instance_class("db.t3.micro")
            .endpoint(aws_sdk_rds::types::Endpoint::builder().address("x.rds.amazonaws.com").port(5432).build())
            .tag_list(Tag::builder().key(rds::TAG_TENANT).value("acme").build())
            .tag_list(Tag::builder().key(rds::TAG_RUN).value("r1").build())
            .build()
    }

    #[test]
    fn checks_compare_the_instance_with_the_snapshot_and_the_request() {
        let options = Options { instance_class: Some("db.t3.micro".into()), ..Options::default() };
        let good = checks(&instance("available", 20), &snapshot(), &options, "acme", "r1");
        assert!(good.iter().all(|c| c.passed), "{good:#?}");
        let names: Vec<&str> = good.iter().map(|c| c.name).collect();
        assert_eq!(names, ["status", "engine", "storage", "encryption", "instance_class", "tags", "endpoint"]);
        let bad = checks(&instance("storage-full", 10), &snapshot(), &Options::default(), "other", "r1");
        let failed: Vec<&str> = bad.iter().filter(|c| !c.passed).map(|c| c.name).collect();
        assert_eq!(failed, ["status", "storage", "tags"]);
    }
}
