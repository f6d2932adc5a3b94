//! The run store's connection: one Redis server (a reconnecting connection manager) or a Redis Cluster (the cluster client, which follows MOVED/ASK redirections and reconnects by itself).
//!
//! Both implement [`redis::aio::ConnectionLike`], so the store sends the same commands,
//! scripts and MULTI/EXEC pipelines over either. On a cluster, the cluster client routes a
//! script by its first key and a pipeline by the slot of its keys, and refuses a pipeline
//! whose keys are in several slots (`CROSSSLOT`) before sending it; the key layout
//! (`keys.rs`) keeps every script and transaction in one slot.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisError, RedisFuture, Value};

use crate::secret::SecretUrl;

/// Where the run store lives.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    /// One server (possibly with replicas and a failover in front of it).
    Single(&'a SecretUrl),
    /// Seed nodes of a Redis Cluster; the client learns the others from them.
    Cluster(&'a [SecretUrl]),
}

impl Target<'_> {
    /// The URLs without passwords, for messages.
    pub fn redacted(&self) -> String {
        match self {
            Target::Single(url) => url.redacted(),
            Target::Cluster(nodes) => {
                format!("cluster {}", nodes.iter().map(SecretUrl::redacted).collect::<Vec<_>>().join(","))
            }
        }
    }
}

/// A connection to one Redis or to a Redis Cluster; cheap to clone (clones share it).
#[derive(Clone)]
pub enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Connection {
    /// Connects, giving up after `patience`. Afterwards both kinds reconnect by themselves.
    pub async fn open(target: Target<'_>, patience: Duration) -> Result<Self, RedisError> {
        let timed_out = || RedisError::from((redis::ErrorKind::Io, "connection timed out"));
        let connect_timeout = Duration::from_secs(5).min(patience);
        match target {
            Target::Single(url) => {
                let client = redis::Client::open(url.expose())?;
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(connect_timeout))
                    .set_response_timeout(Some(Duration::from_secs(30)))
                    .set_number_of_retries(6);
                let conn = tokio::time::timeout(patience, ConnectionManager::new_with_config(client, config))
                    .await
                    .map_err(|_| timed_out())??;
                Ok(Self::Single(conn))
            }
            Target::Cluster(nodes) => {
                if nodes.is_empty() {
                    return Err(RedisError::from((redis::ErrorKind::InvalidClientConfig, "no cluster nodes given")));
                }
                let client = redis::cluster::ClusterClientBuilder::new(nodes.iter().map(SecretUrl::expose))
                    .connection_timeout(connect_timeout)
                    .response_timeout(Duration::from_secs(30))
                    .retries(6)
                    .build()?;
                let conn =
                    tokio::time::timeout(patience, client.get_async_connection()).await.map_err(|_| timed_out())??;
                Ok(Self::Cluster(conn))
            }
        }
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}
