//! The routing scope never leaks between concurrent tasks.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use routing_core::{
    RoutedPool, RoutingContext, should_use_read_replica, spawn_in_context, with_read_replica,
    with_read_replica_sync,
};
use routing_tests::{Servers, servers, unique, where_ran};

/// A small deterministic generator: every task draws its own scopes.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn coin(&mut self) -> bool {
        self.next() & 1 == 1
    }
}

/// One task: nested scopes drawn at random, the flag checked at every step and across yields,
/// and one query whose server must match the innermost scope.
async fn task(seed: u64, pool: RoutedPool, servers: &'static Servers, checks: Arc<AtomicUsize>) {
    let mut rng = XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let outer = rng.coin();
    let inner = rng.coin();
    let query_in_inner = rng.coin();
    let check = |expected: bool| {
        assert_eq!(should_use_read_replica(), expected, "task {seed}");
        checks.fetch_add(1, Ordering::Relaxed);
    };
    check(false);
    with_read_replica(outer, async {
        check(outer);
        tokio::task::yield_now().await;
        check(outer);
        with_read_replica(inner, async {
            check(inner);
            tokio::task::yield_now().await;
            check(inner);
            with_read_replica_sync(!inner, || check(!inner));
            check(inner);
            if query_in_inner {
                let mut conn = pool.get().await.unwrap();
                let id = where_ran(&mut conn).await;
                assert_eq!(servers.is_replica(&id), inner, "task {seed}: {id:?}");
                assert_eq!(servers.is_primary(&id), !inner, "task {seed}: {id:?}");
                checks.fetch_add(1, Ordering::Relaxed);
            }
            check(inner);
        })
        .await;
        check(outer);
        let carried = spawn_in_context(async { should_use_read_replica() })
            .await
            .unwrap();
        assert_eq!(carried, outer, "task {seed}");
        let plain = tokio::spawn(async { should_use_read_replica() })
            .await
            .unwrap();
        assert!(
            !plain,
            "task {seed}: tokio::spawn must not inherit the scope"
        );
        if !query_in_inner {
            let mut conn = pool.get().await.unwrap();
            tokio::task::yield_now().await;
            let id = where_ran(&mut conn).await;
            assert_eq!(servers.is_replica(&id), outer, "task {seed}: {id:?}");
            assert_eq!(servers.is_primary(&id), !outer, "task {seed}: {id:?}");
            checks.fetch_add(1, Ordering::Relaxed);
        }
        check(outer);
    })
    .await;
    check(false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_concurrent_tasks_never_see_each_others_scope() {
    const TASKS: u64 = 10_000;
    let servers = servers().await;
    let pool = servers
        .pool_builder(&unique("leak"))
        .max_size(8)
        .checkout_timeout(std::time::Duration::from_secs(120))
        .build()
        .unwrap();
    let checks = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..TASKS)
        .map(|seed| tokio::spawn(task(seed, pool.clone(), servers, Arc::clone(&checks))))
        .collect();
    for handle in handles {
        handle.await.unwrap();
    }
    // 11 flag checks and one query per task, none skipped.
    assert_eq!(checks.load(Ordering::Relaxed), (TASKS as usize) * 12);
    assert!(!should_use_read_replica());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_carried_context_routes_the_spawned_task_on_its_own_connection() {
    let servers = servers().await;
    let pool = servers.pool(&unique("carried"));
    let id = with_read_replica(true, async {
        let context = RoutingContext::current();
        let pool = pool.clone();
        tokio::spawn(context.scope(async move {
            let mut conn = pool.get().await.unwrap();
            where_ran(&mut conn).await
        }))
        .await
        .unwrap()
    })
    .await;
    assert!(servers.is_replica(&id), "{id:?}");
}
