//! The `verify_restore` step: a tenant's newest (or a named) backup restored into a scratch database on a scratch host, checked against its manifest (SHA-256, tables, row counts, schema version) and the workflow's smoke queries, timed (RTO, RPO), judged in a verdict stored beside the backup; the scratch database is dropped whatever happens.
//!
//! - **Where**: the step's `scratch_host`, else the tenant's host's `scratch_host`
//!   (`[hosts.NAME]`), else the tenant's own host. The scratch database is named
//!   [`SCRATCH_PREFIX`] + a tag of the tenant + a tag of the attempt (+ as much of the
//!   tenant id as fits in 63 bytes): [`scratch_name`]. It is created from `template0`, so
//!   nothing of `template1` is counted as restored.
//! - **Streaming**: the dump is read from the store once, hashed on the way and piped into
//!   `pg_restore --no-owner --no-acl --exit-on-error` (a custom-format archive restores from
//!   a pipe when it is not restored in parallel), by the restore code this step shares with
//!   `tenantry restore` ([`super::restore`]). Nothing of the tenant's size is kept in
//!   memory or on local disk. The password reaches `pg_restore` through libpq's environment.
//! - **Checks**, in order, each in the verdict: `manifest` (readable, of this tenant and
//!   service), `sha256` (size and SHA-256 of the dump as read, against the manifest),
//!   `restore` (pg_restore's exit), `tables` (the same tables as the manifest, in the same
//!   scope: the database, or the tenant's one schema, restored under its own name),
//!   `row_counts`, `schema_version`, and `smoke_queries` (each must succeed; they run like a
//!   `sql` step's SQL: `search_path` is the restored schema, `tenantry.tenant` and
//!   `tenantry.run` are set). A failed check fails the step with a permanent error naming
//!   it: trying again does not repair a backup. Problems of the machinery (the store or the
//!   scratch host unreachable) are errors of their kind, and store no verdict.
//! - **Scratch databases never outlive the step**: dropped (`WITH (FORCE)`) at its end; when
//!   the step's future is dropped instead (timeout, lost lease, cancel), a guard drops it
//!   from a connection of its own. What a killed worker leaves behind is dropped by the
//!   tenant's next verification: every attempt first drops the tenant's databases with
//!   its prefix ([`scratch_prefix`]), fenced, while holding an advisory lock of the tenant
//!   on the scratch host, so two runs verifying one tenant never drop each other's.
//! - **Connections**: the scratch host is reached through connections of the step's own,
//!   not the worker's pools: each scratch database is used once, and a pool per attempt
//!   would outlive it. Their sessions end with the database (`WITH (FORCE)`).
//! - **Sampling** (`sample = 10`): `plan` (and every run, when it is created) reads each
//!   target's backup listing and takes the least recently verified tenth, so every target is
//!   verified within `100 / sample` runs; the others are skipped with the reason.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::Deserialize;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection};

use super::backup::{Manifest, count_rows, schema_version};
use super::checks::{check_sample, check_smoke_queries};
use super::define::{Findings, PlanEnv, Step};
use super::restore::{
    DumpFormat, Target, choose_backup, compare_tables, compare_version, outcome, restorer, staged_name, staged_prefix,
    stream,
};
use super::{StepContext, StepError};
use crate::catalog::{Engine, HostSpec, Isolation, Placement};
use crate::engine::postgres::{quote_ident, quote_literal};
use crate::storage::backups::{BackupFolder, Check, Verdict, VerdictRef, tenant_backups, tenant_prefix, verdict_key};
use crate::storage::{ObjectStore, StorageError};
use crate::workflow::plan::StepAction;

