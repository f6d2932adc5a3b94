//! The `migrate` step: pending migrations applied per target under its advisory lock, each with its history row; the history read in bulk for `plan` and the rollout fast path.
//!
//! The history table lives in the tenant's own database/schema (for `row` isolation, in the
//! shared one), so a lost checkpoint in Redis can never cause a second apply: the target
//! itself knows what it has.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::postgres::PgConnection;

use super::define::{Findings, PlanEnv, Step};
use crate::catalog::{Catalog, Engine, Isolation, Placement, ServiceSpec};
use crate::config::LoadedConfig;
use crate::engine::postgres::quote_ident;
use crate::migrations::{MigrationSet, Version};
use crate::units::HumanDuration;
use crate::workflow::plan::{StepAction, TargetKey};

pub struct Migrate;

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Options {
    /// Migrate up or down to this version instead of the newest.
    pub to: Option<String>,
    /// Accept pending versions older than the newest applied one.
    pub allow_out_of_order: Option<bool>,
    /// How long a migration waits for a lock held by the application (default 5s).
    pub lock_timeout: Option<HumanDuration>,
    /// A limit on each statement of a migration (default: none).
    pub statement_timeout: Option<HumanDuration>,
}

impl Options {
    pub fn allow_out_of_order(&self) -> bool {
        self.allow_out_of_order.unwrap_or(false)
    }
}

impl Step for Migrate {
    type Options = Options;

    fn fits(service: &ServiceSpec) -> Result<(), String> {
        match service.migrations {
            None => Err("migrate needs the service's `migrations` directory, which is not set".to_string()),
            Some(_) => Ok(()),
        }
    }

    fn check(options: &Options, out: &mut Findings) {
        if let Some(to) = &options.to
            && to.parse::<Version>().is_err()
        {
            out.push(("to".into(), format!("`to` must be a migration version such as \"3\" or \"1.2\", not {to:?}")));
        }
        super::seed::check_lock_timeout(options.lock_timeout, out);
        if options.statement_timeout.is_some_and(|d| d.0.is_zero()) {
            out.push(("statement_timeout".into(), "statement_timeout must be longer than zero".to_string()));
        }
    }

    async fn plan(options: &Options, targets: &[&Placement], env: PlanEnv<'_>) -> Vec<StepAction> {
        plan(options, targets, env).await
    }

    async fn run(ctx: &super::StepContext<'_>, options: &Options) -> Result<serde_json::Value, super::StepError> {
        apply(ctx, options).await
    }
}

/// What each target's history says against its service's migrations.
async fn plan(options: &Options, targets: &[&Placement], env: PlanEnv<'_>) -> Vec<StepAction> {
    let mut sets: BTreeMap<&str, Result<MigrationSet, String>> = BTreeMap::new();
    let mut to_read: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for p in targets {
        sets.entry(&p.service).or_insert_with(|| {
            match env.catalog.services.get(&p.service).and_then(|s| s.migrations.as_ref()) {
                None => Err("the service has no migrations directory".to_string()),
                Some(dir) => MigrationSet::load(&env.config.resolve_path(dir)).map_err(|e| e.to_string()),
            }
        });
        if p.engine == Engine::Postgres {
            to_read.entry((p.host.clone(), p.database.clone())).or_default().insert(p.schema.clone());
        }
    }
    let histories = read_all_histories(env.catalog, env.config, to_read).await;
    targets
        .iter()
        .map(|p| {
            let set = match sets.get(p.service.as_str()) {
                Some(Ok(set)) => set,
                Some(Err(e)) => return StepAction::Blocked { reason: e.clone() },
                None => return StepAction::Blocked { reason: "no migrations".to_string() },
            };
            match histories.get(&(p.host.clone(), p.database.clone(), p.schema.clone())) {
                Some(Ok(history)) => StepAction::Migrate {
                    status: compare(set, history, options.allow_out_of_order()),
                    shared: p.isolation == Isolation::Row,
                },
                Some(Err(e)) => StepAction::Blocked { reason: e.clone() },
                None => StepAction::Blocked { reason: "history was not read".to_string() },
            }
        })
        .collect()
}

/// Reads the histories of every (host, database) group, at most `limits.plan_connections`
/// connections per host at a time. Errors are per target, so one unreachable database
/// shows up in its tenants' plans without hiding the rest of the fleet.
pub async fn read_all_histories(
    catalog: &Catalog,
    config: &LoadedConfig,
    groups: BTreeMap<(String, String), BTreeSet<String>>,
) -> BTreeMap<TargetKey, Result<Vec<AppliedMigration>, String>> {
    let per_host = config.config.limits.plan_connections as usize;
    crate::engine::fleet::read_targets(
        &catalog.hosts,
        groups,
        per_host,
        "the migration history",
        async |conn, schemas| read_histories(conn, schemas).await,
    )
    .await
    .into_iter()
    .map(|(key, result)| (key, result.map_err(|e| e.message)))
    .collect()
}

