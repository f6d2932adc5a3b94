//! Restoring a backup, shared by the `verify_restore` step and `tenantry restore`: which backup, which tool for its format, the dump streamed from the store into that tool with its SHA-256 computed on the way, and the checks of the restored copy against the manifest.
//!
//! - **Formats**: [`DumpFormat`] is what a manifest's `dump.format` says, and
//!   [`restorer`] starts the tool for it. A new format is one variant and one arm there;
//!   a format this version does not know is refused by name before anything is touched.
//! - **Streaming**: the dump is read from the store once, hashed and written to the tool's
//!   stdin ([`stream`]); nothing of the tenant's size is kept in memory or on local disk.
//!   When the tool stops early (it failed), the rest is still read, for the checksum.
//! - **Targets**: a database of its own ([`Target::Database`], `pg_restore` into it), or a
//!   staging schema inside the tenant's database ([`Target::StagedSchema`]): a custom-format
//!   dump of one schema can only recreate that schema under its own name, which may be
//!   live. The archive is turned into SQL (`pg_restore --file=-`) and run by `psql` in one
//!   transaction that first renames a live schema of that name away, restores, renames the
//!   restored schema to the staging name and the live one back. Other sessions never see
//!   the live schema change (catalog changes are invisible until commit, and the net
//!   change to it is none); a failure rolls everything back.
//! - **Names**: staging databases and schemas have a prefix per purpose and tenant, so
//!   leftovers of a killed process are found by name ([`staged_prefix`], [`staged_name`]).

use std::collections::BTreeMap;

use futures::future::BoxFuture;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::StepError;
use super::backup::{DumpInfo, Manifest, TableRows};
use crate::catalog::HostSpec;
use crate::engine::postgres::{quote_ident, quote_literal};
use crate::engine::tools::{keep_tail, libpq_command, tail};
use crate::storage::ObjectStore;
use crate::storage::backups::{BackupFolder, Check};

/// PostgreSQL's identifier limit (NAMEDATALEN - 1).
pub const MAX_NAME: usize = 63;

/// How much of a tool's stderr a failed `restore` check quotes (its end).
const STDERR_KEPT: usize = 2000;

/// Bytes read from the store and written to the tool at a time.
const CHUNK: usize = 256 * 1024;

/// A dump format this version restores, from a manifest's `dump.format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DumpFormat {
    /// `pg_dump --format=custom`: restored with `pg_restore`.
    PgDumpCustom,
    /// A row-isolation backup (`backup_rows`): a gzipped SQL script, run by `psql`.
    PsqlScriptGzip,
}

impl DumpFormat {
    /// The tool that restores it, as the `restore` check names it.
    pub fn tool(self) -> &'static str {
        match self {
            Self::PgDumpCustom => "pg_restore",
            Self::PsqlScriptGzip => "psql",
        }
    }

    /// The format of `manifest`'s dump; `Err` names a format this version cannot restore.
    pub fn of(manifest: &Manifest) -> Result<Self, String> {
        match manifest.dump.format.as_str() {
            "pg_dump_custom" => Ok(Self::PgDumpCustom),
            super::backup_rows::FORMAT => Ok(Self::PsqlScriptGzip),
            other => Err(format!(
                "the dump's format {other:?} cannot be restored by this version of tenantry (it restores pg_dump_custom and {})",
                super::backup_rows::FORMAT
            )),
        }
    }
}

/// Where a restore writes, on the host given to [`restorer`].
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    /// Everything the dump holds, into this (new, empty) database.
    Database(&'a str),
    /// The dump's one schema `schema`, restored into `database` under the name `staging`
    /// (see the module's documentation); a live schema named `schema` is left as it is.
    /// `hold` is the name the live schema carries inside the restore's transaction.
    StagedSchema { database: &'a str, schema: &'a str, staging: &'a str, hold: &'a str },
}

/// A restore tool running: its stdin, and how it ended (`Err` quotes its stderr).
pub struct Restorer {
    stdin: Option<Box<dyn AsyncWrite + Unpin + Send>>,
    done: BoxFuture<'static, Result<(), String>>,
}

