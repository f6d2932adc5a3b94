//! The `migrate` step with real workers on all three isolation models: once only, failures that leave tenants untouched, retry, concurrent runs, lock timeouts and refusals.

mod support;

use support::connect_db as connect;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use support::{
    WorkerProcess, clear_redis, exec, pg_admin, pg_url, redis_url, status, tenantry, unique, wait_for_state,
};

/// `n` tenants with a schema each in `{name}_clinic` (service `clinic`), a database each
/// for the first two (`core`), and shared `{name}_events` (`events`, row isolation).
struct Fleet {
    name: String,
    n: usize,
    dir: tempfile::TempDir,
}

impl Fleet {
    async fn new(n: usize) -> Fleet {
        let name = unique("tmig");
        let mut admin = pg_admin().await;
        exec(&mut admin, &format!("CREATE DATABASE {name}_clinic")).await;
        exec(&mut admin, &format!("CREATE DATABASE {name}_events")).await;
        for i in 0..2 {
            exec(&mut admin, &format!("CREATE DATABASE {name}_core_t{i:02}")).await;
        }
        let mut clinic = connect(&format!("{name}_clinic")).await;
        let schemas: String = (0..n).map(|i| format!("CREATE SCHEMA tenant_t{i:02};")).collect();
        exec(&mut clinic, &schemas).await;
        let dir = tempfile::tempdir().unwrap();
        for d in ["workflows", "migrations/clinic", "migrations/core", "migrations/events"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        let mut config = format!(
            r#"
[redis]
url = "{redis}"
prefix = "{name}"

[runtime]
worker_concurrency = 8
lease = "3s"
sweep_interval = "200ms"

[hosts.main]
engine = "postgres"
url = "{pg}"
max_concurrency = 8

[services.clinic]
engine = "postgres"
isolation = "schema"
host = "main"
database = "{name}_clinic"
schema = "tenant_{{tenant}}"
migrations = "migrations/clinic"

[services.core]
engine = "postgres"
isolation = "database"
host = "main"
database = "{name}_core_{{tenant}}"
migrations = "migrations/core"

[services.events]
engine = "postgres"
isolation = "row"
host = "main"
database = "{name}_events"
tenant_column = "tenant_id"
migrations = "migrations/events"
"#,
            redis = redis_url(),
            pg = pg_url()
        );
        for i in 0..n {
            let services = if i < 2 { r#"["clinic", "core", "events"]"# } else { r#"["clinic", "events"]"# };
            config.push_str(&format!("\n[[catalog.tenants]]\nid = \"t{i:02}\"\nservices = {services}\n"));
        }
        std::fs::write(dir.path().join("tenantry.toml"), config).unwrap();
        let fleet = Fleet { name, n, dir };
        fleet.migration("clinic", "V1__patients.sql", "CREATE TABLE patients (id int PRIMARY KEY, age int);\n");
        fleet.migration("core", "0001_policies.sql", "CREATE TABLE policies (id int PRIMARY KEY);\n");
        fleet.migration(
            "events",
            "20250101000000_events/migration.sql",
            "CREATE TABLE events (tenant_id text NOT NULL, kind text);\n",
        );
        fleet.workflow(
            "rollout",
            "[retry]\nattempts = 4\nbackoff = \"300ms\"\nmax_backoff = \"1s\"\n\n[[steps]]\nkind = \"migrate\"\nlock_timeout = \"1s\"\n",
        );
        fleet
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn migration(&self, service: &str, file: &str, sql: &str) {
        let path = self.path().join("migrations").join(service).join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, sql).unwrap();
    }

    fn workflow(&self, name: &str, text: &str) {
        std::fs::write(self.path().join("workflows").join(format!("{name}.toml")), text).unwrap();
    }

    fn start(&self, workflow: &str) -> String {
        let out = tenantry(self.path(), &["run", workflow], &[]);
        assert_eq!(out.code(), 0, "{}", out.all());
        out.stdout().trim().to_string()
    }

    fn run(&self, workflow: &str) -> serde_json::Value {
        let run = self.start(workflow);
        wait_for_state(self.path(), &run, &["succeeded", "failed", "cancelled"], Duration::from_secs(90))
    }

    /// version -> state of the clinic history of tenant `i`.
    async fn clinic_history(&self, i: usize) -> BTreeMap<String, String> {
        let mut db = connect(&format!("{}_clinic", self.name)).await;
        sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT version, state FROM tenant_t{i:02}.tenantry_migrations")))
            .fetch_all(&mut db)
            .await
            .unwrap_or_default()
            .into_iter()
            .collect()
    }

    async fn column_exists(&self, i: usize, table: &str, column: &str) -> bool {
        let mut db = connect(&format!("{}_clinic", self.name)).await;
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = $1 AND table_name = $2 AND column_name = $3)",
        )
        .bind(format!("tenant_t{i:02}"))
        .bind(table)
        .bind(column)
        .fetch_one(&mut db)
        .await
        .unwrap()
    }

