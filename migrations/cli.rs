//! The `routing-migrate` command line: `diesel migration` for a primary with read replicas.
//!
//! [`run_cli`] is the whole program (parse, run, print, exit code); [`migrate`] runs one
//! [`Command`] with typed [`Options`]. Both read variables through a lookup function rather than
//! the process environment, so that callers and tests control what they see.
//!
//! Before connecting anywhere, the target URL is checked against the replicas that the
//! environment configures (the rules of `RoutedPool::from_env`): a target that designates the
//! same server as a replica is refused without connecting. The connection itself refuses a
//! standby (`pg_is_in_recovery()` true). See the crate docs for the exit codes.

use std::collections::HashSet;
use std::ffi::OsString;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};
use diesel::migration::{Migration, MigrationSource};
use diesel::pg::Pg;
use diesel_migrations::{FileBasedMigrations, MigrationError};
use routing_core::{Error, Migrator, RedactedUrl, RoutedPoolBuilder};
use tokio_postgres::config::Host;

/// Exit code: success.
pub const EXIT_SUCCESS: i32 = 0;
/// Exit code: a migration or database operation failed.
pub const EXIT_FAILURE: i32 = 1;
/// Exit code: bad usage or configuration (clap's own usage errors exit with 2 too).
pub const EXIT_USAGE: i32 = 2;
/// Exit code: refused, because the target is a configured read replica or a standby.
pub const EXIT_REFUSED: i32 = 3;

/// The text after the options in `--help`.
const AFTER_HELP: &str = "\
Environment:
  DATABASE_URL               the primary, when --database-url is not given
  ENABLE_READ_REPLICA        1: the replica variables below are in force; 0 or unset: ignored
  DATABASE_READ_REPLICA_URL  the replicas' URLs, comma-separated
  POSTGRES_READ_REPLICA_DB, _USER, _PASSWORD, _HOST, _PORT
                             one replica by parts, when DATABASE_READ_REPLICA_URL is unset

The replicas are read as RoutedPool::from_env reads them, only to refuse them: a target that
designates the same server as a configured replica (same host(s) and port(s), and the same
database when both name one) is refused before connecting. A target in recovery
(pg_is_in_recovery() is true) is refused once connected, before anything changes. Passwords
are never printed.

Exit codes:
  0  success
  1  a migration or database operation failed
  2  bad usage or configuration: arguments, a missing DATABASE_URL, an invalid URL, a missing
     or invalid migration directory, invalid replica variables
  3  refused: the target is a configured read replica, or a standby";

/// The whole command line.
#[derive(Debug, Parser)]
#[command(
    name = "routing-migrate",
    version,
    about = "Run diesel migrations on the primary of a PostgreSQL setup with read replicas, never on a replica",
    after_help = AFTER_HELP,
    disable_help_subcommand = true
)]
struct Cli {
    #[command(flatten)]
    options: Options,
    #[command(subcommand)]
    command: Command,
}

/// What to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Subcommand)]
pub enum Command {
    /// Apply every pending migration, oldest first
    Run,
    /// Revert the most recently applied migration
    Revert,
    /// Revert the most recently applied migration and apply it again (two steps: if applying
    /// fails, the migration stays reverted)
    Redo,
    /// List every migration of the directory, oldest first: `[X]` applied, `[ ]` pending
    #[command(
        about = "List every migration of the directory, oldest first: [X] applied, [ ] pending"
    )]
    List,
}

/// Where to migrate, and from which migrations.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct Options {
    /// The primary's URL [default: the DATABASE_URL environment variable]
    #[arg(long, value_name = "URL", global = true)]
    pub database_url: Option<String>,

    /// The directory of the migrations (one folder per migration, holding up.sql and down.sql),
    /// relative to the current directory
    #[arg(long, value_name = "DIR", default_value = "migrations", global = true)]
    pub migration_dir: PathBuf,
}

