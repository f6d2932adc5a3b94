//! Backups and restore verification of database tenants: tenantry's `backup` into the local S3 server and `verify_restore` from it, next to `pg_dump -Fc > /dev/null` and `pg_restore` + row counts with the same parallelism, and a worker's peak memory while it backs up one large tenant; prints a Markdown table and writes it into docs/benchmarks.md (between the backup markers).
//!
//! Run it with `deploy/local/bench.sh backup` (services, release build), or directly:
//!
//! ```text
//! cargo bench --bench backup -- [--tenants N] [--size MB] [--concurrency C] [--big MIB]
//!                               [--timeout SECS] [--wait-idle SECS] [--no-docs]
//! ```
//!
//! Needs PostgreSQL, Redis and the S3 server (s3s-fs) of `deploy/local/services.sh`
//! (`TENANTRY_TEST_PG_URL`, `TENANTRY_TEST_REDIS_URL`, `TENANTRY_TEST_S3_*`), and `pg_dump`
//! and `pg_restore` on the PATH.
//!
//! Setup (untimed): a template database with two tables, `accounts` (1,000 rows) and
//! `events` (rows of random hexadecimal text, so that compression does not make the dump
//! trivial, with a primary key and a second index) grown until its tables and indexes
//! hold `--size` MB (default 20), frozen; N databases copied from it (`CREATE DATABASE …
//! TEMPLATE`), one per tenant (default 50); and one tenant of `--big` MiB (default 1,024)
//! grown the same way. One config (static catalog, one host, a `database`-isolation
//! service, `[storage]` on the S3 server under the bench's own prefix, its own Redis
//! prefix) and two workflows, `backup` and `verify` (`verify_restore`), both with run and
//! per-host concurrency C. The rows, in this order, each after the machine is idle:
//!
//! 1. `floor: pg_dump -Fc > /dev/null`: C tasks, each running `pg_dump --format=custom`
//!    for one tenant at a time into /dev/null, with the connection settings tenantry's
//!    step gives it (`engine::tools::libpq_command`), until all N are dumped.
//! 2. `tenantry backup`: a run of `backup` over the N tenants, created as `tenantry run`
//!    creates one and executed by one `tenantry worker` process (release binary,
//!    `worker_concurrency` C, started before the clock): per tenant an exported snapshot,
//!    row counts in it, `pg_dump --format=custom` of the snapshot streamed by multipart
//!    upload (SHA-256 on the way) into S3, and the manifest. Checked: the run succeeded,
//!    every tenant has its manifest with every row.
//! 3. `floor: pg_restore + row counts`: C tasks, each per tenant: `CREATE DATABASE …
//!    TEMPLATE template0`, `pg_restore --no-owner --no-acl --exit-on-error` of that
//!    tenant's dump from a local file (made by `pg_dump -Fc` before the row, untimed), the
//!    row count of every table (the same query as tenantry's), `DROP DATABASE`.
//! 4. `tenantry verify_restore`: a run of `verify` over the N tenants, the same worker:
//!    per tenant the manifest, a scratch database, the dump streamed from S3 into
//!    `pg_restore` (hashed on the way), tables, row counts, schema version, the verdict
//!    stored beside the backup, the scratch database dropped. Checked: every verdict passed.
//! 5. The big tenant, with a newly started worker: `pg_dump -Fc > /dev/null` of it, then a
//!    `backup` run of it alone; the worker's peak resident memory (VmHWM) after that run.
//!
//! Wall time is from the first task (for runs: `launch::snapshot`) until the last ended
//! (the bench saw the run terminal). CPU per process group (from /proc, ended processes
//! in their parent) is reported for each row. The targets of issue 8 (≤ 1.3× each floor,
//! ≤ 150 MiB) are reported, not enforced; the bench exits 1 when a run or a check fails.
//! Databases, scratch databases, the Redis keys of its prefix and its objects are removed
//! at the end, also after a failure.

mod support;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sqlx::Connection;

use support::{
    IDLE_CPUS, Result, Rss, Snapshot, Usage, Workers, background, clear_redis, commit, database_url, exec, machine,
    percentile, pg_connect, pg_url, publish, redis_url, settle,
};
use tenantry::catalog::Catalog;
use tenantry::cli::Context;
use tenantry::runtime::launch;
use tenantry::runtime::model::{RunState, TenantState, Trigger};
use tenantry::runtime::worker::Runtime;
use tenantry::secret::SecretUrl;
use tenantry::steps::backup::{TableRows, count_rows};
use tenantry::workflow::{self, CheckContext, Workflow};

const USAGE: &str = "usage: cargo bench --bench backup -- [--tenants N] [--size MB] [--concurrency C] [--big MIB] \
                     [--timeout SECS] [--wait-idle SECS] [--no-docs]

  --tenants N       database tenants (default 50)
  --size MB         data per tenant, tables and indexes, in MB (default 20)
  --concurrency C   tenants at once: the runs' concurrency, worker_concurrency and the floors' tasks (default 4)
  --big MIB         data of the tenant whose backup the worker's peak memory is taken of, in MiB
                    (default 1024; 0 skips it)
  --timeout SECS    limit per tenantry run (default 1800)
  --wait-idle SECS  before each row, wait up to this long until other processes keep < 0.2 CPUs busy
                    (default 120; 0: do not wait)
  --no-docs         print the table only; leave docs/benchmarks.md alone";

