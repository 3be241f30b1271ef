//! [`RoutedPoolBuilder`]: the documented setters of a pool's [`Config`].

use std::sync::Arc;
use std::time::Duration;

use diesel::QueryResult;
use diesel_async::AsyncPgConnection;
use futures_util::future::BoxFuture;

use super::{Config, HealthCheck, OnConnect, ReplicaConfig};
use crate::causal::ReadYourWrites;
use crate::classify::Classifier;
use crate::credentials::{Credentials, Provider};
use crate::env;
use crate::error::{BuildError, Role};
use crate::policy::{Policy, ReplicaPolicy};
use crate::url::{RedactedUrl, SecretUrl};

/// Configures a [`RoutedPool`](crate::RoutedPool); made by
/// [`RoutedPool::builder`](crate::RoutedPool::builder) or [`RoutedPoolBuilder::from_env`].
#[must_use = "a builder does nothing until `build` is called"]
#[derive(Clone, Debug)]
pub struct RoutedPoolBuilder {
    config: Config,
}

impl RoutedPoolBuilder {
    pub(crate) fn new(primary: String) -> Self {
        RoutedPoolBuilder {
            config: Config::new(primary),
        }
    }

    /// The validated configuration.
    pub(crate) fn into_config(self) -> Result<Config, BuildError> {
        self.config.validate()?;
        Ok(self.config)
    }

