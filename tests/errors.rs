//! Error classification against real servers: the database errors steps meet on PostgreSQL and MariaDB, TLS and connection settings that cannot work, and a statement timeout that a real worker retries once only.

mod support;

use std::path::Path;
use std::time::Duration;

use sqlx::Connection;
use tenantry::steps::{Cause, Retry, StepError};

use support::{
    WorkerProcess, clear_redis, connect_db, exec, mysql_admin, mysql_db, mysql_exec, pg_admin, pg_url, redis_url,
    status, tenantry, unique, wait_for_state,
};

/// Runs `sql` on PostgreSQL and classifies the error it must end with.
async fn pg_fails(conn: &mut sqlx::PgConnection, sql: &str) -> StepError {
    match sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string())).execute(conn).await {
        Ok(_) => panic!("expected an error from: {sql}"),
        Err(e) => StepError::from_sqlx("test", &e),
    }
}

/// Runs `sql` on MariaDB and classifies the error it must end with.
async fn mysql_fails(conn: &mut sqlx::MySqlConnection, sql: &str) -> StepError {
    match sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string())).execute(conn).await {
        Ok(_) => panic!("expected an error from: {sql}"),
        Err(e) => StepError::from_sqlx("test", &e),
    }
}

fn pg_code(code: &str) -> Option<Cause> {
    Some(Cause::Database { sqlstate: Some(code.to_string()), number: None })
}

fn mysql_code(number: u16, sqlstate: &str) -> Option<Cause> {
    Some(Cause::Database { sqlstate: Some(sqlstate.to_string()), number: Some(number) })
}

/// The test server's URL for database `db` with `query` (e.g. TLS settings) appended.
fn pg_url_with(host: &str, db: &str, query: &str) -> String {
    let mut url = url::Url::parse(&pg_url()).unwrap();
    url.set_host(Some(host)).unwrap();
    url.set_path(db);
    url.set_query(Some(query));
    url.to_string()
}

/// A fresh PostgreSQL database with a two-row table `t`; dropped by [`drop_pg`].
async fn pg_database() -> String {
    let name = unique("terr");
    exec(&mut pg_admin().await, &format!("CREATE DATABASE {name}")).await;
    exec(
        &mut connect_db(&name).await,
        "CREATE TABLE t (id int PRIMARY KEY, v int); INSERT INTO t VALUES (1, 0), (2, 0)",
    )
    .await;
    name
}

