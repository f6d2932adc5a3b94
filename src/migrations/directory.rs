//! Scanning a service's migrations directory into a checked, version-sorted `MigrationSet` (scripts, checksums, up/down pairs), reporting every problem as a `Diagnostic`.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::layout::{self, Classified, EntryName, Layout, Role};
use super::version::Version;
use crate::diagnostic::{Diagnostic, Diagnostics};

/// The largest migration file read into memory. Every script of a set is held at once, so one
/// runaway file (a data dump saved as a migration) must not take the process down; 64 MiB is
/// far above any schema change.
pub const MAX_SCRIPT_BYTES: u64 = 64 * 1024 * 1024;

/// The marker, alone on a leading comment line, that makes a migration run outside a
/// transaction (needed for `CREATE INDEX CONCURRENTLY` and the like).
const NO_TRANSACTION_MARKER: &str = "tenantry:no-transaction";

/// One SQL file, read once.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Script {
    pub path: PathBuf,
    pub sql: String,
    /// Lower-case hex SHA-256 of the file's bytes (not of `sql` after any normalisation), so
    /// that any edit to an applied migration, even of whitespace or line endings, is noticed.
    pub checksum: String,
}

/// One version: its up script and, when the layout has one, its down script.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Migration {
    pub version: Version,
    /// The name part of the file (or Prisma directory) name, e.g. "add_claims_index".
    pub name: String,
    pub up: Script,
    pub down: Option<Script>,
    /// The up file has a `-- tenantry:no-transaction` line among its leading comment and
    /// blank lines. A marker after the first statement does not count: it would be too easy
    /// to miss when reading the file.
    pub no_transaction: bool,
}

/// The migrations of one directory, sorted by version.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MigrationSet {
    pub dir: PathBuf,
    /// `None` when the directory holds no migrations. When layouts are mixed, the layout of
    /// most files (ties: of the first file); only its migrations are in `migrations`.
    pub layout: Option<Layout>,
    pub migrations: Vec<Migration>,
}

/// Failure to load a migrations directory that callers need to be valid.
#[derive(Debug, thiserror::Error)]
pub enum MigrationsError {
    #[error("{}", describe_invalid(.dir, .diagnostics))]
    Invalid { dir: PathBuf, diagnostics: Vec<Diagnostic> },
}

impl MigrationsError {
    pub fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            MigrationsError::Invalid { diagnostics, .. } => diagnostics,
        }
    }
}

fn describe_invalid(dir: &Path, diagnostics: &[Diagnostic]) -> String {
    let count = diagnostics.len();
    let plural = if count == 1 { "" } else { "s" };
    let mut text = format!("{count} problem{plural} in migrations directory {}:", dir.display());
    for diagnostic in diagnostics {
        text.push('\n');
        text.push_str(&diagnostic.to_string());
    }
    text
}

impl MigrationSet {
    /// Reads and checks a directory, reporting every problem (not just the first). Returns the
    /// migrations that were understood alongside the diagnostics, so that `validate`-style
    /// commands can show everything at once; a file with a problem is left out of the set.
    pub fn scan(dir: &Path) -> (MigrationSet, Vec<Diagnostic>) {
        scan_with_limit(dir, MAX_SCRIPT_BYTES)
    }

    /// For callers that need a valid set: any problem at all is an error, because applying
    /// "the migrations that could be read" would silently skip the others.
    pub fn load(dir: &Path) -> Result<MigrationSet, MigrationsError> {
        let (set, diagnostics) = Self::scan(dir);
        if diagnostics.is_empty() {
            Ok(set)
        } else {
            Err(MigrationsError::Invalid { dir: dir.to_path_buf(), diagnostics })
        }
    }

    pub fn get(&self, version: &Version) -> Option<&Migration> {
        self.migrations.binary_search_by(|m| m.version.cmp(version)).ok().map(|i| &self.migrations[i])
    }

    pub fn latest(&self) -> Option<&Version> {
        self.migrations.last().map(|m| &m.version)
    }
}

/// A file that follows a layout, with its script if it could be read.
struct Found {
    /// The `.sql` file (for Prisma, `<dir>/migration.sql`).
    path: PathBuf,
    entry: EntryName,
    script: Option<Script>,
}

fn scan_with_limit(dir: &Path, limit: u64) -> (MigrationSet, Vec<Diagnostic>) {
    let mut diagnostics = Diagnostics::default();
    let mut found = Vec::new();
    for (name, path) in list_entries(dir, &mut diagnostics) {
        if let Some(f) = examine_entry(&name, path, limit, &mut diagnostics) {
            found.push(f);
        }
    }
    let layout = choose_layout(&found, &mut diagnostics);
    let migrations = match layout {
        Some(layout) => assemble(layout, found, &mut diagnostics),
        None => Vec::new(),
    };
    let mut diagnostics = diagnostics.into_vec();
    // Group problems by file for reading; the sort is stable, so a file's problems keep
    // the order in which they were found.
    diagnostics.sort_by(|a, b| a.file.cmp(&b.file));
    let set = MigrationSet { dir: dir.to_path_buf(), layout, migrations };
    (set, diagnostics)
}

