//! The synchronous pool's servers: one r2d2 pool of `diesel::PgConnection`s beside each server
//! of the shared state, the sessions those pools hold, and what a failed checkout means.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use diesel::r2d2::{self, ManageConnection, R2D2Connection};
use diesel::{Connection, PgConnection};

use super::conninfo;
use crate::config::Config;
use crate::error::{BuildError, CheckoutError, ConnectError, Error, Role};
use crate::servers::catalog::blocking as catalog;
use crate::servers::{Server, Shared, wrong_role};
use crate::url::RedactedUrl;

/// A pooled connection of the synchronous pool.
pub(super) type Pooled = r2d2::PooledConnection<Manager>;

/// How long a checkout woken by a new session waits for r2d2 to put it in the pool.
const SETTLE: Duration = Duration::from_millis(2);

/// A pooled server session and what the router knows of it.
pub(crate) struct SyncConn {
    pg: PgConnection,
    /// Whether a statement changed the session's state: it is closed instead of reused.
    session_changed: bool,
    /// Whether the session failed in a way that makes it unfit for reuse.
    discard: bool,
}

impl SyncConn {
    /// The diesel connection.
    pub(super) fn pg(&mut self) -> &mut PgConnection {
        &mut self.pg
    }

    /// Notes that a statement changed the session's state.
    pub(super) fn mark_session_changed(&mut self) {
        self.session_changed = true;
    }

    /// Closes the session when it goes back to its pool, instead of reusing it.
    pub(super) fn discard(&mut self) {
        self.discard = true;
    }

    /// Whether the session's transaction state is broken (diesel's own check).
    pub(super) fn is_broken(&mut self) -> bool {
        R2D2Connection::is_broken(&mut self.pg)
    }
}

/// The last failure to open a session to one server, kept for the checkouts that wait on it.
#[derive(Debug, Default)]
struct Failures {
    count: AtomicU64,
    last: Mutex<Option<Failed>>,
}

/// A failure to open a session, in a form that can be handed to every waiting checkout.
#[derive(Clone, Debug)]
enum Failed {
    Connect(String),
    Setup(String),
    WrongRole,
}

impl Failures {
    fn note(&self, error: &ConnectError) {
        let failed = match error {
            ConnectError::WrongRole { .. } => Failed::WrongRole,
            ConnectError::Setup(error) => Failed::Setup(error.to_string()),
            ConnectError::Establish(error) => Failed::Connect(error.to_string()),
            other => Failed::Connect(other.to_string()),
        };
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(failed);
        self.count.fetch_add(1, Ordering::Release);
    }

    fn count(&self) -> u64 {
        self.count.load(Ordering::Acquire)
    }

