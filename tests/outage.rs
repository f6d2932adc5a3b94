//! Redis unavailable while a run is in progress (SIGSTOP, then kill -9 and a restart from the append-only file): the worker waits and reconnects, nothing is lost or done twice.
//!
//! Each test starts its own password-protected `redis-server` on a free port (the machine's
//! Redis is never touched) and its own PostgreSQL database of 100 schema tenants.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::{Run, WorkerProcess, connect_db, exec, pg_admin, pg_url, tenantry_within, unique};

const TENANTS: usize = 100;
/// How long Redis is unavailable, at least (longer when `tenantry runs` needs longer to give up).
const OUTAGE: Duration = Duration::from_secs(5);
/// The whole test, whatever hangs.
const TEST_LIMIT: Duration = Duration::from_secs(300);
/// One CLI call.
const CLI_LIMIT: Duration = Duration::from_secs(60);

/// Process ids the watchdog kills when the test overruns.
#[derive(Clone, Default)]
struct Children(Arc<Mutex<BTreeSet<u32>>>);

impl Children {
    fn add(&self, pid: u32) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).insert(pid);
    }

    fn remove(&self, pid: u32) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(&pid);
    }
}

/// Bounds a test: when it is still running after `limit`, its child processes are killed
/// and the test binary exits with a failure (a hung test would otherwise hang CI and leave
/// a `redis-server` behind). Disarmed on drop.
struct Watchdog {
    _disarm: mpsc::Sender<()>,
}

impl Watchdog {
    fn arm(test: &'static str, limit: Duration, children: Children) -> Self {
        let (tx, rx) = mpsc::channel::<()>();
        std::thread::spawn(move || {
            if let Err(RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
                eprintln!("{test}: still running after {limit:?}; killing its child processes and failing");
                for pid in children.0.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                    let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
                }
                std::process::exit(101);
            }
        });
        Watchdog { _disarm: tx }
    }
}

/// A private `redis-server` with a password and an append-only file fsynced on every
/// write, so a kill -9 loses nothing. Killed on drop (its directory goes with it).
struct PrivateRedis {
    port: u16,
    password: String,
    dir: tempfile::TempDir,
    child: Option<Child>,
    children: Children,
}

impl PrivateRedis {
    fn start(children: &Children) -> Self {
        let port = {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
            listener.local_addr().unwrap().port()
        };
        let mut redis = PrivateRedis {
            port,
            password: format!("pw{}x{}", std::process::id(), port),
            dir: tempfile::tempdir().unwrap(),
            child: None,
            children: children.clone(),
        };
        redis.spawn();
        redis
    }

    /// The URL with the password, as the configuration has it.
    fn url(&self) -> String {
        format!("redis://:{}@127.0.0.1:{}", self.password, self.port)
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("redis-server is running").id()
    }

    /// Starts redis-server on the port and directory (loading the append-only file when
    /// there is one) and waits until it answers.
    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log()).unwrap();
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--requirepass", &self.password])
            .args(["--save", "", "--appendonly", "yes", "--appendfsync", "always", "--daemonize", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start redis-server (apt-get install redis-server)");
        self.children.add(child.id());
        self.child = Some(child);
        let client = redis::Client::open(self.url()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let pong = client
                .get_connection_with_timeout(Duration::from_secs(1))
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
            match pong {
                Ok(_) => return,
                Err(e) if Instant::now() > deadline => {
                    panic!("private redis-server on port {} did not answer: {e}\n{}", self.port, self.log_tail())
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill").args([signal, &self.pid().to_string()]).status().unwrap();
        assert!(status.success(), "kill {signal} redis-server");
    }

    /// SIGSTOP: connections stay open and hang.
    fn pause(&self) {
        self.signal("-STOP");
    }

    fn resume(&self) {
        self.signal("-CONT");
    }

    /// SIGKILL: connections are reset and new ones refused.
    fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            self.children.remove(child.id());
        }
    }

    /// The same port and directory: the data comes back from the append-only file.
    fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    fn log_tail(&self) -> String {
        tail(&std::fs::read_to_string(self.log()).unwrap_or_default(), 20)
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            // A stopped process dies of SIGKILL too, but continue it so nothing is left stopped.
            let _ = Command::new("kill").args(["-CONT", &child.id().to_string()]).status();
        }
        self.kill9();
    }
}

/// `TENANTS` schema tenants in a fresh database with a `public.hits` counter table, and a
/// config like tests/runtime.rs's (static catalog, short leases) on the private Redis.
struct Setup {
    name: String,
    dir: tempfile::TempDir,
}

