//! Client certificates: a role the servers let in by its certificate only (`cert`
//! authentication) is served through the URL's `sslcert` and `sslkey`, by the async pool
//! (rustls) and the synchronous pool (libpq) alike, reads on replicas and writes on the primary;
//! without them it is refused, and files that cannot be used are clear errors.

use diesel::prelude::*;
use diesel::sql_types::{Bool, Text};
use diesel_async::{AsyncConnection, RunQueryDsl, SimpleAsyncConnection};
use routing_cluster::CERT_USER;
use routing_core::{RoutedConnection, RoutedPool, with_read_replica};
use routing_tests::unique;

/// Who a statement ran as, where, and whether its session is encrypted.
#[derive(Debug, QueryableByName)]
struct Ran {
    #[diesel(sql_type = Text)]
    who: String,
    #[diesel(sql_type = Bool)]
    in_recovery: bool,
    #[diesel(sql_type = Bool)]
    ssl: bool,
}

const READ: &str = "SELECT current_user::text AS who, pg_is_in_recovery() AS in_recovery, ssl \
                    FROM pg_stat_ssl WHERE pid = pg_backend_pid()";

const WRITE: &str = "INSERT INTO products (name, price_cents) VALUES ($1, 100) \
                     RETURNING current_user::text AS who, pg_is_in_recovery() AS in_recovery, \
                     (SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()) AS ssl";

/// The TLS cluster with [`CERT_USER`] created (and replayed on every replica), and that role's
/// URLs with its client certificate: the primary's, then the replicas'.
async fn cert_user_urls(test: &str) -> Option<(String, Vec<String>)> {
    let cluster = crate::tls::cluster(test).await?;
    let mut admin = RoutedConnection::establish(&cluster.primary_url())
        .await
        .expect("connect to the primary");
    admin
        .batch_execute(&format!(
            "DO $$ BEGIN CREATE ROLE {CERT_USER} LOGIN SUPERUSER; \
             EXCEPTION WHEN duplicate_object THEN NULL; END $$"
        ))
        .await
        .expect("create the certificate's role");
    let with_cert = |url: String| {
        cluster
            .with_client_cert(&url)
            .expect("the cluster's client certificate")
    };
    let primary = with_cert(cluster.primary_url());
    let replicas: Vec<String> = (0..cluster.replica_count())
        .map(|index| with_cert(cluster.replica_url(index)))
        .collect();
    cluster
        .wait_for_replicas()
        .await
        .expect("the replicas replay the role");
    Some((primary, replicas))
}

fn pool_builder(primary: &str, replicas: &[String]) -> routing_core::RoutedPoolBuilder {
    replicas
        .iter()
        .fold(RoutedPool::builder(primary), |builder, replica| {
            builder.replica(replica)
        })
        .max_size(2)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_logs_in_where_nothing_else_does() {
    let Some((primary, replicas)) =
        cert_user_urls("a_client_certificate_logs_in_where_nothing_else_does").await
    else {
        return;
    };
    let name = unique("client_cert");

    // The async pool: rustls presents the certificate.
    let pool = pool_builder(&primary, &replicas).build().unwrap();
    let mut conn = pool.get().await.unwrap();
    let read: Ran = with_read_replica(true, diesel::sql_query(READ).get_result(&mut conn))
        .await
        .unwrap();
    assert_eq!(
        (read.who.as_str(), read.in_recovery, read.ssl),
        (CERT_USER, true, true)
    );
    let wrote: Ran = diesel::sql_query(WRITE)
        .bind::<Text, _>(&name)
        .get_result(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        (wrote.who.as_str(), wrote.in_recovery, wrote.ssl),
        (CERT_USER, false, true)
    );
    drop(conn);

    // The synchronous pool: libpq presents it.
    let sync_pool = pool_builder(&primary, &replicas).build_sync().unwrap();
    let (read, wrote) = tokio::task::spawn_blocking(move || {
        let mut conn = sync_pool.get().unwrap();
        let read: Ran = routing_core::with_read_replica_sync(true, || {
            diesel::RunQueryDsl::get_result(diesel::sql_query(READ), &mut conn)
        })
        .unwrap();
        let write = diesel::sql_query(WRITE).bind::<Text, _>(format!("{name}_sync"));
        let wrote: Ran = diesel::RunQueryDsl::get_result(write, &mut conn).unwrap();
        (read, wrote)
    })
    .await
    .unwrap();
    assert_eq!(
        (read.who.as_str(), read.in_recovery, read.ssl),
        (CERT_USER, true, true)
    );
    assert_eq!(
        (wrote.who.as_str(), wrote.in_recovery, wrote.ssl),
        (CERT_USER, false, true)
    );

    // Without the certificate, the same role is refused by every server, by both pools.
    let without = |url: &str| {
        url.split('&')
            .filter(|pair| !pair.starts_with("sslcert=") && !pair.starts_with("sslkey="))
            .collect::<Vec<_>>()
            .join("&")
    };
    let error = RoutedConnection::establish(&without(&primary))
        .await
        .map(drop)
        .unwrap_err()
        .to_string();
    assert!(error.contains("certificate"), "{error}");
    let plain = without(&primary);
    let error = tokio::task::spawn_blocking(move || {
        let pool = RoutedPool::builder(&plain).build_sync().unwrap();
        let mut conn = pool.get().unwrap();
        diesel::RunQueryDsl::execute(diesel::sql_query("SELECT 1"), &mut conn)
            .unwrap_err()
            .to_string()
    })
    .await
    .unwrap();
    assert!(error.contains("certificate"), "{error}");

    // A key file that is not there is named in the error, before any server is asked.
    let missing = primary.replace("sslkey=", "sslkey=/nonexistent");
    let error = RoutedConnection::establish(&missing)
        .await
        .map(drop)
        .unwrap_err()
        .to_string();
    assert!(error.contains("sslkey /nonexistent"), "{error}");
    assert!(error.contains("no such file"), "{error}");
}
