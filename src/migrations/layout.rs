//! The three migration directory layouts (sqlx, Flyway, Prisma) and what one directory entry's name says: which layout, version, name and role, or why it is ignored or rejected.

use std::fmt;

use super::version::{Version, VersionError};

/// The tool whose file naming a migrations directory follows. Decided per file; a directory
/// must use one layout throughout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// `<version>_<name>.sql`, or the reversible pair `.up.sql` + `.down.sql`.
    Sqlx,
    /// `V<version>__<name>.sql`, with `U<version>__<name>.sql` as its undo.
    Flyway,
    /// `<timestamp>_<name>/migration.sql`.
    Prisma,
}

impl Layout {
    /// The naming pattern, for messages that tell the operator what was expected.
    pub fn pattern(self) -> &'static str {
        match self {
            Layout::Sqlx => "<version>_<name>.sql",
            Layout::Flyway => "V<version>__<name>.sql",
            Layout::Prisma => "<timestamp>_<name>/migration.sql",
        }
    }

    /// A valid example of [`pattern`](Self::pattern).
    pub fn example(self) -> &'static str {
        match self {
            Layout::Sqlx => "0001_init.sql",
            Layout::Flyway => "V1__init.sql",
            Layout::Prisma => "20240101120000_init/migration.sql",
        }
    }
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Layout::Sqlx => "sqlx",
            Layout::Flyway => "flyway",
            Layout::Prisma => "prisma",
        })
    }
}

/// The message for an entry that follows no layout at all.
pub(crate) const NO_LAYOUT: &str = "file name matches no migration layout (expected \
    <version>_<name>.sql, V<version>__<name>.sql or <timestamp>_<name>/migration.sql)";

/// What a file contributes to its version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// sqlx `<version>_<name>.sql`: an up migration that cannot have a down file.
    Single,
    /// sqlx `.up.sql`, Flyway `V`, Prisma `migration.sql`.
    Up,
    /// sqlx `.down.sql`, Flyway `U`.
    Down,
}

/// A directory entry whose name follows a layout. For Prisma the entry is the directory; the
/// caller still has to find `migration.sql` inside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EntryName {
    pub layout: Layout,
    pub version: Version,
    pub name: String,
    pub role: Role,
}

/// What one top-level entry of a migrations directory is, judged by its name alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Classified {
    /// Dot-files, READMEs, Markdown, Prisma's `migration_lock.toml`.
    Ignored,
    Migration(EntryName),
    /// The name is wrong; the message says what to do.
    Problem(String),
}

/// Classifies a top-level entry named `name`; `is_dir` tells files from directories, because
/// only Prisma uses directories and only the others use `.sql` files.
pub(crate) fn classify(name: &str, is_dir: bool) -> Classified {
    if is_ignored(name) {
        return Classified::Ignored;
    }
    if is_dir {
        // A directory named like a sqlx file is a mistake, not a Prisma migration.
        return if name.starts_with(|c: char| c.is_ascii_digit()) && !name.ends_with(".sql") {
            split_version_name(name, "_", Layout::Prisma, Role::Up)
        } else {
            Classified::Problem(NO_LAYOUT.to_owned())
        };
    }
    let Some(stem) = name.strip_suffix(".sql") else {
        return Classified::Problem(NO_LAYOUT.to_owned());
    };
    if stem.starts_with("R__") {
        return Classified::Problem(
            "repeatable flyway migrations (R__<name>.sql) are not supported; make it a \
             versioned migration V<version>__<name>.sql or remove it"
                .to_owned(),
        );
    }
    if let Some(rest) = stem.strip_prefix('V').or_else(|| stem.strip_prefix('U'))
        && (rest.starts_with(|c: char| c.is_ascii_digit()) || rest.starts_with("__"))
    {
        let role = if stem.starts_with('V') { Role::Up } else { Role::Down };
        return split_version_name(rest, "__", Layout::Flyway, role);
    }
    if stem.starts_with(|c: char| c.is_ascii_digit()) {
        let (stem, role) = if let Some(s) = stem.strip_suffix(".up") {
            (s, Role::Up)
        } else if let Some(s) = stem.strip_suffix(".down") {
            (s, Role::Down)
        } else {
            (stem, Role::Single)
        };
        return split_version_name(stem, "_", Layout::Sqlx, role);
    }
    Classified::Problem(NO_LAYOUT.to_owned())
}

