//! The workflow file format (SPEC §3): schedule, target, waves, concurrency, retry, timeout and steps.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::catalog::TenantStatus;
use crate::steps::StepSpec;
use crate::units::HumanDuration;

/// One `workflows/*.toml` file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WorkflowSpec {
    /// Defaults to the file name without `.toml`.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    /// Cron expression, 5 fields or 6 with seconds first. No schedule: operator runs only.
    #[serde(default)]
    pub schedule: Option<String>,
    /// IANA time zone of the schedule (`Europe/Berlin`); default UTC.
    #[serde(default)]
    pub timezone: Option<String>,
    #[serde(default)]
    pub overlap: Overlap,
    #[serde(default)]
    pub catch_up: CatchUp,
    #[serde(default)]
    pub target: Target,
    #[serde(default)]
    pub waves: Vec<WaveSpec>,
    #[serde(default)]
    pub concurrency: Concurrency,
    #[serde(default)]
    pub retry: RetrySpec,
    /// Per-tenant, per-step time limit.
    #[serde(default = "default_timeout")]
    pub timeout: HumanDuration,
    #[serde(default)]
    pub steps: Vec<StepSpec>,
    /// Load limits per host: over one, a host's tenants wait before they start (and a
    /// purge between its batches) while other hosts go on. None: no throttling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttle: Option<crate::engine::load::ThrottleSpec>,
    /// What a run of the workflow leaves in the object store when it ends: `"drill"`, a
    /// disaster-recovery drill report of its `verify_restore` steps (RTO and RPO per
    /// tenant, the fleet's worst and median, the failures); `"run"`, the run's report (what
    /// `tenantry report RUN` prints). None: no report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<ReportKind>,
}

/// A report a run writes when it ends (see [`WorkflowSpec::report`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReportKind {
    /// The verify_restore steps' outcomes, with RTO and RPO: `crate::runtime::report`.
    Drill,
    /// What `tenantry report RUN` prints: outcomes, failures, what each step did across
    /// the fleet (`crate::runtime::run_report`).
    Run,
}

impl ReportKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Drill => "drill",
            Self::Run => "run",
        }
    }
}

impl std::fmt::Display for ReportKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

fn default_timeout() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(30 * 60))
}

/// What to do when a tick fires while the previous run of the workflow is still going.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Overlap {
    /// Drop the tick.
    #[default]
    Skip,
    /// Run it when the previous run ends. One run waits at most: a tick while one is
    /// already waiting is dropped.
    Queue,
}

/// What to do with ticks missed while no scheduler ran, or while Redis or the catalog was
/// down.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CatchUp {
    /// One run for all the missed ticks (for the newest of them).
    #[default]
    Latest,
    /// No run for them. A tick counts as missed when it is handled more than a minute
    /// after its time; a shorter delay (a Redis restart) still runs it.
    None,
}

/// Which tenants and services a workflow covers. Every given criterion must hold.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// Services the steps run on by default; empty: every service.
    #[serde(default)]
    pub services: Vec<String>,
    /// Only these tenants; empty: all.
    #[serde(default)]
    pub tenants: Vec<String>,
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Tenant statuses included; default: active only.
    #[serde(default = "default_status")]
    pub status: Vec<TenantStatus>,
    /// Label selector: every key must have the given value.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl Default for Target {
    fn default() -> Self {
        Self {
            services: Vec::new(),
            tenants: Vec::new(),
            exclude: Vec::new(),
            status: default_status(),
            labels: BTreeMap::new(),
        }
    }
}

fn default_status() -> Vec<TenantStatus> {
    vec![TenantStatus::Active]
}

/// An ordered group of tenants with its failure budget.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WaveSpec {
    #[serde(default)]
    pub name: Option<String>,
    /// Selector: explicit tenant ids...
    #[serde(default)]
    pub tenants: Option<Vec<String>>,
    /// ...or a label selector...
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
    /// ...or a percentage of the tenants still unassigned (chosen deterministically).
    /// No selector: every remaining tenant.
    #[serde(default)]
    pub percent: Option<f64>,
    /// The wave halts the run when more tenants than this fail.
    #[serde(default)]
    pub max_failures: Option<u32>,
    /// ...or when a larger share than this (0.0–1.0) fails.
    #[serde(default)]
    pub max_failure_rate: Option<f64>,
    /// Wait in `awaiting_approval` before this wave starts.
    #[serde(default)]
    pub approval: bool,
    /// Wait this long after the wave before the next one starts.
    #[serde(default)]
    pub soak: Option<HumanDuration>,
}

impl WaveSpec {
    pub fn is_catch_all(&self) -> bool {
        self.tenants.is_none() && self.labels.is_none() && self.percent.is_none()
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Concurrency {
    /// Tenants in flight for the whole run.
    #[serde(default = "default_run_concurrency")]
    pub run: u32,
    /// Tenants in flight per database host; default: the host's `max_concurrency`.
    #[serde(default)]
    pub per_host: Option<u32>,
}

impl Default for Concurrency {
    fn default() -> Self {
        Self { run: default_run_concurrency(), per_host: None }
    }
}

fn default_run_concurrency() -> u32 {
    16
}

/// Retries of transient errors: exponential backoff with jitter, capped.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySpec {
    /// Total attempts, the first included.
    #[serde(default = "default_attempts")]
    pub attempts: u32,
    #[serde(default = "default_backoff")]
    pub backoff: HumanDuration,
    #[serde(default = "default_max_backoff")]
    pub max_backoff: HumanDuration,
    #[serde(default = "default_true")]
    pub jitter: bool,
    /// How many times a worker may vanish (killed, crashed, partitioned: its lease
    /// expired) while running a tenant before the tenant fails. Separate from, and larger
    /// than, `attempts`: losing a worker in a deploy is not the tenant's fault, but a tenant
    /// that crashes every worker that runs it must stop somewhere. Leases given back at a
    /// drain or lost to a Redis error do not count.
    #[serde(default = "default_lost_leases")]
    pub lost_leases: u32,
}

impl Default for RetrySpec {
    fn default() -> Self {
        Self {
            attempts: default_attempts(),
            backoff: default_backoff(),
            max_backoff: default_max_backoff(),
            jitter: true,
            lost_leases: default_lost_leases(),
        }
    }
}

fn default_lost_leases() -> u32 {
    10
}

fn default_attempts() -> u32 {
    3
}

fn default_backoff() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(2))
}

fn default_max_backoff() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(60))
}

fn default_true() -> bool {
    true
}
