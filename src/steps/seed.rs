//! The `seed` step: the service's idempotent reference-data SQL files, in file-name order, in one transaction with a receipt.

use std::path::PathBuf;

use serde::Deserialize;

use super::define::{Findings, Step};
use super::{StepContext, StepError, receipt};
use crate::catalog::ServiceSpec;
use crate::units::HumanDuration;

pub struct Seed;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Options {
    /// How long to wait for a lock held by the application (default: the server's).
    pub lock_timeout: Option<HumanDuration>,
}

impl Step for Seed {
    type Options = Options;

    fn fits(service: &ServiceSpec) -> Result<(), String> {
        match service.seeds {
            None => Err("seed needs the service's `seeds` directory, which is not set".to_string()),
            Some(_) => Ok(()),
        }
    }

    fn check(options: &Options, out: &mut Findings) {
        check_lock_timeout(options.lock_timeout, out);
    }

    async fn run(ctx: &StepContext<'_>, options: &Options) -> Result<serde_json::Value, StepError> {
        let files = seed_files(ctx)?;
        apply(ctx, &files, options.lock_timeout).await
    }
}

/// `lock_timeout` is positive (zero would mean "wait forever" to PostgreSQL).
pub fn check_lock_timeout(lock_timeout: Option<HumanDuration>, out: &mut Findings) {
    if lock_timeout.is_some_and(|d| d.0.is_zero()) {
        out.push(("lock_timeout".into(), "lock_timeout must be longer than zero".to_string()));
    }
}

/// The `*.sql` files of the service's seeds directory, sorted by name.
pub fn seed_files(ctx: &StepContext<'_>) -> Result<Vec<PathBuf>, StepError> {
    let dir = ctx
        .service
        .and_then(|s| s.seeds.as_ref())
        .ok_or_else(|| StepError::permanent("the service has no `seeds` directory"))?;
    let dir = if dir.is_absolute() { dir.clone() } else { ctx.base_dir.join(dir) };
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|e| StepError::permanent(format!("cannot read seeds directory {}: {e}", dir.display())))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "sql"))
        .collect();
    files.sort();
    Ok(files)
}

/// Applies seed files in one transaction (all or nothing) with the run's receipt, waiting
/// at most `lock_timeout` for each lock when given.
pub async fn apply(
    ctx: &StepContext<'_>,
    files: &[PathBuf],
    lock_timeout: Option<HumanDuration>,
) -> Result<serde_json::Value, StepError> {
    let mut session = ctx.session().await?;
    let outcome = apply_in(ctx, &mut session, files, lock_timeout).await;
    session.release().await;
    outcome
}

async fn apply_in(
    ctx: &StepContext<'_>,
    session: &mut crate::engine::session::PgSession,
    files: &[PathBuf],
    lock_timeout: Option<HumanDuration>,
) -> Result<serde_json::Value, StepError> {
    let schema = &ctx.placement.schema;
    // Seed files are SQL like an operator's: reset whatever they leave in the session.
    session.mark_dirty();
    receipt::ensure_table(session, &ctx.placement.host, &ctx.placement.database).await?;
    let mut tx = receipt::begin(session, schema, ctx.run, ctx.tenant).await?;
    let unit = format!("{}#seed", ctx.unit);
    if receipt::exists(&mut tx, ctx.receipt_run(), ctx.tenant, &unit).await? {
        return Ok(serde_json::json!({ "skipped": "already seeded in this run (receipt found)" }));
    }
    if let Some(lock_timeout) = lock_timeout {
        sqlx::query("SELECT set_config('lock_timeout', $1, true)")
            .bind(format!("{}ms", lock_timeout.0.as_millis()))
            .execute(&mut *tx)
            .await
            .map_err(|e| StepError::from_sqlx("setting lock_timeout", &e))?;
    }
    let mut applied = Vec::new();
    for file in files {
        let sql = std::fs::read_to_string(file)
            .map_err(|e| StepError::permanent(format!("cannot read seed file {}: {e}", file.display())))?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut *tx)
            .await
            .map_err(|e| StepError::from_sqlx(&format!("applying seed file {}", file.display()), &e))?;
        applied.push(file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
    }
    if !receipt::write(&mut tx, ctx.receipt_run(), ctx.tenant, &unit).await? {
        return Ok(receipt::applied_concurrently());
    }
    tx.commit().await.map_err(|e| StepError::from_sqlx("committing", &e))?;
    Ok(serde_json::json!({ "seeded": applied }))
}
