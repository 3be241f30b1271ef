//! Following the primary through failover, on a Patroni cluster: a pool made from the
//! cluster's multi-host URL finds the primary itself, keeps serving reads through a switchover
//! or a crash of the leader, sends writes to the new primary once it takes them, never to a
//! node in recovery or to either side of a split brain, and loses no acknowledged write.
//!
//! Needs `patroni` and `etcd` (Debian: `apt-get install --no-install-recommends patroni
//! etcd-server`). The figures each test measures are printed; see them with `--nocapture`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use routing_cluster::PatroniCluster;
use routing_core::{Error, HealthCheck, RoutedPool, with_read_replica};
use routing_fixtures::products;
use routing_tests::{inet_server_port, pg_is_in_recovery, unique};
use tokio::sync::Mutex;

const PROBE: Duration = Duration::from_millis(500);
const PRIMARY_WAIT: Duration = Duration::from_secs(3);

/// A Patroni cluster, migrated through its multi-host URL.
async fn patroni(synchronous: bool) -> PatroniCluster {
    let cluster = PatroniCluster::builder()
        .synchronous_mode(synchronous)
        .start()
        .await
        .expect("start a Patroni cluster");
    cluster
        .wait_until_streaming()
        .await
        .expect("replicas stream");
    routing_core::Migrator::connect(&cluster.multi_host_url())
        .await
        .expect("the migrator finds the leader")
        .run_pending(routing_fixtures::MIGRATIONS)
        .await
        .expect("migrate the leader");
    cluster
}

fn pool(cluster: &PatroniCluster) -> RoutedPool {
    RoutedPool::builder(cluster.multi_host_url())
        .health_check(HealthCheck::new(PROBE, PROBE))
        .primary_wait(PRIMARY_WAIT)
        .connect_timeout(Duration::from_secs(2))
        .max_size(8)
        .build()
        .unwrap()
}

/// One statement of the load, as it went.
#[derive(Debug, Clone)]
struct Op {
    at: Duration,
    took: Duration,
    write: bool,
    /// The port of the server that answered, or the error.
    outcome: Result<u16, String>,
    retryable: bool,
}

/// What the workers did, and the names of the writes that returned Ok.
#[derive(Debug, Default)]
struct Load {
    ops: Vec<Op>,
    acknowledged: Vec<String>,
}