pub struct VerifyRestore;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Options {
    /// The backup to verify: a folder name of the tenant's backups
    /// (`20261124T230501Z_<run>`, the same for every tenant of a backup run) or a folder
    /// path (`service/tenant/folder`). Default: the tenant's newest complete backup.
    pub backup: Option<String>,
    /// Percent of the run's targets to verify, those verified least recently first.
    /// Default: every target.
    pub sample: Option<f64>,
    /// SQL run in the restored copy, each of which must succeed.
    pub smoke_queries: Option<Vec<String>>,
    /// The `[hosts.NAME]` to restore on, for every target (overrides the hosts'
    /// `scratch_host`).
    pub scratch_host: Option<String>,
}

impl Step for VerifyRestore {
    type Options = Options;

    fn check(o: &Options, out: &mut Findings) {
        check_sample(o.sample, out);
        check_smoke_queries(&o.smoke_queries, out);
        if let Some(backup) = &o.backup
            && let Err(e) = check_backup_option(backup)
        {
            out.push(("backup".into(), e));
        }
        if o.scratch_host.as_deref().is_some_and(str::is_empty) {
            out.push(("scratch_host".into(), "scratch_host is empty; name a [hosts.NAME] entry".to_string()));
        }
    }

    async fn plan(options: &Options, targets: &[&Placement], env: PlanEnv<'_>) -> Vec<StepAction> {
        plan(options, targets, env).await
    }

    fn selects(options: &Options) -> bool {
        options.sample.is_some()
    }

    async fn run(ctx: &StepContext<'_>, options: &Options) -> Result<serde_json::Value, StepError> {
        run(ctx, options).await
    }
}

/// Every scratch database's name starts with this, and leftovers are found by it: a
/// database is only ever dropped by this step when its name does.
pub const SCRATCH_PREFIX: &str = "tenantry_verify_";

/// Backup listings read at once while choosing a sample.
const LISTINGS_AT_ONCE: usize = 8;

/// The prefix of every scratch database of `tenant` (see [`staged_prefix`]).
pub fn scratch_prefix(tenant: &str) -> String {
    staged_prefix(SCRATCH_PREFIX, tenant)
}

/// A scratch database name for one attempt of `run` on `tenant` (see [`staged_name`]).
pub fn scratch_name(tenant: &str, run: &str) -> String {
    staged_name(SCRATCH_PREFIX, tenant, run)
}

/// `backup = "..."`: a folder name, or a `service/tenant/folder` path, inside the store.
fn check_backup_option(backup: &str) -> Result<(), String> {
    let b = backup.trim_end_matches('/');
    let parts: Vec<&str> = b.split('/').collect();
    if b.is_empty() || b.starts_with('/') || parts.iter().any(|p| p.is_empty() || *p == "." || *p == "..") {
        return Err(format!("backup {backup:?} is not a backup folder name"));
    }
    if parts.len() != 1 && parts.len() != 3 {
        return Err(format!(
            "backup {backup:?} must be a folder name (\"20261124T230501Z_RUN\") or service/tenant/folder"
        ));
    }
    Ok(())
}

/// The host `placement`'s backups are restored on (see the module's documentation), with
/// its name; `Err` says why there is none.
fn scratch_host<'h>(
    option: Option<&str>,
    placement: &Placement,
    host: impl Fn(&str) -> Option<&'h HostSpec>,
) -> Result<(String, &'h HostSpec), String> {
    let own = host(&placement.host).ok_or_else(|| format!("host {:?} is not in this configuration", placement.host))?;
    let (name, from) = match (option, own.scratch_host.as_deref()) {
        (Some(name), _) => (name, "the step's scratch_host".to_string()),
        (None, Some(name)) => (name, format!("hosts.{}.scratch_host", placement.host)),
        (None, None) => (placement.host.as_str(), "the tenant's own host".to_string()),
    };
    let spec = host(name).ok_or_else(|| format!("scratch host {name:?} ({from}) is not in this configuration"))?;
    if spec.engine != Engine::Postgres {
        return Err(format!("scratch host {name} ({from}) is a {} host; backups restore on PostgreSQL", spec.engine));
    }
    Ok((name.to_string(), spec))
}

