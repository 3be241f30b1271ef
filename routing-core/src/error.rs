use std::time::Duration;

use crate::url::RedactedUrl;

/// Which server of a [`RoutedPool`](crate::RoutedPool) an error or a decision concerns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Role {
    /// The read-write primary.
    Primary,
    /// The replica with this index, in the order the replicas were configured.
    Replica(usize),
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Role::Primary => f.write_str("primary"),
            Role::Replica(index) => write!(f, "replica {index}"),
        }
    }
}

/// Everything that can go wrong in routing-core.
///
/// URLs in messages have their password replaced by `***`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A connection URL could not be parsed.
    #[error("invalid {what} URL {url}: {reason}")]
    InvalidUrl {
        /// What the URL was for: "primary", "replica 0", a variable name.
        what: String,
        /// The URL, password redacted.
        url: RedactedUrl,
        /// Why it was rejected.
        reason: String,
    },

    /// A required environment variable is not set.
    #[error("environment variable {name} is not set: {why}")]
    MissingVariable {
        /// The variable.
        name: &'static str,
        /// What needs it.
        why: &'static str,
    },

    /// An environment variable holds a value that is not allowed.
    #[error("environment variable {name} has the value {value:?}: expected {expected}")]
    InvalidVariable {
        /// The variable.
        name: &'static str,
        /// The value found (never a password).
        value: String,
        /// What would have been accepted.
        expected: &'static str,
    },

    /// A builder setting is out of range.
    #[error("invalid setting {setting}: {reason}")]
    InvalidSetting {
        /// The setting's builder method.
        setting: &'static str,
        /// Why it was rejected.
        reason: String,
    },

    /// deadpool refused to build a pool.
    #[error("failed to build the {role} connection pool for {url}: {reason}")]
    PoolBuild {
        /// The server the pool was for.
        role: Role,
        /// Its URL, password redacted.
        url: RedactedUrl,
        /// deadpool's reason.
        reason: String,
    },

    /// No connection could be checked out of a server's pool.
    #[error("failed to check out a {role} connection from {url}: {reason}")]
    Checkout {
        /// The server.
        role: Role,
        /// Its URL, password redacted.
        url: RedactedUrl,
        /// Why: a timeout, a refused connection, a server in the wrong role.
        reason: String,
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
    #[error("no replica could serve the read and fallback to the primary is off: {reasons}")]
    NoReplicaAvailable {
        /// Why each replica was passed over.
        reasons: String,
    },

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
        /// Diesel's error.
        #[source]
        source: diesel::ConnectionError,
    },

    /// Running migrations failed.
    #[error("migration on the primary {url} failed: {reason}")]
    Migration {
        /// The primary, password redacted.
        url: RedactedUrl,
        /// What went wrong.
        reason: String,
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

impl Error {
    /// Turns this error into a [`diesel::result::Error`], for the `QueryResult` that diesel's
    /// query methods return. The message is kept; the kind says the statement was never sent.
    pub(crate) fn into_diesel(self) -> diesel::result::Error {
        match self {
            Error::Query { source, .. } => source,
            other => diesel::result::Error::DatabaseError(
                diesel::result::DatabaseErrorKind::UnableToSendCommand,
                Box::new(other.to_string()),
            ),
        }
    }
}