/// Name of the history table in every target.
pub const HISTORY_TABLE: &str = "tenantry_migrations";

/// The history table's definition, created in a target's schema before its first
/// migration. `state` is `started` while a migration runs outside a transaction (or if it
/// died half-way: "dirty"), `applied` once it finished.
pub const HISTORY_DDL: &str = include_str!("migrate_history.sql");

/// Schemas per UNION query when reading many histories from one database: large enough to
/// make 1,000 schemas a handful of round trips, small enough to keep the statement modest.
const HISTORY_BATCH: usize = 250;

/// One row of a target's history table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AppliedMigration {
    pub version: String,
    pub name: String,
    pub checksum: String,
    pub state: String,
}

/// What a target's history says against the migrations directory.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MigrationStatus {
    pub applied: usize,
    /// Versions to apply, in order.
    pub pending: Vec<String>,
    /// Reasons `migrate` would refuse to run on this target (drift, dirty, missing file,
    /// out of order), each naming the version and file.
    pub problems: Vec<String>,
}

/// Compares a target's history with the directory. `allow_out_of_order` accepts pending
/// versions older than the newest applied one (for long-lived branches merged late).
pub fn compare(set: &MigrationSet, history: &[AppliedMigration], allow_out_of_order: bool) -> MigrationStatus {
    let mut status = MigrationStatus::default();
    let mut applied_versions: BTreeMap<Version, &AppliedMigration> = BTreeMap::new();
    for row in history {
        match row.version.parse::<Version>() {
            Ok(v) => {
                applied_versions.insert(v, row);
            }
            Err(_) => status.problems.push(format!("history has an unreadable version {:?}", row.version)),
        }
    }
    for (version, row) in &applied_versions {
        match set.get(version) {
            None => status.problems.push(format!(
                "version {version} ({}) is recorded as {} but its file is missing from {}",
                row.name,
                row.state,
                set.dir.display()
            )),
            Some(m) if row.state != "applied" => status.problems.push(format!(
                "version {version} is dirty: it started but did not finish ({}); check the target and fix the history row before migrating again",
                m.up.path.display()
            )),
            Some(m) if m.up.checksum != row.checksum => status.problems.push(format!(
                "version {version} was changed after it was applied (drift): {} has checksum {} but {} was applied",
                m.up.path.display(),
                short(&m.up.checksum),
                short(&row.checksum)
            )),
            Some(_) => status.applied += 1,
        }
    }
    let newest_applied = applied_versions.keys().next_back();
    for m in &set.migrations {
        if applied_versions.contains_key(&m.version) {
            continue;
        }
        if let Some(newest) = newest_applied
            && &m.version < newest
            && !allow_out_of_order
        {
            status.problems.push(format!(
                "version {} ({}) is older than the newest applied version {newest}: out of order; renumber it or set allow_out_of_order = true",
                m.version,
                m.up.path.display()
            ));
        }
        status.pending.push(format!("{}_{}", m.version, m.name));
    }
    status
}

fn short(checksum: &str) -> &str {
    &checksum[..checksum.len().min(12)]
}

/// Reads the history tables of many schemas of one database in a few queries. Schemas
/// without a history table (never migrated) map to an empty history; schemas that do not
/// exist are left out of the result, so the caller can tell "missing" from "empty".
pub async fn read_histories(
    conn: &mut PgConnection,
    schemas: &[String],
) -> Result<BTreeMap<String, Vec<AppliedMigration>>, sqlx::Error> {
    let existing: Vec<(String, bool)> = sqlx::query_as(include_str!("migrate_schemas.sql"))
        .bind(schemas)
        .bind(HISTORY_TABLE)
        .fetch_all(&mut *conn)
        .await?;
    let mut out: BTreeMap<String, Vec<AppliedMigration>> = BTreeMap::new();
    let mut with_history = Vec::new();
    for (schema, has_history) in existing {
        out.insert(schema.clone(), Vec::new());
        if has_history {
            with_history.push(schema);
        }
    }
    for chunk in with_history.chunks(HISTORY_BATCH) {
        // Identifiers cannot be bound as parameters: they are quoted instead, and each
        // branch is tagged with its index into `chunk` rather than the schema's name.
        let sql = chunk
            .iter()
            .enumerate()
            .map(|(i, schema)| {
                format!(
                    "SELECT {i}::int AS idx, version, name, checksum, state FROM {}.{}",
                    quote_ident(schema),
                    quote_ident(HISTORY_TABLE)
                )
            })
            .collect::<Vec<_>>()
            .join(" UNION ALL ");
        for row in sqlx::query(sqlx::AssertSqlSafe(sql)).fetch_all(&mut *conn).await? {
            let idx: i32 = row.get("idx");
            let schema = &chunk[idx as usize];
            out.entry(schema.clone()).or_default().push(AppliedMigration {
                version: row.get("version"),
                name: row.get("name"),
                checksum: row.get("checksum"),
                state: row.get("state"),
            });
        }
    }
    Ok(out)
}

