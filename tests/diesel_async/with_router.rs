//! How this suite runs on `RoutedConnection` (this file is not diesel-async's): the test
//! connection, the two modes, and what each server served.
//!
//! - The connection under test is a `RoutedConnection` from a `RoutedPool` over the harness's
//!   primary and two replicas (`routing_tests::servers()`); a URL the suite hands to
//!   `establish` (the sync wrapper, diesel-async's pools) lists the three servers, which makes a
//!   pool that discovers its primary among them.
//! - Two test binaries compile these files: `integration_tests` runs the suite as written;
//!   `on_replicas` runs every `#[tokio::test]` body in a replica scope (`with_read_replica`),
//!   and gives the tests that only read ([`READ_ONLY`]) a connection without the test
//!   transaction, so that their reads really go to replicas. Each file's `use
//!   crate::with_router::tokio;` is what does it: the `#[tokio::test]` macro builds its runtime
//!   with the `tokio::runtime::Builder` in scope where the test is written, and this module's
//!   `Builder` makes a runtime whose `block_on` runs the test body in the mode's scope.
//! - Every test connects as a role of its own, so that `pg_stat_statements` tells, per test and
//!   per server, how many statements the server served. After each test, a read-only test of the
//!   replica mode is checked to have been served by replicas only; the last test prints the
//!   statements per test file and server.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use diesel::sql_types::{BigInt, Text};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};

/// The connection the suite tests.
#[cfg(not(feature = "baseline"))]
pub(crate) type Connection = routing_core::RoutedConnection;
/// The connection the suite tests: with `baseline`, diesel-async's own, on the primary.
#[cfg(feature = "baseline")]
pub(crate) type Connection = AsyncPgConnection;

/// Whether this binary runs the replica mode.
pub(crate) const ON_REPLICAS: bool = matches!(env!("CARGO_CRATE_NAME").as_bytes(), b"on_replicas");

/// The tests that only read: in the replica mode they run without the test transaction (and
/// without the `users` table, which they do not use), and replicas must serve all their
/// statements. An entry ending in `::` names every test of a file.
const READ_ONLY: &[&str] = &[
    "postgres_cancel_token",
    "type_check::",
    "instrumentation::check_events_are_emitted_for_execute_returning_count_does_not_contain_cache_for_uncached_queries",
    "instrumentation::check_events_are_emitted_for_load_does_not_contain_cache_for_uncached_queries",
    "sync_wrapper::test_sync_wrapper_async_query",
];

/// Read-only tests whose statements are all cancelled: `pg_stat_statements` counts only
/// statements that complete, so all the servers can tell is that the primary served none.
const CANCELLED: &[&str] = &["postgres_cancel_token"];

/// The router's own SQL and each session's setup, left out of the counts: the health probe's,
/// role and WAL checks, and diesel-async's `SET`s when a session opens.
const NOT_THE_TESTS: &str =
    "pg_is_in_recovery|pg_current_wal|pg_last_wal_replay_lsn|^SET (TIME ZONE|CLIENT_ENCODING)";

/// The `application_name` of the router's health probe sessions.
const PROBE: &str = "routing-core health probe";

tokio::task_local! {
    /// The name of the running test, as libtest gives it.
    static TEST: Arc<str>;
}

/// The suite's `tokio`: tokio itself, with the runtime builder of [`Builder`].
pub(crate) mod tokio {
    pub(crate) use ::tokio::*;

    /// tokio's `runtime`, with the suite's [`Builder`](super::Builder).
    #[allow(unused_imports)]
    pub(crate) mod runtime {
        pub(crate) use super::super::{Builder, Runtime};
        pub(crate) use ::tokio::runtime::*;
    }
}

/// Builds the runtime of a `#[tokio::test]`, as tokio's builder does.
pub(crate) struct Builder(::tokio::runtime::Builder);

impl Builder {
    pub(crate) fn new_current_thread() -> Self {
        Builder(::tokio::runtime::Builder::new_current_thread())
    }

