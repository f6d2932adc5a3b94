//! `verify_restore`: backups made by the real `backup` step, restored into scratch databases and checked; tampered backups fail naming the check, verdicts are stored, scratch databases never outlive the step, and samples rotate through the fleet.

mod support;

use std::path::Path;
use std::time::Duration;

use support::store::{s3, s3_clear, s3_get, s3_keys, s3_put, s3_storage_config};
use support::tenant_data::{clinic_schema, core_database, services_config};
use support::{
    WorkerProcess, clear_redis, connect_db, exec, pg_admin, pg_url, redis_url, tenantry, unique, wait_for_state,
};
use tenantry::steps::verify_restore::{SCRATCH_PREFIX, scratch_prefix};

/// `core`: a database per tenant; `clinic`: a schema per tenant. Both have a migration
/// history, so the schema version is checked too.
struct Fleet {
    name: String,
    tenants: Vec<String>,
    dir: tempfile::TempDir,
}

#[derive(Clone, Copy, PartialEq)]
enum Store {
    S3,
    Fs,
}

impl Fleet {
    /// Tenant ids are `{base}_{unique}`: scratch databases are named after the tenant, and
    /// tests running at once (or another checkout's) must not share tenants.
    async fn new(store: Store, bases: &[&str], services: &[&str]) -> Fleet {
        let name = unique("tverify");
        let suffix = name.trim_start_matches("tverify_").to_string();
        let ids: Vec<String> = bases.iter().map(|b| format!("{b}_{suffix}")).collect();
        let tenants: Vec<&str> = ids.iter().map(String::as_str).collect();
        let mut admin = pg_admin().await;
        exec(&mut admin, &format!("CREATE DATABASE {name}_clinic")).await;
        let mut clinic = connect_db(&format!("{name}_clinic")).await;
        for (i, t) in tenants.iter().enumerate() {
            core_database(&mut admin, &format!("{name}_core_{t}"), t, 10 + i, 100 * (i + 1)).await;
            clinic_schema(&mut clinic, t, 5 * (i + 1)).await;
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("workflows")).unwrap();
        let storage = match store {
            Store::S3 => s3_storage_config(&name),
            Store::Fs => "[storage]\nkind = \"fs\"\npath = \"backups\"\n".to_string(),
        };
        // Backups are restored on `scratch`: the same server under another host name, as
        // `hosts.main.scratch_host` says.
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
scratch_host = "scratch"

[hosts.scratch]
engine = "postgres"
url = "{pg}"

{services}"#,
            redis = redis_url(),
            pg = pg_url(),
            services = services_config(&name),
        );
        let services = services.iter().map(|s| format!("\"{s}\"")).collect::<Vec<_>>().join(", ");
        for t in &tenants {
            config.push_str(&format!("\n[[catalog.tenants]]\nid = \"{t}\"\nservices = [{services}]\n"));
        }
        std::fs::write(dir.path().join("tenantry.toml"), config).unwrap();
        std::fs::write(dir.path().join("workflows/backup.toml"), "[[steps]]\nkind = \"backup\"\n").unwrap();
        let fleet = Fleet { name, tenants: ids.clone(), dir };
        fleet.verify_workflow("");
        fleet
    }

    /// `workflows/verify.toml`: one verify_restore step per service with smoke queries that
    /// need the restored schema on the search_path, with `extra` options on both.
    fn verify_workflow(&self, extra: &str) {
        let workflow = format!(
            r#"
[retry]
attempts = 1

[[steps]]
kind = "verify_restore"
name = "verify core"
services = ["core"]
smoke_queries = ["SELECT 1 / (count(*) > 0)::int FROM orders JOIN customers ON customers.id = orders.customer"]
{extra}

[[steps]]
kind = "verify_restore"
name = "verify clinic"
services = ["clinic"]
smoke_queries = ["SELECT count(*) FROM visits", "SELECT 1 / (current_setting('tenantry.tenant') <> '')::int"]
{extra}
"#
        );
        std::fs::write(self.path().join("workflows/verify.toml"), workflow).unwrap();
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The id of the tenant made from `base`.
    fn t(&self, base: &str) -> String {
        self.tenants
            .iter()
            .find(|t| t.starts_with(&format!("{base}_")))
            .unwrap_or_else(|| panic!("no tenant {base}"))
            .clone()
    }

    fn run_and_wait(&self, workflow: &str) -> (String, serde_json::Value) {
        let out = tenantry(self.path(), &["run", workflow], &[]);
        assert_eq!(out.code(), 0, "{}", out.all());
        let run = out.stdout().trim().to_string();
        let s = wait_for_state(self.path(), &run, &["succeeded", "failed", "cancelled"], Duration::from_secs(120));
        (run, s)
    }

    /// Runs the backup workflow, which must succeed.
    fn back_up(&self) -> String {
        let (run, s) = self.run_and_wait("backup");
        assert_eq!(s["run"]["state"], "succeeded", "{s:#}");
        run
    }

    async fn drop(self) {
        clear_redis(&self.name).await;
        let mut admin = pg_admin().await;
        let mut dbs = vec![format!("{}_clinic", self.name)];
        dbs.extend(self.tenants.iter().map(|t| format!("{}_core_{t}", self.name)));
        for db in dbs {
            exec(&mut admin, &format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)")).await;
        }
        for t in &self.tenants {
            for db in scratch_databases(t).await {
                exec(&mut admin, &format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)")).await;
            }
        }
        if std::env::var("TENANTRY_TEST_S3_BUCKET").is_ok() {
            s3_clear(&s3().await, &format!("{}/", self.name)).await;
        }
    }
}