/// Above the table when docs/benchmarks.md has no backup section yet.
const HEADING: &str = "## Backups and restore verification\n\n`deploy/local/bench.sh backup` (runs `cargo bench \
                       --bench backup`, `benches/backup.rs`: arguments pass through; see its header for what is \
                       measured and how; PostgreSQL, Redis and s3s-fs from `deploy/local/services.sh`). The table \
                       is regenerated on every run.";
/// The process groups the CPU cells name; the rest is "other".
const COLUMNS: [&str; 5] = ["tenantry", "bench", "postgres", "s3s-fs", "redis"];
/// Targets of issue 8.
const MAX_RATIO: f64 = 1.3;
const MAX_RSS_MIB: f64 = 150.0;
/// Rows of `events` added by the first statement while a database grows to its size, and
/// at most by one statement.
const FIRST_BATCH: i64 = 10_000;
const MAX_BATCH: i64 = 500_000;

#[derive(Debug, Clone)]
struct Args {
    tenants: usize,
    size_mb: u64,
    concurrency: u32,
    big_mib: u64,
    timeout: Duration,
    wait_idle: Duration,
    docs: bool,
}

impl Args {
    fn command_line(&self) -> String {
        format!(
            "--tenants {} --size {} --concurrency {} --big {}",
            self.tenants, self.size_mb, self.concurrency, self.big_mib
        )
    }
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        tenants: 50,
        size_mb: 20,
        concurrency: 4,
        big_mib: 1024,
        timeout: Duration::from_secs(1800),
        wait_idle: Duration::from_secs(120),
        docs: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str, zero: bool| -> Result<u64, String> {
            let v = it.next().ok_or_else(|| format!("{name} needs a value\n{USAGE}"))?;
            v.parse::<u64>()
                .ok()
                .filter(|n| zero || *n > 0)
                .ok_or_else(|| format!("{name} {v:?}: expected a {} number", if zero { "whole" } else { "positive" }))
        };
        match arg.as_str() {
            // `cargo bench` passes --bench to every bench binary.
            "--bench" => continue,
            "--tenants" => args.tenants = value("--tenants", false)? as usize,
            "--size" => args.size_mb = value("--size", false)?,
            "--concurrency" => args.concurrency = value("--concurrency", false)? as u32,
            "--big" => args.big_mib = value("--big", true)?,
            "--timeout" => args.timeout = Duration::from_secs(value("--timeout", false)?),
            "--wait-idle" => args.wait_idle = Duration::from_secs(value("--wait-idle", true)?),
            "--no-docs" => args.docs = false,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    if args.tenants > 999 {
        return Err("--tenants: at most 999".into());
    }
    Ok(args)
}

fn main() -> ExitCode {
    support::main(parse_args(), bench)
}

async fn bench(args: Args) -> Result<()> {
    let name = format!("tenantry_bbak_{}_{}", std::process::id(), chrono::Utc::now().timestamp_millis());
    eprintln!(
        "bench: {} database tenants of {} MB{}, databases, Redis prefix and S3 prefix {name}",
        args.tenants,
        args.size_mb,
        if args.big_mib > 0 { format!(" and one of {} MiB", args.big_mib) } else { String::new() }
    );
    let fleet = Fleet::new(&name, &args)?;
    let measured = match fleet.setup(&args).await {
        Ok(sizes) => measure(&fleet, &args, &sizes).await.map(|rows| (sizes, rows)),
        Err(e) => Err(e),
    };
    let cleaned = fleet.destroy().await;
    let (sizes, results) = measured?;
    cleaned?;
    let section = render(&args, &sizes, &results).await;
    publish("backup", HEADING, &section, args.docs)
}

// ---------------------------------------------------------------------------------------------
// The fleet: databases, a config and two workflows

struct Fleet {
    name: String,
    /// Tenant ids of the fleet (`tNNN_PID`); the big tenant is `big_PID`.
    tenants: Vec<String>,
    big: Option<String>,
    dir: tempfile::TempDir,
}

/// What setup made, for the report.
struct Sizes {
    /// Tables and indexes of one tenant, and its database as a whole (bytes).
    data: i64,
    database: i64,
    /// Rows of one tenant, per table (every tenant is a copy of the template).
    rows: Vec<TableRows>,
    /// The big tenant's tables and indexes (bytes) and rows.
    big_data: i64,
    big_rows: i64,
    took: Duration,
}

fn s3_env(var: &str) -> Result<String> {
    std::env::var(var).map_err(|_| {
        format!("{var} is not set: run the bench through deploy/local/bench.sh backup (it starts s3s-fs)").into()
    })
}

impl Fleet {
    fn new(name: &str, args: &Args) -> Result<Fleet> {
        let pid = std::process::id();
        let tenants = (0..args.tenants).map(|i| format!("t{i:03}_{pid}")).collect();
        let big = (args.big_mib > 0).then(|| format!("big_{pid}"));
        Ok(Fleet { name: name.to_string(), tenants, big, dir: tempfile::tempdir()? })
    }

    fn database(&self, tenant: &str) -> String {
        format!("{}_{tenant}", self.name)
    }

    fn template(&self) -> String {
        format!("{}_template", self.name)
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("tenantry.toml")
    }

