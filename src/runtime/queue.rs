//! Dispatch through apalis: pushes "work on tenant T of run R" into Redis and runs workers that hand each entry to the runtime, with no apalis retries, bounded memory and a restart after every Redis error.
//!
//! apalis is only the transport. Whether a tenant is done, how often it was tried and who
//! holds it live in the run store's own keys; a queue entry is a hint that can be late,
//! lost or delivered twice, and the runtime's dispatch numbers and leases make all three
//! harmless. This module therefore configures apalis-redis 1.0 for throughput and bounded
//! memory, not for exactly-once delivery:
//!
//! - Handlers never fail from apalis's point of view: the user handler runs in its own
//!   tokio task, a panic is logged, and apalis always sees `Ok(())`. (apalis-redis
//!   re-schedules failed tasks up to a hard-coded 25 attempts, whatever the worker says.)
//! - `lock_tasks(false)`: the lease script does an `LREM` over the whole pending list for
//!   every task it starts, which makes a deep queue quadratic. Its only effect is a
//!   `locked_by` field nobody reads; orphan recovery works from the worker heartbeats.
//! - `persist_results(true)`: this is how apalis acknowledges a task (it leaves the
//!   worker's in-flight set). Without it every task stays "in flight" forever and is
//!   delivered again when its worker dies. The price is a payload, a metadata hash and a
//!   `done` entry per task, which [`Queue::reap_finished`] deletes (every worker runs it).
//! - `batch_size(1)`: apalis neither heartbeats nor acknowledges while a worker holds
//!   fetched tasks that it has no free slot for. With long tenant tasks and a larger batch
//!   the worker stops heartbeating, is declared dead, and everything it holds is delivered
//!   again. One task per fetch still moves several thousand tasks a second.
//! - `emit_events(false)`: no `PUBLISH` per task; nothing subscribes.
//! - Entries are written straight onto apalis's pending list, not through its push script,
//!   which parks them in a "scheduled" set that its fetch script cannot empty once it holds
//!   more than about 8,000 entries (see [`Queue::push_many`]).
//! - An idle worker polls every 50 ms (apalis otherwise only looks again at the next
//!   heartbeat).
//! - Heartbeat every 2 s; a worker silent for 5 heartbeats (10 s) is dead, and the next
//!   heartbeat of any live worker on the queue puts its in-flight tasks back in the queue.
//!
//! An apalis worker stops for good on the first Redis error (a failed fetch, heartbeat or
//! acknowledgement). [`run_worker`] runs it as a "generation" and starts a new one, under a
//! new apalis worker name, after a backoff; handlers that were running keep running.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use apalis::layers::WorkerBuilderExt;
use apalis::prelude::{BackendExt, WorkerBuilder, WorkerContext};
use apalis_redis::{Config, ConnectionManager, RedisStorage};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::keys::Keys;
use crate::secret::redact_url_str;

/// What travels through the queue: run R's tenant T should be worked on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantTask {
    pub run_id: String,
    pub tenant: String,
    /// The tenant's dispatch number when this entry was pushed; a handler that finds a
    /// newer one in the checkpoint drops the entry as stale.
    pub dispatch: u64,
    /// When the entry was pushed (Unix ms), for queue latency.
    pub queued_at_ms: i64,
}

impl TenantTask {
    /// An entry stamped with the current time.
    pub fn new(run_id: impl Into<String>, tenant: impl Into<String>, dispatch: u64) -> Self {
        Self {
            run_id: run_id.into(),
            tenant: tenant.into(),
            dispatch,
            queued_at_ms: chrono::Utc::now().timestamp_millis(),
        }
    }
}

/// Errors of the queue. Messages never contain the Redis password.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("cannot reach Redis at {url}: {source}")]
    Unreachable {
        url: String,
        #[source]
        source: redis::RedisError,
    },
    #[error("redis error while {action} on queue {queue}: {source}")]
    Redis {
        action: &'static str,
        queue: String,
        #[source]
        source: apalis_redis::Error,
    },
    #[error("cannot encode the queue entry for tenant {tenant} of run {run}: {source}")]
    Encode {
        run: String,
        tenant: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("invalid queue worker settings: {0}")]
    Invalid(String),
    #[error(
        "worker {worker}: {abandoned} handler(s) were still running when the drain timeout of {timeout:?} \
         expired and were cancelled; their tenants are dispatched again when their leases expire"
    )]
    DrainTimedOut { worker: String, abandoned: usize, timeout: Duration },
}