/// Entries skipped everywhere: dot-files, READMEs, Markdown and Prisma's `migration_lock.toml`.
pub(crate) fn is_ignored(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    name.starts_with('.') || lower.starts_with("readme") || lower.ends_with(".md") || name == "migration_lock.toml"
}

/// Splits `<version><separator><name>` and checks both parts.
fn split_version_name(text: &str, separator: &str, layout: Layout, role: Role) -> Classified {
    let what = if layout == Layout::Prisma { "directory name" } else { "file name" };
    let expected = format!("expected {}, e.g. {}", layout.pattern(), layout.example());
    let Some((version_text, name)) = text.split_once(separator) else {
        return Classified::Problem(format!("malformed {what}: no `{separator}` between version and name; {expected}"));
    };
    let version = match parse_version(version_text, layout) {
        Ok(version) => version,
        Err(e) => {
            let kind = match layout {
                Layout::Sqlx => "a sqlx version is decimal digits",
                Layout::Flyway => "a flyway version is digits separated by `.` or `_`",
                Layout::Prisma => "a prisma timestamp is decimal digits",
            };
            return Classified::Problem(format!("malformed version `{version_text}`: {e}; {kind}, {expected}"));
        }
    };
    if name.is_empty() {
        return Classified::Problem(format!("malformed {what}: the name after version {version} is empty; {expected}"));
    }
    Classified::Migration(EntryName { layout, version, name: name.to_owned(), role })
}

