//! Why a command failed, and the exit code for it.

use std::io;
use std::path::PathBuf;

use routing_core::{Error, RedactedUrl};

/// Exit code: success.
pub(crate) const EXIT_SUCCESS: i32 = 0;
/// Exit code: a migration or database operation failed.
pub(crate) const EXIT_FAILURE: i32 = 1;
/// Exit code: bad usage or configuration (clap's own usage errors exit with 2 too).
pub(crate) const EXIT_USAGE: i32 = 2;
/// Exit code: refused, because the target is a configured read replica or a standby.
pub(crate) const EXIT_REFUSED: i32 = 3;

/// Why a command failed; each kind has its [exit code](CliError::exit_code). Messages are
/// lowercase, say what was being done, and never contain a password.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CliError {
    /// Neither `--database-url` nor `DATABASE_URL` is set (or it is empty).
    #[error(
        "no database URL: pass --database-url or set the DATABASE_URL environment variable to the primary's URL"
    )]
    MissingDatabaseUrl,

    /// The environment or a URL is invalid.
    #[error("invalid configuration: {0}")]
    Config(#[source] Error),

    /// The migration directory is missing or holds something that is not a migration.
    #[error("invalid migration directory {}: {reason}", dir.display())]
    MigrationDir {
        /// The directory, as given.
        dir: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// The target designates the same server as a configured read replica.
    #[error(
        "refusing to migrate {url}: it designates the same server as read replica {index} ({replica}) configured by {configured_by}; migrations run on the primary only: point --database-url or DATABASE_URL at the primary"
    )]
    TargetIsReplica {
        /// The target, password redacted.
        url: RedactedUrl,
        /// The replica's index in the configuration.
        index: usize,
        /// The replica, password redacted.
        replica: RedactedUrl,
        /// The variables that configured it.
        configured_by: &'static str,
    },

    /// The target is in recovery: a standby.
    #[error(
        "refusing to migrate {url}: the server is in recovery (pg_is_in_recovery() is true), it is a standby; nothing was changed: point --database-url or DATABASE_URL at the primary"
    )]
    TargetIsStandby {
        /// The target, password redacted.
        url: RedactedUrl,
    },

    /// A database operation other than a migration failed: connecting, reading the applied
    /// migrations.
    #[error("{context}: {source}")]
    Database {
        /// What was being done.
        context: &'static str,
        /// routing-core's error.
        #[source]
        source: Error,
    },

    /// Applying or reverting a migration failed.
    #[error("failed to {action} migration {name} on {url}: {reason}")]
    Migration {
        /// `apply` or `revert`.
        action: &'static str,
        /// The migration's name.
        name: String,
        /// The primary, password redacted.
        url: RedactedUrl,
        /// Why.
        reason: String,
    },

    /// `revert` or `redo` found no applied migration.
    #[error("nothing to revert: no migration has been applied on {url}")]
    NothingApplied {
        /// The primary, password redacted.
        url: RedactedUrl,
    },

    /// The most recently applied migration is not in the migration directory.
    #[error(
        "cannot revert migration version {version}: it is applied on {url} but not in the migration directory {}",
        dir.display()
    )]
    NotInDirectory {
        /// The applied version.
        version: String,
        /// The primary, password redacted.
        url: RedactedUrl,
        /// The migration directory.
        dir: PathBuf,
    },

    /// Writing the output failed.
    #[error("failed to write the output: {0}")]
    Output(#[source] io::Error),
}

impl CliError {
    /// The process exit code for this error: 1 a migration or database operation failed, 2 bad
    /// usage or configuration, 3 refused (a replica or a standby).
    pub(crate) fn exit_code(&self) -> i32 {
        match self {
            CliError::MissingDatabaseUrl | CliError::Config(_) | CliError::MigrationDir { .. } => {
                EXIT_USAGE
            }
            CliError::TargetIsReplica { .. } | CliError::TargetIsStandby { .. } => EXIT_REFUSED,
            CliError::Database { .. }
            | CliError::Migration { .. }
            | CliError::NothingApplied { .. }
            | CliError::NotInDirectory { .. }
            | CliError::Output(_) => EXIT_FAILURE,
        }
    }

    /// The error for a failed apply or revert of `name`; diesel's own "Failed to run NAME with: "
    /// prefix is dropped, the message names the migration already.
    pub(crate) fn migration(
        action: &'static str,
        name: &str,
        url: &RedactedUrl,
        error: Error,
    ) -> CliError {
        let reason = match error {
            Error::Migration { source, .. } => {
                let reason = source.to_string();
                let prefix = format!("Failed to run {name} with: ");
                reason
                    .strip_prefix(&prefix)
                    .map(str::to_owned)
                    .unwrap_or(reason)
            }
            other => other.to_string(),
        };
        CliError::Migration {
            action,
            name: name.to_owned(),
            url: url.clone(),
            reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes() {
        assert_eq!(CliError::MissingDatabaseUrl.exit_code(), 2);
        let url = RedactedUrl::new("postgres://u:p@h/d");
        assert_eq!(
            CliError::TargetIsStandby { url: url.clone() }.exit_code(),
            3
        );
        assert_eq!(CliError::NothingApplied { url }.exit_code(), 1);
    }
}
