//! A slow read is not a frozen server: it runs once, where it was sent, and bans nothing; a
//! frozen replica is found by the health probe, which moves the reads waiting on it.

use std::time::{Duration, Instant};

use diesel_async::RunQueryDsl;
use routing_core::{HealthCheck, RoutedPool, with_read_replica};
use routing_tests::{servers, unique};

use crate::events::{active_backends, all_servers};
use crate::support::{RanOn, port_of, private_cluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_read_runs_once_on_its_replica_and_bans_nothing() {
    let servers = servers().await;
    // A checkout timeout far below the statement's time: the old router took the first row's
    // delay for a frozen server.
    let pool = servers
        .pool_builder(&unique("slow_read"))
        .checkout_timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let marker = unique("slow_marker");
    let sql = format!(
        "SELECT pg_is_in_recovery() AS in_recovery, inet_server_port() AS port \
         FROM pg_sleep(2.5) /* {marker} */"
    );
    let mut conn = pool.get().await.unwrap();
    let began = Instant::now();
    let read = tokio::spawn(async move {
        with_read_replica(true, diesel::sql_query(sql).get_result::<RanOn>(&mut conn)).await
    });
    // Mid-statement, well past the checkout timeout: exactly one backend runs it.
    let mut samples = Vec::new();
    for wait in [1_200, 800] {
        tokio::time::sleep(Duration::from_millis(wait)).await;
        samples.push(active_backends(&all_servers(servers), &marker).await);
    }
    let ran = read.await.unwrap().unwrap();
    let took = began.elapsed();
    eprintln!("slow read: {took:?}, backends running it at 1.2 s and 2.0 s: {samples:?}");
    assert!(servers.is_replica(&ran.id()), "{ran:?}");
    assert_eq!(samples, [1, 1], "the statement ran once, on one server");
    assert!(took >= Duration::from_millis(2_500), "{took:?}");
    let status = pool.status();
    for server in &status.servers {
        assert_eq!(server.bans, 0, "{status}");
    }
    assert_eq!(
        status.servers[0].queries_routed, 0,
        "the primary ran nothing: {status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_optional_first_row_bound_moves_a_slow_read_without_a_ban() {
    let servers = servers().await;
    let pool = servers
        .pool_builder(&unique("first_row_bound"))
        .first_row_timeout(Some(Duration::from_millis(400)))
        .build()
        .unwrap();
    let marker = unique("bounded_marker");
    let sql = format!(
        "SELECT pg_is_in_recovery() AS in_recovery, inet_server_port() AS port \
         FROM pg_sleep(CASE WHEN pg_is_in_recovery() THEN 3 ELSE 0 END) /* {marker} */"
    );
    let mut conn = pool.get().await.unwrap();
    let ran = with_read_replica(true, diesel::sql_query(&sql).get_result::<RanOn>(&mut conn))
        .await
        .unwrap();
    // Slow on both replicas: the primary, where it is quick, answered.
    assert!(servers.is_primary(&ran.id()), "{ran:?}");
    // The replicas' copies were cancelled there, not left running.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(active_backends(&all_servers(servers), &marker).await, 0);
    let status = pool.status();
    for server in &status.servers {
        assert_eq!(server.bans, 0, "{status}");
    }
}

/// One read in a replica scope on a fresh connection, with where it ran and how long it took.
async fn timed_read(pool: &RoutedPool) -> (RanOn, Duration) {
    let began = Instant::now();
    let mut conn = pool.get().await.unwrap();
    let ran = with_read_replica(
        true,
        diesel::sql_query("SELECT pg_is_in_recovery() AS in_recovery, inet_server_port() AS port")
            .get_result::<RanOn>(&mut conn),
    )
    .await
    .unwrap();
    (ran, began.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_replica_is_found_by_the_probe_and_its_waiting_reads_move_on() {
    let Some(cluster) = private_cluster("frozen_replica_found_by_the_probe").await else {
        return;
    };
    let probe = HealthCheck::new(Duration::from_millis(500), Duration::from_millis(500));
    // A checkout timeout far above the probe's: only the probe can end the wait.
    let pool = RoutedPool::builder(cluster.primary_url())
        .replicas(cluster.replica_urls())
        .health_check(probe)
        .checkout_timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    // Warm both replicas' pools, so that idle connections to the frozen one exist.
    for _ in 0..4 {
        timed_read(&pool).await;
    }
    cluster.freeze_replica(0).await.unwrap();
    let frozen = cluster.replica_port(0);
    let froze = Instant::now();
    let readers: Vec<_> = (0..6)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move { timed_read(&pool).await })
        })
        .collect();
    let mut slowest = Duration::ZERO;
    for reader in readers {
        let (ran, took) = tokio::time::timeout(Duration::from_secs(30), reader)
            .await
            .expect("a read hung on the frozen replica")
            .unwrap();
        assert_ne!(port_of(&ran.id()), frozen, "{ran:?}");
        slowest = slowest.max(took);
    }
    let banned_after = froze.elapsed();
    assert!(!pool.status().servers[1].healthy, "{}", pool.status());
    eprintln!(
        "frozen replica: every read served elsewhere within {banned_after:?} of the freeze, \
         slowest {slowest:?} (probe every {:?}, timeout {:?})",
        probe.interval, probe.timeout
    );
    // The bound: one probe interval plus its timeout, with a wide margin for a busy machine
    // (and far below the checkout timeout).
    assert!(slowest < Duration::from_secs(4), "{slowest:?}");
    cluster.thaw_replica(0).await.unwrap();
}
