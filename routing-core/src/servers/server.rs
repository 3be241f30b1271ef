//! One server: its connection pool, its health, and what a failed checkout means.

use std::sync::Arc;
use std::time::Duration;

use deadpool::managed::{HookError, Pool, PoolError, TimeoutType, Timeouts};

use super::PooledConn;
use super::connect::Manager;
use super::health::Health;
use crate::config::Config;
use crate::error::{BuildError, CheckoutError, ConnectError, Error, Role};
use crate::url::{DatabaseUrl, RedactedUrl};

/// One server and its connection pool.
pub(crate) struct Server {
    role: Role,
    url: DatabaseUrl,
    weight: u32,
    pool: Pool<Manager>,
    /// How long a checkout waits for a free connection.
    wait: Duration,
    health: Arc<Health>,
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
            config.connect_timeout(),
        );
        // No deadpool timeouts: they would take the caller's runtime's timers, which a runtime
        // may lack. The checkout's wait is timed here, connecting and recycling in `Manager`,
        // all on the router's clock.
        let pool = Pool::builder(manager)
            .max_size(config.max_size())
            .build()
            .map_err(|source| BuildError::Pool {
                role,
                url: url.redacted().clone(),
                source,
            })?;
        Ok(Server {
            role,
            url,
            weight,
            pool,
            wait: config.checkout_timeout(),
            health: Arc::new(Health::new(role)),
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

    pub(crate) fn weight(&self) -> u32 {
        self.weight
    }

    pub(crate) fn health(&self) -> &Arc<Health> {
        &self.health
    }

    pub(crate) fn pool_status(&self) -> deadpool::Status {
        self.pool.status()
    }

    /// Checks a connection out of this server's pool.
    ///
    /// # Errors
    ///
    /// [`Error::PoolExhausted`] when every connection stayed in use for the checkout timeout;
    /// [`Error::ReplicaIsPrimary`] or [`Error::PrimaryIsStandby`] for a server in the wrong role;
    /// else [`Error::Checkout`].
    pub(crate) async fn checkout(&self) -> Result<PooledConn, Error> {
        // A free connection first, without a timer; else wait for one, on the clock.
        let free = Timeouts {
            wait: Some(Duration::ZERO),
            ..Timeouts::new()
        };
        let checked_out = match self.pool.timeout_get(&free).await {
            Err(PoolError::Timeout(TimeoutType::Wait)) => {
                crate::clock::timeout(self.wait, self.pool.timeout_get(&Timeouts::new()))
                    .await
                    .unwrap_or(Err(PoolError::Timeout(TimeoutType::Wait)))
            }
            checked_out => checked_out,
        };
        checked_out.map_err(|e| self.checkout_error(e))
    }

    fn checkout_error(&self, error: PoolError<ConnectError>) -> Error {
        let source = match error {
            PoolError::Timeout(TimeoutType::Wait) => {
                return Error::PoolExhausted {
                    role: self.role,
                    url: self.url().clone(),
                    timeout: self.wait,
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
