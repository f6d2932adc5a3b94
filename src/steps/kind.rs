//! The step kinds, their options and the services (isolation, engine) each can run on.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::catalog::{Engine, Isolation, ServiceSpec};

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

    /// The options this kind takes, besides the common ones (`kind`, `name`, `services`,
    /// `timeout`). Anything else in a step of this kind is reported by `validate`.
    pub fn options(self) -> &'static [&'static str] {
        match self {
            Self::Migrate => &["to", "allow_out_of_order", "lock_timeout", "statement_timeout"],
            Self::Seed => &["lock_timeout"],
            Self::Provision => &["seed", "lock_timeout"],
            Self::Backup => &["compression"],
            Self::PruneBackups => &["keep_last", "keep_daily", "keep_weekly", "keep_monthly", "dry_run"],
            Self::VerifyRestore => &["backup", "sample", "smoke_queries", "scratch_host"],
            Self::RdsSnapshot => &["keep_last"],
            Self::VerifySnapshot => &["sample", "smoke_queries"],
            Self::Vacuum => &["min_dead_tuples", "min_dead_ratio", "analyze"],
            Self::AnalyzeIndexes => &["reindex_invalid", "min_bloat_ratio"],
            Self::Purge => {
                &["table", "column", "older_than", "retention_label", "batch_size", "pause", "time_budget", "dry_run"]
            }
            Self::Health => &["long_transaction", "max_xid_age"],
            Self::Sql => &["sql", "file", "transaction"],
            Self::Drift => &["reference"],
        }
    }

    /// Whether a step of this kind can run on a service; `Err` says why not, for `validate`.
    pub fn fits(self, service: &ServiceSpec) -> Result<(), String> {
        let isolation = service.isolation;
        let engine = service.engine;
        match self {
            Self::RdsSnapshot | Self::VerifySnapshot if isolation != Isolation::Database => Err(format!(
                "{self} needs a managed instance per tenant (database isolation), not {isolation} isolation"
            )),
            Self::RdsSnapshot | Self::VerifySnapshot | Self::Vacuum | Self::AnalyzeIndexes if engine != Engine::Postgres => {
                Err(format!("{self} runs on PostgreSQL services only, not {engine}"))
            }
            Self::Provision if isolation == Isolation::Row => Err(
                "provision creates a tenant's own database or schema; row isolation tenants live in shared tables (use migrate on the shared database)"
                    .to_string(),
            ),
            Self::Migrate | Self::Provision if service.migrations.is_none() => {
                Err(format!("{self} needs the service's `migrations` directory, which is not set"))
            }
            Self::Seed if service.seeds.is_none() => Err("seed needs the service's `seeds` directory, which is not set".to_string()),
            _ => Ok(()),
        }
    }
}

impl fmt::Display for StepKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
