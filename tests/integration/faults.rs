//! A replica that dies or lags in the middle of a request, on a cluster of the test's own.

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use routing_cluster::LocalCluster;
use routing_core::{RoutedPool, with_read_replica};
use routing_fixtures::products;
use routing_tests::{identify, where_ran};

use crate::support::{self, insert_product, port_of};

async fn private_cluster(test: &str) -> Option<(LocalCluster, RoutedPool)> {
    let cluster = support::private_cluster(test).await?;
    let pool = RoutedPool::builder(cluster.primary_url())
        .replicas(cluster.replica_urls())
        .build()
        .unwrap();
    Some((cluster, pool))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_killed_mid_request_loses_no_read() {
    let Some((cluster, pool)) = private_cluster("replica_killed_mid_request_loses_no_read").await
    else {
        return;
    };
    let mut conn = pool.get().await.unwrap();
    with_read_replica(true, async {
        let first = where_ran(&mut conn).await;
        assert!(first.in_recovery);
        let victim = (0..cluster.replica_count())
            .find(|&i| cluster.replica_port(i) == port_of(&first))
            .expect("the first read ran on one of the replicas");
        cluster.kill_replica(victim).await.unwrap();
        // The same request reads again: its replica connection is dead, the read moves on.
        for _ in 0..5 {
            let next = where_ran(&mut conn).await;
            assert_ne!(port_of(&next), cluster.replica_port(victim), "{next:?}");
            assert!(next.in_recovery, "the other replica serves it: {next:?}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replica_down_mid_request_falls_back_to_the_primary() {
    let Some((cluster, pool)) =
        private_cluster("every_replica_down_mid_request_falls_back_to_the_primary").await
    else {
        return;
    };
    let mut conn = pool.get().await.unwrap();
    with_read_replica(true, async {
        assert!(where_ran(&mut conn).await.in_recovery);
        for i in 0..cluster.replica_count() {
            cluster.stop_replica(i).await.unwrap();
        }
        let id = where_ran(&mut conn).await;
        assert_eq!(port_of(&id), cluster.primary_port(), "{id:?}");
        assert!(!id.in_recovery);
    })
    .await;
    // Back up: once the health probe sees them (within two probe intervals), requests read
    // from the replicas again.
    for i in 0..cluster.replica_count() {
        cluster.start_replica(i).await.unwrap();
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        let mut next = pool.get().await.unwrap();
        if with_read_replica(true, where_ran(&mut next))
            .await
            .in_recovery
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no read went back to a replica"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_reads_its_own_write_while_every_replica_lags() {
    let Some((cluster, pool)) =
        private_cluster("a_request_reads_its_own_write_while_every_replica_lags").await
    else {
        return;
    };
    for i in 0..cluster.replica_count() {
        cluster.pause_replay(i).await.unwrap();
    }
    let mut conn = pool.get().await.unwrap();
    with_read_replica(true, async {
        let (id, _) = insert_product(&mut conn, "lagging").await;
        let name: String = products::table
            .find(id)
            .select(products::name)
            .get_result(&mut conn)
            .await
            .unwrap();
        assert_eq!(name, "lagging");
        // A replica really does lag: it does not have the row.
        let mut other = pool.get().await.unwrap();
        let on_replica: Option<String> = products::table
            .find(id)
            .select(products::name)
            .get_result(&mut other)
            .await
            .optional()
            .unwrap();
        assert_eq!(on_replica, None);
        assert!(where_ran(&mut other).await.in_recovery);
    })
    .await;
    for i in 0..cluster.replica_count() {
        cluster.resume_replay(i).await.unwrap();
    }
    let primary = identify(&cluster.primary_url()).await;
    assert!(!primary.in_recovery);
}
