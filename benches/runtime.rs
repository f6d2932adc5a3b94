//! Throughput of the durable runtime: N schema tenants, one `sql: SELECT 1` step, next to plain sqlx loops in the same process; prints a Markdown table and writes it into docs/benchmarks.md.
//!
//! Run it with `deploy/local/bench.sh` (services, release build), or directly:
//!
//! ```text
//! cargo bench --bench runtime -- [--tenants N] [--concurrency C] [--pool P] [--workers W]
//!                                [--timeout SECS] [--no-docs]
//! ```
//!
//! One fresh database with N schemas `tenant_tNNNNN`, one temporary config (static catalog,
//! one host, a schema-isolation service, its own Redis prefix) and one workflow (`sql =
//! "SELECT 1"`, run and per-host concurrency C). Measured in one bench run:
//!
//! - `sqlx loop, 1 connection`: `SET search_path TO "tenant_x"; SELECT 1` per tenant on a
//!   pool of one connection, sequentially: the simplest honest loop.
//! - `sqlx loop, P connections`: the same statements from P tasks over a pool of P
//!   connections, the connections a worker gets.
//! - `tenantry sql step alone`: the real step (`steps::execute`: transaction, search path,
//!   receipt check and row) from P tasks, without run store, queue or checkpoints: the
//!   PostgreSQL share of a tenant task.
//! - Three tenantry runs, each created through the library as `tenantry run` creates one
//!   (`launch::snapshot` + `Runtime::start`) and executed by W `tenantry worker` processes
//!   (the release binary, `worker_concurrency` C, a pool of P connections): what production
//!   runs. Every tenant is dispatched through apalis, claimed with a lease, checkpointed and
//!   finished in Redis, and the step commits a receipt row in the tenant's schema.
//!   1. `fresh fleet`: the first run ever; the step creates the database's receipts table.
//!   2. `workers just started`: the workers are restarted first, so each checks each
//!      receipts table once (`CREATE TABLE IF NOT EXISTS`), as after every deploy.
//!   3. `steady state`: the same workers again.
//!
//! For runs, tasks/s is tenants / (last `finished_ms` − the run's `created_ms`), and the
//! dispatch-to-start delay of a tenant is `claimed_ms − queued_ms` from its checkpoint. Each
//! run must succeed with every tenant succeeded and one receipt per tenant, within the
//! timeout, or the bench exits 1. CPU time per process group (from /proc) and Redis commands
//! are printed for each run, to see where the time goes. The database and the Redis keys of
//! the prefix are removed at the end, also after a failure.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use tenantry::catalog::Catalog;
use tenantry::cli::Context;
use tenantry::engine::pools::Databases;
use tenantry::runtime::launch;
use tenantry::runtime::model::{RunSpec, RunState, TenantState, Trigger};
use tenantry::runtime::worker::Runtime;
use tenantry::steps::{StepContext, execute};
use tenantry::workflow::{self, CheckContext, Workflow};

mod support;

use support::{
    IDLE_CPUS, Result, Rss, Snapshot, Usage, Workers, background, clear_redis, commit, database_url, exec, machine,
    percentile, pg_connect, pg_url, publish, redis_url, settle,
};

const USAGE: &str = "usage: cargo bench --bench runtime -- [--tenants N] [--concurrency C] [--pool P] [--workers W] \
                     [--hosts H] [--hosts-concurrency C] [--timeout SECS] [--wait-idle SECS] [--no-docs]

  --tenants N       schema tenants (default 5000)
  --concurrency C   run and per-host concurrency of the workflow, and worker_concurrency (default 32)
  --pool P          PostgreSQL connections per worker, and of the parallel loops (default 8)
  --workers W       `tenantry worker` processes (default 1)
  --hosts H         also run a fleet of the first H tenants, each on its own host (default: 5000, at most N; 1 skips it)
  --hosts-concurrency C
                    run concurrency of that fleet, and tasks of its new-connection floor (default: --concurrency)
  --timeout SECS    limit per tenantry run (default 300)
  --wait-idle SECS  before each row, wait up to this long until other processes keep < 0.2 CPUs busy (default 120)
  --no-docs         print the table only; leave docs/benchmarks.md alone";

const WORKFLOW: &str = "bench";
/// Above the table when docs/benchmarks.md has no runtime section yet.
const HEADING: &str = "## Runtime\n\n`deploy/local/bench.sh` (runs `cargo bench --bench runtime`, `benches/runtime.rs`: \
                       arguments pass through; see its header for what is measured and how; PostgreSQL and Redis \
                       from `deploy/local/services.sh`). The table is regenerated on every run; the notes below it \
                       are written by hand.";
/// The process groups the CPU table has a column for; the rest is "other processes".
const COLUMNS: [&str; 4] = ["tenantry", "postgres", "redis", "bench"];

