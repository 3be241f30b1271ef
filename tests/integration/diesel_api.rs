//! The parts of `AsyncPgConnection`'s API that diesel-async's own tests use, on a routed
//! connection over real replicas: cancel tokens, notifications, diesel's instrumentation (the
//! user's, and the default one) and the sync wrapper outside a runtime.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use diesel::connection::{Instrumentation, InstrumentationEvent};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use futures_util::StreamExt;
use routing_core::{RoutedConnection, with_causal_token, with_read_replica};
use routing_fixtures::products;
use routing_tests::{inet_server_port, pg_is_in_recovery, servers, unique};

use crate::events::{active_backends, all_servers};

/// The events an instrumentation saw, as `kind: query` lines.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<String>>>);

impl Seen {
    fn instrumentation(&self) -> impl Instrumentation {
        let seen = self.clone();
        move |event: InstrumentationEvent<'_>| seen.push(&event)
    }

    fn push(&self, event: &InstrumentationEvent<'_>) {
        let line = match event {
            InstrumentationEvent::StartQuery { query, .. } => format!("start: {query}"),
            InstrumentationEvent::CacheQuery { sql, .. } => format!("cache: {sql}"),
            InstrumentationEvent::FinishQuery { query, error, .. } => {
                format!(
                    "finish{}: {query}",
                    if error.is_some() { " (error)" } else { "" }
                )
            }
            InstrumentationEvent::BeginTransaction { .. } => "begin".to_owned(),
            InstrumentationEvent::CommitTransaction { .. } => "commit".to_owned(),
            InstrumentationEvent::RollbackTransaction { .. } => "rollback".to_owned(),
            other => format!("{other:?}"),
        };
        self.0.lock().unwrap().push(line);
    }

    fn take(&self) -> Vec<String> {
        std::mem::take(&mut self.0.lock().unwrap())
    }
}

