//! Starts real clusters and checks every control by asking the servers.

use std::net::{Ipv4Addr, TcpStream};
use std::time::{Duration, Instant};

use routing_cluster::{ClusterError, LocalCluster, shared};
use tokio_postgres::{Client, NoTls};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Connects to `url`, driving the connection on the current runtime.
async fn connect(url: &str) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// Runs `sql` on a fresh connection and reads the single value it returns.
async fn value<T>(url: &str, sql: &str) -> Result<T, tokio_postgres::Error>
where
    T: for<'a> tokio_postgres::types::FromSql<'a>,
{
    connect(url).await?.query_one(sql, &[]).await?.try_get(0)
}

/// The number of rows in the test table as seen at `url`.
async fn rows(url: &str) -> Result<i64, tokio_postgres::Error> {
    value(url, "SELECT count(*) FROM items").await
}

/// Inserts one row on the primary.
async fn insert(cluster: &LocalCluster) -> Result<(), tokio_postgres::Error> {
    connect(&cluster.primary_url())
        .await?
        .execute("INSERT INTO items DEFAULT VALUES", &[])
        .await?;
    Ok(())
}

/// Whether something accepts TCP connections on `port`.
fn port_open(port: u16) -> bool {
    TcpStream::connect_timeout(&(Ipv4Addr::LOCALHOST, port).into(), Duration::from_secs(1)).is_ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn cluster_replicates_and_obeys_fault_controls() -> TestResult {
    let began = Instant::now();
    let cluster = LocalCluster::start().await?;
    eprintln!("cluster started in {:?}: {cluster:?}", began.elapsed());
    assert_eq!(cluster.replica_count(), 2);
    assert_eq!(
        cluster.primary_url(),
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres",
            cluster.primary_port()
        )
    );
    assert_eq!(cluster.replica_urls()[1], cluster.replica_url(1));

    // Roles.
    assert!(!value::<bool>(&cluster.primary_url(), "SELECT pg_is_in_recovery()").await?);
    for url in cluster.replica_urls() {
        assert!(value::<bool>(&url, "SELECT pg_is_in_recovery()").await?);
    }

    // Replication.
    connect(&cluster.primary_url())
        .await?
        .batch_execute("CREATE TABLE items (id serial PRIMARY KEY)")
        .await?;
    insert(&cluster).await?;
    cluster.wait_for_replicas().await?;
    for url in cluster.replica_urls() {
        assert_eq!(rows(&url).await?, 1);
    }

    // Paused replay: replica 0 lags, replica 1 does not.
    cluster.pause_replay(0).await?;
    insert(&cluster).await?;
    cluster.wait_for_replicas().await?;
    assert_eq!(rows(&cluster.replica_url(1)).await?, 2);
    assert_eq!(rows(&cluster.replica_url(0)).await?, 1);
    assert!(cluster.replica_lag_bytes(0).await? > 0);
    assert_eq!(cluster.replica_lag_bytes(1).await?, 0);
    cluster.resume_replay(0).await?;
    cluster.wait_for_replicas().await?;
    assert_eq!(rows(&cluster.replica_url(0)).await?, 2);
    assert_eq!(cluster.replica_lag_bytes(0).await?, 0);

    // Stop and start again.
    cluster.stop_replica(0).await?;
    assert!(connect(&cluster.replica_url(0)).await.is_err());
    assert!(matches!(
        cluster.pause_replay(0).await,
        Err(ClusterError::ReplicaUnavailable { index: 0, .. })
    ));
    insert(&cluster).await?;
    cluster.start_replica(0).await?;
    let receiver: String = value(
        &cluster.replica_url(0),
        "SELECT status FROM pg_stat_wal_receiver",
    )
    .await?;
    assert_eq!(receiver, "streaming");
    cluster.wait_for_replicas().await?;
    assert_eq!(rows(&cluster.replica_url(0)).await?, 3);

    // Crash and start again.
    cluster.kill_replica(1).await?;
    assert!(connect(&cluster.replica_url(1)).await.is_err());
    cluster.start_replica(1).await?;
    cluster.wait_for_replicas().await?;
    assert_eq!(rows(&cluster.replica_url(1)).await?, 3);

    // Frozen: connections hang until thawed.
    cluster.freeze_replica(1).await?;
    let frozen = tokio::time::timeout(Duration::from_secs(1), rows(&cluster.replica_url(1))).await;
    assert!(frozen.is_err(), "a frozen replica answered: {frozen:?}");
    cluster.thaw_replica(1).await?;
    let thawed = tokio::time::timeout(Duration::from_secs(5), rows(&cluster.replica_url(1))).await;
    assert_eq!(thawed??, 3);

    // Bad indexes are errors, not panics.
    assert!(matches!(
        cluster.stop_replica(2).await,
        Err(ClusterError::NoSuchReplica { index: 2, count: 2 })
    ));
    assert!(matches!(
        cluster.replica_lag_bytes(7).await,
        Err(ClusterError::NoSuchReplica { index: 7, .. })
    ));

    // Dropping removes everything.
    let dir = cluster.data_dir().to_path_buf();
    let ports: Vec<u16> = std::iter::once(cluster.primary_port())
        .chain((0..cluster.replica_count()).map(|index| cluster.replica_port(index)))
        .collect();
    let began = Instant::now();
    drop(cluster);
    eprintln!("cluster dropped in {:?}", began.elapsed());
    assert!(!dir.exists(), "{} still exists", dir.display());
    for port in ports {
        assert!(!port_open(port), "port {port} still accepts connections");
    }
    Ok(())
}

