//! The run store: runs, checkpoints, leases and dispatch state in Redis, every transition one atomic Lua script.
//!
//! Every script is given all the keys it touches, and touches the keys of one hash slot
//! only: one run's keys, or the installation's global keys (see `keys.rs`). Scripts start
//! with `#!lua`, so that on a cluster Redis 7 stops a script with an error at a call that
//! reaches into another slot, even one on the same node, rather than letting it work by
//! luck of slot placement (a unit test checks the scripts for keys they are not given).
//! The run store therefore works on one Redis or on a Redis Cluster ([`Connection`]).
//!
//! What needs a run's keys and the global keys is done in steps, in an order that leaves
//! nothing wrong when the process dies between two of them:
//! - creating a run: (1) its id enters the run index, (2) its keys are written in one
//!   MULTI/EXEC, (3) it is published in the active set (with its schedule tick, for a
//!   scheduled run). A run is dispatched only once published. A creation cut short is an
//!   unpublished run in the index, which the prune removes after [`ABANDONED_AFTER`]; a
//!   slow creator finds its run gone at step 3 (`publish.lua` refuses) and deletes it.
//! - ending a run: the script that ends it (advance, cancel, transition) writes its
//!   state; then the run leaves the active set. In between, the maintenance pass finds a
//!   finished run in the active set and removes it.
//! - removing a run (prune): its keys are deleted, then it leaves the index; a removal
//!   cut short leaves an id without a record, which the next prune removes.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use redis::AsyncCommands;

use super::connection::{Connection, Target};
use super::keys::Keys;
use super::model::{Checkpoint, RunRecord, RunSpec, RunState, Trigger};
use crate::secret::SecretUrl;

/// Errors of the run store. Redis errors are transient (the caller waits and retries);
/// the others are the operator's or a bug's.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot reach Redis at {url}: {source}")]
    Unreachable {
        url: String,
        #[source]
        source: redis::RedisError,
    },
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("no run {0:?} (see `tenantry runs`)")]
    NoSuchRun(String),
    #[error("run {run} is {state}; {action} needs a run that is {allowed}")]
    Refused { run: String, state: String, action: &'static str, allowed: String },
    #[error("corrupt run data for {run}: {message}")]
    Corrupt { run: String, message: String },
    #[error(
        "run {0} was discarded before it was published (its creation took longer than {ABANDONED_AFTER:?}); nothing ran, start it again"
    )]
    Discarded(String),
}

/// How long after its creation began an unpublished run counts as abandoned (its creator
/// died between writing it and publishing it), and the prune removes it. A creation takes
/// a few round trips; this is long enough that only a dead or hung creator is taken for one.
pub const ABANDONED_AFTER: Duration = Duration::from_secs(600);

/// What a claim attempt found.
#[derive(Debug, Clone)]
pub enum Claim {
    /// The lease is ours; run from this checkpoint.
    Ok { holder: String, checkpoint: Box<Checkpoint> },
    /// Nothing to do (finished, superseded by a newer dispatch, leased by someone else).
    Skip(String),
    /// The run is paused or the tenant's wave waits for approval: the tenant went back to
    /// its pending list without starting.
    Held,
    /// The run stopped; the tenant must be released with this outcome.
    Stopped(RunState),
}

/// One replica working on one schedule tick of a workflow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TickClaim {
    pub workflow: String,
    pub tick_ms: i64,
    /// The replica (its worker id).
    pub owner: String,
}

/// What an attempt to claim a tick found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TickClaimed {
    /// The tick is ours to work on.
    Ok,
    /// Every tick up to this one (ms) is handled already.
    Done(i64),
    /// Another replica works on the workflow; its claim runs out in `expires_in` unless
    /// it renews it.
    Busy { owner: String, tick_ms: i64, expires_in: Duration },
}

/// Whether a tick was recorded as handled (with its run, when there is one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TickDone {
    Recorded,
    /// Nothing was written: the tick (or a newer one) was handled already, or another
    /// replica is working on the workflow. Says which.
    Refused(String),
}

/// The run store of one installation (one Redis or Redis Cluster, one key prefix).
#[derive(Clone)]
pub struct RunStore {
    conn: Connection,
    keys: Keys,
    scripts: Scripts,
}

#[derive(Clone)]
struct Scripts {
    advance: redis::Script,
    claim: redis::Script,
    renew: redis::Script,
    progress: redis::Script,
    finish: redis::Script,
    sweep: redis::Script,
    transition: redis::Script,
    release: redis::Script,
    defer: redis::Script,
    cancel: redis::Script,
    tick_claim: redis::Script,
    tick_done: redis::Script,
    publish: redis::Script,
    unlist: redis::Script,
}

/// What a lease renewal found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// Still ours, extended.
    Held,
    /// Taken over or expired: another worker may own the tenant now.
    Lost,
    /// Still ours, but the run was cancelled: stop the step.
    Cancelled,
}

impl Scripts {
    fn new() -> Self {
        Self {
            advance: redis::Script::new(include_str!("lua/advance.lua")),
            claim: redis::Script::new(include_str!("lua/claim.lua")),
            renew: redis::Script::new(include_str!("lua/renew.lua")),
            progress: redis::Script::new(include_str!("lua/progress.lua")),
            finish: redis::Script::new(include_str!("lua/finish.lua")),
            sweep: redis::Script::new(include_str!("lua/sweep.lua")),
            transition: redis::Script::new(include_str!("lua/transition.lua")),
            release: redis::Script::new(include_str!("lua/release.lua")),
            defer: redis::Script::new(include_str!("lua/defer.lua")),
            cancel: redis::Script::new(include_str!("lua/cancel.lua")),
            tick_claim: redis::Script::new(include_str!("lua/tick_claim.lua")),
            tick_done: redis::Script::new(include_str!("lua/tick_done.lua")),
            publish: redis::Script::new(include_str!("lua/publish.lua")),
            unlist: redis::Script::new(include_str!("lua/unlist.lua")),
        }
    }
}

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// A new run id: sortable by time, unique across processes (`20261124-230501-3fa9c1`).
pub fn new_run_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let now = chrono::Utc::now();
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_i64(now.timestamp_nanos_opt().unwrap_or_default());
    format!("{}-{:06x}", now.format("%Y%m%d-%H%M%S"), h.finish() & 0xff_ffff)
}

