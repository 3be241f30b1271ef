//! Replica sets that survive: failover under load, frozen and lagging replicas, causal tokens,
//! balancing. Every answer is the server's own (`pg_is_in_recovery()`, `inet_server_port()`);
//! the figures each test measures are printed (run with `--nocapture` to see them).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use diesel::prelude::*;
use diesel::result::Error as DieselError;
use diesel_async::RunQueryDsl;
use routing_cluster::LocalCluster;
use routing_core::{
    CausalToken, HealthCheck, LeastOutstanding, ReadYourWrites, RoutedPool, RoutedPoolBuilder,
    with_causal_token, with_max_lag, with_read_replica,
};
use routing_fixtures::products;
use routing_tests::{ServerId, inet_server_port, pg_is_in_recovery, servers, unique, where_ran};

use crate::support::{insert_product, port_of, private_cluster};

const PROBE: Duration = Duration::from_millis(500);

fn builder(cluster: &LocalCluster) -> RoutedPoolBuilder {
    RoutedPool::builder(cluster.primary_url())
        .replicas(cluster.replica_urls())
        .health_check(HealthCheck::new(PROBE, PROBE))
        .checkout_timeout(Duration::from_secs(1))
        .connect_timeout(Duration::from_secs(1))
}

/// One read in a replica scope on a fresh connection: who answered.
async fn read_once(pool: &RoutedPool) -> Result<ServerId, DieselError> {
    let mut conn = pool.get().await.expect("a routed connection");
    with_read_replica(true, async {
        let (in_recovery, port) = diesel::select((pg_is_in_recovery(), inet_server_port()))
            .get_result::<(bool, i32)>(&mut conn)
            .await?;
        Ok(ServerId { port, in_recovery })
    })
    .await
}

