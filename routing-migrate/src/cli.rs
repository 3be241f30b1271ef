//! The command line: arguments, and running each command.
//!
//! [`run_cli`] is the whole program (parse, run, print, exit code); [`migrate`] runs one
//! [`Command`] with typed [`Options`]. Both read variables through a lookup function rather than
//! the process environment, so that callers and tests control what they see.
//!
//! Before connecting anywhere, the target URL is checked against the replicas that the
//! environment configures (the rules of `RoutedPool::from_env`): a target that designates the
//! same server as a replica is refused without connecting. The connection itself refuses a
//! standby (`pg_is_in_recovery()` true). Both checks are `routing_core::Migrator`'s. See the
//! crate docs for the exit codes.

use std::collections::HashSet;
use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use routing_core::{Migrator, RedactedUrl};

use crate::error::{CliError, EXIT_SUCCESS};
use crate::migration_dir::MigrationDir;
use crate::target::Target;

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
enum Command {
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
pub(crate) struct Options {
    /// The primary's URL [default: the DATABASE_URL environment variable]
    #[arg(long, value_name = "URL", global = true)]
    pub(crate) database_url: Option<String>,

    /// The directory of the migrations (one folder per migration, holding up.sql and down.sql),
    /// relative to the current directory
    #[arg(long, value_name = "DIR", default_value = "migrations", global = true)]
    pub(crate) migration_dir: PathBuf,
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
async fn migrate(
    command: Command,
    options: &Options,
    vars: &dyn Fn(&str) -> Option<String>,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let target = Target::resolve(options, vars)?;
    let dir = MigrationDir::load(&options.migration_dir)?;
    let mut migrator = target.connect().await?;
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
    let applied = migrator
        .run_pending(dir.only(name))
        .await
        .map_err(|error| CliError::migration("apply", name, url, error))?;
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
        .map_err(|error| CliError::migration("revert", &name, url, error))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    use crate::error::EXIT_USAGE;

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
