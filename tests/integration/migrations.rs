//! Migrations run on the primary only.

use diesel::sql_types::{Bool, Text};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use routing_core::{Error, Migrator, MigratorBuilder, RoutedPool};
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
        migrator
            .pending(routing_fixtures::MIGRATIONS)
            .await
            .unwrap(),
        ["2026-11-26-000001_create_catalog"]
    );
    let applied = migrator
        .run_pending(routing_fixtures::MIGRATIONS)
        .await
        .unwrap();
    assert_eq!(applied, ["2026-11-26-000001_create_catalog"]);
    assert_eq!(migrator.applied().await.unwrap(), ["20261126000001"]);
    assert!(
        migrator
            .pending(routing_fixtures::MIGRATIONS)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(table_exists(&url, "orders").await);

    let reverted = migrator
        .revert_last(routing_fixtures::MIGRATIONS)
        .await
        .unwrap();
    assert_eq!(reverted, "2026-11-26-000001_create_catalog");
    assert!(!table_exists(&url, "orders").await);
    assert!(migrator.applied().await.unwrap().is_empty());
    let error = migrator
        .revert_last(routing_fixtures::MIGRATIONS)
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrator_refuses_a_listed_replica_before_connecting_and_changes_nothing() {
    let servers = servers().await;
    let before = applied_versions(&servers.primary_url).await;
    assert!(!before.is_empty(), "the shared primary is migrated");

    // A replica, named as one of the replicas: refused as a replica, not found to be a standby.
    let error = Migrator::builder(&servers.replica_urls[0])
        .refuse_replicas(&servers.replica_urls)
        .connect()
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            Error::TargetIsReplica {
                replica_index: 0,
                ..
            }
        ),
        "{error}"
    );
    assert!(
        error.to_string().contains("read replica 0") && error.to_string().contains("primary only"),
        "{error}"
    );

    // The primary itself, listed as a replica by mistake: a connection would succeed (it is not
    // in recovery), so only the check before connecting can refuse it.
    let last = servers.replica_urls.len();
    let error = Migrator::builder(&servers.primary_url)
        .refuse_replicas(servers.replica_urls.iter().chain([&servers.primary_url]))
        .connect()
        .await
        .unwrap_err();
    assert!(
        matches!(error, Error::TargetIsReplica { replica_index, .. } if replica_index == last),
        "{error}"
    );

    servers.wait_for_replicas().await;
    assert_eq!(applied_versions(&servers.primary_url).await, before);
    for replica in &servers.replica_urls {
        assert_eq!(applied_versions(replica).await, before, "{replica}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrator_accepts_the_primary_with_the_replica_list() {
    let servers = servers().await;
    let before = applied_versions(&servers.primary_url).await;
    let mut migrator = Migrator::builder(&servers.primary_url)
        .refuse_replicas(&servers.replica_urls)
        .connect()
        .await
        .unwrap();
    assert!(
        migrator
            .pending(routing_fixtures::MIGRATIONS)
            .await
            .unwrap()
            .is_empty()
    );
    let applied = migrator
        .run_pending(routing_fixtures::MIGRATIONS)
        .await
        .unwrap();
    assert!(applied.is_empty(), "{applied:?}");
    assert_eq!(applied_versions(&servers.primary_url).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrator_from_vars_refuses_the_replicas_the_variables_configure() {
    let servers = servers().await;
    let before = applied_versions(&servers.primary_url).await;
    let replicas = servers.replica_urls.join(",");
    let vars = |target: &str| {
        let target = target.to_owned();
        let replicas = replicas.clone();
        move |name: &str| match name {
            "DATABASE_URL" => Some(target.clone()),
            "ENABLE_READ_REPLICA" => Some("1".to_owned()),
            "DATABASE_READ_REPLICA_URL" => Some(replicas.clone()),
            _ => None,
        }
    };
    let last = servers.replica_urls.len() - 1;
    let error = MigratorBuilder::from_vars(vars(&servers.replica_urls[last]))
        .unwrap()
        .connect()
        .await
        .unwrap_err();
    assert!(
        matches!(error, Error::TargetIsReplica { replica_index, .. } if replica_index == last),
        "{error}"
    );

    let mut migrator = MigratorBuilder::from_vars(vars(&servers.primary_url))
        .unwrap()
        .connect()
        .await
        .unwrap();
    assert_eq!(migrator.applied().await.unwrap().len(), before.len());
    assert_eq!(applied_versions(&servers.primary_url).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_pending_migrations_refuses_a_primary_that_is_one_of_the_pools_replicas() {
    let servers = servers().await;
    let before = applied_versions(&servers.primary_url).await;
    let misconfigured = RoutedPool::builder(&servers.replica_urls[0])
        .replicas(&servers.replica_urls)
        .build()
        .unwrap();
    let error = misconfigured
        .run_pending_migrations(routing_fixtures::MIGRATIONS)
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            Error::TargetIsReplica {
                replica_index: 0,
                ..
            }
        ),
        "{error}"
    );

    let pool = RoutedPool::builder(&servers.primary_url)
        .replicas(&servers.replica_urls)
        .build()
        .unwrap();
    let applied = pool
        .run_pending_migrations(routing_fixtures::MIGRATIONS)
        .await
        .unwrap();
    assert!(applied.is_empty(), "{applied:?}");
    assert_eq!(applied_versions(&servers.primary_url).await, before);
}

/// The versions in `__diesel_schema_migrations` on the server at `url`, oldest first.
async fn applied_versions(url: &str) -> Vec<String> {
    let mut conn = AsyncPgConnection::establish(url).await.unwrap();
    diesel::select(diesel::dsl::sql::<Text>(
        "version FROM __diesel_schema_migrations ORDER BY version",
    ))
    .load(&mut conn)
    .await
    .unwrap()
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
