//! The servers of a pool and their shared state: each server's connection pool and health, the
//! configuration, the background probe, the router's own SQL and the status report.
//!
//! [`RoutedPool`] is the handle to this state; its hand-out methods live in `pool.rs`.

pub(crate) mod catalog;
pub(crate) mod connect;
mod health;
pub(crate) mod probe;
mod status;
pub(crate) mod tls;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool::managed::{HookError, Object, Pool, PoolError, TimeoutType};

use crate::config::Config;
use crate::error::{BuildError, CheckoutError, ConnectError, Error, Role};
use crate::url::{DatabaseUrl, RedactedUrl};
use catalog::TypeCache;
use connect::Manager;
pub(crate) use health::{Health, Lease};
pub use status::{PoolStatus, ServerStatus};
pub use tls::TlsError;

/// A pooled connection to one server.
pub(crate) type PooledConn = Object<Manager>;

static NEXT_POOL_ID: AtomicUsize = AtomicUsize::new(0);

/// A primary pool and any number of replica pools, handing out
/// [`RoutedConnection`](crate::RoutedConnection)s.
///
/// Cheap to clone: clones share the pools. Nothing connects until a statement needs a server.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use routing_core::RoutedPool;
///
/// let pool = RoutedPool::builder("postgres://app:secret@primary/app")
///     .replica("postgres://app:secret@replica-1/app")
///     .replica("postgres://app:secret@replica-2/app")
///     .build()?;
/// let mut conn = pool.get().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RoutedPool {
    shared: Arc<Shared>,
}

/// The state every clone of a [`RoutedPool`] and every connection it handed out share.
pub(crate) struct Shared {
    id: usize,
    config: Config,
    primary: Server,
    replicas: Vec<Server>,
    /// Set by `begin_test_transaction`: every statement of every connection goes to the primary.
    test_transaction: AtomicBool,
    types: Arc<TypeCache>,
    probe_started: AtomicBool,
}

impl RoutedPool {
    /// Makes the servers of `config`; connects nowhere.
    pub(crate) fn new(config: Config) -> Result<RoutedPool, BuildError> {
        let parse = |what: String, url: &str| {
            let parsed = DatabaseUrl::parse(url)
                .map_err(|source| BuildError::invalid_url(what, url, source))?;
            #[cfg(feature = "rustls")]
            let parsed = parsed.with_tls_config(config.tls_config().cloned());
            Ok::<_, BuildError>(parsed)
        };
        let primary_url = parse("primary".to_owned(), config.primary().expose())?;
        let replica_urls = config
            .replicas()
            .iter()
            .enumerate()
            .map(|(index, replica)| parse(format!("replica {index}"), replica.url.expose()))
            .collect::<Result<Vec<_>, _>>()?;
        let primary = Server::new(&config, Role::Primary, primary_url, 1)?;
        let replicas = replica_urls
            .into_iter()
            .zip(config.replicas())
            .enumerate()
            .map(|(index, (url, replica))| {
                Server::new(&config, Role::Replica(index), url, replica.weight)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(RoutedPool {
            shared: Arc::new(Shared {
                id: NEXT_POOL_ID.fetch_add(1, Ordering::Relaxed),
                config,
                primary,
                replicas,
                test_transaction: AtomicBool::new(false),
                types: Arc::new(Mutex::new(HashMap::new())),
                probe_started: AtomicBool::new(false),
            }),
        })
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }
}

impl std::fmt::Debug for RoutedPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shared = &self.shared;
        f.debug_struct("RoutedPool")
            .field("primary", shared.primary.url())
            .field(
                "replicas",
                &shared.replicas.iter().map(Server::url).collect::<Vec<_>>(),
            )
            .field("fallback_to_primary", &shared.config.fallback_to_primary())
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// A number no other pool of this process has.
    pub(crate) fn id(&self) -> usize {
        self.id
    }

    pub(crate) fn config(&self) -> &Config {
        &self.config
    }

    pub(crate) fn primary(&self) -> &Server {
        &self.primary
    }

    pub(crate) fn replicas(&self) -> &[Server] {
        &self.replicas
    }

    /// The primary, then the replicas in configuration order.
    pub(crate) fn servers(&self) -> impl Iterator<Item = &Server> {
        std::iter::once(&self.primary).chain(&self.replicas)
    }

    pub(crate) fn types(&self) -> &Arc<TypeCache> {
        &self.types
    }

    pub(crate) fn in_test_transaction(&self) -> bool {
        self.test_transaction.load(Ordering::Relaxed)
    }

    /// From now on every statement of this pool goes to the primary.
    pub(crate) fn enter_test_transaction(&self) {
        self.test_transaction.store(true, Ordering::Relaxed);
    }
}

/// One server and its connection pool.
pub(crate) struct Server {
    role: Role,
    url: DatabaseUrl,
    weight: u32,
    pool: Pool<Manager>,
    health: Arc<Health>,
}

impl Server {
    fn new(config: &Config, role: Role, url: DatabaseUrl, weight: u32) -> Result<Self, BuildError> {
        // A replica read that meets a dead pooled connection is retried elsewhere, so replica
        // pools skip the `SELECT 1` per checkout; the primary's writes are not retried.
        let verify_checkouts = role == Role::Primary && config.verify_primary_checkouts();
        let manager = Manager::new(role, url.clone(), config.verify_roles(), verify_checkouts);
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
}
