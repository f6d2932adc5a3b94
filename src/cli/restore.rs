//! `tenantry restore TENANT --service S [--backup KEY] [--into DATABASE|SCHEMA] [--force]`: a tenant's newest complete (or a named) backup restored into its own placement or another database or schema on its host, beside the target first, checked against the manifest, then put in place.
//!
//! What happens, in order:
//! 1. The backup is chosen (as `verify_restore` chooses it) and its manifest read; a format
//!    this version cannot restore is refused before anything is touched. A row-isolation
//!    backup (the tenant's rows of shared tables) restores only `--into` a database of its
//!    own: restore never writes among other tenants' rows.
//! 2. The target (the tenant's database or schema, or `--into`) is looked at: a target that
//!    holds anything is refused, naming what it holds, unless `--force`. A target that is
//!    another tenant's placement, or a database the fleet shares, is refused even with
//!    `--force`.
//! 3. The backup is restored beside the target, under a staging name
//!    (`tenantry_restore_…`): a new database on the tenant's host (database isolation), or
//!    a schema in the tenant's database (schema isolation; see [`crate::steps::restore`]).
//!    The live target is not touched while this runs.
//! 4. The staged copy is checked: SHA-256 and size of the dump as read, the restore tool's
//!    exit, tables, row counts and schema version against the manifest. A failed check
//!    drops the staged copy and leaves the target as it was (exit 1).
//! 5. The staged copy replaces the target. Schema isolation: in one transaction, the old
//!    schema is dropped (`CASCADE`) and the staged one renamed, so other sessions see the
//!    old schema or the new one, never neither. Database isolation: the old database is
//!    dropped (`WITH (FORCE)`, ending its sessions) and the staged one renamed; for the
//!    moment between the two statements there is no database of that name.
//!
//! One restore of a tenant at a time (an advisory lock on the host's administrative
//! database); staged copies that a killed restore left behind are dropped by the tenant's
//! next restore, by name.

use std::time::Instant;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::postgres::PgConnection;
use sqlx::{ConnectOptions, Connection};

use super::{Context, Failure};
use crate::catalog::{Catalog, Engine, HostSpec, Isolation, Placement};
use crate::engine::postgres::quote_ident;
use crate::steps::backup::{Manifest, count_rows, schema_version};
use crate::steps::restore::{
    Contents, DumpFormat, Target, choose_backup, compare_tables, compare_version, outcome, restorer, staged_name,
    staged_prefix, stream,
};
use crate::storage::backups::{Check, tenant_backups, tenant_prefix};
use crate::storage::{ObjectStore, StorageError};

/// Every staging database or schema of `tenantry restore` starts with this; only names
/// with it are ever dropped as leftovers.
pub const STAGING_PREFIX: &str = "tenantry_restore_";

/// What the command was asked.
pub struct Request<'a> {
    pub tenant: &'a str,
    pub service: &'a str,
    pub backup: Option<&'a str>,
    pub into: Option<&'a str>,
    pub force: bool,
}

/// What `--json` prints (and the text output shows).
#[derive(Debug, Serialize)]
struct Restored {
    tenant: String,
    service: String,
    /// The backup's folder, relative to the store's prefix.
    backup: String,
    taken_at: DateTime<Utc>,
    age_seconds: i64,
    /// Bytes of the dump.
    size: u64,
    host: String,
    database: String,
    /// The schema restored into (schema isolation); null for a whole database.
    schema: Option<String>,
    /// What the target held before, when it held anything (only with `--force`).
    replaced: Option<String>,
    tables: usize,
    rows: i64,
    duration_ms: u64,
    passed: bool,
    checks: Vec<Check>,
}

/// Where the restore goes: a database, or a schema in a database, on the tenant's host.
struct Destination {
    database: String,
    schema: Option<String>,
}

impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.schema {
            Some(schema) => write!(f, "schema {schema} in database {}", self.database),
            None => write!(f, "database {}", self.database),
        }
    }
}