    /// A builder from the environment; see [`RoutedPool::from_env`](crate::RoutedPool::from_env).
    ///
    /// # Errors
    ///
    /// As [`RoutedPool::from_env`](crate::RoutedPool::from_env).
    pub fn from_env() -> Result<Self, BuildError> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// A builder from variables looked up by `lookup` instead of the process environment, with
    /// the rules of [`RoutedPool::from_env`](crate::RoutedPool::from_env).
    ///
    /// # Errors
    ///
    /// As [`RoutedPool::from_env`](crate::RoutedPool::from_env).
    pub fn from_vars(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, BuildError> {
        let vars = env::read(lookup)?;
        Ok(RoutedPoolBuilder::new(vars.primary).replicas(vars.replicas))
    }

    /// The replica URLs configured so far, passwords redacted, in configuration order.
    pub fn replica_url_list(&self) -> Vec<RedactedUrl> {
        self.config
            .replicas
            .iter()
            .map(|replica| replica.url.redacted())
            .collect()
    }

    /// The replica URLs configured so far, passwords included: never print them.
    #[cfg(feature = "migrations")]
    pub(crate) fn replica_secrets(&self) -> impl Iterator<Item = &str> {
        self.config
            .replicas
            .iter()
            .map(|replica| replica.url.expose())
    }

    /// Adds a replica, of weight 1.
    pub fn replica(self, url: impl Into<String>) -> Self {
        self.replica_with_weight(url, 1)
    }

    /// Adds a replica that the weighted policies ([`RoundRobin`], [`Random`],
    /// [`LeastOutstanding`]) pick `weight` times as often as a replica of weight 1. A weight of
    /// zero is an error at [`build`](Self::build).
    pub fn replica_with_weight(mut self, url: impl Into<String>, weight: u32) -> Self {
        self.config.replicas.push(ReplicaConfig {
            url: SecretUrl::new(url.into()),
            weight,
        });
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
    ///
    /// [`Candidate`]: crate::policy::Candidate
    pub fn policy(mut self, policy: impl ReplicaPolicy) -> Self {
        self.config.policy = Policy(Arc::new(policy));
        self
    }

    /// The replicas' background health probe. Default: every second, one second to answer.
    pub fn health_check(mut self, health_check: HealthCheck) -> Self {
        self.config.health_check = health_check;
        self
    }

    /// Replicas whose probe shows them further behind the primary than this, in time, serve no
    /// reads until they catch up; `None` turns the bound off. The lag reads zero while the primary
    /// is idle. A handler's `#[read_replica(max_lag = "..")]` or [`with_max_lag`] tightens it
    /// for one request. Default: 30 s.
    ///
    /// [`with_max_lag`]: crate::with_max_lag
    pub fn max_lag(mut self, max_lag: Option<Duration>) -> Self {
        self.config.max_lag = max_lag;
        self
    }

    /// Replicas whose probe shows them more than this many bytes of WAL behind the primary serve
    /// no reads until they catch up; `None` turns the bound off. Default: `None`.
    pub fn max_lag_bytes(mut self, max_lag_bytes: Option<u64>) -> Self {
        self.config.max_lag_bytes = max_lag_bytes;
        self
    }

    /// How reads that carry a [`CausalToken`](crate::CausalToken) see its write. Default:
    /// [`ReadYourWrites::Lsn`] without waiting.
    pub fn read_your_writes(mut self, mode: ReadYourWrites) -> Self {
        self.config.read_your_writes = mode;
        self
    }

    /// The most connections each server's pool opens: sets both
    /// [`primary_max_size`](Self::primary_max_size) and
    /// [`replica_max_size`](Self::replica_max_size). Default: 16.
    pub fn max_size(self, max_size: usize) -> Self {
        self.primary_max_size(max_size).replica_max_size(max_size)
    }

    /// The most connections the primary's pool opens. In a pool that discovers its primary (a
    /// multi-host URL), the node that is the primary gets this size. Default: 16.
    pub fn primary_max_size(mut self, max_size: usize) -> Self {
        self.config.primary_max_size = max_size;
        self
    }

    /// The most connections each replica's pool opens (every replica has a pool of its own).
    /// In a pool that discovers its primary, every node that is not the primary gets this
    /// size. Default: 16.
    pub fn replica_max_size(mut self, max_size: usize) -> Self {
        self.config.replica_max_size = max_size;
        self
    }

    /// How long a checkout waits for a free pooled connection: sets both
    /// [`primary_checkout_timeout`](Self::primary_checkout_timeout) and
    /// [`replica_checkout_timeout`](Self::replica_checkout_timeout). Default: 5 s.
    pub fn checkout_timeout(self, timeout: Duration) -> Self {
        self.primary_checkout_timeout(timeout)
            .replica_checkout_timeout(timeout)
    }

    /// How long a checkout from the primary's pool waits for a free connection; past it, the
    /// statement fails with [`Error::PoolExhausted`](crate::Error::PoolExhausted). Default: 5 s.
    pub fn primary_checkout_timeout(mut self, timeout: Duration) -> Self {
        self.config.primary_checkout_timeout = timeout;
        self
    }

    /// How long a checkout from a replica's pool waits for a free connection; past it, a read
    /// tries the next replica (the busy one is not banned), then the primary. Default: 5 s.
    pub fn replica_checkout_timeout(mut self, timeout: Duration) -> Self {
        self.config.replica_checkout_timeout = timeout;
        self
    }

    /// How long opening a new server connection may take. Default: 5 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.config.connect_timeout = timeout;
        self
    }

    /// Whether a read that no replica can serve runs on the primary (`true`) or fails with
    /// [`Error::NoReplicaAvailable`](crate::Error::NoReplicaAvailable) (`false`). Default: `true`.
    pub fn fallback_to_primary(mut self, fallback: bool) -> Self {
        self.config.fallback_to_primary = fallback;
        self
    }

    /// Whether a statement classified as a read that a replica refuses as a write (SQLSTATE
    /// 25006, e.g. a volatile function the classifier did not know) runs again on the primary,
    /// with a warning (`true`), or fails (`false`). Refused statements changed nothing, so running
    /// them again is safe; inside a transaction nothing is retried. Default: `true`.
    pub fn retry_writes_refused_by_replica(mut self, retry: bool) -> Self {
        self.config.retry_refused_writes = retry;
        self
    }

    /// Whether each new connection checks that its server is in its configured role: a replica
    /// must be in recovery, the primary must not be. Default: `true`. Turn it off only for a
    /// development setup that uses one server as both primary and "replica"; replica sessions
    /// stay read-only (`default_transaction_read_only`) either way.
    pub fn verify_roles(mut self, verify: bool) -> Self {
        self.config.verify_roles = verify;
        self
    }

    /// Whether a pooled primary connection answers a `SELECT 1` before each checkout hands it out,
    /// so that a write never meets a connection that died while idle (`true`), or only a local
    /// check is made (`false`, one round trip less per request that writes). Replica checkouts
    /// never ask: a read that meets a dead connection runs again elsewhere. Default: `true`.
    pub fn verify_primary_checkouts(mut self, verify: bool) -> Self {
        self.config.verify_primary_checkouts = verify;
        self
    }

    /// An optional bound on how long a replica may take to start answering a read (its first
    /// row, or its end): past it, the read is cancelled there and runs on the next replica
    /// (the replica is not banned: the health probe decides that). Default: `None`, no bound: a
    /// slow read is not a fault, and a replica that stops answering is found by the health probe,
    /// which moves the reads waiting on it elsewhere (see [`HealthCheck`]). For slow queries,
    /// give the database role a `statement_timeout` instead.
    pub fn first_row_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.config.first_row_timeout = timeout;
        self
    }

