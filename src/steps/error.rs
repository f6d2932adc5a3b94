//! Step errors: what went wrong for which tenant and step, whether a retry can help, and how often.

use std::fmt;
use std::io;

/// Whether trying again can help. The runtime retries transient errors with backoff and
/// fails the tenant at once on permanent ones; it never decides from the message text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Retry {
    /// Another attempt can succeed: a lost connection, a deadlock, a lock wait, a failover.
    Transient,
    /// One more attempt can succeed, more cannot: a statement that ran into its time limit
    /// (`statement_timeout`, MariaDB's `max_statement_time`) may have been slowed down by a
    /// passing load, but one that timed out twice will time out again, and every further
    /// attempt only holds its locks for another full timeout.
    TransientOnce,
    /// Fails the same way every time: syntax, constraints, missing objects, permissions,
    /// wrong TLS or connection settings.
    Permanent,
}

impl Retry {
    /// The most attempts (the first included) this class allows, whatever the workflow's
    /// `retry.attempts`; None when only the workflow limits them.
    pub fn cap(self) -> Option<u32> {
        match self {
            Retry::Transient => None,
            Retry::TransientOnce => Some(2),
            Retry::Permanent => Some(1),
        }
    }
}

/// What a step error came from, kept typed (sqlx's error is neither `Clone` nor owned by
/// the callers of [`StepError::from_sqlx`]), so code and tests can tell causes apart
/// without reading messages.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Cause {
    /// An error the database returned: its SQLSTATE and, from MySQL/MariaDB, the error
    /// number (the SQLSTATE there is often the generic `HY000`).
    Database { sqlstate: Option<String>, number: Option<u16> },
    /// Talking to the server failed (including a TLS handshake the server's certificate
    /// failed: rustls reports that as `InvalidData`).
    Io(io::ErrorKind),
    /// TLS could not be set up (certificate files, or a server without TLS).
    Tls,
    /// The connection options are invalid.
    Configuration,
    /// The pool timed out waiting for a connection, or was closed.
    Pool,
    /// Anything else sqlx reports (protocol, decoding, rows, migrations).
    Other,
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cause::Database { sqlstate, number: Some(n) } => {
                write!(f, "database error {n} (SQLSTATE {})", sqlstate.as_deref().unwrap_or("unknown"))
            }
            Cause::Database { sqlstate, number: None } => {
                write!(f, "database error (SQLSTATE {})", sqlstate.as_deref().unwrap_or("unknown"))
            }
            Cause::Io(kind) => write!(f, "i/o error ({kind})"),
            Cause::Tls => f.write_str("tls error"),
            Cause::Configuration => f.write_str("invalid connection options"),
            Cause::Pool => f.write_str("connection pool error"),
            Cause::Other => f.write_str("database driver error"),
        }
    }
}

impl std::error::Error for Cause {}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepError {
    pub retry: Retry,
    pub message: String,
    /// Set by [`StepError::from_sqlx`]; None for errors tenantry raises itself.
    pub cause: Option<Cause>,
}

/// An object store's error keeps its kind: a network error, a 5xx or throttling may pass
/// (transient); a refused key or missing bucket will not (permanent).
impl From<crate::storage::StorageError> for StepError {
    fn from(e: crate::storage::StorageError) -> Self {
        let message = e.to_string();
        if e.transient { Self::transient(message) } else { Self::permanent(message) }
    }
}

impl StepError {
    /// The same error, its message prefixed with `context` (the tenant, the step, what it did).
    pub fn within(mut self, context: impl std::fmt::Display) -> Self {
        self.message = format!("{context}: {}", self.message);
        self
    }

    pub fn transient(message: impl Into<String>) -> Self {
        Self { retry: Retry::Transient, message: message.into(), cause: None }
    }

    /// A timeout of the whole step: retried once at most, like a statement timeout (a step
    /// that ran out of time twice will run out again; more attempts only hold its locks longer).
    pub fn timed_out(message: impl Into<String>) -> Self {
        Self { retry: Retry::TransientOnce, message: message.into(), cause: None }
    }

    pub fn permanent(message: impl Into<String>) -> Self {
        Self { retry: Retry::Permanent, message: message.into(), cause: None }
    }

