//! PgBouncer in front of every server: each bouncer reaches its own server, in both pool modes,
//! with and without TLS, and goes away with the cluster, even when its owner is killed.

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use routing_cluster::{LocalCluster, PoolMode};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::{ClientConfig, RootCertStore};
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};
use tokio_postgres_rustls::MakeRustlsConnect;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Connects to `url`: plain, or over TLS trusting only `ca` (host names checked).
async fn connect(url: &str, ca: Option<&Path>) -> Result<Client, tokio_postgres::Error> {
    let Some(ca) = ca else {
        let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
        tokio::spawn(connection);
        return Ok(client);
    };
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("read the CA") {
        roots.add(cert.expect("a PEM certificate")).expect("a CA");
    }
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
    // tokio-postgres knows no verify-full: its `require` with a verifying connector is that.
    let base = url.split_once('?').map_or(url, |(base, _)| base);
    let (client, connection) = tokio_postgres::connect(
        &format!("{base}?sslmode=require"),
        MakeRustlsConnect::new(config),
    )
    .await?;
    tokio::spawn(connection);
    Ok(client)
}

/// Where a query through `url` ran, and whether the bouncer's server session is encrypted,
/// with the simple query protocol (fine in transaction mode).
async fn ran_on(url: &str, ca: Option<&Path>) -> Result<(bool, u16, bool), tokio_postgres::Error> {
    let client = connect(url, ca).await?;
    let messages = client
        .simple_query(
            "SELECT pg_is_in_recovery(), inet_server_port(), ssl \
             FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        )
        .await?;
    let row = messages
        .iter()
        .find_map(|message| match message {
            SimpleQueryMessage::Row(row) => Some(row),
            _ => None,
        })
        .expect("one row");
    let text = |index| row.get(index).expect("a value").to_owned();
    Ok((
        text(0) == "t",
        text(1).parse().expect("a port"),
        text(2) == "t",
    ))
}

/// The port of a `postgres://user@host:PORT/...` URL.
fn port_of(url: &str) -> u16 {
    url.split_once('@')
        .and_then(|(_, rest)| rest.split('/').next())
        .and_then(|host_port| host_port.rsplit_once(':'))
        .and_then(|(_, port)| port.parse().ok())
        .unwrap_or_else(|| panic!("no port in {url}"))
}

/// Whether something accepts TCP connections on `port`.
fn port_open(port: u16) -> bool {
    TcpStream::connect_timeout(&(Ipv4Addr::LOCALHOST, port).into(), Duration::from_secs(1)).is_ok()
}

/// Checks that every bouncer of `cluster` reaches its own server, then drops the cluster and
/// checks that the bouncers are gone.
async fn each_bouncer_reaches_its_server(cluster: LocalCluster) -> TestResult {
    let ca = cluster.ca_cert_path().map(Path::to_path_buf);
    let primary = cluster.bouncer_primary_url().expect("a primary bouncer");
    let replicas = cluster.bouncer_replica_urls();
    assert_eq!(replicas.len(), cluster.replica_count());
    assert_ne!(
        primary,
        cluster.primary_url(),
        "the direct URL stays separate"
    );

    let (standby, port, ssl) = ran_on(&primary, ca.as_deref()).await?;
    assert!(!standby, "the primary's bouncer reached a standby");
    assert_eq!(port, cluster.primary_port());
    assert_eq!(ssl, cluster.tls_enabled());
    for (index, url) in replicas.iter().enumerate() {
        let (standby, port, ssl) = ran_on(url, ca.as_deref()).await?;
        assert!(standby, "replica {index}'s bouncer reached a primary");
        assert_eq!(port, cluster.replica_port(index));
        assert_eq!(ssl, cluster.tls_enabled());
    }
    // The direct URLs still work.
    let direct: bool = connect(&cluster.replica_url(0), ca.as_deref())
        .await?
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await?
        .get(0);
    assert!(direct);

    let ports: Vec<u16> = std::iter::once(&primary)
        .chain(&replicas)
        .map(|url| port_of(url))
        .collect();
    drop(cluster);
    for port in ports {
        assert!(!port_open(port), "bouncer port {port} still open");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn session_bouncers_reach_their_own_servers() -> TestResult {
    let cluster = LocalCluster::builder()
        .pgbouncer(PoolMode::Session)
        .start()
        .await?;
    assert_eq!(cluster.pool_mode(), Some(PoolMode::Session));
    assert!(
        cluster
            .bouncer_primary_url()
            .is_some_and(|url| url.starts_with("postgres://postgres@127.0.0.1:"))
    );
    each_bouncer_reaches_its_server(cluster).await
}

#[tokio::test(flavor = "multi_thread")]
async fn transaction_bouncers_over_tls_reach_their_own_servers() -> TestResult {
    let cluster = LocalCluster::builder()
        .replicas(1)
        .tls(true)
        .pgbouncer(PoolMode::Transaction)
        .start()
        .await?;
    assert_eq!(cluster.pool_mode(), Some(PoolMode::Transaction));
    // Clients must use TLS with the bouncers too.
    let bouncer = cluster.bouncer_primary_url().expect("a bouncer");
    let plain = format!(
        "postgres://postgres@127.0.0.1:{}/postgres",
        port_of(&bouncer)
    );
    let refused = tokio_postgres::connect(&plain, NoTls).await;
    assert!(
        refused.is_err(),
        "a plain login through the bouncer was accepted"
    );
    each_bouncer_reaches_its_server(cluster).await
}

#[tokio::test]
async fn a_cluster_without_bouncers_has_no_bouncer_urls() -> TestResult {
    let cluster = LocalCluster::builder().replicas(0).start().await?;
    assert_eq!(cluster.pool_mode(), None);
    assert_eq!(cluster.bouncer_primary_url(), None);
    assert!(cluster.bouncer_replica_urls().is_empty());
    Ok(())
}

#[test]
fn killed_local_cluster_leaves_no_bouncer_behind() -> TestResult {
    let mut child = Command::new(env!("CARGO_BIN_EXE_local-cluster"))
        .args(["0", "--pgbouncer", "session"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut bouncer_port = None;
    let stdout = BufReader::new(child.stdout.take().expect("stdout"));
    for line in stdout.lines() {
        let line = line?;
        if let Some(url) = line.strip_prefix("export PGBOUNCER_DATABASE_URL=") {
            bouncer_port = Some(port_of(url));
            break;
        }
    }
    let mut data_dir = None;
    let stderr = BufReader::new(child.stderr.take().expect("stderr"));
    for line in stderr.lines() {
        let line = line?;
        if let Some(rest) = line.strip_prefix("cluster up in ") {
            data_dir = rest.split(';').next().map(PathBuf::from);
            break;
        }
    }
    let (Some(port), Some(dir)) = (bouncer_port, data_dir) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("local-cluster did not print its bouncer URL and directory");
    };
    assert!(port_open(port), "the bouncer does not listen");

    // SIGKILL: no destructor runs, the watchdog cleans up.
    child.kill()?;
    child.wait()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while (port_open(port) || dir.exists()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!port_open(port), "bouncer port {port} still open");
    assert!(!dir.exists(), "{} still exists", dir.display());
    Ok(())
}
