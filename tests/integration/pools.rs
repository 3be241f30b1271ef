//! Per-role pools: the primary's pool and each replica's have their own size and checkout
//! timeout, as the servers count their sessions, and the status shows each pool's size and
//! limit.

use std::time::Duration;

use diesel_async::RunQueryDsl;
use routing_core::{Error, Role, RoutedConnection, with_read_replica};
use routing_tests::{servers, unique, where_ran};

use crate::support::insert_product;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_replica_has_a_pool_of_replica_max_size_and_the_primary_its_own() {
    let servers = servers().await;
    let name = unique("per_role_pools");
    let pool = servers
        .pool_builder(&name)
        .max_size(8)
        .primary_max_size(1)
        .replica_max_size(2)
        .primary_checkout_timeout(Duration::from_millis(300))
        .replica_checkout_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let status = pool.status();
    assert_eq!(status.servers[0].role, Role::Primary);
    assert_eq!(status.servers[0].max_size, 1);
    for replica in &status.servers[1..] {
        assert_eq!((replica.size, replica.max_size), (0, 2), "{status}");
    }

    // Every replica connection stays held by its routed connection until it is dropped.
    let replicas = servers.replica_urls.len();
    let mut readers: Vec<RoutedConnection> = Vec::new();
    let mut served = vec![0; replicas];
    for _ in 0..2 * replicas {
        let mut conn = pool.get().await.unwrap();
        let ran = with_read_replica(true, where_ran(&mut conn)).await;
        let index = servers
            .replica_index(&ran)
            .unwrap_or_else(|| panic!("a read ran on {ran:?}, not a replica"));
        served[index] += 1;
        readers.push(conn);
    }
    assert_eq!(served, vec![2; replicas], "each replica served two readers");
    for url in &servers.replica_urls {
        assert_eq!(servers.sessions(url, &name).await, 2, "sessions on {url}");
    }
    let status = pool.status();
    for replica in &status.servers[1..] {
        assert_eq!((replica.size, replica.in_use), (2, 2), "{status}");
    }
    assert!(status.to_string().contains("2/2"), "{status}");

    // Every replica pool is full: the next read waits the replica timeout on each, then runs on
    // the primary.
    let mut late = pool.get().await.unwrap();
    let ran = with_read_replica(true, where_ran(&mut late)).await;
    assert!(servers.is_primary(&ran), "{ran:?}");
    drop(late);

    // The primary's pool of one: a second writer waits the primary's timeout and is told so.
    let mut writer = pool.get().await.unwrap();
    let (_, ran) = insert_product(&mut writer, &name).await;
    assert!(servers.is_primary(&ran));
    let mut second = pool.get().await.unwrap();
    let error = diesel::sql_query("DELETE FROM products WHERE name = 'no such product'")
        .execute(&mut second)
        .await
        .unwrap_err();
    match Error::from_diesel(&error) {
        Some(Error::PoolExhausted {
            role: Role::Primary,
            max_size: 1,
            timeout,
            ..
        }) => assert_eq!(*timeout, Duration::from_millis(300)),
        other => panic!("expected the primary's pool to be exhausted, got {other:?}: {error}"),
    }
    assert_eq!(servers.sessions(&servers.primary_url, &name).await, 1);
    drop(readers);
}