/// Starts the tool that restores `format` into `target` on `host`. `app_name` is its
/// `application_name` in `pg_stat_activity`.
pub fn restorer(format: DumpFormat, host: &HostSpec, target: Target<'_>, app_name: &str) -> Result<Restorer, String> {
    match (format, target) {
        (DumpFormat::PgDumpCustom, Target::Database(database)) => pg_restore_into(host, database, app_name),
        (DumpFormat::PgDumpCustom, Target::StagedSchema { database, schema, staging, hold }) => {
            pg_restore_staged(host, database, app_name, &staging_sql(schema, staging, hold))
        }
        (DumpFormat::PsqlScriptGzip, Target::Database(database)) => psql_script_into(host, database, app_name),
        (DumpFormat::PsqlScriptGzip, Target::StagedSchema { .. }) => {
            Err("a row-isolation backup restores into a database of its own (--into a new database), not into a schema"
                .to_string())
        }
    }
}

/// A gzipped SQL script (a row-isolation backup) unzipped into `psql` inside one
/// transaction whose `COMMIT` is given only after the whole script decoded: a corrupt or
/// truncated script (or a store that went away) leaves psql's input ending inside the
/// transaction, which the server rolls back.
fn psql_script_into(host: &HostSpec, database: &str, app_name: &str) -> Result<Restorer, String> {
    let mut psql = libpq_command("psql", &host.url, database);
    psql.env("PGAPPNAME", app_name);
    psql.args(["--no-psqlrc", "--quiet", "--no-password", "--set=ON_ERROR_STOP=1", "--file=-"]);
    psql.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped());
    let mut psql = psql.spawn().map_err(|e| spawn_failure("psql", e))?;
    let psql_err = psql.stderr.take().map(|pipe| keep_tail(pipe, STDERR_KEPT));
    let Some(mut psql_in) = psql.stdin.take() else { return Err("psql's stdin was not opened".to_string()) };
    let (writer, reader) = tokio::io::duplex(CHUNK);
    let copy = tokio::spawn(async move {
        let mut script =
            async_compression::tokio::bufread::GzipDecoder::new(tokio::io::BufReader::with_capacity(CHUNK, reader));
        let copied = async {
            psql_in.write_all(b"BEGIN;\n").await?;
            tokio::io::copy(&mut script, &mut psql_in).await.map(|_| ())
        }
        .await;
        let committed = match copied {
            Ok(()) => psql_in.write_all(b"\nCOMMIT;\n").await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let _ = psql_in.shutdown().await;
        committed
    });
    let done = Box::pin(async move {
        let committed = copy.await.unwrap_or_else(|e| Err(format!("the restore's copy task failed: {e}")));
        exited("psql", psql, psql_err).await?;
        committed.map_err(|e| format!("the script could not be read to its end ({e}); psql committed nothing"))
    });
    Ok(Restorer { stdin: Some(Box::new(writer)), done })
}

fn spawn_failure(program: &str, e: std::io::Error) -> String {
    format!("cannot run {program}: {e} (install the PostgreSQL client tools)")
}

/// `pg_restore` reading the archive from stdin, into `database`.
fn pg_restore_into(host: &HostSpec, database: &str, app_name: &str) -> Result<Restorer, String> {
    let mut cmd = libpq_command("pg_restore", &host.url, database);
    cmd.env("PGAPPNAME", app_name);
    cmd.args(["--no-owner", "--no-acl", "--exit-on-error", "--no-password"]).arg(format!("--dbname={database}"));
    cmd.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| spawn_failure("pg_restore", e))?;
    let stdin = child.stdin.take().map(|s| Box::new(s) as Box<dyn AsyncWrite + Unpin + Send>);
    let stderr = child.stderr.take().map(|pipe| keep_tail(pipe, STDERR_KEPT));
    let done = Box::pin(async move { exited("pg_restore", child, stderr).await });
    Ok(Restorer { stdin, done })
}

/// How a tool ended: `Err` quotes the end of its stderr.
async fn exited(
    program: &str,
    mut child: tokio::process::Child,
    stderr: Option<tokio::task::JoinHandle<Vec<u8>>>,
) -> Result<(), String> {
    let status = child.wait().await.map_err(|e| format!("waiting for {program}: {e}"))?;
    let stderr = match stderr {
        Some(task) => task.await.unwrap_or_default(),
        None => Vec::new(),
    };
    if status.success() { Ok(()) } else { Err(format!("{program} failed ({status}): {}", tail(&stderr, STDERR_KEPT))) }
}

/// What runs before and after the archive's SQL in the staged restore's transaction.
struct StagingSql {
    before: String,
    after: String,
}

