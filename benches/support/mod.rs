//! What the benches share: the local services' URLs, `tenantry worker` processes, CPU per process group and resident memory from /proc, waiting for an idle machine, and the machine/commit lines and marker section of docs/benchmarks.md.
//!
//! Each bench (`benches/*.rs`, `harness = false`) includes it with `mod support;`; a bench
//! uses only part of it, hence `dead_code` is allowed here.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use sqlx::Connection;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Result<T, E = BoxError> = std::result::Result<T, E>;

/// A bench's `main`: its arguments (a usage error exits 2), then the bench on a runtime.
pub fn main<A, F: Future<Output = Result<()>>>(args: Result<A, String>, bench: impl FnOnce(A) -> F) -> ExitCode {
    match args {
        Ok(args) => block_on(bench(args)),
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(2)
        }
    }
}

/// Logging from `TENANTRY_LOG` (default `warn`, without sqlx's slow-statement warnings: a
/// bench's setup is slow statements), a multi-threaded runtime, and the bench's outcome as
/// the exit status (an error is printed).
pub fn block_on(bench: impl Future<Output = Result<()>>) -> ExitCode {
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("TENANTRY_LOG").unwrap_or_else(|_| "warn,sqlx::query=error".into());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(bench) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Services

pub fn pg_url() -> String {
    std::env::var("TENANTRY_TEST_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

pub fn redis_url() -> String {
    std::env::var("TENANTRY_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// The server URL with another database (query parameters such as `sslmode` are kept).
pub fn database_url(database: &str) -> String {
    let url = pg_url();
    match url::Url::parse(&url) {
        Ok(mut u) => {
            u.set_path(&format!("/{database}"));
            u.to_string()
        }
        Err(_) => {
            let base = url.rsplit_once('/').map_or(url.as_str(), |(base, _)| base);
            format!("{base}/{database}")
        }
    }
}

pub async fn pg_connect(database: &str) -> Result<sqlx::PgConnection> {
    let url = database_url(database);
    sqlx::PgConnection::connect(&url).await.map_err(|e| {
        format!(
            "PostgreSQL is not reachable at {url} ({e}); start it with `source deploy/local/services.sh && ensure_postgres` \
             or run the bench through deploy/local/bench.sh"
        )
        .into()
    })
}

pub async fn redis_connect() -> Result<redis::aio::MultiplexedConnection> {
    let url = redis_url();
    let client = redis::Client::open(url.as_str())?;
    client.get_multiplexed_async_connection().await.map_err(|e| {
        format!(
            "Redis is not reachable at {url} ({e}); start it with `source deploy/local/services.sh && ensure_redis` \
             or run the bench through deploy/local/bench.sh"
        )
        .into()
    })
}

pub async fn exec(conn: &mut sqlx::PgConnection, sql: String) -> Result<()> {
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(conn).await?;
    Ok(())
}

/// Deletes every Redis key of `prefix` (`prefix:*`); returns how many.
pub async fn clear_redis(prefix: &str) -> Result<usize> {
    let mut redis = redis_connect().await?;
    let mut cursor: u64 = 0;
    let mut deleted = 0usize;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}:*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut redis)
            .await?;
        if !keys.is_empty() {
            deleted += keys.len();
            let _: () = redis::cmd("DEL").arg(&keys).query_async(&mut redis).await?;
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
    Ok(deleted)
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

// ---------------------------------------------------------------------------------------------
// Worker processes and their memory

/// `tenantry worker` processes (the release binary built with the bench) on a config;
/// killed when dropped, so a failing bench leaves none behind.
pub struct Workers(Vec<std::process::Child>);

impl Workers {
    pub async fn start(dir: &Path, n: usize, config: &Path) -> Result<Workers> {
        let mut workers = Workers(Vec::with_capacity(n));
        for _ in 0..n {
            let child = std::process::Command::new(env!("CARGO_BIN_EXE_tenantry"))
                .current_dir(dir)
                .arg("--config")
                .arg(config)
                .arg("worker")
                .env("TENANTRY_LOG", std::env::var("TENANTRY_LOG").unwrap_or_else(|_| "warn".into()))
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::inherit())
                .spawn()
                .map_err(|e| format!("cannot start {}: {e}", env!("CARGO_BIN_EXE_tenantry")))?;
            workers.0.push(child);
        }
        // Connected and registered with apalis well before the first dispatch.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        for w in &mut workers.0 {
            if let Some(status) = w.try_wait()? {
                return Err(format!("a `tenantry worker` exited at start: {status}").into());
            }
        }
        Ok(workers)
    }

    pub fn pids(&self) -> Vec<u32> {
        self.0.iter().map(std::process::Child::id).collect()
    }

    /// The largest peak and current resident memory of the workers.
    pub fn rss(&self) -> Option<Rss> {
        self.0.iter().filter_map(|w| Rss::of(w.id())).reduce(|a, b| Rss {
            peak_mib: a.peak_mib.max(b.peak_mib),
            now_mib: match (a.now_mib, b.now_mib) {
                (Some(x), Some(y)) => Some(x.max(y)),
                (x, y) => x.or(y),
            },
        })
    }

    /// SIGTERM, then waits (bounded) for each worker to drain and exit 0.
    pub fn stop(&mut self) -> Result<()> {
        let mut failures = Vec::new();
        for mut w in self.0.drain(..) {
            let _ = std::process::Command::new("kill").args(["-TERM", &w.id().to_string()]).status();
            let deadline = Instant::now() + Duration::from_secs(30);
            let status = loop {
                if let Some(status) = w.try_wait()? {
                    break Some(status);
                }
                if Instant::now() > deadline {
                    let _ = w.kill();
                    let _ = w.wait();
                    break None;
                }
                std::thread::sleep(Duration::from_millis(20));
            };
            match status {
                Some(s) if s.success() => {}
                Some(s) => failures.push(format!("worker {} exited with {s}", w.id())),
                None => failures.push(format!("worker {} did not stop within 30 s of SIGTERM", w.id())),
            }
        }
        if failures.is_empty() { Ok(()) } else { Err(failures.join("; ").into()) }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for w in &mut self.0 {
            let _ = w.kill();
            let _ = w.wait();
        }
    }
}

/// Resident memory of a process: its peak so far (VmHWM) and now (VmRSS), in MiB.
#[derive(Clone, Copy)]
pub struct Rss {
    pub peak_mib: f64,
    pub now_mib: Option<f64>,
}

impl Rss {
    pub fn of(pid: u32) -> Option<Rss> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let field = |name: &str| -> Option<f64> {
            let line = status.lines().find(|l| l.starts_with(name))?;
            Some(line.split_whitespace().nth(1)?.parse::<f64>().ok()? / 1024.0)
        };
        Some(Rss { peak_mib: field("VmHWM:")?, now_mib: field("VmRSS:") })
    }
}

// ---------------------------------------------------------------------------------------------
// Where the time goes: CPU per process group, Redis commands

/// One process's CPU ticks at one moment.
#[derive(Clone)]
pub struct ProcessCpu {
    pub group: String,
    /// Its own user + system time.
    pub own: u64,
    /// Its reaped children's (cutime + cstime): ended PostgreSQL backends for the
    /// postmaster, `pg_dump`/`pg_restore` for a worker or the bench.
    pub reaped: u64,
    /// When it started, in ticks since boot.
    pub started: u64,
}

/// Counters at one moment.
#[derive(Default)]
pub struct Snapshot {
    pub cpu: BTreeMap<u32, ProcessCpu>,
    /// Busy ticks of the whole machine (from /proc/stat).
    pub machine_busy: u64,
    /// Redis command -> (calls, usec).
    pub redis: BTreeMap<String, (u64, u64)>,
    /// Ticks since boot when it was taken.
    pub taken: u64,
}

/// What happened between two snapshots, per tenant where that makes sense.
#[derive(Clone)]
pub struct Usage {
    pub tenants: usize,
    /// Group -> CPU seconds (the group's processes and their reaped children).
    pub cpu: BTreeMap<String, f64>,
    /// Group -> CPU seconds of the children its processes reaped meanwhile (part of `cpu`).
    pub reaped: BTreeMap<String, f64>,
    pub machine_busy: f64,
    /// (command, calls, usec), most called first.
    pub redis: Vec<(String, u64, u64)>,
}

/// Linux USER_HZ: /proc times are in 1/100 s on every mainstream architecture.
pub const TICKS_PER_SEC: f64 = 100.0;

impl Snapshot {
    pub async fn take() -> Result<Snapshot> {
        Self::counted(None).await
    }

    /// Like [`Snapshot::take`], but PostgreSQL backends of databases whose names do not
    /// contain `database` are a group of their own, `postgres (other databases)`.
    pub async fn of_database(database: &str) -> Result<Snapshot> {
        Self::counted(Some(database)).await
    }

    async fn counted(database: Option<&str>) -> Result<Snapshot> {
        let taken = std::fs::read_to_string("/proc/uptime")
            .ok()
            .and_then(|u| u.split_whitespace().next()?.parse::<f64>().ok())
            .map_or(0, |secs| (secs * TICKS_PER_SEC) as u64);
        let mut s = Snapshot { cpu: process_cpu(database), machine_busy: machine_busy(), taken, ..Default::default() };
        let mut redis = redis_connect().await?;
        let info: String = redis::cmd("INFO").arg("commandstats").query_async(&mut redis).await?;
        for line in info.lines() {
            let Some((name, rest)) = line.strip_prefix("cmdstat_").and_then(|l| l.split_once(':')) else { continue };
            let field = |key: &str| {
                rest.split(',').find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse::<u64>().ok()).unwrap_or(0)
            };
            s.redis.insert(name.to_string(), (field("calls"), field("usec")));
        }
        Ok(s)
    }

    pub fn since(&self, before: &Snapshot, tenants: usize) -> Usage {
        let mut ticks: BTreeMap<&str, i64> = BTreeMap::new();
        let mut reaped: BTreeMap<&str, i64> = BTreeMap::new();
        for (pid, now) in &self.cpu {
            let (own, children) = match before.cpu.get(pid) {
                Some(p) => (p.own, p.reaped),
                // New since `before`: all of its time is in between. One that is older but was
                // not seen then (its /proc entry unreadable) has unknown time in between: none.
                None if now.started + 1 >= before.taken => (0, 0),
                None => (now.own, now.reaped),
            };
            let grown = now.reaped.saturating_sub(children) as i64;
            *ticks.entry(now.group.as_str()).or_default() += now.own.saturating_sub(own) as i64 + grown;
            *reaped.entry(now.group.as_str()).or_default() += grown;
        }
        // A process that ended in between shows up with its whole life in its parent's
        // cutime/cstime (the postmaster's, for a backend): take off what it had used before.
        for (pid, earlier) in &before.cpu {
            if !self.cpu.contains_key(pid) {
                *ticks.entry(earlier.group.as_str()).or_default() -= (earlier.own + earlier.reaped) as i64;
            }
        }
        let seconds = |m: BTreeMap<&str, i64>| -> BTreeMap<String, f64> {
            m.into_iter()
                .filter(|(_, t)| *t > 0)
                .map(|(group, t)| (group.to_string(), t as f64 / TICKS_PER_SEC))
                .collect()
        };
        let mut redis: Vec<(String, u64, u64)> = self
            .redis
            .iter()
            .map(|(name, (calls, usec))| {
                let (c0, u0) = before.redis.get(name).copied().unwrap_or((0, 0));
                (name.clone(), calls.saturating_sub(c0), usec.saturating_sub(u0))
            })
            .filter(|(_, calls, _)| *calls > 0)
            .collect();
        redis.sort_by_key(|(_, calls, _)| std::cmp::Reverse(*calls));
        Usage {
            tenants,
            cpu: seconds(ticks),
            reaped: seconds(reaped),
            machine_busy: self.machine_busy.saturating_sub(before.machine_busy) as f64 / TICKS_PER_SEC,
            redis,
        }
    }
}

impl Usage {
    pub fn group(&self, name: &str) -> f64 {
        self.cpu.get(name).copied().unwrap_or(0.0)
    }

    /// The part of a group's CPU used by children its processes started and reaped.
    pub fn reaped(&self, name: &str) -> f64 {
        self.reaped.get(name).copied().unwrap_or(0.0)
    }

    /// CPU of the groups not in `columns` (the groups a table shows), e.g. a compiler
    /// someone runs meanwhile.
    pub fn other_processes(&self, columns: &[&str]) -> f64 {
        self.cpu.iter().filter(|(g, _)| !columns.contains(&g.as_str())).map(|(_, s)| s).sum()
    }

    /// Busy CPU no process accounts for: the kernel's share of the loopback network and
    /// disk I/O (interrupts, softirqs), and processes that started and ended unseen.
    pub fn unattributed(&self) -> f64 {
        (self.machine_busy - self.cpu.values().sum::<f64>()).max(0.0)
    }

    /// The groups not in `columns` that used at least `min` CPU seconds, busiest first.
    pub fn others(&self, min: f64, columns: &[&str]) -> Vec<(&str, f64)> {
        let mut out: Vec<(&str, f64)> = self
            .cpu
            .iter()
            .filter(|(g, s)| !columns.contains(&g.as_str()) && **s >= min)
            .map(|(g, s)| (g.as_str(), *s))
            .collect();
        out.sort_by(|a, b| b.1.total_cmp(&a.1));
        out
    }

    /// Redis script invocations (EVALSHA/EVAL): one round trip each.
    pub fn scripts(&self) -> u64 {
        self.redis.iter().filter(|(n, _, _)| n == "evalsha" || n == "eval").map(|(_, c, _)| c).sum()
    }

    /// The console summary of a row: CPU seconds of the `columns` groups, other processes
    /// (named from 0.2 s) and unattributed, the same per tenant, and the Redis commands.
    pub fn describe(&self, wall: Duration, columns: &[&str]) -> String {
        use std::fmt::Write as _;
        let n = self.tenants.max(1) as f64;
        let mut out = format!("  CPU seconds over {wall:.2?}:");
        for c in columns {
            let _ = write!(out, " {c} {:.2},", self.group(c));
        }
        let _ = writeln!(
            out,
            " other processes {:.2}, unattributed {:.2} (machine busy {:.2})",
            self.other_processes(columns),
            self.unattributed(),
            self.machine_busy
        );
        for (name, secs) in self.others(0.2, columns) {
            let _ = writeln!(out, "    other: {name} {secs:.2} s");
        }
        let _ = write!(out, "  per tenant:");
        for c in columns {
            let _ = write!(out, " {c} {:.0} µs,", self.group(c) * 1e6 / n);
        }
        let _ = writeln!(out, " {:.2} Redis script calls", self.scripts() as f64 / n);
        let _ = write!(out, "  Redis commands (calls per tenant, µs per call):");
        for (name, calls, usec) in self.redis.iter().take(14) {
            let _ = write!(out, " {name} {:.2}/{:.1}", *calls as f64 / n, *usec as f64 / (*calls).max(1) as f64);
        }
        out
    }
}

/// CPU ticks of every process, own and of its reaped children, from /proc (empty
/// elsewhere), grouped: the `tenantry` processes (workers, the CLI), PostgreSQL
/// (postmaster, auxiliary processes and backends: a backend that ended is in the
/// postmaster's cutime/cstime; with `database`, the backends of other databases as
/// `postgres (other databases)`), Redis, this process (`bench`), and everything else by
/// command name (`s3s-fs`, `pg_dump` while it runs, ...).
pub fn process_cpu(database: Option<&str>) -> BTreeMap<u32, ProcessCpu> {
    let mut out = BTreeMap::new();
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else { return out };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // "pid (comm) state ppid ... utime stime ...": comm may contain spaces and parentheses.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { continue };
        let comm = &stat[open + 1..close];
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        // After the comm: state is field 0, utime 11, stime 12, and cutime 13, cstime 14: the
        // CPU of reaped children, so that ended backends (children of the postmaster) count.
        let group = if pid == me {
            "bench".to_string()
        } else if comm == "tenantry" {
            "tenantry".to_string()
        } else if comm.starts_with("redis-server") {
            "redis".to_string()
        } else if comm.starts_with("postgres") {
            // A backend's title: "postgres: 15/main: USER DATABASE HOST(PORT) STATE".
            let other = database.is_some_and(|database| {
                let title = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
                let title = String::from_utf8_lossy(&title);
                let backend = title.contains("127.0.0.1(") || title.contains("[local]") || title.contains("::1(");
                backend && !title.contains(database)
            });
            if other { "postgres (other databases)" } else { "postgres" }.to_string()
        } else {
            // kworker/1:0H-kblockd -> kworker
            comm.split('/').next().unwrap_or(comm).to_string()
        };
        // starttime is field 19 after the comm.
        out.insert(
            pid,
            ProcessCpu { group, own: ticks(11) + ticks(12), reaped: ticks(13) + ticks(14), started: ticks(19) },
        );
    }
    out
}

