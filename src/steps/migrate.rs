//! The `migrate` step: the history table inside each target, reading histories in bulk, and comparing them with a migrations directory.
//!
//! The history table lives in the tenant's own database/schema (for `row` isolation, in the
//! shared one), so a lost checkpoint in Redis can never cause a second apply: the target
//! itself knows what it has. Applying is the runtime's part (a later issue); this module
//! answers "what is applied, what is pending, and is anything wrong".

use std::collections::BTreeMap;

use serde::Serialize;
use sqlx::Row;
use sqlx::postgres::PgConnection;

use crate::engine::postgres::quote_ident;
use crate::migrations::{MigrationSet, Version};

/// Name of the history table in every target.
pub const HISTORY_TABLE: &str = "tenantry_migrations";

/// The history table's definition, created in a target's schema before its first
/// migration. `state` is `started` while a migration runs outside a transaction (or if it
/// died half-way: "dirty"), `applied` once it finished.
pub const HISTORY_DDL: &str = include_str!("migrate_history.sql");

/// Schemas per UNION query when reading many histories from one database: large enough to
/// make 1,000 schemas a handful of round trips, small enough to keep the statement modest.
const HISTORY_BATCH: usize = 250;

/// One row of a target's history table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AppliedMigration {
    pub version: String,
    pub name: String,
    pub checksum: String,
    pub state: String,
}

/// What a target's history says against the migrations directory.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MigrationStatus {
    pub applied: usize,
    /// Versions to apply, in order.
    pub pending: Vec<String>,
    /// Reasons `migrate` would refuse to run on this target (drift, dirty, missing file,
    /// out of order), each naming the version and file.
    pub problems: Vec<String>,
}

/// Compares a target's history with the directory. `allow_out_of_order` accepts pending
/// versions older than the newest applied one (for long-lived branches merged late).
pub fn compare(set: &MigrationSet, history: &[AppliedMigration], allow_out_of_order: bool) -> MigrationStatus {
    let mut status = MigrationStatus::default();
    let mut applied_versions: BTreeMap<Version, &AppliedMigration> = BTreeMap::new();
    for row in history {
        match row.version.parse::<Version>() {
            Ok(v) => {
                applied_versions.insert(v, row);
            }
            Err(_) => status.problems.push(format!("history has an unreadable version {:?}", row.version)),
        }
    }
    for (version, row) in &applied_versions {
        match set.get(version) {
            None => status.problems.push(format!(
                "version {version} ({}) is recorded as {} but its file is missing from {}",
                row.name,
                row.state,
                set.dir.display()
            )),
            Some(m) if row.state != "applied" => status.problems.push(format!(
                "version {version} is dirty: it started but did not finish ({}); check the target and fix the history row before migrating again",
                m.up.path.display()
            )),
            Some(m) if m.up.checksum != row.checksum => status.problems.push(format!(
                "version {version} was changed after it was applied (drift): {} has checksum {} but {} was applied",
                m.up.path.display(),
                short(&m.up.checksum),
                short(&row.checksum)
            )),
            Some(_) => status.applied += 1,
        }
    }
    let newest_applied = applied_versions.keys().next_back();
    for m in &set.migrations {
        if applied_versions.contains_key(&m.version) {
            continue;
        }
        if let Some(newest) = newest_applied
            && &m.version < newest
            && !allow_out_of_order
        {
            status.problems.push(format!(
                "version {} ({}) is older than the newest applied version {newest}: out of order; renumber it or set allow_out_of_order = true",
                m.version,
                m.up.path.display()
            ));
        }
        status.pending.push(format!("{}_{}", m.version, m.name));
    }
    status
}

fn short(checksum: &str) -> &str {
    &checksum[..checksum.len().min(12)]
}

