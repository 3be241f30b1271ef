//! Synchronous Diesel (feature `sync`): a [`RoutedPool`] over r2d2 pools of
//! `diesel::PgConnection`, handing out [`RoutedConnection`]s that implement
//! `diesel::Connection<Backend = Pg>` and `LoadConnection`, so that ordinary synchronous diesel
//! code runs on them unchanged.
//!
//! The rules, the classifier, the health probe, lag bounds, causal tokens, bans and failover are
//! the async pool's own: a sync pool is built from the same [`RoutedPoolBuilder`] and keeps the
//! same shared state (its health probe runs on a thread of its own); only its server sessions
//! are libpq's. The routing scope is the thread's: [`with_read_replica_sync`], and for work moved
//! to another thread, [`RoutingContext::current`] there and
//! [`RoutingContext::sync_scope`] here.
//!
//! ```no_run
//! # fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use diesel::prelude::*;
//! use diesel::sql_types::Bool;
//! use routing_core::with_read_replica_sync;
//!
//! let pool = routing_core::sync::RoutedPool::builder("postgres://app:secret@primary/app")
//!     .replica("postgres://app:secret@replica/app")
//!     .build_sync()?;
//! let mut conn = pool.get()?;
//! let on_standby: bool = with_read_replica_sync(true, || {
//!     diesel::select(diesel::dsl::sql::<Bool>("pg_is_in_recovery()")).get_result(&mut conn)
//! })?;
//! # Ok(()) }
//! ```
//!
//! [`RoutedPoolBuilder`]: crate::RoutedPoolBuilder
//! [`with_read_replica_sync`]: crate::with_read_replica_sync
//! [`RoutingContext::current`]: crate::RoutingContext::current
//! [`RoutingContext::sync_scope`]: crate::RoutingContext::sync_scope

mod connection;
mod conninfo;
mod diesel_impls;
mod prerendered;
mod read;
mod server;
mod transaction;

use std::sync::Arc;

use crate::causal::{CausalToken, ReadYourWrites};
use crate::config::RoutedPoolBuilder;
use crate::error::{BuildError, Error, Role};
use crate::servers::catalog::blocking as catalog;
use crate::servers::{PoolStatus, Shared, probe};
use crate::url::RedactedUrl;
pub use connection::RoutedConnection;
use server::SyncServers;
pub use transaction::{RoutedTransactionManager, TransactionBuilder};

/// A primary pool and any number of replica pools of synchronous `diesel::PgConnection`s
/// (r2d2), handing out [`RoutedConnection`]s.
///
/// Made by [`RoutedPool::builder`] (or [`crate::RoutedPool::builder`]) and
/// [`RoutedPoolBuilder::build_sync`], or by [`RoutedPool::from_env`]. Cheap to clone: clones
/// share the pools. Nothing connects until a statement needs a server.
#[derive(Clone)]
pub struct RoutedPool {
    /// The shared state: configuration, health, topology, tokens, learned statements. Its own
    /// (async) server pools stay empty: they connect lazily, and nothing asks them.
    routed: crate::RoutedPool,
    servers: Arc<SyncServers>,
}

impl std::fmt::Debug for RoutedPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("sync::RoutedPool")
            .field("servers", &self.routed)
            .finish_non_exhaustive()
    }
}

impl RoutedPoolBuilder {
    /// Builds a synchronous pool (feature `sync`): r2d2 pools of `diesel::PgConnection`. No
    /// connection is opened here.
    ///
    /// # Errors
    ///
    /// As [`build`](Self::build), and a [`tls_config`](Self::tls_config): libpq makes its TLS
    /// connections from the URLs' `sslmode`, `sslrootcert`, `sslcert` and `sslkey`.
    pub fn build_sync(self) -> Result<RoutedPool, BuildError> {
        let routed = self.build()?;
        let servers = SyncServers::new(routed.shared())?;
        Ok(RoutedPool {
            routed,
            servers: Arc::new(servers),
        })
    }
}

