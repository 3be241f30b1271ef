//! A write outside a transaction is acknowledged only once its server committed it. Its rows
//! come before its commit: a commit that then fails (a deferred constraint, a server that goes
//! away while it commits) fails the write, on both connection kinds, however the caller reads
//! the rows (`get_result` takes the first row and drops the rest).

use std::time::{Duration, Instant};

use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel::sql_types::{BigInt, Bool, Integer, Text};
use diesel_async::{AsyncConnection, AsyncPgConnection};
use routing_core::{Error, with_read_replica};
use routing_tests::{Servers, servers, unique};

use crate::kinds::prelude::*;
use crate::kinds::{Conn, Kind, Pool, on, on_both_kinds};

on_both_kinds!(
    a_write_whose_deferred_constraint_fails_its_commit_is_an_error,
    a_write_whose_server_goes_away_while_it_commits_is_an_error,
);

/// What an insert into a [`table`] gave: the row's id, and the server that ran it.
#[derive(QueryableByName, Debug)]
struct Inserted {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Bool)]
    in_recovery: bool,
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[derive(QueryableByName)]
struct Id {
    #[diesel(sql_type = BigInt)]
    id: i64,
}

/// A table whose `k` is unique, checked at commit; the commit of a row with a negative `k`
/// waits `-k / 10` seconds first (a deferred constraint trigger). Its name.
async fn table(servers: &Servers) -> String {
    let table = unique("commits");
    let mut admin = AsyncPgConnection::establish(&servers.primary_url)
        .await
        .expect("connect to the primary");
    diesel_async::SimpleAsyncConnection::batch_execute(
        &mut admin,
        &format!(
            "CREATE TABLE {table} (id bigserial PRIMARY KEY, k integer NOT NULL, \
               CONSTRAINT {table}_k UNIQUE (k) DEFERRABLE INITIALLY DEFERRED); \
             CREATE FUNCTION {table}_slow() RETURNS trigger LANGUAGE plpgsql \
               AS $$ BEGIN PERFORM pg_sleep(-NEW.k / 10.0); RETURN NULL; END $$; \
             CREATE CONSTRAINT TRIGGER {table}_commit AFTER INSERT ON {table} \
               DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN (NEW.k < 0) \
               EXECUTE FUNCTION {table}_slow();"
        ),
    )
    .await
    .expect("create the table");
    servers.wait_for_replicas().await;
    table
}

/// Inserts `k` into `table`, returning the row as `get_result` does (the first row only).
async fn insert(conn: &mut Conn, table: &str, k: i32) -> QueryResult<Inserted> {
    let sql = format!(
        "INSERT INTO {table} (k) VALUES ($1) RETURNING id, pg_is_in_recovery() AS in_recovery"
    );
    on!(conn, |c| diesel::sql_query(&sql)
        .bind::<Integer, _>(k)
        .get_result::<Inserted>(c))
}

/// The ids of the rows of `table` that have `k`, asked of the primary.
async fn ids_with(servers: &Servers, table: &str, k: i32) -> Vec<i64> {
    let mut admin = AsyncPgConnection::establish(&servers.primary_url)
        .await
        .expect("connect to the primary");
    let query = diesel::sql_query(format!("SELECT id FROM {table} WHERE k = $1 ORDER BY id"))
        .bind::<Integer, _>(k);
    diesel_async::RunQueryDsl::load::<Id>(query, &mut admin)
        .await
        .expect("read the rows")
        .into_iter()
        .map(|row| row.id)
        .collect()
}

fn is_unique_violation(error: &DieselError) -> bool {
    matches!(
        error,
        DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _)
    )
}

async fn a_write_whose_deferred_constraint_fails_its_commit_is_an_error(kind: Kind) {
    let servers = servers().await;
    let table = table(servers).await;
    let pool = Pool::build(kind, servers.pool_builder(&unique("deferred")));
    with_read_replica(true, async {
        let mut first = pool.get().await;
        let inserted = insert(&mut first, &table, 1).await.expect("insert k = 1");
        assert!(!inserted.in_recovery, "{inserted:?}");
        // The same key again: its row comes back, then its commit fails. On a connection that
        // holds the primary already, then on a fresh one (whose statement is routed when it
        // first runs).
        let again = insert(&mut first, &table, 1).await;
        assert!(again.as_ref().is_err_and(is_unique_violation), "{again:?}");
        let mut fresh = pool.get().await;
        let again = insert(&mut fresh, &table, 1).await;
        assert!(again.as_ref().is_err_and(is_unique_violation), "{again:?}");
        // All the rows, read to the end, fail the same way.
        let sql =
            format!("INSERT INTO {table} (k) VALUES (1), (2) RETURNING id, false AS in_recovery");
        let all = on!(fresh, |c| diesel::sql_query(&sql).load::<Inserted>(c));
        assert!(all.as_ref().is_err_and(is_unique_violation), "{all:?}");
        assert_eq!(ids_with(servers, &table, 1).await, [inserted.id]);
        assert_eq!(ids_with(servers, &table, 2).await, Vec::<i64>::new());
        // Both connections go on.
        for conn in [&mut first, &mut fresh] {
            conn.where_ran().await;
        }
        let two = insert(&mut first, &table, 2).await.expect("insert k = 2");
        let three = insert(&mut fresh, &table, 3).await.expect("insert k = 3");
        assert_eq!(ids_with(servers, &table, 2).await, [two.id]);
        assert_eq!(ids_with(servers, &table, 3).await, [three.id]);
    })
    .await;
}

