//! Bad luck at the worst moment: a COMMIT whose future is dropped, a replica that dies while its
//! rows stream, a transaction dropped midway behind PgBouncer in transaction mode, and causal
//! token cookies no client should send. Every answer is the servers' own.

use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, Request};
use axum::routing::get;
use diesel::QueryableByName;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Integer};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use routing_cluster::{LocalCluster, PoolMode};
use routing_core::{HealthCheck, ReadReplicaLayer, RoutedPool, with_read_replica};
use routing_fixtures::products;
use routing_tests::{servers, unique, where_ran};
use tower::ServiceExt;

use crate::events::{active_backends, sessions_in_transaction};
use crate::support::{abandon_locking_transaction, insert_product, private_cluster};

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// How many sessions named `application_name` on the server at `url` are running a statement.
async fn active_sessions(url: &str, application_name: &str) -> i64 {
    let mut conn = AsyncPgConnection::establish(url).await.unwrap();
    diesel::sql_query(
        "SELECT count(*) AS n FROM pg_stat_activity WHERE state = 'active' \
         AND application_name = $1",
    )
    .bind::<diesel::sql_types::Text, _>(application_name)
    .get_result::<Count>(&mut conn)
    .await
    .unwrap()
    .n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_dropped_while_it_runs_leaves_nothing_running_and_the_connection_goes_on() {
    let servers = servers().await;
    let application_name = unique("dropped_commit");
    let pool = servers.pool(&application_name);
    let mut conn = pool.get().await.unwrap();
    // A deferred trigger that makes COMMIT itself take five seconds.
    conn.batch_execute(
        "CREATE TEMP TABLE slow_commit (a int); \
         CREATE FUNCTION pg_temp.slow_commit() RETURNS trigger LANGUAGE plpgsql \
             AS $$ BEGIN PERFORM pg_sleep(5); RETURN NULL; END $$; \
         CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT ON slow_commit \
             DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION pg_temp.slow_commit()",
    )
    .await
    .unwrap();
    let began = Instant::now();
    let transaction = conn.transaction(async |conn| {
        diesel::sql_query("INSERT INTO slow_commit VALUES (1)")
            .execute(conn)
            .await
    });
    let dropped = tokio::time::timeout(Duration::from_millis(1_500), transaction).await;
    assert!(dropped.is_err(), "the COMMIT did not wait: {dropped:?}");
    let left = || async {
        (
            active_sessions(&servers.primary_url, &application_name).await,
            sessions_in_transaction(&servers.primary_url, &application_name).await,
        )
    };
    let settled =
        crate::support::within(Duration::from_secs(3), || async { left().await == (0, 0) }).await;
    let left = left().await;
    let next_began = Instant::now();
    let (_, writer) = tokio::time::timeout(
        Duration::from_secs(30),
        insert_product(&mut conn, &unique("after_dropped_commit")),
    )
    .await
    .expect("the next statement hung");
    let next_took = next_began.elapsed();
    eprintln!(
        "dropped COMMIT: primary sessions settled after {settled:?} (left: {left:?}), next \
         write took {next_took:?}, {:?} in all",
        began.elapsed()
    );
    assert!(settled.is_some(), "the dropped COMMIT left {left:?}");
    assert!(servers.is_primary(&writer), "{writer:?}");
    assert!(next_took < Duration::from_secs(2), "{next_took:?}");
}

#[derive(Debug, QueryableByName)]
struct Numbered {
    #[diesel(sql_type = Integer)]
    g: i32,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_stream_never_hands_back_part_of_a_result() {
    let Some(cluster) = private_cluster("replica_killed_mid_stream").await else {
        return;
    };
    let pool = RoutedPool::builder(cluster.primary_url())
        .replicas(cluster.replica_urls())
        .health_check(HealthCheck::new(
            Duration::from_millis(500),
            Duration::from_millis(500),
        ))
        .build()
        .unwrap();
    let marker = unique("killed_stream_marker");
    // 4,000 rows over about four seconds, each sent as it is made.
    let sql = format!(
        "SELECT g FROM generate_series(1, 4000) g \
         WHERE length(repeat('x', 9000) || pg_sleep(0.001)::text) > 0 /* {marker} */"
    );
    let mut conn = pool.get().await.unwrap();
    let began = Instant::now();
    let read = tokio::spawn(async move {
        let rows =
            with_read_replica(true, diesel::sql_query(sql).load::<Numbered>(&mut conn)).await;
        (rows, conn)
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut victim = None;
    for index in 0..cluster.replica_count() {
        if active_backends(&[cluster.replica_url(index)], &marker).await > 0 {
            victim = Some(index);
        }
    }
    let victim = victim.expect("a replica runs the read");
    cluster.kill_replica(victim).await.unwrap();
    let (rows, mut conn) = tokio::time::timeout(Duration::from_secs(60), read)
        .await
        .expect("the read hung on a killed replica")
        .unwrap();
    let took = began.elapsed();
    match &rows {
        Ok(rows) => {
            eprintln!("killed mid-stream: {} rows after {took:?}", rows.len());
            let numbers: Vec<i32> = rows.iter().map(|row| row.g).collect();
            assert_eq!(numbers, (1..=4000).collect::<Vec<_>>(), "a partial result");
        }
        Err(error) => eprintln!("killed mid-stream: {error} after {took:?}"),
    }
    // The connection goes on, somewhere alive.
    let next = tokio::time::timeout(
        Duration::from_secs(30),
        with_read_replica(true, where_ran(&mut conn)),
    )
    .await
    .expect("the next read hung");
    assert_ne!(
        next.port,
        i32::from(cluster.replica_port(victim)),
        "{next:?}"
    );
    cluster.start_replica(victim).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_dropped_behind_a_transaction_pooler_releases_its_locks() {
    if servers().await.local("dropped_tx_pgbouncer").is_none() {
        return;
    }
    let cluster = LocalCluster::builder()
        .pgbouncer(PoolMode::Transaction)
        .pgbouncer_pool_size(2)
        .start()
        .await
        .expect("start a cluster behind PgBouncer");
    routing_core::Migrator::connect(&cluster.primary_url())
        .await
        .unwrap()
        .run_pending(routing_fixtures::MIGRATIONS)
        .await
        .unwrap();
    cluster.wait_for_replicas().await.unwrap();
    let pool = RoutedPool::builder(cluster.bouncer_primary_url().unwrap())
        .replicas(cluster.bouncer_replica_urls())
        .transaction_pooler(true)
        .build()
        .unwrap();
    let mut conn = pool.get().await.unwrap();
    let (product, _) = insert_product(&mut conn, &unique("bounced_lock")).await;
    for round in 0..3 {
        abandon_locking_transaction(&mut conn, product, 7).await;
        // The connection's next statements run outside the dropped transaction.
        let began = Instant::now();
        let (_, writer) = insert_product(&mut conn, &unique("after_bounced_drop")).await;
        let next = with_read_replica(true, where_ran(&mut conn)).await;
        let next_took = began.elapsed();
        // Straight to the primary, past the bouncer: is the row free?
        let released = crate::support::within(Duration::from_secs(3), || {
            row_free(cluster.primary_url(), product)
        })
        .await;
        eprintln!(
            "behind PgBouncer, round {round}: row lock released after {released:?}, next \
             write and read took {next_took:?} (read on {next:?})"
        );
        assert!(released.is_some(), "the dropped transaction holds its lock");
        assert!(
            !writer.in_recovery && !next.in_recovery,
            "{writer:?} {next:?}"
        );
    }
    let price: i64 = products::table
        .find(product)
        .select(products::price_cents)
        .get_result(&mut conn)
        .await
        .unwrap();
    assert_eq!(price, 100, "a dropped transaction's update committed");
}

/// Whether the primary at `url` lets another session lock `product` at once.
async fn row_free(url: String, product: i64) -> bool {
    let mut direct = AsyncPgConnection::establish(&url).await.unwrap();
    diesel::sql_query(format!(
        "SELECT id FROM products WHERE id = {product} FOR UPDATE NOWAIT"
    ))
    .execute(&mut direct)
    .await
    .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_transaction_releases_its_locks_before_the_connection_is_used_again() {
    let servers = servers().await;
    let pool = servers.pool(&unique("dropped_tx_idle"));
    let mut conn = pool.get().await.unwrap();
    let (product, _) = insert_product(&mut conn, &unique("idle_lock")).await;
    abandon_locking_transaction(&mut conn, product, 9).await;
    // The request goes on with other work, holding its connection: the lock is released at once
    // all the same (the bound only catches a lock held until the connection's next use).
    let released = crate::support::within(Duration::from_secs(2), || {
        row_free(servers.primary_url.clone(), product)
    })
    .await;
    eprintln!("dropped transaction, connection kept: row free after {released:?}");
    assert!(released.is_some(), "the dropped transaction holds its lock");
    // The connection goes on outside the ended transaction, whose update never committed.
    let (_, writer) = insert_product(&mut conn, &unique("after_idle_drop")).await;
    assert!(!writer.in_recovery, "{writer:?}");
    let price: i64 = products::table
        .find(product)
        .select(products::price_cents)
        .get_result(&mut conn)
        .await
        .unwrap();
    assert_eq!(price, 100, "a dropped transaction's update committed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_replica_transaction_ends_on_its_replica_before_the_connection_is_used_again() {
    let servers = servers().await;
    let application_name = unique("dropped_ro_idle");
    let pool = servers.pool(&application_name);
    let mut conn = pool.get().await.unwrap();
    let mut builder = conn.build_transaction().read_only();
    let transaction = with_read_replica(
        true,
        builder.run(async |conn| {
            let id = where_ran(conn).await;
            assert!(id.in_recovery, "{id:?}");
            tokio::time::sleep(Duration::from_secs(30)).await;
            Ok::<_, diesel::result::Error>(id)
        }),
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(500), transaction)
            .await
            .is_err()
    );
    // The request goes on with other work, holding its connection.
    let open = || async {
        let mut open = 0;
        for url in &servers.replica_urls {
            open += sessions_in_transaction(url, &application_name).await;
        }
        open
    };
    let ended =
        crate::support::within(Duration::from_secs(2), || async { open().await == 0 }).await;
    eprintln!("dropped replica transaction, connection kept: ended after {ended:?}");
    assert!(
        ended.is_some(),
        "the dropped transaction stays open on its replica"
    );
    let next = with_read_replica(true, where_ran(&mut conn)).await;
    assert!(next.in_recovery, "{next:?}");
}

async fn reader(State(pool): State<RoutedPool>) -> String {
    let mut conn = pool.get().await.unwrap();
    let id = where_ran(&mut conn).await;
    format!("{}", id.in_recovery)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_causal_cookies_are_ignored_at_once() {
    let servers = servers().await;
    let pool = servers.pool(&unique("garbage_cookies"));
    let far = "9".repeat(40);
    let huge = "7/7@".to_owned() + &"1".repeat(1 << 20);
    let cookies: Vec<Vec<u8>> = vec![
        b"read_after=".to_vec(),
        b"read_after".to_vec(),
        b"read_after==;;;=".to_vec(),
        b"read_after=FFFFFFFF/FFFFFFFF@18446744073709551615".to_vec(),
        format!("read_after=0/0@{far}").into_bytes(),
        b"read_after=\"\"".to_vec(),
        b"read_after=-1/-1@-1".to_vec(),
        b"read_after=0/1@1.AAAA.BBBB".to_vec(),
        b"read_after=\xff\xfe/\x80@1".to_vec(),
        format!("read_after={huge}").into_bytes(),
        "read_after=0/1@1; ".repeat(5_000).into_bytes(),
    ];
    for signed in [false, true] {
        let layer = ReadReplicaLayer::allow_replica().causal_cookie("read_after");
        let layer = if signed {
            layer.signing_key(b"key")
        } else {
            layer
        };
        let app = Router::new()
            .route("/", get(reader))
            .layer(layer)
            .with_state(pool.clone());
        for cookie in &cookies {
            let shown = String::from_utf8_lossy(&cookie[..cookie.len().min(48)]).into_owned();
            let request = Request::builder()
                .uri("/")
                .header("cookie", HeaderValue::from_bytes(cookie).unwrap())
                .body(Body::empty())
                .unwrap();
            let began = Instant::now();
            let response =
                tokio::time::timeout(Duration::from_secs(30), app.clone().oneshot(request))
                    .await
                    .expect("a request hung")
                    .unwrap();
            let took = began.elapsed();
            let status = response.status();
            let body = axum::body::to_bytes(response.into_body(), 1024)
                .await
                .unwrap();
            // Ignored: a replica answers, as for a request without a token.
            assert_eq!(
                (status.as_u16(), &body[..]),
                (200, &b"true"[..]),
                "{shown} (signed: {signed})"
            );
            assert!(took < Duration::from_secs(2), "{shown}: {took:?}");
        }
    }
}
