//! What the servers say about ordinary events: which backends run a statement, which sessions
//! hold locks or sit in a transaction.

use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Text};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use routing_tests::Servers;

/// The URLs of the primary and every replica.
pub(crate) fn all_servers(servers: &Servers) -> Vec<String> {
    std::iter::once(servers.primary_url.clone())
        .chain(servers.replica_urls.iter().cloned())
        .collect()
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// Runs `sql` (a `count(*) AS n` with one text parameter) on the server at `url`, from a
/// session of its own.
async fn count(url: &str, sql: &str, bind: &str) -> i64 {
    let mut conn = AsyncPgConnection::establish(url)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"));
    diesel::sql_query(sql)
        .bind::<Text, _>(bind)
        .get_result::<Count>(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("cannot ask {url}: {e}"))
        .n
}

/// How many backends of the servers at `urls` are running a statement whose text contains
/// `marker` (other than the one asking).
pub(crate) async fn active_backends(urls: &[String], marker: &str) -> i64 {
    let mut total = 0;
    for url in urls {
        total += count(
            url,
            "SELECT count(*) AS n FROM pg_stat_activity WHERE state = 'active' \
             AND pid <> pg_backend_pid() AND position($1 in query) > 0",
            &format!("{marker} */"),
        )
        .await;
    }
    total
}

/// How many sessions named `application_name` on the server at `url` sit inside a transaction.
pub(crate) async fn sessions_in_transaction(url: &str, application_name: &str) -> i64 {
    count(
        url,
        "SELECT count(*) AS n FROM pg_stat_activity \
         WHERE state LIKE 'idle in transaction%' AND application_name = $1",
        application_name,
    )
    .await
}

/// How many locks sessions named `application_name` hold on the server at `url` (advisory
/// locks, and the row and transaction locks a write takes).
pub(crate) async fn locks_held(url: &str, application_name: &str) -> i64 {
    count(
        url,
        "SELECT count(*) AS n FROM pg_locks JOIN pg_stat_activity USING (pid) \
         WHERE pg_locks.granted AND pg_locks.locktype IN ('advisory', 'transactionid', 'tuple') \
         AND pg_stat_activity.application_name = $1",
        application_name,
    )
    .await
}