/// The directory's entries sorted by name, so that scanning (and which of two duplicates is
/// reported) does not depend on the file system's order.
fn list_entries(dir: &Path, diagnostics: &mut Diagnostics) -> Vec<(std::ffi::OsString, PathBuf)> {
    match fs::metadata(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            diagnostics.push(Diagnostic::at(dir, 1, 1, "migrations directory does not exist"));
            return Vec::new();
        }
        Err(e) => {
            diagnostics.push(Diagnostic::at(dir, 1, 1, format!("cannot read: {e}")));
            return Vec::new();
        }
        Ok(meta) if !meta.is_dir() => {
            diagnostics.push(Diagnostic::at(dir, 1, 1, "cannot read: not a directory"));
            return Vec::new();
        }
        Ok(_) => {}
    }
    let mut entries = Vec::new();
    let read_dir = match fs::read_dir(dir) {
        Ok(read_dir) => read_dir,
        Err(e) => {
            diagnostics.push(Diagnostic::at(dir, 1, 1, format!("cannot read: {e}")));
            return entries;
        }
    };
    for entry in read_dir {
        match entry {
            Ok(entry) => entries.push((entry.file_name(), entry.path())),
            Err(e) => {
                diagnostics.push(Diagnostic::at(dir, 1, 1, format!("cannot read: {e}")));
                break;
            }
        }
    }
    entries.sort();
    entries
}

/// Classifies one top-level entry and reads its script; `None` when it is ignored or wrong
/// (the problem is then in `diagnostics`).
fn examine_entry(name: &std::ffi::OsStr, path: PathBuf, limit: u64, diagnostics: &mut Diagnostics) -> Option<Found> {
    let Some(name) = name.to_str() else {
        diagnostics.push(Diagnostic::at(&path, 1, 1, "file name is not valid UTF-8; rename it"));
        return None;
    };
    if layout::is_ignored(name) {
        return None;
    }
    // Follows symbolic links: a linked migration file is a migration file.
    let meta = match fs::metadata(&path) {
        Ok(meta) => meta,
        Err(e) => {
            diagnostics.push(Diagnostic::at(&path, 1, 1, format!("cannot read: {e}")));
            return None;
        }
    };
    let entry = match layout::classify(name, meta.is_dir()) {
        Classified::Ignored => return None,
        Classified::Problem(message) => {
            diagnostics.push(Diagnostic::at(&path, 1, 1, message));
            return None;
        }
        Classified::Migration(entry) => entry,
    };
    let script_path = if entry.layout == Layout::Prisma {
        let script_path = path.join("migration.sql");
        if let Err(e) = fs::metadata(&script_path) {
            let message = if e.kind() == io::ErrorKind::NotFound {
                "prisma migration directory has no migration.sql; add it or remove the directory".to_owned()
            } else {
                format!("cannot read: {e}")
            };
            diagnostics.push(Diagnostic::at(&path, 1, 1, message));
            return None;
        }
        script_path
    } else {
        path
    };
    let script = read_script(&script_path, limit, diagnostics);
    Some(Found { path: script_path, entry, script })
}

/// Reads a script once: its bytes are hashed, then become the SQL text without a copy.
fn read_script(path: &Path, limit: u64, diagnostics: &mut Diagnostics) -> Option<Script> {
    let cannot_read = |e: io::Error| Diagnostic::at(path, 1, 1, format!("cannot read: {e}"));
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) => {
            diagnostics.push(cannot_read(e));
            return None;
        }
    };
    match file.metadata() {
        Ok(meta) if meta.is_file() => {}
        // Directories, FIFOs and devices: reading would fail or block.
        Ok(_) => {
            diagnostics.push(Diagnostic::at(path, 1, 1, "not a regular file; a migration must be a .sql file"));
            return None;
        }
        Err(e) => {
            diagnostics.push(cannot_read(e));
            return None;
        }
    }
    let mut bytes = Vec::new();
    if let Err(e) = file.take(limit.saturating_add(1)).read_to_end(&mut bytes) {
        diagnostics.push(cannot_read(e));
        return None;
    }
    if bytes.len() as u64 > limit {
        diagnostics.push(Diagnostic::at(
            path,
            1,
            1,
            format!("file is larger than {limit} bytes, the limit for one migration; split it into several migrations"),
        ));
        return None;
    }
    let checksum = hex::encode(Sha256::digest(&bytes));
    let sql = match String::from_utf8(bytes) {
        Ok(sql) => sql,
        Err(e) => {
            let valid_up_to = e.utf8_error().valid_up_to();
            let valid = std::str::from_utf8(&e.as_bytes()[..valid_up_to]).unwrap_or_default();
            diagnostics.push(Diagnostic::at_offset(
                path,
                valid,
                valid_up_to,
                format!("file is not valid UTF-8 (invalid byte at offset {valid_up_to}); save it as UTF-8"),
            ));
            return None;
        }
    };
    Some(Script { path: path.to_path_buf(), sql, checksum })
}

