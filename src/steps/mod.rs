//! Step kinds (SPEC §4): what each kind accepts in a workflow file, where it fits, and (one file per kind) what it does per tenant.

pub mod analyze_indexes;
pub mod backup;
pub mod backup_rows;
mod checks;
mod context;
pub mod define;
pub mod drift;
mod error;
pub mod health;
mod kind;
pub mod migrate;
pub mod provision;
pub mod prune_backups;
pub mod purge;
pub mod rds_snapshot;
pub mod receipt;
pub mod restore;
pub mod seed;
mod spec;
pub mod sql;
pub mod vacuum;
pub mod verify_restore;
pub mod verify_snapshot;

pub use context::{StepContext, execute};
pub use error::{Cause, Retry, StepError};
pub use kind::StepKind;
pub use spec::{COMMON_OPTIONS, StepSpec};