#[derive(Debug, Clone)]
struct Args {
    tenants: usize,
    concurrency: u32,
    pool: u32,
    workers: usize,
    /// Tenants of the many-hosts run, each on its own host (1: no many-hosts run).
    hosts: usize,
    /// Run concurrency of the many-hosts run (and tasks of its floor).
    hosts_concurrency: u32,
    timeout: Duration,
    wait_idle: Duration,
    docs: bool,
    command_line: Vec<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        tenants: 5000,
        concurrency: 32,
        pool: 8,
        workers: 1,
        hosts: 5000,
        hosts_concurrency: 0,
        timeout: Duration::from_secs(300),
        wait_idle: Duration::from_secs(120),
        docs: true,
        command_line: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| -> Result<u64, String> {
            let v = it.next().ok_or_else(|| format!("{name} needs a value\n{USAGE}"))?;
            v.parse::<u64>().ok().filter(|n| *n > 0).ok_or_else(|| format!("{name} {v:?}: expected a positive number"))
        };
        match arg.as_str() {
            // `cargo bench` passes --bench to every bench binary.
            "--bench" => continue,
            "--tenants" => args.tenants = value("--tenants")? as usize,
            "--concurrency" => args.concurrency = value("--concurrency")? as u32,
            "--pool" => args.pool = value("--pool")? as u32,
            "--workers" => args.workers = value("--workers")? as usize,
            "--hosts" => args.hosts = value("--hosts")? as usize,
            "--hosts-concurrency" => args.hosts_concurrency = value("--hosts-concurrency")? as u32,
            "--timeout" => args.timeout = Duration::from_secs(value("--timeout")?),
            "--wait-idle" => args.wait_idle = Duration::from_secs(value("--wait-idle")?),
            "--no-docs" => args.docs = false,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    args.hosts = args.hosts.min(args.tenants);
    if args.hosts_concurrency == 0 {
        args.hosts_concurrency = args.concurrency;
    }
    if args.tenants > 99_999 {
        return Err("--tenants: at most 99999 (tenant ids are t00000..t99999)".into());
    }
    args.command_line = vec![
        format!("--tenants {}", args.tenants),
        format!("--concurrency {}", args.concurrency),
        format!("--pool {}", args.pool),
        format!("--workers {}", args.workers),
    ];
    args.command_line.push(format!("--hosts {}", args.hosts));
    if args.hosts > 1 {
        args.command_line.push(format!("--hosts-concurrency {}", args.hosts_concurrency));
    }
    Ok(args)
}

fn main() -> ExitCode {
    support::main(parse_args(), bench)
}

async fn bench(args: Args) -> Result<()> {
    let name = format!("tenantry_bench_{}_{}", std::process::id(), chrono::Utc::now().timestamp_millis());
    eprintln!("bench: {} schema tenants in database {name}", args.tenants);
    let fleet = Fleet::create(&name, &args).await?;
    let measured = measure(&fleet, &args).await;
    let cleaned = fleet.destroy().await;
    let rows = measured?;
    cleaned?;
    let section = render(&args, &rows).await;
    publish("runtime", HEADING, &section, args.docs)
}

// ---------------------------------------------------------------------------------------------
// The fleet: a database with N schemas, a config and a workflow

struct Fleet {
    name: String,
    tenants: usize,
    dir: tempfile::TempDir,
}

impl Fleet {
    fn tenant(i: usize) -> String {
        format!("t{i:05}")
    }

    fn schema(i: usize) -> String {
        format!("tenant_{}", Self::tenant(i))
    }

    async fn create(name: &str, args: &Args) -> Result<Fleet> {
        let started = Instant::now();
        let mut admin = pg_connect("postgres").await?;
        exec(&mut admin, format!("CREATE DATABASE \"{name}\"")).await?;
        // From here on, `destroy` must run whatever happens.
        let fleet = Fleet { name: name.to_string(), tenants: args.tenants, dir: tempfile::tempdir()? };
        if let Err(e) = fleet.populate(args).await {
            let _ = fleet.destroy().await;
            return Err(e);
        }
        eprintln!("bench: database and config ready in {:.1?}", started.elapsed());
        Ok(fleet)
    }

    async fn populate(&self, args: &Args) -> Result<()> {
        let mut db = pg_connect(&self.name).await?;
        let mut ddl = String::with_capacity(self.tenants * 40);
        for i in 0..self.tenants {
            let _ = writeln!(ddl, "CREATE SCHEMA \"{}\";", Self::schema(i));
        }
        exec(&mut db, ddl).await?;
        db.close().await?;

        let mut config = format!(
            r#"# Written by benches/runtime.rs; deleted after the bench.
[redis]
url = "{redis}"
prefix = "{name}"

[runtime]
worker_concurrency = {concurrency}
drain_timeout = "10s"

[hosts.main]
engine = "postgres"
url = "{pg}"
max_concurrency = {pool}

[services.app]
engine = "postgres"
isolation = "schema"
host = "main"
database = "{name}"
schema = "tenant_{{tenant}}"
"#,
            redis = redis_url(),
            pg = pg_url(),
            name = self.name,
            concurrency = args.concurrency,
            pool = args.pool,
        );
        for i in 0..self.tenants {
            let _ = write!(config, "\n[[catalog.tenants]]\nid = \"{}\"\nservices = [\"app\"]\n", Self::tenant(i));
        }
        std::fs::write(self.config_path(), config)?;
        std::fs::create_dir(self.dir.path().join("workflows"))?;
        std::fs::write(
            self.dir.path().join("workflows").join(format!("{WORKFLOW}.toml")),
            format!(
                "description = \"benchmark: SELECT 1 in every tenant schema\"\n\n\
                 [concurrency]\nrun = {c}\nper_host = {c}\n\n\
                 [[steps]]\nkind = \"sql\"\nsql = \"SELECT 1\"\n",
                c = args.concurrency
            ),
        )?;
        Ok(())
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("tenantry.toml")
    }