    /// Databases, config and workflows. Whatever it made is removed by `destroy`, which
    /// the caller runs in any case.
    async fn setup(&self, args: &Args) -> Result<Sizes> {
        let started = Instant::now();
        self.write_config(args)?;
        let mut admin = pg_connect("postgres").await?;
        let template = self.template();
        exec(&mut admin, format!("CREATE DATABASE \"{template}\"")).await?;
        let mut db = pg_connect(&template).await?;
        exec(
            &mut db,
            "CREATE TABLE accounts (id int PRIMARY KEY, name text NOT NULL, email text NOT NULL, \
                                    created_at timestamptz NOT NULL);
             CREATE TABLE events (id bigint PRIMARY KEY, account int NOT NULL REFERENCES accounts, \
                                  kind text NOT NULL, payload text NOT NULL, at timestamptz NOT NULL);
             CREATE INDEX events_account_at ON events (account, at);
             INSERT INTO accounts SELECT g, 'account ' || g, md5(g::text) || '@example.com', \
                                         now() - g * interval '1 hour' FROM generate_series(1, 1000) g;"
                .to_string(),
        )
        .await?;
        grow(&mut db, args.size_mb * 1_000_000).await?;
        exec(&mut db, "VACUUM (FREEZE, ANALYZE)".to_string()).await?;
        let (data, database) = sizes(&mut db).await?;
        let rows = count_rows(&mut db, None).await.map_err(|e| e.to_string())?;
        db.close().await?;
        eprintln!("bench: template {template}: {:.1} MB of tables and indexes", data as f64 / 1e6);

        let version: i32 =
            sqlx::query_scalar("SELECT current_setting('server_version_num')::int").fetch_one(&mut admin).await?;
        // A file copy per tenant instead of WAL-logging every block (PostgreSQL 15's default).
        let strategy = if version >= 150_000 { " STRATEGY FILE_COPY" } else { "" };
        for t in self.tenants.iter().chain(&self.big) {
            exec(&mut admin, format!("CREATE DATABASE \"{}\" TEMPLATE \"{template}\"{strategy}", self.database(t)))
                .await?;
        }
        let (mut big_data, mut big_rows) = (0, 0);
        if let Some(big) = &self.big {
            let mut db = pg_connect(&self.database(big)).await?;
            grow(&mut db, args.big_mib * 1024 * 1024).await?;
            exec(&mut db, "VACUUM (FREEZE, ANALYZE)".to_string()).await?;
            big_data = sizes(&mut db).await?.0;
            big_rows = count_rows(&mut db, None).await.map_err(|e| e.to_string())?.iter().map(|t| t.rows).sum();
            db.close().await?;
            eprintln!("bench: big tenant {big}: {:.0} MiB of tables and indexes", big_data as f64 / 1048576.0);
        }
        exec(&mut admin, "CHECKPOINT".to_string()).await?;
        admin.close().await?;
        let took = started.elapsed();
        eprintln!("bench: {} tenant databases ready in {took:.1?}", self.tenants.len());
        Ok(Sizes { data, database, rows, big_data, big_rows, took })
    }

    fn write_config(&self, args: &Args) -> Result<()> {
        let mut config = format!(
            r#"# Written by benches/backup.rs; deleted after the bench.
[redis]
url = "{redis}"
prefix = "{name}"

# A pool per tenant database: at the default (256) a worker keeps an idle connection to each
# of the 50 databases it backed up, which with other clients exceeds max_connections (100).
[limits]
max_pools = {max_pools}

[runtime]
worker_concurrency = {c}
drain_timeout = "30s"

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
max_concurrency = {c}

[services.app]
engine = "postgres"
isolation = "database"
host = "main"
database = "{name}_{{tenant}}"
"#,
            redis = redis_url(),
            pg = pg_url(),
            name = self.name,
            c = args.concurrency,
            max_pools = 2 * args.concurrency,
            bucket = s3_env("TENANTRY_TEST_S3_BUCKET")?,
            endpoint = s3_env("TENANTRY_TEST_S3_ENDPOINT")?,
            access = s3_env("TENANTRY_TEST_S3_ACCESS_KEY")?,
            secret = s3_env("TENANTRY_TEST_S3_SECRET_KEY")?,
        );
        for t in self.tenants.iter().chain(&self.big) {
            let _ = write!(config, "\n[[catalog.tenants]]\nid = \"{t}\"\nservices = [\"app\"]\n");
        }
        std::fs::write(self.config_path(), config)?;
        let workflows = self.dir.path().join("workflows");
        std::fs::create_dir(&workflows)?;
        let concurrency = format!("[concurrency]\nrun = {c}\nper_host = {c}\n", c = args.concurrency);
        std::fs::write(
            workflows.join("backup.toml"),
            format!(
                "description = \"benchmark: back every tenant up\"\n\n{concurrency}\n[[steps]]\nkind = \"backup\"\n"
            ),
        )?;
        std::fs::write(
            workflows.join("verify.toml"),
            format!(
                "description = \"benchmark: verify every tenant's newest backup\"\n\n{concurrency}\n\
                 [[steps]]\nkind = \"verify_restore\"\n"
            ),
        )?;
        Ok(())
    }

