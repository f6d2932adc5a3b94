//! Maintenance steps against what an operator would run by hand, each tenantry row next to a baseline measured in the same run: `purge` of a 1,000,000-row table next to one `DELETE`, `analyze_indexes` over 1,000 schema tenants next to the same per-schema catalog query run 1,000 times, and `vacuum` of 100 database tenants next to `vacuumdb`; prints a Markdown table and writes it into docs/benchmarks.md (between the maintenance markers).
//!
//! Run it with `deploy/local/bench.sh maintenance` (services, release build), or directly:
//!
//! ```text
//! cargo bench --bench maintenance -- [--rows N] [--batch-size B] [--schemas S] [--databases D]
//!                                    [--concurrency C] [--timeout SECS] [--wait-idle SECS] [--no-docs]
//! ```
//!
//! Needs PostgreSQL and Redis of `deploy/local/services.sh` (`TENANTRY_TEST_PG_URL`,
//! `TENANTRY_TEST_REDIS_URL`) and `vacuumdb` on the PATH.
//!
//! Setup (untimed), all under the bench's own name (`tenantry_bmnt_PID_MILLIS`):
//!
//! - **purge**: a template database with `events (id bigserial PRIMARY KEY, at timestamptz
//!   NOT NULL, body text)` and an index on `at`, holding N rows (default 1,000,000) in `id`
//!   order: the first 30 % with `at` between 100 and 75 days ago, the rest between 50 and 10
//!   days ago, so the cutoff (`older_than = "70d"`) falls in a 20-day gap and exactly 30 %
//!   are expired however long the bench takes; frozen and analysed. Two copies (`CREATE
//!   DATABASE … TEMPLATE`, file copy): one for the baseline, one for the tenant `purge`.
//! - **analyze_indexes**: one database with S schemas `t_sNNNN` (default 1,000), each with
//!   `accounts` (primary key, a unique email), `orders` (primary key, an index on `account`
//!   and a duplicate of it, unused indexes on `status` and `created_at`) and `events`
//!   (primary key, an index on `at`), 20 rows each; one of the two `account` indexes and the
//!   `at` index are scanned once per schema, then the database is analysed. Every schema must
//!   come out with 9 indexes: 1 duplicate and 2 unused.
//! - **vacuum**: D databases (default 100, tenants `vNNN`) copied from a template with
//!   `items (id bigint PRIMARY KEY, payload text, updated_at timestamptz)` and
//!   `autovacuum_enabled = false`. Before each vacuum row every `items` is rebuilt the same
//!   way: `TRUNCATE`, 20,000 rows, `VACUUM (FREEZE)`, then 25 % deleted (`id % 4 = 0`), and
//!   the bench waits until every database's statistics show the 5,000 dead tuples. So each
//!   row starts from the same table, the same dead tuples and the same unset hint bits; a row
//!   does not inherit what the row before it cleaned.
//!
//! One config (static catalog, one host; service `db` with `database` isolation for the purge
//! and vacuum tenants, service `idx` with `schema` isolation for the index tenants; its own
//! Redis prefix; `limits.max_pools` 2 × C so that idle pools to 100 databases do not exhaust
//! `max_connections`) and three workflows, each one step. Runs are created through the
//! library as `tenantry run` creates one (`launch::snapshot`, `skip_up_to_date`,
//! `apply_selections`, `Runtime::start`) and executed by one `tenantry worker` process
//! (release binary, started before the first row and kept for all three), timed from the
//! snapshot until the bench saw the run terminal: they include dispatch, claims, leases and
//! checkpoints in Redis. The rows, in this order, each after `CHECKPOINT` and after the
//! machine is idle:
//!
//! 1. `baseline: one DELETE`: `DELETE FROM events WHERE at < now() - interval '70 days'` on
//!    the baseline copy (`VACUUM (ANALYZE)` of it first), one sqlx connection opened before
//!    the clock. Checked: it deleted exactly 30 % of N.
//! 2. `tenantry purge`: a run over the tenant `purge` (`VACUUM (ANALYZE)` of its copy first)
//!    with `table = "events"`, `column = "at"`, `older_than = "70d"`, `batch_size` B
//!    (default 10,000: one batch is a fraction of a second here, far under the 1 s a batch may
//!    hold its locks), `pause = "0s"` (the default pause of 100 ms between batches is a
//!    throttle, not work; with it the run would be slower by design). Checked: the run
//!    succeeded, the step deleted exactly 30 % of N and reports `complete`, and the table
//!    holds the other 70 %. Its `max_batch_ms` is reported.
//! 3. `baseline: per-schema catalog query`: one sqlx connection running, for each of the S
//!    schemas, the two queries `analyze_indexes` runs for a tenant when nothing is shared: the
//!    statistics' age and `src/steps/analyze_indexes.sql` filtered to that schema, then
//!    `analyze_indexes::findings` of the result. Checked: every schema has the expected
//!    findings.
//! 4. `tenantry analyze_indexes`: a run over the S schema tenants with run and per-host
//!    concurrency 8: one catalog read per database, shared by the tenants that start within a
//!    minute on the worker (`engine::shared_reads`). Checked: every tenant succeeded with the
//!    expected indexes and findings. The worker's pool per database has as many connections
//!    as the host's `max_concurrency` (8, the run's per-host limit too, as by default).
//! 5. `diagnostic`: the same run with concurrency 7, after the shared read of row 4 expired
//!    (the bench sleeps 62 s): the step holds its session while the shared read takes a
//!    second connection from the same pool, so with as many tenants in flight as the pool
//!    has connections, the read can wait for the pool's `acquire_timeout` (30 s). This row
//!    shows the run without that wait; the target is judged on row 4.
//! 6. `vacuumdb --analyze-only -j2` per database, one database after the other: the issue's
//!    command, for reference only. It does not vacuum (the dead tuples stay) and, with no
//!    table named, it analyses the system catalogs too; `-j2` splits the tables of one
//!    database over two connections.
//! 7. `baseline: vacuumdb --analyze --table=items`, C databases at once (default 2, as
//!    `-j2`): the same work as the step, `VACUUM (ANALYZE)` of the one table with dead tuples,
//!    with the same parallelism (across databases, since each has one table). Checked: every
//!    database has no dead tuples left.
//! 8. `tenantry vacuum`: a run over the D tenants with run and per-host concurrency C: per
//!    tenant the statistics, the database's transaction-id age, and `VACUUM (ANALYZE)` of
//!    `items` under `lock_timeout`. Checked: every tenant vacuumed `public.items` and nothing
//!    else, skipped and failed nothing, and has no dead tuples left.
//!
//! Reported per row: wall time, the ratio to its baseline, the target of the issue and
//! whether it is met (reported, not enforced: purge ≤ 2× the `DELETE` with no batch over
//! 1 s, `analyze_indexes` of 1,000 schemas ≤ 10 s; the issue sets none for vacuum), the
//! purge's `max_batch_ms`, and CPU seconds per process group during the row (from /proc;
//! ended processes in their parent, so `vacuumdb` is in the bench's share and ended
//! backends in PostgreSQL's; backends of other databases apart). The bench exits 1 when a
//! run or a check fails. Every database it made and the Redis keys of its prefix are
//! removed at the end, also after a failure (the databases eight at a time: each `DROP
//! DATABASE` waits for a checkpoint, and concurrent ones share it).

