//! Placements: where one tenant's data of one service lives (host, database, schema, and its own RDS instance if it has one), resolved from templates and overrides.

use serde::{Deserialize, Serialize};

use super::service::{Isolation, render};
use super::{Engine, ServiceSpec};

/// A tenant's override of a service's default placement (static catalog or the catalog
/// query's `placements` column). Every field is optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlacementSpec {
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub database: Option<String>,
    #[serde(default)]
    pub schema: Option<String>,
    /// The tenant's own RDS DB instance identifier (overrides the service's template).
    #[serde(default)]
    pub rds_instance: Option<String>,
}

/// Where a tenant's data of one service lives, with every template rendered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    pub service: String,
    pub engine: Engine,
    pub isolation: Isolation,
    pub host: String,
    pub database: String,
    pub schema: String,
    /// `row` isolation: the tenant column of the shared tables.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant_column: Option<String>,
    /// The RDS DB instance that holds the tenant's database (managed instances only):
    /// what `rds_snapshot` snapshots. Absent in snapshots of runs made before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rds_instance: Option<String>,
}

impl Placement {
    /// Applies a tenant's override (if any) to the service's templates.
    pub fn resolve(service_name: &str, service: &ServiceSpec, tenant: &str, spec: &PlacementSpec) -> Self {
        let database = spec.database.clone().unwrap_or_else(|| render(&service.database, tenant, service_name));
        let schema = spec.schema.clone().unwrap_or_else(|| render(service.schema_template(), tenant, service_name));
        Self {
            service: service_name.to_string(),
            engine: service.engine,
            isolation: service.isolation,
            host: spec.host.clone().unwrap_or_else(|| service.host.clone()),
            database,
            schema,
            tenant_column: service.tenant_column.clone(),
            rds_instance: spec
                .rds_instance
                .clone()
                .or_else(|| service.rds_instance.as_ref().map(|t| render(t, tenant, service_name))),
        }
    }

    /// The unit a step works on and locks: the tenant's database for `database`, its
    /// schema for `schema`, and the shared database+schema for `row` (many tenants share it).
    pub fn target_key(&self) -> String {
        format!("{}/{}/{}", self.host, self.database, self.schema)
    }

    /// Checks the rendered names against the engine's identifier limit.
    pub fn check_identifiers(&self) -> Result<(), String> {
        let max = self.engine.max_identifier_len();
        for (what, name) in [("database", &self.database), ("schema", &self.schema)] {
            if name.is_empty() {
                return Err(format!("{what} name is empty"));
            }
            if name.len() > max {
                return Err(format!(
                    "{what} name {name:?} is {} bytes; {} keeps at most {max}, so two tenants could share a name",
                    name.len(),
                    self.engine
                ));
            }
        }
        Ok(())
    }
}