/// Opens the transaction and renames a live schema `schema` to `hold` (when there is one);
/// after the restore, renames the restored `schema` to `staging`, `hold` back to `schema`,
/// and commits. The `COMMIT` is the last thing psql is given, and only when the whole
/// script was: when anything stops early (the archive is corrupt, tenantry is killed),
/// psql's input ends inside the transaction, and the server rolls it back.
fn staging_sql(schema: &str, staging: &str, hold: &str) -> StagingSql {
    let rename_if_exists = |from: &str, to: &str| {
        format!(
            "DO $tenantry$ BEGIN IF EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = {from_lit}) THEN \
             EXECUTE format('ALTER SCHEMA %I RENAME TO %I', {from_lit}, {to_lit}); END IF; END $tenantry$;\n",
            from_lit = quote_literal(from),
            to_lit = quote_literal(to),
        )
    };
    StagingSql {
        before: format!("BEGIN;\n{}", rename_if_exists(schema, hold)),
        after: format!(
            "\nALTER SCHEMA {} RENAME TO {};\n{}COMMIT;\n",
            quote_ident(schema),
            quote_ident(staging),
            rename_if_exists(hold, schema)
        ),
    }
}

/// `pg_restore --file=-` (the archive as SQL; a one-schema dump has no transaction
/// control of its own) piped into `psql` between `sql.before` and `sql.after`.
fn pg_restore_staged(host: &HostSpec, database: &str, app_name: &str, sql: &StagingSql) -> Result<Restorer, String> {
    let mut script = libpq_command("pg_restore", &host.url, database);
    script.args(["--no-owner", "--no-acl", "--file=-"]);
    script
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut psql = libpq_command("psql", &host.url, database);
    psql.env("PGAPPNAME", app_name);
    psql.args(["--no-psqlrc", "--quiet", "--no-password", "--set=ON_ERROR_STOP=1", "--file=-"]);
    psql.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped());

    let mut script = script.spawn().map_err(|e| spawn_failure("pg_restore", e))?;
    let mut psql = psql.spawn().map_err(|e| spawn_failure("psql", e))?;
    let stdin = script.stdin.take().map(|s| Box::new(s) as Box<dyn AsyncWrite + Unpin + Send>);
    let script_err = script.stderr.take().map(|pipe| keep_tail(pipe, STDERR_KEPT));
    let psql_err = psql.stderr.take().map(|pipe| keep_tail(pipe, STDERR_KEPT));
    let (Some(mut sql_out), Some(mut psql_in)) = (script.stdout.take(), psql.stdin.take()) else {
        return Err("the restore tools' pipes were not opened".to_string());
    };
    let (before, after) = (sql.before.clone(), sql.after.clone());
    // The SQL goes to psql as it comes; psql stopping early (an error) ends the copy, and
    // its status says why. The epilogue (with the COMMIT) follows only a complete script.
    let copy = tokio::spawn(async move {
        let copied = async {
            psql_in.write_all(before.as_bytes()).await?;
            tokio::io::copy(&mut sql_out, &mut psql_in).await.map(|_| ())
        }
        .await;
        // When psql stopped early, pg_restore must not wait on a pipe no one reads.
        drop(sql_out);
        let script = exited("pg_restore", script, script_err).await;
        let committed = copied.is_ok() && script.is_ok() && psql_in.write_all(after.as_bytes()).await.is_ok();
        let _ = psql_in.shutdown().await;
        (script, committed)
    });
    let done = Box::pin(async move {
        let (script, committed) =
            copy.await.unwrap_or_else(|e| (Err(format!("the restore's copy task failed: {e}")), false));
        let psql = exited("psql", psql, psql_err).await;
        script?;
        psql?;
        if committed { Ok(()) } else { Err("psql stopped before the restore's SQL was complete".to_string()) }
    });
    Ok(Restorer { stdin, done })
}

/// What [`stream`] read and how the restore tool ended.
pub struct Streamed {
    pub size: u64,
    pub sha256: String,
    /// The tool's outcome; `Err` quotes the end of its stderr.
    pub restore: Result<(), String>,
}

impl Streamed {
    /// The `sha256` check (size and SHA-256 of the dump as read, against the manifest) and
    /// the `restore` check (the tool's exit).
    pub fn checks(&self, dump: &DumpInfo, tool: &str) -> [Check; 2] {
        let intact = self.size == dump.size && self.sha256 == dump.sha256;
        let sha256 = outcome(
            "sha256",
            intact,
            if intact {
                format!("{} bytes, sha256 {}", self.size, self.sha256)
            } else {
                format!(
                    "the dump read is {} bytes with sha256 {}; the manifest says {} bytes with sha256 {}",
                    self.size, self.sha256, dump.size, dump.sha256
                )
            },
        );
        let restore = match &self.restore {
            Ok(()) => outcome("restore", true, format!("{tool} succeeded")),
            Err(e) => outcome("restore", false, e.clone()),
        };
        [sha256, restore]
    }
}