/// The advisory lock key of a target: one lock per database+schema, shared by every
/// tenantry process (and run) that migrates it.
fn lock_key(placement: &crate::catalog::Placement) -> String {
    format!("tenantry:migrate:{}/{}", placement.database, placement.schema)
}

/// How long to wait for another migrate of the same target before calling it transient.
const LOCK_WAIT_POLL: std::time::Duration = std::time::Duration::from_millis(200);

/// Applies the pending migrations of one target (or reverts to `to`), one transaction per
/// migration with its history row, under the target's advisory lock.
pub async fn apply(ctx: &super::StepContext<'_>, options: &Options) -> Result<serde_json::Value, super::StepError> {
    use super::StepError;
    let set = ctx.migrations.ok_or_else(|| StepError::permanent("the service has no migrations directory"))?;
    let mut conn = ctx.session().await?;
    let schema = ctx.placement.schema.clone();
    let lock = lock_key(ctx.placement);

    // Another run (or process) migrating the same target holds the lock: wait for it
    // rather than fail; when it is done there is usually nothing left to apply. The lock
    // is a session lock (no-transaction migrations span several transactions): the session
    // is marked dirty so releasing it unlocks, and a step stopped half-way has its session
    // terminated, which unlocks too.
    conn.mark_dirty();
    let started = std::time::Instant::now();
    let mut waited = false;
    loop {
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
            .bind(&lock)
            .fetch_one(&mut *conn)
            .await
            .map_err(|e| StepError::from_sqlx("taking the migration lock", &e))?;
        if got {
            break;
        }
        if !waited {
            tracing::info!(tenant = ctx.tenant, target = %ctx.placement.target_key(), "target locked by another migrate; waiting");
            waited = true;
        }
        tokio::time::sleep(LOCK_WAIT_POLL).await;
    }
    let result = apply_locked(ctx, options, set, &mut conn, &schema).await;
    conn.release().await;
    result.map(|mut v| {
        v["waited_for_lock_ms"] = serde_json::json!(if waited { started.elapsed().as_millis() as u64 } else { 0 });
        v
    })
}

async fn apply_locked(
    ctx: &super::StepContext<'_>,
    options: &Options,
    set: &MigrationSet,
    conn: &mut PgConnection,
    schema: &str,
) -> Result<serde_json::Value, super::StepError> {
    use super::StepError;
    let history_ddl = format!("SET search_path TO {}; {}", quote_ident(schema), HISTORY_DDL);
    sqlx::raw_sql(sqlx::AssertSqlSafe(history_ddl))
        .execute(&mut *conn)
        .await
        .map_err(|e| StepError::from_sqlx("creating the migration history table", &e))?;
    let histories = read_histories(&mut *conn, &[schema.to_string()])
        .await
        .map_err(|e| StepError::from_sqlx("reading the migration history", &e))?;
    let history = histories.get(schema).cloned().unwrap_or_default();
    let status = compare(set, &history, options.allow_out_of_order());
    let target = ctx.placement.target_key();
    if !status.problems.is_empty() {
        return Err(StepError::permanent(format!(
            "migrate refuses to run on tenant {} ({target}): {}",
            ctx.tenant,
            status.problems.join("; ")
        )));
    }
    let to: Option<Version> = match &options.to {
        Some(v) => Some(v.parse().map_err(|_| StepError::permanent(format!("invalid `to` version {v:?}")))?),
        None => None,
    };
    let applied_versions: Vec<Version> = {
        let mut v: Vec<Version> = history.iter().filter_map(|h| h.version.parse().ok()).collect();
        v.sort();
        v
    };
    let lock_timeout = options.lock_timeout.map_or(std::time::Duration::from_secs(5), |d| d.0);
    let statement_timeout = options.statement_timeout.map(|d| d.0);
    let mut done = Vec::new();

    // Down: revert applied versions newer than `to`, newest first.
    if let Some(to) = &to {
        for version in applied_versions.iter().rev().filter(|v| *v > to) {
            let m = set.get(version).ok_or_else(|| StepError::permanent(format!("version {version} has no file")))?;
            let down = m.down.as_ref().ok_or_else(|| {
                StepError::permanent(format!(
                    "cannot revert tenant {} to {to}: version {version} ({}) has no down migration",
                    ctx.tenant,
                    m.up.path.display()
                ))
            })?;
            apply_script(
                ctx,
                conn,
                schema,
                &down.sql,
                m.no_transaction,
                lock_timeout,
                statement_timeout,
                Change::Down(m),
            )
            .await
            .map_err(|e| StepError {
                message: format!("reverting version {version} ({}): {}", down.path.display(), e.message),
                ..e
            })?;
            done.push(format!("-{}_{}", m.version, m.name));
        }
    }
    // Up: pending versions (up to `to`).
    for m in &set.migrations {
        if applied_versions.contains(&m.version) || to.as_ref().is_some_and(|to| &m.version > to) {
            continue;
        }
        apply_script(ctx, conn, schema, &m.up.sql, m.no_transaction, lock_timeout, statement_timeout, Change::Up(m))
            .await
            .map_err(|e| StepError {
                message: format!(
                    "applying version {} ({}) to tenant {}: {}",
                    m.version,
                    m.up.path.display(),
                    ctx.tenant,
                    e.message
                ),
                ..e
            })?;
        done.push(format!("{}_{}", m.version, m.name));
    }
    Ok(serde_json::json!({ "changed": done, "up_to_date": done.is_empty() }))
}

