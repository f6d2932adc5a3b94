//! The run store: runs, checkpoints, leases and dispatch state in Redis, every transition one atomic Lua script.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use redis::AsyncCommands;
use redis::aio::ConnectionManager;

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
}

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

/// `tick_done.lua`, also sent as plain EVAL inside the MULTI/EXEC of
/// [`RunStore::create_scheduled`] (an EVALSHA there could fail with NOSCRIPT after the
/// rest of the transaction had run).
const TICK_DONE_LUA: &str = include_str!("lua/tick_done.lua");

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

/// The run store of one installation (one Redis, one key prefix).
#[derive(Clone)]
pub struct RunStore {
    conn: ConnectionManager,
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
    cancel: redis::Script,
    tick_claim: redis::Script,
    tick_done: redis::Script,
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
            cancel: redis::Script::new(include_str!("lua/cancel.lua")),
            tick_claim: redis::Script::new(include_str!("lua/tick_claim.lua")),
            tick_done: redis::Script::new(TICK_DONE_LUA),
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
        let unreachable = |source| StoreError::Unreachable { url: url.redacted(), source };
        let client = redis::Client::open(url.expose()).map_err(unreachable)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5).min(patience)))
            .set_response_timeout(Some(Duration::from_secs(30)))
            .set_number_of_retries(6);
        let conn = tokio::time::timeout(patience, ConnectionManager::new_with_config(client, config))
            .await
            .map_err(|_| unreachable(redis::RedisError::from((redis::ErrorKind::Io, "connection timed out"))))?
            .map_err(unreachable)?;
        Ok(Self { conn, keys: Keys::new(prefix), scripts: Scripts::new() })
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Writes a new run in one MULTI/EXEC: record, snapshot, checkpoints, pending lists.
    /// The run starts `running` (or `awaiting_approval` when its first wave asks for it),
    /// or `queued` behind a previous run of its workflow.
    pub async fn create(&self, spec: &RunSpec, trigger: &Trigger, queued: bool) -> Result<(), StoreError> {
        let now = now_ms();
        let (mut pipe, _) = self.create_pipe(spec, trigger, queued, now);
        pipe.zadd(self.keys.runs(), &spec.id, now);
        pipe.sadd(self.keys.active_runs(), &spec.id);
        let mut conn = self.conn.clone();
        pipe.query_async::<()>(&mut conn).await?;
        Ok(())
    }

    /// [`RunStore::create`] for the run of a schedule tick: the same MULTI/EXEC ends with
    /// `tick_done.lua`, which records the tick as done and publishes the run, or refuses
    /// (the tick or a newer one is done already; another replica holds the workflow) and
    /// deletes what the transaction wrote. So the run exists exactly when its tick is
    /// recorded, whatever crashes or expired claims came in between.
    pub async fn create_scheduled(
        &self,
        spec: &RunSpec,
        trigger: &Trigger,
        queued: bool,
        claim: &TickClaim,
    ) -> Result<TickDone, StoreError> {
        let k = &self.keys;
        let now = now_ms();
        let (mut pipe, written) = self.create_pipe(spec, trigger, queued, now);
        pipe.cmd("EVAL")
            .arg(TICK_DONE_LUA)
            .arg(3 + written.len())
            .arg(k.schedule(&claim.workflow))
            .arg(k.runs())
            .arg(k.active_runs())
            .arg(&written)
            .arg(claim.tick_ms)
            .arg(&claim.owner)
            .arg(&spec.id)
            .arg(now);
        let mut conn = self.conn.clone();
        let replies: Vec<redis::Value> = pipe.query_async(&mut conn).await?;
        let out: Vec<String> = match replies.last() {
            Some(reply) => redis::from_redis_value_ref(reply).map_err(redis::RedisError::from)?,
            None => Vec::new(),
        };
        Ok(tick_done(out))
    }

    /// The commands that write a new run (everything but the runs index and the active
    /// set, which publish it), in one atomic pipeline, and the keys they write.
    fn create_pipe(&self, spec: &RunSpec, trigger: &Trigger, queued: bool, now: i64) -> (redis::Pipeline, Vec<String>) {
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
        let mut written = vec![k.run(&spec.id), k.run_spec(&spec.id), k.run_tenants(&spec.id), k.run_events(&spec.id)];
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
        // Pending lists per wave and host group, in the wave's (id) order.
        let mut lists: BTreeMap<(usize, &str), Vec<&str>> = BTreeMap::new();
        for wave in &spec.waves {
            for id in &wave.tenants {
                if let Some(t) = spec.tenants.get(id.as_str())
                    && !t.units.is_empty()
                {
                    lists.entry((wave.index, t.group.as_str())).or_default().push(id.as_str());
                }
            }
        }
        for ((wave, group), ids) in &lists {
            for chunk in ids.chunks(1000) {
                pipe.rpush(k.run_pending(&spec.id, *wave, group), chunk);
            }
            pipe.zadd(k.run_ready(&spec.id, *wave), *group, 0);
            written.push(k.run_pending(&spec.id, *wave, group));
            written.push(k.run_ready(&spec.id, *wave));
        }
        written.sort();
        written.dedup();
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
        written.push(k.run_limits(&spec.id));
        let created = serde_json::json!({"at": now, "event": format!("run created by {trigger}: {} tenant(s) in {} wave(s)", spec.tenants.len(), spec.waves.len())});
        pipe.rpush(k.run_events(&spec.id), created.to_string());
        (pipe, written)
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
            .key(k.active_runs())
            .key(k.run_limits(&spec.id));
        for wave in 0..spec.waves.len() {
            invocation.key(k.run_ready(&spec.id, wave)).key(k.run_parked(&spec.id, wave));
        }
        let out: Vec<String> = invocation
            .arg(k.run(&spec.id))
            .arg(now_ms())
            .arg(spec.run_concurrency)
            .arg(spec.waves_json())
            .arg(dispatch_grace.as_millis() as u64)
            .invoke_async(&mut conn)
            .await?;
        let mut it = out.into_iter();
        let state = it.next().unwrap_or_default();
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
            .key(k.run_pending(run, snapshot.wave, &snapshot.group))
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
            .key(k.active_runs())
            .arg(run)
            .arg(now_ms())
            .arg(reason)
            .invoke_async(&mut conn)
            .await?;
        match (out.first().map(String::as_str), out.get(1).map(String::as_str)) {
            (Some("ok"), previous) => Ok(previous.and_then(RunState::parse).unwrap_or(RunState::Running)),
            (_, Some("missing") | None) => Err(StoreError::NoSuchRun(run.to_string())),
            (_, Some(state)) => Err(StoreError::Refused {
                run: run.to_string(),
                state: state.to_string(),
                action: "cancel",
                allowed: "queued or running or awaiting_approval or paused".to_string(),
            }),
        }
    }

    /// Re-dispatches tenants whose queue entry or lease expired.
    pub async fn sweep(&self, run: &str, dispatch_grace: Duration) -> Result<Vec<(String, u64)>, StoreError> {
        let k = &self.keys;
        let mut conn = self.conn.clone();
        let out: Vec<String> = self
            .scripts
            .sweep
            .key(k.run_tenants(run))
            .key(k.run_inflight(run))
            .key(k.lease(run, ""))
            .arg(now_ms())
            .arg(dispatch_grace.as_millis() as u64)
            .invoke_async(&mut conn)
            .await?;
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
            .key(k.active_runs())
            .arg(run)
            .arg(from_list.join(","))
            .arg(to.as_str())
            .arg(now_ms())
            .arg(format!("{action}: run is now {to}"));
        for (f, v) in fields {
            invocation.arg(f).arg(v);
        }
        let out: Vec<String> = invocation.invoke_async(&mut conn).await?;
        match out.first().map(String::as_str) {
            Some("ok") => Ok(out.get(1).and_then(|s| RunState::parse(s)).unwrap_or(to)),
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
    /// pending lists, events, fence). Returns how many runs were removed.
    pub async fn prune_finished(&self, keep: usize, older_than_ms: i64) -> Result<usize, StoreError> {
        let mut conn = self.conn.clone();
        let ids: Vec<String> = conn.zrevrange(self.keys.runs(), 0, -1).await?;
        let mut kept: HashMap<String, usize> = HashMap::new();
        let mut doomed = Vec::new();
        for id in ids {
            let record = match self.record(&id).await {
                Ok(r) => r,
                // A run whose record is gone (half-removed): finish removing it.
                Err(StoreError::NoSuchRun(_)) => {
                    doomed.push(id);
                    continue;
                }
                Err(e) => return Err(e),
            };
            if !record.state.is_terminal() {
                continue;
            }
            let n = kept.entry(record.workflow.clone()).or_default();
            if *n < keep && record.finished_ms.unwrap_or(record.created_ms) >= older_than_ms {
                *n += 1;
            } else {
                doomed.push(id);
            }
        }
        for id in &doomed {
            self.remove_run(id).await?;
        }
        Ok(doomed.len())
    }

    /// Deletes every key of a finished run; its id leaves the run list last, so a removal
    /// cut short is finished by the next prune.
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
        if let Ok(spec) = self.spec(run).await {
            for wave in &spec.waves {
                keys.push(k.run_ready(run, wave.index));
                keys.push(k.run_parked(run, wave.index));
                let groups: std::collections::BTreeSet<&str> =
                    spec.tenants.values().filter(|t| t.wave == wave.index).map(|t| t.group.as_str()).collect();
                keys.extend(groups.into_iter().map(|g| k.run_pending(run, wave.index, g)));
            }
        }
        keys.push(k.run_spec(run));
        let mut conn = self.conn.clone();
        for chunk in keys.chunks(500) {
            conn.del::<_, ()>(chunk).await?;
        }
        conn.zrem::<_, _, ()>(k.runs(), run).await?;
        conn.srem::<_, _, ()>(k.active_runs(), run).await?;
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

    /// Deletes every key under the prefix (tests and `tenantry` housekeeping only).
    pub async fn delete_all(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let pattern = format!("{}:*", self.keys.prefix());
        let keys: Vec<String> = {
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