pub async fn run(ctx: &Context, req: &Request<'_>, json: bool) -> Result<(), Failure> {
    let catalog = ctx.checked_catalog().await?;
    let placement = placement(&catalog, req)?;
    let destination = destination(&catalog, req, placement)?;
    let store = ctx.objects().await?.ok_or_else(|| {
        Failure::Failed("the config has no [storage]: there are no backups to restore from".to_string())
    })?;
    let host =
        ctx.config.config.hosts.get(&placement.host).ok_or_else(|| {
            Failure::Failed(format!("host {:?} of the placement is not in the config", placement.host))
        })?;
    let (folder, taken_at, manifest) = backup(&store, req).await?;
    let who = format!("tenant {}, service {}", req.tenant, req.service);
    let row = placement.isolation == Isolation::Row || manifest.isolation == Isolation::Row.as_str();
    if row && req.into.is_none() {
        return Err(Failure::Failed(format!(
            "{who} has row isolation: its backup ({}) holds the tenant's rows of tables it shares with other tenants, and restore never writes among another tenant's rows; restore it into a database of its own with --into NEW_DATABASE",
            manifest.dump.key
        )));
    }
    let format = DumpFormat::of(&manifest).map_err(|e| Failure::Failed(format!("backup {folder}: {e}")))?;
    if manifest.isolation != placement.isolation.as_str() {
        return Err(Failure::Failed(format!(
            "backup {folder} was taken with {} isolation, and service {} now has {} isolation: restore it by hand",
            manifest.isolation, req.service, placement.isolation
        )));
    }

    let started = Instant::now();
    let admin_db = host.url.database().unwrap_or_else(|| "postgres".to_string());
    let mut admin = connect(host, &admin_db, &placement.host).await?;
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
        .bind(format!("tenantry_restore:{}", req.tenant))
        .fetch_one(&mut admin)
        .await
        .map_err(db_failure("taking the restore lock"))?;
    if !locked {
        return Err(Failure::Failed(format!(
            "another restore of tenant {} is running on host {}",
            req.tenant, placement.host
        )));
    }
    let before = contents(&mut admin, host, &placement.host, &destination).await?;
    if let Some(held) = before.filter(|c| !c.is_empty())
        && !req.force
    {
        return Err(Failure::Failed(format!("{destination} has {held}; --force to restore over it")));
    }
    drop_leftovers(&mut admin, host, &placement.host, req.tenant, &destination).await?;

    let staging = staged_name(STAGING_PREFIX, req.tenant, "restore");
    if !json {
        eprintln!("restoring {folder} into {destination} on host {} (staged as {staging})", placement.host);
    }
    let checks = match &destination.schema {
        None => stage_database(&mut admin, host, &placement.host, &store, &manifest, format, &staging).await?,
        Some(_) => stage_schema(host, &placement.host, &store, &manifest, format, &destination, &staging).await?,
    };
    let passed = checks.iter().all(|c| c.passed);
    if passed {
        swap(&mut admin, host, &placement.host, &destination, &staging, req.force).await?;
    } else {
        drop_staged(&mut admin, host, &placement.host, &destination, &staging).await?;
    }
    let _ = admin.close().await;

    let restored = Restored {
        tenant: req.tenant.to_string(),
        service: req.service.to_string(),
        backup: folder,
        age_seconds: (Utc::now() - taken_at).num_seconds(),
        taken_at,
        size: manifest.dump.size,
        host: placement.host.clone(),
        database: destination.database.clone(),
        schema: destination.schema.clone(),
        replaced: before.filter(|c| !c.is_empty()).map(|c| c.to_string()),
        tables: manifest.tables.len(),
        rows: manifest.tables.iter().map(|t| t.rows).sum(),
        duration_ms: started.elapsed().as_millis() as u64,
        passed,
        checks,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&restored).expect("serialises"));
    } else {
        print(&restored, &destination);
    }
    if passed { Ok(()) } else { Err(Failure::Reported) }
}

