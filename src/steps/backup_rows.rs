//! The `backup` step for `row` isolation: the shared schema's DDL and exactly one tenant's rows, exported with `COPY` from one snapshot as a gzipped script that plain `psql` restores into an empty database.
//!
//! The script is, in order: `pg_dump --section=pre-data` of the service's schema (from the
//! exported snapshot, so the DDL is the one the rows were read in), one `COPY … FROM stdin`
//! block per table whose rows are copied, parents before children along the foreign keys,
//! `setval` of the schema's sequences, then `pg_dump --section=post-data` (indexes,
//! constraints, triggers), so the foreign keys are checked once every row is in.
//!
//! Which rows of a table are copied:
//! - a table with the tenant column: the rows where it equals the tenant's id;
//! - a table without it that a copied table references through its tenant column (the usual
//!   `tenants` table): the rows whose referenced column equals the tenant's id;
//! - a table without it whose foreign keys point at rows filtered so (`order_items` →
//!   `orders`), however many links away: the rows that reference the tenant's rows through
//!   any of those keys;
//! - a table copied rows point at otherwise (reference data: countries, plans, addresses):
//!   only the rows they point at, so the restored foreign keys hold and no row that only
//!   another tenant's rows need is in the backup;
//! - the migration history and the tables the step's `reference_tables` names: all rows;
//! - any other table: none (its definition only).
//!
//! The tenant's id reaches the statements as a literal quoted by the server
//! (`quote_literal`), since `COPY` takes no bind parameters; `row_security` is off for the
//! export, so a row-level-security policy that would hide rows makes the backup fail instead
//! of silently dropping them. The manifest says, table by table, which rows were copied.

use std::collections::{BTreeMap, BTreeSet};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use async_compression::tokio::write::GzipEncoder;
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};

use super::backup::{DumpInfo, Options, StopBackend, TableRows};
use super::{StepContext, StepError};
use crate::engine::postgres::quote_ident;
use crate::engine::session::PgSession;
use crate::storage::{ObjectStore, Stored};

/// `DumpInfo::format` of a row-isolation backup: restore with `gunzip -c | psql`.
pub const FORMAT: &str = "psql_script_gzip";

/// Bytes buffered between the export and the upload.
const PIPE: usize = 256 * 1024;

/// What the script holds of each table of the schema, as recorded in the manifest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RowExport {
    pub tenant_column: String,
    pub tables: Vec<ExportedTable>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExportedTable {
    pub table: String,
    #[serde(flatten)]
    pub copied: Copied,
}

/// Which rows of a table the script holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "copied", rename_all = "snake_case")]
pub enum Copied {
    /// The rows whose `column` equals the tenant's id.
    TenantRows { column: String },
    /// The rows that point at the tenant's rows of another table through any of `links`
    /// (a table without the tenant column whose rows belong to tenants through foreign
    /// keys: `order_items.order_id → orders.id`).
    Referencing { links: Vec<Link> },
    /// The rows that copied rows of another table point at through any of `links` (data
    /// the tenant's rows need, such as the countries its customers are in): only those,
    /// never the rows other tenants' rows point at.
    Referenced { links: Vec<Link> },
    /// Every row, and why.
    AllRows { because: String },
    /// The table's definition, no rows.
    SchemaOnly,
}

/// A foreign key seen from one end: this table's `columns` and the other `table`'s `other`
/// columns.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Link {
    pub table: String,
    pub columns: Vec<String>,
    pub other: Vec<String>,
}

/// A table of the schema, as the catalog describes it.
#[derive(Debug, Clone)]
pub struct Table {
    pub oid: i64,
    pub name: String,
    pub partitioned: bool,
    /// The columns `COPY` reads and writes (not dropped, not generated), in order.
    pub columns: Vec<String>,
    /// Whether it has the tenant column (generated or not).
    pub scoped: bool,
}

/// A foreign key between two tables of the schema.
#[derive(Debug, Clone)]
pub struct ForeignKey {
    pub from: i64,
    pub to: i64,
    pub columns: Vec<String>,
    pub referenced: Vec<String>,
}

