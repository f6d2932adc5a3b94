//! `[throttle]`: a host over a load limit (its configured replication-lag signal, or a long transaction) holds its tenants back, visibly in `status` and without keeping the run's slots, while another host's tenants finish; once the signal is back under the limit the held tenants run.

mod support;

use std::time::{Duration, Instant};

use support::{WorkerProcess, clear_redis, connect_db, exec, pg_admin, pg_url, redis_url, status, tenantry, unique};

struct TwoHosts {
    name: String,
    dir: tempfile::TempDir,
}

const BUSY: [&str; 2] = ["a1", "a2"];
const CALM: [&str; 2] = ["b1", "b2"];

impl TwoHosts {
    /// Hosts `busy` (whose lag is the number in `{name}_signal`'s table `lag`, 42 s to
    /// start with) and `calm`, both on the test server; `a1`, `a2` on busy, `b1`, `b2` on
    /// calm, each with a database of service `app`.
    async fn new(prefix: &str, workflow: &str) -> Self {
        let name = unique(prefix);
        let mut admin = pg_admin().await;
        exec(&mut admin, &format!("CREATE DATABASE {name}_signal")).await;
        exec(
            &mut connect_db(&format!("{name}_signal")).await,
            "CREATE TABLE lag (seconds float8); INSERT INTO lag VALUES (42)",
        )
        .await;
        for t in BUSY.iter().chain(&CALM) {
            exec(&mut admin, &format!("CREATE DATABASE {name}_{t}")).await;
        }
        let base = pg_url().rsplit_once('/').unwrap().0.to_string();
        let mut config = format!(
            r#"
[redis]
url = "{redis}"
prefix = "{name}"

[hosts.busy]
engine = "postgres"
url = "{base}/{name}_signal"
lag_query = "SELECT seconds FROM lag"

[hosts.calm]
engine = "postgres"
url = "{pg}"

[services.app]
engine = "postgres"
isolation = "database"
host = "calm"
database = "{name}_{{tenant}}"
"#,
            redis = redis_url(),
            pg = pg_url()
        );
        for t in BUSY {
            config.push_str(&format!("\n[[catalog.tenants]]\nid = \"{t}\"\nplacements.app = {{ host = \"busy\" }}\n"));
        }
        for t in CALM {
            config.push_str(&format!("\n[[catalog.tenants]]\nid = \"{t}\"\nservices = [\"app\"]\n"));
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("workflows")).unwrap();
        std::fs::write(dir.path().join("tenantry.toml"), config).unwrap();
        std::fs::write(dir.path().join("workflows/maintain.toml"), workflow).unwrap();
        Self { name, dir }
    }

    async fn set_lag(&self, seconds: f64) {
        exec(&mut connect_db(&format!("{}_signal", self.name)).await, &format!("UPDATE lag SET seconds = {seconds}"))
            .await;
    }

