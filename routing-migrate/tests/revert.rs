//! `routing-migrate revert`: the most recently applied migration, one at a time.

mod support;

use support::{TempDir, TestDb, applied_versions, assert_code, cli, cluster, table_exists};

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
