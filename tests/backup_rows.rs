//! `backup` of row-isolated tenants: a script fetched by a separate S3 client restores with plain `psql` into an empty database and holds exactly the tenant's rows, the reference data they need, and not one row of another tenant.

mod support;

use std::path::Path;
use std::time::Duration;

use support::store::{s3, s3_env, s3_get, s3_keys};
use support::{
    WorkerProcess, clear_redis, connect_db, exec, pg_admin, pg_url, redis_url, tenantry, unique, wait_for_state,
};

const BASES: [&str; 3] = ["acme", "globex", "initech"];

/// The shared schema: `tenants` is reached through the tenant column's foreign key; `plans`
/// (referenced by `tenants`) and `countries` (referenced by `customers`) are reference data
/// of which only the rows the tenant's rows point at are copied;
/// `order_items` and `item_notes` belong to tenants through foreign keys only; `audit` has no
/// tenant column and nothing references it; `events` is partitioned.
const SCHEMA: &str = r#"
CREATE TYPE order_state AS ENUM ('open', 'paid');
CREATE TABLE plans (id int PRIMARY KEY, name text NOT NULL);
CREATE TABLE tenants (id text PRIMARY KEY, plan int NOT NULL REFERENCES plans, name text);
CREATE TABLE countries (code text PRIMARY KEY, name text);
CREATE TABLE customers (
    id serial PRIMARY KEY,
    tenant_id text NOT NULL REFERENCES tenants,
    name text NOT NULL,
    shout text GENERATED ALWAYS AS (upper(name)) STORED,
    country text REFERENCES countries
);
CREATE TABLE orders (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id text NOT NULL REFERENCES tenants,
    customer int NOT NULL REFERENCES customers,
    state order_state NOT NULL DEFAULT 'open',
    note text
);
CREATE INDEX orders_tenant ON orders (tenant_id);
CREATE TABLE order_items (id serial PRIMARY KEY, order_id bigint NOT NULL REFERENCES orders, qty int NOT NULL);
CREATE TABLE item_notes (item int NOT NULL REFERENCES order_items, body text);
ALTER TABLE orders ENABLE ROW LEVEL SECURITY;
CREATE TABLE events (tenant_id text NOT NULL, kind text NOT NULL, at timestamptz NOT NULL DEFAULT now())
    PARTITION BY LIST (kind);
CREATE TABLE events_login PARTITION OF events FOR VALUES IN ('login');
CREATE TABLE events_other PARTITION OF events DEFAULT;
CREATE TABLE audit (id serial PRIMARY KEY, message text);
INSERT INTO plans VALUES (1, 'free'), (2, 'pro');
INSERT INTO countries VALUES ('de', 'Germany'), ('fr', 'France'), ('it', 'Italy');
"#;

/// Tenant ids are `{base}_{unique}`: `verify_restore` names scratch databases after the
/// tenant, and tests running at once must not share tenants.
struct Fleet {
    name: String,
    tenants: Vec<String>,
    dir: tempfile::TempDir,
}

impl Fleet {
    async fn new() -> Fleet {
        Fleet::with_schema(SCHEMA).await
    }