/// What keeps the step from running on a target, whatever the store holds.
fn blocker(options: &Options, p: &Placement, env: &PlanEnv<'_>) -> Option<String> {
    if env.config.config.storage.is_none() {
        return Some("verify_restore needs [storage] in the config".to_string());
    }
    scratch_host(options.scratch_host.as_deref(), p, |n| env.config.config.hosts.get(n)).err()
}

async fn plan(options: &Options, targets: &[&Placement], env: PlanEnv<'_>) -> Vec<StepAction> {
    let mut out: Vec<StepAction> = targets
        .iter()
        .map(|p| match blocker(options, p, &env) {
            Some(reason) => StepAction::Blocked { reason },
            None => StepAction::Run,
        })
        .collect();
    let Some(percent) = options.sample else { return out };
    let candidates: Vec<usize> = (0..targets.len()).filter(|&i| matches!(out[i], StepAction::Run)).collect();
    if candidates.is_empty() {
        return out;
    }
    let store = match ObjectStore::open_loaded(env.config).await {
        Some(Ok(store)) => store,
        Some(Err(e)) => {
            for &i in &candidates {
                out[i] = StepAction::Blocked { reason: format!("cannot choose the sample: {e}") };
            }
            return out;
        }
        None => return out,
    };
    let mut asked = Vec::with_capacity(candidates.len());
    for &i in &candidates {
        let tenant = env.tenants.get(i).copied().unwrap_or_default();
        asked.push((targets[i].service.clone(), tenant.to_string()));
    }
    let keys: Vec<String> = asked.iter().map(|(service, tenant)| format!("{tenant}/{service}")).collect();
    let last = last_verifications(&store, asked).await;
    let chosen = choose_sample(&last, &keys, percent);
    let count = chosen.iter().filter(|c| **c).count();
    for (k, &i) in candidates.iter().enumerate() {
        if !chosen[k] {
            let when = match last[k] {
                Some(at) => format!("last verified {}", at.format("%Y-%m-%d %H:%M UTC")),
                None => "never verified".to_string(),
            };
            out[i] = StepAction::Skip {
                reason: format!(
                    "not in this run's sample (sample = {percent}: {count} of {} targets, the least recently verified); {when}",
                    candidates.len()
                ),
            };
        }
    }
    out
}

/// When each (service, tenant) was last verified, passed or failed, from the listings of
/// its backups, read [`LISTINGS_AT_ONCE`] at a time. A listing that cannot be read counts
/// as never verified: the target is then among the first chosen, and its step reports the
/// store's problem.
async fn last_verifications(store: &ObjectStore, targets: Vec<(String, String)>) -> Vec<Option<DateTime<Utc>>> {
    // Owned (service, tenant) pairs: a stream of futures borrowing them would not be `Send`
    // for every lifetime, as a step's plan must be.
    futures::stream::iter(targets)
        .map(|(service, tenant)| async move {
            match tenant_backups(store, &service, &tenant).await {
                Ok(folders) => folders.iter().flat_map(|f| &f.verdicts).map(|v| v.at).max(),
                Err(e) => {
                    tracing::warn!(tenant, service, error = %e, "cannot list the tenant's backups to choose the sample");
                    None
                }
            }
        })
        .buffered(LISTINGS_AT_ONCE)
        .collect()
        .await
}

/// How many of `n` targets a sample of `percent` takes: the percentage rounded up, at
/// least one (so that every target is verified within `100 / percent` runs).
pub fn sample_size(n: usize, percent: f64) -> usize {
    if n == 0 {
        return 0;
    }
    // The epsilon keeps an exact product (10 % of 30) from rounding up past itself.
    ((n as f64 * percent / 100.0 - 1e-9).ceil() as usize).clamp(1, n)
}

