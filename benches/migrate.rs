//! Migration rollout: one migration (a column and an index on a 1,000-row table) applied to N
//! schema tenants by tenantry, next to `psql` doing the same DDL, in one process; prints a
//! Markdown table and writes it into docs/benchmarks.md (between the migrate markers).
//!
//! ```text
//! cargo bench --bench migrate -- [--tenants N] [--rows R] [--concurrency C] [--timeout SECS]
//!                                [--no-step-only] [--wait-idle SECS] [--no-docs]
//! ```
//!
//! Needs PostgreSQL and Redis (`TENANTRY_TEST_PG_URL`, `TENANTRY_TEST_REDIS_URL`; see
//! `deploy/local/services.sh`) and `psql` on the PATH.
//!
//! Setup (untimed): a template database with N schemas `tenant_tNNNN`, each with the table
//! `items` of `V1__items.sql` holding R rows (default 1,000) and a `tenantry_migrations`
//! history recording V1 as applied (checksum of the file, as `migrate` writes it), vacuumed.
//! Every measured variant gets its own copy (`CREATE DATABASE … TEMPLATE`, file copy), since
//! the DDL applies only once. A `CHECKPOINT` precedes every variant. The measured migration
//! is `V2__items_category.sql`: `ALTER TABLE items ADD COLUMN category text; CREATE INDEX
//! items_category_idx ON items (category);`. In this order, wall-clock each:
//!
//! 1. `(a) floor`: one `psql -f` process and session running, per tenant, `SET search_path`
//!    then `BEGIN`, the V2 file, `COMMIT` (one transaction per tenant, as `migrate` uses one
//!    per migration; no history row, no lock).
//! 2. `(b) psql per tenant`: one `psql -c "SET search_path …; <V2>"` process per tenant,
//!    sequentially (one implicit transaction per tenant), as naive per-tenant runners do.
//! 3. `tenantry, first run`: a run of workflow `rollout` (one `migrate` step) created through
//!    the library as `tenantry run` does (`launch::snapshot` + `launch::skip_up_to_date` +
//!    `Runtime::start`) and executed by a worker runtime in this process (built as `tenantry
//!    worker` builds it, `cli::Context::runtime`, started before the clock), from the snapshot
//!    until the run is terminal. Then: the run succeeded, every tenant's checkpoint says V2
//!    was applied, every schema's history has version 2 `applied` with V2's checksum, and the
//!    column and the index exist in every schema.
//! 4. `plan`: `workflow::plan::build` over the migrated fleet (bulk history read); every
//!    tenant must show nothing pending and nothing blocked.
//! 5. `tenantry, second run`: the same workflow again with nothing pending, from the
//!    snapshot until terminal: the bulk history read records every tenant as done without
//!    dispatching it. Every tenant must be skipped that way.
//! 6. `tenantry run rollout --wait` (the release binary) with nothing pending: the same
//!    through the CLI, process start, config and catalog included.
//! 7. `migrate step alone` (unless `--no-step-only`): the real step (`steps::execute`) from
//!    C tasks over a pool of C on a fourth copy, without run store, queue or checkpoints:
//!    the PostgreSQL share of a tenantry tenant.
//!
//! After the second run, the bulk history read is also timed piece by piece (connect,
//! `read_histories`, close, and a connect without TLS for comparison). Before every variant
//! the bench waits (up to `--wait-idle`, default 300 s) until other processes keep less than
//! 0.2 CPUs busy, since a shared machine skews the comparison; for every variant it reports
//! the CPU used by itself and its children, PostgreSQL, Redis and the rest of the machine.
//!
//! Run, per-host and worker concurrency are all C (default 8), and the worker's PostgreSQL
//! pool has C connections. Exits 1 when a run or a check fails; the targets of issue 4 are
//! reported, not enforced. The databases and the Redis keys of the bench's own prefix are
//! removed at the end, also after a failure.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sqlx::Connection;
use tokio_util::sync::CancellationToken;

use tenantry::catalog::Catalog;
use tenantry::cli::Context;
use tenantry::engine::pools::Databases;
use tenantry::migrations::MigrationSet;
use tenantry::runtime::launch;
use tenantry::runtime::model::{Checkpoint, RunState, TenantState, Trigger};
use tenantry::runtime::worker::Runtime;
use tenantry::steps::migrate::HISTORY_DDL;
use tenantry::steps::{StepContext, execute};
use tenantry::workflow::{self, CheckContext, Workflow};

mod support;

use support::{
    IDLE_CPUS, Result, Snapshot, Usage, background, clear_redis, commit, database_url, exec, machine, percentile,
    pg_connect, pg_url, publish, redis_url, settle,
};

const USAGE: &str = "usage: cargo bench --bench migrate -- [--tenants N] [--rows R] [--concurrency C] \
                     [--timeout SECS] [--no-step-only] [--wait-idle SECS] [--no-docs]

  --tenants N       schema tenants (default 1000)
  --rows R          rows in each tenant's items table (default 1000)
  --concurrency C   run and per-host concurrency, worker_concurrency and pool size (default 8)
  --timeout SECS    limit per tenantry run (default 300)
  --no-step-only    skip the `migrate step alone` variant (and its database copy)
  --wait-idle SECS  before each variant, wait up to SECS (default 300, 0: not at all) until
                    other processes use less than 0.2 CPUs
  --no-docs         print the table only; leave docs/benchmarks.md alone";

const WORKFLOW: &str = "rollout";
const SERVICE: &str = "app";
const V1_FILE: &str = "V1__items.sql";
const V1_SQL: &str = "CREATE TABLE items (id int PRIMARY KEY, name text, created_at timestamptz DEFAULT now());\n";
const V2_FILE: &str = "V2__items_category.sql";
const V2_SQL: &str =
    "ALTER TABLE items ADD COLUMN category text;\nCREATE INDEX items_category_idx ON items (category);\n";
/// Above the table when docs/benchmarks.md has no migrate section yet.
const HEADING: &str = "## Migrations\n\n`cargo bench --bench migrate` (`benches/migrate.rs`; see its header for what \
                       is measured and how; PostgreSQL and Redis from `deploy/local/services.sh`).";
