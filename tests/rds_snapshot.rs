//! `rds_snapshot` and `verify_snapshot` against the RDS-API emulator (moto) over the network, through a proxy that can hold snapshots and instances in `creating` (moto makes them available at once): waits, retries, workers killed mid-wait, retention, cleanup, and the explanations of a missing or invalid instance.

mod support;

use std::path::Path;
use std::time::Duration;

use support::rds::{RdsProxy, create_instance, rds, rds_config, remove, snapshot_ids, snapshots, tenant_instances};
use support::{WorkerProcess, clear_redis, pg_url, redis_url, tenantry, unique, wait_for_state};

/// The secret key in every test config: it must never appear in a worker's output.
const SECRET: &str = "rds-secret-never-printed";

const SNAP: &str = "[[steps]]\nkind = \"rds_snapshot\"\nkeep_last = 2\nwait_timeout = \"1m\"\n";
const VERIFY: &str = "[[steps]]\nkind = \"verify_snapshot\"\ninstance_class = \"db.t3.micro\"\nwait_timeout = \"1m\"\n";
const RETRY: &str = "[retry]\nattempts = 3\nbackoff = \"200ms\"\nmax_backoff = \"1s\"\n\n";

/// Tenants of service `core` (database isolation, `rds_instance = "db-{tenant}"`), each
/// with its instance in moto; tenantry calls moto through the fleet's proxy.
struct Fleet {
    name: String,
    dir: tempfile::TempDir,
    tenants: Vec<String>,
    instances: Vec<String>,
    proxy: RdsProxy,
}

impl Fleet {
    /// `extra` is appended to the config (more services and tenants).
    async fn new(bases: &[&str], extra: &str) -> Fleet {
        let name = unique("trds");
        let suffix = name.replace('_', "-");
        let tenants: Vec<String> = bases.iter().map(|b| format!("{b}-{suffix}")).collect();
        let client = rds();
        let mut instances = Vec::new();
        for t in &tenants {
            let id = format!("db-{t}");
            create_instance(&client, &id).await;
            instances.push(id);
        }
        let proxy = RdsProxy::start();
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("workflows")).unwrap();
        let mut config = format!(
            "[redis]\nurl = \"{}\"\nprefix = \"{name}\"\n\n[runtime]\nlease = \"3s\"\nsweep_interval = \"200ms\"\n\n{}\n\
             [hosts.main]\nengine = \"postgres\"\nurl = \"{}\"\n\n\
             [services.core]\nengine = \"postgres\"\nisolation = \"database\"\nhost = \"main\"\ndatabase = \"tenant_{{tenant}}\"\nrds_instance = \"db-{{tenant}}\"\n",
            redis_url(),
            rds_config(&proxy.endpoint(), SECRET),
            pg_url()
        );
        for t in &tenants {
            config.push_str(&format!("\n[[catalog.tenants]]\nid = \"{t}\"\nservices = [\"core\"]\n"));
        }
        config.push_str(extra);
        std::fs::write(dir.path().join("tenantry.toml"), config).unwrap();
        std::fs::write(dir.path().join("workflows/snap.toml"), format!("{RETRY}{SNAP}")).unwrap();
        std::fs::write(dir.path().join("workflows/verify.toml"), format!("{RETRY}{VERIFY}")).unwrap();
        Fleet { name, dir, tenants, instances, proxy }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn workflow(&self, name: &str, body: &str) {
        std::fs::write(self.path().join(format!("workflows/{name}.toml")), format!("{RETRY}{body}")).unwrap();
    }

    fn start(&self, workflow: &str) -> String {
        let out = tenantry(self.path(), &["run", workflow], &[]);
        assert_eq!(out.code(), 0, "{}", out.all());
        out.stdout().trim().to_string()
    }

    fn wait(&self, run: &str) -> serde_json::Value {
        wait_for_state(self.path(), run, &["succeeded", "failed", "cancelled"], Duration::from_secs(120))
    }

