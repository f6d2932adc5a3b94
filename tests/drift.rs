//! Schema drift against real PostgreSQL: `tenantry drift` against the majority and a named reference, `--json`, exit statuses, and the `drift` step run by a worker.

mod support;

use std::path::Path;
use std::time::Duration;

use support::{WorkerProcess, clear_redis, exec, pg_admin, pg_url, redis_url, tenantry, unique, wait_for_state};

const TENANTS: [&str; 5] = ["t00", "t01", "t02", "t03", "t04"];

/// Every clinic tenant's schema, as the migrations would have made it.
const CLINIC_SCHEMA: &str = "
CREATE TABLE patients (id bigint PRIMARY KEY, age integer DEFAULT 0, born date);
CREATE INDEX patients_age_idx ON patients (age);
CREATE TABLE events (
  tenant_id text NOT NULL,
  patient_id bigint REFERENCES patients (id),
  at timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE events ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON events USING (tenant_id = current_setting('app.tenant_id', true));
";

/// Five tenants of `clinic` (a schema each, in one database) and two of `core` (a database
/// each); `offline` is a service on a server nobody listens on. Dropped by `drop`.
struct Fleet {
    name: String,
    dir: tempfile::TempDir,
}

impl Fleet {
    async fn new() -> Fleet {
        let name = unique("tdrift");
        let mut admin = pg_admin().await;
        exec(&mut admin, &format!("CREATE DATABASE {name}_clinic")).await;
        for t in &TENANTS[..2] {
            exec(&mut admin, &format!("CREATE DATABASE {name}_core_{t}")).await;
        }
        let mut clinic = connect(&format!("{name}_clinic")).await;
        for t in TENANTS {
            exec(&mut clinic, &format!("CREATE SCHEMA tenant_{t}; SET search_path TO tenant_{t}; {CLINIC_SCHEMA}"))
                .await;
        }
        // tenantry's own tables are not part of the application's schema.
        exec(&mut clinic, &format!("SET search_path TO tenant_t04; {}", tenantry::steps::migrate::HISTORY_DDL)).await;
        for t in &TENANTS[..2] {
            let mut core = connect(&format!("{name}_core_{t}")).await;
            exec(&mut core, "CREATE TABLE accounts (id bigint PRIMARY KEY, owner text NOT NULL)").await;
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

[hosts.main]
engine = "postgres"
url = "{pg}"

[hosts.down]
engine = "postgres"
url = "postgres://postgres:hunter2-secret@127.0.0.1:1/postgres"

[services.clinic]
engine = "postgres"
isolation = "schema"
host = "main"
database = "{name}_clinic"
schema = "tenant_{{tenant}}"

[services.core]
engine = "postgres"
isolation = "database"
host = "main"
database = "{name}_core_{{tenant}}"

[services.offline]
engine = "postgres"
isolation = "schema"
host = "down"
database = "clinic"
schema = "tenant_{{tenant}}"
"#,
            redis = redis_url(),
            pg = pg_url()
        );
        for (i, t) in TENANTS.iter().enumerate() {
            let services = match i {
                0 => r#"["clinic", "core", "offline"]"#,
                1 => r#"["clinic", "core"]"#,
                _ => r#"["clinic"]"#,
            };
            config.push_str(&format!("\n[[catalog.tenants]]\nid = \"{t}\"\nservices = {services}\n"));
        }
        std::fs::write(dir.path().join("tenantry.toml"), config).unwrap();
        Fleet { name, dir }
    }

    /// Drifts three clinic tenants, each differently, and one core tenant.
    async fn drift(&self) {
        let mut clinic = connect(&format!("{}_clinic", self.name)).await;
        exec(&mut clinic, "ALTER TABLE tenant_t01.patients ADD COLUMN name text").await;
        exec(
            &mut clinic,
            "DROP INDEX tenant_t02.patients_age_idx; ALTER TABLE tenant_t02.patients ALTER COLUMN age TYPE bigint",
        )
        .await;
        exec(
            &mut clinic,
            "ALTER POLICY tenant_isolation ON tenant_t03.events USING (true); \
             ALTER TABLE tenant_t03.patients ALTER COLUMN age SET DEFAULT 1",
        )
        .await;
        let mut core = connect(&format!("{}_core_t01", self.name)).await;
        exec(&mut core, "CREATE TABLE notes (id int PRIMARY KEY, body text)").await;
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    async fn drop(self) {
        clear_redis(&self.name).await;
        let mut admin = pg_admin().await;
        let mut dbs = vec![format!("{}_clinic", self.name)];
        dbs.extend(TENANTS[..2].iter().map(|t| format!("{}_core_{t}", self.name)));
        for db in dbs {
            exec(&mut admin, &format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)")).await;
        }
    }
}

async fn connect(db: &str) -> sqlx::PgConnection {
    use sqlx::Connection;
    let url = format!("{}/{db}", pg_url().rsplit_once('/').unwrap().0);
    sqlx::PgConnection::connect(&url).await.unwrap()
}

const T01_DIFF: &str = "+ column patients.name text NULL";
const T02_DIFF: [&str; 2] = [
    "~ column patients.age: integer NULL DEFAULT 0 -> bigint NULL DEFAULT 0",
    "- index patients_age_idx: CREATE INDEX patients_age_idx ON patients USING btree (age)",
];
const T03_DIFF: [&str; 2] = [
    "~ column patients.age: integer NULL DEFAULT 0 -> integer NULL DEFAULT 1",
    "~ policy events.tenant_isolation: ALL TO public USING ((tenant_id = current_setting('app.tenant_id'::text, true))) -> ALL TO public USING (true)",
];

#[tokio::test(flavor = "multi_thread")]
async fn drift_reports_the_tenants_that_differ_from_the_majority_or_a_named_reference() {
    let fleet = Fleet::new().await;
    fleet.drift().await;

    // Against the majority: t00 and t04 agree (t04's history table does not count).
    let run = tenantry(fleet.path(), &["drift", "clinic"], &[]);
    assert_eq!(run.code(), 1, "{}", run.all());
    let out = run.stdout();
    assert!(
        out.starts_with("drift: service clinic — 5 tenant(s), 4 distinct schema(s); reference = t00 (majority of 2)\n"),
        "{out}"
    );
    assert!(out.contains(&format!("\nt01: 1 difference(s)\n  {T01_DIFF}\n")), "{out}");
    assert!(out.contains(&format!("\nt02: 2 difference(s)\n  {}\n  {}\n", T02_DIFF[0], T02_DIFF[1])), "{out}");
    assert!(out.contains(&format!("\nt03: 2 difference(s)\n  {}\n  {}\n", T03_DIFF[0], T03_DIFF[1])), "{out}");
    assert!(out.ends_with("\n3 of 5 tenant(s) differ from the reference t00\n"), "{out}");
    assert!(!out.contains("t04:") && !out.contains("tenantry_migrations"), "{out}");

    // The same for machines.
    let run = tenantry(fleet.path(), &["drift", "clinic", "--json"], &[]);
    assert_eq!(run.code(), 1, "{}", run.all());
    let report: serde_json::Value = serde_json::from_str(&run.stdout()).unwrap();
    assert_eq!(report["reference"], "t00");
    assert_eq!(report["reference_source"], "majority");
    assert_eq!(report["distinct"], 4);
    let tenants = &report["tenants"];
    assert_eq!(tenants.as_object().unwrap().len(), 5);
    assert_eq!(tenants["t00"]["differs"], false);
    assert_eq!(tenants["t04"]["differs"], false);
    assert_eq!(tenants["t04"]["hash"], tenants["t00"]["hash"]);
    assert_eq!(tenants["t04"]["diff"], serde_json::json!([]));
    assert_eq!(tenants["t01"]["differs"], true);
    assert_eq!(tenants["t01"]["diff"], serde_json::json!([T01_DIFF]));
    assert_eq!(tenants["t02"]["diff"], serde_json::json!(T02_DIFF));
    assert_eq!(tenants["t03"]["diff"], serde_json::json!(T03_DIFF));
    assert_ne!(tenants["t01"]["hash"], tenants["t00"]["hash"]);
    assert!(tenants["t00"]["facts"].as_u64().unwrap() > 10, "{report:#}");

    // A drifted tenant as the reference flips the picture; identical diffs are grouped.
    let run = tenantry(fleet.path(), &["drift", "clinic", "--reference", "t01"], &[]);
    assert_eq!(run.code(), 1, "{}", run.all());
    let out = run.stdout();
    assert!(out.contains("reference = t01 (named)"), "{out}");
    assert!(out.contains("\nt00, t04: 1 difference(s)\n  - column patients.name text NULL\n"), "{out}");
    assert!(
        out.contains(&format!(
            "\nt02: 3 difference(s)\n  {}\n  - column patients.name text NULL\n  {}\n",
            T02_DIFF[0], T02_DIFF[1]
        )),
        "{out}"
    );
    assert!(out.contains("\n4 of 5 tenant(s) differ from the reference t01\n"), "{out}");
    let run = tenantry(fleet.path(), &["drift", "clinic", "--reference", "t01", "--json"], &[]);
    let report: serde_json::Value = serde_json::from_str(&run.stdout()).unwrap();
    assert_eq!(report["reference_source"], "named");
    assert_eq!(report["tenants"]["t01"]["differs"], false);
    assert_eq!(report["tenants"]["t00"]["diff"], serde_json::json!(["- column patients.name text NULL"]));

    // Narrowed to tenants that agree: exit 0.
    let run = tenantry(fleet.path(), &["drift", "clinic", "--tenant", "t00", "--tenant", "t04"], &[]);
    assert_eq!(run.code(), 0, "{}", run.all());
    assert!(run.stdout().contains("2 tenant(s), 1 distinct schema(s)"), "{}", run.all());
    assert!(run.stdout().contains("no tenant differs from the reference t00"), "{}", run.all());

    // Database isolation: one connection per tenant database; a whole extra table is one line.
    let run = tenantry(fleet.path(), &["drift", "core", "--reference", "t00"], &[]);
    assert_eq!(run.code(), 1, "{}", run.all());
    assert!(
        run.stdout().contains("\nt01: 1 difference(s)\n  + table notes (with 2 columns, 1 constraint, 1 index)\n"),
        "{}",
        run.all()
    );

    // Unknown service, unknown reference, unreachable server (exit 3, no password shown).
    let run = tenantry(fleet.path(), &["drift", "billing"], &[]);
    assert_eq!(run.code(), 1, "{}", run.all());
    assert!(
        run.stderr().contains("unknown service \"billing\"; the configured services are: clinic, core, offline"),
        "{}",
        run.all()
    );
    let run = tenantry(fleet.path(), &["drift", "clinic", "--reference", "nobody"], &[]);
    assert_eq!(run.code(), 1, "{}", run.all());
    assert!(run.stderr().contains("--reference \"nobody\": no such tenant in the catalog"), "{}", run.all());
    let run = tenantry(fleet.path(), &["drift", "offline"], &[]);
    assert_eq!(run.code(), 3, "{}", run.all());
    assert!(
        run.stdout().contains("t00: cannot read: cannot connect to database \"clinic\" on host down"),
        "{}",
        run.all()
    );
    assert!(run.stderr().contains("could not be reached"), "{}", run.all());
    assert!(!run.all().contains("hunter2"), "{}", run.all());
    fleet.drop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_identical_fleet_does_not_drift() {
    let fleet = Fleet::new().await;
    let run = tenantry(fleet.path(), &["drift", "clinic"], &[]);
    assert_eq!(run.code(), 0, "{}", run.all());
    assert_eq!(
        run.stdout(),
        "drift: service clinic — 5 tenant(s), 1 distinct schema(s); reference = t00 (majority of 5)\n\n\
         no tenant differs from the reference t00\n"
    );
    let run = tenantry(fleet.path(), &["drift", "clinic", "--json", "--reference", "t03"], &[]);
    assert_eq!(run.code(), 0, "{}", run.all());
    let report: serde_json::Value = serde_json::from_str(&run.stdout()).unwrap();
    assert_eq!(report["reference"], "t03");
    assert_eq!(report["distinct"], 1);
    for t in TENANTS {
        assert_eq!(report["tenants"][t]["differs"], false, "{report:#}");
    }
    fleet.drop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_drift_step_fails_tenants_that_differ_from_the_reference() {
    let fleet = Fleet::new().await;
    fleet.drift().await;
    std::fs::write(
        fleet.path().join("workflows/drift.toml"),
        "[target]\nservices = [\"clinic\"]\n\n[retry]\nattempts = 1\n\n[[steps]]\nkind = \"drift\"\nreference = \"t00\"\n",
    )
    .unwrap();
    let worker = WorkerProcess::spawn(fleet.path());
    let out = tenantry(fleet.path(), &["run", "drift"], &[]);
    assert_eq!(out.code(), 0, "{}", out.all());
    let run = out.stdout().trim().to_string();
    let s = wait_for_state(fleet.path(), &run, &["succeeded", "failed", "cancelled"], Duration::from_secs(60));
    assert_eq!(s["run"]["state"], "failed", "{s:#}");
    assert_eq!(s["run"]["succeeded"], 2, "{s:#}");
    assert_eq!(s["run"]["failed"], 3, "{s:#}");
    for t in ["t00", "t04"] {
        let tenant = &s["tenants"][t];
        assert_eq!(tenant["state"], "succeeded", "{s:#}");
        let output = &tenant["outputs"]["drift/clinic"];
        assert_eq!(output["differs"], false, "{s:#}");
        assert_eq!(output["reference"], "t00", "{s:#}");
        assert_eq!(output["hash"], output["reference_hash"], "{s:#}");
    }
    let error = |t: &str| s["tenants"][t]["last_error"].as_str().unwrap_or_default().to_string();
    let e = error("t01");
    assert!(
        e.contains("step drift/clinic")
            && e.contains("permanent error")
            && e.contains(&format!(
                "schema of tenant t01 (main/{name}_clinic/tenant_t01) differs from reference tenant t00 (main/{name}_clinic/tenant_t00) in 1 way(s): {T01_DIFF};",
                name = fleet.name
            )),
        "{e}"
    );
    let e = error("t02");
    assert!(e.contains(&format!("in 2 way(s): {}; {};", T02_DIFF[0], T02_DIFF[1])), "{e}");
    let e = error("t03");
    assert!(e.contains(T03_DIFF[0]) && e.contains(T03_DIFF[1]), "{e}");
    drop(worker);
    fleet.drop().await;
}
