//! Connection pools per (host, database), bounded in number and size, shared by every step a worker runs.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sqlx::postgres::{PgPool, PgPoolOptions};

use crate::catalog::HostSpec;

/// Why a session could not be had: this worker's configuration (permanent) or the
/// connection (classified like any database error).
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("{0}")]
    Config(String),
    #[error("connecting: {0}")]
    Connect(sqlx::Error),
}

/// Pools are kept for the databases in use; beyond `max_pools` the least recently used
/// one is closed, so a worker walking 10,000 tenant databases does not hold 10,000 pools.
pub struct Databases {
    hosts: BTreeMap<String, HostSpec>,
    per_pool: u32,
    max_pools: usize,
    pools: Mutex<HashMap<(String, String), (PgPool, Instant)>>,
    /// Terminations of abandoned sessions (see [`super::session`]).
    cleanup: super::session::Cleanup,
}

impl Databases {
    pub fn new(hosts: BTreeMap<String, HostSpec>, per_pool: u32, max_pools: usize) -> Self {
        Self {
            hosts,
            per_pool: per_pool.max(1),
            max_pools: max_pools.max(1),
            pools: Mutex::new(HashMap::new()),
            cleanup: Default::default(),
        }
    }

    /// A host of this worker's configuration.
    pub fn host(&self, host: &str) -> Result<&HostSpec, String> {
        self.hosts.get(host).ok_or_else(|| format!("host {host:?} is not in this worker's configuration"))
    }

    /// A pool for `database` on `host` (connections are opened lazily).
    pub fn postgres(&self, host: &str, database: &str) -> Result<PgPool, String> {
        let spec =
            self.hosts.get(host).ok_or_else(|| format!("host {host:?} is not in this worker's configuration"))?;
        let key = (host.to_string(), database.to_string());
        let mut pools = self.pools.lock().expect("pool map lock");
        if let Some((pool, used)) = pools.get_mut(&key) {
            *used = Instant::now();
            return Ok(pool.clone());
        }
        if pools.len() >= self.max_pools
            && let Some(oldest) = pools.iter().min_by_key(|(_, (_, used))| *used).map(|(k, _)| k.clone())
            && let Some((pool, _)) = pools.remove(&oldest)
        {
            tokio::spawn(async move { pool.close().await });
        }
        let options = super::postgres::options(&spec.url.with_database(database))
            .map_err(|e| format!("invalid URL for host {host}: {e}"))?;
        let pool = PgPoolOptions::new()
            .max_connections(self.per_pool)
            // No ping before every acquire: a broken connection fails the step's first
            // statement instead, which is a transient error and retried. Saves a round trip
            // per tenant (measured: about 10 % of a `sql` step's cost).
            .test_before_acquire(false)
            .min_connections(0)
            .acquire_timeout(Duration::from_secs(30))
            .idle_timeout(Some(Duration::from_secs(60)))
            .connect_lazy_with(options);
        pools.insert(key, (pool.clone(), Instant::now()));
        Ok(pool)
    }

    /// The administrative database of `host` (the one its URL names, else `postgres`).
    pub fn admin_database(&self, host: &str) -> Result<String, String> {
        let spec =
            self.hosts.get(host).ok_or_else(|| format!("host {host:?} is not in this worker's configuration"))?;
        Ok(spec.url.database().unwrap_or_else(|| "postgres".to_string()))
    }

    /// A session on `database` of `host` for one step (see [`super::session::PgSession`]).
    pub async fn session(&self, host: &str, database: &str) -> Result<super::session::PgSession, SessionError> {
        let pool = self.postgres(host, database).map_err(SessionError::Config)?;
        super::session::PgSession::acquire(&pool, &self.cleanup).await.map_err(SessionError::Connect)
    }

    /// Waits (up to `within`) for the terminations of abandoned sessions under way; true
    /// when every one since the last call succeeded.
    pub async fn settle_cleanup(&self, within: Duration) -> bool {
        self.cleanup.settle(within).await
    }

    /// Waits for the terminations of abandoned sessions that are under way, then closes
    /// every pool.
    pub async fn close(&self) {
        self.cleanup.settle(Duration::from_secs(15)).await;
        let pools: Vec<PgPool> = self.pools.lock().expect("pool map lock").drain().map(|(_, (p, _))| p).collect();
        for p in pools {
            p.close().await;
        }
    }
}
