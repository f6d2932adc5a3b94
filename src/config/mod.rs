//! Configuration: the `tenantry.toml` sections, the layered loader and the checks `validate` runs on them.
//!
//! Layers, lowest first: defaults, the TOML file, `TENANTRY__SECTION__KEY` environment
//! variables, command-line flags; then [`check`]. Unknown keys are errors everywhere.

mod check;
mod load;

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::catalog::{CatalogSpec, HostSpec, ServiceSpec};
use crate::secret::{Secret, SecretUrl};
use crate::units::HumanDuration;

pub use check::check;
pub use load::{ConfigError, EnvOverride, LoadedConfig, Overrides, load};

/// The default config file name, looked up in the current directory.
pub const DEFAULT_FILE: &str = "tenantry.toml";
/// Prefix of environment overrides: `TENANTRY__REDIS__URL`.
pub const ENV_PREFIX: &str = "TENANTRY__";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub redis: RedisConfig,
    #[serde(default)]
    pub paths: PathsConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub runtime: RuntimeConfig,
    #[serde(default)]
    pub storage: Option<StorageConfig>,
    /// The RDS API, for the steps on tenants with a managed instance of their own
    /// (`rds_snapshot`, `verify_snapshot`). Without it: AWS, with the region and the
    /// credentials of the standard AWS chain.
    #[serde(default)]
    pub rds: Option<RdsConfig>,
    #[serde(default)]
    pub backups: BackupsConfig,
    /// The HTTP API of `tenantry serve`; without the section, `serve` serves none.
    #[serde(default)]
    pub api: Option<ApiConfig>,
    #[serde(default)]
    pub hosts: BTreeMap<String, HostSpec>,
    #[serde(default)]
    pub services: BTreeMap<String, ServiceSpec>,
    #[serde(default)]
    pub catalog: CatalogSpec,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// The job queue (apalis), and the run store unless `cluster` names nodes.
    #[serde(default = "default_redis_url")]
    pub url: SecretUrl,
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// Seed nodes of a Redis Cluster that holds the run store (runs, checkpoints, leases,
    /// schedules). The queue stays on `url`: apalis-redis cannot run on a cluster.
    #[serde(default)]
    pub cluster: Vec<SecretUrl>,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self { url: default_redis_url(), prefix: default_prefix(), cluster: Vec::new() }
    }
}

fn default_redis_url() -> SecretUrl {
    SecretUrl::parse("redis://127.0.0.1:6379").expect("static URL")
}

fn default_prefix() -> String {
    "tenantry".to_string()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathsConfig {
    #[serde(default = "default_workflows")]
    pub workflows: PathBuf,
}

impl Default for PathsConfig {
    fn default() -> Self {
        Self { workflows: default_workflows() }
    }
}

fn default_workflows() -> PathBuf {
    PathBuf::from("workflows")
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    #[serde(default = "default_per_host")]
    pub per_host: u32,
    #[serde(default = "default_plan_connections")]
    pub plan_connections: u32,
    /// Connection pools (one per host and database) a worker keeps; beyond it the least
    /// recently used is closed. Lower it when many tenant databases share one server's
    /// `max_connections` (a database per tenant on few servers).
    #[serde(default = "default_max_pools")]
    pub max_pools: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            per_host: default_per_host(),
            plan_connections: default_plan_connections(),
            max_pools: default_max_pools(),
        }
    }
}

fn default_max_pools() -> u32 {
    256
}

fn default_per_host() -> u32 {
    4
}

fn default_plan_connections() -> u32 {
    4
}

/// `[runtime]`: how workers hold, renew and give back work.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Tenants one worker process runs at a time.
    pub worker_concurrency: u32,
    /// How long a worker's claim on a tenant lasts without renewal. A worker that dies
    /// loses its tenants after this long; they are then dispatched again.
    pub lease: HumanDuration,
    /// How long a dispatched tenant may wait in the queue before it is dispatched again.
    pub dispatch_grace: HumanDuration,
    /// How often each process checks active runs for expired leases, soaks and approvals.
    pub sweep_interval: HumanDuration,
    /// On SIGTERM: how long in-flight tenants may take to finish before their leases are
    /// given up (and another worker resumes them from their checkpoint).
    pub drain_timeout: HumanDuration,
    /// Finished runs kept per workflow (the newest ones); older finished runs are removed
    /// from Redis with all their keys, so Redis does not grow with the number of runs.
    pub keep_runs: u32,
    /// Finished runs older than this are removed whatever `keep_runs` says.
    pub keep_runs_for: HumanDuration,
    /// How often finished runs are pruned (by one process at a time).
    pub prune_interval: HumanDuration,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            worker_concurrency: 16,
            lease: HumanDuration(std::time::Duration::from_secs(15)),
            dispatch_grace: HumanDuration(std::time::Duration::from_secs(30)),
            sweep_interval: HumanDuration(std::time::Duration::from_secs(1)),
            drain_timeout: HumanDuration(std::time::Duration::from_secs(30)),
            keep_runs: 50,
            keep_runs_for: HumanDuration(std::time::Duration::from_secs(30 * 24 * 3600)),
            prune_interval: HumanDuration(std::time::Duration::from_secs(60)),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StorageKind {
    S3,
    Fs,
}