async fn drop_pg(name: &str) {
    exec(&mut pg_admin().await, &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await;
}

/// A fresh MariaDB database with a two-row InnoDB table `t`; dropped by [`drop_mysql`].
async fn mysql_database() -> String {
    let name = unique("terr");
    mysql_exec(&mut mysql_admin().await, &format!("CREATE DATABASE {name}")).await;
    let mut db = mysql_db(&name).await;
    mysql_exec(&mut db, "CREATE TABLE t (id int PRIMARY KEY, v int) ENGINE=InnoDB").await;
    mysql_exec(&mut db, "INSERT INTO t VALUES (1, 0), (2, 0)").await;
    name
}

async fn drop_mysql(name: &str) {
    mysql_exec(&mut mysql_admin().await, &format!("DROP DATABASE IF EXISTS {name}")).await;
}

#[tokio::test]
async fn a_postgres_statement_timeout_is_transient_once() {
    let mut conn = pg_admin().await;
    let e = pg_fails(&mut conn, "SET statement_timeout = 10; SELECT pg_sleep(1)").await;
    assert_eq!((e.retry, e.cause.clone()), (Retry::TransientOnce, pg_code("57014")), "{e}");
    assert!(e.message.contains("statement timeout") && e.message.contains("retried once at most"), "{e}");
}

#[tokio::test]
async fn a_read_only_transaction_as_after_a_failover_is_transient() {
    let mut conn = pg_admin().await;
    let e = pg_fails(&mut conn, "BEGIN; SET TRANSACTION READ ONLY; CREATE TABLE never_created (id int)").await;
    let _ = sqlx::raw_sql("ROLLBACK").execute(&mut conn).await;
    assert_eq!((e.retry, e.cause.clone()), (Retry::Transient, pg_code("25006")), "{e}");
}

#[tokio::test]
async fn postgres_lock_timeouts_and_deadlocks_are_transient() {
    let name = pg_database().await;
    let mut holder = connect_db(&name).await;
    exec(&mut holder, "BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE").await;
    let mut waiter = connect_db(&name).await;
    let e = pg_fails(&mut waiter, "SET lock_timeout = 50; SELECT * FROM t").await;
    assert_eq!((e.retry, e.cause.clone()), (Retry::Transient, pg_code("55P03")), "{e}");
    exec(&mut holder, "ROLLBACK").await;

    // Two transactions each holding the row the other wants.
    let (mut a, mut b) = (connect_db(&name).await, connect_db(&name).await);
    exec(&mut a, "BEGIN; UPDATE t SET v = 1 WHERE id = 1").await;
    exec(&mut b, "BEGIN; UPDATE t SET v = 1 WHERE id = 2").await;
    let first = tokio::spawn(async move {
        let r = sqlx::raw_sql("UPDATE t SET v = 2 WHERE id = 2").execute(&mut a).await;
        r.map(|_| ()).map_err(|e| StepError::from_sqlx("a", &e))
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second = sqlx::raw_sql("UPDATE t SET v = 2 WHERE id = 1")
        .execute(&mut b)
        .await
        .map(|_| ())
        .map_err(|e| StepError::from_sqlx("b", &e));
    drop(b); // ends b's transaction, so `first` can finish if it was not the victim
    let first = first.await.unwrap();
    let victims: Vec<StepError> = [first, second].into_iter().filter_map(Result::err).collect();
    assert_eq!(victims.len(), 1, "{victims:?}");
    assert_eq!((victims[0].retry, victims[0].cause.clone()), (Retry::Transient, pg_code("40P01")), "{victims:?}");
    drop_pg(&name).await;
}

#[tokio::test]
async fn a_postgres_connection_terminated_by_an_administrator_is_transient() {
    let mut victim = pg_admin().await;
    let (pid,): (i32,) = sqlx::query_as("SELECT pg_backend_pid()").fetch_one(&mut victim).await.unwrap();
    exec(&mut pg_admin().await, &format!("SELECT pg_terminate_backend({pid})")).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let e = pg_fails(&mut victim, "SELECT 1").await;
    assert_eq!(e.retry, Retry::Transient, "{e}");
    // The server says 57P01 before closing; a client that reads the closed socket first sees EOF.
    assert!(matches!(&e.cause, Some(Cause::Io(_))) || e.cause == pg_code("57P01"), "{e}: {:?}", e.cause);
}

#[tokio::test]
async fn too_many_connections_is_transient_on_both_engines() {
    // PostgreSQL: a role limited to one connection (53300, like max_connections).
    let role = unique("terr_role");
    exec(&mut pg_admin().await, &format!("CREATE ROLE {role} LOGIN CONNECTION LIMIT 1")).await;
    let url = {
        let mut url = url::Url::parse(&pg_url()).unwrap();
        url.set_username(&role).unwrap();
        url.to_string()
    };
    let first = sqlx::PgConnection::connect(&url).await.unwrap();
    let e = StepError::from_sqlx("connecting", &sqlx::PgConnection::connect(&url).await.unwrap_err());
    assert_eq!((e.retry, e.cause.clone()), (Retry::Transient, pg_code("53300")), "{e}");
    first.close().await.unwrap();
    exec(&mut pg_admin().await, &format!("DROP ROLE {role}")).await;

    // MariaDB: an account limited to one connection answers 1226 with the generic 42000,
    // which the old SQLSTATE match called permanent.
    let user = unique("terr_user");
    let mut admin = mysql_admin().await;
    mysql_exec(&mut admin, &format!("CREATE USER '{user}'@'%' WITH MAX_USER_CONNECTIONS 1")).await;
    let url = {
        let mut url = url::Url::parse(&support::mysql_url()).unwrap();
        url.set_username(&user).unwrap();
        url.set_password(None).unwrap();
        // No default database: the new account has no rights on the admin URL's (`mysql`).
        url.set_path("");
        url.to_string()
    };
    let first = sqlx::MySqlConnection::connect(&url).await.unwrap();
    let e = StepError::from_sqlx("connecting", &sqlx::MySqlConnection::connect(&url).await.unwrap_err());
    assert_eq!((e.retry, e.cause.clone()), (Retry::Transient, mysql_code(1226, "42000")), "{e}");
    first.close().await.unwrap();
    mysql_exec(&mut admin, &format!("DROP USER '{user}'@'%'")).await;
}

#[tokio::test]
async fn permanent_errors_stay_permanent_on_both_engines() {
    let mut pg = pg_admin().await;
    for (sql, code) in [("SELEC 1", "42601"), ("SELECT * FROM no_such_table", "42P01"), ("SELECT 1/0", "22012")] {
        let e = pg_fails(&mut pg, sql).await;
        assert_eq!((e.retry, e.cause.clone()), (Retry::Permanent, pg_code(code)), "{sql}: {e}");
    }
    let name = mysql_database().await;
    let mut my = mysql_db(&name).await;
    for (sql, number, sqlstate) in [
        ("SELEC 1", 1064, "42000"),
        ("SELECT * FROM no_such_table", 1146, "42S02"),
        ("INSERT INTO t VALUES (1, 0)", 1062, "23000"),
    ] {
        let e = mysql_fails(&mut my, sql).await;
        assert_eq!((e.retry, e.cause.clone()), (Retry::Permanent, mysql_code(number, sqlstate)), "{sql}: {e}");
    }
    drop_mysql(&name).await;
}

#[tokio::test]
async fn a_refused_connection_is_transient() {
    // Nothing listens on port 1.
    let e = StepError::from_sqlx(
        "connecting",
        &sqlx::PgConnection::connect("postgres://postgres@127.0.0.1:1/postgres").await.unwrap_err(),
    );
    assert_eq!((e.retry, e.cause.clone()), (Retry::Transient, Some(Cause::Io(std::io::ErrorKind::ConnectionRefused))));
}

#[tokio::test]
async fn mariadb_lock_wait_timeout_is_transient_by_its_number_not_its_sqlstate() {
    let name = mysql_database().await;
    let mut holder = mysql_db(&name).await;
    mysql_exec(&mut holder, "BEGIN").await;
    mysql_exec(&mut holder, "SELECT * FROM t WHERE id = 1 FOR UPDATE").await;
    let mut waiter = mysql_db(&name).await;
    mysql_exec(&mut waiter, "SET innodb_lock_wait_timeout = 1").await;
    let e = mysql_fails(&mut waiter, "UPDATE t SET v = 1 WHERE id = 1").await;
    // SQLSTATE HY000 is the catch-all; only the number 1205 says "lock wait timeout".
    assert_eq!((e.retry, e.cause.clone()), (Retry::Transient, mysql_code(1205, "HY000")), "{e}");
    mysql_exec(&mut holder, "ROLLBACK").await;
    drop_mysql(&name).await;
}

#[tokio::test]
async fn a_mariadb_deadlock_is_transient() {
    let name = mysql_database().await;
    let (mut a, mut b) = (mysql_db(&name).await, mysql_db(&name).await);
    mysql_exec(&mut a, "BEGIN").await;
    mysql_exec(&mut a, "UPDATE t SET v = 1 WHERE id = 1").await;
    mysql_exec(&mut b, "BEGIN").await;
    mysql_exec(&mut b, "UPDATE t SET v = 1 WHERE id = 2").await;
    let first = tokio::spawn(async move {
        let r = sqlx::raw_sql("UPDATE t SET v = 2 WHERE id = 2").execute(&mut a).await;
        r.map(|_| ()).map_err(|e| StepError::from_sqlx("a", &e))
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second = sqlx::raw_sql("UPDATE t SET v = 2 WHERE id = 1")
        .execute(&mut b)
        .await
        .map(|_| ())
        .map_err(|e| StepError::from_sqlx("b", &e));
    drop(b);
    let first = first.await.unwrap();
    let victims: Vec<StepError> = [first, second].into_iter().filter_map(Result::err).collect();
    assert_eq!(victims.len(), 1, "{victims:?}");
    assert_eq!((victims[0].retry, victims[0].cause.clone()), (Retry::Transient, mysql_code(1213, "40001")));
    drop_mysql(&name).await;
}

#[tokio::test]
async fn a_mariadb_max_statement_time_is_transient_once() {
    let mut conn = mysql_admin().await;
    mysql_exec(&mut conn, "SET max_statement_time = 0.01").await;
    let e = mysql_fails(&mut conn, "SELECT SLEEP(1)").await;
    assert_eq!((e.retry, e.cause.clone()), (Retry::TransientOnce, mysql_code(1969, "70100")), "{e}");
}

#[tokio::test]
async fn a_killed_mariadb_connection_is_transient() {
    let mut victim = mysql_admin().await;
    let (id,): (u64,) = sqlx::query_as("SELECT CONNECTION_ID()").fetch_one(&mut victim).await.unwrap();
    mysql_exec(&mut mysql_admin().await, &format!("KILL CONNECTION {id}")).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let e = mysql_fails(&mut victim, "SELECT 1").await;
    assert_eq!(e.retry, Retry::Transient, "{e}: {:?}", e.cause);
}

#[tokio::test]
async fn tls_settings_that_cannot_work_are_permanent() {
    let connect = |url: String| async move {
        let e = sqlx::PgConnection::connect(&url).await.map(|_| ()).expect_err(&url);
        (url, StepError::from_sqlx("connecting", &e))
    };
    // A root certificate file that does not exist, whether or not the server offers TLS.
    let (url, e) = connect(pg_url_with("127.0.0.1", "postgres", "sslmode=verify-full&sslrootcert=/nonexistent")).await;
    assert_eq!(e.retry, Retry::Permanent, "{url}: {e}");
    assert!(matches!(e.cause, Some(Cause::Io(std::io::ErrorKind::NotFound) | Cause::Tls)), "{url}: {e}");

    // A root certificate file that holds no valid certificate.
    let garbage = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(garbage.path(), "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").unwrap();
    let query = format!("sslmode=verify-full&sslrootcert={}", garbage.path().display());
    let (url, e) = connect(pg_url_with("127.0.0.1", "postgres", &query)).await;
    assert_eq!((e.retry, e.cause.clone()), (Retry::Permanent, Some(Cause::Tls)), "{url}: {e}");

    let (ssl,): (String,) = sqlx::query_as("SHOW ssl").fetch_one(&mut pg_admin().await).await.unwrap();
    if ssl == "on" {
        // The server's certificate is not signed by any CA we trust: the handshake fails
        // (rustls reports it as InvalidData).
        let (url, e) = connect(pg_url_with("127.0.0.1", "postgres", "sslmode=verify-ca")).await;
        assert_eq!(
            (e.retry, e.cause.clone()),
            (Retry::Permanent, Some(Cause::Io(std::io::ErrorKind::InvalidData))),
            "{url}: {e}"
        );
        // Trusting the server's own certificate, but asking for a host name it does not
        // carry: permanent; the same settings with its name connect.
        let (cert,): (String,) = sqlx::query_as("SHOW ssl_cert_file").fetch_one(&mut pg_admin().await).await.unwrap();
        let cert = Path::new(&cert);
        if cert.is_absolute() && std::fs::read(cert).is_ok() {
            let query = format!("sslmode=verify-full&sslrootcert={}", cert.display());
            let (url, e) = connect(pg_url_with("127.0.0.1", "postgres", &query)).await;
            assert_eq!(
                (e.retry, e.cause.clone()),
                (Retry::Permanent, Some(Cause::Io(std::io::ErrorKind::InvalidData))),
                "{url}: {e}"
            );
            let names: (String,) = sqlx::query_as("SELECT 'ok'")
                .fetch_one(
                    &mut sqlx::PgConnection::connect(&pg_url_with("localhost", "postgres", &query)).await.unwrap(),
                )
                .await
                .unwrap();
            assert_eq!(names.0, "ok");
        }
    } else {
        // A server without TLS, when the settings require it.
        let (url, e) = connect(pg_url_with("127.0.0.1", "postgres", "sslmode=require")).await;
        assert_eq!((e.retry, e.cause.clone()), (Retry::Permanent, Some(Cause::Tls)), "{url}: {e}");
    }

    // MariaDB: the local server has no TLS ("server does not support TLS"); one that has
    // cannot read the CA file. Permanent either way.
    let mut url = url::Url::parse(&support::mysql_url()).unwrap();
    url.set_query(Some("ssl-mode=VERIFY_IDENTITY&ssl-ca=/nonexistent"));
    let e = sqlx::MySqlConnection::connect(url.as_str()).await.map(|_| ()).expect_err("mysql tls");
    let e = StepError::from_sqlx("connecting", &e);
    assert_eq!(e.retry, Retry::Permanent, "{e}");
    assert!(matches!(e.cause, Some(Cause::Tls | Cause::Io(std::io::ErrorKind::NotFound))), "{e}");
}

/// A database with two schema tenants, `slow` and `locked`, each with a table `held`, and
/// a config with its own Redis prefix.
struct Setup {
    name: String,
    dir: tempfile::TempDir,
}

impl Setup {
    async fn new() -> Setup {
        let name = unique("terrw");
        exec(&mut pg_admin().await, &format!("CREATE DATABASE {name}")).await;
        exec(
            &mut connect_db(&name).await,
            "CREATE SCHEMA tenant_slow; CREATE TABLE tenant_slow.held (id int); \
             CREATE SCHEMA tenant_locked; CREATE TABLE tenant_locked.held (id int);",
        )
        .await;
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("workflows")).unwrap();
        let config = format!(
            r#"
[redis]
url = "{redis}"
prefix = "{name}"

[runtime]
lease = "3s"
sweep_interval = "200ms"

[hosts.main]
engine = "postgres"
url = "{pg}"

[services.app]
engine = "postgres"
isolation = "schema"
host = "main"
database = "{name}"
schema = "tenant_{{tenant}}"

[[catalog.tenants]]
id = "slow"
services = ["app"]

[[catalog.tenants]]
id = "locked"
services = ["app"]
"#,
            redis = redis_url(),
            pg = pg_url()
        );
        std::fs::write(dir.path().join("tenantry.toml"), config).unwrap();
        Setup { name, dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    async fn drop(self) {
        clear_redis(&self.name).await;
        exec(&mut pg_admin().await, &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_statement_timeout_is_retried_once_while_a_lock_timeout_gets_every_attempt() {
    let setup = Setup::new().await;
    // `slow` takes its lock and then sleeps past statement_timeout (57014); `locked` waits
    // for a lock this test holds until lock_timeout (55P03).
    std::fs::write(
        setup.path().join("workflows/wait.toml"),
        r#"
[retry]
attempts = 5
backoff = "50ms"
max_backoff = "100ms"

[[steps]]
name = "wait"
kind = "sql"
sql = "SET LOCAL statement_timeout = 300; SET LOCAL lock_timeout = 100; LOCK TABLE held; SELECT pg_sleep(CASE current_setting('tenantry.tenant') WHEN 'slow' THEN 2 ELSE 0 END)"
"#,
    )
    .unwrap();
    let mut holder = connect_db(&setup.name).await;
    exec(&mut holder, "BEGIN; LOCK TABLE tenant_locked.held").await;
    let worker = WorkerProcess::spawn(setup.path());
    let out = tenantry(setup.path(), &["run", "wait"], &[]);
    assert_eq!(out.code(), 0, "{}", out.all());
    let run = out.stdout().trim().to_string();
    wait_for_state(setup.path(), &run, &["succeeded", "failed", "cancelled"], Duration::from_secs(60));
    let s = status(setup.path(), &run);
    let slow = &s["tenants"]["slow"];
    assert_eq!(slow["state"], "failed", "{s:#}");
    assert_eq!(slow["attempt"], 2, "a statement timeout is retried once, not up to `attempts`: {s:#}");
    let error = slow["last_error"].as_str().unwrap();
    assert!(error.contains("attempt 2 of 5") && error.contains("statement timeout"), "{error}");
    let locked = &s["tenants"]["locked"];
    assert_eq!(locked["state"], "failed", "{s:#}");
    assert_eq!(locked["attempt"], 5, "a lock timeout uses every attempt: {s:#}");
    let error = locked["last_error"].as_str().unwrap();
    assert!(error.contains("attempt 5 of 5") && error.contains("lock timeout"), "{error}");
    exec(&mut holder, "ROLLBACK").await;
    drop(worker); // before clearing its Redis prefix, which it would otherwise write to again
    setup.drop().await;
}
