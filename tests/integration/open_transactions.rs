//! A transaction block opened with raw SQL (`batch_execute("BEGIN")`, `sql_query("START
//! TRANSACTION ...")`) and never ended does not reach the next checkout of its server session:
//! the session is closed when the connection releases it, so the server rolls the abandoned
//! transaction back and the next user's write commits. Until then the connection's statements
//! stay inside it, on the primary. On both connection kinds.

use std::time::Duration;

use diesel::sql_types::{BigInt, Bool, Integer, Text};
use diesel_async::{AsyncConnection, AsyncPgConnection};
use routing_core::with_read_replica;
use routing_fixtures::products;
use routing_tests::{Servers, servers, unique};

use crate::kinds::prelude::*;
use crate::kinds::{Kind, Pool, on, on_both_kinds};
use crate::support::within;

on_both_kinds!(a_raw_transaction_left_open_never_reaches_the_next_checkout);

/// What a read inside the raw transaction sees, and where it ran.
#[derive(QueryableByName, Debug)]
struct Inside {
    #[diesel(sql_type = Integer)]
    pid: i32,
    #[diesel(sql_type = Bool)]
    in_recovery: bool,
    #[diesel(sql_type = BigInt)]
    seen: i64,
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// The names among `names` of the products committed on the primary, asked of a session of
/// its own.
async fn committed(servers: &Servers, names: [&str; 2]) -> Vec<String> {
    let mut admin = AsyncPgConnection::establish(&servers.primary_url)
        .await
        .expect("connect to the primary");
    let query = products::table
        .filter(products::name.eq_any(names))
        .select(products::name);
    diesel_async::RunQueryDsl::load(query, &mut admin)
        .await
        .expect("read the committed products")
}

/// Whether the primary's backend `pid` is still idle inside a transaction.
async fn idle_in_transaction(servers: &Servers, pid: i32) -> bool {
    let mut admin = AsyncPgConnection::establish(&servers.primary_url)
        .await
        .expect("connect to the primary");
    let query = diesel::sql_query(
        "SELECT count(*) AS n FROM pg_stat_activity \
         WHERE pid = $1 AND state LIKE 'idle in transaction%'",
    )
    .bind::<Integer, _>(pid);
    diesel_async::RunQueryDsl::get_result::<Count>(query, &mut admin)
        .await
        .expect("read pg_stat_activity")
        .n
        > 0
}

async fn a_raw_transaction_left_open_never_reaches_the_next_checkout(kind: Kind) {
    let servers = servers().await;
    // One session to the primary: the next checkout would get the abandoned one if it were kept.
    let pool = Pool::build(
        kind,
        servers
            .pool_builder(&unique("open_transaction"))
            .max_size(1),
    );
    let cases = [
        ("batch_execute BEGIN", "BEGIN", true),
        ("execute BEGIN", "BEGIN", false),
        (
            "execute START TRANSACTION",
            "START TRANSACTION ISOLATION LEVEL REPEATABLE READ",
            false,
        ),
        (
            "batch_execute ending AND CHAIN",
            "BEGIN; SELECT 1; COMMIT AND CHAIN",
            true,
        ),
    ];
    for (what, sql, batch) in cases {
        let abandoned = unique("abandoned");
        let next = unique("next");
        let inside = with_read_replica(true, async {
            let mut conn = pool.get().await;
            if batch {
                conn.batch_execute(sql).await
            } else {
                on!(conn, |c| diesel::sql_query(sql).execute(c)).map(drop)
            }
            .unwrap_or_else(|e| panic!("{what}: {e}"));
            conn.insert_product(&abandoned).await;
            // A read in a replica scope stays in the open transaction: on the primary, where
            // the uncommitted row is visible.
            let look = "SELECT pg_backend_pid() AS pid, pg_is_in_recovery() AS in_recovery, \
                        (SELECT count(*) FROM products WHERE name = $1) AS seen";
            on!(conn, |c| diesel::sql_query(look)
                .bind::<Text, _>(&abandoned)
                .get_result::<Inside>(c))
            .unwrap_or_else(|e| panic!("{what}: read inside: {e}"))
            // The connection is dropped here, its transaction never ended.
        })
        .await;
        assert!(!inside.in_recovery, "{what}: {inside:?}");
        assert_eq!(inside.seen, 1, "{what}: the read left the transaction");

        let mut conn = pool.get().await;
        let (_, server) = conn.insert_product(&next).await;
        drop(conn);
        assert!(!server.in_recovery, "{what}");
        assert_eq!(
            committed(servers, [&abandoned, &next]).await,
            std::slice::from_ref(&next),
            "{what}: the next user's write must commit, the abandoned one must not"
        );
        let gone = within(Duration::from_secs(30), || async {
            !idle_in_transaction(servers, inside.pid).await
        })
        .await;
        assert!(
            gone.is_some(),
            "{what}: backend {} is still idle in its transaction",
            inside.pid
        );
    }
}