impl RunStore {
    /// Connects (with a bounded wait); an unreachable Redis is reported with the URL
    /// redacted. The connection manager reconnects by itself afterwards.
    pub async fn connect(url: &SecretUrl, prefix: &str) -> Result<Self, StoreError> {
        Self::connect_within(url, prefix, Duration::from_secs(10)).await
    }

    /// Like [`RunStore::connect`], giving up after `patience` (a one-shot CLI command
    /// should say "unreachable" in seconds; a worker can wait longer).
    pub async fn connect_within(url: &SecretUrl, prefix: &str, patience: Duration) -> Result<Self, StoreError> {
        Self::open(Target::Single(url), prefix, patience).await
    }

    /// The run store on a Redis Cluster, from some of its nodes.
    pub async fn connect_cluster(nodes: &[SecretUrl], prefix: &str, patience: Duration) -> Result<Self, StoreError> {
        Self::open(Target::Cluster(nodes), prefix, patience).await
    }

    /// The run store where the configuration puts it: `redis.cluster` when it names
    /// nodes, else `redis.url`.
    pub async fn from_config(redis: &crate::config::RedisConfig, patience: Duration) -> Result<Self, StoreError> {
        let target =
            if redis.cluster.is_empty() { Target::Single(&redis.url) } else { Target::Cluster(&redis.cluster) };
        Self::open(target, &redis.prefix, patience).await
    }

    async fn open(target: Target<'_>, prefix: &str, patience: Duration) -> Result<Self, StoreError> {
        let conn = Connection::open(target, patience)
            .await
            .map_err(|source| StoreError::Unreachable { url: target.redacted(), source })?;
        Ok(Self { conn, keys: Keys::new(prefix), scripts: Scripts::new() })
    }

    /// Whether the store is on a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        self.conn.is_cluster()
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Creates a run: registers it in the index, writes its keys, publishes it (see the
    /// module doc for why these are three steps). The run starts `running` (or
    /// `awaiting_approval` when its first wave asks for it), or `queued` behind a previous
    /// run of its workflow.
    pub async fn create(&self, spec: &RunSpec, trigger: &Trigger, queued: bool) -> Result<(), StoreError> {
        let now = now_ms();
        self.register(&spec.id, now).await?;
        self.write(spec, trigger, queued, now).await?;
        if self.publish(&spec.id).await? {
            return Ok(());
        }
        self.remove_run(&spec.id).await?;
        Err(StoreError::Discarded(spec.id.clone()))
    }

    /// [`RunStore::create`] for the run of a schedule tick: its last step is
    /// `tick_done.lua`, which records the tick as done and publishes the run in one script,
    /// or refuses (the tick or a newer one is done already; another replica holds the
    /// workflow), and then the run is deleted. So the run runs exactly when its tick is
    /// recorded, whatever crashes or expired claims came in between: a creation cut short
    /// leaves the tick unrecorded (it is tried again, with a new run) and an unpublished
    /// run, which never runs and which the prune removes.
    pub async fn create_scheduled(
        &self,
        spec: &RunSpec,
        trigger: &Trigger,
        queued: bool,
        claim: &TickClaim,
    ) -> Result<TickDone, StoreError> {
        let k = &self.keys;
        let now = now_ms();
        self.register(&spec.id, now).await?;
        self.write(spec, trigger, queued, now).await?;
        let mut conn = self.conn.clone();
        let out: Vec<String> = self
            .scripts
            .tick_done
            .key(k.schedule(&claim.workflow))
            .key(k.runs())
            .key(k.active_runs())
            .arg(claim.tick_ms)
            .arg(&claim.owner)
            .arg(&spec.id)
            .invoke_async(&mut conn)
            .await?;
        let done = tick_done(out);
        if matches!(done, TickDone::Refused(_)) {
            self.remove_run(&spec.id).await?;
        }
        Ok(done)
    }

    /// Creation, step 1: the run's id enters the index (scored by its creation time), so
    /// that the prune finds the run even when its creation stops before it is published.
    /// Public, like the other steps, for tests that stop between steps as a crash would.
    pub async fn register(&self, run: &str, now: i64) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        conn.zadd::<_, _, _, ()>(self.keys.runs(), run, now).await?;
        Ok(())
    }