#[test]
fn drop_cleans_up_when_a_test_panics() {
    let (sender, receiver) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let cluster = LocalCluster::builder()
                .replicas(0)
                .start()
                .await
                .expect("cluster starts");
            sender
                .send((cluster.data_dir().to_path_buf(), cluster.primary_port()))
                .expect("send");
            panic!("deliberate panic with a running cluster");
        });
    });
    assert!(thread.join().is_err(), "the thread should have panicked");
    let (dir, port) = receiver.recv().expect("the cluster started");
    assert!(!dir.exists(), "{} still exists", dir.display());
    assert!(!port_open(port), "port {port} still accepts connections");
}

#[tokio::test(flavor = "multi_thread")]
async fn shared_cluster_is_one_per_process() -> TestResult {
    let first = shared().await?;
    // Another runtime, as another #[tokio::test] would have.
    let from_other_runtime = std::thread::spawn(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(async {
                let cluster = shared().await?;
                cluster.wait_for_replicas().await?;
                Ok::<_, ClusterError>(cluster as *const LocalCluster as usize)
            })
    })
    .join()
    .expect("no panic")?;
    let second = shared().await?;
    assert!(std::ptr::eq(first, second));
    assert_eq!(from_other_runtime, first as *const LocalCluster as usize);
    // The other runtime is gone; controls still work here.
    assert_eq!(second.replica_lag_bytes(0).await?, 0);
    assert!(!value::<bool>(&second.primary_url(), "SELECT pg_is_in_recovery()").await?);
    Ok(())
}

#[tokio::test]
async fn missing_binaries_are_a_clear_error() {
    let empty = tempfile::tempdir().expect("temp dir");
    let err = LocalCluster::builder()
        .bin_dir(empty.path())
        .start()
        .await
        .expect_err("no binaries there");
    assert!(matches!(err, ClusterError::BinariesNotFound { .. }));
    assert!(
        err.to_string().contains("apt-get install postgresql"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn password_auth_checks_every_role_but_postgres() -> TestResult {
    let cluster = LocalCluster::builder()
        .replicas(1)
        .password_auth(true)
        .start()
        .await?;
    let admin = connect(&cluster.primary_url()).await?;
    admin
        .batch_execute("CREATE ROLE rotating LOGIN PASSWORD 'first'")
        .await?;
    cluster.wait_for_replicas().await?;
    let as_rotating = |url: String, password: &str| {
        url.replacen("postgres@", &format!("rotating:{password}@"), 1)
    };
    for url in [cluster.primary_url(), cluster.replica_url(0)] {
        let who: String = value(
            &as_rotating(url.clone(), "first"),
            "SELECT current_user::text",
        )
        .await?;
        assert_eq!(who, "rotating");
        let refused = connect(&as_rotating(url.clone(), "wrong"))
            .await
            .unwrap_err();
        let message = refused.as_db_error().map(|e| e.message().to_owned());
        assert!(
            message
                .as_deref()
                .is_some_and(|m| m.contains("password authentication failed")),
            "{refused:?}"
        );
        let refused = connect(&url.replacen("postgres@", "rotating@", 1)).await;
        assert!(refused.is_err(), "a login without a password was accepted");
    }
    admin
        .batch_execute("ALTER ROLE rotating PASSWORD 'second'")
        .await?;
    cluster.wait_for_replicas().await?;
    for url in [cluster.primary_url(), cluster.replica_url(0)] {
        assert!(connect(&as_rotating(url.clone(), "first")).await.is_err());
        connect(&as_rotating(url, "second")).await?;
    }
    Ok(())
}
