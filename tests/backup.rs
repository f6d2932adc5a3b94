//! `backup`: per-tenant dumps streamed to a real S3 server (s3s-fs) or a directory, restored with plain `pg_restore` from objects fetched by a separate S3 client.

mod support;

use std::path::Path;
use std::time::Duration;

use support::store::{s3, s3_env, s3_get, s3_keys};
use support::{
    WorkerProcess, clear_redis, connect_db, exec, pg_admin, pg_url, redis_url, tenantry, unique, wait_for_state,
};

const TENANTS: [&str; 3] = ["acme", "globex", "initech"];

/// `core`: a database per tenant; `clinic`: a schema per tenant. Each tenant has its own
/// number of rows, so a dump of the wrong tenant cannot pass for the right one.
struct Fleet {
    name: String,
    dir: tempfile::TempDir,
}

/// Where a fleet's backups go.
enum Store<'a> {
    /// The s3s-fs that test.sh starts.
    Shared,
    /// An S3 server at this endpoint (a test's own, see [`OwnS3`]).
    Own(&'a str),
    /// A directory beside the config.
    Dir,
}

fn s3_storage(prefix: &str, endpoint: &str) -> String {
    format!(
        "[storage]\nkind = \"s3\"\nbucket = \"{}\"\nprefix = \"{prefix}\"\nendpoint = \"{endpoint}\"\nregion = \"us-east-1\"\naccess_key_id = \"{}\"\nsecret_access_key = \"{}\"\npart_size = \"5MiB\"\n",
        s3_env("TENANTRY_TEST_S3_BUCKET"),
        s3_env("TENANTRY_TEST_S3_ACCESS_KEY"),
        s3_env("TENANTRY_TEST_S3_SECRET_KEY"),
    )
}