/// Writes enough WAL to put a paused replica far behind.
async fn write_wal(pool: &RoutedPool, rows: usize) {
    let mut conn = pool.get().await.unwrap();
    let name = "w".repeat(200);
    for _ in 0..rows / 100 {
        let batch: Vec<_> = (0..100)
            .map(|_| (products::name.eq(&name), products::price_cents.eq(1_i64)))
            .collect();
        diesel::insert_into(products::table)
            .values(batch)
            .execute(&mut conn)
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_stopped_under_steady_load_loses_no_read_and_comes_back() {
    let Some(cluster) = private_cluster("replica_stopped_under_steady_load").await else {
        return;
    };
    let pool = builder(&cluster).build().unwrap();
    let victim = cluster.replica_port(0);
    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    // When each read was sent, and the port that answered it.
    let answers: Arc<std::sync::Mutex<Vec<(Duration, u16)>>> = Arc::default();
    let readers: Vec<_> = (0..6)
        .map(|_| {
            let (pool, stop, failed, answers) =
                (pool.clone(), stop.clone(), failed.clone(), answers.clone());
            tokio::spawn(async move {
                while !AtomicBool::load(&stop, Ordering::Relaxed) {
                    // When the read was sent: a busy machine may run the task long after the
                    // answer came.
                    let sent = started.elapsed();
                    match read_once(&pool).await {
                        Ok(id) => answers.lock().unwrap().push((sent, port_of(&id))),
                        Err(e) => {
                            eprintln!("failed read: {e}");
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    // Sample the router's count of statements sent to the victim.
    let routed_to_victim = || pool.status().servers[1].queries_routed;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        routed_to_victim() > 0,
        "the victim served reads before the stop"
    );

    let mut last = routed_to_victim();
    let stopping = started.elapsed();
    cluster.stop_replica(0).await.unwrap();
    let stopped = started.elapsed();
    // An upper bound: a change seen at the first sample may have happened during the stop.
    let mut last_change = stopping;
    let watch_until = Instant::now() + 3 * PROBE;
    while Instant::now() < watch_until {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let now = routed_to_victim();
        if now != last {
            last = now;
            last_change = started.elapsed();
        }
    }
    let cut_off = last_change.saturating_sub(stopping);
    let status = pool.status();
    assert!(!status.servers[1].healthy, "{status}");
    assert!(status.servers[1].ban_reason.is_some(), "{status}");

    let starting = started.elapsed();
    cluster.start_replica(0).await.unwrap();
    let restarted = started.elapsed();
    let back = loop {
        let seen = answers
            .lock()
            .unwrap()
            .iter()
            .find(|(at, port)| *at > restarted && *port == victim)
            .map(|(at, _)| *at);
        if let Some(at) = seen {
            break at - restarted;
        }
        assert!(
            started.elapsed() - restarted < 4 * PROBE,
            "no read went back to the restarted replica"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    stop.store(true, Ordering::Relaxed);
    for reader in readers {
        reader.await.unwrap();
    }
    let answers = answers.lock().unwrap();
    eprintln!(
        "steady load: {} reads, {} failed; the stop took {:?}; the last read was sent to the \
         stopped replica {:?} after the stop began (bound {:?}); reads came back {:?} after the \
         restart (bound {:?})",
        answers.len(),
        AtomicU64::load(&failed, Ordering::Relaxed),
        stopped - stopping,
        cut_off,
        2 * PROBE,
        back,
        2 * PROBE
    );
    assert_eq!(
        AtomicU64::load(&failed, Ordering::Relaxed),
        0,
        "every read was served"
    );
    assert!(cut_off <= 2 * PROBE, "{cut_off:?}");
    assert!(back <= 2 * PROBE, "{back:?}");
    // While it was down, no read sent to the router was answered from its port.
    assert!(
        !answers
            .iter()
            .any(|(sent, port)| *sent > stopped && *sent < starting && *port == victim)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_replica_is_excluded_after_one_probe_and_readmitted_when_it_catches_up() {
    let Some(cluster) = private_cluster("lagging_replica_is_excluded").await else {
        return;
    };
    let pool = builder(&cluster)
        .max_lag_bytes(Some(64 * 1024))
        .build()
        .unwrap();
    let lagging = cluster.replica_port(0);
    // Both replicas serve before the pause.
    let mut seen = HashMap::new();
    for _ in 0..8 {
        *seen
            .entry(port_of(&read_once(&pool).await.unwrap()))
            .or_insert(0) += 1;
    }
    assert!(seen.contains_key(&lagging), "{seen:?}");

    cluster.pause_replay(0).await.unwrap();
    write_wal(&pool, 2_000).await;
    let lag = cluster.replica_lag_bytes(0).await.unwrap();
    assert!(lag > 64 * 1024, "the paused replica is {lag} bytes behind");
    tokio::time::sleep(PROBE + PROBE / 2).await;
    for _ in 0..40 {
        let id = read_once(&pool).await.unwrap();
        assert_ne!(port_of(&id), lagging, "the lagging replica served a read");
    }
    let status = pool.status();
    eprintln!("while paused:\n{status}");
    assert!(
        status.servers[1].lag_bytes.unwrap_or(0) > 64 * 1024,
        "{status}"
    );

    cluster.resume_replay(0).await.unwrap();
    let resumed = Instant::now();
    loop {
        if port_of(&read_once(&pool).await.unwrap()) == lagging {
            break;
        }
        assert!(
            resumed.elapsed() < 4 * PROBE,
            "the replica did not come back"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!("lagging replica: back {:?} after resume", resumed.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_request_staleness_budget_tightens_the_pool_bound() {
    let Some(cluster) = private_cluster("per_request_staleness_budget").await else {
        return;
    };
    let pool = builder(&cluster).build().unwrap();
    for i in 0..cluster.replica_count() {
        cluster.pause_replay(i).await.unwrap();
    }
    // A write the replicas do not replay: their time lag grows from then on.
    write_wal(&pool, 100).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // The pool's 30 s bound still admits the replicas ...
    assert!(read_once(&pool).await.unwrap().in_recovery);
    // ... a 1 s budget does not.
    let id = with_max_lag(Duration::from_secs(1), read_once(&pool))
        .await
        .unwrap();
    assert!(!id.in_recovery, "{id:?}");
    for i in 0..cluster.replica_count() {
        cluster.resume_replay(i).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn causal_token_reads_see_the_write_while_every_replica_lags() {
    let Some(cluster) = private_cluster("causal_token_reads").await else {
        return;
    };
    let pool = builder(&cluster).build().unwrap();
    for i in 0..cluster.replica_count() {
        cluster.pause_replay(i).await.unwrap();
    }
    let name = unique("causal");
    let mut writer = pool.get().await.unwrap();
    let (id, _) = insert_product(&mut writer, &name).await;
    let token = writer
        .causal_token()
        .await
        .unwrap()
        .expect("the connection wrote");
    drop(writer);
    let token: CausalToken = token.to_string().parse().unwrap();

    let read = |pool: RoutedPool| async move {
        let mut conn = pool.get().await.unwrap();
        with_read_replica(true, async {
            products::table
                .find(id)
                .select((products::name, pg_is_in_recovery()))
                .get_result::<(String, bool)>(&mut conn)
                .await
                .optional()
                .unwrap()
        })
        .await
    };
    // Without the token a replica answers, and it has not seen the row.
    assert_eq!(read(pool.clone()).await, None);
    // With it, the primary answers.
    let with_token = with_causal_token(token, read(pool.clone())).await;
    assert_eq!(with_token, Some((name.clone(), false)));

    // A read-only transaction with the token too, even with fallback off: no replica has
    // replayed it, so the primary serves it (and sees the row).
    let strict = builder(&cluster)
        .fallback_to_primary(false)
        .build()
        .unwrap();
    let mut conn = strict.get().await.unwrap();
    let in_transaction = with_causal_token(
        token,
        with_read_replica(true, async {
            conn.build_transaction()
                .read_only()
                .run(async |conn| {
                    products::table
                        .find(id)
                        .select((products::name, pg_is_in_recovery()))
                        .get_result::<(String, bool)>(conn)
                        .await
                })
                .await
        }),
    )
    .await
    .unwrap();
    assert_eq!(in_transaction, (name.clone(), false));

    for i in 0..cluster.replica_count() {
        cluster.resume_replay(i).await.unwrap();
    }
    cluster.wait_for_replicas().await.unwrap();
    let after = with_causal_token(token, read(pool.clone())).await;
    assert_eq!(
        after,
        Some((name, true)),
        "a caught-up replica serves the token"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn causal_token_read_waits_for_a_replica_when_asked_to() {
    let Some(cluster) = private_cluster("causal_token_waits").await else {
        return;
    };
    let pool = builder(&cluster)
        .read_your_writes(ReadYourWrites::Lsn {
            wait: Duration::from_secs(3),
        })
        .build()
        .unwrap();
    for i in 0..cluster.replica_count() {
        cluster.pause_replay(i).await.unwrap();
    }
    let mut writer = pool.get().await.unwrap();
    let (id, _) = insert_product(&mut writer, &unique("causal_wait")).await;
    let token = writer.causal_token().await.unwrap().unwrap();
    drop(writer);
    let reader = {
        let pool = pool.clone();
        tokio::spawn(with_causal_token(token, async move {
            let mut conn = pool.get().await.unwrap();
            let began = Instant::now();
            let row = with_read_replica(true, async {
                products::table
                    .find(id)
                    .select(pg_is_in_recovery())
                    .get_result::<bool>(&mut conn)
                    .await
            })
            .await;
            (row, began.elapsed())
        }))
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..cluster.replica_count() {
        cluster.resume_replay(i).await.unwrap();
    }
    let (row, waited) = reader.await.unwrap();
    eprintln!("causal wait: served after {waited:?}");
    assert!(row.unwrap(), "a replica served it after catching up");
    assert!(waited >= Duration::from_millis(250), "{waited:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_window_mode_reads_the_primary_for_a_while_after_a_write() {
    let servers = servers().await;
    let pool = servers
        .pool_builder(&unique("window"))
        .read_your_writes(ReadYourWrites::TimeWindow(Duration::from_millis(400)))
        .build()
        .unwrap();
    let mut writer = pool.get().await.unwrap();
    insert_product(&mut writer, &unique("window")).await;
    let token = writer.causal_token().await.unwrap().unwrap();
    let mut conn = pool.get().await.unwrap();
    let id = with_causal_token(token, with_read_replica(true, where_ran(&mut conn))).await;
    assert!(servers.is_primary(&id), "{id:?}");
    tokio::time::sleep(Duration::from_millis(450)).await;
    let mut conn = pool.get().await.unwrap();
    let id = with_causal_token(token, with_read_replica(true, where_ran(&mut conn))).await;
    assert!(servers.is_replica(&id), "{id:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_transactions_follow_the_time_window_too() {
    let servers = servers().await;
    let pool = servers
        .pool_builder(&unique("window_tx"))
        .read_your_writes(ReadYourWrites::TimeWindow(Duration::from_secs(60)))
        .build()
        .unwrap();
    let mut writer = pool.get().await.unwrap();
    insert_product(&mut writer, &unique("window_tx")).await;
    let token = writer.causal_token().await.unwrap().unwrap();
    let read_only_transaction = |pool: RoutedPool| async move {
        let mut conn = pool.get().await.unwrap();
        conn.build_transaction()
            .read_only()
            .run(async |conn| Ok::<_, DieselError>(where_ran(conn).await))
            .await
            .unwrap()
    };
    let id = with_read_replica(true, read_only_transaction(pool.clone())).await;
    assert!(servers.is_replica(&id), "no token: a replica, {id:?}");
    let id = with_causal_token(
        token,
        with_read_replica(true, read_only_transaction(pool.clone())),
    )
    .await;
    assert!(
        servers.is_primary(&id),
        "within the window: the primary, {id:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_reads_within_ten_percent_of_even() {
    let servers = servers().await;
    let pool = servers.pool(&unique("round_robin"));
    let mut counts: HashMap<ServerId, usize> = HashMap::new();
    for _ in 0..1000 {
        *counts.entry(read_once(&pool).await.unwrap()).or_default() += 1;
    }
    eprintln!(
        "round robin over {} replicas: {counts:?}",
        servers.replica_ids.len()
    );
    assert_eq!(counts.len(), servers.replica_ids.len(), "{counts:?}");
    let even = 1000 / servers.replica_ids.len();
    for (id, count) in &counts {
        assert!(servers.is_replica(id), "{id:?}");
        assert!(count.abs_diff(even) * 10 <= even, "{counts:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_and_least_outstanding_shape_the_spread() {
    let servers = servers().await;
    if servers.replica_urls.len() < 2 {
        return;
    }
    let weighted = RoutedPool::builder(&servers.primary_url)
        .replica_with_weight(&servers.replica_urls[0], 1)
        .replica_with_weight(&servers.replica_urls[1], 3)
        .build()
        .unwrap();
    let mut heavy: usize = 0;
    for _ in 0..400 {
        if read_once(&weighted).await.unwrap() == servers.replica_ids[1] {
            heavy += 1;
        }
    }
    assert!(
        heavy.abs_diff(300) <= 30,
        "{heavy} of 400 on the weight-3 replica"
    );

    // Least outstanding: while one request holds a replica, the next ones use the other.
    let pool = servers
        .pool_builder(&unique("least_outstanding"))
        .policy(LeastOutstanding::new())
        .build()
        .unwrap();
    let mut holder = pool.get().await.unwrap();
    let held = with_read_replica(true, where_ran(&mut holder)).await;
    for _ in 0..10 {
        let id = read_once(&pool).await.unwrap();
        assert!(servers.is_replica(&id));
        assert_ne!(id, held, "the busy replica got a read");
    }
    drop(holder);
}