    /// Drops every database of the bench (its name's prefix) and the scratch databases of
    /// its tenants, deletes the Redis keys of its prefix and every object under its prefix
    /// (open multipart uploads aborted).
    async fn destroy(&self) -> Result<()> {
        let mut problems = Vec::new();
        match pg_connect("postgres").await {
            Ok(mut admin) => {
                let mut prefixes = vec![self.name.clone()];
                prefixes.extend(
                    self.tenants.iter().chain(&self.big).map(|t| tenantry::steps::verify_restore::scratch_prefix(t)),
                );
                let mut dropped = 0;
                for prefix in prefixes {
                    let names: Vec<String> = sqlx::query_scalar(
                        "SELECT datname::text FROM pg_database WHERE left(datname, length($1)) = $1",
                    )
                    .bind(&prefix)
                    .fetch_all(&mut admin)
                    .await?;
                    for db in names {
                        match exec(&mut admin, format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)")).await {
                            Ok(()) => dropped += 1,
                            Err(e) => problems.push(format!("dropping {db}: {e}")),
                        }
                    }
                }
                eprintln!("bench: dropped {dropped} databases");
            }
            Err(e) => problems.push(e.to_string()),
        }
        match clear_redis(&self.name).await {
            Ok(n) => eprintln!("bench: deleted {n} Redis keys of prefix {}", self.name),
            Err(e) => problems.push(format!("Redis: {e}")),
        }
        if self.config_path().exists() {
            match self.clear_objects().await {
                Ok(n) => eprintln!("bench: deleted {n} objects under S3 prefix {}", self.name),
                Err(e) => problems.push(format!("S3: {e}")),
            }
        }
        if problems.is_empty() { Ok(()) } else { Err(problems.join("; ").into()) }
    }

    async fn clear_objects(&self) -> Result<usize> {
        let ctx = Context::load(Some(&self.config_path()), &[]).map_err(|f| f.to_string())?;
        let store = ctx.objects().await.map_err(|f| f.to_string())?.ok_or("no [storage] in the bench's config")?;
        store.abort_stale_uploads("", Duration::ZERO).await?;
        let objects = store.list("").await?;
        for o in &objects {
            store.delete(&o.key).await?;
        }
        Ok(objects.len())
    }
}

/// Adds rows of random text to `events` until its tables and indexes hold `bytes`: a first
/// batch to learn the bytes per row, then what is missing by that measure (bounded).
async fn grow(db: &mut sqlx::PgConnection, bytes: u64) -> Result<()> {
    loop {
        let (data, _) = sizes(db).await?;
        let missing = bytes as i64 - data;
        if missing <= 0 {
            return Ok(());
        }
        // Ids are 1..=rows, so the largest is the count.
        let rows: i64 = sqlx::query_scalar("SELECT coalesce(max(id), 0) FROM events").fetch_one(&mut *db).await?;
        let batch = if rows == 0 { FIRST_BATCH } else { (missing / (data / rows).max(1) + 1).clamp(100, MAX_BATCH) };
        // Hexadecimal text compresses to about half: a dump is neither tiny nor the raw size.
        exec(
            db,
            format!(
                "INSERT INTO events SELECT g, 1 + g % 1000, (ARRAY['login', 'view', 'search', 'purchase', 'logout'])[1 + g % 5], \
                 md5(random()::text) || ' ' || md5(random()::text) || ' ' || left(md5(random()::text), (random() * 32)::int), \
                 now() - g * interval '1 second' FROM generate_series({}, {}) g",
                rows + 1,
                rows + batch
            ),
        )
        .await?;
    }
}

/// Tables and indexes of the connected database, and the database as a whole (bytes).
async fn sizes(db: &mut sqlx::PgConnection) -> Result<(i64, i64)> {
    Ok(sqlx::query_as(
        "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint, pg_database_size(current_database()) \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'r' AND n.nspname = 'public'",
    )
    .fetch_one(db)
    .await?)
}

// ---------------------------------------------------------------------------------------------
// Measurements

/// One line of the results table.
struct Row {
    label: String,
    what: &'static str,
    tenants: usize,
    wall: Duration,
    usage: Usage,
    /// Runs: claim→finish p50 / p99 of a tenant (ms).
    per_tenant: Option<[i64; 2]>,
    /// Bytes stored (backups) or restored (verification), when known.
    bytes: Option<u64>,
    /// The worker's peak and current memory after the row.
    rss: Option<Rss>,
    /// Bytes of tables and indexes per tenant.
    data: i64,
}

impl Row {
    fn new(label: String, what: &'static str, tenants: usize, wall: Duration, usage: Usage) -> Row {
        eprintln!("bench: {label}: {tenants} tenants in {wall:.2?}\n{}", usage.describe(wall, &COLUMNS));
        Row { label, what, tenants, wall, usage, per_tenant: None, bytes: None, rss: None, data: 0 }
    }
}

struct Results {
    rows: Vec<Row>,
    /// (tenantry row, floor row) index pairs with their target.
    pairs: Vec<(usize, usize)>,
    /// The worker's resident memory just after it started, before the big backup.
    idle_rss: Option<Rss>,
}

/// Everything a run needs from the config.
struct Setup {
    ctx: Context,
    catalog: Catalog,
    starter: Arc<Runtime>,
    host: SecretUrl,
}

