//! The routing rules, each asked of the server that ran the statement.

use diesel::prelude::*;
use diesel::sql_types::{Bool, Integer, Text};
use diesel_async::{AsyncConnection, RunQueryDsl, SaveChangesDsl, SimpleAsyncConnection};
use futures_util::TryStreamExt;
use routing_core::{RoutingExt, with_primary, with_read_replica};
use routing_fixtures::{OrderStatus, orders, products};
use routing_tests::{ServerId, inet_server_port, pg_is_in_recovery, servers, unique, where_ran};

use crate::support::{RanOn, insert_order, insert_product};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_in_replica_scope_goes_to_a_replica() {
    let servers = servers().await;
    let pool = servers.pool(&unique("read_replica"));
    let mut conn = pool.get().await.unwrap();
    let id = with_read_replica(true, where_ran(&mut conn)).await;
    assert!(servers.is_replica(&id), "{id:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_outside_any_scope_goes_to_the_primary() {
    let servers = servers().await;
    let pool = servers.pool(&unique("read_default"));
    let mut conn = pool.get().await.unwrap();
    let id = where_ran(&mut conn).await;
    assert!(servers.is_primary(&id), "{id:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_scope_inside_replica_scope_reads_from_the_primary() {
    let servers = servers().await;
    let pool = servers.pool(&unique("read_nested"));
    let mut conn = pool.get().await.unwrap();
    with_read_replica(true, async {
        let inner = with_primary(where_ran(&mut conn)).await;
        assert!(servers.is_primary(&inner), "{inner:?}");
        let outer = where_ran(&mut conn).await;
        assert!(servers.is_replica(&outer), "{outer:?}");
    })
    .await;
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
async fn insert_returning_in_replica_scope_goes_to_the_primary() {
    let servers = servers().await;
    let pool = servers.pool(&unique("insert"));
    let mut conn = pool.get().await.unwrap();
    let (_, id) = with_read_replica(true, insert_product(&mut conn, &unique("insert"))).await;
    assert!(servers.is_primary(&id), "{id:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_and_delete_in_replica_scope_go_to_the_primary() {
    let servers = servers().await;
    let pool = servers.pool(&unique("update_delete"));
    let mut setup = pool.get().await.unwrap();
    let (product, _) = insert_product(&mut setup, &unique("update")).await;
    drop(setup);
    with_read_replica(true, async {
        let mut conn = pool.get().await.unwrap();
        let (in_recovery, port) = diesel::update(products::table.find(product))
            .set(products::price_cents.eq(250_i64))
            .returning((pg_is_in_recovery(), inet_server_port()))
            .get_result::<(bool, i32)>(&mut conn)
            .await
            .unwrap();
        assert!(servers.is_primary(&ServerId { port, in_recovery }));

        let mut conn = pool.get().await.unwrap();
        let (in_recovery, port) = diesel::delete(products::table.find(product))
            .returning((pg_is_in_recovery(), inet_server_port()))
            .get_result::<(bool, i32)>(&mut conn)
            .await
            .unwrap();
        assert!(servers.is_primary(&ServerId { port, in_recovery }));

        // `execute` (no RETURNING) reaches the primary too: a replica would refuse it.
        let mut conn = pool.get().await.unwrap();
        let updated = diesel::update(products::table.filter(products::id.eq(-1)))
            .set(products::price_cents.eq(1_i64))
            .execute(&mut conn)
            .await
            .unwrap();
        assert_eq!(updated, 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_four_locking_clauses_go_to_the_primary() {
    let servers = servers().await;
    let pool = servers.pool(&unique("locking"));
    let mut setup = pool.get().await.unwrap();
    let (product, _) = insert_product(&mut setup, &unique("locked")).await;
    drop(setup);
    servers.wait_for_replicas().await;
    let base = || {
        products::table
            .find(product)
            .select((pg_is_in_recovery(), inet_server_port()))
    };
    with_read_replica(true, async {
        // Each locking clause on a fresh connection (a new request).
        macro_rules! locked {
            ($($clause:ident()).+) => {{
                let mut conn = pool.get().await.unwrap();
                base()$(.$clause())+.get_result::<(bool, i32)>(&mut conn).await.unwrap()
            }};
        }
        let seen = [
            locked!(for_update()),
            locked!(for_no_key_update()),
            locked!(for_share()),
            locked!(for_key_share()),
            locked!(for_update().skip_locked()),
        ];
        for (in_recovery, port) in seen {
            assert!(
                servers.is_primary(&ServerId { port, in_recovery }),
                "{port}"
            );
        }
        // The same read without a locking clause goes to a replica.
        let mut conn = pool.get().await.unwrap();
        let (in_recovery, port) = base().get_result::<(bool, i32)>(&mut conn).await.unwrap();
        assert!(
            servers.is_replica(&ServerId { port, in_recovery }),
            "{port}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_modifying_cte_goes_to_the_primary() {
    let servers = servers().await;
    let pool = servers.pool(&unique("cte"));
    let mut conn = pool.get().await.unwrap();
    let ran = with_read_replica(
        true,
        diesel::sql_query(
            "WITH inserted AS (INSERT INTO products (name, price_cents) VALUES ($1, 5) RETURNING id) \
             SELECT pg_is_in_recovery() AS in_recovery, inet_server_port() AS port FROM inserted",
        )
        .bind::<Text, _>(unique("cte"))
        .get_result::<RanOn>(&mut conn),
    )
    .await
    .unwrap();
    assert!(servers.is_primary(&ran.id()), "{ran:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nextval_goes_to_the_primary() {
    let servers = servers().await;
    let pool = servers.pool(&unique("nextval"));
    let mut conn = pool.get().await.unwrap();
    let ran = with_read_replica(
        true,
        diesel::sql_query(
            "SELECT nextval('products_id_seq') > 0 AS in_recovery_is_not_this, \
             pg_is_in_recovery() AS in_recovery, inet_server_port() AS port",
        )
        .get_result::<RanOn>(&mut conn),
    )
    .await
    .unwrap();
    assert!(servers.is_primary(&ran.id()), "{ran:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ddl_and_batch_execute_go_to_the_primary() {
    let servers = servers().await;
    let pool = servers.pool(&unique("ddl"));
    let table = unique("ddl_table");
    with_read_replica(true, async {
        let mut conn = pool.get().await.unwrap();
        diesel::sql_query(format!("CREATE TABLE {table} (id int)"))
            .execute(&mut conn)
            .await
            .unwrap();
        let mut conn = pool.get().await.unwrap();
        conn.batch_execute(&format!(
            "INSERT INTO {table} VALUES (1); DROP TABLE {table}"
        ))
        .await
        .unwrap();
        // batch_execute ran on this connection's primary session, and later reads follow it.
        let mut conn = pool.get().await.unwrap();
        conn.batch_execute("SET application_name = 'batch_probe'")
            .await
            .unwrap();
        let (name, in_recovery, port) = diesel::select((
            diesel::dsl::sql::<Text>("current_setting('application_name')"),
            pg_is_in_recovery(),
            inet_server_port(),
        ))
        .get_result::<(String, bool, i32)>(&mut conn)
        .await
        .unwrap();
        assert_eq!(name, "batch_probe");
        assert!(servers.is_primary(&ServerId { port, in_recovery }));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_function_goes_to_the_primary_and_registered_one_to_a_replica() {
    let servers = servers().await;
    let function = unique("rt_lookup");
    let mut admin = servers.pool(&unique("fn_setup")).get().await.unwrap();
    admin
        .batch_execute(&format!(
            "CREATE FUNCTION {function}() RETURNS int LANGUAGE sql STABLE AS 'SELECT 1'"
        ))
        .await
        .unwrap();
    servers.wait_for_replicas().await;
    let sql = format!(
        "SELECT {function}() AS n, pg_is_in_recovery() AS in_recovery, inet_server_port() AS port"
    );

    let pool = servers.pool(&unique("fn_unknown"));
    let mut conn = pool.get().await.unwrap();
    let ran = with_read_replica(true, diesel::sql_query(&sql).get_result::<RanOn>(&mut conn))
        .await
        .unwrap();
    assert!(servers.is_primary(&ran.id()), "{ran:?}");

    let pool = servers
        .pool_builder(&unique("fn_known"))
        .classifier(routing_core::Classifier::new().replica_safe_functions([function.as_str()]))
        .build()
        .unwrap();
    let mut conn = pool.get().await.unwrap();
    let ran = with_read_replica(true, diesel::sql_query(&sql).get_result::<RanOn>(&mut conn))
        .await
        .unwrap();
    assert!(servers.is_replica(&ran.id()), "{ran:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_hints_override_the_classifier() {
    let servers = servers().await;
    let pool = servers.pool(&unique("hints"));
    with_read_replica(true, async {
        let mut conn = pool.get().await.unwrap();
        let ran = diesel::sql_query(
            "/* routing:primary */ SELECT pg_is_in_recovery() AS in_recovery, inet_server_port() AS port",
        )
        .get_result::<RanOn>(&mut conn)
        .await
        .unwrap();
        assert!(servers.is_primary(&ran.id()), "{ran:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_after_a_write_stick_to_the_primary() {
    let servers = servers().await;
    let pool = servers.pool(&unique("sticky"));
    let name = unique("sticky");
    with_read_replica(true, async {
        let mut conn = pool.get().await.unwrap();
        assert!(servers.is_replica(&where_ran(&mut conn).await));
        let (id, _) = insert_product(&mut conn, &name).await;
        // The row is read back on the primary, although replication may not have caught up.
        let (found, in_recovery, port) = products::table
            .find(id)
            .select((products::name, pg_is_in_recovery(), inet_server_port()))
            .get_result::<(String, bool, i32)>(&mut conn)
            .await
            .unwrap();
        assert_eq!(found, name);
        assert!(servers.is_primary(&ServerId { port, in_recovery }));
        assert!(conn.has_written());
        // A new connection (the next request) reads from a replica again.
        let mut next = pool.get().await.unwrap();
        assert!(servers.is_replica(&where_ran(&mut next).await));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escape_hatch_forces_the_primary_for_one_call() {
    let servers = servers().await;
    let pool = servers.pool(&unique("hatch"));
    with_read_replica(true, async {
        let mut conn = pool.get().await.unwrap();
        let primary = conn.primary().await.unwrap();
        let id = where_ran(primary).await;
        assert!(servers.is_primary(&id), "{id:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_scope_reader_never_holds_a_primary_connection() {
    let servers = servers().await;
    let name = unique("lazy_reader");
    let pool = servers.pool(&name);
    let mut conn = pool.get().await.unwrap();
    with_read_replica(true, async {
        for _ in 0..3 {
            assert!(servers.is_replica(&where_ran(&mut conn).await));
        }
    })
    .await;
    // While the connection is still held, the servers report its sessions.
    assert_eq!(servers.sessions(&servers.primary_url, &name).await, 0);
    let mut on_replicas = 0;
    for url in &servers.replica_urls {
        on_replicas += servers.sessions(url, &name).await;
    }
    assert_eq!(on_replicas, 1);
    drop(conn);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_scope_reader_never_holds_a_replica_connection() {
    let servers = servers().await;
    let name = unique("lazy_primary");
    let pool = servers.pool(&name);
    let mut conn = pool.get().await.unwrap();
    for _ in 0..3 {
        assert!(servers.is_primary(&where_ran(&mut conn).await));
    }
    for url in &servers.replica_urls {
        assert_eq!(servers.sessions(url, &name).await, 0, "{url}");
    }
    assert_eq!(servers.sessions(&servers.primary_url, &name).await, 1);
    drop(conn);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_connection_is_opened_before_a_statement() {
    let servers = servers().await;
    let name = unique("lazy_get");
    let pool = servers.pool(&name);
    let conn = pool.get().await.unwrap();
    for url in std::iter::once(&servers.primary_url).chain(&servers.replica_urls) {
        assert_eq!(servers.sessions(url, &name).await, 0, "{url}");
    }
    drop(conn);
}

#[derive(Debug, Clone, Queryable, Selectable, Identifiable, AsChangeset)]
#[diesel(table_name = products)]
struct Product {
    id: i64,
    name: String,
    price_cents: i64,
    created_at: chrono::DateTime<chrono::Utc>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn save_changes_and_builder_reads_work_unchanged() {
    let servers = servers().await;
    let pool = servers.pool(&unique("save_changes"));
    let mut setup = pool.get().await.unwrap();
    let name = unique("saved");
    let (id, _) = insert_product(&mut setup, &name).await;
    drop(setup);
    servers.wait_for_replicas().await;
    with_read_replica(true, async {
        let mut conn = pool.get().await.unwrap();
        // first / load / get_results / load_stream / boxed: all reads, all on a replica.
        let product = products::table
            .find(id)
            .select(Product::as_select())
            .first(&mut conn)
            .await
            .unwrap();
        assert_eq!(product.name, name);
        let listed: Vec<(String, bool)> = products::table
            .filter(products::id.eq(id))
            .select((products::name, pg_is_in_recovery()))
            .load(&mut conn)
            .await
            .unwrap();
        assert_eq!(listed, [(name.clone(), true)]);
        let got: Vec<bool> = products::table
            .filter(products::id.eq(id))
            .select(pg_is_in_recovery())
            .get_results(&mut conn)
            .await
            .unwrap();
        assert_eq!(got, [true]);
        let streamed: Vec<bool> = products::table
            .filter(products::id.eq(id))
            .select(pg_is_in_recovery())
            .load_stream::<bool>(&mut conn)
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        assert_eq!(streamed, [true]);
        let boxed: bool = products::table
            .into_boxed()
            .filter(products::id.eq(id))
            .select(pg_is_in_recovery())
            .get_result(&mut conn)
            .await
            .unwrap();
        assert!(boxed);

        // save_changes is an UPDATE ... RETURNING: primary, and the change is there.
        let changed = Product {
            price_cents: 999,
            ..product
        };
        let saved: Product = changed.save_changes(&mut conn).await.unwrap();
        assert_eq!(saved.price_cents, 999);
        let (price, in_recovery, port) = products::table
            .find(id)
            .select((
                products::price_cents,
                pg_is_in_recovery(),
                inet_server_port(),
            ))
            .get_result::<(i64, bool, i32)>(&mut conn)
            .await
            .unwrap();
        assert_eq!(price, 999);
        assert!(servers.is_primary(&ServerId { port, in_recovery }));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_and_aggregate_reads_go_to_a_replica() {
    let servers = servers().await;
    let pool = servers.pool(&unique("aggregates"));
    let mut setup = pool.get().await.unwrap();
    let (product, _) = insert_product(&mut setup, &unique("joined")).await;
    insert_order(&mut setup, product, OrderStatus::Paid).await;
    drop(setup);
    servers.wait_for_replicas().await;
    let mut conn = pool.get().await.unwrap();
    with_read_replica(true, async {
        let (count, in_recovery, port) = orders::table
            .inner_join(products::table)
            .filter(products::id.eq(product))
            .filter(orders::status.eq(OrderStatus::Paid))
            .group_by(products::id)
            .select((
                diesel::dsl::count_star(),
                pg_is_in_recovery(),
                inet_server_port(),
            ))
            .get_result::<(i64, bool, i32)>(&mut conn)
            .await
            .unwrap();
        assert_eq!(count, 1);
        assert!(servers.is_replica(&ServerId { port, in_recovery }));
        let (total, in_recovery, port) = products::table
            .filter(products::id.eq(product))
            .select((
                diesel::dsl::sum(products::price_cents),
                pg_is_in_recovery(),
                inet_server_port(),
            ))
            .group_by(products::id)
            .get_result::<(Option<diesel::data_types::PgNumeric>, bool, i32)>(&mut conn)
            .await
            .unwrap();
        assert!(total.is_some());
        assert!(servers.is_replica(&ServerId { port, in_recovery }));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_with_different_scopes_route_independently() {
    let servers = servers().await;
    let pool = servers.pool(&unique("concurrent"));
    let mut tasks = Vec::new();
    for i in 0..40 {
        let pool = pool.clone();
        let replica = i % 2 == 0;
        tasks.push(tokio::spawn(with_read_replica(replica, async move {
            let mut conn = pool.get().await.unwrap();
            let mut seen = Vec::new();
            for _ in 0..5 {
                seen.push(where_ran(&mut conn).await);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn execute_of_a_select_is_a_read() {
    let pool = servers().await.pool(&unique("execute_read"));
    let mut conn = pool.get().await.unwrap();
    with_read_replica(true, async {
        let rows = diesel::sql_query("SELECT 1 WHERE pg_is_in_recovery()")
            .execute(&mut conn)
            .await
            .unwrap();
        assert_eq!(rows, 1, "the SELECT ran on a standby");
    })
    .await;
    let rows = diesel::sql_query("SELECT 1 WHERE pg_is_in_recovery()")
        .execute(&mut conn)
        .await
        .unwrap();
    assert_eq!(rows, 0, "outside the scope it ran on the primary");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routed_connection_establish_talks_to_its_primary() {
    let servers = servers().await;
    let mut conn = routing_core::RoutedConnection::establish(&servers.primary_url)
        .await
        .unwrap();
    let id = with_read_replica(true, where_ran(&mut conn)).await;
    assert!(servers.is_primary(&id), "no replica configured: {id:?}");
    let bound: (bool, i32) = diesel::select((
        diesel::dsl::sql::<Bool>("true"),
        diesel::dsl::sql::<Integer>("1"),
    ))
    .get_result(&mut conn)
    .await
    .unwrap();
    assert_eq!(bound, (true, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_future_routes_by_the_scope_that_awaits_it() {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_hidden_in_a_function_wrongly_registered_as_read_only_is_rerun_on_the_primary() {
    let servers = servers().await;
    let function = unique("rt_hidden_write");
    let table = unique("rt_hidden_table");
    let mut admin = servers.pool(&unique("hidden_setup")).get().await.unwrap();
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
    let strict = servers
        .pool_builder(&unique("hidden_strict"))
        .classifier(wrongly_registered())
        .build()
        .unwrap();
    let mut conn = strict.get().await.unwrap();
    let error = with_read_replica(true, diesel::sql_query(&sql).get_result::<RanOn>(&mut conn))
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
    let forgiving = servers
        .pool_builder(&unique("hidden_retry"))
        .classifier(wrongly_registered())
        .retry_writes_refused_by_replica(true)
        .build()
        .unwrap();
    let mut conn = forgiving.get().await.unwrap();
    let ran = with_read_replica(true, diesel::sql_query(&sql).get_result::<RanOn>(&mut conn))
        .await
        .unwrap();
    assert!(servers.is_primary(&ran.id()), "{ran:?}");
    assert!(conn.has_written());
    let rows: i64 = diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>(&format!(
        "(SELECT count(*) FROM {table})"
    )))
    .get_result(&mut conn)
    .await
    .unwrap();
    assert_eq!(rows, 1, "one insert, on the primary");
}
