//! Services and hosts: engines, isolation models, name templates and the servers that hold placements.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::secret::SecretUrl;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Engine {
    Postgres,
    Mariadb,
}

impl Engine {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Postgres => "postgres",
            Self::Mariadb => "mariadb",
        }
    }

    /// URL schemes a host of this engine may use.
    pub fn accepts_scheme(self, scheme: &str) -> bool {
        match self {
            Self::Postgres => matches!(scheme, "postgres" | "postgresql"),
            Self::Mariadb => matches!(scheme, "mysql" | "mariadb"),
        }
    }

    /// The longest identifier the engine keeps; longer ones are truncated (PostgreSQL) or
    /// rejected (MariaDB), either of which would point two tenants at one name.
    pub fn max_identifier_len(self) -> usize {
        match self {
            Self::Postgres => 63,
            Self::Mariadb => 64,
        }
    }
}

impl fmt::Display for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a service keeps tenants apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Isolation {
    /// One database per tenant.
    Database,
    /// One schema per tenant in a shared database.
    Schema,
    /// Shared tables with a tenant column.
    Row,
}

impl Isolation {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Database => "database",
            Self::Schema => "schema",
            Self::Row => "row",
        }
    }
}

impl fmt::Display for Isolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[hosts.NAME]`: a database server.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HostSpec {
    pub engine: Engine,
    /// Administrative connection; tenant databases are reached by swapping the database name.
    pub url: SecretUrl,
    /// Tenants in flight on this server; `limits.per_host` when absent.
    #[serde(default)]
    pub max_concurrency: Option<u32>,
    /// The host (`[hosts.NAME]`) that `verify_restore` restores this host's tenants' backups
    /// on, in scratch databases; this host itself when absent. A step's own `scratch_host`
    /// option overrides it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scratch_host: Option<String>,
    /// A query returning this server's replication lag in seconds (one number), for hosts
    /// whose replicas `pg_stat_replication` does not show: a heartbeat table, a managed
    /// service's function. Read by workflows' `[throttle] replica_lag`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_query: Option<String>,
}

/// `[services.NAME]`: a logical database that tenants have.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    pub engine: Engine,
    pub isolation: Isolation,
    /// Default host of this service's placements.
    pub host: String,
    /// Database name template: per tenant for `database` isolation, the shared one otherwise.
    pub database: String,
    /// Schema template: per tenant for `schema`, the shared tables' schema for `row`,
    /// the schema inside each tenant database for `database` (default `public`).
    #[serde(default)]
    pub schema: Option<String>,
    /// `row` isolation: the column holding the tenant id.
    #[serde(default)]
    pub tenant_column: Option<String>,
    pub migrations: Option<PathBuf>,
    #[serde(default)]
    pub seeds: Option<PathBuf>,
    /// `database` isolation on managed instances: the template of each tenant's RDS DB
    /// instance identifier (`"tenant-{tenant}"`), for `rds_snapshot` and `verify_snapshot`.
    /// A tenant's placement may name its instance instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rds_instance: Option<String>,
}

impl ServiceSpec {
    /// Whether the definition can place tenants at all: its default host exists and its
    /// templates are well-formed. The config check reports why not.
    pub fn is_sound(&self, hosts: &std::collections::BTreeMap<String, HostSpec>) -> bool {
        let per_tenant = match self.isolation {
            Isolation::Database => self.database.contains("{tenant}"),
            Isolation::Schema => self.schema_template().contains("{tenant}"),
            Isolation::Row => true,
        };
        hosts.contains_key(&self.host)
            && check_template(&self.database).is_ok()
            && self.schema.as_deref().is_none_or(|s| check_template(s).is_ok())
            && per_tenant
    }

    /// The schema template in effect.
    pub fn schema_template(&self) -> &str {
        self.schema.as_deref().unwrap_or(match self.isolation {
            Isolation::Schema => "tenant_{tenant}",
            Isolation::Database | Isolation::Row => "public",
        })
    }
}

/// Placeholders a name template may use.
pub const TEMPLATE_PLACEHOLDERS: [&str; 2] = ["tenant", "service"];

/// Renders `{tenant}` and `{service}`. Unknown placeholders are reported by
/// [`check_template`] at load time, so here they are impossible.
pub fn render(template: &str, tenant: &str, service: &str) -> String {
    template.replace("{tenant}", tenant).replace("{service}", service)
}

/// Checks a template's placeholders: braces must be balanced and name a known placeholder.
pub fn check_template(template: &str) -> Result<Vec<&str>, String> {
    let mut used = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find(['{', '}']) {
        if rest[open..].starts_with('}') {
            return Err(format!("unmatched '}}' in template {template:?}"));
        }
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else {
            return Err(format!("unmatched '{{' in template {template:?}"));
        };
        let name = &after[..close];
        if !TEMPLATE_PLACEHOLDERS.contains(&name) {
            return Err(format!(
                "unknown placeholder {{{name}}} in template {template:?}; use {{tenant}} or {{service}}"
            ));
        }
        used.push(name);
        rest = &after[close + 1..];
    }
    if template.is_empty() {
        return Err("template is empty".to_string());
    }
    Ok(used)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_render_and_check() {
        assert_eq!(render("tenant_{tenant}_{service}", "acme", "core"), "tenant_acme_core");
        assert_eq!(check_template("tenant_{tenant}").unwrap(), vec!["tenant"]);
        assert!(check_template("t_{tenat}").unwrap_err().contains("unknown placeholder {tenat}"));
        assert!(check_template("t_{tenant").unwrap_err().contains("unmatched '{'"));
        assert!(check_template("t_}").unwrap_err().contains("unmatched '}'"));
        assert!(check_template("").is_err());
    }
}
