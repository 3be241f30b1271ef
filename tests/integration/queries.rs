//! Ordinary diesel code on a routed connection (builders and `save_changes`, joins, `execute`,
//! `establish`, concurrent requests, a write hidden in a function), each asked of the server that
//! ran the statement, on both connection kinds (see `kinds`); and the scopes of query futures and
//! of threads.

use diesel::sql_types::{Bool, Integer};
use futures_util::TryStreamExt;
use routing_core::{RoutingExt, with_primary, with_read_replica};
use routing_fixtures::{OrderStatus, orders, products};
use routing_tests::{
    ServerId, Servers, inet_server_port, pg_is_in_recovery, servers, unique, where_ran,
};

use crate::kinds::prelude::*;
use crate::kinds::{Conn, Kind, Pool, on, on_both_kinds};
use crate::support::RanOn;

on_both_kinds!(
    save_changes_and_builder_reads_work_unchanged,
    join_and_aggregate_reads_go_to_a_replica,
    concurrent_requests_with_different_scopes_route_independently,
    execute_of_a_select_is_a_read,
    routed_connection_establish_talks_to_its_primary,
    a_write_hidden_in_a_function_wrongly_registered_as_read_only_is_rerun_on_the_primary,
);

/// A pool of `kind` over `servers`; see `Servers::pool_builder`.
fn pool(kind: Kind, servers: &Servers, application_name: &str) -> Pool {
    Pool::build(kind, servers.pool_builder(application_name))
}

#[derive(Debug, Clone, Queryable, Selectable, Identifiable, AsChangeset)]
#[diesel(table_name = products)]
struct Product {
    id: i64,
    name: String,
    price_cents: i64,
    created_at: chrono::DateTime<chrono::Utc>,
}

async fn save_changes_and_builder_reads_work_unchanged(kind: Kind) {
    let servers = servers().await;
    let pool = pool(kind, servers, &unique("save_changes"));
    let mut setup = pool.get().await;
    let name = unique("saved");
    let (id, _) = setup.insert_product(&name).await;
    drop(setup);
    servers.wait_for_replicas().await;
    with_read_replica(true, async {
        let mut conn = pool.get().await;
        // first / load / get_results / streamed / boxed: all reads, all on a replica.
        let product = on!(conn, |c| products::table
            .find(id)
            .select(Product::as_select())
            .first(c))
        .unwrap();
        assert_eq!(product.name, name);
        let listed: Vec<(String, bool)> = on!(conn, |c| products::table
            .filter(products::id.eq(id))
            .select((products::name, pg_is_in_recovery()))
            .load(c))
        .unwrap();
        assert_eq!(listed, [(name.clone(), true)]);
        let got: Vec<bool> = on!(conn, |c| products::table
            .filter(products::id.eq(id))
            .select(pg_is_in_recovery())
            .get_results(c))
        .unwrap();
        assert_eq!(got, [true]);
        // Row by row: diesel-async's `load_stream`, diesel's `load_iter`.
        let streamed: Vec<bool> = conn
            .run(
                async |c| {
                    use diesel_async::RunQueryDsl;
                    products::table
                        .filter(products::id.eq(id))
                        .select(pg_is_in_recovery())
                        .load_stream::<bool>(c)
                        .await
                        .unwrap()
                        .try_collect()
                        .await
                        .unwrap()
                },
                |c| {
                    use diesel::RunQueryDsl;
                    products::table
                        .filter(products::id.eq(id))
                        .select(pg_is_in_recovery())
                        .load_iter::<bool, diesel::connection::DefaultLoadingMode>(c)
                        .unwrap()
                        .collect::<QueryResult<_>>()
                        .unwrap()
                },
            )
            .await;
        assert_eq!(streamed, [true]);
        let boxed: bool = on!(conn, |c| products::table
            .into_boxed()
            .filter(products::id.eq(id))
            .select(pg_is_in_recovery())
            .get_result(c))
        .unwrap();
        assert!(boxed);

        // save_changes is an UPDATE ... RETURNING: primary, and the change is there.
        let changed = Product {
            price_cents: 999,
            ..product
        };
        let saved: Product = on!(conn, |c| changed.save_changes(c)).unwrap();
        assert_eq!(saved.price_cents, 999);
        let (price, in_recovery, port) = on!(conn, |c| products::table
            .find(id)
            .select((
                products::price_cents,
                pg_is_in_recovery(),
                inet_server_port(),
            ))
            .get_result::<(i64, bool, i32)>(c))
        .unwrap();
        assert_eq!(price, 999);
        assert!(servers.is_primary(&ServerId { port, in_recovery }));
    })
    .await;
}