    /// Whether each statement's span records its SQL as `db.query.text` (with `$1` placeholders,
    /// never the bind values). Default: `false`, as the OpenTelemetry conventions advise.
    pub fn record_query_text(mut self, record: bool) -> Self {
        self.config.record_query_text = record;
        self
    }

    /// How many reads of the pool may wait at once for a replica to replay their causal token
    /// (with [`ReadYourWrites::Lsn`] and a non-zero `wait`); the others go to the primary at
    /// once, so that waiting reads (or forged tokens) never starve the replica pools. Default:
    /// a quarter of `replica_max_size`, at least one.
    pub fn max_causal_waits(mut self, max: usize) -> Self {
        self.config.max_causal_waits = Some(max);
        self
    }

    /// How long a statement that needs the primary waits for one while a pool that discovers
    /// its primary (a multi-host URL) has none: during a failover, or while several nodes
    /// claim the role. Past it, the statement fails with
    /// [`Error::NoPrimary`](crate::Error::NoPrimary), which is retryable. Default: two health
    /// probe intervals.
    pub fn primary_wait(mut self, wait: Duration) -> Self {
        self.config.primary_wait = Some(wait);
        self
    }

    /// Replaces the statement classifier, e.g. one that knows the application's functions.
    /// Default: [`Classifier::new`].
    pub fn classifier(mut self, classifier: Classifier) -> Self {
        self.config.classifier = classifier;
        self
    }

    /// Asks `credentials` for the password of each new connection the pool opens (its pooled
    /// sessions, the health probe's, [`check`](crate::RoutedPool::check)'s), instead of
    /// taking the URL's: for rotating secrets and IAM authentication tokens. See
    /// [`Credentials`]. Default: none, the URLs' passwords.
    pub fn credentials(mut self, credentials: impl Credentials) -> Self {
        self.config.credentials = Some(Provider(Arc::new(credentials)));
        self
    }

