use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use diesel::ConnectionError;
use diesel::sql_types::Bool;
use diesel_async::pooled_connection::deadpool::{Object, Pool};
use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, PoolError as ManagerError, RecyclingMethod,
    SetupCallback,
};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use futures_util::FutureExt;

#[allow(unused_imports)] // named in the docs
use crate::balance::{LeastOutstanding, LowestLatency, Random};
use crate::balance::{Policy, ReplicaPolicy, RoundRobin};
use crate::causal::{CausalToken, ReadYourWrites};
use crate::classify::Classifier;
use crate::connection::RoutedConnection;
use crate::env;
use crate::error::{Error, Role};
use crate::health::{self, Health, HealthCheck};
use crate::url::{DatabaseUrl, RedactedUrl};

/// A pooled connection to one server.
pub(crate) type PgObject = Object<AsyncPgConnection>;

/// OIDs of custom PostgreSQL types by (schema, name); physical replicas share their primary's.
pub(crate) type TypeCache = Mutex<HashMap<(Option<String>, String), (u32, u32)>>;

static NEXT_POOL_ID: AtomicUsize = AtomicUsize::new(0);

/// A primary pool and any number of replica pools, handing out [`RoutedConnection`]s.
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
    pub(crate) inner: Arc<PoolInner>,
}

pub(crate) struct PoolInner {
    pub(crate) id: usize,
    pub(crate) primary: Server,
    pub(crate) replicas: Vec<Server>,
    pub(crate) policy: Policy,
    pub(crate) health_check: HealthCheck,
    pub(crate) prober_started: AtomicBool,
    pub(crate) max_lag: Option<Duration>,
    pub(crate) max_lag_bytes: Option<u64>,
    pub(crate) read_your_writes: ReadYourWrites,
    /// Set by `begin_test_transaction`: every statement of every connection goes to the primary.
    pub(crate) test_transaction: AtomicBool,
    pub(crate) classifier: Classifier,
    pub(crate) fallback_to_primary: bool,
    pub(crate) retry_refused_writes: bool,
    pub(crate) types: Arc<TypeCache>,
    pub(crate) verify_roles: bool,
}

/// One server and its connection pool.
pub(crate) struct Server {
    pub(crate) role: Role,
    pub(crate) url: DatabaseUrl,
    pub(crate) pool: Pool<AsyncPgConnection>,
    pub(crate) health: Arc<Health>,
    pub(crate) weight: u32,
    max_size: usize,
    pub(crate) checkout_timeout: Duration,
    connect_timeout: Duration,
}

impl Server {
    /// Checks a connection out of this server's pool.
    pub(crate) async fn checkout(&self) -> Result<PgObject, Error> {
        self.pool.get().await.map_err(|e| {
            use deadpool::managed::{PoolError, TimeoutType};
            let reason = match e {
                PoolError::Timeout(TimeoutType::Wait) => {
                    return Error::PoolExhausted {
                        role: self.role,
                        url: self.url.redacted().clone(),
                        timeout: self.checkout_timeout,
                        max_size: self.max_size,
                    };
                }
                PoolError::Timeout(TimeoutType::Create) => {
                    format!("connecting took longer than {:?}", self.connect_timeout)
                }
                PoolError::Timeout(TimeoutType::Recycle) => format!(
                    "checking a pooled connection took longer than {:?}",
                    self.connect_timeout
                ),
                PoolError::Backend(ManagerError::ConnectionError(e)) => connection_error_text(&e),
                PoolError::Backend(ManagerError::QueryError(e)) => e.to_string(),
                PoolError::Closed => "the pool is closed".to_owned(),
                PoolError::NoRuntimeSpecified => "no async runtime for timeouts".to_owned(),
                PoolError::PostCreateHook(e) => e.to_string(),
            };
            Error::Checkout {
                role: self.role,
                url: self.url.redacted().clone(),
                reason,
            }
        })
    }
}

fn connection_error_text(e: &ConnectionError) -> String {
    match e {
        // Our own setup messages are complete sentences already.
        ConnectionError::BadConnection(message) => message.clone(),
        other => other.to_string(),
    }
}

impl std::fmt::Debug for RoutedPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoutedPool")
            .field("primary", self.inner.primary.url.redacted())
            .field(
                "replicas",
                &self
                    .inner
                    .replicas
                    .iter()
                    .map(|r| r.url.redacted())
                    .collect::<Vec<_>>(),
            )
            .field("fallback_to_primary", &self.inner.fallback_to_primary)
            .finish_non_exhaustive()
    }
}