impl QueueError {
    /// Whether trying again later can help (Redis was unreachable or failed), as opposed to
    /// a bug, a configuration mistake or the report of a shutdown.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unreachable { .. } | Self::Redis { .. })
    }

    fn redis(action: &'static str, queue: &str, source: impl Into<apalis_redis::Error>) -> Self {
        Self::Redis { action, queue: queue.to_string(), source: source.into() }
    }
}

/// Tuning of the queue. The defaults are what the module documentation explains; tests
/// shorten the timings.
#[derive(Debug, Clone)]
pub struct QueueSettings {
    /// How often a worker says it is alive (and looks for dead workers' tasks).
    pub heartbeat_interval: Duration,
    /// Heartbeats a worker may miss before its in-flight tasks are put back in the queue.
    pub missed_heartbeats: usize,
    /// How often an idle worker looks for new entries.
    pub idle_poll: Duration,
    /// Entries fetched per round trip. Keep it at 1 unless handlers are short: see the
    /// module documentation.
    pub fetch_batch: usize,
}

impl Default for QueueSettings {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(2),
            missed_heartbeats: 5,
            idle_poll: Duration::from_millis(50),
            fetch_batch: 1,
        }
    }
}

/// Entries per push transaction: one round trip each, short enough not to stall Redis.
const PUSH_CHUNK: usize = 1000;
/// Finished entries deleted per round trip by [`Queue::reap_finished`].
const REAP_CHUNK: usize = 1000;
/// How often a worker deletes finished entries.
const REAP_INTERVAL: Duration = Duration::from_secs(5);
/// Backoff between worker generations after Redis errors.
const RESTART_MIN: Duration = Duration::from_millis(250);
const RESTART_MAX: Duration = Duration::from_secs(5);
/// A generation that ran this long without error resets the backoff.
const STABLE_AFTER: Duration = Duration::from_secs(30);

/// The queue of one installation. Cheap to clone (one multiplexed connection that
/// reconnects by itself); push and run workers from as many tasks as needed.
#[derive(Clone)]
pub struct Queue {
    conn: ConnectionManager,
    config: Config,
    settings: QueueSettings,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue").field("name", &self.name()).field("settings", &self.settings).finish()
    }
}

impl Queue {
    /// Connects to Redis; all apalis keys live under `{prefix}:queue` (the queue name), so
    /// installations or tests with different prefixes never see each other's tasks.
    pub async fn connect(redis_url: &str, prefix: &str) -> Result<Self, QueueError> {
        Self::connect_with(redis_url, prefix, QueueSettings::default()).await
    }

