//! Starts real Patroni clusters and checks every control by asking the servers.
//!
//! Needs `patroni` and `etcd` (Debian: `apt-get install --no-install-recommends patroni
//! etcd-server`). The time bounds are wide: they catch hangs, not slowness. Each test prints
//! its measured times on lines starting with `patroni timing:` (see them with `--nocapture`).

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use routing_cluster::{ClusterError, PatroniCluster};
use tokio_postgres::{Client, NoTls};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// The bound on every timed step: far above what a busy machine needs.
const HANG: Duration = Duration::from_secs(60);

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

/// `pg_is_in_recovery()` of every node, `None` where the node does not answer.
async fn recovery(cluster: &PatroniCluster) -> Vec<Option<bool>> {
    let mut states = Vec::new();
    for url in cluster.node_urls() {
        let url = format!("{url}?connect_timeout=2");
        states.push(value(&url, "SELECT pg_is_in_recovery()").await.ok());
    }
    states
}

/// The nodes that answer `pg_is_in_recovery() = false`.
async fn primaries(cluster: &PatroniCluster) -> Vec<usize> {
    let states = recovery(cluster).await;
    (0..states.len())
        .filter(|&index| states[index] == Some(false))
        .collect()
}

/// Inserts one row at `url` and returns how many rows the table has there.
async fn insert(url: &str) -> Result<i64, tokio_postgres::Error> {
    let client = connect(url).await?;
    client
        .execute("INSERT INTO items DEFAULT VALUES", &[])
        .await?;
    client
        .query_one("SELECT count(*) FROM items", &[])
        .await?
        .try_get(0)
}

/// Whether something accepts TCP connections on `port`.
fn port_open(port: u16) -> bool {
    TcpStream::connect_timeout(&(Ipv4Addr::LOCALHOST, port).into(), Duration::from_secs(1)).is_ok()
}

