//! Shared support for the integration tests: running the `tenantry` binary, fixtures, and connections to the real services the local scripts start.
#![allow(dead_code)]

pub mod fleet;
pub mod rds;
pub mod store;
pub mod tenant_data;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixtures() -> PathBuf {
    repo().join("tests/fixtures")
}

/// Runs the tenantry binary in `cwd` with `args`; no `TENANTRY__` variables leak in from
/// the environment unless the test passes them.
pub fn tenantry(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tenantry"));
    cmd.current_dir(cwd).args(args);
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("TENANTRY__") || k == "TENANTRY_CONFIG") {
        cmd.env_remove(k);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    Run(cmd.output().expect("run tenantry"))
}

pub struct Run(pub Output);

impl Run {
    pub fn code(&self) -> i32 {
        self.0.status.code().unwrap_or(-1)
    }
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.0.stdout).into_owned()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.0.stderr).into_owned()
    }
    pub fn all(&self) -> String {
        format!("--- stdout\n{}--- stderr\n{}", self.stdout(), self.stderr())
    }
}

/// Copies a directory tree.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// The administrative PostgreSQL URL of the test server.
pub fn pg_url() -> String {
    std::env::var("TENANTRY_TEST_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

/// An administrative connection, or a panic that names the command that starts PostgreSQL.
pub async fn pg_admin() -> sqlx::PgConnection {
    use sqlx::Connection;
    let url = pg_url();
    match sqlx::PgConnection::connect(&url).await {
        Ok(c) => c,
        Err(e) => panic!(
            "PostgreSQL is not reachable at {url} ({e}). Start the test services with `bash deploy/local/test.sh` \
             (or `source deploy/local/services.sh && ensure_postgres`)."
        ),
    }
}

/// A connection to database `db` of the test server.
pub async fn connect_db(db: &str) -> sqlx::PgConnection {
    use sqlx::Connection;
    let url = format!("{}/{db}", pg_url().rsplit_once('/').unwrap().0);
    sqlx::PgConnection::connect(&url).await.unwrap_or_else(|e| panic!("cannot connect to test database {db}: {e}"))
}

/// A name unique to this test process and call, for databases, schemas and key prefixes.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    format!("{prefix}_{}_{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst))
}

/// Runs SQL statements on a connection (no parameters: fixtures only).
pub async fn exec(conn: &mut sqlx::PgConnection, sql: &str) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
        .execute(conn)
        .await
        .unwrap_or_else(|e| panic!("fixture SQL failed: {e}\n{sql}"));
}

/// The Redis URL of the test server.
pub fn redis_url() -> String {
    std::env::var("TENANTRY_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_string())
}

/// The seed nodes of the local Redis Cluster (`ensure_redis_cluster` in `deploy/local/services.sh`).
pub fn redis_cluster_nodes() -> Vec<String> {
    std::env::var("TENANTRY_TEST_REDIS_CLUSTER")
        .unwrap_or_else(|_| "redis://127.0.0.1:7000,redis://127.0.0.1:7001,redis://127.0.0.1:7002".to_string())
        .split(',')
        .map(str::to_string)
        .collect()
}

/// A raw connection to the local Redis Cluster, or a panic that names the command that starts it.
pub async fn redis_cluster() -> redis::cluster_async::ClusterConnection {
    let nodes = redis_cluster_nodes();
    let connected = async { redis::cluster::ClusterClient::new(nodes.clone())?.get_async_connection().await };
    match tokio::time::timeout(std::time::Duration::from_secs(10), connected).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => panic!(
            "the Redis Cluster at {nodes:?} is not reachable ({e}). Start it with `bash deploy/local/test.sh` \
             (or `source deploy/local/services.sh && ensure_redis_cluster`)."
        ),
        Err(_) => panic!(
            "the Redis Cluster at {nodes:?} did not answer within 10s. Start it with `bash deploy/local/test.sh` \
             (or `source deploy/local/services.sh && ensure_redis_cluster`)."
        ),
    }
}

