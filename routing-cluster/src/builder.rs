//! Options for starting a [`LocalCluster`].

use std::path::PathBuf;
use std::time::Duration;

use crate::{ClusterError, LocalCluster, PoolMode};

/// The replica count when not set.
const DEFAULT_REPLICAS: usize = 2;

/// The wait limit when not set.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Each server's `max_connections` when not set.
const DEFAULT_MAX_CONNECTIONS: u32 = 200;

/// Configures and starts a [`LocalCluster`]; made by [`LocalCluster::builder`].
#[derive(Debug, Clone)]
#[must_use]
pub struct ClusterBuilder {
    pub(crate) replicas: usize,
    pub(crate) bin_dir: Option<PathBuf>,
    pub(crate) timeout: Duration,
    pub(crate) tls: bool,
    pub(crate) pgbouncer: Option<PoolMode>,
    pub(crate) password_auth: bool,
    pub(crate) pgbouncer_pool_size: u32,
    pub(crate) tls_only: bool,
    pub(crate) max_connections: u32,
}

impl Default for ClusterBuilder {
    fn default() -> Self {
        Self {
            replicas: DEFAULT_REPLICAS,
            bin_dir: None,
            timeout: DEFAULT_TIMEOUT,
            tls: false,
            pgbouncer: None,
            password_auth: false,
            pgbouncer_pool_size: crate::pgbouncer::DEFAULT_POOL_SIZE,
            tls_only: true,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

impl ClusterBuilder {
    /// Sets the number of hot-standby replicas (default 2; 0 is allowed).
    pub fn replicas(mut self, count: usize) -> Self {
        self.replicas = count;
        self
    }

    /// Uses the server programs in `dir` instead of searching for them.
    pub fn bin_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.bin_dir = Some(dir.into());
        self
    }

    /// Sets how long each wait (server start, streaming, catch-up) may
    /// take before failing with [`ClusterError::Timeout`] (default 30 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Makes the servers accept TCP logins over TLS only (default off).
    ///
    /// At start the cluster makes a CA and a server certificate for `localhost`, `127.0.0.1`
    /// and `::1` signed by it, installs them in every data directory, sets `ssl = on`, and puts
    /// `hostnossl ... reject` lines first in `pg_hba.conf`. Client URLs
    /// ([`LocalCluster::primary_url`], ...) then name `localhost` with `sslmode=verify-full`
    /// and the CA as `sslrootcert` ([`LocalCluster::ca_cert_path`]);
    /// [`LocalCluster::wrong_ca_cert_path`] is a second CA that signed nothing. Unix-socket
    /// logins stay open.
    pub fn tls(mut self, on: bool) -> Self {
        self.tls = on;
        self
    }

    /// With [`tls`](Self::tls) on, whether TCP logins without TLS are refused (default `true`).
    /// `false` keeps TLS on and plain TCP open too (`sslmode=disable` in a URL), to compare the
    /// two on the same servers.
    pub fn tls_only(mut self, only: bool) -> Self {
        self.tls_only = only;
        self
    }

    /// Makes TCP logins of every user but `postgres` need their password, checked with
    /// `scram-sha-256` (default off: every login is trusted). `postgres` stays trusted, so the
    /// cluster's URLs work as before; a role made with `CREATE ROLE app LOGIN PASSWORD '...'`
    /// then logs in with its password only, and `ALTER ROLE app PASSWORD '...'` rotates it (the
    /// replicas replay the change).
    pub fn password_auth(mut self, on: bool) -> Self {
        self.password_auth = on;
        self
    }

    /// Starts a PgBouncer in `mode` in front of the primary and of each replica, on free
    /// loopback ports (default: none); see [`LocalCluster::bouncer_primary_url`] and
    /// [`LocalCluster::bouncer_replica_urls`]. The bouncers trust the `postgres` user, give each
    /// database a pool of 4 server connections (see
    /// [`pgbouncer_pool_size`](Self::pgbouncer_pool_size)) and accept 500 clients; with
    /// [`tls`](Self::tls) on, they require TLS from clients and verify the servers.
    ///
    /// Needs the `pgbouncer` program (`$PGBOUNCER`, `PATH` or `/usr/sbin`); without it,
    /// [`start`](Self::start) fails with [`ClusterError::PgBouncerNotFound`].
    pub fn pgbouncer(mut self, mode: PoolMode) -> Self {
        self.pgbouncer = Some(mode);
        self
    }

    /// The server connections each bouncer keeps per user and database (its
    /// `default_pool_size`; default 4). In session mode every client holds one for as long as
    /// it is connected: make it at least the clients' pool size plus one for a health probe.
    pub fn pgbouncer_pool_size(mut self, size: u32) -> Self {
        self.pgbouncer_pool_size = size;
        self
    }

    /// Sets every server's `max_connections` (default 200, at least 20): room for the
    /// connections of every pool a test or a benchmark opens at once.
    pub fn max_connections(mut self, connections: u32) -> Self {
        self.max_connections = connections.max(20);
        self
    }

    /// Creates the directory, starts the primary and the replicas, and
    /// waits until every replica streams.
    ///
    /// # Errors
    ///
    /// Fails if the binaries are missing, a command fails or a wait times
    /// out; whatever was started is cleaned up before returning.
    pub async fn start(self) -> Result<LocalCluster, ClusterError> {
        LocalCluster::launch(self).await
    }
}