/// Picks the directory's layout (most files; ties go to the layout of the first file) and
/// reports each other layout once, naming one file of it and one of the chosen layout.
fn choose_layout(found: &[Found], diagnostics: &mut Diagnostics) -> Option<Layout> {
    // Per layout, in order of first appearance: (layout, first file, count).
    let mut seen: Vec<(Layout, &Path, usize)> = Vec::new();
    for f in found {
        match seen.iter_mut().find(|(layout, _, _)| *layout == f.entry.layout) {
            Some((_, _, count)) => *count += 1,
            None => seen.push((f.entry.layout, &f.path, 1)),
        }
    }
    // `max_by_key` returns the last maximum; iterate in reverse so ties go to the first.
    let &(chosen, chosen_file, _) = seen.iter().rev().max_by_key(|(_, _, count)| *count)?;
    for &(layout, file, count) in &seen {
        if layout != chosen {
            let files = if count == 1 { "file" } else { "files" };
            diagnostics.push(Diagnostic::at(
                file,
                1,
                1,
                format!(
                    "mixed migration layouts: this is a {layout} file but {} is a {chosen} file; \
                     keep one layout per directory ({count} {layout} {files} not loaded)",
                    chosen_file.display()
                ),
            ));
        }
    }
    Some(chosen)
}

/// Pairs up and down files of `layout` by version, reports duplicates and orphans, and builds
/// the sorted migrations from the files whose scripts were read.
fn assemble(layout: Layout, found: Vec<Found>, diagnostics: &mut Diagnostics) -> Vec<Migration> {
    #[derive(Default)]
    struct Slot {
        up: Option<usize>,
        down: Option<usize>,
    }
    let mut found: Vec<Found> = found.into_iter().filter(|f| f.entry.layout == layout).collect();
    // Keyed without trailing zeros so that Flyway's "1" and "1.0" collide, as in Flyway.
    let mut slots: BTreeMap<Version, Slot> = BTreeMap::new();
    for (i, f) in found.iter().enumerate() {
        let slot = slots.entry(f.entry.version.normalized()).or_default();
        let (place, what, fix) = match f.entry.role {
            Role::Down => (&mut slot.down, "down migration for version", "remove one of them"),
            Role::Up | Role::Single => (&mut slot.up, "migration version", "rename one of them"),
        };
        match *place {
            Some(first) => diagnostics.push(Diagnostic::at(
                &f.path,
                1,
                1,
                format!("duplicate {what} {}: also defined by {}; {fix}", f.entry.version, found[first].path.display()),
            )),
            None => *place = Some(i),
        }
    }

    let mut migrations = Vec::with_capacity(slots.len());
    for slot in slots.into_values() {
        let mut down = slot.down;
        if let Some(d) = down
            && let Some(problem) = pairing_problem(&found[d], slot.up.map(|u| &found[u]))
        {
            diagnostics.push(Diagnostic::at(&found[d].path, 1, 1, problem));
            down = None;
        }
        let Some(u) = slot.up else { continue };
        let Some(up) = found[u].script.take() else {
            continue;
        };
        let down = down.and_then(|d| found[d].script.take());
        let entry = &found[u].entry;
        migrations.push(Migration {
            version: entry.version.clone(),
            name: entry.name.clone(),
            no_transaction: wants_no_transaction(&up.sql),
            up,
            down,
        });
    }
    migrations.sort_by(|a, b| a.version.cmp(&b.version));
    migrations
}

/// Why the down file `down` does not belong to the up file of its version, if it does not.
fn pairing_problem(down: &Found, up: Option<&Found>) -> Option<String> {
    let version = &down.entry.version;
    let file_name = |f: &Found| f.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    match (down.entry.layout, up) {
        (Layout::Flyway, None) => Some(format!(
            "undo migration for version {version} has no versioned migration \
             V{version}__<name>.sql; add it or remove this file"
        )),
        (_, None) => {
            let down_name = file_name(down);
            let stem = down_name.strip_suffix(".down.sql").unwrap_or(&down_name);
            let expected = down.path.with_file_name(format!("{stem}.up.sql"));
            Some(format!(
                "down migration for version {version} has no matching up migration {}; \
                 add it or remove this file",
                expected.display()
            ))
        }
        (_, Some(up)) if up.entry.role == Role::Single => {
            let up_name = file_name(up);
            let stem = up_name.strip_suffix(".sql").unwrap_or(&up_name);
            Some(format!(
                "down migration for version {version} pairs with {}, which is not reversible; \
                 rename that file to {stem}.up.sql",
                up.path.display()
            ))
        }
        // Flyway matches undo files by version only; sqlx pairs share the whole name.
        (Layout::Sqlx, Some(up)) if up.entry.name != down.entry.name => Some(format!(
            "down migration for version {version} is named `{}` but its up migration {} is \
             named `{}`; give both files the same name",
            down.entry.name,
            up.path.display(),
            up.entry.name
        )),
        _ => None,
    }
}