    fn last(&self) -> Option<Failed> {
        self.last.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Counts the sessions a pool finished opening (or failed to), and wakes the checkouts that wait
/// for one: r2d2's own wait cannot tell that opening failed before its timeout.
#[derive(Debug, Default)]
struct Opened {
    generation: Mutex<u64>,
    changed: Condvar,
}

impl Opened {
    fn bump(&self) {
        *self.generation.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        self.changed.notify_all();
    }

    fn generation(&self) -> u64 {
        *self.generation.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits up to `timeout` for a session to be opened (or fail) after `seen`.
    fn wait(&self, seen: u64, timeout: Duration) {
        let generation = self.generation.lock().unwrap_or_else(|e| e.into_inner());
        let _ = self
            .changed
            .wait_timeout_while(generation, timeout, |generation| *generation == seen);
    }
}

/// Makes and checks the sessions of one server's r2d2 pool.
pub(crate) struct Manager {
    /// The server's configured role; `None` for a node whose role the probe discovers.
    role: Option<Role>,
    /// The libpq connection string, password included: never print it.
    conninfo: String,
    url: RedactedUrl,
    verify_role: bool,
    failures: Arc<Failures>,
    opened: Arc<Opened>,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("role", &self.role)
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl Manager {
    fn open(&self) -> Result<SyncConn, ConnectError> {
        let mut pg = PgConnection::establish(&self.conninfo).map_err(ConnectError::Establish)?;
        if let Some(role) = self.role {
            let replica = matches!(role, Role::Replica(_));
            let in_recovery =
                catalog::set_up_session(&mut pg, replica).map_err(ConnectError::Setup)?;
            if self.verify_role && in_recovery != replica {
                return Err(ConnectError::WrongRole { in_recovery });
            }
        }
        Ok(SyncConn {
            pg,
            session_changed: false,
            discard: false,
        })
    }
}

impl ManageConnection for Manager {
    type Connection = SyncConn;
    type Error = ConnectError;

    /// A new session: a configured replica's is read-only on the server, and with
    /// `verify_roles` the server must be in its configured role.
    fn connect(&self) -> Result<SyncConn, ConnectError> {
        let opened = self.open().inspect_err(|error| {
            tracing::debug!(target: "routing_core", url = %self.url, %error, "cannot open a session");
            self.failures.note(error);
        });
        self.opened.bump();
        opened
    }

    /// Asked at checkout only when the pool verifies its checkouts (the primary's, by default).
    fn is_valid(&self, conn: &mut SyncConn) -> Result<(), ConnectError> {
        conn.pg.ping().map_err(ConnectError::Setup)
    }

    fn has_broken(&self, conn: &mut SyncConn) -> bool {
        std::thread::panicking() || conn.discard || conn.session_changed || conn.is_broken()
    }
}

/// One server's r2d2 pool.
pub(super) struct SyncServer {
    role: Role,
    url: RedactedUrl,
    pool: r2d2::Pool<Manager>,
    failures: Arc<Failures>,
    opened: Arc<Opened>,
    checkout_timeout: Duration,
}

impl SyncServer {
    /// The pool beside `server`: nothing connects until a checkout needs a session.
    fn new(config: &Config, server: &Server) -> Self {
        let role = server.role();
        let failures = Arc::new(Failures::default());
        let opened = Arc::new(Opened::default());
        let manager = Manager {
            role: match role {
                Role::Node(_) => None,
                role => Some(role),
            },
            conninfo: conninfo::of(server.database_url(), config.connect_timeout()),
            url: server.url().clone(),
            verify_role: config.verify_roles(),
            failures: Arc::clone(&failures),
            opened: Arc::clone(&opened),
        };
        // As the async pools: replica checkouts never ask (a read that meets a dead connection
        // runs again elsewhere); the primary's do unless told not to.
        let verify_checkouts =
            matches!(role, Role::Primary | Role::Node(_)) && config.verify_primary_checkouts();
        // A node of a discovering pool may become the primary: it takes the primary's limits.
        let primary = !matches!(role, Role::Replica(_));
        let pool = r2d2::Pool::builder()
            .max_size(u32::try_from(config.max_size(primary)).unwrap_or(u32::MAX))
            .min_idle(Some(0))
            .connection_timeout(config.checkout_timeout(primary))
            .test_on_check_out(verify_checkouts)
            // Failures are kept in `failures` and logged by the manager.
            .error_handler(Box::new(r2d2::NopErrorHandler))
            .build_unchecked(manager);
        SyncServer {
            role,
            url: server.url().clone(),
            pool,
            failures,
            opened,
            checkout_timeout: config.checkout_timeout(primary),
        }
    }

    /// Checks a session out of this server's pool: an idle one at once, else waits for one,
    /// giving up as soon as opening a new one fails.
    ///
    /// # Errors
    ///
    /// [`Error::PoolExhausted`] when every session stayed in use for the checkout timeout;
    /// [`Error::ReplicaIsPrimary`] or [`Error::PrimaryIsStandby`] for a server in the wrong role;
    /// else [`Error::Checkout`].
    pub(super) fn checkout(&self) -> Result<Pooled, Error> {
        if let Some(conn) = self.pool.try_get() {
            return Ok(conn);
        }
        let failures = self.failures.count();
        let deadline = Instant::now() + self.checkout_timeout;
        // The generation of opened sessions when this checkout last asked for a new one: it asks
        // again only after a session was opened (and, maybe, taken by another checkout).
        let mut asked: Option<u64> = None;
        loop {
            let generation = self.opened.generation();
            if let Some(conn) = self.take(asked.is_some_and(|asked| asked != generation)) {
                return Ok(conn);
            }
            if self.failures.count() != failures {
                return Err(self.failed());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::PoolExhausted {
                    role: self.role,
                    url: self.url.clone(),
                    timeout: self.checkout_timeout,
                    max_size: self.pool.max_size() as usize,
                });
            }
            if self.pool.state().connections >= self.pool.max_size() {
                // Every session is in use: r2d2 wakes this when one comes back (and opens none).
                if let Ok(conn) = self.pool.get_timeout(left) {
                    return Ok(conn);
                }
            } else if asked != Some(generation) {
                // Asks r2d2 to open a session, without waiting on its wait, which would open
                // another each time it woke without one.
                asked = Some(generation);
                if let Ok(conn) = self.pool.get_timeout(Duration::ZERO) {
                    return Ok(conn);
                }
            } else {
                self.opened.wait(generation, left);
            }
        }
    }

    /// An idle session; with `settle`, just after a session was opened, waiting briefly for r2d2
    /// to put it in the pool.
    fn take(&self, settle: bool) -> Option<Pooled> {
        let until = Instant::now() + if settle { SETTLE } else { Duration::ZERO };
        loop {
            if let Some(conn) = self.pool.try_get() {
                return Some(conn);
            }
            if Instant::now() >= until {
                return None;
            }
            std::thread::sleep(Duration::from_micros(100));
        }
    }

    /// The error of a checkout that saw opening a session fail.
    fn failed(&self) -> Error {
        let source = match self.failures.last() {
            Some(Failed::WrongRole) => return wrong_role(self.role, &self.url),
            Some(Failed::Setup(message)) => {
                ConnectError::Setup(diesel::result::Error::QueryBuilderError(message.into()))
            }
            Some(Failed::Connect(message)) => {
                ConnectError::Establish(diesel::ConnectionError::BadConnection(message))
            }
            None => ConnectError::Establish(diesel::ConnectionError::BadConnection(
                "the session could not be opened".to_owned(),
            )),
        };
        Error::Checkout {
            role: self.role,
            url: self.url.clone(),
            source: CheckoutError::Connect(source),
        }
    }

    /// Sessions checked out now, idle, and the pool's maximum.
    pub(super) fn state(&self) -> (usize, usize, usize) {
        let state = self.pool.state();
        let open = state.connections as usize;
        let idle = state.idle_connections as usize;
        (
            open.saturating_sub(idle),
            idle,
            self.pool.max_size() as usize,
        )
    }
}

/// The r2d2 pools of a synchronous pool, beside the servers of its shared state: the same
/// indices, the same roles.
pub(super) struct SyncServers {
    /// The configured primary's; `None` when the pool discovers its primary among its nodes.
    primary: Option<SyncServer>,
    /// The configured replicas', or every node's.
    replicas: Vec<SyncServer>,
}

impl SyncServers {
    /// Pools beside the servers of `shared`.
    ///
    /// # Errors
    ///
    /// [`BuildError::InvalidSetting`] for a pool's rustls configuration, which libpq cannot use.
    pub(super) fn new(shared: &Shared) -> Result<Self, BuildError> {
        let config = shared.config();
        #[cfg(feature = "rustls")]
        if config.tls_config().is_some() {
            return Err(BuildError::InvalidSetting {
                setting: "tls_config",
                value: "a rustls::ClientConfig".to_owned(),
                expected: "none for a sync pool: libpq makes its TLS connections from the URL's \
                           sslmode, sslrootcert, sslcert and sslkey",
            });
        }
        let async_only = [
            (
                config.credentials().is_some(),
                "credentials",
                "a credentials provider",
            ),
            (config.on_connect().is_some(), "on_connect", "a hook"),
            (config.transaction_pooler(), "transaction_pooler", "true"),
        ];
        if let Some((_, setting, value)) = async_only.into_iter().find(|(set, ..)| *set) {
            return Err(BuildError::InvalidSetting {
                setting,
                value: value.to_owned(),
                expected: "the async pool's: a sync pool's libpq connections take their \
                           credentials from the URLs, and their session setup from the URLs' \
                           options",
            });
        }
        let mut primary = None;
        let mut replicas = Vec::new();
        for server in shared.servers() {
            let pool = SyncServer::new(config, server);
            match server.role() {
                Role::Primary => primary = Some(pool),
                _ => replicas.push(pool),
            }
        }
        Ok(SyncServers { primary, replicas })
    }

    /// The pool of the primary: the configured one, or node `node` of a discovering pool.
    pub(super) fn primary(&self, node: Option<usize>) -> Option<&SyncServer> {
        match node {
            Some(node) => self.replicas.get(node),
            None => self.primary.as_ref(),
        }
    }

    /// The pool of replica (or node) `index`.
    pub(super) fn replica(&self, index: usize) -> Option<&SyncServer> {
        self.replicas.get(index)
    }

    /// Every pool, in the order of the shared state's servers.
    pub(super) fn all(&self) -> impl Iterator<Item = &SyncServer> {
        self.primary.iter().chain(&self.replicas)
    }
}
