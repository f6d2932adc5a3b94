//! A host's load signals (replica lag, long transactions, wraparound vacuums, connections in use) read in one query, and the verdict of a workflow's `[throttle]` limits on them: which limit a host is over, in words for `status`.
//!
//! Signals are read at most once per [`SIGNALS_TTL`] per host and worker, however many of
//! its tenants ask. Replica lag is the replay lag of the host's replicas as the primary sees
//! them (`pg_stat_replication`), or the host's own `lag_query` when it sets one (a
//! heartbeat table, a managed service's function) — one number of seconds. Transactions
//! of tenantry's own sessions (`application_name` `tenantry…`, which its dumps and
//! restores also carry) are not counted: a long backup must not hold the fleet; its
//! connections are (they use the server's capacity like any other).
//!
//! A host whose signals cannot be read (unreachable, a role that cannot see other
//! sessions without `pg_monitor`, a failing `lag_query`) holds its tenants too, as "load
//! unknown", rather than letting them run blind; `max_wait` bounds every hold. Hosts of
//! engines other than PostgreSQL have no signals here and are not held.

use std::sync::LazyLock;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::pools::Databases;
use super::shared_reads::SharedReads;
use crate::units::HumanDuration;

/// How long one reading of a host's signals serves its tenants on this worker.
pub const SIGNALS_TTL: Duration = Duration::from_secs(2);
/// How often a held tenant looks again, unless the workflow says `check_every`.
pub const DEFAULT_CHECK_EVERY: Duration = Duration::from_secs(10);
/// How long a tenant may be held, unless the workflow says `max_wait`.
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(3600);
/// How long one reading of a host's signals may take.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A workflow's `[throttle]`: the limits over which a host's tenants wait. Each is off
/// unless set.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ThrottleSpec {
    /// Replication lag of the host's replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica_lag: Option<HumanDuration>,
    /// Age of the oldest open transaction on the host (other than tenantry's own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub long_transaction: Option<HumanDuration>,
    /// Autovacuum workers running to prevent transaction-id wraparound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wraparound_vacuums: Option<u32>,
    /// Share of `max_connections` in use (0.8: 80 %).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections: Option<f64>,
    /// How often a held tenant checks again (default 10s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check_every: Option<HumanDuration>,
    /// How long one tenant may be held before it fails with the reason (default 1h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_wait: Option<HumanDuration>,
}

/// One reading of a host.
#[derive(Debug, Clone, Default, PartialEq, sqlx::FromRow)]
pub struct Signals {
    /// Seconds; None: no replica, or none that reports.
    pub replica_lag: Option<f64>,
    /// Seconds the oldest open transaction has been running.
    pub oldest_transaction: Option<f64>,
    pub wraparound_vacuums: i64,
    pub connections: i64,
    pub max_connections: i64,
}

impl ThrottleSpec {
    pub fn check_every(&self) -> Duration {
        self.check_every.map_or(DEFAULT_CHECK_EVERY, |d| d.0)
    }

    pub fn max_wait(&self) -> Duration {
        self.max_wait.map_or(DEFAULT_MAX_WAIT, |d| d.0)
    }

    /// Problems of the values, as (key, message), for `validate`.
    pub fn check(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if let Some(c) = self.connections
            && !(c > 0.0 && c <= 1.0)
        {
            out.push(("connections".into(), format!("connections is a share of max_connections in (0, 1], not {c}")));
        }
        if self.check_every.is_some_and(|d| d.0.is_zero()) {
            out.push(("check_every".into(), "check_every must be longer than zero".into()));
        }
        if self.max_wait.is_some_and(|d| d.0.is_zero()) {
            out.push(("max_wait".into(), "max_wait must be longer than zero".into()));
        }
        out
    }

    /// The first limit `s` is over, in words ("replica lag 42 s > 10 s"); None: go on.
    pub fn verdict(&self, s: &Signals) -> Option<String> {
        let secs = |d: HumanDuration| d.0.as_secs_f64();
        if let (Some(limit), Some(lag)) = (self.replica_lag, s.replica_lag)
            && lag > secs(limit)
        {
            return Some(format!("replica lag {lag:.0} s > {} s", secs(limit)));
        }
        if let (Some(limit), Some(age)) = (self.long_transaction, s.oldest_transaction)
            && age > secs(limit)
        {
            return Some(format!("a transaction open for {age:.0} s > {} s", secs(limit)));
        }
        if let Some(limit) = self.wraparound_vacuums
            && s.wraparound_vacuums >= i64::from(limit.max(1))
        {
            return Some(format!("{} autovacuum workers preventing wraparound >= {limit}", s.wraparound_vacuums));
        }
        if let Some(share) = self.connections
            && s.max_connections > 0
            && s.connections as f64 > share * s.max_connections as f64
        {
            return Some(format!(
                "{} of {} connections in use > {:.0} %",
                s.connections,
                s.max_connections,
                share * 100.0
            ));
        }
        None
    }
}

static SIGNALS: LazyLock<SharedReads<Signals>> = LazyLock::new(|| SharedReads::new(SIGNALS_TTL));

