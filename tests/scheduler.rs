//! The scheduler against real Redis: the tick claim and the run-with-its-tick transaction that keep each tick enqueued once across replicas.

mod support;

use std::time::Duration;

use support::{clear_redis, redis_url, unique};

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
            redis::cmd("KEYS").arg(format!("{prefix}:run:{refused}*")).query_async(&mut conn).await.unwrap();
        assert!(left.is_empty(), "a refused run left keys behind: {left:?}");
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
