//! The catalog from a SQL query and `plan` against real PostgreSQL: placements, bad rows, histories read in bulk, refusals.

mod support;

use support::connect_db as connect;

use std::path::Path;

use sha2::{Digest, Sha256};
use support::{exec, pg_admin, pg_url, tenantry, unique};

/// A fleet on the test server: a system database with a `tenants` table, a schema service
/// with `n` tenants and a database service for the first two. Dropped on drop.
struct Fleet {
    name: String,
    dir: tempfile::TempDir,
}

impl Fleet {
    async fn create(n: usize, extra_rows: &str) -> Fleet {
        let name = unique("tfleet");
        let mut admin = pg_admin().await;
        exec(&mut admin, &format!("CREATE DATABASE {name}_sys")).await;
        exec(&mut admin, &format!("CREATE DATABASE {name}_clinic")).await;
        for i in 0..2 {
            exec(&mut admin, &format!("CREATE DATABASE \"{name}_t-{i:03}_core\"")).await;
        }
        let mut sys = connect(&format!("{name}_sys")).await;
        exec(
            &mut sys,
            "CREATE TABLE tenants (id text PRIMARY KEY, name text, status text NOT NULL DEFAULT 'active', \
             labels jsonb NOT NULL DEFAULT '{}', services text[] NOT NULL)",
        )
        .await;
        let mut rows = Vec::new();
        for i in 0..n {
            let services = if i < 2 { "{clinic,core}" } else { "{clinic}" };
            let ring = if i == 0 { r#"{"ring": "canary", "tier": "enterprise"}"# } else { r#"{"tier": "standard"}"# };
            rows.push(format!("('t-{i:03}', 'Tenant {i}', 'active', '{ring}', '{services}')"));
        }
        exec(&mut sys, &format!("INSERT INTO tenants (id, name, status, labels, services) VALUES {}", rows.join(",")))
            .await;
        if !extra_rows.is_empty() {
            exec(&mut sys, extra_rows).await;
        }
        let mut clinic = connect(&format!("{name}_clinic")).await;
        let schemas: Vec<String> = (0..n).map(|i| format!("CREATE SCHEMA \"tenant_t-{i:03}\";")).collect();
        exec(&mut clinic, &schemas.join("\n")).await;

        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("migrations/clinic")).unwrap();
        std::fs::create_dir_all(dir.path().join("migrations/core")).unwrap();
        std::fs::create_dir_all(dir.path().join("workflows")).unwrap();
        write(dir.path(), "migrations/clinic/V1__patients.sql", "CREATE TABLE patients (id bigint PRIMARY KEY);\n");
        write(dir.path(), "migrations/clinic/V2__visits.sql", "CREATE TABLE visits (id bigint PRIMARY KEY);\n");
        write(dir.path(), "migrations/core/0001_policies.sql", "CREATE TABLE policies (id bigint);\n");
        write(
            dir.path(),
            "workflows/rollout.toml",
            "[[waves]]\nname = \"canary\"\nlabels = { ring = \"canary\" }\nmax_failures = 0\n\n\
             [[waves]]\nname = \"ten\"\npercent = 10\n\n[[steps]]\nkind = \"migrate\"\n",
        );
        let url = pg_url();
        write(
            dir.path(),
            "tenantry.toml",
            &format!(
                r#"
[hosts.main]
engine = "postgres"
url = "{url}"

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
database = "{name}_{{tenant}}_core"
migrations = "migrations/core"

[catalog]
source = "sql"

[catalog.sql]
host = "main"
database = "{name}_sys"
query = "SELECT id, name, status, labels, (SELECT jsonb_object_agg(s, '{{}}'::jsonb) FROM unnest(services) AS s) AS placements FROM tenants"
"#
            ),
        );
        Fleet { name, dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Records `versions` of the clinic migrations as applied in tenant `i`'s schema, with
    /// the checksum of the file (or a wrong one, to simulate drift).
    async fn record_applied(&self, i: usize, versions: &[(&str, &str, &str)], state: &str) {
        let mut clinic = connect(&format!("{}_clinic", self.name)).await;
        let schema = format!("\"tenant_t-{i:03}\"");
        exec(&mut clinic, &format!("SET search_path TO {schema}; {}", tenantry::steps::migrate::HISTORY_DDL)).await;
        for (version, name, file) in versions {
            let checksum = match std::fs::read(self.path().join("migrations/clinic").join(file)) {
                Ok(bytes) => hex::encode(Sha256::digest(bytes)),
                Err(_) => "0".repeat(64),
            };
            exec(
                &mut clinic,
                &format!(
                    "INSERT INTO {schema}.tenantry_migrations (version, name, checksum, state) VALUES ('{version}', '{name}', '{checksum}', '{state}')"
                ),
            )
            .await;
        }
    }

    async fn drop(self) {
        let mut admin = pg_admin().await;
        let mut dbs = vec![format!("{}_sys", self.name), format!("{}_clinic", self.name)];
        dbs.extend((0..2).map(|i| format!("{}_t-{i:03}_core", self.name)));
        for db in dbs {
            exec(&mut admin, &format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)")).await;
        }
    }
}

fn write(dir: &Path, rel: &str, text: &str) {
    std::fs::write(dir.join(rel), text).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn sql_catalog_resolves_placements() {
    let fleet = Fleet::create(30, "").await;
    let run = tenantry(fleet.path(), &["tenants", "--json"], &[]);
    assert_eq!(run.code(), 0, "{}", run.all());
    let listing: serde_json::Value = serde_json::from_str(&run.stdout()).unwrap();
    assert_eq!(listing["placements_per_service"]["clinic"], 30);
    assert_eq!(listing["placements_per_service"]["core"], 2);
    let t0 = &listing["tenants"][0];
    assert_eq!(t0["id"], "t-000");
    assert_eq!(t0["labels"]["ring"], "canary");
    assert_eq!(t0["placements"]["core"]["database"], format!("{}_t-000_core", fleet.name));
    assert_eq!(t0["placements"]["clinic"]["schema"], "tenant_t-000");

    let run = tenantry(fleet.path(), &["validate"], &[]);
    assert_eq!(run.code(), 0, "{}", run.all());
    assert!(run.stdout().contains("30 tenant(s)"), "{}", run.all());
    fleet.drop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_catalog_rows_are_reported_and_the_rest_still_resolves() {
    let fleet = Fleet::create(
        3,
        "INSERT INTO tenants (id, services) VALUES ('Bad Tenant', '{clinic}'), ('ok-but-unknown', '{billing}');
         INSERT INTO tenants (id, status, services) VALUES ('weird-status', 'deleted', '{clinic}');",
    )
    .await;
    let run = tenantry(fleet.path(), &["validate"], &[]);
    assert_eq!(run.code(), 1, "{}", run.all());
    let out = run.stdout();
    // Reported at the query in the config file, naming the row and the id.
    assert!(out.contains("invalid tenant id \"Bad Tenant\""), "{out}");
    assert!(out.contains("tenant ok-but-unknown: unknown service \"billing\""), "{out}");
    assert!(out.contains("invalid tenant status \"deleted\""), "{out}");
    assert!(out.lines().all(|l| !l.contains(": ") || l.starts_with("tenantry.toml:") || l.ends_with("found")), "{out}");
    // `tenants` refuses to show a catalog with problems.
    let run = tenantry(fleet.path(), &["tenants"], &[]);
    assert_eq!(run.code(), 1, "{}", run.all());
    assert!(run.stderr().contains("Bad Tenant"), "{}", run.all());
    fleet.drop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn plan_reads_histories_and_shows_pending_and_refusals() {
    let fleet = Fleet::create(40, "").await;
    // t-001: fully migrated; t-002: version 1 applied; t-003: drift; t-004: dirty.
    fleet
        .record_applied(1, &[("1", "patients", "V1__patients.sql"), ("2", "visits", "V2__visits.sql")], "applied")
        .await;
    fleet.record_applied(2, &[("1", "patients", "V1__patients.sql")], "applied").await;
    fleet.record_applied(3, &[("1", "patients", "missing-file-so-wrong-checksum")], "applied").await;
    fleet.record_applied(4, &[("1", "patients", "V1__patients.sql")], "started").await;

    let run = tenantry(fleet.path(), &["plan", "rollout", "--json"], &[]);
    assert_eq!(run.code(), 0, "{}", run.all());
    let plan: serde_json::Value = serde_json::from_str(&run.stdout()).unwrap();
    assert_eq!(plan["tenants"], 40);
    let waves = plan["waves"].as_array().unwrap();
    assert_eq!(waves.iter().map(|w| w["name"].as_str().unwrap()).collect::<Vec<_>>(), ["canary", "ten", "rest"]);
    assert_eq!(waves[0]["tenants"], serde_json::json!(["t-000"]));
    assert_eq!(waves[1]["tenants"].as_array().unwrap().len(), 4, "10 % of 39, rounded up");

    let step = |id: &str, service: &str| -> serde_json::Value {
        for w in waves {
            for p in w["plans"].as_array().unwrap() {
                if p["tenant"] == id {
                    return p["steps"].as_array().unwrap().iter().find(|s| s["service"] == service).unwrap().clone();
                }
            }
        }
        panic!("no plan for {id}");
    };
    assert_eq!(step("t-000", "clinic")["pending"], serde_json::json!(["1_patients", "2_visits"]));
    assert_eq!(step("t-000", "core")["pending"], serde_json::json!(["1_policies"]));
    assert_eq!(step("t-001", "clinic")["pending"], serde_json::json!([]));
    assert_eq!(step("t-001", "clinic")["applied"], 2);
    assert_eq!(step("t-002", "clinic")["pending"], serde_json::json!(["2_visits"]));
    let drift = step("t-003", "clinic")["problems"][0].as_str().unwrap().to_string();
    assert!(
        drift.contains("version 1 was changed after it was applied (drift)") && drift.contains("V1__patients.sql"),
        "{drift}"
    );
    let dirty = step("t-004", "clinic")["problems"][0].as_str().unwrap().to_string();
    assert!(dirty.contains("version 1 is dirty"), "{dirty}");

    // Human output, narrowed to two tenants.
    let run = tenantry(fleet.path(), &["plan", "rollout", "--tenant", "t-001", "--tenant", "t-003"], &[]);
    assert_eq!(run.code(), 0, "{}", run.all());
    let out = run.stdout();
    assert!(out.contains("2 tenant(s)"), "{out}");
    assert!(out.contains("migrate[clinic] up to date, 2 applied"), "{out}");
    assert!(out.contains("REFUSED: version 1 was changed after it was applied (drift)"), "{out}");

    // plan changed nothing: t-000 still has no history table.
    let mut clinic = connect(&format!("{}_clinic", fleet.name)).await;
    let (n,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM pg_tables WHERE schemaname = 'tenant_t-000' AND tablename = 'tenantry_migrations'",
    )
    .fetch_one(&mut clinic)
    .await
    .unwrap();
    assert_eq!(n, 0);
    drop(clinic);
    fleet.drop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn plan_reports_a_missing_tenant_database_without_hiding_the_others() {
    let fleet = Fleet::create(3, "").await;
    let mut admin = pg_admin().await;
    exec(&mut admin, &format!("DROP DATABASE \"{}_t-001_core\"", fleet.name)).await;
    let run = tenantry(fleet.path(), &["plan", "rollout", "--json"], &[]);
    assert_eq!(run.code(), 0, "{}", run.all());
    let text = run.stdout();
    assert!(text.contains(&format!("database \\\"{}_t-001_core\\\" does not exist", fleet.name)), "{text}");
    assert!(text.contains("\"1_policies\""), "t-000's core still planned: {text}");
    fleet.drop().await;
}

/// `plan` does not call a step that cannot run "run": a step whose tenants lack what it
/// needs (an RDS snapshot of a placement without an RDS instance) is shown blocked, with the
/// reason, next to the steps that do run.
#[tokio::test(flavor = "multi_thread")]
async fn plan_shows_steps_that_cannot_run_as_blocked() {
    let fleet = Fleet::create(2, "").await;
    write(
        fleet.path(),
        "workflows/maintain.toml",
        "[[steps]]\nkind = \"health\"\n\n[[steps]]\nkind = \"rds_snapshot\"\n",
    );
    let run = tenantry(fleet.path(), &["plan", "maintain", "--json"], &[]);
    assert_eq!(run.code(), 0, "{}", run.all());
    let plan: serde_json::Value = serde_json::from_str(&run.stdout()).unwrap();
    let steps: Vec<&serde_json::Value> = plan["waves"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|w| w["plans"].as_array().unwrap())
        .flat_map(|p| p["steps"].as_array().unwrap())
        .collect();
    assert!(!steps.is_empty());
    for s in &steps {
        match s["kind"].as_str().unwrap() {
            "health" => assert_eq!(s["action"], "run", "{s}"),
            "rds_snapshot" => {
                assert_eq!(s["action"], "blocked", "{s}");
                assert!(s["reason"].as_str().unwrap().contains("no RDS instance"), "{s}");
            }
            other => panic!("unexpected step {other}: {s}"),
        }
    }
    let text = tenantry(fleet.path(), &["plan", "maintain"], &[]);
    assert!(text.stdout().contains("no RDS instance"), "{}", text.all());
    fleet.drop().await;
}
