//! One server: its connection pool, its health, and what a failed checkout means.

use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool::managed::{HookError, Pool, PoolError, TimeoutType};

use super::PooledConn;
use super::connect::Manager;
use super::health::Health;
use super::telemetry::PoolMetrics;
use crate::config::Config;
use crate::error::{BuildError, CheckoutError, ConnectError, Error, Role};
use crate::url::{DatabaseUrl, RedactedUrl};

/// Where a server is, as telemetry names it: `server.address`, `server.port` and
/// `db.namespace` of the OpenTelemetry database conventions.
#[derive(Debug)]
pub(crate) struct Peer {
    /// The host name, IP address or Unix socket directory.
    pub(crate) address: Box<str>,
    /// The port.
    pub(crate) port: u16,
    /// The database name.
    pub(crate) namespace: Box<str>,
}

impl Peer {
    fn of(url: &DatabaseUrl) -> Self {
        let config = url.config();
        let address = match config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(host)) => host.as_str().into(),
            Some(tokio_postgres::config::Host::Unix(path)) => path.display().to_string().into(),
            None => "localhost".into(),
        };
        let namespace = config
            .get_dbname()
            .or(config.get_user())
            .unwrap_or("postgres")
            .into();
        Peer {
            address,
            port: config.get_ports().first().copied().unwrap_or(5432),
            namespace,
        }
    }
}

/// One server and its connection pool.
pub(crate) struct Server {
    role: Role,
    url: DatabaseUrl,
    peer: Peer,
    weight: u32,
    pool: Pool<Manager>,
    health: Arc<Health>,
    metrics: PoolMetrics,
}

impl Server {
    /// A server in `role`, whose connections come from `url`.
    ///
    /// A configured replica's sessions are read-only and, with `verify_roles`, every session
    /// checks that its server is in its configured role. A node of a discovering pool has no
    /// fixed role: its sessions are neither.
    pub(super) fn new(
        config: &Config,
        role: Role,
        url: DatabaseUrl,
        weight: u32,
    ) -> Result<Self, BuildError> {
        // A replica read that meets a dead pooled connection is retried elsewhere, so replica
        // pools skip the `SELECT 1` per checkout; the primary's writes are not retried.
        let verify_checkouts =
            matches!(role, Role::Primary | Role::Node(_)) && config.verify_primary_checkouts();
        let fixed_role = match role {
            Role::Node(_) => None,
            role => Some(role),
        };
        let manager = Manager::new(
            fixed_role,
            url.clone(),
            config.verify_roles(),
            verify_checkouts,
        );
        let pool = Pool::builder(manager)
            .max_size(config.max_size())
            .wait_timeout(Some(config.checkout_timeout()))
            .create_timeout(Some(config.connect_timeout()))
            .recycle_timeout(Some(config.connect_timeout()))
            .runtime(deadpool::Runtime::Tokio1)
            .build()
            .map_err(|source| BuildError::Pool {
                role,
                url: url.redacted().clone(),
                source,
            })?;
        Ok(Server {
            role,
            peer: Peer::of(&url),
            url,
            weight,
            pool,
            health: Arc::new(Health::new(role)),
            metrics: PoolMetrics::new(role),
        })
    }

    pub(crate) fn role(&self) -> Role {
        self.role
    }

    pub(crate) fn url(&self) -> &RedactedUrl {
        self.url.redacted()
    }

    pub(crate) fn database_url(&self) -> &DatabaseUrl {
        &self.url
    }

    /// Where the server is, for telemetry.
    pub(crate) fn peer(&self) -> &Peer {
        &self.peer
    }

    pub(crate) fn weight(&self) -> u32 {
        self.weight
    }

    pub(crate) fn health(&self) -> &Arc<Health> {
        &self.health
    }

    pub(crate) fn pool_status(&self) -> deadpool::Status {
        self.pool.status()
    }

    /// Sets the pool's connection gauges (`db.client.connection.count`, `.max`,
    /// `.pending_requests`) from its status now.
    pub(crate) fn refresh_metrics(&self) {
        self.metrics.refresh(&self.pool.status());
    }

    /// Checks a connection out of this server's pool, recording how long it took
    /// (`db.client.connection.wait_time`) or that it timed out (`db.client.connection.timeouts`).
    ///
    /// # Errors
    ///
    /// [`Error::PoolExhausted`] when every connection stayed in use for the checkout timeout;
    /// [`Error::ReplicaIsPrimary`] or [`Error::PrimaryIsStandby`] for a server in the wrong role;
    /// else [`Error::Checkout`].
    pub(crate) async fn checkout(&self) -> Result<PooledConn, Error> {
        let began = Instant::now();
        match self.pool.get().await {
            Ok(conn) => {
                self.metrics.checked_out(began.elapsed());
                Ok(conn)
            }
            Err(error) => {
                if matches!(error, PoolError::Timeout(_)) {
                    self.metrics.timed_out();
                }
                Err(self.checkout_error(error))
            }
        }
    }

    fn checkout_error(&self, error: PoolError<ConnectError>) -> Error {
        let timeouts = self.pool.timeouts();
        let timeout = |t: Option<Duration>| t.unwrap_or_default();
        let source = match error {
            PoolError::Timeout(TimeoutType::Wait) => {
                return Error::PoolExhausted {
                    role: self.role,
                    url: self.url().clone(),
                    timeout: timeout(timeouts.wait),
                    max_size: self.pool.status().max_size,
                };
            }
            PoolError::Backend(ConnectError::WrongRole { .. }) => return self.wrong_role(),
            PoolError::Backend(e) => CheckoutError::Connect(e),
            PoolError::Timeout(TimeoutType::Create) => {
                CheckoutError::ConnectTimeout(timeout(timeouts.create))
            }
            PoolError::Timeout(TimeoutType::Recycle) => {
                CheckoutError::RecycleTimeout(timeout(timeouts.recycle))
            }
            PoolError::Closed => CheckoutError::Closed,
            PoolError::NoRuntimeSpecified => CheckoutError::NoRuntime,
            PoolError::PostCreateHook(HookError::Backend(e)) => CheckoutError::Connect(e),
            // No post-create hook with messages is installed.
            PoolError::PostCreateHook(HookError::Message(_)) => CheckoutError::Closed,
        };
        Error::Checkout {
            role: self.role,
            url: self.url().clone(),
            source,
        }
    }

    /// The error for this server found in the other role than configured.
    pub(crate) fn wrong_role(&self) -> Error {
        match self.role {
            Role::Primary => Error::PrimaryIsStandby {
                url: self.url().clone(),
            },
            role => Error::ReplicaIsPrimary {
                role,
                url: self.url().clone(),
            },
        }
    }

    /// Whether this server has a role of its own (a configured primary or replica) rather than
    /// one the probe discovers.
    #[cfg(feature = "migrations")]
    pub(crate) fn has_fixed_role(&self) -> bool {
        !matches!(self.role, Role::Node(_))
    }
}
