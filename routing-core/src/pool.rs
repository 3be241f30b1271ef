//! [`RoutedPool`]'s constructors and the connections it hands out.

use crate::causal::{CausalToken, ReadYourWrites};
use crate::config::RoutedPoolBuilder;
use crate::connection::RoutedConnection;
use crate::error::{BuildError, Error, Role};
use crate::servers::connect::{self, Open};
use crate::servers::{RoutedPool, catalog, probe};
use crate::url::RedactedUrl;

impl RoutedPool {
    /// Starts configuring a pool whose primary is at `primary_url`.
    pub fn builder(primary_url: impl Into<String>) -> RoutedPoolBuilder {
        RoutedPoolBuilder::new(primary_url.into())
    }

    /// Builds a pool from the environment.
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
    pub fn from_env() -> Result<RoutedPool, BuildError> {
        RoutedPoolBuilder::from_env()?.build()
    }

    /// Hands out a connection that routes each statement. No server connection is checked out
    /// until a statement needs one. The first call from a tokio runtime starts the replicas'
    /// background health probe, on a thread of its own.
    ///
    /// # Errors
    ///
    /// None today; the `Result` leaves room for checks at hand-out time.
    pub async fn get(&self) -> Result<RoutedConnection, Error> {
        probe::start(self.shared());
        Ok(RoutedConnection::new(self.clone()))
    }

    /// A token for the primary's current WAL position: every write committed before this call is
    /// behind it. See [`CausalToken`].
    ///
    /// # Errors
    ///
    /// The primary cannot be checked out or asked.
    pub async fn causal_token(&self) -> Result<CausalToken, Error> {
        if let ReadYourWrites::TimeWindow(_) = self.shared().config().read_your_writes() {
            // Only the time counts: no need to ask the primary.
            return Ok(CausalToken::new(0));
        }
        let (primary, _) = self.shared().wait_for_primary().await?;
        let mut conn = primary.checkout().await?;
        catalog::wal_insert_position(conn.pg())
            .await
            .inspect(|lsn| self.shared().tokens().note_primary(*lsn))
            .map(CausalToken::new)
            .map_err(|source| Error::Query {
                role: Role::Primary,
                source,
            })
    }

    /// The primary's URL as configured, password redacted: with a multi-host URL, every node.
    pub fn primary_url(&self) -> RedactedUrl {
        self.shared().config().primary().redacted()
    }

    /// The replicas' URLs, password redacted, in configuration order.
    pub fn replica_urls(&self) -> Vec<&RedactedUrl> {
        self.shared().replicas().iter().map(|s| s.url()).collect()
    }

    /// How many replicas are configured.
    pub fn replica_count(&self) -> usize {
        self.shared().replicas().len()
    }

    /// Connects to every server once, outside the pools, and checks that each is reachable and
    /// in its configured role; for a pool that discovers its primary, that exactly one node is
    /// a primary. Useful at startup, to fail fast on a bad configuration.
    ///
    /// # Errors
    ///
    /// The first server that cannot be reached ([`Error::Connect`], [`Error::Timeout`]), or that
    /// is in the wrong role ([`Error::ReplicaIsPrimary`], [`Error::PrimaryIsStandby`]); for a
    /// discovering pool, [`Error::NoPrimary`] when no node, or several, answer as the primary.
    pub async fn check(&self) -> Result<(), Error> {
        let shared = self.shared();
        let timeout = shared.config().connect_timeout();
        let mut primaries = Vec::new();
        for server in shared.servers() {
            let how = Open::of(shared.config());
            let mut conn =
                crate::clock::timeout(timeout, connect::open(server.database_url(), how))
                    .await
                    .map_err(|_| Error::Timeout {
                        what: "connecting to a server",
                        timeout,
                    })?
                    .map_err(|source| Error::Connect {
                        role: server.role(),
                        url: server.url().clone(),
                        source,
                    })
                    .map(connect::silenced)?;
            let in_recovery =
                catalog::in_recovery(&mut conn)
                    .await
                    .map_err(|source| Error::Query {
                        role: server.role(),
                        source,
                    })?;
            match server.role() {
                Role::Node(node) if !in_recovery => primaries.push(node),
                Role::Node(_) => {}
                role => {
                    let replica = matches!(role, Role::Replica(_));
                    if shared.config().verify_roles() && in_recovery != replica {
                        return Err(server.wrong_role());
                    }
                }
            }
        }
        if shared.discovers() && primaries.len() != 1 {
            return Err(Error::NoPrimary {
                reason: format!("nodes {primaries:?} answer as primaries: exactly one must"),
                waited: std::time::Duration::ZERO,
            });
        }
        Ok(())
    }
}

impl RoutedPoolBuilder {
    /// Builds the pools. Synchronous: no connection is opened here.
    ///
    /// # Errors
    ///
    /// An invalid URL, a `max_size` of zero, a zero timeout or weight, or a pool deadpool
    /// refuses.
    pub fn build(self) -> Result<RoutedPool, BuildError> {
        RoutedPool::new(self.into_config()?)
    }
}