/// The tenant's placement of the service, or why there is none to restore.
fn placement<'c>(catalog: &'c Catalog, req: &Request<'_>) -> Result<&'c Placement, Failure> {
    let tenant = catalog.tenant(req.tenant).ok_or_else(|| {
        Failure::Failed(format!("no tenant {:?} in the catalog (see `tenantry tenants`)", req.tenant))
    })?;
    if !catalog.services.contains_key(req.service) {
        let known: Vec<&str> = catalog.services.keys().map(String::as_str).collect();
        return Err(Failure::Failed(format!(
            "no service {:?} in the config (services: {})",
            req.service,
            known.join(", ")
        )));
    }
    let placement = tenant.placements.get(req.service).ok_or_else(|| {
        let has: Vec<&str> = tenant.placements.keys().map(String::as_str).collect();
        Failure::Failed(format!(
            "tenant {} has no placement of service {} (its services: {})",
            req.tenant,
            req.service,
            if has.is_empty() { "none".to_string() } else { has.join(", ") }
        ))
    })?;
    if placement.engine != Engine::Postgres {
        return Err(Failure::Failed(format!("restore of {} services is not supported yet", placement.engine)));
    }
    Ok(placement)
}

fn store_failure(e: StorageError) -> Failure {
    if e.transient { Failure::Unreachable(e.to_string()) } else { Failure::Failed(e.to_string()) }
}

/// The chosen backup's folder, its time and its manifest.
async fn backup(store: &ObjectStore, req: &Request<'_>) -> Result<(String, DateTime<Utc>, Manifest), Failure> {
    let prefix = tenant_prefix(req.service, req.tenant);
    let folders = tenant_backups(store, req.service, req.tenant).await.map_err(store_failure)?;
    let folder = choose_backup(&folders, req.backup, &prefix).map_err(|e| {
        Failure::Failed(format!(
            "tenant {}, service {}: {e} (see `tenantry backups {}`)",
            req.tenant, req.service, req.tenant
        ))
    })?;
    let key = folder.manifest_key();
    let bytes = store
        .get_bytes(&key)
        .await
        .map_err(store_failure)?
        .ok_or_else(|| Failure::Failed(format!("{key} was listed but cannot be read (deleted meanwhile?)")))?;
    let manifest: Manifest = serde_json::from_slice(&bytes)
        .map_err(|e| Failure::Failed(format!("{key} is not a readable manifest: {e}")))?;
    if manifest.tenant != req.tenant || manifest.service != req.service {
        return Err(Failure::Failed(format!(
            "{key} describes tenant {} of service {}, not tenant {} of service {}",
            manifest.tenant, manifest.service, req.tenant, req.service
        )));
    }
    Ok((folder.folder.clone(), folder.taken_at, manifest))
}

/// The tenant's own database or schema, or `--into`, refused when it is anything that
/// belongs to someone else.
fn destination(catalog: &Catalog, req: &Request<'_>, own: &Placement) -> Result<Destination, Failure> {
    let schema_isolation = own.isolation == Isolation::Schema;
    let dest = match (req.into, schema_isolation) {
        (None, false) => Destination { database: own.database.clone(), schema: None },
        (None, true) => Destination { database: own.database.clone(), schema: Some(own.schema.clone()) },
        (Some(db), false) => Destination { database: db.to_string(), schema: None },
        (Some(schema), true) => Destination { database: own.database.clone(), schema: Some(schema.to_string()) },
    };
    let refuse = |why: String| Err(Failure::Failed(format!("--into {}: {why}", req.into.unwrap_or_default())));
    let Some(into) = req.into else { return Ok(dest) };
    if into.is_empty() || into.len() > crate::steps::restore::MAX_NAME {
        return refuse("a name of 1 to 63 bytes is needed".to_string());
    }
    if into.starts_with("pg_")
        || into.starts_with(STAGING_PREFIX)
        || into.starts_with(crate::steps::verify_restore::SCRATCH_PREFIX)
        || ["information_schema", "postgres", "template0", "template1"].contains(&into)
    {
        return refuse(format!("{into} is reserved"));
    }
    let own_dest = Destination { database: own.database.clone(), schema: schema_isolation.then(|| own.schema.clone()) };
    if dest == own_dest && own.isolation != Isolation::Row {
        return Ok(dest);
    }
    for tenant in &catalog.tenants {
        for (service, p) in &tenant.placements {
            if p.host != own.host || p.engine != Engine::Postgres {
                continue;
            }
            // A row tenant's placement is the database every tenant of the service shares:
            // never the tenant's own to write over.
            let mine = tenant.id.as_str() == req.tenant && service == req.service && p.isolation != Isolation::Row;
            let taken = match &dest.schema {
                // A database that any placement uses (a tenant's, or one the fleet shares).
                None => p.database == dest.database,
                Some(schema) => p.database == dest.database && &p.schema == schema,
            };
            if taken && !mine {
                return refuse(format!(
                    "{dest} is tenant {}'s placement of service {service}; restore never writes over another placement",
                    tenant.id.as_str()
                ));
            }
        }
    }
    Ok(dest)
}