async fn measure(fleet: &Fleet, args: &Args, sizes: &Sizes) -> Result<Results> {
    let ctx = Context::load(Some(&fleet.config_path()), &[]).map_err(|f| f.to_string())?;
    let catalog = ctx.checked_catalog().await.map_err(|f| f.to_string())?;
    // The bench's own runtime only starts runs and reads them, as `tenantry run` does; the
    // work is done by `tenantry worker` processes.
    let starter = ctx.runtime().await.map_err(|f| f.to_string())?;
    let host = ctx.config.config.hosts.get("main").ok_or("no [hosts.main] in the bench's config")?.url.clone();
    let setup = Setup { ctx, catalog, starter, host };
    let c = args.concurrency as usize;
    let mut rows: Vec<Row> = Vec::new();

    let mut workers = Workers::start(fleet.dir.path(), 1, &fleet.config_path()).await?;
    settle(args.wait_idle).await;
    rows.push(dump_floor(fleet, &setup, &fleet.tenants, c).await?);
    settle(args.wait_idle).await;
    let mut row = run(&setup, args, "backup", &fleet.tenants, "tenantry `backup` run").await?;
    row.rss = workers.rss();
    rows.push(row);

    // The floor restores local files: the same tenants' dumps, made with the same pg_dump.
    let dumps = tempfile::tempdir()?;
    let started = Instant::now();
    let (host, prefix, dir) = (setup.host.clone(), fleet.name.clone(), dumps.path().to_path_buf());
    for_each(&fleet.tenants, c, move |t| {
        let mut cmd = tenantry::engine::tools::libpq_command("pg_dump", &host, &format!("{prefix}_{t}"));
        cmd.arg("--format=custom").arg("--no-password").arg(format!("--file={}", dump_file(&dir, &t).display()));
        cmd
    })
    .await?;
    eprintln!("bench: {} dumps for the restore floor written in {:.1?}", fleet.tenants.len(), started.elapsed());
    settle(args.wait_idle).await;
    rows.push(restore_floor(fleet, &setup, dumps.path(), c).await?);
    drop(dumps);
    settle(args.wait_idle).await;
    let mut row = run(&setup, args, "verify", &fleet.tenants, "tenantry `verify_restore` run").await?;
    row.rss = workers.rss();
    rows.push(row);
    workers.stop()?;
    for row in &mut rows {
        row.data = sizes.data;
    }
    let mut pairs = vec![(1, 0), (3, 2)];

    let mut idle_rss = None;
    if let Some(big) = &fleet.big {
        // A worker of its own, so that its peak memory is this backup's.
        let mut workers = Workers::start(fleet.dir.path(), 1, &fleet.config_path()).await?;
        idle_rss = workers.rss();
        let only = std::slice::from_ref(big);
        settle(args.wait_idle).await;
        let mut row = dump_floor(fleet, &setup, only, 1).await?;
        row.label = format!("floor, {} MiB tenant: `pg_dump -Fc > /dev/null`", args.big_mib);
        row.data = sizes.big_data;
        rows.push(row);
        settle(args.wait_idle).await;
        let label = format!("tenantry `backup` run, {} MiB tenant", args.big_mib);
        let mut row = run(&setup, args, "backup", only, &label).await?;
        row.rss = workers.rss();
        row.data = sizes.big_data;
        rows.push(row);
        workers.stop()?;
        pairs.push((5, 4));
    }
    Ok(Results { rows, pairs, idle_rss })
}

fn dump_file(dir: &Path, tenant: &str) -> PathBuf {
    dir.join(format!("{tenant}.pgdump"))
}