/// Decides which rows of each table are copied and the order of the copies (referenced
/// tables first; cycles, which the post-data constraints make harmless, in name order).
/// Returns every table with its choice, copied tables first in copy order.
pub fn choose(
    tables: &[Table],
    keys: &[ForeignKey],
    tenant_column: &str,
    whole: &BTreeMap<String, String>,
) -> Result<Vec<(usize, Copied)>, String> {
    let by_oid: BTreeMap<i64, usize> = tables.iter().enumerate().map(|(i, t)| (t.oid, i)).collect();
    let mut chosen: BTreeMap<usize, Copied> = BTreeMap::new();
    for (i, t) in tables.iter().enumerate() {
        if t.scoped {
            if whole.contains_key(&t.name) {
                return Err(format!(
                    "reference_tables names {}, which has the tenant column {tenant_column}: its rows belong to tenants",
                    t.name
                ));
            }
            chosen.insert(i, Copied::TenantRows { column: tenant_column.to_string() });
        } else if let Some(because) = whole.get(&t.name) {
            chosen.insert(i, Copied::AllRows { because: because.clone() });
        }
    }
    let missing: Vec<&String> = whole.keys().filter(|name| !tables.iter().any(|t| &t.name == *name)).collect();
    if let Some(name) = missing.first() {
        return Err(format!("reference_tables names {name}, which is not a table of the service's schema"));
    }
    let filtered = |c: &Copied| matches!(c, Copied::TenantRows { .. } | Copied::Referencing { .. });
    // The table the tenant column points at (orders.tenant_id → tenants.id): its rows of the
    // tenant only.
    for k in keys {
        let (Some(&from), Some(&to)) = (by_oid.get(&k.from), by_oid.get(&k.to)) else { continue };
        if tables[from].scoped && !chosen.contains_key(&to) && k.columns == [tenant_column] && k.referenced.len() == 1 {
            chosen.insert(to, Copied::TenantRows { column: k.referenced[0].clone() });
        }
    }
    // Tables without the tenant column whose rows point at the tenant's rows
    // (order_items.order_id → orders.id), however many links away; then the tables copied
    // rows point at (reference data), until nothing changes. Links are filled in below.
    for referencing in [true, false] {
        loop {
            let mut added = false;
            for k in keys {
                let (Some(&from), Some(&to)) = (by_oid.get(&k.from), by_oid.get(&k.to)) else { continue };
                if from == to {
                    continue;
                }
                if referencing && !chosen.contains_key(&from) && chosen.get(&to).is_some_and(filtered) {
                    chosen.insert(from, Copied::Referencing { links: Vec::new() });
                    added = true;
                } else if !referencing && chosen.contains_key(&from) && !chosen.contains_key(&to) {
                    chosen.insert(to, Copied::Referenced { links: Vec::new() });
                    added = true;
                }
            }
            if !added {
                break;
            }
        }
    }
    // Every link counts: a row pointing at the tenant's rows through any of its foreign
    // keys is the tenant's; a row any copied row points at is needed.
    let kinds: BTreeMap<usize, bool> = chosen.iter().map(|(&i, c)| (i, filtered(c))).collect();
    for k in keys {
        let (Some(&from), Some(&to)) = (by_oid.get(&k.from), by_oid.get(&k.to)) else { continue };
        if from == to {
            continue;
        }
        if let Some(Copied::Referencing { links }) = chosen.get_mut(&from)
            && kinds.get(&to) == Some(&true)
        {
            links.push(Link {
                table: tables[to].name.clone(),
                columns: k.columns.clone(),
                other: k.referenced.clone(),
            });
        }
        if kinds.contains_key(&from)
            && let Some(Copied::Referenced { links }) = chosen.get_mut(&to)
        {
            links.push(Link {
                table: tables[from].name.clone(),
                columns: k.referenced.clone(),
                other: k.columns.clone(),
            });
        }
    }
    // Referenced tables first (Kahn's algorithm over the copied tables, by name on ties).
    let copied: BTreeSet<usize> = chosen.keys().copied().collect();
    let mut waiting_on: BTreeMap<usize, BTreeSet<usize>> = copied.iter().map(|&i| (i, BTreeSet::new())).collect();
    for k in keys {
        if let (Some(&from), Some(&to)) = (by_oid.get(&k.from), by_oid.get(&k.to))
            && from != to
            && copied.contains(&from)
            && copied.contains(&to)
        {
            waiting_on.entry(from).or_default().insert(to);
        }
    }
    let mut order = Vec::with_capacity(tables.len());
    while !waiting_on.is_empty() {
        let ready: Vec<usize> = {
            let mut r: Vec<usize> = waiting_on.iter().filter(|(_, deps)| deps.is_empty()).map(|(&i, _)| i).collect();
            if r.is_empty() {
                // A cycle: take the first by name.
                r = waiting_on.keys().copied().min_by_key(|&i| &tables[i].name).into_iter().collect();
            }
            r.sort_by_key(|&i| &tables[i].name);
            r
        };
        for i in ready {
            waiting_on.remove(&i);
            for deps in waiting_on.values_mut() {
                deps.remove(&i);
            }
            order.push((i, chosen.remove(&i).expect("chosen")));
        }
    }
    let mut rest: Vec<usize> = (0..tables.len()).filter(|i| !copied.contains(i)).collect();
    rest.sort_by_key(|&i| &tables[i].name);
    order.extend(rest.into_iter().map(|i| (i, Copied::SchemaOnly)));
    Ok(order)
}

