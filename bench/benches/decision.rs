//! The cost of a routing decision: reading the scope, classifying a statement, and the whole
//! per-query decision (classification, scope, replica choice), without any I/O.
//!
//! `cargo bench -p routing-bench --bench decision`

// `criterion_group!` generates an undocumented function.
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use diesel::pg::Pg;
use diesel::prelude::*;
use futures_util::FutureExt;
use routing_core::__private::decide;
use routing_core::{
    Classifier, RoutedConnection, RoutedPool, should_use_read_replica, with_read_replica_sync,
};
use routing_fixtures::{orders, products};

/// A pool of `replicas` replicas that never connects: decisions need no server.
fn connection(replicas: usize) -> RoutedConnection {
    let mut builder = RoutedPool::builder("postgres://bench@127.0.0.1:1/bench");
    for i in 0..replicas {
        builder = builder.replica(format!("postgres://bench@127.0.0.{}:1/bench", i + 2));
    }
    let pool = builder.build().expect("a pool");
    // Outside a tokio runtime `get` starts no health probe and completes at once.
    pool.get()
        .now_or_never()
        .expect("get does not wait")
        .expect("a connection")
}

fn scope(c: &mut Criterion) {
    let mut group = c.benchmark_group("scope");
    group.bench_function("outside any scope", |b| {
        b.iter(|| black_box(should_use_read_replica()))
    });
    with_read_replica_sync(true, || {
        group.bench_function("inside a scope", |b| {
            b.iter(|| black_box(should_use_read_replica()))
        });
    });
    group.finish();
}

fn classification(c: &mut Criterion) {
    let classifier = Classifier::new();
    let static_sql = diesel::debug_query::<Pg, _>(&products::table.find(1_i64).select((
        products::id,
        products::name,
        products::price_cents,
    )))
    .to_string();
    let join_sql = diesel::debug_query::<Pg, _>(
        &orders::table
            .inner_join(products::table)
            .filter(products::price_cents.gt(100_i64))
            .order(orders::id.desc())
            .limit(20)
            .select((orders::id, products::name, orders::quantity)),
    )
    .to_string();
    let raw = "SELECT p.id, lower(p.name), coalesce(sum(o.quantity), 0) FROM products p \
               LEFT JOIN orders o ON o.product_id = p.id WHERE p.id = ANY($1) GROUP BY p.id";
    let mut group = c.benchmark_group("classify");
    group.bench_function("rendered point select", |b| {
        b.iter(|| black_box(classifier.classify(black_box(&static_sql))))
    });
    group.bench_function("rendered join", |b| {
        b.iter(|| black_box(classifier.classify(black_box(&join_sql))))
    });
    group.bench_function("raw sql", |b| {
        b.iter(|| black_box(classifier.classify(black_box(raw))))
    });
    group.finish();
}

fn decision(c: &mut Criterion) {
    let mut group = c.benchmark_group("decision");
    let point =
        products::table
            .find(1_i64)
            .select((products::id, products::name, products::price_cents));
    let raw = diesel::sql_query("SELECT id, name FROM products WHERE id = 1");
    with_read_replica_sync(true, || {
        let mut conn = connection(2);
        group.bench_function("static query (cached classification)", |b| {
            b.iter(|| black_box(decide(&mut conn, black_box(&point)).expect("decides")))
        });
        group.bench_function("boxed query (rendered and classified)", |b| {
            b.iter(|| {
                let boxed = products::table
                    .into_boxed::<Pg>()
                    .filter(products::id.eq(black_box(1_i64)))
                    .filter(products::price_cents.gt(0_i64))
                    .select((products::id, products::name));
                black_box(decide(&mut conn, &boxed).expect("decides"))
            })
        });
        group.bench_function("raw sql_query", |b| {
            b.iter(|| black_box(decide(&mut conn, black_box(&raw)).expect("decides")))
        });
    });
    group.finish();

    let mut group = c.benchmark_group("decision by replica count");
    with_read_replica_sync(true, || {
        for replicas in [1, 2, 4, 8] {
            let mut conn = connection(replicas);
            group.bench_with_input(BenchmarkId::from_parameter(replicas), &replicas, |b, _| {
                b.iter(|| black_box(decide(&mut conn, black_box(&point)).expect("decides")))
            });
        }
    });
    group.finish();
}

criterion_group!(benches, scope, classification, decision);
criterion_main!(benches);