/// Busy CPU ticks of the machine since boot, all CPUs: user, system, interrupts (the
/// loopback network and disk I/O of the services show up there, not in any process).
pub fn machine_busy() -> u64 {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else { return 0 };
    let Some(line) = stat.lines().next() else { return 0 };
    let values: Vec<u64> = line.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal: busy is all but idle, iowait and steal.
    let total: u64 = values.iter().take(7).sum();
    let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
    total.saturating_sub(idle)
}

/// Busy CPUs of the machine below which it counts as idle before a row.
pub const IDLE_CPUS: f64 = 0.2;

/// Before a row: the highest background load seen just before one (CPUs) and the time
/// spent waiting for the machine to be idle.
static BACKGROUND: std::sync::Mutex<(f64, Duration)> = std::sync::Mutex::new((0.0, Duration::ZERO));

/// Waits (up to `wait_idle`) until other processes keep less than [`IDLE_CPUS`] busy, and
/// remembers how busy the machine was, for the table's text ([`background`]).
pub async fn settle(wait_idle: Duration) {
    let started = Instant::now();
    let mut warned = false;
    let busy = loop {
        let before = machine_busy();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let busy = machine_busy().saturating_sub(before) as f64 / TICKS_PER_SEC / 2.0;
        if busy < IDLE_CPUS || started.elapsed() >= wait_idle {
            break busy;
        }
        if !warned {
            eprintln!(
                "bench: something else keeps {busy:.2} CPUs busy; waiting up to {wait_idle:?} for the machine to be idle"
            );
            warned = true;
        }
    };
    let mut background = BACKGROUND.lock().expect("background lock");
    background.0 = background.0.max(busy);
    background.1 += started.elapsed().saturating_sub(Duration::from_secs(2));
}

