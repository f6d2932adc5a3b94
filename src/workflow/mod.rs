//! Workflows (SPEC §3): the file format, schedules, target selection, wave assignment and the checks `validate` runs.

mod check;
mod definition;
mod load;
pub mod plan;
mod schedule;
pub mod target;
mod waves;

pub use check::{CheckContext, check, warnings};
pub use definition::{CatchUp, Concurrency, Overlap, ReportKind, RetrySpec, Target, WaveSpec, WorkflowSpec};
pub use load::{Workflow, find, read_all, workflow_files};
pub use schedule::{Schedule, ScheduleError, parse_timezone};
pub use waves::{Wave, assign, percent_count, wave_name};
