//! `vacuum`: real dead tuples vacuumed in database and schema tenants, a table locked by another session skipped after the lock timeout and reported, and the window closing between tables (an injected clock).

mod support;

use std::sync::atomic::{AtomicI64, Ordering};

use chrono::{DateTime, TimeZone, Utc};

use support::fleet::TwoServices;
use support::{WorkerProcess, connect_db, exec};

const TENANTS: [&str; 2] = ["acme", "globex"];

/// `bloated` (half its rows deleted), `locked` (the same), `clean` (no dead tuples); every
/// table with autovacuum off, so the dead tuples stay until the step vacuums them.
async fn fill(conn: &mut sqlx::PgConnection, schema: &str) {
    exec(conn, &tables(schema)).await;
}

fn tables(schema: &str) -> String {
    let mut sql = String::new();
    for table in ["bloated", "locked", "clean"] {
        sql.push_str(&format!(
            "CREATE TABLE {schema}.{table} (id int PRIMARY KEY, body text) WITH (autovacuum_enabled = false);
             INSERT INTO {schema}.{table} SELECT g, repeat('x', 100) FROM generate_series(1, 4000) g;"
        ));
        if table != "clean" {
            sql.push_str(&format!("DELETE FROM {schema}.{table} WHERE id % 2 = 0;"));
        }
    }
    // The statistics system sees this session's changes now, not at its next flush.
    sql.push_str("SELECT pg_stat_force_next_flush();");
    sql
}

async fn dead_tuples(database: &str, schema: &str, table: &str) -> i64 {
    let mut conn = connect_db(database).await;
    sqlx::query_scalar("SELECT n_dead_tup FROM pg_stat_user_tables WHERE schemaname = $1 AND relname = $2")
        .bind(schema)
        .bind(table)
        .fetch_one(&mut conn)
        .await
        .unwrap()
}

/// How often the table was vacuumed (by hand, not autovacuum: it is off).
async fn vacuums(database: &str, schema: &str, table: &str) -> i64 {
    let mut conn = connect_db(database).await;
    sqlx::query_scalar("SELECT vacuum_count FROM pg_stat_user_tables WHERE schemaname = $1 AND relname = $2")
        .bind(schema)
        .bind(table)
        .fetch_one(&mut conn)
        .await
        .unwrap()
}