async fn join_and_aggregate_reads_go_to_a_replica(kind: Kind) {
    let servers = servers().await;
    let pool = pool(kind, servers, &unique("aggregates"));
    let mut setup = pool.get().await;
    let (product, _) = setup.insert_product(&unique("joined")).await;
    setup.insert_order(product, OrderStatus::Paid).await;
    drop(setup);
    servers.wait_for_replicas().await;
    let mut conn = pool.get().await;
    with_read_replica(true, async {
        let (count, in_recovery, port) = on!(conn, |c| orders::table
            .inner_join(products::table)
            .filter(products::id.eq(product))
            .filter(orders::status.eq(OrderStatus::Paid))
            .group_by(products::id)
            .select((
                diesel::dsl::count_star(),
                pg_is_in_recovery(),
                inet_server_port(),
            ))
            .get_result::<(i64, bool, i32)>(c))
        .unwrap();
        assert_eq!(count, 1);
        assert!(servers.is_replica(&ServerId { port, in_recovery }));
        let (total, in_recovery, port) = on!(conn, |c| products::table
            .filter(products::id.eq(product))
            .select((
                diesel::dsl::sum(products::price_cents),
                pg_is_in_recovery(),
                inet_server_port(),
            ))
            .group_by(products::id)
            .get_result::<(Option<diesel::data_types::PgNumeric>, bool, i32)>(c))
        .unwrap();
        assert!(total.is_some());
        assert!(servers.is_replica(&ServerId { port, in_recovery }));
    })
    .await;
}

async fn concurrent_requests_with_different_scopes_route_independently(kind: Kind) {
    let servers = servers().await;
    let pool = pool(kind, servers, &unique("concurrent"));
    let mut tasks = Vec::new();
    for i in 0..40 {
        let pool = pool.clone();
        let replica = i % 2 == 0;
        tasks.push(tokio::spawn(with_read_replica(replica, async move {
            let mut conn = pool.get().await;
            let mut seen = Vec::new();
            for _ in 0..5 {
                seen.push(conn.where_ran().await);
                tokio::task::yield_now().await;
            }
            (replica, seen)
        })));
    }
    for task in tasks {
        let (replica, seen) = task.await.unwrap();
        for id in seen {
            assert_eq!(servers.is_replica(&id), replica, "{id:?}");
            assert_eq!(servers.is_primary(&id), !replica, "{id:?}");
        }
    }
}

async fn execute_of_a_select_is_a_read(kind: Kind) {
    let servers = servers().await;
    let pool = pool(kind, servers, &unique("execute_read"));
    let mut conn = pool.get().await;
    let select = "SELECT 1 WHERE pg_is_in_recovery()";
    let rows = with_read_replica(true, async {
        on!(conn, |c| diesel::sql_query(select).execute(c))
    })
    .await
    .unwrap();
    assert_eq!(rows, 1, "the SELECT ran on a standby");
    let rows = on!(conn, |c| diesel::sql_query(select).execute(c)).unwrap();
    assert_eq!(rows, 0, "outside the scope it ran on the primary");
}

async fn routed_connection_establish_talks_to_its_primary(kind: Kind) {
    let servers = servers().await;
    let mut conn = match kind {
        Kind::Async => Conn::Async(Box::new(
            <routing_core::RoutedConnection as diesel_async::AsyncConnection>::establish(
                &servers.primary_url,
            )
            .await
            .unwrap(),
        )),
        Kind::Sync => Conn::Sync(Box::new(crate::kinds::blocking(|| {
            <routing_core::sync::RoutedConnection as diesel::Connection>::establish(
                &servers.primary_url,
            )
            .unwrap()
        }))),
    };
    let id = with_read_replica(true, conn.where_ran()).await;
    assert!(servers.is_primary(&id), "no replica configured: {id:?}");
    let bound: (bool, i32) = on!(conn, |c| diesel::select((
        diesel::dsl::sql::<Bool>("true"),
        diesel::dsl::sql::<Integer>("1"),
    ))
    .get_result(c))
    .unwrap();
    assert_eq!(bound, (true, 1));
}