/// Eight workers until `stop`: six reading (in replica scopes), two writing.
fn start_load(pool: &RoutedPool, began: Instant, stop: &Arc<AtomicBool>) -> Arc<Mutex<Load>> {
    let load = Arc::new(Mutex::new(Load::default()));
    for worker in 0..8 {
        let (pool, stop, load) = (pool.clone(), Arc::clone(stop), Arc::clone(&load));
        tokio::spawn(async move {
            while !AtomicBool::load(&stop, Ordering::Relaxed) {
                let write = worker >= 6;
                let started = Instant::now();
                let mut conn = pool.get().await.unwrap();
                let name = unique("failover");
                let result = if write {
                    diesel::insert_into(products::table)
                        .values((products::name.eq(&name), products::price_cents.eq(1_i64)))
                        .returning((pg_is_in_recovery(), inet_server_port()))
                        .get_result::<(bool, i32)>(&mut conn)
                        .await
                } else {
                    with_read_replica(
                        true,
                        diesel::select((pg_is_in_recovery(), inet_server_port()))
                            .get_result::<(bool, i32)>(&mut conn),
                    )
                    .await
                };
                let op = Op {
                    at: started - began,
                    took: started.elapsed(),
                    write,
                    retryable: result
                        .as_ref()
                        .err()
                        .and_then(Error::from_diesel)
                        .is_some_and(Error::is_retryable),
                    outcome: result
                        .as_ref()
                        .map(|(_, port)| u16::try_from(*port).unwrap())
                        .map_err(ToString::to_string),
                };
                if write {
                    if let Ok((in_recovery, _)) = result {
                        assert!(!in_recovery, "a write ran on a node in recovery");
                    }
                }
                let mut load = load.lock().await;
                if write && op.outcome.is_ok() {
                    load.acknowledged.push(name);
                }
                load.ops.push(op);
                drop(load);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
    }
    load
}

/// Polls the nodes other than `old` until one accepts a write: when it did, since `began`. A
/// write that waits (for a synchronous standby) is given up after a while and tried again.
async fn first_writable(cluster: &PatroniCluster, old: usize, began: Instant) -> Duration {
    let urls = cluster.node_urls();
    loop {
        for (index, url) in urls.iter().enumerate() {
            if index == old {
                continue;
            }
            let url = format!("{url}?connect_timeout=1");
            let attempt = async {
                let mut conn = AsyncPgConnection::establish(&url).await.ok()?;
                diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>(
                    "txid_current()",
                ))
                .get_result::<i64>(&mut conn)
                .await
                .ok()
            };
            if let Ok(Some(_)) = tokio::time::timeout(Duration::from_secs(2), attempt).await {
                return began.elapsed();
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            began.elapsed() < Duration::from_secs(120),
            "no new primary took a write; the logs end with:\n{}",
            cluster.log_tails()
        );
    }
}

/// Prints and checks what the load saw around a switch at `switch` (since the start), when the
/// new primary on `new_port` first took a write at `writable`.
fn report(
    what: &str,
    load: &Load,
    switch: Duration,
    writable: Duration,
    old_port: u16,
    new_port: u16,
) {
    let reads: Vec<&Op> = load.ops.iter().filter(|op| !op.write).collect();
    let writes: Vec<&Op> = load.ops.iter().filter(|op| op.write).collect();
    let failed_reads: Vec<&&Op> = reads.iter().filter(|op| op.outcome.is_err()).collect();
    let failed_writes: Vec<&&Op> = writes.iter().filter(|op| op.outcome.is_err()).collect();
    let last_old = writes
        .iter()
        .filter(|op| op.outcome.as_ref().is_ok_and(|port| *port == old_port))
        .map(|op| op.at + op.took)
        .max();
    let first_new = writes
        .iter()
        .filter(|op| op.outcome.as_ref().is_ok_and(|port| *port == new_port))
        .map(|op| op.at + op.took)
        .min()
        .expect("writes reached the new primary");
    let slowest_failed = failed_writes.iter().map(|op| op.took).max();
    let mut per_second = vec![
        0_usize;
        (load
            .ops
            .iter()
            .map(|op| op.at)
            .max()
            .unwrap_or_default()
            .as_secs()
            + 1) as usize
    ];
    for op in &reads {
        per_second[op.at.as_secs() as usize] += 1;
    }
    eprintln!(
        "{what}: switch began at {switch:?}; last write on the old primary done at {last_old:?}; \
         new primary took a write at {writable:?}; first routed write on it done at \
         {first_new:?} ({:?} after); reads {} (failed {}), writes {} (failed {}, slowest failed \
         {slowest_failed:?}); reads per second: {per_second:?}",
        first_new.saturating_sub(writable),
        reads.len(),
        failed_reads.len(),
        writes.len(),
        failed_writes.len(),
    );
    assert!(
        failed_reads.is_empty(),
        "{what}: failed reads {failed_reads:?}"
    );
    for op in &failed_writes {
        assert!(
            op.retryable,
            "{what}: a failed write is not retryable: {op:?}"
        );
        assert!(
            op.took < PRIMARY_WAIT + Duration::from_secs(6),
            "{what}: a failed write took longer than the bound: {op:?}"
        );
    }
    // Writes resume within one probe interval of the promotion (with room for a busy machine).
    assert!(
        first_new <= writable + PROBE + Duration::from_secs(2),
        "{what}: writes resumed {:?} after the new primary took one",
        first_new.saturating_sub(writable)
    );
}

/// Every acknowledged write is on the primary now.
async fn acknowledged_writes_survive(pool: &RoutedPool, names: &[String]) {
    let mut conn = pool.get().await.unwrap();
    let found: i64 = products::table
        .filter(products::name.eq_any(names))
        .count()
        .get_result(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        found as usize,
        names.len(),
        "an acknowledged write was lost"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_planned_switchover_loses_no_read_and_no_acknowledged_write() {
    let cluster = patroni(true).await;
    let pool = pool(&cluster);
    pool.check().await.unwrap();
    let ports = cluster.node_ports();
    let old = cluster.leader().await.unwrap().expect("a leader");
    // A causal token of a write made before the switch.
    let mut writer = pool.get().await.unwrap();
    let before_name = unique("before_switch");
    diesel::insert_into(products::table)
        .values((
            products::name.eq(&before_name),
            products::price_cents.eq(1_i64),
        ))
        .execute(&mut writer)
        .await
        .unwrap();
    let before = writer.causal_token().await.unwrap().unwrap();
    drop(writer);
    let began = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let load = start_load(&pool, began, &stop);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let switch = began.elapsed();
    // A refused switchover fails the test at once, not after the wait for a new primary.
    let (new, writable) = tokio::join!(
        async {
            cluster
                .switchover(None)
                .await
                .expect("Patroni switches over")
        },
        first_writable(&cluster, old, began)
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let load = load.lock().await;
    report(
        "switchover",
        &load,
        switch,
        writable,
        ports[old],
        ports[new],
    );
    acknowledged_writes_survive(&pool, &load.acknowledged).await;
    // Causal tokens across the promotion: the token from before still finds its write; one
    // claiming a position the new timeline never had (a write lost with the old primary) is
    // dropped, not waited for and not taken for a forgery.
    let mut conn = pool.get().await.unwrap();
    let found: i64 = routing_core::with_causal_token(
        before,
        with_read_replica(
            true,
            products::table
                .filter(products::name.eq(&before_name))
                .count()
                .get_result(&mut conn),
        ),
    )
    .await
    .unwrap();
    assert_eq!(found, 1, "the token's write is seen after the switch");
    let written_at = before.to_string().rsplit('@').next().unwrap().to_owned();
    let lost: routing_core::CausalToken = format!("FFF/0@{written_at}").parse().unwrap();
    let mut conn = pool.get().await.unwrap();
    let (in_recovery, _) = routing_core::with_causal_token(
        lost,
        with_read_replica(
            true,
            diesel::select((pg_is_in_recovery(), inet_server_port()))
                .get_result::<(bool, i32)>(&mut conn),
        ),
    )
    .await
    .unwrap();
    assert!(
        in_recovery,
        "a token lost in the failover does not pin reads to the primary"
    );
    assert_eq!(pool.status().forged_tokens, 0, "{}", pool.status());
    // The old leader serves reads again once it streams from the new one.
    cluster.wait_until_streaming().await.unwrap();
    let rejoined = Instant::now();
    loop {
        let mut conn = pool.get().await.unwrap();
        let (in_recovery, port) = with_read_replica(
            true,
            diesel::select((pg_is_in_recovery(), inet_server_port()))
                .get_result::<(bool, i32)>(&mut conn),
        )
        .await
        .unwrap();
        if port == i32::from(ports[old]) {
            assert!(in_recovery);
            eprintln!(
                "switchover: the old leader served a read {:?} after it streamed",
                rejoined.elapsed()
            );
            break;
        }
        assert!(
            rejoined.elapsed() < Duration::from_secs(30),
            "the old leader serves no read"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_leader_loses_no_read_and_writes_resume_on_the_new_one() {
    let cluster = patroni(false).await;
    let pool = pool(&cluster);
    let ports = cluster.node_ports();
    let began = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let load = start_load(&pool, began, &stop);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let switch = began.elapsed();
    let old = cluster.kill_leader().await.unwrap();
    let writable = first_writable(&cluster, old, began).await;
    let new = cluster.wait_for_leader().await.unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let load = load.lock().await;
    report(
        "leader killed",
        &load,
        switch,
        writable,
        ports[old],
        ports[new],
    );
    // The killed node comes back as a replica, through pg_rewind.
    cluster.restart_node(old).await.unwrap();
    cluster.wait_until_streaming().await.unwrap();
    let mut conn = pool.get().await.unwrap();
    insert_one(&mut conn)
        .await
        .expect("writes go on after the old leader rejoined");
}

async fn insert_one(conn: &mut routing_core::RoutedConnection) -> QueryResult<(bool, i32)> {
    diesel::insert_into(products::table)
        .values((
            products::name.eq(unique("after")),
            products::price_cents.eq(1_i64),
        ))
        .returning((pg_is_in_recovery(), inet_server_port()))
        .get_result(conn)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_brain_gets_no_write_until_it_is_resolved() {
    let cluster = patroni(false).await;
    let pool = pool(&cluster);
    let leader = cluster.leader().await.unwrap().expect("a leader");
    // A connection that already holds the leader's session.
    let mut holder = pool.get().await.unwrap();
    insert_one(&mut holder).await.unwrap();
    let rogue = (0..3).find(|index| *index != leader).unwrap();
    cluster.pause_patroni().await.unwrap();
    cluster.promote_outside_patroni(rogue).await.unwrap();
    let seen = Instant::now();
    while pool.status().no_primary.is_none() {
        assert!(
            seen.elapsed() < Duration::from_secs(10),
            "the probe did not see the split"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = pool.status();
    eprintln!("split brain: seen after {:?}\n{status}", seen.elapsed());
    assert!(
        status
            .no_primary
            .as_deref()
            .unwrap()
            .contains("split brain"),
        "{status}"
    );
    let name = unique("split");
    for conn in [&mut holder, &mut pool.get().await.unwrap()] {
        let error = diesel::insert_into(products::table)
            .values((products::name.eq(&name), products::price_cents.eq(1_i64)))
            .execute(conn)
            .await
            .unwrap_err();
        assert!(
            matches!(Error::from_diesel(&error), Some(Error::NoPrimary { .. })),
            "{error}"
        );
    }
    // Neither claimant got the row.
    for index in [leader, rogue] {
        let mut direct = AsyncPgConnection::establish(&cluster.node_urls()[index])
            .await
            .unwrap();
        let found: i64 = products::table
            .filter(products::name.eq(&name))
            .count()
            .get_result(&mut direct)
            .await
            .unwrap();
        assert_eq!(found, 0, "node {index} got a write during the split brain");
    }
    // Reads go on, on the standby that stayed one.
    let mut conn = pool.get().await.unwrap();
    let (in_recovery, _) = with_read_replica(
        true,
        diesel::select((pg_is_in_recovery(), inet_server_port()))
            .get_result::<(bool, i32)>(&mut conn),
    )
    .await
    .unwrap();
    assert!(in_recovery);
    cluster.resume_patroni().await.unwrap();
    cluster.wait_until_streaming().await.unwrap();
    let resolved = Instant::now();
    loop {
        let mut conn = pool.get().await.unwrap();
        match insert_one(&mut conn).await {
            Ok((in_recovery, _)) => {
                assert!(!in_recovery);
                break;
            }
            Err(error) => {
                assert!(
                    Error::from_diesel(&error).is_some_and(Error::is_retryable),
                    "{error}"
                );
                assert!(resolved.elapsed() < Duration::from_secs(30), "{error}");
            }
        }
    }
    eprintln!(
        "split brain: writes again {:?} after Patroni resolved it",
        resolved.elapsed()
    );
}
