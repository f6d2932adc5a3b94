//! The `sql` step: an operator's SQL per tenant, in a transaction with a receipt so it is applied once.
//!
//! The SQL runs with `search_path` set to the tenant's schema (schema isolation) or the
//! service's schema, and with the session settings `tenantry.tenant` and `tenantry.run`, so
//! row-isolation SQL can say `WHERE tenant_id = current_setting('tenantry.tenant')`.

use std::path::PathBuf;
use std::time::Instant;

use serde::Deserialize;

use super::define::{Findings, Step};
use super::{StepContext, StepError, receipt};
use crate::engine::postgres::quote_ident;
use crate::engine::session::PgSession;

pub struct Sql;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Options {
    /// The statement(s).
    pub sql: Option<String>,
    /// Or a file holding them, relative to the config file.
    pub file: Option<PathBuf>,
    /// In a transaction with the receipt (default); `false` for what cannot run in one
    /// (`CREATE INDEX CONCURRENTLY`), which must then be idempotent.
    pub transaction: Option<bool>,
}

impl Step for Sql {
    type Options = Options;

    fn check(options: &Options, out: &mut Findings) {
        match (&options.sql, &options.file) {
            (None, None) => {
                out.push(("kind".into(), "sql step needs `sql` (the statement) or `file` (a path to it)".to_string()))
            }
            (Some(_), Some(_)) => out.push(("file".into(), "sql step takes `sql` or `file`, not both".to_string())),
            (Some(sql), None) if sql.trim().is_empty() => {
                out.push(("sql".into(), "sql step: `sql` is empty".to_string()))
            }
            _ => {}
        }
    }

    async fn run(ctx: &StepContext<'_>, options: &Options) -> Result<serde_json::Value, StepError> {
        let sql = statement(ctx, options)?;
        let mut session = ctx.session().await?;
        let started = Instant::now();
        let outcome = apply(ctx, &mut session, sql, options.transaction.unwrap_or(true)).await;
        session.release().await;
        Ok(outcome?.unwrap_or_else(|| serde_json::json!({ "duration_ms": started.elapsed().as_millis() as u64 })))
    }
}

/// Runs the SQL with its receipt; `Some(report)` when it was not applied by this attempt.
async fn apply(
    ctx: &StepContext<'_>,
    session: &mut PgSession,
    sql: String,
    transaction: bool,
) -> Result<Option<serde_json::Value>, StepError> {
    let schema = &ctx.placement.schema;
    // The operator's SQL can change the session in ways a transaction does not undo
    // (`set_config(.., false)`, `SET ROLE`, advisory locks, temporary tables): reset it all
    // before the connection serves another tenant.
    session.mark_dirty();
    receipt::ensure_table(session, &ctx.placement.host, &ctx.placement.database).await?;
    let already = || Some(serde_json::json!({ "skipped": "already applied in this run (receipt found)" }));
    if transaction {
        let mut tx = receipt::begin(session, schema, ctx.run, ctx.tenant).await?;
        if receipt::exists(&mut tx, ctx.receipt_run(), ctx.tenant, ctx.unit).await? {
            return Ok(already());
        }
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut *tx)
            .await
            .map_err(|e| StepError::from_sqlx("running the step's SQL", &e))?;
        if !receipt::write(&mut tx, ctx.receipt_run(), ctx.tenant, ctx.unit).await? {
            return Ok(Some(receipt::applied_concurrently()));
        }
        tx.commit().await.map_err(|e| StepError::from_sqlx("committing", &e))?;
        return Ok(None);
    }
    // Outside a transaction (e.g. CREATE INDEX CONCURRENTLY) the SQL itself must be
    // idempotent: a crash between it and the receipt runs it again.
    {
        let mut tx = receipt::begin(session, schema, ctx.run, ctx.tenant).await?;
        if receipt::exists(&mut tx, ctx.receipt_run(), ctx.tenant, ctx.unit).await? {
            return Ok(already());
        }
    }
    let set = format!(
        "SET search_path TO {}; SELECT set_config('tenantry.tenant', {}, false), set_config('tenantry.run', {}, false)",
        quote_ident(schema),
        crate::engine::postgres::quote_literal(ctx.tenant),
        crate::engine::postgres::quote_literal(ctx.run)
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(set))
        .execute(&mut **session)
        .await
        .map_err(|e| StepError::from_sqlx("setting search_path", &e))?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(&mut **session)
        .await
        .map_err(|e| StepError::from_sqlx("running the step's SQL", &e))?;
    let mut tx = receipt::begin(session, schema, ctx.run, ctx.tenant).await?;
    if !receipt::write(&mut tx, ctx.receipt_run(), ctx.tenant, ctx.unit).await? {
        return Ok(Some(receipt::applied_concurrently()));
    }
    tx.commit().await.map_err(|e| StepError::from_sqlx("committing", &e))?;
    Ok(None)
}

fn statement(ctx: &StepContext<'_>, options: &Options) -> Result<String, StepError> {
    match (&options.sql, &options.file) {
        (Some(sql), _) => Ok(sql.clone()),
        (None, Some(file)) => {
            let path = if file.is_absolute() { file.clone() } else { ctx.base_dir.join(file) };
            std::fs::read_to_string(&path)
                .map_err(|e| StepError::permanent(format!("cannot read {}: {e}", path.display())))
        }
        (None, None) => Err(StepError::permanent("sql step has neither `sql` nor `file`")),
    }
}
