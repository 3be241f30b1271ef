//! The routing rules, each asked of the server that ran the statement. Every case runs on both
//! connection kinds (see `kinds`): `case::on_async` and `case::on_sync`. Ordinary diesel code on
//! a routed connection, and the scopes of futures and threads, are in `queries`.

use diesel::sql_types::Text;
use routing_core::{with_primary, with_read_replica};
use routing_fixtures::products;
use routing_tests::{
    ServerId, Servers, inet_server_port, pg_is_in_recovery, servers, unique, where_ran,
};

use crate::kinds::prelude::*;
use crate::kinds::{Kind, Pool, on, on_both_kinds};
use crate::support::RanOn;

on_both_kinds!(
    read_in_replica_scope_goes_to_a_replica,
    read_outside_any_scope_goes_to_the_primary,
    primary_scope_inside_replica_scope_reads_from_the_primary,
    insert_returning_in_replica_scope_goes_to_the_primary,
    update_and_delete_in_replica_scope_go_to_the_primary,
    all_four_locking_clauses_go_to_the_primary,
    data_modifying_cte_goes_to_the_primary,
    nextval_goes_to_the_primary,
    ddl_and_batch_execute_go_to_the_primary,
    unknown_function_goes_to_the_primary_and_registered_one_to_a_replica,
    sql_hints_override_the_classifier,
    reads_after_a_write_stick_to_the_primary,
    escape_hatch_forces_the_primary_for_one_call,
    replica_scope_reader_never_holds_a_primary_connection,
    primary_scope_reader_never_holds_a_replica_connection,
    no_connection_is_opened_before_a_statement,
);

/// A pool of `kind` over `servers`; see `Servers::pool_builder`.
fn pool(kind: Kind, servers: &Servers, application_name: &str) -> Pool {
    Pool::build(kind, servers.pool_builder(application_name))
}

async fn read_in_replica_scope_goes_to_a_replica(kind: Kind) {
    let servers = servers().await;
    let pool = pool(kind, servers, &unique("read_replica"));
    let mut conn = pool.get().await;
    let id = with_read_replica(true, conn.where_ran()).await;
    assert!(servers.is_replica(&id), "{id:?}");
}

async fn read_outside_any_scope_goes_to_the_primary(kind: Kind) {
    let servers = servers().await;
    let pool = pool(kind, servers, &unique("read_default"));
    let mut conn = pool.get().await;
    let id = conn.where_ran().await;
    assert!(servers.is_primary(&id), "{id:?}");
}

async fn primary_scope_inside_replica_scope_reads_from_the_primary(kind: Kind) {
    let servers = servers().await;
    let pool = pool(kind, servers, &unique("read_nested"));
    let mut conn = pool.get().await;
    with_read_replica(true, async {
        let inner = with_primary(conn.where_ran()).await;
        assert!(servers.is_primary(&inner), "{inner:?}");
        let outer = conn.where_ran().await;
        assert!(servers.is_replica(&outer), "{outer:?}");
    })
    .await;
}

async fn insert_returning_in_replica_scope_goes_to_the_primary(kind: Kind) {
    let servers = servers().await;
    let pool = pool(kind, servers, &unique("insert"));
    let mut conn = pool.get().await;
    let (_, id) = with_read_replica(true, conn.insert_product(&unique("insert"))).await;
    assert!(servers.is_primary(&id), "{id:?}");
}

async fn update_and_delete_in_replica_scope_go_to_the_primary(kind: Kind) {
    let servers = servers().await;
    let pool = pool(kind, servers, &unique("update_delete"));
    let mut setup = pool.get().await;
    let (product, _) = setup.insert_product(&unique("update")).await;
    drop(setup);
    with_read_replica(true, async {
        let mut conn = pool.get().await;
        let (in_recovery, port) = on!(conn, |c| diesel::update(products::table.find(product))
            .set(products::price_cents.eq(250_i64))
            .returning((pg_is_in_recovery(), inet_server_port()))
            .get_result::<(bool, i32)>(c))
        .unwrap();
        assert!(servers.is_primary(&ServerId { port, in_recovery }));

        let mut conn = pool.get().await;
        let (in_recovery, port) = on!(conn, |c| diesel::delete(products::table.find(product))
            .returning((pg_is_in_recovery(), inet_server_port()))
            .get_result::<(bool, i32)>(c))
        .unwrap();
        assert!(servers.is_primary(&ServerId { port, in_recovery }));

        // `execute` (no RETURNING) reaches the primary too: a replica would refuse it.
        let mut conn = pool.get().await;
        let updated = on!(conn, |c| diesel::update(
            products::table.filter(products::id.eq(-1))
        )
        .set(products::price_cents.eq(1_i64))
        .execute(c))
        .unwrap();
        assert_eq!(updated, 0);
    })
    .await;
}

