//! Step kinds (SPEC §4): what each kind accepts in a workflow file, where it fits, and (one file per kind) what it does per tenant.

mod kind;
pub mod migrate;
mod spec;

pub use kind::StepKind;
pub use spec::{COMMON_OPTIONS, StepSpec};
