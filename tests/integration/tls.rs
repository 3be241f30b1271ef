//! TLS: against a cluster that refuses plain TCP logins, every connection the router makes is
//! encrypted and verified as the URL's `sslmode` says, and refusals are clear.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use diesel::prelude::*;
use diesel::sql_types::{Bool, Integer, Text};
use diesel_async::{RunQueryDsl, SimpleAsyncConnection};
use routing_cluster::LocalCluster;
use routing_core::rustls::pki_types::CertificateDer;
use routing_core::rustls::pki_types::pem::PemObject;
use routing_core::rustls::{self, ClientConfig, RootCertStore};
use routing_core::{
    ConnectError, Error, Migrator, RoutedConnection, RoutedPool, RoutedPoolBuilder, TlsError,
    with_read_replica,
};
use routing_tests::{unique, with_application_name};
use tokio::sync::OnceCell;

/// Where a statement ran and whether its session is encrypted, from the statement's own columns.
#[derive(Debug, QueryableByName)]
pub(crate) struct Ran {
    #[diesel(sql_type = Bool)]
    pub(crate) in_recovery: bool,
    #[diesel(sql_type = Integer)]
    pub(crate) port: i32,
    #[diesel(sql_type = Bool)]
    pub(crate) ssl: bool,
}

pub(crate) const READ: &str = "SELECT pg_is_in_recovery() AS in_recovery, inet_server_port() AS port, ssl \
                    FROM pg_stat_ssl WHERE pid = pg_backend_pid()";

pub(crate) const WRITE: &str = "INSERT INTO products (name, price_cents) VALUES ($1, 100) \
                     RETURNING pg_is_in_recovery() AS in_recovery, inet_server_port() AS port, \
                     (SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()) AS ssl";

/// The password put in URLs, which must never show in an error (the servers trust every login).
const PASSWORD: &str = "tls-topsecret";

/// The TLS-only cluster of this test process, migrated over verify-full; `None` (the test
/// skips) on external servers.
pub(crate) async fn cluster(test: &str) -> Option<&'static LocalCluster> {
    static CLUSTER: OnceCell<LocalCluster> = OnceCell::const_new();
    routing_tests::servers().await.local(test)?;
    let cluster = CLUSTER
        .get_or_init(|| async {
            let cluster = LocalCluster::builder()
                .tls(true)
                .start()
                .await
                .expect("start a TLS-only cluster");
            let mut migrator = Migrator::connect(&cluster.primary_url())
                .await
                .expect("connect the migrator with verify-full");
            migrator
                .run_pending(routing_fixtures::MIGRATIONS)
                .await
                .expect("migrate over TLS");
            cluster
                .wait_for_replicas()
                .await
                .expect("replicas catch up");
            cluster
        })
        .await;
    Some(cluster)
}

/// `url` with the query string `query` instead of its own, and `user:password@` as user info.
fn with_query(url: &str, query: &str) -> String {
    let base = url.split_once('?').map_or(url, |(base, _)| base);
    let base = base.replacen("postgres@", &format!("postgres:{PASSWORD}@"), 1);
    if query.is_empty() {
        base
    } else {
        format!("{base}?{query}")
    }
}

/// `url` (which has a query) with its host replaced by `host`, still connecting to 127.0.0.1
/// (`hostaddr`).
fn with_host(url: &str, host: &str) -> String {
    let url = url.replacen("@localhost:", &format!("@{host}:"), 1);
    format!("{url}&hostaddr=127.0.0.1")
}

/// The CA file as a `sslrootcert` query value.
pub(crate) fn root_cert(path: &Path) -> String {
    format!("sslrootcert={}", path.display())
}

/// A pool over the cluster whose URLs all carry `query`.
pub(crate) fn builder(cluster: &LocalCluster, query: &str, name: &str) -> RoutedPoolBuilder {
    RoutedPool::builder(with_application_name(
        &with_query(&cluster.primary_url(), query),
        name,
    ))
    .replicas(
        cluster
            .replica_urls()
            .iter()
            .map(|url| with_application_name(&with_query(url, query), name)),
    )
    .retry_writes_refused_by_replica(false)
}

