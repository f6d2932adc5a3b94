//! tenantry: a durable, scheduled workflow engine for the maintenance of multi-tenant databases.
//!
//! The crate is split by domain: [`catalog`] (tenants, services, placements), [`workflow`]
//! (workflow files, schedules, waves), [`migrations`] (migration directories), [`steps`]
//! (one module per step kind), [`engine`] (what differs between database engines), [`rds`]
//! (managed instances through the RDS API),
//! [`config`] (the layered configuration), [`cli`] (the command line) and [`api`] (the HTTP
//! API of `tenantry serve`).

pub mod api;
pub mod aws;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod diagnostic;
pub mod engine;
pub mod migrations;
pub mod rds;
pub mod runtime;
pub mod secret;
pub mod source;
pub mod steps;
pub mod storage;
pub mod units;
pub mod workflow;