mod support;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use sqlx::Connection;

use support::{
    IDLE_CPUS, Result, Snapshot, Usage, Workers, background, clear_redis, commit, exec, machine, percentile,
    pg_connect, pg_url, publish, redis_url, settle,
};
use tenantry::catalog::Catalog;
use tenantry::cli::Context;
use tenantry::runtime::launch;
use tenantry::runtime::model::{RunState, TenantState, Trigger};
use tenantry::runtime::worker::Runtime;
use tenantry::secret::SecretUrl;
use tenantry::steps::analyze_indexes::{IndexInfo, findings};
use tenantry::workflow::{self, CheckContext, Workflow};

const USAGE: &str = "usage: cargo bench --bench maintenance -- [--rows N] [--batch-size B] [--schemas S] \
                     [--databases D] [--concurrency C] [--timeout SECS] [--wait-idle SECS] [--no-docs]

  --rows N          rows of the purged table, 30 % of them expired (default 1000000)
  --batch-size B    the purge step's batch_size (default 10000)
  --schemas S       schema tenants of the analyze_indexes rows (default 1000)
  --databases D     database tenants of the vacuum rows (default 100)
  --concurrency C   vacuum: the run's concurrency and vacuumdb processes at once (default 2, as -j2)
  --timeout SECS    limit per tenantry run (default 1800)
  --wait-idle SECS  before each row, wait up to this long until other processes keep < 0.2 CPUs busy
                    (default 120; 0: do not wait)
  --no-docs         print the table only; leave docs/benchmarks.md alone";

/// Above the table when docs/benchmarks.md has no maintenance section yet.
const HEADING: &str = "## Maintenance steps: purge, index analysis, vacuum\n\n`deploy/local/bench.sh maintenance` \
                       (runs `cargo bench --bench maintenance`, `benches/maintenance.rs`: arguments pass through; \
                       see its header for what is measured and how; PostgreSQL and Redis from \
                       `deploy/local/services.sh`). The table is regenerated on every run.";
/// The process groups the CPU cells name; the rest is "other".
const COLUMNS: [&str; 4] = ["tenantry", "bench", "postgres", "redis"];
/// Targets of the issue.
const PURGE_MAX_RATIO: f64 = 2.0;
const PURGE_MAX_BATCH_MS: u64 = 1000;
const INDEXES_MAX: Duration = Duration::from_secs(10);
/// The retention of the purge, and the gap around its cutoff (see the header).
const OLDER_THAN_DAYS: i64 = 70;
/// Run and per-host concurrency of the analyze_indexes run (at C ≤ 8 also the worker's pool
/// size per database: the host's `max_concurrency`).
const INDEX_CONCURRENCY: u32 = 8;
/// How long `analyze_indexes` shares one catalog read of a database (its `CATALOG_TTL`),
/// with a margin: the diagnostic run waits this long so that it reads the catalog itself.
const SHARED_READ_TTL: Duration = Duration::from_secs(62);
/// Indexes per schema, and the findings each must have.
const INDEXES_PER_SCHEMA: usize = 9;
const EXPECTED_FINDINGS: [(&str, usize); 2] = [("duplicate", 1), ("unused", 2)];
/// Rows of each vacuum tenant's `items`; every fourth is deleted before a vacuum row.
const VACUUM_ROWS: i64 = 20_000;
const VACUUM_DEAD: i64 = VACUUM_ROWS / 4;
/// Databases dropped at once at the end.
const DROP_CONCURRENCY: usize = 8;

#[derive(Debug, Clone)]
struct Args {
    rows: u64,
    batch_size: u32,
    schemas: usize,
    databases: usize,
    concurrency: u32,
    timeout: Duration,
    wait_idle: Duration,
    docs: bool,
}

impl Args {
    fn command_line(&self) -> String {
        format!(
            "--rows {} --batch-size {} --schemas {} --databases {} --concurrency {}",
            self.rows, self.batch_size, self.schemas, self.databases, self.concurrency
        )
    }

    /// Rows of `events` older than the cutoff.
    fn expired(&self) -> i64 {
        (self.rows * 3 / 10) as i64
    }
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        rows: 1_000_000,
        batch_size: 10_000,
        schemas: 1000,
        databases: 100,
        concurrency: 2,
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
            "--rows" => args.rows = value("--rows", false)?,
            "--batch-size" => args.batch_size = value("--batch-size", false)? as u32,
            "--schemas" => args.schemas = value("--schemas", false)? as usize,
            "--databases" => args.databases = value("--databases", false)? as usize,
            "--concurrency" => args.concurrency = value("--concurrency", false)? as u32,
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
    if args.rows < 10 {
        return Err("--rows: at least 10".into());
    }
    if args.schemas > 99_999 {
        return Err("--schemas: at most 99999".into());
    }
    if args.databases > 999 {
        return Err("--databases: at most 999".into());
    }
    Ok(args)
}

fn main() -> ExitCode {
    support::main(parse_args(), bench)
}

async fn bench(args: Args) -> Result<()> {
    let name = format!("tenantry_bmnt_{}_{}", std::process::id(), chrono::Utc::now().timestamp_millis());
    eprintln!(
        "bench: purge of {} rows, analyze_indexes over {} schemas, vacuum of {} databases; databases and Redis \
         prefix {name}",
        args.rows, args.schemas, args.databases
    );
    let fleet = Fleet::new(&name, &args)?;
    let measured = match fleet.setup(&args).await {
        Ok(took) => measure(&fleet, &args).await.map(|rows| (took, rows)),
        Err(e) => Err(e),
    };
    let cleaned = fleet.destroy().await;
    let (took, rows) = measured?;
    cleaned?;
    let section = render(&args, took, &rows).await;
    publish("maintenance", HEADING, &section, args.docs)
}

// ---------------------------------------------------------------------------------------------
// The fleet: databases, a config and three workflows