impl PartialEq for Destination {
    fn eq(&self, other: &Self) -> bool {
        self.database == other.database && self.schema == other.schema
    }
}

fn db_failure(what: &str) -> impl Fn(sqlx::Error) -> Failure + use<> {
    let what = what.to_string();
    move |e| match e {
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::PoolTimedOut => {
            Failure::Unreachable(format!("{what}: {e}"))
        }
        e => Failure::Failed(format!("{what}: {e}")),
    }
}

async fn connect(host: &HostSpec, database: &str, host_name: &str) -> Result<PgConnection, Failure> {
    let options = crate::engine::postgres::options(&host.url.with_database(database))
        .map_err(|e| Failure::Failed(format!("invalid URL for host {host_name}: {e}")))?
        .application_name("tenantry-restore");
    options.connect().await.map_err(db_failure(&format!("connecting to database {database} on host {host_name}")))
}

async fn database_exists(admin: &mut PgConnection, database: &str) -> Result<bool, Failure> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(database)
        .fetch_one(admin)
        .await
        .map_err(db_failure("looking for the database"))
}

/// What the destination holds; `None` when it does not exist.
async fn contents(
    admin: &mut PgConnection,
    host: &HostSpec,
    host_name: &str,
    dest: &Destination,
) -> Result<Option<Contents>, Failure> {
    if !database_exists(admin, &dest.database).await? {
        if dest.schema.is_some() {
            return Err(Failure::Failed(format!("database {} does not exist on host {host_name}", dest.database)));
        }
        return Ok(None);
    }
    let mut conn = connect(host, &dest.database, host_name).await?;
    if let Some(schema) = &dest.schema {
        let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
            .bind(schema)
            .fetch_one(&mut conn)
            .await
            .map_err(db_failure("looking for the schema"))?;
        if !exists {
            let _ = conn.close().await;
            return Ok(None);
        }
    }
    let found =
        Contents::of(&mut conn, dest.schema.as_deref()).await.map_err(db_failure("reading what the target holds"))?;
    let _ = conn.close().await;
    Ok(Some(found))
}

/// Drops the staged copies an earlier restore of this tenant left (killed, or stopped
/// with Ctrl-C): databases on the host, or schemas in the destination's database.
async fn drop_leftovers(
    admin: &mut PgConnection,
    host: &HostSpec,
    host_name: &str,
    tenant: &str,
    dest: &Destination,
) -> Result<(), Failure> {
    let prefix = staged_prefix(STAGING_PREFIX, tenant);
    match &dest.schema {
        None => {
            let names: Vec<String> = sqlx::query_scalar(
                "SELECT datname::text FROM pg_database WHERE left(datname, length($1)) = $1 ORDER BY 1",
            )
            .bind(&prefix)
            .fetch_all(&mut *admin)
            .await
            .map_err(db_failure("listing leftover staging databases"))?;
            for name in names {
                let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", quote_ident(&name));
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                    .execute(&mut *admin)
                    .await
                    .map_err(db_failure(&format!("dropping leftover {name}")))?;
                eprintln!("dropped {name}, left by an earlier restore of tenant {tenant}");
            }
        }
        Some(_) => {
            let mut conn = connect(host, &dest.database, host_name).await?;
            let names: Vec<String> = sqlx::query_scalar(
                "SELECT nspname::text FROM pg_namespace WHERE left(nspname, length($1)) = $1 ORDER BY 1",
            )
            .bind(&prefix)
            .fetch_all(&mut conn)
            .await
            .map_err(db_failure("listing leftover staging schemas"))?;
            for name in names {
                let sql = format!("DROP SCHEMA IF EXISTS {} CASCADE", quote_ident(&name));
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                    .execute(&mut conn)
                    .await
                    .map_err(db_failure(&format!("dropping leftover {name}")))?;
                eprintln!("dropped schema {name}, left by an earlier restore of tenant {tenant}");
            }
            let _ = conn.close().await;
        }
    }
    Ok(())
}

