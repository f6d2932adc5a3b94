//! Step kinds run by real workers on all three isolation models: `sql` (once, with receipts) and `health`.

mod support;

use support::connect_db as connect;

use std::path::Path;
use std::time::Duration;

use support::{WorkerProcess, clear_redis, exec, pg_admin, pg_url, redis_url, tenantry, unique, wait_for_state};

/// Four tenants: `core` (a database each), `clinic` (a schema each), `events` (shared rows).
struct Fleet {
    name: String,
    dir: tempfile::TempDir,
}

const TENANTS: [&str; 4] = ["acme", "globex", "initech", "umbrella"];

impl Fleet {
    async fn new() -> Fleet {
        let name = unique("tsteps");
        let mut admin = pg_admin().await;
        exec(&mut admin, &format!("CREATE DATABASE {name}_clinic")).await;
        exec(&mut admin, &format!("CREATE DATABASE {name}_events")).await;
        for t in TENANTS {
            exec(&mut admin, &format!("CREATE DATABASE {name}_core_{t}")).await;
        }
        let mut clinic = connect(&format!("{name}_clinic")).await;
        for t in TENANTS {
            exec(&mut clinic, &format!("CREATE SCHEMA tenant_{t}; CREATE TABLE tenant_{t}.visits (id int);")).await;
        }
        let mut events = connect(&format!("{name}_events")).await;
        exec(
            &mut events,
            "CREATE TABLE events (tenant_id text NOT NULL, n int); CREATE TABLE seen (tenant_id text NOT NULL);",
        )
        .await;
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("workflows")).unwrap();
        let mut config = format!(
            r#"
[redis]
url = "{redis}"
prefix = "{name}"

[runtime]
lease = "3s"
sweep_interval = "200ms"

[hosts.main]
engine = "postgres"
url = "{pg}"

[services.core]
engine = "postgres"
isolation = "database"
host = "main"
database = "{name}_core_{{tenant}}"

[services.clinic]
engine = "postgres"
isolation = "schema"
host = "main"
database = "{name}_clinic"
schema = "tenant_{{tenant}}"

[services.events]
engine = "postgres"
isolation = "row"
host = "main"
database = "{name}_events"
tenant_column = "tenant_id"
"#,
            redis = redis_url(),
            pg = pg_url()
        );
        for t in TENANTS {
            config.push_str(&format!(
                "\n[[catalog.tenants]]\nid = \"{t}\"\nservices = [\"core\", \"clinic\", \"events\"]\n"
            ));
        }
        std::fs::write(dir.path().join("tenantry.toml"), config).unwrap();
        Fleet { name, dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn workflow(&self, name: &str, text: &str) {
        std::fs::write(self.path().join("workflows").join(format!("{name}.toml")), text).unwrap();
    }

    fn run_and_wait(&self, workflow: &str) -> serde_json::Value {
        let out = tenantry(self.path(), &["run", workflow], &[]);
        assert_eq!(out.code(), 0, "{}", out.all());
        let run = out.stdout().trim().to_string();
        wait_for_state(self.path(), &run, &["succeeded", "failed", "cancelled"], Duration::from_secs(60))
    }

    async fn drop(self) {
        clear_redis(&self.name).await;
        let mut admin = pg_admin().await;
        let mut dbs = vec![format!("{}_clinic", self.name), format!("{}_events", self.name)];
        dbs.extend(TENANTS.iter().map(|t| format!("{}_core_{t}", self.name)));
        for db in dbs {
            exec(&mut admin, &format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)")).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sql_runs_once_per_tenant_on_every_isolation_model() {
    let fleet = Fleet::new().await;
    fleet.workflow(
        "touch",
        r#"
[[steps]]
name = "core-mark"
kind = "sql"
services = ["core"]
sql = "CREATE TABLE IF NOT EXISTS marks (tenant text); INSERT INTO marks VALUES (current_setting('tenantry.tenant'))"

[[steps]]
name = "clinic-visit"
kind = "sql"
services = ["clinic"]
sql = "INSERT INTO visits VALUES (1)"

[[steps]]
name = "events-seen"
kind = "sql"
services = ["events"]
sql = "INSERT INTO seen (tenant_id) VALUES (current_setting('tenantry.tenant'))"
"#,
    );
    let _worker = WorkerProcess::spawn(fleet.path());
    let s = fleet.run_and_wait("touch");
    assert_eq!(s["run"]["state"], "succeeded", "{s:#}");
    for t in TENANTS {
        let mut core = connect(&format!("{}_core_{t}", fleet.name)).await;
        let marks: Vec<(String,)> = sqlx::query_as("SELECT tenant FROM marks").fetch_all(&mut core).await.unwrap();
        assert_eq!(marks, vec![(t.to_string(),)], "database isolation: the tenant's own database");
        let mut clinic = connect(&format!("{}_clinic", fleet.name)).await;
        let (n,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM tenant_{t}.visits")))
            .fetch_one(&mut clinic)
            .await
            .unwrap();
        assert_eq!(n, 1, "schema isolation: the tenant's own schema");
        // Receipts live in the same database as the data, so they commit together.
        let (receipts,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM tenantry.receipts WHERE tenant = '{t}' AND step = 'clinic-visit/clinic'"
        )))
        .fetch_one(&mut clinic)
        .await
        .unwrap();
        assert_eq!(receipts, 1);
    }
    let mut events = connect(&format!("{}_events", fleet.name)).await;
    let seen: Vec<(String, i64)> = sqlx::query_as("SELECT tenant_id, count(*) FROM seen GROUP BY tenant_id ORDER BY 1")
        .fetch_all(&mut events)
        .await
        .unwrap();
    assert_eq!(
        seen,
        TENANTS.iter().map(|t| (t.to_string(), 1)).collect::<Vec<_>>(),
        "row isolation: one row per tenant"
    );

    // `retry` of a succeeded run has nothing to do; a second run applies again under its
    // own run id (receipts are per run), so operators' SQL must be idempotent per run.
    let out = tenantry(fleet.path(), &["retry", s["run"]["id"].as_str().unwrap()], &[]);
    assert_eq!(out.code(), 1);
    assert!(out.stderr().contains("has no failed tenants"), "{}", out.all());
    fleet.drop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn health_reports_every_isolation_model_and_flags_a_long_transaction() {
    let fleet = Fleet::new().await;
    fleet.workflow("health", "[retry]\nattempts = 1\n\n[[steps]]\nkind = \"health\"\nlong_transaction = \"1s\"\n");
    // A transaction left open in globex's core database.
    let mut holder = connect(&format!("{}_core_globex", fleet.name)).await;
    exec(&mut holder, "BEGIN; SELECT txid_current();").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let _worker = WorkerProcess::spawn(fleet.path());
    let s = fleet.run_and_wait("health");
    assert_eq!(s["run"]["state"], "failed", "{s:#}");
    assert_eq!(s["run"]["succeeded"], 3);
    let globex = &s["tenants"]["globex"];
    assert_eq!(globex["state"], "failed");
    let error = globex["last_error"].as_str().unwrap();
    assert!(
        error.contains("step health/core") && error.contains("unhealthy: 1 transaction(s) open longer than 1s"),
        "{error}"
    );
    let acme = &s["tenants"]["acme"]["outputs"];
    assert!(acme["health/core"]["database_bytes"].as_i64().unwrap() > 0, "{acme:#}");
    assert!(
        acme["health/clinic"]["schema_bytes"].as_i64().is_some(),
        "schema isolation reports the schema's size: {acme:#}"
    );
    assert!(acme["health/events"]["xid_age"].as_i64().is_some(), "{acme:#}");
    assert!(acme["health/events"]["connections"].as_i64().unwrap() >= 1, "{acme:#}");
    drop(holder);
    fleet.drop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn health_flags_a_replication_slot_holding_wal_and_a_shared_table_without_row_level_security() {
    let fleet = Fleet::new().await;
    // A temporary physical slot (gone with its session) that holds WAL from now on.
    let slot = format!("{}_slot", fleet.name);
    let mut holder = connect(&format!("{}_core_acme", fleet.name)).await;
    exec(&mut holder, &format!("SELECT pg_create_physical_replication_slot('{slot}', true, true)")).await;
    exec(&mut holder, "CREATE TABLE filler AS SELECT g, md5(g::text) AS m FROM generate_series(1, 20000) g").await;
    fleet.workflow(
        "slots",
        "[retry]\nattempts = 1\n\n[[steps]]\nkind = \"health\"\nservices = [\"core\"]\nmax_slot_wal = \"64KiB\"\n",
    );
    let _worker = WorkerProcess::spawn(fleet.path());
    let s = fleet.run_and_wait("slots");
    assert_eq!(s["run"]["state"], "failed", "{s:#}");
    let error = s["tenants"]["globex"]["last_error"].as_str().unwrap();
    // A temporary slot is active while the session that made it lasts.
    assert!(error.contains(&format!("replication slot {slot} (active) holds")), "{error}");
    assert!(error.contains("over max_slot_wal (65536)"), "{error}");
    drop(holder);

    // `events` is forced with a policy on a setting; `seen` has no row-level security.
    let mut events = connect(&format!("{}_events", fleet.name)).await;
    exec(
        &mut events,
        "ALTER TABLE events ENABLE ROW LEVEL SECURITY; ALTER TABLE events FORCE ROW LEVEL SECURITY;
         CREATE POLICY tenant ON events USING (tenant_id = current_setting('app.tenant', true));",
    )
    .await;
    fleet.workflow(
        "rls",
        "[retry]\nattempts = 1\n\n[[steps]]\nkind = \"health\"\nservices = [\"events\"]\nrls = true\n",
    );
    let s = fleet.run_and_wait("rls");
    assert_eq!(s["run"]["state"], "failed", "{s:#}");
    let error = s["tenants"]["acme"]["last_error"].as_str().unwrap();
    assert!(
        error.contains(
            "row-level security: seen: not enabled, no policy comparing the tenant column with current_setting(...)"
        ),
        "{error}"
    );
    assert!(!error.contains("events:"), "events is protected: {error}");
    exec(
        &mut events,
        "ALTER TABLE seen ENABLE ROW LEVEL SECURITY; ALTER TABLE seen FORCE ROW LEVEL SECURITY;
         CREATE POLICY tenant ON seen USING (tenant_id = current_setting('app.tenant', true));",
    )
    .await;
    let s = fleet.run_and_wait("rls");
    assert_eq!(s["run"]["state"], "succeeded", "{s:#}");
    assert_eq!(s["tenants"]["acme"]["outputs"]["health/events"]["rls_findings"], serde_json::json!([]), "{s:#}");
    fleet.drop().await;
}