struct Fleet {
    name: String,
    /// Index tenants (`sNNNN`, schema `t_sNNNN`) and vacuum tenants (`vNNN`).
    schemas: Vec<String>,
    databases: Vec<String>,
    dir: tempfile::TempDir,
}

/// The tenant of the purge rows; its database is `NAME_purge`.
const PURGE_TENANT: &str = "purge";

impl Fleet {
    fn new(name: &str, args: &Args) -> Result<Fleet> {
        let width = args.schemas.saturating_sub(1).to_string().len().max(4);
        Ok(Fleet {
            name: name.to_string(),
            schemas: (0..args.schemas).map(|i| format!("s{i:0width$}")).collect(),
            databases: (0..args.databases).map(|i| format!("v{i:03}")).collect(),
            dir: tempfile::tempdir()?,
        })
    }

    /// The database of a tenant of service `db`.
    fn database(&self, tenant: &str) -> String {
        format!("{}_{tenant}", self.name)
    }

    fn purge_template(&self) -> String {
        format!("{}_purge_template", self.name)
    }

    fn purge_baseline(&self) -> String {
        format!("{}_purge_baseline", self.name)
    }

    fn index_database(&self) -> String {
        format!("{}_indexes", self.name)
    }

    fn vacuum_template(&self) -> String {
        format!("{}_vacuum_template", self.name)
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("tenantry.toml")
    }

    /// Databases, config and workflows. Whatever it made is removed by `destroy`, which
    /// the caller runs in any case.
    async fn setup(&self, args: &Args) -> Result<Duration> {
        let started = Instant::now();
        self.write_config(args)?;
        let mut admin = pg_connect("postgres").await?;

        // purge: a template and two copies of it.
        let template = self.purge_template();
        exec(&mut admin, format!("CREATE DATABASE \"{template}\"")).await?;
        let mut db = pg_connect(&template).await?;
        let expired = args.expired();
        let fresh = args.rows as i64 - expired;
        exec(
            &mut db,
            format!(
                "CREATE TABLE events (id bigserial PRIMARY KEY, at timestamptz NOT NULL, body text);
                 CREATE INDEX events_at_idx ON events (at);
                 INSERT INTO events (at, body)
                   SELECT now() - interval '100 days' + g * (interval '25 days' / {expired}), md5(g::text) || md5((-g)::text)
                   FROM generate_series(1, {expired}) g;
                 INSERT INTO events (at, body)
                   SELECT now() - interval '50 days' + g * (interval '40 days' / {fresh}), md5(g::text) || md5((-g)::text)
                   FROM generate_series(1, {fresh}) g;"
            ),
        )
        .await?;
        exec(&mut db, "VACUUM (FREEZE, ANALYZE) events".to_string()).await?;
        let bytes: i64 = sqlx::query_scalar("SELECT pg_total_relation_size('events')").fetch_one(&mut db).await?;
        db.close().await?;
        eprintln!("bench: purge template: {} rows, {:.0} MB with indexes", args.rows, bytes as f64 / 1e6);
        for copy in [self.purge_baseline(), self.database(PURGE_TENANT)] {
            exec(&mut admin, format!("CREATE DATABASE \"{copy}\" TEMPLATE \"{template}\" STRATEGY FILE_COPY")).await?;
        }

        // analyze_indexes: S schemas in one database.
        let indexes = self.index_database();
        exec(&mut admin, format!("CREATE DATABASE \"{indexes}\"")).await?;
        let mut db = pg_connect(&indexes).await?;
        for chunk in self.schemas.chunks(10) {
            let mut sql = String::new();
            for t in chunk {
                let s = format!("t_{t}");
                let _ = write!(
                    sql,
                    "CREATE SCHEMA {s};
                     CREATE TABLE {s}.accounts (id int PRIMARY KEY, email text NOT NULL UNIQUE, name text);
                     CREATE TABLE {s}.orders (id int PRIMARY KEY, account int NOT NULL, status text, created_at timestamptz);
                     CREATE INDEX orders_account_idx ON {s}.orders (account);
                     CREATE INDEX orders_account_dup ON {s}.orders (account);
                     CREATE INDEX orders_status_idx ON {s}.orders (status);
                     CREATE INDEX orders_created_idx ON {s}.orders (created_at);
                     CREATE TABLE {s}.events (id bigint PRIMARY KEY, account int, at timestamptz NOT NULL);
                     CREATE INDEX events_at_idx ON {s}.events (at);
                     INSERT INTO {s}.accounts SELECT g, 'a' || g || '@example.com', 'account ' || g FROM generate_series(1, 20) g;
                     INSERT INTO {s}.orders SELECT g, 1 + g % 20, 'open', now() - g * interval '1 day' FROM generate_series(1, 20) g;
                     INSERT INTO {s}.events SELECT g, 1 + g % 20, now() - g * interval '1 hour' FROM generate_series(1, 20) g;\n"
                );
            }
            exec(&mut db, sql).await?;
        }
        // One scan of an `account` index (the planner picks one of the two) and of `events_at_idx`
        // per schema, so that those count as used; then statistics for the bloat estimate.
        exec(&mut db, "SET enable_seqscan = off; SET enable_bitmapscan = off".to_string()).await?;
        for chunk in self.schemas.chunks(50) {
            let mut sql = String::new();
            for t in chunk {
                let _ = writeln!(
                    sql,
                    "SELECT count(*) FROM t_{t}.orders WHERE account = 1; \
                     SELECT count(*) FROM t_{t}.events WHERE at > now() - interval '2 hours';"
                );
            }
            exec(&mut db, sql).await?;
        }
        exec(&mut db, "ANALYZE".to_string()).await?;
        // Closing flushes this session's index statistics.
        db.close().await?;
        eprintln!("bench: {} schemas with {INDEXES_PER_SCHEMA} indexes each in {indexes}", self.schemas.len());

        // vacuum: D databases from a template; their rows are made before each vacuum row.
        let template = self.vacuum_template();
        exec(&mut admin, format!("CREATE DATABASE \"{template}\"")).await?;
        let mut db = pg_connect(&template).await?;
        exec(
            &mut db,
            "CREATE TABLE items (id bigint PRIMARY KEY, payload text NOT NULL, updated_at timestamptz NOT NULL) \
             WITH (autovacuum_enabled = false)"
                .to_string(),
        )
        .await?;
        db.close().await?;
        for t in &self.databases {
            // A small template: WAL-logged copy (PostgreSQL 15's default), no checkpoint per copy.
            exec(&mut admin, format!("CREATE DATABASE \"{}\" TEMPLATE \"{template}\"", self.database(t))).await?;
        }
        exec(&mut admin, "CHECKPOINT".to_string()).await?;
        admin.close().await?;
        let took = started.elapsed();
        eprintln!("bench: setup done in {took:.1?}");
        Ok(took)
    }

