//! The scheduler against real PostgreSQL and Redis with real `tenantry serve` processes: ticks survive a Redis or catalog outage, its Redis state stays bounded, overlap = "queue" keeps one waiting run.
//!
//! Ticks are placed a few seconds ahead of the test's clock with a seconds list
//! (`"17,42 * * * * *"`), so each test knows which tick the outage covers and which one
//! comes next, and does not wait for a minute boundary.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Timelike, Utc};
use support::{WorkerProcess, clear_redis, connect_db, exec, pg_admin, pg_url, redis_url, tenantry, unique};

/// Where the fleet's tenants come from.
enum CatalogKind {
    Static,
    /// `[catalog.sql]` reading `public.fleet` of the fleet's database.
    Sql,
}

/// `n` schema tenants in a fresh database with a `public.hits` table, and a config with
/// its own Redis prefix. Cleaned up by `drop`.
struct Fleet {
    name: String,
    redis_url: String,
    dir: tempfile::TempDir,
}

impl Fleet {
    async fn new(n: usize, redis_url: &str, catalog: CatalogKind) -> Fleet {
        let name = unique("tsch");
        let mut admin = pg_admin().await;
        exec(&mut admin, &format!("CREATE DATABASE {name}")).await;
        let mut db = connect_db(&name).await;
        let mut ddl = String::from(
            "CREATE TABLE public.hits (tenant text NOT NULL, at timestamptz NOT NULL DEFAULT now());\n\
             CREATE TABLE public.fleet (id text, name text, status text, labels jsonb, placements jsonb);\n",
        );
        for i in 0..n {
            ddl.push_str(&format!(
                "CREATE SCHEMA \"tenant_t{i:03}\";\n\
                 INSERT INTO public.fleet VALUES ('t{i:03}', NULL, 'active', '{{}}', '{{\"app\": {{}}}}');\n"
            ));
        }
        exec(&mut db, &ddl).await;
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("workflows")).unwrap();
        let mut config = format!(
            r#"
[redis]
url = "{redis_url}"
prefix = "{name}"

[runtime]
worker_concurrency = 8
lease = "2s"
dispatch_grace = "3s"
sweep_interval = "200ms"
drain_timeout = "2s"

[hosts.main]
engine = "postgres"
url = "{pg}"
max_concurrency = 8

[services.app]
engine = "postgres"
isolation = "schema"
host = "main"
database = "{name}"
schema = "tenant_{{tenant}}"
"#,
            pg = pg_url()
        );
        match catalog {
            CatalogKind::Static => {
                for i in 0..n {
                    config.push_str(&format!("\n[[catalog.tenants]]\nid = \"t{i:03}\"\nservices = [\"app\"]\n"));
                }
            }
            CatalogKind::Sql => config.push_str(&format!(
                "\n[catalog]\nsource = \"sql\"\n\n[catalog.sql]\nhost = \"main\"\ndatabase = \"{name}\"\n\
                 query = \"SELECT id, name, status, labels, placements FROM public.fleet\"\n"
            )),
        }
        std::fs::write(dir.path().join("tenantry.toml"), config).unwrap();
        Fleet { name, redis_url: redis_url.to_string(), dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn log(&self) -> PathBuf {
        self.path().join("serve.log")
    }

    fn workflow(&self, name: &str, text: &str) {
        std::fs::write(self.path().join("workflows").join(format!("{name}.toml")), text).unwrap();
    }

    /// `tenantry serve` logging at info level to `serve.log`, once its scheduler is up.
    fn serve(&self) -> WorkerProcess {
        let mut serve = WorkerProcess::spawn_logged(self.path(), "serve", "info", &self.log());
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.serve_log().contains("scheduled") {
            if let Some(status) = serve.0.try_wait().unwrap() {
                panic!("serve exited with {status} before scheduling:\n{}", self.serve_log());
            }
            assert!(Instant::now() < deadline, "serve did not start its scheduler:\n{}", self.serve_log());
            std::thread::sleep(Duration::from_millis(100));
        }
        serve
    }

    fn serve_log(&self) -> String {
        std::fs::read_to_string(self.log()).unwrap_or_default()
    }

    /// Every run as (tick in ms, state); panics on a run that is not scheduled.
    fn runs(&self) -> Vec<(i64, String)> {
        let out = tenantry(self.path(), &["runs", "--limit", "1000", "--json"], &[]);
        assert_eq!(out.code(), 0, "{}", out.all());
        let runs: Vec<serde_json::Value> = serde_json::from_str(&out.stdout()).unwrap();
        let mut ticks: Vec<(i64, String)> = runs
            .iter()
            .map(|r| {
                let trigger = r["trigger"].as_str().unwrap();
                let tick = trigger.strip_prefix("schedule@").unwrap_or_else(|| panic!("not scheduled: {r}"));
                (tick.parse().unwrap(), r["state"].as_str().unwrap().to_string())
            })
            .collect();
        ticks.sort();
        ticks
    }

    /// Polls until a run of `tick` exists or `deadline` passes; the runs seen last.
    fn wait_for_run_of(&self, tick: DateTime<Utc>, deadline: DateTime<Utc>) -> Vec<(i64, String)> {
        loop {
            let runs = self.runs();
            if runs.iter().any(|(t, _)| *t == tick.timestamp_millis()) || Utc::now() > deadline {
                return runs;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    async fn drop(self) {
        if self.redis_url == redis_url() {
            clear_redis(&self.name).await;
        }
        let mut admin = pg_admin().await;
        exec(&mut admin, &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)).await;
    }
}

/// Two ticks a minute: `first`, `gap` seconds before the next. As a cron expression with a
/// seconds list, so no other tick falls between now and `first + gap`.
fn two_ticks(first: DateTime<Utc>, gap: u32) -> String {
    format!("{},{} * * * * *", first.second(), (first.second() + gap) % 60)
}

/// A whole second at least `lead` from now.
fn tick_in(lead: Duration) -> DateTime<Utc> {
    let t = Utc::now() + TimeDelta::from_std(lead).unwrap() + TimeDelta::seconds(1);
    t.with_nanosecond(0).unwrap()
}

fn sleep_until(t: DateTime<Utc>) {
    if let Ok(d) = (t - Utc::now()).to_std() {
        std::thread::sleep(d);
    }
}

fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

/// A `redis-server` of the test's own on a free port, without persistence: a restart
/// comes back empty. Killed on drop.
struct PrivateRedis {
    port: u16,
    child: Option<Child>,
}

impl PrivateRedis {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut redis = PrivateRedis { port, child: None };
        redis.spawn();
        redis
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server (apt-get install redis-server)");
        self.child = Some(child);
        let client = redis::Client::open(self.url()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match client.get_connection().and_then(|mut c| redis::cmd("PING").query::<String>(&mut c)) {
                Ok(_) => return,
                Err(e) if Instant::now() > deadline => panic!("redis-server on port {} did not answer: {e}", self.port),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// SIGKILL: connections drop, nothing is saved.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A new, empty redis-server on the same port.
    fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

const HIT: &str = "[[steps]]\nkind = \"sql\"\n\
                   sql = \"INSERT INTO public.hits (tenant) VALUES (current_setting('tenantry.tenant'))\"\n";

/// How long Redis stays down across the tick: longer than the Redis client's own
/// reconnect attempts (6 retries from 100 ms doubling, with jitter: 6 to 13 s), which hold
/// a command until Redis is back and would hide a lost tick behind a short outage.
const REDIS_OUTAGE: TimeDelta = TimeDelta::seconds(14);

/// Defect: `fire()` marked the tick before enqueueing and nothing retried a failed
/// enqueue, so a tick during a Redis outage was lost until the following tick.
#[tokio::test(flavor = "multi_thread")]
async fn redis_down_across_a_tick_the_tick_is_enqueued_when_redis_returns() {
    let mut redis = PrivateRedis::start();
    let fleet = Fleet::new(2, &redis.url(), CatalogKind::Static).await;
    let tick = tick_in(Duration::from_secs(10));
    let following = tick + TimeDelta::seconds(40);
    fleet.workflow("nightly", &format!("schedule = \"{}\"\ncatch_up = \"latest\"\n\n{HIT}", two_ticks(tick, 40)));
    let _serve = fleet.serve();
    assert!(Utc::now() < tick - TimeDelta::seconds(3), "serve took too long to start; the tick is too close");

    let down = tick - TimeDelta::seconds(1);
    sleep_until(down);
    redis.kill();
    sleep_until(down + REDIS_OUTAGE);
    redis.restart();
    let back = Utc::now();

    // The tick's run appears soon after Redis is back, well before the following tick.
    let runs = fleet.wait_for_run_of(tick, following - TimeDelta::seconds(5));
    assert!(
        runs.iter().any(|(t, _)| *t == ms(tick)),
        "no run for the tick at {tick} (Redis down {down} to {back}, following tick {following}); runs: {runs:?}\n{}",
        fleet.serve_log()
    );
    assert!(runs.iter().all(|(t, _)| *t == ms(tick)), "only the missed tick has run: {runs:?}");
    fleet.drop().await;
}

/// Defect: a catalog that failed at the tick lost the tick (it was marked before the
/// catalog was read, and never retried).
#[tokio::test(flavor = "multi_thread")]
async fn catalog_error_at_a_tick_the_tick_is_enqueued_when_the_catalog_returns() {
    let fleet = Fleet::new(2, &redis_url(), CatalogKind::Sql).await;
    let tick = tick_in(Duration::from_secs(10));
    let following = tick + TimeDelta::seconds(25);
    fleet.workflow("nightly", &format!("schedule = \"{}\"\n\n{HIT}", two_ticks(tick, 25)));
    let _serve = fleet.serve();
    assert!(Utc::now() < tick - TimeDelta::seconds(3), "serve took too long to start; the tick is too close");

    let mut db = connect_db(&fleet.name).await;
    sleep_until(tick - TimeDelta::seconds(2));
    exec(&mut db, "ALTER TABLE public.fleet RENAME TO fleet_gone").await;
    sleep_until(tick + TimeDelta::seconds(3));
    exec(&mut db, "ALTER TABLE public.fleet_gone RENAME TO fleet").await;

    let runs = fleet.wait_for_run_of(tick, following - TimeDelta::seconds(4));
    assert!(
        runs.iter().any(|(t, _)| *t == ms(tick)),
        "no run for the tick at {tick} (catalog broken from {} to {}); runs: {runs:?}\n{}",
        tick - TimeDelta::seconds(2),
        tick + TimeDelta::seconds(3),
        fleet.serve_log()
    );
    let log = fleet.serve_log();
    assert!(log.contains("cannot read the catalog"), "the failed attempt was reported:\n{log}");
    fleet.drop().await;
}

/// Keys under the fleet's prefix that are neither a run's nor the queue's.
async fn scheduler_keys(prefix: &str) -> Vec<String> {
    let client = redis::Client::open(redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{prefix}:*")).query_async(&mut conn).await.unwrap();
    let mut keys: Vec<String> = keys
        .into_iter()
        .filter(|k| {
            // Runs' own keys and the run index are not the scheduler's: `{prefix}:run:{id}…`,
            // and the global keys `{prefix}:{prefix}:runs…` (`runs:active` exists only while
            // a run is active, so a snapshot taken mid-run would differ from one between runs).
            let rest = &k[prefix.len() + 1..];
            let rest = rest.strip_prefix(&format!("{{{prefix}}}:")).unwrap_or(rest);
            !(rest.starts_with("run:") || rest.starts_with("runs") || rest.starts_with("queue"))
        })
        .collect();
    keys.sort();
    keys
}

/// Defect: one marker key per tick, kept 7 days: a per-second schedule left ~600,000.
#[tokio::test(flavor = "multi_thread")]
async fn tick_markers_are_bounded_one_hash_per_workflow_whatever_the_ticks() {
    let fleet = Fleet::new(1, &redis_url(), CatalogKind::Static).await;
    fleet.workflow("every_second", &format!("schedule = \"* * * * * *\"\n\n{HIT}"));
    let mut serve = fleet.serve();
    std::thread::sleep(Duration::from_secs(3));
    let early = scheduler_keys(&fleet.name).await;
    std::thread::sleep(Duration::from_secs(7));
    let late = scheduler_keys(&fleet.name).await;
    assert!(serve.terminate().success(), "serve drains and exits 0 on SIGTERM");

    let runs = fleet.runs();
    assert!(runs.len() >= 5, "about 10 ticks, each run done within the second: {runs:?}");
    assert_eq!(early, late, "the scheduler's keys grow with the ticks");
    let of_workflow: Vec<_> = late.iter().filter(|k| k.contains("every_second")).collect();
    assert_eq!(of_workflow.len(), 1, "one key per workflow: {late:?}");
    fleet.drop().await;
}

/// Defect: every tick while a run was going queued another run, so a long run piled up a
/// queue of waiting runs. overlap = "queue" keeps one.
#[tokio::test(flavor = "multi_thread")]
async fn overlap_queue_keeps_at_most_one_waiting_run() {
    let fleet = Fleet::new(1, &redis_url(), CatalogKind::Static).await;
    fleet.workflow(
        "long",
        "schedule = \"*/2 * * * * *\"\noverlap = \"queue\"\n\n[[steps]]\nkind = \"sql\"\nsql = \"SELECT pg_sleep(30)\"\n",
    );
    let serve = fleet.serve();
    std::thread::sleep(Duration::from_secs(11));
    let runs = fleet.runs();
    drop(serve);

    let states: Vec<&str> = runs.iter().map(|(_, s)| s.as_str()).collect();
    assert_eq!(states.iter().filter(|s| **s == "running").count(), 1, "{runs:?}");
    assert_eq!(states.iter().filter(|s| **s == "queued").count(), 1, "one run waits, no more: {runs:?}");
    let log = fleet.serve_log();
    let skipped = log.matches("already waiting (overlap = queue keeps one)").count();
    assert!(skipped >= 2, "the ticks after the waiting run were recorded as skipped ({skipped}):\n{log}");
    fleet.drop().await;
}

/// A run of no tenants, enough to exercise the store's writes.
fn empty_run(workflow: &str) -> tenantry::runtime::model::RunSpec {
    tenantry::runtime::model::RunSpec {
        id: tenantry::runtime::store::new_run_id(),
        workflow: workflow.to_string(),
        steps: Vec::new(),
        retry: Default::default(),
        timeout: tenantry::units::HumanDuration(Duration::from_secs(60)),
        run_concurrency: 1,
        host_limits: Default::default(),
        waves: Vec::new(),
        tenants: Default::default(),
        migrations: Default::default(),
        receipt_run: None,
        timezone: None,
        report: None,
        throttle: None,
    }
}

/// The guarantees under the scheduler, straight against Redis: one replica at a time holds
/// a workflow (until its claim expires), `done` never goes back, and a run whose tick is
/// refused leaves no key behind, so two replicas racing for a tick create one run.
#[tokio::test(flavor = "multi_thread")]
async fn a_tick_is_claimed_by_one_replica_recorded_once_and_a_refused_run_leaves_nothing() {
    use tenantry::runtime::model::Trigger;
    use tenantry::runtime::store::{RunStore, TickClaim, TickClaimed, TickDone};

    let prefix = unique("tsch_store");
    let url = tenantry::secret::SecretUrl::parse(&redis_url()).unwrap();
    let store = RunStore::connect(&url, &prefix).await.unwrap_or_else(|e| {
        panic!("{e}: start Redis with `bash deploy/local/test.sh`");
    });
    let claim = |owner: &str, tick_ms: i64| TickClaim { workflow: "w".into(), tick_ms, owner: owner.into() };
    let long = Duration::from_secs(60);
    assert_eq!(store.schedule_done("w", 1_000).await.unwrap(), 1_000, "first start: the floor");
    assert_eq!(store.schedule_done("w", 5_000).await.unwrap(), 1_000, "afterwards: what is recorded");

    // A claims tick 2000; B is kept out, for this tick and a newer one, until A is done.
    assert_eq!(store.claim_tick(&claim("a", 2_000), long).await.unwrap(), TickClaimed::Ok);
    match store.claim_tick(&claim("b", 2_000), long).await.unwrap() {
        TickClaimed::Busy { owner, tick_ms, expires_in } => {
            assert_eq!((owner.as_str(), tick_ms), ("a", 2_000));
            assert!(expires_in > Duration::from_secs(50) && expires_in <= long, "{expires_in:?}");
        }
        other => panic!("B claimed A's workflow: {other:?}"),
    }
    assert!(matches!(store.claim_tick(&claim("b", 3_000), long).await.unwrap(), TickClaimed::Busy { .. }));
    assert!(matches!(store.skip_tick(&claim("b", 2_000)).await.unwrap(), TickDone::Refused(_)));
    let trigger = Trigger::Schedule { tick_ms: 2_000 };
    let b_run = empty_run("w");
    let refused = store.create_scheduled(&b_run, &trigger, false, &claim("b", 2_000)).await.unwrap();
    assert!(matches!(refused, TickDone::Refused(ref why) if why.contains("a is working")), "{refused:?}");

    // A creates the run: recorded, published, claim given up.
    let a_run = empty_run("w");
    let created = store.create_scheduled(&a_run, &trigger, false, &claim("a", 2_000)).await.unwrap();
    assert_eq!(created, TickDone::Recorded);
    assert_eq!(store.schedule_done("w", 0).await.unwrap(), 2_000);
    assert_eq!(store.claim_tick(&claim("b", 2_000), long).await.unwrap(), TickClaimed::Done(2_000));
    // A replica whose claim expired meanwhile cannot create a second run of the tick.
    let late_run = empty_run("w");
    let again = store.create_scheduled(&late_run, &trigger, false, &claim("c", 2_000)).await.unwrap();
    assert!(matches!(again, TickDone::Refused(ref why) if why.contains("handled already")), "{again:?}");
    // Nor record an older tick: done never goes back.
    assert!(matches!(store.skip_tick(&claim("c", 1_500)).await.unwrap(), TickDone::Refused(_)));
    assert_eq!(store.schedule_done("w", 0).await.unwrap(), 2_000);

    let runs = store.list(10).await.unwrap();
    assert_eq!(runs.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), vec![a_run.id.as_str()]);
    assert_eq!(runs[0].trigger, "schedule@2000");
    assert_eq!(store.active().await.unwrap(), vec![a_run.id.clone()]);
    for refused in [&b_run.id, &late_run.id] {
        let client = redis::Client::open(redis_url()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let left: Vec<String> =
            redis::cmd("KEYS").arg(store.keys().run_pattern(refused)).query_async(&mut conn).await.unwrap();
        assert!(left.is_empty(), "a refused run left keys behind: {left:?}");
        let indexed: Option<f64> =
            redis::cmd("ZSCORE").arg(store.keys().runs()).arg(refused).query_async(&mut conn).await.unwrap();
        assert_eq!(indexed, None, "a refused run stayed in the run index");
    }

    // A claim that is not renewed expires: B takes over a tick that A claimed and dropped.
    assert_eq!(store.claim_tick(&claim("a", 3_000), Duration::from_millis(200)).await.unwrap(), TickClaimed::Ok);
    assert!(matches!(store.claim_tick(&claim("b", 3_000), long).await.unwrap(), TickClaimed::Busy { .. }));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(store.claim_tick(&claim("b", 3_000), long).await.unwrap(), TickClaimed::Ok);
    assert_eq!(store.skip_tick(&claim("b", 3_000)).await.unwrap(), TickDone::Recorded);
    assert_eq!(store.schedule_done("w", 0).await.unwrap(), 3_000);
    clear_redis(&prefix).await;
}
