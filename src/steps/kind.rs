//! The step kinds by name, and the registry that maps each to its definition in its own file.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::define::{Kind, registered};
use crate::catalog::{Engine, ServiceSpec};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    Migrate,
    Seed,
    Provision,
    Backup,
    PruneBackups,
    VerifyRestore,
    RdsSnapshot,
    VerifySnapshot,
    Vacuum,
    AnalyzeIndexes,
    Purge,
    Health,
    Sql,
    Drift,
}

impl StepKind {
    pub const ALL: [StepKind; 14] = [
        Self::Migrate,
        Self::Seed,
        Self::Provision,
        Self::Backup,
        Self::PruneBackups,
        Self::VerifyRestore,
        Self::RdsSnapshot,
        Self::VerifySnapshot,
        Self::Vacuum,
        Self::AnalyzeIndexes,
        Self::Purge,
        Self::Health,
        Self::Sql,
        Self::Drift,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Migrate => "migrate",
            Self::Seed => "seed",
            Self::Provision => "provision",
            Self::Backup => "backup",
            Self::PruneBackups => "prune_backups",
            Self::VerifyRestore => "verify_restore",
            Self::RdsSnapshot => "rds_snapshot",
            Self::VerifySnapshot => "verify_snapshot",
            Self::Vacuum => "vacuum",
            Self::AnalyzeIndexes => "analyze_indexes",
            Self::Purge => "purge",
            Self::Health => "health",
            Self::Sql => "sql",
            Self::Drift => "drift",
        }
    }

    /// The registry: what each kind is, from its own file. A new kind adds its variant
    /// above and its line here.
    pub fn def(self) -> &'static dyn Kind {
        use super::{
            analyze_indexes, backup, drift, health, migrate, provision, prune_backups, purge, rds_snapshot, seed, sql,
            vacuum, verify_restore, verify_snapshot,
        };
        match self {
            Self::Migrate => registered::<migrate::Migrate>(),
            Self::Seed => registered::<seed::Seed>(),
            Self::Provision => registered::<provision::Provision>(),
            Self::Backup => registered::<backup::Backup>(),
            Self::PruneBackups => registered::<prune_backups::PruneBackups>(),
            Self::VerifyRestore => registered::<verify_restore::VerifyRestore>(),
            Self::RdsSnapshot => registered::<rds_snapshot::RdsSnapshot>(),
            Self::VerifySnapshot => registered::<verify_snapshot::VerifySnapshot>(),
            Self::Vacuum => registered::<vacuum::Vacuum>(),
            Self::AnalyzeIndexes => registered::<analyze_indexes::AnalyzeIndexes>(),
            Self::Purge => registered::<purge::Purge>(),
            Self::Health => registered::<health::Health>(),
            Self::Sql => registered::<sql::Sql>(),
            Self::Drift => registered::<drift::Drift>(),
        }
    }

    /// The options this kind takes, besides the common ones (`kind`, `name`, `services`,
    /// `timeout`). Anything else in a step of this kind is reported by `validate`.
    pub fn options(self) -> &'static [&'static str] {
        self.def().options()
    }

    /// Whether a step of this kind can run on a service; `Err` says why not, for `validate`.
    pub fn fits(self, service: &ServiceSpec) -> Result<(), String> {
        self.def().fits(service)
    }

    /// Whether this version runs the kind on `engine`; `Err` says why not (`plan` shows the
    /// step as blocked, `validate` warns, a run fails the step).
    pub fn runs_on(self, engine: Engine) -> Result<(), String> {
        self.def().runs_on(engine).map_err(|why| format!("{self} {why}"))
    }
}

impl fmt::Display for StepKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
