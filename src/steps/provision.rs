//! The `provision` step: onboarding a tenant — create its database or schema when missing, apply every migration, then the service's seeds.

use serde::Deserialize;

use super::define::{Findings, Step};
use super::{StepContext, StepError};
use crate::catalog::{Isolation, ServiceSpec};
use crate::engine::postgres::quote_ident;
use crate::units::HumanDuration;

pub struct Provision;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Options {
    /// Apply the service's seeds after the migrations (default true, when it has seeds).
    pub seed: Option<bool>,
    /// How long migrations and seeds wait for a lock (migrate's default: 5s).
    pub lock_timeout: Option<HumanDuration>,
}

impl Step for Provision {
    type Options = Options;

    fn fits(service: &ServiceSpec) -> Result<(), String> {
        if service.isolation == Isolation::Row {
            return Err(
                "provision creates a tenant's own database or schema; row isolation tenants live in shared tables (use migrate on the shared database)"
                    .to_string(),
            );
        }
        super::migrate::Migrate::fits(service).map_err(|why| why.replacen("migrate", "provision", 1))
    }

    fn check(options: &Options, out: &mut Findings) {
        super::seed::check_lock_timeout(options.lock_timeout, out);
    }

    async fn run(ctx: &StepContext<'_>, options: &Options) -> Result<serde_json::Value, StepError> {
        run(ctx, options).await
    }
}

async fn run(ctx: &StepContext<'_>, options: &Options) -> Result<serde_json::Value, StepError> {
    let created = match ctx.placement.isolation {
        Isolation::Database => create_database(ctx).await?,
        Isolation::Schema => create_schema(ctx).await?,
        Isolation::Row => {
            return Err(StepError::permanent(
                "provision does not apply to row isolation (the tenant lives in shared tables)",
            ));
        }
    };
    let migrate = super::migrate::Options { lock_timeout: options.lock_timeout, ..Default::default() };
    let migrated = super::migrate::apply(ctx, &migrate).await?;
    let seeded = match ctx.service.and_then(|s| s.seeds.as_ref()) {
        Some(_) if options.seed.unwrap_or(true) => {
            let files = super::seed::seed_files(ctx)?;
            super::seed::apply(ctx, &files, options.lock_timeout).await?
        }
        _ => serde_json::Value::Null,
    };
    Ok(serde_json::json!({ "created": created, "migrate": migrated, "seed": seeded }))
}

/// CREATE DATABASE when missing. It cannot run in a transaction and has no IF NOT EXISTS,
/// so a concurrent creator is recognised by its error (42P04 duplicate_database).
async fn create_database(ctx: &StepContext<'_>) -> Result<bool, StepError> {
    let mut admin = ctx.admin_session().await?;
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(&ctx.placement.database)
        .fetch_one(&mut *admin)
        .await
        .map_err(|e| StepError::from_sqlx("looking up the database", &e))?;
    if exists {
        admin.release().await;
        return Ok(false);
    }
    let sql = format!("CREATE DATABASE {}", quote_ident(&ctx.placement.database));
    let created = match sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut *admin).await {
        Ok(_) => Ok(true),
        Err(e) if e.as_database_error().and_then(|d| d.code()).as_deref() == Some("42P04") => Ok(false),
        Err(e) => Err(StepError::from_sqlx(&format!("creating database {}", ctx.placement.database), &e)),
    };
    admin.release().await;
    created
}

async fn create_schema(ctx: &StepContext<'_>) -> Result<bool, StepError> {
    let mut conn = ctx.session().await?;
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
        .bind(&ctx.placement.schema)
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| StepError::from_sqlx("looking up the schema", &e))?;
    if exists {
        conn.release().await;
        return Ok(false);
    }
    let sql = format!("CREATE SCHEMA IF NOT EXISTS {}", quote_ident(&ctx.placement.schema));
    let created = match sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut *conn).await {
        Ok(_) => Ok(true),
        // Two concurrent creators can still collide on the catalog's unique index.
        Err(e) if e.as_database_error().and_then(|d| d.code()).as_deref() == Some("23505") => Ok(false),
        Err(e) => Err(StepError::from_sqlx(&format!("creating schema {}", ctx.placement.schema), &e)),
    };
    conn.release().await;
    created
}
