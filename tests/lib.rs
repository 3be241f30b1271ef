//! Shared helpers of the integration tests: the servers they run against, and how to ask a server
//! where a statement ran.
//!
//! By default the tests start one local cluster per test process (a primary and two streaming
//! replicas, see `routing-cluster`). With `DATABASE_URL` and `DATABASE_READ_REPLICA_URL` (a
//! comma-separated list) set, they use those servers instead, and the tests that need fault
//! controls skip themselves.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use diesel::sql_types::{Bool, Text};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use routing_cluster::LocalCluster;
use routing_core::{RoutedPool, RoutedPoolBuilder};
use tokio::sync::OnceCell;

pub use routing_core::dsl::{inet_server_port, pg_is_in_recovery};

/// The servers under test.
#[derive(Debug)]
pub struct Servers {
    /// The primary's URL.
    pub primary_url: String,
    /// The replicas' URLs.
    pub replica_urls: Vec<String>,
    /// How the primary identifies itself (see [`identify`]).
    pub primary_id: ServerId,
    /// How each replica identifies itself.
    pub replica_ids: Vec<ServerId>,
    /// The local cluster, when the tests started one; `None` for external servers.
    pub cluster: Option<&'static LocalCluster>,
}

/// A server as it names itself: `inet_server_port()` and whether it is in recovery.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServerId {
    /// `inet_server_port()`.
    pub port: i32,
    /// `pg_is_in_recovery()`.
    pub in_recovery: bool,
}

static SERVERS: OnceCell<Servers> = OnceCell::const_new();

/// The servers of this test process: external ones from the environment, else the shared local
/// cluster (started on first use, migrated once).
///
/// # Panics
///
/// When the cluster cannot start or the servers cannot be reached: a test cannot run then.
pub async fn servers() -> &'static Servers {
    SERVERS
        .get_or_init(|| async {
            let external = std::env::var("DATABASE_URL")
                .ok()
                .zip(std::env::var("DATABASE_READ_REPLICA_URL").ok());
            let (primary_url, replica_urls, cluster) = match external {
                Some((primary, replicas)) => (
                    primary,
                    replicas.split(',').map(|s| s.trim().to_owned()).collect(),
                    None,
                ),
                None => {
                    let cluster = routing_cluster::shared()
                        .await
                        .unwrap_or_else(|e| panic!("cannot start the local cluster: {e}"));
                    (cluster.primary_url(), cluster.replica_urls(), Some(cluster))
                }
            };
            let mut migrator = routing_core::Migrator::connect(&primary_url)
                .await
                .unwrap_or_else(|e| panic!("cannot migrate the primary: {e}"));
            migrator
                .run_pending(routing_fixtures::MIGRATIONS)
                .await
                .unwrap_or_else(|e| panic!("cannot migrate the primary: {e}"));
            let primary_id = identify(&primary_url).await;
            assert!(
                !primary_id.in_recovery,
                "the primary {primary_id:?} is a standby"
            );
            let mut replica_ids = Vec::new();
            for url in &replica_urls {
                let id = identify(url).await;
                assert!(id.in_recovery, "the replica {id:?} is not a standby");
                replica_ids.push(id);
            }
            let servers = Servers {
                primary_url,
                replica_urls,
                primary_id,
                replica_ids,
                cluster,
            };
            servers.wait_for_replicas().await;
            servers
        })
        .await
}

/// Asks the server at `url` who it is.
pub async fn identify(url: &str) -> ServerId {
    let mut conn = AsyncPgConnection::establish(url)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"));
    where_ran(&mut conn).await
}

/// Asks the server that answers a read on `conn` who it is.
pub async fn where_ran<C>(conn: &mut C) -> ServerId
where
    C: diesel_async::AsyncConnectionCore<Backend = diesel::pg::Pg> + Send,
    for<'a> diesel::dsl::select<(pg_is_in_recovery, inet_server_port)>:
        diesel_async::methods::LoadQuery<'a, C, (bool, i32)>,
{
    let (in_recovery, port) = diesel::select((pg_is_in_recovery(), inet_server_port()))
        .get_result::<(bool, i32)>(conn)
        .await
        .unwrap_or_else(|e| panic!("cannot ask the server who it is: {e}"));
    ServerId { port, in_recovery }
}

