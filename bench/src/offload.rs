//! Primary offload: how many of the transactions of a read-only workload through the router the
//! primary served, counted by the servers themselves (`pg_stat_database.xact_commit`).

use std::sync::Arc;
use std::time::Duration;

use diesel::sql_types::BigInt;
use diesel_async::{AsyncConnection, AsyncPgConnection};
use routing_cluster::LocalCluster;

use crate::BoxError;
use crate::setup::IdRange;
use crate::systems::{Recycling, Servers, System, SystemKind};
use crate::workload::{self, Measurement, Workload};

/// Concurrent clients of the offload run.
pub(crate) const CLIENTS: usize = 4;

/// After the pools are gone: time for the backends (and the router's health probe, which stops
/// within one probe interval of the pool's drop) to exit and flush their statistics.
pub(crate) const SETTLE: Duration = Duration::from_millis(1500);

/// The committed transactions of one server around the run.
#[derive(Clone, Debug)]
pub(crate) struct ServerCount {
    /// `primary`, `replica 0`, ...
    pub(crate) name: String,
    /// `xact_commit` of database `postgres` before the run.
    pub(crate) before: i64,
    /// The same after the run.
    pub(crate) after: i64,
    /// Statements the router sent to it (`RoutedPool::status`).
    pub(crate) routed: u64,
}

impl ServerCount {
    /// Transactions committed during the run.
    pub(crate) fn delta(&self) -> i64 {
        self.after - self.before
    }
}

/// The offload run's result.
#[derive(Clone, Debug)]
pub(crate) struct Offload {
    /// The point workload's measurement.
    pub(crate) measurement: Measurement,
    /// The primary first, then the replicas.
    pub(crate) servers: Vec<ServerCount>,
}

impl Offload {
    /// The primary's share of the transactions committed during the run.
    pub(crate) fn primary_share(&self) -> Option<f64> {
        let total: i64 = self.servers.iter().map(ServerCount::delta).sum();
        let primary = self.servers.first()?.delta();
        (total > 0).then(|| primary as f64 / total as f64)
    }
}

/// Runs the point workload through a `RoutedPool` of [`CLIENTS`] connections per server for
/// `duration`, reading every server's committed transactions before and after.
pub(crate) async fn measure(
    cluster: &LocalCluster,
    duration: Duration,
    ids: IdRange,
) -> Result<Offload, BoxError> {
    let mut named = vec![("primary".to_owned(), cluster.primary_url())];
    named.extend(
        cluster
            .replica_urls()
            .into_iter()
            .enumerate()
            .map(|(i, url)| (format!("replica {i}"), url)),
    );
    let before = xact_commits(&named).await?;

    let servers = Servers {
        primary: cluster.primary_url(),
        replicas: cluster.replica_urls(),
        pgpool: None,
        tls: None,
    };
    // The recycling setting only concerns the plain pools.
    let system = Arc::new(System::build(
        SystemKind::Routed,
        &servers,
        CLIENTS,
        Recycling::Verified,
    )?);
    let measurement = workload::run(&system, Workload::Point, CLIENTS, duration, ids).await;
    let routed: Vec<u64> = system
        .routed_status()
        .map(|status| status.servers.iter().map(|s| s.queries_routed).collect())
        .unwrap_or_default();
    drop(system);
    tokio::time::sleep(SETTLE).await;
    let after = xact_commits(&named).await?;

    let servers = named
        .into_iter()
        .enumerate()
        .map(|(i, (name, _))| ServerCount {
            name,
            before: before[i],
            after: after[i],
            routed: routed.get(i).copied().unwrap_or(0),
        })
        .collect();
    Ok(Offload {
        measurement,
        servers,
    })
}

/// `pg_stat_database.xact_commit` of database `postgres` on each server, each read on a
/// connection of its own that is closed right after.
async fn xact_commits(servers: &[(String, String)]) -> Result<Vec<i64>, BoxError> {
    // Imported here: `RunQueryDsl` is implemented for every type and shadows `first`, `load`...
    use diesel_async::RunQueryDsl;
    let mut counts = Vec::with_capacity(servers.len());
    for (name, url) in servers {
        let mut conn = AsyncPgConnection::establish(url)
            .await
            .map_err(|e| format!("connecting to the {name} for its statistics failed: {e}"))?;
        let count = diesel::select(diesel::dsl::sql::<BigInt>(
            "(SELECT xact_commit FROM pg_stat_database WHERE datname = 'postgres')",
        ))
        .get_result::<i64>(&mut conn)
        .await
        .map_err(|e| format!("reading the {name}'s pg_stat_database failed: {e}"))?;
        counts.push(count);
    }
    Ok(counts)
}
