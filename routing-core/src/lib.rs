#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

// Leaves: no module below imports anything above it.
mod causal;
mod classify;
mod clock;
mod config;
mod control;
mod credentials;
pub mod dsl;
mod env;
mod error;
mod failure;
pub mod policy;
mod reason;
mod url;
// What the router knows of its servers, and their pools.
mod servers;
// The routing context of the running code.
mod context;
// The routing rules.
mod route;
// Statements in an owned form that can run on any server.
mod owned;
// Statements classified, what a read decides around its I/O, and each statement's telemetry:
// shared by both connections.
mod classified;
mod reads;
mod trace;
// The connection, its transactions, and the pool that hands it out.
mod connection;
mod pool;
#[cfg(feature = "sync")]
pub mod sync;
// Integrations.
#[cfg(feature = "migrations")]
mod migrate;
#[cfg(any(feature = "tower", feature = "actix"))]
pub mod web;

pub use causal::{CausalToken, InvalidToken, ReadYourWrites};
pub use classify::{Classification, Classifier, WriteReason};
pub use config::{HealthCheck, RoutedPoolBuilder};
pub use connection::{
    RoutedCancelToken, RoutedConnection, RoutedTransactionManager, TransactionBuilder,
};
pub use context::{
    Routed, RoutingContext, RoutingExt, should_use_read_replica, spawn_in_context,
    with_causal_token, with_max_lag, with_primary, with_read_replica, with_read_replica_sync,
};
pub use control::ReadReplicaControl;
pub use credentials::{Credentials, CredentialsError, Login};
pub use error::{BuildError, CheckoutError, ConnectError, Error, Role, TlsError};
#[cfg(feature = "migrations")]
pub use migrate::{Migrator, MigratorBuilder};
pub use policy::{Candidate, LeastOutstanding, LowestLatency, Random, ReplicaPolicy, RoundRobin};
pub use reason::Reason;
/// Derives [`ReadReplicaControl`]; `#[read_replica(false)]` keeps the handler on the primary.
#[cfg(feature = "derive")]
pub use routing_derive::ReadReplicaControl;
/// Gives a function handler a [`ReadReplicaControl`] policy, like the derive does for types.
#[cfg(feature = "derive")]
pub use routing_derive::use_read_replica;
/// The rustls version of [`RoutedPoolBuilder::tls_config`], for building a `ClientConfig`.
#[cfg(feature = "rustls")]
pub use rustls;
pub use servers::{PoolStatus, RoutedPool, ServerStatus};
pub use url::{RedactedUrl, UrlError};
#[cfg(feature = "tower")]
pub use web::{ReadReplicaLayer, ReadReplicaService, ResponseFuture};

/// Paths used by code that `routing-derive` generates, and hooks for the benchmarks. Not public
/// API.
#[doc(hidden)]
pub mod __private {
    pub use crate::control::ReadReplicaControl;

    /// The connection settings of `url` as the router reads it: libpq's TLS parameters that
    /// tokio-postgres does not know (`sslmode=verify-full`, `sslrootcert`, `sslcert`, `sslkey`) taken out; `None` when
    /// it is invalid.
    pub fn connection_config(url: &str) -> Option<tokio_postgres::Config> {
        crate::url::DatabaseUrl::parse(url)
            .ok()
            .map(|url| url.config().clone())
    }

    /// The routing decision for `query` on `conn`, without running it: the replica a read would
    /// try first, or `None` for the primary. Classifies (or takes the cached classification),
    /// reads the routing scope and applies the replica policy; opens no connection. A write marks
    /// the connection as having written, as a real one does.
    ///
    /// # Errors
    ///
    /// The query cannot be rendered.
    pub fn decide<Q>(
        conn: &mut crate::RoutedConnection,
        query: &Q,
    ) -> diesel::QueryResult<Option<usize>>
    where
        Q: diesel::query_builder::QueryFragment<diesel::pg::Pg> + diesel::query_builder::QueryId,
    {
        conn.decide_only(query, Q::query_id())
    }
}