    fn run_and_wait(&self, workflow: &str) -> (String, serde_json::Value) {
        let run = self.start(workflow);
        let s = self.wait(&run);
        (run, s)
    }

    fn log(&self) -> std::path::PathBuf {
        self.path().join("worker.log")
    }

    /// A worker whose output goes to [`Fleet::log`], at debug level for tenantry.
    fn worker(&self) -> WorkerProcess {
        WorkerProcess::spawn_logged(self.path(), "worker", "info,tenantry=debug", &self.log())
    }

    async fn drop(self) {
        clear_redis(&self.name).await;
        let client = rds();
        let mut instances = self.instances.clone();
        for t in &self.tenants {
            instances.extend(tenant_instances(&client, t).await);
        }
        remove(&client, &instances).await;
        let log = std::fs::read_to_string(self.log()).unwrap_or_default();
        assert!(!log.contains(SECRET), "the RDS secret key reached the worker's output");
    }
}

fn output<'s>(s: &'s serde_json::Value, tenant: &str, step: &str) -> &'s serde_json::Value {
    &s["tenants"][tenant]["outputs"][step]
}

fn tag<'t>(tags: &'t [aws_sdk_rds::types::Tag], key: &str) -> Option<&'t str> {
    tags.iter().find(|t| t.key() == Some(key)).and_then(|t| t.value())
}

