//! The durable runtime against real PostgreSQL and Redis, with real worker processes: crash recovery, failure budgets, retry, approval and cancel.

mod support;

use support::connect_db as connect;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use support::{
    WorkerProcess, clear_redis, exec, pg_admin, pg_url, redis_url, status, tenantry, unique, wait_for_state,
};

/// `n` schema tenants in a fresh database, a `public.hits` table, and a config with a
/// static catalog, its own Redis prefix and short leases. Cleaned up by `drop`.
struct Setup {
    name: String,
    dir: tempfile::TempDir,
}

impl Setup {
    async fn new(n: usize, labels: impl Fn(usize) -> &'static str) -> Setup {
        let name = unique("trt");
        let mut admin = pg_admin().await;
        exec(&mut admin, &format!("CREATE DATABASE {name}")).await;
        let mut db = connect(&name).await;
        let mut ddl =
            String::from("CREATE TABLE public.hits (tenant text NOT NULL, at timestamptz NOT NULL DEFAULT now());\n");
        for i in 0..n {
            ddl.push_str(&format!(
                "CREATE SCHEMA \"tenant_t{i:03}\"; CREATE TABLE \"tenant_t{i:03}\".items (n int CHECK (n > 0));\n"
            ));
        }
        exec(&mut db, &ddl).await;
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("workflows")).unwrap();
        let mut config = format!(
            r#"
[redis]
url = "{redis}"
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
            redis = redis_url(),
            pg = pg_url()
        );
        for i in 0..n {
            config.push_str(&format!(
                "\n[[catalog.tenants]]\nid = \"t{i:03}\"\nservices = [\"app\"]\nlabels = {{ ring = \"{}\" }}\n",
                labels(i)
            ));
        }
        std::fs::write(dir.path().join("tenantry.toml"), config).unwrap();
        Setup { name, dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn workflow(&self, name: &str, text: &str) {
        std::fs::write(self.path().join("workflows").join(format!("{name}.toml")), text).unwrap();
    }

    /// `tenantry run`, returning the run id.
    fn run(&self, workflow: &str) -> String {
        let out = tenantry(self.path(), &["run", workflow], &[]);
        assert_eq!(out.code(), 0, "{}", out.all());
        out.stdout().trim().to_string()
    }

    async fn hits(&self) -> BTreeMap<String, i64> {
        let mut db = connect(&self.name).await;
        sqlx::query_as::<_, (String, i64)>("SELECT tenant, count(*) FROM public.hits GROUP BY tenant")
            .fetch_all(&mut db)
            .await
            .unwrap()
            .into_iter()
            .collect()
    }

    async fn drop(self) {
        clear_redis(&self.name).await;
        let mut admin = pg_admin().await;
        exec(&mut admin, &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)).await;
    }
}

fn tenant_states(status: &serde_json::Value) -> BTreeMap<String, String> {
    status["tenants"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(t, c)| (t.clone(), c["state"].as_str().unwrap().to_string()))
        .collect()
}