/// Schemas per setup batch (one implicit transaction each: bounded lock table use).
const SETUP_BATCH: usize = 50;
/// Schemas per UNION query when checking histories.
const CHECK_BATCH: usize = 500;

#[derive(Debug, Clone)]
struct Args {
    tenants: usize,
    rows: usize,
    concurrency: u32,
    timeout: Duration,
    step_only: bool,
    docs: bool,
    wait_idle: Duration,
}

impl Args {
    fn command_line(&self) -> String {
        let mut out = format!("--tenants {} --rows {} --concurrency {}", self.tenants, self.rows, self.concurrency);
        if !self.step_only {
            out.push_str(" --no-step-only");
        }
        out
    }
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        tenants: 1000,
        rows: 1000,
        concurrency: 8,
        timeout: Duration::from_secs(300),
        step_only: true,
        docs: true,
        wait_idle: Duration::from_secs(300),
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
            "--rows" => args.rows = value("--rows")? as usize,
            "--concurrency" => args.concurrency = value("--concurrency")? as u32,
            "--timeout" => args.timeout = Duration::from_secs(value("--timeout")?),
            "--no-step-only" => args.step_only = false,
            "--wait-idle" => {
                let v = it.next().ok_or_else(|| format!("--wait-idle needs a value\n{USAGE}"))?;
                let secs = v.parse::<u64>().map_err(|_| format!("--wait-idle {v:?}: expected seconds"))?;
                args.wait_idle = Duration::from_secs(secs);
            }
            "--no-docs" => args.docs = false,
            "-h" | "--help" => return Err(USAGE.to_string()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    if args.tenants > 99_999 {
        return Err("--tenants: at most 99999".into());
    }
    Ok(args)
}

fn main() -> ExitCode {
    support::main(parse_args(), bench)
}

async fn bench(args: Args) -> Result<()> {
    let name = format!("tenantry_bmig_{}_{}", std::process::id(), chrono::Utc::now().timestamp_millis());
    eprintln!("bench: {} schema tenants × {} rows, databases and Redis prefix {name}", args.tenants, args.rows);
    let mut fleet = Fleet::new(&name, &args)?;
    let setup = fleet.setup().await;
    let measured = match setup {
        Ok(()) => measure(&fleet, &args).await,
        Err(e) => Err(e),
    };
    let cleaned = fleet.destroy().await;
    let results = measured?;
    cleaned?;
    let section = render(&args, &results).await;
    publish("migrate", HEADING, &section, args.docs)
}

// ---------------------------------------------------------------------------------------------
// Services

/// A `CHECKPOINT`, so that no variant pays for the writes of the one before.
async fn checkpoint() -> Result<()> {
    let mut admin = pg_connect("postgres").await?;
    exec(&mut admin, "CHECKPOINT".into()).await?;
    admin.close().await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The fleet: a template database, one copy per variant, a config, a workflow, migrations

/// Which copy of the fleet a variant works on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Replica {
    Floor,
    PsqlPerTenant,
    Tenantry,
    StepOnly,
}

impl Replica {
    fn suffix(self) -> &'static str {
        match self {
            Self::Floor => "floor",
            Self::PsqlPerTenant => "psql",
            Self::Tenantry => "tenantry",
            Self::StepOnly => "step",
        }
    }
}

struct Fleet {
    name: String,
    tenants: usize,
    rows: usize,
    concurrency: u32,
    copies: Vec<Replica>,
    /// Databases created so far (dropped by `destroy`).
    created: Vec<String>,
    dir: tempfile::TempDir,
    /// The version and name `migrate` reports for V2 (`2_items_category`).
    v2_change: String,
    v2_checksum: String,
    v1_checksum: String,
    v1_name: String,
    wait_idle: Duration,
}

impl Fleet {
    fn new(name: &str, args: &Args) -> Result<Fleet> {
        let dir = tempfile::tempdir()?;
        let migrations = dir.path().join("migrations").join(SERVICE);
        std::fs::create_dir_all(&migrations)?;
        std::fs::write(migrations.join(V1_FILE), V1_SQL)?;
        std::fs::write(migrations.join(V2_FILE), V2_SQL)?;
        let set = MigrationSet::load(&migrations)?;
        let [v1, v2] = set.migrations.as_slice() else {
            return Err(
                format!("expected 2 migrations in {}, found {}", migrations.display(), set.migrations.len()).into()
            );
        };
        let mut copies = vec![Replica::Floor, Replica::PsqlPerTenant, Replica::Tenantry];
        if args.step_only {
            copies.push(Replica::StepOnly);
        }
        Ok(Fleet {
            name: name.to_string(),
            tenants: args.tenants,
            rows: args.rows,
            concurrency: args.concurrency,
            copies,
            created: Vec::new(),
            v2_change: format!("{}_{}", v2.version, v2.name),
            v2_checksum: v2.up.checksum.clone(),
            v1_checksum: v1.up.checksum.clone(),
            v1_name: v1.name.clone(),
            wait_idle: args.wait_idle,
            dir,
        })
    }

    fn width(&self) -> usize {
        self.tenants.saturating_sub(1).to_string().len().max(4)
    }

    fn tenant(&self, i: usize) -> String {
        format!("t{i:0w$}", w = self.width())
    }

    fn schema(&self, i: usize) -> String {
        format!("tenant_{}", self.tenant(i))
    }

    fn schemas(&self) -> Vec<String> {
        (0..self.tenants).map(|i| self.schema(i)).collect()
    }

    fn template(&self) -> String {
        format!("{}_tmpl", self.name)
    }

    fn database(&self, copy: Replica) -> String {
        format!("{}_{}", self.name, copy.suffix())
    }

    fn config_path(&self, copy: Replica) -> PathBuf {
        self.dir.path().join(format!("tenantry-{}.toml", copy.suffix()))
    }

