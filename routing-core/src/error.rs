//! The errors of routing-core: [`BuildError`] for a configuration that cannot make a pool, and
//! [`Error`] for everything that can fail once it runs. URLs in messages have their password
//! replaced by `***`.

mod build;
mod connect;

use std::fmt;
use std::time::Duration;

pub use build::BuildError;
pub use connect::{CheckoutError, ConnectError, TlsError};

use crate::url::RedactedUrl;

/// Which server of a [`RoutedPool`](crate::RoutedPool) an error or a decision concerns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Role {
    /// The read-write primary.
    Primary,
    /// The replica with this index, in the order the replicas were configured.
    Replica(usize),
    /// The node with this index of a pool that discovers its primary among its nodes (a
    /// multi-host URL), in the order the URL lists them; whichever role it has now.
    Node(usize),
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Role::Primary => f.write_str("primary"),
            Role::Replica(index) => write!(f, "replica {index}"),
            Role::Node(index) => write!(f, "node {index}"),
        }
    }
}

/// Everything that can go wrong once a pool runs.
///
/// Inside diesel's `QueryResult` (the statements of a [`RoutedConnection`]), a routing failure
/// (no server could be checked out, no replica could serve a read) is a
/// `diesel::result::Error::QueryBuilderError` holding this error: [`Error::from_diesel`] gets it
/// back. A statement's own error stays the server's error.
///
/// [`RoutedConnection`]: crate::RoutedConnection
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration cannot make a pool.
    #[error(transparent)]
    Build(#[from] BuildError),

    /// No connection could be checked out of a server's pool.
    #[error("failed to check out a {role} connection from {url}: {source}")]
    Checkout {
        /// The server.
        role: Role,
        /// Its URL, password redacted.
        url: RedactedUrl,
        /// Why.
        #[source]
        source: CheckoutError,
    },

    /// Every connection of a server's pool stayed in use for the whole checkout timeout.
    #[error("no free {role} connection from {url} within {timeout:?} (pool of {max_size})")]
    PoolExhausted {
        /// The server.
        role: Role,
        /// Its URL, password redacted.
        url: RedactedUrl,
        /// The checkout timeout.
        timeout: Duration,
        /// The pool's size.
        max_size: usize,
    },

    /// A server configured as a replica is not in recovery: it is a primary.
    #[error(
        "{url} is configured as {role} but is not in recovery (pg_is_in_recovery() is false): it is a primary, not a standby"
    )]
    ReplicaIsPrimary {
        /// Which replica.
        role: Role,
        /// Its URL, password redacted.
        url: RedactedUrl,
    },

    /// The server configured as the primary is a standby.
    #[error(
        "{url} is configured as the primary but is in recovery (pg_is_in_recovery() is true): it is a standby, writes would fail"
    )]
    PrimaryIsStandby {
        /// Its URL, password redacted.
        url: RedactedUrl,
    },

    /// A read could not be served by any replica, and falling back to the primary is off.
    #[error(
        "no replica could serve the read and fallback to the primary is off: {banned} banned, {lagging} lagging, {behind_token} behind the causal token{}",
        Failures(failures)
    )]
    NoReplicaAvailable {
        /// Replicas out of rotation after a failure, until a probe admits them again.
        banned: usize,
        /// Nodes of a discovering pool that are not standbys now (the primary, or not probed
        /// yet).
        not_standby: usize,
        /// Replicas past the lag bounds.
        lagging: usize,
        /// Replicas that have not replayed the read's causal token.
        behind_token: usize,
        /// The errors of the replicas that were tried, in order; then, for each replica passed
        /// over as banned, why it is.
        failures: Vec<Error>,
    },

    /// A replica refused a statement routed to it as a read because it writes (SQLSTATE 25006).
    /// The pool now sends that statement to the primary; this error reaches the caller when the
    /// statement could not be run again there (it had already returned rows, or
    /// `retry_writes_refused_by_replica` is off).
    #[error(
        "{role} refused the statement as a write (SQLSTATE 25006){}; it was routed as a read: \
         the pool sends it to the primary from now on, and a /* routing:primary */ comment or \
         Classifier::primary_functions routes it there from the start: {source}",
        if *after_rows { " after it had returned rows, so it was not run again" } else { "" }
    )]
    RefusedAsWrite {
        /// The replica.
        role: Role,
        /// Whether rows had reached the caller before the refusal.
        after_rows: bool,
        /// The server's error.
        #[source]
        source: diesel::result::Error,
    },

    /// No node is the primary now (a failover under way, every node a standby, or several
    /// claiming the primary role), and none became one within the pool's `primary_wait`. The
    /// statement was not sent: retry it.
    #[error("no primary to send the statement to within {waited:?}: {reason}")]
    NoPrimary {
        /// Why: what the health probe found.
        reason: String,
        /// How long the statement waited for a primary.
        waited: Duration,
    },

    /// The connection to the primary broke while it ran the statement (the primary crashed,
    /// was shut down or demoted): the statement may or may not have taken effect. A new attempt
    /// goes to whichever node is the primary then.
    #[error("the primary {url} was lost while it ran the statement: {source}")]
    PrimaryLost {
        /// The server the primary was, password redacted.
        url: RedactedUrl,
        /// The server's or the driver's error.
        #[source]
        source: diesel::result::Error,
    },

    /// A replica is out of rotation (banned by the health probe, or after a failure): a read
    /// that waited on it moved on, and a read that found it so passed it over.
    #[error("{role} is out of rotation{}", Reason(ban_reason))]
    Banned {
        /// The replica.
        role: Role,
        /// Why it was banned, as the ban recorded it.
        ban_reason: Option<String>,
    },

    /// A transaction lost its server connection before it ended: a statement or savepoint of it
    /// was dropped (cancelled) before it finished, so the server rolled the transaction back.
    /// Its later statements fail until it ends; the connection's later transactions work.
    #[error(
        "the transaction was rolled back: a statement or savepoint of it was dropped before it finished"
    )]
    TransactionLost,

    /// Waited too long.
    #[error("{what} did not finish within {timeout:?}")]
    Timeout {
        /// What was waited for.
        what: &'static str,
        /// The bound.
        timeout: Duration,
    },

    /// A query failed.
    #[error("query on {role} failed: {source}")]
    Query {
        /// Where it ran.
        role: Role,
        /// Diesel's error.
        #[source]
        source: diesel::result::Error,
    },

    /// A connection could not be established.
    #[error("failed to connect to {role} at {url}: {source}")]
    Connect {
        /// The server.
        role: Role,
        /// Its URL, password redacted.
        url: RedactedUrl,
        /// Why.
        #[source]
        source: ConnectError,
    },

    /// A server (or what stands in front of it) lost a named prepared statement of the
    /// connection, or holds another one under its name: what a transaction pooler (PgBouncer
    /// in `pool_mode = transaction`) does, since it gives each statement whichever server
    /// connection is free.
    #[error(
        "the server lost a named prepared statement of this connection ({source}): a \
         transaction pooler (PgBouncer in transaction mode) in front of it gives each statement \
         whichever server connection is free; set RoutedPoolBuilder::transaction_pooler(true)"
    )]
    NeedsTransactionPooler {
        /// The server's error.
        #[source]
        source: diesel::result::Error,
    },

    /// With [`transaction_pooler(true)`](crate::RoutedPoolBuilder::transaction_pooler), a
    /// statement outside a transaction would change the session's state; it was not sent.
    #[error(
        "the statement changes the session's state (SET, RESET, LISTEN, PREPARE, a session \
         advisory lock, a temporary table, ...) outside a transaction, and through a transaction \
         pooler there is no session: it would change a server connection other clients share; \
         use a transaction-scoped form inside a transaction (SET LOCAL, pg_advisory_xact_lock)"
    )]
    SessionStateWithTransactionPooler,

    /// Something that needs a session of its own was asked of a pool with
    /// [`transaction_pooler(true)`](crate::RoutedPoolBuilder::transaction_pooler).
    #[error("{what} is not available with transaction_pooler(true): {why}")]
    NotWithTransactionPooler {
        /// What was asked.
        what: &'static str,
        /// Why it needs a session.
        why: &'static str,
    },

    /// Running migrations failed.
    #[cfg(feature = "migrations")]
    #[error("migration on the primary {url} failed: {source}")]
    Migration {
        /// The primary, password redacted.
        url: RedactedUrl,
        /// diesel's migration error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// A migration target designates the same server as a read replica it was told to refuse;
    /// nothing was connected to.
    #[error(
        "refusing to migrate {url}: it designates the same server as read replica {replica_index} ({replica}); migrations run on the primary only"
    )]
    TargetIsReplica {
        /// The target, password redacted.
        url: RedactedUrl,
        /// The replica's index, in the order the replicas were given.
        replica_index: usize,
        /// The replica, password redacted.
        replica: RedactedUrl,
    },
}