    /// The URL of every host of the many-hosts fleet: the same server, over plain TCP
    /// (`sslmode=disable`), directly or through the PgBouncer that `bench.sh` starts
    /// (`TENANTRY_BENCH_PGBOUNCER_PORT`). sqlx 0.9.0 opens sockets without `TCP_NODELAY`, which
    /// makes a TLS handshake on loopback take ~90 ms instead of ~3 ms (sqlx#4335, fixed
    /// upstream, not released): a fleet where every tenant is a new connection would measure
    /// that bug.
    fn many_hosts_url(via: Via) -> Result<url::Url> {
        let mut url = url::Url::parse(&pg_url())?;
        if let Via::PgBouncer(port) = via {
            url.set_port(Some(port)).map_err(|()| "cannot set the PgBouncer port")?;
        }
        url.query_pairs_mut().append_pair("sslmode", "disable");
        Ok(url)
    }

    /// A second config and workflow directory (`many/`) for the same database: the first
    /// `args.hosts` tenants, tenant i alone on host `hNNNNN` (every host the same server,
    /// see [`Fleet::many_hosts_url`]), one tenant at a time per host, run concurrency
    /// `args.hosts_concurrency`, and at most 2 × that many pools kept per worker.
    fn write_many_hosts_config(&self, args: &Args, via: Via) -> Result<PathBuf> {
        let dir = self.dir.path().join(match via {
            Via::Direct => "many",
            Via::PgBouncer(_) => "many-pgbouncer",
        });
        std::fs::create_dir_all(dir.join("workflows"))?;
        let url = Self::many_hosts_url(via)?;
        let c = args.hosts_concurrency;
        let mut config = format!(
            r#"# Written by benches/runtime.rs; deleted after the bench.
[redis]
url = "{redis}"
prefix = "{name}"

[limits]
max_pools = {max_pools}

[runtime]
worker_concurrency = {c}
drain_timeout = "10s"

[services.app]
engine = "postgres"
isolation = "schema"
host = "h00000"
database = "{name}"
schema = "tenant_{{tenant}}"
"#,
            redis = redis_url(),
            name = self.name,
            max_pools = 2 * c,
        );
        for i in 0..args.hosts {
            let _ = write!(
                config,
                "\n[[catalog.tenants]]\nid = \"{}\"\nplacements = {{ app = {{ host = \"h{i:05}\" }} }}\n",
                Self::tenant(i)
            );
        }
        for h in 0..args.hosts {
            let _ = write!(config, "\n[hosts.h{h:05}]\nengine = \"postgres\"\nurl = \"{url}\"\nmax_concurrency = 1\n");
        }
        let path = dir.join("tenantry.toml");
        std::fs::write(&path, config)?;
        std::fs::write(
            dir.join("workflows").join(format!("{WORKFLOW}.toml")),
            format!(
                "description = \"benchmark: SELECT 1 in every tenant schema, a host per tenant\"\n\n\
                 [concurrency]\nrun = {c}\nper_host = 1\n\n\
                 [[steps]]\nkind = \"sql\"\nsql = \"SELECT 1\"\n"
            ),
        )?;
        Ok(path)
    }

    /// Receipts written under run id `run` (one receipts table per database).
    async fn receipts(&self, run: &str) -> Result<i64> {
        let mut db = pg_connect(&self.name).await?;
        let total: i64 = sqlx::query_scalar("SELECT count(*) FROM tenantry.receipts WHERE run_id = $1")
            .bind(run)
            .fetch_one(&mut db)
            .await?;
        db.close().await?;
        Ok(total)
    }

    /// Drops the database and deletes every Redis key of the prefix.
    async fn destroy(&self) -> Result<()> {
        let mut admin = pg_connect("postgres").await?;
        exec(&mut admin, format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name)).await?;
        let deleted = clear_redis(&self.name).await?;
        eprintln!("bench: dropped database {}, deleted {deleted} Redis keys of prefix {0}", self.name);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Measurements

/// One line of the results table.
struct Row {
    label: String,
    per_tenant: &'static str,
    connections: String,
    tenants: usize,
    wall: Duration,
    tasks_per_sec: f64,
    /// Runs only: dispatch-to-start p50/p99 and claim-to-finish p50/p99 (ms).
    delays: Option<[i64; 4]>,
    usage: Option<Usage>,
    /// Resident memory of the largest `tenantry` process of the row.
    rss: Option<Rss>,
}

async fn measure(fleet: &Fleet, args: &Args) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    let schemas: Arc<Vec<String>> = Arc::new((0..fleet.tenants).map(Fleet::schema).collect());
    rows.push(plain_loop(fleet, &schemas, 1).await?);
    rows.push(plain_loop(fleet, &schemas, args.pool).await?);