    /// Polls `status --json` of `run` until `done` holds of it (or panics after a minute).
    fn wait_until(&self, run: &str, what: &str, done: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let s = status(self.dir.path(), run);
            if done(&s) {
                return s;
            }
            assert!(Instant::now() < deadline, "timed out waiting until {what}: {s:#}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    async fn drop(self) {
        clear_redis(&self.name).await;
        let mut admin = pg_admin().await;
        for db in
            BUSY.iter().chain(&CALM).map(|t| format!("{}_{t}", self.name)).chain([format!("{}_signal", self.name)])
        {
            exec(&mut admin, &format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)")).await;
        }
    }
}

fn state<'a>(s: &'a serde_json::Value, tenant: &str) -> &'a str {
    s["tenants"][tenant]["state"].as_str().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lagging_host_holds_its_tenants_while_the_other_hosts_tenants_finish() {
    let fleet = TwoHosts::new(
        "tthrottle",
        // Two slots for the whole run: held tenants that kept theirs would starve calm.
        "[concurrency]\nrun = 2\n\n[throttle]\nreplica_lag = \"10s\"\ncheck_every = \"200ms\"\n\n[[steps]]\nkind = \"health\"\n",
    )
    .await;
    let _worker = WorkerProcess::spawn(fleet.dir.path());
    let out = tenantry(fleet.dir.path(), &["run", "maintain"], &[]);
    assert_eq!(out.code(), 0, "{}", out.all());
    let run = out.stdout().trim().to_string();

    let held = fleet.wait_until(&run, "calm's tenants succeed while busy's are throttled", |s| {
        CALM.iter().all(|t| state(s, t) == "succeeded")
            && BUSY.iter().all(|t| s["tenants"][t]["throttled"].as_str().is_some())
    });
    for t in BUSY {
        // Given back, not holding a slot: pending, with the reason.
        assert_eq!(state(&held, t), "pending", "{held:#}");
        assert_eq!(held["tenants"][t]["throttled"], "host busy: replica lag 42 s > 10 s", "{held:#}");
    }
    let text = tenantry(fleet.dir.path(), &["status", &run], &[]);
    assert!(text.stdout().contains("throttled: host busy: replica lag 42 s > 10 s"), "{}", text.all());
    // Still held a while later: the limit holds, not a race.
    std::thread::sleep(Duration::from_secs(1));
    let still = status(fleet.dir.path(), &run);
    assert!(BUSY.iter().all(|t| state(&still, t) != "succeeded"), "{still:#}");

    fleet.set_lag(0.5).await;
    let done = fleet.wait_until(&run, "the run ends", |s| s["run"]["state"] != "running");
    assert_eq!(done["run"]["state"], "succeeded", "{done:#}");
    for t in BUSY {
        assert!(done["tenants"][t]["throttled"].is_null(), "{done:#}");
        assert!(done["tenants"][t]["throttled_ms"].as_u64().unwrap() >= 1000, "{done:#}");
    }
    for t in CALM {
        assert!(done["tenants"][t]["throttled_ms"].is_null(), "calm's tenants never waited: {done:#}");
    }
    fleet.drop().await;
}

/// The built-in signals, read from the server itself: a transaction left open by another
/// session holds every tenant (both hosts are this server) until it ends.
#[tokio::test(flavor = "multi_thread")]
async fn a_long_transaction_on_the_server_holds_its_tenants_until_it_ends() {
    let fleet = TwoHosts::new(
        "tthrottlelong",
        "[throttle]\nlong_transaction = \"1s\"\ncheck_every = \"200ms\"\n\n[[steps]]\nkind = \"health\"\n",
    )
    .await;
    let mut holder = connect_db(&format!("{}_signal", fleet.name)).await;
    // Open, but without a transaction id: an xid held for seconds would keep other tests'
    // dead tuples from their vacuums.
    exec(&mut holder, "BEGIN; SELECT 1").await;
    std::thread::sleep(Duration::from_millis(1500));
    let _worker = WorkerProcess::spawn(fleet.dir.path());
    let out = tenantry(fleet.dir.path(), &["run", "maintain"], &[]);
    assert_eq!(out.code(), 0, "{}", out.all());
    let run = out.stdout().trim().to_string();
    let held = fleet.wait_until(&run, "a tenant is throttled", |s| {
        BUSY.iter().chain(&CALM).any(|t| s["tenants"][t]["throttled"].as_str().is_some())
    });
    let why = BUSY.iter().chain(&CALM).find_map(|t| held["tenants"][t]["throttled"].as_str()).unwrap();
    assert!(why.contains("a transaction open for") && why.ends_with("> 1 s"), "{why}");
    // The transaction was open before the run started: no tenant has run while it lasts.
    std::thread::sleep(Duration::from_secs(1));
    let still = status(fleet.dir.path(), &run);
    for t in BUSY.iter().chain(&CALM) {
        assert_ne!(state(&still, t), "succeeded", "{t} ran during the long transaction: {still:#}");
    }
    exec(&mut holder, "COMMIT").await;
    let done = fleet.wait_until(&run, "the run ends", |s| s["run"]["state"] != "running");
    assert_eq!(done["run"]["state"], "succeeded", "{done:#}");
    fleet.drop().await;
}
