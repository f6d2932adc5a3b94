//! `analyze_indexes`: a real unused index, a duplicate, a left-prefix one, an invalid one from a failed concurrent build (then rebuilt), and a bloated one, in database and schema tenants.

mod support;

use support::fleet::TwoServices;
use support::{WorkerProcess, connect_db, exec};

const TENANTS: [&str; 2] = ["acme", "globex"];

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
    let fleet =
        TwoServices::new("tindexes", &TENANTS, ("indexes", "[[steps]]\nkind = \"analyze_indexes\"\n"), indexes).await;
    let _worker = WorkerProcess::spawn(fleet.path());
    let s = fleet.run_and_wait("indexes");
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

    // Counted across the fleet, per service, in `status` (text and --json).
    let fleet_wide = s["index_findings"].as_array().unwrap();
    for service in ["core", "clinic"] {
        let unused = fleet_wide
            .iter()
            .find(|f| f["service"] == service && f["kind"] == "unused" && f["index"] == "visits_patient_idx")
            .unwrap_or_else(|| panic!("{service}: {fleet_wide:#?}"));
        assert_eq!((unused["tenants"].as_u64(), unused["of"].as_u64()), (Some(2), Some(2)), "{unused}");
    }
    let text = support::tenantry(fleet.path(), &["status", s["run"]["id"].as_str().unwrap()], &[]);
    assert!(
        text.stdout().contains("unused    visits_patient_idx on visits: in 2 of 2 tenants of clinic"),
        "{}",
        text.all()
    );

    // With reindex_invalid, after the duplicate codes are gone, the invalid index is rebuilt.
    for t in TENANTS {
        let mut core = connect_db(&fleet.core(t)).await;
        exec(&mut core, "DELETE FROM visits WHERE id > 1000").await;
        let mut clinic = connect_db(&fleet.clinic()).await;
        exec(&mut clinic, &format!("DELETE FROM tenant_{t}.visits WHERE id > 1000")).await;
    }
    fleet.workflow("indexes", "[[steps]]\nkind = \"analyze_indexes\"\nreindex_invalid = true\nlock_timeout = \"2s\"\n");
    let s = fleet.run_and_wait("indexes");
    assert_eq!(s["run"]["state"], "succeeded", "{s:#}");
    for t in TENANTS {
        let output = &s["tenants"][t]["outputs"]["analyze_indexes/clinic"];
        assert_eq!(output["reindexed"], serde_json::json!([format!("tenant_{t}.visits_code_key")]), "{output:#}");
        let mut clinic = connect_db(&fleet.clinic()).await;
        let valid: bool = sqlx::query_scalar("SELECT indisvalid FROM pg_index WHERE indexrelid = $1::regclass")
            .bind(format!("tenant_{t}.visits_code_key"))
            .fetch_one(&mut clinic)
            .await
            .unwrap();
        assert!(valid, "{t}: visits_code_key is still invalid");
    }
    fleet.drop().await;
}