impl Default for Options {
    /// No URL (`DATABASE_URL` is used) and the directory `migrations`.
    fn default() -> Self {
        Options {
            database_url: None,
            migration_dir: PathBuf::from("migrations"),
        }
    }
}

/// Why a command failed; each kind has its [exit code](CliError::exit_code). Messages are
/// lowercase, say what was being done, and never contain a password.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CliError {
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
    pub fn exit_code(&self) -> i32 {
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
}

/// Runs the command line `args` (`args[0]` is the program name): parses it, runs the command,
/// prints to `out` (results, `--help`) and `err` (errors), and returns the exit code.
///
/// `vars` looks up environment variables (`|name| std::env::var(name).ok()` for the process's).
pub async fn run_cli<I, T>(
    args: I,
    vars: &dyn Fn(&str) -> Option<String>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(error) => {
            // Help and version go to `out` with 0, usage errors to `err` with 2. clap quotes
            // unexpected arguments, which may be URLs with a password.
            let text = redact_arguments(&error.render().to_string(), &args);
            // Nothing better to do if the terminal is gone.
            if error.use_stderr() {
                let _ = err.write_all(text.as_bytes()).and_then(|()| err.flush());
            } else {
                let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
            }
            return error.exit_code();
        }
    };
    let result = migrate(cli.command, &cli.options, vars, out).await;
    let flushed = out.flush().map_err(CliError::Output);
    match result.and(flushed) {
        Ok(()) => EXIT_SUCCESS,
        Err(error) => {
            let _ = writeln!(err, "error: {error}");
            let _ = err.flush();
            error.exit_code()
        }
    }
}

/// `text` with the passwords of the URLs among `args` (alone or after `--option=`) redacted.
fn redact_arguments(text: &str, args: &[OsString]) -> String {
    let mut text = text.to_owned();
    for arg in args.iter().filter_map(|arg| arg.to_str()) {
        let value = arg.split_once('=').map(|(_, value)| value);
        for candidate in std::iter::once(arg).chain(value) {
            let redacted = RedactedUrl::new(candidate);
            if !candidate.is_empty() && redacted.as_str() != candidate {
                text = text.replace(candidate, redacted.as_str());
            }
        }
    }
    text
}

/// Runs `command` against the primary named by `options` (else `DATABASE_URL` from `vars`),
/// with the migrations of `options.migration_dir`; prints one line per migration applied or
/// reverted (or the list) to `out`.
///
/// Checks everything it can before connecting: the URL, the replica variables, the migration
/// directory, and that the target is not a configured replica.
///
/// # Errors
///
/// A [`CliError`]; [`CliError::exit_code`] tells its exit code.
pub async fn migrate(
    command: Command,
    options: &Options,
    vars: &dyn Fn(&str) -> Option<String>,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let target = Target::resolve(options, vars)?;
    let dir = MigrationDir::load(&options.migration_dir)?;
    target.refuse_replicas()?;
    let mut migrator = match Migrator::connect(&target.url).await {
        Ok(migrator) => migrator,
        Err(Error::PrimaryIsStandby { url }) => return Err(CliError::TargetIsStandby { url }),
        // `Target::resolve` validated the URL already; keep the classification anyway.
        Err(error @ Error::Build(_)) => return Err(CliError::Config(error)),
        Err(source) => {
            return Err(CliError::Database {
                context: "cannot reach the primary",
                source,
            });
        }
    };
    let url = migrator.url().clone();
    match command {
        Command::Run => run(&mut migrator, &dir, &url, out).await,
        Command::Revert => revert(&mut migrator, &dir, &url, out).await.map(drop),
        Command::Redo => {
            let name = revert(&mut migrator, &dir, &url, out).await?;
            apply(&mut migrator, &dir, &url, &name, out).await
        }
        Command::List => list(&mut migrator, &dir, out).await,
    }
}

