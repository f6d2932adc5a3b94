//! The run store on a real Redis Cluster (three primaries started by `deploy/local/test.sh`): a run's whole life, scheduled ticks, creations cut short, and the slot rules that make scripts fail when they touch keys they are not given.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use redis::AsyncCommands;
use tenantry::runtime::model::{RunSpec, RunState, TenantSnapshot, TenantState, Trigger, Unit};
use tenantry::runtime::store::{Claim, Renewal, RunStore, TickClaim, TickClaimed, TickDone, new_run_id, now_ms};
use tenantry::secret::SecretUrl;
use tenantry::workflow::Wave;

use support::{redis_cluster, redis_cluster_nodes, unique};

/// The run store of a fresh prefix on the cluster.
async fn store(name: &str) -> RunStore {
    let nodes: Vec<SecretUrl> = redis_cluster_nodes().iter().map(|u| SecretUrl::parse(u).unwrap()).collect();
    let store = RunStore::connect_cluster(&nodes, &unique(name), Duration::from_secs(10)).await.unwrap_or_else(|e| {
        panic!(
            "{e}: start the local Redis Cluster with `bash deploy/local/test.sh` \
             (or `source deploy/local/services.sh && ensure_redis_cluster`)"
        )
    });
    assert!(store.is_cluster());
    store
}

/// Every key under the store's prefix, on every node of the cluster.
async fn keys_of(store: &RunStore) -> BTreeSet<String> {
    let mut conn = redis_cluster().await;
    let keys: Vec<String> =
        redis::cmd("KEYS").arg(format!("{}:*", store.keys().prefix())).query_async(&mut conn).await.unwrap();
    keys.into_iter().collect()
}

async fn slot(key: &str) -> u16 {
    let mut conn = redis_cluster().await;
    redis::cmd("CLUSTER").arg("KEYSLOT").arg(key).query_async(&mut conn).await.unwrap()
}

fn wave(index: usize, name: &str, tenants: &[&str], approval: bool) -> Wave {
    Wave {
        index,
        name: name.to_string(),
        tenants: tenants.iter().map(|t| tenantry::catalog::TenantId::parse(t).unwrap()).collect(),
        max_failures: None,
        max_failure_rate: None,
        approval,
        soak: None,
    }
}

/// A run of `waves`, each tenant `(id, host)` with one unit of work.
fn spec(workflow: &str, waves: Vec<Wave>, hosts: &[(&str, &str)], limits: &[(&str, u32)]) -> RunSpec {
    let wave_of = |id: &str| waves.iter().position(|w| w.tenants.iter().any(|t| t.as_str() == id)).unwrap();
    RunSpec {
        id: new_run_id(),
        workflow: workflow.to_string(),
        steps: Vec::new(),
        retry: Default::default(),
        timeout: tenantry::units::HumanDuration(Duration::from_secs(60)),
        run_concurrency: 10,
        host_limits: limits.iter().map(|(h, n)| (h.to_string(), *n)).collect(),
        tenants: hosts
            .iter()
            .map(|(id, host)| {
                let snapshot = TenantSnapshot {
                    wave: wave_of(id),
                    placements: Default::default(),
                    units: vec![Unit { step: 0, service: "app".to_string(), skip: None }],
                    group: host.to_string(),
                    labels: Default::default(),
                };
                (id.to_string(), snapshot)
            })
            .collect(),
        waves,
        migrations: Default::default(),
        receipt_run: None,
        timezone: None,
        report: None,
        throttle: None,
    }
}

async fn claim(store: &RunStore, spec: &RunSpec, tenant: &str, worker: &str, dispatch: u64, lease: Duration) -> Claim {
    let nonce = format!("{worker}#{tenant}#{dispatch}");
    store.claim(&spec.id, tenant, &spec.tenants[tenant], worker, dispatch, lease, &nonce).await.unwrap()
}

async fn claimed(
    store: &RunStore,
    spec: &RunSpec,
    tenant: &str,
    worker: &str,
    dispatch: u64,
    lease: Duration,
) -> String {
    match claim(store, spec, tenant, worker, dispatch, lease).await {
        Claim::Ok { holder, checkpoint } => {
            assert_eq!(checkpoint.state, TenantState::Running, "{tenant}");
            holder
        }
        other => panic!("{worker} could not claim {tenant} (dispatch {dispatch}): {other:?}"),
    }
}