/// The scratch databases of `tenant` that exist.
async fn scratch_databases(tenant: &str) -> Vec<String> {
    let mut admin = pg_admin().await;
    sqlx::query_scalar("SELECT datname::text FROM pg_database WHERE left(datname, length($1)) = $1 ORDER BY 1")
        .bind(scratch_prefix(tenant))
        .fetch_all(&mut admin)
        .await
        .unwrap()
}

/// Sessions on the tenant's scratch databases, or of its `pg_restore` (`tenantry-verify-…`
/// application names carry the name's attempt tag after the tenant's tag).
async fn scratch_sessions(tenant: &str) -> Vec<String> {
    let prefix = scratch_prefix(tenant);
    let app = format!("tenantry-verify-{}", &prefix[SCRATCH_PREFIX.len()..]);
    let mut admin = pg_admin().await;
    sqlx::query_scalar(
        "SELECT format('%s pid %s (%s, %s)', datname, pid, application_name, state) FROM pg_stat_activity \
         WHERE left(datname, length($1)) = $1 OR left(application_name, length($2)) = $2",
    )
    .bind(prefix)
    .bind(app)
    .fetch_all(&mut admin)
    .await
    .unwrap()
}

/// No scratch database of `tenant` and no session on one, within `within` (a stopped step's
/// guard drops its database from a task of its own).
async fn assert_scratch_gone(tenant: &str, within: Duration) {
    let deadline = std::time::Instant::now() + within;
    loop {
        let (dbs, sessions) = (scratch_databases(tenant).await, scratch_sessions(tenant).await);
        if dbs.is_empty() && sessions.is_empty() {
            return;
        }
        if std::time::Instant::now() > deadline {
            panic!("tenant {tenant}: scratch databases {dbs:?} and sessions {sessions:?} are left behind");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// The verdict keys of `service/tenant` in the S3 store, and the parsed verdicts.
async fn s3_verdicts(fleet: &Fleet, service: &str, tenant: &str) -> Vec<(String, serde_json::Value)> {
    let client = s3().await;
    let mut out = Vec::new();
    for key in s3_keys(&client, &format!("{}/{service}/{tenant}/", fleet.name)).await {
        if key.rsplit('/').next().unwrap().starts_with("verify-") {
            let verdict = serde_json::from_slice(&s3_get(&client, &key).await).unwrap();
            out.push((key, verdict));
        }
    }
    out
}

fn check<'v>(verdict: &'v serde_json::Value, name: &str) -> &'v serde_json::Value {
    verdict["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name} in {verdict:#}"))
}

const CHECKS: [&str; 7] = ["manifest", "sha256", "restore", "tables", "row_counts", "schema_version", "smoke_queries"];

