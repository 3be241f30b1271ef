//! The target of a command: `--database-url`, else `DATABASE_URL`, and the replicas that the
//! environment configures, which it must not be.

use routing_core::{Error, Migrator, MigratorBuilder};

use crate::cli::Options;
use crate::error::CliError;

/// The target, validated, and the replicas to refuse.
pub(crate) struct Target {
    migrator: MigratorBuilder,
    /// The variables that configured the replicas, for messages.
    replicas_configured_by: &'static str,
}

impl Target {
    /// Reads the target (`--database-url`, else `DATABASE_URL`) and the replica variables with
    /// the rules of `RoutedPool::from_env`, and validates every URL. Connects to nothing.
    pub(crate) fn resolve(
        options: &Options,
        vars: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Target, CliError> {
        let url = options
            .database_url
            .clone()
            .or_else(|| vars("DATABASE_URL"))
            .filter(|url| !url.trim().is_empty())
            .ok_or(CliError::MissingDatabaseUrl)?;
        let lookup = |name: &str| {
            if name == "DATABASE_URL" {
                Some(url.clone())
            } else {
                vars(name)
            }
        };
        let migrator = MigratorBuilder::from_vars(lookup).map_err(CliError::Config)?;
        let by_url = vars("DATABASE_READ_REPLICA_URL").is_some_and(|list| !list.trim().is_empty());
        Ok(Target {
            migrator,
            replicas_configured_by: if by_url {
                "ENABLE_READ_REPLICA=1 and DATABASE_READ_REPLICA_URL"
            } else {
                "ENABLE_READ_REPLICA=1 and POSTGRES_READ_REPLICA_HOST/_PORT/_DB"
            },
        })
    }

    /// Refuses a target that designates the same server as a configured replica, before
    /// connecting; then connects and refuses a standby.
    pub(crate) async fn connect(self) -> Result<Migrator, CliError> {
        match self.migrator.connect().await {
            Ok(migrator) => Ok(migrator),
            Err(Error::TargetIsReplica {
                url,
                replica_index,
                replica,
            }) => Err(CliError::TargetIsReplica {
                url,
                index: replica_index,
                replica,
                configured_by: self.replicas_configured_by,
            }),
            Err(Error::PrimaryIsStandby { url }) => Err(CliError::TargetIsStandby { url }),
            // `resolve` validated the URLs already; keep the classification anyway.
            Err(error @ Error::Build(_)) => Err(CliError::Config(error)),
            Err(source) => Err(CliError::Database {
                context: "cannot reach the primary",
                source,
            }),
        }
    }
}