enum Change<'a> {
    Up(&'a crate::migrations::Migration),
    Down(&'a crate::migrations::Migration),
}

impl Change<'_> {
    fn migration(&self) -> &crate::migrations::Migration {
        match self {
            Self::Up(m) | Self::Down(m) => m,
        }
    }
}

/// Writes the history change of a migration: the row (`started` or `applied`) for an up
/// migration, its removal for a revert.
async fn record_history(
    conn: &mut PgConnection,
    schema: &str,
    change: &Change<'_>,
    state: &str,
    duration_ms: i64,
    run: &str,
) -> Result<(), super::StepError> {
    let table = format!("{}.{}", quote_ident(schema), quote_ident(HISTORY_TABLE));
    let m = change.migration();
    let result = match change {
        Change::Up(_) => {
            let sql = format!(
                "INSERT INTO {table} (version, name, checksum, state, started_at, finished_at, duration_ms, run_id) \
                 VALUES ($1, $2, $3, $4, now(), CASE WHEN $4 = 'applied' THEN now() END, $5, $6) \
                 ON CONFLICT (version) DO UPDATE SET state = EXCLUDED.state, finished_at = EXCLUDED.finished_at, \
                 duration_ms = EXCLUDED.duration_ms, run_id = EXCLUDED.run_id"
            );
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(m.version.to_string())
                .bind(&m.name)
                .bind(&m.up.checksum)
                .bind(state)
                .bind(duration_ms)
                .bind(run)
                .execute(conn)
                .await
        }
        Change::Down(_) => {
            sqlx::query(sqlx::AssertSqlSafe(format!("DELETE FROM {table} WHERE version = $1")))
                .bind(m.version.to_string())
                .execute(conn)
                .await
        }
    };
    result.map(|_| ()).map_err(|e| super::StepError::from_sqlx("recording the migration history", &e))
}

