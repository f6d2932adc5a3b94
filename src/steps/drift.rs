//! The `drift` step and the schema fingerprints behind `tenantry drift`: what a target's schema is made of, read in bulk from pg_catalog, and a readable diff between two targets.
//!
//! A [`Fingerprint`] is the sorted set of facts about one target schema: its tables and
//! views, columns (type, nullability, default), indexes, constraints, row-level security and
//! policies. Facts name objects without their schema, so two tenants' identical schemas
//! have identical fingerprints (and hashes) whatever their schemas are called. tenantry's own
//! tables (`tenantry_migrations`, `tenantry_receipts`) are left out: they are bookkeeping,
//! not the application's schema.
//!
//! The step compares each tenant with a named `reference` tenant and fails the ones that
//! differ, with the diff; the majority reference needs the whole fleet at once, which is
//! what the `tenantry drift` command reads.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, LazyLock, Mutex};

use serde::Deserialize;
use sha2::{Digest, Sha256};
use sqlx::postgres::PgConnection;
use tokio::sync::OnceCell;

use super::define::{Findings, Step};
use super::migrate::HISTORY_TABLE;
use super::{StepContext, StepError};
use crate::catalog::{HostSpec, Isolation, Placement};

/// Tables that are tenantry's bookkeeping, not the application's schema.
pub const EXCLUDED_TABLES: [&str; 2] = [HISTORY_TABLE, "tenantry_receipts"];

/// Schemas per fact query when reading many schemas of one database: a few round trips for
/// 1,000 schemas, and result sets of a bounded size.
const SCHEMA_BATCH: usize = 250;

/// Diff lines quoted in a failing step's error; the rest is counted (the command shows all).
const DIFF_LINES_IN_ERROR: usize = 20;

/// One fact about a schema object: its definition and the table or view it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fact {
    definition: String,
    relation: String,
}

/// The normalized facts of one target schema, keyed by object (`column patients.age`,
/// `index patients_pkey`, ...), and the SHA-256 of their sorted lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    facts: BTreeMap<String, Fact>,
    hash: String,
}

impl Fingerprint {
    /// Builds a fingerprint from `(key, relation, definition)` facts. `relation` is the
    /// table or view a fact belongs to (for `table x` itself: `x`); it groups the facts of
    /// a table that is missing altogether into one diff line.
    pub fn from_facts<K, R, D>(facts: impl IntoIterator<Item = (K, R, D)>) -> Self
    where
        K: Into<String>,
        R: Into<String>,
        D: Into<String>,
    {
        let facts: BTreeMap<String, Fact> =
            facts.into_iter().map(|(k, r, d)| (k.into(), Fact { definition: d.into(), relation: r.into() })).collect();
        let mut sha = Sha256::new();
        for (key, fact) in &facts {
            sha.update(line(key, &fact.definition).as_bytes());
            sha.update(b"\n");
        }
        Self { facts, hash: hex::encode(sha.finalize()) }
    }

    /// Lower-case hex SHA-256 of the fact lines in key order.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    pub fn len(&self) -> usize {
        self.facts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.facts.is_empty()
    }

    /// The facts as lines, e.g. `column patients.age integer NULL DEFAULT 0`.
    pub fn lines(&self) -> Vec<String> {
        self.facts.iter().map(|(k, f)| line(k, &f.definition)).collect()
    }
}

/// A fact as a line. Statements (index and view definitions) follow a colon.
fn line(key: &str, definition: &str) -> String {
    if definition.is_empty() {
        key.to_string()
    } else if key.starts_with("index ") || key.starts_with("view ") {
        format!("{key}: {definition}")
    } else {
        format!("{key} {definition}")
    }
}

/// The kind of a fact key (`column`, `index`, ...).
fn kind(key: &str) -> &str {
    key.split_once(' ').map_or(key, |(k, _)| k)
}

/// Diff order: whole tables first, then what they are made of.
fn rank(key: &str) -> u8 {
    match kind(key) {
        "table" | "view" => 0,
        "column" => 1,
        "constraint" => 2,
        "index" => 3,
        "rls" => 4,
        "policy" => 5,
        _ => 6,
    }
}