    fn write_config(&self, args: &Args) -> Result<()> {
        let c = args.concurrency;
        let mut config = format!(
            r#"# Written by benches/maintenance.rs; deleted after the bench.
[redis]
url = "{redis}"
prefix = "{name}"

# A pool per tenant database: at the default (256) a worker keeps an idle connection to each
# of the vacuumed databases, which with other clients exceeds max_connections (100).
[limits]
max_pools = {max_pools}

[runtime]
worker_concurrency = {wc}
drain_timeout = "30s"

[hosts.main]
engine = "postgres"
url = "{pg}"
max_concurrency = {wc}

[services.db]
engine = "postgres"
isolation = "database"
host = "main"
database = "{name}_{{tenant}}"

[services.idx]
engine = "postgres"
isolation = "schema"
host = "main"
database = "{indexes}"
schema = "t_{{tenant}}"

[[catalog.tenants]]
id = "{PURGE_TENANT}"
services = ["db"]
"#,
            redis = redis_url(),
            pg = pg_url(),
            name = self.name,
            indexes = self.index_database(),
            max_pools = (2 * c).max(4),
            wc = c.max(INDEX_CONCURRENCY),
        );
        for t in &self.schemas {
            let _ = write!(config, "\n[[catalog.tenants]]\nid = \"{t}\"\nservices = [\"idx\"]\n");
        }
        for t in &self.databases {
            let _ = write!(config, "\n[[catalog.tenants]]\nid = \"{t}\"\nservices = [\"db\"]\n");
        }
        std::fs::write(self.config_path(), config)?;
        let workflows = self.dir.path().join("workflows");
        std::fs::create_dir(&workflows)?;
        let concurrency = |n: u32| format!("[concurrency]\nrun = {n}\nper_host = {n}\n");
        std::fs::write(
            workflows.join("purge.toml"),
            format!(
                "description = \"benchmark: purge expired events\"\n\n{}\n[[steps]]\nkind = \"purge\"\n\
                 table = \"events\"\ncolumn = \"at\"\nolder_than = \"{OLDER_THAN_DAYS}d\"\nbatch_size = {}\n\
                 pause = \"0s\"\n",
                concurrency(1),
                args.batch_size
            ),
        )?;
        std::fs::write(
            workflows.join("indexes.toml"),
            format!(
                "description = \"benchmark: analyse every schema's indexes\"\n\n{}\n[[steps]]\n\
                 kind = \"analyze_indexes\"\n",
                concurrency(INDEX_CONCURRENCY)
            ),
        )?;
        std::fs::write(
            workflows.join("indexes_below_pool.toml"),
            format!(
                "description = \"benchmark: analyse every schema's indexes, one tenant fewer than the pool\"\n\n{}\n\
                 [[steps]]\nkind = \"analyze_indexes\"\n",
                concurrency(INDEX_CONCURRENCY - 1)
            ),
        )?;
        std::fs::write(
            workflows.join("vacuum.toml"),
            format!(
                "description = \"benchmark: vacuum every database\"\n\n{}\n[[steps]]\nkind = \"vacuum\"\n",
                concurrency(c)
            ),
        )?;
        Ok(())
    }