    pub(crate) fn new_multi_thread() -> Self {
        Builder(::tokio::runtime::Builder::new_multi_thread())
    }

    pub(crate) fn worker_threads(&mut self, threads: usize) -> &mut Self {
        self.0.worker_threads(threads);
        self
    }

    pub(crate) fn enable_all(&mut self) -> &mut Self {
        self.0.enable_all();
        self
    }

    pub(crate) fn build(&mut self) -> std::io::Result<Runtime> {
        self.0.build().map(Runtime)
    }
}

/// The runtime of a `#[tokio::test]`: runs the test body in the mode's routing scope, then
/// accounts for the statements it sent.
pub(crate) struct Runtime(::tokio::runtime::Runtime);

/// How many test bodies are running.
static RUNNING: AtomicUsize = AtomicUsize::new(0);

struct Running;

impl Drop for Running {
    fn drop(&mut self) {
        RUNNING.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Runtime {
    pub(crate) fn block_on<F: Future>(&self, body: F) -> F::Output {
        RUNNING.fetch_add(1, Ordering::AcqRel);
        let _running = Running;
        let test: Arc<str> = Arc::from(std::thread::current().name().unwrap_or("unnamed"));
        let output = self.0.block_on(TEST.scope(Arc::clone(&test), async move {
            if ON_REPLICAS {
                routing_core::with_read_replica(true, body).await
            } else {
                body.await
            }
        }));
        self.0.block_on(check_served(&test));
        output
    }
}

/// The running test's name.
fn current_test() -> Arc<str> {
    TEST.try_with(Arc::clone)
        .unwrap_or_else(|_| Arc::from(std::thread::current().name().unwrap_or("unnamed")))
}

fn is_read_only(test: &str) -> bool {
    READ_ONLY
        .iter()
        .any(|entry| match entry.strip_suffix("::") {
            Some(file) => test
                .strip_prefix(file)
                .is_some_and(|rest| rest.starts_with("::")),
            None => test == *entry,
        })
}

/// Whether the running test gets a connection without the test transaction, in a replica
/// scope: a read-only test in the replica mode.
pub(crate) fn reads_on_replicas() -> bool {
    ON_REPLICAS && !cfg!(feature = "baseline") && is_read_only(&current_test())
}

/// A connection of the running test's own, outside any transaction.
pub(crate) async fn connection_without_transaction() -> Connection {
    // Boxed: the harness's futures would otherwise nest in every test's.
    let (primary, replicas) = Box::pin(urls(&current_test())).await;
    #[cfg(feature = "baseline")]
    {
        let _ = replicas;
        AsyncPgConnection::establish(&primary).await.unwrap()
    }
    #[cfg(not(feature = "baseline"))]
    {
        let pool = routing_core::RoutedPool::builder(primary)
            .replicas(replicas)
            .max_size(1)
            .retry_writes_refused_by_replica(false)
            .build()
            .unwrap();
        pool.get().await.unwrap()
    }
}

/// The URL the suite hands to `establish`: every server, as the running test's role (the
/// primary alone with `baseline`).
pub(crate) fn database_url() -> String {
    let test = current_test();
    let (primary, replicas) = blocking(async move { urls(&test).await });
    if cfg!(feature = "baseline") {
        return primary;
    }
    let mut hosts = vec![host_of(&primary)];
    hosts.extend(replicas.iter().map(|url| host_of(url)));
    let (head, _) = primary.split_once(host_of(&primary)).unwrap();
    let (_, tail) = primary.split_once(host_of(&primary)).unwrap();
    format!("{head}{}{tail}", hosts.join(","))
}

/// `host:port` of a `postgres://user@host:port/db` URL.
fn host_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let rest = rest.split_once('@').map_or(rest, |(_, rest)| rest);
    rest.split(['/', '?']).next().unwrap_or(rest)
}

/// `url` logging in as `role`.
fn as_role(url: &str, role: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return format!("{url} user={role}");
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let rest = match rest[..authority_end].rfind('@') {
        Some(at) => &rest[at + 1..],
        None => rest,
    };
    format!("{scheme}://{role}@{rest}")
}

/// Runs `future` to its end on a runtime of its own, from sync or async code alike.
fn blocking<T: Send>(future: impl Future<Output = T> + Send) -> T {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                ::tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap()
                    .block_on(future)
            })
            .join()
            .unwrap()
    })
}