/// Reads the schema's tables and foreign keys in the session's snapshot.
async fn catalog(
    session: &mut PgSession,
    schema: &str,
    tenant_column: &str,
) -> Result<(Vec<Table>, Vec<ForeignKey>), StepError> {
    let rows: Vec<(i64, String, bool, bool, Vec<String>)> = sqlx::query_as(
        "SELECT c.oid::int8, c.relname::text, c.relkind = 'p', \
                EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 \
                        AND NOT a.attisdropped AND a.attname = $2), \
                ARRAY(SELECT a.attname::text FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 \
                      AND NOT a.attisdropped AND a.attgenerated = '' ORDER BY a.attnum) \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND NOT c.relispartition \
           AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass \
                           AND d.objid = c.oid AND d.deptype = 'e') \
         ORDER BY 2",
    )
    .bind(schema)
    .bind(tenant_column)
    .fetch_all(&mut **session)
    .await
    .map_err(|e| StepError::from_sqlx("listing the schema's tables", &e))?;
    let tables = rows
        .into_iter()
        .map(|(oid, name, partitioned, scoped, columns)| Table { oid, name, partitioned, columns, scoped })
        .collect();
    let keys: Vec<(i64, i64, Vec<String>, Vec<String>)> = sqlx::query_as(
        "SELECT k.conrelid::int8, k.confrelid::int8, \
                ARRAY(SELECT a.attname::text FROM unnest(k.conkey) WITH ORDINALITY u(n, o) \
                      JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = u.n ORDER BY u.o), \
                ARRAY(SELECT a.attname::text FROM unnest(k.confkey) WITH ORDINALITY u(n, o) \
                      JOIN pg_attribute a ON a.attrelid = k.confrelid AND a.attnum = u.n ORDER BY u.o) \
         FROM pg_constraint k JOIN pg_namespace n ON n.oid = k.connamespace \
         WHERE k.contype = 'f' AND k.conparentid = 0 AND n.nspname = $1 \
         ORDER BY k.conrelid::regclass::text, k.conname",
    )
    .bind(schema)
    .fetch_all(&mut **session)
    .await
    .map_err(|e| StepError::from_sqlx("listing the schema's foreign keys", &e))?;
    let keys =
        keys.into_iter().map(|(from, to, columns, referenced)| ForeignKey { from, to, columns, referenced }).collect();
    // A foreign key into another schema: the script holds the service's schema only, so its
    // constraint would fail in an empty database (and the referenced rows would be missing).
    // Refused before anything is stored, rather than a backup that never restores.
    let outside: Vec<String> = sqlx::query_scalar(
        "SELECT format('%s (%s) references %s', c.relname, k.conname, k.confrelid::regclass) \
         FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
              JOIN pg_class f ON f.oid = k.confrelid \
         WHERE k.contype = 'f' AND k.conparentid = 0 AND n.nspname = $1 AND f.relnamespace <> n.oid \
         ORDER BY 1",
    )
    .bind(schema)
    .fetch_all(&mut **session)
    .await
    .map_err(|e| StepError::from_sqlx("listing the schema's foreign keys", &e))?;
    if !outside.is_empty() {
        return Err(StepError::permanent(format!(
            "a row backup holds schema {schema} only, and its foreign keys into other schemas would not restore: {}",
            outside.join(", ")
        )));
    }
    Ok((tables, keys))
}