impl RoutedPool {
    /// Starts configuring a pool whose primary is at `primary_url`.
    pub fn builder(primary_url: impl Into<String>) -> RoutedPoolBuilder {
        RoutedPoolBuilder::new(primary_url.into())
    }

    /// Builds a pool from the environment variables of the original design.
    ///
    /// `DATABASE_URL` is the primary. `ENABLE_READ_REPLICA=1` turns replicas on, read from
    /// `DATABASE_READ_REPLICA_URL` (comma-separated for several) or else from
    /// `POSTGRES_READ_REPLICA_DB`, `_USER`, `_PASSWORD`, `_HOST` and `_PORT` (default 5432).
    /// With `ENABLE_READ_REPLICA` unset or `0` every query goes to the primary and no replica
    /// pool exists.
    ///
    /// # Errors
    ///
    /// A missing `DATABASE_URL`, an `ENABLE_READ_REPLICA` other than `0` or `1`, replicas
    /// enabled without a replica URL or its parts, or any invalid URL.
    pub fn from_env() -> Result<RoutedPool, Error> {
        RoutedPoolBuilder::from_env()?.build()
    }

    /// Hands out a connection that routes each statement. No server connection is checked out
    /// until a statement needs one. The first call starts the replicas' background health probe
    /// on the running tokio runtime.
    ///
    /// # Errors
    ///
    /// None today; the `Result` leaves room for checks at hand-out time.
    pub async fn get(&self) -> Result<RoutedConnection, Error> {
        health::start(&self.inner);
        Ok(RoutedConnection::new(self.clone()))
    }

    /// A token for the primary's current WAL position: every write committed before this call is
    /// behind it. See [`CausalToken`].
    ///
    /// # Errors
    ///
    /// The primary cannot be checked out or asked.
    pub async fn causal_token(&self) -> Result<CausalToken, Error> {
        if let ReadYourWrites::TimeWindow(_) = self.inner.read_your_writes {
            // Only the time counts: no need to ask the primary.
            return Ok(CausalToken::new(0));
        }
        let mut conn = self.inner.primary.checkout().await?;
        current_wal_position(&mut conn).await
    }

    /// The primary's URL, password redacted.
    pub fn primary_url(&self) -> &RedactedUrl {
        self.inner.primary.url.redacted()
    }

    /// The replicas' URLs, password redacted, in configuration order.
    pub fn replica_urls(&self) -> Vec<&RedactedUrl> {
        self.inner
            .replicas
            .iter()
            .map(|server| server.url.redacted())
            .collect()
    }

    /// How many replicas are configured.
    pub fn replica_count(&self) -> usize {
        self.inner.replicas.len()
    }

    /// Connects to every server once, outside the pools, and checks that each is reachable and
    /// in its configured role. Useful at startup, to fail fast on a bad configuration.
    ///
    /// # Errors
    ///
    /// The first server that cannot be reached ([`Error::Connect`]), or that is in the wrong
    /// role ([`Error::ReplicaIsPrimary`], [`Error::PrimaryIsStandby`]).
    pub async fn check(&self) -> Result<(), Error> {
        for server in std::iter::once(&self.inner.primary).chain(&self.inner.replicas) {
            let connect = AsyncPgConnection::establish(server.url.secret());
            let mut conn = tokio::time::timeout(server.connect_timeout, connect)
                .await
                .map_err(|_| Error::Timeout {
                    what: "connecting to a server",
                    timeout: server.connect_timeout,
                })?
                .map_err(|source| Error::Connect {
                    role: server.role,
                    url: server.url.redacted().clone(),
                    source,
                })?;
            let in_recovery = in_recovery(&mut conn)
                .await
                .map_err(|source| Error::Query {
                    role: server.role,
                    source,
                })?;
            if let Some(error) = role_error(
                server.role,
                &server.url,
                in_recovery,
                self.inner.verify_roles,
            ) {
                return Err(error);
            }
        }
        Ok(())
    }
}

/// The error for a server whose recovery state contradicts its role, if it does.
fn role_error(role: Role, url: &DatabaseUrl, in_recovery: bool, verify: bool) -> Option<Error> {
    match role {
        _ if !verify => None,
        Role::Primary if in_recovery => Some(Error::PrimaryIsStandby {
            url: url.redacted().clone(),
        }),
        Role::Replica(_) if !in_recovery => Some(Error::ReplicaIsPrimary {
            role,
            url: url.redacted().clone(),
        }),
        _ => None,
    }
}

