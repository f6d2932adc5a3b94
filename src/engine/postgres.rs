//! PostgreSQL: connections, identifier quoting and the catalog queries tenantry runs.

use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection};

use crate::secret::SecretUrl;

/// Opens one connection. The application name makes tenantry's sessions visible in
/// `pg_stat_activity`; statement logging is off because statements may carry tenant data.
pub async fn connect(url: &SecretUrl) -> Result<PgConnection, sqlx::Error> {
    options(url)?.connect().await
}

pub fn options(url: &SecretUrl) -> Result<PgConnectOptions, sqlx::Error> {
    Ok(PgConnectOptions::from_str(url.expose())?.application_name("tenantry").disable_statement_logging())
}

/// Closes a connection politely; errors on close are irrelevant to the caller.
pub async fn close(conn: PgConnection) {
    let _ = conn.close().await;
}

/// Quotes an identifier (`"tenant_acme"`), doubling embedded quotes. Every identifier that
/// tenantry puts into SQL goes through here; values go through bind parameters.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes a string literal (`'it''s'`), for the few statements that cannot take bind
/// parameters (a multi-statement `BEGIN`). Requires standard_conforming_strings (the
/// default since PostgreSQL 9.1), under which a backslash is an ordinary character.
pub fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("tenant_acme-corp"), "\"tenant_acme-corp\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
    }
}