/// Locks the schema's tables (and their partitions and children) in `ACCESS SHARE` mode for
/// the rest of the snapshot's transaction, as `pg_dump` does: `TRUNCATE` and the `ALTER TABLE`
/// forms that rewrite a table are not MVCC-safe, and a snapshot whose transaction holds no
/// lock on a table sees it empty once they commit. One that committed between the snapshot
/// and the lock is found by its new file node: the backup fails (and is retried) instead of
/// holding an empty table.
async fn lock(session: &mut PgSession, options: &Options, schema: &str, tables: &[Table]) -> Result<(), StepError> {
    if tables.is_empty() {
        return Ok(());
    }
    let timeout = options.lock_timeout.map_or(60_000, |d| d.0.as_millis());
    let list = tables
        .iter()
        .map(|t| format!("{}.{}", quote_ident(schema), quote_ident(&t.name)))
        .collect::<Vec<_>>()
        .join(", ");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "SET LOCAL lock_timeout = {timeout}; LOCK TABLE {list} IN ACCESS SHARE MODE; SET LOCAL lock_timeout = 0"
    )))
    .execute(&mut **session)
    .await
    .map_err(|e| StepError::from_sqlx("locking the schema's tables", &e))?;
    // `relfilenode` as the snapshot sees it; `pg_relation_filenode` as the catalog is now.
    let changed: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = $1 AND c.relkind = 'r' AND c.relfilenode <> 0 \
           AND pg_relation_filenode(c.oid) IS DISTINCT FROM c.relfilenode ORDER BY 1",
    )
    .bind(schema)
    .fetch_all(&mut **session)
    .await
    .map_err(|e| StepError::from_sqlx("checking the schema's tables", &e))?;
    if !changed.is_empty() {
        return Err(StepError::transient(format!(
            "table(s) {} were truncated or rewritten after the backup's snapshot was taken",
            changed.join(", ")
        )));
    }
    Ok(())
}

/// What [`dump`] stored and found.
pub struct Exported {
    pub dump: DumpInfo,
    pub tables: Vec<TableRows>,
    pub export: RowExport,
}

