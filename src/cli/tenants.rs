//! `tenantry tenants`: the catalog as resolved, secrets redacted.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{Context, Failure};
use crate::catalog::{Catalog, Tenant};

#[derive(Serialize)]
struct Listing<'a> {
    #[serde(flatten)]
    catalog: &'a Catalog,
    placements_per_service: BTreeMap<&'a str, usize>,
}

pub async fn run(ctx: &Context, json: bool) -> Result<(), Failure> {
    let catalog = ctx.checked_catalog().await?;
    if json {
        let listing = Listing { placements_per_service: catalog.placements_per_service(), catalog: &catalog };
        println!("{}", serde_json::to_string_pretty(&listing).expect("catalog serialises"));
        return Ok(());
    }
    let width = catalog.tenants.iter().map(|t| t.id.as_str().len()).max().unwrap_or(2).max(2);
    println!("{:width$}  {:9}  {:24}  {:28}  LABELS", "ID", "STATUS", "NAME", "SERVICES");
    for t in &catalog.tenants {
        println!(
            "{:width$}  {:9}  {:24}  {:28}  {}",
            t.id.as_str(),
            t.status.as_str(),
            truncate(&t.name, 24),
            t.placements.keys().cloned().collect::<Vec<_>>().join(","),
            labels(t)
        );
    }
    let per_service: Vec<String> = catalog.placements_per_service().iter().map(|(s, n)| format!("{s}: {n}")).collect();
    println!("{} tenant(s); placements per service: {}", catalog.tenants.len(), per_service.join(", "));
    Ok(())
}

fn labels(t: &Tenant) -> String {
    t.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n { s.to_string() } else { format!("{}…", s.chars().take(n - 1).collect::<String>()) }
}
