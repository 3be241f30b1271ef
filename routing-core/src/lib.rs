#![doc = include_str!("../../README.md")]

mod balance;
mod causal;
mod classify;
mod collected;
mod connection;
mod context;
mod control;
pub mod dsl;
mod env;
mod error;
mod health;
#[cfg(feature = "tower")]
mod layer;
#[cfg(feature = "migrations")]
mod migrate;
mod pool;
mod status;
mod transaction;
mod url;

pub use balance::{Candidate, LeastOutstanding, LowestLatency, Random, ReplicaPolicy, RoundRobin};
pub use causal::{CausalToken, InvalidToken, ReadYourWrites};
pub use classify::{Classification, Classifier, WriteReason};
pub use connection::RoutedConnection;
pub use context::{
    RoutingContext, should_use_read_replica, spawn_in_context, with_causal_token, with_max_lag,
    with_primary, with_read_replica, with_read_replica_sync,
};
pub use control::ReadReplicaControl;
pub use error::{Error, Role};
pub use health::HealthCheck;
#[cfg(feature = "tower")]
pub use layer::{ReadReplicaLayer, ReadReplicaService, ResponseFuture};
#[cfg(feature = "migrations")]
pub use migrate::{Migrator, MigratorBuilder};
pub use pool::{RoutedPool, RoutedPoolBuilder};
/// Derives [`ReadReplicaControl`]; `#[read_replica(false)]` keeps the handler on the primary.
pub use routing_derive::ReadReplicaControl;
/// Gives a function handler a [`ReadReplicaControl`] policy, like the derive does for types.
pub use routing_derive::use_read_replica;
pub use status::{PoolStatus, ServerStatus};
pub use transaction::{RoutedTransactionManager, TransactionBuilder};
pub use url::RedactedUrl;

/// Paths used by code that `routing-derive` generates, and hooks for the benchmarks. Not public
/// API.
#[doc(hidden)]
pub mod __private {
    pub use crate::control::ReadReplicaControl;

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