/// Which targets a sample of `percent` takes, given when each was last verified (`None`:
/// never) and a key per target for ties: [`sample_size`] of them, never verified first, then
/// the least recently verified. Taking these every run, a target waits behind at most the
/// targets verified before it, so each is verified within `ceil(100 / percent)` runs.
pub fn choose_sample(last: &[Option<DateTime<Utc>>], keys: &[String], percent: f64) -> Vec<bool> {
    let mut order: Vec<usize> = (0..last.len()).collect();
    order.sort_by(|&a, &b| last[a].cmp(&last[b]).then_with(|| keys[a].cmp(&keys[b])));
    let mut chosen = vec![false; last.len()];
    for &i in order.iter().take(sample_size(last.len(), percent)) {
        chosen[i] = true;
    }
    chosen
}

/// "tenant acme, service core": who an error is about.
struct Who<'a> {
    tenant: &'a str,
    service: &'a str,
}

impl std::fmt::Display for Who<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "tenant {}, service {}", self.tenant, self.service)
    }
}

fn store_error(who: &Who<'_>, e: StorageError) -> StepError {
    StepError::from(e).within(who)
}

fn sql_error(who: &Who<'_>, what: &str) -> impl Fn(sqlx::Error) -> StepError + use<> {
    let context = format!("{who}: {what}");
    move |e| StepError::from_sqlx(&context, &e)
}

/// A step error with who it is about in front of its message.
fn about(who: &Who<'_>, e: StepError) -> StepError {
    StepError { message: format!("{who}: {}", e.message), ..e }
}

#[tracing::instrument(skip_all, fields(run = ctx.run, tenant = ctx.tenant, service = %ctx.placement.service, step = ctx.unit))]
async fn run(ctx: &StepContext<'_>, options: &Options) -> Result<serde_json::Value, StepError> {
    let p = ctx.placement;
    let who = Who { tenant: ctx.tenant, service: &p.service };
    let store = ctx.objects.ok_or_else(|| StepError::permanent("verify_restore needs [storage] in the config"))?;
    let (host_name, host) = scratch_host(options.scratch_host.as_deref(), p, |n| ctx.databases.host(n).ok())
        .map_err(|e| StepError::permanent(format!("{who}: {e}")))?;

    let prefix = tenant_prefix(&p.service, ctx.tenant);
    let folders = tenant_backups(store, &p.service, ctx.tenant).await.map_err(|e| store_error(&who, e))?;
    let folder = choose_backup(&folders, options.backup.as_deref(), &prefix)
        .map_err(|e| StepError::permanent(format!("{who}: {e}")))?;
    // A verdict this run stored already (its worker was lost before recording the step):
    // that verification stands.
    if let Some(earlier) = folder.verdicts.iter().rev().find(|v| v.run == ctx.run) {
        return earlier_verdict(store, &who, earlier).await;
    }

    let mut checks = Vec::new();
    let manifest = read_manifest(store, &who, folder, &mut checks).await?;
    let mut report = serde_json::json!({ "backup": folder.folder, "scratch_host": host_name });
    let mut rto = Duration::ZERO;
    if let Some(manifest) = &manifest {
        rto = restore_and_check(ctx, options, store, manifest, (host_name.as_str(), host), &mut checks, &mut report)
            .await?;
    }

    let verified_at = ctx.clock.now();
    let passed = checks.iter().all(|c| c.passed);
    let backup_end = manifest.as_ref().map_or(folder.taken_at, |m| m.finished_at);
    let verdict = Verdict {
        format: 1,
        tenant: ctx.tenant.to_string(),
        service: p.service.clone(),
        backup: folder.folder.clone(),
        run: ctx.run.to_string(),
        verified_at,
        passed,
        checks,
        rto_ms: rto.as_millis() as u64,
        rpo_ms: (verified_at - backup_end).num_milliseconds().max(0) as u64,
    };
    let key = verdict_key(&folder.folder, verified_at, ctx.run, passed);
    let bytes = serde_json::to_vec_pretty(&verdict).map_err(|e| StepError::permanent(e.to_string()))?;
    ctx.fence.check().await?;
    store.put(&key, bytes).await.map_err(|e| store_error(&who, e))?;
    if !passed {
        return Err(failed(&who, &verdict, &key));
    }
    report["passed"] = true.into();
    report["verdict"] = key.into();
    report["checks"] = verdict.checks.iter().map(|c| c.name.clone()).collect::<Vec<_>>().into();
    report["rto_ms"] = verdict.rto_ms.into();
    report["rpo_ms"] = verdict.rpo_ms.into();
    Ok(report)
}