/// Whether the marker line appears before the first SQL statement, i.e. among the leading
/// blank lines, `--` comments and `/* */` comments (a marker inside a block comment does not
/// count).
fn wants_no_transaction(sql: &str) -> bool {
    let mut rest = sql.strip_prefix('\u{feff}').unwrap_or(sql);
    loop {
        rest = rest.trim_start();
        if let Some(comment) = rest.strip_prefix("--") {
            let (line, tail) = comment.split_once('\n').unwrap_or((comment, ""));
            if line.trim() == NO_TRANSACTION_MARKER {
                return true;
            }
            rest = tail;
        } else if let Some(comment) = rest.strip_prefix("/*") {
            match comment.find("*/") {
                Some(end) => rest = &comment[end + 2..],
                None => return false,
            }
        } else {
            return false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tempfile::TempDir;

    /// A temporary migrations directory holding `files` (paths relative to it; parent
    /// directories are created; a path ending in '/' is an empty directory).
    fn dir_with(files: &[(&str, &[u8])]) -> TempDir {
        let tmp = TempDir::new().unwrap();
        for (name, content) in files {
            let path = tmp.path().join(name);
            if name.ends_with('/') {
                fs::create_dir_all(&path).unwrap();
            } else {
                fs::create_dir_all(path.parent().unwrap()).unwrap();
                fs::write(&path, content).unwrap();
            }
        }
        tmp
    }

    fn v(text: &str) -> Version {
        text.parse().unwrap()
    }

    /// `(file relative to root, line, col, message)` of each diagnostic.
    fn described(root: &Path, diagnostics: &[Diagnostic]) -> Vec<(String, usize, usize, String)> {
        diagnostics
            .iter()
            .map(|d| {
                let file = d.file.strip_prefix(root).unwrap_or(&d.file);
                (file.display().to_string(), d.line.unwrap(), d.col.unwrap(), d.message.clone())
            })
            .collect()
    }

    /// The only diagnostic of scanning `tmp`: (file relative to it, message).
    fn single_problem(tmp: &TempDir) -> (String, String) {
        let (_, diagnostics) = MigrationSet::scan(tmp.path());
        let mut all = described(tmp.path(), &diagnostics);
        assert_eq!(all.len(), 1, "expected one problem, got {all:#?}");
        let (file, line, col, message) = all.remove(0);
        assert_eq!((line, col), (1, 1), "{message}");
        (file, message)
    }

    fn versions(set: &MigrationSet) -> Vec<String> {
        set.migrations.iter().map(|m| m.version.to_string()).collect()
    }

    const CLAIMS: &str = "CREATE TABLE IF NOT EXISTS claims (id bigint PRIMARY KEY);\n";
    /// `printf 'CREATE TABLE IF NOT EXISTS claims (id bigint PRIMARY KEY);\n' | sha256sum`
    const CLAIMS_SHA256: &str = "acfe96b91d62868f9a62a8da675a073ae0bc1cd4fb0c0506c9972ea8f6739014";
    /// SHA-256 of "abc" (FIPS 180-2, appendix B.1).
    const ABC_SHA256: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    #[test]
    fn sqlx_files_parse_with_name_sql_and_checksum() {
        let tmp = dir_with(&[("0001_create_claims.sql", CLAIMS.as_bytes()), ("0002_abc.sql", b"abc")]);
        let (set, diagnostics) = MigrationSet::scan(tmp.path());
        assert!(diagnostics.is_empty(), "{diagnostics:#?}");
        assert_eq!(set.dir, tmp.path());
        assert_eq!(set.layout, Some(Layout::Sqlx));
        assert_eq!(versions(&set), ["1", "2"]);
        let first = &set.migrations[0];
        assert_eq!(first.name, "create_claims");
        assert_eq!(first.up.path, tmp.path().join("0001_create_claims.sql"));
        assert_eq!(first.up.sql, CLAIMS);
        assert_eq!(first.up.checksum, CLAIMS_SHA256);
        assert_eq!(first.down, None);
        assert!(!first.no_transaction);
        assert_eq!(set.migrations[1].up.checksum, ABC_SHA256);
    }

    #[test]
    fn checksum_covers_bytes_exactly() {
        // Line endings are part of the checksum: converting a file to CRLF is a change.
        let tmp = dir_with(&[("1_a.sql", b"abc"), ("2_b.sql", b"abc\r\n")]);
        let set = MigrationSet::load(tmp.path()).unwrap();
        assert_eq!(set.migrations[0].up.checksum, ABC_SHA256);
        assert_ne!(set.migrations[1].up.checksum, ABC_SHA256);
        assert_eq!(set.migrations[1].up.checksum.len(), 64);
        assert!(set.migrations[1].up.checksum.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')));
    }

    #[test]
    fn sqlx_reversible_pairs_and_irreversible_up() {
        let tmp = dir_with(&[
            ("0001_claims.up.sql", CLAIMS.as_bytes()),
            ("0001_claims.down.sql", b"DROP TABLE claims;\n"),
            ("0002_seed.up.sql", b"INSERT INTO claims VALUES (1);\n"),
        ]);
        let set = MigrationSet::load(tmp.path()).unwrap();
        assert_eq!(versions(&set), ["1", "2"]);
        let first = &set.migrations[0];
        assert_eq!((first.name.as_str(), first.up.sql.as_str()), ("claims", CLAIMS));
        let down = first.down.as_ref().expect("down script");
        assert_eq!(down.path, tmp.path().join("0001_claims.down.sql"));
        assert_eq!(down.sql, "DROP TABLE claims;\n");
        assert_eq!(set.migrations[1].down, None);
    }

    #[test]
    fn flyway_versioned_and_undo_files() {
        let tmp = dir_with(&[
            ("V1__init.sql", CLAIMS.as_bytes()),
            ("U1__init.sql", b"DROP TABLE claims;\n"),
            ("V1_10__later.sql", b"SELECT 2;\n"),
            ("V1.9__earlier.sql", b"SELECT 1;\n"),
        ]);
        let set = MigrationSet::load(tmp.path()).unwrap();
        assert_eq!(set.layout, Some(Layout::Flyway));
        assert_eq!(versions(&set), ["1", "1.9", "1.10"]);
        let names: Vec<&str> = set.migrations.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["init", "earlier", "later"]);
        assert_eq!(set.migrations[0].up.checksum, CLAIMS_SHA256);
        let undo = set.migrations[0].down.as_ref().expect("undo script");
        assert_eq!(undo.path, tmp.path().join("U1__init.sql"));
        assert_eq!(set.migrations[1].down, None);
    }

    #[test]
    fn prisma_directories_and_ignored_files() {
        let tmp = dir_with(&[
            ("20240101120000_init/migration.sql", CLAIMS.as_bytes()),
            ("20240301090000_add_index/migration.sql", b"CREATE INDEX claims_id ON claims (id);\n"),
            ("migration_lock.toml", b"provider = \"postgresql\"\n"),
            ("README.md", b"# migrations\n"),
            ("README", b"read me\n"),
            ("CHANGES.md", b"changes\n"),
            (".gitkeep", b""),
            (".cache/", b""),
        ]);
        let set = MigrationSet::load(tmp.path()).unwrap();
        assert_eq!(set.layout, Some(Layout::Prisma));
        assert_eq!(versions(&set), ["20240101120000", "20240301090000"]);
        let first = &set.migrations[0];
        assert_eq!(first.name, "init");
        assert_eq!(first.up.path, tmp.path().join("20240101120000_init/migration.sql"));
        assert_eq!(first.up.checksum, CLAIMS_SHA256);
        assert_eq!(set.migrations[1].name, "add_index");
    }

    #[test]
    fn numeric_ordering_and_lookup() {
        let tmp =
            dir_with(&[("10_ten.sql", b"SELECT 10;"), ("2_two.sql", b"SELECT 2;"), ("0001_one.sql", b"SELECT 1;")]);
        let set = MigrationSet::load(tmp.path()).unwrap();
        assert_eq!(versions(&set), ["1", "2", "10"]);
        assert_eq!(set.latest(), Some(&v("10")));
        assert_eq!(set.get(&v("2")).map(|m| m.name.as_str()), Some("two"));
        assert_eq!(set.get(&v("0002")).map(|m| m.name.as_str()), Some("two"));
        assert_eq!(set.get(&v("3")), None);
    }

    #[test]
    fn empty_directory_is_valid() {
        let tmp = dir_with(&[]);
        let set = MigrationSet::load(tmp.path()).unwrap();
        assert_eq!((set.layout, set.migrations.len(), set.latest()), (None, 0, None));
    }

    #[test]
    fn no_transaction_marker_in_leading_comments() {
        let tmp = dir_with(&[
            ("1_marked.sql", b"-- Builds the index without locking writes.\n\n-- tenantry:no-transaction\nCREATE INDEX CONCURRENTLY a ON t (x);\n"),
            ("2_late.sql", b"-- an index\nCREATE INDEX b ON t (y);\n-- tenantry:no-transaction\n"),
            ("3_plain.sql", b"CREATE INDEX c ON t (z);\n"),
            ("4_crlf.up.sql", b"/* header */\r\n--tenantry:no-transaction\r\nCREATE INDEX CONCURRENTLY d ON t (w);\r\n"),
            ("4_crlf.down.sql", b"-- tenantry:no-transaction\nDROP INDEX d;\n"),
        ]);
        let set = MigrationSet::load(tmp.path()).unwrap();
        let flags: Vec<bool> = set.migrations.iter().map(|m| m.no_transaction).collect();
        assert_eq!(flags, [true, false, false, true]);
    }

    #[test]
    fn no_transaction_detection_rules() {
        assert!(wants_no_transaction("-- tenantry:no-transaction"));
        assert!(wants_no_transaction("\u{feff}  \n\t-- tenantry:no-transaction  \nSELECT 1;"));
        assert!(wants_no_transaction("/* a\n b */ -- x\n-- tenantry:no-transaction\nSELECT 1;"));
        assert!(!wants_no_transaction("SELECT 1; -- tenantry:no-transaction\n"));
        assert!(!wants_no_transaction("SELECT 1;\n-- tenantry:no-transaction\n"));
        assert!(!wants_no_transaction("/* -- tenantry:no-transaction */ SELECT 1;"));
        assert!(!wants_no_transaction("/* unterminated\n-- tenantry:no-transaction\n"));
        assert!(!wants_no_transaction("-- tenantry:no-transaction please\n"));
        assert!(!wants_no_transaction("-- no-transaction\n"));
        assert!(!wants_no_transaction(""));
    }

    #[test]
    fn duplicate_version_names_both_files() {
        let tmp = dir_with(&[("0001_init.sql", b"SELECT 1;"), ("1_again.sql", b"SELECT 2;")]);
        let (file, message) = single_problem(&tmp);
        assert_eq!(file, "1_again.sql");
        let first = tmp.path().join("0001_init.sql");
        assert_eq!(
            message,
            format!("duplicate migration version 1: also defined by {}; rename one of them", first.display())
        );
        // The first file in name order is kept.
        let (set, _) = MigrationSet::scan(tmp.path());
        assert_eq!(set.migrations.len(), 1);
        assert_eq!(set.migrations[0].name, "init");
    }

    #[test]
    fn sqlx_file_and_its_up_file_are_duplicates() {
        let tmp = dir_with(&[("0003_b.sql", b"SELECT 1;"), ("0003_b.up.sql", b"SELECT 1;")]);
        let (file, message) = single_problem(&tmp);
        assert_eq!(file, "0003_b.up.sql");
        assert!(message.starts_with("duplicate migration version 3: also defined by "), "{message}");
        assert!(message.contains("0003_b.sql;"), "{message}");
    }

    #[test]
    fn flyway_equal_versions_with_different_text_are_duplicates() {
        let tmp = dir_with(&[
            ("V1_2__a.sql", b"SELECT 1;"),
            ("V1.2__b.sql", b"SELECT 1;"),
            ("V3__c.sql", b""),
            ("V3.0__d.sql", b""),
        ]);
        let (_, diagnostics) = MigrationSet::scan(tmp.path());
        let described = described(tmp.path(), &diagnostics);
        let files: Vec<&str> = described.iter().map(|d| d.0.as_str()).collect();
        // '.' sorts before '_', so the dotted spelling comes first and is kept.
        assert_eq!(files, ["V1_2__a.sql", "V3__c.sql"]);
        assert!(described[0].3.starts_with("duplicate migration version 1.2: also defined by "));
        assert!(described[0].3.ends_with("V1.2__b.sql; rename one of them"));
        assert!(described[1].3.starts_with("duplicate migration version 3: also defined by "));
        assert!(described[1].3.ends_with("V3.0__d.sql; rename one of them"));
    }

    #[test]
    fn duplicate_down_files() {
        let tmp = dir_with(&[
            ("0001_a.up.sql", b"SELECT 1;"),
            ("0001_a.down.sql", b"SELECT 1;"),
            ("1_a.down.sql", b"SELECT 1;"),
        ]);
        let (file, message) = single_problem(&tmp);
        assert_eq!(file, "1_a.down.sql");
        assert!(message.starts_with("duplicate down migration for version 1: also defined by "), "{message}");
        assert!(message.ends_with("0001_a.down.sql; remove one of them"), "{message}");
    }

    #[test]
    fn malformed_version_is_reported_at_the_file() {
        let tmp = dir_with(&[("0001_ok.sql", b"SELECT 1;"), ("99999999999999999999_big.sql", b"SELECT 1;")]);
        let (file, message) = single_problem(&tmp);
        assert_eq!(file, "99999999999999999999_big.sql");
        assert!(
            message.starts_with(
                "malformed version `99999999999999999999`: component 99999999999999999999 does not fit in 64 bits;"
            ),
            "{message}"
        );
    }

    #[test]
    fn file_matching_no_layout() {
        let tmp = dir_with(&[("0001_init.sql", b"SELECT 1;"), ("notes.txt", b"todo"), ("old/", b"")]);
        let (_, diagnostics) = MigrationSet::scan(tmp.path());
        let expected = "file name matches no migration layout (expected <version>_<name>.sql, \
                        V<version>__<name>.sql or <timestamp>_<name>/migration.sql)";
        assert_eq!(
            described(tmp.path(), &diagnostics),
            [("notes.txt".to_string(), 1, 1, expected.to_string()), ("old".to_string(), 1, 1, expected.to_string()),]
        );
    }

    #[test]
    fn orphan_down_file() {
        let tmp = dir_with(&[
            ("0001_init.up.sql", b"SELECT 1;"),
            ("0001_init.down.sql", b"SELECT 1;"),
            ("0002_x.down.sql", b"SELECT 1;"),
        ]);
        let (file, message) = single_problem(&tmp);
        assert_eq!(file, "0002_x.down.sql");
        assert_eq!(
            message,
            format!(
                "down migration for version 2 has no matching up migration {}; add it or remove this file",
                tmp.path().join("0002_x.up.sql").display()
            )
        );
        let (set, _) = MigrationSet::scan(tmp.path());
        assert_eq!(versions(&set), ["1"]);
        assert!(set.migrations[0].down.is_some());
    }

    #[test]
    fn down_file_next_to_a_plain_sqlx_file() {
        let tmp = dir_with(&[("0001_init.sql", b"SELECT 1;"), ("0001_init.down.sql", b"SELECT 1;")]);
        let (file, message) = single_problem(&tmp);
        assert_eq!(file, "0001_init.down.sql");
        assert_eq!(
            message,
            format!(
                "down migration for version 1 pairs with {}, which is not reversible; rename that file to 0001_init.up.sql",
                tmp.path().join("0001_init.sql").display()
            )
        );
    }

    #[test]
    fn down_file_with_another_name() {
        let tmp = dir_with(&[("0001_init.up.sql", b"SELECT 1;"), ("0001_setup.down.sql", b"SELECT 1;")]);
        let (file, message) = single_problem(&tmp);
        assert_eq!(file, "0001_setup.down.sql");
        assert!(
            message.starts_with("down migration for version 1 is named `setup` but its up migration "),
            "{message}"
        );
        assert!(message.ends_with("0001_init.up.sql is named `init`; give both files the same name"), "{message}");
    }

    #[test]
    fn orphan_flyway_undo_file() {
        let tmp = dir_with(&[("V1__init.sql", b"SELECT 1;"), ("U1_2__x.sql", b"SELECT 1;")]);
        let (file, message) = single_problem(&tmp);
        assert_eq!(file, "U1_2__x.sql");
        assert_eq!(
            message,
            "undo migration for version 1.2 has no versioned migration V1.2__<name>.sql; add it or remove this file"
        );
    }

    #[test]
    fn mixed_layouts_name_both_layouts_and_a_file_of_each() {
        let tmp = dir_with(&[
            ("0001_init.sql", b"SELECT 1;"),
            ("V2__more.sql", b"SELECT 2;"),
            ("V3__most.sql", b"SELECT 3;"),
            ("20240101120000_p/migration.sql", b"SELECT 4;"),
        ]);
        let (set, diagnostics) = MigrationSet::scan(tmp.path());
        // Flyway has the most files, so the set is Flyway and the others are reported.
        assert_eq!(set.layout, Some(Layout::Flyway));
        assert_eq!(versions(&set), ["2", "3"]);
        let v2 = tmp.path().join("V2__more.sql");
        assert_eq!(
            described(tmp.path(), &diagnostics),
            [
                (
                    "0001_init.sql".to_string(),
                    1,
                    1,
                    format!(
                        "mixed migration layouts: this is a sqlx file but {} is a flyway file; keep one layout per directory (1 sqlx file not loaded)",
                        v2.display()
                    )
                ),
                (
                    "20240101120000_p/migration.sql".to_string(),
                    1,
                    1,
                    format!(
                        "mixed migration layouts: this is a prisma file but {} is a flyway file; keep one layout per directory (1 prisma file not loaded)",
                        v2.display()
                    )
                ),
            ]
        );
    }

    #[test]
    fn mixed_layouts_tie_goes_to_the_first_file() {
        let tmp = dir_with(&[("0001_init.sql", b"SELECT 1;"), ("V2__more.sql", b"SELECT 2;")]);
        let (file, message) = single_problem(&tmp);
        assert_eq!(file, "V2__more.sql");
        assert_eq!(
            message,
            format!(
                "mixed migration layouts: this is a flyway file but {} is a sqlx file; keep one layout per directory (1 flyway file not loaded)",
                tmp.path().join("0001_init.sql").display()
            )
        );
    }

    #[test]
    fn flyway_repeatable_is_not_supported() {
        let tmp = dir_with(&[("V1__init.sql", b"SELECT 1;"), ("R__views.sql", b"SELECT 1;")]);
        let (file, message) = single_problem(&tmp);
        assert_eq!(file, "R__views.sql");
        assert!(message.starts_with("repeatable flyway migrations (R__<name>.sql) are not supported;"), "{message}");
    }

    #[test]
    fn prisma_directory_without_migration_sql() {
        let tmp = dir_with(&[
            ("20240101120000_init/migration.sql", b"SELECT 1;"),
            ("20240102120000_empty/notes.sql", b"SELECT 1;"),
        ]);
        let (file, message) = single_problem(&tmp);
        assert_eq!(file, "20240102120000_empty");
        assert_eq!(message, "prisma migration directory has no migration.sql; add it or remove the directory");
    }

    #[test]
    fn missing_directory() {
        let tmp = dir_with(&[]);
        let missing = tmp.path().join("nope");
        let (set, diagnostics) = MigrationSet::scan(&missing);
        assert_eq!(set.migrations.len(), 0);
        assert_eq!(diagnostics, [Diagnostic::at(&missing, 1, 1, "migrations directory does not exist")]);
    }

    #[test]
    fn directory_path_that_is_a_file() {
        let tmp = dir_with(&[("file.sql", b"")]);
        let file = tmp.path().join("file.sql");
        let (_, diagnostics) = MigrationSet::scan(&file);
        assert_eq!(diagnostics, [Diagnostic::at(&file, 1, 1, "cannot read: not a directory")]);
    }

    #[test]
    fn non_utf8_file_is_reported_at_the_bad_byte() {
        let tmp = dir_with(&[("0001_ok.sql", b"SELECT 1;"), ("0002_latin1.sql", b"-- caf\xe9\nSELECT 1;")]);
        let (set, diagnostics) = MigrationSet::scan(tmp.path());
        assert_eq!(
            described(tmp.path(), &diagnostics),
            [(
                "0002_latin1.sql".to_string(),
                1,
                7,
                "file is not valid UTF-8 (invalid byte at offset 6); save it as UTF-8".to_string()
            )]
        );
        assert_eq!(versions(&set), ["1"]);
    }

    #[cfg(unix)]
    #[test]
    fn non_utf8_file_name() {
        use std::os::unix::ffi::OsStrExt;
        let tmp = dir_with(&[("0001_ok.sql", b"SELECT 1;")]);
        let bad = tmp.path().join(std::ffi::OsStr::from_bytes(b"0002_caf\xe9.sql"));
        fs::write(&bad, "SELECT 2;").unwrap();
        let (_, diagnostics) = MigrationSet::scan(tmp.path());
        assert_eq!(diagnostics, [Diagnostic::at(&bad, 1, 1, "file name is not valid UTF-8; rename it")]);
    }

    #[test]
    fn file_over_the_size_limit() {
        let tmp = dir_with(&[("0001_small.sql", b"SELECT 1;"), ("0002_big.sql", b"SELECT 12345;")]);
        let (set, diagnostics) = scan_with_limit(tmp.path(), 9);
        assert_eq!(
            described(tmp.path(), &diagnostics),
            [(
                "0002_big.sql".to_string(),
                1,
                1,
                "file is larger than 9 bytes, the limit for one migration; split it into several migrations"
                    .to_string()
            )]
        );
        assert_eq!(versions(&set), ["1"]);
    }

    #[test]
    fn every_problem_is_reported_and_good_migrations_kept() {
        let tmp = dir_with(&[
            ("0001_init.sql", b"SELECT 1;"),
            ("0002_x.down.sql", b"SELECT 1;"),
            ("0003_ok.sql", b"SELECT 3;"),
            ("1_again.sql", b"SELECT 1;"),
            ("1x_bad.sql", b"SELECT 1;"),
            ("notes.txt", b""),
        ]);
        let (set, diagnostics) = MigrationSet::scan(tmp.path());
        let files: Vec<String> = described(tmp.path(), &diagnostics).into_iter().map(|d| d.0).collect();
        assert_eq!(files, ["0002_x.down.sql", "1_again.sql", "1x_bad.sql", "notes.txt"]);
        assert_eq!(versions(&set), ["1", "3"]);
    }

    #[test]
    fn load_fails_with_every_diagnostic_in_the_message() {
        let tmp = dir_with(&[("0001_init.sql", b"SELECT 1;"), ("1_again.sql", b"SELECT 1;"), ("notes.txt", b"")]);
        let err = MigrationSet::load(tmp.path()).unwrap_err();
        assert_eq!(err.diagnostics().len(), 2);
        let root = tmp.path().display();
        assert_eq!(
            err.to_string(),
            format!(
                "2 problems in migrations directory {root}:\n\
                 {root}/1_again.sql:1:1: duplicate migration version 1: also defined by {root}/0001_init.sql; rename one of them\n\
                 {root}/notes.txt:1:1: {}",
                layout::NO_LAYOUT
            )
        );
        let missing = tmp.path().join("nope");
        let err = MigrationSet::load(&missing).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "1 problem in migrations directory {0}:\n{0}:1:1: migrations directory does not exist",
                missing.display()
            )
        );
    }

    #[test]
    fn set_serializes_versions_as_text() {
        let tmp = dir_with(&[("V1_2__x.sql", b"abc")]);
        let set = MigrationSet::load(tmp.path()).unwrap();
        let json = serde_json::to_value(&set).unwrap();
        assert_eq!(json["layout"], "flyway");
        assert_eq!(json["migrations"][0]["version"], "1.2");
        assert_eq!(json["migrations"][0]["up"]["checksum"], ABC_SHA256);
    }

    /// The fixtures under `tests/fixtures/migrations/` that integration tests rely on produce
    /// exactly these diagnostics (paths relative to the fixture directory).
    #[test]
    fn repository_fixtures_produce_the_documented_diagnostics() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/migrations");
        let check = |name: &str| {
            let dir = root.join(name);
            let (set, diagnostics) = MigrationSet::scan(&dir);
            let described = described(&dir, &diagnostics)
                .into_iter()
                .map(|(file, line, col, message)| format!("{file}:{line}:{col}: {message}"))
                .collect::<Vec<_>>();
            (set, described, dir)
        };

        for (name, layout, expected) in [
            ("sqlx_reversible", Layout::Sqlx, &["1", "2", "3"][..]),
            ("flyway", Layout::Flyway, &["1", "1.1", "2"][..]),
            ("prisma", Layout::Prisma, &["20240101120000", "20240215093000", "20240301170000"][..]),
        ] {
            let (set, described, _) = check(name);
            assert_eq!(described, Vec::<String>::new(), "{name}");
            assert_eq!(set.layout, Some(layout), "{name}");
            assert_eq!(versions(&set), expected, "{name}");
        }
        let (set, _, _) = check("sqlx_reversible");
        assert!(set.migrations.iter().all(|m| m.down.is_some()));
        assert!(set.migrations[2].no_transaction);
        let (set, _, _) = check("flyway");
        assert!(set.migrations[0].down.is_some());

        let (_, described, dir) = check("duplicate_version");
        assert_eq!(
            described,
            [format!(
                "1_again.sql:1:1: duplicate migration version 1: also defined by {}; rename one of them",
                dir.join("0001_init.sql").display()
            )]
        );
        let (_, described, _) = check("malformed_version");
        assert_eq!(
            described,
            [
                "1x_bad.sql:1:1: malformed version `1x`: `x` is not a digit; a sqlx version is decimal digits, expected <version>_<name>.sql, e.g. 0001_init.sql"
            ]
        );
        let (_, described, _) = check("no_layout");
        assert_eq!(described, [format!("notes.txt:1:1: {}", layout::NO_LAYOUT)]);
        let (_, described, dir) = check("mixed_layouts");
        assert_eq!(
            described,
            [format!(
                "V2__more.sql:1:1: mixed migration layouts: this is a flyway file but {} is a sqlx file; keep one layout per directory (1 flyway file not loaded)",
                dir.join("0001_init.sql").display()
            )]
        );
        let (_, described, dir) = check("orphan_down");
        assert_eq!(
            described,
            [format!(
                "0002_x.down.sql:1:1: down migration for version 2 has no matching up migration {}; add it or remove this file",
                dir.join("0002_x.up.sql").display()
            )]
        );
    }
}
