//! Step kinds (SPEC §4): what each kind accepts in a workflow file, where it fits, and (one file per kind) what it does per tenant.

mod context;
pub mod drift;
mod error;
pub mod health;
mod kind;
pub mod migrate;
pub mod provision;
pub mod receipt;
pub mod seed;
mod spec;
pub mod sql;

pub use context::{StepContext, can_run, execute};
pub use error::{Cause, Retry, StepError};
pub use kind::StepKind;
pub use spec::{COMMON_OPTIONS, StepSpec};