async fn read(conn: &mut RoutedConnection) -> Ran {
    with_read_replica(true, diesel::sql_query(READ).get_result::<Ran>(conn))
        .await
        .expect("a read in a replica scope")
}

/// The error of a refused `pool.check()` and its message with every cause, after checking that
/// no password shows.
async fn refused(pool: &RoutedPool) -> (Error, String) {
    let error = pool.check().await.expect_err("the servers are refused");
    let mut message = error.to_string();
    let mut cause = std::error::Error::source(&error);
    while let Some(inner) = cause {
        message.push_str(": ");
        message.push_str(&inner.to_string());
        cause = inner.source();
    }
    assert!(!message.contains(PASSWORD), "{message}");
    assert!(!format!("{error:?}").contains(PASSWORD), "{error:?}");
    (error, message)
}

fn tls_error(error: &Error) -> &TlsError {
    match error {
        Error::Connect {
            source: ConnectError::Tls(tls),
            ..
        } => tls,
        other => panic!("expected a TLS error, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_reads_on_replicas_and_writes_on_the_primary_all_encrypted() {
    let Some(cluster) = cluster("verify_full_reads_on_replicas").await else {
        return;
    };
    let ca = cluster.ca_cert_path().unwrap();
    let pool = builder(
        cluster,
        &format!("sslmode=verify-full&{}", root_cert(ca)),
        &unique("tls_verify_full"),
    )
    .build()
    .unwrap();
    pool.check().await.expect("every server passes verify-full");

    let replica_ports: HashSet<i32> = (0..cluster.replica_count())
        .map(|index| i32::from(cluster.replica_port(index)))
        .collect();
    let mut seen = HashSet::new();
    for _ in 0..20 {
        // A connection keeps the replica it first read from: the next one takes the next.
        let mut conn = pool.get().await.unwrap();
        let ran = read(&mut conn).await;
        assert!(
            ran.in_recovery,
            "a replica-scope read ran on the primary: {ran:?}"
        );
        assert!(ran.ssl, "a replica session is not encrypted: {ran:?}");
        seen.insert(ran.port);
        if seen == replica_ports {
            break;
        }
    }
    assert_eq!(seen, replica_ports, "every replica served a read");

    let mut conn = pool.get().await.unwrap();
    let ran = diesel::sql_query(WRITE)
        .bind::<Text, _>(unique("tls_product"))
        .get_result::<Ran>(&mut conn)
        .await
        .unwrap();
    assert!(!ran.in_recovery, "the write ran on a standby: {ran:?}");
    assert_eq!(ran.port, i32::from(cluster.primary_port()));
    assert!(ran.ssl, "the primary session is not encrypted: {ran:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_ca_is_refused_clearly() {
    let Some(cluster) = cluster("a_wrong_ca_is_refused_clearly").await else {
        return;
    };
    let wrong = cluster.wrong_ca_cert_path().unwrap();
    for mode in ["verify-full", "verify-ca", "require"] {
        let query = format!("sslmode={mode}&{}", root_cert(wrong));
        let pool = builder(cluster, &query, &unique("tls_wrong_ca"))
            .build()
            .unwrap();
        let (error, message) = refused(&pool).await;
        assert!(
            matches!(tls_error(&error), TlsError::UntrustedCertificate { .. }),
            "{mode}: {message}"
        );
        assert!(
            message.contains(&format!(
                "the server's certificate is not signed by the CA in sslrootcert {}",
                wrong.display()
            )),
            "{mode}: {message}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_name_the_certificate_does_not_name_is_refused() {
    let Some(cluster) = cluster("a_host_name_the_certificate_does_not_name").await else {
        return;
    };
    let ca = cluster.ca_cert_path().unwrap();
    // The certificate names localhost, 127.0.0.1 and ::1; 127.0.0.2 is loopback too, but not
    // named. The connections still go to 127.0.0.1.
    let url = |mode: &str| {
        with_host(
            &with_query(
                &cluster.primary_url(),
                &format!("sslmode={mode}&{}", root_cert(ca)),
            ),
            "127.0.0.2",
        )
    };
    let pool = RoutedPool::builder(url("verify-full")).build().unwrap();
    let (error, message) = refused(&pool).await;
    assert!(
        matches!(tls_error(&error), TlsError::WrongHost { host } if host == "127.0.0.2"),
        "{message}"
    );
    assert!(
        message.contains("the server's certificate is not valid for host 127.0.0.2"),
        "{message}"
    );

    // verify-ca checks the chain only.
    let pool = RoutedPool::builder(url("verify-ca")).build().unwrap();
    pool.check().await.expect("verify-ca accepts any host name");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_without_sslrootcert_encrypts_without_verifying() {
    let Some(cluster) = cluster("require_without_sslrootcert").await else {
        return;
    };
    // Neither the CA nor the host name could be verified.
    let primary = with_host(
        &with_query(&cluster.primary_url(), "sslmode=require"),
        "127.0.0.2",
    );
    let replica = with_host(
        &with_query(&cluster.replica_url(0), "sslmode=require"),
        "127.0.0.2",
    );
    let pool = RoutedPool::builder(primary)
        .replica(replica)
        .build()
        .unwrap();
    pool.check().await.expect("require does not verify");
    let mut conn = pool.get().await.unwrap();
    let ran = read(&mut conn).await;
    assert!(ran.in_recovery && ran.ssl, "{ran:?}");

    // prefer (libpq's default, no sslmode at all) takes the TLS the server offers.
    let pool = RoutedPool::builder(with_query(&cluster.primary_url(), ""))
        .build()
        .unwrap();
    let mut conn = pool.get().await.unwrap();
    let ran = diesel::sql_query(READ)
        .get_result::<Ran>(&mut conn)
        .await
        .unwrap();
    assert!(!ran.in_recovery && ran.ssl, "{ran:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslmode_disable_is_refused_by_a_tls_only_server() {
    let Some(cluster) = cluster("sslmode_disable_is_refused").await else {
        return;
    };
    let pool = builder(cluster, "sslmode=disable", &unique("tls_disable"))
        .build()
        .unwrap();
    let (error, message) = refused(&pool).await;
    assert!(
        matches!(
            error,
            Error::Connect {
                source: ConnectError::Connect(_),
                ..
            }
        ),
        "{message}"
    );
    assert!(
        message.contains("pg_hba.conf rejects connection") && message.contains("no encryption"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_against_a_server_without_tls_is_refused_clearly() {
    let servers = routing_tests::servers().await;
    // The process's shared cluster has no TLS; external servers may have it.
    if servers
        .local("require_against_a_server_without_tls")
        .is_none()
    {
        return;
    }
    let url = with_query(&servers.primary_url, "sslmode=require");
    let pool = RoutedPool::builder(url).build().unwrap();
    let (error, message) = refused(&pool).await;
    assert!(
        matches!(tls_error(&error), TlsError::NotOffered { mode: "require" }),
        "{message}"
    );
    assert!(
        message.contains(
            "the server does not accept TLS connections, and sslmode=require requires TLS"
        ),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_files_that_cannot_be_used_are_clear_errors() {
    let Some(cluster) = cluster("tls_files_that_cannot_be_used").await else {
        return;
    };
    let pool = builder(
        cluster,
        "sslmode=verify-full&sslrootcert=/nonexistent/ca.crt",
        &unique("tls_missing_root"),
    )
    .build()
    .unwrap();
    let (error, message) = refused(&pool).await;
    assert!(
        matches!(tls_error(&error), TlsError::RootCertNotFound { .. }),
        "{message}"
    );
    assert!(
        message.contains("sslrootcert /nonexistent/ca.crt: no such file"),
        "{message}"
    );

    // Without sslrootcert, verify-full trusts the system's roots, which did not sign it.
    let pool = builder(cluster, "sslmode=verify-full", &unique("tls_system_roots"))
        .build()
        .unwrap();
    let (error, message) = refused(&pool).await;
    assert!(
        matches!(
            tls_error(&error),
            TlsError::UntrustedCertificate { .. } | TlsError::NoSystemRoots { .. }
        ),
        "{message}"
    );
    assert!(message.contains("system's root certificates"), "{message}");

    let error = RoutedPool::builder(with_query(&cluster.primary_url(), "sslmode=allow"))
        .build()
        .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("invalid sslmode \"allow\": expected disable, prefer, require"),
        "{error}"
    );
    assert!(!error.to_string().contains(PASSWORD), "{error}");
}

/// A client configuration that trusts only the CA in `ca` and checks host names.
fn trusting(ca: &Path) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_tls_config_is_used_by_every_connection() {
    let Some(cluster) = cluster("a_pool_tls_config").await else {
        return;
    };
    // The URLs ask for TLS but name no CA: the configuration decides what is trusted.
    let good = trusting(cluster.ca_cert_path().unwrap());
    let pool = builder(cluster, "sslmode=require", &unique("tls_custom"))
        .tls_config(good.clone())
        .build()
        .unwrap();
    pool.check().await.expect("the configuration trusts the CA");
    let mut conn = pool.get().await.unwrap();
    let ran = read(&mut conn).await;
    assert!(ran.in_recovery && ran.ssl, "{ran:?}");
    let applied = pool
        .run_pending_migrations(routing_fixtures::MIGRATIONS)
        .await
        .unwrap();
    assert!(applied.is_empty(), "migrated already: {applied:?}");

    let wrong = trusting(cluster.wrong_ca_cert_path().unwrap());
    let pool = builder(cluster, "sslmode=require", &unique("tls_custom_wrong"))
        .tls_config(wrong.clone())
        .build()
        .unwrap();
    let (error, message) = refused(&pool).await;
    assert!(
        message.contains(
            "the server's certificate is not signed by a CA the pool's rustls::ClientConfig trusts"
        ),
        "{message}"
    );
    assert!(matches!(
        tls_error(&error),
        TlsError::UntrustedCertificate { .. }
    ));
    // Migrations through the pool connect with its configuration too.
    let error = pool
        .run_pending_migrations(routing_fixtures::MIGRATIONS)
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("rustls::ClientConfig trusts"),
        "{error}"
    );

    let url = with_query(&cluster.primary_url(), "sslmode=require");
    Migrator::connect_with_tls_config(&url, good).await.unwrap();
    let error = Migrator::connect_with_tls_config(&url, wrong)
        .await
        .unwrap_err();
    assert!(error.to_string().contains("is not signed by"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_migrate_migrates_over_tls() {
    let Some(cluster) = cluster("routing_migrate_migrates_over_tls").await else {
        return;
    };
    let database = unique("tls_migrate");
    let admin = RoutedPool::builder(cluster.primary_url()).build().unwrap();
    let mut conn = admin.get().await.unwrap();
    conn.batch_execute(&format!("CREATE DATABASE {database}"))
        .await
        .unwrap();
    let url = cluster
        .primary_url()
        .replacen("/postgres?", &format!("/{database}?"), 1);
    assert!(url.contains("sslmode=verify-full"), "{url}");
    let migration_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../migrations");

    let (mut out, mut err) = (Vec::new(), Vec::new());
    let no_variables = |_: &str| None;
    let code = routing_migrate::run_cli(
        [
            "routing-migrate",
            "--database-url",
            &url,
            "--migration-dir",
            migration_dir,
            "run",
        ],
        &no_variables,
        &mut out,
        &mut err,
    )
    .await;
    let (out, err) = (String::from_utf8_lossy(&out), String::from_utf8_lossy(&err));
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert!(
        out.contains("applied 2026-11-26-000001_create_catalog"),
        "{out}"
    );

    let mut migrator = Migrator::connect(&url).await.unwrap();
    assert_eq!(migrator.applied().await.unwrap(), ["20261126000001"]);
    drop(migrator);
    conn.batch_execute(&format!("DROP DATABASE {database}"))
        .await
        .unwrap();
}
