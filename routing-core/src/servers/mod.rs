//! The servers of a pool and their shared state: each server's connection pool and health, the
//! configuration, the background probe, the router's own SQL and the status report.
//!
//! [`RoutedPool`] is the handle to this state; its hand-out methods live in `pool.rs`.

pub(crate) mod cancel;
pub(crate) mod catalog;
pub(crate) mod connect;
mod health;
mod learned;
pub(crate) mod probe;
mod row;
mod server;
mod session;
mod status;
pub(crate) mod telemetry;
pub(crate) mod tls;
pub(crate) mod tokens;
mod topology;
mod unnamed;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use deadpool::managed::Object;

use crate::config::Config;
use crate::error::{BuildError, Error, Role};
use crate::url::DatabaseUrl;
use catalog::TypeCache;
use connect::Manager;
pub(crate) use health::Lease;
pub(crate) use learned::{Learned, StatementKey};
pub(crate) use row::{RoutedRow, RowStream};
pub(crate) use server::Server;
#[cfg(feature = "sync")]
pub(crate) use server::wrong_role;
pub(crate) use session::{Outcome, ServerSession, Watchable};
pub use status::{PoolStatus, ServerStatus};
use tokens::Tokens;
pub(crate) use topology::Topology;

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
///
/// Aligned to a cache line pair, so that the `Arc`'s reference counts, which every checkout and
/// every read change, share no line with the fields every statement reads.
#[repr(align(128))]
pub(crate) struct Shared {
    id: usize,
    config: Config,
    /// The configured primary; `None` when the pool discovers its primary among its nodes.
    primary: Option<Server>,
    /// The configured replicas, or every node of a discovering pool.
    replicas: Vec<Server>,
    /// The primary a discovering pool found.
    topology: Topology,
    /// Set by `begin_test_transaction`: every statement of every connection goes to the primary.
    test_transaction: AtomicBool,
    types: Arc<TypeCache>,
    probe_started: AtomicBool,
    learned: Learned,
    tokens: Tokens,
    /// Whether statements are timed (see [`Shared::times_statements`]).
    timed: OnceLock<bool>,
}

