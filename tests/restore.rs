//! `tenantry restore` and disaster-recovery drills: real backups (PostgreSQL, s3s-fs) restored into a tenant's own database or schema and into others, non-empty targets refused and replaced with `--force`, a corrupt backup refused with the target untouched; a drill over several tenants with a broken backup reports RTO/RPO, worst and median, stored once and rewritten identically by another worker.

mod support;

use std::path::Path;
use std::time::Duration;

use support::store::{s3, s3_clear, s3_get, s3_keys, s3_put, s3_storage_config};
use support::tenant_data::{clinic_schema, core_database, services_config};
use support::{
    WorkerProcess, clear_redis, connect_db, exec, pg_admin, pg_url, redis_url, run_and_wait, tenantry, unique,
};

/// A fleet of `core` (a database per tenant: customers, orders) and `clinic` (a schema per
/// tenant in one database: visits), each with a migration history, backed up to the test
/// S3 server under its own prefix.
struct Fleet {
    name: String,
    tenants: Vec<String>,
    dir: tempfile::TempDir,
}

impl Fleet {
    async fn new(bases: &[&str]) -> Fleet {
        let name = unique("trestore");
        let suffix = name.trim_start_matches("trestore_").to_string();
        let tenants: Vec<String> = bases.iter().map(|b| format!("{b}_{suffix}")).collect();
        let mut admin = pg_admin().await;
        exec(&mut admin, &format!("CREATE DATABASE {name}_clinic")).await;
        let mut clinic = connect_db(&format!("{name}_clinic")).await;
        for (i, t) in tenants.iter().enumerate() {
            core_database(&mut admin, &format!("{name}_core_{t}"), t, 5 + i, 50 * (i + 1)).await;
            clinic_schema(&mut clinic, t, 7 * (i + 1)).await;
        }
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

{storage}

[hosts.main]
engine = "postgres"
url = "{pg}"

{services}"#,
            redis = redis_url(),
            pg = pg_url(),
            storage = s3_storage_config(&name),
            services = services_config(&name),
        );
        for t in &tenants {
            config.push_str(&format!("\n[[catalog.tenants]]\nid = \"{t}\"\nservices = [\"core\", \"clinic\"]\n"));
        }
        std::fs::write(dir.path().join("tenantry.toml"), config).unwrap();
        std::fs::write(dir.path().join("workflows/backup.toml"), "[[steps]]\nkind = \"backup\"\n").unwrap();
        std::fs::write(
            dir.path().join("workflows/drill.toml"),
            "report = \"drill\"\n\n[retry]\nattempts = 1\n\n[[steps]]\nkind = \"verify_restore\"\nservices = [\"core\"]\n",
        )
        .unwrap();
        Fleet { name, tenants, dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn t(&self, base: &str) -> String {
        self.tenants.iter().find(|t| t.starts_with(&format!("{base}_"))).unwrap().clone()
    }

    fn core_db(&self, tenant: &str) -> String {
        format!("{}_core_{tenant}", self.name)
    }

    fn back_up(&self) -> String {
        let (run, s) = run_and_wait(self.path(), "backup");
        assert_eq!(s["run"]["state"], "succeeded", "{s:#}");
        run
    }

    /// `tenantry restore ARGS --json`: the exit status and the parsed output (null when none).
    fn restore(&self, args: &[&str]) -> (i32, serde_json::Value, support::Run) {
        let mut all = vec!["restore"];
        all.extend_from_slice(args);
        all.push("--json");
        let out = tenantry(self.path(), &all, &[]);
        let json = serde_json::from_str(&out.stdout()).unwrap_or(serde_json::Value::Null);
        (out.code(), json, out)
    }

    /// Flips one byte in the middle of `tenant`'s core dump, through a client of the test's
    /// own.
    async fn break_dump(&self, tenant: &str) {
        let client = s3().await;
        let keys = s3_keys(&client, &format!("{}/core/{tenant}/", self.name)).await;
        let dump_key = keys.iter().find(|k| k.ends_with(".pgdump")).unwrap().clone();
        let mut dump = s3_get(&client, &dump_key).await;
        let middle = dump.len() / 2;
        dump[middle] ^= 0x01;
        s3_put(&client, &dump_key, dump).await;
    }

    async fn drop(self, extra_databases: &[String]) {
        clear_redis(&self.name).await;
        let mut admin = pg_admin().await;
        let mut dbs = vec![format!("{}_clinic", self.name)];
        dbs.extend(self.tenants.iter().map(|t| self.core_db(t)));
        dbs.extend(extra_databases.iter().cloned());
        for db in dbs {
            exec(&mut admin, &format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)")).await;
        }
        s3_clear(&s3().await, &format!("{}/", self.name)).await;
    }
}

async fn count(db: &str, sql: &str) -> i64 {
    let mut conn = connect_db(db).await;
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string())).fetch_one(&mut conn).await.unwrap()
}

