//! One server: its connection pool, its health, and what a failed checkout means.

use std::sync::Arc;
use std::time::Duration;

use deadpool::managed::{HookError, Pool, PoolError, TimeoutType};

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
            url,
            weight,
            pool,
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
        self.pool.get().await.map_err(|e| self.checkout_error(e))
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