fn parse_version(text: &str, layout: Layout) -> Result<Version, VersionError> {
    match layout {
        // Flyway writes `1_2` for 1.2; both separators mean the same.
        Layout::Flyway => text.replace('_', ".").parse(),
        // sqlx and Prisma versions are single integers: a dot is as wrong as a letter.
        Layout::Sqlx | Layout::Prisma => match text.chars().find(|c| !c.is_ascii_digit()) {
            Some(found) => Err(VersionError::NotDigit { found }),
            None => text.parse(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn migration(name: &str, is_dir: bool) -> EntryName {
        match classify(name, is_dir) {
            Classified::Migration(entry) => entry,
            other => panic!("{name}: expected a migration, got {other:?}"),
        }
    }

    fn problem(name: &str, is_dir: bool) -> String {
        match classify(name, is_dir) {
            Classified::Problem(message) => message,
            other => panic!("{name}: expected a problem, got {other:?}"),
        }
    }

    fn v(text: &str) -> Version {
        text.parse().unwrap()
    }

    #[test]
    fn sqlx_names_single_up_and_down() {
        let single = migration("0001_init.sql", false);
        assert_eq!(
            single,
            EntryName { layout: Layout::Sqlx, version: v("1"), name: "init".into(), role: Role::Single }
        );
        let up = migration("20_add_claims_index.up.sql", false);
        assert_eq!((up.version, up.name.as_str(), up.role), (v("20"), "add_claims_index", Role::Up));
        let down = migration("0020_add_claims_index.down.sql", false);
        assert_eq!((down.version, down.name.as_str(), down.role), (v("20"), "add_claims_index", Role::Down));
        // Only the first `_` separates the version.
        assert_eq!(migration("3_a_b_c.sql", false).name, "a_b_c");
    }

    #[test]
    fn flyway_names_versioned_and_undo() {
        let up = migration("V1__init.sql", false);
        assert_eq!((up.layout, up.version, up.name.as_str(), up.role), (Layout::Flyway, v("1"), "init", Role::Up));
        assert_eq!(migration("V1_2__x.sql", false).version, v("1.2"));
        assert_eq!(migration("V1.2__x.sql", false).version, v("1.2"));
        assert_eq!(migration("V01.10__x.sql", false).version.to_string(), "1.10");
        let undo = migration("U1.2__drop_x.sql", false);
        assert_eq!((undo.version, undo.name.as_str(), undo.role), (v("1.2"), "drop_x", Role::Down));
    }

    #[test]
    fn prisma_directories() {
        let entry = migration("20240101120000_init", true);
        assert_eq!(
            (entry.layout, entry.version.to_string(), entry.name.as_str(), entry.role),
            (Layout::Prisma, "20240101120000".to_string(), "init", Role::Up)
        );
        // A file with a Prisma-looking name is a sqlx file only if it ends in .sql.
        assert_eq!(problem("20240101120000_init", false), NO_LAYOUT);
        assert_eq!(problem("core", true), NO_LAYOUT);
        assert_eq!(problem("0001_init.sql", true), NO_LAYOUT);
    }

    #[test]
    fn ignored_entries() {
        for name in [".gitkeep", ".hidden.sql", "README", "README.txt", "readme.md", "NOTES.md", "migration_lock.toml"]
        {
            assert_eq!(classify(name, false), Classified::Ignored, "{name}");
        }
        assert_eq!(classify(".git", true), Classified::Ignored);
    }

    #[test]
    fn names_that_match_no_layout() {
        for name in ["notes.txt", "init.sql", "0001_init.SQL", "Vacuum.sql", "migration.sql", "0001_init.sql.bak"] {
            assert_eq!(problem(name, false), NO_LAYOUT, "{name}");
        }
        assert!(NO_LAYOUT.contains("V<version>__<name>.sql"));
    }

    #[test]
    fn malformed_versions() {
        assert_eq!(
            problem("1x_bad.sql", false),
            "malformed version `1x`: `x` is not a digit; a sqlx version is decimal digits, \
             expected <version>_<name>.sql, e.g. 0001_init.sql"
        );
        assert!(problem("1.2_x.sql", false).starts_with("malformed version `1.2`: `.` is not a digit;"));
        assert_eq!(
            problem("99999999999999999999_big.sql", false),
            "malformed version `99999999999999999999`: component 99999999999999999999 does not fit \
             in 64 bits; a sqlx version is decimal digits, expected <version>_<name>.sql, e.g. 0001_init.sql"
        );
        assert!(
            problem("V1.x__a.sql", false).starts_with("malformed version `1.x`: `x` is not a digit; a flyway version")
        );
        assert!(
            problem("V1..2__a.sql", false).starts_with("malformed version `1..2`: the version has an empty component")
        );
        assert!(problem("V__a.sql", false).starts_with("malformed version ``: the version is empty;"));
        assert!(
            problem("2024x_init", true)
                .starts_with("malformed version `2024x`: `x` is not a digit; a prisma timestamp")
        );
    }

    #[test]
    fn malformed_separators_and_empty_names() {
        assert_eq!(
            problem("1_.sql", false),
            "malformed file name: the name after version 1 is empty; expected <version>_<name>.sql, e.g. 0001_init.sql"
        );
        assert!(problem("0001_.up.sql", false).starts_with("malformed file name: the name after version 1 is empty"));
        assert_eq!(
            problem("V1__.sql", false),
            "malformed file name: the name after version 1 is empty; expected V<version>__<name>.sql, e.g. V1__init.sql"
        );
        assert_eq!(
            problem("0001.sql", false),
            "malformed file name: no `_` between version and name; expected <version>_<name>.sql, e.g. 0001_init.sql"
        );
        assert_eq!(
            problem("V1_init.sql", false),
            "malformed file name: no `__` between version and name; expected V<version>__<name>.sql, e.g. V1__init.sql"
        );
        assert!(
            problem("20240101_", true)
                .starts_with("malformed directory name: the name after version 20240101 is empty")
        );
    }

    #[test]
    fn flyway_repeatable_is_rejected() {
        assert_eq!(
            problem("R__refresh_views.sql", false),
            "repeatable flyway migrations (R__<name>.sql) are not supported; make it a versioned \
             migration V<version>__<name>.sql or remove it"
        );
    }

    #[test]
    fn layout_text_forms() {
        assert_eq!(Layout::Sqlx.to_string(), "sqlx");
        assert_eq!(Layout::Flyway.to_string(), "flyway");
        assert_eq!(Layout::Prisma.to_string(), "prisma");
        assert_eq!(serde_json::to_string(&Layout::Flyway).unwrap(), "\"flyway\"");
        assert_eq!(serde_json::from_str::<Layout>("\"prisma\"").unwrap(), Layout::Prisma);
    }
}