    pub async fn connect_with(redis_url: &str, prefix: &str, settings: QueueSettings) -> Result<Self, QueueError> {
        // apalis compares heartbeats in whole seconds: below 1 s every worker looks dead.
        if settings.fetch_batch == 0 || settings.missed_heartbeats == 0 || settings.heartbeat_interval.as_secs() == 0 {
            return Err(QueueError::Invalid(format!(
                "{settings:?}: the fetch batch and missed heartbeats must be at least 1, the heartbeat interval at least 1s"
            )));
        }
        let unreachable = |source| QueueError::Unreachable { url: redact_url_str(redis_url), source };
        let client = redis::Client::open(redis_url).map_err(unreachable)?;
        let manager = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(10)))
            .set_number_of_retries(3)
            .set_max_delay(Duration::from_secs(2));
        let conn = tokio::time::timeout(Duration::from_secs(10), ConnectionManager::new_with_config(client, manager))
            .await
            .map_err(|_| unreachable(redis::RedisError::from((redis::ErrorKind::Io, "connection timed out"))))?
            .map_err(unreachable)?;
        let config = Config::default()
            .queue(Keys::new(prefix).queue())
            .batch_size(settings.fetch_batch)
            .heartbeat_interval(settings.heartbeat_interval)
            .missed_heartbeats(settings.missed_heartbeats)
            .lock_tasks(false)
            .persist_results(true)
            .emit_events(false);
        Ok(Self { conn, config, settings })
    }

    /// The apalis queue name (`{prefix}:queue`); apalis derives its keys from it.
    pub fn name(&self) -> &str {
        self.config.queue.as_ref()
    }

    /// The apalis configuration, for tests and inspection tools that need apalis's key names.
    pub fn apalis_config(&self) -> &Config {
        &self.config
    }

    pub async fn push(&self, task: TenantTask) -> Result<(), QueueError> {
        self.push_many(vec![task]).await
    }

    /// Pushes in chunks of 1,000 entries, one MULTI/EXEC (one round trip) per chunk. Not
    /// atomic across chunks: after an error some entries may be queued and others not;
    /// pushing them all again is harmless (stale dispatch numbers are dropped).
    ///
    /// This writes apalis-redis 1.0's layout itself (payload in the data hash, a metadata
    /// hash, the id on the pending list) instead of calling its push script, which puts
    /// every entry in the scheduled set. apalis's fetch script moves all due scheduled
    /// entries to the pending list with one `unpack`, which Lua refuses beyond about 8,000
    /// values: with that many entries pushed between two fetches (a large run dispatched
    /// while workers are down or busy) every fetch fails and the queue never moves again.
    /// The integration tests push here and fetch with apalis, so a layout change in an
    /// apalis update fails them.
    pub async fn push_many(&self, tasks: Vec<TenantTask>) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        let config = &self.config;
        for chunk in tasks.chunks(PUSH_CHUNK) {
            let mut pipe = redis::pipe();
            pipe.atomic();
            let mut ids = Vec::with_capacity(chunk.len());
            let mut payloads = Vec::with_capacity(chunk.len());
            for task in chunk {
                let payload = serde_json::to_vec(task).map_err(|source| QueueError::Encode {
                    run: task.run_id.clone(),
                    tenant: task.tenant.clone(),
                    source,
                })?;
                let id = new_task_id();
                // The fields apalis's push script writes. max_attempts is informational
                // (apalis-redis hard-codes 25 retries); 1 says "no retries".
                pipe.hset_multiple(
                    self.meta_key(&id),
                    &[("attempts", "0"), ("max_attempts", "1"), ("status", "Pending"), ("idempotency_key", "")],
                )
                .ignore();
                payloads.push((id.clone(), payload));
                ids.push(id);
            }
            pipe.hset_multiple(config.job_data_hash(), &payloads).ignore();
            pipe.rpush(config.active_jobs_list(), &ids).ignore();
            // apalis's "tasks available" signal, as its push script sets it.
            pipe.del(config.signal_list()).ignore();
            pipe.lpush(config.signal_list(), 1).ignore();
            pipe.query_async::<()>(&mut conn).await.map_err(|e| QueueError::redis("pushing tasks", self.name(), e))?;
        }
        Ok(())
    }

    /// Entries waiting for a worker (not counting the ones workers hold).
    pub async fn waiting(&self) -> Result<u64, QueueError> {
        let mut conn = self.conn.clone();
        redis::cmd("LLEN")
            .arg(self.config.active_jobs_list())
            .query_async(&mut conn)
            .await
            .map_err(|e| QueueError::redis("counting waiting tasks", self.name(), e))
    }

    /// Deletes what apalis keeps of acknowledged entries (payload, metadata hash, `done`
    /// set member), which would otherwise grow by one of each per task forever. Also clears
    /// the `dead` set, which only a bug can fill (handlers never fail), with a warning.
    /// Crash-safe and safe to run from several processes at once: ids leave the set in the
    /// same transaction that deletes their data. Returns how many entries were deleted.
    pub async fn reap_finished(&self) -> Result<usize, QueueError> {
        let mut conn = self.conn.clone();
        let mut total = 0;
        for (set, dead) in [(self.config.done_jobs_set(), false), (self.config.dead_jobs_set(), true)] {
            loop {
                let ids: Vec<String> = redis::cmd("SRANDMEMBER")
                    .arg(&set)
                    .arg(REAP_CHUNK)
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| QueueError::redis("reading finished tasks", self.name(), e))?;
                if ids.is_empty() {
                    break;
                }
                if dead {
                    tracing::warn!(
                        queue = self.name(),
                        count = ids.len(),
                        "apalis gave up on queue entries; deleting them"
                    );
                }
                let mut pipe = redis::pipe();
                pipe.atomic();
                pipe.hdel(self.config.job_data_hash(), &ids).ignore();
                pipe.del(ids.iter().map(|id| self.meta_key(id)).collect::<Vec<_>>()).ignore();
                pipe.srem(&set, &ids).ignore();
                pipe.query_async::<()>(&mut conn)
                    .await
                    .map_err(|e| QueueError::redis("deleting finished tasks", self.name(), e))?;
                total += ids.len();
                if ids.len() < REAP_CHUNK {
                    break;
                }
            }
        }
        Ok(total)
    }

    /// apalis-redis keeps each task's metadata in `{queue}:meta:{task id}` (its Lua scripts
    /// build the name the same way; there is no accessor for it).
    fn meta_key(&self, task_id: &str) -> String {
        format!("{}:{task_id}", self.config.job_meta_hash())
    }

    /// After a worker generation ended: drops apalis's metadata hash of that worker name,
    /// and its entry in the workers set if it holds nothing (apalis 1.0's own cleanup
    /// removes the wrong member). A generation that still holds entries stays listed, so
    /// that the orphan recovery of a live worker puts them back in the queue.
    async fn forget_worker(&self, name: &str) -> Result<(), redis::RedisError> {
        let mut conn = self.conn.clone();
        let ctx = WorkerContext::new(name);
        let held: u64 = redis::cmd("SCARD").arg(self.config.inflight_set_for(&ctx)).query_async(&mut conn).await?;
        let mut pipe = redis::pipe();
        pipe.del(self.config.worker_metadata_key(&ctx)).ignore();
        if held == 0 {
            pipe.zrem(self.config.workers_set(), name).ignore();
        }
        pipe.query_async::<()>(&mut conn).await
    }
}

