//! Migrations run on the primary only.

use diesel::sql_types::Bool;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use routing_core::{Error, Migrator};
use routing_tests::{servers, unique};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrator_refuses_a_standby_and_changes_nothing() {
    let servers = servers().await;
    let replica = &servers.replica_urls[0];
    let error = Migrator::connect(replica).await.unwrap_err();
    assert!(matches!(error, Error::PrimaryIsStandby { .. }), "{error}");
    assert!(error.to_string().contains("is in recovery"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrator_applies_lists_and_reverts_on_the_primary() {
    let servers = servers().await;
    // A database of its own, so that reverting does not disturb the other tests.
    let database = unique("migrations");
    let mut admin = AsyncPgConnection::establish(&servers.primary_url)
        .await
        .unwrap();
    admin
        .batch_execute(&format!("CREATE DATABASE {database}"))
        .await
        .unwrap();
    let url = database_url(&servers.primary_url, &database);

    let mut migrator = Migrator::connect(&url).await.unwrap();
    assert_eq!(
        migrator.pending(routing_migrate::MIGRATIONS).await.unwrap(),
        ["2026-11-26-000001_create_catalog"]
    );
    let applied = migrator
        .run_pending(routing_migrate::MIGRATIONS)
        .await
        .unwrap();
    assert_eq!(applied, ["2026-11-26-000001_create_catalog"]);
    assert_eq!(migrator.applied().await.unwrap(), ["20261126000001"]);
    assert!(
        migrator
            .pending(routing_migrate::MIGRATIONS)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(table_exists(&url, "orders").await);

    let reverted = migrator
        .revert_last(routing_migrate::MIGRATIONS)
        .await
        .unwrap();
    assert_eq!(reverted, "2026-11-26-000001_create_catalog");
    assert!(!table_exists(&url, "orders").await);
    assert!(migrator.applied().await.unwrap().is_empty());
    let error = migrator
        .revert_last(routing_migrate::MIGRATIONS)
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("no migration has been applied"),
        "{error}"
    );
    drop(migrator);
    admin
        .batch_execute(&format!("DROP DATABASE {database}"))
        .await
        .unwrap();
}

fn database_url(primary_url: &str, database: &str) -> String {
    let (base, query) = primary_url.split_once('?').unwrap_or((primary_url, ""));
    let base = base.rsplit_once('/').map_or(base, |(server, _)| server);
    if query.is_empty() {
        format!("{base}/{database}")
    } else {
        format!("{base}/{database}?{query}")
    }
}

async fn table_exists(url: &str, table: &str) -> bool {
    let mut conn = AsyncPgConnection::establish(url).await.unwrap();
    diesel::select(
        diesel::dsl::sql::<Bool>("to_regclass(")
            .bind::<diesel::sql_types::Text, _>(table)
            .sql(") IS NOT NULL"),
    )
    .get_result(&mut conn)
    .await
    .unwrap()
}