/// The most CPUs busy just before a row, and the time waited in [`settle`] in all.
pub fn background() -> (f64, Duration) {
    *BACKGROUND.lock().expect("background lock")
}

// ---------------------------------------------------------------------------------------------
// Report

/// The abbreviated commit of the checkout the bench was built from.
pub fn commit() -> Option<String> {
    let out = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// CPUs, CPU model, memory, and the PostgreSQL and Redis versions and durability settings.
pub async fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name")?.split_once(':').map(|(_, m)| m.trim().to_string()))
        .unwrap_or_else(|| "unknown CPU".into());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:")?.split_whitespace().next()?.parse::<f64>().ok())
        .map_or("unknown".into(), |kib| format!("{:.1} GiB", kib / 1024.0 / 1024.0));
    let pg = match pg_connect("postgres").await {
        Ok(mut c) => {
            let q = |sql: &'static str| sqlx::query_scalar::<_, String>(sql);
            let version = q("SHOW server_version").fetch_one(&mut c).await.unwrap_or_default();
            let fsync = q("SHOW fsync").fetch_one(&mut c).await.unwrap_or_default();
            let sync = q("SHOW synchronous_commit").fetch_one(&mut c).await.unwrap_or_default();
            let ssl = q("SHOW ssl").fetch_one(&mut c).await.unwrap_or_default();
            let max = q("SHOW max_connections").fetch_one(&mut c).await.unwrap_or_default();
            format!("PostgreSQL {version} (fsync {fsync}, synchronous_commit {sync}, ssl {ssl}, max_connections {max})")
        }
        Err(_) => "PostgreSQL ?".into(),
    };
    let redis = match redis_connect().await {
        Ok(mut c) => {
            let info: String = redis::cmd("INFO").arg("server").query_async(&mut c).await.unwrap_or_default();
            let version = info.lines().find_map(|l| l.strip_prefix("redis_version:")).unwrap_or("?").trim().to_string();
            format!("Redis {version}")
        }
        Err(_) => "Redis ?".into(),
    };
    format!("{cpus} CPUs ({model}), {memory} memory; {pg} and {redis} on the same machine")
}

