//! The `sql` step: an operator's SQL per tenant, in a transaction with a receipt so it is applied once.
//!
//! The SQL runs with `search_path` set to the tenant's schema (schema isolation) or the
//! service's schema, and with the session settings `tenantry.tenant` and `tenantry.run`, so
//! row-isolation SQL can say `WHERE tenant_id = current_setting('tenantry.tenant')`.

use std::time::Instant;

use sqlx::Connection;

use super::{StepContext, StepError, receipt};
use crate::engine::postgres::quote_ident;

pub async fn run(ctx: &StepContext<'_>) -> Result<serde_json::Value, StepError> {
    let sql = statement(ctx)?;
    let pool = ctx.pool()?;
    let schema = &ctx.placement.schema;
    let mut conn = pool.acquire().await.map_err(|e| StepError::from_sqlx("connecting", &e))?;
    let started = Instant::now();
    let transactional = ctx.step.transaction.unwrap_or(true);
    receipt::ensure_table(&mut conn, &ctx.placement.target_key(), schema).await?;

    let mut tx = conn.begin().await.map_err(|e| StepError::from_sqlx("starting the transaction", &e))?;
    prepare(&mut tx, ctx).await?;
    if receipt::exists(&mut tx, schema, ctx.run, ctx.tenant, ctx.unit).await? {
        return Ok(serde_json::json!({ "skipped": "already applied in this run (receipt found)" }));
    }
    if transactional {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut *tx)
            .await
            .map_err(|e| StepError::from_sqlx("running the step's SQL", &e))?;
        if !receipt::write(&mut tx, schema, ctx.run, ctx.tenant, ctx.unit).await? {
            return Ok(receipt::applied_concurrently());
        }
        tx.commit().await.map_err(|e| StepError::from_sqlx("committing", &e))?;
    } else {
        // Outside a transaction (e.g. CREATE INDEX CONCURRENTLY) the SQL itself must be
        // idempotent: a crash between it and the receipt runs it again.
        tx.rollback().await.map_err(|e| StepError::from_sqlx("rolling back", &e))?;
        let set = format!("SET search_path TO {}", quote_ident(schema));
        sqlx::raw_sql(sqlx::AssertSqlSafe(set))
            .execute(&mut *conn)
            .await
            .map_err(|e| StepError::from_sqlx("setting search_path", &e))?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut *conn)
            .await
            .map_err(|e| StepError::from_sqlx("running the step's SQL", &e))?;
        let mut tx = conn.begin().await.map_err(|e| StepError::from_sqlx("starting the transaction", &e))?;
        if !receipt::write(&mut tx, schema, ctx.run, ctx.tenant, ctx.unit).await? {
            return Ok(receipt::applied_concurrently());
        }
        tx.commit().await.map_err(|e| StepError::from_sqlx("committing", &e))?;
    }
    Ok(serde_json::json!({ "duration_ms": started.elapsed().as_millis() as u64 }))
}

fn statement(ctx: &StepContext<'_>) -> Result<String, StepError> {
    match (&ctx.step.sql, &ctx.step.file) {
        (Some(sql), _) => Ok(sql.clone()),
        (None, Some(file)) => {
            let path = if file.is_absolute() { file.clone() } else { ctx.base_dir.join(file) };
            std::fs::read_to_string(&path)
                .map_err(|e| StepError::permanent(format!("cannot read {}: {e}", path.display())))
        }
        (None, None) => Err(StepError::permanent("sql step has neither `sql` nor `file`")),
    }
}

/// Transaction-local settings: search path, tenant and run, statement timeout.
async fn prepare(tx: &mut sqlx::Transaction<'_, sqlx::Postgres>, ctx: &StepContext<'_>) -> Result<(), StepError> {
    let set = format!("SET LOCAL search_path TO {}", quote_ident(&ctx.placement.schema));
    sqlx::raw_sql(sqlx::AssertSqlSafe(set))
        .execute(&mut **tx)
        .await
        .map_err(|e| StepError::from_sqlx("setting search_path", &e))?;
    sqlx::query("SELECT set_config('tenantry.tenant', $1, true), set_config('tenantry.run', $2, true)")
        .bind(ctx.tenant)
        .bind(ctx.run)
        .execute(&mut **tx)
        .await
        .map_err(|e| StepError::from_sqlx("setting the tenant", &e))?;
    Ok(())
}