    async fn drop(self) {
        clear_redis(&self.name).await;
        let mut admin = pg_admin().await;
        let mut dbs = vec![format!("{}_clinic", self.name), format!("{}_events", self.name)];
        dbs.extend((0..2).map(|i| format!("{}_core_t{i:02}", self.name)));
        for db in dbs {
            exec(&mut admin, &format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)")).await;
        }
        let _ = self.n;
    }
}

fn error_of(s: &serde_json::Value, tenant: &str) -> String {
    s["tenants"][tenant]["last_error"].as_str().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn applied_once_on_every_isolation_model_and_rerun_does_nothing() {
    let fleet = Fleet::new(6).await;
    let _worker = WorkerProcess::spawn(fleet.path());
    let s = fleet.run("rollout");
    assert_eq!(s["run"]["state"], "succeeded", "{s:#}");
    for i in 0..6 {
        assert_eq!(fleet.clinic_history(i).await, BTreeMap::from([("1".to_string(), "applied".to_string())]));
    }
    for i in 0..2 {
        let mut core = connect(&format!("{}_core_t{i:02}", fleet.name)).await;
        let (v, checksum, run): (String, String, String) =
            sqlx::query_as("SELECT version, checksum, run_id FROM tenantry_migrations")
                .fetch_one(&mut core)
                .await
                .unwrap();
        assert_eq!(v, "1");
        assert_eq!(checksum.len(), 64);
        assert_eq!(run, s["run"]["id"].as_str().unwrap());
    }
    // Row isolation: one shared target, migrated once for all tenants.
    let mut events = connect(&format!("{}_events", fleet.name)).await;
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM tenantry_migrations").fetch_one(&mut events).await.unwrap();
    assert_eq!(n, 1);
    let changed: usize = s["tenants"]
        .as_object()
        .unwrap()
        .values()
        .filter_map(|c| c["outputs"]["migrate/events"]["changed"].as_array())
        .map(Vec::len)
        .sum();
    assert_eq!(changed, 1, "exactly one tenant applied the shared migration");

    // Again: nothing to do anywhere.
    let again = fleet.run("rollout");
    assert_eq!(again["run"]["state"], "succeeded");
    for c in again["tenants"].as_object().unwrap().values() {
        for (_, out) in c["outputs"].as_object().unwrap() {
            assert_eq!(out["up_to_date"], true, "{out}");
        }
    }
    fleet.drop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_data_fails_three_tenants_untouched_and_retry_migrates_only_them() {
    let fleet = Fleet::new(10).await;
    let _worker = WorkerProcess::spawn(fleet.path());
    assert_eq!(fleet.run("rollout")["run"]["state"], "succeeded");
    // Bad data in three tenants: a negative age.
    let mut clinic = connect(&format!("{}_clinic", fleet.name)).await;
    for i in 0..10 {
        let age = if [2, 5, 7].contains(&i) { -1 } else { 30 };
        exec(&mut clinic, &format!("INSERT INTO tenant_t{i:02}.patients VALUES (1, {age})")).await;
    }
    fleet.migration(
        "clinic",
        "V2__age_check.sql",
        "ALTER TABLE patients ADD COLUMN name text;\nALTER TABLE patients ADD CONSTRAINT age_positive CHECK (age >= 0);\n",
    );
    fleet.workflow(
        "clinic-only",
        "[target]\nservices = [\"clinic\"]\n\n[[waves]]\nname = \"all\"\nmax_failures = 3\n\n\
         [retry]\nattempts = 2\nbackoff = \"100ms\"\nmax_backoff = \"200ms\"\n\n[[steps]]\nkind = \"migrate\"\n",
    );
    let s = fleet.run("clinic-only");
    assert_eq!(s["run"]["state"], "failed", "{s:#}");
    assert!(
        s["run"]["reason"].as_str().unwrap().contains("completed: 3 tenant(s) failed, within the failure budgets"),
        "{s:#}"
    );
    for i in 0..10 {
        let failed = [2, 5, 7].contains(&i);
        let t = format!("t{i:02}");
        assert_eq!(s["tenants"][&t]["state"], if failed { "failed" } else { "succeeded" }, "{t}");
        // The failed ones are exactly as they were: no new column, no history row.
        assert_eq!(fleet.column_exists(i, "patients", "name").await, !failed, "{t}");
        assert_eq!(fleet.clinic_history(i).await.contains_key("2"), !failed, "{t}");
    }
    let error = error_of(&s, "t05");
    assert!(
        error.contains("applying version 2") && error.contains("V2__age_check.sql") && error.contains("age_positive"),
        "{error}"
    );
    // Fix the data; retry migrates only the three.
    exec(&mut clinic, "UPDATE tenant_t02.patients SET age = 0; UPDATE tenant_t05.patients SET age = 0; UPDATE tenant_t07.patients SET age = 0;")
        .await;
    let out = tenantry(fleet.path(), &["retry", s["run"]["id"].as_str().unwrap(), "--wait"], &[]);
    assert_eq!(out.code(), 0, "{}", out.all());
    let retry = status(fleet.path(), out.stdout().lines().next().unwrap().trim());
    assert_eq!(retry["run"]["tenants"], 3);
    assert!(retry["tenants"].as_object().unwrap().keys().all(|t| ["t02", "t05", "t07"].contains(&t.as_str())));
    for i in 0..10 {
        assert!(fleet.column_exists(i, "patients", "name").await);
    }
    fleet.drop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_runs_at_once_apply_every_migration_exactly_once() {
    let fleet = Fleet::new(12).await;
    fleet.migration("clinic", "V2__visits.sql", "CREATE TABLE visits (id int); SELECT pg_sleep(0.05);\n");
    let _a = WorkerProcess::spawn(fleet.path());
    let _b = WorkerProcess::spawn(fleet.path());
    let first = fleet.start("rollout");
    let second = fleet.start("rollout");
    let s1 = wait_for_state(fleet.path(), &first, &["succeeded", "failed"], Duration::from_secs(90));
    let s2 = wait_for_state(fleet.path(), &second, &["succeeded", "failed"], Duration::from_secs(90));
    assert_eq!(s1["run"]["state"], "succeeded", "{s1:#}");
    assert_eq!(s2["run"]["state"], "succeeded", "{s2:#}");
    for i in 0..12 {
        let history = fleet.clinic_history(i).await;
        assert_eq!(history.len(), 2, "t{i:02}: {history:?}");
    }
    // Each migration of each target was applied by exactly one of the two runs.
    let mut applied: BTreeMap<String, usize> = BTreeMap::new();
    for s in [&s1, &s2] {
        for (t, c) in s["tenants"].as_object().unwrap() {
            for (unit, out) in c["outputs"].as_object().unwrap() {
                // A tenant the second run found up to date when it was created (the first
                // run had applied everything of it) is done without running: nothing applied.
                if unit == "run" && out["up_to_date"] == true {
                    continue;
                }
                for m in out["changed"].as_array().unwrap_or_else(|| panic!("{unit}: {out}")) {
                    let target = if unit == "migrate/events" { "events".to_string() } else { format!("{t}/{unit}") };
                    *applied.entry(format!("{target}:{m}")).or_default() += 1;
                }
            }
        }
    }
    assert!(applied.values().all(|n| *n == 1), "{applied:#?}");
    assert_eq!(applied.len(), 12 * 2 + 2 + 1, "{applied:#?}");
    fleet.drop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_long_transaction_makes_one_tenant_wait_and_retry_without_holding_the_others() {
    let fleet = Fleet::new(6).await;
    let _worker = WorkerProcess::spawn(fleet.path());
    assert_eq!(fleet.run("rollout")["run"]["state"], "succeeded");
    fleet.migration("clinic", "V2__name.sql", "ALTER TABLE patients ADD COLUMN name text;\n");
    // Someone holds a lock on t03's table.
    let mut blocker = connect(&format!("{}_clinic", fleet.name)).await;
    exec(&mut blocker, "BEGIN; LOCK TABLE tenant_t03.patients IN ACCESS SHARE MODE;").await;
    let run = fleet.start("rollout");
    // The others finish while t03 waits.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let s = status(fleet.path(), &run);
        let others_done = (0..6).filter(|i| *i != 3).all(|i| s["tenants"][format!("t{i:02}")]["state"] == "succeeded");
        if others_done {
            assert_ne!(s["tenants"]["t03"]["state"], "succeeded");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "others were held: {s:#}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // t03 has retried after a lock timeout.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let s = status(fleet.path(), &run);
        let e = error_of(&s, "t03");
        if e.contains("lock timeout") || e.contains("canceling statement due to lock timeout") {
            assert!(e.contains("retrying"), "{e}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no lock timeout recorded: {s:#}");
        std::thread::sleep(Duration::from_millis(200));
    }
    exec(&mut blocker, "COMMIT").await;
    let s = wait_for_state(fleet.path(), &run, &["succeeded", "failed"], Duration::from_secs(30));
    assert_eq!(s["run"]["state"], "succeeded", "{s:#}");
    assert!(fleet.column_exists(3, "patients", "name").await);
    fleet.drop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn drift_dirty_missing_and_out_of_order_are_refused_with_clear_messages() {
    let fleet = Fleet::new(4).await;
    let _worker = WorkerProcess::spawn(fleet.path());
    fleet.migration("clinic", "V3__three.sql", "CREATE TABLE three (id int);\n");
    assert_eq!(fleet.run("rollout")["run"]["state"], "succeeded");
    let mut clinic = connect(&format!("{}_clinic", fleet.name)).await;
    // t00: dirty (a no-transaction migration that stopped half-way).
    exec(&mut clinic, "UPDATE tenant_t00.tenantry_migrations SET state = 'started' WHERE version = '3'").await;
    // t01: an applied version whose file is gone from the directory.
    exec(&mut clinic, "INSERT INTO tenant_t01.tenantry_migrations (version, name, checksum, state) VALUES ('9', 'ghost', 'x', 'applied')").await;
    // Everyone: a new migration older than the newest applied one (out of order).
    fleet.migration("clinic", "V2__two.sql", "CREATE TABLE two (id int);\n");
    fleet.workflow(
        "clinic-only",
        "[target]\nservices = [\"clinic\"]\n\n[retry]\nattempts = 1\n\n[[steps]]\nkind = \"migrate\"\n",
    );
    let s = fleet.run("clinic-only");
    let e0 = error_of(&s, "t00");
    assert!(
        e0.contains("migrate refuses to run on tenant t00")
            && e0.contains("version 3 is dirty")
            && e0.contains("V3__three.sql"),
        "{e0}"
    );
    let e1 = error_of(&s, "t01");
    assert!(e1.contains("version 9 (ghost) is recorded as applied but its file is missing"), "{e1}");
    let e2 = error_of(&s, "t02");
    assert!(
        e2.contains("version 2 (")
            && e2.contains("V2__two.sql")
            && e2.contains("out of order")
            && e2.contains("allow_out_of_order"),
        "{e2}"
    );
    // Drift: the applied V1 file changes.
    std::fs::remove_file(fleet.path().join("migrations/clinic/V2__two.sql")).unwrap();
    fleet.migration("clinic", "V1__patients.sql", "CREATE TABLE patients (id bigint PRIMARY KEY, age int);\n");
    let s = fleet.run("clinic-only");
    let e3 = error_of(&s, "t03");
    assert!(
        e3.contains("version 1 was changed after it was applied (drift)") && e3.contains("V1__patients.sql"),
        "{e3}"
    );
    // Nothing was applied by the refused runs.
    assert!(!fleet.clinic_history(2).await.contains_key("2"));
    fleet.drop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn revert_undoes_only_what_a_given_run_changed() {
    let fleet = Fleet::new(6).await;
    let _worker = WorkerProcess::spawn(fleet.path());
    assert_eq!(fleet.run("rollout")["run"]["state"], "succeeded");
    fleet.migration("clinic", "V2__name.sql", "ALTER TABLE patients ADD COLUMN name text;\n");
    fleet.migration("clinic", "U2__name.sql", "ALTER TABLE patients DROP COLUMN name;\n");
    fleet.workflow("clinic-only", "[target]\nservices = [\"clinic\"]\n\n[[steps]]\nkind = \"migrate\"\n");
    fleet.workflow("clinic-revert", "[target]\nservices = [\"clinic\"]\n\n[[steps]]\nkind = \"migrate\"\nto = \"1\"\n");
    // An earlier run already took t04 and t05 to version 2...
    let out = tenantry(fleet.path(), &["run", "clinic-only", "--tenant", "t04", "--tenant", "t05", "--wait"], &[]);
    assert_eq!(out.code(), 0, "{}", out.all());
    // ...then run A takes the rest.
    let a = fleet.run("clinic-only");
    assert_eq!(a["run"]["state"], "succeeded");
    // Undo only what A did.
    let out = tenantry(
        fleet.path(),
        &["run", "clinic-revert", "--changed-by", a["run"]["id"].as_str().unwrap(), "--wait"],
        &[],
    );
    assert_eq!(out.code(), 0, "{}", out.all());
    let revert = status(fleet.path(), out.stdout().lines().next().unwrap().trim());
    assert_eq!(revert["run"]["tenants"], 4, "{revert:#}");
    for i in 0..6 {
        let at_two = i >= 4;
        assert_eq!(fleet.column_exists(i, "patients", "name").await, at_two, "t{i:02}");
        assert_eq!(fleet.clinic_history(i).await.contains_key("2"), at_two, "t{i:02}");
    }
    // Nothing to undo for a run that changed nothing.
    let out =
        tenantry(fleet.path(), &["run", "clinic-revert", "--changed-by", revert["run"]["id"].as_str().unwrap()], &[]);
    assert_eq!(out.code(), 0, "the revert changed tenants, so undoing it is possible: {}", out.all());
    fleet.drop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn provision_creates_migrates_and_seeds_a_new_tenant_and_is_safe_to_repeat() {
    let fleet = Fleet::new(2).await;
    std::fs::create_dir_all(fleet.path().join("seeds/clinic")).unwrap();
    std::fs::write(
        fleet.path().join("seeds/clinic/01_patients.sql"),
        "INSERT INTO patients (id, age) VALUES (0, 0) ON CONFLICT (id) DO NOTHING;\n",
    )
    .unwrap();
    let config = std::fs::read_to_string(fleet.path().join("tenantry.toml")).unwrap();
    let config = config
        .replace("migrations = \"migrations/clinic\"", "migrations = \"migrations/clinic\"\nseeds = \"seeds/clinic\"");
    std::fs::write(fleet.path().join("tenantry.toml"), config).unwrap();
    // t01 has nothing yet: provision creates its database and schema (and skips `events`,
    // a row-isolation service where there is nothing to create).
    let mut admin = pg_admin().await;
    exec(&mut admin, &format!("DROP DATABASE {}_core_t01", fleet.name)).await;
    let mut clinic = connect(&format!("{}_clinic", fleet.name)).await;
    exec(&mut clinic, "DROP SCHEMA tenant_t01").await;
    fleet.workflow("provision", &std::fs::read_to_string(support::repo().join("workflows/provision.toml")).unwrap());

    let _worker = WorkerProcess::spawn(fleet.path());
    let out = tenantry(fleet.path(), &["run", "provision", "--tenant", "t01", "--wait"], &[]);
    assert_eq!(out.code(), 0, "{}", out.all());
    let s = status(fleet.path(), out.stdout().lines().next().unwrap().trim());
    let outputs = &s["tenants"]["t01"]["outputs"];
    assert_eq!(outputs["provision/clinic"]["created"], true, "{outputs:#}");
    assert_eq!(outputs["provision/core"]["created"], true, "{outputs:#}");
    assert_eq!(outputs["provision/clinic"]["seed"]["seeded"], serde_json::json!(["01_patients.sql"]));
    assert_eq!(fleet.clinic_history(1).await.get("1").map(String::as_str), Some("applied"));
    let mut core = connect(&format!("{}_core_t01", fleet.name)).await;
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM tenantry_migrations").fetch_one(&mut core).await.unwrap();
    assert_eq!(n, 1);
    let (patients,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM tenant_t01.patients").fetch_one(&mut clinic).await.unwrap();
    assert_eq!(patients, 1);

    // Again: nothing is created, nothing is pending, the idempotent seed changes nothing.
    let out = tenantry(fleet.path(), &["run", "provision", "--tenant", "t01", "--wait"], &[]);
    assert_eq!(out.code(), 0, "{}", out.all());
    let s = status(fleet.path(), out.stdout().lines().next().unwrap().trim());
    let outputs = &s["tenants"]["t01"]["outputs"];
    assert_eq!(outputs["provision/clinic"]["created"], false);
    assert_eq!(outputs["provision/clinic"]["migrate"]["up_to_date"], true);
    let (patients,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM tenant_t01.patients").fetch_one(&mut clinic).await.unwrap();
    assert_eq!(patients, 1);
    drop(core);
    fleet.drop().await;
}

/// A migration that sleeps past its step timeout: the statement is stopped in PostgreSQL
/// (its transaction rolled back), the target's advisory lock is not left held by a pooled
/// connection, and the next run with the fixed file applies it at once without waiting
/// for a lock.
#[tokio::test(flavor = "multi_thread")]
async fn a_migration_that_sleeps_past_its_timeout_leaves_no_statement_or_lock_and_the_next_run_goes_at_once() {
    let fleet = Fleet::new(1).await;
    let db = format!("{}_clinic", fleet.name);
    fleet.migration("clinic", "V2__slow.sql", "SELECT pg_sleep(30);\nCREATE TABLE slow (id int);\n");
    fleet.workflow(
        "slow",
        "[retry]\nattempts = 1\n\n[[steps]]\nkind = \"migrate\"\nservices = [\"clinic\"]\ntimeout = \"2s\"\n",
    );
    let _worker = WorkerProcess::spawn(fleet.path());
    let s = fleet.run("slow");
    assert_eq!(s["run"]["state"], "failed", "{s:#}");
    let error = s["tenants"]["t00"]["last_error"].as_str().unwrap_or_default().to_string();
    assert!(error.contains("timed out after 2s"), "{error}");

    // In the database, nothing of the stopped step is left (the termination is
    // asynchronous: allow it a moment).
    let mut admin = pg_admin().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    let (statements, locks) = loop {
        let statements: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND query LIKE '%pg_sleep(30)%' AND pid <> pg_backend_pid()",
        )
        .bind(&db)
        .fetch_one(&mut admin)
        .await
        .unwrap();
        let locks: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database WHERE l.locktype = 'advisory' AND d.datname = $1",
        )
        .bind(&db)
        .fetch_one(&mut admin)
        .await
        .unwrap();
        if (statements == 0 && locks == 0) || std::time::Instant::now() > deadline {
            break (statements, locks);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(statements, 0, "the timed-out migration's statement is still running");
    assert_eq!(locks, 0, "an advisory lock of the timed-out migration is still held");
    assert_eq!(fleet.clinic_history(0).await.get("2"), None, "the stopped migration was rolled back");

    fleet.migration("clinic", "V2__slow.sql", "CREATE TABLE slow (id int);\n");
    let started = std::time::Instant::now();
    let s = fleet.run("slow");
    assert_eq!(s["run"]["state"], "succeeded", "{s:#}");
    let output = &s["tenants"]["t00"]["outputs"]["migrate/clinic"];
    assert_eq!(output["waited_for_lock_ms"], 0, "the next run did not wait for a leftover lock: {output:#}");
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    assert_eq!(fleet.clinic_history(0).await.get("2").map(String::as_str), Some("applied"));
    fleet.drop().await;
}
