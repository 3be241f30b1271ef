//! `routing-demo --ha`: the demo app on a Patroni cluster, found through a multi-host URL, with a
//! planned switchover in the middle of a stream of reads and writes; prints where they ran
//! before, during and after it, and how many failed.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::http::Method;
use routing_cluster::PatroniCluster;
use routing_core::{HealthCheck, Migrator, RoutedPool};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::Mutex;

use crate::BoxError;
use crate::client::send;

/// The health probe's interval and timeout: how soon the router sees a new primary.
const PROBE: Duration = Duration::from_millis(500);
/// How long a write waits for a primary during the switch before it fails.
const PRIMARY_WAIT: Duration = Duration::from_secs(3);
/// Load before the switchover.
const BEFORE: Duration = Duration::from_secs(3);
/// Load after the switchover returned.
const AFTER: Duration = Duration::from_secs(4);
/// Clients reading (`GET /products`) and writing (`POST /products`).
const READERS: usize = 3;
const WRITERS: usize = 1;

/// One request of the load, as it went.
#[derive(Debug)]
struct Request {
    at: Duration,
    write: bool,
    /// The port of the server that answered and whether it was in recovery, or the failure.
    outcome: Result<(u16, bool), String>,
}

/// The run on a throwaway Patroni cluster.
pub(crate) async fn run() -> Result<(), BoxError> {
    println!("starting a throwaway Patroni cluster: etcd and three PostgreSQL nodes ...");
    let cluster = PatroniCluster::start().await?;
    cluster.wait_until_streaming().await?;
    let ports = cluster.node_ports();
    let leader = cluster.leader().await?.ok_or("the cluster has no leader")?;
    println!(
        "  nodes on ports {ports:?}; Patroni's leader is node {leader} (:{})",
        ports[leader]
    );
    let url = cluster.multi_host_url();
    println!("  DATABASE_URL={url}");
    let applied = Migrator::connect(&url)
        .await?
        .run_pending(routing_fixtures::MIGRATIONS)
        .await?;
    println!(
        "  migrate: {} migration(s) applied on the leader",
        applied.len()
    );

    let metrics = routing_demo::prometheus()?;
    let pool = RoutedPool::builder(url)
        .health_check(HealthCheck::new(PROBE, PROBE))
        .primary_wait(PRIMARY_WAIT)
        .connect_timeout(Duration::from_secs(2))
        .build()?;
    pool.check().await?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    println!("  serving on http://{addr}\n");
    let (stop_server, stopped) = tokio::sync::oneshot::channel::<()>();
    let app = routing_demo::app_with_metrics(pool.clone(), metrics);
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
    });
    // A row for the readers to find, on every node.
    send(
        addr,
        Method::POST,
        "/products",
        Some(json!({"name": "ha-seed", "price_cents": 100})),
    )
    .await?;
    cluster.wait_until_streaming().await?;

    let began = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let log = Arc::new(Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..READERS + WRITERS)
        .map(|client| {
            let write = client >= READERS;
            tokio::spawn(load(
                addr,
                write,
                began,
                Arc::clone(&stop),
                Arc::clone(&log),
            ))
        })
        .collect();
    tokio::time::sleep(BEFORE).await;
    let switch_began = began.elapsed();
    println!(
        "switchover requested at {:.1} s ...",
        switch_began.as_secs_f64()
    );
    let switched = cluster.switchover(None).await;
    let switch_ended = began.elapsed();
    if switched.is_ok() {
        tokio::time::sleep(AFTER).await;
    }
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await?;
    }
    let new = switched?;
    println!(
        "  node {new} (:{}) leads since {:.1} s; node {leader} follows it\n",
        ports[new],
        switch_ended.as_secs_f64()
    );
    let log = log.lock().await;
    print_phases(&log, &ports, switch_began, switch_ended, began.elapsed());

    crate::watch::show(addr).await?;
    let _ = stop_server.send(());
    server.await??;
    println!(
        "\nthe router's view (RoutedPool::status):\n{}",
        pool.status()
    );
    drop(cluster);
    Ok(())
}

/// One client: reads or writes through the app until `stop`.
async fn load(
    addr: SocketAddr,
    write: bool,
    began: Instant,
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<Request>>>,
) {
    let mut sent = 0_u64;
    while !stop.load(Ordering::Relaxed) {
        let at = began.elapsed();
        let (method, body) = if write {
            sent += 1;
            let name = format!("ha-{}-{sent}", at.as_micros());
            (
                Method::POST,
                Some(json!({"name": name, "price_cents": 100})),
            )
        } else {
            (Method::GET, None)
        };
        let outcome = match send(addr, method, "/products", body).await {
            Ok((status, reply)) if status.is_success() => {
                let query = &reply["queries"][0];
                match (query["port"].as_u64(), query["in_recovery"].as_bool()) {
                    (Some(port), Some(in_recovery)) => {
                        Ok((u16::try_from(port).unwrap_or_default(), in_recovery))
                    }
                    _ => Err("the reply says no server".to_owned()),
                }
            }
            Ok((status, reply)) => Err(format!("{status}: {}", reply["error"])),
            Err(error) => Err(error.to_string()),
        };
        log.lock().await.push(Request { at, write, outcome });
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Prints, for the phases before, during and after the switchover, where the reads and the
/// writes ran (as the servers answered) and how many failed.
fn print_phases(
    log: &[Request],
    ports: &[u16],
    switch_began: Duration,
    switch_ended: Duration,
    ended: Duration,
) {
    let phases = [
        ("before the switchover", Duration::ZERO, switch_began),
        ("during it", switch_began, switch_ended),
        ("after it", switch_ended, ended),
    ];
    let name = |port: u16, in_recovery: bool| {
        let node = ports
            .iter()
            .position(|p| *p == port)
            .map_or_else(|| "unknown".to_owned(), |i| format!("node {i}"));
        let role = if in_recovery { "standby" } else { "read-write" };
        format!("{node} :{port} ({role})")
    };
    for (title, from, to) in phases {
        println!(
            "{title} ({:.1}–{:.1} s):",
            from.as_secs_f64(),
            to.as_secs_f64()
        );
        for (kind, write) in [("reads", false), ("writes", true)] {
            let requests: Vec<&Request> = log
                .iter()
                .filter(|r| r.write == write && r.at >= from && r.at < to)
                .collect();
            let mut by_server: BTreeMap<String, usize> = BTreeMap::new();
            let mut failed = Vec::new();
            for request in &requests {
                match &request.outcome {
                    Ok((port, in_recovery)) => {
                        *by_server.entry(name(*port, *in_recovery)).or_default() += 1;
                    }
                    Err(error) => failed.push(error),
                }
            }
            let went = by_server
                .iter()
                .map(|(server, count)| format!("{count} on {server}"))
                .collect::<Vec<_>>()
                .join(", ");
            println!(
                "  {kind:<6} {:>4}: {}; failed {}{}",
                requests.len(),
                if went.is_empty() { "none ran" } else { &went },
                failed.len(),
                failed
                    .first()
                    .map_or_else(String::new, |error| format!(" (first: {error})")),
            );
        }
    }
}