/// `[storage]`: the object store that holds backups.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    pub kind: StorageKind,
    #[serde(default)]
    pub bucket: Option<String>,
    #[serde(default)]
    pub prefix: String,
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default)]
    pub access_key_id: Option<String>,
    #[serde(default)]
    pub secret_access_key: Option<Secret>,
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Path-style addressing (`endpoint/bucket/key`), which most S3-compatible servers
    /// need; default true when an `endpoint` is set, false for AWS.
    #[serde(default)]
    pub path_style: Option<bool>,
    /// Server-side encryption: `"AES256"` (SSE-S3) or `"aws:kms"` (SSE-KMS, with `kms_key_id`).
    #[serde(default)]
    pub sse: Option<String>,
    #[serde(default)]
    pub kms_key_id: Option<String>,
    /// Part size of multipart uploads (default 8MiB, at least 5MiB).
    #[serde(default)]
    pub part_size: Option<crate::units::ByteSize>,
    /// Parts of one upload in flight at once (default 3).
    #[serde(default)]
    pub parts_in_flight: Option<u32>,
}

/// `[rds]`: where the RDS API is and who calls it. Mirrors `[storage]`'s S3 settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RdsConfig {
    /// An RDS-compatible endpoint (the local emulator); empty for AWS.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Default: the standard AWS chain (`AWS_REGION`, the profile); `us-east-1` with an
    /// `endpoint` and no region anywhere (emulators ignore it, the signer needs one).
    #[serde(default)]
    pub region: Option<String>,
    /// Static keys; both or neither. Without them, the standard AWS credential chain
    /// (environment, profile, web identity, instance or task role).
    #[serde(default)]
    pub access_key_id: Option<String>,
    #[serde(default)]
    pub secret_access_key: Option<Secret>,
}

/// `[api]`: where `tenantry serve` answers HTTP, and who may ask.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// `host:port` to listen on (default `127.0.0.1:8080`).
    #[serde(default = "default_api_address")]
    pub address: String,
    /// Bearer tokens. Each token's value comes from an environment variable or a file,
    /// never from this file, and is never printed.
    #[serde(default)]
    pub tokens: Vec<ApiToken>,
}

fn default_api_address() -> String {
    "127.0.0.1:8080".to_string()
}

/// `[[api.tokens]]`: one bearer token.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiToken {
    /// Who holds it, for the operator's records (not a secret).
    pub name: String,
    pub role: ApiRole,
    /// The environment variable holding the token.
    #[serde(default)]
    pub env: Option<String>,
    /// Or the file holding it (trailing whitespace ignored).
    #[serde(default)]
    pub file: Option<PathBuf>,
}

/// What a token may do: `read` (every GET), or `operator` (also enqueue, approve, pause,
/// resume, cancel, retry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ApiRole {
    Read,
    Operator,
}

/// `[backups]`: how fresh every tenant's backups and restore verifications must be
/// (`tenantry backups --stale`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackupsConfig {
    /// A tenant whose newest complete backup is older than this (or that has none) is
    /// stale. The default leaves a nightly backup half a day of slack.
    pub max_backup_age: HumanDuration,
    /// A tenant whose newest passed restore verification is older than this is stale; one
    /// never verified is stale once its oldest backup is this old (it could have been
    /// verified by then).
    pub max_verify_age: HumanDuration,
}

impl Default for BackupsConfig {
    fn default() -> Self {
        Self {
            max_backup_age: HumanDuration(std::time::Duration::from_secs(36 * 3600)),
            max_verify_age: HumanDuration(std::time::Duration::from_secs(30 * 24 * 3600)),
        }
    }
}