fn is_relation_fact(key: &str, fact: &Fact) -> bool {
    matches!(kind(key), "table" | "view") && key.split_once(' ').is_some_and(|(_, name)| name == fact.relation)
}

/// What `other` has that `reference` lacks (`+ ...`), what it lacks (`- ...`) and what it
/// has with another definition (`~ key: reference -> other`), tables and views first. A
/// table present on one side only is one line that counts its columns, indexes, ... rather
/// than one line for each of them.
pub fn compare(reference: &Fingerprint, other: &Fingerprint) -> Vec<String> {
    let only_in = |a: &Fingerprint, b: &Fingerprint| -> BTreeSet<String> {
        a.facts
            .iter()
            .filter(|(k, f)| is_relation_fact(k, f) && !b.facts.contains_key(*k))
            .map(|(_, f)| f.relation.clone())
            .collect()
    };
    let added_relations = only_in(other, reference);
    let removed_relations = only_in(reference, other);
    // Facts of a relation that is missing on one side are folded into its line.
    let mut folded: BTreeMap<(char, String), BTreeMap<&str, usize>> = BTreeMap::new();
    let mut keys: Vec<&String> = reference.facts.keys().chain(other.facts.keys()).collect();
    keys.sort_by(|a, b| (rank(a), a).cmp(&(rank(b), b)));
    keys.dedup();
    let mut changes: Vec<(char, &str, String)> = Vec::new();
    for key in keys {
        match (reference.facts.get(key), other.facts.get(key)) {
            (None, Some(f)) | (Some(f), None) => {
                let (sign, relations) =
                    if reference.facts.contains_key(key) { ('-', &removed_relations) } else { ('+', &added_relations) };
                if !is_relation_fact(key, f) && relations.contains(&f.relation) {
                    *folded.entry((sign, f.relation.clone())).or_default().entry(kind(key)).or_default() += 1;
                } else {
                    changes.push((sign, key, line(key, &f.definition)));
                }
            }
            (Some(r), Some(o)) if r.definition != o.definition => {
                let show = |d: &str| if d.is_empty() { "(none)".to_string() } else { d.to_string() };
                changes.push(('~', key, format!("{key}: {} -> {}", show(&r.definition), show(&o.definition))));
            }
            _ => {}
        }
    }
    changes
        .into_iter()
        .map(|(sign, key, text)| {
            let relation = other.facts.get(key).or_else(|| reference.facts.get(key)).map(|f| &f.relation);
            let parts = relation.and_then(|r| folded.get(&(sign, r.clone())));
            match parts {
                Some(parts) if sign != '~' && rank(key) == 0 => format!("{sign} {text} (with {})", count_parts(parts)),
                _ => format!("{sign} {text}"),
            }
        })
        .collect()
}