/// Releases the proxy's hold once it has answered `polls` more polls with `creating`
/// than `from` (an earlier [`RdsProxy::held`]).
fn release_after(proxy: &RdsProxy, from: u32, polls: u32, release: impl Fn(&RdsProxy)) {
    proxy.wait_until(&format!("{polls} polls of something held in creating"), Duration::from_secs(60), |p| {
        p.held() >= from + polls
    });
    release(proxy);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_snapshot_is_waited_for_and_tagged_and_its_verification_restores_checks_and_deletes_a_temporary_instance() {
    let fleet = Fleet::new(&["acme", "globex"], "").await;
    let client = rds();
    let _worker = fleet.worker();

    // The snapshot: held in `creating` for three polls, so the wait really waits.
    fleet.proxy.hold_snapshots(true);
    let run = fleet.start("snap");
    release_after(&fleet.proxy, 0, 3, |p| p.hold_snapshots(false));
    let s = fleet.wait(&run);
    assert_eq!(s["run"]["state"], "succeeded", "{s:#}");
    assert_eq!(fleet.proxy.count("CreateDBSnapshot"), 2, "one snapshot per tenant");
    for (t, instance) in fleet.tenants.iter().zip(&fleet.instances) {
        let out = output(&s, t, "rds_snapshot/core");
        assert_eq!(out["created"], true, "{out:#}");
        assert_eq!(out["status"], "available", "{out:#}");
        assert_eq!(out["instance"], *instance);
        let name = out["snapshot"].as_str().unwrap();
        assert!(name.starts_with(&format!("tenantry-{t}-")) && name.ends_with(&run), "{name}");
        let all = snapshots(&client, instance).await;
        assert_eq!(all.len(), 1, "{all:#?}");
        assert_eq!(all[0].db_snapshot_identifier(), Some(name));
        let tags = all[0].tag_list();
        assert_eq!(tag(tags, "tenantry:tenant"), Some(t.as_str()));
        assert_eq!(tag(tags, "tenantry:service"), Some("core"));
        assert_eq!(tag(tags, "tenantry:run"), Some(run.as_str()));
        assert!(tag(tags, "tenantry:requested-at").is_some(), "{tags:#?}");
    }
    let polls: u64 = fleet.tenants.iter().map(|t| output(&s, t, "rds_snapshot/core")["polls"].as_u64().unwrap()).sum();
    assert!(polls >= 5, "the held snapshots were polled until available ({polls} polls): {s:#}");

    // A leftover of an old verification of acme (requested two days ago) is deleted; one
    // just requested (another run verifying acme right now) is not.
    let acme = &fleet.tenants[0];
    let prefix = tenantry::steps::verify_snapshot::temp_prefix(acme);
    let source = snapshot_ids(&client, &fleet.instances[0]).await.remove(0);
    let old = chrono::Utc::now() - chrono::TimeDelta::days(2);
    for (suffix, at) in [("0000dead-old", old), ("0000beef-young", chrono::Utc::now())] {
        client
            .restore_db_instance_from_db_snapshot()
            .db_snapshot_identifier(&source)
            .db_instance_identifier(format!("{prefix}{suffix}"))
            .tags(aws_sdk_rds::types::Tag::builder().key("tenantry:tenant").value(acme).build())
            .tags(aws_sdk_rds::types::Tag::builder().key("tenantry:requested-at").value(at.to_rfc3339()).build())
            .send()
            .await
            .unwrap();
    }

    // The verification: the temporary instance held in `creating` for three polls.
    let before = fleet.proxy.held();
    fleet.proxy.hold_instances(true);
    let run = fleet.start("verify");
    release_after(&fleet.proxy, before, 3, |p| p.hold_instances(false));
    let s = fleet.wait(&run);
    assert_eq!(s["run"]["state"], "succeeded", "{s:#}");
    assert_eq!(fleet.proxy.count("RestoreDBInstanceFromDBSnapshot"), 2, "one temporary instance per tenant");
    for (t, instance) in fleet.tenants.iter().zip(&fleet.instances) {
        let out = output(&s, t, "verify_snapshot/core");
        assert_eq!(out["passed"], true, "{out:#}");
        assert_eq!(out["deleted"], true, "{out:#}");
        assert_eq!(out["snapshot"], snapshot_ids(&client, instance).await[0]);
        let names: Vec<&str> = out["checks"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
        assert_eq!(
            names,
            ["status", "engine", "storage", "encryption", "instance_class", "tags", "endpoint"],
            "{out:#}"
        );
        assert!(out["rto_ms"].as_i64().unwrap() > 0, "{out:#}");
        let temp = out["temporary_instance"].as_str().unwrap();
        assert!(temp.starts_with(&tenantry::steps::verify_snapshot::temp_prefix(t)), "{temp}");
        // The verdict tags the snapshot.
        let snap = &snapshots(&client, instance).await[0];
        assert_eq!(tag(snap.tag_list(), "tenantry:verdict"), Some("passed"));
        assert_eq!(tag(snap.tag_list(), "tenantry:verified-by"), Some(run.as_str()));
    }
    let swept = &output(&s, acme, "verify_snapshot/core")["leftovers_deleted"];
    assert_eq!(*swept, serde_json::json!([format!("{prefix}0000dead-old")]), "{s:#}");
    assert_eq!(tenant_instances(&client, acme).await, [format!("{prefix}0000beef-young")]);
    assert!(tenant_instances(&client, &fleet.tenants[1]).await.is_empty());
    fleet.drop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retry_finds_the_snapshot_it_created_instead_of_taking_a_second() {
    let fleet = Fleet::new(&["acme"], "").await;
    let _worker = fleet.worker();
    let t = &fleet.tenants[0];
    fleet.proxy.hold_snapshots(true);
    let run = fleet.start("snap");
    fleet.proxy.wait_until("the snapshot is created and polled", Duration::from_secs(60), |p| {
        p.count("CreateDBSnapshot") == 1 && p.held() >= 1
    });
    // The API fails the next poll (all three of the SDK's own attempts): a transient error
    // that ends the attempt. The next attempt must find the snapshot, not take another.
    fleet.proxy.fail_describes(3);
    let held = fleet.proxy.held();
    release_after(&fleet.proxy, held, 2, |p| p.hold_snapshots(false));
    let s = fleet.wait(&run);
    assert_eq!(s["run"]["state"], "succeeded", "{s:#}");
    assert_eq!(fleet.proxy.count("CreateDBSnapshot"), 1);
    let out = output(&s, t, "rds_snapshot/core");
    assert_eq!(out["created"], false, "the last attempt found the snapshot: {out:#}");
    assert_eq!(snapshot_ids(&rds(), &fleet.instances[0]).await, [out["snapshot"].as_str().unwrap()]);
    let log = std::fs::read_to_string(fleet.log()).unwrap();
    assert!(log.contains("ServiceUnavailable") && log.contains("retrying"), "{log}");
    fleet.drop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn workers_killed_while_waiting_leave_one_snapshot_and_one_temporary_instance_and_nothing_behind() {
    let fleet = Fleet::new(&["acme"], "").await;
    let client = rds();
    let t = &fleet.tenants[0];
    let mut worker = fleet.worker();

    // Killed while the snapshot is being made.
    fleet.proxy.hold_snapshots(true);
    let run = fleet.start("snap");
    fleet.proxy.wait_until("the snapshot is polled", Duration::from_secs(60), |p| {
        p.count("CreateDBSnapshot") == 1 && p.held() >= 2
    });
    worker.kill9();
    let held = fleet.proxy.held();
    worker = fleet.worker();
    // The new worker takes the tenant over once the lease expires, and waits for the same snapshot.
    release_after(&fleet.proxy, held, 2, |p| p.hold_snapshots(false));
    let s = fleet.wait(&run);
    assert_eq!(s["run"]["state"], "succeeded", "{s:#}");
    assert!(s["tenants"][t]["lost"].as_u64().unwrap_or(0) >= 1, "the kill hit the tenant in flight: {s:#}");
    assert_eq!(fleet.proxy.count("CreateDBSnapshot"), 1);
    let out = output(&s, t, "rds_snapshot/core");
    assert_eq!(out["created"], false, "{out:#}");
    assert_eq!(snapshot_ids(&client, &fleet.instances[0]).await, [out["snapshot"].as_str().unwrap()]);

    // Killed while the temporary instance is being restored.
    let before = fleet.proxy.held();
    fleet.proxy.hold_instances(true);
    let run = fleet.start("verify");
    fleet.proxy.wait_until("the temporary instance is polled", Duration::from_secs(60), |p| {
        p.count("RestoreDBInstanceFromDBSnapshot") == 1 && p.held() >= before + 2
    });
    assert_eq!(tenant_instances(&client, t).await.len(), 1);
    worker.kill9();
    let held = fleet.proxy.held();
    let _worker = fleet.worker();
    release_after(&fleet.proxy, held, 2, |p| p.hold_instances(false));
    let s = fleet.wait(&run);
    assert_eq!(s["run"]["state"], "succeeded", "{s:#}");
    assert_eq!(fleet.proxy.count("RestoreDBInstanceFromDBSnapshot"), 1, "no second temporary instance");
    let out = output(&s, t, "verify_snapshot/core");
    assert_eq!((out["created"].clone(), out["passed"].clone()), (false.into(), true.into()), "{out:#}");
    assert!(tenant_instances(&client, t).await.is_empty(), "the temporary instance is gone");
    fleet.drop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_keeps_the_newest_snapshots_of_the_tenant_and_touches_no_other() {
    let fleet = Fleet::new(&["acme"], "").await;
    let client = rds();
    let (t, instance) = (&fleet.tenants[0], &fleet.instances[0]);
    let tagged = |id: &str, service: &str| {
        client
            .create_db_snapshot()
            .db_instance_identifier(instance)
            .db_snapshot_identifier(id)
            .tags(aws_sdk_rds::types::Tag::builder().key("tenantry:tenant").value(t).build())
            .tags(aws_sdk_rds::types::Tag::builder().key("tenantry:service").value(service).build())
    };
    // Three of earlier nights, oldest first; one taken by hand; one of another service.
    for night in 1..=3 {
        tagged(&format!("tenantry-{t}-old{night}"), "core").send().await.unwrap();
    }
    client
        .create_db_snapshot()
        .db_instance_identifier(instance)
        .db_snapshot_identifier(format!("by-hand-{t}"))
        .send()
        .await
        .unwrap();
    tagged(&format!("tenantry-{t}-billing"), "billing").send().await.unwrap();

    let _worker = fleet.worker();
    let (run, s) = fleet.run_and_wait("snap");
    assert_eq!(s["run"]["state"], "succeeded", "{s:#}");
    let out = output(&s, t, "rds_snapshot/core");
    let current = out["snapshot"].as_str().unwrap().to_string();
    assert!(current.ends_with(&run));
    // keep_last = 2: the one just made and the newest before it.
    let mut expected =
        vec![format!("by-hand-{t}"), current.clone(), format!("tenantry-{t}-billing"), format!("tenantry-{t}-old3")];
    expected.sort();
    assert_eq!(snapshot_ids(&client, instance).await, expected);
    let deleted: Vec<&str> = out["deleted"].as_array().unwrap().iter().map(|d| d.as_str().unwrap()).collect();
    assert_eq!(deleted, [format!("tenantry-{t}-old2"), format!("tenantry-{t}-old1")]);
    fleet.drop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_verification_that_fails_deletes_its_temporary_instance() {
    let fleet = Fleet::new(&["acme"], "").await;
    let client = rds();
    let t = &fleet.tenants[0];
    let _worker = fleet.worker();
    let (_, s) = fleet.run_and_wait("snap");
    assert_eq!(s["run"]["state"], "succeeded", "{s:#}");

    // The restore never becomes available within its wait.
    fleet.workflow("verify", "[[steps]]\nkind = \"verify_snapshot\"\nwait_timeout = \"2s\"\n");
    fleet.proxy.hold_instances(true);
    let (_, s) = fleet.run_and_wait("verify");
    assert_eq!(s["run"]["state"], "failed", "{s:#}");
    assert_eq!(fleet.proxy.count("RestoreDBInstanceFromDBSnapshot"), 1);
    let tenant = &s["tenants"][t];
    assert_eq!(tenant["state"], "failed", "{s:#}");
    let error = tenant["last_error"].as_str().unwrap();
    for part in [
        "step verify_snapshot/core".to_string(),
        "permanent error".to_string(),
        format!("tenant {t}, service core, instance db-{t}"),
        "still creating".to_string(),
        "the temporary instance was deleted".to_string(),
    ] {
        assert!(error.contains(&part), "{part:?} not in: {error}");
    }
    assert!(tenant_instances(&client, t).await.is_empty(), "the temporary instance is gone");
    fleet.drop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_or_invalid_instance_is_explained_by_validate_plan_and_the_run() {
    // acme is fine; bad_x renders to the invalid identifier db-bad_x-...; plain's service
    // names no instance at all.
    let extra = "\n[services.other]\nengine = \"postgres\"\nisolation = \"database\"\nhost = \"main\"\ndatabase = \"other_{tenant}\"\n";
    let fleet = Fleet::new(&["acme"], extra).await;
    let suffix = fleet.name.replace('_', "-");
    let (bad, plain) = (format!("bad_x-{suffix}"), format!("plain-{suffix}"));
    let mut config = std::fs::read_to_string(fleet.path().join("tenantry.toml")).unwrap();
    config.push_str(&format!(
        "\n[[catalog.tenants]]\nid = \"{bad}\"\nservices = [\"core\"]\n\n[[catalog.tenants]]\nid = \"{plain}\"\nservices = [\"other\"]\n"
    ));
    std::fs::write(fleet.path().join("tenantry.toml"), config).unwrap();

    let out = tenantry(fleet.path(), &["validate"], &[]);
    assert_eq!(out.code(), 0, "a warning, not a problem: {}", out.all());
    let warning = out.stderr();
    for part in [
        "workflows/snap.toml:7:".to_string(),
        "warning: step rds_snapshot: 2 of 3 target(s) cannot run it".to_string(),
        format!("tenant {bad}, service core: rds_instance \"db-{bad}\" is not an RDS DB instance identifier"),
        format!("tenant {plain}, service other: no RDS instance; set services.other.rds_instance"),
    ] {
        assert!(warning.contains(&part), "{part:?} not in:\n{warning}");
    }

    let out = tenantry(fleet.path(), &["plan", "snap", "--json"], &[]);
    assert_eq!(out.code(), 0, "{}", out.all());
    let plan: serde_json::Value = serde_json::from_str(&out.stdout()).unwrap();
    let steps: Vec<(String, String, String)> = plan["waves"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|w| w["plans"].as_array().unwrap().clone())
        .flat_map(|p| {
            let tenant = p["tenant"].as_str().unwrap().to_string();
            p["steps"]
                .as_array()
                .unwrap()
                .iter()
                .map(move |s| {
                    (
                        tenant.clone(),
                        s["action"].as_str().unwrap().to_string(),
                        s["reason"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(steps.len(), 3, "{plan:#}");
    for (tenant, action, reason) in &steps {
        if tenant == &fleet.tenants[0] {
            assert_eq!(action, "run");
        } else {
            assert_eq!(action, "blocked", "{tenant}");
            assert!(reason.contains(&format!("tenant {tenant}")), "{reason}");
        }
    }

    let _worker = fleet.worker();
    let (_, s) = fleet.run_and_wait("snap");
    assert_eq!(s["run"]["state"], "failed", "{s:#}");
    assert_eq!(s["tenants"][&fleet.tenants[0]]["state"], "succeeded", "{s:#}");
    for (tenant, service, why) in
        [(&bad, "core", "is not an RDS DB instance identifier"), (&plain, "other", "no RDS instance")]
    {
        let error = s["tenants"][tenant]["last_error"].as_str().unwrap();
        assert!(
            error.contains(&format!("step rds_snapshot/{service}"))
                && error.contains(&format!("tenant {tenant}, service {service}"))
                && error.contains(why),
            "{error}"
        );
    }
    assert_eq!(fleet.proxy.count("CreateDBSnapshot"), 1, "only the tenant with an instance");
    fleet.drop().await;
}

#[test]
fn rds_settings_that_cannot_work_are_reported_at_their_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("tenantry.toml"),
        "[rds]\nendpoint = \"127.0.0.1:5000\"\naccess_key_id = \"only-the-id\"\n\n\
         [hosts.main]\nengine = \"postgres\"\nurl = \"postgres://postgres@127.0.0.1/postgres\"\n\n\
         [services.clinic]\nengine = \"postgres\"\nisolation = \"schema\"\nhost = \"main\"\ndatabase = \"clinic\"\nrds_instance = \"tenant-{tenant}\"\n\n\
         [services.core]\nengine = \"postgres\"\nisolation = \"database\"\nhost = \"main\"\ndatabase = \"t_{tenant}\"\nrds_instance = \"shared_db\"\n",
    )
    .unwrap();
    let out = tenantry(dir.path(), &["validate"], &[]);
    assert_eq!(out.code(), 1, "{}", out.all());
    let text = out.stdout();
    for part in [
        "tenantry.toml:2:",
        "rds.endpoint must be an http:// or https:// URL",
        "rds needs both access_key_id and secret_access_key, or neither",
        "service clinic: rds_instance names each tenant's own RDS instance, which only database isolation has",
        "service core: rds_instance \"shared_db\" must contain {tenant}",
    ] {
        assert!(text.contains(part), "{part:?} not in:\n{}", out.all());
    }
    assert!(!text.contains("only-the-id"), "{text}");
}
