//! A cancelled request cancels its statement and leaves nothing behind: the statement stops on
//! its server, an abandoned transaction is rolled back and its locks released, and the routed
//! connection's next statements run at once, outside it.

use std::time::{Duration, Instant};

use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};
use routing_core::{Error, RoutedConnection, with_read_replica};
use routing_fixtures::products;
use routing_tests::{servers, unique, where_ran};

use crate::events::{active_backends, all_servers, locks_held, sessions_in_transaction};
use crate::support::{abandon_locking_transaction, insert_product, within};

/// A statement that sleeps `seconds` on whatever server runs it, tagged with `marker`.
fn sleeper(seconds: u32, marker: &str) -> String {
    format!("SELECT 1 FROM pg_sleep({seconds}) /* {marker} */")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_read_is_cancelled_on_its_replica_and_the_connection_goes_on_at_once() {
    let servers = servers().await;
    let pool = servers.pool(&unique("dropped_read"));
    let mut conn = pool.get().await.unwrap();
    let marker = unique("dropped_read_marker");
    let sql = sleeper(10, &marker);
    let read = with_read_replica(true, diesel::sql_query(&sql).execute(&mut conn));
    assert!(
        tokio::time::timeout(Duration::from_millis(500), read)
            .await
            .is_err()
    );
    let urls = all_servers(servers);
    let stopped = within(Duration::from_secs(3), || async {
        active_backends(&urls, &marker).await == 0
    })
    .await;
    eprintln!("dropped read: statement gone from the server after {stopped:?}");
    assert!(stopped.is_some(), "the statement still runs on the server");
    let began = Instant::now();
    let id = with_read_replica(true, where_ran(&mut conn)).await;
    let took = began.elapsed();
    eprintln!("dropped read: next statement on the same connection took {took:?}");
    assert!(servers.is_replica(&id), "{id:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    for server in &pool.status().servers {
        assert_eq!(server.bans, 0, "{}", pool.status());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_write_is_cancelled_and_changes_nothing() {
    let servers = servers().await;
    let pool = servers.pool(&unique("dropped_write"));
    let mut conn = pool.get().await.unwrap();
    let name = unique("never_inserted");
    let marker = unique("dropped_write_marker");
    let sql = format!(
        "INSERT INTO products (name, price_cents) SELECT '{name}', 1 FROM pg_sleep(10) /* {marker} */"
    );
    let write = diesel::sql_query(&sql).execute(&mut conn);
    assert!(
        tokio::time::timeout(Duration::from_millis(500), write)
            .await
            .is_err()
    );
    let urls = all_servers(servers);
    assert!(
        within(Duration::from_secs(3), || async {
            active_backends(&urls, &marker).await == 0
        })
        .await
        .is_some(),
        "the write still runs on the primary"
    );
    let found: i64 = products::table
        .filter(products::name.eq(&name))
        .count()
        .get_result(&mut conn)
        .await
        .unwrap();
    assert_eq!(found, 0, "the cancelled insert changed nothing");
    let (_, writer) = insert_product(&mut conn, &unique("after_cancel")).await;
    assert!(servers.is_primary(&writer));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_dropped_midway_is_rolled_back_and_the_next_write_commits() {
    let servers = servers().await;
    let application_name = unique("dropped_tx");
    let pool = servers.pool(&application_name);
    let mut admin = servers
        .pool(&unique("dropped_tx_admin"))
        .get()
        .await
        .unwrap();
    let (product, _) = insert_product(&mut admin, &unique("locked")).await;
    let mut conn = pool.get().await.unwrap();
    abandon_locking_transaction(&mut conn, product, 7).await;
    // The connection's next statement runs outside the abandoned transaction, and commits.
    let name = unique("after_abandoned");
    let (inserted, writer) = insert_product(&mut conn, &name).await;
    assert!(servers.is_primary(&writer));
    let released = within(Duration::from_secs(1), || async {
        locks_held(&servers.primary_url, &application_name).await == 0
            && sessions_in_transaction(&servers.primary_url, &application_name).await == 0
    })
    .await;
    eprintln!("dropped transaction: locks released after {released:?}");
    assert!(
        released.is_some(),
        "the abandoned transaction still holds its locks"
    );
    drop(conn);
    // Seen from another session: the insert committed, the update did not.
    let price: i64 = products::table
        .find(product)
        .select(products::price_cents)
        .get_result(&mut admin)
        .await
        .unwrap();
    assert_eq!(price, 100, "the abandoned update was rolled back");
    let found: i64 = products::table
        .find(inserted)
        .count()
        .get_result(&mut admin)
        .await
        .unwrap();
    assert_eq!(
        found, 1,
        "the write after the abandoned transaction was lost"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_connection_of_an_abandoned_transaction_releases_its_locks_at_once() {
    let servers = servers().await;
    let application_name = unique("dropped_tx_conn");
    let pool = servers.pool(&application_name);
    let mut admin = servers
        .pool(&unique("dropped_conn_admin"))
        .get()
        .await
        .unwrap();
    let (product, _) = insert_product(&mut admin, &unique("locked_too")).await;
    let mut conn = pool.get().await.unwrap();
    abandon_locking_transaction(&mut conn, product, 8).await;
    drop(conn);
    let released = within(Duration::from_secs(1), || async {
        locks_held(&servers.primary_url, &application_name).await == 0
            && sessions_in_transaction(&servers.primary_url, &application_name).await == 0
    })
    .await;
    eprintln!("dropped connection: locks released after {released:?}");
    assert!(
        released.is_some(),
        "a pooled session stayed idle in transaction"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_replica_transaction_dropped_midway_leaves_the_connection_outside_it() {
    let servers = servers().await;
    let application_name = unique("dropped_ro_tx");
    let pool = servers.pool(&application_name);
    let mut conn = pool.get().await.unwrap();
    let mut builder = conn.build_transaction().read_only();
    let transaction = with_read_replica(
        true,
        builder.run(async |conn| {
            let id = where_ran(conn).await;
            tokio::time::sleep(Duration::from_secs(30)).await;
            Ok::<_, diesel::result::Error>(id)
        }),
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(500), transaction)
            .await
            .is_err()
    );
    // A write on the same connection goes to the primary and commits: it does not fail with
    // "read-only transaction" on the replica.
    let (_, writer) = insert_product(&mut conn, &unique("after_ro")).await;
    assert!(servers.is_primary(&writer));
    for url in &servers.replica_urls {
        assert_eq!(sessions_in_transaction(url, &application_name).await, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_savepoint_dropped_inside_a_live_transaction_makes_it_fail_not_commit_half() {
    let servers = servers().await;
    let pool = servers.pool(&unique("dropped_savepoint"));
    let mut conn = pool.get().await.unwrap();
    let name = unique("half_committed");
    let outcome = conn
        .transaction(async |conn| {
            insert_product(conn, &name).await;
            let savepoint = conn.transaction(async |conn| {
                tokio::time::sleep(Duration::from_secs(30)).await;
                diesel::sql_query("SELECT 1").execute(conn).await
            });
            let _ = tokio::time::timeout(Duration::from_millis(200), savepoint).await;
            // The transaction goes on after its savepoint was dropped: it must not commit.
            insert_product_checked(conn, &name).await
        })
        .await;
    let error = outcome.expect_err("the transaction lost its savepoint and must fail");
    assert!(
        matches!(Error::from_diesel(&error), Some(Error::TransactionLost)),
        "{error}"
    );
    let found: i64 = products::table
        .filter(products::name.eq(&name))
        .count()
        .get_result(&mut conn)
        .await
        .unwrap();
    assert_eq!(found, 0, "nothing of the transaction committed");
    // The connection works again for the next transaction.
    let ok = conn
        .transaction(async |conn| insert_product_checked(conn, &unique("next_tx")).await)
        .await;
    assert!(ok.is_ok(), "{ok:?}");
}

async fn insert_product_checked(
    conn: &mut RoutedConnection,
    name: &str,
) -> Result<(), diesel::result::Error> {
    diesel::insert_into(products::table)
        .values((products::name.eq(name), products::price_cents.eq(1_i64)))
        .execute(conn)
        .await
        .map(drop)
}
