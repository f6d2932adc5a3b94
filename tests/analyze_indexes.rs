//! `analyze_indexes`: a real unused index, a duplicate, a left-prefix one, an invalid one from a failed concurrent build (then rebuilt), and a bloated one, in database and schema tenants.

mod support;

use std::path::Path;
use std::time::Duration;

use support::{
    WorkerProcess, clear_redis, connect_db, exec, pg_admin, pg_url, redis_url, tenantry, unique, wait_for_state,
};

const TENANTS: [&str; 2] = ["acme", "globex"];

struct Fleet {
    name: String,
    dir: tempfile::TempDir,
}

/// `visits`: `visits_pkey` (used), `visits_patient_idx` (never scanned), `visits_patient_dup`
/// (the same definition), `visits_day_idx` (the leading column of `visits_day_room_idx`),
/// `visits_code_key` (a unique index that failed to build concurrently: invalid), and
/// `visits_note_idx` (bloated: 90 % of its rows deleted and vacuumed away).
async fn indexes(conn: &mut sqlx::PgConnection, schema: &str) {
    exec(
        conn,
        &format!(
            "CREATE TABLE {schema}.visits (id int PRIMARY KEY, patient int, day int, room int, code int, note text);
             INSERT INTO {schema}.visits SELECT g, g % 100, g % 30, g % 7, g % 1000, md5(g::text) FROM generate_series(1, 40000) g;
             CREATE INDEX visits_patient_idx ON {schema}.visits (patient);
             CREATE INDEX visits_patient_dup ON {schema}.visits (patient);
             CREATE INDEX visits_day_idx ON {schema}.visits (day);
             CREATE INDEX visits_day_room_idx ON {schema}.visits (day, room);
             CREATE INDEX visits_note_idx ON {schema}.visits (note);
             DELETE FROM {schema}.visits WHERE id % 10 <> 0;"
        ),
    )
    .await;
    exec(conn, &format!("VACUUM ANALYZE {schema}.visits")).await;
    // Not in a transaction (CONCURRENTLY): it fails on the duplicate codes and leaves an
    // invalid index behind.
    let failed = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE UNIQUE INDEX CONCURRENTLY visits_code_key ON {schema}.visits (code)"
    )))
    .execute(&mut *conn)
    .await;
    assert!(failed.is_err(), "the concurrent build was meant to fail");
}