impl RoutedPool {
    /// Makes the servers of `config`; connects nowhere.
    ///
    /// A primary URL that lists several hosts makes a discovering pool: each host (and each
    /// host of the replica URLs) is a node, and the probe finds which one is the primary. A
    /// replica URL that lists several hosts is one replica per host.
    pub(crate) fn new(config: Config) -> Result<RoutedPool, BuildError> {
        let parse = |what: String, url: &str| {
            let parsed = DatabaseUrl::parse(url)
                .map_err(|source| BuildError::invalid_url(what, url, source))?;
            #[cfg(feature = "rustls")]
            let parsed = parsed.with_tls_config(config.tls_config().cloned());
            Ok::<_, BuildError>(parsed)
        };
        let primary_url = parse("primary".to_owned(), config.primary().expose())?;
        let mut replica_urls = Vec::new();
        for (index, replica) in config.replicas().iter().enumerate() {
            let url = parse(format!("replica {index}"), replica.url.expose())?;
            replica_urls.extend(url.hosts().into_iter().map(|url| (url, replica.weight)));
        }
        let (primary, replicas) = if primary_url.host_count() > 1 {
            let nodes = primary_url
                .hosts()
                .into_iter()
                .map(|url| (url, 1))
                .chain(replica_urls)
                .enumerate()
                .map(|(index, (url, weight))| Server::new(&config, Role::Node(index), url, weight))
                .collect::<Result<Vec<_>, _>>()?;
            (None, nodes)
        } else {
            let primary = Server::new(&config, Role::Primary, primary_url, 1)?;
            let replicas = replica_urls
                .into_iter()
                .enumerate()
                .map(|(index, (url, weight))| {
                    Server::new(&config, Role::Replica(index), url, weight)
                })
                .collect::<Result<Vec<_>, _>>()?;
            (Some(primary), replicas)
        };
        let tokens = Tokens::new(config.max_causal_waits());
        Ok(RoutedPool {
            shared: Arc::new(Shared {
                id: NEXT_POOL_ID.fetch_add(1, Ordering::Relaxed),
                tokens,
                learned: Learned::default(),
                config,
                primary,
                replicas,
                topology: Topology::new(),
                test_transaction: AtomicBool::new(false),
                types: Arc::new(Mutex::new(HashMap::new())),
                probe_started: AtomicBool::new(false),
                timed: OnceLock::new(),
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
            .field("primary", &shared.primary.as_ref().map(Server::url))
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

    /// Whether the pool discovers its primary among its nodes (a multi-host URL).
    pub(crate) fn discovers(&self) -> bool {
        self.primary.is_none()
    }

    /// The primary now: the configured one, or the node the probe found (`None` while there is
    /// none, e.g. during a failover).
    pub(crate) fn primary(&self) -> Option<&Server> {
        match &self.primary {
            Some(primary) => Some(primary),
            None => self.topology.primary().map(|node| &self.replicas[node]),
        }
    }

    /// The primary's node index in a discovering pool (`None` for a configured primary).
    pub(crate) fn primary_node(&self) -> Option<usize> {
        if self.discovers() {
            self.topology.primary()
        } else {
            None
        }
    }

    /// The primary, waiting up to the pool's `primary_wait` for one while there is none; and
    /// its node index in a discovering pool.
    ///
    /// # Errors
    ///
    /// [`Error::NoPrimary`] when none appears in time.
    pub(crate) async fn wait_for_primary(&self) -> Result<(&Server, Option<usize>), Error> {
        let began = Instant::now();
        self.primary_other_than(None, began, began + self.config.primary_wait())
            .await
    }

    /// The primary, if it is not node `failed` (which could not be reached as the primary),
    /// waiting until `deadline` for one; `began` is when the statement started waiting.
    ///
    /// # Errors
    ///
    /// [`Error::NoPrimary`] when none appears in time.
    pub(crate) async fn primary_other_than(
        &self,
        failed: Option<usize>,
        began: Instant,
        deadline: Instant,
    ) -> Result<(&Server, Option<usize>), Error> {
        if let Some(primary) = &self.primary {
            return Ok((primary, None));
        }
        match self.topology.wait(failed, deadline).await {
            Some(node) => Ok((&self.replicas[node], Some(node))),
            None => Err(self.no_primary(failed, began)),
        }
    }

    /// [`Shared::primary_other_than`] for a thread that may block: the primary's node index
    /// (`None` for a configured primary).
    ///
    /// # Errors
    ///
    /// [`Error::NoPrimary`] when none appears in time.
    #[cfg(feature = "sync")]
    pub(crate) fn primary_other_than_blocking(
        &self,
        failed: Option<usize>,
        began: Instant,
        deadline: Instant,
    ) -> Result<Option<usize>, Error> {
        if self.primary.is_some() {
            return Ok(None);
        }
        match self.topology.wait_blocking(failed, deadline) {
            Some(node) => Ok(Some(node)),
            None => Err(self.no_primary(failed, began)),
        }
    }

    /// The error of a statement that found no primary (none other than node `failed`), waiting
    /// since `began`.
    fn no_primary(&self, failed: Option<usize>, began: Instant) -> Error {
        Error::NoPrimary {
            reason: match (self.topology.missing(), failed) {
                (Some(why), _) => why,
                (None, Some(node)) => format!("node {node}, the primary, cannot be reached"),
                (None, None) => String::new(),
            },
            waited: began.elapsed(),
        }
    }

    /// What the probe found of a discovering pool's primary.
    pub(crate) fn topology(&self) -> &Topology {
        &self.topology
    }

    /// The configured replicas, or every node of a discovering pool.
    pub(crate) fn replicas(&self) -> &[Server] {
        &self.replicas
    }

    /// A server by its index among the replicas (or nodes); `None` names the configured
    /// primary.
    pub(crate) fn server(&self, index: Option<usize>) -> Option<&Server> {
        match index {
            Some(index) => self.replicas.get(index),
            None => self.primary.as_ref(),
        }
    }

    /// The configured primary and the replicas, or every node, in configuration order.
    pub(crate) fn servers(&self) -> impl Iterator<Item = &Server> {
        self.primary.iter().chain(&self.replicas)
    }

    pub(crate) fn types(&self) -> &Arc<TypeCache> {
        &self.types
    }

    pub(crate) fn in_test_transaction(&self) -> bool {
        self.test_transaction.load(Ordering::Relaxed)
    }

    /// Whether statements are timed for `db.client.operation.duration`: when a metrics recorder
    /// was installed as the pool ran its first statement, which also registers the histograms
    /// with that recorder. Without one, a statement reads no clock.
    pub(crate) fn times_statements(&self) -> bool {
        *self.timed.get_or_init(telemetry::recorder_installed)
    }

    /// The statements this pool learned to send to the primary.
    pub(crate) fn learned(&self) -> &Learned {
        &self.learned
    }

    /// What the pool knows to check causal tokens.
    pub(crate) fn tokens(&self) -> &Tokens {
        &self.tokens
    }

    /// From now on every statement of this pool goes to the primary.
    pub(crate) fn enter_test_transaction(&self) {
        self.test_transaction.store(true, Ordering::Relaxed);
    }

    /// `error` of a statement on the primary (node `node` of a discovering pool), with the
    /// errors that mean the primary is gone told apart: a broken connection is
    /// [`Error::PrimaryLost`], and a refusal as a write from a node of a discovering pool is
    /// [`Error::NoPrimary`] (it was demoted); either makes the probe look again at once.
    pub(crate) fn primary_error(
        &self,
        node: Option<usize>,
        error: diesel::result::Error,
    ) -> diesel::result::Error {
        use crate::failure::Failure;
        let url = || match node {
            Some(node) => self.replicas[node].url().clone(),
            None => self.config.primary().redacted(),
        };
        match Failure::of(&error, false) {
            Failure::Unreachable => {
                self.topology.look_again();
                Error::PrimaryLost {
                    url: url(),
                    source: error,
                }
                .into_diesel()
            }
            Failure::RefusedAsWrite if self.discovers() => {
                self.topology.look_again();
                Error::NoPrimary {
                    reason: format!("{} refused the write as a standby: it was demoted", url()),
                    waited: std::time::Duration::ZERO,
                }
                .into_diesel()
            }
            _ => error,
        }
    }
}
