//! The synchronous pool when replicas fail: a replica stopped under load, a lagging replica,
//! causal tokens while every replica lags; on clusters of the tests' own, every answer the
//! server's own (`pg_is_in_recovery()`, `inet_server_port()`). The sync code runs on plain
//! threads, its scopes set with `with_read_replica_sync` and `RoutingContext::sync_scope`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use diesel::prelude::*;
use diesel::result::Error as DieselError;
use routing_cluster::LocalCluster;
use routing_core::sync::{RoutedConnection, RoutedPool};
use routing_core::{
    CausalToken, HealthCheck, RoutedPoolBuilder, RoutingContext, with_read_replica_sync,
};
use routing_fixtures::products;
use routing_tests::{ServerId, inet_server_port, pg_is_in_recovery, unique};

use crate::support::{port_of, private_cluster};

const PROBE: Duration = Duration::from_millis(500);

fn builder(cluster: &LocalCluster) -> RoutedPoolBuilder {
    RoutedPool::builder(cluster.primary_url())
        .replicas(cluster.replica_urls())
        .health_check(HealthCheck::new(PROBE, PROBE))
        .checkout_timeout(Duration::from_secs(1))
        .connect_timeout(Duration::from_secs(1))
}

fn where_ran(conn: &mut RoutedConnection) -> Result<ServerId, DieselError> {
    let (in_recovery, port) =
        diesel::select((pg_is_in_recovery(), inet_server_port())).get_result(conn)?;
    Ok(ServerId { port, in_recovery })
}

/// One read in a replica scope on a fresh connection: who answered.
fn read_once(pool: &RoutedPool) -> Result<ServerId, DieselError> {
    let mut conn = pool.get().expect("a routed connection");
    with_read_replica_sync(true, || where_ran(&mut conn))
}

/// Writes enough WAL to put a paused replica behind, on the primary.
fn write_wal(pool: &RoutedPool, rows: usize) {
    let mut conn = pool.get().unwrap();
    let name = "w".repeat(200);
    for _ in 0..rows / 100 {
        let batch: Vec<_> = (0..100)
            .map(|_| (products::name.eq(&name), products::price_cents.eq(1_i64)))
            .collect();
        diesel::insert_into(products::table)
            .values(batch)
            .execute(&mut conn)
            .unwrap();
    }
}

