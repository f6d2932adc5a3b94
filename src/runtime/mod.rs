//! The durable runtime: runs in Redis, checkpoints, leases, dispatch through apalis, workers, scheduler.
//!
//! Redis holds the authoritative state of every run (`store`, with one Lua script per
//! transition); apalis only carries "work on tenant T of run R" to some worker. A worker
//! claims the tenant with a lease and a fencing token, runs its remaining steps from the
//! last checkpoint, and finishes it; anything that dies in between loses its lease and the
//! sweep dispatches the tenant again.

pub mod clock;
pub mod connection;
pub mod fence;
pub mod keys;
pub mod launch;
pub mod model;
pub mod queue;
pub mod report;
pub mod retry;
pub mod run_report;
pub mod scheduler;
pub mod store;
pub mod worker;