/// Exports the tenant's rows from the snapshot `session` holds (a `REPEATABLE READ`
/// transaction that exported `snapshot`) into `key`.
pub async fn dump(
    ctx: &StepContext<'_>,
    options: &Options,
    store: &ObjectStore,
    key: &str,
    snapshot: &str,
    attempt: &str,
    session: &mut PgSession,
) -> Result<Exported, StepError> {
    let p = ctx.placement;
    let column = p
        .tenant_column
        .as_deref()
        .ok_or_else(|| StepError::permanent(format!("service {} has row isolation but no tenant_column", p.service)))?;
    sqlx::raw_sql("SET LOCAL row_security = off")
        .execute(&mut **session)
        .await
        .map_err(|e| StepError::from_sqlx("turning row security off", &e))?;
    let (tables, keys) = catalog(session, &p.schema, column).await?;
    lock(session, options, &p.schema, &tables).await?;
    let mut whole: BTreeMap<String, String> =
        options.reference_tables.iter().map(|t| (t.clone(), "named in reference_tables".to_string())).collect();
    if tables.iter().any(|t| t.name == super::migrate::HISTORY_TABLE) {
        whole.insert(super::migrate::HISTORY_TABLE.to_string(), "the migration history".to_string());
    }
    let order = choose(&tables, &keys, column, &whole)
        .map_err(|e| StepError::permanent(format!("tenant {}, service {}: {e}", ctx.tenant, p.service)))?;
    let tenant: String = sqlx::query_scalar("SELECT quote_literal($1::text)")
        .bind(ctx.tenant)
        .fetch_one(&mut **session)
        .await
        .map_err(|e| StepError::from_sqlx("quoting the tenant id", &e))?;
    let sequences: Vec<(String, i64)> = sqlx::query_as(
        "SELECT sequencename::text, last_value FROM pg_sequences WHERE schemaname = $1 AND last_value IS NOT NULL ORDER BY 1",
    )
    .bind(&p.schema)
    .fetch_all(&mut **session)
    .await
    .map_err(|e| StepError::from_sqlx("reading the schema's sequences", &e))?;

    // The DDL, read from the same snapshot. It is small next to the rows; kept in memory.
    // The extensions installed in the schema: their types and functions are the schema's
    // columns' and defaults' (citext), and `pg_dump --schema` leaves them out.
    let extensions: Vec<String> = sqlx::query_scalar(
        "SELECT e.extname::text FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace \
         WHERE n.nspname = $1 ORDER BY 1",
    )
    .bind(&p.schema)
    .fetch_all(&mut **session)
    .await
    .map_err(|e| StepError::from_sqlx("listing the schema's extensions", &e))?;
    let pre = ddl(ctx, options, snapshot, attempt, "pre-data", &extensions).await?;
    let post = ddl(ctx, options, snapshot, attempt, "post-data", &[]).await?;

    let script = Script { schema: &p.schema, tables: &tables, order: &order, tenant: &tenant, sequences: &sequences };
    let header = format!(
        "--\n-- tenantry backup of tenant {} of service {} (row isolation: the rows of {column} = {tenant}).\n\
         -- Restore into an empty database:  gunzip -c FILE | psql -v ON_ERROR_STOP=1 --single-transaction -d DATABASE\n--\n\n",
        ctx.tenant, p.service
    );
    let (writer, reader) = tokio::io::duplex(PIPE);
    let finished = Arc::new(AtomicBool::new(false));
    let mut reader = Sealed { inner: reader, finished: finished.clone() };
    let level = options.compression.unwrap_or(6) as i32;
    let export = async {
        let mut out = GzipEncoder::with_quality(writer, async_compression::Level::Precise(level));
        let rows = script.write(&mut out, session, header.as_bytes(), &pre, &post).await?;
        finished.store(true, Ordering::SeqCst);
        out.shutdown().await.map_err(Failure::Write)?;
        Ok::<_, Failure>(rows)
    };
    // The reader moves into the upload, so that an upload that stops drops it and the export's
    // next write fails rather than waiting for room.
    let upload = async move { store.upload(key, &mut reader).await };
    let (exported, uploaded) = tokio::join!(export, upload);
    let (rows, stored): (Vec<i64>, Stored) = match (exported, uploaded) {
        (Ok(rows), Ok(stored)) => (rows, stored),
        // The export failed: the upload saw no end (see `Sealed`), nothing was stored.
        (Err(Failure::Step(e)), _) => return Err(e),
        // The store failed, and the export's writes with it.
        (_, Err(e)) => return Err(StepError::from(e)),
        (Err(Failure::Write(e)), Ok(_)) => {
            return Err(StepError::transient(format!("writing the backup: {e}")));
        }
    };
    let counted = order
        .iter()
        .zip(rows)
        .map(|((i, _), rows)| TableRows { schema: p.schema.clone(), table: tables[*i].name.clone(), rows })
        .collect();
    let export = RowExport {
        tenant_column: column.to_string(),
        tables: order.into_iter().map(|(i, copied)| ExportedTable { table: tables[i].name.clone(), copied }).collect(),
    };
    Ok(Exported {
        dump: DumpInfo {
            key: stored.key,
            format: FORMAT.to_string(),
            compression: Some(level as u32),
            size: stored.size,
            sha256: stored.sha256,
        },
        tables: counted,
        export,
    })
}

/// Why the export stopped.
enum Failure {
    /// Reading the database.
    Step(StepError),
    /// Writing into the upload (which stopped reading: its own error says why).
    Write(std::io::Error),
}

/// The parts of the script besides the DDL.
struct Script<'a> {
    schema: &'a str,
    tables: &'a [Table],
    order: &'a [(usize, Copied)],
    tenant: &'a str,
    sequences: &'a [(String, i64)],
}

