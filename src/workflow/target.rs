//! Target selection: which tenants of the catalog a workflow (or an operator's `--tenant` list) covers.

use std::collections::BTreeMap;

use super::Target;
use crate::catalog::{Catalog, Tenant};

/// The services a workflow touches: its target's list, or every service of the catalog.
pub fn target_services<'a>(target: &'a Target, catalog: &'a Catalog) -> Vec<&'a str> {
    if target.services.is_empty() {
        catalog.services.keys().map(String::as_str).collect()
    } else {
        target.services.iter().map(String::as_str).collect()
    }
}

/// Tenants matching every criterion of the target and placed in at least one of its
/// services, in id order. `only` (the operator's `--tenant` flags) narrows it further.
pub fn select<'a>(target: &Target, catalog: &'a Catalog, only: &[String]) -> Vec<&'a Tenant> {
    let services = target_services(target, catalog);
    catalog
        .tenants
        .iter()
        .filter(|t| target.status.contains(&t.status))
        .filter(|t| target.tenants.is_empty() || target.tenants.iter().any(|id| id == t.id.as_str()))
        .filter(|t| !target.exclude.iter().any(|id| id == t.id.as_str()))
        .filter(|t| labels_match(&target.labels, &t.labels))
        .filter(|t| services.iter().any(|s| t.placements.contains_key(*s)))
        .filter(|t| only.is_empty() || only.iter().any(|id| id == t.id.as_str()))
        .collect()
}

/// Every key of the selector is present with the same value.
pub fn labels_match(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The services a step runs on: its explicit list, or the target's services it fits.
pub fn step_services<'a>(
    step: &'a crate::steps::StepSpec,
    target_services: &[&'a str],
    catalog: &Catalog,
) -> Vec<&'a str> {
    match &step.services {
        Some(list) => list.iter().map(String::as_str).collect(),
        None => target_services
            .iter()
            .copied()
            .filter(|s| catalog.services.get(*s).is_some_and(|spec| step.kind.fits(spec).is_ok()))
            .collect(),
    }
}