    let ctx = Context::load(Some(&fleet.config_path()), &[]).map_err(|f| f.to_string())?;
    let catalog = ctx.checked_catalog().await.map_err(|f| f.to_string())?;
    let wf = workflow::find(&ctx.config.workflows_dir(), WORKFLOW).map_err(|d| d.to_string())?;
    let problems = workflow::check(
        &wf.spec,
        &wf.name,
        &wf.source,
        &CheckContext { services: &ctx.config.config.services, catalog: Some(&catalog) },
    );
    if !problems.is_empty() {
        return Err(problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n").into());
    }
    // The bench's own runtime only starts runs and reads them, as `tenantry run` and
    // `tenantry status` do; the work is done by `tenantry worker` processes.
    let starter = ctx.runtime().await.map_err(|f| f.to_string())?;
    let bench = Bench { fleet, args, tenants: fleet.tenants, ctx: &ctx, catalog: &catalog, wf: &wf, starter: &starter };

    let mut workers = Workers::start(fleet.dir.path(), args.workers, &fleet.config_path()).await?;
    let mut row = bench.run("tenantry run, fresh fleet (first run)").await?;
    row.rss = workers.rss();
    rows.push(row);
    workers.stop()?;
    let mut workers = Workers::start(fleet.dir.path(), args.workers, &fleet.config_path()).await?;
    let mut row = bench.run("tenantry run, workers just started").await?;
    row.rss = workers.rss();
    rows.push(row);
    // Twice: memory that a worker keeps per run shows as growth from run to run.
    let mut row = bench.run("tenantry run, steady state").await?;
    row.rss = workers.rss();
    rows.push(row);
    let mut row = bench.run("tenantry run, steady state (again)").await?;
    row.rss = workers.rss();
    rows.push(row);
    // `tenantry run --wait`, the CLI an operator uses, on the same fleet and workers.
    rows.push(cli_run_wait(fleet, args).await?);
    workers.stop()?;

    // A fleet where every tenant is its own host (an RDS instance per tenant): one pool
    // and one new connection per tenant, host limits and the dispatcher's parking at scale.
    // Directly, every new connection forks a backend of this one server; through PgBouncer
    // it does not, as on a real fleet, where that cost falls on each tenant's own server.
    if args.hosts > 1 {
        let mut vias = vec![Via::Direct];
        if let Some(port) = pgbouncer_port()? {
            vias.push(Via::PgBouncer(port));
        }
        for via in vias {
            rows.extend(many_hosts(fleet, args, &schemas, &starter, via).await?);
        }
    }

    // Measured last (it needs the receipts table), shown next to the loops.
    rows.insert(2, bench.step_only().await?);
    Ok(rows)
}

/// How the many-hosts fleet reaches its server.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Via {
    Direct,
    /// The PgBouncer (session pooling) on this port.
    PgBouncer(u16),
}

impl Via {
    fn suffix(self) -> &'static str {
        match self {
            Via::Direct => "",
            Via::PgBouncer(_) => ", through PgBouncer",
        }
    }
}

/// `TENANTRY_BENCH_PGBOUNCER_PORT`, set by `bench.sh` (`ensure_pgbouncer`).
fn pgbouncer_port() -> Result<Option<u16>> {
    match std::env::var("TENANTRY_BENCH_PGBOUNCER_PORT") {
        Ok(p) if !p.is_empty() => Ok(Some(p.parse().map_err(|_| format!("TENANTRY_BENCH_PGBOUNCER_PORT={p:?}"))?)),
        _ => Ok(None),
    }
}

/// The many-hosts rows: the new-connection floor, then a run over `args.hosts` hosts.
async fn many_hosts(
    fleet: &Fleet,
    args: &Args,
    schemas: &Arc<Vec<String>>,
    starter: &Arc<Runtime>,
    via: Via,
) -> Result<Vec<Row>> {
    let config = fleet.write_many_hosts_config(args, via)?;
    let many = Context::load(Some(&config), &[]).map_err(|f| f.to_string())?;
    let many_catalog = many.checked_catalog().await.map_err(|f| f.to_string())?;
    let many_wf = workflow::find(&many.config.workflows_dir(), WORKFLOW).map_err(|d| d.to_string())?;
    let many_bench =
        Bench { fleet, args, tenants: args.hosts, ctx: &many, catalog: &many_catalog, wf: &many_wf, starter };
    let mut workers = Workers::start(fleet.dir.path(), args.workers, &config).await?;
    settle(args.wait_idle).await;
    let first: Arc<Vec<String>> = Arc::new(schemas[..args.hosts].to_vec());
    let mut rows = vec![connect_per_tenant_loop(fleet, &first, args.hosts_concurrency, via).await?];
    let mut row = many_bench
        .run(&format!("tenantry run, {} tenants on {} hosts{}", args.hosts, args.hosts, via.suffix()))
        .await?;
    row.connections = format!("{} × 1 per host", args.workers);
    row.rss = workers.rss();
    rows.push(row);
    workers.stop()?;
    Ok(rows)
}

