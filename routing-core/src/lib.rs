#![doc = include_str!("../../README.md")]

mod classify;
mod collected;
mod connection;
mod context;
mod env;
mod error;
#[cfg(feature = "migrations")]
mod migrate;
mod pool;
mod transaction;
mod url;

pub use classify::{Classification, Classifier, WriteReason};
pub use connection::RoutedConnection;
pub use context::{
    RoutingContext, should_use_read_replica, spawn_in_context, with_primary, with_read_replica,
    with_read_replica_sync,
};
pub use error::{Error, Role};
#[cfg(feature = "migrations")]
pub use migrate::Migrator;
pub use pool::{RoutedPool, RoutedPoolBuilder};
pub use transaction::{RoutedTransactionManager, TransactionBuilder};
pub use url::RedactedUrl;
