//! The migration directory, read before connecting.

use std::io;
use std::path::{Path, PathBuf};

use diesel::migration::{Migration, MigrationSource};
use diesel::pg::Pg;
use diesel_migrations::{FileBasedMigrations, MigrationError};

use crate::error::CliError;

/// The migrations of a directory, checked and sorted.
pub(crate) struct MigrationDir {
    pub(crate) path: PathBuf,
    pub(crate) source: FileBasedMigrations,
    /// `(version, name)` of every migration, oldest first.
    pub(crate) migrations: Vec<(String, String)>,
}

impl MigrationDir {
    /// Reads the directory at `path`: it must exist and hold only migrations.
    pub(crate) fn load(path: &Path) -> Result<MigrationDir, CliError> {
        let invalid = |reason: String| CliError::MigrationDir {
            dir: path.to_owned(),
            reason,
        };
        match std::fs::metadata(path) {
            Ok(metadata) if metadata.is_dir() => {}
            Ok(_) => return Err(invalid("it is not a directory".to_owned())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(invalid("it does not exist".to_owned()));
            }
            Err(e) => return Err(invalid(format!("cannot read it: {e}"))),
        }
        let source = FileBasedMigrations::from_path(path).map_err(|e| invalid(describe(&e)))?;
        let mut migrations = MigrationSource::<Pg>::migrations(&source)
            .map_err(|e| match e.downcast_ref::<MigrationError>() {
                Some(e) => invalid(describe(e)),
                None => invalid(e.to_string()),
            })?
            .iter()
            .map(|m| (m.name().version().to_string(), m.name().to_string()))
            .collect::<Vec<_>>();
        migrations.sort();
        Ok(MigrationDir {
            path: path.to_owned(),
            source,
            migrations,
        })
    }

    /// The name of the migration with `version`.
    pub(crate) fn name_of(&self, version: &str) -> Option<&str> {
        self.migrations
            .iter()
            .find(|(v, _)| v == version)
            .map(|(_, name)| name.as_str())
    }

    /// The migration `name` alone: `run_pending` of it applies that migration only.
    pub(crate) fn only(&self, name: &str) -> OnlyMigration {
        OnlyMigration {
            source: self.source.clone(),
            name: name.to_owned(),
        }
    }
}

fn describe(error: &MigrationError) -> String {
    match error {
        MigrationError::UnknownMigrationFormat(path) => format!(
            "{} is not a migration: each subdirectory must be named <version>_<name> and hold up.sql (and down.sql to revert)",
            path.display()
        ),
        other => {
            let text = other.to_string();
            let mut chars = text.chars();
            match chars.next() {
                Some(first) => first.to_lowercase().chain(chars).collect(),
                None => text,
            }
        }
    }
}

/// One migration of a directory, by name.
pub(crate) struct OnlyMigration {
    source: FileBasedMigrations,
    name: String,
}

impl MigrationSource<Pg> for OnlyMigration {
    fn migrations(&self) -> diesel::migration::Result<Vec<Box<dyn Migration<Pg>>>> {
        Ok(MigrationSource::<Pg>::migrations(&self.source)?
            .into_iter()
            .filter(|migration| migration.name().to_string() == self.name)
            .collect())
    }
}
