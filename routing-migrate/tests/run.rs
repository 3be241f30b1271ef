//! `routing-migrate run`: every pending migration, oldest first, each once; a failing one stops
//! the run and is named.

mod support;

use routing_fixtures::MIGRATION_DIR;
use support::{
    CATALOG, CATALOG_VERSION, Run, TempDir, TestDb, applied_versions, assert_code, cli, cluster,
    table_exists,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_applies_each_migration_once() {
    let cluster = cluster().await;
    let db = TestDb::create(cluster, "run").await;
    // The primary through DATABASE_URL, with no flag.
    let env = [("DATABASE_URL", db.url.as_str())];
    let dir = ["--migration-dir", MIGRATION_DIR];

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

    db.drop_now().await;
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

/// Runs the command line `routing-migrate <command> --migration-dir <MIGRATION_DIR>` in this
/// process, with the variables of `vars`.
async fn in_process(command: &str, vars: &dyn Fn(&str) -> Option<String>) -> Run {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let args = ["routing-migrate", command, "--migration-dir", MIGRATION_DIR];
    let code = routing_migrate::run_cli(args, vars, &mut out, &mut err).await;
    Run {
        code,
        stdout: String::from_utf8(out).expect("UTF-8 output"),
        stderr: String::from_utf8(err).expect("UTF-8 errors"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_cli_runs_the_command_line_in_process() {
    let cluster = cluster().await;
    let db = TestDb::create(cluster, "inproc").await;
    let url = db.url.clone();
    let vars = move |name: &str| (name == "DATABASE_URL").then(|| url.clone());

    let run = in_process("run", &vars).await;
    assert_code(&run, 0);
    assert_eq!(run.stdout, format!("applied {CATALOG}\n"));

    let revert = in_process("revert", &vars).await;
    assert_code(&revert, 0);
    assert_eq!(revert.stdout, format!("reverted {CATALOG}\n"));

    let no_url = in_process("run", &|_| None).await;
    assert_code(&no_url, 2);
    assert!(
        no_url.stderr.starts_with("error: no database URL"),
        "{no_url:#?}"
    );
    assert!(!table_exists(&db.url, "products").await);
    db.drop_now().await;
}