/// Reads the object `key` once, hashing it and writing it to the tool `start` starts
/// (only once the object is found). `None` when there is no such object.
pub async fn stream(
    store: &ObjectStore,
    key: &str,
    start: impl FnOnce() -> Result<Restorer, String>,
) -> Result<Option<Streamed>, StepError> {
    let Some(mut reader) = store.get(key).await.map_err(StepError::from)? else { return Ok(None) };
    let Restorer { mut stdin, done } = start().map_err(StepError::permanent)?;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = reader
            .read(&mut buf)
            .await
            .map_err(|e| StepError::transient(format!("reading {key} from the object store: {e}")))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
        if let Some(pipe) = stdin.as_mut()
            && pipe.write_all(&buf[..n]).await.is_err()
        {
            // The tool stopped reading: it failed, and its status says why.
            stdin = None;
        }
    }
    if let Some(mut pipe) = stdin.take() {
        let _ = pipe.shutdown().await;
    }
    let restore = done.await;
    Ok(Some(Streamed { size, sha256: hex::encode(hasher.finalize()), restore }))
}

pub fn outcome(name: &str, passed: bool, detail: impl Into<String>) -> Check {
    Check { name: name.to_string(), passed, detail: detail.into() }
}

/// The backup to restore among a tenant's folders (oldest first): the newest complete one,
/// or the one `named` (a folder name, or a `service/tenant/folder` path under `prefix`).
pub fn choose_backup<'f>(
    folders: &'f [BackupFolder],
    named: Option<&str>,
    prefix: &str,
) -> Result<&'f BackupFolder, String> {
    let Some(named) = named else {
        return folders.iter().rev().find(|f| f.complete).ok_or_else(|| {
            format!("no complete backup (a folder with its manifest) under {prefix}; run the backup step first")
        });
    };
    let named = named.trim_end_matches('/');
    let folder = if named.contains('/') { named.to_string() } else { format!("{prefix}{named}") };
    let found = folders
        .iter()
        .find(|f| f.folder == folder)
        .ok_or_else(|| format!("backup {folder} is not among the tenant's backups under {prefix}"))?;
    if !found.complete {
        return Err(format!("backup {folder} has no manifest: it is not a complete backup"));
    }
    Ok(found)
}

/// The `tables` check (the same tables in the restored copy as in the manifest) and the
/// `row_counts` check (of the tables in both).
pub fn compare_tables(expected: &[TableRows], restored: &[TableRows]) -> [Check; 2] {
    let name = |t: &TableRows| format!("{}.{}", t.schema, t.table);
    let restored: BTreeMap<String, i64> = restored.iter().map(|t| (name(t), t.rows)).collect();
    let expected: BTreeMap<String, i64> = expected.iter().map(|t| (name(t), t.rows)).collect();
    let missing: Vec<String> = expected.keys().filter(|t| !restored.contains_key(*t)).cloned().collect();
    let extra: Vec<String> = restored.keys().filter(|t| !expected.contains_key(*t)).cloned().collect();
    let tables = if missing.is_empty() && extra.is_empty() {
        outcome("tables", true, format!("{} tables, as in the manifest", expected.len()))
    } else {
        let mut problems = Vec::new();
        if !missing.is_empty() {
            problems.push(format!("in the manifest but not restored: {}", listed(&missing)));
        }
        if !extra.is_empty() {
            problems.push(format!("restored but not in the manifest: {}", listed(&extra)));
        }
        outcome("tables", false, problems.join("; "))
    };
    let differ: Vec<String> = expected
        .iter()
        .filter_map(|(t, &want)| {
            let &got = restored.get(t)?;
            (got != want).then(|| format!("{t} has {got} rows, the manifest says {want}"))
        })
        .collect();
    let rows = if differ.is_empty() {
        let total: i64 = expected.iter().filter(|(t, _)| restored.contains_key(*t)).map(|(_, n)| n).sum();
        outcome("row_counts", true, format!("{total} rows, as in the manifest"))
    } else {
        outcome("row_counts", false, listed(&differ))
    };
    [tables, rows]
}

/// Up to ten items, then how many more.
pub fn listed(items: &[String]) -> String {
    let mut out = items.iter().take(10).cloned().collect::<Vec<_>>().join(", ");
    if items.len() > 10 {
        out.push_str(&format!(" and {} more", items.len() - 10));
    }
    out
}