/// `run`: applies the pending migrations one by one, so that each is reported as it lands and a
/// failure names its migration.
async fn run(
    migrator: &mut Migrator,
    dir: &MigrationDir,
    url: &RedactedUrl,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let pending = migrator
        .pending(dir.source.clone())
        .await
        .map_err(|source| CliError::Database {
            context: "cannot read the applied migrations",
            source,
        })?;
    if pending.is_empty() {
        return writeln!(out, "no pending migrations").map_err(CliError::Output);
    }
    for name in pending {
        apply(migrator, dir, url, &name, out).await?;
    }
    Ok(())
}

/// Applies the migration `name` of `dir` if it is pending; prints what was applied.
async fn apply(
    migrator: &mut Migrator,
    dir: &MigrationDir,
    url: &RedactedUrl,
    name: &str,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let only = OnlyMigration {
        source: dir.source.clone(),
        name: name.to_owned(),
    };
    let applied = migrator
        .run_pending(only)
        .await
        .map_err(|error| migration_error("apply", name, url, error))?;
    for name in applied {
        writeln!(out, "applied {name}").map_err(CliError::Output)?;
        out.flush().map_err(CliError::Output)?;
    }
    Ok(())
}

/// Reverts the most recently applied migration; prints and returns its name.
async fn revert(
    migrator: &mut Migrator,
    dir: &MigrationDir,
    url: &RedactedUrl,
    out: &mut dyn Write,
) -> Result<String, CliError> {
    let applied = migrator
        .applied()
        .await
        .map_err(|source| CliError::Database {
            context: "cannot read the applied migrations",
            source,
        })?;
    let Some(last) = applied.first() else {
        return Err(CliError::NothingApplied { url: url.clone() });
    };
    let Some(name) = dir.name_of(last) else {
        return Err(CliError::NotInDirectory {
            version: last.clone(),
            url: url.clone(),
            dir: dir.path.clone(),
        });
    };
    let name = name.to_owned();
    let reverted = migrator
        .revert_last(dir.source.clone())
        .await
        .map_err(|error| migration_error("revert", &name, url, error))?;
    writeln!(out, "reverted {reverted}").map_err(CliError::Output)?;
    out.flush().map_err(CliError::Output)?;
    Ok(reverted)
}

/// `list`: every migration of the directory, oldest first, as `diesel migration list` prints it.
async fn list(
    migrator: &mut Migrator,
    dir: &MigrationDir,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let applied: HashSet<String> = migrator
        .applied()
        .await
        .map_err(|source| CliError::Database {
            context: "cannot read the applied migrations",
            source,
        })?
        .into_iter()
        .collect();
    let mut text = String::from("Migrations:\n");
    for (version, name) in &dir.migrations {
        let mark = if applied.contains(version) { 'X' } else { ' ' };
        text.push_str(&format!("  [{mark}] {name}\n"));
    }
    out.write_all(text.as_bytes()).map_err(CliError::Output)
}

/// The error for a failed apply or revert of `name`; diesel's own "Failed to run NAME with: "
/// prefix is dropped, the message names the migration already.
fn migration_error(action: &'static str, name: &str, url: &RedactedUrl, error: Error) -> CliError {
    match error {
        Error::Migration { source, .. } => {
            let reason = source.to_string();
            let prefix = format!("Failed to run {name} with: ");
            let reason = reason
                .strip_prefix(&prefix)
                .map(str::to_owned)
                .unwrap_or(reason);
            CliError::Migration {
                action,
                name: name.to_owned(),
                url: url.clone(),
                reason,
            }
        }
        other => CliError::Migration {
            action,
            name: name.to_owned(),
            url: url.clone(),
            reason: other.to_string(),
        },
    }
}

/// The target and the configured replicas, validated.
struct Target {
    url: String,
    redacted: RedactedUrl,
    config: tokio_postgres::Config,
    replicas: Vec<(String, tokio_postgres::Config)>,
    replicas_configured_by: &'static str,
}