fn names(list: &serde_json::Value) -> Vec<String> {
    list.as_array().unwrap().iter().map(|e| e["table"].as_str().unwrap().to_string()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn dead_tuples_are_vacuumed_and_a_locked_table_is_skipped_after_the_lock_timeout_and_reported() {
    let fleet = TwoServices::new(
        "tvacuum",
        &TENANTS,
        ("vacuum", "[[steps]]\nkind = \"vacuum\"\nlock_timeout = \"300ms\"\n"),
        fill,
    )
    .await;
    // Another session holds `locked` of acme's database and schema for the whole run.
    let mut holder_core = connect_db(&fleet.core("acme")).await;
    exec(&mut holder_core, "BEGIN; LOCK TABLE public.locked IN SHARE UPDATE EXCLUSIVE MODE").await;
    let mut holder_clinic = connect_db(&fleet.clinic()).await;
    exec(&mut holder_clinic, "BEGIN; LOCK TABLE tenant_acme.locked IN SHARE UPDATE EXCLUSIVE MODE").await;

    let _worker = WorkerProcess::spawn(fleet.path());
    let s = fleet.run_and_wait("vacuum");
    assert_eq!(s["run"]["state"], "succeeded", "{s:#}");
    for t in TENANTS {
        for (service, schema, database) in
            [("core", "public".to_string(), fleet.core(t)), ("clinic", format!("tenant_{t}"), fleet.clinic())]
        {
            let output = &s["tenants"][t]["outputs"][format!("vacuum/{service}")];
            let vacuumed = names(&output["vacuumed"]);
            let skipped = names(&output["skipped"]);
            if t == "acme" {
                assert_eq!(vacuumed, [format!("{schema}.bloated")], "{output:#}");
                assert_eq!(skipped, [format!("{schema}.locked")], "{output:#}");
                let reason = output["skipped"][0]["reason"].as_str().unwrap();
                assert!(reason.contains("locked by another session") && reason.contains("300ms"), "{reason}");
                assert!(dead_tuples(&database, &schema, "locked").await >= 2000, "the locked table was vacuumed");
                assert_eq!(vacuums(&database, &schema, "locked").await, 0, "the locked table was vacuumed");
            } else {
                assert_eq!(vacuumed, [format!("{schema}.bloated"), format!("{schema}.locked")], "{output:#}");
                assert!(skipped.is_empty(), "{output:#}");
            }
            assert_eq!(output["vacuumed"][0]["action"], "vacuum_analyze", "{output:#}");
            assert!(output["vacuumed"][0]["reasons"][0].as_str().unwrap().contains("2000 dead tuples"), "{output:#}");
            // That the vacuum ran, from the server's statistics. Not that it removed every
            // dead tuple: any transaction on the server holding an old transaction id (other
            // tests run alongside) can keep them, through the snapshot of a concurrent
            // ANALYZE in this database.
            assert_eq!(vacuums(&database, &schema, "bloated").await, 1, "{t} {service}: bloated was not vacuumed");
            assert_eq!(output["xid_status"], "ok", "{output:#}");
            assert!(output["xid_age"].as_i64().unwrap() > 0, "{output:#}");
        }
    }
    // `tenantry report` adds it up across the fleet, for people and for machines.
    let run = s["run"]["id"].as_str().unwrap();
    let md = support::tenantry(fleet.path(), &["report", run], &[]);
    assert_eq!(md.code(), 0, "{}", md.all());
    assert!(md.stdout().contains("## Step vacuum (vacuum)"), "{}", md.stdout());
    assert!(
        md.stdout().contains("4 unit(s): tables_failed 0, tables_not_started 0, tables_skipped 2, tables_vacuumed 6"),
        "{}",
        md.stdout()
    );
    let json = support::tenantry(fleet.path(), &["report", run, "--json"], &[]);
    let report: serde_json::Value = serde_json::from_str(&json.stdout()).unwrap();
    assert_eq!(report["outcomes"]["succeeded"], 2, "{report:#}");
    assert_eq!(report["steps"][0]["totals"]["tables_vacuumed"], 6, "{report:#}");

    // The locks are the holders' own: nothing of the step's is left on those tables.
    exec(&mut holder_core, "ROLLBACK").await;
    exec(&mut holder_clinic, "ROLLBACK").await;
    fleet.drop().await;
}

/// Each reading is one minute after the one before, from 04:57 UTC: the step's first
/// reading (choosing tables) is 04:57, its window checks before the tables 04:58, 04:59,
/// 05:00 — so with `window = "01:00-05:00"` two tables start and the third does not.
struct Stepping {
    next: AtomicI64,
}

impl tenantry::runtime::clock::Clock for Stepping {
    fn now(&self) -> DateTime<Utc> {
        let minute = self.next.fetch_add(1, Ordering::SeqCst);
        Utc.with_ymd_and_hms(2026, 12, 1, 4, 57, 0).unwrap() + chrono::TimeDelta::minutes(minute)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn no_new_table_starts_once_the_window_has_closed() {
    // Three tables over the thresholds: `clean` too, with a threshold of zero dead tuples
    // and a ratio of zero.
    let workflow = "[[steps]]\nkind = \"vacuum\"\nservices = [\"core\"]\nwindow = \"01:00-05:00\"\nmin_dead_tuples = 0\nmin_dead_ratio = 0.0\n";
    let fleet = TwoServices::new("tvacuum", &TENANTS, ("vacuum", workflow), fill).await;
    let clock = Stepping { next: AtomicI64::new(0) };
    let output = support::execute_step(fleet.path(), "vacuum", "globex", &clock).await.unwrap();
    assert_eq!(output["window_closed"], true, "{output:#}");
    assert_eq!(names(&output["vacuumed"]).len(), 2, "{output:#}");
    assert_eq!(output["not_started"].as_array().unwrap().len(), 1, "{output:#}");
    assert_eq!(output["window"], "01:00-05:00");

    // Outside the window from the start: nothing starts.
    let late = Stepping { next: AtomicI64::new(10) };
    let output = support::execute_step(fleet.path(), "vacuum", "acme", &late).await.unwrap();
    assert!(output["vacuumed"].as_array().unwrap().is_empty(), "{output:#}");
    assert_eq!(output["not_started"].as_array().unwrap().len(), 3, "{output:#}");
    assert!(dead_tuples(&fleet.core("acme"), "public", "bloated").await >= 2000);
    fleet.drop().await;
}
