//! `tenantry drift SERVICE`: every tenant's schema fingerprint of a service, compared with a reference tenant (named, or the majority), as a per-tenant diff. Changes nothing.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::{Context, Failure};
use crate::catalog::{Engine, Tenant, TenantStatus};
use crate::steps::drift::{compare, majority, read_fleet};

/// Tenant ids shown per group of identical diffs before "and N more" (`--json` lists all).
const IDS_SHOWN: usize = 10;

#[derive(Debug, Serialize)]
struct Report {
    service: String,
    /// The tenant every other is compared with; `None` when no tenant could be read.
    reference: Option<String>,
    /// `named` (`--reference`) or `majority`.
    reference_source: Option<&'static str>,
    reference_hash: Option<String>,
    /// Tenants that share the reference's fingerprint.
    reference_count: usize,
    /// Distinct fingerprints among the tenants read.
    distinct: usize,
    tenants: BTreeMap<String, TenantReport>,
}

#[derive(Debug, Serialize)]
struct TenantReport {
    hash: Option<String>,
    facts: Option<usize>,
    /// `None` when the tenant's schema could not be read.
    differs: Option<bool>,
    /// `+ ...` in the tenant only, `- ...` in the reference only, `~ key: reference -> tenant`.
    diff: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

pub async fn run(
    ctx: &Context,
    service: &str,
    reference: Option<&str>,
    only: &[String],
    json: bool,
) -> Result<(), Failure> {
    let catalog = ctx.checked_catalog().await?;
    let Some(spec) = catalog.services.get(service) else {
        let known: Vec<&str> = catalog.services.keys().map(String::as_str).collect();
        return Err(Failure::Failed(format!(
            "unknown service {service:?}; the configured services are: {}",
            if known.is_empty() { "(none)".to_string() } else { known.join(", ") }
        )));
    };
    if spec.engine != Engine::Postgres {
        return Err(Failure::Failed(format!(
            "drift reads PostgreSQL's catalog; service {service} runs on {}, which is not supported yet",
            spec.engine
        )));
    }
    let placed = |id: &str, flag: &str| -> Result<&Tenant, Failure> {
        let tenant = catalog
            .tenant(id)
            .ok_or_else(|| Failure::Failed(format!("{flag} {id:?}: no such tenant in the catalog")))?;
        if !tenant.placements.contains_key(service) {
            return Err(Failure::Failed(format!("{flag} {id:?}: the tenant does not use service {service}")));
        }
        Ok(tenant)
    };
    let mut tenants: Vec<&Tenant> = Vec::new();
    for id in only {
        tenants.push(placed(id, "--tenant")?);
    }
    if only.is_empty() {
        // Archived tenants' data may be gone; name them with --tenant to include them.
        tenants = catalog
            .tenants
            .iter()
            .filter(|t| t.placements.contains_key(service) && t.status != TenantStatus::Archived)
            .collect();
    }
    if let Some(r) = reference {
        let tenant = placed(r, "--reference")?;
        if !tenants.iter().any(|t| t.id == tenant.id) {
            tenants.push(tenant);
        }
    }
    tenants.sort_by(|a, b| a.id.cmp(&b.id));
    tenants.dedup_by(|a, b| a.id == b.id);

    let mut groups: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for t in &tenants {
        let p = &t.placements[service];
        groups.entry((p.host.clone(), p.database.clone())).or_default().insert(p.schema.clone());
    }
    let per_host = ctx.config.config.limits.plan_connections as usize;
    let read = read_fleet(&catalog.hosts, groups, per_host).await;
    let results: Vec<(&str, _)> = tenants
        .iter()
        .map(|t| {
            let p = &t.placements[service];
            (t.id.as_str(), read[&(p.host.clone(), p.database.clone(), p.schema.clone())].clone())
        })
        .collect();

    let fingerprints: BTreeMap<&str, &crate::steps::drift::Fingerprint> =
        results.iter().filter_map(|(id, r)| r.as_ref().ok().map(|fp| (*id, fp.as_ref()))).collect();
    let unreached: Vec<String> = results
        .iter()
        .filter_map(|(id, r)| r.as_ref().err().filter(|e| e.unreachable).map(|e| format!("tenant {id}: {}", e.message)))
        .collect();

    // The reference: the named tenant, or the majority fingerprint.
    let chosen = match reference {
        Some(r) => match results.iter().find(|(id, _)| *id == r).map(|(_, res)| res) {
            Some(Ok(fp)) => Some((r, fp.hash().to_string(), "named")),
            Some(Err(e)) => {
                let message = format!("cannot read the schema of reference tenant {r}: {}", e.message);
                return Err(if e.unreachable { Failure::Unreachable(message) } else { Failure::Failed(message) });
            }
            None => unreachable!("the reference tenant is always read"),
        },
        None => majority(fingerprints.iter().map(|(id, fp)| (*id, fp.hash())))
            .map(|(id, hash, _)| (id, hash.to_string(), "majority")),
    };
    let distinct: BTreeSet<&str> = fingerprints.values().map(|fp| fp.hash()).collect();
    let mut report = Report {
        service: service.to_string(),
        reference: chosen.as_ref().map(|(id, _, _)| id.to_string()),
        reference_source: chosen.as_ref().map(|(_, _, source)| *source),
        reference_hash: chosen.as_ref().map(|(_, hash, _)| hash.clone()),
        reference_count: chosen
            .as_ref()
            .map_or(0, |(_, hash, _)| fingerprints.values().filter(|fp| fp.hash() == hash).count()),
        distinct: distinct.len(),
        tenants: BTreeMap::new(),
    };
    let reference_fp = chosen.as_ref().and_then(|(id, _, _)| fingerprints.get(id).copied());
    for (id, result) in &results {
        let entry = match (result, reference_fp) {
            (Ok(fp), Some(reference_fp)) => {
                let diff = compare(reference_fp, fp);
                TenantReport {
                    hash: Some(fp.hash().to_string()),
                    facts: Some(fp.len()),
                    differs: Some(!diff.is_empty()),
                    diff,
                    error: None,
                }
            }
            (Ok(_), None) => unreachable!("a tenant was read, so there is a reference"),
            (Err(e), _) => TenantReport {
                hash: None,
                facts: None,
                differs: None,
                diff: Vec::new(),
                error: Some(e.message.clone()),
            },
        };
        report.tenants.insert(id.to_string(), entry);
    }

    if json {
        println!("{}", serde_json::to_string_pretty(&report).expect("drift report serialises"));
    } else {
        print_report(&report);
    }
    let differing = report.tenants.values().filter(|t| t.differs == Some(true)).count();
    let unreadable = report.tenants.values().filter(|t| t.error.is_some()).count();
    if !unreached.is_empty() {
        return Err(Failure::Unreachable(format!(
            "{} tenant(s) could not be reached, first: {}",
            unreached.len(),
            unreached[0]
        )));
    }
    if differing > 0 || unreadable > 0 { Err(Failure::Reported) } else { Ok(()) }
}

fn print_report(report: &Report) {
    let total = report.tenants.len();
    let reference = match (&report.reference, report.reference_source) {
        (Some(id), Some("named")) => format!("reference = {id} (named)"),
        (Some(id), _) => format!("reference = {id} (majority of {})", report.reference_count),
        (None, _) => "no reference (no tenant could be read)".to_string(),
    };
    println!(
        "drift: service {} — {total} tenant(s), {} distinct schema(s); {reference}",
        report.service, report.distinct
    );
    // Tenants with the same diff are listed together, in order of their first tenant.
    let mut by_diff: Vec<(&Vec<String>, Vec<&str>)> = Vec::new();
    for (id, t) in report.tenants.iter().filter(|(_, t)| t.differs == Some(true)) {
        match by_diff.iter_mut().find(|(diff, _)| *diff == &t.diff) {
            Some((_, ids)) => ids.push(id),
            None => by_diff.push((&t.diff, vec![id])),
        }
    }
    for (diff, ids) in &by_diff {
        println!("\n{}: {} difference(s)", list_ids(ids), diff.len());
        for line in *diff {
            println!("  {line}");
        }
    }
    let errors: Vec<(&String, &String)> =
        report.tenants.iter().filter_map(|(id, t)| t.error.as_ref().map(|e| (id, e))).collect();
    if !errors.is_empty() {
        println!();
        for (id, error) in &errors {
            println!("{id}: cannot read: {error}");
        }
    }
    let differing: usize = by_diff.iter().map(|(_, ids)| ids.len()).sum();
    match &report.reference {
        Some(id) if differing == 0 => println!("\nno tenant differs from the reference {id}"),
        Some(id) => println!("\n{differing} of {total} tenant(s) differ from the reference {id}"),
        None => {}
    }
    if !errors.is_empty() {
        println!("{} tenant(s) could not be read", errors.len());
    }
}

/// `t01, t05`, or the first few and how many more.
fn list_ids(ids: &[&str]) -> String {
    if ids.len() <= IDS_SHOWN {
        ids.join(", ")
    } else {
        format!("{} and {} more ({} tenants)", ids[..IDS_SHOWN].join(", "), ids.len() - IDS_SHOWN, ids.len())
    }
}
