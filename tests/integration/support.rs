//! Rows and statements the tests share.

use std::time::{Duration, Instant};

use diesel::prelude::*;
use diesel::sql_types::{Bool, Integer};
use diesel_async::{AsyncConnection, RunQueryDsl};
use routing_core::RoutedConnection;
use routing_fixtures::products;
use routing_tests::{ServerId, inet_server_port, pg_is_in_recovery};

/// Where a raw statement ran, read from its own result columns.
#[derive(Debug, QueryableByName)]
pub(crate) struct RanOn {
    #[diesel(sql_type = Bool)]
    pub(crate) in_recovery: bool,
    #[diesel(sql_type = Integer)]
    pub(crate) port: i32,
}

impl RanOn {
    pub(crate) fn id(&self) -> ServerId {
        ServerId {
            port: self.port,
            in_recovery: self.in_recovery,
        }
    }
}

/// Inserts a product on `conn` and returns its id and the server that ran the insert.
pub(crate) async fn insert_product(conn: &mut RoutedConnection, name: &str) -> (i64, ServerId) {
    let (id, in_recovery, port) = diesel::insert_into(products::table)
        .values((products::name.eq(name), products::price_cents.eq(100_i64)))
        .returning((products::id, pg_is_in_recovery(), inet_server_port()))
        .get_result::<(i64, bool, i32)>(conn)
        .await
        .expect("insert a product");
    (id, ServerId { port, in_recovery })
}

/// Places an order of `product` in `status` on `conn`.
pub(crate) async fn insert_order(
    conn: &mut RoutedConnection,
    product: i64,
    status: routing_fixtures::OrderStatus,
) {
    use routing_fixtures::orders;
    diesel::insert_into(orders::table)
        .values((
            orders::product_id.eq(product),
            orders::quantity.eq(1),
            orders::status.eq(status),
        ))
        .execute(conn)
        .await
        .expect("insert an order");
}

/// A cluster of the test's own, migrated and caught up: fault controls must not disturb the
/// tests sharing the process cluster. `None` (the test skips) on external servers.
pub(crate) async fn private_cluster(test: &str) -> Option<routing_cluster::LocalCluster> {
    routing_tests::servers().await.local(test)?;
    let cluster = routing_cluster::LocalCluster::start()
        .await
        .expect("start a private cluster");
    let mut migrator = routing_core::Migrator::connect(&cluster.primary_url())
        .await
        .expect("connect the migrator");
    migrator
        .run_pending(routing_fixtures::MIGRATIONS)
        .await
        .expect("migrate the private cluster");
    cluster
        .wait_for_replicas()
        .await
        .expect("replicas catch up");
    Some(cluster)
}

/// The port a server answered from.
pub(crate) fn port_of(id: &ServerId) -> u16 {
    u16::try_from(id.port).expect("a port")
}

/// Polls `check` until it holds, for up to `limit`; how long it took.
pub(crate) async fn within<F, Fut>(limit: Duration, mut check: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let began = Instant::now();
    while began.elapsed() < limit {
        if check().await {
            return Some(began.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// Begins a transaction on `conn` that sets the price of `product` to `price` (holding its row
/// lock) and then waits, and drops it midway, as a request timeout does.
pub(crate) async fn abandon_locking_transaction(
    conn: &mut RoutedConnection,
    product: i64,
    price: i64,
) {
    let transaction = conn.transaction(async |conn| {
        diesel::update(products::table.find(product))
            .set(products::price_cents.eq(price))
            .execute(conn)
            .await?;
        tokio::time::sleep(Duration::from_secs(30)).await;
        Ok::<_, diesel::result::Error>(())
    });
    assert!(
        tokio::time::timeout(Duration::from_millis(500), transaction)
            .await
            .is_err(),
        "the transaction was still running when it was dropped"
    );
}
