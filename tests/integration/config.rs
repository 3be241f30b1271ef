//! Bad configurations get clear errors, never panics, and lose nothing.

use std::time::Duration;

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use routing_core::{Error, RoutedPool, with_read_replica};
use routing_fixtures::products;
use routing_tests::{servers, unique, where_ran, with_application_name};

use crate::support::insert_product;

/// A read in a replica scope on `pool` that must fail: its error.
async fn failed_replica_read(pool: &RoutedPool) -> diesel::result::Error {
    let mut conn = pool.get().await.unwrap();
    with_read_replica(true, async {
        diesel::select(routing_tests::pg_is_in_recovery())
            .get_result::<bool>(&mut conn)
            .await
            .unwrap_err()
    })
    .await
}

/// A loopback port where nothing listens.
fn closed_port_url(password: &str) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("postgres://postgres:{password}@127.0.0.1:{port}/postgres")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_is_really_a_primary_is_refused() {
    let servers = servers().await;
    let name = unique("fake_replica");
    let pool = RoutedPool::builder(with_application_name(&servers.primary_url, &name))
        .replica(with_application_name(&servers.primary_url, &name))
        .fallback_to_primary(false)
        .build()
        .unwrap();
    let error = pool.check().await.unwrap_err();
    assert!(matches!(error, Error::ReplicaIsPrimary { .. }), "{error}");
    assert!(error.to_string().contains("is not in recovery"), "{error}");

    let error = failed_replica_read(&pool).await;
    assert!(error.to_string().contains("is not in recovery"), "{error}");

    // Once the health probe has banned it, a read passes it over and still says why.
    let banned = tokio::time::timeout(Duration::from_secs(60), async {
        while pool.status().servers.iter().all(|server| server.healthy) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(banned.is_ok(), "the probe never banned the fake replica");
    let error = failed_replica_read(&pool).await;
    assert!(error.to_string().contains("1 banned"), "{error}");
    assert!(error.to_string().contains("is not in recovery"), "{error}");

    // With fallback on (the default) the read is served, by the real primary.
    let pool = RoutedPool::builder(&servers.primary_url)
        .replica(&servers.primary_url)
        .build()
        .unwrap();
    let mut conn = pool.get().await.unwrap();
    let id = with_read_replica(true, where_ran(&mut conn)).await;
    assert!(servers.is_primary(&id), "{id:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_that_is_really_a_standby_is_refused() {
    let servers = servers().await;
    let pool = RoutedPool::builder(&servers.replica_urls[0])
        .replicas(&servers.replica_urls)
        .build()
        .unwrap();
    let error = pool.check().await.unwrap_err();
    assert!(matches!(error, Error::PrimaryIsStandby { .. }), "{error}");

    let mut conn = pool.get().await.unwrap();
    let error = diesel::insert_into(products::table)
        .values((
            products::name.eq(unique("never")),
            products::price_cents.eq(1_i64),
        ))
        .execute(&mut conn)
        .await
        .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("configured as the primary but is in recovery"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_replica_falls_back_and_never_shows_its_password() {
    let servers = servers().await;
    let dead = closed_port_url("s3cr3t-pw");
    let pool = RoutedPool::builder(&servers.primary_url)
        .replica(&dead)
        .connect_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    assert!(!format!("{pool:?}").contains("s3cr3t-pw"));
    let mut conn = pool.get().await.unwrap();
    let id = with_read_replica(true, where_ran(&mut conn)).await;
    assert!(servers.is_primary(&id), "fell back to the primary: {id:?}");

    let pool = RoutedPool::builder(&servers.primary_url)
        .replica(&dead)
        .fallback_to_primary(false)
        .build()
        .unwrap();
    let error = failed_replica_read(&pool).await;
    let message = error.to_string();
    assert!(
        message.contains("no replica could serve the read"),
        "{message}"
    );
    // The routing error keeps its type inside diesel's error.
    match Error::from_diesel(&error) {
        Some(Error::NoReplicaAvailable {
            banned, failures, ..
        }) => assert_eq!(banned + failures.len(), 1, "{error}"),
        other => panic!("expected NoReplicaAvailable, got {other:?}"),
    }
    assert!(message.contains("postgres:***@127.0.0.1"), "{message}");
    assert!(!message.contains("s3cr3t-pw"), "{message}");
    let error = pool.check().await.unwrap_err();
    assert!(
        !format!("{error} {error:?}").contains("s3cr3t-pw"),
        "{error:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_primary_fails_writes_clearly_and_reads_still_work() {
    let servers = servers().await;
    let dead = closed_port_url("pw");
    let pool = RoutedPool::builder(&dead)
        .replicas(&servers.replica_urls)
        .connect_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let mut conn = pool.get().await.unwrap();
    let id = with_read_replica(true, where_ran(&mut conn)).await;
    assert!(servers.is_replica(&id), "{id:?}");
    let error = insert_product_error(&mut conn).await;
    assert!(
        error.starts_with("failed to check out a primary connection from postgres://postgres:***@"),
        "{error}"
    );
}

async fn insert_product_error(conn: &mut routing_core::RoutedConnection) -> String {
    diesel::insert_into(products::table)
        .values((
            products::name.eq(unique("x")),
            products::price_cents.eq(1_i64),
        ))
        .execute(conn)
        .await
        .unwrap_err()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_urls_and_settings_are_errors_at_build() {
    for (url, expected) in [
        ("", "invalid primary URL"),
        ("postgres://u:pw@host:notaport/db", "invalid primary URL"),
        ("not a url at all", "invalid primary URL"),
    ] {
        let error = RoutedPool::builder(url).build().unwrap_err();
        assert!(error.to_string().starts_with(expected), "{url}: {error}");
        assert!(!error.to_string().contains(":pw@"), "{error}");
    }
    let error = RoutedPool::builder("postgres://h/db")
        .replica("postgres://h:99999/db")
        .build()
        .unwrap_err();
    assert!(
        error.to_string().starts_with("invalid replica 0 URL"),
        "{error}"
    );
    let error = RoutedPool::builder("postgres://h/db")
        .max_size(0)
        .build()
        .unwrap_err();
    assert!(
        error.to_string().starts_with("invalid setting max_size"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_replicas_every_query_goes_to_the_primary() {
    let servers = servers().await;
    // The original design's rollback switch: replicas configured but ENABLE_READ_REPLICA=0.
    let primary = servers.primary_url.clone();
    let replicas = servers.replica_urls.join(",");
    let pool = routing_core::RoutedPoolBuilder::from_vars(|name| match name {
        "DATABASE_URL" => Some(primary.clone()),
        "ENABLE_READ_REPLICA" => Some("0".to_owned()),
        "DATABASE_READ_REPLICA_URL" => Some(replicas.clone()),
        _ => None,
    })
    .unwrap()
    .build()
    .unwrap();
    assert_eq!(pool.replica_count(), 0);
    let mut conn = pool.get().await.unwrap();
    let id = with_read_replica(true, where_ran(&mut conn)).await;
    assert!(servers.is_primary(&id), "{id:?}");
    let (_, writer) = insert_product(&mut conn, &unique("no_replica")).await;
    assert!(servers.is_primary(&writer));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_sessions_are_read_only_even_on_a_primary() {
    let servers = servers().await;
    let pool = RoutedPool::builder(&servers.primary_url)
        .replica(&servers.primary_url)
        .verify_roles(false)
        .retry_writes_refused_by_replica(false)
        .build()
        .unwrap();
    let mut conn = pool.get().await.unwrap();
    let read_only: String = with_read_replica(true, async {
        diesel::select(diesel::dsl::sql::<diesel::sql_types::Text>(
            "current_setting('default_transaction_read_only')",
        ))
        .get_result(&mut conn)
        .await
        .unwrap()
    })
    .await;
    assert_eq!(read_only, "on");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_in_every_form_stay_hidden_in_errors_debug_and_status() {
    let servers = servers().await;
    let closed = || {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let secrets = ["pa?ss/w0rd-one", "s3cr?t two", "hidden#three"];
    let replicas = [
        format!(
            "postgres://postgres:{}@127.0.0.1:{}/postgres",
            secrets[0],
            closed()
        ),
        format!(
            "host=127.0.0.1 port={} user=postgres password='{}' dbname=postgres",
            closed(),
            secrets[1]
        ),
        format!(
            "postgresql://127.0.0.1:{}/postgres?user=postgres&pass%77ord={}",
            closed(),
            secrets[2]
        ),
    ];
    let pool = RoutedPool::builder(&servers.primary_url)
        .replicas(&replicas)
        .connect_timeout(Duration::from_secs(2))
        .fallback_to_primary(false)
        .build()
        .unwrap();
    let read_error = failed_replica_read(&pool).await;
    let check_error = pool.check().await.unwrap_err();
    let texts = [
        format!("{pool:?}"),
        pool.status().to_string(),
        format!("{:?}", pool.status()),
        format!("{read_error} {read_error:?}"),
        format!("{check_error} {check_error:?}"),
    ];
    for text in &texts {
        for secret in secrets {
            assert!(!text.contains(secret), "{secret:?} shown in {text}");
        }
    }
    assert!(texts[1].contains("postgres:***@127.0.0.1"), "{}", texts[1]);
}