async fn a_write_whose_server_goes_away_while_it_commits_is_an_error(kind: Kind) {
    let servers = servers().await;
    let table = table(servers).await;
    let application_name = unique("commit_cut");
    let pool = Pool::build(kind, servers.pool_builder(&application_name));
    // The server is stopped for this session (as a fast shutdown or a failover stops it) while
    // the commit waits: after the row went out, before the commit.
    let terminator = {
        let (url, application_name) = (servers.primary_url.clone(), application_name.clone());
        tokio::spawn(async move {
            let mut admin = AsyncPgConnection::establish(&url)
                .await
                .expect("connect to the primary");
            let sql = "SELECT count(pg_terminate_backend(pid)) AS n FROM pg_stat_activity \
                       WHERE application_name = $1 AND wait_event = 'PgSleep'";
            let began = Instant::now();
            let mut terminated = false;
            while !terminated && began.elapsed() < Duration::from_secs(60) {
                let query = diesel::sql_query(sql).bind::<Text, _>(&application_name);
                terminated = diesel_async::RunQueryDsl::get_result::<Count>(query, &mut admin)
                    .await
                    .expect("terminate")
                    .n
                    > 0;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            assert!(terminated, "the commit never waited");
        })
    };
    let mut conn = pool.get().await;
    let cut = insert(&mut conn, &table, -300).await;
    terminator.await.expect("the terminating task");
    let error = cut.expect_err("a write whose commit was cut short returned Ok");
    if kind == Kind::Async {
        let routed = Error::from_diesel(&error);
        assert!(
            matches!(routed, Some(Error::PrimaryLost { .. })),
            "{error:?}"
        );
        assert!(routed.is_some_and(Error::is_retryable), "{error:?}");
    }
    assert_eq!(ids_with(servers, &table, -300).await, Vec::<i64>::new());
    // The same connection goes on, on an open session: it writes on the primary.
    let inserted = insert(&mut conn, &table, 5).await.expect("insert after");
    assert!(!inserted.in_recovery);
    assert_eq!(ids_with(servers, &table, 5).await, [inserted.id]);
    // And so does the pool.
    let mut next = pool.get().await;
    let inserted = insert(&mut next, &table, 6)
        .await
        .expect("insert on another connection");
    assert_eq!(ids_with(servers, &table, 6).await, [inserted.id]);
}

/// A request that gives up on a write whose rows have arrived, while its commit waits (a
/// timeout), does not cancel it: the statement ran and only its commit is left. The connection
/// is closed, and the server completes the commit (a cancel would cut it short, and during a
/// wait for a synchronous standby leave it on the primary only). The connection goes on.
/// (A result too small to fill the server's output buffer arrives only with the commit's
/// outcome: until then the statement is still running, and is cancelled as any other.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_given_up_after_its_rows_while_it_commits_is_not_cancelled() {
    let servers = servers().await;
    let table = table(servers).await;
    let pool = Pool::build(
        Kind::Async,
        servers.pool_builder(&unique("commit_given_up")),
    );
    let mut conn = pool.get().await;
    // Once on a fresh connection (the owned form), once on one that holds the primary.
    for (round, slow) in [(1, -20), (2, -21)] {
        // 2,000 rows (about 40 kB, flushed by the server as they come), then one whose commit
        // waits two seconds.
        let sql = format!(
            "INSERT INTO {table} (k) SELECT g FROM generate_series({from}, {to}) g \
             UNION ALL SELECT {slow} RETURNING id, pg_is_in_recovery() AS in_recovery",
            from = round * 10_000,
            to = round * 10_000 + 1_999,
        );
        let write = async { on!(conn, |c| diesel::sql_query(&sql).get_result::<Inserted>(c)) };
        let given_up = tokio::time::timeout(Duration::from_millis(500), write).await;
        assert!(given_up.is_err(), "the commit did not wait: {given_up:?}");
        let began = Instant::now();
        while ids_with(servers, &table, slow).await.is_empty() {
            assert!(
                began.elapsed() < Duration::from_secs(60),
                "the write given up while it committed was never committed"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let inserted = insert(&mut conn, &table, -slow)
            .await
            .expect("the next write");
        assert_eq!(ids_with(servers, &table, -slow).await, [inserted.id]);
    }
}