/// A task id unique across processes: milliseconds (so ids sort by push time) and 64
/// random bits. apalis accepts any non-empty string as an id.
fn new_task_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    // RandomState is seeded from the OS once per thread and varies per instance.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u32(std::process::id());
    format!("{:011x}{:016x}", chrono::Utc::now().timestamp_millis(), h.finish())
}

/// Hands decoded entries to the user handler, each in its own tokio task.
struct Dispatcher<F> {
    handler: F,
    /// At most `concurrency` handlers across worker generations: handlers of a generation
    /// that died keep running and keep their permit.
    permits: Arc<Semaphore>,
    tracker: TaskTracker,
    /// Cancelled when the drain timeout expires: running handlers are dropped.
    abort: CancellationToken,
    worker_id: String,
}

impl<F, Fut> Dispatcher<F>
where
    F: Fn(TenantTask) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    /// Never fails: whatever happens is logged, and apalis acknowledges the entry.
    async fn dispatch(&self, payload: serde_json::Value) {
        let task: TenantTask = match serde_json::from_value(payload) {
            Ok(task) => task,
            Err(e) => {
                tracing::error!(worker = %self.worker_id, error = %e, "dropping a queue entry that is not a tenant task");
                return;
            }
        };
        let Ok(permit) = self.permits.clone().acquire_owned().await else {
            return; // the semaphore is never closed
        };
        let (run, tenant, dispatch) = (task.run_id.clone(), task.tenant.clone(), task.dispatch);
        let handler = self.handler.clone();
        let abort = self.abort.clone();
        let handle = self.tracker.spawn(async move {
            let _permit = permit;
            tokio::select! {
                biased;
                _ = abort.cancelled() => false,
                _ = handler(task) => true,
            }
        });
        match handle.await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(worker = %self.worker_id, %run, %tenant, dispatch, "handler cancelled at the drain timeout")
            }
            Err(e) if e.is_panic() => tracing::error!(
                worker = %self.worker_id, %run, %tenant, dispatch,
                "handler panicked; the queue entry is acknowledged and the tenant's lease decides what happens next"
            ),
            Err(e) => {
                tracing::warn!(worker = %self.worker_id, %run, %tenant, dispatch, error = %e, "handler task ended abnormally")
            }
        }
    }
}