/// A pseudo-random sequence good enough to vary kill moments between runs of the test.
fn random_ms(seed: &mut u64, lo: u64, hi: u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    lo + *seed % (hi - lo)
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_five_times_and_every_tenant_is_done_exactly_once() {
    let setup = Setup::new(300, |_| "all").await;
    setup.workflow(
        "count",
        "[concurrency]\nrun = 16\n\n[retry]\nattempts = 3\nbackoff = \"100ms\"\nmax_backoff = \"1s\"\n\n\
         [[steps]]\nkind = \"sql\"\nsql = \"SELECT pg_sleep(0.05); INSERT INTO public.hits (tenant) VALUES (current_setting('tenantry.tenant'))\"\n",
    );
    let run = setup.run("count");
    let mut seed = std::process::id() as u64 | 1;
    let mut worker = WorkerProcess::spawn(setup.path());
    let mut kills = 0;
    while kills < 5 {
        std::thread::sleep(Duration::from_millis(random_ms(&mut seed, 300, 1500)));
        let s = status(setup.path(), &run);
        if s["run"]["state"] != "running" {
            break;
        }
        worker.kill9();
        kills += 1;
        worker = WorkerProcess::spawn(setup.path());
    }
    assert_eq!(kills, 5, "the run ended before the worker could be killed 5 times; make the step slower");
    let s = wait_for_state(setup.path(), &run, &["succeeded", "failed", "cancelled"], Duration::from_secs(120));
    assert_eq!(s["run"]["state"], "succeeded", "{s:#}");
    assert_eq!(s["run"]["succeeded"], 300);
    let hits = setup.hits().await;
    assert_eq!(hits.len(), 300, "every tenant has a row");
    let doubles: Vec<_> = hits.iter().filter(|(_, n)| **n != 1).collect();
    assert!(doubles.is_empty(), "tenants with more than one row: {doubles:?}");
    let lost: u64 = s["tenants"].as_object().unwrap().values().map(|c| c["lost"].as_u64().unwrap_or(0)).sum();
    assert!(lost > 0, "kills happened mid-step, so some leases must have been lost and recovered");
    drop(worker);
    setup.drop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wave_over_budget_halts_the_run_and_retry_runs_only_the_failed() {
    // t000..t009 are the first wave; t010..t019 the second.
    let setup = Setup::new(20, |i| if i < 10 { "first" } else { "second" }).await;
    // Three tenants of the first wave have bad data for the step: no items table.
    let mut db = connect(&setup.name).await;
    exec(&mut db, "DROP TABLE tenant_t002.items; DROP TABLE tenant_t005.items; DROP TABLE tenant_t007.items;").await;
    setup.workflow(
        "fill",
        "[[waves]]\nname = \"first\"\nlabels = { ring = \"first\" }\nmax_failures = 2\n\n\
         [[waves]]\nname = \"second\"\n\n\
         [retry]\nattempts = 2\nbackoff = \"100ms\"\nmax_backoff = \"200ms\"\n\n\
         [[steps]]\nkind = \"sql\"\nsql = \"INSERT INTO items VALUES (1); INSERT INTO public.hits (tenant) VALUES (current_setting('tenantry.tenant'))\"\n",
    );
    let _worker = WorkerProcess::spawn(setup.path());
    let run = setup.run("fill");
    let s = wait_for_state(setup.path(), &run, &["succeeded", "failed"], Duration::from_secs(60));
    assert_eq!(s["run"]["state"], "failed", "{s:#}");
    let reason = s["run"]["reason"].as_str().unwrap();
    assert!(reason.contains("halted: wave first exceeded its failure budget (3 of 10 tenants failed)"), "{reason}");
    let states = tenant_states(&s);
    for t in ["t002", "t005", "t007"] {
        assert_eq!(states[t], "failed", "{t}");
        let error = s["tenants"][t]["last_error"].as_str().unwrap();
        assert!(error.contains("permanent error") && error.contains("items"), "{error}");
    }
    for i in 10..20 {
        assert_eq!(states[&format!("t{i:03}")], "pending", "later waves are untouched");
    }
    let hits = setup.hits().await;
    assert!(hits.keys().all(|t| t.as_str() < "t010"), "no tenant of the second wave ran: {hits:?}");
    // The others of the first wave either finished or were not started once the budget
    // was exceeded; which depends on timing, but none is left half-way.
    assert!(
        !states.values().any(|s| s == "running" || s == "queued"),
        "a failed run has nothing in flight: {states:?}"
    );
    for i in [0, 1, 3, 4, 6, 8, 9] {
        let t = format!("t{i:03}");
        assert!(["succeeded", "skipped", "pending"].contains(&states[&t].as_str()), "{t}: {}", states[&t]);
        assert_eq!(hits.contains_key(&t), states[&t] == "succeeded", "{t}");
    }

    // Fix the data, retry: only the three run.
    exec(&mut db, "CREATE TABLE tenant_t002.items (n int); CREATE TABLE tenant_t005.items (n int); CREATE TABLE tenant_t007.items (n int);").await;
    let out = tenantry(setup.path(), &["retry", &run, "--wait"], &[]);
    assert_eq!(out.code(), 0, "{}", out.all());
    let retry_run = out.stdout().lines().next().unwrap().trim().to_string();
    let r = status(setup.path(), &retry_run);
    assert_eq!(r["run"]["parent"], run.as_str());
    assert_eq!(r["run"]["tenants"], 3);
    assert_eq!(r["run"]["state"], "succeeded");
    let hits = setup.hits().await;
    for t in ["t002", "t005", "t007"] {
        assert_eq!(hits.get(t), Some(&1), "{t} ran once after the fix");
    }
    assert!(hits.values().all(|n| *n == 1), "{hits:?}");
    assert!(hits.keys().all(|t| t.as_str() < "t010"), "the retry did not touch the second wave: {hits:?}");
    setup.drop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn approval_gate_waits_and_approve_lets_it_go_on() {
    let setup = Setup::new(6, |i| if i == 0 { "canary" } else { "rest" }).await;
    setup.workflow(
        "gated",
        "[[waves]]\nname = \"canary\"\nlabels = { ring = \"canary\" }\n\n\
         [[waves]]\nname = \"rest\"\napproval = true\n\n\
         [[steps]]\nkind = \"sql\"\nsql = \"INSERT INTO public.hits (tenant) VALUES (current_setting('tenantry.tenant'))\"\n",
    );
    let _worker = WorkerProcess::spawn(setup.path());
    let run = setup.run("gated");
    let s = wait_for_state(setup.path(), &run, &["awaiting_approval"], Duration::from_secs(30));
    let states = tenant_states(&s);
    assert_eq!(states["t000"], "succeeded");
    assert!((1..6).all(|i| states[&format!("t{i:03}")] == "pending"), "{states:?}");
    // Still waiting a moment later: nothing moves without approval.
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(status(setup.path(), &run)["run"]["state"], "awaiting_approval");
    assert_eq!(setup.hits().await.len(), 1);

    let out = tenantry(setup.path(), &["approve", &run], &[]);
    assert_eq!(out.code(), 0, "{}", out.all());
    let s = wait_for_state(setup.path(), &run, &["succeeded", "failed"], Duration::from_secs(30));
    assert_eq!(s["run"]["state"], "succeeded", "{s:#}");
    assert_eq!(setup.hits().await.len(), 6);
    // Approving again is refused with a clear message.
    let out = tenantry(setup.path(), &["approve", &run], &[]);
    assert_eq!(out.code(), 1, "{}", out.all());
    assert!(out.stderr().contains("is succeeded; approve needs a run that is awaiting_approval"), "{}", out.all());
    setup.drop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_stops_dispatching_and_leaves_a_clear_final_state() {
    let setup = Setup::new(6, |i| if i == 0 { "canary" } else { "rest" }).await;
    setup.workflow(
        "gated",
        "[[waves]]\nname = \"canary\"\nlabels = { ring = \"canary\" }\n\n\
         [[waves]]\nname = \"rest\"\napproval = true\n\n\
         [[steps]]\nkind = \"sql\"\nsql = \"INSERT INTO public.hits (tenant) VALUES (current_setting('tenantry.tenant'))\"\n",
    );
    let _worker = WorkerProcess::spawn(setup.path());
    let run = setup.run("gated");
    wait_for_state(setup.path(), &run, &["awaiting_approval"], Duration::from_secs(30));
    let out = tenantry(setup.path(), &["cancel", &run], &[]);
    assert_eq!(out.code(), 0, "{}", out.all());
    assert!(out.stdout().contains("cancelled"), "{}", out.all());
    std::thread::sleep(Duration::from_millis(800));
    let s = status(setup.path(), &run);
    assert_eq!(s["run"]["state"], "cancelled");
    assert_eq!(s["run"]["reason"], "cancelled by an operator");
    assert!(s["run"]["finished_ms"].as_i64().is_some());
    let states = tenant_states(&s);
    assert_eq!(states.values().filter(|s| *s == "pending").count(), 5, "{states:?}");
    assert_eq!(setup.hits().await.len(), 1);
    // The cancelled run is gone from the active set and cannot be resumed.
    let out = tenantry(setup.path(), &["resume", &run], &[]);
    assert_eq!(out.code(), 1);
    let out = tenantry(setup.path(), &["runs", "--json"], &[]);
    let runs: serde_json::Value = serde_json::from_str(&out.stdout()).unwrap();
    assert_eq!(runs[0]["id"], run.as_str());
    assert_eq!(runs[0]["state"], "cancelled");
    setup.drop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_redis_is_exit_3_without_the_password() {
    let setup = Setup::new(1, |_| "x").await;
    setup.workflow("w", "[[steps]]\nkind = \"health\"\n");
    let out = tenantry(setup.path(), &["--set", "redis.url=redis://:topsecret@127.0.0.1:1", "run", "w"], &[]);
    assert_eq!(out.code(), 3, "{}", out.all());
    assert!(out.stderr().contains("cannot reach Redis"), "{}", out.all());
    assert!(!out.all().contains("topsecret"), "{}", out.all());
    setup.drop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_serve_processes_enqueue_each_tick_once() {
    let setup = Setup::new(2, |_| "all").await;
    setup.workflow(
        "tick",
        "schedule = \"*/2 * * * * *\"\noverlap = \"queue\"\n\n[[steps]]\nkind = \"sql\"\n\
         sql = \"INSERT INTO public.hits (tenant) VALUES (current_setting('tenantry.run') || ' ' || current_setting('tenantry.tenant'))\"\n",
    );
    let mut a = WorkerProcess::spawn_command(setup.path(), "serve");
    let mut b = WorkerProcess::spawn_command(setup.path(), "serve");
    std::thread::sleep(Duration::from_secs(20));
    assert!(a.terminate().success(), "serve drains and exits 0 on SIGTERM");
    assert!(b.terminate().success(), "serve drains and exits 0 on SIGTERM");

    let out = tenantry(setup.path(), &["runs", "--limit", "100", "--json"], &[]);
    assert_eq!(out.code(), 0, "{}", out.all());
    let runs: Vec<serde_json::Value> = serde_json::from_str(&out.stdout()).unwrap();
    let mut ticks: Vec<i64> = runs
        .iter()
        .map(|r| r["trigger"].as_str().unwrap().strip_prefix("schedule@").expect("scheduled").parse().unwrap())
        .collect();
    ticks.sort();
    let distinct: std::collections::BTreeSet<i64> = ticks.iter().copied().collect();
    assert_eq!(distinct.len(), ticks.len(), "a tick was enqueued twice: {ticks:?}");
    assert!(ticks.len() >= 8, "about 10 ticks in 20 s, got {}", ticks.len());
    assert!(ticks.windows(2).all(|w| w[1] - w[0] == 2000), "no tick was missed: {ticks:?}");
    // Every run that finished ran each tenant once. A run created just before the SIGTERM
    // may still be going, with some of its tenants not run yet.
    let finished = runs.iter().filter(|r| r["state"] == "succeeded").count();
    assert!(finished >= 7, "{runs:#?}");
    let hits = setup.hits().await; // "run tenant" -> rows
    assert!(hits.values().all(|n| *n == 1), "a tenant ran twice in one run: {hits:?}");
    let mut attributed = 0;
    for r in &runs {
        let id = r["id"].as_str().unwrap();
        let ran = hits.keys().filter(|k| k.split(' ').next() == Some(id)).count();
        attributed += ran;
        if r["state"] == "succeeded" {
            assert_eq!(ran, 2, "run {id} succeeded: {hits:?}");
        } else {
            assert!(ran <= 2, "run {id}: {hits:?}");
        }
    }
    assert_eq!(attributed, hits.len(), "rows of runs not listed: {hits:?}");
    setup.drop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_in_flight_tenants_and_another_worker_finishes_the_run() {
    let setup = Setup::new(12, |_| "all").await;
    setup.workflow(
        "slow",
        "[concurrency]\nrun = 4\n\n[[steps]]\nkind = \"sql\"\n\
         sql = \"SELECT pg_sleep(1); INSERT INTO public.hits (tenant) VALUES (current_setting('tenantry.tenant'))\"\n",
    );
    let mut first = WorkerProcess::spawn(setup.path());
    let run = setup.run("slow");
    // Wait until tenants are running, then ask the worker to stop.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !tenant_states(&status(setup.path(), &run)).values().any(|s| s == "running") {
        assert!(std::time::Instant::now() < deadline, "no tenant started");
        std::thread::sleep(Duration::from_millis(100));
    }
    let stopped = std::time::Instant::now();
    assert!(first.terminate().success(), "a drained worker exits 0");
    assert!(stopped.elapsed() < Duration::from_secs(8), "drain took {:?}", stopped.elapsed());
    // What was in flight finished; nothing is left running or half-done.
    let s = status(setup.path(), &run);
    let states = tenant_states(&s);
    assert!(!states.values().any(|s| s == "running"), "{states:?}");
    let done = states.values().filter(|s| *s == "succeeded").count();
    assert!(done >= 1, "{states:?}");
    assert_eq!(setup.hits().await.len(), done, "every finished tenant has its row, no other tenant does");
    assert_eq!(s["run"]["state"], "running", "the run goes on without workers");

    let _second = WorkerProcess::spawn(setup.path());
    let s = wait_for_state(setup.path(), &run, &["succeeded", "failed"], Duration::from_secs(60));
    assert_eq!(s["run"]["state"], "succeeded", "{s:#}");
    let hits = setup.hits().await;
    assert_eq!(hits.len(), 12);
    assert!(hits.values().all(|n| *n == 1), "{hits:?}");
    let lost: u64 = s["tenants"].as_object().unwrap().values().map(|c| c["lost"].as_u64().unwrap_or(0)).sum();
    assert_eq!(lost, 0, "a drained worker loses no lease");
    setup.drop().await;
}