/// Prints a bench's section (stdout) and, with `docs`, writes it into docs/benchmarks.md
/// between its markers ([`write_docs`]).
pub fn publish(name: &str, heading: &str, section: &str, docs: bool) -> Result<()> {
    println!("{section}");
    if docs {
        let path = write_docs(name, heading, section)?;
        eprintln!("bench: wrote {}", path.display());
    }
    Ok(())
}

/// Replaces the section between `<!-- NAME:begin -->` and `<!-- NAME:end -->` in
/// docs/benchmarks.md (creating the file, or appending `heading` and the section, when
/// needed) and keeps the rest of the file.
pub fn write_docs(name: &str, heading: &str, section: &str) -> Result<PathBuf> {
    let begin = format!("<!-- {name}:begin -->");
    let end = format!("<!-- {name}:end -->");
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs").join("benchmarks.md");
    let block = format!("{begin}\n{}\n{end}", section.trim_end());
    let current = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display()).into()),
    };
    let text = match (current.find(&begin), current.find(&end)) {
        (Some(b), Some(e)) if b < e => {
            format!("{}{block}{}", &current[..b], &current[e + end.len()..])
        }
        (None, None) if current.is_empty() => format!(
            "# Benchmarks\n\nProduced by scripts in the repository; do not edit the generated sections by hand \
             (everything between a `begin` and an `end` marker is replaced on the next run).\n\n{heading}\n\n{block}\n"
        ),
        (None, None) => format!("{}\n\n{heading}\n\n{block}\n", current.trim_end()),
        _ => {
            return Err(format!("{} has a broken {begin} … {end} pair; fix it by hand", path.display()).into());
        }
    };
    std::fs::create_dir_all(path.parent().expect("docs dir"))?;
    std::fs::write(&path, text)?;
    Ok(path)
}