/// Deletes every Redis key under `prefix:` (each test uses its own prefix).
pub async fn clear_redis(prefix: &str) {
    let client = redis::Client::open(redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap_or_else(|e| {
        panic!("Redis is not reachable at {} ({e}). Start it with `bash deploy/local/test.sh`.", redis_url())
    });
    let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{prefix}:*")).query_async(&mut conn).await.unwrap();
    for chunk in keys.chunks(500) {
        let _: () = redis::cmd("DEL").arg(chunk).query_async(&mut conn).await.unwrap();
    }
}

/// A `tenantry worker` child process (killed on drop).
pub struct WorkerProcess(pub std::process::Child);

impl WorkerProcess {
    pub fn spawn(cwd: &Path) -> Self {
        Self::spawn_command(cwd, "worker")
    }

    /// `tenantry serve` (scheduler and worker).
    pub fn spawn_command(cwd: &Path, command: &str) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_tenantry"))
            .current_dir(cwd)
            .args([command])
            .env("TENANTRY_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("spawn tenantry worker");
        Self(child)
    }

    /// SIGKILL: no chance to finish or give anything back.
    pub fn kill9(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }

    /// SIGTERM, then wait for the process to exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status();
        self.0.wait().expect("wait for worker")
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `status RUN --json`, parsed.
pub fn status(cwd: &Path, run: &str) -> serde_json::Value {
    let out = tenantry(cwd, &["status", run, "--json"], &[]);
    assert_eq!(out.code(), 0, "{}", out.all());
    serde_json::from_str(&out.stdout()).expect("status json")
}

/// Polls `status` until the run is in one of `states`, or panics after `timeout`.
pub fn wait_for_state(cwd: &Path, run: &str, states: &[&str], timeout: std::time::Duration) -> serde_json::Value {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let s = status(cwd, run);
        if states.iter().any(|st| s["run"]["state"] == *st) {
            return s;
        }
        if std::time::Instant::now() > deadline {
            panic!("run {run} did not reach {states:?} within {timeout:?}; last status: {s:#}");
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// Like [`tenantry`], but bounded: the process is killed, and the test fails naming the
/// command, when it runs longer than `timeout`.
pub fn tenantry_within(cwd: &Path, args: &[&str], env: &[(&str, &str)], timeout: std::time::Duration) -> Run {
    use std::io::Read;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tenantry"));
    cmd.current_dir(cwd).args(args).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("TENANTRY__") || k == "TENANTRY_CONFIG") {
        cmd.env_remove(k);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("run tenantry");
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            buf
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("piped stdout")));
    let stderr = drain(Box::new(child.stderr.take().expect("piped stderr")));
    let deadline = std::time::Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for tenantry") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let out = Run(Output {
                status: std::process::ExitStatus::default(),
                stdout: stdout.join().unwrap_or_default(),
                stderr: stderr.join().unwrap_or_default(),
            });
            panic!("`tenantry {}` did not finish within {timeout:?}\n{}", args.join(" "), out.all());
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    Run(Output { status, stdout: stdout.join().unwrap_or_default(), stderr: stderr.join().unwrap_or_default() })
}

impl WorkerProcess {
    /// `tenantry {command}` with `TENANTRY_LOG={level}` and its stdout and stderr appended to
    /// `log` (to read what it said, or check what it must never say). No `TENANTRY__`
    /// variables leak in from the environment.
    pub fn spawn_logged(cwd: &Path, command: &str, level: &str, log: &Path) -> Self {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("open worker log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tenantry"));
        cmd.current_dir(cwd)
            .args([command])
            .env("TENANTRY_LOG", level)
            .stdout(file.try_clone().expect("clone worker log"))
            .stderr(file);
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("TENANTRY__") || k == "TENANTRY_CONFIG") {
            cmd.env_remove(k);
        }
        Self(cmd.spawn().expect("spawn tenantry worker"))
    }
}

/// The administrative MariaDB URL of the test server.
pub fn mysql_url() -> String {
    std::env::var("TENANTRY_TEST_MYSQL_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".to_string())
}