/// Runs the command made for each tenant, `c` at a time, and checks that each succeeded.
async fn for_each(
    tenants: &[String],
    c: usize,
    command: impl Fn(String) -> tokio::process::Command + Send + Sync + 'static,
) -> Result<()> {
    let command = Arc::new(command);
    let tenants: Arc<Vec<String>> = Arc::new(tenants.to_vec());
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..c {
        let (command, tenants, next) = (command.clone(), tenants.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(tenant) = tenants.get(i) else { return Ok::<(), String>(()) };
                let mut cmd = command(tenant.clone());
                // Named by its program only: its environment may hold a password.
                let program = cmd.as_std().get_program().to_string_lossy().into_owned();
                cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped());
                let out = cmd.output().await.map_err(|e| format!("{tenant}: cannot run {program}: {e}"))?;
                if !out.status.success() {
                    return Err(format!(
                        "{tenant}: {program} failed ({}): {}",
                        out.status,
                        String::from_utf8_lossy(&out.stderr).trim()
                    ));
                }
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// `pg_dump --format=custom` of each tenant into /dev/null, `c` at a time.
async fn dump_floor(fleet: &Fleet, setup: &Setup, tenants: &[String], c: usize) -> Result<Row> {
    let database: Vec<String> = tenants.iter().map(|t| fleet.database(t)).collect();
    let host = setup.host.clone();
    let before = Snapshot::take().await?;
    let started = Instant::now();
    for_each(&database, c, move |db| {
        let mut cmd = tenantry::engine::tools::libpq_command("pg_dump", &host, &db);
        cmd.arg("--format=custom").arg("--no-password");
        cmd
    })
    .await?;
    let wall = started.elapsed();
    let usage = Snapshot::take().await?.since(&before, tenants.len());
    Ok(Row::new(
        format!("floor: `pg_dump -Fc > /dev/null`, {c} at once"),
        "`pg_dump --format=custom` of the tenant's database into /dev/null",
        tenants.len(),
        wall,
        usage,
    ))
}

/// Per tenant, `c` at a time: a fresh database, `pg_restore` of the tenant's dump file into
/// it, the row count of every table (checked against the source), and the database dropped.
async fn restore_floor(fleet: &Fleet, setup: &Setup, dumps: &Path, c: usize) -> Result<Row> {
    let mut source = pg_connect(&fleet.database(&fleet.tenants[0])).await?;
    let expected = Arc::new(count_rows(&mut source, None).await.map_err(|e| e.to_string())?);
    source.close().await?;
    // One admin connection per task, opened before the clock.
    let mut admins = Vec::new();
    for _ in 0..c {
        admins.push(pg_connect("postgres").await?);
    }
    let tenants = Arc::new(fleet.tenants.clone());
    let next = Arc::new(AtomicUsize::new(0));
    let before = Snapshot::take().await?;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for mut admin in admins {
        let (tenants, next, expected, host) = (tenants.clone(), next.clone(), expected.clone(), setup.host.clone());
        let (prefix, dumps) = (fleet.name.clone(), dumps.to_path_buf());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(tenant) = tenants.get(i) else { break };
                let scratch = format!("{prefix}_floor_{tenant}");
                exec(&mut admin, format!("CREATE DATABASE \"{scratch}\" TEMPLATE template0")).await?;
                let mut cmd = tenantry::engine::tools::libpq_command("pg_restore", &host, &scratch);
                cmd.args(["--no-owner", "--no-acl", "--exit-on-error", "--no-password"])
                    .arg(format!("--dbname={scratch}"))
                    .arg(dump_file(&dumps, tenant));
                cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped());
                let out = cmd.output().await?;
                if !out.status.success() {
                    return Err(format!(
                        "{tenant}: pg_restore failed ({}): {}",
                        out.status,
                        String::from_utf8_lossy(&out.stderr).trim()
                    )
                    .into());
                }
                let mut conn = sqlx::PgConnection::connect(&database_url(&scratch)).await?;
                let restored = count_rows(&mut conn, None).await.map_err(|e| e.to_string())?;
                conn.close().await?;
                if restored != *expected {
                    return Err(format!("{tenant}: restored row counts {restored:?}, expected {expected:?}").into());
                }
                exec(&mut admin, format!("DROP DATABASE \"{scratch}\" WITH (FORCE)")).await?;
            }
            admin.close().await?;
            Ok::<(), support::BoxError>(())
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    let wall = started.elapsed();
    let usage = Snapshot::take().await?.since(&before, tenants.len());
    Ok(Row::new(
        format!("floor: `pg_restore` + row counts, {c} at once"),
        "`CREATE DATABASE`, `pg_restore` from a local dump file, `count(*)` of every table, `DROP DATABASE`",
        tenants.len(),
        wall,
        usage,
    ))
}

/// A run of `workflow` over `only`, started as `tenantry run` starts one, followed until it
/// ends (or the timeout), then checked: succeeded, every tenant's step reported what it
/// did (a backup with its manifest and every row, a verification that passed).
async fn run(setup: &Setup, args: &Args, name: &str, only: &[String], label: &str) -> Result<Row> {
    let wf: Workflow = workflow::find(&setup.ctx.config.workflows_dir(), name).map_err(|d| d.to_string())?;
    let problems = workflow::check(
        &wf.spec,
        &wf.name,
        &wf.source,
        &CheckContext { services: &setup.ctx.config.config.services, catalog: Some(&setup.catalog) },
    );
    if !problems.is_empty() {
        return Err(problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n").into());
    }
    let before = Snapshot::take().await?;
    let started = Instant::now();
    let mut spec = launch::snapshot(&wf, &setup.catalog, &setup.ctx.config, only);
    launch::skip_up_to_date(&mut spec, &setup.catalog, &setup.ctx.config).await;
    launch::apply_selections(&mut spec, &setup.catalog, &setup.ctx.config).await;
    let n = spec.tenants.len();
    if n != only.len() {
        return Err(format!("{name}: the run selects {n} tenants, expected {}", only.len()).into());
    }
    let store = &setup.starter.store;
    let id = setup.starter.start(spec, &Trigger::Operator).await?;
    let record = loop {
        let record = store.record(&id).await?;
        if record.state.is_terminal() {
            break record;
        }
        if started.elapsed() > args.timeout {
            return Err(format!(
                "{name}: run {id} is still {} after {:?} ({} of {n} tenants succeeded, {} failed, {} in flight)",
                record.state, args.timeout, record.succeeded, record.failed, record.inflight
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let wall = started.elapsed();
    let usage = Snapshot::take().await?.since(&before, n);
    let checkpoints = store.checkpoints(&id).await?;
    if record.state != RunState::Succeeded || record.succeeded != n as u64 {
        let errors: Vec<String> = checkpoints
            .iter()
            .filter_map(|(t, cp)| cp.last_error.as_ref().map(|e| format!("{t}: {e}")))
            .take(3)
            .collect();
        return Err(format!(
            "{name}: run {id} ended {} ({}), {} of {n} tenants succeeded, {} failed: {}",
            record.state,
            record.reason.unwrap_or_default(),
            record.succeeded,
            record.failed,
            errors.join("; ")
        )
        .into());
    }
    let mut per_tenant = Vec::with_capacity(n);
    let mut bytes = 0u64;
    for (tenant, cp) in &checkpoints {
        if cp.state != TenantState::Succeeded {
            return Err(format!("{name}: tenant {tenant} is {:?} in a succeeded run", cp.state).into());
        }
        if let (Some(claimed), Some(finished)) = (cp.claimed_ms, cp.finished_ms) {
            per_tenant.push(finished - claimed);
        }
        let output = cp.outputs.values().next().ok_or_else(|| format!("{name}: tenant {tenant} has no output"))?;
        bytes += check_output(name, tenant, output)?;
    }
    if checkpoints.len() != n {
        return Err(format!("{name}: {} checkpoints for {n} tenants", checkpoints.len()).into());
    }
    per_tenant.sort_unstable();
    let what = if name == "backup" {
        "snapshot, row counts, `pg_dump -Fc` streamed by multipart upload (SHA-256) into S3, manifest"
    } else {
        "manifest, scratch database, dump streamed from S3 into `pg_restore` (SHA-256), tables, row counts, \
         schema version, verdict into S3, scratch database dropped"
    };
    let mut row = Row::new(format!("{label} (run {id})"), what, n, wall, usage);
    row.per_tenant = Some([percentile(&per_tenant, 50.0), percentile(&per_tenant, 99.0)]);
    row.bytes = Some(bytes);
    row.label = label.to_string();
    Ok(row)
}

/// What a tenant's step reported must show the work done: a backup with a manifest and
/// every row of the tenant (not a skip), or a verification that passed. Returns the bytes
/// stored or restored.
fn check_output(name: &str, tenant: &str, output: &serde_json::Value) -> Result<u64> {
    let size = |key: &str| output[key].as_u64().ok_or_else(|| format!("{name}: {tenant} reported no {key}: {output}"));
    if name == "backup" {
        if output.get("skipped").is_some() || output["manifest"].as_str().is_none() {
            return Err(format!("{name}: {tenant} did not back up: {output}").into());
        }
        if output["rows"].as_i64().unwrap_or(0) <= 0 {
            return Err(format!("{name}: {tenant}'s backup holds no rows: {output}").into());
        }
        Ok(size("size")?)
    } else {
        if output["passed"] != serde_json::Value::Bool(true) {
            return Err(format!("{name}: {tenant}'s verification did not pass: {output}").into());
        }
        Ok(size("restored_bytes").unwrap_or(0))
    }
}

// ---------------------------------------------------------------------------------------------
// Report

fn mib(bytes: f64) -> String {
    format!("{:.0} MiB", bytes / 1048576.0)
}

/// `worker (pg_dump…) / bench (pg_dump…) / PostgreSQL / s3s-fs / Redis / other / unattributed`.
fn cpu_cells(u: &Usage) -> String {
    let tools = u.reaped("tenantry") + u.reaped("bench");
    format!(
        "{:.1} / {:.1} / {:.1} / {:.1} / {:.1} / {:.1} / {:.1} / {:.1}",
        // Other `tenantry` processes that ended meanwhile (another checkout's tests) are taken
        // off the group: never below zero.
        (u.group("tenantry") - u.reaped("tenantry")).max(0.0),
        (u.group("bench") - u.reaped("bench")).max(0.0),
        tools,
        u.group("postgres"),
        u.group("s3s-fs"),
        u.group("redis"),
        u.other_processes(&COLUMNS),
        u.unattributed()
    )
}

async fn render(args: &Args, sizes: &Sizes, results: &Results) -> String {
    let date = chrono::Utc::now().format("%Y-%m-%d %H:%M UTC");
    let rows = &results.rows;
    let c = args.concurrency;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "### Backups to S3 and restore verification: {} database tenants of {} MB, concurrency {c}\n",
        args.tenants, args.size_mb
    );
    let _ = writeln!(
        out,
        "Measured {date}{} with `deploy/local/bench.sh backup {}` ({} build).\n",
        commit().map(|c| format!(" at commit `{c}`")).unwrap_or_default(),
        args.command_line(),
        if cfg!(debug_assertions) { "debug" } else { "release" }
    );
    let pg_dump = tenantry::engine::tools::version("pg_dump").await.unwrap_or_else(|e| e);
    let _ =
        writeln!(out, "- Machine: {}; {pg_dump}; s3s-fs (the local S3 server) on the same machine", machine().await);
    let rows_total: i64 = sizes.rows.iter().map(|t| t.rows).sum();
    let _ = writeln!(
        out,
        "- Fleet: {n} databases (`isolation = \"database\"`), each a copy of one template with `accounts` (1,000 \
         rows) and `events` ({events} rows of random hexadecimal text, a primary key and a second index): {data:.1} MB \
         of tables and indexes, {db:.1} MB per database, {rows} rows. Made in {took:.0} s (untimed).{big}",
        n = args.tenants,
        events = rows_total - 1000,
        data = sizes.data as f64 / 1e6,
        db = sizes.database as f64 / 1e6,
        rows = rows_total,
        took = sizes.took.as_secs_f64(),
        big = if args.big_mib > 0 {
            format!(
                " The big tenant: the same tables grown to {} of tables and indexes, {} rows.",
                mib(sizes.big_data as f64),
                sizes.big_rows
            )
        } else {
            String::new()
        },
    );
    let _ = writeln!(
        out,
        "- tenantry: one `tenantry worker` process ({profile} build) with `worker_concurrency` {c}; run and per-host \
         concurrency {c}; `limits.max_pools` {mp} (a pool per tenant database; at the default a worker keeps an idle \
         connection to every database it backed up); `[storage]` on s3s-fs with the default part size (8 MiB) and parts in flight (3); \
         `pg_dump` compression at its default. A run is created through the library as `tenantry run` creates one \
         (`launch::snapshot`, `skip_up_to_date`, `apply_selections`, `Runtime::start`) and timed from the snapshot \
         until the bench saw it terminal, so it includes dispatch, claims, leases and checkpoints in Redis. Each \
         run was checked: succeeded, every tenant's backup has its manifest and rows (every verification passed). \
         The big tenant's backup ran on a newly started worker (VmRSS {idle} after start), alone.",
        idle = results.idle_rss.and_then(|r| r.now_mib).map_or("?".to_string(), |m| format!("{m:.0} MiB")),
        profile = if cfg!(debug_assertions) { "debug" } else { "release" },
        mp = 2 * c,
    );
    let _ = writeln!(
        out,
        "- Floors: {c} tasks, each taking the next tenant; `pg_dump`/`pg_restore` get the connection settings \
         tenantry's steps give them (libpq environment from the host URL). The backup floor writes nowhere; tenantry \
         also uploads and hashes, which is what the target prices. The restore floor reads dump files made with \
         the same `pg_dump` just before (untimed, in the page cache); it counts rows with the query tenantry uses \
         and checks them against the source."
    );
    let _ = writeln!(
        out,
        "- CPU seconds during the row (from /proc; ended processes in their parent, so `pg_dump`/`pg_restore` are \
         in the worker's or the bench's children): the tenantry worker itself / the bench itself / their \
         `pg_dump` and `pg_restore` children / PostgreSQL (with ended backends) / s3s-fs / Redis / other processes \
         / unattributed (busy time no process accounts for: the kernel's share of loopback networking and disk \
         I/O). {cpus} CPUs give {cpus} CPU-seconds per second.\n",
        cpus = std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    let _ = writeln!(
        out,
        "| what | per tenant | tenants | wall time | vs floor | MB/s of data | claim→finish p50 / p99 | stored or restored | peak RSS of the worker (at end) | CPU s: worker / bench / pg_dump, pg_restore / PostgreSQL / s3s-fs / Redis / other / unattributed |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (i, r) in rows.iter().enumerate() {
        let floor = results.pairs.iter().find(|(t, _)| *t == i).map(|(_, f)| &rows[*f]);
        let ratio =
            floor.map_or("1.00×".to_string(), |f| format!("{:.2}×", r.wall.as_secs_f64() / f.wall.as_secs_f64()));
        let _ = writeln!(
            out,
            "| {} | {} | {} | **{:.2} s** | {ratio} | {:.0} | {} | {} | {} | {} |",
            r.label,
            r.what,
            r.tenants,
            r.wall.as_secs_f64(),
            r.data as f64 * r.tenants as f64 / 1e6 / r.wall.as_secs_f64(),
            r.per_tenant.map_or("–".to_string(), |[p50, p99]| format!("{p50} / {p99} ms")),
            r.bytes.map_or("–".to_string(), |b| mib(b as f64)),
            r.rss.map_or("–".to_string(), |m| match m.now_mib {
                Some(now) => format!("{:.0} MiB ({now:.0})", m.peak_mib),
                None => format!("{:.0} MiB", m.peak_mib),
            }),
            cpu_cells(&r.usage),
        );
    }
    let mut others: std::collections::BTreeMap<&str, f64> = std::collections::BTreeMap::new();
    for r in rows {
        for (name, secs) in r.usage.others(0.5, &COLUMNS) {
            *others.entry(name).or_default() += secs;
        }
    }
    let (busy, waited) = background();
    let others: Vec<String> = others.iter().map(|(name, secs)| format!("`{name}` {secs:.1} s")).collect();
    let _ = writeln!(
        out,
        "\nBefore each row the bench waited until other processes kept less than {IDLE_CPUS} CPUs busy (at most \
         {busy:.2} CPUs were busy just before a row; waited {:.0} s in all). Other processes with 0.5 CPU-seconds or \
         more during the rows: {}.",
        waited.as_secs_f64(),
        if others.is_empty() { "none".to_string() } else { others.join(", ") }
    );
    let verdict = |met: bool| if met { "met" } else { "not met" };
    let mut targets = Vec::new();
    for (what, (t, f)) in ["backup", "restore verification"].iter().zip(&results.pairs) {
        let ratio = rows[*t].wall.as_secs_f64() / rows[*f].wall.as_secs_f64();
        targets.push(format!(
            "- {what} ≤ {MAX_RATIO}× its floor: {ratio:.2}× ({:.2} s vs {:.2} s): **{}**",
            rows[*t].wall.as_secs_f64(),
            rows[*f].wall.as_secs_f64(),
            verdict(ratio <= MAX_RATIO)
        ));
    }
    if let Some(big) = rows.get(5)
        && let Some(rss) = big.rss
    {
        targets.push(format!(
            "- peak RSS of the worker while backing up one {} MiB tenant ≤ {MAX_RSS_MIB:.0} MiB: {:.0} MiB: **{}**",
            args.big_mib,
            rss.peak_mib,
            verdict(rss.peak_mib <= MAX_RSS_MIB)
        ));
    }
    let _ = writeln!(out, "\nTargets (issue 8):\n\n{}", targets.join("\n"));
    out
}