/// The port of an `http://127.0.0.1:{port}` or `postgres://...:{port}/...` URL.
fn port_of(url: &str) -> u16 {
    let after_colon = url.rsplit(':').next().unwrap_or_default();
    let digits: String = after_colon
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn leader_moves_on_switchover_and_failover_and_the_old_leader_rejoins() -> TestResult {
    let began = Instant::now();
    let cluster = PatroniCluster::start().await?;
    let startup = began.elapsed();
    eprintln!("patroni timing: startup (leader + 2 streaming) {startup:.2?}; {cluster:?}");
    assert!(startup < HANG);

    // One leader, two streaming replicas.
    assert_eq!(cluster.node_count(), 3);
    let leader = cluster.leader().await?.ok_or("no leader")?;
    assert_eq!(primaries(&cluster).await, vec![leader]);
    let urls = cluster.node_urls();
    let streaming: i64 = value(
        &urls[leader],
        "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'",
    )
    .await?;
    assert_eq!(streaming, 2);
    for (index, url) in urls
        .iter()
        .enumerate()
        .filter(|(index, _)| *index != leader)
    {
        let receiver: String = value(url, "SELECT status FROM pg_stat_wal_receiver").await?;
        assert_eq!(receiver, "streaming", "node {index}");
    }

    // The URLs: one per node, a multi-host one that reaches the leader, REST on its own ports.
    let ports = cluster.node_ports();
    let hosts: Vec<String> = ports
        .iter()
        .map(|port| format!("127.0.0.1:{port}"))
        .collect();
    assert_eq!(
        cluster.multi_host_url(),
        format!("postgres://postgres@{}/postgres", hosts.join(","))
    );
    let read_write = format!(
        "{}?target_session_attrs=read-write",
        cluster.multi_host_url()
    );
    let port: i32 = value(&read_write, "SELECT inet_server_port()").await?;
    assert_eq!(u16::try_from(port)?, ports[leader]);
    for (url, port) in urls.iter().zip(&ports) {
        assert_eq!(port_of(url), *port);
    }
    let rest_ports: Vec<u16> = cluster.rest_urls().iter().map(|url| port_of(url)).collect();
    assert!(
        rest_ports
            .iter()
            .all(|port| port_open(*port) && !ports.contains(port))
    );

    connect(&urls[leader])
        .await?
        .batch_execute("CREATE TABLE items (id serial PRIMARY KEY)")
        .await?;
    assert_eq!(insert(&urls[leader]).await?, 1);

    // A planned switchover to a named replica.
    let candidate = (leader + 1) % 3;
    let asked = Instant::now();
    let new_leader = cluster.switchover(Some(candidate)).await?;
    let switchover = asked.elapsed();
    assert_eq!(new_leader, candidate);
    assert_eq!(insert(&urls[new_leader]).await?, 2);
    cluster.wait_until_streaming().await?;
    eprintln!(
        "patroni timing: switchover, request to a write on the new leader {switchover:.2?}, \
         to all 3 streaming {:.2?}",
        asked.elapsed()
    );
    assert!(switchover < HANG);
    assert_eq!(primaries(&cluster).await, vec![new_leader]);

    // A crash of the leader: another node takes over once the lock expires.
    let killed_at = Instant::now();
    let killed = cluster.kill_leader().await?;
    assert_eq!(killed, new_leader);
    assert!(!port_open(ports[killed]), "the killed leader still listens");
    let successor = cluster.wait_for_leader().await?;
    let failover = killed_at.elapsed();
    assert_ne!(successor, killed);
    assert!(insert(&urls[successor]).await? >= 2);
    eprintln!("patroni timing: failover, SIGKILL to a write on the new leader {failover:.2?}");
    assert!(failover < HANG);

    // The old leader comes back as a streaming replica of the new one.
    let restarted_at = Instant::now();
    cluster.restart_node(killed).await?;
    let rejoin = restarted_at.elapsed();
    assert_eq!(cluster.wait_until_streaming().await?, successor);
    eprintln!("patroni timing: rejoin, restart to streaming from the new leader {rejoin:.2?}");
    assert!(rejoin < HANG);
    assert_eq!(recovery(&cluster).await[killed], Some(true));
    assert_eq!(primaries(&cluster).await, vec![successor]);

    // Bad requests are errors, not panics.
    assert!(matches!(
        cluster.restart_node(7).await,
        Err(ClusterError::NoSuchNode { index: 7, count: 3 })
    ));
    assert!(matches!(
        cluster.switchover(Some(successor)).await,
        Err(ClusterError::NodeUnavailable { .. })
    ));
    assert!(matches!(
        cluster.promote_outside_patroni(successor).await,
        Err(ClusterError::NodeUnavailable { .. })
    ));

    // Dropping stops everything and removes the directory.
    let dir = cluster.data_dir().to_path_buf();
    let mut all_ports = ports.clone();
    all_ports.extend(&rest_ports);
    all_ports.push(port_of(&cluster.etcd_url()));
    let dropped_at = Instant::now();
    drop(cluster);
    eprintln!("patroni timing: drop {:.2?}", dropped_at.elapsed());
    assert!(!dir.exists(), "{} still exists", dir.display());
    for port in all_ports {
        assert!(!port_open(port), "port {port} still accepts connections");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn promoting_a_standby_outside_patroni_splits_the_brain_until_patroni_demotes_it()
-> TestResult {
    let cluster = PatroniCluster::start().await?;
    let leader = cluster.wait_until_streaming().await?;
    let standby = (leader + 1) % 3;
    let urls = cluster.node_urls();
    connect(&urls[leader])
        .await?
        .batch_execute("CREATE TABLE items (id serial PRIMARY KEY)")
        .await?;

    // Unpaused, Patroni demotes the promoted standby within about one loop, then rewinds it.
    let promoted_at = Instant::now();
    cluster.promote_outside_patroni(standby).await?;
    let returned = promoted_at.elapsed();
    let mut two_primaries_until = None;
    while promoted_at.elapsed() < HANG {
        let states = recovery(&cluster).await;
        if states[standby] != Some(false) {
            break;
        }
        if states[leader] == Some(false) {
            two_primaries_until = Some(promoted_at.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let demoted = promoted_at.elapsed();
    assert_eq!(cluster.wait_until_streaming().await?, leader);
    eprintln!(
        "patroni timing: unpaused manual promotion: returned after {returned:.2?}, two primaries \
         seen until {two_primaries_until:.2?}, demoted by {demoted:.2?}, all streaming again \
         after {:.2?}",
        promoted_at.elapsed()
    );
    assert!(demoted < HANG);
    assert_eq!(primaries(&cluster).await, vec![leader]);

    // Paused, the split brain stays until Patroni resumes.
    cluster.pause_patroni().await?;
    cluster.promote_outside_patroni(standby).await?;
    let mut expected = vec![leader, standby];
    expected.sort_unstable();
    assert_eq!(primaries(&cluster).await, expected);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        primaries(&cluster).await,
        expected,
        "the split brain ended while paused"
    );
    // Both take writes, on diverging timelines; the lock stays with the leader.
    assert_eq!(insert(&urls[leader]).await?, 1);
    assert_eq!(insert(&urls[leader]).await?, 2);
    assert_eq!(insert(&urls[standby]).await?, 1);
    assert_eq!(cluster.leader().await?, Some(leader));

    let resumed_at = Instant::now();
    cluster.resume_patroni().await?;
    assert_eq!(cluster.wait_until_streaming().await?, leader);
    eprintln!(
        "patroni timing: resumed after a paused manual promotion: one primary and all streaming \
         after {:.2?}",
        resumed_at.elapsed()
    );
    assert_eq!(primaries(&cluster).await, vec![leader]);
    // The rewound node lost the write it took alone and follows the leader's two.
    let mut rows: i64 = value(&urls[standby], "SELECT count(*) FROM items").await?;
    while rows != 2 && resumed_at.elapsed() < HANG {
        tokio::time::sleep(Duration::from_millis(50)).await;
        rows = value(&urls[standby], "SELECT count(*) FROM items").await?;
    }
    assert_eq!(rows, 2, "node {standby} kept its own write");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn synchronous_mode_keeps_every_acknowledged_commit_across_a_failover() -> TestResult {
    let began = Instant::now();
    let cluster = PatroniCluster::builder()
        .synchronous_mode(true)
        .start()
        .await?;
    eprintln!(
        "patroni timing: startup in synchronous mode {:.2?}",
        began.elapsed()
    );
    let leader = cluster.wait_until_streaming().await?;
    let urls = cluster.node_urls();
    let sync: i64 = value(
        &urls[leader],
        "SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'",
    )
    .await?;
    assert_eq!(sync, 1);

    let client = connect(&urls[leader]).await?;
    client
        .batch_execute("CREATE TABLE items (id serial PRIMARY KEY)")
        .await?;
    for _ in 0..20 {
        client
            .execute("INSERT INTO items DEFAULT VALUES", &[])
            .await?;
    }
    drop(client);
    let killed_at = Instant::now();
    let killed = cluster.kill_leader().await?;
    let successor = cluster.wait_for_leader().await?;
    eprintln!(
        "patroni timing: failover in synchronous mode {:.2?}",
        killed_at.elapsed()
    );
    assert_ne!(successor, killed);
    let rows: i64 = value(&urls[successor], "SELECT count(*) FROM items").await?;
    assert_eq!(rows, 20, "an acknowledged commit was lost");
    Ok(())
}

/// A child process that is killed when the test ends early, so a failed assertion leaves no
/// `local-cluster` running.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_killed_local_cluster_leaves_nothing_behind() -> TestResult {
    let mut child = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_local-cluster"))
            .arg("--patroni")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?,
    );
    let stdout = BufReader::new(child.0.stdout.take().ok_or("no stdout")?);
    let stderr = BufReader::new(child.0.stderr.take().ok_or("no stderr")?);
    let mut exports = Vec::new();
    for line in stdout.lines() {
        let line = line?;
        let done = line.starts_with("export CLUSTER_REST_URLS=");
        exports.push(line);
        if done {
            break;
        }
    }
    let mut dir = None;
    for line in stderr.lines() {
        let line = line?;
        if let Some(rest) = line.strip_prefix("patroni cluster up in ") {
            dir = rest.split(';').next().map(PathBuf::from);
            break;
        }
    }
    let dir = dir.ok_or_else(|| format!("no directory printed; stdout: {exports:?}"))?;
    let value_of = |name: &str| {
        exports
            .iter()
            .find_map(|line| line.strip_prefix(&format!("export {name}=")))
            .map(str::to_owned)
            .ok_or(format!("{name} not printed: {exports:?}"))
    };
    let database_url = value_of("DATABASE_URL")?;
    assert!(database_url.contains("127.0.0.1:") && database_url.contains(','));
    assert!(database_url.contains("target_session_attrs=read-write"));
    let mut ports: Vec<u16> = value_of("CLUSTER_NODE_URLS")?
        .split(',')
        .chain(value_of("CLUSTER_REST_URLS")?.split(','))
        .map(port_of)
        .collect();
    assert_eq!(ports.len(), 6);
    assert!(ports.iter().all(|port| port_open(*port)));
    ports.sort_unstable();

    // No Drop runs: the watchdog must clean up.
    child.0.kill()?;
    child.0.wait()?;
    let killed_at = Instant::now();
    while (dir.exists() || ports.iter().any(|port| port_open(*port))) && killed_at.elapsed() < HANG
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "patroni timing: watchdog cleanup after SIGKILL {:.2?}",
        killed_at.elapsed()
    );
    assert!(!dir.exists(), "{} still exists", dir.display());
    for port in ports {
        assert!(!port_open(port), "port {port} still accepts connections");
    }
    Ok(())
}

#[tokio::test]
async fn missing_patroni_is_a_clear_error() {
    let empty = tempfile::tempdir().expect("temp dir");
    let err = PatroniCluster::builder()
        .patroni_program(empty.path().join("patroni"))
        .start()
        .await
        .expect_err("no patroni there");
    assert!(matches!(err, ClusterError::PatroniNotFound { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("apt-get install --no-install-recommends patroni etcd-server"),
        "{err}"
    );
}

#[tokio::test]
async fn timing_rules_are_checked_before_anything_starts() {
    let err = PatroniCluster::builder()
        .ttl(Duration::from_secs(4))
        .start()
        .await
        .expect_err("1 + 2 * 2 > 4");
    assert!(
        matches!(
            err,
            ClusterError::InvalidPatroniOption { option: "ttl", .. }
        ),
        "{err}"
    );
}