    /// Template, copies, configs and the workflow.
    async fn setup(&mut self) -> Result<()> {
        let started = Instant::now();
        let mut admin = pg_connect("postgres").await?;
        let template = self.template();
        exec(&mut admin, format!("CREATE DATABASE \"{template}\"")).await?;
        self.created.push(template.clone());
        self.populate_template().await?;
        eprintln!("bench: template {template} ready in {:.1?}", started.elapsed());
        let copied = Instant::now();
        exec(&mut admin, "CHECKPOINT".into()).await?;
        for copy in self.copies.clone() {
            let db = self.database(copy);
            let with_strategy = format!("CREATE DATABASE \"{db}\" TEMPLATE \"{template}\" STRATEGY FILE_COPY");
            if let Err(e) = exec(&mut admin, with_strategy).await {
                // Before PostgreSQL 15 there is no STRATEGY option (and file copy is the only one).
                if !e.to_string().contains("strategy") && !e.to_string().contains("syntax") {
                    return Err(e);
                }
                exec(&mut admin, format!("CREATE DATABASE \"{db}\" TEMPLATE \"{template}\"")).await?;
            }
            self.created.push(db);
        }
        admin.close().await?;
        eprintln!("bench: {} copies made in {:.1?}", self.copies.len(), copied.elapsed());
        for copy in [Replica::Tenantry, Replica::StepOnly] {
            self.write_config(copy)?;
        }
        let workflows = self.dir.path().join("workflows");
        std::fs::create_dir_all(&workflows)?;
        std::fs::write(
            workflows.join(format!("{WORKFLOW}.toml")),
            "description = \"benchmark: add a column and an index to items in every tenant\"\n\n\
             [concurrency]\nrun = {c}\nper_host = {c}\n\n[[steps]]\nkind = \"migrate\"\n"
                .replace("{c}", &self.concurrency.to_string()),
        )?;
        Ok(())
    }

    /// N schemas, each: the table of V1 with its rows and the history row of V1. Vacuumed,
    /// so that no variant sets hint bits or builds the visibility map on the way.
    async fn populate_template(&self) -> Result<()> {
        let mut db = pg_connect(&self.template()).await?;
        let history_ddl = HISTORY_DDL.trim_end().trim_end_matches(';');
        let indexes: Vec<usize> = (0..self.tenants).collect();
        for chunk in indexes.chunks(SETUP_BATCH) {
            let mut sql = String::new();
            for i in chunk {
                let schema = self.schema(*i);
                let _ = write!(
                    sql,
                    "CREATE SCHEMA \"{schema}\";\nSET search_path TO \"{schema}\";\n{V1_SQL}\
                     INSERT INTO items (id, name) SELECT g, 'item ' || g FROM generate_series(1, {rows}) g;\n\
                     {history_ddl};\n\
                     INSERT INTO tenantry_migrations (version, name, checksum, state, finished_at, duration_ms, run_id) \
                     VALUES ('1', '{name}', '{checksum}', 'applied', now(), 0, 'bench-setup');\n",
                    rows = self.rows,
                    name = self.v1_name,
                    checksum = self.v1_checksum,
                );
            }
            exec(&mut db, sql).await?;
        }
        exec(&mut db, "RESET search_path".into()).await?;
        exec(&mut db, "VACUUM".into()).await?;
        db.close().await?;
        Ok(())
    }

    fn write_config(&self, copy: Replica) -> Result<()> {
        let c = self.concurrency;
        let mut config = format!(
            r#"# Written by benches/migrate.rs; deleted after the bench.
[redis]
url = "{redis}"
prefix = "{prefix}"

[runtime]
worker_concurrency = {c}
drain_timeout = "10s"

[hosts.main]
engine = "postgres"
url = "{pg}"
max_concurrency = {c}

[services.{SERVICE}]
engine = "postgres"
isolation = "schema"
host = "main"
database = "{database}"
schema = "tenant_{{tenant}}"
migrations = "migrations/{SERVICE}"
"#,
            redis = redis_url(),
            pg = pg_url(),
            prefix = self.name,
            database = self.database(copy),
        );
        for i in 0..self.tenants {
            let _ = write!(config, "\n[[catalog.tenants]]\nid = \"{}\"\nservices = [\"{SERVICE}\"]\n", self.tenant(i));
        }
        std::fs::write(self.config_path(copy), config)?;
        Ok(())
    }

    /// Schemas of `database` whose `items` table has the column `category` and the index
    /// `items_category_idx` (both must be N).
    async fn check_ddl(&self, database: &str) -> Result<()> {
        let mut db = pg_connect(database).await?;
        let schemas = self.schemas();
        let (columns, indexes): (i64, i64) = sqlx::query_as(
            "SELECT \
               (SELECT count(*) FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid \
                  JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = ANY($1) AND c.relname = 'items' AND a.attname = 'category' \
                   AND NOT a.attisdropped), \
               (SELECT count(*) FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid \
                  JOIN pg_class t ON t.oid = x.indrelid JOIN pg_namespace n ON n.oid = i.relnamespace \
                 WHERE n.nspname = ANY($1) AND i.relname = 'items_category_idx' AND t.relname = 'items' \
                   AND x.indisvalid)",
        )
        .bind(&schemas)
        .fetch_one(&mut db)
        .await?;
        db.close().await?;
        if columns != self.tenants as i64 || indexes != self.tenants as i64 {
            return Err(format!(
                "{database}: {columns} schemas have items.category and {indexes} have items_category_idx, of {}",
                self.tenants
            )
            .into());
        }
        Ok(())
    }

    /// Every schema's history has version 2 applied with V2's checksum.
    async fn check_history(&self, database: &str) -> Result<()> {
        let mut db = pg_connect(database).await?;
        let mut total = 0;
        for chunk in self.schemas().chunks(CHECK_BATCH) {
            let parts: Vec<String> = chunk
                .iter()
                .map(|s| {
                    format!(
                        "SELECT 1 FROM \"{s}\".tenantry_migrations WHERE version = '2' AND state = 'applied' \
                         AND checksum = $1"
                    )
                })
                .collect();
            let sql = format!("SELECT count(*) FROM ({}) r", parts.join(" UNION ALL "));
            let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                .bind(&self.v2_checksum)
                .persistent(false)
                .fetch_one(&mut db)
                .await?;
            total += n;
        }
        db.close().await?;
        if total != self.tenants as i64 {
            return Err(format!("{database}: {total} of {} histories record version 2 as applied", self.tenants).into());
        }
        Ok(())
    }