/// A token for the WAL position of the primary that `conn` talks to.
pub(crate) async fn current_wal_position(
    conn: &mut AsyncPgConnection,
) -> Result<CausalToken, Error> {
    let lsn: i64 = diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>(
        "(pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint",
    ))
    .get_result(conn)
    .await
    .map_err(|source| Error::Query {
        role: Role::Primary,
        source,
    })?;
    Ok(CausalToken::new(u64::try_from(lsn).unwrap_or_default()))
}

pub(crate) async fn in_recovery(conn: &mut AsyncPgConnection) -> diesel::QueryResult<bool> {
    diesel::select(diesel::dsl::sql::<Bool>("pg_is_in_recovery()"))
        .get_result(conn)
        .await
}

/// Configures a [`RoutedPool`]; made by [`RoutedPool::builder`].
#[must_use = "a builder does nothing until `build` is called"]
#[derive(Clone)]
pub struct RoutedPoolBuilder {
    primary: String,
    replicas: Vec<String>,
    weights: Vec<u32>,
    policy: Option<Policy>,
    health_check: HealthCheck,
    max_lag: Option<Duration>,
    max_lag_bytes: Option<u64>,
    read_your_writes: ReadYourWrites,
    max_size: usize,
    checkout_timeout: Duration,
    connect_timeout: Duration,
    fallback_to_primary: bool,
    retry_refused_writes: bool,
    verify_roles: bool,
    verify_primary_checkouts: bool,
    classifier: Classifier,
}

impl std::fmt::Debug for RoutedPoolBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoutedPoolBuilder")
            .field("primary", &RedactedUrl::new(&self.primary))
            .field(
                "replicas",
                &self
                    .replicas
                    .iter()
                    .map(|url| RedactedUrl::new(url))
                    .collect::<Vec<_>>(),
            )
            .field("weights", &self.weights)
            .field("health_check", &self.health_check)
            .field("max_lag", &self.max_lag)
            .field("max_lag_bytes", &self.max_lag_bytes)
            .field("read_your_writes", &self.read_your_writes)
            .field("max_size", &self.max_size)
            .field("checkout_timeout", &self.checkout_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("fallback_to_primary", &self.fallback_to_primary)
            .field("verify_roles", &self.verify_roles)
            .field("verify_primary_checkouts", &self.verify_primary_checkouts)
            .finish_non_exhaustive()
    }
}

impl RoutedPoolBuilder {
    fn new(primary: String) -> Self {
        RoutedPoolBuilder {
            primary,
            replicas: Vec::new(),
            weights: Vec::new(),
            policy: None,
            health_check: HealthCheck::default(),
            max_lag: Some(Duration::from_secs(30)),
            max_lag_bytes: None,
            read_your_writes: ReadYourWrites::default(),
            max_size: 16,
            checkout_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            fallback_to_primary: true,
            retry_refused_writes: true,
            verify_roles: true,
            verify_primary_checkouts: true,
            classifier: Classifier::new(),
        }
    }