/// `tenantry run bench --wait` as an operator runs it, with the peak memory of that CLI
/// process (polled from /proc while it runs).
async fn cli_run_wait(fleet: &Fleet, args: &Args) -> Result<Row> {
    let started = Instant::now();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tenantry"))
        .current_dir(fleet.dir.path())
        .args(["--config"])
        .arg(fleet.config_path())
        .args(["run", WORKFLOW, "--wait"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let mut peak: f64 = 0.0;
    let status = loop {
        if let Some(rss) = Rss::of(child.id()) {
            peak = peak.max(rss.peak_mib);
        }
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if started.elapsed() > args.timeout {
            let _ = child.kill();
            return Err(format!("`tenantry run --wait` did not end within {:?}", args.timeout).into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    if !status.success() {
        return Err(format!("`tenantry run --wait` exited with {status}").into());
    }
    let wall = started.elapsed();
    Ok(Row {
        label: "`tenantry run --wait` (the CLI process)".to_string(),
        per_tenant: "snapshot, start, follow with progress bars until the run ends",
        connections: format!("{} × {}", args.workers, args.pool),
        tenants: fleet.tenants,
        wall,
        tasks_per_sec: fleet.tenants as f64 / wall.as_secs_f64(),
        delays: None,
        usage: None,
        rss: Some(Rss { peak_mib: peak, now_mib: None }),
    })
}

/// `SET search_path TO "tenant_x"; SELECT 1` per tenant, from `connections` tasks over a
/// pool of that many connections (opened before the clock starts).
async fn plain_loop(fleet: &Fleet, schemas: &Arc<Vec<String>>, connections: u32) -> Result<Row> {
    let options: PgConnectOptions = database_url(&fleet.name).parse()?;
    let pool =
        PgPoolOptions::new().max_connections(connections).min_connections(connections).connect_with(options).await?;
    warm(&pool, connections).await?;
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (pool, next, schemas) = (pool.clone(), next.clone(), schemas.clone());
        tasks.push(tokio::spawn(async move {
            let mut done = 0usize;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(schema) = schemas.get(i) else { break };
                let sql = format!("SET search_path TO \"{schema}\"; SELECT 1");
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&pool).await?;
                done += 1;
            }
            Ok::<usize, sqlx::Error>(done)
        }));
    }
    let mut done = 0;
    for t in tasks {
        done += t.await??;
    }
    let wall = started.elapsed();
    pool.close().await;
    if done != fleet.tenants {
        return Err(format!("plain loop ran {done} statements for {} tenants", fleet.tenants).into());
    }
    let row = Row {
        label: format!("sqlx loop, {connections} connection{}", if connections == 1 { "" } else { "s" }),
        per_tenant: "`SET search_path; SELECT 1` (one round trip)",
        connections: connections.to_string(),
        tenants: done,
        wall,
        tasks_per_sec: done as f64 / wall.as_secs_f64(),
        delays: None,
        usage: None,
        rss: None,
    };
    eprintln!("bench: {}: {:.0} statements/s", row.label, row.tasks_per_sec);
    Ok(row)
}

/// The floor of a fleet with a host per tenant: a new connection per tenant (as a worker
/// must open one per host), `SET search_path; SELECT 1`, close; from `tasks` tasks at once,
/// with the many-hosts run's URL (see [`Fleet::many_hosts_url`]).
async fn connect_per_tenant_loop(fleet: &Fleet, schemas: &Arc<Vec<String>>, tasks_n: u32, via: Via) -> Result<Row> {
    let mut url = Fleet::many_hosts_url(via)?;
    url.set_path(&format!("/{}", fleet.name));
    let options: Arc<PgConnectOptions> = Arc::new(url.as_str().parse()?);
    let next = Arc::new(AtomicUsize::new(0));
    let before = Snapshot::take().await?;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..tasks_n {
        let (options, next, schemas) = (options.clone(), next.clone(), schemas.clone());
        tasks.push(tokio::spawn(async move {
            use sqlx::ConnectOptions;
            let mut done = 0usize;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(schema) = schemas.get(i) else { break };
                let mut conn = options.connect().await?;
                let sql = format!("SET search_path TO \"{schema}\"; SELECT 1");
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut conn).await?;
                conn.close().await?;
                done += 1;
            }
            Ok::<usize, sqlx::Error>(done)
        }));
    }
    let mut done = 0;
    for t in tasks {
        done += t.await??;
    }
    let wall = started.elapsed();
    let row = Row {
        label: format!("sqlx loop, a new connection per tenant, {tasks_n} at once{}", via.suffix()),
        per_tenant: "connect, `SET search_path; SELECT 1`, close",
        connections: format!("{tasks_n} (new each time)"),
        tenants: done,
        wall,
        tasks_per_sec: done as f64 / wall.as_secs_f64(),
        delays: None,
        usage: Some(Snapshot::take().await?.since(&before, done)),
        rss: None,
    };
    if done != schemas.len() {
        return Err(format!("new-connection loop ran {done} statements for {} tenants", schemas.len()).into());
    }
    eprintln!("bench: {}: {:.0} tenants/s", row.label, row.tasks_per_sec);
    Ok(row)
}

/// Makes sure `n` connections of the pool are open.
async fn warm(pool: &PgPool, n: u32) -> Result<()> {
    let mut held = Vec::new();
    for _ in 0..n {
        held.push(pool.acquire().await?);
    }
    Ok(())
}

struct Bench<'a> {
    fleet: &'a Fleet,
    args: &'a Args,
    /// Tenants of the run (all of the fleet's, or the first `--hosts` of them).
    tenants: usize,
    ctx: &'a Context,
    catalog: &'a Catalog,
    wf: &'a Workflow,
    starter: &'a Arc<Runtime>,
}