    /// Creation, step 2: every key of the run, in one MULTI/EXEC on the run's slot.
    pub async fn write(&self, spec: &RunSpec, trigger: &Trigger, queued: bool, now: i64) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        self.create_pipe(spec, trigger, queued, now).query_async::<()>(&mut conn).await?;
        Ok(())
    }

    /// Creation, step 3: the run joins the active set, so workers move it. False when the
    /// prune discarded it meanwhile (it took the creation for abandoned).
    pub async fn publish(&self, run: &str) -> Result<bool, StoreError> {
        let mut conn = self.conn.clone();
        let out: Vec<String> = self
            .scripts
            .publish
            .key(self.keys.runs())
            .key(self.keys.active_runs())
            .arg(run)
            .invoke_async(&mut conn)
            .await?;
        Ok(out.first().map(String::as_str) == Some("ok"))
    }

    /// A finished run leaves the active set (the step after the script that ended it).
    pub async fn retire(&self, run: &str) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        conn.srem::<_, _, ()>(self.keys.active_runs(), run).await?;
        Ok(())
    }

    /// [`RunStore::retire`] for a run that ended without its spec at hand (cancel, an
    /// operator's transition): a run that writes a report stays in the active set, where the
    /// maintenance pass writes its report and then retires it.
    async fn retire_unless_reporting(&self, run: &str) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let report: Option<String> = conn.hget(self.keys.run(run), "report").await?;
        if report.is_none_or(|r| r.is_empty()) {
            self.retire(run).await?;
        }
        Ok(())
    }

    /// Records in the run's record why its report could not be written (a permanent
    /// problem: the run is retired without it).
    pub async fn note_report_error(&self, run: &str, message: &str) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        conn.hset::<_, _, _, ()>(self.keys.run(run), "report_error", message).await?;
        Ok(())
    }

    /// The commands that write a new run (everything but the runs index and the active
    /// set, which are global keys), in one atomic pipeline on the run's slot.
    fn create_pipe(&self, spec: &RunSpec, trigger: &Trigger, queued: bool, now: i64) -> redis::Pipeline {
        let k = &self.keys;
        let parent = match trigger {
            Trigger::Retry { parent } => parent.clone(),
            _ => String::new(),
        };
        let first_needs_approval = spec.waves.first().is_some_and(|w| w.approval);
        let state = match (queued, first_needs_approval) {
            (true, _) => RunState::Queued,
            (false, true) => RunState::AwaitingApproval,
            (false, false) => RunState::Running,
        };
        let mut pipe = redis::pipe();
        pipe.atomic();
        pipe.hset_multiple(
            k.run(&spec.id),
            &[
                ("id", spec.id.clone()),
                ("workflow", spec.workflow.clone()),
                ("trigger", trigger.to_string()),
                ("parent", parent),
                ("state", state.as_str().to_string()),
                ("wave", "0".to_string()),
                ("tenants", spec.tenants.len().to_string()),
                ("inflight", "0".to_string()),
                ("created_ms", now.to_string()),
                ("started_ms", now.to_string()),
                ("updated_ms", now.to_string()),
            ],
        );
        // Read by cancel and transition, which end a run without its spec at hand.
        if let Some(report) = spec.report {
            pipe.hset(k.run(&spec.id), "report", report.as_str());
        }
        pipe.set(k.run_spec(&spec.id), serde_json::to_string(spec).expect("spec serialises"));
        // Tenants with nothing to do (see `launch::skip_up_to_date`) are done from the start.
        let mut done_per_wave: BTreeMap<usize, u64> = BTreeMap::new();
        let checkpoints: Vec<(String, String)> = spec
            .tenants
            .iter()
            .map(|(id, t)| {
                let mut cp = Checkpoint::pending(t.wave);
                if t.units.is_empty() {
                    cp.state = super::model::TenantState::Succeeded;
                    cp.finished_ms = Some(now);
                    cp.outputs.insert("run".to_string(), serde_json::json!({ "up_to_date": true }));
                    *done_per_wave.entry(t.wave).or_default() += 1;
                }
                (id.clone(), serde_json::to_string(&cp).expect("serialises"))
            })
            .collect();
        for chunk in checkpoints.chunks(1000) {
            pipe.hset_multiple(k.run_tenants(&spec.id), chunk);
        }
        // Pending tenants per wave, by host group and tenant id (see `Keys::run_pending`).
        let mut pending: BTreeMap<usize, Vec<(u8, String)>> = BTreeMap::new();
        let mut ready: BTreeMap<usize, std::collections::BTreeSet<&str>> = BTreeMap::new();
        for wave in &spec.waves {
            for id in &wave.tenants {
                if let Some(t) = spec.tenants.get(id.as_str())
                    && !t.units.is_empty()
                {
                    pending.entry(wave.index).or_default().push((0, Keys::pending_member(&t.group, id.as_str())));
                    ready.entry(wave.index).or_default().insert(t.group.as_str());
                }
            }
        }
        for (wave, members) in &pending {
            for chunk in members.chunks(1000) {
                pipe.zadd_multiple(k.run_pending(&spec.id, *wave), chunk);
            }
        }
        for (wave, groups) in &ready {
            let scored: Vec<(u8, &str)> = groups.iter().map(|g| (0, *g)).collect();
            for chunk in scored.chunks(1000) {
                pipe.zadd_multiple(k.run_ready(&spec.id, *wave), chunk);
            }
        }
        let done: u64 = done_per_wave.values().sum();
        if done > 0 {
            pipe.hset(k.run(&spec.id), "succeeded", done);
            for (wave, n) in &done_per_wave {
                pipe.hset(k.run(&spec.id), format!("w{wave}:succeeded"), *n);
            }
        }
        let limits: Vec<(&String, &u32)> = spec.host_limits.iter().collect();
        for chunk in limits.chunks(1000) {
            pipe.hset_multiple(k.run_limits(&spec.id), chunk);
        }
        // The approval gates, per wave, for claim.lua: a tenant of a gated wave that is not
        // approved never starts, whatever dispatched it.
        for wave in spec.waves.iter().filter(|w| w.approval) {
            pipe.hset(k.run(&spec.id), format!("gate:{}", wave.index), "1");
        }
        let created = serde_json::json!({"at": now, "event": format!("run created by {trigger}: {} tenant(s) in {} wave(s)", spec.tenants.len(), spec.waves.len())});
        pipe.rpush(k.run_events(&spec.id), created.to_string());
        pipe
    }

    /// Moves the run forward; returns the tenants (with dispatch numbers) to push to the queue.
    pub async fn advance(
        &self,
        spec: &RunSpec,
        dispatch_grace: Duration,
    ) -> Result<(String, Vec<(String, u64)>), StoreError> {
        let k = &self.keys;
        let mut conn = self.conn.clone();
        let mut invocation = self.scripts.advance.prepare_invoke();
        invocation
            .key(k.run(&spec.id))
            .key(k.run_tenants(&spec.id))
            .key(k.run_hosts(&spec.id))
            .key(k.run_inflight(&spec.id))
            .key(k.run_events(&spec.id))
            .key(k.run_limits(&spec.id));
        for wave in 0..spec.waves.len() {
            invocation
                .key(k.run_ready(&spec.id, wave))
                .key(k.run_parked(&spec.id, wave))
                .key(k.run_pending(&spec.id, wave));
        }
        let out: Vec<String> = invocation
            .arg(now_ms())
            .arg(spec.run_concurrency)
            .arg(spec.waves_json())
            .arg(dispatch_grace.as_millis() as u64)
            .invoke_async(&mut conn)
            .await?;
        let mut it = out.into_iter();
        let state = it.next().unwrap_or_default();
        // A run that writes a report stays active until it is written (`Runtime::conclude`).
        if RunState::parse(&state).is_some_and(|s| s.is_terminal()) && spec.report.is_none() {
            self.retire(&spec.id).await?;
        }
        Ok((state, it.filter_map(|s| parse_dispatch(&s)).collect()))
    }

    /// Claims a dispatched tenant for `worker`. `snapshot` tells where the tenant goes back
    /// to when the run is paused or its wave is not approved (its wave and host group).
    #[allow(clippy::too_many_arguments)]
    pub async fn claim(
        &self,
        run: &str,
        tenant: &str,
        snapshot: &super::model::TenantSnapshot,
        worker: &str,
        dispatch: u64,
        lease: Duration,
        nonce: &str,
    ) -> Result<Claim, StoreError> {
        let k = &self.keys;
        let mut conn = self.conn.clone();
        let out: Vec<String> = self
            .scripts
            .claim
            .key(k.run(run))
            .key(k.run_tenants(run))
            .key(k.lease(run, tenant))
            .key(k.fence(run))
            .key(k.run_inflight(run))
            .key(k.run_hosts(run))
            .key(k.run_pending(run, snapshot.wave))
            .key(k.run_ready(run, snapshot.wave))
            .key(k.run_parked(run, snapshot.wave))
            .arg(tenant)
            .arg(worker)
            .arg(dispatch)
            .arg(lease.as_millis() as u64)
            .arg(now_ms())
            .arg(&snapshot.group)
            .arg(nonce)
            .invoke_async(&mut conn)
            .await?;
        match out.first().map(String::as_str) {
            Some("ok") => {
                let fence = out.get(1).cloned().unwrap_or_default();
                let checkpoint: Checkpoint =
                    serde_json::from_str(out.get(2).map_or("", String::as_str)).map_err(|e| StoreError::Corrupt {
                        run: run.into(),
                        message: format!("checkpoint of {tenant}: {e}"),
                    })?;
                Ok(Claim::Ok { holder: format!("{worker}|{fence}"), checkpoint: Box::new(checkpoint) })
            }
            Some("held") => Ok(Claim::Held),
            Some("stopped") => {
                Ok(Claim::Stopped(out.get(1).and_then(|s| RunState::parse(s)).unwrap_or(RunState::Cancelled)))
            }
            other => Ok(Claim::Skip(other.unwrap_or("unknown").to_string())),
        }
    }

    /// Extends the lease, or says it was lost (another worker may have taken over) or that
    /// the run was cancelled.
    pub async fn renew(&self, run: &str, tenant: &str, holder: &str, lease: Duration) -> Result<Renewal, StoreError> {
        let k = &self.keys;
        let mut conn = self.conn.clone();
        let out: i64 = self
            .scripts
            .renew
            .key(k.lease(run, tenant))
            .key(k.run_inflight(run))
            .key(k.run(run))
            .arg(holder)
            .arg(lease.as_millis() as u64)
            .arg(tenant)
            .arg(now_ms())
            .invoke_async(&mut conn)
            .await?;
        Ok(match out {
            1 => Renewal::Held,
            2 => Renewal::Cancelled,
            _ => Renewal::Lost,
        })
    }

    /// Whether `holder` ("worker|fence") still holds the tenant's lease: the fencing check a
    /// step makes right before an effect that no receipt covers (see [`crate::steps::Fence`]).
    pub async fn holds(&self, run: &str, tenant: &str, holder: &str) -> Result<bool, StoreError> {
        let mut conn = self.conn.clone();
        let current: Option<String> = conn.get(self.keys.lease(run, tenant)).await?;
        Ok(current.as_deref() == Some(holder))
    }

    /// Records progress; `None` when the lease is no longer ours (fenced), else the run's state.
    pub async fn progress(
        &self,
        run: &str,
        tenant: &str,
        holder: &str,
        patch: &serde_json::Value,
    ) -> Result<Option<RunState>, StoreError> {
        let k = &self.keys;
        let mut conn = self.conn.clone();
        let out: Vec<String> = self
            .scripts
            .progress
            .key(k.run(run))
            .key(k.run_tenants(run))
            .key(k.lease(run, tenant))
            .arg(tenant)
            .arg(holder)
            .arg(patch.to_string())
            .invoke_async(&mut conn)
            .await?;
        Ok(match out.first().map(String::as_str) {
            Some("ok") => Some(out.get(1).and_then(|s| RunState::parse(s)).unwrap_or(RunState::Cancelled)),
            _ => None,
        })
    }

    /// Ends a tenant's work; false when fenced (someone else owns the tenant now).
    #[allow(clippy::too_many_arguments)]
    pub async fn finish(
        &self,
        run: &str,
        tenant: &str,
        holder: Option<&str>,
        outcome: super::model::TenantState,
        error: Option<&str>,
        snapshot: &super::model::TenantSnapshot,
        patch: &serde_json::Value,
    ) -> Result<bool, StoreError> {
        let k = &self.keys;
        let mut conn = self.conn.clone();
        let out: Vec<String> = self
            .scripts
            .finish
            .key(k.run(run))
            .key(k.run_tenants(run))
            .key(k.lease(run, tenant))
            .key(k.run_hosts(run))
            .key(k.run_inflight(run))
            .key(k.run_ready(run, snapshot.wave))
            .key(k.run_parked(run, snapshot.wave))
            .arg(tenant)
            .arg(holder.unwrap_or(""))
            .arg(outcome.as_str())
            .arg(error.unwrap_or(""))
            .arg(now_ms())
            .arg(&snapshot.group)
            .arg(patch.to_string())
            .invoke_async(&mut conn)
            .await?;
        Ok(out.first().map(String::as_str) == Some("ok"))
    }

    /// Gives a claimed tenant back because `host` is over a load limit: back to pending
    /// with `reason`, its slots freed, and the host marked throttled in the run for `hold`
    /// (see `lua/defer.lua`). False when the lease is no longer this holder's.
    #[allow(clippy::too_many_arguments)]
    pub async fn defer(
        &self,
        run: &str,
        tenant: &str,
        snapshot: &super::model::TenantSnapshot,
        holder: &str,
        host: &str,
        hold: Duration,
        reason: &str,
    ) -> Result<bool, StoreError> {
        let k = &self.keys;
        let mut conn = self.conn.clone();
        let now = now_ms();
        let out: Vec<String> = self
            .scripts
            .defer
            .key(k.run(run))
            .key(k.run_tenants(run))
            .key(k.lease(run, tenant))
            .key(k.run_inflight(run))
            .key(k.run_hosts(run))
            .key(k.run_pending(run, snapshot.wave))
            .key(k.run_ready(run, snapshot.wave))
            .arg(tenant)
            .arg(holder)
            .arg(&snapshot.group)
            .arg(host)
            .arg(now + hold.as_millis() as i64)
            .arg(reason)
            .arg(now)
            .invoke_async(&mut conn)
            .await?;
        Ok(out.first().map(String::as_str) == Some("ok"))
    }

    /// Gives a claim back: the tenant is queued again at once with a new dispatch number
    /// (returned, to push), without counting as a lost worker; or, when the sweep already
    /// dispatched it again, the lost-worker charge for this claim is taken back. The claim
    /// is named by the nonce its worker sent with it. None when another claim owns the
    /// tenant now (or it finished).
    pub async fn release(
        &self,
        run: &str,
        tenant: &str,
        nonce: &str,
        dispatch_grace: Duration,
    ) -> Result<Option<u64>, StoreError> {
        let k = &self.keys;
        let mut conn = self.conn.clone();
        let out: Vec<String> = self
            .scripts
            .release
            .key(k.lease(run, tenant))
            .key(k.run_inflight(run))
            .key(k.run_tenants(run))
            .arg(nonce)
            .arg(tenant)
            .arg(now_ms())
            .arg(dispatch_grace.as_millis() as u64)
            .invoke_async(&mut conn)
            .await?;
        Ok(match out.first().map(String::as_str) {
            Some("ok") => out.get(1).and_then(|d| d.parse().ok()),
            _ => None,
        })
    }

    /// Cancels a run: it ends `cancelled` at once, and every tenant not finished (pending,
    /// queued or running) is marked cancelled; running ones stop at their next renewal.
    pub async fn cancel(&self, run: &str, reason: &str) -> Result<RunState, StoreError> {
        let k = &self.keys;
        let mut conn = self.conn.clone();
        let out: Vec<String> = self
            .scripts
            .cancel
            .key(k.run(run))
            .key(k.run_tenants(run))
            .key(k.run_inflight(run))
            .key(k.run_hosts(run))
            .key(k.run_events(run))
            .arg(now_ms())
            .arg(reason)
            .invoke_async(&mut conn)
            .await?;
        match (out.first().map(String::as_str), out.get(1).map(String::as_str)) {
            (Some("ok"), previous) => {
                self.retire_unless_reporting(run).await?;
                Ok(previous.and_then(RunState::parse).unwrap_or(RunState::Running))
            }
            (_, Some("missing") | None) => Err(StoreError::NoSuchRun(run.to_string())),
            (_, Some(state)) => Err(StoreError::Refused {
                run: run.to_string(),
                state: state.to_string(),
                action: "cancel",
                allowed: "queued or running or awaiting_approval or paused".to_string(),
            }),
        }
    }

    /// Re-dispatches tenants whose queue entry or lease expired: reads the tenants past
    /// their deadline (at most 500 per call), then `sweep.lua` checks each again with its
    /// lease key, which it is given.
    pub async fn sweep(&self, run: &str, dispatch_grace: Duration) -> Result<Vec<(String, u64)>, StoreError> {
        let k = &self.keys;
        let mut conn = self.conn.clone();
        let now = now_ms();
        let due: Vec<String> = conn.zrangebyscore_limit(k.run_inflight(run), "-inf", now, 0, 500).await?;
        if due.is_empty() {
            return Ok(Vec::new());
        }
        let mut invocation = self.scripts.sweep.prepare_invoke();
        invocation.key(k.run_tenants(run)).key(k.run_inflight(run));
        for tenant in &due {
            invocation.key(k.lease(run, tenant));
        }
        invocation.arg(now).arg(dispatch_grace.as_millis() as u64);
        for tenant in &due {
            invocation.arg(tenant);
        }
        let out: Vec<String> = invocation.invoke_async(&mut conn).await?;
        Ok(out.iter().filter_map(|s| parse_dispatch(s)).collect())
    }

    /// An operator's state change, refused unless the run is in one of `from`.
    pub async fn transition(
        &self,
        run: &str,
        action: &'static str,
        from: &[RunState],
        to: RunState,
        fields: &[(String, String)],
    ) -> Result<RunState, StoreError> {
        let k = &self.keys;
        let mut conn = self.conn.clone();
        let from_list: Vec<&str> = from.iter().map(|s| s.as_str()).collect();
        let mut invocation = self.scripts.transition.prepare_invoke();
        invocation
            .key(k.run(run))
            .key(k.run_events(run))
            .arg(from_list.join(","))
            .arg(to.as_str())
            .arg(now_ms())
            .arg(format!("{action}: run is now {to}"));
        for (f, v) in fields {
            invocation.arg(f).arg(v);
        }
        let out: Vec<String> = invocation.invoke_async(&mut conn).await?;
        match out.first().map(String::as_str) {
            Some("ok") => {
                if to.is_terminal() {
                    self.retire_unless_reporting(run).await?;
                }
                Ok(out.get(1).and_then(|s| RunState::parse(s)).unwrap_or(to))
            }
            _ => match out.get(1).map(String::as_str) {
                Some("missing") | None => Err(StoreError::NoSuchRun(run.to_string())),
                Some(state) => Err(StoreError::Refused {
                    run: run.to_string(),
                    state: state.to_string(),
                    action,
                    allowed: from_list.join(" or "),
                }),
            },
        }
    }

    pub async fn spec(&self, run: &str) -> Result<RunSpec, StoreError> {
        let mut conn = self.conn.clone();
        let raw: Option<String> = conn.get(self.keys.run_spec(run)).await?;
        let raw = raw.ok_or_else(|| StoreError::NoSuchRun(run.to_string()))?;
        serde_json::from_str(&raw).map_err(|e| StoreError::Corrupt { run: run.to_string(), message: e.to_string() })
    }

    pub async fn record(&self, run: &str) -> Result<RunRecord, StoreError> {
        let mut conn = self.conn.clone();
        let h: HashMap<String, String> = conn.hgetall(self.keys.run(run)).await?;
        if h.is_empty() {
            return Err(StoreError::NoSuchRun(run.to_string()));
        }
        let num = |f: &str| h.get(f).and_then(|v| v.parse::<i64>().ok());
        let count = |f: &str| num(f).unwrap_or(0).max(0) as u64;
        Ok(RunRecord {
            id: run.to_string(),
            workflow: h.get("workflow").cloned().unwrap_or_default(),
            trigger: h.get("trigger").cloned().unwrap_or_default(),
            parent: h.get("parent").filter(|p| !p.is_empty()).cloned(),
            state: h
                .get("state")
                .and_then(|s| RunState::parse(s))
                .ok_or_else(|| StoreError::Corrupt { run: run.to_string(), message: "no state".to_string() })?,
            reason: h.get("reason").filter(|r| !r.is_empty()).cloned(),
            halting: h.get("halting").filter(|r| !r.is_empty()).cloned(),
            wave: count("wave") as usize,
            tenants: count("tenants"),
            succeeded: count("succeeded"),
            failed: count("failed"),
            cancelled: count("cancelled"),
            skipped: count("skipped"),
            inflight: count("inflight"),
            created_ms: num("created_ms").unwrap_or(0),
            started_ms: num("started_ms"),
            finished_ms: num("finished_ms"),
            soak_until_ms: num("soak_until_ms").filter(|s| *s > 0),
            report: h.get("report").filter(|r| !r.is_empty()).cloned(),
            report_error: h.get("report_error").filter(|r| !r.is_empty()).cloned(),
        })
    }

    /// Per-wave counters of a run (`w{n}:{outcome}` fields), all waves in one read.
    pub async fn wave_counts(&self, run: &str) -> Result<BTreeMap<usize, BTreeMap<String, u64>>, StoreError> {
        let mut conn = self.conn.clone();
        let h: HashMap<String, String> = conn.hgetall(self.keys.run(run)).await?;
        let mut out: BTreeMap<usize, BTreeMap<String, u64>> = BTreeMap::new();
        for (k, v) in h {
            if let Some((wave, outcome)) = k.strip_prefix('w').and_then(|rest| rest.split_once(':'))
                && let Ok(wave) = wave.parse()
            {
                out.entry(wave).or_default().insert(outcome.to_string(), v.parse().unwrap_or(0));
            }
        }
        Ok(out)
    }

    pub async fn checkpoints(&self, run: &str) -> Result<BTreeMap<String, Checkpoint>, StoreError> {
        let mut conn = self.conn.clone();
        let h: HashMap<String, String> = conn.hgetall(self.keys.run_tenants(run)).await?;
        h.into_iter()
            .map(|(t, raw)| {
                serde_json::from_str(&raw).map(|c| (t.clone(), c)).map_err(|e| StoreError::Corrupt {
                    run: run.to_string(),
                    message: format!("checkpoint of {t}: {e}"),
                })
            })
            .collect()
    }

    /// The newest `limit` runs, newest first.
    pub async fn list(&self, limit: usize) -> Result<Vec<RunRecord>, StoreError> {
        let mut conn = self.conn.clone();
        let ids: Vec<String> = conn.zrevrange(self.keys.runs(), 0, limit.saturating_sub(1) as isize).await?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            match self.record(&id).await {
                Ok(r) => out.push(r),
                Err(StoreError::NoSuchRun(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    pub async fn active(&self) -> Result<Vec<String>, StoreError> {
        let mut conn = self.conn.clone();
        Ok(conn.smembers(self.keys.active_runs()).await?)
    }

    pub async fn events(&self, run: &str) -> Result<Vec<serde_json::Value>, StoreError> {
        let mut conn = self.conn.clone();
        let raw: Vec<String> = conn.lrange(self.keys.run_events(run), 0, -1).await?;
        Ok(raw.iter().filter_map(|r| serde_json::from_str(r).ok()).collect())
    }

    /// Removes finished runs beyond the newest `keep` per workflow, and those that finished
    /// before `older_than_ms`, with every key they have (record, snapshot, checkpoints,
    /// pending tenants, events, fence). Also repairs what crashes left: runs whose
    /// creation began before `abandoned_before_ms` and was never published (see the module
    /// doc), and removals cut short. Returns how many runs were removed.
    pub async fn prune_finished(
        &self,
        keep: usize,
        older_than_ms: i64,
        abandoned_before_ms: i64,
    ) -> Result<usize, StoreError> {
        let k = &self.keys;
        let mut conn = self.conn.clone();
        // Runs a previous prune took out of the index and did not finish deleting.
        let mut doomed: Vec<String> = conn.smembers(k.doomed_runs()).await?;
        let ids: Vec<(String, f64)> = conn.zrevrange_withscores(k.runs(), 0, -1).await?;
        let mut kept: HashMap<String, usize> = HashMap::new();
        for (id, registered) in ids {
            let record = match self.record(&id).await {
                Ok(r) => r,
                // No record: a removal cut short (finish it), or a creation that stopped
                // before its keys were written (once it is old enough to be abandoned).
                Err(StoreError::NoSuchRun(_)) => {
                    if (registered as i64) < abandoned_before_ms {
                        doomed.push(id);
                    }
                    continue;
                }
                Err(e) => return Err(e),
            };
            if !record.state.is_terminal() {
                // Read after the record: a run published meanwhile is seen as published.
                if record.created_ms < abandoned_before_ms && !conn.sismember(k.active_runs(), &id).await? {
                    let out: Vec<String> = self
                        .scripts
                        .unlist
                        .key(k.runs())
                        .key(k.active_runs())
                        .key(k.doomed_runs())
                        .arg(&id)
                        .invoke_async(&mut conn)
                        .await?;
                    if out.first().map(String::as_str) == Some("ok") {
                        tracing::warn!(run = %id, "removing a run whose creation was never finished (nothing of it ran)");
                        doomed.push(id);
                    }
                }
                continue;
            }
            let n = kept.entry(record.workflow.clone()).or_default();
            if *n < keep && record.finished_ms.unwrap_or(record.created_ms) >= older_than_ms {
                *n += 1;
            } else {
                doomed.push(id);
            }
        }
        doomed.sort();
        doomed.dedup();
        for id in &doomed {
            self.remove_run(id).await?;
        }
        Ok(doomed.len())
    }

    /// Deletes every key of a run (one slot), then takes it out of the global sets (one
    /// MULTI/EXEC on the other slot); a removal cut short leaves an id in the index without
    /// a record, which the next prune removes. Leases are not deleted: they expire.
    async fn remove_run(&self, run: &str) -> Result<(), StoreError> {
        let k = &self.keys;
        let mut keys = vec![
            k.run(run),
            k.run_tenants(run),
            k.run_hosts(run),
            k.run_inflight(run),
            k.fence(run),
            k.run_events(run),
            k.run_limits(run),
        ];
        // The per-wave keys are named after the spec's waves; the spec goes last, so a
        // removal cut short can still name them.
        if let Ok(spec) = self.spec(run).await {
            for wave in &spec.waves {
                keys.push(k.run_ready(run, wave.index));
                keys.push(k.run_parked(run, wave.index));
                keys.push(k.run_pending(run, wave.index));
            }
        }
        let mut conn = self.conn.clone();
        for chunk in keys.chunks(500) {
            conn.del::<_, ()>(chunk).await?;
        }
        conn.del::<_, ()>(k.run_spec(run)).await?;
        redis::pipe()
            .atomic()
            .zrem(k.runs(), run)
            .srem(k.active_runs(), run)
            .srem(k.doomed_runs(), run)
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }

    /// SET NX with a TTL: true for the first caller only (the prune lock).
    pub async fn set_once(&self, key: &str, value: &str, ttl: Duration) -> Result<bool, StoreError> {
        let mut conn = self.conn.clone();
        let set: Option<String> = redis::cmd("SET")
            .arg(key)
            .arg(value)
            .arg("NX")
            .arg("PX")
            .arg(ttl.as_millis() as u64)
            .query_async(&mut conn)
            .await?;
        Ok(set.is_some())
    }

    /// The `done` watermark of a scheduled workflow (ms): every tick up to it is handled.
    /// When there is none yet (first start, or a Redis that lost its data), `floor` is
    /// written (only if still absent, so concurrent replicas agree) and returned.
    pub async fn schedule_done(&self, workflow: &str, floor: i64) -> Result<i64, StoreError> {
        let key = self.keys.schedule(workflow);
        let mut conn = self.conn.clone();
        let (done,): (i64,) =
            redis::pipe().hset_nx(&key, "done", floor).ignore().hget(&key, "done").query_async(&mut conn).await?;
        Ok(done)
    }

    /// Claims a tick for `claim.owner` for `lifetime` (see `lua/tick_claim.lua`).
    pub async fn claim_tick(&self, claim: &TickClaim, lifetime: Duration) -> Result<TickClaimed, StoreError> {
        let mut conn = self.conn.clone();
        let out: Vec<String> = self
            .scripts
            .tick_claim
            .key(self.keys.schedule(&claim.workflow))
            .arg(claim.tick_ms)
            .arg(&claim.owner)
            .arg(lifetime.as_millis() as u64)
            .invoke_async(&mut conn)
            .await?;
        let num = |i: usize| out.get(i).and_then(|v| v.parse::<i64>().ok()).unwrap_or_default();
        Ok(match out.first().map(String::as_str) {
            Some("ok") => TickClaimed::Ok,
            Some("done") => TickClaimed::Done(num(1)),
            _ => TickClaimed::Busy {
                owner: out.get(2).cloned().unwrap_or_default(),
                tick_ms: num(1),
                expires_in: Duration::from_millis(num(3).max(0) as u64),
            },
        })
    }

    /// Records a tick as handled without a run (skipped on purpose: overlap, catch-up,
    /// nothing selected), giving up `claim` (see `lua/tick_done.lua`).
    pub async fn skip_tick(&self, claim: &TickClaim) -> Result<TickDone, StoreError> {
        let mut conn = self.conn.clone();
        let out: Vec<String> = self
            .scripts
            .tick_done
            .key(self.keys.schedule(&claim.workflow))
            .arg(claim.tick_ms)
            .arg(&claim.owner)
            .invoke_async(&mut conn)
            .await?;
        Ok(tick_done(out))
    }

    /// Deletes every key under the prefix (tests and `tenantry` housekeeping only). On a
    /// cluster, KEYS is sent to every primary (SCAN walks one node only).
    pub async fn delete_all(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let pattern = format!("{}:*", self.keys.prefix());
        let keys: Vec<String> = if self.conn.is_cluster() {
            redis::cmd("KEYS").arg(&pattern).query_async(&mut conn).await?
        } else {
            let mut iter: redis::AsyncIter<String> = conn.scan_match(&pattern).await?;
            let mut keys = Vec::new();
            while let Some(k) = futures::StreamExt::next(&mut iter).await {
                keys.push(k?);
            }
            keys
        };
        for chunk in keys.chunks(500) {
            conn.del::<_, ()>(chunk).await?;
        }
        Ok(())
    }
}

fn tick_done(out: Vec<String>) -> TickDone {
    match out.first().map(String::as_str) {
        Some("ok") => TickDone::Recorded,
        _ => TickDone::Refused(out.get(1).cloned().unwrap_or_else(|| "no reply".to_string())),
    }
}

fn parse_dispatch(s: &str) -> Option<(String, u64)> {
    let (tenant, dispatch) = s.rsplit_once('|')?;
    Some((tenant.to_string(), dispatch.parse().ok()?))
}

#[cfg(test)]
mod tests {
    /// Every script of the run store, by file name.
    const SCRIPTS: &[(&str, &str)] = &[
        ("advance.lua", include_str!("lua/advance.lua")),
        ("cancel.lua", include_str!("lua/cancel.lua")),
        ("claim.lua", include_str!("lua/claim.lua")),
        ("finish.lua", include_str!("lua/finish.lua")),
        ("progress.lua", include_str!("lua/progress.lua")),
        ("publish.lua", include_str!("lua/publish.lua")),
        ("release.lua", include_str!("lua/release.lua")),
        ("defer.lua", include_str!("lua/defer.lua")),
        ("renew.lua", include_str!("lua/renew.lua")),
        ("sweep.lua", include_str!("lua/sweep.lua")),
        ("tick_claim.lua", include_str!("lua/tick_claim.lua")),
        ("tick_done.lua", include_str!("lua/tick_done.lua")),
        ("transition.lua", include_str!("lua/transition.lua")),
        ("unlist.lua", include_str!("lua/unlist.lua")),
    ];

    /// Commands whose first argument is not a key.
    const KEYLESS: &[&str] = &["TIME"];
    /// Commands all of whose arguments are keys.
    const ALL_KEYS: &[&str] = &["DEL", "EXISTS", "UNLINK"];

    /// Splits a comma-separated Lua expression list at the top level (not inside brackets
    /// or quotes).
    fn split_top(s: &str) -> Vec<String> {
        let (mut out, mut depth, mut cur) = (Vec::new(), 0i32, String::new());
        let mut quote: Option<char> = None;
        for c in s.chars() {
            if let Some(q) = quote {
                if c == q {
                    quote = None;
                }
                cur.push(c);
                continue;
            }
            match c {
                '\'' | '"' => quote = Some(c),
                '(' | '[' | '{' => depth += 1,
                ')' | ']' | '}' => depth -= 1,
                ',' if depth == 0 => {
                    out.push(cur.trim().to_string());
                    cur.clear();
                    continue;
                }
                _ => {}
            }
            cur.push(c);
        }
        if !cur.trim().is_empty() {
            out.push(cur.trim().to_string());
        }
        out
    }

    /// `KEYS[i]` itself, not a name built from it (`KEYS[3] .. tenant`).
    fn is_keys_element(expr: &str) -> bool {
        expr.starts_with("KEYS[") && expr.ends_with(']') && !expr.contains("..")
    }

    /// The key arguments of each `redis.call` in a script that are not taken from `KEYS`
    /// (directly, or through a local bound to a `KEYS[...]` element). Redis Cluster only
    /// routes, and only checks, the keys a script declares; a key built from data inside
    /// the script is what breaks on a cluster.
    fn undeclared_keys(script: &str) -> Vec<String> {
        let mut from_keys: Vec<String> = Vec::new();
        let mut problems = Vec::new();
        for line in script.lines().map(str::trim).filter(|l| !l.starts_with("--")) {
            if let Some(rest) = line.strip_prefix("local ")
                && let Some((names, values)) = rest.split_once(" = ")
            {
                for (name, value) in names.split(',').map(str::trim).zip(split_top(values)) {
                    if is_keys_element(&value) {
                        from_keys.push(name.to_string());
                    }
                }
            }
            let mut rest = line;
            while let Some(at) = rest.find("redis.call(") {
                rest = &rest[at + "redis.call(".len()..];
                let (mut depth, mut quote) = (1, None);
                let end = rest
                    .char_indices()
                    .find(|&(_, c)| {
                        match (quote, c) {
                            (Some(q), c) if c == q => quote = None,
                            (Some(_), _) => {}
                            (None, '\'' | '"') => quote = Some(c),
                            (None, '(') => depth += 1,
                            (None, ')') => depth -= 1,
                            _ => {}
                        }
                        depth == 0
                    })
                    .map_or(rest.len(), |(i, _)| i);
                let args = split_top(&rest[..end]);
                let command = args[0].trim_matches('\'').to_ascii_uppercase();
                if KEYLESS.contains(&command.as_str()) {
                    continue;
                }
                let keys = if ALL_KEYS.contains(&command.as_str()) { &args[1..] } else { &args[1..2.min(args.len())] };
                for key in keys {
                    if !(is_keys_element(key) || from_keys.contains(key)) {
                        problems.push(format!("{command} {key}"));
                    }
                }
            }
        }
        problems
    }

    #[test]
    fn every_script_touches_only_the_keys_it_is_given() {
        for (name, script) in SCRIPTS {
            let undeclared = undeclared_keys(script);
            assert!(undeclared.is_empty(), "{name} touches keys it is not given: {undeclared:?}");
        }
    }

    #[test]
    fn every_script_file_is_checked() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/runtime/lua");
        for entry in std::fs::read_dir(&dir).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            assert!(SCRIPTS.iter().any(|(n, _)| *n == name), "{name} is not in SCRIPTS");
        }
    }

    #[test]
    fn every_script_asks_redis_to_refuse_keys_of_another_slot() {
        for (name, script) in SCRIPTS {
            assert!(
                script.starts_with("#!lua\n"),
                "{name} must start with `#!lua` (Redis 7 then refuses cross-slot keys)"
            );
        }
    }

    #[test]
    fn the_check_finds_a_key_built_inside_a_script() {
        let built = "local stem = ARGV[1]\nlocal t = redis.call('LPOP', stem .. ':pending')\n\
                     redis.call('DEL', KEYS[1], 'x')\nredis.call('PTTL', KEYS[3] .. t)";
        let found = undeclared_keys(built);
        assert_eq!(found, ["LPOP stem .. ':pending'", "DEL 'x'", "PTTL KEYS[3] .. t"]);
        let fine = "local run, tenants = KEYS[1], KEYS[2]\nredis.call('HGET', run, 'state')\nredis.call('TIME')";
        assert!(undeclared_keys(fine).is_empty());
    }
}