/// `url` with its path (the database) replaced by `db`.
fn with_database(url: &str, db: &str) -> String {
    let mut url = url::Url::parse(url).unwrap_or_else(|e| panic!("invalid test URL {url}: {e}"));
    url.set_path(db);
    url.to_string()
}

/// An administrative MariaDB connection, or a panic that names the command that starts MariaDB.
pub async fn mysql_admin() -> sqlx::MySqlConnection {
    use sqlx::Connection;
    let url = mysql_url();
    match sqlx::MySqlConnection::connect(&url).await {
        Ok(c) => c,
        Err(e) => panic!(
            "MariaDB is not reachable at {url} ({e}). Start the test services with `bash deploy/local/test.sh` \
             (or `source deploy/local/services.sh && ensure_mariadb`)."
        ),
    }
}

/// A connection to MariaDB database `db` of the test server.
pub async fn mysql_db(db: &str) -> sqlx::MySqlConnection {
    use sqlx::Connection;
    sqlx::MySqlConnection::connect(&with_database(&mysql_url(), db))
        .await
        .unwrap_or_else(|e| panic!("cannot connect to MariaDB test database {db}: {e}"))
}

/// Runs one MariaDB statement (no parameters: fixtures only).
pub async fn mysql_exec(conn: &mut sqlx::MySqlConnection, sql: &str) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
        .execute(conn)
        .await
        .unwrap_or_else(|e| panic!("fixture SQL failed: {e}\n{sql}"));
}

/// Runs the first step of `workflow` for `tenant` in this process, as a worker would but
/// without Redis (no lease: `Fence::none`), reading the time from `clock`: for tests that
/// need to move time under a step (windows) rather than sleep.
pub async fn execute_step(
    dir: &Path,
    workflow: &str,
    tenant: &str,
    clock: &dyn tenantry::runtime::clock::Clock,
) -> Result<serde_json::Value, tenantry::steps::StepError> {
    let ctx =
        tenantry::cli::Context::load(Some(&dir.join("tenantry.toml")), &[]).unwrap_or_else(|f| panic!("config: {f}"));
    let (catalog, wf) = ctx.checked_workflow(workflow, &[]).await.unwrap_or_else(|f| panic!("workflow: {f}"));
    let spec = tenantry::runtime::launch::snapshot(&wf, &catalog, &ctx.config, &[]);
    let c = &ctx.config.config;
    let databases = tenantry::engine::pools::Databases::new(c.hosts.clone(), 4, 16);
    let snapshot = &spec.tenants[tenant];
    let unit = &snapshot.units[0];
    let step = &spec.steps[unit.step];
    let label = format!("{}/{}", step.label(), unit.service);
    let cancel = tokio_util::sync::CancellationToken::new();
    let fence = tenantry::runtime::fence::Fence::none(&spec.id, tenant);
    let limits = tenantry::config::BackupsConfig::default();
    let step_ctx = tenantry::steps::StepContext {
        run: &spec.id,
        root_run: None,
        tenant,
        labels: &snapshot.labels,
        unit: &label,
        step,
        placement: &snapshot.placements[&unit.service],
        databases: &databases,
        base_dir: &ctx.config.base_dir,
        migrations: None,
        service: c.services.get(&unit.service),
        cancel: &cancel,
        fence: &fence,
        throttle: spec.throttle.as_ref(),
        objects: None,
        backup_limits: &limits,
        rds: None,
        clock,
        timezone: spec.zone(),
    };
    let result = tenantry::steps::execute(&step_ctx).await;
    databases.close().await;
    result
}

/// `tenantry run WORKFLOW` in `cwd`, which must start, and its status once it has ended
/// (within two minutes): the run id and `status --json`.
pub fn run_and_wait(cwd: &Path, workflow: &str) -> (String, serde_json::Value) {
    let out = tenantry(cwd, &["run", workflow], &[]);
    assert_eq!(out.code(), 0, "{}", out.all());
    let run = out.stdout().trim().to_string();
    let s = wait_for_state(cwd, &run, &["succeeded", "failed", "cancelled"], std::time::Duration::from_secs(120));
    (run, s)
}
