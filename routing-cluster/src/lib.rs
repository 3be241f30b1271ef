//! A throwaway local PostgreSQL primary with streaming hot-standby replicas,
//! and fault controls, for integration tests, demos and benchmarks.
//!
//! [`LocalCluster::start`] runs `initdb` for a primary in a fresh directory
//! under `/tmp`, clones replicas from it with `pg_basebackup -R`, starts
//! every server on a free loopback port and waits until the replicas
//! stream. The fault controls stop, kill, restart, pause and freeze
//! replicas. Dropping the cluster removes everything; [`shared`] gives one
//! cluster per process.
//!
//! Needs the PostgreSQL (14 or newer) server programs, found through
//! `$PG_BIN_DIR`, `PATH` or `/usr/lib/postgresql/*/bin`. When run as root,
//! the servers run as the `postgres` system user through `runuser`.
//!
//! Options: [`ClusterBuilder::tls`] makes the servers accept TCP logins over
//! TLS only, with a throwaway CA; [`ClusterBuilder::pgbouncer`] puts a
//! PgBouncer in front of each server (needs the `pgbouncer` program);
//! [`ClusterBuilder::password_auth`] makes every role but `postgres` log in
//! with its password.
//!
//! ```no_run
//! # async fn demo() -> Result<(), routing_cluster::ClusterError> {
//! let cluster = routing_cluster::LocalCluster::builder().replicas(1).start().await?;
//! println!("write to {}, read from {}", cluster.primary_url(), cluster.replica_url(0));
//! cluster.pause_replay(0).await?;
//! # Ok(())
//! # }
//! ```

mod binaries;
mod builder;
mod cluster;
mod command;
mod error;
mod faults;
mod patroni;
mod pgbouncer;
mod poll;
mod ports;
mod replication;
mod server;
mod setup;
mod shared;
mod signals;
mod sql;
mod tls;
mod watchdog;

pub use builder::ClusterBuilder;
pub use cluster::LocalCluster;
pub use error::ClusterError;
pub use patroni::{PatroniBuilder, PatroniCluster};
pub use pgbouncer::PoolMode;
pub use shared::shared;
pub use tls::CERT_USER;
