//! `purge`: expired rows deleted in batches from database, schema and row tenants (none newer, none of another tenant, a tenant's label overriding the retention), refusals that delete nothing, `dry_run` counts, a block-walking purge without an index, and a purge killed with SIGKILL that resumes from its cursor with the same cutoff.

mod support;

use std::time::Duration;

use chrono::{DateTime, Utc};

use support::fleet::TwoServices;
use support::store::{s3, s3_get, s3_keys, s3_storage_config};
use support::{WorkerProcess, connect_db, exec, execute_step, tenantry, wait_for_state};

const TENANTS: [&str; 2] = ["acme", "globex"];

/// `events`: 300 rows from 100 to 105 days old, 200 from 10 days old, 50 from 1 day old;
/// indexed on `at`.
async fn fill(conn: &mut sqlx::PgConnection, schema: &str) {
    exec(
        conn,
        &format!(
            "CREATE TABLE {schema}.events (id bigserial PRIMARY KEY, at timestamptz NOT NULL, body text);
             CREATE INDEX ON {schema}.events (at);
             INSERT INTO {schema}.events (at, body) SELECT now() - interval '100 days' - g * interval '20 minutes', 'old' FROM generate_series(1, 300) g;
             INSERT INTO {schema}.events (at, body) SELECT now() - interval '10 days' - g * interval '1 minute', 'month' FROM generate_series(1, 200) g;
             INSERT INTO {schema}.events (at, body) SELECT now() - interval '1 day' - g * interval '1 minute', 'new' FROM generate_series(1, 50) g;"
        ),
    )
    .await;
}

/// The same rows per tenant in shared tables, for the catalog's tenants and for `initech`,
/// which the run does not touch; indexed on `(tenant_id, at)`.
fn ledger_sql(tenants: &[&str]) -> String {
    let mut sql =
        "CREATE TABLE events (id bigserial PRIMARY KEY, tenant_id text NOT NULL, at timestamptz NOT NULL, body text);
                   CREATE INDEX ON events (tenant_id, at);"
            .to_string();
    for t in tenants.iter().chain(&["initech"]) {
        sql.push_str(&format!(
            "INSERT INTO events (tenant_id, at, body) SELECT '{t}', now() - interval '100 days' - g * interval '20 minutes', 'old' FROM generate_series(1, 300) g;
             INSERT INTO events (tenant_id, at, body) SELECT '{t}', now() - interval '10 days' - g * interval '1 minute', 'month' FROM generate_series(1, 200) g;
             INSERT INTO events (tenant_id, at, body) SELECT '{t}', now() - interval '1 day' - g * interval '1 minute', 'new' FROM generate_series(1, 50) g;"
        ));
    }
    sql
}

async fn count(database: &str, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string())).fetch_one(&mut connect_db(database).await).await.unwrap()
}

/// By body, the rows left: (old, month, new).
async fn left(database: &str, table: &str, filter: &str) -> (i64, i64, i64) {
    let n = |body: &str| format!("SELECT count(*) FROM {table} WHERE body = '{body}'{filter}");
    (count(database, &n("old")).await, count(database, &n("month")).await, count(database, &n("new")).await)
}

const PURGE: &str = "[[steps]]\nkind = \"purge\"\ntable = \"events\"\ncolumn = \"at\"\nolder_than = \"90d\"\n\
                     retention_label = \"retention_days\"\nbatch_size = 40\npause = \"0s\"\n";