impl Target {
    /// Reads the target (`--database-url`, else `DATABASE_URL`) and the replica variables with
    /// the rules of `RoutedPool::from_env`, and validates every URL.
    fn resolve(
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
        let builder =
            RoutedPoolBuilder::from_vars(lookup).map_err(|e| CliError::Config(e.into()))?;
        // `build` validates every URL the way `RoutedPool::from_env` does; it opens nothing.
        builder
            .clone()
            .build()
            .map_err(|e| CliError::Config(e.into()))?;
        let redacted = RedactedUrl::new(&url);
        let config = parse("primary", &url)?;
        let replicas = routing_core::__private::replica_urls(&builder)
            .iter()
            .enumerate()
            .map(|(index, replica)| {
                parse(&format!("replica {index}"), replica).map(|config| (replica.clone(), config))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let by_url = vars("DATABASE_READ_REPLICA_URL").is_some_and(|list| !list.trim().is_empty());
        Ok(Target {
            url,
            redacted,
            config,
            replicas,
            replicas_configured_by: if by_url {
                "ENABLE_READ_REPLICA=1 and DATABASE_READ_REPLICA_URL"
            } else {
                "ENABLE_READ_REPLICA=1 and POSTGRES_READ_REPLICA_HOST/_PORT/_DB"
            },
        })
    }

    /// Refuses a target that designates the same server as a configured replica.
    fn refuse_replicas(&self) -> Result<(), CliError> {
        for (index, (replica, config)) in self.replicas.iter().enumerate() {
            if same_server(&self.url, &self.config, replica, config) {
                return Err(CliError::TargetIsReplica {
                    url: self.redacted.clone(),
                    index,
                    replica: RedactedUrl::new(replica),
                    configured_by: self.replicas_configured_by,
                });
            }
        }
        Ok(())
    }
}

/// Parses `url` (already validated by routing-core; this only fails if the parsers disagree).
fn parse(what: &str, url: &str) -> Result<tokio_postgres::Config, CliError> {
    routing_core::__private::connection_config(url).ok_or_else(|| {
        CliError::Config(Error::Build(routing_core::BuildError::InvalidUrl {
            what: what.to_owned(),
            url: RedactedUrl::new(url),
            source: routing_core::UrlError::Unparsable("tokio-postgres cannot parse it".to_owned()),
        }))
    })
}

/// Whether two connection strings designate the same server: equal strings, or a shared
/// host-and-port endpoint and the same database when both name one.
///
/// Errs on the side of "the same": any shared endpoint counts (a multi-host target could reach
/// it), and the loopback names `localhost`, `127.0.0.1` and `::1` are one host.
fn same_server(
    a_url: &str,
    a: &tokio_postgres::Config,
    b_url: &str,
    b: &tokio_postgres::Config,
) -> bool {
    if a_url.trim() == b_url.trim() {
        return true;
    }
    let b_endpoints = endpoints(b);
    let shared = endpoints(a).iter().any(|e| b_endpoints.contains(e));
    let same_database = match (a.get_dbname(), b.get_dbname()) {
        (Some(a), Some(b)) => a == b,
        _ => true,
    };
    shared && same_database
}

/// The `(host, port)` endpoints a configuration can connect to, hosts normalized.
fn endpoints(config: &tokio_postgres::Config) -> Vec<(String, u16)> {
    let ports = config.get_ports();
    let port = |index: usize| match ports {
        [] => 5432,
        [only] => *only,
        many => many.get(index).copied().unwrap_or(5432),
    };
    let hosts = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(index, host)| (host_key(host), port(index)));
    let addrs = config
        .get_hostaddrs()
        .iter()
        .enumerate()
        .map(|(index, addr)| (tcp_key(&addr.to_string()), port(index)));
    hosts.chain(addrs).collect()
}

fn host_key(host: &Host) -> String {
    match host {
        Host::Tcp(name) => tcp_key(name),
        #[cfg(unix)]
        Host::Unix(path) => format!("unix:{}", path.display()),
    }
}

fn tcp_key(name: &str) -> String {
    let name = name.trim().trim_start_matches('[').trim_end_matches(']');
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    match name.as_str() {
        "localhost" | "127.0.0.1" | "::1" => "tcp:loopback".to_owned(),
        _ => format!("tcp:{name}"),
    }
}

/// The migration directory, read before connecting.
struct MigrationDir {
    path: PathBuf,
    source: FileBasedMigrations,
    /// `(version, name)` of every migration, oldest first.
    migrations: Vec<(String, String)>,
}

impl MigrationDir {
    fn load(path: &Path) -> Result<MigrationDir, CliError> {
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
    fn name_of(&self, version: &str) -> Option<&str> {
        self.migrations
            .iter()
            .find(|(v, _)| v == version)
            .map(|(_, name)| name.as_str())
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

/// One migration of a directory, by name: `run_pending` of it applies that migration alone.
struct OnlyMigration {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn same(a: &str, b: &str) -> bool {
        same_server(a, &a.parse().unwrap(), b, &b.parse().unwrap())
    }

    #[test]
    fn same_server_compares_hosts_ports_and_databases() {
        let replica = "postgres://app:secret@10.0.0.2:5433/app";
        assert!(same(replica, replica));
        assert!(same("postgres://other@10.0.0.2:5433/app", replica));
        assert!(same("host=10.0.0.2 port=5433 dbname=app user=x", replica));
        assert!(same("postgres://app@10.0.0.2:5433", replica), "no dbname");
        assert!(same("postgres://app@10.0.0.1,10.0.0.2:5433/app", replica));
        assert!(same(
            "postgres://app@LOCALHOST/app",
            "postgres://app@127.0.0.1:5432/app"
        ));
        assert!(same(
            "postgres://app@[::1]:6000/app",
            "postgres://app@localhost:6000/app"
        ));
        assert!(!same("postgres://app@10.0.0.2:5432/app", replica), "port");
        assert!(!same("postgres://app@10.0.0.3:5433/app", replica), "host");
        assert!(
            !same("postgres://app@10.0.0.2:5433/other", replica),
            "dbname"
        );
    }

    #[tokio::test]
    async fn usage_errors_never_print_a_password() {
        for args in [
            &["routing-migrate", "run", "postgres://u:pw123@h/db"][..],
            &["routing-migrate", "run", "host=h password=pw123"],
            &["routing-migrate", "run", "--bogus=postgres://u:pw123@h/db"],
        ] {
            let (mut out, mut err) = (Vec::new(), Vec::new());
            let code = run_cli(args.iter().copied(), &|_| None, &mut out, &mut err).await;
            let err = String::from_utf8(err).unwrap();
            assert_eq!(code, EXIT_USAGE, "{err}");
            assert!(out.is_empty());
            assert!(err.starts_with("error: "), "{err}");
            assert!(!err.contains("pw123"), "{err}");
        }
    }

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

    #[test]
    fn help_parses_and_documents_the_exit_codes() {
        let error = Cli::try_parse_from(["routing-migrate", "--help"]).unwrap_err();
        assert_eq!(error.exit_code(), 0);
        let help = error.render().to_string();
        assert!(help.contains("Exit codes:"), "{help}");
        let error = Cli::try_parse_from(["routing-migrate"]).unwrap_err();
        assert_eq!(error.exit_code(), 2);
        let cli = Cli::try_parse_from(["routing-migrate", "list", "--database-url", "x"]).unwrap();
        assert_eq!(cli.command, Command::List);
        assert_eq!(cli.options.database_url.as_deref(), Some("x"));
        assert_eq!(cli.options.migration_dir, PathBuf::from("migrations"));
    }
}