impl Servers {
    /// A pool over these servers, with a unique `application_name` so that tests can count its
    /// server sessions. A misrouted write fails loudly: a replica refuses it (SQLSTATE 25006) and
    /// the pool does not run it again on the primary.
    pub fn pool_builder(&self, application_name: &str) -> RoutedPoolBuilder {
        RoutedPool::builder(with_application_name(&self.primary_url, application_name))
            .replicas(
                self.replica_urls
                    .iter()
                    .map(|url| with_application_name(url, application_name)),
            )
            .retry_writes_refused_by_replica(false)
    }

    /// A pool over these servers; see [`Servers::pool_builder`].
    ///
    /// # Panics
    ///
    /// When the pool cannot be built.
    pub fn pool(&self, application_name: &str) -> RoutedPool {
        self.pool_builder(application_name)
            .build()
            .unwrap_or_else(|e| panic!("cannot build the pool: {e}"))
    }

    /// Whether `id` is the primary.
    pub fn is_primary(&self, id: &ServerId) -> bool {
        *id == self.primary_id
    }

    /// Whether `id` is one of the replicas.
    pub fn is_replica(&self, id: &ServerId) -> bool {
        self.replica_ids.contains(id)
    }

    /// The index of the replica `id` names.
    pub fn replica_index(&self, id: &ServerId) -> Option<usize> {
        self.replica_ids.iter().position(|replica| replica == id)
    }

    /// The local cluster, or `None` (and a note on stderr) when the tests run on external servers
    /// that offer no fault controls.
    pub fn local(&self, test: &str) -> Option<&'static LocalCluster> {
        if self.cluster.is_none() {
            eprintln!("{test}: skipped, external servers have no fault controls");
        }
        self.cluster
    }

    /// Waits until every replica has replayed the primary's current WAL position.
    ///
    /// # Panics
    ///
    /// After 30 s.
    pub async fn wait_for_replicas(&self) {
        let mut primary = AsyncPgConnection::establish(&self.primary_url)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to the primary: {e}"));
        let target: String = diesel::select(diesel::dsl::sql::<Text>("pg_current_wal_lsn()::text"))
            .get_result(&mut primary)
            .await
            .unwrap_or_else(|e| panic!("cannot read the primary's WAL position: {e}"));
        for url in &self.replica_urls {
            let mut replica = AsyncPgConnection::establish(url)
                .await
                .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"));
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let caught_up: bool = diesel::select(
                    diesel::dsl::sql::<Bool>("pg_last_wal_replay_lsn() >= ")
                        .bind::<Text, _>(&target)
                        .sql("::pg_lsn"),
                )
                .get_result(&mut replica)
                .await
                .unwrap_or_else(|e| panic!("cannot read {url}'s replay position: {e}"));
                if caught_up {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{url} did not replay {target} within 30 s"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }

    /// How many sessions named `application_name` are open on the server at `url`.
    pub async fn sessions(&self, url: &str, application_name: &str) -> i64 {
        let mut conn = AsyncPgConnection::establish(url)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"));
        diesel::select(
            diesel::dsl::sql::<diesel::sql_types::BigInt>(
                "(SELECT count(*) FROM pg_stat_activity WHERE application_name = ",
            )
            .bind::<Text, _>(application_name)
            .sql(")"),
        )
        .get_result(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("cannot count sessions on {url}: {e}"))
    }
}

/// `url` with `application_name` set.
pub fn with_application_name(url: &str, application_name: &str) -> String {
    if !url.starts_with("postgres") {
        return format!("{url} application_name={application_name}");
    }
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}application_name={application_name}")
}

/// A name no other test uses, for rows and sessions.
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}
