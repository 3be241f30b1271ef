//! `routing-migrate redo`: revert the most recently applied migration and apply it again.

mod support;

use routing_fixtures::MIGRATION_DIR;
use support::{
    CATALOG, CATALOG_VERSION, TestDb, applied_versions, assert_code, cli, cluster, count, execute,
    table_exists,
};

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