/// The permanent error of a failed verification, naming each failed check.
fn failed(who: &Who<'_>, verdict: &Verdict, key: &str) -> StepError {
    let reasons: Vec<String> =
        verdict.checks.iter().filter(|c| !c.passed).map(|c| format!("{}: {}", c.name, c.detail)).collect();
    StepError::permanent(format!(
        "{who}: backup {} failed verification ({}); verdict stored at {key}",
        verdict.backup,
        reasons.join("; ")
    ))
}

async fn earlier_verdict(
    store: &ObjectStore,
    who: &Who<'_>,
    earlier: &VerdictRef,
) -> Result<serde_json::Value, StepError> {
    let bytes = store
        .get_bytes(&earlier.key)
        .await
        .map_err(|e| store_error(who, e))?
        .ok_or_else(|| StepError::transient(format!("{who}: verdict {} was listed but is gone", earlier.key)))?;
    let verdict: Verdict = serde_json::from_slice(&bytes)
        .map_err(|e| StepError::permanent(format!("{who}: {} is not a verdict: {e}", earlier.key)))?;
    if !verdict.passed {
        return Err(failed(who, &verdict, &earlier.key));
    }
    Ok(serde_json::json!({
        "skipped": "verified already in this run (verdict found)",
        "backup": verdict.backup,
        "verdict": earlier.key,
        "passed": true,
        "rto_ms": verdict.rto_ms,
        "rpo_ms": verdict.rpo_ms,
    }))
}

/// The backup's manifest, and the `manifest` check: readable, and about this tenant and
/// service. `None` when the check failed (nothing else can be checked then).
async fn read_manifest(
    store: &ObjectStore,
    who: &Who<'_>,
    folder: &BackupFolder,
    checks: &mut Vec<Check>,
) -> Result<Option<Manifest>, StepError> {
    let key = folder.manifest_key();
    let Some(bytes) = store.get_bytes(&key).await.map_err(|e| store_error(who, e))? else {
        // Listed a moment ago: deleted since (a prune), or the store lost it.
        return Err(StepError::transient(format!("{who}: {key} was listed but cannot be read")));
    };
    match serde_json::from_slice::<Manifest>(&bytes) {
        Ok(m) if m.tenant == who.tenant && m.service == who.service => {
            checks.push(outcome(
                "manifest",
                true,
                format!("{} tables, dump {} of {} bytes", m.tables.len(), m.dump.key, m.dump.size),
            ));
            Ok(Some(m))
        }
        Ok(m) => {
            checks.push(outcome(
                "manifest",
                false,
                format!("{key} describes tenant {} of service {}, not this tenant", m.tenant, m.service),
            ));
            Ok(None)
        }
        Err(e) => {
            checks.push(outcome("manifest", false, format!("{key} is not a readable manifest: {e}")));
            Ok(None)
        }
    }
}