    async fn with_schema(schema: &str) -> Fleet {
        let name = unique("tbackrow");
        let suffix = name.trim_start_matches("tbackrow_").to_string();
        let tenants: Vec<String> = BASES.iter().map(|b| format!("{b}_{suffix}")).collect();
        let mut admin = pg_admin().await;
        exec(&mut admin, &format!("CREATE DATABASE {name}_shop")).await;
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("workflows")).unwrap();
        std::fs::create_dir_all(dir.path().join("migrations/shop")).unwrap();
        std::fs::write(dir.path().join("migrations/shop/V1__shop.sql"), schema).unwrap();
        let mut config = format!(
            r#"
[redis]
url = "{redis}"
prefix = "{name}"

[runtime]
lease = "3s"
sweep_interval = "200ms"

[storage]
kind = "s3"
bucket = "{bucket}"
prefix = "{name}"
endpoint = "{endpoint}"
region = "us-east-1"
access_key_id = "{access}"
secret_access_key = "{secret}"

[hosts.main]
engine = "postgres"
url = "{pg}"

[services.shop]
engine = "postgres"
isolation = "row"
host = "main"
database = "{name}_shop"
tenant_column = "tenant_id"
migrations = "migrations/shop"
"#,
            redis = redis_url(),
            pg = pg_url(),
            bucket = s3_env("TENANTRY_TEST_S3_BUCKET"),
            endpoint = s3_env("TENANTRY_TEST_S3_ENDPOINT"),
            access = s3_env("TENANTRY_TEST_S3_ACCESS_KEY"),
            secret = s3_env("TENANTRY_TEST_S3_SECRET_KEY"),
        );
        for t in &tenants {
            config.push_str(&format!("\n[[catalog.tenants]]\nid = \"{t}\"\nservices = [\"shop\"]\n"));
        }
        std::fs::write(dir.path().join("tenantry.toml"), config).unwrap();
        std::fs::write(dir.path().join("workflows/rollout.toml"), "[[steps]]\nkind = \"migrate\"\n").unwrap();
        std::fs::write(dir.path().join("workflows/nightly.toml"), "[[steps]]\nkind = \"backup\"\n").unwrap();
        std::fs::write(
            dir.path().join("workflows/verify.toml"),
            "[retry]\nattempts = 1\n\n[[steps]]\nkind = \"verify_restore\"\n",
        )
        .unwrap();
        Fleet { name, tenants, dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn database(&self) -> String {
        format!("{}_shop", self.name)
    }

    fn run_and_wait(&self, workflow: &str) -> (String, serde_json::Value) {
        self.run_and_wait_with(&["run", workflow])
    }

    fn run_and_wait_with(&self, args: &[&str]) -> (String, serde_json::Value) {
        let out = tenantry(self.path(), args, &[]);
        assert_eq!(out.code(), 0, "{}", out.all());
        let run = out.stdout().trim().to_string();
        let s = wait_for_state(self.path(), &run, &["succeeded", "failed", "cancelled"], Duration::from_secs(90));
        (run, s)
    }

    /// Every tenant's rows, different in number per tenant, with values COPY must escape.
    async fn fill(&self) {
        let mut conn = connect_db(&self.database()).await;
        for (i, t) in self.tenants.iter().enumerate() {
            let n = 3 + 2 * i;
            exec(
                &mut conn,
                &format!(
                    "INSERT INTO tenants VALUES ('{t}', {plan}, 'Tenant {t}');
                     INSERT INTO customers (tenant_id, name, country)
                         SELECT '{t}', '{t} tab' || chr(9) || 'newline' || chr(10) || 'back\\slash ' || g,
                                CASE WHEN g % 2 = 0 THEN 'de' END
                         FROM generate_series(1, {n}) g;
                     INSERT INTO orders (tenant_id, customer, state, note)
                         SELECT '{t}', c.id, CASE WHEN c.id % 2 = 0 THEN 'paid' ELSE 'open' END::order_state, NULL
                         FROM customers c, generate_series(1, 4) WHERE c.tenant_id = '{t}';
                     INSERT INTO order_items (order_id, qty) SELECT id, 2 FROM orders WHERE tenant_id = '{t}';
                     INSERT INTO item_notes SELECT id, 'note of ' || id FROM order_items i
                         WHERE EXISTS (SELECT 1 FROM orders o WHERE o.id = i.order_id AND o.tenant_id = '{t}');
                     INSERT INTO events (tenant_id, kind) SELECT '{t}', CASE WHEN g % 3 = 0 THEN 'login' ELSE 'view' END
                         FROM generate_series(1, {e}) g;
                     INSERT INTO audit (message) VALUES ('{t} was here');",
                    plan = 1 + i % 2,
                    e = 10 * (i + 1),
                ),
            )
            .await;
        }
    }

    async fn drop(self, extra: &[String]) {
        clear_redis(&self.name).await;
        let mut admin = pg_admin().await;
        for db in extra.iter().cloned().chain([self.database()]) {
            exec(&mut admin, &format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)")).await;
        }
        let client = s3().await;
        for key in s3_keys(&client, &format!("{}/", self.name)).await {
            client.delete_object().bucket(s3_env("TENANTRY_TEST_S3_BUCKET")).key(key).send().await.unwrap();
        }
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// `gunzip -c FILE | psql -v ON_ERROR_STOP=1 --single-transaction -d DATABASE`, as the
/// script's header tells an operator, into a new database.
async fn psql_restore(script_gz: &[u8], database: &str) {
    let mut admin = pg_admin().await;
    exec(&mut admin, &format!("CREATE DATABASE {database}")).await;
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), script_gz).unwrap();
    let url = url::Url::parse(&pg_url()).unwrap();
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg("set -o pipefail; gunzip -c \"$1\" | psql -X -q -v ON_ERROR_STOP=1 --single-transaction -d \"$2\"")
        .arg("restore")
        .arg(file.path())
        .arg(database)
        .env("PGHOST", url.host_str().unwrap())
        .env("PGPORT", url.port().unwrap_or(5432).to_string())
        .env("PGUSER", if url.username().is_empty() { "postgres" } else { url.username() })
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "psql restore failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn scalar(database: &str, sql: &str) -> String {
    let mut conn = connect_db(database).await;
    sqlx::query_scalar::<_, Option<String>>(sqlx::AssertSqlSafe(sql.to_string()))
        .fetch_one(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .unwrap_or_default()
}

/// A digest of a tenant's rows of a table, the same on the source and a restored copy.
fn digest(table: &str, filter: &str) -> String {
    format!("SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) FROM {table} t {filter}")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_row_tenants_backup_restores_with_plain_psql_and_holds_not_one_row_of_another_tenant() {
    let fleet = Fleet::new().await;
    let _worker = WorkerProcess::spawn(fleet.path());
    let (_, s) = fleet.run_and_wait("rollout");
    assert_eq!(s["run"]["state"], "succeeded", "{s:#}");
    fleet.fill().await;
    let plan = tenantry(fleet.path(), &["plan", "nightly", "--json"], &[]);
    assert_eq!(plan.code(), 0, "{}", plan.all());
    assert!(!plan.stdout().contains("not built yet"), "{}", plan.stdout());

    let (run, s) = fleet.run_and_wait("nightly");
    assert_eq!(s["run"]["state"], "succeeded", "{s:#}");
    let client = s3().await;
    let source = fleet.database();
    let mut restored = Vec::new();
    for (i, t) in fleet.tenants.iter().enumerate() {
        let keys = s3_keys(&client, &format!("{}/shop/{t}/", fleet.name)).await;
        assert_eq!(keys.len(), 2, "{keys:#?}");
        let manifest_key = keys.iter().find(|k| k.ends_with("/manifest.json")).expect("manifest");
        assert!(manifest_key.contains(&format!("_{run}/")), "{manifest_key}");
        let manifest: serde_json::Value = serde_json::from_slice(&s3_get(&client, manifest_key).await).unwrap();
        assert_eq!(manifest["isolation"], "row");
        assert_eq!(manifest["dump"]["format"], "psql_script_gzip", "{manifest:#}");
        assert_eq!(manifest["schema_version"], "1", "{manifest:#}");
        let dump_key = format!("{}/{}", fleet.name, manifest["dump"]["key"].as_str().unwrap());
        assert!(dump_key.ends_with(".sql.gz"), "{dump_key}");
        let dump = s3_get(&client, &dump_key).await;
        assert_eq!(manifest["dump"]["size"], dump.len() as u64);
        assert_eq!(manifest["dump"]["sha256"], sha256_hex(&dump));

        // What the manifest says of each table.
        let choice = |table: &str| {
            let e = manifest["row_export"]["tables"].as_array().unwrap().iter().find(|e| e["table"] == table);
            e.unwrap_or_else(|| panic!("{table} not in {manifest:#}")).clone()
        };
        for table in ["customers", "orders", "events"] {
            assert_eq!(choice(table)["copied"], "tenant_rows", "{table}");
            assert_eq!(choice(table)["column"], "tenant_id", "{table}");
        }
        assert_eq!(choice("tenants")["copied"], "tenant_rows");
        assert_eq!(choice("tenants")["column"], "id");
        assert_eq!(choice("tenantry_migrations")["copied"], "all_rows");
        assert_eq!(choice("tenantry_migrations")["because"], "the migration history");
        let links = |table: &str| -> Vec<String> {
            choice(table)["links"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l["table"].as_str().unwrap().to_string())
                .collect()
        };
        for (table, copied, through) in [
            ("plans", "referenced", "tenants"),
            ("countries", "referenced", "customers"),
            ("order_items", "referencing", "orders"),
            ("item_notes", "referencing", "order_items"),
        ] {
            assert_eq!(choice(table)["copied"], copied, "{table}");
            assert_eq!(links(table), [through], "{table}");
        }
        assert_eq!(choice("audit")["copied"], "schema_only");
        let rows = |table: &str| {
            manifest["tables"].as_array().unwrap().iter().find(|e| e["table"] == table).unwrap()["rows"]
                .as_i64()
                .unwrap()
        };
        let customers = 3 + 2 * i as i64;
        assert_eq!(rows("customers"), customers);
        assert_eq!(rows("orders"), 4 * customers);
        assert_eq!(rows("events"), 10 * (i as i64 + 1));
        assert_eq!((rows("order_items"), rows("item_notes")), (4 * customers, 4 * customers));
        // Only the plan and the country the tenant's rows point at.
        assert_eq!((rows("tenants"), rows("plans"), rows("countries"), rows("audit")), (1, 1, 1, 0));

        let target = format!("{}_restored_{t}", fleet.name);
        psql_restore(&dump, &target).await;
        restored.push(target.clone());
        // Not one row of another tenant, in any table with the tenant column.
        for table in ["customers", "orders", "events"] {
            let others = scalar(&target, &format!("SELECT count(*)::text FROM {table} WHERE tenant_id <> '{t}'")).await;
            assert_eq!(others, "0", "{table} holds other tenants' rows");
            let filter = format!("WHERE tenant_id = '{t}'");
            assert_eq!(
                scalar(&target, &digest(table, &filter)).await,
                scalar(&source, &digest(table, &filter)).await,
                "{table}: the restored rows differ from the tenant's rows"
            );
        }
        assert_eq!(&scalar(&target, "SELECT string_agg(id, ',') FROM tenants").await, t);
        for (table, filter) in [
            ("order_items", format!("WHERE order_id IN (SELECT id FROM orders WHERE tenant_id = '{t}')")),
            (
                "item_notes",
                format!(
                    "WHERE item IN (SELECT i.id FROM order_items i JOIN orders o ON o.id = i.order_id WHERE o.tenant_id = '{t}')"
                ),
            ),
        ] {
            assert_eq!(
                scalar(&target, &digest(table, "")).await,
                scalar(&source, &digest(table, &filter)).await,
                "{table}: the restored rows are not exactly the tenant's"
            );
        }
        assert_eq!(scalar(&target, "SELECT count(*)::text FROM audit").await, "0");
        for (table, filter) in [
            ("countries", format!("WHERE code IN (SELECT country FROM customers WHERE tenant_id = '{t}')")),
            ("plans", format!("WHERE id IN (SELECT plan FROM tenants WHERE id = '{t}')")),
        ] {
            assert_eq!(
                scalar(&target, &digest(table, "")).await,
                scalar(&source, &digest(table, &filter)).await,
                "{table}: the restored rows are not exactly those the tenant's rows point at"
            );
        }
        assert_eq!(scalar(&target, "SELECT max(version) FROM tenantry_migrations").await, "1");
        // Generated columns are computed again, partitions route the rows, constraints and
        // indexes are back, sequences continue after the source's values.
        assert_eq!(scalar(&target, "SELECT count(*)::text FROM customers WHERE shout <> upper(name)").await, "0");
        assert_eq!(
            scalar(&target, "SELECT count(*)::text FROM events_login").await,
            scalar(&source, &format!("SELECT count(*)::text FROM events_login WHERE tenant_id = '{t}'")).await
        );
        assert_eq!(
            scalar(&target, "SELECT count(*)::text FROM pg_constraint WHERE contype = 'f'").await,
            scalar(&source, "SELECT count(*)::text FROM pg_constraint WHERE contype = 'f'").await
        );
        assert_eq!(scalar(&target, "SELECT to_regclass('orders_tenant')::text").await, "orders_tenant");
        assert_eq!(
            scalar(&target, "SELECT last_value::text FROM customers_id_seq").await,
            scalar(&source, "SELECT last_value::text FROM customers_id_seq").await
        );
        let mut conn = connect_db(&target).await;
        exec(&mut conn, &format!("INSERT INTO customers (tenant_id, name) VALUES ('{t}', 'new')")).await;
        exec(&mut conn, &format!("INSERT INTO orders (tenant_id, customer) SELECT '{t}', max(id) FROM customers"))
            .await;
    }

    // `tenantry restore` of a row tenant: never among the other tenants' rows; --into a
    // database of its own, checked against the manifest.
    let t = &fleet.tenants[0];
    let out = tenantry(fleet.path(), &["restore", t, "--service", "shop"], &[]);
    assert_eq!(out.code(), 1, "{}", out.all());
    assert!(out.all().contains("restore it into a database of its own with --into NEW_DATABASE"), "{}", out.all());
    let out = tenantry(fleet.path(), &["restore", t, "--service", "shop", "--into", &source], &[]);
    assert_eq!(out.code(), 1, "{}", out.all());
    assert!(out.all().contains("restore never writes over another placement"), "{}", out.all());
    let into = format!("{}_cli_{t}", fleet.name);
    let out = tenantry(fleet.path(), &["restore", t, "--service", "shop", "--into", &into, "--json"], &[]);
    assert_eq!(out.code(), 0, "{}", out.all());
    let report: serde_json::Value = serde_json::from_str(&out.stdout()).unwrap();
    assert_eq!(report["passed"], true, "{report:#}");
    restored.push(into.clone());
    let filter = format!("WHERE tenant_id = '{t}'");
    assert_eq!(scalar(&into, &digest("orders", "")).await, scalar(&source, &digest("orders", &filter)).await);

    // verify_restore restores the same scripts with psql into scratch databases and checks them.
    let (_, s) = fleet.run_and_wait("verify");
    assert_eq!(s["run"]["state"], "succeeded", "{s:#}");
    for t in &fleet.tenants {
        let verdicts = verdicts(&fleet, t).await;
        assert_eq!(verdicts.len(), 1, "{verdicts:#?}");
        assert_eq!(verdicts[0]["passed"], true, "{:#}", verdicts[0]);
        let restore = check(&verdicts[0], "restore");
        assert_eq!(restore["detail"], "psql succeeded", "{:#}", verdicts[0]);
        assert_eq!(check(&verdicts[0], "row_counts")["passed"], true, "{:#}", verdicts[0]);
        assert_eq!(check(&verdicts[0], "schema_version")["passed"], true, "{:#}", verdicts[0]);
    }
    // One byte flipped in the middle of a script: the verification fails naming the check,
    // psql commits nothing, and the scratch database is gone.
    let victim = &fleet.tenants[2];
    let keys = s3_keys(&client, &format!("{}/shop/{victim}/", fleet.name)).await;
    let dump_key = keys.iter().find(|k| k.ends_with(".sql.gz")).unwrap();
    let mut dump = s3_get(&client, dump_key).await;
    let middle = dump.len() / 2;
    dump[middle] ^= 0x20;
    client.put_object().bucket(s3_env("TENANTRY_TEST_S3_BUCKET")).key(dump_key).body(dump.into()).send().await.unwrap();
    let (_, s) = fleet.run_and_wait("verify");
    assert_eq!(s["run"]["state"], "failed", "{s:#}");
    let failed: Vec<serde_json::Value> =
        verdicts(&fleet, victim).await.into_iter().filter(|v| v["passed"] == false).collect();
    assert_eq!(failed.len(), 1, "{failed:#?}");
    assert_eq!(check(&failed[0], "sha256")["passed"], false, "{:#}", failed[0]);
    let mut admin = pg_admin().await;
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_database WHERE left(datname, length($1)) = $1")
        .bind(tenantry::steps::verify_restore::scratch_prefix(victim))
        .fetch_one(&mut admin)
        .await
        .unwrap();
    assert_eq!(left, 0, "a scratch database of {victim} is left behind");
    fleet.drop(&restored).await;
}

/// The verdicts stored beside `tenant`'s backups.
async fn verdicts(fleet: &Fleet, tenant: &str) -> Vec<serde_json::Value> {
    let client = s3().await;
    let mut out = Vec::new();
    for key in s3_keys(&client, &format!("{}/shop/{tenant}/", fleet.name)).await {
        if key.rsplit('/').next().unwrap().starts_with("verify-") {
            out.push(serde_json::from_slice(&s3_get(&client, &key).await).unwrap());
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

#[tokio::test(flavor = "multi_thread")]
async fn reference_tables_copy_a_table_whole_a_tenant_table_named_there_is_refused_and_health_checks_freshness() {
    let fleet = Fleet::new().await;
    let _worker = WorkerProcess::spawn(fleet.path());
    let (_, s) = fleet.run_and_wait("rollout");
    assert_eq!(s["run"]["state"], "succeeded", "{s:#}");
    fleet.fill().await;
    // `health` with `backups = true`: no backup yet is stale; after one, fresh.
    std::fs::write(
        fleet.path().join("workflows/health.toml"),
        "[retry]\nattempts = 1\n\n[[steps]]\nkind = \"health\"\nbackups = true\n",
    )
    .unwrap();
    let (_, s) = fleet.run_and_wait("health");
    assert_eq!(s["run"]["state"], "failed", "{s:#}");
    assert!(s.to_string().contains("backups stale: no complete backup"), "{s:#}");
    std::fs::write(
        fleet.path().join("workflows/nightly.toml"),
        "[[steps]]\nkind = \"backup\"\nreference_tables = [\"audit\"]\n",
    )
    .unwrap();
    let (_, s) = fleet.run_and_wait("nightly");
    assert_eq!(s["run"]["state"], "succeeded", "{s:#}");
    let (_, s) = fleet.run_and_wait("health");
    assert_eq!(s["run"]["state"], "succeeded", "{s:#}");
    let client = s3().await;
    let keys = s3_keys(&client, &format!("{}/shop/{}/", fleet.name, fleet.tenants[1])).await;
    let manifest_key = keys.iter().find(|k| k.ends_with("/manifest.json")).expect("manifest");
    let manifest: serde_json::Value = serde_json::from_slice(&s3_get(&client, manifest_key).await).unwrap();
    let audit = manifest["row_export"]["tables"].as_array().unwrap().iter().find(|e| e["table"] == "audit").unwrap();
    assert_eq!(audit["copied"], "all_rows", "{manifest:#}");
    assert_eq!(audit["because"], "named in reference_tables");

    std::fs::write(
        fleet.path().join("workflows/nightly.toml"),
        "[retry]\nattempts = 1\n\n[[steps]]\nkind = \"backup\"\nreference_tables = [\"orders\"]\n",
    )
    .unwrap();
    let (_, s) = fleet.run_and_wait("nightly");
    assert_eq!(s["run"]["state"], "failed", "{s:#}");
    let text = s.to_string();
    assert!(
        text.contains("reference_tables names orders, which has the tenant column tenant_id"),
        "the refusal does not say why: {s:#}"
    );
    fleet.drop(&[]).await;
}

/// The manifest and the script of `tenant`'s newest backup, fetched with a separate client.
async fn fetched(fleet: &Fleet, tenant: &str) -> (serde_json::Value, Vec<u8>) {
    let client = s3().await;
    let keys = s3_keys(&client, &format!("{}/shop/{tenant}/", fleet.name)).await;
    let manifest_key = keys.iter().rfind(|k| k.ends_with("/manifest.json")).expect("manifest");
    let manifest: serde_json::Value = serde_json::from_slice(&s3_get(&client, manifest_key).await).unwrap();
    let dump_key = format!("{}/{}", fleet.name, manifest["dump"]["key"].as_str().unwrap());
    (manifest, s3_get(&client, &dump_key).await)
}

fn manifest_rows(manifest: &serde_json::Value, table: &str) -> i64 {
    manifest["tables"].as_array().unwrap().iter().find(|e| e["table"] == table).unwrap()["rows"].as_i64().unwrap()
}

/// `addresses` has no tenant column: its rows belong to tenants only through the customers
/// that reference them. Another tenant's address is another tenant's row.
/// A fleet on `schema` (applied by a `rollout` run), with each tenant's rows inserted by
/// the statements `rows(tenant)` returns, and the status of a `nightly` backup run after
/// that; the worker runs until it is dropped.
async fn backed_up(schema: &str, rows: impl Fn(&str) -> String) -> (Fleet, WorkerProcess, serde_json::Value) {
    let fleet = Fleet::with_schema(schema).await;
    let worker = WorkerProcess::spawn(fleet.path());
    let (_, s) = fleet.run_and_wait("rollout");
    assert_eq!(s["run"]["state"], "succeeded", "{s:#}");
    let mut conn = connect_db(&fleet.database()).await;
    for t in &fleet.tenants {
        exec(&mut conn, &rows(t)).await;
    }
    let (_, s) = fleet.run_and_wait("nightly");
    (fleet, worker, s)
}

/// Runs `checks`, then drops the fleet and the databases `extra` whatever they found, then
/// fails as they did.
async fn checked(fleet: Fleet, extra: &[String], checks: impl std::future::Future<Output = ()>) {
    let outcome = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(checks)).await;
    fleet.drop(extra).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_table_that_tenant_rows_reference_holds_no_rows_of_another_tenant_in_the_backup() {
    let (fleet, _worker, s) = backed_up(
        "CREATE TABLE tenants (id text PRIMARY KEY);
         CREATE TABLE addresses (id serial PRIMARY KEY, street text NOT NULL);
         CREATE TABLE customers (id serial PRIMARY KEY, tenant_id text NOT NULL REFERENCES tenants,
                                 name text, address int REFERENCES addresses);",
        |t| {
            format!(
                "INSERT INTO tenants VALUES ('{t}');
                 WITH a AS (INSERT INTO addresses (street) VALUES ('home of {t}') RETURNING id)
                 INSERT INTO customers (tenant_id, name, address) SELECT '{t}', 'someone', id FROM a;"
            )
        },
    )
    .await;
    assert_eq!(s["run"]["state"], "succeeded", "{s:#}");
    let t = fleet.tenants[0].clone();
    let (manifest, dump) = fetched(&fleet, &t).await;
    let target = format!("{}_restored", fleet.name);
    let restored = target.clone();
    checked(fleet, &[target], async move {
        psql_restore(&dump, &restored).await;
        let streets = scalar(&restored, "SELECT string_agg(street, ',' ORDER BY street) FROM addresses").await;
        assert_eq!(streets, format!("home of {t}"), "another tenant's addresses are in {t}'s backup: {manifest:#}");
        assert_eq!(manifest_rows(&manifest, "addresses"), 1, "{manifest:#}");
    })
    .await;
}

/// A schema whose columns use an extension's type (`citext`, installed by a migration)
/// restores with plain psql into an empty database.
#[tokio::test(flavor = "multi_thread")]
async fn a_schema_using_an_extensions_type_restores_with_plain_psql_into_an_empty_database() {
    let (fleet, _worker, s) = backed_up(
        "CREATE EXTENSION IF NOT EXISTS citext;
         CREATE TABLE customers (id serial PRIMARY KEY, tenant_id text NOT NULL, email citext NOT NULL);",
        |t| format!("INSERT INTO customers (tenant_id, email) VALUES ('{t}', 'Someone@{t}.example')"),
    )
    .await;
    assert_eq!(s["run"]["state"], "succeeded", "{s:#}");
    let t = fleet.tenants[1].clone();
    let (_, dump) = fetched(&fleet, &t).await;
    let (_, verified) = fleet.run_and_wait("verify");
    let target = format!("{}_restored", fleet.name);
    let restored = target.clone();
    checked(fleet, &[target], async move {
        psql_restore(&dump, &restored).await;
        let sql = format!("SELECT count(*)::text FROM customers WHERE email = 'SOMEONE@{t}.EXAMPLE'");
        assert_eq!(scalar(&restored, &sql).await, "1");
        assert_eq!(verified["run"]["state"], "succeeded", "{verified:#}");
    })
    .await;
}

/// A table truncated (or rewritten by `ALTER TABLE`) by someone else while the backup runs:
/// `TRUNCATE` is not MVCC-safe, so a snapshot that holds no lock on the table sees it empty.
/// The backup must hold the rows of its snapshot, not an empty table.
#[tokio::test(flavor = "multi_thread")]
async fn a_table_truncated_while_the_backup_runs_keeps_its_rows_in_the_backup() {
    let fleet = Fleet::new().await;
    let _worker = WorkerProcess::spawn(fleet.path());
    let (_, s) = fleet.run_and_wait("rollout");
    assert_eq!(s["run"]["state"], "succeeded", "{s:#}");
    fleet.fill().await;
    // `audit`, copied whole and first, is big enough for the truncation to land meanwhile.
    let mut conn = connect_db(&fleet.database()).await;
    exec(&mut conn, "INSERT INTO audit (message) SELECT 'event ' || g FROM generate_series(1, 1000000) g").await;
    std::fs::write(
        fleet.path().join("workflows/nightly.toml"),
        "[retry]\nattempts = 1\n\n[[steps]]\nkind = \"backup\"\nreference_tables = [\"audit\"]\n",
    )
    .unwrap();
    let t = fleet.tenants[0].clone();
    let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM orders WHERE tenant_id = $1")
        .bind(&t)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    let database = fleet.database();
    let truncate = tokio::spawn(async move {
        let mut watcher = connect_db(&database).await;
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let copying: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE datname = current_database() \
                 AND query LIKE 'COPY (SELECT%\"audit\"%')",
            )
            .fetch_one(&mut watcher)
            .await
            .unwrap();
            if copying {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "the backup never copied audit");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        exec(&mut watcher, "SET lock_timeout = '60s'; TRUNCATE orders CASCADE").await;
    });
    let (_, s) = fleet.run_and_wait_with(&["run", "nightly", "--tenant", &t]);
    truncate.await.unwrap();
    assert_eq!(s["run"]["state"], "succeeded", "{s:#}");
    let (manifest, dump) = fetched(&fleet, &t).await;
    let target = format!("{}_restored", fleet.name);
    let restored = target.clone();
    checked(fleet, &[target], async move {
        assert_eq!(manifest_rows(&manifest, "orders"), orders, "the backup lost the truncated table's rows");
        psql_restore(&dump, &restored).await;
        assert_eq!(scalar(&restored, "SELECT count(*)::text FROM orders").await, orders.to_string());
    })
    .await;
}

/// Table, column and sequence names with quotes, backslashes and newlines are quoted in the
/// script; the rows of the tenant come back and nothing else runs.
#[tokio::test(flavor = "multi_thread")]
async fn names_with_quotes_and_newlines_are_quoted_in_the_script() {
    let (fleet, _worker, s) = backed_up(
        "CREATE TABLE \"we\"\"ird\n\\. name;\" (\"i\"\"d\n\\.\" serial PRIMARY KEY, tenant_id text NOT NULL,
                                             \"v'al\\\" text);",
        |t| format!("INSERT INTO \"we\"\"ird\n\\. name;\" (tenant_id, \"v'al\\\") VALUES ('{t}', E'a\\n\\\\.\\nb')"),
    )
    .await;
    assert_eq!(s["run"]["state"], "succeeded", "{s:#}");
    let t = fleet.tenants[2].clone();
    let (_, dump) = fetched(&fleet, &t).await;
    let target = format!("{}_restored", fleet.name);
    let restored = target.clone();
    checked(fleet, &[target], async move {
        psql_restore(&dump, &restored).await;
        let sql = "SELECT string_agg(tenant_id || ':' || \"v'al\\\", ',') FROM \"we\"\"ird\n\\. name;\"";
        assert_eq!(scalar(&restored, sql).await, format!("{t}:a\n\\.\nb"));
    })
    .await;
}

/// A tenant table's foreign key to reference data in another schema of the same database:
/// the script could not restore it into an empty database, so the backup is refused before
/// anything is stored, naming the key.
#[tokio::test(flavor = "multi_thread")]
async fn a_foreign_key_to_another_schema_is_refused_naming_the_key_and_nothing_is_stored() {
    let (fleet, _worker, s) = backed_up(
        "CREATE SCHEMA IF NOT EXISTS shared;
         CREATE TABLE shared.regions (code text PRIMARY KEY);
         INSERT INTO shared.regions VALUES ('eu'), ('us');
         CREATE TABLE customers (id serial PRIMARY KEY, tenant_id text NOT NULL, region text REFERENCES shared.regions);",
        |t| format!("INSERT INTO customers (tenant_id, region) VALUES ('{t}', 'eu')"),
    )
    .await;
    let keys = s3_keys(&s3().await, &format!("{}/shop/", fleet.name)).await;
    checked(fleet, &[], async move {
        assert_eq!(s["run"]["state"], "failed", "{s:#}");
        let text = s.to_string();
        assert!(text.contains("foreign keys into other schemas would not restore"), "{s:#}");
        assert!(text.contains("customers (customers_region_fkey) references shared.regions"), "{s:#}");
        assert!(keys.iter().all(|k| !k.ends_with("/manifest.json")), "a backup was stored: {keys:#?}");
    })
    .await;
}

/// `comments` has no tenant column and two foreign keys to tenant tables: one nullable
/// (`order_id`, named first), one not (`customer_id`). Every comment belongs to the tenant
/// through its customer; those on no order must be in the backup too.
#[tokio::test(flavor = "multi_thread")]
async fn a_table_with_two_foreign_keys_to_tenant_tables_keeps_the_rows_linked_through_either() {
    let (fleet, _worker, s) = backed_up(
        "CREATE TABLE customers (id serial PRIMARY KEY, tenant_id text NOT NULL);
         CREATE TABLE orders (id serial PRIMARY KEY, tenant_id text NOT NULL, customer int NOT NULL REFERENCES customers);
         CREATE TABLE comments (id serial PRIMARY KEY, body text,
             order_id int CONSTRAINT a_order REFERENCES orders,
             customer_id int NOT NULL CONSTRAINT b_customer REFERENCES customers);",
        |t| {
            format!(
                "WITH c AS (INSERT INTO customers (tenant_id) VALUES ('{t}') RETURNING id),
                      o AS (INSERT INTO orders (tenant_id, customer) SELECT '{t}', id FROM c RETURNING id, customer)
                 INSERT INTO comments (body, order_id, customer_id)
                     SELECT 'on an order', o.id, o.customer FROM o
                     UNION ALL SELECT 'on the customer', NULL, c.id FROM c;"
            )
        },
    )
    .await;
    assert_eq!(s["run"]["state"], "succeeded", "{s:#}");
    let t = fleet.tenants[1].clone();
    let (manifest, dump) = fetched(&fleet, &t).await;
    let target = format!("{}_restored", fleet.name);
    let restored = target.clone();
    checked(fleet, &[target], async move {
        psql_restore(&dump, &restored).await;
        assert_eq!(
            scalar(&restored, "SELECT string_agg(body, ',' ORDER BY body) FROM comments").await,
            "on an order,on the customer",
            "{manifest:#}"
        );
    })
    .await;
}
