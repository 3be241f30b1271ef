//! `routing-migrate list`: every migration of the directory, oldest first, `[X]` applied and
//! `[ ]` pending.

mod support;

use std::path::Path;

use routing_fixtures::MIGRATION_DIR;
use support::{CATALOG, TestDb, assert_code, cli, cli_in, cluster, table_exists};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_marks_pending_and_applied_migrations() {
    let cluster = cluster().await;
    let db = TestDb::create(cluster, "list").await;
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
