//! The apalis queue against real Redis: a backlog and single pushes each run once (rates printed, not asserted), two worker processes, a worker killed mid-task, graceful shutdown and drain timeout, bad entries, and a Redis outage.
//!
//! Child processes are this test binary again, running the ignored `child_worker` test.
//! Every test uses its own key prefix and deletes its keys at the end (also on panic).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use apalis::prelude::{TaskBuilder, WorkerContext};
use redis::AsyncCommands;
use tenantry::runtime::queue::{Queue, QueueError, TenantTask, run_worker};
use tokio_util::sync::CancellationToken;

fn redis_url() -> String {
    std::env::var("TENANTRY_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_string())
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// A key prefix unique to this process and call, whose keys are deleted on drop.
struct Prefix(String);

impl Prefix {
    fn new(name: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        Self(format!("tq_{name}_{}_{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst)))
    }
}

impl Drop for Prefix {
    fn drop(&mut self) {
        cleanup(&redis_url(), &self.0);
    }
}

/// SCAN + DEL of everything under the prefix, and our member of the one key apalis writes
/// outside it (a global list of queues).
fn cleanup(url: &str, prefix: &str) {
    use redis::Commands;
    let Ok(mut conn) = redis::Client::open(url).and_then(|c| c.get_connection()) else {
        return;
    };
    let keys: Vec<String> = match conn.scan_match::<_, String>(format!("{prefix}:*")) {
        Ok(iter) => iter.filter_map(Result::ok).collect(),
        Err(_) => return,
    };
    for chunk in keys.chunks(500) {
        let _: redis::RedisResult<()> = conn.del(chunk);
    }
    let _: redis::RedisResult<()> = conn.zrem("core:apalis:queues:list", format!("{prefix}:queue:workers"));
}

/// Keys matching `pattern` on the test Redis (SCAN, not KEYS).
fn keys_matching(pattern: &str) -> Vec<String> {
    use redis::Commands;
    let mut conn = redis::Client::open(redis_url()).unwrap().get_connection().unwrap();
    conn.scan_match::<_, String>(pattern).unwrap().filter_map(Result::ok).collect()
}

async fn connect(url: &str, prefix: &str) -> Queue {
    match Queue::connect(url, prefix).await {
        Ok(q) => q,
        Err(e) => panic!(
            "Redis is not reachable ({e}). Start it with `source deploy/local/services.sh && ensure_redis` \
             or point TENANTRY_TEST_REDIS_URL at one."
        ),
    }
}

async fn redis_conn(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap()
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes; returns whether it held.
async fn eventually<F, Fut>(timeout: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if cond().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn tasks(run: &str, prefix: &str, n: usize) -> Vec<TenantTask> {
    (0..n).map(|i| TenantTask::new(run, format!("{prefix}{i:05}"), 1)).collect()
}

async fn workers_registered(queue: &Queue, conn: &mut redis::aio::MultiplexedConnection) -> usize {
    conn.zcard(queue.apalis_config().workers_set()).await.unwrap()
}

async fn held_by(queue: &Queue, conn: &mut redis::aio::MultiplexedConnection, worker: &str) -> usize {
    conn.scard(queue.apalis_config().inflight_set_for(&WorkerContext::new(worker))).await.unwrap()
}

/// What in-process handlers saw: each task with the time (Unix ms) its handler started.
type Receipts = Arc<Mutex<Vec<(TenantTask, i64)>>>;

fn recorder(receipts: &Receipts) -> impl Fn(TenantTask) -> futures::future::Ready<()> + Send + Sync + Clone + 'static {
    let receipts = receipts.clone();
    move |task| {
        receipts.lock().unwrap().push((task, now_ms()));
        futures::future::ready(())
    }
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn counts<'a>(tenants: impl Iterator<Item = &'a str>) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for t in tenants {
        *counts.entry(t.to_string()).or_insert(0) += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_and_single_pushes_each_run_once_and_leave_nothing_behind() {
    const N: usize = 5000;
    let prefix = Prefix::new("tput");
    let queue = connect(&redis_url(), &prefix.0).await;
    let mut conn = redis_conn(&redis_url()).await;
    let receipts: Receipts = Arc::default();
    let shutdown = CancellationToken::new();
    let worker_id = format!("tput-{}", std::process::id());
    let worker = tokio::spawn({
        let (queue, handler, shutdown, id) = (queue.clone(), recorder(&receipts), shutdown.clone(), worker_id.clone());
        async move { run_worker(&queue, &id, 32, handler, shutdown, Duration::from_secs(10)).await }
    });
    assert!(
        eventually(Duration::from_secs(5), || async { workers_registered(&queue, &mut conn.clone()).await == 1 }).await
    );

    // A backlog of N pushed at once: drain rate, and latency including the wait behind it.
    let batch = tasks("r1", "t", N);
    let started = Instant::now();
    queue.push_many(batch).await.unwrap();
    let pushed = started.elapsed();
    let all_in = eventually(Duration::from_secs(60), || async { receipts.lock().unwrap().len() >= N }).await;
    let drained = started.elapsed();
    assert!(all_in, "only {} of {N} tasks handled within 60 s", receipts.lock().unwrap().len());

    // Single entries into an idle worker: pickup latency.
    for i in 0..200 {
        queue.push(TenantTask::new("r2", format!("idle{i:05}"), 1)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(eventually(Duration::from_secs(60), || async { receipts.lock().unwrap().len() >= N + 200 }).await);
    tokio::time::sleep(Duration::from_millis(500)).await; // room for duplicates to show up
    shutdown.cancel();
    worker.await.unwrap().expect("worker stops cleanly");

    let receipts = receipts.lock().unwrap().clone();
    let seen = counts(receipts.iter().map(|(t, _)| t.tenant.as_str()));
    assert_eq!(receipts.len(), N + 200, "every task handled exactly once");
    assert_eq!(seen.len(), N + 200, "no task handled twice");
    let lat = |run: &str| {
        let mut l: Vec<i64> =
            receipts.iter().filter(|(t, _)| t.run_id == run).map(|(t, at)| at - t.queued_at_ms).collect();
        l.sort_unstable();
        l
    };
    let (backlog, idle) = (lat("r1"), lat("r2"));
    let rate = N as f64 / drained.as_secs_f64();
    eprintln!(
        "queue throughput: {N} tasks pushed in {:.0} ms ({:.0}/s), handled end to end in {:.0} ms = {rate:.0} tasks/s; \
         backlog latency p50 {} ms p99 {} ms max {} ms; idle pickup latency p50 {} ms p99 {} ms max {} ms",
        pushed.as_secs_f64() * 1e3,
        N as f64 / pushed.as_secs_f64(),
        drained.as_secs_f64() * 1e3,
        percentile(&backlog, 0.5),
        percentile(&backlog, 0.99),
        backlog[backlog.len() - 1],
        percentile(&idle, 0.5),
        percentile(&idle, 0.99),
        idle[idle.len() - 1],
    );
    // The rates are printed, not asserted: on a shared 2-core machine a timed assertion
    // fails whenever something else runs. The throughput target is checked by
    // `deploy/local/bench.sh` against a baseline measured in the same run.

    // Memory: every entry was acknowledged, and after reaping (workers also reap every few
    // seconds) nothing of the finished tasks remains.
    let c = queue.apalis_config();
    assert_eq!(held_by(&queue, &mut conn, &worker_id).await, 0, "everything acknowledged");
    assert_eq!(conn.scard::<_, usize>(c.dead_jobs_set()).await.unwrap(), 0);
    queue.reap_finished().await.unwrap();
    assert_eq!(conn.hlen::<_, usize>(c.job_data_hash()).await.unwrap(), 0, "payloads deleted");
    assert_eq!(conn.scard::<_, usize>(c.done_jobs_set()).await.unwrap(), 0, "done set emptied");
    let meta = keys_matching(&format!("{}:*", c.job_meta_hash()));
    assert!(meta.is_empty(), "{} metadata hashes left, e.g. {:?}", meta.len(), meta.first());
    assert_eq!(workers_registered(&queue, &mut conn).await, 0, "a cleanly stopped worker unregisters");
}

/// More entries than Lua can `unpack` (about 8,000) waiting before any worker starts. With
/// apalis's own push they all sit in its scheduled set, and its fetch script, which moves
/// every due entry in one `RPUSH ... unpack(ids)`, fails on every call: the queue is stuck.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_larger_than_a_lua_unpack_drains() {
    const N: usize = 12_000;
    let prefix = Prefix::new("backlog");
    let queue = connect(&redis_url(), &prefix.0).await;
    queue.push_many(tasks("r1", "t", N)).await.unwrap();
    assert_eq!(queue.waiting().await.unwrap(), N as u64, "pushed entries are counted as waiting");
    let receipts: Receipts = Arc::default();
    let shutdown = CancellationToken::new();
    let worker = tokio::spawn({
        let (queue, handler, shutdown) = (queue.clone(), recorder(&receipts), shutdown.clone());
        async move { run_worker(&queue, "backlog", 32, handler, shutdown, Duration::from_secs(5)).await }
    });
    let started = Instant::now();
    let all_in = eventually(Duration::from_secs(60), || async { receipts.lock().unwrap().len() >= N }).await;
    let took = started.elapsed();
    shutdown.cancel();
    worker.await.unwrap().unwrap();
    let n = receipts.lock().unwrap().len();
    assert!(all_in, "only {n} of {N} waiting entries were handled");
    eprintln!("backlog: {N} entries waiting before the worker started, drained in {took:?}");
    assert_eq!(counts(receipts.lock().unwrap().iter().map(|(t, _)| t.tenant.as_str())).len(), N);
}

/// Spawns this test binary as a worker process (see `child_worker`).
fn spawn_child(prefix: &str, id: &str, concurrency: usize, hold_ms: u64) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_worker", "--ignored", "--nocapture", "--test-threads=1"])
        .env("TQ_CHILD_PREFIX", prefix)
        .env("TQ_CHILD_ID", id)
        .env("TQ_CHILD_CONCURRENCY", concurrency.to_string())
        .env("TQ_CHILD_HOLD_MS", hold_ms.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn child worker")
}

/// Kills the child on drop, so that a failing test leaves no process behind.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Receipts written by child workers: (tenant, worker id, Unix ms at handler start).
async fn child_receipts(conn: &mut redis::aio::MultiplexedConnection, prefix: &str) -> Vec<(String, String, i64)> {
    let raw: Vec<String> = conn.lrange(format!("{prefix}:test:received"), 0, -1).await.unwrap();
    raw.iter()
        .map(|r| {
            let mut p = r.split('|');
            (p.next().unwrap().to_string(), p.next().unwrap().to_string(), p.next().unwrap().parse().unwrap())
        })
        .collect()
}

/// Entry point of child worker processes; does nothing unless spawned by another test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "entry point for worker processes spawned by the other tests"]
async fn child_worker() {
    let (Ok(prefix), Ok(id)) = (std::env::var("TQ_CHILD_PREFIX"), std::env::var("TQ_CHILD_ID")) else {
        return;
    };
    let concurrency: usize = std::env::var("TQ_CHILD_CONCURRENCY").unwrap().parse().unwrap();
    let hold = Duration::from_millis(std::env::var("TQ_CHILD_HOLD_MS").unwrap().parse().unwrap());
    let queue = connect(&redis_url(), &prefix).await;
    let conn = redis_conn(&redis_url()).await;
    let shutdown = CancellationToken::new();
    let handler = {
        let (conn, prefix, id) = (conn.clone(), prefix.clone(), id.clone());
        move |task: TenantTask| {
            let (mut conn, prefix, id) = (conn.clone(), prefix.clone(), id.clone());
            async move {
                let receipt = format!("{}|{id}|{}", task.tenant, now_ms());
                let _: () = conn.rpush(format!("{prefix}:test:received"), receipt).await.unwrap();
                tokio::time::sleep(hold).await;
            }
        }
    };
    let stopper = tokio::spawn({
        let (mut conn, shutdown, key) = (conn.clone(), shutdown.clone(), format!("{prefix}:test:stop"));
        async move {
            while !conn.exists::<_, bool>(&key).await.unwrap_or(false) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            shutdown.cancel();
        }
    });
    run_worker(&queue, &id, concurrency, handler, shutdown, Duration::from_secs(10)).await.unwrap();
    stopper.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_worker_processes_share_one_queue() {
    const N: usize = 2000;
    let prefix = Prefix::new("two");
    let queue = connect(&redis_url(), &prefix.0).await;
    let mut conn = redis_conn(&redis_url()).await;
    let ids = [format!("a-{}", std::process::id()), format!("b-{}", std::process::id())];
    let mut children: Vec<ChildGuard> = ids.iter().map(|id| ChildGuard(spawn_child(&prefix.0, id, 8, 1))).collect();
    assert!(
        eventually(Duration::from_secs(30), || async { workers_registered(&queue, &mut conn.clone()).await == 2 })
            .await,
        "both child workers register"
    );

    queue.push_many(tasks("r1", "t", N)).await.unwrap();
    let all_in =
        eventually(Duration::from_secs(60), || async { child_receipts(&mut conn.clone(), &prefix.0).await.len() >= N })
            .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _: () = conn.set(format!("{}:test:stop", prefix.0), 1).await.unwrap();
    for child in &mut children {
        let status = child.0.wait().unwrap();
        assert!(status.success(), "child worker exits cleanly: {status}");
    }

    let receipts = child_receipts(&mut conn, &prefix.0).await;
    assert!(all_in, "only {} of {N} handled", receipts.len());
    let seen = counts(receipts.iter().map(|(t, _, _)| t.as_str()));
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "handled more than once: {twice:?}");
    assert_eq!(seen.len(), N);
    let per_worker = counts(receipts.iter().map(|(_, w, _)| w.as_str()));
    eprintln!("two workers: {per_worker:?}");
    for id in &ids {
        assert!(per_worker.get(id).copied().unwrap_or(0) > 0, "worker {id} got no task: {per_worker:?}");
    }
    assert_eq!(queue.waiting().await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_of_a_killed_worker_come_back_after_the_orphan_timeout() {
    let prefix = Prefix::new("kill");
    let queue = connect(&redis_url(), &prefix.0).await;
    let mut conn = redis_conn(&redis_url()).await;
    let victim = format!("victim-{}", std::process::id());
    let mut child = ChildGuard(spawn_child(&prefix.0, &victim, 4, 600_000));
    assert!(
        eventually(Duration::from_secs(30), || async { workers_registered(&queue, &mut conn.clone()).await == 1 })
            .await
    );

    queue.push_many(tasks("r1", "t", 6)).await.unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async { child_receipts(&mut conn.clone(), &prefix.0).await.len() == 4 })
            .await,
        "the child starts 4 tasks"
    );
    assert_eq!(queue.waiting().await.unwrap(), 2, "two tasks wait for a free slot");
    assert_eq!(held_by(&queue, &mut conn, &victim).await, 4, "the child holds exactly its running tasks");
    let in_victim: HashSet<String> =
        child_receipts(&mut conn, &prefix.0).await.into_iter().map(|(t, _, _)| t).collect();

    child.0.kill().unwrap(); // SIGKILL
    child.0.wait().unwrap();
    let killed_at = now_ms();

    let receipts: Receipts = Arc::default();
    let shutdown = CancellationToken::new();
    let rescuer = tokio::spawn({
        let (queue, handler, shutdown) = (queue.clone(), recorder(&receipts), shutdown.clone());
        async move { run_worker(&queue, "rescuer", 8, handler, shutdown, Duration::from_secs(5)).await }
    });
    let all_back = eventually(Duration::from_secs(45), || async { receipts.lock().unwrap().len() >= 6 }).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    shutdown.cancel();
    rescuer.await.unwrap().unwrap();

    let receipts = receipts.lock().unwrap().clone();
    let delays: BTreeMap<String, i64> =
        receipts.iter().map(|(t, at)| (t.tenant.clone(), at - killed_at)).collect::<BTreeMap<_, _>>();
    let (held, waited): (BTreeMap<_, _>, BTreeMap<_, _>) = delays.iter().partition(|(t, _)| in_victim.contains(*t));
    eprintln!(
        "SIGKILL: ms from the kill to delivery elsewhere; held by the killed worker {held:?}, waiting {waited:?}"
    );
    assert!(all_back, "only {} of 6 tasks came back: {delays:?}", receipts.len());
    assert_eq!(receipts.len(), 6, "each task delivered once more, not twice: {delays:?}");
    for (tenant, delay) in &delays {
        if in_victim.contains(tenant) {
            // 5 missed heartbeats of 2 s, checked at the rescuer's next heartbeat (second resolution).
            assert!((6_000..=16_000).contains(delay), "{tenant} came back after {delay} ms");
        } else {
            assert!(*delay < 2_000, "waiting task {tenant} took {delay} ms");
        }
    }
    assert_eq!(workers_registered(&queue, &mut conn).await, 0, "the dead worker was removed by the rescuer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_in_flight_and_leaves_the_rest_queued() {
    let prefix = Prefix::new("stop");
    let queue = connect(&redis_url(), &prefix.0).await;
    let mut conn = redis_conn(&redis_url()).await;
    let started = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(AtomicUsize::new(0));
    let handler = {
        let (started, finished) = (started.clone(), finished.clone());
        move |_task: TenantTask| {
            let (started, finished) = (started.clone(), finished.clone());
            async move {
                started.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(1500)).await;
                finished.fetch_add(1, Ordering::SeqCst);
            }
        }
    };
    queue.push_many(tasks("r1", "t", 20)).await.unwrap();
    let shutdown = CancellationToken::new();
    let worker = tokio::spawn({
        let (queue, shutdown) = (queue.clone(), shutdown.clone());
        async move { run_worker(&queue, "drainer", 4, handler, shutdown, Duration::from_secs(10)).await }
    });
    assert!(eventually(Duration::from_secs(5), || async { started.load(Ordering::SeqCst) == 4 }).await);
    let cancelled = Instant::now();
    shutdown.cancel();
    worker.await.unwrap().expect("clean drain");
    let took = cancelled.elapsed();
    eprintln!("shutdown: run_worker returned {took:?} after cancel with 4 handlers of 1.5 s in flight");
    assert_eq!(started.load(Ordering::SeqCst), 4, "nothing new started after the cancel");
    assert_eq!(finished.load(Ordering::SeqCst), 4, "run_worker returned only after in-flight handlers finished");
    assert!(took >= Duration::from_millis(1000), "returned before the handlers could finish: {took:?}");
    assert_eq!(queue.waiting().await.unwrap(), 16, "tasks not fetched stay in the queue");
    assert_eq!(held_by(&queue, &mut conn, "drainer").await, 0, "in-flight tasks acknowledged");
    assert_eq!(workers_registered(&queue, &mut conn).await, 0);

    // The next worker gets exactly the rest.
    let receipts: Receipts = Arc::default();
    let shutdown = CancellationToken::new();
    let next = tokio::spawn({
        let (queue, handler, shutdown) = (queue.clone(), recorder(&receipts), shutdown.clone());
        async move { run_worker(&queue, "next", 4, handler, shutdown, Duration::from_secs(5)).await }
    });
    assert!(eventually(Duration::from_secs(10), || async { receipts.lock().unwrap().len() >= 16 }).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    shutdown.cancel();
    next.await.unwrap().unwrap();
    assert_eq!(counts(receipts.lock().unwrap().iter().map(|(t, _)| t.tenant.as_str())).len(), 16);
    assert_eq!(receipts.lock().unwrap().len(), 16);

    // A handler that outlives the drain timeout is cancelled and reported.
    queue.push_many(tasks("r2", "slow", 2)).await.unwrap();
    let running = Arc::new(AtomicUsize::new(0));
    let stuck = {
        let running = running.clone();
        move |_task: TenantTask| {
            let running = running.clone();
            async move {
                running.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_secs(60)).await;
            }
        }
    };
    let shutdown = CancellationToken::new();
    let worker = tokio::spawn({
        let (queue, shutdown) = (queue.clone(), shutdown.clone());
        async move { run_worker(&queue, "stuck", 4, stuck, shutdown, Duration::from_millis(300)).await }
    });
    assert!(eventually(Duration::from_secs(5), || async { running.load(Ordering::SeqCst) == 2 }).await);
    let cancelled = Instant::now();
    shutdown.cancel();
    let result = worker.await.unwrap();
    eprintln!("drain timeout: returned after {:?}: {result:?}", cancelled.elapsed());
    assert!(cancelled.elapsed() < Duration::from_secs(3));
    match result {
        Err(e @ QueueError::DrainTimedOut { abandoned: 2, .. }) => {
            assert!(e.to_string().contains("dispatched again"), "{e}")
        }
        other => panic!("expected a drain timeout with 2 abandoned handlers, got {other:?}"),
    }
    assert_eq!(held_by(&queue, &mut conn, "stuck").await, 2, "unacknowledged: orphan recovery brings them back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panics_and_foreign_entries_neither_stop_the_worker_nor_retry() {
    let prefix = Prefix::new("panic");
    let queue = connect(&redis_url(), &prefix.0).await;
    let mut conn = redis_conn(&redis_url()).await;
    // An entry that is not a TenantTask, pushed the way apalis pushes.
    let foreign = TaskBuilder::new(br#"{"something":"else"}"#.to_vec()).build();
    apalis_redis::queries::push_tasks(&mut conn, queue.apalis_config(), &[foreign]).await.unwrap();
    queue.push_many(tasks("r1", "t", 3)).await.unwrap();

    let calls: Receipts = Arc::default();
    let handler = {
        let calls = calls.clone();
        move |task: TenantTask| {
            calls.lock().unwrap().push((task.clone(), now_ms()));
            async move {
                if task.tenant == "t00001" {
                    panic!("handler bug on {}", task.tenant);
                }
            }
        }
    };
    let shutdown = CancellationToken::new();
    let worker = tokio::spawn({
        let (queue, shutdown) = (queue.clone(), shutdown.clone());
        async move { run_worker(&queue, "panicky", 2, handler, shutdown, Duration::from_secs(5)).await }
    });
    assert!(eventually(Duration::from_secs(5), || async { calls.lock().unwrap().len() >= 3 }).await);
    // Long enough for an apalis retry (it re-schedules failures after ~1 s) to show up.
    tokio::time::sleep(Duration::from_secs(3)).await;
    queue.push(TenantTask::new("r2", "after", 1)).await.unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async { calls.lock().unwrap().iter().any(|(t, _)| t.tenant == "after") })
            .await,
        "the worker still runs after a panic and a foreign entry"
    );
    shutdown.cancel();
    worker.await.unwrap().expect("clean stop");
    let seen = counts(calls.lock().unwrap().iter().map(|(t, _)| t.tenant.as_str()));
    assert_eq!(seen.get("t00001"), Some(&1), "a panicking task is not retried: {seen:?}");
    assert_eq!(seen.len(), 4);
    assert_eq!(seen.values().sum::<usize>(), 4);
    let c = queue.apalis_config();
    assert_eq!(held_by(&queue, &mut conn, "panicky").await, 0, "all five entries acknowledged");
    assert_eq!(queue.waiting().await.unwrap(), 0);
    assert_eq!(conn.zcard::<_, usize>(c.scheduled_jobs_set()).await.unwrap(), 0, "nothing scheduled for retry");
    assert_eq!(conn.scard::<_, usize>(c.dead_jobs_set()).await.unwrap(), 0, "nothing given up on");
}

/// A redis-server of our own on a free port, so that the shared one is never disturbed.
struct OwnRedis {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

const OWN_PASSWORD: &str = "s3cr3t-queue-pw";

impl OwnRedis {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut r = Self { child: None, port, dir: tempfile::tempdir().unwrap() };
        r.restart();
        r
    }

    fn url(&self) -> String {
        format!("redis://:{OWN_PASSWORD}@127.0.0.1:{}", self.port)
    }

    /// Starts (again) on the same port and directory. The append-only file survives a
    /// SIGKILL, like a production Redis with persistence.
    fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "yes", "--appendfsync", "always", "--requirepass", OWN_PASSWORD])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("redis-server must be installed (`source deploy/local/services.sh && ensure_redis` installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while redis::Client::open(self.url()).and_then(|c| c.get_connection()).is_err() {
            assert!(Instant::now() < deadline, "own redis-server on port {} did not start", self.port);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_survives_a_redis_outage() {
    let mut redis = OwnRedis::start();
    let url = redis.url();
    let queue = connect(&url, "outage").await;
    let conn = redis_conn(&url).await;
    let receipts: Receipts = Arc::default();
    let handler = {
        let receipts = receipts.clone();
        move |task: TenantTask| {
            receipts.lock().unwrap().push((task.clone(), now_ms()));
            async move {
                if task.tenant.starts_with("slow") {
                    tokio::time::sleep(Duration::from_secs(3)).await;
                }
            }
        }
    };
    let shutdown = CancellationToken::new();
    let worker = tokio::spawn({
        let (queue, shutdown) = (queue.clone(), shutdown.clone());
        async move { run_worker(&queue, "survivor", 4, handler, shutdown, Duration::from_secs(10)).await }
    });
    let handled = |prefix: &'static str| {
        let receipts = receipts.clone();
        move || {
            let n = receipts.lock().unwrap().iter().filter(|(t, _)| t.tenant.starts_with(prefix)).count();
            futures::future::ready(n)
        }
    };

    queue.push_many(tasks("r1", "before", 10)).await.unwrap();
    let before = handled("before");
    assert!(eventually(Duration::from_secs(10), || async { before().await == 10 }).await);
    assert!(
        eventually(Duration::from_secs(5), || async { held_by(&queue, &mut conn.clone(), "survivor").await == 0 })
            .await
    );

    // Two handlers are running when Redis dies.
    queue.push_many(tasks("r1", "slow", 2)).await.unwrap();
    let slow = handled("slow");
    assert!(eventually(Duration::from_secs(5), || async { slow().await == 2 }).await);
    redis.kill();
    let down_at = Instant::now();
    let err = queue.push(TenantTask::new("r1", "during", 1)).await.expect_err("push while Redis is down");
    eprintln!("redis outage: push fails with: {err}");
    assert!(err.is_transient());
    assert!(!format!("{err} {err:?}").contains(OWN_PASSWORD), "the password leaks: {err:?}");
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(!worker.is_finished(), "run_worker must keep trying while Redis is down");

    redis.restart();
    let up_at = Instant::now();
    // The connection manager reconnects on its own schedule: right after the restart a push
    // may still meet the outage's error (transient). What counts is that pushes work again.
    let pushed = eventually(Duration::from_secs(10), || async {
        match queue.push_many(tasks("r1", "after", 10)).await {
            Ok(()) => true,
            Err(e) => {
                assert!(e.is_transient(), "{e}");
                false
            }
        }
    })
    .await;
    assert!(pushed, "pushes still fail 10s after Redis came back");
    let after = handled("after");
    let recovered = eventually(Duration::from_secs(30), || async { after().await == 10 }).await;
    let resumed = up_at.elapsed();
    assert!(recovered, "after the restart only {} of 10 new tasks were handled", after().await);
    // The slow tasks' acknowledgements died with the worker generation: orphan recovery
    // delivers them again once the old generation has missed its heartbeats.
    let redelivered = eventually(Duration::from_secs(40), || async { slow().await == 4 }).await;
    let slow_receipts: Vec<i64> = {
        let r = receipts.lock().unwrap();
        r.iter().filter(|(t, _)| t.tenant.starts_with("slow")).map(|(_, at)| *at).collect()
    };
    let after_restart = up_at.elapsed();
    eprintln!(
        "redis outage: down {:?}; new tasks handled {resumed:?} after the restart; the 2 tasks in flight at the \
         outage were delivered again: {redelivered} (slow receipts at {slow_receipts:?}, checked until {after_restart:?} \
         after the restart)",
        up_at - down_at
    );
    assert!(redelivered, "tasks whose acknowledgement was lost in the outage must come back");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(slow().await, 4, "each delivered exactly once more");

    shutdown.cancel();
    worker.await.unwrap().expect("the worker stops cleanly after the outage");
    let seen = counts(receipts.lock().unwrap().iter().map(|(t, _)| t.tenant.as_str()));
    assert_eq!(seen.len(), 22);
    assert!(seen.iter().all(|(t, n)| *n == 1 || t.starts_with("slow")), "{seen:?}");
}