/// Reads the history tables of many schemas of one database in a few queries. Schemas
/// without a history table (never migrated) map to an empty history; schemas that do not
/// exist are left out of the result, so the caller can tell "missing" from "empty".
pub async fn read_histories(
    conn: &mut PgConnection,
    schemas: &[String],
) -> Result<BTreeMap<String, Vec<AppliedMigration>>, sqlx::Error> {
    let existing: Vec<(String, bool)> = sqlx::query_as(include_str!("migrate_schemas.sql"))
        .bind(schemas)
        .bind(HISTORY_TABLE)
        .fetch_all(&mut *conn)
        .await?;
    let mut out: BTreeMap<String, Vec<AppliedMigration>> = BTreeMap::new();
    let mut with_history = Vec::new();
    for (schema, has_history) in existing {
        out.insert(schema.clone(), Vec::new());
        if has_history {
            with_history.push(schema);
        }
    }
    for chunk in with_history.chunks(HISTORY_BATCH) {
        // Identifiers cannot be bound as parameters: they are quoted instead, and each
        // branch is tagged with its index into `chunk` rather than the schema's name.
        let sql = chunk
            .iter()
            .enumerate()
            .map(|(i, schema)| {
                format!(
                    "SELECT {i}::int AS idx, version, name, checksum, state FROM {}.{}",
                    quote_ident(schema),
                    quote_ident(HISTORY_TABLE)
                )
            })
            .collect::<Vec<_>>()
            .join(" UNION ALL ");
        for row in sqlx::query(sqlx::AssertSqlSafe(sql)).fetch_all(&mut *conn).await? {
            let idx: i32 = row.get("idx");
            let schema = &chunk[idx as usize];
            out.entry(schema.clone()).or_default().push(AppliedMigration {
                version: row.get("version"),
                name: row.get("name"),
                checksum: row.get("checksum"),
                state: row.get("state"),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set_with(dir: &std::path::Path, files: &[(&str, &str)]) -> MigrationSet {
        for (name, sql) in files {
            std::fs::write(dir.join(name), sql).unwrap();
        }
        MigrationSet::load(dir).unwrap()
    }

    fn row(set: &MigrationSet, v: &str, state: &str) -> AppliedMigration {
        let m = set.get(&v.parse().unwrap()).unwrap();
        AppliedMigration {
            version: v.into(),
            name: m.name.clone(),
            checksum: m.up.checksum.clone(),
            state: state.into(),
        }
    }

    #[test]
    fn pending_after_applied() {
        let dir = tempfile::tempdir().unwrap();
        let set =
            set_with(dir.path(), &[("1_a.sql", "select 1;"), ("2_b.sql", "select 2;"), ("10_c.sql", "select 10;")]);
        let s = compare(&set, &[row(&set, "1", "applied")], false);
        assert_eq!(s.applied, 1);
        assert_eq!(s.pending, vec!["2_b", "10_c"]);
        assert!(s.problems.is_empty());
    }

    #[test]
    fn refusals_name_version_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let set = set_with(dir.path(), &[("1_a.sql", "select 1;"), ("2_b.sql", "select 2;"), ("3_c.sql", "select 3;")]);
        let mut drifted = row(&set, "1", "applied");
        drifted.checksum = "0".repeat(64);
        let dirty = row(&set, "3", "started");
        let missing = AppliedMigration {
            version: "4".into(),
            name: "gone".into(),
            checksum: "x".into(),
            state: "applied".into(),
        };
        let s = compare(&set, &[drifted, dirty, missing], false);
        let all = s.problems.join("\n");
        assert!(all.contains("version 1 was changed after it was applied (drift)") && all.contains("1_a.sql"), "{all}");
        assert!(all.contains("version 3 is dirty") && all.contains("3_c.sql"), "{all}");
        assert!(all.contains("version 4 (gone) is recorded as applied but its file is missing"), "{all}");
        assert!(all.contains("version 2 (") && all.contains("out of order"), "{all}");
        let s = compare(&set, &[row(&set, "3", "applied")], true);
        assert!(s.problems.is_empty(), "{:?}", s.problems);
        assert_eq!(s.pending, vec!["1_a", "2_b"]);
    }
}
