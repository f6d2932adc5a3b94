//! The fleet catalog: services, hosts and tenants with their placements (SPEC §2).
//!
//! The catalog is resolved once per command (and snapshotted per run): tenants come from
//! the static list in the config or from a SQL query against a system database, each is
//! checked (id, status, services, rendered identifiers), and every placement is rendered
//! from its service's templates.

mod placement;
mod query;
mod resolve;
mod service;
mod tenant;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use placement::{Placement, PlacementSpec};
pub use query::load_query_tenants;
pub use resolve::{TenantOrigin, TenantProblem, resolve_tenants};
pub use service::{Engine, HostSpec, Isolation, ServiceSpec, TEMPLATE_PLACEHOLDERS, check_template, render};
pub use tenant::{LabelValue, Tenant, TenantId, TenantSpec, TenantStatus, check_name};

/// `[catalog]`: where the tenant list comes from.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogSpec {
    #[serde(default)]
    pub source: CatalogSource,
    #[serde(default)]
    pub sql: Option<CatalogQuery>,
    #[serde(default)]
    pub tenants: Vec<TenantSpec>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CatalogSource {
    #[default]
    Static,
    Sql,
}

/// `[catalog.sql]`: the query that lists tenants (see `deploy/reference.toml` for columns).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogQuery {
    pub host: String,
    pub database: String,
    pub query: String,
}

/// The resolved fleet.
#[derive(Debug, Clone, Serialize)]
pub struct Catalog {
    pub hosts: BTreeMap<String, HostSpec>,
    pub services: BTreeMap<String, ServiceSpec>,
    /// Sorted by id.
    pub tenants: Vec<Tenant>,
}

impl Catalog {
    pub fn tenant(&self, id: &str) -> Option<&Tenant> {
        self.tenants.binary_search_by(|t| t.id.as_str().cmp(id)).ok().map(|i| &self.tenants[i])
    }

    /// How many tenants have a placement in each service.
    pub fn placements_per_service(&self) -> BTreeMap<&str, usize> {
        let mut counts: BTreeMap<&str, usize> = self.services.keys().map(|s| (s.as_str(), 0)).collect();
        for tenant in &self.tenants {
            for service in tenant.placements.keys() {
                *counts.entry(service.as_str()).or_default() += 1;
            }
        }
        counts
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The catalog database could not be reached: exit status 3 at the command line.
    #[error("cannot reach the catalog database {database} on host {host} ({url}): {source}")]
    Unreachable {
        host: String,
        database: String,
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("the catalog query failed on host {host}, database {database}: {message}")]
    Query { host: String, database: String, message: String },
    #[error("the catalog has {} problem(s):\n{}", .0.len(), .0.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<TenantProblem>),
    #[error("catalog source is \"sql\" but [catalog.sql] is missing")]
    MissingQuery,
    #[error("catalog host {0:?} is not defined in [hosts]")]
    UnknownHost(String),
}

impl CatalogError {
    /// Whether the failure is a service being unreachable (exit 3) rather than bad input.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Self::Unreachable { .. })
    }
}