    /// The lease was lost before an effect (see [`crate::runtime::fence::Fence`]): this
    /// worker must not act, and must not retry; the tenant's new owner does the work.
    pub fn fenced(message: impl Into<String>) -> Self {
        Self::permanent(message)
    }

    /// Whether a retry can help at all (either transient class).
    pub fn is_transient(&self) -> bool {
        self.retry != Retry::Permanent
    }

    /// Whether attempt number `attempt` (1 = the first) may start after this error ended
    /// the one before it, when the workflow allows `max_attempts` in all.
    pub fn allows_attempt(&self, attempt: u32, max_attempts: u32) -> bool {
        attempt <= max_attempts && self.retry.cap().is_none_or(|cap| attempt <= cap)
    }

    /// Classifies a database error. Transient: lost connections and failovers (connection
    /// resets, admin shutdown, a primary turned read-only), deadlocks, serialization
    /// failures, lock timeouts, too many connections. Transient once: statement timeouts.
    /// Permanent: everything else (syntax, constraint violations, missing objects,
    /// permissions), TLS and connection settings that cannot work, and errors the
    /// classification does not know (a permanent error retried wastes the backoff; a
    /// transient one failed costs an operator a `tenantry retry`, so unknown database
    /// errors are permanent while unknown I/O errors, nearly always the network, are not).
    pub fn from_sqlx(context: &str, e: &sqlx::Error) -> Self {
        let (retry, cause) = classify(e);
        let mut message = format!("{context}: {e}");
        if retry == Retry::TransientOnce {
            message.push_str(" (a statement timeout is retried once at most)");
        }
        Self { retry, message, cause: Some(cause) }
    }
}

fn classify(e: &sqlx::Error) -> (Retry, Cause) {
    match e {
        sqlx::Error::Io(io) => (io_retry(io.kind()), Cause::Io(io.kind())),
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => (Retry::Transient, Cause::Pool),
        sqlx::Error::WorkerCrashed => (Retry::Transient, Cause::Other),
        sqlx::Error::Tls(source) => (tls_retry(source.as_ref()), Cause::Tls),
        sqlx::Error::Configuration(_) => (Retry::Permanent, Cause::Configuration),
        sqlx::Error::Database(db) => {
            let sqlstate = db.code().map(|c| c.into_owned());
            match db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
                Some(my) => (mysql_retry(my.number()), Cause::Database { sqlstate, number: Some(my.number()) }),
                None => (sqlstate_retry(sqlstate.as_deref()), Cause::Database { sqlstate, number: None }),
            }
        }
        _ => (Retry::Permanent, Cause::Other),
    }
}

/// I/O errors are the network's, and transient, except the kinds that a setting causes and
/// that come back on every attempt: `InvalidData` is how rustls reports a failed TLS
/// handshake (unknown CA, a certificate for another host name, an alert from the server),
/// `NotFound`/`PermissionDenied` a certificate or key file that cannot be read,
/// `InvalidInput`/`Unsupported` an address or option that cannot work. (A Unix socket
/// path that is missing while its server restarts is `NotFound` too, and fails at once:
/// tenantry's hosts are TCP URLs.)
fn io_retry(kind: io::ErrorKind) -> Retry {
    use io::ErrorKind::*;
    match kind {
        InvalidData | NotFound | PermissionDenied | InvalidInput | Unsupported => Retry::Permanent,
        _ => Retry::Transient,
    }
}

/// sqlx (0.9, rustls) raises `Error::Tls` only while setting TLS up: unreadable PEM data,
/// a certificate rustls refuses, an invalid server name, or a server that does not offer
/// TLS although the options require it. All of these fail every time. The handshake's own
/// I/O (a connection reset mid-handshake) arrives as `Error::Io` instead; should a TLS
/// backend ever wrap such an I/O error in `Error::Tls`, its network kind decides.
fn tls_retry(source: &(dyn std::error::Error + 'static)) -> Retry {
    let mut next = Some(source);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            return io_retry(io.kind());
        }
        next = e.source();
    }
    Retry::Permanent
}

