//! Transactions: pinned to one server, asked of that server.

use std::time::Duration;

use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel_async::{AsyncConnection, RunQueryDsl};
use routing_core::with_read_replica;
use routing_fixtures::products;
use routing_tests::{servers, unique, where_ran};

use crate::support::insert_product;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_statement_in_a_transaction_goes_to_the_primary() {
    let servers = servers().await;
    let pool = servers.pool(&unique("tx_primary"));
    let name = unique("tx_row");
    with_read_replica(true, async {
        let mut conn = pool.get().await.unwrap();
        let seen = conn
            .transaction(async |conn| {
                let mut seen = vec![where_ran(conn).await];
                let (id, writer) = insert_product(conn, &name).await;
                seen.push(writer);
                // The uncommitted row is visible: same server, same transaction.
                let found: String = products::table
                    .find(id)
                    .select(products::name)
                    .get_result(conn)
                    .await?;
                assert_eq!(found, name);
                seen.push(where_ran(conn).await);
                Ok::<_, DieselError>(seen)
            })
            .await
            .unwrap();
        for id in seen {
            assert!(servers.is_primary(&id), "{id:?}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_transactions_stay_on_the_primary_and_roll_back_to_savepoints() {
    let servers = servers().await;
    let pool = servers.pool(&unique("tx_nested"));
    let kept = unique("kept");
    let dropped = unique("dropped");
    with_read_replica(true, async {
        let mut conn = pool.get().await.unwrap();
        conn.transaction(async |conn| {
            insert_product(conn, &kept).await;
            let inner = conn
                .transaction(async |conn| {
                    insert_product(conn, &dropped).await;
                    assert!(servers.is_primary(&where_ran(conn).await));
                    Err::<(), _>(DieselError::RollbackTransaction)
                })
                .await;
            assert!(matches!(inner, Err(DieselError::RollbackTransaction)));
            assert!(servers.is_primary(&where_ran(conn).await));
            Ok::<_, DieselError>(())
        })
        .await
        .unwrap();
    })
    .await;
    let mut check = pool.get().await.unwrap();
    let names: Vec<String> = products::table
        .filter(products::name.eq_any([&kept, &dropped]))
        .select(products::name)
        .load(&mut check)
        .await
        .unwrap();
    assert_eq!(names, [kept]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_transaction_in_replica_scope_runs_on_one_replica() {
    let servers = servers().await;
    let pool = servers.pool(&unique("tx_read_only"));
    let mut conn = pool.get().await.unwrap();
    let seen = with_read_replica(true, async {
        conn.build_transaction()
            .read_only()
            .repeatable_read()
            .run(async |conn| {
                let mut seen = Vec::new();
                for _ in 0..4 {
                    seen.push(where_ran(conn).await);
                }
                Ok::<_, DieselError>(seen)
            })
            .await
            .unwrap()
    })
    .await;
    assert!(servers.is_replica(&seen[0]), "{:?}", seen[0]);
    assert!(seen.iter().all(|id| *id == seen[0]), "one server: {seen:?}");
    assert!(!conn.has_written());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_inside_a_read_only_replica_transaction_fails_read_only() {
    let pool = servers().await.pool(&unique("tx_read_only_write"));
    let mut conn = pool.get().await.unwrap();
    let result = with_read_replica(true, async {
        conn.build_transaction()
            .read_only()
            .run(async |conn| {
                insert_product_result(conn, &unique("refused")).await?;
                Ok::<_, DieselError>(())
            })
            .await
    })
    .await;
    assert!(
        matches!(
            result,
            Err(DieselError::DatabaseError(
                DatabaseErrorKind::ReadOnlyTransaction,
                _
            ))
        ),
        "{result:?}"
    );
}

async fn insert_product_result(
    conn: &mut routing_core::RoutedConnection,
    name: &str,
) -> QueryResult<i64> {
    diesel::insert_into(products::table)
        .values((products::name.eq(name), products::price_cents.eq(1_i64)))
        .returning(products::id)
        .get_result(conn)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_transaction_outside_replica_scope_runs_on_the_primary() {
    let servers = servers().await;
    let pool = servers.pool(&unique("tx_read_only_primary"));
    let mut conn = pool.get().await.unwrap();
    let id = conn
        .build_transaction()
        .read_only()
        .run(async |conn| Ok::<_, DieselError>(where_ran(conn).await))
        .await
        .unwrap();
    assert!(servers.is_primary(&id), "{id:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serializable_read_only_transaction_runs_on_the_primary() {
    let servers = servers().await;
    let pool = servers.pool(&unique("tx_serializable"));
    let mut conn = pool.get().await.unwrap();
    let id = with_read_replica(true, async {
        conn.build_transaction()
            .read_only()
            .serializable()
            .deferrable()
            .run(async |conn| Ok::<_, DieselError>(where_ran(conn).await))
            .await
            .unwrap()
    })
    .await;
    assert!(servers.is_primary(&id), "{id:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_transaction_reads_stay_on_the_primary() {
    let servers = servers().await;
    let pool = servers.pool(&unique("tx_sticky"));
    let mut conn = pool.get().await.unwrap();
    with_read_replica(true, async {
        conn.transaction(async |conn| {
            insert_product(conn, &unique("tx_sticky")).await;
            Ok::<_, DieselError>(())
        })
        .await
        .unwrap();
        assert!(servers.is_primary(&where_ran(&mut conn).await));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_transaction_keeps_reads_on_the_primary_and_commits_nothing() {
    let servers = servers().await;
    let pool = servers
        .pool_builder(&unique("tx_test"))
        .max_size(1)
        .build()
        .unwrap();
    let name = unique("test_tx");
    let count = async |conn: &mut routing_core::RoutedConnection| -> i64 {
        products::table
            .filter(products::name.eq(&name))
            .count()
            .get_result(conn)
            .await
            .unwrap()
    };
    let mut conn = pool.get().await.unwrap();
    with_read_replica(true, async {
        conn.begin_test_transaction().await.unwrap();
        insert_product(&mut conn, &name).await;
        // Reads in a test transaction see the test's own uncommitted rows, on the primary.
        assert_eq!(count(&mut conn).await, 1);
        assert!(servers.is_primary(&where_ran(&mut conn).await));
    })
    .await;
    drop(conn);
    // The next connection of the pool joins the same test transaction, even in a replica scope.
    let mut next = pool.get().await.unwrap();
    with_read_replica(true, async {
        assert_eq!(count(&mut next).await, 1);
        assert!(servers.is_primary(&where_ran(&mut next).await));
    })
    .await;
    // Nothing was committed: a session of its own does not see the row.
    let mut outside = diesel_async::AsyncPgConnection::establish(&servers.primary_url)
        .await
        .unwrap();
    let committed: i64 = products::table
        .filter(products::name.eq(&name))
        .count()
        .get_result(&mut outside)
        .await
        .unwrap();
    assert_eq!(committed, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_dropped_midway_is_never_reused_open() {
    let servers = servers().await;
    let name = unique("tx_dropped");
    let pool = servers
        .pool_builder(&unique("tx_dropped"))
        .max_size(1)
        .build()
        .unwrap();
    let mut conn = pool.get().await.unwrap();
    let abandoned = tokio::time::timeout(
        Duration::from_millis(300),
        conn.transaction(async |conn| {
            insert_product(conn, &name).await;
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok::<_, DieselError>(())
        }),
    )
    .await;
    assert!(abandoned.is_err(), "the transaction was cut off");
    drop(conn);
    // The only pooled primary connection must not come back inside the abandoned transaction.
    let mut next = pool.get().await.unwrap();
    next.transaction(async |conn| {
        let count: i64 = products::table
            .filter(products::name.eq(&name))
            .count()
            .get_result(conn)
            .await?;
        assert_eq!(count, 0, "the abandoned insert is not visible");
        Ok::<_, DieselError>(())
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_transaction_in_a_test_transaction_stays_on_the_primary() {
    let servers = servers().await;
    let pool = servers
        .pool_builder(&unique("tx_test_read_only"))
        .max_size(1)
        .build()
        .unwrap();
    let mut conn = pool.get().await.unwrap();
    conn.begin_test_transaction().await.unwrap();
    drop(conn);
    let mut conn = pool.get().await.unwrap();
    let id = with_read_replica(true, async {
        conn.build_transaction()
            .read_only()
            .run(async |conn| Ok::<_, DieselError>(where_ran(conn).await))
            .await
            .unwrap()
    })
    .await;
    assert!(servers.is_primary(&id), "{id:?}");
}