#[tokio::test(flavor = "multi_thread")]
async fn expired_rows_go_in_batches_from_every_isolation_and_none_newer_or_of_another_tenant() {
    let workflow = format!("report = \"run\"\n\n{PURGE}");
    let mut fleet = TwoServices::new("tpurge", &TENANTS, ("purge", &workflow), fill).await;
    fleet.add_ledger(&ledger_sql(&TENANTS)).await;
    // globex keeps 5 days: its label overrides the step's 90 days.
    let storage = s3_storage_config(&fleet.name);
    fleet.edit_config(|c| {
        let c = c.replace("id = \"globex\"\n", "id = \"globex\"\nlabels = { retention_days = \"5\" }\n");
        format!("{c}\n{storage}")
    });
    let _worker = WorkerProcess::spawn(fleet.path());
    let s = fleet.run_and_wait("purge");
    assert_eq!(s["run"]["state"], "succeeded", "{s:#}");
    for t in TENANTS {
        // acme loses the 300 rows past 90 days; globex also the 200 past 5 days.
        let (deleted, expected_left) = if t == "acme" { (300, (0, 200, 50)) } else { (500, (0, 0, 50)) };
        for (service, database, table, filter) in [
            ("core", fleet.core(t), "public.events".to_string(), String::new()),
            ("clinic", fleet.clinic(), format!("tenant_{t}.events"), String::new()),
            ("ledger", fleet.ledger(), "public.events".to_string(), format!(" AND tenant_id = '{t}'")),
        ] {
            let output = &s["tenants"][t]["outputs"][format!("purge/{service}")];
            assert_eq!(output["deleted"], deleted, "{t} {service}: {output:#}");
            assert_eq!(output["complete"], true, "{output:#}");
            assert!(output["batches"].as_i64().unwrap() >= deleted / 40, "batches of 40 at most: {output:#}");
            assert!(output["mode"].as_str().unwrap().starts_with("index "), "{output:#}");
            let from = if t == "acme" { "older_than" } else { "label retention_days = \"5\"" };
            assert_eq!(output["retention_from"], from, "{output:#}");
            assert_eq!(left(&database, &table, &filter).await, expected_left, "{t} {service}");
        }
    }
    // initech is nobody in this run: every one of its rows is still there.
    assert_eq!(left(&fleet.ledger(), "events", " AND tenant_id = 'initech'").await, (300, 200, 50));

    // The run's report (report = "run") is in the object store: rows purged per tenant.
    let run = s["run"]["id"].as_str().unwrap();
    let client = s3().await;
    let key = format!("{}/_reports/purge/{run}.json", fleet.name);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !s3_keys(&client, &key).await.contains(&key) {
        assert!(std::time::Instant::now() < deadline, "no run report at {key}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let report: serde_json::Value = serde_json::from_slice(&s3_get(&client, &key).await).unwrap();
    assert_eq!(report["steps"][0]["totals"]["rows_deleted"], 3 * (300 + 500), "{report:#}");
    assert_eq!(report["steps"][0]["purged"][0]["rows"], 500, "the most rows first: {report:#}");
    let markdown = String::from_utf8(s3_get(&client, &key.replace(".json", ".md")).await).unwrap();
    assert!(markdown.contains("| globex | clinic | 500 | yes |"), "{markdown}");
    fleet.drop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_table_without_the_column_or_its_index_or_with_children_is_refused_and_nothing_is_deleted() {
    let fleet = TwoServices::new("tpurgeno", &["acme"], ("purge", PURGE), async |conn, schema| {
        fill(conn, schema).await;
        exec(
            conn,
            &format!(
                "CREATE TABLE {schema}.notes (id int PRIMARY KEY, written text);
                 CREATE TABLE {schema}.logs (id int PRIMARY KEY, at timestamptz NOT NULL);
                 INSERT INTO {schema}.logs SELECT g, now() - interval '200 days' FROM generate_series(1, 1000) g;
                 INSERT INTO {schema}.logs SELECT g, now() - interval '2 days' FROM generate_series(1001, 1100) g;
                 CREATE TABLE {schema}.days (id int PRIMARY KEY, day date NOT NULL);
                 CREATE INDEX ON {schema}.days (day);
                 INSERT INTO {schema}.days SELECT g, current_date - g FROM generate_series(0, 9) g;
                 CREATE TABLE {schema}.parent_log (id int, at timestamptz NOT NULL);
                 CREATE INDEX ON {schema}.parent_log (at);
                 CREATE TABLE {schema}.child_log () INHERITS ({schema}.parent_log);
                 CREATE TABLE {schema}.ledger (id int, at timestamptz NOT NULL, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
                 CREATE TABLE {schema}.ledger_old PARTITION OF {schema}.ledger FOR VALUES FROM ('2000-01-01') TO ('2100-01-01');
                 CREATE INDEX ON {schema}.ledger_old (at);
                 CREATE TABLE {schema}.ledger_refs (id int PRIMARY KEY, lid int, lat timestamptz, FOREIGN KEY (lid, lat) REFERENCES {schema}.ledger);
                 CREATE TABLE {schema}.invoices (id int PRIMARY KEY, at timestamptz NOT NULL);
                 CREATE INDEX ON {schema}.invoices (at);
                 CREATE TABLE {schema}.lines (id int PRIMARY KEY, invoice int REFERENCES {schema}.invoices ON DELETE CASCADE);
                 INSERT INTO {schema}.invoices SELECT g, now() - interval '200 days' FROM generate_series(1, 10) g;
                 INSERT INTO {schema}.lines SELECT g, g FROM generate_series(1, 10) g;"
            ),
        )
        .await;
    })
    .await;
    let step = |table: &str, column: &str, extra: &str| {
        let retention = if extra.contains("older_than") { "" } else { "older_than = \"90d\"\n" };
        let pause = if extra.contains("pause") { "" } else { "pause = \"0s\"\n" };
        format!(
            "[[steps]]\nkind = \"purge\"\nservices = [\"core\"]\ntable = \"{table}\"\ncolumn = \"{column}\"\n{retention}{pause}{extra}"
        )
    };
    let clock = tenantry::runtime::clock::SystemClock;
    let db = fleet.core("acme");
    for (table, column, extra, expected) in [
        ("events", "created", "", "has no column created"),
        ("notes", "written", "", "column written is text, not a timestamp or date"),
        ("logs", "at", "", "has no index on (at): create one, or set allow_scan = true"),
        ("invoices", "at", "", "referenced by public.lines (lines_invoice_fkey, ON DELETE CASCADE)"),
        ("missing", "at", "", "no such table"),
        ("parent_log", "at", "", "has inheritance children"),
        ("ledger", "at", "", "is partitioned"),
        // A partition of a referenced table: the parent's foreign keys reach its rows.
        ("ledger_old", "at", "", "referenced by public.ledger_refs (ledger_refs_lid_lat_fkey, ON DELETE NO ACTION)"),
        ("events", "at", "older_than = \"6h\"\n", "outside the accepted 1day"),
    ] {
        fleet.workflow("refused", &step(table, column, extra));
        let e = execute_step(fleet.path(), "refused", "acme", &clock).await.unwrap_err();
        let message = e.to_string();
        assert!(message.contains(expected), "{table}: {message}");
        assert!(message.contains("tenant acme, service core"), "{message}");
        assert_eq!(e.retry, tenantry::steps::Retry::Permanent, "{message}");
    }
    assert_eq!(count(&db, "SELECT count(*) FROM logs").await, 1100);
    assert_eq!(count(&db, "SELECT count(*) FROM invoices").await, 10);
    assert_eq!(count(&db, "SELECT count(*) FROM lines").await, 10);

    // dry_run counts and deletes nothing.
    fleet.workflow("dry", &step("events", "at", "dry_run = true\n"));
    let out = execute_step(fleet.path(), "dry", "acme", &clock).await.unwrap();
    assert_eq!(out["would_delete"], 300, "{out:#}");
    assert_eq!(left(&db, "events", "").await, (300, 200, 50));

    // Accepting the children: the cascade is the workflow's choice now.
    fleet.workflow("children", &step("invoices", "at", "referenced_by = [\"lines\"]\n"));
    let out = execute_step(fleet.path(), "children", "acme", &clock).await.unwrap();
    assert_eq!(out["deleted"], 10, "{out:#}");
    assert_eq!(count(&db, "SELECT count(*) FROM lines").await, 0);

    // allow_scan: the unindexed table is walked by blocks; every old row goes, the 100
    // newer ones stay.
    fleet.workflow("scan", &step("logs", "at", "allow_scan = true\nbatch_size = 100\n"));
    let out = execute_step(fleet.path(), "scan", "acme", &clock).await.unwrap();
    assert_eq!(out["deleted"], 1000, "{out:#}");
    assert!(out["mode"].as_str().unwrap().starts_with("scan"), "{out:#}");
    assert!(out["batches"].as_i64().unwrap() > 1, "{out:#}");
    assert_eq!(count(&db, "SELECT count(*) FROM logs").await, 100);
    assert_eq!(count(&db, "SELECT count(*) FROM logs WHERE at < now() - interval '90 days'").await, 0);

    // A date column: the rows dated on the cutoff's own day stay (older_than 3 days: the
    // days 0..=3 ago stay, 4..=9 ago go).
    fleet.workflow("days", &step("days", "day", "older_than = \"3d\"\nmin_retention = \"1h\"\n"));
    let out = execute_step(fleet.path(), "days", "acme", &clock).await.unwrap();
    assert_eq!(out["deleted"], 6, "{out:#}");
    assert_eq!(count(&db, "SELECT min(current_date - day)::int8 FROM days").await, 0);
    assert_eq!(count(&db, "SELECT max(current_date - day)::int8 FROM days").await, 3);

    // A time budget stops the purge between batches; the output says it is not complete.
    fleet.workflow("budget", &step("events", "at", "batch_size = 10\npause = \"100ms\"\ntime_budget = \"250ms\"\n"));
    let out = execute_step(fleet.path(), "budget", "acme", &clock).await.unwrap();
    assert_eq!(out["complete"], false, "{out:#}");
    let deleted = out["deleted"].as_i64().unwrap();
    assert!(deleted > 0 && deleted < 300, "{out:#}");
    assert!(out["stopped"].as_str().unwrap().contains("time budget"), "{out:#}");
    assert_eq!(count(&db, "SELECT count(*) FROM events WHERE body = 'old'").await, 300 - deleted);
    fleet.drop().await;
}

/// The worker is killed with SIGKILL in the middle of a purge of a row-isolated tenant; the
/// next worker resumes from the committed cursor, with the cutoff of the first attempt.
#[tokio::test(flavor = "multi_thread")]
async fn a_purge_killed_mid_tenant_resumes_from_its_cursor_with_the_first_cutoff() {
    let mut fleet = TwoServices::new(
        "tpurgekill",
        &["acme"],
        (
            "purge",
            "[[steps]]\nkind = \"purge\"\nservices = [\"ledger\"]\ntable = \"events\"\ncolumn = \"at\"\n\
             older_than = \"90d\"\nbatch_size = 100\npause = \"20ms\"\n",
        ),
        async |_, _| {},
    )
    .await;
    // 20,000 expired rows of acme, and rows every 100 ms around the cutoff for 60 s: a
    // cutoff computed again after the kill would take some of those.
    fleet
        .add_ledger(
            "CREATE TABLE events (id bigserial PRIMARY KEY, tenant_id text NOT NULL, at timestamptz NOT NULL, body text);
             CREATE INDEX ON events (tenant_id, at);
             INSERT INTO events (tenant_id, at, body) SELECT 'acme', now() - interval '120 days' + g * interval '1 second', 'old' FROM generate_series(1, 20000) g;
             INSERT INTO events (tenant_id, at, body) SELECT 'acme', now() - interval '90 days' + g * interval '100 milliseconds', 'edge' FROM generate_series(-100, 500) g;
             INSERT INTO events (tenant_id, at, body) SELECT 'initech', now() - interval '120 days', 'other' FROM generate_series(1, 500) g;",
        )
        .await;
    fleet.edit_config(|c| format!("{c}\n[runtime]\nlease = \"2s\"\n"));
    let ledger = fleet.ledger();
    let before: Vec<DateTime<Utc>> = sqlx::query_scalar("SELECT at FROM events WHERE tenant_id = 'acme'")
        .fetch_all(&mut connect_db(&ledger).await)
        .await
        .unwrap();

    let mut worker = WorkerProcess::spawn(fleet.path());
    let out = tenantry(fleet.path(), &["run", "purge"], &[]);
    assert_eq!(out.code(), 0, "{}", out.all());
    let run = out.stdout().trim().to_string();
    // Kill once 20 batches have committed.
    let batches = async || -> i32 {
        sqlx::query_scalar("SELECT coalesce(max(batches), 0) FROM tenantry.purge_cursors WHERE run_id = $1")
            .bind(&run)
            .fetch_one(&mut connect_db(&ledger).await)
            .await
            .unwrap_or(0)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while batches().await < 20 {
        assert!(std::time::Instant::now() < deadline, "the purge never got to 20 batches");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    worker.kill9();
    let killed_at = Utc::now();
    let at_kill = batches().await;
    assert!(at_kill < 200, "the purge finished before the kill ({at_kill} batches)");
    let _worker = WorkerProcess::spawn(fleet.path());
    let s = wait_for_state(fleet.path(), &run, &["succeeded", "failed", "cancelled"], Duration::from_secs(120));
    assert_eq!(s["run"]["state"], "succeeded", "{s:#}");
    let output = &s["tenants"]["acme"]["outputs"]["purge/ledger"];
    let cutoff: DateTime<Utc> = output["cutoff"].as_str().unwrap().parse().unwrap();
    assert!(
        cutoff < killed_at - chrono::TimeDelta::days(90),
        "the cutoff {cutoff} is the first attempt's, not one computed after the kill at {killed_at}"
    );
    assert!(output["resumed_after"].as_i64().unwrap() >= i64::from(at_kill), "{output:#}");
    let older = before.iter().filter(|at| **at < cutoff).count() as i64;
    assert!(older >= 20_000, "the edge rows straddle the cutoff");
    assert_eq!(output["deleted"], older, "every expired row counted once: {output:#}");
    let after: Vec<DateTime<Utc>> = sqlx::query_scalar("SELECT at FROM events WHERE tenant_id = 'acme'")
        .fetch_all(&mut connect_db(&ledger).await)
        .await
        .unwrap();
    assert!(after.iter().all(|at| *at >= cutoff), "a row older than the cutoff is left");
    assert_eq!(after.len(), before.len() - older as usize, "a row newer than the cutoff was deleted");
    assert_eq!(count(&ledger, "SELECT count(*) FROM events WHERE tenant_id = 'initech'").await, 500);
    fleet.drop().await;
}