/// The `schema_version` check: the restored history's newest applied migration against
/// the manifest's.
pub fn compare_version(expected: Option<&str>, restored: Option<&str>) -> Check {
    match (expected, restored) {
        (None, None) => outcome("schema_version", true, "no migration history, as in the manifest"),
        (Some(want), Some(got)) if want == got => outcome("schema_version", true, format!("version {got}")),
        (want, got) => outcome(
            "schema_version",
            false,
            format!(
                "the restored history's newest applied migration is {}; the manifest says {}",
                got.unwrap_or("none"),
                want.unwrap_or("none")
            ),
        ),
    }
}

/// The prefix of every staging database or schema that `purpose` (`tenantry_verify_`,
/// `tenantry_restore_`) makes for `tenant`: the purpose and 12 hex digits of the SHA-256
/// of the id. (Tenant ids may contain `_`, so the id itself cannot end an unambiguous
/// prefix: `tenantry_verify_a_` would also match tenant `a_b`'s databases.)
pub fn staged_prefix(purpose: &str, tenant: &str) -> String {
    let digest = hex::encode(Sha256::digest(tenant.as_bytes()));
    format!("{purpose}{}_", &digest[..12])
}

/// A staging name for one attempt of `run` (or one command) on `tenant`: the tenant's
/// [`staged_prefix`], 8 hex digits unique to the attempt (the run, this process, a
/// counter, the time), and as much of the tenant id as fits in 63 bytes, for people
/// reading `\l` or `\dn`.
pub fn staged_name(purpose: &str, tenant: &str, run: &str) -> String {
    static ATTEMPTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut h = Sha256::new();
    h.update(run.as_bytes());
    h.update(std::process::id().to_le_bytes());
    h.update(ATTEMPTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed).to_le_bytes());
    h.update(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos().to_le_bytes(),
    );
    let attempt = hex::encode(&h.finalize()[..4]);
    let mut name = format!("{}{attempt}_", staged_prefix(purpose, tenant));
    for c in tenant.chars() {
        if name.len() + c.len_utf8() > MAX_NAME {
            break;
        }
        name.push(c);
    }
    name
}

/// What a restore target already holds (see `restore_contents.sql`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, sqlx::FromRow)]
pub struct Contents {
    pub tables: i64,
    pub views: i64,
    pub sequences: i64,
    pub functions: i64,
    /// Schemas besides `public` (of a whole database).
    pub schemas: i64,
}

impl Contents {
    /// What `schema` (or, when `None`, the whole database) of `conn` holds.
    pub async fn of(conn: &mut sqlx::PgConnection, schema: Option<&str>) -> Result<Self, sqlx::Error> {
        sqlx::query_as(include_str!("restore_contents.sql")).bind(schema).fetch_one(conn).await
    }

    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

impl std::fmt::Display for Contents {
    /// "12 tables and 3 sequences", "nothing".
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let counted = [
            (self.tables, "table"),
            (self.views, "view"),
            (self.sequences, "sequence"),
            (self.functions, "function"),
            (self.schemas, "schema"),
        ];
        let parts: Vec<String> = counted
            .iter()
            .filter(|(n, _)| *n > 0)
            .map(|(n, what)| format!("{n} {what}{}", if *n == 1 { "" } else { "s" }))
            .collect();
        match parts.as_slice() {
            [] => f.write_str("nothing"),
            [one] => f.write_str(one),
            [rest @ .., last] => write!(f, "{} and {last}", rest.join(", ")),
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, TimeZone, Utc};

    use super::*;

    #[test]
    fn staged_names_fit_postgres_and_start_with_the_tenants_own_prefix() {
        let long = "t".repeat(63);
        for tenant in ["a", "a_b", "acme-corp", long.as_str()] {
            let name = staged_name("tenantry_restore_", tenant, "20261124-230501-3fa9c1");
            assert!(name.len() <= MAX_NAME, "{name} is {} bytes", name.len());
            assert!(name.starts_with(&staged_prefix("tenantry_restore_", tenant)), "{name}");
        }
        // A prefix never matches another tenant's names, even when one id extends the other.
        assert!(!staged_name("p_", "a_b", "r").starts_with(&staged_prefix("p_", "a")));
        assert!(staged_name("p_", "acme", "r").ends_with("_acme"));
        assert_ne!(staged_name("p_", "acme", "r"), staged_name("p_", "acme", "r"), "each attempt has its own name");
    }