impl Setup {
    async fn new(redis_url: &str) -> Setup {
        let name = unique("tout");
        let mut admin = pg_admin().await;
        exec(&mut admin, &format!("CREATE DATABASE {name}")).await;
        let mut db = connect_db(&name).await;
        let mut ddl =
            String::from("CREATE TABLE public.hits (tenant text NOT NULL, at timestamptz NOT NULL DEFAULT now());\n");
        for i in 0..TENANTS {
            ddl.push_str(&format!("CREATE SCHEMA \"tenant_t{i:03}\";\n"));
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
drain_timeout = "10s"

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
        for i in 0..TENANTS {
            config.push_str(&format!("\n[[catalog.tenants]]\nid = \"t{i:03}\"\nservices = [\"app\"]\n"));
        }
        std::fs::write(dir.path().join("tenantry.toml"), config).unwrap();
        std::fs::write(
            dir.path().join("workflows/count.toml"),
            "[concurrency]\nrun = 4\n\n[retry]\nattempts = 3\nbackoff = \"100ms\"\nmax_backoff = \"1s\"\n\n\
             [[steps]]\nkind = \"sql\"\nsql = \"SELECT pg_sleep(0.05); INSERT INTO public.hits (tenant) VALUES (current_setting('tenantry.tenant'))\"\n",
        )
        .unwrap();
        Setup { name, dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn cli(&self, args: &[&str]) -> Run {
        tenantry_within(self.path(), args, &[], CLI_LIMIT)
    }

    fn status(&self, run: &str) -> serde_json::Value {
        let out = self.cli(&["status", run, "--json"]);
        assert_eq!(out.code(), 0, "{}", out.all());
        serde_json::from_str(&out.stdout()).expect("status json")
    }

    async fn hits(&self) -> BTreeMap<String, i64> {
        let mut db = connect_db(&self.name).await;
        sqlx::query_as::<_, (String, i64)>("SELECT tenant, count(*) FROM public.hits GROUP BY tenant")
            .fetch_all(&mut db)
            .await
            .unwrap()
            .into_iter()
            .collect()
    }

    async fn drop(self) {
        let mut admin = pg_admin().await;
        exec(&mut admin, &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)).await;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outage {
    /// SIGSTOP, then SIGCONT: every Redis call hangs until its timeout.
    Paused,
    /// SIGKILL, then a new redis-server on the same port and append-only file.
    Restarted,
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The worker's log, for failure messages.
fn worker_log_tail(log: &Path) -> String {
    format!("--- worker log (last 60 lines)\n{}", tail(&std::fs::read_to_string(log).unwrap_or_default(), 60))
}

fn assert_alive(worker: &mut WorkerProcess, when: &str, log: &Path) {
    let exited = worker.0.try_wait().expect("poll the worker");
    assert!(exited.is_none(), "the worker exited {when}: {exited:?}\n{}", worker_log_tail(log));
}

/// Starts a run of `TENANTS` tenants, makes Redis unavailable in the middle of it and
/// checks that the worker survives, the run succeeds, and every tenant ran exactly once.
async fn redis_outage_during_a_run(test: &'static str, outage: Outage) {
    let children = Children::default();
    let _watchdog = Watchdog::arm(test, TEST_LIMIT, children.clone());
    let mut redis = PrivateRedis::start(&children);
    let setup = Setup::new(&redis.url()).await;
    let log = setup.path().join("worker.log");
    let mut worker = WorkerProcess::spawn_logged(setup.path(), "worker", "info", &log);
    children.add(worker.0.id());

    let out = setup.cli(&["run", "count"]);
    assert_eq!(out.code(), 0, "{}", out.all());
    let run = out.stdout().trim().to_string();
    let mut outputs = vec![out.all()];
    let begun = Instant::now();

    // Wait until some tenants are done, then take Redis away.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut db = connect_db(&setup.name).await;
    let before = loop {
        let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM public.hits").fetch_one(&mut db).await.unwrap();
        if n >= 10 {
            break n;
        }
        assert!(Instant::now() < deadline, "no tenant ran within 60 s\n{}", worker_log_tail(&log));
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let down = Instant::now();
    match outage {
        Outage::Paused => redis.pause(),
        Outage::Restarted => redis.kill9(),
    }
    eprintln!("{test}: Redis down after {:?} with {before} of {TENANTS} tenants done", down - begun);

    // The CLI reports the outage as exit status 3, naming Redis, without the password.
    let runs = setup.cli(&["runs"]);
    let runs_took = down.elapsed();
    assert_alive(&mut worker, "during the outage", &log);
    std::thread::sleep(OUTAGE.saturating_sub(down.elapsed()));
    assert_alive(&mut worker, "during the outage", &log);
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM public.hits").fetch_one(&mut db).await.unwrap();
    assert!(n < TENANTS as i64, "the run ended during the outage ({n} rows): make the step slower");
    match outage {
        Outage::Paused => redis.resume(),
        Outage::Restarted => redis.restart(),
    }
    let up = Instant::now();
    eprintln!(
        "{test}: Redis back after {:?} ({n} of {TENANTS} tenants done); `tenantry runs` took {runs_took:?}",
        up - down
    );
    assert_eq!(runs.code(), 3, "`tenantry runs` while Redis is down\n{}", runs.all());
    assert!(runs.stderr().contains("Redis"), "the message names Redis\n{}", runs.all());
    outputs.push(runs.all());

    // The worker reconnects and the run finishes: every tenant once.
    std::thread::sleep(Duration::from_secs(1));
    assert_alive(&mut worker, "after the outage", &log);
    let end = Instant::now() + Duration::from_secs(120);
    let s = loop {
        let s = setup.status(&run);
        if ["succeeded", "failed", "cancelled"].iter().any(|st| s["run"]["state"] == *st) {
            break s;
        }
        assert_alive(&mut worker, "while the run went on after the outage", &log);
        assert!(
            Instant::now() < end,
            "run {run} did not end within 120 s of the outage: {s:#}\n{}",
            worker_log_tail(&log)
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!("{test}: run ended {} {:?} after Redis came back", s["run"]["state"], up.elapsed());
    assert_alive(&mut worker, "after the run", &log);
    // Nothing lost, nothing twice: checked first, as it says the most when the state is wrong.
    let hits = setup.hits().await;
    let missing: Vec<String> = (0..TENANTS).map(|i| format!("t{i:03}")).filter(|t| !hits.contains_key(t)).collect();
    assert!(missing.is_empty(), "tenants without a row (lost): {missing:?}\n{s:#}");
    let doubles: Vec<_> = hits.iter().filter(|(_, n)| **n != 1).collect();
    assert!(doubles.is_empty(), "tenants with more than one row (done twice): {doubles:?}\n{s:#}");
    assert_eq!(hits.len(), TENANTS, "{hits:?}");
    assert_eq!(s["run"]["state"], "succeeded", "{s:#}\n{}", worker_log_tail(&log));
    assert_eq!(s["run"]["succeeded"], TENANTS as u64, "{s:#}");
    let states: BTreeMap<String, String> = s["tenants"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(t, c)| (t.clone(), c["state"].as_str().unwrap_or_default().to_string()))
        .collect();
    assert_eq!(states.len(), TENANTS, "{states:?}");
    let not_done: Vec<_> = states.iter().filter(|(_, st)| *st != "succeeded").collect();
    assert!(not_done.is_empty(), "tenants not succeeded: {not_done:?}");
    // The worker stayed alive through the outage: the leases it lost only because Redis was
    // away are given back when Redis returns (asynchronously, hence the short wait), and no
    // tenant is charged a lost worker.
    let lost_of = |s: &serde_json::Value| -> u64 {
        s["tenants"].as_object().unwrap().values().map(|c| c["lost"].as_u64().unwrap_or(0)).sum()
    };
    let settle = Instant::now() + Duration::from_secs(5);
    let mut s = s;
    while lost_of(&s) > 0 && Instant::now() < settle {
        std::thread::sleep(Duration::from_millis(200));
        s = setup.status(&run);
    }
    let lost = lost_of(&s);
    assert_eq!(lost, 0, "a live worker cut off from Redis was charged lost leases\n{s:#}\n{}", worker_log_tail(&log));
    let receipts = s["tenants"]
        .as_object()
        .unwrap()
        .values()
        .filter(|c| c.to_string().contains("already applied in this run"))
        .count();
    eprintln!("{test}: {receipts} tenant(s) finished by their receipt");
    outputs.push(serde_json::to_string(&s).unwrap());

    // It still drains and exits cleanly.
    let stopped = worker.terminate();
    children.remove(worker.0.id());
    assert!(
        stopped.success(),
        "the worker exits 0 on SIGTERM after the outage: {stopped:?}\n{}",
        worker_log_tail(&log)
    );

    // The password appears nowhere: not in the worker's log, not in the CLI's output.
    let worker_output = std::fs::read_to_string(&log).unwrap();
    assert!(!worker_output.contains(&redis.password), "the worker printed the Redis password\n{worker_output}");
    for out in &outputs {
        assert!(!out.contains(&redis.password), "the CLI printed the Redis password\n{out}");
    }
    let warnings: Vec<&str> = worker_output.lines().filter(|l| l.contains("WARN") || l.contains("ERROR")).collect();
    eprintln!("{test}: `tenantry runs` said: {}", runs.stderr().trim());
    eprintln!("{test}: the worker logged {} warning(s) and error(s):\n{}", warnings.len(), warnings.join("\n"));

    drop(redis);
    setup.drop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_stopped_for_seconds_mid_run_the_worker_waits_and_every_tenant_runs_once() {
    redis_outage_during_a_run("sigstop", Outage::Paused).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_killed_and_restarted_mid_run_the_worker_reconnects_and_every_tenant_runs_once() {
    redis_outage_during_a_run("restart", Outage::Restarted).await;
}
