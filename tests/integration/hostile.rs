//! Everyday misuse and bad luck, as a hostile user brings them: a result stream dropped after a
//! few rows, a causal token checked while the request holds the primary, session state in
//! disguise, a per-role `statement_timeout`, servers configured in the wrong role. Every answer
//! is the servers' own.

use std::time::{Duration, Instant};

use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Integer, Text};
use diesel_async::{AsyncConnection, RunQueryDsl, SimpleAsyncConnection};
use futures_util::{FutureExt, StreamExt};
use routing_core::{CausalToken, RoutedPool, with_causal_token, with_read_replica};
use routing_tests::{servers, unique, where_ran};

use crate::events::{active_backends, all_servers};
use crate::support::within;

#[derive(Debug, QueryableByName)]
struct Wide {
    #[diesel(sql_type = Integer)]
    g: i32,
    #[diesel(sql_type = Text)]
    pad: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_stream_dropped_midway_stops_its_statement_and_the_next_one_runs_at_once() {
    let servers = servers().await;
    let urls = all_servers(servers);
    for on_replica in [true, false] {
        let pool = servers.pool(&unique("dropped_stream"));
        let mut conn = pool.get().await.unwrap();
        let marker = unique("dropped_stream_marker");
        // 400 rows of 20 kB, one every 25 ms (10 s in all): each row leaves the server as soon
        // as it is made.
        let sql = format!(
            "SELECT g, repeat('x', 20000) || pg_sleep(0.025)::text AS pad \
             FROM generate_series(1, 400) g /* {marker} */"
        );
        let taken = with_read_replica(on_replica, async {
            let stream = diesel::sql_query(&sql)
                .load_stream::<Wide>(&mut conn)
                .await
                .unwrap();
            let rows: Vec<Wide> = stream.take(3).map(Result::unwrap).collect().await;
            rows.iter()
                .map(|row| (row.g, row.pad.len()))
                .collect::<Vec<_>>()
        })
        .await;
        assert_eq!(taken, [(1, 20_000), (2, 20_000), (3, 20_000)]);
        // The stream is gone: the statement must not run on for ten seconds.
        let stopped = within(Duration::from_secs(3), || async {
            active_backends(&urls, &marker).await == 0
        })
        .await;
        let began = Instant::now();
        let next = tokio::time::timeout(
            Duration::from_secs(30),
            with_read_replica(on_replica, where_ran(&mut conn)),
        )
        .await
        .expect("the next statement hung");
        let took = began.elapsed();
        eprintln!(
            "dropped stream (replica scope: {on_replica}): statement gone after {stopped:?}, \
             next statement on the connection took {took:?} ({next:?})"
        );
        assert!(stopped.is_some(), "the dropped stream's statement runs on");
        // The statement would run on for ten seconds; the next one runs at once.
        assert!(took < Duration::from_secs(2), "{took:?}");
        for server in &pool.status().servers {
            assert_eq!(server.bans, 0, "{}", pool.status());
        }
    }
}

/// Fifty single-row reads in a row (`get_result`, `first`), which drop their row stream after
/// its one row, keep the connection's server session: nothing is cancelled or reopened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_row_reads_keep_their_server_session() {
    let servers = servers().await;
    for on_replica in [false, true] {
        let pool = servers.pool(&unique("single_rows"));
        let mut conn = pool.get().await.unwrap();
        let mut sessions = std::collections::BTreeSet::new();
        for i in 0..50 {
            let who = diesel::select((
                diesel::dsl::sql::<Integer>("inet_server_port()"),
                diesel::dsl::sql::<Integer>("pg_backend_pid()"),
                diesel::dsl::sql::<diesel::sql_types::Bool>("pg_is_in_recovery()"),
            ));
            let read = async {
                if i % 2 == 0 {
                    who.get_result::<(i32, i32, bool)>(&mut conn).await
                } else {
                    who.first::<(i32, i32, bool)>(&mut conn).await
                }
            };
            let (port, pid, in_recovery) = with_read_replica(on_replica, read).await.unwrap();
            assert_eq!(in_recovery, on_replica, "read {i}");
            sessions.insert((port, pid));
        }
        eprintln!("single-row reads (replica scope: {on_replica}): server sessions {sessions:?}");
        assert_eq!(sessions.len(), 1, "{sessions:?}");
    }
}

