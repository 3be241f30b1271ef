//! Helpers shared by the end-to-end tests of the `routing-migrate` binary, which run it against
//! a local primary with two streaming replicas (`routing_cluster::shared`, one cluster per test
//! file) and check exit codes, printed lines, and what the servers say afterwards.
//!
//! Every test that migrates creates a database of its own on the primary and drops it at the
//! end (a guard drops it too if the test fails); temporary migration directories live under
//! `std::env::temp_dir()` and are removed the same way.

// Each test file uses a part of these helpers.
#![allow(dead_code)]

use std::io::{ErrorKind, Read};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use diesel::sql_types::{BigInt, Bool, Text};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use routing_cluster::LocalCluster;

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_routing-migrate");
pub(crate) const CATALOG: &str = "2026-11-26-000001_create_catalog";
pub(crate) const CATALOG_VERSION: &str = "20261126000001";
/// The longest a single run of the binary may take before the test fails.
pub(crate) const RUN_DEADLINE: Duration = Duration::from_secs(120);

pub(crate) async fn cluster() -> &'static LocalCluster {
    routing_cluster::shared()
        .await
        .unwrap_or_else(|e| panic!("cannot start the local cluster: {e}"))
}

/// A name no other test or test process uses.
pub(crate) fn unique(tag: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "routing_migrate_{tag}_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// `url` with its database replaced by `database`.
pub(crate) fn with_database(url: &str, database: &str) -> String {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let base = base.rsplit_once('/').map_or(base, |(server, _)| server);
    if query.is_empty() {
        format!("{base}/{database}")
    } else {
        format!("{base}/{database}?{query}")
    }
}

/// What one run of the binary did.
#[derive(Debug)]
pub(crate) struct Run {
    pub(crate) code: i32,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

/// Runs the binary with `args` in a cleared environment holding only `PATH` and `vars`.
pub(crate) fn cli(args: &[&str], vars: &[(&str, &str)]) -> Run {
    cli_in(None, args, vars)
}

/// As [`cli`], in the directory `dir`.
pub(crate) fn cli_in(dir: Option<&Path>, args: &[&str], vars: &[(&str, &str)]) -> Run {
    let mut command = Command::new(BIN);
    command
        .env_clear()
        .args(args)
        .envs(vars.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(path) = std::env::var_os("PATH") {
        command.env("PATH", path);
    }
    if let Some(dir) = dir {
        command.current_dir(dir);
    }
    let mut child = command.spawn().expect("start routing-migrate");
    let read = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            pipe.read_to_string(&mut text).expect("read the output");
            text
        })
    };
    let stdout = read(Box::new(child.stdout.take().expect("stdout")));
    let stderr = read(Box::new(child.stderr.take().expect("stderr")));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for routing-migrate") {
            break status;
        }
        if started.elapsed() > RUN_DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("routing-migrate {args:?} did not finish within {RUN_DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Run {
        code: status.code().expect("routing-migrate exited by a signal"),
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

/// A database of the test's own on the primary, dropped by [`TestDb::drop_now`] or, if the test
/// fails first, by `Drop`.
pub(crate) struct TestDb {
    admin_url: String,
    name: String,
    /// The database's URL on the primary.
    pub(crate) url: String,
    dropped: bool,
}

impl TestDb {
    pub(crate) async fn create(cluster: &LocalCluster, tag: &str) -> TestDb {
        let admin_url = cluster.primary_url();
        let name = unique(tag);
        execute(&admin_url, &format!("CREATE DATABASE {name}")).await;
        TestDb {
            url: with_database(&admin_url, &name),
            admin_url,
            name,
            dropped: false,
        }
    }

    /// The database's URL on `server_url`'s server (a replica has it too).
    pub(crate) fn url_on(&self, server_url: &str) -> String {
        with_database(server_url, &self.name)
    }

    pub(crate) async fn drop_now(mut self) {
        self.dropped = true;
        execute(
            &self.admin_url,
            &format!("DROP DATABASE {} WITH (FORCE)", self.name),
        )
        .await;
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if self.dropped {
            return;
        }
        let admin_url = self.admin_url.clone();
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        // A fresh runtime on a thread of its own: this may run inside the test's runtime.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime to drop the test database");
            runtime.block_on(execute(&admin_url, &sql));
        })
        .join();
    }
}

/// A directory under `std::env::temp_dir()`, removed on drop.
pub(crate) struct TempDir(pub(crate) PathBuf);

impl TempDir {
    pub(crate) fn new(tag: &str) -> TempDir {
        let path = std::env::temp_dir().join(unique(tag));
        std::fs::create_dir_all(&path).expect("create a temporary directory");
        TempDir(path)
    }

    /// Adds the migration `name` with `up` and `down` SQL.
    pub(crate) fn migration(&self, name: &str, up: &str, down: &str) {
        let dir = self.0.join(name);
        std::fs::create_dir_all(&dir).expect("create a migration folder");
        std::fs::write(dir.join("up.sql"), up).expect("write up.sql");
        std::fs::write(dir.join("down.sql"), down).expect("write down.sql");
    }

    pub(crate) fn path(&self) -> &str {
        self.0.to_str().expect("a UTF-8 temporary path")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub(crate) async fn connect(url: &str) -> AsyncPgConnection {
    AsyncPgConnection::establish(url)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"))
}

pub(crate) async fn execute(url: &str, sql: &str) {
    connect(url)
        .await
        .batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql} failed: {e}"));
}

pub(crate) async fn table_exists(url: &str, table: &str) -> bool {
    diesel::select(
        diesel::dsl::sql::<Bool>("to_regclass(")
            .bind::<Text, _>(table)
            .sql(") IS NOT NULL"),
    )
    .get_result(&mut connect(url).await)
    .await
    .expect("to_regclass")
}

/// The versions in `__diesel_schema_migrations`, oldest first; `None` without the table.
pub(crate) async fn applied_versions(url: &str) -> Option<Vec<String>> {
    if !table_exists(url, "__diesel_schema_migrations").await {
        return None;
    }
    Some(
        diesel::select(diesel::dsl::sql::<Text>(
            "version FROM __diesel_schema_migrations ORDER BY version",
        ))
        .load(&mut connect(url).await)
        .await
        .expect("read __diesel_schema_migrations"),
    )
}

pub(crate) async fn count(url: &str, table: &str) -> i64 {
    diesel::select(diesel::dsl::sql::<BigInt>(&format!(
        "count(*) FROM {table}"
    )))
    .get_result(&mut connect(url).await)
    .await
    .expect("count rows")
}

pub(crate) fn assert_code(run: &Run, code: i32) {
    assert_eq!(run.code, code, "{run:#?}");
}

/// A port on 127.0.0.1 that accepts TCP connections and never answers: whether anything
/// connected shows in [`assert_never_connected`].
pub(crate) fn silent_listener() -> (TcpListener, u16) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a local port");
    let port = listener.local_addr().expect("its address").port();
    (listener, port)
}

pub(crate) fn assert_never_connected(listener: &TcpListener) {
    listener.set_nonblocking(true).expect("non-blocking");
    match listener.accept() {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        Ok((_, peer)) => panic!("routing-migrate connected to the replica from {peer}"),
        Err(e) => panic!("accept failed: {e}"),
    }
}
