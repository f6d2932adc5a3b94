//! What differs between database engines: connecting, quoting, and the queries each step needs.

pub mod pools;
pub mod split;
pub mod postgres;