/// `3 columns, 1 index`.
fn count_parts(parts: &BTreeMap<&str, usize>) -> String {
    let mut ordered: Vec<(&&str, &usize)> = parts.iter().collect();
    ordered.sort_by_key(|(k, _)| rank(&format!("{k} x")));
    ordered
        .into_iter()
        .map(|(kind, n)| {
            let noun = match (*kind, *n) {
                ("index", 1) => "index".to_string(),
                ("index", _) => "indexes".to_string(),
                ("policy", 1) => "policy".to_string(),
                ("policy", _) => "policies".to_string(),
                ("rls", _) => "row security setting".to_string(),
                (k, 1) => k.to_string(),
                (k, _) => format!("{k}s"),
            };
            format!("{n} {noun}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The fingerprint the majority of tenants share: the most common hash, ties going to the
/// hash of the alphabetically first tenant. Returns that tenant (the first one with the
/// hash), the hash and how many tenants share it; `None` without tenants.
pub fn majority<'a>(hashes: impl IntoIterator<Item = (&'a str, &'a str)>) -> Option<(&'a str, &'a str, usize)> {
    // hash -> (tenants with it, alphabetically first of them)
    let mut groups: HashMap<&str, (usize, &str)> = HashMap::new();
    for (tenant, hash) in hashes {
        let entry = groups.entry(hash).or_insert((0, tenant));
        entry.0 += 1;
        entry.1 = entry.1.min(tenant);
    }
    groups
        .into_iter()
        .max_by(|(_, (n1, t1)), (_, (n2, t2))| n1.cmp(n2).then_with(|| t2.cmp(t1)))
        .map(|(hash, (n, tenant))| (tenant, hash, n))
}

/// Removes `qualifier.` (the schema as PostgreSQL prints it, quoted when needed) where it
/// qualifies a name, so identical objects in different schemas compare equal. Occurrences
/// inside a longer identifier (`xtenant_a.b` for schema `tenant_a`) are kept.
fn strip_schema(text: &str, qualifier: &str) -> String {
    let needle = format!("{qualifier}.");
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for (i, _) in text.match_indices(&needle) {
        let before = text[..i].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$' || c == '"') {
            continue;
        }
        out.push_str(&text[last..i]);
        last = i + needle.len();
    }
    out.push_str(&text[last..]);
    out
}

/// Reads the fingerprints of many schemas of the connection's database, one query per
/// batch of schemas. Schemas that do not exist are left out of the result.
pub async fn read_fingerprints(
    conn: &mut PgConnection,
    schemas: &[String],
) -> Result<BTreeMap<String, Fingerprint>, sqlx::Error> {
    let excluded: Vec<String> = EXCLUDED_TABLES.iter().map(|t| t.to_string()).collect();
    let mut out = BTreeMap::new();
    for batch in schemas.chunks(SCHEMA_BATCH) {
        let rows: Vec<(String, String, String, String, String)> =
            sqlx::query_as(include_str!("drift_facts.sql")).bind(batch).bind(&excluded).fetch_all(&mut *conn).await?;
        let mut facts: BTreeMap<String, Vec<(String, String, String)>> = BTreeMap::new();
        for (schema, qualifier, relation, key, definition) in rows {
            let entry = facts.entry(schema).or_default();
            if key.is_empty() {
                continue; // the schema-exists row
            }
            let mut definition = strip_schema(&definition, &qualifier);
            if key.starts_with("view ") {
                // View definitions are pretty-printed over several lines.
                definition = definition.split_whitespace().collect::<Vec<_>>().join(" ");
            }
            entry.push((key, relation, definition));
        }
        out.extend(facts.into_iter().map(|(schema, facts)| (schema, Fingerprint::from_facts(facts))));
    }
    Ok(out)
}

pub use crate::engine::fleet::{ReadError, TargetKey};

/// Reads the fingerprints of every target through the fleet reader (one connection and a
/// few queries per database, at most `per_host` connections per host at a time). Identical
/// fingerprints are shared, so a fleet of identical schemas costs one in memory.
pub async fn read_fleet(
    hosts: &BTreeMap<String, HostSpec>,
    groups: BTreeMap<(String, String), BTreeSet<String>>,
    per_host: usize,
) -> BTreeMap<TargetKey, Result<Arc<Fingerprint>, ReadError>> {
    let read = crate::engine::fleet::read_targets(hosts, groups, per_host, "the schemas", async |conn, schemas| {
        read_fingerprints(conn, schemas).await
    })
    .await;
    let mut shared: HashMap<String, Arc<Fingerprint>> = HashMap::new();
    read.into_iter()
        .map(|(key, result)| {
            let result = result.map(|fp| shared.entry(fp.hash().to_string()).or_insert_with(|| Arc::new(fp)).clone());
            (key, result)
        })
        .collect()
}

/// Where the reference tenant's data of the same service lives. The step sees only its own
/// tenant's placement, so the reference's is derived from it: the tenant's id is replaced
/// by the reference's in the database and schema names, as the service's templates
/// (`tenant_{tenant}`) would render them. Row isolation shares one target. A tenant whose
/// placement overrides the templates can make this point at the wrong target; the read then
/// fails naming the target it looked for.
fn reference_placement(placement: &Placement, tenant: &str, reference: &str) -> Result<Placement, StepError> {
    if placement.isolation == Isolation::Row {
        return Ok(placement.clone());
    }
    let database = swap_tenant(&placement.database, tenant, reference);
    let schema = swap_tenant(&placement.schema, tenant, reference);
    if database == placement.database && schema == placement.schema {
        return Err(StepError::permanent(format!(
            "cannot tell where reference tenant {reference}'s {} data is: neither the database nor the schema of \
             tenant {tenant} ({}) contains the tenant's id; compare with `tenantry drift {} --reference {reference}` instead",
            placement.service,
            placement.target_key(),
            placement.service
        )));
    }
    Ok(Placement { database, schema, ..placement.clone() })
}

/// Replaces `tenant` by `reference` in `name` where it stands as a word (between
/// non-alphanumerics: `tenant_acme`, `app_acme_core`); when it never does, a single
/// occurrence anywhere (`acmecore`).
fn swap_tenant(name: &str, tenant: &str, reference: &str) -> String {
    let word = |c: Option<char>| c.is_none_or(|c| !c.is_ascii_alphanumeric());
    let matches: Vec<usize> = name.match_indices(tenant).map(|(i, _)| i).collect();
    let mut chosen: Vec<usize> = matches
        .iter()
        .copied()
        .filter(|&i| word(name[..i].chars().next_back()) && word(name[i + tenant.len()..].chars().next()))
        .collect();
    if chosen.is_empty() && matches.len() == 1 {
        chosen = matches;
    }
    let mut out = String::with_capacity(name.len());
    let mut last = 0;
    for i in chosen {
        out.push_str(&name[last..i]);
        out.push_str(reference);
        last = i + tenant.len();
    }
    out.push_str(&name[last..]);
    out
}

/// A reference tenant's fingerprint, read by the first of a run's tenants that needs it.
/// A failed read is not kept, so the next tenant (or the retry) reads again.
type ReferenceCell = Arc<OnceCell<Arc<Fingerprint>>>;
/// (run, service, reference tenant).
type ReferenceKey = (String, String, String);

/// Reference fingerprints read by this process: each is read once per run, however many
/// of the run's tenants this worker compares with it. Only the most recent are kept.
static REFERENCES: LazyLock<Mutex<VecDeque<(ReferenceKey, ReferenceCell)>>> =
    LazyLock::new(|| Mutex::new(VecDeque::new()));
const CACHED_REFERENCES: usize = 64;

fn reference_cell(run: &str, service: &str, reference: &str) -> ReferenceCell {
    let key = (run.to_string(), service.to_string(), reference.to_string());
    let mut cells = REFERENCES.lock().expect("reference cache lock");
    if let Some((_, cell)) = cells.iter().find(|(k, _)| *k == key) {
        return cell.clone();
    }
    let cell = ReferenceCell::default();
    cells.push_back((key, cell.clone()));
    if cells.len() > CACHED_REFERENCES {
        cells.pop_front();
    }
    cell
}

/// Reads one target's fingerprint through the worker's pools.
async fn read_target(ctx: &StepContext<'_>, placement: &Placement, whose: &str) -> Result<Fingerprint, StepError> {
    let target = placement.target_key();
    let mut conn = match ctx.databases.session(&placement.host, &placement.database).await {
        Ok(conn) => conn,
        Err(crate::engine::pools::SessionError::Config(e)) => return Err(StepError::permanent(e)),
        Err(crate::engine::pools::SessionError::Connect(e)) => {
            return Err(StepError::from_sqlx(&format!("connecting to {target}"), &e));
        }
    };
    let found = read_fingerprints(&mut conn, std::slice::from_ref(&placement.schema)).await;
    conn.release().await;
    let mut found =
        found.map_err(|e| StepError::from_sqlx(&format!("reading the schema of {whose} ({target})"), &e))?;
    found.remove(&placement.schema).ok_or_else(|| {
        StepError::permanent(format!(
            "schema {:?} of {whose} does not exist in database {:?} ({target})",
            placement.schema, placement.database
        ))
    })
}

pub struct Drift;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Options {
    /// The tenant whose schema the others are compared with; without it the step records
    /// each tenant's fingerprint.
    pub reference: Option<String>,
}

impl Step for Drift {
    type Options = Options;

    fn check(options: &Options, out: &mut Findings) {
        if let Some(reference) = &options.reference
            && let Err(e) = crate::catalog::TenantId::parse(reference)
        {
            out.push(("reference".into(), e));
        }
    }

    async fn run(ctx: &StepContext<'_>, options: &Options) -> Result<serde_json::Value, StepError> {
        run(ctx, options).await
    }
}

/// Fingerprints the tenant's target. With `reference`, compares it with the reference
/// tenant's and fails permanently with the diff when they differ (a retry cannot help:
/// the schemas have to be brought in line). Without, records the hash and succeeds.
#[tracing::instrument(skip_all, fields(run = ctx.run, tenant = ctx.tenant, service = %ctx.placement.service, step = ctx.unit))]
async fn run(ctx: &StepContext<'_>, options: &Options) -> Result<serde_json::Value, StepError> {
    // Refuses engines other than PostgreSQL with a clear message.
    ctx.session().await?.release().await;
    let own = read_target(ctx, ctx.placement, &format!("tenant {}", ctx.tenant)).await?;
    let Some(reference) = options.reference.as_deref() else {
        return Ok(serde_json::json!({ "hash": own.hash(), "facts": own.len(), "reference": null }));
    };
    let ref_placement = if reference == ctx.tenant {
        ctx.placement.clone()
    } else {
        reference_placement(ctx.placement, ctx.tenant, reference)?
    };
    let ref_fp: Arc<Fingerprint> = if ref_placement == *ctx.placement {
        Arc::new(own.clone())
    } else {
        let whose = format!("reference tenant {reference}");
        reference_cell(ctx.run, &ctx.placement.service, reference)
            .get_or_try_init(|| async { read_target(ctx, &ref_placement, &whose).await.map(Arc::new) })
            .await?
            .clone()
    };
    let diff = compare(&ref_fp, &own);
    let report = serde_json::json!({
        "hash": own.hash(),
        "facts": own.len(),
        "reference": reference,
        "reference_hash": ref_fp.hash(),
        "differs": !diff.is_empty(),
    });
    if diff.is_empty() {
        return Ok(report);
    }
    let mut shown: Vec<String> = diff.iter().take(DIFF_LINES_IN_ERROR).cloned().collect();
    if diff.len() > DIFF_LINES_IN_ERROR {
        shown.push(format!("and {} more", diff.len() - DIFF_LINES_IN_ERROR));
    }
    Err(StepError::permanent(format!(
        "schema of tenant {} ({}) differs from reference tenant {reference} ({}) in {} way(s): {}; \
         `tenantry drift {} --reference {reference}` shows the whole fleet",
        ctx.tenant,
        ctx.placement.target_key(),
        ref_placement.target_key(),
        diff.len(),
        shown.join("; "),
        ctx.placement.service,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clinic(extra: &[(&str, &str, &str)], without: &[&str]) -> Fingerprint {
        let base = [
            ("table patients", "patients", ""),
            ("column patients.id", "patients", "bigint NOT NULL"),
            ("column patients.age", "patients", "integer NULL DEFAULT 0"),
            ("index patients_pkey", "patients", "CREATE UNIQUE INDEX patients_pkey ON patients USING btree (id)"),
            ("constraint patients.patients_pkey", "patients", "PRIMARY KEY (id)"),
            ("table events", "events", ""),
            ("column events.tenant_id", "events", "text NOT NULL"),
            ("rls events", "events", "enabled"),
            (
                "policy events.tenant_isolation",
                "events",
                "ALL TO public USING ((tenant_id = current_setting('app.tenant_id'::text, true)))",
            ),
        ];
        let mut facts: BTreeMap<&str, (&str, &str)> = base.iter().map(|(k, r, d)| (*k, (*r, *d))).collect();
        for k in without {
            facts.remove(k);
        }
        for (k, r, d) in extra {
            facts.insert(k, (r, d));
        }
        Fingerprint::from_facts(facts.into_iter().map(|(k, (r, d))| (k, r, d)))
    }

    #[test]
    fn identical_schemas_have_the_same_hash_and_no_diff() {
        let a = clinic(&[], &[]);
        let b = clinic(&[], &[]);
        assert_eq!(a.hash(), b.hash());
        assert_eq!(a.hash().len(), 64);
        assert!(compare(&a, &b).is_empty());
        assert_eq!(a.len(), 9);
        assert!(a.lines().contains(&"column patients.age integer NULL DEFAULT 0".to_string()));
        assert!(a.lines().contains(
            &"index patients_pkey: CREATE UNIQUE INDEX patients_pkey ON patients USING btree (id)".to_string()
        ));
    }

    #[test]
    fn compare_shows_added_missing_and_changed_facts() {
        let reference = clinic(&[], &[]);
        let other = clinic(
            &[
                ("column patients.name", "patients", "text NULL"),
                ("column patients.age", "patients", "bigint NULL DEFAULT 0"),
                ("rls events", "events", "enabled forced"),
            ],
            &["index patients_pkey"],
        );
        assert_ne!(reference.hash(), other.hash());
        assert_eq!(
            compare(&reference, &other),
            [
                "~ column patients.age: integer NULL DEFAULT 0 -> bigint NULL DEFAULT 0",
                "+ column patients.name text NULL",
                "- index patients_pkey: CREATE UNIQUE INDEX patients_pkey ON patients USING btree (id)",
                "~ rls events: enabled -> enabled forced",
            ]
        );
        // The other way round, signs flip.
        assert_eq!(compare(&other, &reference)[1], "- column patients.name text NULL");
    }

    #[test]
    fn a_missing_table_is_one_line() {
        let reference = clinic(&[], &[]);
        let other = clinic(
            &[
                ("table notes", "notes", ""),
                ("column notes.body", "notes", "text NULL"),
                ("column notes.id", "notes", "integer NOT NULL"),
                ("index notes_pkey", "notes", "CREATE UNIQUE INDEX notes_pkey ON notes USING btree (id)"),
            ],
            &["table events", "column events.tenant_id", "rls events", "policy events.tenant_isolation"],
        );
        assert_eq!(
            compare(&reference, &other),
            [
                "- table events (with 1 column, 1 row security setting, 1 policy)",
                "+ table notes (with 2 columns, 1 index)",
            ]
        );
    }

    #[test]
    fn majority_takes_the_most_common_hash_and_breaks_ties_alphabetically() {
        let fleet = [("t03", "b"), ("t01", "a"), ("t02", "b"), ("t00", "c"), ("t04", "b")];
        assert_eq!(majority(fleet), Some(("t02", "b", 3)));
        // Tie between a (t01, t05) and b (t02, t04): a has the alphabetically first tenant.
        let tie = [("t05", "a"), ("t04", "b"), ("t02", "b"), ("t01", "a")];
        assert_eq!(majority(tie), Some(("t01", "a", 2)));
        // All different: the first tenant.
        assert_eq!(majority([("b", "x"), ("a", "y"), ("c", "z")]), Some(("a", "y", 1)));
        assert_eq!(majority(std::iter::empty()), None);
    }

    #[test]
    fn the_schema_is_stripped_only_where_it_qualifies_a_name() {
        assert_eq!(
            strip_schema("CREATE INDEX i ON tenant_a.patients USING btree (age)", "tenant_a"),
            "CREATE INDEX i ON patients USING btree (age)"
        );
        assert_eq!(
            strip_schema("nextval('\"tenant_t-00\".patients_id_seq'::regclass)", "\"tenant_t-00\""),
            "nextval('patients_id_seq'::regclass)"
        );
        assert_eq!(
            strip_schema("FOREIGN KEY (a) REFERENCES xtenant_a.b(id)", "tenant_a"),
            "FOREIGN KEY (a) REFERENCES xtenant_a.b(id)"
        );
        assert_eq!(strip_schema("(data.x = 1)", "a"), "(data.x = 1)");
    }

    #[test]
    fn the_reference_target_swaps_the_tenant_id_where_it_stands_as_a_word() {
        assert_eq!(swap_tenant("tenant_t01", "t01", "t00"), "tenant_t00");
        assert_eq!(swap_tenant("tenant_t", "t", "acme"), "tenant_acme");
        assert_eq!(swap_tenant("app_acme-corp_core", "acme-corp", "globex"), "app_globex_core");
        assert_eq!(swap_tenant("acmecore", "acme", "globex"), "globexcore");
        assert_eq!(swap_tenant("public", "acme", "globex"), "public");
    }
}