impl Bench<'_> {
    /// One run through the runtime, started the way `tenantry run` starts one, followed
    /// until it ends (or the timeout), then checked.
    async fn run(&self, label: &str) -> Result<Row> {
        settle(self.args.wait_idle).await;
        let before = Snapshot::take().await?;
        let started = Instant::now();
        let spec = launch::snapshot(self.wf, self.catalog, &self.ctx.config, &[]);
        let n = spec.tenants.len();
        if n != self.tenants {
            return Err(format!("the run selects {n} tenants, expected {}", self.tenants).into());
        }
        let store = &self.starter.store;
        let id = self.starter.start(spec, &Trigger::Operator).await?;
        let record = loop {
            let record = store.record(&id).await?;
            if record.state.is_terminal() {
                break record;
            }
            if started.elapsed() > self.args.timeout {
                return Err(format!(
                    "{label}: run {id} is still {} after {:?} ({} of {n} tenants succeeded, {} failed, {} in flight)",
                    record.state, self.args.timeout, record.succeeded, record.failed, record.inflight
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let wall = started.elapsed();
        let usage = Snapshot::take().await?.since(&before, n);
        if record.state != RunState::Succeeded || record.succeeded != n as u64 {
            return Err(format!(
                "{label}: run {id} ended {} ({}), {} of {n} tenants succeeded, {} failed",
                record.state,
                record.reason.unwrap_or_default(),
                record.succeeded,
                record.failed
            )
            .into());
        }
        let checkpoints = store.checkpoints(&id).await?;
        let mut dispatch_to_start = Vec::with_capacity(n);
        let mut claim_to_finish = Vec::with_capacity(n);
        let mut last_finished = record.created_ms;
        for (tenant, cp) in &checkpoints {
            let (Some(queued), Some(claimed), Some(finished)) = (cp.queued_ms, cp.claimed_ms, cp.finished_ms) else {
                return Err(
                    format!("{label}: checkpoint of {tenant} lacks queued/claimed/finished times: {cp:?}").into()
                );
            };
            if cp.state != TenantState::Succeeded {
                return Err(format!("{label}: tenant {tenant} is {:?} in a succeeded run", cp.state).into());
            }
            dispatch_to_start.push(claimed - queued);
            claim_to_finish.push(finished - claimed);
            last_finished = last_finished.max(finished);
        }
        if checkpoints.len() != n {
            return Err(format!("{label}: {} checkpoints for {n} tenants", checkpoints.len()).into());
        }
        let receipts = self.fleet.receipts(&id).await?;
        if receipts != n as i64 {
            return Err(format!("{label}: {receipts} receipts of run {id} for {n} tenants").into());
        }
        let span = Duration::from_millis((last_finished - record.created_ms).max(1) as u64);
        dispatch_to_start.sort_unstable();
        claim_to_finish.sort_unstable();
        let row = Row {
            label: label.to_string(),
            per_tenant: "claim, `sql` step (transaction + receipt), checkpoint, finish, advance",
            connections: format!("{} × {}", self.args.workers, self.args.pool),
            tenants: n,
            wall,
            tasks_per_sec: n as f64 / span.as_secs_f64(),
            delays: Some([
                percentile(&dispatch_to_start, 50.0),
                percentile(&dispatch_to_start, 99.0),
                percentile(&claim_to_finish, 50.0),
                percentile(&claim_to_finish, 99.0),
            ]),
            usage: Some(usage),
            rss: None,
        };
        eprintln!(
            "bench: {label}: run {id} succeeded, {n} tenants and receipts, {:.0} tasks/s, end to end {:.2?}",
            row.tasks_per_sec, wall
        );
        if let Some(u) = &row.usage {
            eprintln!("{}", u.describe(wall, &COLUMNS));
        }
        Ok(row)
    }

    /// The `sql` step itself (`steps::execute`, with its transaction and receipt) from
    /// `pool` tasks, without run store, queue or checkpoints. A first, untimed pass makes
    /// this process know the receipts table (as a worker does after its first run).
    async fn step_only(&self) -> Result<Row> {
        let spec: Arc<RunSpec> = Arc::new(launch::snapshot(self.wf, self.catalog, &self.ctx.config, &[]));
        let c = &self.ctx.config.config;
        let databases = Arc::new(Databases::new(c.hosts.clone(), self.args.pool, c.limits.max_pools as usize));
        // Open the connections before the clock starts, as for the plain loops.
        let pool = databases.postgres("main", &self.fleet.name)?;
        warm(&pool, self.args.pool).await?;
        self.step_pass(&spec, &databases, &format!("step-warm-{}", spec.id)).await?;
        let run_id = format!("step-only-{}", spec.id);
        let wall = self.step_pass(&spec, &databases, &run_id).await?;
        databases.close().await;
        let n = self.fleet.tenants;
        let receipts = self.fleet.receipts(&run_id).await?;
        if receipts != n as i64 {
            return Err(format!("step only: {receipts} receipts for {n} tenants").into());
        }
        let row = Row {
            label: "tenantry `sql` step alone, no Redis".to_string(),
            per_tenant: "the step's transaction + receipt, nothing else",
            connections: self.args.pool.to_string(),
            tenants: n,
            wall,
            tasks_per_sec: n as f64 / wall.as_secs_f64(),
            delays: None,
            usage: None,
            rss: None,
        };
        eprintln!("bench: {}: {:.0} tasks/s", row.label, row.tasks_per_sec);
        Ok(row)
    }

    /// Runs the step for every tenant of `spec` from `pool` tasks under run id `run_id`.
    async fn step_pass(&self, spec: &Arc<RunSpec>, databases: &Arc<Databases>, run_id: &str) -> Result<Duration> {
        let tenants: Arc<Vec<String>> = Arc::new(spec.tenants.keys().cloned().collect());
        let base_dir = Arc::new(self.ctx.config.base_dir.clone());
        let services = Arc::new(self.ctx.config.config.services.clone());
        let run_id = Arc::new(run_id.to_string());
        let next = Arc::new(AtomicUsize::new(0));
        let cancel = tokio_util::sync::CancellationToken::new();
        let started = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..self.args.pool {
            let cancel = cancel.clone();
            let (spec, databases, tenants, base_dir, run_id, next, services) = (
                spec.clone(),
                databases.clone(),
                tenants.clone(),
                base_dir.clone(),
                run_id.clone(),
                next.clone(),
                services.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut done = 0usize;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(tenant) = tenants.get(i) else { break };
                    let snapshot = &spec.tenants[tenant];
                    let unit = &snapshot.units[0];
                    let step = &spec.steps[unit.step];
                    let label = format!("{}/{}", step.label(), unit.service);
                    let ctx = StepContext {
                        run: &run_id,
                        root_run: None,
                        tenant,
                        labels: &snapshot.labels,
                        unit: &label,
                        step,
                        placement: &snapshot.placements[&unit.service],
                        databases: &databases,
                        base_dir: &base_dir,
                        migrations: None,
                        service: services.get(&unit.service),
                        cancel: &cancel,
                        fence: &tenantry::runtime::fence::Fence::none(&run_id, tenant),
                        throttle: None,
                        objects: None,
                        backup_limits: &Default::default(),
                        rds: None,
                        clock: &tenantry::runtime::clock::SystemClock,
                        timezone: chrono_tz::UTC,
                    };
                    execute(&ctx).await.map_err(|e| format!("tenant {tenant}: {e}"))?;
                    done += 1;
                }
                Ok::<usize, String>(done)
            }));
        }
        let mut done = 0;
        for t in tasks {
            done += t.await??;
        }
        if done != tenants.len() {
            return Err(format!("step only: {done} steps for {} tenants", tenants.len()).into());
        }
        Ok(started.elapsed())
    }
}