/// Where a read ran, as its own result says.
fn where_it_ran() -> diesel::dsl::select<(pg_is_in_recovery, inet_server_port)> {
    diesel::select((pg_is_in_recovery(), inet_server_port()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_token_cancels_a_read_on_the_replica_that_runs_it() {
    let servers = servers().await;
    let pool = servers.pool(&unique("cancel_token"));
    let mut conn = pool.get().await.unwrap();
    let token = conn.cancel_token();
    let marker = unique("cancel_token_marker");
    let sql = format!("SELECT 1 FROM pg_sleep(30) /* {marker} */");
    let began = Instant::now();
    let read = tokio::spawn(async move {
        with_read_replica(true, diesel::sql_query(&sql).execute(&mut conn)).await
    });
    let replicas = servers.replica_urls.clone();
    let primary = [servers.primary_url.clone()];
    let deadline = Instant::now() + Duration::from_secs(20);
    while active_backends(&replicas, &marker).await == 0 {
        assert!(
            Instant::now() < deadline,
            "the read never started on a replica"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(active_backends(&primary, &marker).await, 0);
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let error = read.await.unwrap().expect_err("the read was cancelled");
    assert!(
        error
            .to_string()
            .contains("canceling statement due to user request"),
        "{error}"
    );
    assert!(began.elapsed() < Duration::from_secs(20));
    assert_eq!(active_backends(&all_servers(servers), &marker).await, 0);
}

#[tokio::test]
async fn a_cancel_token_of_an_idle_connection_cancels_nothing() {
    let servers = servers().await;
    let pool = servers.pool(&unique("idle_cancel_token"));
    let mut conn = pool.get().await.unwrap();
    conn.cancel_token().cancel().await.unwrap();
    let token = conn.cancel_token();
    let (in_recovery, _) =
        with_read_replica(true, where_it_ran().get_result::<(bool, i32)>(&mut conn))
            .await
            .unwrap();
    assert!(in_recovery);
    token.cancel().await.unwrap();
    let (in_recovery, _) =
        with_read_replica(true, where_it_ran().get_result::<(bool, i32)>(&mut conn))
            .await
            .unwrap();
    assert!(in_recovery, "the replica session goes on");
}

#[tokio::test]
async fn notifications_arrive_on_the_primary_session_that_listens() {
    let servers = servers().await;
    let pool = servers.pool(&unique("notifications"));
    let mut conn = pool.get().await.unwrap();
    let channel = unique("channel");
    // Reads in a replica scope before and after: the listening session stays the primary's.
    with_read_replica(true, where_it_ran().get_result::<(bool, i32)>(&mut conn))
        .await
        .unwrap();
    diesel::sql_query(format!("LISTEN {channel}"))
        .execute(&mut conn)
        .await
        .unwrap();
    with_read_replica(true, where_it_ran().get_result::<(bool, i32)>(&mut conn))
        .await
        .unwrap();
    let mut other = AsyncPgConnection::establish(&servers.primary_url)
        .await
        .unwrap();
    diesel::sql_query(format!("NOTIFY {channel}, 'from elsewhere'"))
        .execute(&mut other)
        .await
        .unwrap();
    let notification = tokio::time::timeout(
        Duration::from_secs(10),
        std::pin::pin!(conn.notifications_stream()).next(),
    )
    .await
    .expect("the notification arrives")
    .unwrap()
    .unwrap();
    assert_eq!(notification.channel, channel);
    assert_eq!(notification.payload, "from elsewhere");
}

#[tokio::test]
async fn instrumentation_sees_the_users_statements_once_wherever_they_run_and_never_the_routers() {
    let servers = servers().await;
    let pool = servers.pool(&unique("instrumented"));
    let mut conn = pool.get().await.unwrap();
    let seen = Seen::default();
    conn.set_instrumentation(seen.instrumentation());

    // A read on a replica, behind a causal token: the router checks the token and the
    // replica's replay position with SQL of its own.
    let token = pool.causal_token().await.unwrap();
    servers.wait_for_replicas().await;
    let read = products::table.select(products::id).limit(1);
    let (in_recovery, _) = with_causal_token(
        token,
        with_read_replica(true, where_it_ran().get_result::<(bool, i32)>(&mut conn)),
    )
    .await
    .unwrap();
    assert!(in_recovery, "a replica served the read");
    let events = seen.take();
    assert_eq!(events.len(), 3, "{events:#?}");
    assert!(
        events[0].starts_with("start: SELECT pg_is_in_recovery()"),
        "{events:#?}"
    );
    assert!(
        events[1].starts_with("cache: SELECT pg_is_in_recovery()"),
        "{events:#?}"
    );
    assert!(
        events[2].starts_with("finish: SELECT pg_is_in_recovery()"),
        "{events:#?}"
    );
    with_read_replica(true, read.load::<i64>(&mut conn))
        .await
        .unwrap();
    let events = seen.take();
    assert_eq!(events.len(), 3, "{events:#?}");

    // A transaction on the primary: its events, from the primary's session.
    let name = unique("instrumented_product");
    conn.transaction(async |conn| {
        diesel::insert_into(products::table)
            .values((products::name.eq(&name), products::price_cents.eq(1_i64)))
            .execute(conn)
            .await
    })
    .await
    .unwrap();
    let events = seen.take();
    let kinds: Vec<&str> = events
        .iter()
        .map(|line| line.split(':').next().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "begin", "start", "finish", "start", "cache", "finish", "commit", "start", "finish"
        ],
        "{events:#?}"
    );
    assert_eq!(events[1], "start: BEGIN");
    assert_eq!(events[7], "start: COMMIT");
    let router_sql = ["pg_last_wal_replay_lsn", "pg_current_wal", "set_config"];
    assert!(
        !events
            .iter()
            .any(|line| router_sql.iter().any(|sql| line.contains(sql))),
        "{events:#?}"
    );
}

/// Records into [`DEFAULT_SEEN`] the events of statements tagged with [`DEFAULT_MARKER`], as
/// diesel's default instrumentation, which every connection made meanwhile takes.
fn marked_only() -> Option<Box<dyn Instrumentation>> {
    Some(Box::new(|event: InstrumentationEvent<'_>| {
        let query = match &event {
            InstrumentationEvent::StartQuery { query, .. }
            | InstrumentationEvent::FinishQuery { query, .. } => query.to_string(),
            InstrumentationEvent::CacheQuery { sql, .. } => (*sql).to_owned(),
            _ => return,
        };
        if query.contains(DEFAULT_MARKER) {
            DEFAULT_SEEN.lock().unwrap().push(format!("{event:?}"));
        }
    }))
}

const DEFAULT_MARKER: &str = "default_instrumentation_marker";
static DEFAULT_SEEN: Mutex<Vec<String>> = Mutex::new(Vec::new());

#[tokio::test]
async fn the_default_instrumentation_sees_each_statement_once() {
    let servers = servers().await;
    diesel::connection::set_default_instrumentation(marked_only).unwrap();
    let pool = servers.pool(&unique("default_instrumentation"));
    let mut conn: RoutedConnection = pool.get().await.unwrap();
    let read = format!("SELECT 1 AS n /* {DEFAULT_MARKER} */");
    with_read_replica(true, diesel::sql_query(&read).execute(&mut conn))
        .await
        .unwrap();
    let write = format!("SET application_name = 'x' /* {DEFAULT_MARKER} */");
    diesel::sql_query(&write).execute(&mut conn).await.unwrap();
    let seen = std::mem::take(&mut *DEFAULT_SEEN.lock().unwrap());

    // The synchronous pool's sessions take the default instrumentation: it sees a statement
    // without a static id as diesel renders it, bind values included, for a read in a replica
    // scope and for a statement hinted to the primary.
    let sync_pool = servers
        .pool_builder(&unique("default_instrumentation_sync"))
        .build_sync()
        .unwrap();
    tokio::task::spawn_blocking(move || {
        let mut conn = sync_pool.get().unwrap();
        let read = format!("SELECT $1::int4 AS n /* {DEFAULT_MARKER} */");
        let query = diesel::sql_query(&read).bind::<diesel::sql_types::Integer, _>(42);
        routing_core::with_read_replica_sync(true, || {
            diesel::RunQueryDsl::execute(query, &mut conn)
        })
        .unwrap();
        let write = format!("SELECT $1::int4 AS n /* routing:primary */ /* {DEFAULT_MARKER} */");
        let query = diesel::sql_query(&write).bind::<diesel::sql_types::Integer, _>(43);
        diesel::RunQueryDsl::execute(query, &mut conn).unwrap();
    })
    .await
    .unwrap();
    diesel::connection::set_default_instrumentation(|| None).unwrap();
    let sync_seen = std::mem::take(&mut *DEFAULT_SEEN.lock().unwrap());

    let starts = seen.iter().filter(|e| e.starts_with("StartQuery")).count();
    let finishes = seen.iter().filter(|e| e.starts_with("FinishQuery")).count();
    assert_eq!((starts, finishes), (2, 2), "{seen:#?}");
    for bind in ["binds: [42]", "binds: [43]"] {
        let shown = |kind: &str| {
            sync_seen
                .iter()
                .filter(|e| e.starts_with(kind) && e.contains(bind))
                .count()
        };
        assert_eq!(
            (shown("StartQuery"), shown("FinishQuery")),
            (1, 1),
            "{bind}: {sync_seen:#?}"
        );
    }
}

/// Behind a transaction pooler every session runs unnamed statements: instrumentation still sees
/// the user's statements once, transactions with their `BEGIN` and `COMMIT`, and `batch_execute`
/// (with no statement cache to report).
#[tokio::test]
async fn behind_a_transaction_pooler_instrumentation_sees_statements_and_transactions() {
    let servers = servers().await;
    let pool = servers
        .pool_builder(&unique("pooler_instrumented"))
        .transaction_pooler(true)
        .build()
        .unwrap();
    let mut conn = pool.get().await.unwrap();
    let seen = Seen::default();
    conn.set_instrumentation(seen.instrumentation());

    let (in_recovery, _) =
        with_read_replica(true, where_it_ran().get_result::<(bool, i32)>(&mut conn))
            .await
            .unwrap();
    assert!(in_recovery, "a replica served the read");
    let events = seen.take();
    assert_eq!(events.len(), 2, "{events:#?}");
    assert!(
        events[0].starts_with("start: SELECT pg_is_in_recovery()")
            && events[1].starts_with("finish: SELECT pg_is_in_recovery()"),
        "{events:#?}"
    );

    conn.batch_execute("SELECT 1").await.unwrap();
    assert_eq!(seen.take(), ["start: SELECT 1", "finish: SELECT 1"]);

    let name = unique("pooler_instrumented_product");
    conn.transaction(async |conn| {
        diesel::insert_into(products::table)
            .values((products::name.eq(&name), products::price_cents.eq(1_i64)))
            .execute(conn)
            .await
    })
    .await
    .unwrap();
    let events = seen.take();
    let kinds: Vec<&str> = events
        .iter()
        .map(|line| line.split(':').next().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "begin", "start", "finish", "start", "finish", "commit", "start", "finish"
        ],
        "{events:#?}"
    );
    assert_eq!(events[1], "start: BEGIN");
    assert!(events[3].starts_with("start: INSERT INTO"), "{events:#?}");
    assert_eq!(events[6], "start: COMMIT");
}

/// Behind a transaction pooler a cancel token cancels a read where it runs; notifications need
/// a session of their own, and the stream says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_transaction_pooler_cancel_tokens_work_and_notifications_are_refused() {
    let servers = servers().await;
    let pool = servers
        .pool_builder(&unique("pooler_cancel_token"))
        .transaction_pooler(true)
        .build()
        .unwrap();
    let mut conn = pool.get().await.unwrap();
    let refused = std::pin::pin!(conn.notifications_stream())
        .next()
        .await
        .expect("an item")
        .expect_err("no notifications without a session");
    assert!(
        matches!(
            routing_core::Error::from_diesel(&refused),
            Some(routing_core::Error::NotWithTransactionPooler { .. })
        ),
        "{refused}"
    );

    let token = conn.cancel_token();
    let marker = unique("pooler_cancel_token_marker");
    let sql = format!("SELECT 1 FROM pg_sleep(30) /* {marker} */");
    let read = tokio::spawn(async move {
        with_read_replica(true, diesel::sql_query(&sql).execute(&mut conn)).await
    });
    let replicas = servers.replica_urls.clone();
    let deadline = Instant::now() + Duration::from_secs(20);
    while active_backends(&replicas, &marker).await == 0 {
        assert!(
            Instant::now() < deadline,
            "the read never started on a replica"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    token.cancel().await.unwrap();
    let error = read.await.unwrap().expect_err("the read was cancelled");
    assert!(
        error
            .to_string()
            .contains("canceling statement due to user request"),
        "{error}"
    );
    assert_eq!(active_backends(&all_servers(servers), &marker).await, 0);
}

/// diesel's sync API on a routed connection, through diesel-async's wrapper.
mod sync_wrapper {
    use diesel::RunQueryDsl;
    use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
    use diesel_migrations::MigrationHarness;
    use routing_core::RoutedConnection;
    use routing_tests::{servers, unique};

    use super::where_it_ran;

    #[test]
    fn outside_a_runtime_it_reads_from_a_replica_and_runs_migrations() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let (servers, conn) = runtime.block_on(async {
            let servers = servers().await;
            let pool = servers.pool(&unique("sync_wrapper"));
            (servers, pool.get().await.unwrap())
        });
        drop(runtime);
        let mut conn = AsyncConnectionWrapper::<RoutedConnection>::from(conn);
        let (in_recovery, port) = routing_core::with_read_replica_sync(true, || {
            where_it_ran().get_result::<(bool, i32)>(&mut conn)
        })
        .unwrap();
        assert!(in_recovery, "a replica served the read");
        assert!(servers.replica_ids.iter().any(|id| id.port == port));
        let applied = conn.applied_migrations().unwrap();
        assert!(!applied.is_empty());
        let (in_recovery, _) = where_it_ran().get_result::<(bool, i32)>(&mut conn).unwrap();
        assert!(!in_recovery, "outside a replica scope the primary serves");
    }
}
