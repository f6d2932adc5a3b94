//! Reading a service's migrations directory (sqlx, Flyway or Prisma layout) into a checked, version-sorted set of scripts with checksums.
//!
//! [`MigrationSet::scan`] reports every problem of a directory as a
//! [`Diagnostic`](crate::diagnostic::Diagnostic) (for `validate`); [`MigrationSet::load`] is for
//! callers that must not proceed with a partly understood directory.
//!
//! - `version.rs`: [`Version`], numeric and dotted, the history table's key.
//! - `layout.rs`: [`Layout`] and what a file or directory name means in each layout.
//! - `directory.rs`: scanning, reading scripts once, pairing up/down files, duplicates.

mod directory;
mod layout;
mod version;

pub use directory::{MAX_SCRIPT_BYTES, Migration, MigrationSet, MigrationsError, Script};
pub use layout::Layout;
pub use version::{Version, VersionError};
