//! A PostgreSQL session checked out for one step: stopped in the database (not only dropped in Rust) when the step is, and returned to the pool only clean.
//!
//! Dropping a future that awaits a query does not stop the query: the server keeps running
//! it, and sqlx's pool, on getting the connection back, waits for the result and then hands
//! the connection to the next step *with whatever the session still holds* (a session
//! advisory lock, `SET lock_timeout`, `SET search_path`). That is how a timed-out migration
//! used to keep its target locked for the next attempt.
//!
//! A [`PgSession`] is the one way steps talk to a tenant's database:
//! - [`PgSession::release`] (the normal end) resets what the step changed in the session
//!   (`RESET ALL`, `pg_advisory_unlock_all()`) when it said it changed something
//!   ([`PgSession::mark_dirty`]), then returns the connection to the pool;
//! - dropping it without `release` (timeout, lost lease, cancel, drain, an early `?`) takes
//!   the connection out of the pool and terminates its backend from a separate connection
//!   (`pg_terminate_backend`, then waiting until the backend is gone), so the statement
//!   stops, its transaction rolls back and its session locks go, at once. The termination
//!   runs on a task tracked by [`Cleanup`], which is waited for before the tenant is given
//!   to another worker and before a worker exits.

use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, Postgres};
use sqlx::{ConnectOptions, Connection};
use tokio_util::task::TaskTracker;

/// How long the termination of an abandoned session may take before it is given up (the
/// server then ends the session by itself when it next writes to the closed socket).
const TERMINATE_WITHIN: Duration = Duration::from_secs(10);

/// Background terminations of abandoned sessions, awaited before a tenant is given back to
/// another worker and at shutdown, so no tenant runs twice at once and no worker exits with
/// a tenant's statement still running.
#[derive(Clone, Default)]
pub struct Cleanup {
    tasks: TaskTracker,
    /// Terminations that failed or timed out since the last [`Cleanup::settle`].
    failed: Arc<AtomicUsize>,
}

impl Cleanup {
    /// Waits (up to `within`) for the terminations under way; true when they all ended and
    /// every one since the last call succeeded.
    pub async fn settle(&self, within: Duration) -> bool {
        self.tasks.close();
        let ended = tokio::time::timeout(within, self.tasks.wait()).await.is_ok();
        self.tasks.reopen();
        self.failed.swap(0, Ordering::SeqCst) == 0 && ended
    }
}

/// One checked-out connection and the backend process behind it.
pub struct PgSession {
    conn: Option<PoolConnection<Postgres>>,
    pid: i32,
    options: PgConnectOptions,
    dirty: bool,
    cleanup: Cleanup,
}

impl PgSession {
    /// Checks a connection out of `pool` and learns its backend's process id (the pid is
    /// what lets another connection stop this one's statement). One round trip: a simple
    /// query, not a prepared statement, which would take two on every new connection (Parse
    /// and Describe, then Bind and Execute) and a statement-cache entry on each.
    pub async fn acquire(pool: &PgPool, cleanup: &Cleanup) -> Result<Self, sqlx::Error> {
        use sqlx::Row;
        let mut conn = pool.acquire().await?;
        let pid: i32 = sqlx::raw_sql("SELECT pg_backend_pid()").fetch_one(&mut *conn).await?.try_get(0)?;
        Ok(Self {
            conn: Some(conn),
            pid,
            options: (*pool.connect_options()).clone(),
            dirty: false,
            cleanup: cleanup.clone(),
        })
    }

    /// The backend's process id (`pg_stat_activity.pid`).
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Says that the step changed, or may have changed, session state (a non-local `SET`,
    /// `SET ROLE`, a session advisory lock, a temporary table, `LISTEN`, a `BEGIN` it did not
    /// end — anything an operator's SQL can do): [`PgSession::release`] then resets it before
    /// the pool sees the connection, so nothing reaches the next tenant.
    pub fn mark_dirty(&mut self) {
        self.dirty = true;
    }

    /// Returns the connection to the pool, clean. A connection that cannot be reset is
    /// closed instead (it will never hand a lock or a setting to the next step).
    pub async fn release(mut self) {
        let Some(mut conn) = self.conn.take() else { return };
        // A transaction the step left open (an early return) is rolled back here rather
        // than lazily by the next user of the connection. A dirty session may hold one that
        // sqlx does not know about (a raw `BEGIN`): the ROLLBACK comes first either way.
        if self.dirty || conn.is_in_transaction() {
            // `BEGIN; ROLLBACK` when sqlx knows of no transaction: a bare ROLLBACK outside
            // one makes the server send a warning, which sqlx logs (a WARN line per tenant).
            // A transaction sqlx does not know of still ends (BEGIN only warns in one); one
            // in the aborted state refuses the BEGIN, and the connection is closed below.
            let reset = if conn.is_in_transaction() {
                "ROLLBACK; RESET ALL; SET SESSION AUTHORIZATION DEFAULT; RESET ROLE; UNLISTEN *; DISCARD TEMP; \
                 SELECT pg_advisory_unlock_all()"
            } else {
                "BEGIN; ROLLBACK; RESET ALL; SET SESSION AUTHORIZATION DEFAULT; RESET ROLE; UNLISTEN *; \
                 DISCARD TEMP; SELECT pg_advisory_unlock_all()"
            };
            if sqlx::raw_sql(reset).execute(&mut *conn).await.is_err() {
                let _ = conn.detach().close().await;
            }
        }
    }
}

impl Deref for PgSession {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        self.conn.as_deref().expect("a session is used only before release")
    }
}

impl DerefMut for PgSession {
    fn deref_mut(&mut self) -> &mut PgConnection {
        self.conn.as_deref_mut().expect("a session is used only before release")
    }
}

impl Drop for PgSession {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else { return };
        // Not returned to the pool: the pool would wait for the running statement and then
        // hand its session (locks, settings) to the next step. The socket stays open until
        // the backend is terminated, so the pid cannot have been reused by then.
        let held = conn.detach();
        let (pid, options) = (self.pid, self.options.clone());
        let failed = self.cleanup.failed.clone();
        let Ok(handle) = tokio::runtime::Handle::try_current() else { return };
        let task = async move {
            let stop = async {
                let mut other = options.connect().await?;
                let stopped: bool =
                    sqlx::query_scalar("SELECT pg_terminate_backend($1)").bind(pid).fetch_one(&mut other).await?;
                // Terminating is a signal; the backend is gone (its transaction rolled back,
                // its locks released) once it has left pg_stat_activity. The socket is still
                // held, so the pid cannot belong to another session meanwhile.
                while stopped && backend_alive(&mut other, pid).await? {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                let _ = other.close().await;
                Ok::<_, sqlx::Error>(stopped)
            };
            let outcome = tokio::time::timeout(TERMINATE_WITHIN, stop).await;
            drop(held);
            match outcome {
                Ok(Ok(_)) => tracing::debug!(pid, "stopped the backend of an abandoned step"),
                Ok(Err(e)) => {
                    failed.fetch_add(1, Ordering::SeqCst);
                    tracing::warn!(pid, error = %e, "could not stop the backend of an abandoned step")
                }
                Err(_) => {
                    failed.fetch_add(1, Ordering::SeqCst);
                    tracing::warn!(pid, "timed out stopping the backend of an abandoned step")
                }
            }
        };
        self.cleanup.tasks.spawn_on(task, &handle);
    }
}

/// Whether backend `pid` still exists.
async fn backend_alive(conn: &mut PgConnection, pid: i32) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1)").bind(pid).fetch_one(conn).await
}
