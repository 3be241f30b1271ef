//! `routing-migrate`: the equivalent of `diesel migration` for a PostgreSQL primary with read
//! replicas.
//!
//! ```text
//! routing-migrate [--database-url <URL>] [--migration-dir <DIR>] <run|revert|redo|list>
//! ```
//!
//! - `run` applies every pending migration, oldest first, printing `applied <name>` for each,
//!   or `no pending migrations`;
//! - `revert` reverts the most recently applied migration (`reverted <name>`);
//! - `redo` reverts the most recently applied migration and applies it again;
//! - `list` prints every migration of the directory, `[X] <name>` when applied and `[ ] <name>`
//!   when pending, oldest first, as `diesel migration list` does.
//!
//! The primary is `--database-url`, else the `DATABASE_URL` environment variable. Migrations are
//! read at run time from `--migration-dir` (default `migrations`, relative to the current
//! directory).
//!
//! The replica variables of [`RoutedPool::from_env`](routing_core::RoutedPool::from_env)
//! (`ENABLE_READ_REPLICA`, `DATABASE_READ_REPLICA_URL`, `POSTGRES_READ_REPLICA_*`) are read only
//! to refuse them: a target that designates the same server as a configured replica (same
//! host(s) and port(s), and the same database when both name one) is refused before any
//! connection is made. The target is then refused if it is in recovery (`pg_is_in_recovery()`).
//! Both checks are [`routing_core::Migrator`]'s, through
//! [`MigratorBuilder::from_vars`](routing_core::MigratorBuilder::from_vars). URLs in messages
//! always have their password redacted.
//!
//! # Exit codes
//!
//! | code | meaning |
//! | ---- | ------- |
//! | 0 | success |
//! | 1 | a migration or database operation failed |
//! | 2 | bad usage or configuration: arguments, a missing `DATABASE_URL`, an invalid URL, a missing or invalid migration directory, invalid replica variables |
//! | 3 | refused: the target is a configured read replica, or a standby |
//!
//! The same command line runs in-process through [`run_cli`].

mod cli;
mod error;
mod migration_dir;
mod target;

pub use cli::run_cli;
