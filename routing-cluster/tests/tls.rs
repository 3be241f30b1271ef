//! A TLS-only cluster: verify-full logins work on every server and are encrypted, plain TCP
//! logins and an untrusted CA are refused; with `tls_only(false)`, plain TCP stays open beside
//! TLS.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;

use routing_cluster::LocalCluster;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::{ClientConfig, RootCertStore};
use tokio_postgres::{Client, NoTls};
use tokio_postgres_rustls::MakeRustlsConnect;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// A connector that trusts only the CA in `ca` and checks host names.
fn trusting(ca: &Path) -> MakeRustlsConnect {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("read the CA") {
        roots.add(cert.expect("a PEM certificate")).expect("a CA");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    MakeRustlsConnect::new(config)
}

/// `url` in the form tokio-postgres parses: its own `sslmode=require` (the connector verifies
/// the chain and the host name) instead of `verify-full` and `sslrootcert`.
fn for_tokio_postgres(url: &str) -> String {
    let base = url.split_once('?').map_or(url, |(base, _)| base);
    format!("{base}?sslmode=require")
}

/// Connects over TLS, trusting `ca`.
async fn connect(url: &str, ca: &Path) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) =
        tokio_postgres::connect(&for_tokio_postgres(url), trusting(ca)).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// The error with all its causes.
fn full_message(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(inner) = cause {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        cause = inner.source();
    }
    text
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_cluster_takes_verified_tls_logins_only() -> TestResult {
    let cluster = LocalCluster::builder().tls(true).start().await?;
    assert!(cluster.tls_enabled());
    let ca = cluster
        .ca_cert_path()
        .expect("a CA with TLS on")
        .to_path_buf();
    assert_eq!(
        std::fs::read_to_string(&ca)?,
        cluster.ca_cert_pem().expect("the CA's PEM")
    );
    assert_eq!(
        cluster.primary_url(),
        format!(
            "postgres://postgres@localhost:{}/postgres?sslmode=verify-full&sslrootcert={}",
            cluster.primary_port(),
            ca.display()
        )
    );

    // The key is the server user's, readable by it alone.
    let key = std::fs::metadata(cluster.data_dir().join("primary/server.key"))?;
    assert_eq!(key.mode() & 0o777, 0o600);
    let data_dir = std::fs::metadata(cluster.data_dir().join("primary"))?;
    assert_eq!(key.uid(), data_dir.uid());

    // Every server: verified TLS, by host name and by IP address.
    let servers: Vec<(String, u16, bool)> =
        std::iter::once((cluster.primary_url(), cluster.primary_port(), false))
            .chain(
                (0..cluster.replica_count())
                    .map(|i| (cluster.replica_url(i), cluster.replica_port(i), true)),
            )
            .collect();
    for (url, port, standby) in &servers {
        let row = connect(url, &ca)
            .await?
            .query_one(
                "SELECT ssl, pg_is_in_recovery(), inet_server_port() \
                 FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await?;
        assert!(row.get::<_, bool>(0), "{url}: not encrypted");
        assert_eq!(row.get::<_, bool>(1), *standby, "{url}");
        assert_eq!(row.get::<_, i32>(2), i32::from(*port), "{url}");

        let by_ip = url.replace("@localhost:", "@127.0.0.1:");
        let ssl: bool = connect(&by_ip, &ca)
            .await?
            .query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await?
            .get(0);
        assert!(ssl, "{by_ip}: not encrypted");

        // Plain TCP is refused by the server itself.
        let plain = format!("postgres://postgres@127.0.0.1:{port}/postgres");
        let Err(err) = tokio_postgres::connect(&plain, NoTls).await else {
            panic!("a plain TCP login to {port} was accepted");
        };
        let message = full_message(&err);
        assert!(
            message.contains("pg_hba.conf rejects connection") && message.contains("no encryption"),
            "{message}"
        );

        // A CA that signed nothing is not trusted.
        let wrong = cluster.wrong_ca_cert_path().expect("a wrong CA");
        let Err(err) = connect(url, wrong).await else {
            panic!("{url} was trusted with a CA that signed nothing");
        };
        let message = full_message(&err);
        assert!(message.contains("UnknownIssuer"), "{message}");
    }

    // Replication runs over TLS too.
    let replication_ssl: i64 = connect(&cluster.primary_url(), &ca)
        .await?
        .query_one(
            "SELECT count(*) FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid) \
             WHERE s.ssl AND r.state = 'streaming'",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(replication_ssl, 2);

    // The fault controls and waits still work, over TLS.
    connect(&cluster.primary_url(), &ca)
        .await?
        .batch_execute("CREATE TABLE items (id int)")
        .await?;
    cluster.wait_for_replicas().await?;
    cluster.stop_replica(0).await?;
    cluster.start_replica(0).await?;
    cluster.pause_replay(1).await?;
    cluster.resume_replay(1).await?;

    let dir = cluster.data_dir().to_path_buf();
    cluster.stop()?;
    assert!(!dir.exists(), "{} still exists", dir.display());
    Ok(())
}

#[tokio::test]
async fn urls_without_tls_stay_plain() -> TestResult {
    let cluster = LocalCluster::builder().replicas(0).start().await?;
    assert!(!cluster.tls_enabled());
    assert_eq!(cluster.ca_cert_path(), None);
    assert_eq!(cluster.wrong_ca_cert_path(), None);
    assert_eq!(
        cluster.primary_url(),
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres",
            cluster.primary_port()
        )
    );
    let (client, connection) = tokio_postgres::connect(&cluster.primary_url(), NoTls).await?;
    tokio::spawn(connection);
    let ssl: bool = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await?
        .get(0);
    assert!(!ssl);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_only_false_keeps_plain_tcp_open_beside_tls() -> TestResult {
    let cluster = LocalCluster::builder()
        .replicas(1)
        .tls(true)
        .tls_only(false)
        .start()
        .await?;
    let ca = cluster.ca_cert_path().expect("a CA");
    for url in [cluster.primary_url(), cluster.replica_url(0)] {
        let encrypted: bool = connect(&url, ca)
            .await?
            .query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await?
            .try_get(0)?;
        assert!(encrypted, "{url}");
        let base = url.split_once('?').map_or(url.as_str(), |(base, _)| base);
        let (plain, connection) =
            tokio_postgres::connect(&format!("{base}?sslmode=disable"), NoTls).await?;
        tokio::spawn(connection);
        let encrypted: bool = plain
            .query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await?
            .try_get(0)?;
        assert!(!encrypted, "{url} without TLS");
    }
    Ok(())
}