impl RoutedPool {
    /// Starts configuring a pool whose primary is at `primary_url`: the same
    /// [`RoutedPoolBuilder`] as the async pool's, finished by
    /// [`build_sync`](RoutedPoolBuilder::build_sync).
    pub fn builder(primary_url: impl Into<String>) -> RoutedPoolBuilder {
        RoutedPoolBuilder::new(primary_url.into())
    }

    /// Builds a synchronous pool from the environment, with the variables of
    /// [`crate::RoutedPool::from_env`].
    ///
    /// # Errors
    ///
    /// As [`crate::RoutedPool::from_env`].
    pub fn from_env() -> Result<RoutedPool, BuildError> {
        RoutedPoolBuilder::from_env()?.build_sync()
    }

    /// Hands out a connection that routes each statement. No server connection is checked out
    /// until a statement needs one. The first call starts the replicas' background health probe,
    /// on a thread of its own.
    ///
    /// # Errors
    ///
    /// None today; the `Result` leaves room for checks at hand-out time.
    pub fn get(&self) -> Result<RoutedConnection, Error> {
        probe::start_from_any_thread(self.shared());
        Ok(RoutedConnection::new(self.clone()))
    }

    /// A token for the primary's current WAL position: every write committed before this call is
    /// behind it. See [`CausalToken`].
    ///
    /// # Errors
    ///
    /// The primary cannot be checked out or asked.
    pub fn causal_token(&self) -> Result<CausalToken, Error> {
        if let ReadYourWrites::TimeWindow(_) = self.shared().config().read_your_writes() {
            return Ok(CausalToken::new(0));
        }
        let lsn = self.primary_position()?;
        Ok(CausalToken::new(lsn))
    }

    /// What the router knows of each server now: health, ban reason, lag, connections, queries
    /// routed; the connections are this pool's r2d2 sessions.
    pub fn status(&self) -> PoolStatus {
        let mut status = self.routed.status();
        for (server, pool) in status.servers.iter_mut().zip(self.servers.all()) {
            let (in_use, idle, max_size) = pool.state();
            server.in_use = in_use;
            server.idle = idle;
            server.waiting = 0;
            server.max_size = max_size;
        }
        status
    }

    /// The primary's URL as configured, password redacted: with a multi-host URL, every node.
    pub fn primary_url(&self) -> RedactedUrl {
        self.routed.primary_url()
    }

    /// The replicas' URLs, password redacted, in configuration order.
    pub fn replica_urls(&self) -> Vec<&RedactedUrl> {
        self.routed.replica_urls()
    }

    /// How many replicas are configured.
    pub fn replica_count(&self) -> usize {
        self.routed.replica_count()
    }

    fn shared(&self) -> &Arc<Shared> {
        self.routed.shared()
    }

    /// The primary's WAL insert position, asked on a session of its own (back in its pool at
    /// once, so that a reader never holds the primary for it); noted for the token checks.
    fn primary_position(&self) -> Result<u64, Error> {
        let shared = self.shared();
        let began = std::time::Instant::now();
        let node = shared.primary_other_than_blocking(
            None,
            began,
            began + shared.config().primary_wait(),
        )?;
        let server = self.servers.primary(node).ok_or_else(no_primary)?;
        let mut session = server.checkout()?;
        let lsn = catalog::wal_insert_position(session.pg()).map_err(|source| Error::Query {
            role: Role::Primary,
            source,
        })?;
        shared.tokens().note_primary(lsn);
        Ok(lsn)
    }
}

/// The error for a primary the shared state names and this pool has no sessions for, which
/// the two being made from one configuration never allows.
fn no_primary() -> Error {
    Error::NoPrimary {
        reason: "the primary has no synchronous pool".to_owned(),
        waited: std::time::Duration::ZERO,
    }
}
