//! The routing rules, and a replica stopped under load, with every connection encrypted and
//! verified (`sslmode=verify-full` against the cluster's CA, on servers that refuse plain TCP):
//! each statement's own result says where it ran and that its session is encrypted.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use diesel::sql_types::Text;
use diesel_async::{AsyncConnection, RunQueryDsl};
use routing_cluster::LocalCluster;
use routing_core::{RoutedConnection, RoutedPool, with_read_replica};
use routing_tests::unique;

use crate::tls::{READ, Ran, WRITE, builder, cluster, root_cert};

/// A pool over `cluster` whose every URL says `verify-full` against the cluster's CA.
fn verify_full(cluster: &LocalCluster, name: &str) -> RoutedPool {
    let ca = cluster.ca_cert_path().expect("a TLS cluster has a CA");
    builder(
        cluster,
        &format!("sslmode=verify-full&{}", root_cert(ca)),
        &unique(name),
    )
    .build()
    .expect("a pool")
}

async fn ask(conn: &mut RoutedConnection) -> Ran {
    diesel::sql_query(READ)
        .get_result::<Ran>(conn)
        .await
        .expect("a read")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_routing_rules_hold_with_every_connection_encrypted() {
    let Some(cluster) = cluster("the_routing_rules_hold_with_every_connection_encrypted").await
    else {
        return;
    };
    let primary = i32::from(cluster.primary_port());
    let pool = verify_full(cluster, "tls_rules");
    let mut seen = Vec::new();

    // A read outside every scope: the primary.
    let mut conn = pool.get().await.unwrap();
    let outside = ask(&mut conn).await;
    seen.push((
        "read outside a scope",
        outside.in_recovery,
        false,
        outside.ssl,
    ));
    assert_eq!(outside.port, primary);

    // A read in a replica scope: a replica.
    let mut conn = pool.get().await.unwrap();
    let replica = with_read_replica(true, ask(&mut conn)).await;
    seen.push((
        "read in a replica scope",
        replica.in_recovery,
        true,
        replica.ssl,
    ));

    // A transaction, even in a replica scope: the primary.
    let mut conn = pool.get().await.unwrap();
    let in_transaction = with_read_replica(
        true,
        conn.transaction(async |conn| Ok::<_, diesel::result::Error>(ask(conn).await)),
    )
    .await
    .unwrap();
    seen.push((
        "read in a transaction",
        in_transaction.in_recovery,
        false,
        in_transaction.ssl,
    ));

    // A read-only transaction begun in a replica scope: a replica.
    let mut conn = pool.get().await.unwrap();
    let mut read_only = conn.build_transaction().read_only();
    let in_read_only = with_read_replica(
        true,
        read_only.run(async |conn| Ok::<_, diesel::result::Error>(ask(conn).await)),
    )
    .await
    .unwrap();
    seen.push((
        "read in a read-only transaction",
        in_read_only.in_recovery,
        true,
        in_read_only.ssl,
    ));

    // A write: the primary; and the same connection's next read, in a replica scope, too.
    let mut conn = pool.get().await.unwrap();
    let write = with_read_replica(
        true,
        diesel::sql_query(WRITE)
            .bind::<Text, _>(unique("tls_rules_product"))
            .get_result::<Ran>(&mut conn),
    )
    .await
    .unwrap();
    seen.push((
        "write in a replica scope",
        write.in_recovery,
        false,
        write.ssl,
    ));
    let after = with_read_replica(true, ask(&mut conn)).await;
    seen.push(("read after a write", after.in_recovery, false, after.ssl));
    assert_eq!(after.port, primary);

    for (what, in_recovery, on_replica, ssl) in seen {
        assert_eq!(in_recovery, on_replica, "{what}: ran on the wrong server");
        assert!(ssl, "{what}: the session is not encrypted");
    }
}

/// A replica stopped while four tasks read in a replica scope over TLS: no read fails, each is
/// served by an encrypted session, and the other replica serves them after the stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_stopped_under_encrypted_reads_loses_no_read() {
    if routing_tests::servers()
        .await
        .local("a_replica_stopped_under_encrypted_reads_loses_no_read")
        .is_none()
    {
        return;
    }
    let cluster = LocalCluster::builder()
        .tls(true)
        .start()
        .await
        .expect("a TLS-only cluster");
    let pool = verify_full(&cluster, "tls_stop");
    pool.check().await.expect("every server passes verify-full");
    let stopped = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let (pool, stopped) = (pool.clone(), Arc::clone(&stopped));
            tokio::spawn(async move {
                let mut answers = Vec::new();
                let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
                loop {
                    let after_stop = AtomicBool::load(&stopped, Ordering::Acquire);
                    let mut conn = pool.get().await.expect("a routed connection");
                    let ran = with_read_replica(
                        true,
                        diesel::sql_query(READ).get_result::<Ran>(&mut conn),
                    )
                    .await
                    .map_err(|e| e.to_string());
                    answers.push((after_stop, ran));
                    let after = answers.iter().filter(|(after, _)| *after).count();
                    if after >= 50 || tokio::time::Instant::now() > deadline {
                        return answers;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let victim = i32::from(cluster.replica_port(0));
    cluster.stop_replica(0).await.expect("stop replica 0");
    stopped.store(true, Ordering::Release);
    let mut reads = 0;
    let mut after_stop_elsewhere = 0;
    for reader in readers {
        for (after_stop, ran) in reader.await.expect("a reader finished") {
            let ran = ran.unwrap_or_else(|error| panic!("a read failed: {error}"));
            assert!(ran.ssl, "a session is not encrypted: {ran:?}");
            reads += 1;
            if after_stop && ran.port != victim {
                after_stop_elsewhere += 1;
            }
        }
    }
    eprintln!(
        "TLS, replica 0 stopped: {reads} reads, 0 failed, {after_stop_elsewhere} after the stop served elsewhere"
    );
    assert!(
        after_stop_elsewhere >= 150,
        "{after_stop_elsewhere} reads after the stop"
    );
}