/// Restores into a new staging database and checks it.
#[allow(clippy::too_many_arguments)]
async fn stage_database(
    admin: &mut PgConnection,
    host: &HostSpec,
    host_name: &str,
    store: &ObjectStore,
    manifest: &Manifest,
    format: DumpFormat,
    staging: &str,
) -> Result<Vec<Check>, Failure> {
    let create = format!("CREATE DATABASE {} TEMPLATE template0", quote_ident(staging));
    sqlx::raw_sql(sqlx::AssertSqlSafe(create))
        .execute(&mut *admin)
        .await
        .map_err(db_failure(&format!("creating staging database {staging} on host {host_name}")))?;
    let app_name = format!("tenantry-restore-{}", &staging[STAGING_PREFIX.len()..]);
    let start = || restorer(format, host, Target::Database(staging), &app_name);
    let outcome = restore_and_check(store, manifest, start, format.tool(), host, host_name, staging, None).await;
    if outcome.is_err() {
        let _ = drop_database(admin, staging, true).await;
    }
    outcome
}

/// Restores the dump's schema into a staging schema of the destination's database and
/// checks it.
async fn stage_schema(
    host: &HostSpec,
    host_name: &str,
    store: &ObjectStore,
    manifest: &Manifest,
    format: DumpFormat,
    dest: &Destination,
    staging: &str,
) -> Result<Vec<Check>, Failure> {
    let hold = staged_name(STAGING_PREFIX, &manifest.tenant, "hold");
    let app_name = format!("tenantry-restore-{}", &staging[STAGING_PREFIX.len()..]);
    let target = Target::StagedSchema { database: &dest.database, schema: &manifest.schema, staging, hold: &hold };
    let start = || restorer(format, host, target, &app_name);
    restore_and_check(store, manifest, start, "pg_restore | psql", host, host_name, &dest.database, Some(staging)).await
}

/// Streams the dump into the tool `start` starts, then counts the staged copy (the
/// database `database`, or its schema `schema`) against the manifest.
#[allow(clippy::too_many_arguments)]
async fn restore_and_check(
    store: &ObjectStore,
    manifest: &Manifest,
    start: impl FnOnce() -> Result<crate::steps::restore::Restorer, String>,
    tool: &str,
    host: &HostSpec,
    host_name: &str,
    database: &str,
    schema: Option<&str>,
) -> Result<Vec<Check>, Failure> {
    let dump = &manifest.dump;
    let streamed = stream(store, &dump.key, start)
        .await
        .map_err(|e| if e.is_transient() { Failure::Unreachable(e.message) } else { Failure::Failed(e.message) })?;
    let Some(streamed) = streamed else {
        return Ok(vec![outcome(
            "sha256",
            false,
            format!("the dump {} that the manifest names does not exist", dump.key),
        )]);
    };
    let mut checks: Vec<Check> = streamed.checks(dump, tool).into();
    let mut conn = connect(host, database, host_name).await?;
    let mut restored = count_rows(&mut conn, schema).await.map_err(|e| Failure::Failed(e.message))?;
    // A staged schema is counted under its staging name and compared under the dump's.
    for t in restored.iter_mut().filter(|t| Some(t.schema.as_str()) == schema) {
        t.schema = manifest.schema.clone();
    }
    checks.extend(compare_tables(&manifest.tables, &restored));
    let version =
        schema_version(&mut conn, schema.unwrap_or(&manifest.schema)).await.map_err(|e| Failure::Failed(e.message))?;
    checks.push(compare_version(manifest.schema_version.as_deref(), version.as_deref()));
    let _ = conn.close().await;
    Ok(checks)
}

async fn drop_database(admin: &mut PgConnection, name: &str, force: bool) -> Result<(), Failure> {
    let with = if force { " WITH (FORCE)" } else { "" };
    let sql = format!("DROP DATABASE IF EXISTS {}{with}", quote_ident(name));
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(admin)
        .await
        .map_err(db_failure(&format!("dropping database {name}")))
        .map(|_| ())
}