/// How one apalis worker generation ended.
enum Generation {
    /// Shut down and drained; handlers of earlier generations get until `deadline`.
    Stopped { deadline: Instant },
    /// Shut down, but handlers were still running at the deadline.
    DrainTimedOut,
    /// apalis stopped on a Redis error.
    Failed(String),
}

/// Runs a worker until `shutdown` is cancelled: fetches entries, calls `handler` with at
/// most `concurrency` in flight, and on shutdown stops fetching and waits for in-flight
/// handlers (up to `drain_timeout` after the cancellation; handlers still running then are
/// dropped and [`QueueError::DrainTimedOut`] is returned).
///
/// `worker_id` must be unique per process (e.g. hostname-pid-random): apalis's orphan
/// recovery breaks when replicas share one. Later generations (after Redis errors) are
/// named `{worker_id}.{n}`.
///
/// Redis errors never end this function: it logs them and starts a new generation after
/// a backoff (0.25 s doubling to 5 s). What such an error costs: the entries the failed
/// generation held are delivered again (to any worker) about `missed_heartbeats ×
/// heartbeat_interval` later, also the ones whose handler finished, because their
/// acknowledgement was lost with the generation.
pub async fn run_worker<F, Fut>(
    queue: &Queue,
    worker_id: &str,
    concurrency: usize,
    handler: F,
    shutdown: CancellationToken,
    drain_timeout: Duration,
) -> Result<(), QueueError>
where
    F: Fn(TenantTask) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    if concurrency == 0 {
        return Err(QueueError::Invalid("worker concurrency must be at least 1".into()));
    }
    if worker_id.is_empty() {
        return Err(QueueError::Invalid("worker id must not be empty".into()));
    }
    let dispatcher = Arc::new(Dispatcher {
        handler,
        permits: Arc::new(Semaphore::new(concurrency)),
        tracker: TaskTracker::new(),
        abort: CancellationToken::new(),
        worker_id: worker_id.to_string(),
    });

    let reaper_stop = CancellationToken::new();
    let reaper = tokio::spawn(reap_periodically(queue.clone(), reaper_stop.clone()));

    let mut generation = 0u32;
    let mut backoff = RESTART_MIN;
    // Set when the shutdown is seen: the drain timeout counts from then, for all generations.
    let mut deadline = None;
    let mut timed_out = false;
    while !shutdown.is_cancelled() {
        let name = if generation == 0 { worker_id.to_string() } else { format!("{worker_id}.{generation}") };
        let started = Instant::now();
        let outcome = run_generation(queue, &name, concurrency, &dispatcher, &shutdown, drain_timeout).await;
        // Bounded: during an outage the connection manager may wait for a reconnection.
        match tokio::time::timeout(Duration::from_secs(2), queue.forget_worker(&name)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(worker = %name, error = %e, "could not clean up the worker's apalis entries"),
            Err(_) => tracing::debug!(worker = %name, "timed out cleaning up the worker's apalis entries"),
        }
        match outcome {
            Generation::Stopped { deadline: at } => {
                deadline = Some(at);
                break;
            }
            Generation::DrainTimedOut => {
                timed_out = true;
                break;
            }
            Generation::Failed(error) => {
                if started.elapsed() > STABLE_AFTER {
                    backoff = RESTART_MIN;
                }
                tracing::warn!(worker = %name, %error, retry_in = ?backoff, "queue worker stopped on a Redis error; starting it again");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.cancelled() => {}
                }
                backoff = (backoff * 2).min(RESTART_MAX);
                generation += 1;
            }
        }
    }
    reaper_stop.cancel();
    let _ = reaper.await;

    // Handlers of failed generations are not awaited by apalis; wait for them here.
    let tracker = &dispatcher.tracker;
    tracker.close();
    if !timed_out {
        let deadline = deadline.unwrap_or_else(|| Instant::now() + drain_timeout);
        timed_out = tokio::time::timeout_at(deadline, tracker.wait()).await.is_err();
    }
    if timed_out {
        let abandoned = tracker.len();
        dispatcher.abort.cancel();
        tracker.wait().await; // dropping the handler futures is immediate
        return Err(QueueError::DrainTimedOut { worker: worker_id.to_string(), abandoned, timeout: drain_timeout });
    }
    Ok(())
}