#[tokio::test(flavor = "multi_thread")]
async fn a_good_backup_verifies_and_leaves_no_scratch_database_behind() {
    let fleet = Fleet::new(Store::S3, &["acme", "globex"], &["core", "clinic"]).await;
    let worker = WorkerProcess::spawn(fleet.path());
    let backup_run = fleet.back_up();
    let (run, s) = fleet.run_and_wait("verify");
    assert_eq!(s["run"]["state"], "succeeded", "{s:#}");
    for (i, t) in fleet.tenants.iter().enumerate() {
        for (service, step) in [("core", "verify core/core"), ("clinic", "verify clinic/clinic")] {
            let output = &s["tenants"][t]["outputs"][step];
            assert_eq!(output["passed"], true, "{s:#}");
            assert_eq!(output["scratch_host"], "scratch", "{s:#}");
            assert_eq!(output["scratch_dropped"], true, "{s:#}");
            let folder = output["backup"].as_str().unwrap();
            assert!(folder.starts_with(&format!("{service}/{t}/")) && folder.ends_with(&backup_run), "{folder}");

            let verdicts = s3_verdicts(&fleet, service, t).await;
            assert_eq!(verdicts.len(), 1, "{verdicts:#?}");
            let (key, verdict) = &verdicts[0];
            assert_eq!(*key, format!("{}/{}", fleet.name, output["verdict"].as_str().unwrap()));
            assert!(key.starts_with(&format!("{}/{folder}/verify-", fleet.name)), "{key}: not beside the backup");
            assert!(key.ends_with(&format!("_{run}-passed.json")), "{key}");
            assert_eq!(verdict["passed"], true, "{verdict:#}");
            assert_eq!(verdict["tenant"], *t);
            assert_eq!(verdict["service"], service);
            assert_eq!(verdict["backup"], folder);
            assert_eq!(verdict["run"], run);
            let names: Vec<&str> =
                verdict["checks"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
            assert_eq!(names, CHECKS, "{verdict:#}");
            for name in CHECKS {
                assert_eq!(check(verdict, name)["passed"], true, "{verdict:#}");
            }
            let rows = if service == "core" { 10 + i + 100 * (i + 1) + 2 } else { 5 * (i + 1) + 1 };
            assert_eq!(
                check(verdict, "row_counts")["detail"],
                format!("{rows} rows, as in the manifest"),
                "{verdict:#}"
            );
            let version = if service == "core" { "version 2" } else { "version 20260101000000" };
            assert_eq!(check(verdict, "schema_version")["detail"], version, "{verdict:#}");
            assert!(verdict["rto_ms"].as_u64().unwrap() > 0, "{verdict:#}");
            // The backup finished before the verification started, minutes ago at most.
            let rpo = verdict["rpo_ms"].as_u64().unwrap();
            assert!(rpo > 0 && rpo < 600_000, "{verdict:#}");
        }
        assert_scratch_gone(t, Duration::ZERO).await;
    }
    drop(worker); // before clearing its Redis prefix, which it would otherwise write to again
    fleet.drop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_local_directory_store_verifies_the_same_way() {
    let fleet = Fleet::new(Store::Fs, &["initech"], &["core"]).await;
    let t = fleet.t("initech");
    let worker = WorkerProcess::spawn(fleet.path());
    fleet.back_up();
    let (run, s) = fleet.run_and_wait("verify");
    assert_eq!(s["run"]["state"], "succeeded", "{s:#}");
    let output = &s["tenants"][&t]["outputs"]["verify core/core"];
    let verdict_path = fleet.path().join("backups").join(output["verdict"].as_str().unwrap());
    assert!(verdict_path.to_string_lossy().ends_with(&format!("_{run}-passed.json")), "{verdict_path:?}");
    let verdict: serde_json::Value = serde_json::from_slice(&std::fs::read(&verdict_path).unwrap()).unwrap();
    assert_eq!(verdict["passed"], true, "{verdict:#}");
    assert_eq!(check(&verdict, "row_counts")["detail"], "112 rows, as in the manifest", "{verdict:#}");
    assert_scratch_gone(&t, Duration::ZERO).await;
    drop(worker); // before clearing its Redis prefix, which it would otherwise write to again
    fleet.drop().await;
}

/// A backup of a tenant's `core` database, tampered with by `tamper` (given the dump and
/// the manifest) through a separate S3 client, fails verification: the step fails with a
/// permanent error naming `failed_check`, whose detail contains `detail`; a failed verdict
/// is stored beside the backup; no scratch database or session is left.
async fn a_tampered_backup_fails(tamper: fn(&mut Vec<u8>, &mut serde_json::Value), failed_check: &str, detail: &str) {
    let fleet = Fleet::new(Store::S3, &["acme"], &["core"]).await;
    let t = fleet.t("acme");
    let worker = WorkerProcess::spawn(fleet.path());
    fleet.back_up();
    let client = s3().await;
    let keys = s3_keys(&client, &format!("{}/core/{t}/", fleet.name)).await;
    let manifest_key = keys.iter().find(|k| k.ends_with("/manifest.json")).unwrap().clone();
    let mut manifest: serde_json::Value = serde_json::from_slice(&s3_get(&client, &manifest_key).await).unwrap();
    let dump_key = format!("{}/{}", fleet.name, manifest["dump"]["key"].as_str().unwrap());
    let mut dump = s3_get(&client, &dump_key).await;
    let (dump_before, manifest_before) = (dump.clone(), manifest.clone());
    tamper(&mut dump, &mut manifest);
    if dump != dump_before {
        s3_put(&client, &dump_key, dump).await;
    }
    if manifest != manifest_before {
        s3_put(&client, &manifest_key, serde_json::to_vec_pretty(&manifest).unwrap()).await;
    }

    let (run, s) = fleet.run_and_wait("verify");
    assert_eq!(s["run"]["state"], "failed", "{s:#}");
    let tenant = &s["tenants"][&t];
    assert_eq!(tenant["state"], "failed", "{s:#}");
    assert_eq!(tenant["attempt"], 1, "a failed verification is not retried: {s:#}");
    let error = tenant["last_error"].as_str().unwrap();
    assert!(
        error.contains("step verify core/core")
            && error.contains("permanent error")
            && error.contains(&format!("tenant {t}, service core"))
            && error.contains("failed verification")
            && error.contains(&format!("{failed_check}: ")),
        "{error}"
    );
    assert!(error.contains(detail), "{error}");

    let verdicts = s3_verdicts(&fleet, "core", &t).await;
    assert_eq!(verdicts.len(), 1, "{verdicts:#?}");
    let (key, verdict) = &verdicts[0];
    assert!(key.ends_with(&format!("_{run}-failed.json")), "{key}");
    assert!(error.contains(key.strip_prefix(&format!("{}/", fleet.name)).unwrap()), "{error}");
    assert_eq!(verdict["passed"], false, "{verdict:#}");
    let failed = check(verdict, failed_check);
    assert_eq!(failed["passed"], false, "{verdict:#}");
    assert!(failed["detail"].as_str().unwrap().contains(detail), "{verdict:#}");
    assert_scratch_gone(&t, Duration::ZERO).await;
    drop(worker); // before clearing its Redis prefix, which it would otherwise write to again
    fleet.drop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backup_with_one_flipped_byte_fails_the_sha256_check() {
    a_tampered_backup_fails(
        |dump, _| {
            let middle = dump.len() / 2;
            dump[middle] ^= 0x01;
        },
        "sha256",
        "the manifest says",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backup_missing_a_table_of_its_manifest_fails_the_tables_check() {
    a_tampered_backup_fails(
        |_, manifest| {
            let tables = manifest["tables"].as_array_mut().unwrap();
            tables.push(serde_json::json!({ "schema": "public", "table": "invoices", "rows": 7 }));
        },
        "tables",
        "in the manifest but not restored: public.invoices",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_row_count_fails_the_row_counts_check() {
    a_tampered_backup_fails(
        |_, manifest| {
            let orders =
                manifest["tables"].as_array_mut().unwrap().iter_mut().find(|t| t["table"] == "orders").unwrap();
            assert_eq!(orders["rows"], 100);
            orders["rows"] = 101.into();
        },
        "row_counts",
        "public.orders has 100 rows, the manifest says 101",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_leftover_scratch_database_is_dropped_by_the_next_verification() {
    let fleet = Fleet::new(Store::S3, &["acme", "globex"], &["core"]).await;
    let (acme, globex) = (fleet.t("acme"), fleet.t("globex"));
    let worker = WorkerProcess::spawn(fleet.path());
    fleet.back_up();
    // What a killed worker leaves: acme's scratch database, with a session still on it;
    // and one of globex's, which acme's verification must not touch.
    let leftover = format!("{}deadbeef_acme", scratch_prefix(&acme));
    let other = format!("{}deadbeef_globex", scratch_prefix(&globex));
    let mut admin = pg_admin().await;
    exec(&mut admin, &format!("CREATE DATABASE \"{leftover}\"")).await;
    exec(&mut admin, &format!("CREATE DATABASE \"{other}\"")).await;
    let mut held = connect_db(&leftover).await;
    exec(&mut held, "SELECT 1").await;

    let out = tenantry(fleet.path(), &["run", "verify", "--tenant", &acme], &[]);
    assert_eq!(out.code(), 0, "{}", out.all());
    let run = out.stdout().trim().to_string();
    let s = wait_for_state(fleet.path(), &run, &["succeeded", "failed", "cancelled"], Duration::from_secs(120));
    assert_eq!(s["run"]["state"], "succeeded", "{s:#}");
    let output = &s["tenants"][&acme]["outputs"]["verify core/core"];
    assert_eq!(output["leftovers_dropped"], serde_json::json!([leftover]), "{s:#}");
    assert_eq!(output["passed"], true, "{s:#}");
    assert_scratch_gone(&acme, Duration::ZERO).await;
    assert_eq!(scratch_databases(&globex).await, vec![other.clone()], "another tenant's database was touched");
    exec(&mut admin, &format!("DROP DATABASE \"{other}\"")).await;
    drop(worker); // before clearing its Redis prefix, which it would otherwise write to again
    fleet.drop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_verification_that_times_out_drops_its_scratch_database() {
    let fleet = Fleet::new(Store::S3, &["slow"], &["core"]).await;
    let t = fleet.t("slow");
    std::fs::write(
        fleet.path().join("workflows/slow.toml"),
        "[retry]\nattempts = 1\n\n[[steps]]\nkind = \"verify_restore\"\ntimeout = \"4s\"\nsmoke_queries = [\"SELECT pg_sleep(120)\"]\n",
    )
    .unwrap();
    let worker = WorkerProcess::spawn(fleet.path());
    fleet.back_up();
    let (_, s) = fleet.run_and_wait("slow");
    assert_eq!(s["run"]["state"], "failed", "{s:#}");
    let error = s["tenants"][&t]["last_error"].as_str().unwrap();
    assert!(error.contains("timed out"), "{error}");
    // The smoke query's session and the database are gone soon after, without a next run.
    assert_scratch_gone(&t, Duration::from_secs(15)).await;
    assert!(s3_verdicts(&fleet, "core", &t).await.is_empty(), "a stopped verification stores no verdict");
    drop(worker); // before clearing its Redis prefix, which it would otherwise write to again
    fleet.drop().await;
}

/// Writes a verdict object by hand: `tenant`'s backup was verified at `stamp`.
fn fake_verdict(fleet: &Fleet, tenant: &str, stamp: &str) {
    let root = fleet.path().join("backups/core").join(tenant);
    let folder = std::fs::read_dir(&root).unwrap().next().unwrap().unwrap().path();
    std::fs::write(folder.join(format!("verify-{stamp}_old-passed.json")), "{}").unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sample_takes_the_least_recently_verified_and_rotates_through_the_fleet() {
    let fleet = Fleet::new(Store::Fs, &["s1", "s2", "s3", "s4"], &["core"]).await;
    let [s1, s2, s3, s4] = ["s1", "s2", "s3", "s4"].map(|b| fleet.t(b));
    std::fs::write(
        fleet.path().join("workflows/sample.toml"),
        "[retry]\nattempts = 1\n\n[[steps]]\nkind = \"verify_restore\"\nsample = 50\n",
    )
    .unwrap();
    let worker = WorkerProcess::spawn(fleet.path());
    fleet.back_up();
    // s3 was never verified, s2 the longest ago.
    fake_verdict(&fleet, &s1, "20200103T020000Z");
    fake_verdict(&fleet, &s2, "20200101T020000Z");
    fake_verdict(&fleet, &s4, "20200102T020000Z");

    let out = tenantry(fleet.path(), &["plan", "sample", "--json"], &[]);
    assert_eq!(out.code(), 0, "{}", out.all());
    let plan: serde_json::Value = serde_json::from_str(&out.stdout()).unwrap();
    let actions: std::collections::BTreeMap<String, serde_json::Value> = plan["waves"][0]["plans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["tenant"].as_str().unwrap().to_string(), p["steps"][0].clone()))
        .collect();
    assert_eq!(actions[&s2]["action"], "run", "{plan:#}");
    assert_eq!(actions[&s3]["action"], "run", "{plan:#}");
    for (t, when) in [(&s1, "2020-01-03 02:00 UTC"), (&s4, "2020-01-02 02:00 UTC")] {
        assert_eq!(actions[t]["action"], "skip", "{plan:#}");
        let reason = actions[t]["reason"].as_str().unwrap();
        assert!(
            reason.contains("not in this run's sample") && reason.contains(&format!("last verified {when}")),
            "{reason}"
        );
    }
    let text = tenantry(fleet.path(), &["plan", "sample"], &[]);
    assert!(text.stdout().contains("skip: not in this run's sample"), "{}", text.all());

    // The run does what the plan showed.
    let (_, s) = fleet.run_and_wait("sample");
    assert_eq!(s["run"]["state"], "succeeded", "{s:#}");
    let output = |s: &serde_json::Value, t: &str| s["tenants"][t]["outputs"]["verify_restore/core"].clone();
    for t in [&s2, &s3] {
        assert_eq!(output(&s, t)["passed"], true, "{s:#}");
    }
    for t in [&s1, &s4] {
        let skipped = output(&s, t)["skipped"].as_str().unwrap_or_default().to_string();
        assert!(skipped.contains("not in this run's sample"), "{s:#}");
    }
    // The next run takes the other half: every tenant verified within 100 / 50 runs.
    let (_, s) = fleet.run_and_wait("sample");
    assert_eq!(s["run"]["state"], "succeeded", "{s:#}");
    for t in [&s1, &s4] {
        assert_eq!(output(&s, t)["passed"], true, "{s:#}");
    }
    for t in [&s2, &s3] {
        assert!(output(&s, t)["skipped"].is_string(), "{s:#}");
    }
    for t in &fleet.tenants {
        assert_scratch_gone(t, Duration::ZERO).await;
    }
    drop(worker); // before clearing its Redis prefix, which it would otherwise write to again
    fleet.drop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_named_backup_is_verified_and_the_dump_read_matches_its_manifest() {
    // Two backups; the older one is named. Its dump, read by a separate client, hashes to the
    // manifest's SHA-256, which the verdict's check quotes.
    let fleet = Fleet::new(Store::S3, &["named"], &["core"]).await;
    let t = fleet.t("named");
    let worker = WorkerProcess::spawn(fleet.path());
    let first = fleet.back_up();
    let second = fleet.back_up();
    assert_ne!(first, second);
    let client = s3().await;
    let keys = s3_keys(&client, &format!("{}/core/{t}/", fleet.name)).await;
    let manifest_key = keys.iter().find(|k| k.ends_with(&format!("_{first}/manifest.json"))).unwrap();
    let folder = manifest_key.rsplit('/').nth(1).unwrap().to_string();
    let manifest: serde_json::Value = serde_json::from_slice(&s3_get(&client, manifest_key).await).unwrap();
    let dump = s3_get(&client, &format!("{}/{}", fleet.name, manifest["dump"]["key"].as_str().unwrap())).await;
    let sha = sha256_hex(&dump);

    fleet.verify_workflow(&format!("backup = \"{folder}\""));
    let (_, s) = fleet.run_and_wait("verify");
    assert_eq!(s["run"]["state"], "succeeded", "{s:#}");
    let output = &s["tenants"][&t]["outputs"]["verify core/core"];
    assert_eq!(output["backup"], format!("core/{t}/{folder}"), "{s:#}");
    let verdicts = s3_verdicts(&fleet, "core", &t).await;
    assert_eq!(verdicts.len(), 1);
    assert!(verdicts[0].0.contains(&format!("/{folder}/verify-")), "{verdicts:#?}");
    assert!(check(&verdicts[0].1, "sha256")["detail"].as_str().unwrap().contains(&sha), "{verdicts:#?}");
    drop(worker); // before clearing its Redis prefix, which it would otherwise write to again
    fleet.drop().await;
}