fn now_ms() -> u64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    u64::try_from(since.as_millis()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checking_a_token_never_waits_for_the_primary_connection_the_request_holds() {
    let servers = servers().await;
    let pool = servers
        .pool_builder(&unique("token_self_wait"))
        .primary_max_size(1)
        .checkout_timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    let mut conn = pool.get().await.unwrap();
    // A read outside every scope: the request now holds the pool's one primary connection.
    let first = where_ran(&mut conn).await;
    assert!(servers.is_primary(&first), "{first:?}");
    let forged: CausalToken = format!("FFFFFFFF/FFFFFFFF@{}", now_ms()).parse().unwrap();
    let began = Instant::now();
    let read = with_causal_token(forged, with_read_replica(true, where_ran(&mut conn))).await;
    let took = began.elapsed();
    eprintln!(
        "token check beside a held primary connection: {took:?}, answered by {read:?}, \
         forged tokens counted: {}",
        pool.status().forged_tokens
    );
    // The forged token was checked and ignored: a replica answers, at once.
    assert!(servers.is_replica(&read), "{read:?}");
    assert!(took < Duration::from_millis(1_500), "{took:?}");
    assert_eq!(pool.status().forged_tokens, 1, "{}", pool.status());
}

/// What a session looks like to the next user of its server connection.
#[derive(Debug, PartialEq, Eq, QueryableByName)]
struct Look {
    #[diesel(sql_type = Text)]
    statement_timeout: String,
    #[diesel(sql_type = Text)]
    role: String,
    #[diesel(sql_type = BigInt)]
    advisory_locks: i64,
    #[diesel(sql_type = BigInt)]
    cursors: i64,
    #[diesel(sql_type = BigInt)]
    temp_relations: i64,
    #[diesel(sql_type = BigInt)]
    temp_functions: i64,
}

const LOOK: &str = "SELECT current_setting('statement_timeout') AS statement_timeout, \
    current_user::text AS role, \
    (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()) \
        AS advisory_locks, \
    (SELECT count(*) FROM pg_cursors) AS cursors, \
    (SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema()) \
        AS temp_relations, \
    (SELECT count(*) FROM pg_proc WHERE pronamespace = pg_my_temp_schema()) AS temp_functions";

/// The session the next checkout gets, on the primary or (in a replica scope) the replica.
async fn next_look(pool: &RoutedPool, on_replica: bool) -> Look {
    let mut conn = pool.get().await.unwrap();
    with_read_replica(on_replica, diesel::sql_query(LOOK).get_result(&mut conn))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_state_in_disguise_never_reaches_the_next_checkout() {
    let servers = servers().await;
    // One replica and pools of one: the next checkout gets the same server connection when it
    // is reused. A pool per statement, so that one leak does not hide or fake another.
    let pool = || {
        RoutedPool::builder(routing_tests::with_application_name(
            &servers.primary_url,
            &unique("disguised_session"),
        ))
        .replica(servers.replica_urls[0].clone())
        .max_size(1)
        .build()
        .unwrap()
    };
    let clean = {
        let pool = pool();
        (next_look(&pool, false).await, next_look(&pool, true).await)
    };
    let statements = [
        "SELECT \"set_config\"('statement_timeout', '4321ms', false)",
        "SELECT * FROM pg_catalog.set_config('statement_timeout', '4321ms', false)",
        "DO $$ BEGIN PERFORM set_config('statement_timeout', '4321ms', false); END $$",
        "DO $$ BEGIN PERFORM pg_advisory_lock(4321); END $$",
        "CREATE TABLE pg_temp.leaky_table (a int)",
        "CREATE OR REPLACE TEMP VIEW leaky_view AS SELECT 1 AS a",
        "CREATE FUNCTION pg_temp.leaky_function() RETURNS int LANGUAGE sql AS 'SELECT 1'",
        "DECLARE leaky_cursor CURSOR WITH HOLD FOR SELECT 1",
        "SET ROLE pg_monitor",
        "SELECT set_config('role', 'pg_monitor', false)",
    ];
    let mut leaks = Vec::new();
    for sql in statements {
        for on_replica in [false, true] {
            let pool = pool();
            let ran = {
                let mut conn = pool.get().await.unwrap();
                with_read_replica(on_replica, diesel::sql_query(sql).execute(&mut conn)).await
            };
            if let Err(error) = ran {
                panic!("{sql} (replica scope: {on_replica}): {error}");
            }
            let next = (next_look(&pool, false).await, next_look(&pool, true).await);
            if next != clean {
                leaks.push(format!(
                    "{sql} (replica scope: {on_replica}): {next:?} instead of {clean:?}"
                ));
            }
        }
    }
    assert!(
        leaks.is_empty(),
        "session state reached the next checkout:\n{}",
        leaks.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_statement_timeout_set_on_connect_ends_a_slow_read_once_and_bans_nothing() {
    let servers = servers().await;
    let pool = servers
        .pool_builder(&unique("replica_statement_timeout"))
        .on_connect(|conn, role| {
            async move {
                if matches!(role, routing_core::Role::Replica(_)) {
                    conn.batch_execute("SET statement_timeout = '1s'").await?;
                }
                Ok(())
            }
            .boxed()
        })
        .build()
        .unwrap();
    let marker = unique("timed_out_marker");
    let sql = format!("SELECT 1 FROM pg_sleep(3) /* {marker} */");
    let mut conn = pool.get().await.unwrap();
    let began = Instant::now();
    let read = tokio::spawn(async move {
        let outcome = with_read_replica(true, diesel::sql_query(sql).execute(&mut conn)).await;
        (outcome, conn)
    });
    // Past the replica's timeout: no other server runs the statement again.
    let mut samples = Vec::new();
    for wait in [1_600, 1_000] {
        tokio::time::sleep(Duration::from_millis(wait)).await;
        samples.push(active_backends(&all_servers(servers), &marker).await);
    }
    let (outcome, mut conn) = read.await.unwrap();
    let took = began.elapsed();
    eprintln!(
        "replica statement_timeout: {outcome:?} after {took:?}, backends at 1.6 s and 2.6 s: \
         {samples:?}"
    );
    let error = outcome.expect_err("the replica's statement_timeout ends the read");
    assert!(error.to_string().contains("statement timeout"), "{error}");
    assert_eq!(samples, [0, 0], "the read ran again elsewhere");
    for server in &pool.status().servers {
        assert_eq!(server.bans, 0, "{}", pool.status());
    }
    // The connection goes on, on a replica.
    let next = with_read_replica(true, where_ran(&mut conn)).await;
    assert!(servers.is_replica(&next), "{next:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_listed_as_a_replica_never_serves_reads_and_a_standby_as_primary_never_writes() {
    let servers = servers().await;
    let application_name = unique("wrong_roles");
    let pool = RoutedPool::builder(&servers.primary_url)
        .replicas([
            routing_tests::with_application_name(&servers.primary_url, &application_name),
            servers.replica_urls[0].clone(),
        ])
        .build()
        .unwrap();
    for _ in 0..12 {
        let mut conn = pool.get().await.unwrap();
        let id = with_read_replica(true, where_ran(&mut conn)).await;
        assert!(servers.is_replica(&id), "the primary served a read: {id:?}");
    }
    let standby_as_primary = RoutedPool::builder(&servers.replica_urls[0])
        .replicas([servers.replica_urls[1].clone()])
        .build()
        .unwrap();
    let mut conn = standby_as_primary.get().await.unwrap();
    let error = diesel::sql_query("INSERT INTO products (name, price_cents) VALUES ('x', 1)")
        .execute(&mut conn)
        .await
        .expect_err("a standby configured as primary took a write");
    eprintln!("standby as primary: {error}");
    assert!(error.to_string().contains("recovery"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_replica_connections_closed_by_the_server_neither_fail_a_read_nor_leave_it_to_the_primary()
 {
    let servers = servers().await;
    let application_name = unique("terminated_idle");
    let pool = servers
        .pool_builder(&application_name)
        .replica_max_size(1)
        .build()
        .unwrap();
    for _ in 0..4 {
        let mut conn = pool.get().await.unwrap();
        with_read_replica(true, where_ran(&mut conn)).await;
    }
    // An administrator (or idle_session_timeout, or a proxy) ends every idle session of the pool
    // on both replicas.
    for url in &servers.replica_urls {
        let mut admin = diesel_async::AsyncPgConnection::establish(url)
            .await
            .unwrap();
        diesel::sql_query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
        )
        .bind::<Text, _>(&application_name)
        .execute(&mut admin)
        .await
        .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut conn = pool.get().await.unwrap();
    let read = with_read_replica(true, where_ran(&mut conn)).await;
    eprintln!(
        "idle sessions terminated: the next read ran on {read:?}\n{}",
        pool.status()
    );
    assert!(servers.is_replica(&read), "{read:?}");
}
