//! The error type of every fallible operation of this crate.

use std::fmt;
use std::time::Duration;

/// Why starting, controlling or querying a local cluster failed.
///
/// Messages carry the context needed to act on them: the command line and
/// the last lines of its output or of the server log, the query, the
/// replica index. `Debug` prints the same readable text as `Display`, so a
/// failed `unwrap()` in a test shows the log tail with real line breaks.
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// The PostgreSQL server programs could not be found.
    #[error(
        "postgresql server binaries (initdb, pg_ctl, postgres, pg_basebackup) not found in {searched}; install them (Debian/Ubuntu: apt-get install postgresql)"
    )]
    BinariesNotFound {
        /// Where they were looked for, and why each place was rejected.
        searched: String,
    },

    /// A replica index was out of range.
    #[error("no replica with index {index}: the cluster has {count} replicas")]
    NoSuchReplica {
        /// The index asked for.
        index: usize,
        /// How many replicas the cluster has.
        count: usize,
    },

    /// The replica cannot serve the request in its current state.
    #[error("replica {index} is {state}")]
    ReplicaUnavailable {
        /// The replica index.
        index: usize,
        /// Its state and what to do about it.
        state: &'static str,
    },

    /// A file system operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, with the path.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// An external command failed.
    #[error("command `{command}` failed ({status}); last lines of its output:\n{output}")]
    Command {
        /// The command line.
        command: String,
        /// The exit status, or why it could not run.
        status: String,
        /// The last lines of its stderr and stdout.
        output: String,
    },

    /// A server did not start.
    #[error(
        "{server} did not start: `{command}` failed ({status}); last lines of its output:\n{output}\nlast lines of the server log:\n{log_tail}"
    )]
    ServerStart {
        /// Which server (`primary`, `replica 0`, ...).
        server: String,
        /// The start command line.
        command: String,
        /// The exit status of the start command.
        status: String,
        /// The last lines of the start command's output.
        output: String,
        /// The last lines of the server log.
        log_tail: String,
    },

    /// A query sent to one of the servers failed.
    #[error("query `{query}` on {server} failed: {detail}")]
    Query {
        /// Which server (`primary`, `replica 0`, ...).
        server: String,
        /// The SQL text.
        query: String,
        /// The error with all its causes.
        detail: String,
        /// The underlying error.
        #[source]
        source: tokio_postgres::Error,
    },

    /// Waiting for a condition took too long.
    #[error("timed out after {after:?} waiting for {what}; last observation: {detail}")]
    Timeout {
        /// The condition waited for.
        what: String,
        /// How long it was waited for.
        after: Duration,
        /// The last observed state or error.
        detail: String,
    },

    /// The `pgbouncer` program could not be found.
    #[error(
        "pgbouncer not found in {searched}; install it (Debian/Ubuntu: apt-get install pgbouncer)"
    )]
    PgBouncerNotFound {
        /// Where it was looked for.
        searched: String,
    },

    /// The TLS certificates could not be made.
    #[error("cannot make the TLS certificates: {reason}")]
    Certificates {
        /// Why.
        reason: String,
    },

    /// The process-wide shared cluster failed to start (see [`crate::shared`]).
    #[error("the shared cluster failed to start: {message}")]
    SharedStartFailed {
        /// The message of the original error.
        message: String,
    },

    /// The programs a Patroni cluster needs (`patroni`, `etcd`) could not be
    /// found.
    #[error(
        "a patroni cluster needs patroni and etcd: {missing}; install them (Debian/Ubuntu: apt-get install --no-install-recommends patroni etcd-server)"
    )]
    PatroniNotFound {
        /// Which programs are missing and where they were looked for.
        missing: String,
    },

    /// A Patroni cluster option is out of range.
    #[error("invalid patroni cluster option `{option}`: {reason}")]
    InvalidPatroniOption {
        /// The builder method.
        option: &'static str,
        /// What is wrong and what is allowed.
        reason: String,
    },

    /// A node index of a Patroni cluster was out of range.
    #[error("no node with index {index}: the cluster has {count} nodes")]
    NoSuchNode {
        /// The index asked for.
        index: usize,
        /// How many nodes the cluster has.
        count: usize,
    },

    /// A Patroni node cannot serve the request in its current state.
    #[error("node {index} {state}")]
    NodeUnavailable {
        /// The node index.
        index: usize,
        /// Its state and what to do about it.
        state: String,
    },

    /// Patroni or etcd exited while it should have been running.
    #[error("{process} exited unexpectedly ({status}); last lines of {log}:\n{log_tail}")]
    ProcessExited {
        /// Which process (`patroni of node 1`, `etcd`).
        process: String,
        /// Its exit status.
        status: String,
        /// Its log file.
        log: String,
        /// The last lines of its log.
        log_tail: String,
    },

    /// An HTTP request to Patroni's REST API or to etcd failed.
    #[error("http request `{request}` failed: {detail}")]
    Http {
        /// The method and URL.
        request: String,
        /// The status and body, or the connection error.
        detail: String,
    },
}

impl fmt::Debug for ClusterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl ClusterError {
    /// Wraps an I/O error with what was being done.
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}