/// Restores the dump into a new scratch database and checks it; returns the time taken
/// (restore and checks: the RTO measured). The scratch database is gone when this returns,
/// or (dropped future) soon after.
async fn restore_and_check(
    ctx: &StepContext<'_>,
    options: &Options,
    store: &ObjectStore,
    manifest: &Manifest,
    (host_name, host): (&str, &HostSpec),
    checks: &mut Vec<Check>,
    report: &mut serde_json::Value,
) -> Result<Duration, StepError> {
    let who = Who { tenant: ctx.tenant, service: &ctx.placement.service };
    let admin_db = ctx.databases.admin_database(host_name).map_err(StepError::permanent)?;
    let connect_options = |database: &str| {
        crate::engine::postgres::options(&host.url.with_database(database))
            .map(|o| o.application_name("tenantry-verify"))
            .map_err(|e| StepError::permanent(format!("{who}: invalid URL for scratch host {host_name}: {e}")))
    };
    let admin_options = connect_options(&admin_db)?;
    let mut admin =
        admin_options.connect().await.map_err(sql_error(&who, &format!("connecting to scratch host {host_name}")))?;

    // One verification of a tenant at a time on a scratch host: the leftovers dropped below
    // are then never another run's database in use. The lock ends with `admin`.
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
        .bind(format!("tenantry_verify:{}", ctx.tenant))
        .fetch_one(&mut admin)
        .await
        .map_err(sql_error(&who, "taking the verification lock"))?;
    if !locked {
        return Err(StepError::transient(format!(
            "{who}: another verification of this tenant is running on scratch host {host_name} (another run, or a worker that lost the tenant and is being stopped)"
        )));
    }
    let leftovers: Vec<String> =
        sqlx::query_scalar("SELECT datname::text FROM pg_database WHERE left(datname, length($1)) = $1 ORDER BY 1")
            .bind(scratch_prefix(ctx.tenant))
            .fetch_all(&mut admin)
            .await
            .map_err(sql_error(&who, "listing leftover scratch databases"))?;
    for name in &leftovers {
        ctx.fence.check().await?;
        drop_database(&mut admin, name).await.map_err(sql_error(&who, &format!("dropping leftover {name}")))?;
        tracing::info!(database = name, "dropped the scratch database of an earlier verification");
    }
    report["leftovers_dropped"] = leftovers.into();

    let scratch = scratch_name(ctx.tenant, ctx.run);
    report["scratch_database"] = scratch.clone().into();
    ctx.fence.check().await?;
    // Armed before the CREATE: a step stopped while it runs still has the name dropped.
    let mut guard = ScratchGuard { admin: Some(admin_options), name: scratch.clone() };
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {} TEMPLATE template0", quote_ident(&scratch))))
        .execute(&mut admin)
        .await
        .map_err(sql_error(&who, &format!("creating scratch database {scratch} on host {host_name}")))?;

    let started = Instant::now();
    let outcome = restore_into(ctx, options, store, manifest, host, &scratch, connect_options(&scratch)?, checks).await;
    let took = started.elapsed();
    if let Ok(bytes) = &outcome {
        report["restored_bytes"] = (*bytes).into();
    }

    // The scratch database is this attempt's alone (its name is): dropping it needs no
    // fence, and must happen whatever the lease says.
    match drop_database(&mut admin, &scratch).await {
        Ok(()) => {
            guard.admin = None;
            report["scratch_dropped"] = true.into();
        }
        Err(e) => {
            // The guard tries once more; the tenant's next verification drops it otherwise.
            tracing::warn!(database = scratch, error = %e, "could not drop the scratch database");
            report["scratch_dropped"] = false.into();
        }
    }
    let _ = admin.close().await;
    outcome?;
    Ok(took)
}