/// An optional reason, as the end of a message.
struct Reason<'a>(&'a Option<String>);

impl fmt::Display for Reason<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(reason) => write!(f, ": {reason}"),
            None => Ok(()),
        }
    }
}

/// The failures of a [`Error::NoReplicaAvailable`], as the end of its message.
struct Failures<'a>(&'a [Error]);

impl fmt::Display for Failures<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (position, failure) in self.0.iter().enumerate() {
            f.write_str(if position == 0 { "; failures: " } else { "; " })?;
            fmt::Display::fmt(failure, f)?;
        }
        Ok(())
    }
}

impl Error {
    /// The error's kind in snake case (`no_replica_available`, `pool_exhausted`, ...), as
    /// telemetry's `error.type` names it.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Build(_) => "build",
            Error::Checkout { .. } => "checkout",
            Error::PoolExhausted { .. } => "pool_exhausted",
            Error::ReplicaIsPrimary { .. } => "replica_is_primary",
            Error::PrimaryIsStandby { .. } => "primary_is_standby",
            Error::NoReplicaAvailable { .. } => "no_replica_available",
            Error::RefusedAsWrite { .. } => "refused_as_write",
            Error::NoPrimary { .. } => "no_primary",
            Error::PrimaryLost { .. } => "primary_lost",
            Error::Banned { .. } => "banned",
            Error::TransactionLost => "transaction_lost",
            Error::Timeout { .. } => "timeout",
            Error::Query { .. } => "query",
            Error::Connect { .. } => "connect",
            #[cfg(feature = "migrations")]
            Error::Migration { .. } => "migration",
            Error::TargetIsReplica { .. } => "target_is_replica",
            Error::NeedsTransactionPooler { .. } => "needs_transaction_pooler",
            Error::SessionStateWithTransactionPooler => "session_state_with_transaction_pooler",
            Error::NotWithTransactionPooler { .. } => "not_with_transaction_pooler",
        }
    }

    /// Whether the same operation may succeed when tried again, because a server was down,
    /// busy, being replaced or lagging, rather than the operation or the configuration being
    /// wrong. Only [`Error::PrimaryLost`] may have taken effect already (a commit whose
    /// connection broke); every other retryable error was never run.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::Checkout { .. }
                | Error::PoolExhausted { .. }
                | Error::NoReplicaAvailable { .. }
                | Error::NoPrimary { .. }
                | Error::PrimaryLost { .. }
                | Error::Banned { .. }
                | Error::TransactionLost
                | Error::Timeout { .. }
        )
    }

    /// Turns this error into diesel's, for the `QueryResult` of a statement: a query's own
    /// error as it was, anything else as a `QueryBuilderError` that [`Error::from_diesel`]
    /// reads back.
    pub(crate) fn into_diesel(self) -> diesel::result::Error {
        match self {
            Error::Query { source, .. } => source,
            other => diesel::result::Error::QueryBuilderError(Box::new(other)),
        }
    }

    /// The routing error inside a statement's diesel error, if the router failed rather than
    /// the statement.
    ///
    /// ```
    /// # fn handle(error: diesel::result::Error) {
    /// match routing_core::Error::from_diesel(&error) {
    ///     Some(routing_core::Error::NoReplicaAvailable { banned, .. }) => {
    ///         eprintln!("{banned} replicas are down")
    ///     }
    ///     Some(other) => eprintln!("routing failed: {other}"),
    ///     None => eprintln!("the statement failed: {error}"),
    /// }
    /// # }
    /// ```
    pub fn from_diesel(error: &diesel::result::Error) -> Option<&Error> {
        match error {
            diesel::result::Error::QueryBuilderError(inner) => inner.downcast_ref::<Error>(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_errors_survive_the_trip_through_diesel() {
        let error = Error::NoReplicaAvailable {
            banned: 2,
            not_standby: 0,
            lagging: 1,
            behind_token: 0,
            failures: vec![Error::Timeout {
                what: "a probe",
                timeout: Duration::from_secs(1),
            }],
        };
        let text = error.to_string();
        assert_eq!(
            text,
            "no replica could serve the read and fallback to the primary is off: 2 banned, \
             1 lagging, 0 behind the causal token; failures: a probe did not finish within 1s"
        );
        let diesel = error.into_diesel();
        assert_eq!(diesel.to_string(), text);
        assert!(matches!(
            Error::from_diesel(&diesel),
            Some(Error::NoReplicaAvailable { banned: 2, .. })
        ));
        assert!(Error::from_diesel(&diesel::result::Error::NotFound).is_none());
    }

    #[test]
    fn query_errors_stay_the_servers() {
        let error = Error::Query {
            role: Role::Replica(0),
            source: diesel::result::Error::NotFound,
        };
        assert!(matches!(
            error.into_diesel(),
            diesel::result::Error::NotFound
        ));
    }
}
