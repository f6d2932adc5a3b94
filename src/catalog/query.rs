//! The SQL catalog source: reads tenants from a system database (`[catalog.sql]`).

use std::collections::BTreeMap;
use std::time::Duration;

use sqlx::Row;

use super::{CatalogError, CatalogQuery, HostSpec, LabelValue, PlacementSpec, TenantOrigin, TenantSpec, TenantStatus};
use crate::engine::postgres;

/// How long to wait for the catalog database before calling it unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs the catalog query and turns its rows into tenant specs. Rows with unusable values
/// (bad status, labels that are not an object) come back as problems, not as an error for
/// the whole catalog, so one bad row does not hide the rest of the fleet.
pub async fn load_query_tenants(
    query: &CatalogQuery,
    hosts: &BTreeMap<String, HostSpec>,
) -> Result<(Vec<(TenantOrigin, TenantSpec)>, Vec<super::TenantProblem>), CatalogError> {
    let host = hosts.get(&query.host).ok_or_else(|| CatalogError::UnknownHost(query.host.clone()))?;
    let url = host.url.with_database(&query.database);
    let unreachable = |source| CatalogError::Unreachable {
        host: query.host.clone(),
        database: query.database.clone(),
        url: url.redacted(),
        source,
    };
    let mut conn = tokio::time::timeout(CONNECT_TIMEOUT, postgres::connect(&url))
        .await
        .map_err(|_| unreachable(sqlx::Error::PoolTimedOut))?
        .map_err(unreachable)?;

    // The operator's query is wrapped so that any column types work (text, varchar, json,
    // jsonb, enums) and the row shape is fixed here.
    let inner = query.query.trim().trim_end_matches(';');
    let sql = format!(
        "SELECT id::text AS id, name::text AS name, status::text AS status, \
         labels::text AS labels, placements::text AS placements FROM ({inner}) AS catalog"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).fetch_all(&mut conn).await.map_err(|e| CatalogError::Query {
        host: query.host.clone(),
        database: query.database.clone(),
        message: e.to_string(),
    })?;

    let mut specs = Vec::with_capacity(rows.len());
    let mut problems = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        let origin = TenantOrigin::QueryRow(i + 1);
        let id: Option<String> = row.get("id");
        let Some(id) = id else {
            problems.push(super::TenantProblem { origin, field: "id", message: "id is NULL".into() });
            continue;
        };
        let mut problem = |field, message: String| {
            problems.push(super::TenantProblem {
                origin: origin.clone(),
                field,
                message: format!("tenant {id:?}: {message}"),
            })
        };
        let status = match row.get::<Option<String>, _>("status") {
            None => TenantStatus::Active,
            Some(s) => match TenantStatus::parse(&s) {
                Ok(s) => s,
                Err(e) => {
                    problem("status", e);
                    continue;
                }
            },
        };
        let labels: BTreeMap<String, LabelValue> = match parse_json(row.get("labels")) {
            Ok(l) => l,
            Err(e) => {
                problem("labels", format!("labels must be a JSON object of strings: {e}"));
                continue;
            }
        };
        let placements: BTreeMap<String, PlacementSpec> = match parse_json(row.get("placements")) {
            Ok(p) => p,
            Err(e) => {
                problem(
                    "placements",
                    format!(
                        "placements must be a JSON object of service -> {{host, database, schema, rds_instance}}: {e}"
                    ),
                );
                continue;
            }
        };
        specs
            .push((origin, TenantSpec { id, name: row.get("name"), status, labels, services: Vec::new(), placements }));
    }
    Ok((specs, problems))
}

fn parse_json<T: serde::de::DeserializeOwned + Default>(text: Option<String>) -> Result<T, serde_json::Error> {
    match text {
        None => Ok(T::default()),
        Some(t) => serde_json::from_str(&t),
    }
}