/// Streams the dump into `pg_restore`, then checks the restored copy. Returns the bytes
/// read. An `Err` is a problem of the machinery (the store, the scratch host), not of the
/// backup.
#[allow(clippy::too_many_arguments)]
async fn restore_into(
    ctx: &StepContext<'_>,
    options: &Options,
    store: &ObjectStore,
    manifest: &Manifest,
    host: &HostSpec,
    scratch: &str,
    scratch_options: PgConnectOptions,
    checks: &mut Vec<Check>,
) -> Result<u64, StepError> {
    let who = Who { tenant: ctx.tenant, service: &ctx.placement.service };
    let dump = &manifest.dump;
    let format = DumpFormat::of(manifest).map_err(|e| StepError::permanent(format!("{who}: {e}")))?;
    // Its own application name, for pg_stat_activity (the name ends with the attempt's tag).
    let app_name = format!("tenantry-verify-{}", &scratch[SCRATCH_PREFIX.len()..]);
    let start = || restorer(format, host, Target::Database(scratch), &app_name);
    let Some(streamed) = stream(store, &dump.key, start).await.map_err(|e| about(&who, e))? else {
        checks.push(outcome("sha256", false, format!("the dump {} that the manifest names does not exist", dump.key)));
        return Ok(0);
    };
    checks.extend(streamed.checks(dump, format.tool()));

    let mut conn = scratch_options.connect().await.map_err(sql_error(&who, "connecting to the scratch database"))?;
    let scope = (manifest.isolation == Isolation::Schema.as_str()).then_some(manifest.schema.as_str());
    let restored = count_rows(&mut conn, scope).await.map_err(|e| about(&who, e))?;
    checks.extend(compare_tables(&manifest.tables, &restored));
    let version = schema_version(&mut conn, &manifest.schema).await.map_err(|e| about(&who, e))?;
    checks.push(compare_version(manifest.schema_version.as_deref(), version.as_deref()));
    if let Some(queries) = options.smoke_queries.as_deref().filter(|q| !q.is_empty()) {
        checks.push(smoke(&mut conn, queries, &manifest.schema, ctx).await);
    }
    let _ = conn.close().await;
    Ok(streamed.size)
}

/// The `smoke_queries` check: every query must succeed, run like a `sql` step's SQL
/// (`search_path` = the restored schema, `tenantry.tenant` and `tenantry.run` set).
async fn smoke(conn: &mut PgConnection, queries: &[String], schema: &str, ctx: &StepContext<'_>) -> Check {
    let set = format!(
        "SET search_path TO {}; SELECT set_config('tenantry.tenant', {}, false), set_config('tenantry.run', {}, false)",
        quote_ident(schema),
        quote_literal(ctx.tenant),
        quote_literal(ctx.run)
    );
    if let Err(e) = sqlx::raw_sql(sqlx::AssertSqlSafe(set)).execute(&mut *conn).await {
        return outcome("smoke_queries", false, format!("setting search_path: {e}"));
    }
    let mut failures = Vec::new();
    for (i, query) in queries.iter().enumerate() {
        if let Err(e) = sqlx::raw_sql(sqlx::AssertSqlSafe(query.clone())).execute(&mut *conn).await {
            failures.push(format!("query {} ({}): {e}", i + 1, abbreviated(query)));
        }
    }
    if failures.is_empty() {
        outcome("smoke_queries", true, format!("{} queries succeeded", queries.len()))
    } else {
        outcome("smoke_queries", false, failures.join("; "))
    }
}

/// A query's first line, at most 80 characters.
fn abbreviated(query: &str) -> String {
    let line = query.trim().lines().next().unwrap_or_default();
    if line.chars().count() > 80 || line.len() < query.trim().len() {
        format!("{}…", line.chars().take(80).collect::<String>())
    } else {
        line.to_string()
    }
}

/// `DROP DATABASE ... WITH (FORCE)` of a scratch database: its sessions (pg_restore's, the
/// checks') are ended first. Refuses any name without [`SCRATCH_PREFIX`].
async fn drop_database(conn: &mut PgConnection, name: &str) -> Result<(), sqlx::Error> {
    if !name.starts_with(SCRATCH_PREFIX) {
        return Err(sqlx::Error::Protocol(format!("refusing to drop {name:?}: not a scratch database")));
    }
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", quote_ident(name))))
        .execute(conn)
        .await
        .map(|_| ())
}

/// Drops the scratch database from a connection of its own when the step ends without
/// having dropped it (its future was dropped: timeout, lost lease, cancel).
struct ScratchGuard {
    /// The scratch host's administrative database; `None` once the database is dropped.
    admin: Option<PgConnectOptions>,
    name: String,
}

