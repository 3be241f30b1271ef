//! Session state does not leak between requests: a server connection whose session a statement
//! changed is closed instead of serving the next checkout; one that did not change is reused.

use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Bool, Integer, Text};
use diesel_async::{RunQueryDsl, SimpleAsyncConnection};
use routing_core::RoutedPool;
use routing_tests::{servers, unique};

use crate::support::insert_product;

/// What the next checkout's session looks like.
#[derive(Debug, PartialEq, Eq, QueryableByName)]
struct Session {
    #[diesel(sql_type = Integer)]
    pid: i32,
    #[diesel(sql_type = Text)]
    statement_timeout: String,
    #[diesel(sql_type = Text)]
    search_path: String,
    #[diesel(sql_type = BigInt)]
    advisory_locks: i64,
    #[diesel(sql_type = BigInt)]
    channels: i64,
    #[diesel(sql_type = BigInt)]
    prepared: i64,
    #[diesel(sql_type = Bool)]
    temp_table: bool,
}

const LOOK: &str = "SELECT pg_backend_pid() AS pid, \
    current_setting('statement_timeout') AS statement_timeout, \
    current_setting('search_path') AS search_path, \
    (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()) \
        AS advisory_locks, \
    (SELECT count(*) FROM pg_listening_channels()) AS channels, \
    (SELECT count(*) FROM pg_prepared_statements WHERE from_sql) \
        AS prepared, \
    to_regclass('pg_temp.leaky') IS NOT NULL AS temp_table";

/// The primary session the pool hands out next (a pool of one: always the same one when it is
/// reused).
async fn next_session(pool: &RoutedPool) -> Session {
    let mut conn = pool.get().await.unwrap();
    // `batch_execute` and writes pin the primary; a read outside any scope goes there too.
    diesel::sql_query(LOOK).get_result(&mut conn).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_state_never_reaches_the_next_checkout() {
    let servers = servers().await;
    let pool = servers
        .pool_builder(&unique("session_state"))
        .max_size(1)
        .build()
        .unwrap();
    let clean = next_session(&pool).await;
    assert_eq!(clean.advisory_locks + clean.channels + clean.prepared, 0);
    assert!(!clean.temp_table);
    let statements = [
        ("SET", "SET statement_timeout = '4321ms'"),
        (
            "SET via set_config",
            "SELECT set_config('statement_timeout', '4321ms', false)",
        ),
        ("SET search_path", "SET search_path TO pg_catalog"),
        ("advisory lock", "SELECT pg_advisory_lock(4321)"),
        ("LISTEN", "LISTEN leaky_channel"),
        ("temporary table", "CREATE TEMP TABLE leaky (a int)"),
        ("PREPARE", "PREPARE leaky_statement AS SELECT 1"),
    ];
    for (what, sql) in statements {
        for batch in [false, true] {
            {
                let mut conn = pool.get().await.unwrap();
                if batch {
                    conn.batch_execute(sql).await.unwrap();
                } else {
                    diesel::sql_query(sql).execute(&mut conn).await.unwrap();
                }
            }
            let next = next_session(&pool).await;
            let how = if batch { "batch_execute" } else { "execute" };
            assert_eq!(
                next.statement_timeout, clean.statement_timeout,
                "{what} ({how})"
            );
            assert_eq!(next.search_path, clean.search_path, "{what} ({how})");
            assert_eq!(next.advisory_locks, 0, "{what} ({how})");
            assert_eq!(next.channels, 0, "{what} ({how})");
            assert_eq!(next.prepared, 0, "{what} ({how})");
            assert!(!next.temp_table, "{what} ({how})");
            assert_ne!(
                next.pid, clean.pid,
                "{what} ({how}): the changed session was reused"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_did_not_change_is_reused() {
    let servers = servers().await;
    let pool = servers
        .pool_builder(&unique("session_kept"))
        .max_size(1)
        .build()
        .unwrap();
    let first = next_session(&pool).await;
    for _ in 0..3 {
        let mut conn = pool.get().await.unwrap();
        insert_product(&mut conn, &unique("plain_write")).await;
        conn.batch_execute("SELECT 1; SET LOCAL statement_timeout = 1000")
            .await
            .unwrap();
    }
    let later = next_session(&pool).await;
    assert_eq!(later.pid, first.pid, "plain writes pay nothing");
}