impl Script<'_> {
    /// The condition that picks the tenant's rows of a table copied so (`None`: all rows,
    /// or no condition could be made: a caller must not take that for all rows).
    fn predicate(&self, table: &str, copied: &Copied) -> Option<String> {
        self.predicate_within(copied, &mut vec![table.to_string()])
    }

    /// [`Script::predicate`], not following a link back into a table it is already
    /// inside (`visiting`): foreign keys may form cycles.
    fn predicate_within(&self, copied: &Copied, visiting: &mut Vec<String>) -> Option<String> {
        let list = |names: &[String]| names.iter().map(|c| quote_ident(c)).collect::<Vec<_>>().join(", ");
        let links = match copied {
            Copied::TenantRows { column } => return Some(format!("{} = {}", quote_ident(column), self.tenant)),
            Copied::Referencing { links } | Copied::Referenced { links } => links,
            Copied::AllRows { .. } | Copied::SchemaOnly => return None,
        };
        let mut parts = Vec::new();
        for link in links {
            if visiting.contains(&link.table) {
                continue;
            }
            let Some((i, other)) = self.order.iter().find(|(i, _)| self.tables[*i].name == link.table) else {
                continue;
            };
            let condition = match other {
                Copied::AllRows { .. } => String::new(),
                Copied::SchemaOnly => continue,
                _ => {
                    visiting.push(link.table.clone());
                    let inner = self.predicate_within(other, visiting);
                    visiting.pop();
                    match inner {
                        Some(p) => format!(" WHERE {p}"),
                        None => continue,
                    }
                }
            };
            let only = if self.tables[*i].partitioned { "" } else { "ONLY " };
            parts.push(format!(
                "({}) IN (SELECT {} FROM {only}{}.{}{condition})",
                list(&link.columns),
                list(&link.other),
                quote_ident(self.schema),
                quote_ident(&link.table),
            ));
        }
        if parts.is_empty() { None } else { Some(parts.join(" OR ")) }
    }

    /// Writes the whole script; returns the rows copied of each table of `order`.
    async fn write<W: AsyncWrite + Unpin>(
        &self,
        out: &mut W,
        session: &mut PgSession,
        header: &[u8],
        pre: &[u8],
        post: &[u8],
    ) -> Result<Vec<i64>, Failure> {
        let schema = quote_ident(self.schema);
        out.write_all(header).await.map_err(Failure::Write)?;
        out.write_all(&create_schema_if_missing(pre)).await.map_err(Failure::Write)?;
        let mut counts = Vec::with_capacity(self.order.len());
        for (i, copied) in self.order {
            let t = &self.tables[*i];
            let filter = match copied {
                Copied::SchemaOnly => {
                    counts.push(0);
                    continue;
                }
                _ if t.columns.is_empty() => {
                    counts.push(0);
                    continue;
                }
                Copied::AllRows { .. } => String::new(),
                // Never all rows for want of a filter.
                _ => format!(
                    " WHERE {}",
                    self.predicate(&t.name, copied).ok_or_else(|| Failure::Step(StepError::permanent(format!(
                        "no filter for the tenant's rows of table {}",
                        t.name
                    ))))?
                ),
            };
            let columns = t.columns.iter().map(|c| quote_ident(c)).collect::<Vec<_>>().join(", ");
            let table = format!("{schema}.{}", quote_ident(&t.name));
            let only = if t.partitioned { "" } else { "ONLY " };
            let statement = format!("COPY (SELECT {columns} FROM {only}{table}{filter}) TO STDOUT");
            out.write_all(format!("COPY {table} ({columns}) FROM stdin;\n").as_bytes())
                .await
                .map_err(Failure::Write)?;
            let mut rows = 0i64;
            {
                let mut stream = session
                    .copy_out_raw(&statement)
                    .await
                    .map_err(|e| Failure::Step(StepError::from_sqlx("exporting the tenant's rows", &e)))?;
                while let Some(chunk) = stream
                    .try_next()
                    .await
                    .map_err(|e| Failure::Step(StepError::from_sqlx("exporting the tenant's rows", &e)))?
                {
                    // One line per row: COPY's text format escapes newlines inside values.
                    rows += chunk.iter().filter(|&&b| b == b'\n').count() as i64;
                    out.write_all(&chunk).await.map_err(Failure::Write)?;
                }
            }
            out.write_all(b"\\.\n\n").await.map_err(Failure::Write)?;
            counts.push(rows);
        }
        for (sequence, value) in self.sequences {
            let name = format!("{schema}.{}", quote_ident(sequence));
            out.write_all(
                format!(
                    "SELECT pg_catalog.setval({}, {value}, true);\n",
                    crate::engine::postgres::quote_literal(&name)
                )
                .as_bytes(),
            )
            .await
            .map_err(Failure::Write)?;
        }
        out.write_all(b"\n").await.map_err(Failure::Write)?;
        out.write_all(post).await.map_err(Failure::Write)?;
        Ok(counts)
    }
}