impl Drop for ScratchGuard {
    fn drop(&mut self) {
        let (Some(options), Ok(runtime)) = (self.admin.take(), tokio::runtime::Handle::try_current()) else { return };
        let name = std::mem::take(&mut self.name);
        runtime.spawn(async move {
            let dropped = async {
                let mut conn = options.connect().await?;
                drop_database(&mut conn, &name).await?;
                conn.close().await
            };
            match tokio::time::timeout(Duration::from_secs(60), dropped).await {
                Ok(Ok(())) => tracing::debug!(database = name, "dropped the scratch database of a stopped verification"),
                Ok(Err(e)) => tracing::warn!(
                    database = name, error = %e,
                    "could not drop the scratch database of a stopped verification; the tenant's next verification drops it"
                ),
                Err(_) => tracing::warn!(
                    database = name,
                    "timed out dropping the scratch database of a stopped verification; the tenant's next verification drops it"
                ),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn scratch_names_are_staged_names_of_their_own_prefix() {
        let name = scratch_name("acme", "20261124-230501-3fa9c1");
        assert!(name.starts_with(&scratch_prefix("acme")) && name.starts_with(SCRATCH_PREFIX), "{name}");
    }

    #[test]
    fn sample_size_rounds_up_and_takes_at_least_one() {
        assert_eq!(sample_size(0, 10.0), 0);
        assert_eq!(sample_size(1, 10.0), 1);
        assert_eq!(sample_size(25, 10.0), 3);
        assert_eq!(sample_size(30, 10.0), 3);
        assert_eq!(sample_size(31, 10.0), 4);
        assert_eq!(sample_size(7, 100.0), 7);
        assert_eq!(sample_size(1000, 0.5), 5);
    }

    fn day(d: u32) -> Option<DateTime<Utc>> {
        Some(Utc.with_ymd_and_hms(2026, 11, d, 2, 0, 0).unwrap())
    }

    #[test]
    fn the_sample_takes_the_never_verified_then_the_least_recently_verified() {
        let keys: Vec<String> = ["a", "b", "c", "d", "e"].iter().map(|s| s.to_string()).collect();
        let last = [day(5), None, day(1), day(3), None];
        assert_eq!(choose_sample(&last, &keys, 40.0), [false, true, false, false, true]);
        assert_eq!(choose_sample(&last, &keys, 60.0), [false, true, true, false, true]);
        assert_eq!(choose_sample(&last, &keys, 100.0), [true; 5]);
    }

    /// Night after night, with each verified target's time moved to that night, every
    /// target is verified within ceil(100 / sample) nights, and each night takes the same
    /// number of targets.
    #[test]
    fn a_rotating_sample_verifies_every_target_within_100_over_sample_nights() {
        for (n, percent) in [(25usize, 10.0), (7, 30.0), (100, 10.0), (3, 50.0)] {
            let keys: Vec<String> = (0..n).map(|i| format!("t{i:03}")).collect();
            let mut last: Vec<Option<DateTime<Utc>>> = vec![None; n];
            let nights = (100.0_f64 / percent).ceil() as u32;
            for night in 1..=nights {
                let chosen = choose_sample(&last, &keys, percent);
                assert_eq!(chosen.iter().filter(|c| **c).count(), sample_size(n, percent));
                for (i, c) in chosen.iter().enumerate() {
                    if *c {
                        last[i] = day(night);
                    }
                }
            }
            assert!(last.iter().all(Option::is_some), "n = {n}, sample = {percent}: {last:?}");
        }
    }

    #[test]
    fn the_backup_option_is_a_folder_name_or_path() {
        assert!(check_backup_option("20261124T230501Z_20261124-230501-3fa9c1").is_ok());
        assert!(check_backup_option("core/acme/20261124T230501Z_r/").is_ok());
        assert!(check_backup_option("../x").is_err());
        assert!(check_backup_option("/abs").is_err());
        assert!(check_backup_option("a/b").is_err());
        assert!(check_backup_option("").is_err());
    }
}
