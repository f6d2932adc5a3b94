//! What differs between database engines: connecting, quoting, and the queries each step needs.

pub mod fleet;
pub mod load;
pub mod pools;
pub mod postgres;
pub mod session;
pub mod shared_reads;
pub mod split;
pub mod tools;