/// The primary's and replicas' URLs for `test`: as its own role when statements can be
/// counted.
async fn urls(test: &str) -> (String, Vec<String>) {
    let servers = routing_tests::servers().await;
    match role(test).await {
        Some(role) => (
            as_role(&servers.primary_url, &role),
            servers
                .replica_urls
                .iter()
                .map(|url| as_role(url, &role))
                .collect(),
        ),
        None => (servers.primary_url.clone(), servers.replica_urls.clone()),
    }
}

/// Each test's role, by test name.
static ROLES: Mutex<BTreeMap<String, String>> = Mutex::new(BTreeMap::new());

/// Whether `pg_stat_statements` counts statements on every server.
static COUNTING: ::tokio::sync::OnceCell<bool> = ::tokio::sync::OnceCell::const_new();

/// Makes the servers count statements, once: only on the harness's own cluster, whose servers
/// preload `pg_stat_statements`.
async fn counting() -> bool {
    *COUNTING
        .get_or_init(|| async {
            let servers = routing_tests::servers().await;
            if servers.cluster.is_none() {
                return false;
            }
            let mut primary = AsyncPgConnection::establish(&servers.primary_url)
                .await
                .unwrap();
            let made = primary
                .batch_execute(
                    "CREATE EXTENSION IF NOT EXISTS pg_stat_statements; \
                     SELECT 1 FROM pg_stat_statements LIMIT 1",
                )
                .await;
            if let Err(error) = made {
                eprintln!("statements are not counted: {error}");
                return false;
            }
            servers.wait_for_replicas().await;
            true
        })
        .await
}

/// The role of `test`, made on first use and replayed by the replicas; `None` when statements
/// are not counted.
async fn role(test: &str) -> Option<String> {
    static MAKING: ::tokio::sync::Mutex<()> = ::tokio::sync::Mutex::const_new(());
    if !counting().await {
        return None;
    }
    let _making = MAKING.lock().await;
    if let Some(role) = ROLES.lock().unwrap().get(test) {
        return Some(role.clone());
    }
    let role = format!("suite_{}", ROLES.lock().unwrap().len());
    let servers = routing_tests::servers().await;
    let mut primary = AsyncPgConnection::establish(&servers.primary_url)
        .await
        .unwrap();
    primary
        .batch_execute(&format!("CREATE ROLE {role} LOGIN SUPERUSER"))
        .await
        .unwrap();
    servers.wait_for_replicas().await;
    ROLES.lock().unwrap().insert(test.to_owned(), role.clone());
    Some(role)
}

/// Statements the primary and each replica served for a role (or for each of several).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Served {
    primary: i64,
    replicas: [i64; 2],
}

/// What each server served for every role of `roles`, summed.
async fn served(roles: &[String]) -> Served {
    let servers = routing_tests::servers().await;
    let mut served = Served::default();
    let count = async |url: &str| -> i64 {
        let mut conn = AsyncPgConnection::establish(url).await.unwrap();
        let mut total = 0;
        for role in roles {
            total += diesel::select(
                diesel::dsl::sql::<BigInt>(
                    "(SELECT coalesce(sum(s.calls), 0)::bigint FROM pg_stat_statements s \
                     JOIN pg_roles r ON r.oid = s.userid WHERE r.rolname = ",
                )
                .bind::<Text, _>(role)
                .sql(" AND s.query !~ ")
                .bind::<Text, _>(NOT_THE_TESTS)
                .sql(")"),
            )
            .get_result::<i64>(&mut conn)
            .await
            .unwrap();
        }
        total
    };
    served.primary = count(&servers.primary_url).await;
    for (index, url) in servers.replica_urls.iter().enumerate().take(2) {
        served.replicas[index] = count(url).await;
    }
    served
}

