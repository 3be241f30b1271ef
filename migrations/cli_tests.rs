//! End-to-end tests of the `routing-migrate` binary against a local primary with two streaming
//! replicas (`routing_cluster::shared`): exit codes, printed lines, and what the servers say
//! afterwards.
//!
//! Every test that migrates creates a database of its own on the primary and drops it at the
//! end (a guard drops it too if the test fails); temporary migration directories live under
//! `std::env::temp_dir()` and are removed the same way.

use std::io::{ErrorKind, Read};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use diesel::sql_types::{BigInt, Bool, Text};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use routing_cluster::LocalCluster;
use routing_migrate::MIGRATION_DIR;

const BIN: &str = env!("CARGO_BIN_EXE_routing-migrate");
const CATALOG: &str = "2026-11-26-000001_create_catalog";
const CATALOG_VERSION: &str = "20261126000001";
/// The longest a single run of the binary may take before the test fails.
const RUN_DEADLINE: Duration = Duration::from_secs(120);

async fn cluster() -> &'static LocalCluster {
    routing_cluster::shared()
        .await
        .unwrap_or_else(|e| panic!("cannot start the local cluster: {e}"))
}

/// A name no other test or test process uses.
fn unique(tag: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "routing_migrate_{tag}_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// `url` with its database replaced by `database`.
fn with_database(url: &str, database: &str) -> String {
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
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs the binary with `args` in a cleared environment holding only `PATH` and `vars`.
fn cli(args: &[&str], vars: &[(&str, &str)]) -> Run {
    cli_in(None, args, vars)
}

/// As [`cli`], in the directory `dir`.
fn cli_in(dir: Option<&Path>, args: &[&str], vars: &[(&str, &str)]) -> Run {
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
struct TestDb {
    admin_url: String,
    name: String,
    /// The database's URL on the primary.
    url: String,
    dropped: bool,
}

impl TestDb {
    async fn create(cluster: &LocalCluster, tag: &str) -> TestDb {
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
    fn url_on(&self, server_url: &str) -> String {
        with_database(server_url, &self.name)
    }

    async fn drop_now(mut self) {
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
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let path = std::env::temp_dir().join(unique(tag));
        std::fs::create_dir_all(&path).expect("create a temporary directory");
        TempDir(path)
    }

    /// Adds the migration `name` with `up` and `down` SQL.
    fn migration(&self, name: &str, up: &str, down: &str) {
        let dir = self.0.join(name);
        std::fs::create_dir_all(&dir).expect("create a migration folder");
        std::fs::write(dir.join("up.sql"), up).expect("write up.sql");
        std::fs::write(dir.join("down.sql"), down).expect("write down.sql");
    }

    fn path(&self) -> &str {
        self.0.to_str().expect("a UTF-8 temporary path")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn connect(url: &str) -> AsyncPgConnection {
    AsyncPgConnection::establish(url)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"))
}

async fn execute(url: &str, sql: &str) {
    connect(url)
        .await
        .batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql} failed: {e}"));
}

async fn table_exists(url: &str, table: &str) -> bool {
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
async fn applied_versions(url: &str) -> Option<Vec<String>> {
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

async fn count(url: &str, table: &str) -> i64 {
    diesel::select(diesel::dsl::sql::<BigInt>(&format!(
        "count(*) FROM {table}"
    )))
    .get_result(&mut connect(url).await)
    .await
    .expect("count rows")
}

fn assert_code(run: &Run, code: i32) {
    assert_eq!(run.code, code, "{run:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_applies_each_migration_once_and_list_marks_it() {
    let cluster = cluster().await;
    let db = TestDb::create(cluster, "run").await;
    // The primary through DATABASE_URL, with no flag.
    let env = [("DATABASE_URL", db.url.as_str())];
    let dir = ["--migration-dir", MIGRATION_DIR];

    let list = cli(&["list", dir[0], dir[1]], &env);
    assert_code(&list, 0);
    assert_eq!(list.stdout, format!("Migrations:\n  [ ] {CATALOG}\n"));
    assert_eq!(list.stderr, "");
    assert!(!table_exists(&db.url, "products").await);

    let run = cli(&["run", dir[0], dir[1]], &env);
    assert_code(&run, 0);
    assert_eq!(run.stdout, format!("applied {CATALOG}\n"));
    assert_eq!(run.stderr, "");
    assert!(table_exists(&db.url, "products").await);
    assert!(table_exists(&db.url, "orders").await);
    assert_eq!(
        applied_versions(&db.url).await,
        Some(vec![CATALOG_VERSION.to_owned()])
    );

    // Options after or before the command, as global options.
    let again = cli(&["--migration-dir", MIGRATION_DIR, "run"], &env);
    assert_code(&again, 0);
    assert_eq!(again.stdout, "no pending migrations\n");
    assert_eq!(again.stderr, "");
    assert_eq!(
        applied_versions(&db.url).await,
        Some(vec![CATALOG_VERSION.to_owned()])
    );

    let list = cli(&["list", dir[0], dir[1]], &env);
    assert_code(&list, 0);
    assert_eq!(list.stdout, format!("Migrations:\n  [X] {CATALOG}\n"));

    // The default directory is `migrations` in the current directory.
    let parent = Path::new(MIGRATION_DIR).parent().expect("the workspace");
    assert_eq!(
        Path::new(MIGRATION_DIR).file_name(),
        Some("migrations".as_ref())
    );
    let list = cli_in(Some(parent), &["list"], &env);
    assert_code(&list, 0);
    assert_eq!(list.stdout, format!("Migrations:\n  [X] {CATALOG}\n"));

    db.drop_now().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_migrations_apply_in_order_and_revert_one_at_a_time() {
    let cluster = cluster().await;
    let db = TestDb::create(cluster, "order").await;
    let dir = TempDir::new("order");
    // Written newest first: the order comes from the versions, not the file system.
    dir.migration(
        "2000-01-01-000002_second",
        "CREATE TABLE second_t (id INT);",
        "DROP TABLE second_t;",
    );
    dir.migration(
        "2000-01-01-000001_first",
        "CREATE TABLE first_t (id INT);",
        "DROP TABLE first_t;",
    );
    let args = |command: &'static str| {
        [
            command,
            "--database-url",
            &db.url,
            "--migration-dir",
            dir.path(),
        ]
    };

    let list = cli(&args("list"), &[]);
    assert_code(&list, 0);
    assert_eq!(
        list.stdout,
        "Migrations:\n  [ ] 2000-01-01-000001_first\n  [ ] 2000-01-01-000002_second\n"
    );

    let run = cli(&args("run"), &[]);
    assert_code(&run, 0);
    assert_eq!(
        run.stdout,
        "applied 2000-01-01-000001_first\napplied 2000-01-01-000002_second\n"
    );
    assert_eq!(
        applied_versions(&db.url).await,
        Some(vec![
            "20000101000001".to_owned(),
            "20000101000002".to_owned()
        ])
    );

    let revert = cli(&args("revert"), &[]);
    assert_code(&revert, 0);
    assert_eq!(revert.stdout, "reverted 2000-01-01-000002_second\n");
    assert_eq!(revert.stderr, "");
    assert!(table_exists(&db.url, "first_t").await);
    assert!(!table_exists(&db.url, "second_t").await);
    assert_eq!(
        applied_versions(&db.url).await,
        Some(vec!["20000101000001".to_owned()])
    );

    let list = cli(&args("list"), &[]);
    assert_code(&list, 0);
    assert_eq!(
        list.stdout,
        "Migrations:\n  [X] 2000-01-01-000001_first\n  [ ] 2000-01-01-000002_second\n"
    );

    db.drop_now().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revert_and_redo_the_last_migration() {
    let cluster = cluster().await;
    let db = TestDb::create(cluster, "redo").await;
    let args = |command: &'static str| {
        [
            command,
            "--database-url",
            &db.url,
            "--migration-dir",
            MIGRATION_DIR,
        ]
    };

    assert_code(&cli(&args("run"), &[]), 0);
    execute(
        &db.url,
        "INSERT INTO products (name, price_cents) VALUES ('gone after redo', 100)",
    )
    .await;
    assert_eq!(count(&db.url, "products").await, 1);

    let redo = cli(&args("redo"), &[]);
    assert_code(&redo, 0);
    assert_eq!(
        redo.stdout,
        format!("reverted {CATALOG}\napplied {CATALOG}\n")
    );
    assert_eq!(redo.stderr, "");
    // Dropped and created again: the row is gone, the migration is applied.
    assert_eq!(count(&db.url, "products").await, 0);
    assert_eq!(
        applied_versions(&db.url).await,
        Some(vec![CATALOG_VERSION.to_owned()])
    );

    let revert = cli(&args("revert"), &[]);
    assert_code(&revert, 0);
    assert_eq!(revert.stdout, format!("reverted {CATALOG}\n"));
    assert!(!table_exists(&db.url, "products").await);
    assert!(!table_exists(&db.url, "orders").await);
    assert_eq!(applied_versions(&db.url).await, Some(vec![]));

    for command in ["revert", "redo"] {
        let nothing = cli(&args(command), &[]);
        assert_code(&nothing, 1);
        assert_eq!(nothing.stdout, "");
        assert!(
            nothing
                .stderr
                .starts_with("error: nothing to revert: no migration has been applied"),
            "{nothing:#?}"
        );
    }
    assert!(!table_exists(&db.url, "products").await);

    db.drop_now().await;
}

/// A port on 127.0.0.1 that accepts TCP connections and never answers: whether anything
/// connected shows in [`assert_never_connected`].
fn silent_listener() -> (TcpListener, u16) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a local port");
    let port = listener.local_addr().expect("its address").port();
    (listener, port)
}

fn assert_never_connected(listener: &TcpListener) {
    listener.set_nonblocking(true).expect("non-blocking");
    match listener.accept() {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        Ok((_, peer)) => panic!("routing-migrate connected to the replica from {peer}"),
        Err(e) => panic!("accept failed: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_a_replica_from_database_read_replica_url_without_connecting() {
    let cluster = cluster().await;
    let replicas = cluster.replica_urls().join(",");
    let port = cluster.replica_port(1);
    let env = [
        ("ENABLE_READ_REPLICA", "1"),
        ("DATABASE_READ_REPLICA_URL", replicas.as_str()),
    ];
    let targets = [
        cluster.replica_url(1),
        format!("host=127.0.0.1 port={port} dbname=postgres user=postgres"),
        format!("postgresql://postgres:hunter2@localhost:{port}/postgres?sslmode=disable"),
    ];
    for target in &targets {
        for command in ["run", "revert", "redo", "list"] {
            let run = cli(
                &[
                    command,
                    "--database-url",
                    target,
                    "--migration-dir",
                    MIGRATION_DIR,
                ],
                &env,
            );
            assert_code(&run, 3);
            assert_eq!(run.stdout, "");
            assert!(
                run.stderr.starts_with("error: refusing to migrate ")
                    && run.stderr.contains("read replica 1")
                    && run.stderr.contains("DATABASE_READ_REPLICA_URL"),
                "{run:#?}"
            );
            assert!(!run.stderr.contains("hunter2"), "{run:#?}");
        }
    }
    let run = cli(
        &["run", "--migration-dir", MIGRATION_DIR],
        &[
            ("DATABASE_URL", targets[2].as_str()),
            ("ENABLE_READ_REPLICA", "1"),
            ("DATABASE_READ_REPLICA_URL", replicas.as_str()),
        ],
    );
    assert_code(&run, 3);
    assert!(
        run.stderr.contains("postgresql://postgres:***@localhost"),
        "{run:#?}"
    );

    // A "replica" that would hang any client: the refusal comes before connecting.
    let (listener, port) = silent_listener();
    let replica = format!("postgres://app:sekrit@127.0.0.1:{port}/app");
    let target = format!("postgres://other:sekrit2@localhost:{port}/app");
    let run = cli(
        &[
            "run",
            "--database-url",
            &target,
            "--migration-dir",
            MIGRATION_DIR,
        ],
        &[
            ("ENABLE_READ_REPLICA", "1"),
            ("DATABASE_READ_REPLICA_URL", replica.as_str()),
        ],
    );
    assert_code(&run, 3);
    assert!(!run.stderr.contains("sekrit"), "{run:#?}");
    assert!(
        run.stderr
            .contains(&format!("postgres://other:***@localhost:{port}/app")),
        "{run:#?}"
    );
    assert_never_connected(&listener);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_a_replica_from_postgres_read_replica_parts_without_connecting() {
    let cluster = cluster().await;
    let port = cluster.replica_port(0).to_string();
    let parts = |port: &str| {
        vec![
            ("ENABLE_READ_REPLICA", "1".to_owned()),
            ("POSTGRES_READ_REPLICA_HOST", "127.0.0.1".to_owned()),
            ("POSTGRES_READ_REPLICA_PORT", port.to_owned()),
            ("POSTGRES_READ_REPLICA_USER", "postgres".to_owned()),
            ("POSTGRES_READ_REPLICA_PASSWORD", "s3cret-part".to_owned()),
            ("POSTGRES_READ_REPLICA_DB", "postgres".to_owned()),
        ]
    };
    let env = parts(&port);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let run = cli(
        &[
            "run",
            "--database-url",
            &cluster.replica_url(0),
            "--migration-dir",
            MIGRATION_DIR,
        ],
        &env,
    );
    assert_code(&run, 3);
    assert_eq!(run.stdout, "");
    assert!(
        run.stderr.contains("read replica 0") && run.stderr.contains("POSTGRES_READ_REPLICA_HOST"),
        "{run:#?}"
    );
    assert!(!run.stderr.contains("s3cret-part"), "{run:#?}");

    let (listener, port) = silent_listener();
    let env = parts(&port.to_string());
    let mut env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let target = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    env.push(("DATABASE_URL", &target));
    let run = cli(&["list", "--migration-dir", MIGRATION_DIR], &env);
    assert_code(&run, 3);
    assert_never_connected(&listener);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_a_standby_when_no_replica_is_configured() {
    let cluster = cluster().await;
    let db = TestDb::create(cluster, "standby").await;
    cluster
        .wait_for_replicas()
        .await
        .expect("replicas catch up");
    let standby = db.url_on(&cluster.replica_url(0));
    let other_replica = cluster.replica_url(1);
    for (command, env) in [
        ("run", vec![("DATABASE_URL", standby.as_str())]),
        ("redo", vec![("DATABASE_URL", standby.as_str())]),
        (
            // Replicas listed but not enabled: only pg_is_in_recovery() can tell.
            "list",
            vec![
                ("DATABASE_URL", standby.as_str()),
                ("ENABLE_READ_REPLICA", "0"),
                ("DATABASE_READ_REPLICA_URL", standby.as_str()),
            ],
        ),
        (
            // Replicas enabled, but not this one.
            "run",
            vec![
                ("DATABASE_URL", standby.as_str()),
                ("ENABLE_READ_REPLICA", "1"),
                ("DATABASE_READ_REPLICA_URL", other_replica.as_str()),
            ],
        ),
    ] {
        let run = cli(&[command, "--migration-dir", MIGRATION_DIR], &env);
        assert_code(&run, 3);
        assert_eq!(run.stdout, "");
        assert!(
            run.stderr.starts_with("error: refusing to migrate ")
                && run.stderr.contains("pg_is_in_recovery() is true")
                && run.stderr.contains("standby"),
            "{run:#?}"
        );
    }
    // Unchanged, on the standby and on the primary it follows.
    cluster
        .wait_for_replicas()
        .await
        .expect("replicas catch up");
    for url in [&standby, &db.url] {
        assert!(!table_exists(url, "products").await, "{url}");
        assert_eq!(applied_versions(url).await, None, "{url}");
    }
    db.drop_now().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_database_url_exits_2() {
    for (args, env) in [
        (vec!["run"], vec![]),
        (vec!["list"], vec![("DATABASE_URL", "  ")]),
        (vec!["run", "--database-url", ""], vec![]),
    ] {
        let run = cli(&args, &env);
        assert_code(&run, 2);
        assert_eq!(run.stdout, "");
        assert!(
            run.stderr.starts_with("error: no database URL") && run.stderr.contains("DATABASE_URL"),
            "{run:#?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_url_exits_2_without_printing_the_password() {
    for bad in [
        "postgres://u:topsecret@localhost:notaport/db",
        "mysql://u:topsecret@localhost/db",
        "host=localhost port=99999999 password=topsecret",
        "postgres://u:topsecret@/db",
    ] {
        for run in [
            cli(
                &[
                    "run",
                    "--database-url",
                    bad,
                    "--migration-dir",
                    MIGRATION_DIR,
                ],
                &[],
            ),
            cli(
                &["list", "--migration-dir", MIGRATION_DIR],
                &[("DATABASE_URL", bad)],
            ),
        ] {
            assert_code(&run, 2);
            assert_eq!(run.stdout, "");
            assert!(
                run.stderr
                    .starts_with("error: invalid configuration: invalid primary URL"),
                "{run:#?}"
            );
            assert!(!run.stderr.contains("topsecret"), "{run:#?}");
        }
    }
    // An invalid replica URL is a configuration error too.
    let run = cli(
        &["run", "--migration-dir", MIGRATION_DIR],
        &[
            ("DATABASE_URL", "postgres://u@127.0.0.1:1/db"),
            ("ENABLE_READ_REPLICA", "1"),
            (
                "DATABASE_READ_REPLICA_URL",
                "postgres://u:topsecret@replica:nope/db",
            ),
        ],
    );
    assert_code(&run, 2);
    assert!(run.stderr.contains("invalid replica 0 URL"), "{run:#?}");
    assert!(!run.stderr.contains("topsecret"), "{run:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_invalid_migration_dir_exits_2() {
    let cluster = cluster().await;
    let primary = cluster.primary_url();
    let env = [("DATABASE_URL", primary.as_str())];
    let empty = TempDir::new("nodir");
    let missing = empty.0.join("no-such-dir");
    let run = cli(
        &["run", "--migration-dir", missing.to_str().expect("UTF-8")],
        &env,
    );
    assert_code(&run, 2);
    assert_eq!(run.stdout, "");
    assert!(
        run.stderr.starts_with("error: invalid migration directory")
            && run.stderr.contains("no-such-dir: it does not exist"),
        "{run:#?}"
    );

    // The default, `migrations`, in a directory that has none.
    let run = cli_in(Some(&empty.0), &["list"], &env);
    assert_code(&run, 2);
    assert!(
        run.stderr.contains("migrations: it does not exist"),
        "{run:#?}"
    );

    // A subdirectory without up.sql is not a migration: diesel refuses the whole directory.
    let invalid = TempDir::new("invalid");
    invalid.migration("2000-01-01-000001_fine", "SELECT 1;", "SELECT 1;");
    std::fs::create_dir(invalid.0.join("src")).expect("create a stray subdirectory");
    let run = cli(&["run", "--migration-dir", invalid.path()], &env);
    assert_code(&run, 2);
    assert!(
        run.stderr.contains("src is not a migration") && run.stderr.contains("up.sql"),
        "{run:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_replica_variables_exit_2() {
    let primary = "postgres://u@127.0.0.1:1/db";
    for (env, expected) in [
        (
            vec![("ENABLE_READ_REPLICA", "yes")],
            "ENABLE_READ_REPLICA has the value \"yes\"",
        ),
        (
            vec![("ENABLE_READ_REPLICA", "1")],
            "POSTGRES_READ_REPLICA_HOST is not set",
        ),
        (
            vec![
                ("ENABLE_READ_REPLICA", "1"),
                ("POSTGRES_READ_REPLICA_HOST", "h"),
                ("POSTGRES_READ_REPLICA_USER", "u"),
                ("POSTGRES_READ_REPLICA_DB", "d"),
                ("POSTGRES_READ_REPLICA_PORT", "nope"),
            ],
            "POSTGRES_READ_REPLICA_PORT has the value \"nope\"",
        ),
    ] {
        let mut env = env;
        env.push(("DATABASE_URL", primary));
        let run = cli(&["run", "--migration-dir", MIGRATION_DIR], &env);
        assert_code(&run, 2);
        assert_eq!(run.stdout, "");
        assert!(
            run.stderr
                .starts_with("error: invalid configuration: environment variable")
                && run.stderr.contains(expected),
            "{run:#?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_migration_exits_1_and_names_it() {
    let cluster = cluster().await;
    let db = TestDb::create(cluster, "broken").await;
    let dir = TempDir::new("broken");
    dir.migration(
        "2000-01-01-000001_good",
        "CREATE TABLE good_t (id INT);",
        "DROP TABLE good_t;",
    );
    dir.migration(
        "2000-01-01-000002_broken",
        "CREATE TABLE broken_t (id INT);\nSELEC 1;",
        "DROP TABLE broken_t;",
    );
    dir.migration(
        "2000-01-01-000003_after",
        "CREATE TABLE after_t (id INT);",
        "DROP TABLE after_t;",
    );
    // A password the server ignores (trust authentication) and the output must hide.
    let url = db.url.replacen("postgres@", "postgres:pw-hidden@", 1);
    assert_ne!(url, db.url);
    let run = cli(
        &["run", "--database-url", &url, "--migration-dir", dir.path()],
        &[],
    );
    assert_code(&run, 1);
    assert_eq!(run.stdout, "applied 2000-01-01-000001_good\n");
    assert!(
        run.stderr
            .starts_with("error: failed to apply migration 2000-01-01-000002_broken on ")
            && run.stderr.contains("postgres:***@")
            && run.stderr.contains("syntax error"),
        "{run:#?}"
    );
    assert!(!run.stderr.contains("pw-hidden"), "{run:#?}");
    assert!(table_exists(&db.url, "good_t").await);
    // The broken migration ran in a transaction: nothing of it stayed; nothing after it ran.
    assert!(!table_exists(&db.url, "broken_t").await);
    assert!(!table_exists(&db.url, "after_t").await);
    assert_eq!(
        applied_versions(&db.url).await,
        Some(vec!["20000101000001".to_owned()])
    );

    let list = cli(
        &[
            "list",
            "--database-url",
            &url,
            "--migration-dir",
            dir.path(),
        ],
        &[],
    );
    assert_code(&list, 0);
    assert_eq!(
        list.stdout,
        "Migrations:\n  [X] 2000-01-01-000001_good\n  [ ] 2000-01-01-000002_broken\n  [ ] 2000-01-01-000003_after\n"
    );
    db.drop_now().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_errors_exit_2_and_help_exits_0() {
    // No command at all: clap prints the help to stderr, as a usage error.
    let bare = cli(&[], &[]);
    assert_code(&bare, 2);
    assert_eq!(bare.stdout, "");
    assert!(bare.stderr.contains("Usage: routing-migrate"), "{bare:#?}");
    for args in [
        vec!["frob"],
        vec!["run", "--bogus"],
        vec!["run", "extra"],
        // clap quotes an unexpected argument: a URL's password is redacted.
        vec!["run", "postgres://u:pw123@localhost/db"],
        vec!["run", "--bogus=postgres://u:pw123@localhost/db"],
    ] {
        let run = cli(&args, &[]);
        assert_code(&run, 2);
        assert_eq!(run.stdout, "");
        assert!(run.stderr.starts_with("error: "), "{run:#?}");
        assert!(!run.stderr.contains("pw123"), "{run:#?}");
    }
    let help = cli(&["--help"], &[]);
    assert_code(&help, 0);
    for needle in [
        "Usage: routing-migrate [OPTIONS] <COMMAND>",
        "--database-url <URL>",
        "--migration-dir <DIR>",
        "DATABASE_READ_REPLICA_URL",
        "Exit codes:",
        "3  refused",
    ] {
        assert!(help.stdout.contains(needle), "{needle}: {help:#?}");
    }
    assert_eq!(help.stderr, "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_library_entry_points_run_in_process() {
    let cluster = cluster().await;
    let db = TestDb::create(cluster, "inproc").await;
    let url = db.url.clone();
    let vars = move |name: &str| (name == "DATABASE_URL").then(|| url.clone());
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let args = ["routing-migrate", "run", "--migration-dir", MIGRATION_DIR];
    let code = routing_migrate::run_cli(args, &vars, &mut out, &mut err).await;
    assert_eq!(code, 0, "{}", String::from_utf8_lossy(&err));
    assert_eq!(
        String::from_utf8_lossy(&out),
        format!("applied {CATALOG}\n")
    );

    let options = routing_migrate::Options {
        database_url: None,
        migration_dir: MIGRATION_DIR.into(),
    };
    let mut out = Vec::new();
    routing_migrate::migrate(routing_migrate::Command::Revert, &options, &vars, &mut out)
        .await
        .expect("revert");
    assert_eq!(
        String::from_utf8_lossy(&out),
        format!("reverted {CATALOG}\n")
    );
    let error =
        routing_migrate::migrate(routing_migrate::Command::Run, &options, &|_| None, &mut out)
            .await
            .unwrap_err();
    assert_eq!(error.exit_code(), 2, "{error}");
    assert!(!table_exists(&db.url, "products").await);
    db.drop_now().await;
}