/// The host's signals, read at most once per [`SIGNALS_TTL`] on this worker.
pub async fn signals(databases: &Databases, host: &str) -> Result<Option<std::sync::Arc<Signals>>, String> {
    let spec = databases.host(host)?;
    if spec.engine != crate::catalog::Engine::Postgres {
        return Ok(None);
    }
    let lag_query = spec.lag_query.clone();
    let pool = databases.postgres(host, &databases.admin_database(host)?)?;
    let read = SIGNALS.get(host, || async move {
        tokio::time::timeout(READ_TIMEOUT, async move {
            let mut conn = pool.acquire().await.map_err(|e| format!("connecting to read its load: {e}"))?;
            let sees_all: bool = sqlx::query_scalar(
                "SELECT rolsuper OR pg_has_role(current_user, 'pg_monitor', 'MEMBER') FROM pg_roles WHERE rolname = current_user",
            )
            .fetch_one(&mut *conn)
            .await
            .map_err(|e| format!("reading its load: {e}"))?;
            if !sees_all {
                return Err("its role cannot see other sessions' transactions or replication: grant it pg_monitor".to_string());
            }
            let mut s: Signals = sqlx::query_as(
                "SELECT (SELECT extract(epoch FROM max(replay_lag))::float8 FROM pg_stat_replication) AS replica_lag, \
                        (SELECT extract(epoch FROM now() - min(xact_start))::float8 FROM pg_stat_activity \
                         WHERE xact_start IS NOT NULL AND pid <> pg_backend_pid() AND backend_type = 'client backend' \
                           AND application_name NOT LIKE 'tenantry%') AS oldest_transaction, \
                        (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker' \
                           AND query LIKE '%to prevent wraparound%') AS wraparound_vacuums, \
                        (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend') AS connections, \
                        current_setting('max_connections')::int8 AS max_connections",
            )
            .fetch_one(&mut *conn)
            .await
            .map_err(|e| format!("reading its load: {e}"))?;
            if let Some(query) = lag_query {
                s.replica_lag = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT ({query})::float8")))
                    .fetch_one(&mut *conn)
                    .await
                    .map_err(|e| format!("running its lag_query: {e}"))?;
            }
            Ok(s)
        })
        .await
        .unwrap_or_else(|_| Err(format!("reading its load took longer than {READ_TIMEOUT:?}")))
    });
    read.await.map(Some).map_err(|e: String| format!("host {host}: {e}"))
}

/// The verdict of `spec` on `host` now; a host whose signals cannot be read holds its
/// tenants too (it is the host that is in trouble), with the reason.
pub async fn verdict(spec: &ThrottleSpec, databases: &Databases, host: &str) -> Option<String> {
    match signals(databases, host).await {
        Ok(Some(s)) => spec.verdict(&s).map(|why| format!("host {host}: {why}")),
        Ok(None) => None,
        Err(e) => Some(format!("load unknown: {e}")),
    }
}

/// Waits while `host` is over one of `spec`'s limits (a step between its units of work),
/// until `cancel` fires. Returns how long it waited, and the reason when it gave up after
/// `max_wait` with the host still over a limit (the step stops there).
pub async fn hold(
    spec: &ThrottleSpec,
    databases: &Databases,
    host: &str,
    cancel: &tokio_util::sync::CancellationToken,
) -> (Duration, Option<String>) {
    let started = std::time::Instant::now();
    while let Some(why) = verdict(spec, databases, host).await {
        if started.elapsed() >= spec.max_wait() {
            return (started.elapsed(), Some(why));
        }
        tracing::debug!(why, "throttled between units of work");
        tokio::select! {
            () = tokio::time::sleep(spec.check_every()) => {}
            () = cancel.cancelled() => break,
        }
    }
    (started.elapsed(), None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_limit_over_is_named_and_unset_limits_never_hold() {
        let spec = ThrottleSpec {
            replica_lag: Some(HumanDuration(Duration::from_secs(10))),
            long_transaction: Some(HumanDuration(Duration::from_secs(600))),
            wraparound_vacuums: Some(2),
            connections: Some(0.8),
            check_every: None,
            max_wait: None,
        };
        let calm = Signals { max_connections: 100, connections: 10, ..Signals::default() };
        assert_eq!(spec.verdict(&calm), None);
        let lagging = Signals { replica_lag: Some(42.0), ..calm.clone() };
        assert_eq!(spec.verdict(&lagging).as_deref(), Some("replica lag 42 s > 10 s"));
        let long = Signals { oldest_transaction: Some(700.0), ..calm.clone() };
        assert_eq!(spec.verdict(&long).as_deref(), Some("a transaction open for 700 s > 600 s"));
        let vacuums = Signals { wraparound_vacuums: 2, ..calm.clone() };
        assert!(spec.verdict(&vacuums).unwrap().contains("preventing wraparound"));
        let full = Signals { connections: 90, ..calm.clone() };
        assert_eq!(spec.verdict(&full).as_deref(), Some("90 of 100 connections in use > 80 %"));
        assert_eq!(ThrottleSpec::default().verdict(&Signals { replica_lag: Some(1e6), ..full }), None);
        assert_eq!(ThrottleSpec { connections: Some(1.5), ..Default::default() }.check().len(), 1);
    }
}