/// Drops a staged copy that failed its checks.
async fn drop_staged(
    admin: &mut PgConnection,
    host: &HostSpec,
    host_name: &str,
    dest: &Destination,
    staging: &str,
) -> Result<(), Failure> {
    match &dest.schema {
        None => drop_database(admin, staging, true).await,
        Some(_) => {
            let mut conn = connect(host, &dest.database, host_name).await?;
            let sql = format!("DROP SCHEMA IF EXISTS {} CASCADE", quote_ident(staging));
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(&mut conn)
                .await
                .map_err(db_failure("dropping the staged schema"))?;
            let _ = conn.close().await;
            Ok(())
        }
    }
}

/// Puts the checked staged copy in the destination's place (see the module's
/// documentation for what each isolation does). Without `force`, a destination that
/// meanwhile holds something is refused.
async fn swap(
    admin: &mut PgConnection,
    host: &HostSpec,
    host_name: &str,
    dest: &Destination,
    staging: &str,
    force: bool,
) -> Result<(), Failure> {
    match &dest.schema {
        None => {
            if database_exists(admin, &dest.database).await? {
                drop_database(admin, &dest.database, force).await?;
            }
            let sql = format!("ALTER DATABASE {} RENAME TO {}", quote_ident(staging), quote_ident(&dest.database));
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut *admin).await.map_err(db_failure(&format!(
                "renaming the restored database {staging} to {} (it holds the restored copy; rename it by hand)",
                dest.database
            )))?;
        }
        Some(schema) => {
            let mut conn = connect(host, &dest.database, host_name).await?;
            let mut tx = conn.begin().await.map_err(db_failure("starting the swap"))?;
            // A live schema whose tables are in use waits for them, but not forever.
            sqlx::raw_sql("SET LOCAL lock_timeout = '30s'")
                .execute(&mut *tx)
                .await
                .map_err(db_failure("setting lock_timeout"))?;
            let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
                .bind(schema)
                .fetch_one(&mut *tx)
                .await
                .map_err(db_failure("looking for the schema"))?;
            if exists {
                let held =
                    Contents::of(&mut tx, Some(schema)).await.map_err(db_failure("reading what the target holds"))?;
                if !held.is_empty() && !force {
                    drop(tx);
                    let _ = conn.close().await;
                    return Err(Failure::Failed(format!(
                        "{dest} has {held} (since the restore began); --force to restore over it"
                    )));
                }
                let sql = format!("DROP SCHEMA {} CASCADE", quote_ident(schema));
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                    .execute(&mut *tx)
                    .await
                    .map_err(db_failure(&format!("dropping schema {schema}")))?;
            }
            let sql = format!("ALTER SCHEMA {} RENAME TO {}", quote_ident(staging), quote_ident(schema));
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(&mut *tx)
                .await
                .map_err(db_failure("renaming the staged schema"))?;
            tx.commit().await.map_err(db_failure("committing the swap"))?;
            let _ = conn.close().await;
        }
    }
    Ok(())
}

fn print(r: &Restored, dest: &Destination) {
    let verb = if r.passed { "restored" } else { "NOT restored" };
    println!("{verb}: tenant {}, service {}, into {dest} on host {}", r.tenant, r.service, r.host);
    println!(
        "backup {} (taken {}, {} old), {}",
        r.backup,
        r.taken_at.format("%Y-%m-%d %H:%M:%S UTC"),
        crate::storage::backups::age(chrono::TimeDelta::seconds(r.age_seconds)),
        super::backups::size(r.size)
    );
    println!("{} tables, {} rows, in {:.1}s", r.tables, r.rows, r.duration_ms as f64 / 1000.0);
    if let Some(replaced) = &r.replaced {
        println!("replaced what the target held: {replaced} (--force)");
    }
    println!("checks:");
    for c in &r.checks {
        println!("  {:4} {:15} {}", if c.passed { "ok" } else { "FAIL" }, c.name, c.detail);
    }
    if !r.passed {
        println!("the staged copy was dropped; {dest} is as it was");
    }
}
