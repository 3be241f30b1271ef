//! A diesel-derived PostgreSQL enum (`order_status`) works from a replica scope: writes on the
//! primary and reads on a replica, with the type's OID looked up by the router.

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use routing_core::with_read_replica;
use routing_fixtures::{OrderStatus, orders};
use routing_tests::{ServerId, inet_server_port, pg_is_in_recovery, servers, unique};

use crate::support::{insert_order, insert_product};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enum_writes_and_reads_work_from_a_replica_scope() {
    let servers = servers().await;
    // A fresh pool has no cached OIDs: the first statement with the enum must look it up.
    let pool = servers.pool_builder(&unique("enum")).build().unwrap();
    let mut setup = pool.get().await.unwrap();
    let (product, _) = insert_product(&mut setup, &unique("enum")).await;
    drop(setup);

    let pool = servers.pool_builder(&unique("enum_fresh")).build().unwrap();
    with_read_replica(true, async {
        let mut conn = pool.get().await.unwrap();
        let (status, in_recovery, port) = diesel::insert_into(orders::table)
            .values((
                orders::product_id.eq(product),
                orders::quantity.eq(3),
                orders::status.eq(OrderStatus::Shipped),
            ))
            .returning((orders::status, pg_is_in_recovery(), inet_server_port()))
            .get_result::<(OrderStatus, bool, i32)>(&mut conn)
            .await
            .unwrap();
        assert_eq!(status, OrderStatus::Shipped);
        assert!(servers.is_primary(&ServerId { port, in_recovery }));
    })
    .await;
    servers.wait_for_replicas().await;

    // Reads that bind the enum, alone and in an array (whose bytes embed the element OID).
    let pool = servers.pool_builder(&unique("enum_read")).build().unwrap();
    with_read_replica(true, async {
        let mut conn = pool.get().await.unwrap();
        let (count, in_recovery, port) = orders::table
            .filter(orders::product_id.eq(product))
            .filter(orders::status.eq(OrderStatus::Shipped))
            .group_by(orders::product_id)
            .select((
                diesel::dsl::count_star(),
                pg_is_in_recovery(),
                inet_server_port(),
            ))
            .get_result::<(i64, bool, i32)>(&mut conn)
            .await
            .unwrap();
        assert_eq!(count, 1);
        assert!(servers.is_replica(&ServerId { port, in_recovery }));

        let mut conn = pool.get().await.unwrap();
        let statuses: Vec<(OrderStatus, bool)> = orders::table
            .filter(orders::product_id.eq(product))
            .filter(orders::status.eq_any(vec![OrderStatus::Paid, OrderStatus::Shipped]))
            .select((orders::status, pg_is_in_recovery()))
            .load(&mut conn)
            .await
            .unwrap();
        assert_eq!(statuses, [(OrderStatus::Shipped, true)]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enum_array_write_from_a_replica_scope_reaches_the_primary() {
    let servers = servers().await;
    let pool = servers.pool_builder(&unique("enum_array")).build().unwrap();
    let mut setup = pool.get().await.unwrap();
    let (product, _) = insert_product(&mut setup, &unique("enum_array")).await;
    insert_order(&mut setup, product, OrderStatus::Pending).await;
    drop(setup);

    let pool = servers
        .pool_builder(&unique("enum_array_fresh"))
        .build()
        .unwrap();
    with_read_replica(true, async {
        let mut conn = pool.get().await.unwrap();
        let changed: Vec<(OrderStatus, bool)> = diesel::update(
            orders::table
                .filter(orders::product_id.eq(product))
                .filter(orders::status.eq_any(vec![OrderStatus::Pending, OrderStatus::Paid])),
        )
        .set(orders::status.eq(OrderStatus::Cancelled))
        .returning((orders::status, pg_is_in_recovery()))
        .get_results(&mut conn)
        .await
        .unwrap();
        assert_eq!(changed, [(OrderStatus::Cancelled, false)]);
    })
    .await;
}

/// The synchronous connection runs a query without a static id from the text it rendered to
/// classify it, with binds it collects itself: an enum, alone and in an array, written from a
/// replica scope on a fresh pool (no OID known yet) and read back on a replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_enum_writes_and_reads_work_from_a_replica_scope() {
    let servers = servers().await;
    let pool = servers.pool_builder(&unique("sync_enum")).build().unwrap();
    let mut setup = pool.get().await.unwrap();
    let (product, _) = insert_product(&mut setup, &unique("sync_enum")).await;
    insert_order(&mut setup, product, OrderStatus::Pending).await;
    drop(setup);

    let sync_pool = servers
        .pool_builder(&unique("sync_enum_fresh"))
        .build_sync()
        .unwrap();
    let (changed, inserted) = tokio::task::spawn_blocking(move || {
        routing_core::with_read_replica_sync(true, || {
            let mut conn = sync_pool.get().unwrap();
            let update = diesel::update(
                orders::table
                    .filter(orders::product_id.eq(product))
                    .filter(orders::status.eq_any(vec![OrderStatus::Pending, OrderStatus::Paid])),
            )
            .set(orders::status.eq(OrderStatus::Cancelled))
            .returning((orders::status, pg_is_in_recovery()));
            let changed: Vec<(OrderStatus, bool)> =
                diesel::RunQueryDsl::get_results(update, &mut conn).unwrap();
            let mut conn = sync_pool.get().unwrap();
            let insert = diesel::insert_into(orders::table).values((
                orders::product_id.eq(product),
                orders::quantity.eq(2),
                orders::status.eq(OrderStatus::Shipped),
            ));
            let inserted = diesel::RunQueryDsl::execute(insert, &mut conn).unwrap();
            (changed, inserted)
        })
    })
    .await
    .unwrap();
    assert_eq!(changed, [(OrderStatus::Cancelled, false)]);
    assert_eq!(inserted, 1);
    servers.wait_for_replicas().await;

    let sync_pool = servers
        .pool_builder(&unique("sync_enum_read"))
        .build_sync()
        .unwrap();
    let statuses = tokio::task::spawn_blocking(move || {
        routing_core::with_read_replica_sync(true, || {
            let mut conn = sync_pool.get().unwrap();
            // A boxed query has no static id either.
            let boxed = orders::table
                .filter(orders::product_id.eq(product))
                .filter(orders::status.eq_any(vec![OrderStatus::Cancelled, OrderStatus::Shipped]))
                .select((orders::status, pg_is_in_recovery(), inet_server_port()))
                .into_boxed();
            diesel::RunQueryDsl::load::<(OrderStatus, bool, i32)>(boxed, &mut conn).unwrap()
        })
    })
    .await
    .unwrap();
    let (statuses, servers_seen): (Vec<_>, Vec<_>) = statuses
        .into_iter()
        .map(|(status, in_recovery, port)| (status, ServerId { port, in_recovery }))
        .unzip();
    assert_eq!(statuses.len(), 2, "{statuses:?}");
    assert!(statuses.contains(&OrderStatus::Cancelled) && statuses.contains(&OrderStatus::Shipped));
    assert!(
        servers_seen.iter().all(|id| servers.is_replica(id)),
        "{servers_seen:?}"
    );
}