/// Databases (or, given a database, schemas) whose names start with `tenantry_restore_`.
async fn staged_leftovers(database: Option<&str>) -> Vec<String> {
    let sql = "SELECT name FROM (SELECT datname::text AS name FROM pg_database WHERE $1 IS NULL \
               UNION ALL SELECT nspname::text FROM pg_namespace WHERE $1 IS NOT NULL) x \
               WHERE left(name, 17) = 'tenantry_restore_'";
    let mut conn = match database {
        Some(db) => connect_db(db).await,
        None => pg_admin().await,
    };
    sqlx::query_scalar(sql).bind(database).fetch_all(&mut conn).await.unwrap()
}

fn check<'v>(out: &'v serde_json::Value, name: &str) -> &'v serde_json::Value {
    out["checks"].as_array().unwrap().iter().find(|c| c["name"] == name).unwrap_or_else(|| panic!("no {name}: {out:#}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_database_tenant_is_restored_in_place_with_force_and_into_another_database() {
    let fleet = Fleet::new(&["acme", "globex"]).await;
    let (acme, globex) = (fleet.t("acme"), fleet.t("globex"));
    let db = fleet.core_db(&acme);
    let worker = WorkerProcess::spawn(fleet.path());
    let backup_run = fleet.back_up();
    drop(worker);

    // The live database changes after the backup.
    let mut live = connect_db(&db).await;
    exec(&mut live, "DELETE FROM orders WHERE id > 10; CREATE TABLE scratch_notes (x int)").await;

    // Its own database holds tables: refused, saying what is in it, and untouched.
    let (code, _, out) = fleet.restore(&[&acme, "--service", "core"]);
    assert_eq!(code, 1, "{}", out.all());
    assert!(out.stderr().contains(&format!("database {db} has 4 tables; --force to restore over it")), "{}", out.all());
    assert_eq!(count(&db, "SELECT count(*) FROM orders").await, 10);

    // --force: replaced by the backup, every check passed, the staged copy gone.
    drop(live);
    let (code, r, out) = fleet.restore(&[&acme, "--service", "core", "--force"]);
    assert_eq!(code, 0, "{}", out.all());
    assert_eq!(r["passed"], true, "{r:#}");
    assert!(r["backup"].as_str().unwrap().starts_with(&format!("core/{acme}/")), "{r:#}");
    assert!(r["backup"].as_str().unwrap().ends_with(&backup_run), "{r:#}");
    assert_eq!(r["database"], db.as_str());
    assert_eq!(r["replaced"], "4 tables", "{r:#}");
    assert_eq!((r["tables"].as_u64(), r["rows"].as_i64()), (Some(3), Some(5 + 50 + 2)), "{r:#}");
    let names: Vec<&str> = r["checks"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["sha256", "restore", "tables", "row_counts", "schema_version"], "{r:#}");
    assert!(r["checks"].as_array().unwrap().iter().all(|c| c["passed"] == true), "{r:#}");
    assert_eq!(check(&r, "row_counts")["detail"], "57 rows, as in the manifest");
    assert_eq!(count(&db, "SELECT count(*) FROM orders").await, 50);
    assert_eq!(count(&db, "SELECT count(*) FROM pg_tables WHERE tablename = 'scratch_notes'").await, 0);
    assert!(staged_leftovers(None).await.iter().all(|n| !n.ends_with(&acme)), "staged copies left");

    // The text output names the backup, the target and the checks.
    let out = tenantry(fleet.path(), &["restore", &acme, "--service", "core", "--force"], &[]);
    assert_eq!(out.code(), 0, "{}", out.all());
    for expected in ["restored: tenant", &format!("into database {db}"), "3 tables, 57 rows", "ok   sha256"] {
        assert!(out.stdout().contains(expected), "{expected:?} in\n{}", out.all());
    }

    // --into a database that does not exist: created; the tenant's own is not touched.
    let copy = format!("{}_copy", fleet.name);
    let (code, r, out) = fleet.restore(&[&acme, "--service", "core", "--into", &copy]);
    assert_eq!(code, 0, "{}", out.all());
    assert_eq!(r["replaced"], serde_json::Value::Null, "{r:#}");
    assert_eq!(count(&copy, "SELECT count(*) FROM orders").await, 50);
    assert_eq!(count(&copy, "SELECT count(*) FROM customers").await, 5);
    // Not over another tenant's placement, not even with --force.
    let (code, _, out) = fleet.restore(&[&acme, "--service", "core", "--into", &fleet.core_db(&globex), "--force"]);
    assert_eq!(code, 1, "{}", out.all());
    assert!(out.stderr().contains(&format!("tenant {globex}'s placement of service core")), "{}", out.all());
    // The shared database of the clinic service is no one's to restore over either.
    let (code, _, out) =
        fleet.restore(&[&acme, "--service", "core", "--into", &format!("{}_clinic", fleet.name), "--force"]);
    assert_eq!(code, 1, "{}", out.all());

    // Disaster: the database is gone. Restored without --force.
    let mut admin = pg_admin().await;
    exec(&mut admin, &format!("DROP DATABASE {db} WITH (FORCE)")).await;
    let (code, r, out) = fleet.restore(&[&acme, "--service", "core"]);
    assert_eq!(code, 0, "{}", out.all());
    assert_eq!(r["passed"], true);
    assert_eq!(count(&db, "SELECT count(*) FROM orders").await, 50);
    fleet.drop(&[copy]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_schema_tenant_is_restored_beside_its_live_schema_and_over_it_with_force() {
    let fleet = Fleet::new(&["acme", "globex"]).await;
    let (acme, globex) = (fleet.t("acme"), fleet.t("globex"));
    let clinic = format!("{}_clinic", fleet.name);
    let worker = WorkerProcess::spawn(fleet.path());
    fleet.back_up();
    drop(worker);
    let mut live = connect_db(&clinic).await;
    exec(&mut live, &format!("INSERT INTO tenant_{acme}.visits (note) VALUES ('after the backup')")).await;

    let (code, _, out) = fleet.restore(&[&acme, "--service", "clinic"]);
    assert_eq!(code, 1, "{}", out.all());
    assert!(
        out.stderr().contains(&format!(
            "schema tenant_{acme} in database {clinic} has 2 tables and 1 sequence; --force to restore over it"
        )),
        "{}",
        out.all()
    );

    // Into another schema: the backup's rows there, the live schema as it was (8 rows).
    let copy = format!("copy_{acme}");
    let (code, r, out) = fleet.restore(&[&acme, "--service", "clinic", "--into", &copy]);
    assert_eq!(code, 0, "{}", out.all());
    assert_eq!(r["schema"], copy.as_str(), "{r:#}");
    assert_eq!(check(&r, "row_counts")["detail"], "8 rows, as in the manifest", "{r:#}");
    assert_eq!(count(&clinic, &format!("SELECT count(*) FROM {copy}.visits")).await, 7);
    assert_eq!(count(&clinic, &format!("SELECT count(*) FROM tenant_{acme}.visits")).await, 8);
    // The restored sequence is the copy's own and goes on from the backup's value.
    assert_eq!(count(&clinic, &format!("SELECT nextval('{copy}.visits_id_seq')")).await, 8);
    // Another tenant's schema is not a target.
    let (code, _, out) =
        fleet.restore(&[&acme, "--service", "clinic", "--into", &format!("tenant_{globex}"), "--force"]);
    assert_eq!(code, 1, "{}", out.all());
    assert!(out.stderr().contains("restore never writes over another placement"), "{}", out.all());

    // --force: the live schema is replaced in one transaction; the row added since is gone.
    let (code, r, out) = fleet.restore(&[&acme, "--service", "clinic", "--force"]);
    assert_eq!(code, 0, "{}", out.all());
    assert_eq!(r["replaced"], "2 tables and 1 sequence", "{r:#}");
    assert_eq!(count(&clinic, &format!("SELECT count(*) FROM tenant_{acme}.visits")).await, 7);
    assert_eq!(count(&clinic, &format!("SELECT count(*) FROM tenant_{globex}.visits")).await, 14);
    assert!(staged_leftovers(Some(&clinic)).await.is_empty(), "staged schemas left");
    drop(live);
    fleet.drop(&[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupt_backup_is_refused_and_the_target_is_left_as_it_was() {
    let fleet = Fleet::new(&["acme"]).await;
    let acme = fleet.t("acme");
    let db = fleet.core_db(&acme);
    let worker = WorkerProcess::spawn(fleet.path());
    fleet.back_up();
    drop(worker);
    fleet.break_dump(&acme).await;
    let mut live = connect_db(&db).await;
    exec(&mut live, "DELETE FROM orders WHERE id > 20").await;
    drop(live);

    let (code, r, out) = fleet.restore(&[&acme, "--service", "core", "--force"]);
    assert_eq!(code, 1, "{}", out.all());
    assert_eq!(r["passed"], false, "{r:#}");
    let sha = check(&r, "sha256");
    assert_eq!(sha["passed"], false, "{r:#}");
    assert!(sha["detail"].as_str().unwrap().contains("the manifest says"), "{r:#}");
    assert_eq!(count(&db, "SELECT count(*) FROM orders").await, 20, "the target was touched");
    assert!(staged_leftovers(None).await.iter().all(|n| !n.ends_with(&acme)), "staged copy left");
    let text = tenantry(fleet.path(), &["restore", &acme, "--service", "core", "--force"], &[]);
    assert_eq!(text.code(), 1, "{}", text.all());
    assert!(text.stdout().contains("FAIL sha256"), "{}", text.all());
    assert!(
        text.stdout().contains(&format!("the staged copy was dropped; database {db} is as it was")),
        "{}",
        text.all()
    );
    fleet.drop(&[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn restore_says_what_is_wrong_with_what_it_was_asked() {
    let fleet = Fleet::new(&["acme"]).await;
    let acme = fleet.t("acme");
    let cases: [(&[&str], &str); 5] = [
        (&["nobody", "--service", "core"], "no tenant \"nobody\" in the catalog"),
        (&[&acme, "--service", "billing"], "no service \"billing\" in the config (services: clinic, core)"),
        (&[&acme, "--service", "core"], "no complete backup"),
        (&[&acme, "--service", "core", "--into", "template1"], "--into template1: template1 is reserved"),
        (&[&acme, "--service", "core", "--backup", "20200101T000000Z_x"], "is not among the tenant's backups"),
    ];
    for (args, expected) in cases {
        let (code, _, out) = fleet.restore(args);
        assert_eq!(code, 1, "{args:?}: {}", out.all());
        assert!(out.stderr().contains(expected), "{args:?}: expected {expected:?} in\n{}", out.all());
    }
    let usage = tenantry(fleet.path(), &["restore", &acme], &[]);
    assert_eq!(usage.code(), 2, "--service is required: {}", usage.all());
    // Without [storage] there is nothing to restore from.
    let config = std::fs::read_to_string(fleet.path().join("tenantry.toml")).unwrap();
    let start = config.find("[storage]").unwrap();
    let end = start + config[start..].find("\n\n").unwrap();
    std::fs::write(fleet.path().join("tenantry.toml"), format!("{}{}", &config[..start], &config[end..])).unwrap();
    let (code, _, out) = fleet.restore(&[&acme, "--service", "core"]);
    assert_eq!(code, 1, "{}", out.all());
    assert!(out.stderr().contains("the config has no [storage]"), "{}", out.all());
    fleet.drop(&[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_drill_reports_rto_and_rpo_per_tenant_with_the_worst_and_median_once() {
    let fleet = Fleet::new(&["acme", "globex", "initech"]).await;
    let [acme, globex, initech] = ["acme", "globex", "initech"].map(|b| fleet.t(b));
    let workers = [WorkerProcess::spawn(fleet.path()), WorkerProcess::spawn(fleet.path())];
    fleet.back_up();
    // globex's backup is broken.
    fleet.break_dump(&globex).await;
    let client = s3().await;

    let (run, _) = run_and_wait(fleet.path(), "drill");
    // The report is written right after the run ends; wait for it.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let s = loop {
        let s = support::status(fleet.path(), &run);
        if s["report"]["state"] == "written" || std::time::Instant::now() > deadline {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(s["run"]["state"], "failed", "{s:#}");
    let report = &s["report"];
    assert_eq!(report["state"], "written", "{s:#}");
    assert_eq!(report["json"], format!("_reports/drill/{run}.json"));
    let r = &report["report"];
    assert_eq!(r["run"], run.as_str());
    let summary = &r["summary"];
    assert_eq!(
        (summary["targets"].as_u64(), summary["passed"].as_u64(), summary["failed"].as_u64()),
        (Some(3), Some(2), Some(1)),
        "{r:#}"
    );

    // Per tenant: RTO and RPO are those of the verdicts stored beside the backups.
    let mut measured = Vec::new();
    for t in [&acme, &globex, &initech] {
        let target = r["targets"].as_array().unwrap().iter().find(|x| x["tenant"] == *t).unwrap();
        let verdict_key = format!("{}/{}", fleet.name, target["verdict"].as_str().unwrap());
        let verdict: serde_json::Value = serde_json::from_slice(&s3_get(&client, &verdict_key).await).unwrap();
        assert_eq!(target["rto_ms"], verdict["rto_ms"], "{t}: {target:#} {verdict:#}");
        assert_eq!(target["rpo_ms"], verdict["rpo_ms"], "{t}: {target:#} {verdict:#}");
        assert!(target["rpo_ms"].as_u64().unwrap() > 0, "{target:#}");
        if *t == globex {
            assert_eq!(target["outcome"], "failed", "{target:#}");
            assert!(target["reason"].as_str().unwrap().starts_with("sha256: the dump read is"), "{target:#}");
            assert_eq!(verdict["passed"], false);
        } else {
            assert_eq!(target["outcome"], "passed", "{target:#}");
            measured.push((verdict["rto_ms"].as_u64().unwrap(), verdict["rpo_ms"].as_u64().unwrap(), t.clone()));
        }
    }
    let (a, b) = (&measured[0], &measured[1]);
    let worst_rto = if a.0 >= b.0 { a } else { b };
    assert_eq!(summary["rto"]["worst_ms"], worst_rto.0, "{summary:#}");
    assert_eq!(summary["rto"]["worst"], format!("{}/core", worst_rto.2), "{summary:#}");
    assert_eq!(summary["rto"]["median_ms"], (a.0 + b.0) / 2, "{summary:#}");
    assert_eq!(summary["rpo"]["worst_ms"], a.1.max(b.1), "{summary:#}");
    assert_eq!(summary["rpo"]["median_ms"], (a.1 + b.1) / 2, "{summary:#}");

    // Stored once: one JSON and one Markdown, which says the same.
    let prefix = format!("{}/_reports/", fleet.name);
    let stored = s3_keys(&client, &prefix).await;
    assert_eq!(stored, [format!("{prefix}drill/{run}.json"), format!("{prefix}drill/{run}.md")]);
    let json = s3_get(&client, &stored[0]).await;
    let md = String::from_utf8(s3_get(&client, &stored[1]).await).unwrap();
    assert!(md.contains("Restores verified: 2 of 3; failed 1"), "{md}");
    assert!(md.contains(&format!("| {globex} | core | failed |")), "{md}");
    // `status` prints it.
    let text = tenantry(fleet.path(), &["status", &run], &[]);
    assert!(text.stdout().contains("drill report: 2 of 3 restores verified, 1 failed"), "{}", text.all());
    assert!(text.stdout().contains(&format!("_reports/drill/{run}.md")), "{}", text.all());

    // A worker killed right after the run ended, before the report: the run is in the
    // active set, without its report. Another worker's maintenance writes the same one.
    s3_clear(&client, &prefix).await;
    let active = tenantry::runtime::keys::Keys::new(&fleet.name).active_runs();
    let redis_client = redis::Client::open(redis_url()).unwrap();
    let mut conn = redis_client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("SADD").arg(&active).arg(&run).query_async(&mut conn).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let members: Vec<String> = redis::cmd("SMEMBERS").arg(&active).query_async(&mut conn).await.unwrap();
        if !members.contains(&run) && s3_keys(&client, &prefix).await.len() == 2 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the report was not written again: {members:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(s3_get(&client, &stored[0]).await, json, "the rewritten report differs");
    assert_eq!(String::from_utf8(s3_get(&client, &stored[1]).await).unwrap(), md);
    drop(workers);
    fleet.drop(&[]).await;
}