/// PostgreSQL (and any engine without an error number), by SQLSTATE.
fn sqlstate_retry(code: Option<&str>) -> Retry {
    let Some(code) = code else { return Retry::Permanent };
    match code {
        // query_canceled: statement_timeout (or pg_cancel_backend).
        "57014" => Retry::TransientOnce,
        // serialization_failure (also a hot standby's recovery conflict), deadlock_detected,
        // lock_not_available (lock_timeout, NOWAIT), too_many_connections,
        // admin_shutdown / crash_shutdown / cannot_connect_now (failover, restart),
        // idle_session_timeout, idle_in_transaction_session_timeout,
        // read_only_sql_transaction (a failover just made this server a replica: the retry
        // reconnects and reaches the new primary).
        "40001" | "40P01" | "55P03" | "53300" | "57P01" | "57P02" | "57P03" | "57P05" | "25P03" | "25006" => {
            Retry::Transient
        }
        // protocol_violation is a bug, not a connection problem.
        "08P01" => Retry::Permanent,
        // connection_exception class.
        c if c.starts_with("08") => Retry::Transient,
        _ => Retry::Permanent,
    }
}

/// MySQL/MariaDB, by error number: their SQLSTATE is a coarse category (a lock wait
/// timeout and a hundred permanent errors all say `HY000`).
fn mysql_retry(number: u16) -> Retry {
    match number {
        // ER_STATEMENT_TIMEOUT (MariaDB max_statement_time), ER_QUERY_TIMEOUT (MySQL
        // max_execution_time; unused by MariaDB), ER_QUERY_INTERRUPTED (KILL QUERY).
        1969 | 3024 | 1317 => Retry::TransientOnce,
        // ER_LOCK_WAIT_TIMEOUT, ER_LOCK_DEADLOCK, ER_XA_RBDEADLOCK, ER_LOCK_ABORTED,
        // ER_LOCK_NOWAIT (MySQL 8; MariaDB reports NOWAIT as 1205).
        1205 | 1213 | 1614 | 1689 | 3572 => Retry::Transient,
        // ER_CON_COUNT_ERROR (too many connections), ER_TOO_MANY_USER_CONNECTIONS,
        // ER_USER_LIMIT_REACHED (an account's max_user_connections; its hourly limits
        // report the same number and simply run out of attempts), ER_TOO_MANY_CONCURRENT_TRXS.
        1040 | 1203 | 1226 | 1637 => Retry::Transient,
        // ER_SERVER_SHUTDOWN, ER_FORCING_CLOSE, ER_ABORTING_CONNECTION, ER_NET_READ_ERROR,
        // ER_NET_READ_INTERRUPTED, ER_NET_ERROR_ON_WRITE, ER_NET_WRITE_INTERRUPTED,
        // ER_NEW_ABORTING_CONNECTION, ER_CONNECTION_KILLED (MariaDB), and the client-side
        // CR_SERVER_GONE_ERROR / CR_SERVER_LOST should a proxy relay them.
        1053 | 1080 | 1152 | 1158 | 1159 | 1160 | 1161 | 1184 | 1927 | 2006 | 2013 => Retry::Transient,
        // ER_OPTION_PREVENTS_STATEMENT: `--read-only` after a failover demoted the server,
        // the MySQL counterpart of PostgreSQL's 25006. The same number also reports
        // `--secure-file-priv` and the like, which then use up the attempts and fail.
        1290 => Retry::Transient,
        _ => Retry::Permanent,
    }
}