    /// A builder from the environment; see [`RoutedPool::from_env`].
    ///
    /// # Errors
    ///
    /// As [`RoutedPool::from_env`].
    pub fn from_env() -> Result<Self, Error> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// A builder from variables looked up by `lookup` instead of the process environment, with
    /// the rules of [`RoutedPool::from_env`].
    ///
    /// # Errors
    ///
    /// As [`RoutedPool::from_env`].
    pub fn from_vars(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, Error> {
        let vars = env::read(lookup)?;
        Ok(RoutedPoolBuilder::new(vars.primary).replicas(vars.replicas))
    }

    /// The replica URLs configured so far, as given (passwords included: never print them;
    /// use [`RedactedUrl`] for messages), in configuration order.
    pub fn replica_url_list(&self) -> &[String] {
        &self.replicas
    }

    /// Adds a replica, of weight 1.
    pub fn replica(self, url: impl Into<String>) -> Self {
        self.replica_with_weight(url, 1)
    }

    /// Adds a replica that the weighted policies ([`RoundRobin`], [`Random`],
    /// [`LeastOutstanding`]) pick `weight` times as often as a replica of weight 1. A weight of
    /// zero is an error at [`build`](Self::build).
    pub fn replica_with_weight(mut self, url: impl Into<String>, weight: u32) -> Self {
        self.replicas.push(url.into());
        self.weights.push(weight);
        self
    }

    /// Adds several replicas, of weight 1.
    pub fn replicas<I, S>(mut self, urls: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        for url in urls {
            self = self.replica(url);
        }
        self
    }

    /// How a read picks among the eligible replicas: [`RoundRobin`] (the default), [`Random`],
    /// [`LeastOutstanding`], [`LowestLatency`], or any `Fn(&[Candidate]) -> usize`.
    pub fn policy(mut self, policy: impl ReplicaPolicy) -> Self {
        self.policy = Some(Policy(Arc::new(policy)));
        self
    }

    /// The replicas' background health probe. Default: every second, one second to answer.
    pub fn health_check(mut self, health_check: HealthCheck) -> Self {
        self.health_check = health_check;
        self
    }

    /// Replicas whose probe shows them further behind the primary than this, in time, serve no
    /// reads until they catch up; `None` turns the bound off. The lag reads zero while the primary
    /// is idle. A handler's `#[read_replica(max_lag = "..")]` or [`with_max_lag`] tightens it
    /// for one request. Default: 30 s.
    ///
    /// [`with_max_lag`]: crate::with_max_lag
    pub fn max_lag(mut self, max_lag: Option<Duration>) -> Self {
        self.max_lag = max_lag;
        self
    }

    /// Replicas whose probe shows them more than this many bytes of WAL behind the primary serve
    /// no reads until they catch up; `None` turns the bound off. Default: `None`.
    pub fn max_lag_bytes(mut self, max_lag_bytes: Option<u64>) -> Self {
        self.max_lag_bytes = max_lag_bytes;
        self
    }

    /// How reads that carry a [`CausalToken`] see its write. Default:
    /// [`ReadYourWrites::Lsn`] without waiting.
    pub fn read_your_writes(mut self, mode: ReadYourWrites) -> Self {
        self.read_your_writes = mode;
        self
    }

    /// The most connections each server's pool opens. Default: 16.
    pub fn max_size(mut self, max_size: usize) -> Self {
        self.max_size = max_size;
        self
    }

    /// How long a checkout waits for a free pooled connection. Default: 5 s.
    pub fn checkout_timeout(mut self, timeout: Duration) -> Self {
        self.checkout_timeout = timeout;
        self
    }

    /// How long opening a new server connection may take. Default: 5 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Whether a read that no replica can serve runs on the primary (`true`) or fails with
    /// [`Error::NoReplicaAvailable`] (`false`). Default: `true`.
    pub fn fallback_to_primary(mut self, fallback: bool) -> Self {
        self.fallback_to_primary = fallback;
        self
    }

    /// Whether a statement classified as a read that a replica refuses as a write (SQLSTATE
    /// 25006, e.g. a volatile function the classifier did not know) runs again on the primary,
    /// with a warning (`true`), or fails (`false`). Refused statements changed nothing, so running
    /// them again is safe; inside a transaction nothing is retried. Default: `true`.
    pub fn retry_writes_refused_by_replica(mut self, retry: bool) -> Self {
        self.retry_refused_writes = retry;
        self
    }

    /// Whether each new connection checks that its server is in its configured role: a replica
    /// must be in recovery, the primary must not be. Default: `true`. Turn it off only for a
    /// development setup that uses one server as both primary and "replica"; replica sessions
    /// stay read-only (`default_transaction_read_only`) either way.
    pub fn verify_roles(mut self, verify: bool) -> Self {
        self.verify_roles = verify;
        self
    }

    /// Whether a pooled primary connection answers a `SELECT 1` before each checkout hands it out
    /// (diesel-async's `RecyclingMethod::Verified`), so that a write never meets a connection
    /// that died while idle (`true`), or only a local check is made (`false`, one round trip
    /// less per request that writes). Replica checkouts never ask: a read that meets a dead
    /// connection runs again elsewhere. Default: `true`.
    pub fn verify_primary_checkouts(mut self, verify: bool) -> Self {
        self.verify_primary_checkouts = verify;
        self
    }

    /// Replaces the statement classifier, e.g. one that knows the application's functions.
    /// Default: [`Classifier::new`].
    pub fn classifier(mut self, classifier: Classifier) -> Self {
        self.classifier = classifier;
        self
    }

    /// Builds the pools. Synchronous: no connection is opened here.
    ///
    /// # Errors
    ///
    /// An invalid URL, a `max_size` of zero, a zero timeout, or a pool deadpool refuses.
    pub fn build(self) -> Result<RoutedPool, Error> {
        if self.max_size == 0 {
            return Err(Error::InvalidSetting {
                setting: "max_size",
                reason: "a pool needs at least one connection".to_owned(),
            });
        }
        for (setting, value) in [
            ("checkout_timeout", self.checkout_timeout),
            ("connect_timeout", self.connect_timeout),
        ] {
            if value.is_zero() {
                return Err(Error::InvalidSetting {
                    setting,
                    reason: "a zero timeout fails every checkout".to_owned(),
                });
            }
        }
        if let Some(index) = self.weights.iter().position(|weight| *weight == 0) {
            return Err(Error::InvalidSetting {
                setting: "replica_with_weight",
                reason: format!("replica {index} has weight 0; weights start at 1"),
            });
        }
        for (setting, value) in [
            ("health_check.interval", self.health_check.interval),
            ("health_check.timeout", self.health_check.timeout),
        ] {
            if value.is_zero() {
                return Err(Error::InvalidSetting {
                    setting,
                    reason: "the health probe needs a non-zero interval and timeout".to_owned(),
                });
            }
        }
        let primary_url = DatabaseUrl::parse("primary", &self.primary)?;
        let replica_urls = self
            .replicas
            .iter()
            .enumerate()
            .map(|(index, url)| DatabaseUrl::parse(&format!("replica {index}"), url))
            .collect::<Result<Vec<_>, _>>()?;
        let primary = self.server(Role::Primary, primary_url)?;
        let replicas = replica_urls
            .into_iter()
            .enumerate()
            .map(|(index, url)| self.server(Role::Replica(index), url))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(RoutedPool {
            inner: Arc::new(PoolInner {
                id: NEXT_POOL_ID.fetch_add(1, Ordering::Relaxed),
                primary,
                replicas,
                policy: self
                    .policy
                    .clone()
                    .unwrap_or_else(|| Policy(Arc::new(RoundRobin::new()))),
                health_check: self.health_check,
                prober_started: AtomicBool::new(false),
                max_lag: self.max_lag,
                max_lag_bytes: self.max_lag_bytes,
                read_your_writes: self.read_your_writes,
                test_transaction: AtomicBool::new(false),
                classifier: self.classifier,
                fallback_to_primary: self.fallback_to_primary,
                retry_refused_writes: self.retry_refused_writes,
                types: Arc::new(Mutex::new(HashMap::new())),
                verify_roles: self.verify_roles,
            }),
        })
    }

    fn server(&self, role: Role, url: DatabaseUrl) -> Result<Server, Error> {
        let mut config = ManagerConfig::<AsyncPgConnection>::default();
        config.custom_setup = setup_callback(role, url.clone(), self.verify_roles);
        // A replica read that meets a dead pooled connection is retried elsewhere, so replica
        // pools skip the `SELECT 1` per checkout; the primary's writes are not retried.
        config.recycling_method = match role {
            Role::Primary if self.verify_primary_checkouts => RecyclingMethod::Verified,
            _ => RecyclingMethod::Fast,
        };
        let manager = AsyncDieselConnectionManager::new_with_config(url.secret(), config);
        let pool = Pool::builder(manager)
            .max_size(self.max_size)
            .wait_timeout(Some(self.checkout_timeout))
            .create_timeout(Some(self.connect_timeout))
            .recycle_timeout(Some(self.connect_timeout))
            .runtime(deadpool::Runtime::Tokio1)
            .build()
            .map_err(|e| Error::PoolBuild {
                role,
                url: url.redacted().clone(),
                reason: e.to_string(),
            })?;
        Ok(Server {
            role,
            url,
            pool,
            health: Arc::new(Health::new(role)),
            weight: match role {
                Role::Primary => 1,
                Role::Replica(index) => self.weights.get(index).copied().unwrap_or(1),
            },
            max_size: self.max_size,
            checkout_timeout: self.checkout_timeout,
            connect_timeout: self.connect_timeout,
        })
    }
}

/// Opens a connection for `role`: replica sessions are read-only on the server, and with
/// `verify` each session checks that its server is in the configured role.
fn setup_callback(role: Role, url: DatabaseUrl, verify: bool) -> SetupCallback<AsyncPgConnection> {
    Box::new(move |secret: &str| {
        let url = url.clone();
        async move {
            let mut conn = AsyncPgConnection::establish(secret).await.map_err(|e| {
                ConnectionError::BadConnection(format!(
                    "failed to connect: {}",
                    connection_error_text(&e)
                ))
            })?;
            let read_only = matches!(role, Role::Replica(_));
            let in_recovery: bool = diesel::select(diesel::dsl::sql::<Bool>(if read_only {
                "pg_is_in_recovery() FROM set_config('default_transaction_read_only', 'on', false)"
            } else {
                "pg_is_in_recovery()"
            }))
            .get_result(&mut conn)
            .await
            .map_err(ConnectionError::CouldntSetupConfiguration)?;
            match role_error(role, &url, in_recovery, verify) {
                Some(error) => Err(ConnectionError::BadConnection(error.to_string())),
                None => Ok(conn),
            }
        }
        .boxed()
    })
}