/// Runs `f` on a blocking thread and waits for it.
async fn on_a_thread<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    tokio::task::spawn_blocking(f).await.expect("the thread")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_replica_stopped_under_load_loses_no_read() {
    let Some(cluster) = private_cluster("sync_replica_stopped_under_load").await else {
        return;
    };
    let pool = builder(&cluster).build_sync().unwrap();
    let victim = cluster.replica_port(0);
    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let answers: Arc<std::sync::Mutex<Vec<(Duration, u16)>>> = Arc::default();
    // Paced, so that the load does not starve the tests that run beside this one.
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let (pool, stop, failed, answers) =
                (pool.clone(), stop.clone(), failed.clone(), answers.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match read_once(&pool) {
                        Ok(id) => answers
                            .lock()
                            .unwrap()
                            .push((started.elapsed(), port_of(&id))),
                        Err(e) => {
                            eprintln!("failed read: {e}");
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = pool.status().servers[1].queries_routed;
    assert!(before > 0, "the victim served reads before the stop");

    cluster.stop_replica(0).await.unwrap();
    let stopped = started.elapsed();
    tokio::time::sleep(3 * PROBE).await;
    let status = pool.status();
    assert!(!status.servers[1].healthy, "{status}");
    cluster.start_replica(0).await.unwrap();
    let restarted = started.elapsed();
    // Back in rotation once a probe admits it.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let back = answers
            .lock()
            .unwrap()
            .iter()
            .any(|(at, port)| *at > restarted && *port == victim);
        if back {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no read went back to the restarted replica"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for reader in readers {
        reader.join().unwrap();
    }
    let answers = answers.lock().unwrap();
    let failed = failed.load(Ordering::Relaxed);
    eprintln!(
        "sync steady load: {} reads, {failed} failed; replica 0 stopped at {stopped:?}, \
         restarted at {restarted:?}",
        answers.len()
    );
    assert_eq!(failed, 0, "every read was served");
    // While it was down, nobody answered from its port.
    assert!(
        !answers
            .iter()
            .any(|(at, port)| *at > stopped + Duration::from_millis(50)
                && *at < restarted
                && *port == victim)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_lagging_replica_is_excluded_by_max_lag_and_readmitted() {
    let Some(cluster) = private_cluster("sync_lagging_replica_is_excluded").await else {
        return;
    };
    let pool = builder(&cluster)
        .max_lag(Some(Duration::from_secs(1)))
        .build_sync()
        .unwrap();
    let lagging = cluster.replica_port(0);
    let seen = on_a_thread({
        let pool = pool.clone();
        move || {
            (0..8)
                .map(|_| port_of(&read_once(&pool).unwrap()))
                .collect::<Vec<_>>()
        }
    })
    .await;
    assert!(seen.contains(&lagging), "both replicas serve: {seen:?}");

    cluster.pause_replay(0).await.unwrap();
    // A write the paused replica does not replay: its time lag grows from then on.
    on_a_thread({
        let pool = pool.clone();
        move || write_wal(&pool, 100)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let seen = on_a_thread({
        let pool = pool.clone();
        move || {
            (0..40)
                .map(|_| read_once(&pool).unwrap())
                .collect::<Vec<_>>()
        }
    })
    .await;
    for id in &seen {
        assert_ne!(port_of(id), lagging, "the lagging replica served a read");
        assert!(id.in_recovery, "the other replica serves: {id:?}");
    }
    let status = pool.status();
    assert!(
        status.servers[1]
            .lag
            .is_some_and(|lag| lag > Duration::from_secs(1)),
        "{status}"
    );

    cluster.resume_replay(0).await.unwrap();
    let resumed = Instant::now();
    let back = on_a_thread(move || {
        loop {
            if port_of(&read_once(&pool).unwrap()) == lagging {
                return resumed.elapsed();
            }
            assert!(
                resumed.elapsed() < 4 * PROBE,
                "the replica did not come back"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    })
    .await;
    eprintln!("sync lagging replica: back {back:?} after resume");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_causal_token_reads_see_the_write_while_every_replica_lags() {
    let Some(cluster) = private_cluster("sync_causal_token_reads").await else {
        return;
    };
    let pool = builder(&cluster).build_sync().unwrap();
    let strict = builder(&cluster)
        .fallback_to_primary(false)
        .build_sync()
        .unwrap();
    for i in 0..cluster.replica_count() {
        cluster.pause_replay(i).await.unwrap();
    }
    let name = unique("sync_causal");
    let read = |pool: &RoutedPool, id: i64| {
        let mut conn = pool.get().unwrap();
        with_read_replica_sync(true, || {
            products::table
                .find(id)
                .select((products::name, pg_is_in_recovery()))
                .get_result::<(String, bool)>(&mut conn)
                .optional()
                .unwrap()
        })
    };
    let (id, token, without, with, in_transaction) = on_a_thread({
        let (pool, strict, name) = (pool.clone(), strict.clone(), name.clone());
        move || {
            let mut writer = pool.get().unwrap();
            let id: i64 = diesel::insert_into(products::table)
                .values((products::name.eq(&name), products::price_cents.eq(1_i64)))
                .returning(products::id)
                .get_result(&mut writer)
                .unwrap();
            let token = writer
                .causal_token()
                .unwrap()
                .expect("the connection wrote");
            drop(writer);
            // Through its text form, as a client would hand it back.
            let token: CausalToken = token.to_string().parse().unwrap();
            // Without the token a replica answers, and it has not seen the row.
            let without = read(&pool, id);
            let context = RoutingContext::current().with_causal_token(token);
            // With it, the primary answers.
            let with = context.clone().sync_scope(|| read(&pool, id));
            // A read-only transaction with the token too, even with fallback off: no replica
            // has replayed it, so the primary serves it.
            let mut conn = strict.get().unwrap();
            let in_transaction = context.sync_scope(|| {
                with_read_replica_sync(true, || {
                    conn.build_transaction().read_only().run(|conn| {
                        products::table
                            .find(id)
                            .select((products::name, pg_is_in_recovery()))
                            .get_result::<(String, bool)>(conn)
                    })
                })
            });
            (id, token, without, with, in_transaction.unwrap())
        }
    })
    .await;
    assert_eq!(without, None);
    assert_eq!(with, Some((name.clone(), false)));
    assert_eq!(in_transaction, (name.clone(), false));

    for i in 0..cluster.replica_count() {
        cluster.resume_replay(i).await.unwrap();
    }
    cluster.wait_for_replicas().await.unwrap();
    let after = on_a_thread(move || {
        RoutingContext::current()
            .with_causal_token(token)
            .sync_scope(|| read(&pool, id))
    })
    .await;
    assert_eq!(
        after,
        Some((name, true)),
        "a caught-up replica serves the token"
    );
}
