//! One server: its connection pool, its health, and what a failed checkout means.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use deadpool::managed::{HookError, Pool, PoolError, TimeoutType, Timeouts};
use futures_util::future::BoxFuture;

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
    /// The pool's limits as the primary, then as a replica: a node of a discovering pool takes
    /// those of the role it has now.
    sizes: [usize; 2],
    /// How long a checkout waits for a free connection, as the primary, then as a replica.
    waits: [Duration; 2],
    /// Whether the server serves as the primary now: its configured role, or, for a node,
    /// what the probe found last.
    as_primary: AtomicBool,
}

impl Server {
    /// A server in `role`, whose connections come from `url` (see [`Manager`] for their setup).
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
        let manager = Manager::new(role, url.clone(), config, verify_checkouts);
        let waits = [
            config.checkout_timeout(true),
            config.checkout_timeout(false),
        ];
        let sizes = [config.max_size(true), config.max_size(false)];
        // A node starts as a replica, until the probe finds it is the primary.
        let as_primary = role == Role::Primary;
        let duty = usize::from(!as_primary);
        // No deadpool timeouts: they would take the caller's runtime's timers, which a runtime
        // may lack. The checkout's wait is timed here, connecting and recycling in `Manager`,
        // all on the router's clock.
        let pool = Pool::builder(manager)
            .max_size(sizes[duty])
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
            sizes,
            waits,
            as_primary: AtomicBool::new(as_primary),
        })
    }

    /// Gives a node of a discovering pool the pool size and checkout timeout of the role the
    /// probe found it in: the primary's, or a replica's.
    pub(super) fn serve_as(&self, primary: bool) {
        if self.as_primary.swap(primary, Ordering::AcqRel) != primary {
            self.pool.resize(self.sizes[usize::from(!primary)]);
        }
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
    pub(crate) fn checkout(&self) -> BoxFuture<'_, Result<PooledConn, Error>> {
        // Boxed: deadpool's checkout future is about 2 KiB, and every future that awaits a
        // checkout (a read's, through several layers) would carry it and be copied with it.
        Box::pin(self.checkout_inline())
    }

    async fn checkout_inline(&self) -> Result<PooledConn, Error> {
        let wait = self.wait();
        // A free connection first, without a timer or a clock read (it waited nothing); else
        // wait for one, on the clock, and time the wait.
        let free = Timeouts {
            wait: Some(Duration::ZERO),
            ..Timeouts::new()
        };
        let mut waited = Duration::ZERO;
        let checked_out = match self.pool.timeout_get(&free).await {
            Err(PoolError::Timeout(TimeoutType::Wait)) => {
                let began = Instant::now();
                // Boxed: the future of every checkout would hold this second one too.
                let checked_out = Box::pin(crate::clock::timeout(
                    wait,
                    self.pool.timeout_get(&Timeouts::new()),
                ))
                .await
                .unwrap_or(Err(PoolError::Timeout(TimeoutType::Wait)));
                waited = began.elapsed();
                checked_out
            }
            checked_out => checked_out,
        };
        match checked_out {
            Ok(conn) => {
                self.metrics.checked_out(waited);
                Ok(conn)
            }
            Err(error) => {
                if matches!(
                    error,
                    PoolError::Timeout(_) | PoolError::Backend(ConnectError::Timeout(_))
                ) {
                    self.metrics.timed_out();
                }
                Err(self.checkout_error(error, wait))
            }
        }
    }

    /// How long a checkout waits for a free connection, in the role the server serves in now.
    fn wait(&self) -> Duration {
        self.waits[usize::from(!self.as_primary.load(Ordering::Relaxed))]
    }

    fn checkout_error(&self, error: PoolError<ConnectError>, wait: Duration) -> Error {
        let source = match error {
            PoolError::Timeout(TimeoutType::Wait) => {
                return Error::PoolExhausted {
                    role: self.role,
                    url: self.url().clone(),
                    timeout: wait,
                    max_size: self.pool.status().max_size,
                };
            }
            PoolError::Backend(ConnectError::WrongRole { .. }) => return self.wrong_role(),
            PoolError::Backend(ConnectError::Timeout(timeout)) => {
                CheckoutError::ConnectTimeout(timeout)
            }
            PoolError::Backend(e) => CheckoutError::Connect(e),
            // `Manager` times these itself.
            PoolError::Timeout(TimeoutType::Create) => {
                CheckoutError::ConnectTimeout(Duration::ZERO)
            }
            PoolError::Timeout(TimeoutType::Recycle) => {
                CheckoutError::RecycleTimeout(Duration::ZERO)
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

    /// Notes that checking a connection out of this server failed with `error`: the server is
    /// banned, unless only its pool was busy (no sign of a sick server).
    pub(crate) fn note_checkout_failure(&self, error: &Error) {
        if !matches!(error, Error::PoolExhausted { .. }) {
            self.health.ban(error.to_string());
        }
    }

    /// The error of a read that waited on this server while it was banned.
    pub(crate) fn banned_error(&self) -> Error {
        Error::Banned {
            role: self.role,
            ban_reason: self.health.ban_reason(),
        }
    }

    /// The error for this server found in the other role than configured.
    pub(crate) fn wrong_role(&self) -> Error {
        wrong_role(self.role, self.url())
    }

    /// Whether this server has a role of its own (a configured primary or replica) rather than
    /// one the probe discovers.
    #[cfg(feature = "migrations")]
    pub(crate) fn has_fixed_role(&self) -> bool {
        !matches!(self.role, Role::Node(_))
    }
}

/// The error for the server at `url`, configured in `role`, found in the other role.
pub(crate) fn wrong_role(role: Role, url: &RedactedUrl) -> Error {
    match role {
        Role::Primary => Error::PrimaryIsStandby { url: url.clone() },
        role => Error::ReplicaIsPrimary {
            role,
            url: url.clone(),
        },
    }
}