/// One migration (or its revert): in a transaction with its history change, or, for
/// no-transaction files, statement by statement between a `started` and an `applied` mark.
#[allow(clippy::too_many_arguments)]
async fn apply_script(
    ctx: &super::StepContext<'_>,
    conn: &mut PgConnection,
    schema: &str,
    sql: &str,
    no_transaction: bool,
    lock_timeout: std::time::Duration,
    statement_timeout: Option<std::time::Duration>,
    change: Change<'_>,
) -> Result<(), super::StepError> {
    use sqlx::Connection;

    use super::StepError;
    let settings = format!(
        "SET {scope}search_path TO {schema}; SET {scope}lock_timeout = {lock}; SET {scope}statement_timeout = {stmt}",
        scope = if no_transaction { "" } else { "LOCAL " },
        schema = quote_ident(schema),
        lock = lock_timeout.as_millis(),
        stmt = statement_timeout.map_or(0, |d| d.as_millis()),
    );
    let started = std::time::Instant::now();
    let elapsed = || started.elapsed().as_millis() as i64;
    if !no_transaction {
        let mut tx = conn.begin().await.map_err(|e| StepError::from_sqlx("starting the transaction", &e))?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(settings))
            .execute(&mut *tx)
            .await
            .map_err(|e| StepError::from_sqlx("setting timeouts", &e))?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
            .execute(&mut *tx)
            .await
            .map_err(|e| StepError::from_sqlx("running", &e))?;
        record_history(&mut tx, schema, &change, "applied", elapsed(), ctx.run).await?;
        tx.commit().await.map_err(|e| StepError::from_sqlx("committing", &e))?;
        return Ok(());
    }
    // Outside a transaction a failure half-way leaves the target changed: the history row
    // says `started` until the end, so the next run refuses it as dirty instead of guessing.
    let up = matches!(change, Change::Up(_));
    if up {
        record_history(conn, schema, &change, "started", 0, ctx.run).await?;
    }
    sqlx::raw_sql(sqlx::AssertSqlSafe(settings))
        .execute(&mut *conn)
        .await
        .map_err(|e| StepError::from_sqlx("setting timeouts", &e))?;
    let mut executed = 0;
    let mut failure = None;
    for statement in crate::engine::split::statements(sql) {
        match sqlx::raw_sql(sqlx::AssertSqlSafe(statement)).execute(&mut *conn).await {
            Ok(_) => executed += 1,
            Err(e) => {
                failure = Some(StepError::from_sqlx("running", &e));
                break;
            }
        }
    }
    // The session settings above are reset when the session is released (it is dirty);
    // the history statements below qualify their table and need no search_path.
    match failure {
        None => record_history(conn, schema, &change, "applied", elapsed(), ctx.run).await,
        // Nothing changed yet (e.g. the first statement timed out on a lock): undo the
        // mark, and let the runtime retry.
        Some(e) if executed == 0 => {
            if up {
                let table = format!("{}.{}", quote_ident(schema), quote_ident(HISTORY_TABLE));
                let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DELETE FROM {table} WHERE version = $1 AND state = 'started'"
                )))
                .bind(change.migration().version.to_string())
                .execute(&mut *conn)
                .await;
            }
            Err(e)
        }
        Some(e) => Err(StepError::permanent(format!(
            "{} (after {executed} statement(s)): the migration ran outside a transaction and stopped half-way; version {} is now marked dirty: check the target, then fix or delete its row in {HISTORY_TABLE}",
            e.message,
            change.migration().version
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set_with(dir: &std::path::Path, files: &[(&str, &str)]) -> MigrationSet {
        for (name, sql) in files {
            std::fs::write(dir.join(name), sql).unwrap();
        }
        MigrationSet::load(dir).unwrap()
    }

    fn row(set: &MigrationSet, v: &str, state: &str) -> AppliedMigration {
        let m = set.get(&v.parse().unwrap()).unwrap();
        AppliedMigration {
            version: v.into(),
            name: m.name.clone(),
            checksum: m.up.checksum.clone(),
            state: state.into(),
        }
    }

    #[test]
    fn pending_after_applied() {
        let dir = tempfile::tempdir().unwrap();
        let set =
            set_with(dir.path(), &[("1_a.sql", "select 1;"), ("2_b.sql", "select 2;"), ("10_c.sql", "select 10;")]);
        let s = compare(&set, &[row(&set, "1", "applied")], false);
        assert_eq!(s.applied, 1);
        assert_eq!(s.pending, vec!["2_b", "10_c"]);
        assert!(s.problems.is_empty());
    }

    #[test]
    fn refusals_name_version_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let set = set_with(dir.path(), &[("1_a.sql", "select 1;"), ("2_b.sql", "select 2;"), ("3_c.sql", "select 3;")]);
        let mut drifted = row(&set, "1", "applied");
        drifted.checksum = "0".repeat(64);
        let dirty = row(&set, "3", "started");
        let missing = AppliedMigration {
            version: "4".into(),
            name: "gone".into(),
            checksum: "x".into(),
            state: "applied".into(),
        };
        let s = compare(&set, &[drifted, dirty, missing], false);
        let all = s.problems.join("\n");
        assert!(all.contains("version 1 was changed after it was applied (drift)") && all.contains("1_a.sql"), "{all}");
        assert!(all.contains("version 3 is dirty") && all.contains("3_c.sql"), "{all}");
        assert!(all.contains("version 4 (gone) is recorded as applied but its file is missing"), "{all}");
        assert!(all.contains("version 2 (") && all.contains("out of order"), "{all}");
        let s = compare(&set, &[row(&set, "3", "applied")], true);
        assert!(s.problems.is_empty(), "{:?}", s.problems);
        assert_eq!(s.pending, vec!["1_a", "2_b"]);
    }
}
