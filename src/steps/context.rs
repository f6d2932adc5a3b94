//! What a step gets to run one tenant: the run, the tenant, its placement, the step, database sessions, the object store and the RDS API, the cancellation signal, the lease's fence, the clock and the workflow's time zone.

use std::path::Path;

use tokio_util::sync::CancellationToken;

use super::{StepError, StepSpec};
use crate::catalog::Placement;
use crate::engine::pools::{Databases, SessionError};
use crate::engine::session::PgSession;
use crate::runtime::clock::Clock;
use crate::runtime::fence::Fence;

pub struct StepContext<'a> {
    pub run: &'a str,
    /// For a retry run: the first run of its chain, whose receipts it shares (see
    /// [`StepContext::receipt_run`]).
    pub root_run: Option<&'a str>,
    pub tenant: &'a str,
    /// The tenant's catalog labels that the run's steps read (see
    /// [`super::define::Step::labels`]), as snapshotted when the run was created.
    pub labels: &'a std::collections::BTreeMap<String, String>,
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
    /// Fires when the step must stop: its timeout, a lost lease, a cancelled run. A long
    /// step checks it between its units of work (batches, objects). The runtime also drops
    /// the step's future when it fires, and every [`PgSession`] the step holds then stops
    /// its statement in the database; the token is for stopping *between* statements.
    pub cancel: &'a CancellationToken,
    /// The lease: check it right before an effect that no receipt covers (see
    /// [`crate::runtime::fence`] for the rule).
    pub fence: &'a Fence,
    /// The workflow's `[throttle]`: a long step waits between its units of work while its
    /// host is over a limit ([`crate::engine::load::hold`]).
    pub throttle: Option<&'a crate::engine::load::ThrottleSpec>,
    /// The object store of `[storage]`, when the config has one (backups).
    pub objects: Option<&'a crate::storage::ObjectStore>,
    /// `[backups]`: how old a tenant's newest backup and verification may be.
    pub backup_limits: &'a crate::config::BackupsConfig,
    /// The RDS API of `[rds]` (managed instances); None where nothing provides one.
    pub rds: Option<&'a crate::rds::Rds>,
    /// The time, for windows and timestamps (the scheduler's clock; a test can move it).
    pub clock: &'a dyn Clock,
    /// The workflow's time zone (UTC unless it sets `timezone`): where the calendar days,
    /// weeks and months of retention rules begin.
    pub timezone: chrono_tz::Tz,
}

impl StepContext<'_> {
    /// The run id that keys receipts: a retry's root run, so a unit that committed in the
    /// run being retried is skipped rather than applied twice.
    pub fn receipt_run(&self) -> &str {
        self.root_run.unwrap_or(self.run)
    }

    /// A session on the tenant's database. Steps talk to the database only through
    /// sessions: one that is dropped without [`PgSession::release`] (timeout, lost lease,
    /// cancel, an early error) has its backend terminated, so no statement, lock or session
    /// setting outlives the step.
    pub async fn session(&self) -> Result<PgSession, StepError> {
        self.postgres_only()?;
        session_result(self.databases.session(&self.placement.host, &self.placement.database).await)
    }

    /// A session on the host's administrative database (CREATE DATABASE and the like).
    pub async fn admin_session(&self) -> Result<PgSession, StepError> {
        self.postgres_only()?;
        let host = &self.placement.host;
        let database = self.databases.admin_database(host).map_err(StepError::permanent)?;
        session_result(self.databases.session(host, &database).await)
    }

    fn postgres_only(&self) -> Result<(), StepError> {
        super::define::postgres_only(self.placement.engine)
            .map_err(|why| StepError::permanent(format!("{} {why}", self.step.kind)))
    }
}

fn session_result(result: Result<PgSession, SessionError>) -> Result<PgSession, StepError> {
    result.map_err(|e| match e {
        SessionError::Config(message) => StepError::permanent(message),
        SessionError::Connect(e) => StepError::from_sqlx("connecting", &e),
    })
}

/// Runs one unit with its kind's definition (see [`super::StepKind::def`]). The result is what the
/// step reports (stored in the checkpoint).
pub async fn execute(ctx: &StepContext<'_>) -> Result<serde_json::Value, StepError> {
    ctx.step.kind.def().run(ctx).await
}
