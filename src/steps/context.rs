//! What a step gets to run one tenant: the run, the tenant, its placement, the step's options and the shared connection pools; and the dispatch to each kind.

use std::path::Path;

use super::{StepError, StepKind, StepSpec};
use crate::catalog::{Engine, Placement};
use crate::engine::pools::Databases;

pub struct StepContext<'a> {
    pub run: &'a str,
    /// For a retry run: the first run of its chain, whose receipts it shares (see
    /// [`StepContext::receipt_run`]).
    pub root_run: Option<&'a str>,
    pub tenant: &'a str,
    /// `step/service`, unique within a tenant's run: the receipt key.
    pub unit: &'a str,
    pub step: &'a StepSpec,
    pub placement: &'a Placement,
    pub databases: &'a Databases,
    /// Directory of the config file, for relative paths in step options (`sql.file`).
    pub base_dir: &'a Path,
    /// The service's migrations, as loaded for this run (migrate, provision).
    pub migrations: Option<&'a crate::migrations::MigrationSet>,
    /// The service's definition in this worker's configuration (seeds directory).
    pub service: Option<&'a crate::catalog::ServiceSpec>,
}

impl StepContext<'_> {
    /// The run id that keys receipts: a retry's root run, so a unit that committed in the
    /// run being retried is skipped rather than applied twice.
    pub fn receipt_run(&self) -> &str {
        self.root_run.unwrap_or(self.run)
    }

    pub fn pool(&self) -> Result<sqlx::PgPool, StepError> {
        if self.placement.engine != Engine::Postgres {
            return Err(StepError::permanent(format!(
                "{} is not supported on {} yet",
                self.step.kind, self.placement.engine
            )));
        }
        self.databases.postgres(&self.placement.host, &self.placement.database).map_err(StepError::permanent)
    }
}

/// Runs one unit. The result is what the step reports (stored in the checkpoint).
pub async fn execute(ctx: &StepContext<'_>) -> Result<serde_json::Value, StepError> {
    match ctx.step.kind {
        StepKind::Sql => super::sql::run(ctx).await,
        StepKind::Health => super::health::run(ctx).await,
        StepKind::Migrate => super::migrate::run(ctx).await,
        StepKind::Drift => super::drift::run(ctx).await,
        StepKind::Seed => super::seed::run(ctx).await,
        StepKind::Provision => super::provision::run(ctx).await,
        other => Err(StepError::permanent(format!(
            "step kind {other} cannot run yet in this version of tenantry (it is accepted by validate and plan)"
        ))),
    }
}