async fn run_generation<F, Fut>(
    queue: &Queue,
    name: &str,
    concurrency: usize,
    dispatcher: &Arc<Dispatcher<F>>,
    shutdown: &CancellationToken,
    drain_timeout: Duration,
) -> Generation
where
    F: Fn(TenantTask) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let storage = RedisStorage::<serde_json::Value>::new(queue.conn.clone())
        .with_config(queue.config.clone())
        .poll_with_interval(queue.settings.idle_poll);
    // The payload is decoded here rather than by apalis: an undecodable entry would stop
    // the apalis worker (and come back after every restart).
    let service = {
        let dispatcher = dispatcher.clone();
        move |payload: serde_json::Value| {
            let dispatcher = dispatcher.clone();
            async move { dispatcher.dispatch(payload).await }
        }
    };
    let ctx = WorkerContext::new(name);
    let worker = WorkerBuilder::new(&ctx).backend(storage).concurrency(concurrency).build(service);
    let run = worker.run();
    tokio::pin!(run);
    tokio::select! {
        // `run` first: its first poll starts the worker, so `stop` below cannot come too early.
        biased;
        result = &mut run => {
            return match result {
                Ok(()) if shutdown.is_cancelled() => Generation::Stopped { deadline: Instant::now() + drain_timeout },
                Ok(()) => Generation::Failed("the apalis worker stopped by itself".into()),
                Err(e) => Generation::Failed(e.to_string()),
            };
        }
        _ = shutdown.cancelled() => {}
    }
    let deadline = Instant::now() + drain_timeout;
    if let Err(e) = ctx.stop() {
        tracing::warn!(worker = %name, error = %e, "could not stop the apalis worker");
    }
    match tokio::time::timeout_at(deadline, &mut run).await {
        Ok(Ok(())) => Generation::Stopped { deadline },
        Ok(Err(e)) => {
            // Draining finished but the final acknowledgements failed: the entries come
            // back through orphan recovery. Nothing else to do at shutdown.
            tracing::warn!(worker = %name, error = %e, "queue worker could not acknowledge its last tasks at shutdown");
            Generation::Stopped { deadline }
        }
        Err(_) => Generation::DrainTimedOut,
    }
}

async fn reap_periodically(queue: Queue, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(REAP_INTERVAL) => {}
            _ = stop.cancelled() => return,
        }
        match queue.reap_finished().await {
            Ok(n) if n > 0 => tracing::debug!(queue = queue.name(), deleted = n, "deleted finished queue entries"),
            Ok(_) => {}
            Err(e) => tracing::debug!(queue = queue.name(), error = %e, "could not delete finished queue entries"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_round_trip_through_json() {
        let task = TenantTask { run_id: "r1".into(), tenant: "acme".into(), dispatch: 3, queued_at_ms: 42 };
        let value = serde_json::to_value(&task).unwrap();
        assert_eq!(serde_json::from_value::<TenantTask>(value).unwrap(), task);
    }

    #[test]
    fn unreachable_errors_hide_the_password() {
        let err = QueueError::Unreachable {
            url: redact_url_str("redis://:hunter2@127.0.0.1:1/0"),
            source: redis::RedisError::from((redis::ErrorKind::Io, "refused")),
        };
        assert!(!err.to_string().contains("hunter2"), "{err}");
        assert!(err.to_string().contains("127.0.0.1:1"), "{err}");
    }

    #[tokio::test]
    async fn bad_urls_and_settings_are_refused_without_the_password() {
        let err = Queue::connect("redis://:hunter2@[not-a-host/0", "t").await.unwrap_err();
        assert!(matches!(err, QueueError::Unreachable { .. }), "{err:?}");
        assert!(!format!("{err} {err:?}").contains("hunter2"), "{err:?}");
        let sub_second = QueueSettings { heartbeat_interval: Duration::from_millis(500), ..QueueSettings::default() };
        let err = Queue::connect_with("redis://127.0.0.1:1", "t", sub_second).await.unwrap_err();
        assert!(matches!(err, QueueError::Invalid(_)), "{err:?}");
    }
}
