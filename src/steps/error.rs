//! Step errors: what went wrong for which tenant and step, and whether a retry can help.

use std::fmt;

/// Whether trying again can help. The runtime retries transient errors with backoff and
/// fails the tenant at once on permanent ones; it never decides from the message text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Retry {
    Transient,
    Permanent,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepError {
    pub retry: Retry,
    pub message: String,
}

impl StepError {
    pub fn transient(message: impl Into<String>) -> Self {
        Self { retry: Retry::Transient, message: message.into() }
    }

    pub fn permanent(message: impl Into<String>) -> Self {
        Self { retry: Retry::Permanent, message: message.into() }
    }

    /// The lease was lost before an effect (see [`crate::runtime::fence::Fence`]): this
    /// worker must not act, and must not retry; the tenant's new owner does the work.
    pub fn fenced(message: impl Into<String>) -> Self {
        Self::permanent(message)
    }

    pub fn is_transient(&self) -> bool {
        self.retry == Retry::Transient
    }

    /// Classifies a database error: lost connections, lock and statement timeouts,
    /// serialization failures, deadlocks, too many connections and server shutdowns are
    /// transient; everything else (syntax, constraint violations, missing objects,
    /// permissions) fails the same way every time and is permanent.
    pub fn from_sqlx(context: &str, e: &sqlx::Error) -> Self {
        let message = format!("{context}: {e}");
        match e {
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Tls(_) => Self::transient(message),
            sqlx::Error::Database(db) => match db.code().as_deref() {
                // 40001 serialization_failure, 40P01 deadlock_detected, 55P03 lock_not_available,
                // 57014 query_canceled (statement_timeout), 53300 too_many_connections,
                // 57P01/57P02/57P03 admin shutdown / crash shutdown / cannot connect now,
                // 08xxx connection exceptions. MySQL: 1205 lock wait timeout, 1213 deadlock,
                // 1040 too many connections.
                Some(code)
                    if matches!(
                        code,
                        "40001"
                            | "40P01"
                            | "55P03"
                            | "57014"
                            | "53300"
                            | "57P01"
                            | "57P02"
                            | "57P03"
                            | "1205"
                            | "1213"
                            | "1040"
                    ) || code.starts_with("08") =>
                {
                    Self::transient(message)
                }
                _ => Self::permanent(message),
            },
            _ => Self::permanent(message),
        }
    }
}

impl fmt::Display for StepError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for StepError {}