/// `pg_dump --schema` creates the schema; an empty database already has `public`, so the
/// script creates it only when it is missing.
fn create_schema_if_missing(pre: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(pre);
    let mut out = String::with_capacity(text.len() + 16);
    for line in text.split_inclusive('\n') {
        match line.strip_prefix("CREATE SCHEMA ") {
            Some(rest) if !rest.starts_with("IF NOT EXISTS ") => {
                out.push_str("CREATE SCHEMA IF NOT EXISTS ");
                out.push_str(rest);
            }
            _ => out.push_str(line),
        }
    }
    out.into_bytes()
}

/// The read half of the pipe from the export to the upload: its end is an end only when the
/// export finished; before that, an error, so that the upload aborts instead of storing a
/// truncated backup.
struct Sealed {
    inner: DuplexStream,
    finished: Arc<AtomicBool>,
}

impl AsyncRead for Sealed {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        if buf.filled().len() == before && buf.remaining() > 0 && !this.finished.load(Ordering::SeqCst) {
            return Poll::Ready(Err(std::io::Error::other("the export stopped before its end")));
        }
        Poll::Ready(Ok(()))
    }
}

/// Runs `pg_dump` for one section of the schema's DDL from the snapshot.
async fn ddl(
    ctx: &StepContext<'_>,
    options: &Options,
    snapshot: &str,
    attempt: &str,
    section: &str,
    extensions: &[String],
) -> Result<Vec<u8>, StepError> {
    let p = ctx.placement;
    let host = ctx.databases.host(&p.host).map_err(StepError::permanent)?;
    let mut cmd = crate::engine::tools::libpq_command("pg_dump", &host.url, &p.database);
    let app_name = format!("tenantry-backup-{attempt}-{section}");
    cmd.env("PGAPPNAME", &app_name);
    cmd.arg(format!("--section={section}"))
        .arg(format!("--snapshot={snapshot}"))
        .arg(format!("--schema=\"{}\"", p.schema.replace('"', "\"\"")))
        .args(extensions.iter().map(|e| format!("--extension=\"{}\"", e.replace('"', "\"\""))))
        .args(["--no-owner", "--no-privileges", "--no-password"])
        .arg(format!("--lock-wait-timeout={}", options.lock_timeout.map_or(60_000, |d| d.0.as_millis())));
    cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let _stop = StopBackend::new(ctx, &app_name);
    let out = cmd.output().await.map_err(|e| StepError::permanent(format!("cannot run pg_dump: {e}")))?;
    if !out.status.success() {
        return Err(StepError {
            retry: super::Retry::TransientOnce,
            message: format!(
                "pg_dump --section={section} failed ({}): {}",
                out.status,
                crate::engine::tools::tail(&out.stderr, 4096)
            ),
            cause: None,
        });
    }
    Ok(out.stdout)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn table(oid: i64, name: &str, scoped: bool) -> Table {
        Table { oid, name: name.to_string(), partitioned: false, columns: vec!["id".to_string()], scoped }
    }

    fn fk(from: i64, to: i64, columns: &[&str], referenced: &[&str]) -> ForeignKey {
        ForeignKey {
            from,
            to,
            columns: columns.iter().map(|c| c.to_string()).collect(),
            referenced: referenced.iter().map(|c| c.to_string()).collect(),
        }
    }

    fn joined(links: &[Link]) -> String {
        links.iter().map(|l| format!("{}({})", l.table, l.columns.join(","))).collect::<Vec<_>>().join("|")
    }

    fn chosen(order: &[(usize, Copied)], tables: &[Table]) -> Vec<(String, String)> {
        order
            .iter()
            .map(|(i, c)| {
                let what = match c {
                    Copied::TenantRows { column } => format!("tenant:{column}"),
                    Copied::AllRows { because } => format!("all:{because}"),
                    Copied::Referencing { links } => format!("ref:{}", joined(links)),
                    Copied::Referenced { links } => format!("by:{}", joined(links)),
                    Copied::SchemaOnly => "schema".to_string(),
                };
                (tables[*i].name.clone(), what)
            })
            .collect()
    }

    #[test]
    fn tenant_tables_filter_the_tenants_table_their_children_and_the_reference_rows_they_point_at() {
        let tables = [
            table(1, "orders", true),
            table(2, "tenants", false),
            table(3, "plans", false),
            table(4, "countries", false),
            table(5, "audit", false),
            table(6, "customers", true),
            table(7, "items", false),
            table(8, "notes", false),
            table(9, "log", false),
        ];
        let keys = [
            fk(1, 6, &["tenant_id", "customer"], &["tenant_id", "id"]),
            fk(1, 2, &["tenant_id"], &["id"]),
            fk(6, 2, &["tenant_id"], &["id"]),
            fk(2, 3, &["plan"], &["id"]),
            fk(6, 4, &["country"], &["code"]),
            fk(5, 6, &["customer"], &["id"]),
            fk(8, 7, &["item"], &["id"]),
            fk(7, 1, &["order_id"], &["id"]),
            fk(7, 4, &["country"], &["code"]),
        ];
        let order = choose(&tables, &keys, "tenant_id", &BTreeMap::new()).unwrap();
        assert_eq!(
            chosen(&order, &tables),
            [
                ("countries", "by:customers(code)|items(code)"),
                ("plans", "by:tenants(id)"),
                ("tenants", "tenant:id"),
                ("customers", "tenant:tenant_id"),
                ("audit", "ref:customers(customer)"),
                ("orders", "tenant:tenant_id"),
                ("items", "ref:orders(order_id)"),
                ("notes", "ref:items(item)"),
                ("log", "schema"),
            ]
            .map(|(a, b)| (a.to_string(), b.to_string()))
        );
    }

    #[test]
    fn a_cycle_still_copies_every_table_once_and_named_reference_tables_are_checked() {
        let tables = [table(1, "a", true), table(2, "b", true), table(3, "lookup", false)];
        let keys = [fk(1, 2, &["b"], &["id"]), fk(2, 1, &["a"], &["id"]), fk(2, 2, &["parent"], &["id"])];
        let whole = BTreeMap::from([("lookup".to_string(), "named".to_string())]);
        let order = choose(&tables, &keys, "tenant_id", &whole).unwrap();
        let names: Vec<String> = chosen(&order, &tables).into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["lookup", "a", "b"]);
        let err = choose(&tables, &keys, "tenant_id", &BTreeMap::from([("a".to_string(), String::new())]));
        assert!(err.unwrap_err().contains("names a, which has the tenant column tenant_id"));
        let err = choose(&tables, &keys, "tenant_id", &BTreeMap::from([("nope".to_string(), String::new())]));
        assert!(err.unwrap_err().contains("nope, which is not a table"));
    }

    #[test]
    fn the_schema_is_created_only_when_missing() {
        let pre = b"SET x = 1;\nCREATE SCHEMA public;\nCOMMENT ON SCHEMA public IS 'x';\nCREATE SCHEMA IF NOT EXISTS \"a\";\n";
        assert_eq!(
            String::from_utf8(create_schema_if_missing(pre)).unwrap(),
            "SET x = 1;\nCREATE SCHEMA IF NOT EXISTS public;\nCOMMENT ON SCHEMA public IS 'x';\nCREATE SCHEMA IF NOT EXISTS \"a\";\n"
        );
    }

    #[tokio::test]
    async fn the_pipe_ends_only_when_the_export_finished() {
        for finish in [true, false] {
            let (mut writer, reader) = tokio::io::duplex(64);
            let finished = Arc::new(AtomicBool::new(false));
            let mut sealed = Sealed { inner: reader, finished: finished.clone() };
            writer.write_all(b"part").await.unwrap();
            if finish {
                finished.store(true, Ordering::SeqCst);
            }
            drop(writer);
            let mut out = Vec::new();
            let read = sealed.read_to_end(&mut out).await;
            assert_eq!(out, b"part");
            assert_eq!(read.is_ok(), finish, "{read:?}");
        }
    }
}