async fn all_four_locking_clauses_go_to_the_primary(kind: Kind) {
    let servers = servers().await;
    let pool = pool(kind, servers, &unique("locking"));
    let mut setup = pool.get().await;
    let (product, _) = setup.insert_product(&unique("locked")).await;
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
                let mut conn = pool.get().await;
                on!(conn, |c| base()$(.$clause())+.get_result::<(bool, i32)>(c)).unwrap()
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
        let mut conn = pool.get().await;
        let (in_recovery, port) = on!(conn, |c| base().get_result::<(bool, i32)>(c)).unwrap();
        assert!(
            servers.is_replica(&ServerId { port, in_recovery }),
            "{port}"
        );
    })
    .await;
}

async fn data_modifying_cte_goes_to_the_primary(kind: Kind) {
    let servers = servers().await;
    let pool = pool(kind, servers, &unique("cte"));
    let mut conn = pool.get().await;
    let name = unique("cte");
    let ran = with_read_replica(true, async {
        on!(conn, |c| diesel::sql_query(
            "WITH inserted AS (INSERT INTO products (name, price_cents) VALUES ($1, 5) RETURNING id) \
             SELECT pg_is_in_recovery() AS in_recovery, inet_server_port() AS port FROM inserted",
        )
        .bind::<Text, _>(&name)
        .get_result::<RanOn>(c))
    })
    .await
    .unwrap();
    assert!(servers.is_primary(&ran.id()), "{ran:?}");
}

async fn nextval_goes_to_the_primary(kind: Kind) {
    let servers = servers().await;
    let pool = pool(kind, servers, &unique("nextval"));
    let mut conn = pool.get().await;
    let ran = with_read_replica(true, async {
        on!(conn, |c| diesel::sql_query(
            "SELECT nextval('products_id_seq') > 0 AS in_recovery_is_not_this, \
             pg_is_in_recovery() AS in_recovery, inet_server_port() AS port",
        )
        .get_result::<RanOn>(c))
    })
    .await
    .unwrap();
    assert!(servers.is_primary(&ran.id()), "{ran:?}");
}

async fn ddl_and_batch_execute_go_to_the_primary(kind: Kind) {
    let servers = servers().await;
    let pool = pool(kind, servers, &unique("ddl"));
    let table = unique("ddl_table");
    with_read_replica(true, async {
        let mut conn = pool.get().await;
        let create = format!("CREATE TABLE {table} (id int)");
        on!(conn, |c| diesel::sql_query(&create).execute(c)).unwrap();
        let mut conn = pool.get().await;
        conn.batch_execute(&format!(
            "INSERT INTO {table} VALUES (1); DROP TABLE {table}"
        ))
        .await
        .unwrap();
        // batch_execute ran on this connection's primary session, and later reads follow it.
        let mut conn = pool.get().await;
        conn.batch_execute("SET application_name = 'batch_probe'")
            .await
            .unwrap();
        let (name, in_recovery, port) = on!(conn, |c| diesel::select((
            diesel::dsl::sql::<Text>("current_setting('application_name')"),
            pg_is_in_recovery(),
            inet_server_port(),
        ))
        .get_result::<(String, bool, i32)>(c))
        .unwrap();
        assert_eq!(name, "batch_probe");
        assert!(servers.is_primary(&ServerId { port, in_recovery }));
    })
    .await;
}