async fn finish(store: &RunStore, spec: &RunSpec, tenant: &str, holder: &str) {
    let ok = store
        .finish(
            &spec.id,
            tenant,
            Some(holder),
            TenantState::Succeeded,
            None,
            &spec.tenants[tenant],
            &serde_json::json!({}),
        )
        .await
        .unwrap();
    assert!(ok, "{holder} could not finish {tenant}");
}

async fn states(store: &RunStore, run: &str) -> BTreeMap<String, TenantState> {
    store.checkpoints(run).await.unwrap().into_iter().map(|(t, c)| (t, c.state)).collect()
}

fn dispatched(list: &[(&str, u64)]) -> Vec<(String, u64)> {
    list.iter().map(|(t, d)| (t.to_string(), *d)).collect()
}

/// Waits (up to 10 s, for leases to expire) until no key is left under the store's prefix.
async fn no_keys_left(store: &RunStore) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left = keys_of(store).await;
        if left.is_empty() {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "keys left on the cluster: {left:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One run through everything the store does, on the cluster, with outcomes checked at each
/// step: creation, dispatch within host limits, claims with leases and fencing tokens,
/// renewal, progress, a lost lease swept and re-dispatched (the stale owner fenced), the
/// approval gate between waves, pause holding a queued tenant and resume dispatching it
/// again, cancel stopping a running tenant, and the prune removing every key.
#[tokio::test(flavor = "multi_thread")]
async fn a_run_lives_its_whole_life_on_the_cluster() {
    let store = store("tcl_life").await;
    let lease = Duration::from_secs(30);
    let spec = spec(
        "life",
        vec![wave(0, "canary", &["a1", "a2", "b1"], false), wave(1, "rest", &["c1", "c2", "c3"], true)],
        &[("a1", "h1"), ("a2", "h1"), ("b1", "h2"), ("c1", "h1"), ("c2", "h2"), ("c3", "h2")],
        &[("h1", 1), ("h2", 2)],
    );
    let run = spec.id.clone();
    assert!(keys_of(&store).await.is_empty());

    store.create(&spec, &Trigger::Operator, false).await.unwrap();
    assert_eq!(store.record(&run).await.unwrap().state, RunState::Running);
    assert_eq!(store.active().await.unwrap(), vec![run.clone()]);
    // Every key of the run is in one slot, every global key in one (other) slot.
    let keys = keys_of(&store).await;
    let run_slot = slot(&store.keys().run(&run)).await;
    let global_slot = slot(&store.keys().runs()).await;
    for key in &keys {
        let expected =
            if key.starts_with(&store.keys().run_pattern(&run).replace('*', "")) { run_slot } else { global_slot };
        assert_eq!(slot(key).await, expected, "{key}");
    }
    assert!(keys.contains(&store.keys().run_pending(&run, 1)), "{keys:#?}");

    // Host h1 takes one tenant at a time, h2 two.
    let (state, first) = store.advance(&spec, lease).await.unwrap();
    assert_eq!(state, "running");
    assert_eq!(first, dispatched(&[("a1", 1), ("b1", 1)]), "a2 waits for h1");
    let a1 = claimed(&store, &spec, "a1", "w1", 1, lease).await;
    let b1 = claimed(&store, &spec, "b1", "w1", 1, lease).await;
    assert_ne!(a1, b1, "each claim gets its own fencing token");
    assert!(matches!(claim(&store, &spec, "a1", "w2", 1, lease).await, Claim::Skip(ref why) if why == "busy"));
    assert_eq!(store.renew(&run, "a1", &a1, lease).await.unwrap(), Renewal::Held);
    assert_eq!(
        store.progress(&run, "a1", &a1, &serde_json::json!({"unit": 1})).await.unwrap(),
        Some(RunState::Running)
    );
    assert_eq!(store.checkpoints(&run).await.unwrap()["a1"].unit, 1);
    assert_eq!(store.advance(&spec, lease).await.unwrap().1, vec![], "h1 is full");
    finish(&store, &spec, "a1", &a1).await;
    assert_eq!(store.advance(&spec, lease).await.unwrap().1, dispatched(&[("a2", 1)]), "a1's slot goes to a2");

    // a2's worker vanishes: its lease runs out, the sweep dispatches it again, the stale
    // owner is fenced and its queue entry refused.
    let stale = claimed(&store, &spec, "a2", "w2", 1, Duration::from_millis(300)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(store.sweep(&run, lease).await.unwrap(), dispatched(&[("a2", 2)]));
    let a2 = &store.checkpoints(&run).await.unwrap()["a2"];
    assert_eq!((a2.state, a2.lost, a2.dispatch), (TenantState::Queued, 1, 2));
    assert_eq!(store.progress(&run, "a2", &stale, &serde_json::json!({"unit": 1})).await.unwrap(), None);
    assert!(matches!(claim(&store, &spec, "a2", "w2", 1, lease).await, Claim::Skip(ref why) if why == "stale"));
    let a2 = claimed(&store, &spec, "a2", "w3", 2, lease).await;
    assert!(!store.holds(&run, "a2", &stale).await.unwrap());
    assert!(store.holds(&run, "a2", &a2).await.unwrap());
    finish(&store, &spec, "a2", &a2).await;
    finish(&store, &spec, "b1", &b1).await;

    // The second wave waits for approval, whatever calls advance.
    let (state, none) = store.advance(&spec, lease).await.unwrap();
    assert_eq!((state.as_str(), none.len()), ("awaiting_approval", 0));
    assert_eq!(store.advance(&spec, lease).await.unwrap().1, vec![]);
    assert_eq!(store.record(&run).await.unwrap().wave, 1);
    store
        .transition(
            &run,
            "approve",
            &[RunState::AwaitingApproval],
            RunState::Running,
            &[("approved:1".to_string(), "1".to_string())],
        )
        .await
        .unwrap();
    let (_, second) = store.advance(&spec, lease).await.unwrap();
    assert_eq!(second, dispatched(&[("c1", 1), ("c2", 1), ("c3", 1)]));
    let c2 = claimed(&store, &spec, "c2", "w1", 1, Duration::from_secs(2)).await;

    // Pause: c1, queued but not started, goes back to pending; resume dispatches it again.
    store.transition(&run, "pause", &[RunState::Running], RunState::Paused, &[]).await.unwrap();
    assert!(matches!(claim(&store, &spec, "c1", "w2", 1, lease).await, Claim::Held));
    assert_eq!(states(&store, &run).await["c1"], TenantState::Pending);
    assert_eq!(store.advance(&spec, lease).await.unwrap().1, vec![], "a paused run dispatches nothing");
    store.transition(&run, "resume", &[RunState::Paused], RunState::Running, &[]).await.unwrap();
    assert_eq!(store.advance(&spec, lease).await.unwrap().1, dispatched(&[("c1", 2)]));

    // Cancel: the run ends at once, its running tenant learns it at its next renewal.
    assert_eq!(store.cancel(&run, "cancel: by the test").await.unwrap(), RunState::Running);
    let record = store.record(&run).await.unwrap();
    assert_eq!((record.state, record.succeeded, record.cancelled), (RunState::Cancelled, 3, 3));
    assert!(store.active().await.unwrap().is_empty(), "a cancelled run leaves the active set");
    assert_eq!(store.renew(&run, "c2", &c2, Duration::from_secs(2)).await.unwrap(), Renewal::Cancelled);
    let expected: BTreeMap<String, TenantState> = [
        ("a1", TenantState::Succeeded),
        ("a2", TenantState::Succeeded),
        ("b1", TenantState::Succeeded),
        ("c1", TenantState::Cancelled),
        ("c2", TenantState::Cancelled),
        ("c3", TenantState::Cancelled),
    ]
    .into_iter()
    .map(|(t, s)| (t.to_string(), s))
    .collect();
    assert_eq!(states(&store, &run).await, expected);

    // Retention: the finished run goes with all its keys; the count is back to nothing.
    let removed = store.prune_finished(0, now_ms() + 1_000, now_ms() - 600_000).await.unwrap();
    assert_eq!(removed, 1);
    assert!(store.list(10).await.unwrap().is_empty());
    no_keys_left(&store).await;
}

/// A scheduled tick on the cluster: the tick is recorded and its run published in one
/// script (global slot) after the run's keys were written (run slot); a refused run is
/// deleted and leaves no key and no index entry.
#[tokio::test(flavor = "multi_thread")]
async fn a_scheduled_tick_creates_one_run_on_the_cluster() {
    let store = store("tcl_tick").await;
    let claim = |owner: &str| TickClaim { workflow: "w".into(), tick_ms: 2_000, owner: owner.into() };
    let make = || spec("w", vec![wave(0, "all", &["t1"], false)], &[("t1", "h1")], &[("h1", 1)]);
    assert_eq!(store.schedule_done("w", 1_000).await.unwrap(), 1_000);
    assert_eq!(store.claim_tick(&claim("a"), Duration::from_secs(60)).await.unwrap(), TickClaimed::Ok);
    let trigger = Trigger::Schedule { tick_ms: 2_000 };
    let refused_run = make();
    let refused = store.create_scheduled(&refused_run, &trigger, false, &claim("b")).await.unwrap();
    assert!(matches!(refused, TickDone::Refused(ref why) if why.contains("a is working")), "{refused:?}");
    let run = make();
    assert_eq!(store.create_scheduled(&run, &trigger, false, &claim("a")).await.unwrap(), TickDone::Recorded);
    assert_eq!(store.schedule_done("w", 0).await.unwrap(), 2_000);
    assert_eq!(store.active().await.unwrap(), vec![run.id.clone()]);
    let listed: Vec<String> = store.list(10).await.unwrap().into_iter().map(|r| r.id).collect();
    assert_eq!(listed, vec![run.id.clone()]);
    let keys = keys_of(&store).await;
    let refused_stem = store.keys().run_pattern(&refused_run.id).replace('*', "");
    assert!(!keys.iter().any(|k| k.starts_with(&refused_stem)), "the refused run left keys: {keys:#?}");
    assert!(keys.contains(&store.keys().schedule("w")));
    store.cancel(&run.id, "done").await.unwrap();
    store.prune_finished(0, now_ms() + 1_000, now_ms() - 600_000).await.unwrap();
    store.delete_all().await.unwrap();
    assert!(keys_of(&store).await.is_empty());
}

/// A process that dies between the steps of a creation leaves a run that never runs and
/// that the prune removes once it counts as abandoned; a creator that was only slow finds
/// its run discarded and cleans up after itself. Nothing is dispatched twice, nothing stays.
#[tokio::test(flavor = "multi_thread")]
async fn a_creation_cut_short_never_runs_and_the_prune_removes_it() {
    let store = store("tcl_crash").await;
    let make = || spec("w", vec![wave(0, "all", &["t1", "t2"], false)], &[("t1", "h1"), ("t2", "h2")], &[]);
    let trigger = Trigger::Operator;

    // Died after step 1 (registered, no keys) and after step 2 (written, not published).
    let registered = make();
    store.register(&registered.id, now_ms()).await.unwrap();
    let written = make();
    store.register(&written.id, now_ms()).await.unwrap();
    store.write(&written, &trigger, false, now_ms()).await.unwrap();
    // A complete run beside them, to show the prune leaves running runs alone.
    let live = make();
    store.create(&live, &trigger, false).await.unwrap();
    assert_eq!(store.active().await.unwrap(), vec![live.id.clone()], "unpublished runs are not active");
    assert_eq!(store.list(10).await.unwrap().len(), 2, "the written run is listed, the registered one has no record");

    // Not abandoned yet: a prune leaves them (their creators may still be working).
    assert_eq!(store.prune_finished(10, 0, now_ms() - 600_000).await.unwrap(), 0);
    assert_eq!(store.list(10).await.unwrap().len(), 2);

    // Abandoned: both go, with every key; the live run stays.
    assert_eq!(store.prune_finished(10, 0, now_ms() + 1).await.unwrap(), 2);
    let listed: Vec<String> = store.list(10).await.unwrap().into_iter().map(|r| r.id).collect();
    assert_eq!(listed, vec![live.id.clone()]);
    let keys = keys_of(&store).await;
    for gone in [&registered.id, &written.id] {
        let stem = store.keys().run_pattern(gone).replace('*', "");
        assert!(!keys.iter().any(|k| k.starts_with(&stem)), "{gone} left keys: {keys:#?}");
    }
    assert!(!keys.contains(&store.keys().doomed_runs()), "the prune finished its work");

    // The slow creator of `written` comes back to publish: refused, nothing published.
    assert!(!store.publish(&written.id).await.unwrap());
    assert_eq!(store.active().await.unwrap(), vec![live.id.clone()]);

    store.cancel(&live.id, "done").await.unwrap();
    assert_eq!(store.prune_finished(0, now_ms() + 1_000, now_ms() + 1).await.unwrap(), 1);
    assert!(keys_of(&store).await.is_empty(), "{:#?}", keys_of(&store).await);
}

/// Why the layout matters. On a cluster, Redis refuses a script whose keys are in several
/// slots (`CROSSSLOT`: what the scripts of the old layout did, mixing a run's keys with the
/// global active set), and a `#!lua` script that touches a key it was not given in another
/// slot (what `sweep.lua` did with lease keys and `advance.lua` with pending lists), even
/// when that slot is on the same node. The run store's scripts all start with `#!lua`, so
/// such a mistake is an error at the offending call rather than luck of slot placement. A
/// key of the script's own slot is allowed.
#[tokio::test(flavor = "multi_thread")]
async fn a_script_that_reaches_beyond_its_keys_fails_on_the_cluster() {
    let store = store("tcl_slots").await;
    let k = store.keys();
    let mut conn = redis_cluster().await;
    let (run, other) = ("20260101-000000-aaaaaa", "20260101-000000-bbbbbb");
    assert_ne!(slot(&k.run(run)).await, slot(&k.run(other)).await, "pick run ids in different slots");

    // The old layout: `{prefix}:run:{id}` without a hash tag next to `{prefix}:runs:active`.
    let old_run = format!("{}:run:{run}", k.prefix());
    let old_active = format!("{}:runs:active", k.prefix());
    if slot(&old_run).await != slot(&old_active).await {
        let err = redis::Script::new("#!lua\nreturn redis.call('HGET', KEYS[1], 'state')")
            .key(&old_run)
            .key(&old_active)
            .invoke_async::<Option<String>>(&mut conn)
            .await
            .expect_err("keys of two slots in one script");
        assert!(err.to_string().to_uppercase().contains("CROSSSLOT"), "{err}");
        let err = redis::pipe()
            .atomic()
            .hset(&old_run, "state", "running")
            .sadd(&old_active, run)
            .query_async::<()>(&mut conn)
            .await
            .expect_err("a transaction across slots");
        assert!(err.to_string().to_uppercase().contains("CROSS"), "{err}");
    }

    // A key built inside the script, in another slot: refused.
    let reach = "#!lua\nlocal lease = redis.call('GET', ARGV[1])\nredis.call('HSET', KEYS[1], 'x', '1')\nreturn lease";
    let err = redis::Script::new(reach)
        .key(k.run(run))
        .arg(k.lease(other, "t1"))
        .invoke_async::<Option<String>>(&mut conn)
        .await
        .expect_err("a key of another slot, not given to the script");
    assert!(err.to_string().contains("slot") || err.to_string().contains("non local key"), "{err}");
    // The same script given a key of its own run's slot runs.
    let ok: Option<String> =
        redis::Script::new(reach).key(k.run(run)).arg(k.lease(run, "t1")).invoke_async(&mut conn).await.unwrap();
    assert_eq!(ok, None);
    let _: () = conn.del(k.run(run)).await.unwrap();
    assert!(keys_of(&store).await.is_empty());
}

/// The whole product with its run store on the cluster and its queue on one Redis
/// (`redis.cluster` next to `redis.url`): a worker process runs a workflow to the end,
/// each tenant exactly once; the run's keys are on the cluster and not on the queue's
/// Redis; and a finished run found in the active set (its process died between ending it
/// and retiring it) is taken out by the worker's maintenance pass.
#[tokio::test(flavor = "multi_thread")]
async fn a_worker_runs_a_workflow_with_its_run_store_on_the_cluster() {
    use support::{
        WorkerProcess, clear_redis, connect_db, exec, pg_admin, pg_url, redis_url, tenantry, wait_for_state,
    };
    let name = unique("tcl_e2e");
    let mut admin = pg_admin().await;
    exec(&mut admin, &format!("CREATE DATABASE {name}")).await;
    let mut db = connect_db(&name).await;
    let mut ddl = String::from("CREATE TABLE public.hits (tenant text NOT NULL);\n");
    for i in 0..3 {
        ddl.push_str(&format!("CREATE SCHEMA tenant_t{i};\n"));
    }
    exec(&mut db, &ddl).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("workflows")).unwrap();
    let nodes: Vec<String> = redis_cluster_nodes().iter().map(|n| format!("{n:?}")).collect();
    let mut config = format!(
        r#"
[redis]
url = "{redis}"
prefix = "{name}"
cluster = [{nodes}]

[runtime]
worker_concurrency = 4
lease = "2s"
dispatch_grace = "3s"
sweep_interval = "200ms"

[hosts.main]
engine = "postgres"
url = "{pg}"

[services.app]
engine = "postgres"
isolation = "schema"
host = "main"
database = "{name}"
schema = "tenant_{{tenant}}"
"#,
        redis = redis_url(),
        nodes = nodes.join(", "),
        pg = pg_url()
    );
    for i in 0..3 {
        config.push_str(&format!("\n[[catalog.tenants]]\nid = \"t{i}\"\nservices = [\"app\"]\n"));
    }
    std::fs::write(dir.path().join("tenantry.toml"), config).unwrap();
    std::fs::write(
        dir.path().join("workflows/fill.toml"),
        "[[steps]]\nkind = \"sql\"\nsql = \"INSERT INTO public.hits VALUES (current_setting('tenantry.tenant'))\"\n",
    )
    .unwrap();

    let worker = WorkerProcess::spawn(dir.path());
    let out = tenantry(dir.path(), &["run", "fill"], &[]);
    assert_eq!(out.code(), 0, "{}", out.all());
    let run = out.stdout().trim().to_string();
    let s = wait_for_state(dir.path(), &run, &["succeeded", "failed", "cancelled"], Duration::from_secs(60));
    assert_eq!(s["run"]["state"], "succeeded", "{s:#}");
    let hits: Vec<(String, i64)> =
        sqlx::query_as("SELECT tenant, count(*) FROM public.hits GROUP BY tenant ORDER BY tenant")
            .fetch_all(&mut db)
            .await
            .unwrap();
    assert_eq!(hits, vec![("t0".into(), 1), ("t1".into(), 1), ("t2".into(), 1)]);

    let store = {
        let nodes: Vec<SecretUrl> = redis_cluster_nodes().iter().map(|u| SecretUrl::parse(u).unwrap()).collect();
        RunStore::connect_cluster(&nodes, &name, Duration::from_secs(10)).await.unwrap()
    };
    let on_cluster = keys_of(&store).await;
    assert!(on_cluster.contains(&store.keys().run_tenants(&run)), "{on_cluster:#?}");
    let single = redis::Client::open(redis_url()).unwrap();
    let mut single = single.get_multiplexed_async_connection().await.unwrap();
    let on_single: Vec<String> = redis::cmd("KEYS").arg(format!("{name}:*")).query_async(&mut single).await.unwrap();
    assert!(
        on_single.iter().all(|k| k.starts_with(&store.keys().queue())),
        "only the queue is on redis.url: {on_single:#?}"
    );

    // A finished run left in the active set is retired by the maintenance pass.
    let mut cluster = redis_cluster().await;
    let _: () = cluster.sadd(store.keys().active_runs(), &run).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !store.active().await.unwrap().is_empty() {
        assert!(std::time::Instant::now() < deadline, "the finished run stayed in the active set");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    drop(worker);
    store.delete_all().await.unwrap();
    clear_redis(&name).await;
    exec(&mut admin, &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await;
}