    /// Runs `hook` on every new pooled connection, after the router's own setup and before the
    /// connection's first use, told the role of its server: [`Role::Primary`] or
    /// [`Role::Replica`]; in a pool that discovers its primary, the role the node has when the
    /// connection opens (`Replica(n)` for node `n` as a standby). For session settings per
    /// role: `application_name`, `statement_timeout`, `search_path`.
    ///
    /// A hook that fails fails that connection: the checkout that opened it gets
    /// [`ConnectError::OnConnect`](crate::ConnectError::OnConnect), naming the role. The health
    /// probe's connections, and [`check`](crate::RoutedPool::check)'s, do not run it: they run
    /// only the router's own statements. Session settings a hook makes stay for the life of the
    /// pooled connection. Not allowed with [`transaction_pooler`](Self::transaction_pooler),
    /// where there is no session to set up.
    ///
    /// ```no_run
    /// # fn run() -> Result<(), routing_core::BuildError> {
    /// use diesel_async::SimpleAsyncConnection;
    /// use routing_core::{RoutedPool, Role};
    ///
    /// let pool = RoutedPool::builder("postgres://app@primary/app")
    ///     .replica("postgres://app@replica-1/app")
    ///     .on_connect(|conn, role| {
    ///         Box::pin(async move {
    ///             let timeout = if role == Role::Primary { "5s" } else { "30s" };
    ///             conn.batch_execute(&format!("SET statement_timeout = '{timeout}'"))
    ///                 .await
    ///         })
    ///     })
    ///     .build()?;
    /// # Ok(()) }
    /// ```
    pub fn on_connect<F>(mut self, hook: F) -> Self
    where
        F: for<'c> Fn(&'c mut AsyncPgConnection, Role) -> BoxFuture<'c, QueryResult<()>>
            + Send
            + Sync
            + 'static,
    {
        self.config.on_connect = Some(OnConnect(Arc::new(hook)));
        self
    }

    /// Whether the servers are reached through a transaction pooler: PgBouncer in
    /// `pool_mode = transaction` (or PgCat, Supavisor, Odyssey, RDS Proxy), which gives each
    /// transaction, and each statement outside one, whichever server connection is free.
    ///
    /// With `true`, every statement runs as an unnamed statement (a parse, bind and execute in
    /// one round trip), so that no named prepared statement is left on one server connection
    /// for another statement to miss; the router sets no session state (a replica's sessions
    /// are not made read-only with `default_transaction_read_only`: the standby refuses
    /// writes itself); and a statement that would change the session outside a transaction
    /// (`SET`, `LISTEN`, a session advisory lock, a temporary table, ...) is refused with
    /// [`Error::SessionStateWithTransactionPooler`](crate::Error::SessionStateWithTransactionPooler):
    /// it would land on a server connection other clients share. What is lost: statement
    /// caching (each statement is planned again), session settings and
    /// [`on_connect`](Self::on_connect), and [`RoutedConnection::primary`](crate::RoutedConnection::primary).
    /// Transactions work as usual: the pooler keeps one server connection from `BEGIN` to
    /// `COMMIT`. One whose future is dropped midway is rolled back when its `RoutedConnection`
    /// is next used or dropped (its pooler connection is closed, and PgBouncer releases the
    /// server connection), not at once as on direct sessions, whose server process the router
    /// ends: a pooler's sessions are not the server's.
    ///
    /// With `false` (the default), statements are prepared, named and cached per connection,
    /// which needs a session per connection: direct connections, or PgBouncer in session mode.
    /// Through a transaction pooler that fails, and the router says to set this.
    pub fn transaction_pooler(mut self, on: bool) -> Self {
        self.config.transaction_pooler = on;
        self
    }

    /// The TLS client configuration of every connection of the pool (its sessions, the health
    /// probe, [`check`](crate::RoutedPool::check), migrations): client certificates, roots of
    /// your own. It replaces what the URLs' `sslrootcert` and `sslmode` say about verifying
    /// the server, and their `sslcert` and `sslkey`; `sslmode` still decides whether TLS is used (`disable`: never) and required
    /// (`prefer`, the default, falls back to plain TCP when the server offers no TLS: set
    /// `sslmode=require` or stronger to make it mandatory). Default: none, the URLs decide.
    #[cfg(feature = "rustls")]
    pub fn tls_config(mut self, config: Arc<rustls::ClientConfig>) -> Self {
        self.config.tls_config = Some(config);
        self
    }
}