async fn unknown_function_goes_to_the_primary_and_registered_one_to_a_replica(kind: Kind) {
    let servers = servers().await;
    let function = unique("rt_lookup");
    let mut admin = pool(kind, servers, &unique("fn_setup")).get().await;
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

    let unknown = pool(kind, servers, &unique("fn_unknown"));
    let mut conn = unknown.get().await;
    let ran = with_read_replica(true, async {
        on!(conn, |c| diesel::sql_query(&sql).get_result::<RanOn>(c))
    })
    .await
    .unwrap();
    assert!(servers.is_primary(&ran.id()), "{ran:?}");

    let known = Pool::build(
        kind,
        servers.pool_builder(&unique("fn_known")).classifier(
            routing_core::Classifier::new().replica_safe_functions([function.as_str()]),
        ),
    );
    let mut conn = known.get().await;
    let ran = with_read_replica(true, async {
        on!(conn, |c| diesel::sql_query(&sql).get_result::<RanOn>(c))
    })
    .await
    .unwrap();
    assert!(servers.is_replica(&ran.id()), "{ran:?}");
}

async fn sql_hints_override_the_classifier(kind: Kind) {
    let servers = servers().await;
    let pool = pool(kind, servers, &unique("hints"));
    with_read_replica(true, async {
        let mut conn = pool.get().await;
        let ran = on!(conn, |c| diesel::sql_query(
            "/* routing:primary */ SELECT pg_is_in_recovery() AS in_recovery, inet_server_port() AS port",
        )
        .get_result::<RanOn>(c))
        .unwrap();
        assert!(servers.is_primary(&ran.id()), "{ran:?}");
    })
    .await;
}

async fn reads_after_a_write_stick_to_the_primary(kind: Kind) {
    let servers = servers().await;
    let pool = pool(kind, servers, &unique("sticky"));
    let name = unique("sticky");
    with_read_replica(true, async {
        let mut conn = pool.get().await;
        assert!(servers.is_replica(&conn.where_ran().await));
        let (id, _) = conn.insert_product(&name).await;
        // The row is read back on the primary, although replication may not have caught up.
        let (found, in_recovery, port) = on!(conn, |c| products::table
            .find(id)
            .select((products::name, pg_is_in_recovery(), inet_server_port()))
            .get_result::<(String, bool, i32)>(c))
        .unwrap();
        assert_eq!(found, name);
        assert!(servers.is_primary(&ServerId { port, in_recovery }));
        assert!(conn.has_written());
        // A new connection (the next request) reads from a replica again.
        let mut next = pool.get().await;
        assert!(servers.is_replica(&next.where_ran().await));
    })
    .await;
}

async fn escape_hatch_forces_the_primary_for_one_call(kind: Kind) {
    let servers = servers().await;
    let pool = pool(kind, servers, &unique("hatch"));
    with_read_replica(true, async {
        let mut conn = pool.get().await;
        let id = conn
            .run(
                async |c| where_ran(c.primary().await.unwrap()).await,
                |c| {
                    use diesel::RunQueryDsl;
                    let (in_recovery, port) =
                        diesel::select((pg_is_in_recovery(), inet_server_port()))
                            .get_result::<(bool, i32)>(c.primary().unwrap())
                            .unwrap();
                    ServerId { port, in_recovery }
                },
            )
            .await;
        assert!(servers.is_primary(&id), "{id:?}");
    })
    .await;
}

async fn replica_scope_reader_never_holds_a_primary_connection(kind: Kind) {
    let servers = servers().await;
    let name = unique("lazy_reader");
    let pool = pool(kind, servers, &name);
    let mut conn = pool.get().await;
    with_read_replica(true, async {
        for _ in 0..3 {
            assert!(servers.is_replica(&conn.where_ran().await));
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

async fn primary_scope_reader_never_holds_a_replica_connection(kind: Kind) {
    let servers = servers().await;
    let name = unique("lazy_primary");
    let pool = pool(kind, servers, &name);
    let mut conn = pool.get().await;
    for _ in 0..3 {
        assert!(servers.is_primary(&conn.where_ran().await));
    }
    for url in &servers.replica_urls {
        assert_eq!(servers.sessions(url, &name).await, 0, "{url}");
    }
    assert_eq!(servers.sessions(&servers.primary_url, &name).await, 1);
    drop(conn);
}

async fn no_connection_is_opened_before_a_statement(kind: Kind) {
    let servers = servers().await;
    let name = unique("lazy_get");
    let pool = pool(kind, servers, &name);
    let conn = pool.get().await;
    for url in std::iter::once(&servers.primary_url).chain(&servers.replica_urls) {
        assert_eq!(servers.sessions(url, &name).await, 0, "{url}");
    }
    drop(conn);
}