/// After a test: a read-only test of the replica mode must have been served by replicas only.
async fn check_served(test: &str) {
    if !(ON_REPLICAS && !cfg!(feature = "baseline") && is_read_only(test)) {
        return;
    }
    let Some(role) = ROLES.lock().unwrap().get(test).cloned() else {
        return;
    };
    let served = served(&[role]).await;
    let replicas_served = served.replicas.iter().sum::<i64>() > 0 || CANCELLED.contains(&test);
    assert!(
        served.primary == 0 && replicas_served,
        "{test} only reads: replicas should have served all its statements, but {served:?}"
    );
}

/// The file a test comes from.
fn file_of(test: &str) -> &str {
    match test.split_once("::") {
        Some((file, _)) => file,
        None => "lib",
    }
}

/// Prints how many statements each server served per test file, once every other test ended
/// (libtest starts tests in name order, so this one, the last by name, starts after them).
#[test]
fn statements_per_server() {
    let runtime = ::tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        if !counting().await {
            eprintln!("statements are not counted on these servers");
            return;
        }
        wait_for_other_tests().await;
        let by_file: BTreeMap<String, Vec<String>> =
            ROLES
                .lock()
                .unwrap()
                .iter()
                .fold(BTreeMap::new(), |mut files, (test, role)| {
                    files
                        .entry(format!("{}.rs", file_of(test)))
                        .or_default()
                        .push(role.clone());
                    files
                });
        let mode = if cfg!(feature = "baseline") {
            "baseline: a plain AsyncPgConnection to the primary"
        } else if ON_REPLICAS {
            "on RoutedConnection, each test body in a replica scope, read-only tests without the \
             test transaction"
        } else {
            "on RoutedConnection, as written"
        };
        let mut table = format!(
            "\ndiesel-async's tests, {mode}: statements each server served \
             (pg_stat_statements; without session setup and the router's own SQL)\n\
             {:<18} {:>8} {:>10} {:>10}\n",
            "file", "primary", "replica 0", "replica 1"
        );
        let mut totals = BTreeMap::new();
        for (file, roles) in &by_file {
            let served = served(roles).await;
            table.push_str(&format!(
                "{file:<18} {:>8} {:>10} {:>10}\n",
                served.primary, served.replicas[0], served.replicas[1]
            ));
            totals.insert(file.clone(), served);
        }
        // Straight to the terminal: libtest shows a passing test's output only on request.
        let _ = std::io::stderr().write_all(table.as_bytes());
        if ON_REPLICAS && !cfg!(feature = "baseline") {
            if let Some(served) = totals.get("type_check.rs") {
                assert_eq!(served.primary, 0, "type_check.rs only reads: {served:?}");
                assert!(served.replicas.iter().sum::<i64>() > 0, "{served:?}");
            }
        }
    });
}

/// Waits until no other test runs: no test body, and no session of a test's role open on any
/// server (the sync tests have no body of the suite's runtime).
async fn wait_for_other_tests() {
    let servers = routing_tests::servers().await;
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut urls = vec![servers.primary_url.clone()];
    urls.extend(servers.replica_urls.iter().cloned());
    loop {
        ::tokio::time::sleep(Duration::from_millis(200)).await;
        let mut sessions = 0;
        for url in &urls {
            let mut conn = AsyncPgConnection::establish(url).await.unwrap();
            sessions += diesel::select(
                diesel::dsl::sql::<BigInt>(
                    "(SELECT count(*) FROM pg_stat_activity \
                     WHERE usename LIKE 'suite\\_%' AND application_name <> ",
                )
                .bind::<Text, _>(PROBE)
                .sql(")"),
            )
            .get_result::<i64>(&mut conn)
            .await
            .unwrap();
        }
        if sessions == 0 && AtomicUsize::load(&RUNNING, Ordering::Acquire) == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "the other tests did not end");
    }
}