async fn a_write_hidden_in_a_function_wrongly_registered_as_read_only_is_rerun_on_the_primary(
    kind: Kind,
) {
    let servers = servers().await;
    let function = unique("rt_hidden_write");
    let table = unique("rt_hidden_table");
    let mut admin = pool(kind, servers, &unique("hidden_setup")).get().await;
    admin
        .batch_execute(&format!(
            "CREATE TABLE {table} (id serial PRIMARY KEY, note text); \
             CREATE FUNCTION {function}() RETURNS int LANGUAGE sql VOLATILE \
             AS 'INSERT INTO {table} (note) VALUES (''hidden'') RETURNING 1'"
        ))
        .await
        .unwrap();
    servers.wait_for_replicas().await;
    let sql = format!(
        "SELECT {function}() AS n, pg_is_in_recovery() AS in_recovery, inet_server_port() AS port"
    );
    let wrongly_registered =
        || routing_core::Classifier::new().replica_safe_functions([function.as_str()]);

    // Strict: the replica's refusal (SQLSTATE 25006) reaches the caller, as a routing error
    // that says how to route the statement.
    let strict = Pool::build(
        kind,
        servers
            .pool_builder(&unique("hidden_strict"))
            .classifier(wrongly_registered()),
    );
    let mut conn = strict.get().await;
    let error = with_read_replica(true, async {
        on!(conn, |c| diesel::sql_query(&sql).get_result::<RanOn>(c))
    })
    .await
    .unwrap_err();
    match routing_core::Error::from_diesel(&error) {
        Some(routing_core::Error::RefusedAsWrite {
            after_rows: false,
            source:
                diesel::result::Error::DatabaseError(
                    diesel::result::DatabaseErrorKind::ReadOnlyTransaction,
                    _,
                ),
            ..
        }) => {}
        other => panic!("expected RefusedAsWrite, got {other:?}: {error}"),
    }
    assert!(error.to_string().contains("routing:primary"), "{error}");

    // The default: the refused statement changed nothing, so it runs again on the primary.
    let forgiving = Pool::build(
        kind,
        servers
            .pool_builder(&unique("hidden_retry"))
            .classifier(wrongly_registered())
            .retry_writes_refused_by_replica(true),
    );
    let mut conn = forgiving.get().await;
    let ran = with_read_replica(true, async {
        on!(conn, |c| diesel::sql_query(&sql).get_result::<RanOn>(c))
    })
    .await
    .unwrap();
    assert!(servers.is_primary(&ran.id()), "{ran:?}");
    assert!(conn.has_written());
    let count = format!("(SELECT count(*) FROM {table})");
    let rows: i64 = on!(conn, |c| diesel::select(diesel::dsl::sql::<
        diesel::sql_types::BigInt,
    >(&count))
    .get_result(c))
    .unwrap();
    assert_eq!(rows, 1, "one insert, on the primary");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scope_methods_on_a_query_future_route_it() {
    let servers = servers().await;
    let pool = servers.pool(&unique("routing_ext"));
    let mut conn = pool.get().await.unwrap();
    let id = where_ran(&mut conn).on_replica().await;
    assert!(servers.is_replica(&id), "on_replica: {id:?}");
    let id = where_ran(&mut conn).on_primary().on_replica().await;
    assert!(servers.is_primary(&id), "the innermost scope wins: {id:?}");
    let id = where_ran(&mut conn)
        .max_lag(std::time::Duration::from_secs(60))
        .on_replica()
        .await;
    assert!(
        servers.is_replica(&id),
        "a loose budget keeps the replica: {id:?}"
    );
    let id = where_ran(&mut conn).await;
    assert!(servers.is_primary(&id), "no scope after the future: {id:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_future_routes_by_the_scope_that_awaits_it() {
    use diesel_async::RunQueryDsl;
    let servers = servers().await;
    let pool = servers.pool(&unique("future_scope"));
    let mut conn = pool.get().await.unwrap();
    // diesel-async builds the query future before `with_read_replica` runs it.
    let (in_recovery, port) = with_read_replica(
        true,
        diesel::select((pg_is_in_recovery(), inet_server_port()))
            .get_result::<(bool, i32)>(&mut conn),
    )
    .await
    .unwrap();
    assert!(servers.is_replica(&ServerId { port, in_recovery }));
    let future = diesel::select((pg_is_in_recovery(), inet_server_port()))
        .get_result::<(bool, i32)>(&mut conn);
    let (in_recovery, port) = with_primary(future).await.unwrap();
    assert!(servers.is_primary(&ServerId { port, in_recovery }));
}

/// The synchronous scopes themselves, on plain threads: nested `with_read_replica_sync` scopes,
/// and a thread that carries the context only when handed it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_scopes_nest_and_cross_threads_only_when_handed_over() {
    use routing_core::{RoutingContext, with_read_replica_sync};
    let servers = servers().await;
    let pool = servers
        .pool_builder(&unique("sync_scopes"))
        .build_sync()
        .unwrap();
    let ask = |conn: &mut routing_core::sync::RoutedConnection| {
        use diesel::RunQueryDsl;
        let (in_recovery, port) = diesel::select((pg_is_in_recovery(), inet_server_port()))
            .get_result::<(bool, i32)>(conn)
            .unwrap();
        ServerId { port, in_recovery }
    };
    let seen = tokio::task::spawn_blocking(move || {
        let mut conn = pool.get().unwrap();
        let outside = ask(&mut conn);
        let (replica, nested, again) = with_read_replica_sync(true, || {
            let replica = ask(&mut conn);
            let nested = with_read_replica_sync(false, || ask(&mut conn));
            (replica, nested, ask(&mut conn))
        });
        let (plain, handed) = with_read_replica_sync(true, || {
            let context = RoutingContext::current();
            let mut first = pool.get().unwrap();
            let mut second = pool.get().unwrap();
            std::thread::scope(|scope| {
                let plain = scope.spawn(|| ask(&mut first)).join().unwrap();
                let handed = scope
                    .spawn(|| context.sync_scope(|| ask(&mut second)))
                    .join()
                    .unwrap();
                (plain, handed)
            })
        });
        [outside, replica, nested, again, plain, handed]
    })
    .await
    .unwrap();
    let replicas = seen.clone().map(|id| servers.is_replica(&id));
    assert_eq!(
        replicas,
        [false, true, false, true, false, true],
        "{seen:?}"
    );
}