    /// Before each variant: waits (up to `--wait-idle`) until nothing else keeps the machine
    /// busy, remembers how busy it was, then runs a `CHECKPOINT`.
    async fn settle(&self) -> Result<()> {
        settle(self.wait_idle).await;
        checkpoint().await
    }

    /// Drops every database the bench created and deletes the Redis keys of its prefix.
    async fn destroy(&self) -> Result<()> {
        let mut admin = pg_connect("postgres").await?;
        for db in &self.created {
            exec(&mut admin, format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)")).await?;
        }
        admin.close().await?;
        let deleted = clear_redis(&self.name).await?;
        eprintln!(
            "bench: dropped {} database(s), deleted {deleted} Redis keys of prefix {}",
            self.created.len(),
            self.name
        );
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Measurements

/// One line of the results table.
struct Row {
    label: String,
    per_tenant: String,
    connections: String,
    tenants: usize,
    wall: Duration,
    /// What the row is, for the targets.
    kind: RowKind,
    /// The row applies V2 (compared with the floor); the others read histories only.
    applies: bool,
    /// Busy CPU seconds of the whole machine during the row.
    usage: Usage,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RowKind {
    Floor,
    PsqlPerTenant,
    TenantryFirst,
    TenantrySecond,
    Other,
}

/// Phases and resources of one tenantry run.
struct RunDetail {
    label: String,
    snapshot: Duration,
    skip: Duration,
    start: Duration,
    wall: Duration,
    skipped: usize,
    /// dispatch→start p50/p99 and claim→finish p50/p99 (ms); first run only.
    delays: Option<[i64; 4]>,
    usage: Usage,
}

struct Results {
    /// The busiest the machine was just before a row (CPUs), and the time spent waiting.
    background: (f64, Duration),
    rows: Vec<Row>,
    runs: Vec<RunDetail>,
    history_read: Option<HistoryRead>,
}

/// The bulk history read of the fast path, piece by piece (best of three).
struct HistoryRead {
    /// `read_all_histories`, as `skip_up_to_date` and `plan` call it.
    all: Duration,
    /// Its parts, called directly: connect, `read_histories` over the N schemas, close.
    connect: Duration,
    read: Duration,
    close: Duration,
    /// Connect with `sslmode=disable` (no TLS handshake), for comparison.
    connect_no_tls: Duration,
}

async fn measure(fleet: &Fleet, args: &Args) -> Result<Results> {
    let mut results =
        Results { background: (0.0, Duration::ZERO), rows: Vec::new(), runs: Vec::new(), history_read: None };
    results.rows.push(floor(fleet).await?);
    results.rows.push(psql_per_tenant(fleet).await?);

    let ctx = Context::load(Some(&fleet.config_path(Replica::Tenantry)), &[]).map_err(|f| f.to_string())?;
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
    let worker = ctx.runtime().await.map_err(|f| f.to_string())?;
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(Arc::clone(&worker).run(shutdown.clone()));
    // Let the apalis worker register before the first dispatch.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let bench = Bench { fleet, args, ctx: &ctx, catalog: &catalog, wf: &wf, worker: &worker };
    let outcome = bench.tenantry_runs(&mut results).await;
    shutdown.cancel();
    match tokio::time::timeout(Duration::from_secs(30), handle).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => eprintln!("bench: the worker stopped with an error: {e}"),
        Ok(Err(e)) => eprintln!("bench: the worker panicked: {e}"),
        Err(_) => eprintln!("bench: the worker did not stop within 30 s"),
    }
    worker.databases.close().await;
    outcome?;
    if args.step_only {
        results.rows.push(bench.step_only().await?);
    }
    results.background = background();
    Ok(results)
}

/// Runs `psql` with `args` against `database`; fails with its output unless it exits 0.
async fn psql(database: &str, args: &[&str]) -> Result<()> {
    let out = tokio::process::Command::new("psql")
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", &database_url(database)])
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| format!("cannot run psql ({e}); install the PostgreSQL client"))?;
    if !out.status.success() {
        return Err(format!(
            "psql {args:?} on {database} exited with {}: {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(())
}

/// (a) One psql process and session; per tenant `SET search_path`, then the migration in
/// its own transaction.
async fn floor(fleet: &Fleet) -> Result<Row> {
    let database = fleet.database(Replica::Floor);
    let mut script = String::with_capacity(fleet.tenants * 160);
    for schema in fleet.schemas() {
        let _ = write!(script, "SET search_path TO \"{schema}\";\nBEGIN;\n{V2_SQL}COMMIT;\n");
    }
    let path = fleet.dir.path().join("floor.sql");
    std::fs::write(&path, script)?;
    let path = path.to_str().ok_or("temporary path is not UTF-8")?.to_string();
    fleet.settle().await?;
    let before = Snapshot::of_database(&fleet.name).await?;
    let started = Instant::now();
    psql(&database, &["-f", &path]).await?;
    let wall = started.elapsed();
    let usage = Snapshot::of_database(&fleet.name).await?.since(&before, fleet.tenants);
    fleet.check_ddl(&database).await?;
    let row = Row {
        label: "(a) floor: one `psql` session for all tenants".into(),
        per_tenant: "`SET search_path`; `BEGIN`; the V2 file; `COMMIT`".into(),
        connections: "1".into(),
        tenants: fleet.tenants,
        wall,
        kind: RowKind::Floor,
        applies: true,
        usage,
    };
    eprintln!("bench: {}: {:.2?}", row.label, wall);
    Ok(row)
}

/// (b) One `psql -c` process per tenant, one after the other.
async fn psql_per_tenant(fleet: &Fleet) -> Result<Row> {
    let database = fleet.database(Replica::PsqlPerTenant);
    let commands: Vec<String> =
        fleet.schemas().iter().map(|schema| format!("SET search_path TO \"{schema}\";\n{V2_SQL}")).collect();
    fleet.settle().await?;
    let before = Snapshot::of_database(&fleet.name).await?;
    let started = Instant::now();
    for command in &commands {
        psql(&database, &["-c", command]).await?;
    }
    let wall = started.elapsed();
    let usage = Snapshot::of_database(&fleet.name).await?.since(&before, fleet.tenants);
    fleet.check_ddl(&database).await?;
    let row = Row {
        label: "(b) one `psql -c` process per tenant, sequential".into(),
        per_tenant: "process start + connection; `SET search_path` and the V2 file in one implicit transaction".into(),
        connections: "1 at a time".into(),
        tenants: fleet.tenants,
        wall,
        kind: RowKind::PsqlPerTenant,
        applies: true,
        usage,
    };
    eprintln!("bench: {}: {:.2?}", row.label, wall);
    Ok(row)
}

struct Bench<'a> {
    fleet: &'a Fleet,
    args: &'a Args,
    ctx: &'a Context,
    catalog: &'a Catalog,
    wf: &'a Workflow,
    worker: &'a Arc<Runtime>,
}

impl Bench<'_> {
    async fn tenantry_runs(&self, results: &mut Results) -> Result<()> {
        let database = self.fleet.database(Replica::Tenantry);
        let c = self.args.concurrency;

        // First run: V2 pending everywhere.
        self.fleet.settle().await?;
        let (first, checkpoints) = self.run("tenantry, first run: applies V2", false).await?;
        for (tenant, cp) in &checkpoints {
            let changed: Vec<&serde_json::Value> =
                cp.outputs.values().filter_map(|o| o["changed"].as_array()).flatten().collect();
            if changed.len() != 1 || changed[0] != self.fleet.v2_change.as_str() {
                return Err(format!(
                    "first run: tenant {tenant} should have applied exactly {}: outputs {:?}",
                    self.fleet.v2_change, cp.outputs
                )
                .into());
            }
        }
        self.fleet.check_history(&database).await?;
        self.fleet.check_ddl(&database).await?;
        results.rows.push(Row {
            label: first.label.clone(),
            per_tenant: "dispatch, claim + lease, `migrate` step (advisory lock, history read, transaction with V2 \
                         and its history row), finish, advance"
                .into(),
            connections: c.to_string(),
            tenants: self.fleet.tenants,
            wall: first.wall,
            kind: RowKind::TenantryFirst,
            applies: true,
            usage: first.usage.clone(),
        });
        results.runs.push(first);

        // Plan over the migrated fleet: the same bulk history read as the fast path.
        self.fleet.settle().await?;
        let before = Snapshot::of_database(&self.fleet.name).await?;
        let started = Instant::now();
        let plan = workflow::plan::build(self.wf, self.catalog, &self.ctx.config, &[]).await;
        let wall = started.elapsed();
        let usage = Snapshot::of_database(&self.fleet.name).await?.since(&before, self.fleet.tenants);
        let mut planned = 0;
        for p in plan.waves.iter().flat_map(|w| &w.plans) {
            for s in &p.steps {
                match &s.action {
                    workflow::plan::StepAction::Migrate { status, .. }
                        if status.pending.is_empty() && status.problems.is_empty() && status.applied == 2 => {}
                    other => {
                        return Err(format!("plan: tenant {} should be up to date: {other:?}", p.tenant).into());
                    }
                }
                planned += 1;
            }
        }
        if planned != self.fleet.tenants || plan.blocked() != 0 {
            return Err(format!(
                "plan: {planned} migrate steps, {} blocked, for {}",
                plan.blocked(),
                self.fleet.tenants
            )
            .into());
        }
        eprintln!("bench: plan: {planned} tenants up to date, read in {wall:.2?}");
        results.rows.push(Row {
            label: "`plan` (`workflow::plan::build`), nothing pending".into(),
            per_tenant: "bulk history read (a few UNION queries per database) and compare".into(),
            connections: "1".into(),
            tenants: planned,
            wall,
            kind: RowKind::Other,
            applies: false,
            usage,
        });

        // Second run: nothing pending.
        self.fleet.settle().await?;
        let (second, checkpoints) = self.run("tenantry, second run: nothing pending", true).await?;
        for (tenant, cp) in &checkpoints {
            if cp.outputs.get("run").is_none_or(|o| o["up_to_date"] != true) {
                return Err(format!("second run: tenant {tenant} was not recorded up to date: {:?}", cp.outputs).into());
            }
        }
        results.rows.push(Row {
            label: second.label.clone(),
            per_tenant: "bulk history read; recorded done at creation, nothing dispatched".into(),
            connections: "1".into(),
            tenants: self.fleet.tenants,
            wall: second.wall,
            kind: RowKind::TenantrySecond,
            applies: false,
            usage: second.usage.clone(),
        });
        results.runs.push(second);
        results.history_read = Some(self.history_read().await?);

        // The same through the CLI: process start, config, catalog, run, --wait.
        self.fleet.settle().await?;
        let before = Snapshot::of_database(&self.fleet.name).await?;
        let started = Instant::now();
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_tenantry"))
            .arg("--config")
            .arg(self.fleet.config_path(Replica::Tenantry))
            .args(["run", WORKFLOW, "--wait"])
            .stdin(std::process::Stdio::null())
            .output()
            .await?;
        let wall = started.elapsed();
        let usage = Snapshot::of_database(&self.fleet.name).await?.since(&before, self.fleet.tenants);
        if !out.status.success() {
            return Err(format!(
                "`tenantry run {WORKFLOW} --wait` exited with {}: {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
            .into());
        }
        eprintln!("bench: `tenantry run {WORKFLOW} --wait`, nothing pending: {wall:.2?}");
        results.rows.push(Row {
            label: format!("`tenantry run {WORKFLOW} --wait` ({} binary), nothing pending", profile()),
            per_tenant: "the second run through the CLI: process start, config + catalog of N tenants, run, wait"
                .into(),
            connections: "1".into(),
            tenants: self.fleet.tenants,
            wall,
            kind: RowKind::Other,
            applies: false,
            usage,
        });
        Ok(())
    }

    /// Times the fast path's history read and its parts (each the best of three).
    async fn history_read(&self) -> Result<HistoryRead> {
        use tenantry::engine::postgres;
        let database = self.fleet.database(Replica::Tenantry);
        let schemas = self.fleet.schemas();
        let url = self.catalog.hosts["main"].url.with_database(&database);
        let groups = BTreeMap::from([(("main".to_string(), database.clone()), schemas.iter().cloned().collect())]);
        let best = |a: &mut Duration, d: Duration| *a = (*a).min(d);
        let mut out = HistoryRead {
            all: Duration::MAX,
            connect: Duration::MAX,
            read: Duration::MAX,
            close: Duration::MAX,
            connect_no_tls: Duration::MAX,
        };
        for _ in 0..3 {
            let started = Instant::now();
            let histories =
                tenantry::steps::migrate::read_all_histories(self.catalog, &self.ctx.config, groups.clone()).await;
            best(&mut out.all, started.elapsed());
            if histories.len() != schemas.len() || histories.values().any(|h| h.is_err()) {
                return Err(
                    format!("read_all_histories: {} results for {} schemas", histories.len(), schemas.len()).into()
                );
            }
            let started = Instant::now();
            let mut conn = postgres::connect(&url).await?;
            best(&mut out.connect, started.elapsed());
            let started = Instant::now();
            let read = tenantry::steps::migrate::read_histories(&mut conn, &schemas).await?;
            best(&mut out.read, started.elapsed());
            if read.len() != schemas.len() {
                return Err(format!("read_histories: {} histories for {} schemas", read.len(), schemas.len()).into());
            }
            let started = Instant::now();
            postgres::close(conn).await;
            best(&mut out.close, started.elapsed());
            let mut plain = url.url().clone();
            plain.query_pairs_mut().append_pair("sslmode", "disable");
            let plain = tenantry::secret::SecretUrl::parse(plain.as_str())?;
            let started = Instant::now();
            let conn = postgres::connect(&plain).await?;
            best(&mut out.connect_no_tls, started.elapsed());
            postgres::close(conn).await;
        }
        eprintln!(
            "bench: history read of {} schemas: read_all_histories {:.2?}; connect {:.2?}, read_histories {:.2?}, close {:.2?}; connect with sslmode=disable {:.2?}",
            schemas.len(),
            out.all,
            out.connect,
            out.read,
            out.close,
            out.connect_no_tls
        );
        Ok(out)
    }

    /// One run, started as `tenantry run` starts one, followed until terminal and checked.
    async fn run(&self, label: &str, nothing_pending: bool) -> Result<(RunDetail, BTreeMap<String, Checkpoint>)> {
        let before = Snapshot::of_database(&self.fleet.name).await?;
        let started = Instant::now();
        let mut spec = launch::snapshot(self.wf, self.catalog, &self.ctx.config, &[]);
        let snapshot = started.elapsed();
        let skipped = launch::skip_up_to_date(&mut spec, self.catalog, &self.ctx.config).await;
        let skip = started.elapsed();
        let n = spec.tenants.len();
        if n != self.fleet.tenants {
            return Err(format!("{label}: the run selects {n} tenants, the fleet has {}", self.fleet.tenants).into());
        }
        let expected_skipped = if nothing_pending { n } else { 0 };
        if skipped != expected_skipped {
            return Err(
                format!("{label}: {skipped} tenants up to date at creation, expected {expected_skipped}").into()
            );
        }
        let store = &self.worker.store;
        let id = self.worker.start(spec, &Trigger::Operator).await?;
        let start = started.elapsed();
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
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let wall = started.elapsed();
        let usage = Snapshot::of_database(&self.fleet.name).await?.since(&before, n);
        if record.state != RunState::Succeeded || record.succeeded != n as u64 {
            let checkpoints = store.checkpoints(&id).await.unwrap_or_default();
            let example = checkpoints.iter().find(|(_, c)| c.state != TenantState::Succeeded);
            return Err(format!(
                "{label}: run {id} ended {} ({}), {} of {n} tenants succeeded, {} failed; e.g. {example:?}",
                record.state,
                record.reason.unwrap_or_default(),
                record.succeeded,
                record.failed
            )
            .into());
        }
        let checkpoints = store.checkpoints(&id).await?;
        if checkpoints.len() != n {
            return Err(format!("{label}: {} checkpoints for {n} tenants", checkpoints.len()).into());
        }
        let mut dispatch_to_start = Vec::new();
        let mut claim_to_finish = Vec::new();
        for (tenant, cp) in &checkpoints {
            if cp.state != TenantState::Succeeded {
                return Err(format!("{label}: tenant {tenant} is {:?} in a succeeded run", cp.state).into());
            }
            if let (Some(queued), Some(claimed), Some(finished)) = (cp.queued_ms, cp.claimed_ms, cp.finished_ms) {
                dispatch_to_start.push(claimed - queued);
                claim_to_finish.push(finished - claimed);
            }
        }
        if !nothing_pending && dispatch_to_start.len() != n {
            return Err(format!(
                "{label}: only {} of {n} checkpoints have queued/claimed/finished times",
                dispatch_to_start.len()
            )
            .into());
        }
        dispatch_to_start.sort_unstable();
        claim_to_finish.sort_unstable();
        let delays = (!dispatch_to_start.is_empty()).then(|| {
            [
                percentile(&dispatch_to_start, 50.0),
                percentile(&dispatch_to_start, 99.0),
                percentile(&claim_to_finish, 50.0),
                percentile(&claim_to_finish, 99.0),
            ]
        });
        eprintln!(
            "bench: {label}: run {id} succeeded for {n} tenants in {wall:.2?} (snapshot {snapshot:.2?}, \
             skip_up_to_date {:.2?}, start {:.2?})",
            skip - snapshot,
            start - skip
        );
        eprintln!("{}", usage.describe(wall, &COLUMNS));
        let detail = RunDetail {
            label: label.to_string(),
            snapshot,
            skip: skip - snapshot,
            start: start - skip,
            wall,
            skipped,
            delays,
            usage,
        };
        Ok((detail, checkpoints))
    }

    /// The `migrate` step itself (`steps::execute`) from C tasks over a pool of C, on its
    /// own copy of the fleet, without run store, queue or checkpoints.
    async fn step_only(&self) -> Result<Row> {
        let ctx = Context::load(Some(&self.fleet.config_path(Replica::StepOnly)), &[]).map_err(|f| f.to_string())?;
        let catalog = ctx.checked_catalog().await.map_err(|f| f.to_string())?;
        let spec = Arc::new(launch::snapshot(self.wf, &catalog, &ctx.config, &[]));
        let c = &ctx.config.config;
        let dir = c.services[SERVICE].migrations.as_ref().ok_or("the service has no migrations directory")?;
        let set = Arc::new(MigrationSet::load(&ctx.config.resolve_path(dir))?);
        let databases = Arc::new(Databases::new(c.hosts.clone(), self.args.concurrency, 256));
        let tenants: Arc<Vec<String>> = Arc::new(spec.tenants.keys().cloned().collect());
        let base_dir = Arc::new(ctx.config.base_dir.clone());
        let services = Arc::new(c.services.clone());
        let database = self.fleet.database(Replica::StepOnly);
        // Open the connections before the clock starts.
        let pool = databases.postgres("main", &database)?;
        {
            let mut held = Vec::new();
            for _ in 0..self.args.concurrency {
                held.push(pool.acquire().await?);
            }
        }
        self.fleet.settle().await?;
        let next = Arc::new(AtomicUsize::new(0));
        let before = Snapshot::of_database(&self.fleet.name).await?;
        let started = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..self.args.concurrency {
            let (spec, set, databases, tenants, base_dir, services, next) = (
                spec.clone(),
                set.clone(),
                databases.clone(),
                tenants.clone(),
                base_dir.clone(),
                services.clone(),
                next.clone(),
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
                        run: &spec.id,
                        root_run: None,
                        tenant,
                        labels: &snapshot.labels,
                        unit: &label,
                        step,
                        placement: &snapshot.placements[&unit.service],
                        databases: &databases,
                        base_dir: &base_dir,
                        migrations: Some(&set),
                        service: services.get(&unit.service),
                        cancel: &tokio_util::sync::CancellationToken::new(),
                        fence: &tenantry::runtime::fence::Fence::none(&spec.id, tenant),
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
        let wall = started.elapsed();
        let usage = Snapshot::of_database(&self.fleet.name).await?.since(&before, self.fleet.tenants);
        databases.close().await;
        if done != self.fleet.tenants {
            return Err(format!("step only: {done} steps for {} tenants", self.fleet.tenants).into());
        }
        self.fleet.check_history(&database).await?;
        self.fleet.check_ddl(&database).await?;
        let row = Row {
            label: "`migrate` step alone (`steps::execute`), no Redis".into(),
            per_tenant: "the step's lock, history read, transaction with V2 and its history row; nothing else".into(),
            connections: self.args.concurrency.to_string(),
            tenants: done,
            wall,
            kind: RowKind::Other,
            applies: true,
            usage,
        };
        eprintln!("bench: {}: {wall:.2?}", row.label);
        Ok(row)
    }
}

// ---------------------------------------------------------------------------------------------
// Where the time goes: CPU per process group (support's snapshots), Redis commands

/// Other processes using this much CPU during a row are named in the report.
const NOISE_CPU_SECONDS: f64 = 0.2;

/// The CPU groups of a variant's own work: this process (the worker runtime, `psql` and the
/// CLI as its children), PostgreSQL for the bench's databases, Redis; the rest is `other`.
const COLUMNS: [&str; 3] = ["bench", "postgres", "redis"];

/// `bench / PostgreSQL / Redis / other` CPU seconds, for a table cell.
fn cells(u: &Usage) -> String {
    format!("{:.2} / {:.2} / {:.2} / {:.2}", u.group("bench"), u.group("postgres"), u.group("redis"), other(u))
}

/// Busy time of the machine not used by the bench, PostgreSQL (for the bench) or Redis.
fn other(u: &Usage) -> f64 {
    u.other_processes(&COLUMNS) + u.unattributed()
}

// ---------------------------------------------------------------------------------------------
// Report

fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms >= 1000.0 { format!("{:.2} s", ms / 1000.0) } else { format!("{ms:.0} ms") }
}

async fn render(args: &Args, results: &Results) -> String {
    let rows = &results.rows;
    let date = chrono::Utc::now().format("%Y-%m-%d %H:%M UTC");
    let c = args.concurrency;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "### Migration rollout: a column and an index on a {}-row table, {} schema tenants\n",
        args.rows, args.tenants
    );
    let _ = writeln!(
        out,
        "Measured {date}{} with `cargo bench --bench migrate -- {}` ({} build).\n",
        commit().map(|c| format!(" at commit `{c}`")).unwrap_or_default(),
        args.command_line(),
        profile()
    );
    let _ = writeln!(out, "- Machine: {}", machine().await);
    let _ = writeln!(
        out,
        "- Fleet: {n} schemas `tenant_tNNNN` in one database, each with `items (id int primary key, name text, \
         created_at timestamptz default now())` holding {r} rows and V1 recorded in its `tenantry_migrations`; every \
         variant gets its own copy of that database (`CREATE DATABASE … TEMPLATE`), and a `CHECKPOINT` before it. \
         The migration, `V2__items_category.sql`: `ALTER TABLE items ADD COLUMN category text; CREATE INDEX \
         items_category_idx ON items (category);`.",
        n = args.tenants,
        r = args.rows
    );
    let _ = writeln!(
        out,
        "- tenantry: run concurrency {c}, per-host limit {c}, `worker_concurrency` {c}, PostgreSQL pool {c}; one \
         worker runtime in the bench process, built as `tenantry worker` builds it and started before the clock; \
         lease, sweep and queue settings at their defaults. A run's time is from `launch::snapshot` (+ \
         `skip_up_to_date` + `Runtime::start`, as `tenantry run` does) until the bench saw the run terminal, so \
         it includes the dispatch of every tenant through Redis, claims, leases and checkpoints. Each run was \
         checked: succeeded, every checkpoint as expected, version 2 `applied` with V2's checksum in every \
         schema's history, the column and the index in every schema."
    );
    let _ = writeln!(
        out,
        "- Floor and (b): `psql -X -q -v ON_ERROR_STOP=1`, one transaction per tenant, wall time of the process(es); \
         they write no history row and take no lock.\n\
         - CPU: seconds used during the row (from /proc; {:.0} CPUs = {0:.0} CPU-seconds per second of wall time) by \
         the bench process with its children (the tenantry worker, `psql`, the CLI), PostgreSQL (with ended backends), \
         Redis, and anything else on the machine (`other`: the rest of the machine's busy time, e.g. the kernel or \
         unrelated processes). Before each row the bench waited until other processes kept less than {IDLE_CPUS} \
         CPUs busy (at most {:.2} CPUs were busy just before a row; waited {:.0} s in all).\n",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        results.background.0,
        results.background.1.as_secs_f64(),
    );
    let floor = rows.iter().find(|r| r.kind == RowKind::Floor).map(|r| r.wall);
    let per_tenant = rows.iter().find(|r| r.kind == RowKind::PsqlPerTenant).map(|r| r.wall);
    let _ = writeln!(
        out,
        "| variant | per tenant | connections | wall time | tenants/s | vs floor | CPU s: bench (+ children) / \
         PostgreSQL / Redis / other |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|");
    for r in rows {
        let ratio = match floor {
            Some(f) if r.applies => format!("{:.2}×", r.wall.as_secs_f64() / f.as_secs_f64()),
            _ => "–".to_string(),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | **{}** | {:.0} | {} | {} |",
            r.label,
            r.per_tenant,
            r.connections,
            ms(r.wall),
            r.tenants as f64 / r.wall.as_secs_f64(),
            ratio,
            cells(&r.usage)
        );
    }
    let noisy: Vec<String> = rows
        .iter()
        .filter_map(|r| {
            let others = r.usage.others(NOISE_CPU_SECONDS, &COLUMNS);
            (!others.is_empty()).then(|| {
                let list: Vec<String> = others.iter().take(5).map(|(g, s)| format!("`{g}` {s:.2} s")).collect();
                format!("{}: {}", r.label, list.join(", "))
            })
        })
        .collect();
    if noisy.is_empty() {
        let _ = writeln!(out, "\nNo other process used {NOISE_CPU_SECONDS} CPU-seconds or more during a row.");
    } else {
        let _ = writeln!(
            out,
            "\nOther processes that used {NOISE_CPU_SECONDS} CPU-seconds or more during a row (the kernel's `kworker` \
             threads do the I/O of commits and checkpoints): {}.",
            noisy.join("; ")
        );
    }
    if !results.runs.is_empty() {
        let _ = writeln!(out, "\nThe tenantry runs, phase by phase, and where their CPU went (from /proc):\n");
        let _ = writeln!(
            out,
            "| run | snapshot | `skip_up_to_date` (history read) | `start` (create + first dispatch) | until terminal | \
             dispatch→start p50 / p99 | claim→finish p50 / p99 | CPU per tenant: tenantry / PostgreSQL / Redis | \
             Redis scripts / tenant |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        for run in &results.runs {
            let u = &run.usage;
            let n = u.tenants.max(1) as f64;
            let (d, f) = match run.delays {
                Some([d50, d99, f50, f99]) => (format!("{d50} / {d99} ms"), format!("{f50} / {f99} ms")),
                None => ("–".into(), "–".into()),
            };
            let _ = writeln!(
                out,
                "| {}{} | {} | {} | {} | {} | {d} | {f} | {:.0} / {:.0} / {:.0} µs | {:.2} |",
                run.label,
                if run.skipped > 0 { format!(" ({} tenants skipped at creation)", run.skipped) } else { String::new() },
                ms(run.snapshot),
                ms(run.skip),
                ms(run.start),
                ms(run.wall),
                u.group("bench") * 1e6 / n,
                u.group("postgres") * 1e6 / n,
                u.group("redis") * 1e6 / n,
                u.scripts() as f64 / n,
            );
        }
    }
    if let Some(h) = &results.history_read {
        let _ = writeln!(
            out,
            "\nThe bulk history read alone (best of three, N = {}): `migrate::read_all_histories` {}; its parts called \
             directly: connect {}, `read_histories` over the N schemas {}, close {} (connect with `sslmode=disable`: {}).",
            args.tenants,
            ms(h.all),
            ms(h.connect),
            ms(h.read),
            ms(h.close),
            ms(h.connect_no_tls)
        );
    }
    let first = rows.iter().find(|r| r.kind == RowKind::TenantryFirst).map(|r| r.wall);
    let second = rows.iter().find(|r| r.kind == RowKind::TenantrySecond).map(|r| r.wall);
    let verdict = |ok: bool| if ok { "met" } else { "not met" };
    let _ = writeln!(out, "\nTargets (issue 4), for {} tenants:\n", args.tenants);
    if let (Some(first), Some(floor)) = (first, floor) {
        let ratio = first.as_secs_f64() / floor.as_secs_f64();
        let _ = writeln!(
            out,
            "- tenantry ≤ 2× the floor: {ratio:.2}× ({} vs {}): **{}**",
            ms(first),
            ms(floor),
            verdict(ratio <= 2.0)
        );
    }
    if let (Some(first), Some(per_tenant)) = (first, per_tenant) {
        let speedup = per_tenant.as_secs_f64() / first.as_secs_f64();
        let _ = writeln!(
            out,
            "- tenantry ≥ 5× faster than one `psql` per tenant: {speedup:.1}× ({} vs {}): **{}**",
            ms(first),
            ms(per_tenant),
            verdict(speedup >= 5.0)
        );
    }
    if let Some(second) = second {
        let _ = writeln!(
            out,
            "- a second run with nothing pending ≤ 2 s: {}: **{}**",
            ms(second),
            verdict(second <= Duration::from_secs(2))
        );
    }
    out
}

/// The build profile of this bench (and of the `tenantry` binary cargo built with it).
fn profile() -> &'static str {
    if cfg!(debug_assertions) { "debug" } else { "release" }
}