impl fmt::Display for StepError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for StepError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.cause.as_ref().map(|c| c as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    //! What can be built without a server: I/O, TLS, configuration and pool errors, and the
    //! code tables. Errors that only a server produces are classified from real servers in
    //! `tests/errors.rs`.
    use super::*;

    fn io(kind: io::ErrorKind) -> sqlx::Error {
        sqlx::Error::Io(io::Error::new(kind, "test"))
    }

    #[test]
    fn connection_resets_during_a_failover_are_transient() {
        for kind in [
            io::ErrorKind::ConnectionReset,
            io::ErrorKind::BrokenPipe,
            io::ErrorKind::UnexpectedEof,
            io::ErrorKind::ConnectionRefused,
            io::ErrorKind::ConnectionAborted,
            io::ErrorKind::TimedOut,
        ] {
            let e = StepError::from_sqlx("running", &io(kind));
            assert_eq!(e.retry, Retry::Transient, "{kind:?}");
            assert_eq!(e.cause, Some(Cause::Io(kind)));
        }
    }

    #[test]
    fn a_failed_tls_handshake_and_unreadable_certificate_files_are_permanent() {
        // rustls: unknown CA / wrong host name -> InvalidData; sslrootcert missing -> NotFound.
        for kind in [io::ErrorKind::InvalidData, io::ErrorKind::NotFound, io::ErrorKind::PermissionDenied] {
            assert_eq!(StepError::from_sqlx("connecting", &io(kind)).retry, Retry::Permanent, "{kind:?}");
        }
    }

    #[test]
    fn tls_setup_errors_are_permanent_unless_they_wrap_a_network_error() {
        let e = StepError::from_sqlx("connecting", &sqlx::Error::Tls("server does not support TLS".into()));
        assert_eq!((e.retry, e.cause), (Retry::Permanent, Some(Cause::Tls)));
        let reset = sqlx::Error::Tls(Box::new(io::Error::new(io::ErrorKind::ConnectionReset, "reset")));
        assert_eq!(StepError::from_sqlx("connecting", &reset).retry, Retry::Transient);
    }

    #[test]
    fn configuration_errors_are_permanent_and_pool_errors_transient() {
        let e = StepError::from_sqlx("connecting", &sqlx::Error::Configuration("bad url".into()));
        assert_eq!((e.retry, e.cause), (Retry::Permanent, Some(Cause::Configuration)));
        assert_eq!(StepError::from_sqlx("connecting", &sqlx::Error::PoolTimedOut).retry, Retry::Transient);
        assert_eq!(StepError::from_sqlx("connecting", &sqlx::Error::PoolClosed).retry, Retry::Transient);
        assert_eq!(StepError::from_sqlx("reading", &sqlx::Error::RowNotFound).retry, Retry::Permanent);
    }

    #[test]
    fn postgres_codes() {
        assert_eq!(sqlstate_retry(Some("57014")), Retry::TransientOnce);
        for code in ["25006", "57P01", "40001", "40P01", "55P03", "53300", "08006", "08001"] {
            assert_eq!(sqlstate_retry(Some(code)), Retry::Transient, "{code}");
        }
        for code in ["42601", "42P01", "23505", "42501", "08P01", "HY000"] {
            assert_eq!(sqlstate_retry(Some(code)), Retry::Permanent, "{code}");
        }
        assert_eq!(sqlstate_retry(None), Retry::Permanent);
    }

    #[test]
    fn mariadb_numbers_not_sqlstates() {
        for n in [1969, 3024, 1317] {
            assert_eq!(mysql_retry(n), Retry::TransientOnce, "{n}");
        }
        for n in [1205, 1213, 1040, 1226, 1927, 1053, 2006, 2013, 1290] {
            assert_eq!(mysql_retry(n), Retry::Transient, "{n}");
        }
        // Syntax, missing table, duplicate key, access denied.
        for n in [1064, 1146, 1062, 1045] {
            assert_eq!(mysql_retry(n), Retry::Permanent, "{n}");
        }
    }

    #[test]
    fn a_statement_timeout_allows_one_retry_within_the_workflows_attempts() {
        let once = StepError { retry: Retry::TransientOnce, message: String::new(), cause: None };
        assert!(once.allows_attempt(2, 5));
        assert!(!once.allows_attempt(3, 5));
        assert!(!once.allows_attempt(2, 1), "the workflow's limit still applies");
        let transient = StepError::transient("lost");
        assert!(transient.allows_attempt(5, 5));
        assert!(!transient.allows_attempt(6, 5));
        assert!(!StepError::permanent("syntax").allows_attempt(2, 5));
        assert!(once.is_transient() && transient.is_transient());
    }

    #[test]
    fn the_cause_is_the_source() {
        use std::error::Error;
        let e = StepError::from_sqlx("running", &io(io::ErrorKind::ConnectionReset));
        assert_eq!(e.source().map(|s| s.to_string()).as_deref(), Some("i/o error (connection reset)"));
        assert!(StepError::permanent("x").source().is_none());
    }
}