    #[test]
    fn tables_and_row_counts_name_what_differs() {
        let t = |table: &str, rows| TableRows { schema: "public".into(), table: table.into(), rows };
        let [tables, rows] = compare_tables(&[t("a", 1), t("b", 2)], &[t("a", 1), t("b", 2)]);
        assert!(tables.passed && rows.passed, "{tables:?} {rows:?}");
        let [tables, rows] =
            compare_tables(&[t("a", 1), t("b", 2), t("gone", 5)], &[t("a", 1), t("b", 3), t("new", 0)]);
        assert!(!tables.passed);
        assert!(tables.detail.contains("not restored: public.gone"), "{}", tables.detail);
        assert!(tables.detail.contains("not in the manifest: public.new"), "{}", tables.detail);
        assert!(!rows.passed);
        assert_eq!(rows.detail, "public.b has 3 rows, the manifest says 2");
        assert!(compare_version(Some("3"), Some("3")).passed);
        assert!(!compare_version(Some("3"), Some("2")).passed);
        assert!(!compare_version(None, Some("2")).passed);
    }

    fn day(d: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, d, 2, 0, 0).unwrap()
    }

    #[test]
    fn the_newest_complete_backup_is_chosen_unless_one_is_named() {
        let folder = |name: &str, d: u32, complete: bool| BackupFolder {
            folder: format!("core/acme/{name}"),
            taken_at: day(d),
            complete,
            size: 1,
            verdicts: Vec::new(),
            objects: Vec::new(),
        };
        let folders = [folder("f1", 1, true), folder("f2", 2, true), folder("f3", 3, false)];
        assert_eq!(choose_backup(&folders, None, "core/acme/").unwrap().folder, "core/acme/f2");
        assert_eq!(choose_backup(&folders, Some("f1"), "core/acme/").unwrap().folder, "core/acme/f1");
        assert_eq!(choose_backup(&folders, Some("core/acme/f1/"), "core/acme/").unwrap().folder, "core/acme/f1");
        assert!(choose_backup(&folders, Some("f3"), "core/acme/").unwrap_err().contains("no manifest"));
        assert!(choose_backup(&folders, Some("core/other/f1"), "core/acme/").is_err());
        assert!(choose_backup(&folders[2..], None, "core/acme/").unwrap_err().contains("no complete backup"));
    }

    #[test]
    fn only_known_formats_restore() {
        let manifest = |format: &str| -> Manifest {
            serde_json::from_value(serde_json::json!({
                "format": 1, "tenant": "a", "service": "s", "engine": "postgres", "isolation": "row",
                "host": "h", "database": "d", "schema": "public", "schema_version": null,
                "started_at": "2026-11-01T02:00:00Z", "finished_at": "2026-11-01T02:00:01Z",
                "dump": { "key": "k", "format": format, "compression": null, "size": 1, "sha256": "x" },
                "tables": [], "tool_version": "", "server_version": "", "run": "r", "receipt_run": "r",
            }))
            .unwrap()
        };
        assert_eq!(DumpFormat::of(&manifest("pg_dump_custom")), Ok(DumpFormat::PgDumpCustom));
        assert_eq!(DumpFormat::of(&manifest("psql_script_gzip")), Ok(DumpFormat::PsqlScriptGzip));
        let refused = DumpFormat::of(&manifest("tar")).unwrap_err();
        assert!(refused.contains("\"tar\" cannot be restored"), "{refused}");
    }

    #[test]
    fn contents_read_like_a_sentence() {
        assert_eq!(Contents::default().to_string(), "nothing");
        assert_eq!(Contents { tables: 12, ..Default::default() }.to_string(), "12 tables");
        let c = Contents { tables: 1, sequences: 2, schemas: 1, ..Default::default() };
        assert_eq!(c.to_string(), "1 table, 2 sequences and 1 schema");
        assert!(!c.is_empty());
    }

    #[test]
    fn the_staged_restore_renames_the_live_schema_away_and_back() {
        let sql = staging_sql("tenant_a", "tenantry_restore_x", "tenantry_restore_y");
        assert!(sql.before.contains("nspname = 'tenant_a'") && sql.before.contains("'tenantry_restore_y'"));
        assert!(sql.after.contains("ALTER SCHEMA \"tenant_a\" RENAME TO \"tenantry_restore_x\""), "{}", sql.after);
        assert!(sql.after.contains("nspname = 'tenantry_restore_y'"), "{}", sql.after);
    }
}