// ---------------------------------------------------------------------------------------------
// Report

async fn render(args: &Args, rows: &[Row]) -> String {
    let date = chrono::Utc::now().format("%Y-%m-%d %H:%M UTC");
    let mut out = String::new();
    let _ = writeln!(out, "### Runtime throughput: {} schema tenants, step `sql: SELECT 1`\n", args.tenants);
    let _ = writeln!(
        out,
        "Measured {date}{} with `deploy/local/bench.sh {}` ({} build).\n",
        commit().map(|c| format!(" at commit `{c}`")).unwrap_or_default(),
        args.command_line.join(" "),
        if cfg!(debug_assertions) { "debug" } else { "release" }
    );
    let _ = writeln!(out, "- Machine: {}", machine().await);
    let _ = writeln!(
        out,
        "- Settings: run concurrency {c}, per-host limit {c}; {w} `tenantry worker` process(es) (release build) with \
         `worker_concurrency` {c} and a PostgreSQL pool of {p} connections each; lease, sweep and queue settings at \
         their defaults. The bench process starts each run through the library (`launch::snapshot` + \
         `Runtime::start`, as `tenantry run` does) and polls it. Checkpoints on: every tenant is dispatched through \
         apalis, claimed with a lease, checkpointed and finished in Redis, and the step commits a receipt row (in \
         the database's `tenantry.receipts`) in its transaction. Every connection of these rows uses the URL \
         `{url}` as given ({ssl}).",
        c = args.concurrency,
        w = args.workers,
        p = args.pool,
        url = tenantry::secret::redact_url_str(&pg_url()),
        ssl = if pg_url().contains("sslmode=") {
            "its `sslmode`"
        } else {
            "no `sslmode`: sqlx's default `prefer`, so TLS when the server has ssl on"
        },
    );
    if args.hosts > 1 {
        let _ = writeln!(
            out,
            "- Many hosts: the first {h} tenants, tenant i alone on host `hNNNNN` ({h} host entries, every one the same \
             local server, `max_concurrency = 1`), run concurrency {hc}, `worker_concurrency` {hc}, \
             `limits.max_pools` {mp}. Host URLs and the new-connection floor next to it say `sslmode=disable`: sqlx \
             0.9.0 does not set `TCP_NODELAY`, which makes each TLS handshake on loopback take ~90 ms instead of \
             ~3 ms (sqlx#4335, fixed upstream, unreleased); a fleet where every tenant is a new connection would \
             measure that bug. The floor opens, uses and closes one connection per tenant from {hc} tasks.{bouncer}",
            bouncer = if pgbouncer_port().ok().flatten().is_some() {
                " The rows \"through PgBouncer\" repeat both with every host URL pointing at a PgBouncer 1.18 in \
                 session mode in front of the same server (`deploy/local/services.sh` `ensure_pgbouncer`): each \
                 tenant is still a new client connection (TCP, startup, auth) from the worker, but the server does \
                 not fork a backend for it. On a real fleet that fork happens on each tenant's own server, not on \
                 the machine that runs tenantry; directly, this one 2-core machine pays it for all 5,000 hosts, \
                 which bounds the direct rows."
            } else {
                ""
            },
            h = args.hosts,
            hc = args.hosts_concurrency,
            mp = 2 * args.hosts_concurrency,
        );
    }
    let _ = writeln!(
        out,
        "- Tasks/s: tenants ÷ (last tenant's `finished_ms` − the run's `created_ms`) for runs, tenants ÷ wall time \
         for loops. Dispatch→start: `claimed_ms − queued_ms` of each checkpoint; claim→finish: `finished_ms − \
         claimed_ms`. End to end: from `launch::snapshot` until the bench saw the run's final state. Peak RSS: the \
         largest VmHWM of the row's `tenantry` processes when the row ended (the workers' VmRSS then in \
         parentheses); a worker that runs several rows reports its peak so far.\n"
    );
    let _ = writeln!(
        out,
        "| what | per tenant | connections | tasks/s | end to end | dispatch→start p50 / p99 | claim→finish p50 / p99 | peak RSS (at end) |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let (d, f) = match r.delays {
            Some([d50, d99, f50, f99]) => (format!("{d50} / {d99} ms"), format!("{f50} / {f99} ms")),
            None => ("–".to_string(), "–".to_string()),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | **{:.0}** | {:.2} s | {d} | {f} | {} |",
            r.label,
            r.per_tenant,
            r.connections,
            r.tasks_per_sec,
            r.wall.as_secs_f64(),
            r.rss.map_or("–".to_string(), |m| match m.now_mib {
                Some(now) => format!("{:.0} MiB ({now:.0})", m.peak_mib),
                None => format!("{:.0} MiB", m.peak_mib),
            })
        );
    }
    let runs: Vec<&Row> = rows.iter().filter(|r| r.usage.is_some()).collect();
    if !runs.is_empty() {
        let _ = writeln!(
            out,
            "\nWhere the time of the runs goes (CPU seconds from /proc, with ended processes such as PostgreSQL \
             backends counted in their parent; per tenant in µs). `other processes`: anything else that ran \
             meanwhile; `unattributed`: busy time no process accounts for (the kernel's share of loopback \
             networking and disk I/O).\n"
        );
        let _ = writeln!(
            out,
            "| run | tenantry workers | PostgreSQL | Redis | bench | other processes | unattributed | Redis script calls / tenant |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|");
        let mut others: BTreeMap<&str, f64> = BTreeMap::new();
        for r in &runs {
            let u = r.usage.as_ref().expect("filtered");
            let n = r.tenants as f64;
            let cell = |s: f64| format!("{s:.2} s ({:.0} µs)", s * 1e6 / n);
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {:.2} |",
                r.label,
                cell(u.group("tenantry")),
                cell(u.group("postgres")),
                cell(u.group("redis")),
                cell(u.group("bench")),
                cell(u.other_processes(&COLUMNS)),
                cell(u.unattributed()),
                u.scripts() as f64 / n,
            );
            for (name, secs) in u.others(0.2, &COLUMNS) {
                *others.entry(name).or_default() += secs;
            }
        }
        let (busy, waited) = background();
        let others: Vec<String> = others.iter().map(|(name, secs)| format!("`{name}` {secs:.1} s")).collect();
        let _ = writeln!(
            out,
            "\nBefore each row the bench waited until other processes kept less than {IDLE_CPUS} CPUs busy (at most \
             {busy:.2} CPUs were busy just before a row; waited {:.0} s in all). Other processes with 0.2 CPU-seconds \
             or more during the rows: {}.",
            waited.as_secs_f64(),
            if others.is_empty() { "none".to_string() } else { others.join(", ") }
        );
    }
    let verdicts: Vec<String> = rows
        .iter()
        .filter(|r| r.delays.is_some())
        .map(|r| {
            let verdict = if r.tasks_per_sec >= 1000.0 { "met" } else { "not met" };
            format!("{} {:.0}/s: **{verdict}**", r.label.trim_start_matches("tenantry run, "), r.tasks_per_sec)
        })
        .collect();
    let _ = writeln!(
        out,
        "\nTarget (issues 3 and 7), at least 1,000 tenant tasks/s on a 2-core machine with checkpoints on: {}.",
        verdicts.join("; ")
    );
    let memory: Vec<String> = rows
        .iter()
        .filter_map(|r| {
            let rss = r.rss?;
            let (who, limit) = if r.delays.is_some() { ("worker", 64.0) } else { ("CLI", 128.0) };
            let verdict = if rss.peak_mib <= limit { "met" } else { "not met" };
            Some(format!(
                "{} ({who}, ≤ {limit:.0} MiB) {:.0} MiB: **{verdict}**",
                r.label.trim_start_matches("tenantry run, "),
                rss.peak_mib
            ))
        })
        .collect();
    if !memory.is_empty() {
        let _ = writeln!(
            out,
            "\nTarget (issue 7), peak RSS per process at {} tenants: {}.",
            args.tenants,
            memory.join("; ")
        );
    }
    out
}