    /// Drops every database of the bench (its name's prefix), a few at a time, and deletes
    /// the Redis keys of its prefix.
    async fn destroy(&self) -> Result<()> {
        let mut problems = Vec::new();
        match pg_connect("postgres").await {
            Ok(mut admin) => {
                let names: Vec<String> =
                    sqlx::query_scalar("SELECT datname::text FROM pg_database WHERE left(datname, length($1)) = $1")
                        .bind(&self.name)
                        .fetch_all(&mut admin)
                        .await?;
                admin.close().await?;
                let dropped: Vec<std::result::Result<(), String>> = futures::stream::iter(names)
                    .map(|db| async move {
                        let mut admin = pg_connect("postgres").await.map_err(|e| e.to_string())?;
                        exec(&mut admin, format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"))
                            .await
                            .map_err(|e| format!("dropping {db}: {e}"))?;
                        let _ = admin.close().await;
                        Ok(())
                    })
                    .buffer_unordered(DROP_CONCURRENCY)
                    .collect()
                    .await;
                let ok = dropped.iter().filter(|r| r.is_ok()).count();
                problems.extend(dropped.into_iter().filter_map(std::result::Result::err));
                eprintln!("bench: dropped {ok} databases");
            }
            Err(e) => problems.push(e.to_string()),
        }
        match clear_redis(&self.name).await {
            Ok(n) => eprintln!("bench: deleted {n} Redis keys of prefix {}", self.name),
            Err(e) => problems.push(format!("Redis: {e}")),
        }
        if problems.is_empty() { Ok(()) } else { Err(problems.join("; ").into()) }
    }

    /// Rebuilds `items` in every vacuum database the same way (see the header), then waits
    /// until every database's statistics show the dead tuples the vacuum rows remove.
    async fn reset_vacuum(&self) -> Result<()> {
        let started = Instant::now();
        let databases: Vec<String> = self.databases.iter().map(|t| self.database(t)).collect();
        let results: Vec<Result<()>> = futures::stream::iter(databases.clone())
            .map(|database| async move {
                let mut db = pg_connect(&database).await?;
                exec(
                    &mut db,
                    format!(
                        "TRUNCATE items; INSERT INTO items SELECT g, md5(g::text) || md5((-g)::text), now() \
                         FROM generate_series(1, {VACUUM_ROWS}) g"
                    ),
                )
                .await?;
                exec(&mut db, "VACUUM (FREEZE) items".to_string()).await?;
                exec(&mut db, "DELETE FROM items WHERE id % 4 = 0".to_string()).await?;
                // Closing flushes the session's table statistics.
                db.close().await?;
                Ok(())
            })
            .buffer_unordered(4)
            .collect()
            .await;
        results.into_iter().collect::<Result<Vec<()>>>()?;
        for database in &databases {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let dead = dead_tuples(database).await?;
                if dead == VACUUM_DEAD {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(format!(
                        "{database}: {dead} dead tuples in items after the reset, expected {VACUUM_DEAD}"
                    )
                    .into());
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        checkpoint().await?;
        eprintln!("bench: {} vacuum databases rebuilt in {:.1?}", databases.len(), started.elapsed());
        Ok(())
    }
}

async fn dead_tuples(database: &str) -> Result<i64> {
    let mut db = pg_connect(database).await?;
    let dead: i64 = sqlx::query_scalar("SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = 'items'")
        .fetch_one(&mut db)
        .await?;
    db.close().await?;
    Ok(dead)
}

async fn checkpoint() -> Result<()> {
    let mut admin = pg_connect("postgres").await?;
    exec(&mut admin, "CHECKPOINT".to_string()).await?;
    admin.close().await?;
    Ok(())
}

/// Every vacuum database must have no dead tuples in `items` (its statistics, after a
/// vacuum, within a few seconds).
async fn check_vacuumed(fleet: &Fleet, label: &str) -> Result<()> {
    for t in &fleet.databases {
        let database = fleet.database(t);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let dead = dead_tuples(&database).await?;
            if dead == 0 {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("{label}: {database} still has {dead} dead tuples in items").into());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Measurements

/// One line of the results table.
struct Row {
    label: String,
    what: String,
    tenants: usize,
    wall: Duration,
    usage: Usage,
    /// The purge's longest batch.
    max_batch_ms: Option<u64>,
    /// Runs: claim→finish p50 / p99 of a tenant (ms).
    per_tenant: Option<[i64; 2]>,
    /// Index of the row it is compared with.
    baseline: Option<usize>,
}

impl Row {
    fn new(label: String, what: &str, tenants: usize, wall: Duration, usage: Usage) -> Row {
        eprintln!("bench: {label}: {tenants} tenants in {wall:.2?}\n{}", usage.describe(wall, &COLUMNS));
        Row {
            label,
            what: what.to_string(),
            tenants,
            wall,
            usage,
            max_batch_ms: None,
            per_tenant: None,
            baseline: None,
        }
    }
}

/// The rows, and which is which, for the targets.
struct Rows {
    rows: Vec<Row>,
    purge: usize,
    indexes: usize,
    vacuum: usize,
}

/// Everything a run needs from the config.
struct Setup {
    ctx: Context,
    catalog: Catalog,
    starter: Arc<Runtime>,
    host: SecretUrl,
}

async fn measure(fleet: &Fleet, args: &Args) -> Result<Rows> {
    let ctx = Context::load(Some(&fleet.config_path()), &[]).map_err(|f| f.to_string())?;
    let catalog = ctx.checked_catalog().await.map_err(|f| f.to_string())?;
    // The bench's own runtime only starts runs and reads them, as `tenantry run` does; the
    // work is done by a `tenantry worker` process.
    let starter = ctx.runtime().await.map_err(|f| f.to_string())?;
    let host = ctx.config.config.hosts.get("main").ok_or("no [hosts.main] in the bench's config")?.url.clone();
    let setup = Setup { ctx, catalog, starter, host };
    let mut rows: Vec<Row> = Vec::new();
    let mut workers = Workers::start(fleet.dir.path(), 1, &fleet.config_path()).await?;

    // 1, 2: purge.
    for database in [fleet.purge_baseline(), fleet.database(PURGE_TENANT)] {
        let mut db = pg_connect(&database).await?;
        exec(&mut db, "VACUUM (ANALYZE) events".to_string()).await?;
        db.close().await?;
    }
    checkpoint().await?;
    settle(args.wait_idle).await;
    rows.push(delete_baseline(fleet, args).await?);
    checkpoint().await?;
    settle(args.wait_idle).await;
    let (mut row, outputs) =
        run(&setup, args, &fleet.name, "purge", &[PURGE_TENANT.to_string()], "tenantry `purge` run").await?;
    let output = &outputs[0].1;
    let deleted = output["deleted"].as_i64().unwrap_or(-1);
    if deleted != args.expired() || output["complete"] != serde_json::Value::Bool(true) {
        return Err(format!(
            "purge: the step deleted {deleted} rows, expected {} and complete: {output}",
            args.expired()
        )
        .into());
    }
    let mut db = pg_connect(&fleet.database(PURGE_TENANT)).await?;
    let (left, oldest): (i64, bool) = sqlx::query_as(
        "SELECT count(*), coalesce(min(at) >= now() - make_interval(days => $1::int), true) FROM events",
    )
    .bind(OLDER_THAN_DAYS as i32)
    .fetch_one(&mut db)
    .await?;
    db.close().await?;
    if left != args.rows as i64 - args.expired() || !oldest {
        return Err(format!(
            "purge: {left} rows left (expected {}), none expired: {oldest}",
            args.rows as i64 - args.expired()
        )
        .into());
    }
    row.max_batch_ms = output["max_batch_ms"].as_u64();
    row.what = format!(
        "`purge` step, `batch_size` {}, `pause = \"0s\"`: {} batches (index keyset on `at`, delete by `ctid`, cursor row per batch), \
         {deleted} rows",
        args.batch_size,
        output["batches"].as_i64().unwrap_or(0)
    );
    row.baseline = Some(rows.len() - 1);
    let purge = rows.len();
    rows.push(row);

    // 3, 4: analyze_indexes.
    checkpoint().await?;
    settle(args.wait_idle).await;
    rows.push(indexes_baseline(fleet).await?);
    checkpoint().await?;
    settle(args.wait_idle).await;
    let (mut row, outputs) =
        run(&setup, args, &fleet.name, "indexes", &fleet.schemas, "tenantry `analyze_indexes` run").await?;
    for (tenant, output) in &outputs {
        check_index_output(tenant, output)?;
    }
    row.baseline = Some(rows.len() - 1);
    let indexes = rows.len();
    rows.push(row);
    // The same with one tenant in flight fewer than the pool has connections (see
    // `analyze_indexes` in the report), after the shared read of the run before expired.
    tokio::time::sleep(SHARED_READ_TTL).await;
    checkpoint().await?;
    settle(args.wait_idle).await;
    let (mut row, outputs) = run(
        &setup,
        args,
        &fleet.name,
        "indexes_below_pool",
        &fleet.schemas,
        "diagnostic: tenantry `analyze_indexes` run, concurrency one under the pool",
    )
    .await?;
    for (tenant, output) in &outputs {
        check_index_output(tenant, output)?;
    }
    row.baseline = Some(indexes - 1);
    rows.push(row);

    // 5, 6, 7: vacuum.
    fleet.reset_vacuum().await?;
    settle(args.wait_idle).await;
    let databases: Vec<String> = fleet.databases.iter().map(|t| fleet.database(t)).collect();
    let h = setup.host.clone();
    let row = vacuumdb(
        &fleet.name,
        &databases,
        1,
        move |db| {
            let mut cmd = tenantry::engine::tools::libpq_command("vacuumdb", &h, &db);
            cmd.args(["--analyze-only", "--jobs=2", "--quiet", "--no-password"]).arg(format!("--dbname={db}"));
            cmd
        },
        "reference: `vacuumdb --analyze-only -j2`, one database after the other (the issue's command)",
        "statistics only, every table of the database (system catalogs too) over 2 connections; the dead tuples stay",
    )
    .await?;
    rows.push(row);
    fleet.reset_vacuum().await?;
    settle(args.wait_idle).await;
    let c = args.concurrency as usize;
    let h = setup.host.clone();
    let row = vacuumdb(
        &fleet.name,
        &databases,
        c,
        move |db| {
            let mut cmd = tenantry::engine::tools::libpq_command("vacuumdb", &h, &db);
            cmd.args(["--analyze", "--table=items", "--quiet", "--no-password"]).arg(format!("--dbname={db}"));
            cmd
        },
        &format!("baseline: `vacuumdb --analyze --table=items`, {c} databases at once"),
        "`VACUUM (ANALYZE) items`: the step's work",
    )
    .await?;
    check_vacuumed(fleet, "vacuumdb").await?;
    rows.push(row);
    fleet.reset_vacuum().await?;
    settle(args.wait_idle).await;
    let (mut row, outputs) =
        run(&setup, args, &fleet.name, "vacuum", &fleet.databases, "tenantry `vacuum` run").await?;
    for (tenant, output) in &outputs {
        check_vacuum_output(tenant, output)?;
    }
    check_vacuumed(fleet, "tenantry vacuum").await?;
    row.baseline = Some(rows.len() - 1);
    let vacuum = rows.len();
    rows.push(row);
    workers.stop()?;
    Ok(Rows { rows, purge, indexes, vacuum })
}

/// One `DELETE` of the expired rows on the baseline copy.
async fn delete_baseline(fleet: &Fleet, args: &Args) -> Result<Row> {
    let mut db = pg_connect(&fleet.purge_baseline()).await?;
    let before = Snapshot::of_database(&fleet.name).await?;
    let started = Instant::now();
    let deleted = sqlx::query("DELETE FROM events WHERE at < now() - make_interval(days => $1::int)")
        .bind(OLDER_THAN_DAYS as i32)
        .execute(&mut db)
        .await?
        .rows_affected();
    let wall = started.elapsed();
    let usage = Snapshot::of_database(&fleet.name).await?.since(&before, 1);
    db.close().await?;
    if deleted != args.expired() as u64 {
        return Err(format!("baseline DELETE: {deleted} rows, expected {}", args.expired()).into());
    }
    Ok(Row::new(
        "baseline: one `DELETE`".into(),
        &format!(
            "`DELETE FROM events WHERE at < now() - interval '{OLDER_THAN_DAYS} days'` (sqlx, one statement): {deleted} rows"
        ),
        1,
        wall,
        usage,
    ))
}

/// For each schema, one connection runs what `analyze_indexes` runs for a tenant when
/// nothing is shared, and judges the result.
async fn indexes_baseline(fleet: &Fleet) -> Result<Row> {
    let mut db = pg_connect(&fleet.index_database()).await?;
    let before = Snapshot::of_database(&fleet.name).await?;
    let started = Instant::now();
    for t in &fleet.schemas {
        let schema = format!("t_{t}");
        let (block_size, _stats_reset): (String, Option<chrono::DateTime<chrono::Utc>>) = sqlx::query_as(
            "SELECT current_setting('block_size'), (SELECT stats_reset FROM pg_stat_database WHERE datname = current_database())",
        )
        .fetch_one(&mut db)
        .await?;
        let indexes: Vec<IndexInfo> =
            sqlx::query_as(include_str!("../src/steps/analyze_indexes.sql")).bind(&schema).fetch_all(&mut db).await?;
        let found = findings(&indexes, 0.3, block_size.parse().unwrap_or(8192), "the statistics began");
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for f in &found {
            *counts.entry(f.kind).or_default() += 1;
        }
        if indexes.len() != INDEXES_PER_SCHEMA || counts != BTreeMap::from(EXPECTED_FINDINGS) {
            return Err(format!(
                "baseline: schema {schema} has {} indexes and findings {counts:?}, expected {INDEXES_PER_SCHEMA} and {EXPECTED_FINDINGS:?}",
                indexes.len()
            )
            .into());
        }
    }
    let wall = started.elapsed();
    let usage = Snapshot::of_database(&fleet.name).await?.since(&before, fleet.schemas.len());
    db.close().await?;
    Ok(Row::new(
        "baseline: the per-schema catalog query, one connection".into(),
        "per schema: the statistics' age and `analyze_indexes.sql` for that schema (no sharing), findings judged",
        fleet.schemas.len(),
        wall,
        usage,
    ))
}

/// Runs the command made for each database, `c` at a time, and checks that each succeeded.
async fn vacuumdb(
    name: &str,
    databases: &[String],
    c: usize,
    command: impl Fn(String) -> tokio::process::Command + Send + Sync + 'static,
    label: &str,
    what: &str,
) -> Result<Row> {
    let before = Snapshot::of_database(name).await?;
    let started = Instant::now();
    let command = Arc::new(command);
    let results: Vec<std::result::Result<(), String>> = futures::stream::iter(databases.to_vec())
        .map(|db| {
            let command = command.clone();
            async move {
                let mut cmd = command(db.clone());
                cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped());
                let out = cmd.output().await.map_err(|e| format!("{db}: cannot run vacuumdb: {e}"))?;
                if !out.status.success() {
                    return Err(format!(
                        "{db}: vacuumdb failed ({}): {}",
                        out.status,
                        String::from_utf8_lossy(&out.stderr).trim()
                    ));
                }
                Ok(())
            }
        })
        .buffer_unordered(c)
        .collect()
        .await;
    let wall = started.elapsed();
    let usage = Snapshot::of_database(name).await?.since(&before, databases.len());
    results.into_iter().collect::<std::result::Result<Vec<()>, String>>()?;
    Ok(Row::new(label.to_string(), what, databases.len(), wall, usage))
}

/// A run of `workflow` over `only`, started as `tenantry run` starts one, followed until it
/// ends (or the timeout), then checked: succeeded, every tenant succeeded with an output.
/// Returns the row and each tenant's output.
async fn run(
    setup: &Setup,
    args: &Args,
    name: &str,
    workflow_name: &str,
    only: &[String],
    label: &str,
) -> Result<(Row, Vec<(String, serde_json::Value)>)> {
    let wf: Workflow = workflow::find(&setup.ctx.config.workflows_dir(), workflow_name).map_err(|d| d.to_string())?;
    let problems = workflow::check(
        &wf.spec,
        &wf.name,
        &wf.source,
        &CheckContext { services: &setup.ctx.config.config.services, catalog: Some(&setup.catalog) },
    );
    if !problems.is_empty() {
        return Err(problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n").into());
    }
    let before = Snapshot::of_database(name).await?;
    let started = Instant::now();
    let mut spec = launch::snapshot(&wf, &setup.catalog, &setup.ctx.config, only);
    launch::skip_up_to_date(&mut spec, &setup.catalog, &setup.ctx.config).await;
    launch::apply_selections(&mut spec, &setup.catalog, &setup.ctx.config).await;
    let n = spec.tenants.len();
    if n != only.len() {
        return Err(format!("{workflow_name}: the run selects {n} tenants, expected {}", only.len()).into());
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
                "{workflow_name}: run {id} is still {} after {:?} ({} of {n} tenants succeeded, {} failed, {} in flight)",
                record.state, args.timeout, record.succeeded, record.failed, record.inflight
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let wall = started.elapsed();
    let usage = Snapshot::of_database(name).await?.since(&before, n);
    let checkpoints = store.checkpoints(&id).await?;
    if record.state != RunState::Succeeded || record.succeeded != n as u64 {
        let errors: Vec<String> = checkpoints
            .iter()
            .filter_map(|(t, cp)| cp.last_error.as_ref().map(|e| format!("{t}: {e}")))
            .take(3)
            .collect();
        return Err(format!(
            "{workflow_name}: run {id} ended {} ({}), {} of {n} tenants succeeded, {} failed: {}",
            record.state,
            record.reason.unwrap_or_default(),
            record.succeeded,
            record.failed,
            errors.join("; ")
        )
        .into());
    }
    if checkpoints.len() != n {
        return Err(format!("{workflow_name}: {} checkpoints for {n} tenants", checkpoints.len()).into());
    }
    let mut per_tenant = Vec::with_capacity(n);
    let mut outputs = Vec::with_capacity(n);
    for (tenant, cp) in checkpoints {
        if cp.state != TenantState::Succeeded {
            return Err(format!("{workflow_name}: tenant {tenant} is {:?} in a succeeded run", cp.state).into());
        }
        if let (Some(claimed), Some(finished)) = (cp.claimed_ms, cp.finished_ms) {
            per_tenant.push(finished - claimed);
        }
        let output =
            cp.outputs.into_values().next().ok_or_else(|| format!("{workflow_name}: tenant {tenant} has no output"))?;
        outputs.push((tenant, output));
    }
    per_tenant.sort_unstable();
    let what = match workflow_name {
        "indexes" => format!(
            "`analyze_indexes` step, run concurrency {INDEX_CONCURRENCY}: one catalog read per database shared by the schemas"
        ),
        "indexes_below_pool" => format!(
            "`analyze_indexes` step, run concurrency {} with {INDEX_CONCURRENCY} connections per pool: the same work",
            INDEX_CONCURRENCY - 1
        ),
        "vacuum" => format!(
            "`vacuum` step, run concurrency {}: statistics, transaction-id age, `VACUUM (ANALYZE)` of the tables over the thresholds",
            args.concurrency
        ),
        _ => String::new(),
    };
    let mut row = Row::new(format!("{label} (run {id})"), &what, n, wall, usage);
    row.per_tenant = Some([percentile(&per_tenant, 50.0), percentile(&per_tenant, 99.0)]);
    Ok((row, outputs))
}

fn check_index_output(tenant: &str, output: &serde_json::Value) -> Result<()> {
    let indexes = output["indexes"].as_u64().unwrap_or(0) as usize;
    let counts: BTreeMap<String, usize> = output["counts"]
        .as_object()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0) as usize)).collect())
        .unwrap_or_default();
    let expected: BTreeMap<String, usize> = EXPECTED_FINDINGS.iter().map(|(k, n)| (k.to_string(), *n)).collect();
    if indexes != INDEXES_PER_SCHEMA || counts != expected {
        return Err(format!(
            "analyze_indexes: tenant {tenant} reported {indexes} indexes and findings {counts:?}, expected \
             {INDEXES_PER_SCHEMA} and {expected:?}: {output}"
        )
        .into());
    }
    Ok(())
}

fn check_vacuum_output(tenant: &str, output: &serde_json::Value) -> Result<()> {
    let vacuumed = output["vacuumed"].as_array().map(Vec::as_slice).unwrap_or_default();
    let empty = |key: &str| output[key].as_array().is_some_and(Vec::is_empty);
    let one = vacuumed.len() == 1
        && vacuumed[0]["table"] == "public.items"
        && vacuumed[0]["action"] == "vacuum_analyze"
        && vacuumed[0]["dead_tuples"].as_i64() == Some(VACUUM_DEAD);
    if !one || !empty("skipped") || !empty("failed") || !empty("not_started") {
        return Err(format!("vacuum: tenant {tenant} did not vacuum exactly public.items: {output}").into());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Report

/// `worker / bench (+ vacuumdb) / PostgreSQL / Redis / other / unattributed`.
fn cpu_cells(u: &Usage) -> String {
    format!(
        "{:.1} / {:.1} / {:.1} / {:.1} / {:.1} / {:.1}",
        // Other `tenantry` processes that ended meanwhile (another checkout's tests) are taken
        // off the group: never below zero.
        (u.group("tenantry") - u.reaped("tenantry")).max(0.0),
        u.group("bench"),
        u.group("postgres"),
        u.group("redis"),
        // An empty sum is -0.0.
        u.other_processes(&COLUMNS) + 0.0,
        u.unattributed()
    )
}

async fn render(args: &Args, took: Duration, results: &Rows) -> String {
    let date = chrono::Utc::now().format("%Y-%m-%d %H:%M UTC");
    let rows = &results.rows;
    let c = args.concurrency;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "### Maintenance: purge of {} rows, `analyze_indexes` over {} schema tenants, `vacuum` of {} database tenants\n",
        args.rows, args.schemas, args.databases
    );
    let _ = writeln!(
        out,
        "Measured {date}{} with `deploy/local/bench.sh maintenance {}` ({} build).\n",
        commit().map(|c| format!(" at commit `{c}`")).unwrap_or_default(),
        args.command_line(),
        if cfg!(debug_assertions) { "debug" } else { "release" }
    );
    let vacuumdb = tenantry::engine::tools::version("vacuumdb").await.unwrap_or_else(|e| e);
    let _ = writeln!(out, "- Machine: {}; {vacuumdb}", machine().await);
    let _ = writeln!(
        out,
        "- Purge: `events (id bigserial primary key, at timestamptz not null, body text)` with an index on `at`, {} rows, \
         {} of them (30 %) older than the cutoff (`older_than = \"{OLDER_THAN_DAYS}d\"`, in a 20-day gap with no rows), \
         frozen; the baseline and the tenant each on their own copy of one template (`CREATE DATABASE … TEMPLATE`), \
         `VACUUM (ANALYZE)` of both copies and a `CHECKPOINT` before the rows. `batch_size` {}, `pause = \"0s\"`.",
        args.rows,
        args.expired(),
        args.batch_size
    );
    let _ = writeln!(
        out,
        "- Index analysis: {} schemas in one database, each with 3 tables of 20 rows and 9 indexes (3 primary keys, a \
         unique constraint, a duplicate pair of which one is scanned, 2 never scanned, 1 scanned); every schema's \
         result was checked (1 duplicate, 2 unused), in both rows.",
        args.schemas
    );
    let _ = writeln!(
        out,
        "- Vacuum: {} databases, each with `items` (autovacuum off on it) rebuilt before each vacuum row: {VACUUM_ROWS} \
         rows, `VACUUM (FREEZE)`, then every fourth row deleted ({VACUUM_DEAD} dead tuples, checked in the statistics), \
         then a `CHECKPOINT`; so every row starts from the same state. The issue's `vacuumdb --analyze-only -j2` only \
         analyses (and with no table named, the system catalogs too) and leaves the dead tuples; it is shown for \
         reference. The baseline the step is compared with does the step's work, `VACUUM (ANALYZE) items`, with \
         `vacuumdb --analyze --table=items`, {c} databases at once (as `-j2`: `-j` only splits the tables of one \
         database, and each has one). After both vacuum rows every database was checked to have no dead tuples.",
        args.databases
    );
    let _ = writeln!(
        out,
        "- tenantry: one `tenantry worker` process ({profile} build), `worker_concurrency` {wc}, `limits.max_pools` \
         {mp}; run and per-host concurrency 1 (purge), {INDEX_CONCURRENCY} (analyze_indexes), {c} (vacuum). A run is \
         created through the library as `tenantry run` creates one and timed from `launch::snapshot` until the bench \
         saw it terminal, so it includes dispatch, claims, leases and checkpoints in Redis. Each run was checked: \
         succeeded, every tenant's output as expected (rows deleted and left, findings, tables vacuumed). Setup took \
         {took:.0} s (untimed).",
        profile = if cfg!(debug_assertions) { "debug" } else { "release" },
        wc = c.max(INDEX_CONCURRENCY),
        mp = (2 * c).max(4),
        took = took.as_secs_f64(),
    );
    let _ = writeln!(
        out,
        "- CPU seconds during the row (from /proc; ended processes in their parent): the tenantry worker / the bench \
         (with its `vacuumdb` children) / PostgreSQL (backends of this bench's databases, ended ones included) / Redis \
         / other processes (backends of other databases among them) / unattributed (busy time no process accounts \
         for: the kernel's share of loopback networking and disk I/O). {cpus} CPUs give {cpus} CPU-seconds per \
         second.\n",
        cpus = std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    let _ = writeln!(
        out,
        "| row | what | tenants | wall time | vs baseline | target | met | claim→finish p50 / p99 | `max_batch_ms` | CPU s: worker / bench (+ vacuumdb) / PostgreSQL / Redis / other / unattributed |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---:|---|---|---:|---:|---:|");
    let verdict = |met: bool| if met { "met" } else { "**not met**" };
    let ratio = |i: usize| rows[i].baseline.map(|b| rows[i].wall.as_secs_f64() / rows[b].wall.as_secs_f64());
    let purge_ratio = ratio(results.purge).unwrap_or(f64::NAN);
    let max_batch = rows[results.purge].max_batch_ms.unwrap_or(u64::MAX);
    let purge_met = purge_ratio <= PURGE_MAX_RATIO && max_batch <= PURGE_MAX_BATCH_MS;
    let indexes_met = rows[results.indexes].wall <= INDEXES_MAX;
    for (i, r) in rows.iter().enumerate() {
        let (target, met) = if i == results.purge {
            (format!("≤ {PURGE_MAX_RATIO}× and no batch > {PURGE_MAX_BATCH_MS} ms"), verdict(purge_met))
        } else if i == results.indexes {
            (format!("≤ {} s", INDEXES_MAX.as_secs()), verdict(indexes_met))
        } else {
            ("–".to_string(), "–")
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | **{:.2} s** | {} | {target} | {met} | {} | {} | {} |",
            r.label,
            r.what,
            r.tenants,
            r.wall.as_secs_f64(),
            ratio(i).map_or("–".to_string(), |x| format!("{x:.2}×")),
            r.per_tenant.map_or("–".to_string(), |[p50, p99]| format!("{p50} / {p99} ms")),
            r.max_batch_ms.map_or("–".to_string(), |ms| format!("{ms} ms")),
            cpu_cells(&r.usage),
        );
    }
    let mut others: BTreeMap<&str, f64> = BTreeMap::new();
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
    let p = &rows[results.purge];
    let pb = &rows[p.baseline.unwrap_or(0)];
    let v = &rows[results.vacuum];
    let vb = &rows[v.baseline.unwrap_or(0)];
    let _ = writeln!(
        out,
        "\nTargets (issue):\n\n\
         - purge ≤ {PURGE_MAX_RATIO}× one `DELETE`: {purge_ratio:.2}× ({:.2} s vs {:.2} s): **{}**\n\
         - no purge batch holding its locks > {PURGE_MAX_BATCH_MS} ms: longest batch {max_batch} ms: **{}**\n\
         - `analyze_indexes` over {} schema tenants ≤ {} s: {:.2} s: **{}**{}\n\
         - vacuum of {} database tenants: no target; {:.2}× the comparable `vacuumdb` ({:.2} s vs {:.2} s)",
        p.wall.as_secs_f64(),
        pb.wall.as_secs_f64(),
        if purge_ratio <= PURGE_MAX_RATIO { "met" } else { "not met" },
        if max_batch <= PURGE_MAX_BATCH_MS { "met" } else { "not met" },
        args.schemas,
        INDEXES_MAX.as_secs(),
        rows[results.indexes].wall.as_secs_f64(),
        if indexes_met { "met" } else { "not met" },
        if args.schemas == 1000 { "" } else { " (the target is for 1,000)" },
        args.databases,
        v.wall.as_secs_f64() / vb.wall.as_secs_f64(),
        v.wall.as_secs_f64(),
        vb.wall.as_secs_f64(),
    );
    out
}
