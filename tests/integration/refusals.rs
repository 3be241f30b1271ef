//! A replica that refuses a statement as a write (SQLSTATE 25006) teaches the pool: the
//! statement goes to the primary from then on. A refusal that comes after rows reached the
//! caller is a clear error, never a second run.

use diesel::QueryableByName;
use diesel::sql_types::{Bool, Integer};
use diesel_async::{RunQueryDsl, SimpleAsyncConnection};
use routing_core::{Classifier, Error, RoutedPool, with_read_replica};
use routing_tests::{ServerId, servers, unique};

#[derive(Debug, QueryableByName)]
struct Row {
    #[diesel(sql_type = Integer)]
    n: i32,
    #[diesel(sql_type = Bool)]
    in_recovery: bool,
    #[diesel(sql_type = Integer)]
    port: i32,
}

/// A table and a function, wrongly registered as read-only, that writes only from its second
/// call on: its first row reaches the caller before a replica refuses it.
async fn late_writer(pool: &RoutedPool) -> (String, String) {
    let function = unique("late_writer");
    let table = unique("late_table");
    let mut admin = pool.get().await.unwrap();
    admin
        .batch_execute(&format!(
            "CREATE TABLE {table} (n int); \
             CREATE FUNCTION {function}(n int) RETURNS int LANGUAGE plpgsql VOLATILE AS $$ \
             BEGIN IF n > 1 THEN INSERT INTO {table} VALUES (n); END IF; RETURN n; END $$"
        ))
        .await
        .unwrap();
    (function, table)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_after_rows_is_a_clear_error_and_the_statement_moves_to_the_primary() {
    let servers = servers().await;
    let setup = servers.pool(&unique("late_setup"));
    let (function, table) = late_writer(&setup).await;
    servers.wait_for_replicas().await;
    let pool = servers
        .pool_builder(&unique("late_refusal"))
        .classifier(Classifier::new().replica_safe_functions([function.as_str()]))
        // Even with retries on, rows already returned are never returned twice.
        .retry_writes_refused_by_replica(true)
        .build()
        .unwrap();
    let sql = format!(
        "SELECT {function}(g) AS n, pg_is_in_recovery() AS in_recovery, \
         inet_server_port() AS port FROM generate_series(1, 3) g"
    );
    let mut conn = pool.get().await.unwrap();
    let error = with_read_replica(true, diesel::sql_query(&sql).load::<Row>(&mut conn))
        .await
        .unwrap_err();
    match Error::from_diesel(&error) {
        Some(Error::RefusedAsWrite {
            after_rows: true, ..
        }) => {}
        other => panic!("expected RefusedAsWrite after rows, got {other:?}: {error}"),
    }
    let message = error.to_string();
    assert!(message.contains("after it had returned rows"), "{message}");
    assert!(message.contains("routing:primary"), "{message}");
    assert_eq!(pool.status().learned_statements, 1, "{}", pool.status());

    // The same statement, in a replica scope, now runs on the primary.
    let mut conn = pool.get().await.unwrap();
    let rows = with_read_replica(true, diesel::sql_query(&sql).load::<Row>(&mut conn))
        .await
        .unwrap();
    assert_eq!(rows.iter().map(|r| r.n).collect::<Vec<_>>(), [1, 2, 3]);
    for row in &rows {
        let id = ServerId {
            port: row.port,
            in_recovery: row.in_recovery,
        };
        assert!(servers.is_primary(&id), "{row:?}");
    }
    let written: i64 = diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>(&format!(
        "(SELECT count(*) FROM {table})"
    )))
    .get_result(&mut conn)
    .await
    .unwrap();
    assert_eq!(written, 2, "the primary ran it once, writing rows 2 and 3");

    // Learning is the pool's: another pool still tries a replica first.
    let fresh = servers
        .pool_builder(&unique("late_fresh"))
        .classifier(Classifier::new().replica_safe_functions([function.as_str()]))
        .build()
        .unwrap();
    let mut conn = fresh.get().await.unwrap();
    assert!(
        with_read_replica(true, diesel::sql_query(&sql).load::<Row>(&mut conn))
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_before_rows_runs_on_the_primary_and_is_learned() {
    let servers = servers().await;
    let setup = servers.pool(&unique("early_setup"));
    let (function, _table) = late_writer(&setup).await;
    servers.wait_for_replicas().await;
    let pool = servers
        .pool_builder(&unique("early_refusal"))
        .classifier(Classifier::new().replica_safe_functions([function.as_str()]))
        .retry_writes_refused_by_replica(true)
        .build()
        .unwrap();
    // Writes at its first row: refused before any row reached the caller.
    let sql = format!(
        "SELECT {function}(2) AS n, pg_is_in_recovery() AS in_recovery, \
         inet_server_port() AS port"
    );
    for run in 0..3 {
        let mut conn = pool.get().await.unwrap();
        let row = with_read_replica(true, diesel::sql_query(&sql).get_result::<Row>(&mut conn))
            .await
            .unwrap();
        let id = ServerId {
            port: row.port,
            in_recovery: row.in_recovery,
        };
        assert!(servers.is_primary(&id), "run {run}: {row:?}");
    }
    let status = pool.status();
    assert_eq!(status.learned_statements, 1, "{status}");
    let replica_attempts: u64 = status.servers[1..]
        .iter()
        .map(|server| server.queries_routed)
        .sum();
    assert_eq!(
        replica_attempts, 1,
        "only the first run tried a replica: {status}"
    );
}