impl Fleet {
    async fn new(workflow: &str) -> Fleet {
        let name = unique("tindexes");
        let mut admin = pg_admin().await;
        exec(&mut admin, &format!("CREATE DATABASE {name}_clinic")).await;
        for t in TENANTS {
            exec(&mut admin, &format!("CREATE DATABASE {name}_core_{t}")).await;
            indexes(&mut connect_db(&format!("{name}_core_{t}")).await, "public").await;
            let mut clinic = connect_db(&format!("{name}_clinic")).await;
            exec(&mut clinic, &format!("CREATE SCHEMA tenant_{t}")).await;
            indexes(&mut clinic, &format!("tenant_{t}")).await;
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("workflows")).unwrap();
        let mut config = format!(
            r#"
[redis]
url = "{redis}"
prefix = "{name}"

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
"#,
            redis = redis_url(),
            pg = pg_url()
        );
        for t in TENANTS {
            config.push_str(&format!("\n[[catalog.tenants]]\nid = \"{t}\"\nservices = [\"core\", \"clinic\"]\n"));
        }
        std::fs::write(dir.path().join("tenantry.toml"), config).unwrap();
        std::fs::write(dir.path().join("workflows/indexes.toml"), workflow).unwrap();
        Fleet { name, dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn run_and_wait(&self) -> serde_json::Value {
        let out = tenantry(self.path(), &["run", "indexes"], &[]);
        assert_eq!(out.code(), 0, "{}", out.all());
        let run = out.stdout().trim().to_string();
        wait_for_state(self.path(), &run, &["succeeded", "failed", "cancelled"], Duration::from_secs(60))
    }

    async fn drop(self) {
        clear_redis(&self.name).await;
        let mut admin = pg_admin().await;
        let mut dbs = vec![format!("{}_clinic", self.name)];
        dbs.extend(TENANTS.iter().map(|t| format!("{}_core_{t}", self.name)));
        for db in dbs {
            exec(&mut admin, &format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)")).await;
        }
    }
}

fn by_kind(output: &serde_json::Value) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = output["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["kind"].as_str().unwrap().to_string(), f["index"].as_str().unwrap().to_string()))
        .collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn unused_duplicate_redundant_invalid_and_bloated_indexes_are_found_and_the_invalid_one_rebuilt() {
    let fleet = Fleet::new("[[steps]]\nkind = \"analyze_indexes\"\n").await;
    let _worker = WorkerProcess::spawn(fleet.path());
    let s = fleet.run_and_wait();
    assert_eq!(s["run"]["state"], "succeeded", "{s:#}");
    let expected: Vec<(String, String)> = [
        ("bloated", "visits_note_idx"),
        ("duplicate", "visits_patient_dup"),
        ("invalid", "visits_code_key"),
        ("redundant", "visits_day_idx"),
        ("unused", "visits_day_idx"),
        ("unused", "visits_day_room_idx"),
        ("unused", "visits_note_idx"),
        ("unused", "visits_patient_idx"),
    ]
    .iter()
    .map(|(k, i)| (k.to_string(), i.to_string()))
    .collect();
    for t in TENANTS {
        for service in ["core", "clinic"] {
            let output = &s["tenants"][t]["outputs"][format!("analyze_indexes/{service}")];
            assert_eq!(by_kind(output), expected, "{t} {service}: {output:#}");
            let dup = output["findings"].as_array().unwrap().iter().find(|f| f["kind"] == "duplicate").unwrap();
            assert_eq!(dup["detail"], "same definition as visits_patient_idx", "{output:#}");
            let unused = output["findings"].as_array().unwrap().iter().find(|f| f["kind"] == "unused").unwrap();
            assert!(unused["detail"].as_str().unwrap().starts_with("no scan since the statistics"), "{output:#}");
            assert_eq!(output["reindexed"].as_array().unwrap().len(), 0, "reports only, by default");
        }
    }

    // With reindex_invalid, after the duplicate codes are gone, the invalid index is rebuilt.
    for t in TENANTS {
        let mut core = connect_db(&format!("{}_core_{t}", fleet.name)).await;
        exec(&mut core, "DELETE FROM visits WHERE id > 1000").await;
        let mut clinic = connect_db(&format!("{}_clinic", fleet.name)).await;
        exec(&mut clinic, &format!("DELETE FROM tenant_{t}.visits WHERE id > 1000")).await;
    }
    std::fs::write(
        fleet.path().join("workflows/indexes.toml"),
        "[[steps]]\nkind = \"analyze_indexes\"\nreindex_invalid = true\nlock_timeout = \"2s\"\n",
    )
    .unwrap();
    let s = fleet.run_and_wait();
    assert_eq!(s["run"]["state"], "succeeded", "{s:#}");
    for t in TENANTS {
        let output = &s["tenants"][t]["outputs"]["analyze_indexes/clinic"];
        assert_eq!(output["reindexed"], serde_json::json!([format!("tenant_{t}.visits_code_key")]), "{output:#}");
        let mut clinic = connect_db(&format!("{}_clinic", fleet.name)).await;
        let valid: bool = sqlx::query_scalar("SELECT indisvalid FROM pg_index WHERE indexrelid = $1::regclass")
            .bind(format!("tenant_{t}.visits_code_key"))
            .fetch_one(&mut clinic)
            .await
            .unwrap();
        assert!(valid, "{t}: visits_code_key is still invalid");
    }
    fleet.drop().await;
}
