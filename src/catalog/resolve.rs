//! Turning tenant specs (static list or query rows) into checked tenants with rendered placements.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use super::{HostSpec, Placement, PlacementSpec, ServiceSpec, Tenant, TenantId, TenantSpec};

/// Where a tenant spec came from, so a problem can be reported where the operator fixes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TenantOrigin {
    /// `[[catalog.tenants]]` entry number (0-based) of the config file.
    Static(usize),
    /// Row number (1-based) of the catalog query's result.
    QueryRow(usize),
    /// Several tenants together (e.g. two placements rendering to one database).
    Fleet,
}

/// A tenant that cannot be used, and why. The field names the key of the static entry the
/// problem is about (`id`, `services`, `placements`, ...), for positioning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantProblem {
    pub origin: TenantOrigin,
    pub field: &'static str,
    pub message: String,
}

impl fmt::Display for TenantProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.origin {
            TenantOrigin::Static(i) => write!(f, "catalog.tenants[{i}]: {}", self.message),
            TenantOrigin::QueryRow(n) => write!(f, "catalog query row {n}: {}", self.message),
            TenantOrigin::Fleet => write!(f, "catalog: {}", self.message),
        }
    }
}

/// Checks every spec and renders its placements. All problems are returned, not just the
/// first; tenants with a problem are left out of the result. The result is sorted by id.
///
/// Placements in `broken` services (whose own definition has problems, reported by the
/// config check) are left out silently, so one bad template is one message, not one per
/// tenant.
pub fn resolve_tenants(
    specs: impl IntoIterator<Item = (TenantOrigin, TenantSpec)>,
    services: &BTreeMap<String, ServiceSpec>,
    hosts: &BTreeMap<String, HostSpec>,
    broken: &BTreeSet<String>,
) -> (Vec<Tenant>, Vec<TenantProblem>) {
    let mut tenants = Vec::new();
    let mut problems = Vec::new();
    let mut seen: BTreeMap<String, TenantOrigin> = BTreeMap::new();
    for (origin, spec) in specs {
        let before = problems.len();
        let mut problem = |field: &'static str, message: String| {
            problems.push(TenantProblem { origin: origin.clone(), field, message });
        };
        let id = match TenantId::parse(&spec.id) {
            Ok(id) => id,
            Err(e) => {
                problem("id", e);
                continue;
            }
        };
        if let Some(first) = seen.get(id.as_str()) {
            let first = match first {
                TenantOrigin::Static(i) => format!("catalog.tenants[{i}]"),
                TenantOrigin::QueryRow(n) => format!("row {n}"),
                TenantOrigin::Fleet => "the catalog".to_string(),
            };
            problem("id", format!("duplicate tenant id {:?}: already listed at {first}", id.as_str()));
            continue;
        }
        seen.insert(id.to_string(), origin.clone());

        let mut wanted: BTreeMap<&str, PlacementSpec> = BTreeMap::new();
        for service in &spec.services {
            wanted.insert(service.as_str(), PlacementSpec::default());
        }
        for (service, placement) in &spec.placements {
            wanted.insert(service.as_str(), placement.clone());
        }
        let mut placements = BTreeMap::new();
        for (service_name, placement_spec) in wanted {
            let field = if spec.placements.contains_key(service_name) { "placements" } else { "services" };
            let Some(service) = services.get(service_name) else {
                let known: Vec<&str> = services.keys().map(String::as_str).collect();
                problem(
                    field,
                    format!("tenant {id}: unknown service {service_name:?} (services: {})", known.join(", ")),
                );
                continue;
            };
            if broken.contains(service_name) {
                continue;
            }
            let placement = Placement::resolve(service_name, service, id.as_str(), &placement_spec);
            if !hosts.contains_key(&placement.host) {
                problem(field, format!("tenant {id}, service {service_name}: unknown host {:?}", placement.host));
                continue;
            }
            if let Err(e) = placement.check_identifiers() {
                problem(field, format!("tenant {id}, service {service_name}: {e}"));
                continue;
            }
            placements.insert(service_name.to_string(), placement);
        }
        let labels = spec.labels.into_iter().map(|(k, v)| (k, v.0)).collect();
        if problems.len() == before {
            tenants.push(Tenant {
                name: spec.name.filter(|n| !n.is_empty()).unwrap_or_else(|| id.to_string()),
                id,
                status: spec.status,
                labels,
                placements,
            });
        }
    }
    tenants.sort_by(|a, b| a.id.cmp(&b.id));
    check_shared_names(&tenants, &mut problems);
    (tenants, problems)
}

/// Two tenants whose `database` or `schema` placements render to the same target would
/// overwrite each other's data; this catches overrides and templates without `{tenant}`.
fn check_shared_names(tenants: &[Tenant], problems: &mut Vec<TenantProblem>) {
    let mut owners: BTreeMap<String, &TenantId> = BTreeMap::new();
    let mut reported = BTreeSet::new();
    for tenant in tenants {
        for placement in tenant.placements.values() {
            if placement.isolation == super::Isolation::Row {
                continue;
            }
            let key = placement.target_key();
            if let Some(other) = owners.insert(key.clone(), &tenant.id)
                && other != &tenant.id
                && reported.insert(key.clone())
            {
                problems.push(TenantProblem {
                    origin: TenantOrigin::Fleet,
                    field: "placements",
                    message: format!(
                        "tenants {other} and {} share the {} target {key}; each tenant needs its own {}",
                        tenant.id, placement.isolation, placement.isolation
                    ),
                });
            }
        }
    }
}
