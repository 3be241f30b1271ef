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
pub use migrate::Migrator;
pub use pool::{RoutedPool, RoutedPoolBuilder};
/// Derives [`ReadReplicaControl`]; `#[read_replica(false)]` keeps the handler on the primary.
pub use routing_derive::ReadReplicaControl;
/// Gives a function handler a [`ReadReplicaControl`] policy, like the derive does for types.
pub use routing_derive::use_read_replica;
pub use status::{PoolStatus, ServerStatus};
pub use transaction::{RoutedTransactionManager, TransactionBuilder};
pub use url::RedactedUrl;

/// Paths used by code that `routing-derive` generates. Not public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::control::ReadReplicaControl;
}