impl Fleet {
    async fn new(storage: Store<'_>) -> Fleet {
        let name = unique("tbackup");
        let mut admin = pg_admin().await;
        exec(&mut admin, &format!("CREATE DATABASE {name}_clinic")).await;
        for (i, t) in TENANTS.iter().enumerate() {
            exec(&mut admin, &format!("CREATE DATABASE {name}_core_{t}")).await;
            let mut core = connect_db(&format!("{name}_core_{t}")).await;
            exec(
                &mut core,
                &format!(
                    "CREATE TABLE customers (id int PRIMARY KEY, name text);
                     CREATE TABLE orders (id int PRIMARY KEY, customer int REFERENCES customers, total numeric);
                     INSERT INTO customers SELECT g, '{t}-' || g FROM generate_series(1, {c}) g;
                     INSERT INTO orders SELECT g, 1 + g % {c}, g * 1.5 FROM generate_series(1, {o}) g;",
                    c = 10 + i,
                    o = 100 * (i + 1)
                ),
            )
            .await;
        }
        let mut clinic = connect_db(&format!("{name}_clinic")).await;
        for (i, t) in TENANTS.iter().enumerate() {
            exec(
                &mut clinic,
                &format!(
                    "CREATE SCHEMA tenant_{t}; CREATE TABLE tenant_{t}.visits (id int PRIMARY KEY, note text);
                     INSERT INTO tenant_{t}.visits SELECT g, 'visit ' || g FROM generate_series(1, {n}) g;",
                    n = 5 * (i + 1)
                ),
            )
            .await;
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("workflows")).unwrap();
        let storage = match storage {
            Store::Shared => s3_storage(&name, &s3_env("TENANTRY_TEST_S3_ENDPOINT")),
            Store::Own(endpoint) => s3_storage(&name, endpoint),
            Store::Dir => "[storage]\nkind = \"fs\"\npath = \"backups\"\n".to_string(),
        };
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
        std::fs::write(dir.path().join("workflows/nightly.toml"), "[[steps]]\nkind = \"backup\"\n").unwrap();
        Fleet { name, dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn run_and_wait(&self, workflow: &str) -> (String, serde_json::Value) {
        let out = tenantry(self.path(), &["run", workflow], &[]);
        assert_eq!(out.code(), 0, "{}", out.all());
        let run = out.stdout().trim().to_string();
        let s = wait_for_state(self.path(), &run, &["succeeded", "failed", "cancelled"], Duration::from_secs(90));
        (run, s)
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

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Restores a custom-format dump with plain `pg_restore` into a new database.
async fn pg_restore_into(dump: &[u8], database: &str) {
    let mut admin = pg_admin().await;
    exec(&mut admin, &format!("CREATE DATABASE {database}")).await;
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), dump).unwrap();
    let url = url::Url::parse(&pg_url()).unwrap();
    let out = std::process::Command::new("pg_restore")
        .args(["--no-owner", "--exit-on-error", "-h"])
        .arg(url.host_str().unwrap())
        .arg("-p")
        .arg(url.port().unwrap_or(5432).to_string())
        .arg("-U")
        .arg(if url.username().is_empty() { "postgres" } else { url.username() })
        .arg("-d")
        .arg(database)
        .arg(file.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "pg_restore failed: {}", String::from_utf8_lossy(&out.stderr));
}

async fn count(database: &str, table: &str) -> i64 {
    let mut conn = connect_db(database).await;
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}"))).fetch_one(&mut conn).await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn backups_restore_with_plain_pg_restore_and_hold_exactly_the_tenants_rows() {
    let fleet = Fleet::new(Store::Shared).await;
    let _worker = WorkerProcess::spawn(fleet.path());
    let (run, s) = fleet.run_and_wait("nightly");
    assert_eq!(s["run"]["state"], "succeeded", "{s:#}");

    let client = s3().await;
    let all = s3_keys(&client, &format!("{}/", fleet.name)).await;
    // One folder per tenant and service, each with one dump and its manifest.
    assert_eq!(all.len(), 2 * TENANTS.len() * 2, "{all:#?}");
    let mut restored = Vec::new();
    for (i, t) in TENANTS.iter().enumerate() {
        for service in ["core", "clinic"] {
            let keys = s3_keys(&client, &format!("{}/{service}/{t}/", fleet.name)).await;
            assert_eq!(keys.len(), 2, "{keys:#?}");
            let manifest_key = keys.iter().find(|k| k.ends_with("/manifest.json")).expect("manifest");
            assert!(manifest_key.contains(&format!("_{run}/")), "{manifest_key} is not in the run's folder");
            let manifest: serde_json::Value = serde_json::from_slice(&s3_get(&client, manifest_key).await).unwrap();
            assert_eq!(manifest["tenant"], *t);
            assert_eq!(manifest["service"], service);
            assert_eq!(manifest["run"], run);
            assert!(manifest["tool_version"].as_str().unwrap().contains("pg_dump"), "{manifest:#}");
            let dump_key = format!("{}/{}", fleet.name, manifest["dump"]["key"].as_str().unwrap());
            assert!(keys.contains(&dump_key), "{dump_key} not in {keys:#?}");
            let dump = s3_get(&client, &dump_key).await;
            assert_eq!(manifest["dump"]["size"], dump.len() as u64);
            assert_eq!(manifest["dump"]["sha256"], sha256_hex(&dump));
            assert!(dump.starts_with(b"PGDMP"), "not a custom-format dump");

            let target = format!("{}_restored_{service}_{t}", fleet.name);
            pg_restore_into(&dump, &target).await;
            restored.push(target.clone());
            let tables = manifest["tables"].as_array().unwrap();
            if service == "core" {
                assert_eq!(count(&target, "customers").await, 10 + i as i64);
                assert_eq!(count(&target, "orders").await, 100 * (i as i64 + 1));
                let rows = |name: &str| tables.iter().find(|t| t["table"] == name).unwrap()["rows"].as_i64().unwrap();
                assert_eq!(rows("customers"), 10 + i as i64, "{manifest:#}");
                assert_eq!(rows("orders"), 100 * (i as i64 + 1), "{manifest:#}");
            } else {
                // Only the tenant's own schema is in the dump.
                let mut conn = connect_db(&target).await;
                let schemas: Vec<String> = sqlx::query_scalar(
                    "SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'tenant\\_%' ORDER BY 1",
                )
                .fetch_all(&mut conn)
                .await
                .unwrap();
                assert_eq!(schemas, vec![format!("tenant_{t}")]);
                assert_eq!(count(&target, &format!("tenant_{t}.visits")).await, 5 * (i as i64 + 1));
                assert_eq!(tables.len(), 1, "{manifest:#}");
                assert_eq!(tables[0]["rows"], 5 * (i as i64 + 1));
            }
        }
    }
    let mut admin = pg_admin().await;
    for db in restored {
        exec(&mut admin, &format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)")).await;
    }
    for key in all {
        client.delete_object().bucket(s3_env("TENANTRY_TEST_S3_BUCKET")).key(key).send().await.unwrap();
    }
    fleet.drop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_local_directory_store_holds_the_same_backups() {
    let fleet = Fleet::new(Store::Dir).await;
    let _worker = WorkerProcess::spawn(fleet.path());
    let (run, s) = fleet.run_and_wait("nightly");
    assert_eq!(s["run"]["state"], "succeeded", "{s:#}");
    let folder = fleet.path().join("backups/core/globex");
    let runs: Vec<_> = std::fs::read_dir(&folder).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert!(runs[0].file_name().unwrap().to_string_lossy().ends_with(&format!("_{run}")));
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(runs[0].join("manifest.json")).unwrap()).unwrap();
    let dump = std::fs::read(fleet.path().join("backups").join(manifest["dump"]["key"].as_str().unwrap())).unwrap();
    assert_eq!(manifest["dump"]["sha256"], sha256_hex(&dump));
    let target = format!("{}_restored_fs", fleet.name);
    pg_restore_into(&dump, &target).await;
    assert_eq!(count(&target, "orders").await, 200);
    // Nothing half-written is left beside the objects.
    let leftovers: Vec<_> = std::fs::read_dir(&runs[0])
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".partial-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let mut admin = pg_admin().await;
    exec(&mut admin, &format!("DROP DATABASE IF EXISTS {target} WITH (FORCE)")).await;
    fleet.drop().await;
}

/// An s3s-fs of the test's own (on its own port and directory), which the test can stop and
/// start again, as an object store that goes away.
struct OwnS3 {
    child: Option<std::process::Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl OwnS3 {
    fn start() -> OwnS3 {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(s3_env("TENANTRY_TEST_S3_BUCKET"))).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut s3 = OwnS3 { child: None, port, dir };
        s3.resume();
        s3
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The bucket's directory: objects, and the server's state of open multipart uploads.
    fn bucket(&self) -> std::path::PathBuf {
        self.dir.path().join(s3_env("TENANTRY_TEST_S3_BUCKET"))
    }

    /// Starts the server (again), on the same port and directory.
    fn resume(&mut self) {
        let child = std::process::Command::new(s3_env("TENANTRY_TEST_S3S_FS"))
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", &s3_env("TENANTRY_TEST_S3_ACCESS_KEY")])
            .args(["--secret-key", &s3_env("TENANTRY_TEST_S3_SECRET_KEY")])
            .arg(self.dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start s3s-fs");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "s3s-fs did not start on port {}", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: the store is gone mid-request.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Every file under the bucket's directory, relative to it.
    fn files(&self) -> Vec<String> {
        fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(root, &p, out);
                } else {
                    out.push(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
                }
            }
        }
        let mut out = Vec::new();
        walk(self.dir.path(), self.dir.path(), &mut out);
        out.sort();
        out
    }
}

impl Drop for OwnS3 {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Gives `tenant`'s core database a table of about `mb` MB that dumps to about as much
/// uncompressed (`compression = 0`), so an upload spans several parts.
async fn add_blobs(fleet: &Fleet, tenant: &str, mb: usize) {
    let mut core = connect_db(&format!("{}_core_{tenant}", fleet.name)).await;
    exec(
        &mut core,
        &format!(
            "CREATE TABLE blobs (id int PRIMARY KEY, payload text);
             INSERT INTO blobs SELECT g, repeat(md5(g::text), 16) FROM generate_series(1, {}) g;",
            mb * 1024 * 1024 / 512
        ),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_store_stopped_mid_upload_fails_the_attempt_and_the_retry_leaves_one_backup_and_no_open_upload() {
    let mut store = OwnS3::start();
    let endpoint = store.endpoint();
    let fleet = Fleet::new(Store::Own(&endpoint)).await;
    add_blobs(&fleet, "acme", 40).await;
    std::fs::write(
        fleet.path().join("workflows/big.toml"),
        "[target]\ntenants = [\"acme\"]\nservices = [\"core\"]\n\n[retry]\nattempts = 10\nbackoff = \"1s\"\nmax_backoff = \"2s\"\njitter = false\n\n[[steps]]\nkind = \"backup\"\ncompression = 0\n",
    )
    .unwrap();
    let _worker = WorkerProcess::spawn(fleet.path());
    let out = tenantry(fleet.path(), &["run", "big"], &[]);
    assert_eq!(out.code(), 0, "{}", out.all());
    let run = out.stdout().trim().to_string();

    // The upload has begun once its marker exists; then the store goes away.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if store.files().iter().any(|f| f.ends_with(".uploading")) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no upload began: {:?}", store.files());
        std::thread::sleep(Duration::from_millis(2));
    }
    store.kill();
    // Long enough for the attempt to fail against the stopped store.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let s = tenantry(fleet.path(), &["status", &run, "--json"], &[]);
        let status: serde_json::Value = serde_json::from_str(&s.stdout()).unwrap_or_default();
        let acme = &status["tenants"]["acme"];
        if acme["attempt"].as_u64().unwrap_or(0) >= 1 && acme["last_error"].is_string() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the attempt did not fail without its store: {status:#}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Down for longer than the client's own retries of the abort (the SDK's standard retry
    // gives up within ~3 s): the broken attempt's upload stays open on the server, and only
    // the next attempt, finding its marker, can abort it.
    std::thread::sleep(Duration::from_secs(5));
    store.resume();
    let s = wait_for_state(fleet.path(), &run, &["succeeded", "failed", "cancelled"], Duration::from_secs(90));
    assert_eq!(s["run"]["state"], "succeeded", "{s:#}");

    // One complete backup: its manifest and the dump it names; nothing of the broken attempt.
    let prefix = format!("{}/core/acme/", fleet.name);
    let objects: Vec<String> = store.files().into_iter().filter(|f| f.contains(&prefix)).collect();
    let manifests: Vec<&String> = objects.iter().filter(|f| f.ends_with("/manifest.json")).collect();
    assert_eq!(manifests.len(), 1, "{objects:#?}");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(store.dir.path().join(manifests[0])).unwrap()).unwrap();
    let dump_key = manifest["dump"]["key"].as_str().unwrap();
    assert_eq!(objects.len(), 2, "only the manifest and {dump_key}: {objects:#?}");
    assert!(objects.iter().any(|f| f.ends_with(dump_key)), "{objects:#?}");
    let dump = std::fs::read(store.bucket().join(&fleet.name).join(dump_key)).unwrap();
    assert_eq!(manifest["dump"]["sha256"], sha256_hex(&dump));
    assert!(dump.len() > 30 * 1024 * 1024, "{} bytes: not a multipart upload", dump.len());
    // No multipart upload stays open: s3s-fs keeps an open upload as `.upload-{id}.json`
    // and its parts as `.upload_id-{id}.part-{n}` at the top of its directory (aborting or
    // completing the upload removes them).
    let open: Vec<String> = store.files().into_iter().filter(|f| f.starts_with(".upload")).collect();
    assert!(open.is_empty(), "multipart uploads left open: {open:#?}");

    let target = format!("{}_restored_outage", fleet.name);
    pg_restore_into(&dump, &target).await;
    assert_eq!(count(&target, "blobs").await, 40 * 1024 * 1024 / 512);
    let mut admin = pg_admin().await;
    exec(&mut admin, &format!("DROP DATABASE IF EXISTS {target} WITH (FORCE)")).await;
    fleet.drop().await;
}

/// Rows of tenant `i` in the 50-tenant fleet: about 6 MiB each (more than one 5 MiB part),
/// and a count of its own.
fn blob_rows(i: usize) -> i64 {
    12_300 + i as i64
}

#[tokio::test(flavor = "multi_thread")]
async fn workers_killed_mid_upload_leave_each_of_50_tenants_exactly_one_complete_backup_of_the_run() {
    let store = OwnS3::start();
    let name = unique("tbackup50");
    let mut admin = pg_admin().await;
    exec(&mut admin, &format!("CREATE DATABASE {name}")).await;
    let mut db = connect_db(&name).await;
    for i in 0..50 {
        exec(
            &mut db,
            &format!(
                "CREATE SCHEMA tenant_t{i:02}; CREATE TABLE tenant_t{i:02}.blobs (id int PRIMARY KEY, payload text);
                 INSERT INTO tenant_t{i:02}.blobs SELECT g, repeat(md5((g + {i})::text), 16) FROM generate_series(1, {}) g;",
                blob_rows(i)
            ),
        )
        .await;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("workflows")).unwrap();
    let mut config = format!(
        "[redis]\nurl = \"{}\"\nprefix = \"{name}\"\n\n[runtime]\nlease = \"3s\"\nsweep_interval = \"200ms\"\n\n{}\n\
         [hosts.main]\nengine = \"postgres\"\nurl = \"{}\"\n\n\
         [services.app]\nengine = \"postgres\"\nisolation = \"schema\"\nhost = \"main\"\ndatabase = \"{name}\"\nschema = \"tenant_{{tenant}}\"\n",
        redis_url(),
        s3_storage(&name, &store.endpoint()),
        pg_url()
    );
    for i in 0..50 {
        config.push_str(&format!("\n[[catalog.tenants]]\nid = \"t{i:02}\"\nservices = [\"app\"]\n"));
    }
    std::fs::write(dir.path().join("tenantry.toml"), config).unwrap();
    std::fs::write(
        dir.path().join("workflows/nightly.toml"),
        "[concurrency]\nrun = 8\nper_host = 8\n\n[[steps]]\nkind = \"backup\"\ncompression = 0\n",
    )
    .unwrap();

    let mut worker = WorkerProcess::spawn(dir.path());
    let out = tenantry(dir.path(), &["run", "nightly"], &[]);
    assert_eq!(out.code(), 0, "{}", out.all());
    let run = out.stdout().trim().to_string();
    // Three times: as soon as an upload is under way, SIGKILL, and a new worker.
    for kill in 0..3 {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !store.files().iter().any(|f| f.ends_with(".uploading")) {
            assert!(std::time::Instant::now() < deadline, "kill {kill}: no upload under way");
            std::thread::sleep(Duration::from_millis(5));
        }
        worker.kill9();
        worker = WorkerProcess::spawn(dir.path());
    }
    let s = wait_for_state(dir.path(), &run, &["succeeded", "failed", "cancelled"], Duration::from_secs(180));
    assert_eq!(s["run"]["state"], "succeeded", "{s:#}");
    let lost: u64 = s["tenants"].as_object().unwrap().values().map(|t| t["lost"].as_u64().unwrap_or(0)).sum();
    assert!(lost >= 3, "the kills hit no tenant in flight ({lost} lost leases): {s:#}");

    let files = store.files();
    // Every upload a worker recorded (its `.uploading` marker, written before any part) was
    // aborted by the tenant's next attempt. An upload the server created for a worker that a
    // kill cut off before the marker cannot be found again here (s3s-fs does not list open
    // uploads; S3 does, and prune_backups sweeps them there): it holds no part, and no
    // object presents it.
    let markers: Vec<&String> = files.iter().filter(|f| f.ends_with(".uploading")).collect();
    assert!(markers.is_empty(), "upload markers left: {markers:#?}");
    let open: Vec<&str> =
        files.iter().filter_map(|f| f.strip_prefix(".upload-").and_then(|f| f.strip_suffix(".json"))).collect();
    let with_parts: Vec<&&str> =
        open.iter().filter(|id| files.iter().any(|f| f.starts_with(&format!(".upload_id-{id}.part-")))).collect();
    assert!(with_parts.is_empty(), "multipart uploads with parts left open: {with_parts:#?} (all open: {open:#?})");
    assert!(open.len() <= 3 * 8, "more uploads cut off than three kills of 8 uploads can leave: {open:#?}");
    let bucket = store.bucket().join(&name);
    for i in 0..50 {
        let prefix = format!("{name}/app/t{i:02}/");
        let objects: Vec<&String> = files.iter().filter(|f| f.contains(&prefix)).collect();
        let manifests: Vec<&&String> = objects.iter().filter(|f| f.ends_with("/manifest.json")).collect();
        assert_eq!(manifests.len(), 1, "t{i:02}: {objects:#?}");
        assert!(manifests[0].contains(&format!("_{run}/")), "t{i:02}: {} is not the run's", manifests[0]);
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(store.dir.path().join(manifests[0])).unwrap()).unwrap();
        let dump_key = manifest["dump"]["key"].as_str().unwrap();
        // The manifest and its dump; no other attempt's dump, no marker of an open upload.
        assert_eq!(objects.len(), 2, "t{i:02}: {objects:#?}");
        let dump = std::fs::read(bucket.join(dump_key)).unwrap();
        assert_eq!(manifest["dump"]["sha256"], sha256_hex(&dump), "t{i:02}");
        assert_eq!(manifest["tables"][0]["rows"], blob_rows(i), "t{i:02}: {manifest:#}");
        if i == 7 {
            let target = format!("{name}_restored");
            pg_restore_into(&dump, &target).await;
            assert_eq!(count(&target, "tenant_t07.blobs").await, blob_rows(7));
            exec(&mut admin, &format!("DROP DATABASE IF EXISTS {target} WITH (FORCE)")).await;
        }
    }
    worker.kill9();
    clear_redis(&name).await;
    drop(db);
    exec(&mut admin, &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await;
}
