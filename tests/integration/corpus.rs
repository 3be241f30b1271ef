//! A corpus of statement shapes: each is classified, then run through a routed connection of
//! each kind (async and sync) in a replica scope. No write may reach a replica (the pool does
//! not retry refused writes, so a misrouted write fails with SQLSTATE 25006), and every plain
//! read must be answered by one.

use diesel::dsl::{count_star, exists, max, not};
use diesel::pg::Pg;
use diesel::sql_types::Bool;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use routing_core::{Classifier, RoutedConnection, sync, with_read_replica};
use routing_fixtures::{OrderStatus, orders, products};
use routing_tests::{pg_is_in_recovery, servers, unique};

use crate::kinds::prelude::*;
use crate::kinds::{Kind, Pool, on_both_kinds};

on_both_kinds!(corpus_no_write_reaches_a_replica_and_every_read_does);

/// A statement's own answer to "am I on a standby?".
#[derive(QueryableByName)]
struct InRecovery {
    #[diesel(sql_type = Bool)]
    in_recovery: bool,
}

type Run = Box<
    dyn for<'c> Fn(&'c mut RoutedConnection) -> BoxFuture<'c, QueryResult<Option<bool>>>
        + Send
        + Sync,
>;
type RunSync = Box<dyn Fn(&mut sync::RoutedConnection) -> QueryResult<Option<bool>> + Send + Sync>;

/// One statement shape, and how to run it on each connection kind.
struct Case {
    name: &'static str,
    write: bool,
    sql: String,
    run: Run,
    run_sync: RunSync,
}

/// A diesel builder query returning one `bool`: `pg_is_in_recovery()` of the server that ran it.
macro_rules! builder {
    ($cases:ident, $name:literal, $write:literal, $query:expr) => {{
        let sql = diesel::debug_query::<Pg, _>(&$query).to_string();
        $cases.push(Case {
            name: $name,
            write: $write,
            sql,
            run: Box::new(move |conn| {
                use diesel_async::RunQueryDsl;
                $query.get_result::<bool>(conn).map(|r| r.map(Some)).boxed()
            }),
            run_sync: Box::new(move |conn| {
                use diesel::RunQueryDsl;
                $query.get_result::<bool>(conn).map(Some)
            }),
        });
    }};
}

/// Raw SQL whose one row has an `in_recovery` column.
macro_rules! raw {
    ($cases:ident, $name:literal, $write:literal, $sql:expr) => {{
        let sql: String = $sql.into();
        let run_sql = sql.clone();
        let sync_sql = sql.clone();
        $cases.push(Case {
            name: $name,
            write: $write,
            sql,
            run: Box::new(move |conn| {
                use diesel_async::RunQueryDsl;
                diesel::sql_query(run_sql.clone())
                    .get_result::<InRecovery>(conn)
                    .map(|r| r.map(|row| Some(row.in_recovery)))
                    .boxed()
            }),
            run_sync: Box::new(move |conn| {
                use diesel::RunQueryDsl;
                diesel::sql_query(sync_sql.clone())
                    .get_result::<InRecovery>(conn)
                    .map(|row| Some(row.in_recovery))
            }),
        });
    }};
}

/// Raw SQL run with `execute`; it returns nothing to ask, so a replica would refuse it.
macro_rules! exec {
    ($cases:ident, $name:literal, $sql:expr) => {{
        let sql: String = $sql.into();
        let run_sql = sql.clone();
        let sync_sql = sql.clone();
        $cases.push(Case {
            name: $name,
            write: true,
            sql,
            run: Box::new(move |conn| {
                use diesel_async::RunQueryDsl;
                diesel::sql_query(run_sql.clone())
                    .execute(conn)
                    .map(|r| r.map(|_| None))
                    .boxed()
            }),
            run_sync: Box::new(move |conn| {
                use diesel::RunQueryDsl;
                diesel::sql_query(sync_sql.clone())
                    .execute(conn)
                    .map(|_| None)
            }),
        });
    }};
}

async fn corpus_no_write_reaches_a_replica_and_every_read_does(kind: Kind) {
    let servers = servers().await;
    let pool = Pool::build(kind, servers.pool_builder(&unique("corpus")));
    // Shared by the cases' closures, which outlive this scope's borrows.
    let name: &'static str = Box::leak(unique("corpus").into_boxed_str());
    let mut setup = pool.get().await;
    let (product, _) = setup.insert_product(name).await;
    setup.insert_order(product, OrderStatus::Pending).await;
    let scratch = unique("corpus_scratch");
    let volatile = unique("corpus_volatile");
    setup
        .batch_execute(&format!(
            "CREATE TABLE {scratch} (id int PRIMARY KEY, note text); \
             CREATE FUNCTION {volatile}() RETURNS boolean LANGUAGE sql VOLATILE AS \
             $$ SELECT pg_is_in_recovery() $$"
        ))
        .await
        .unwrap();
    drop(setup);
    servers.wait_for_replicas().await;

    let mut cases: Vec<Case> = Vec::new();
    // Builder reads.
    builder!(
        cases,
        "select by key",
        false,
        products::table.find(product).select(pg_is_in_recovery())
    );
    builder!(
        cases,
        "filter, order, limit, offset",
        false,
        products::table
            .filter(products::price_cents.gt(0_i64))
            .filter(products::id.eq(product))
            .order(products::id.desc())
            .limit(1)
            .offset(0)
            .select(pg_is_in_recovery())
    );
    builder!(
        cases,
        "inner join",
        false,
        orders::table
            .inner_join(products::table)
            .filter(products::id.eq(product))
            .select(pg_is_in_recovery())
            .limit(1)
    );
    builder!(
        cases,
        "left join",
        false,
        products::table
            .left_join(orders::table)
            .filter(products::id.eq(product))
            .select(pg_is_in_recovery())
            .limit(1)
    );
    builder!(
        cases,
        "group by with count",
        false,
        products::table
            .filter(products::id.eq(product))
            .group_by(products::id)
            .having(count_star().gt(0))
            .select(pg_is_in_recovery())
    );
    builder!(
        cases,
        "distinct",
        false,
        products::table
            .filter(products::id.eq(product))
            .select(pg_is_in_recovery())
            .distinct()
    );
    builder!(
        cases,
        "exists subquery",
        false,
        products::table
            .filter(exists(
                orders::table.filter(orders::product_id.eq(products::id))
            ))
            .filter(products::id.eq(product))
            .select(pg_is_in_recovery())
    );
    builder!(
        cases,
        "eq_any (= ANY)",
        false,
        products::table
            .filter(products::id.eq_any(vec![product, -1]))
            .select(pg_is_in_recovery())
    );
    builder!(
        cases,
        "like, between, not",
        false,
        products::table
            .filter(products::name.like(format!("{name}%")))
            .filter(products::price_cents.between(0_i64, 1_000_000_i64))
            .filter(not(products::name.is_null()))
            .select(pg_is_in_recovery())
    );
    builder!(cases, "boxed with dynamic filters", false, {
        let mut query = products::table
            .select(pg_is_in_recovery())
            .into_boxed::<Pg>();
        query = query.filter(products::id.eq(product));
        query = query.filter(products::name.eq(name));
        query
    });
    builder!(
        cases,
        "enum filter",
        false,
        orders::table
            .filter(orders::product_id.eq(product))
            .filter(orders::status.eq(OrderStatus::Pending))
            .select(pg_is_in_recovery())
    );
    builder!(
        cases,
        "aggregate subselect",
        false,
        products::table
            .filter(
                products::id.nullable().eq(orders::table
                    .select(max(orders::product_id))
                    .filter(orders::product_id.eq(product))
                    .single_value())
            )
            .select(pg_is_in_recovery())
    );
    builder!(
        cases,
        "select without from",
        false,
        diesel::select(pg_is_in_recovery())
    );
    // Builder writes.
    builder!(
        cases,
        "insert returning",
        true,
        diesel::insert_into(products::table)
            .values((
                products::name.eq(format!("{name}_insert")),
                products::price_cents.eq(1_i64)
            ))
            .returning(pg_is_in_recovery())
    );
    builder!(
        cases,
        "update returning",
        true,
        diesel::update(products::table.find(product))
            .set(products::price_cents.eq(products::price_cents + 1_i64))
            .returning(pg_is_in_recovery())
    );
    builder!(
        cases,
        "delete returning",
        true,
        diesel::delete(products::table.filter(products::name.eq(format!("{name}_insert"))))
            .returning(pg_is_in_recovery())
    );
    builder!(
        cases,
        "insert on conflict do nothing",
        true,
        diesel::insert_into(products::table)
            .values((
                products::id.eq(product),
                products::name.eq("dup"),
                products::price_cents.eq(1_i64)
            ))
            .on_conflict(products::id)
            .do_update()
            .set(products::price_cents.eq(products::price_cents))
            .returning(pg_is_in_recovery())
    );
    builder!(
        cases,
        "for update",
        true,
        products::table
            .find(product)
            .select(pg_is_in_recovery())
            .for_update()
    );
    builder!(
        cases,
        "for no key update",
        true,
        products::table
            .find(product)
            .select(pg_is_in_recovery())
            .for_no_key_update()
    );
    builder!(
        cases,
        "for share",
        true,
        products::table
            .find(product)
            .select(pg_is_in_recovery())
            .for_share()
    );
    builder!(
        cases,
        "for key share",
        true,
        products::table
            .find(product)
            .select(pg_is_in_recovery())
            .for_key_share()
    );
    builder!(
        cases,
        "for update nowait",
        true,
        products::table
            .find(product)
            .select(pg_is_in_recovery())
            .for_update()
            .no_wait()
    );

    // Raw reads.
    raw!(
        cases,
        "raw select",
        false,
        "SELECT pg_is_in_recovery() AS in_recovery"
    );
    raw!(
        cases,
        "raw with keywords in literals and comments",
        false,
        "SELECT pg_is_in_recovery() AS in_recovery, 'DELETE FROM products' AS text, \
         $$INSERT$$ AS dollar /* UPDATE products */ -- DROP TABLE products"
    );
    raw!(
        cases,
        "raw quoted identifiers named like keywords",
        false,
        "SELECT pg_is_in_recovery() AS \"update\", pg_is_in_recovery() AS in_recovery"
    );
    raw!(
        cases,
        "raw read-only CTE",
        false,
        "WITH recent AS (SELECT id FROM products ORDER BY id DESC LIMIT 5) \
         SELECT pg_is_in_recovery() AS in_recovery FROM recent LIMIT 1"
    );
    raw!(
        cases,
        "raw recursive CTE",
        false,
        "WITH RECURSIVE t(n) AS (VALUES (1) UNION ALL SELECT n + 1 FROM t WHERE n < 5) \
         SELECT pg_is_in_recovery() AS in_recovery FROM t WHERE n = 5"
    );
    raw!(
        cases,
        "raw values list",
        false,
        "SELECT * FROM (VALUES (pg_is_in_recovery())) AS v(in_recovery)"
    );
    raw!(
        cases,
        "raw built-in functions",
        false,
        "SELECT pg_is_in_recovery() AS in_recovery, lower('A'), coalesce(NULL, 1), \
         date_trunc('day', now()), jsonb_build_object('a', 1), substring('abc' FROM 1 FOR 2), \
         1.5::numeric(10,2), row_number() OVER ()"
    );
    raw!(
        cases,
        "raw set-returning function with column alias",
        false,
        "SELECT pg_is_in_recovery() AS in_recovery FROM generate_series(1, 3) AS g(i) WHERE i = 2"
    );
    raw!(
        cases,
        "raw union of parenthesised selects",
        false,
        "(SELECT pg_is_in_recovery() AS in_recovery) UNION (SELECT pg_is_in_recovery())"
    );
    raw!(
        cases,
        "raw bind parameter",
        false,
        "SELECT pg_is_in_recovery() AS in_recovery WHERE 1 = 1"
    );
    // Raw writes.
    raw!(
        cases,
        "raw data-modifying CTE",
        true,
        format!(
            "WITH changed AS (UPDATE products SET price_cents = price_cents WHERE id = {product} RETURNING id) \
         SELECT pg_is_in_recovery() AS in_recovery FROM changed"
        )
    );
    raw!(
        cases,
        "raw insert ... select",
        true,
        format!(
            "INSERT INTO {scratch} (id, note) SELECT 1, 'copied' ON CONFLICT (id) DO UPDATE SET note = 'again' \
         RETURNING pg_is_in_recovery() AS in_recovery"
        )
    );
    raw!(
        cases,
        "raw nextval",
        true,
        "SELECT nextval('products_id_seq') > 0 AS advanced, pg_is_in_recovery() AS in_recovery"
    );
    raw!(
        cases,
        "raw setval",
        true,
        "SELECT setval('orders_id_seq', nextval('orders_id_seq')) > 0 AS set, pg_is_in_recovery() AS in_recovery"
    );
    raw!(
        cases,
        "raw advisory lock",
        true,
        "SELECT pg_try_advisory_xact_lock(42) AS locked, pg_is_in_recovery() AS in_recovery"
    );
    raw!(
        cases,
        "raw set_config",
        true,
        "SELECT set_config('application_name', 'corpus', false) IS NOT NULL AS set, pg_is_in_recovery() AS in_recovery"
    );
    raw!(
        cases,
        "raw lowercase for update",
        true,
        format!(
            "select pg_is_in_recovery() as in_recovery from products where id = {product} for update"
        )
    );
    raw!(
        cases,
        "raw unknown volatile function",
        true,
        format!("SELECT {volatile}() AS in_recovery")
    );
    raw!(
        cases,
        "raw primary hint",
        true,
        "/* routing:primary */ SELECT pg_is_in_recovery() AS in_recovery"
    );
    exec!(
        cases,
        "raw merge statement",
        format!(
            "MERGE INTO {scratch} AS t USING (SELECT 2 AS id) AS s ON t.id = s.id \
         WHEN NOT MATCHED THEN INSERT (id, note) VALUES (s.id, 'merged')"
        )
    );
    exec!(
        cases,
        "raw select into",
        format!("SELECT 1 AS one INTO {scratch}_copy")
    );
    exec!(
        cases,
        "raw ddl",
        format!("ALTER TABLE {scratch} ADD COLUMN IF NOT EXISTS extra int")
    );
    exec!(cases, "raw truncate", format!("TRUNCATE {scratch}_copy"));
    exec!(
        cases,
        "raw create temp table",
        format!("CREATE TEMP TABLE {scratch}_temp (id int)")
    );
    exec!(
        cases,
        "raw explain analyze",
        format!("EXPLAIN ANALYZE UPDATE {scratch} SET note = note")
    );

    let classifier = Classifier::new();
    let mut writes = 0;
    let mut reads = 0;
    for case in &cases {
        let class = classifier.classify(&case.sql);
        assert_eq!(
            !class.is_read(),
            case.write,
            "{}: {:?} for {}",
            case.name,
            class,
            case.sql
        );
        let mut conn = pool.get().await;
        let answer = with_read_replica(true, async {
            conn.run(async |c| (case.run)(c).await, |c| (case.run_sync)(c))
                .await
        })
        .await
        .unwrap_or_else(|e| panic!("{kind:?}: {} failed: {e}\n{}", case.name, case.sql));
        match (case.write, answer) {
            (true, Some(in_recovery)) => assert!(!in_recovery, "{} ran on a replica", case.name),
            (true, None) => {}
            (false, answer) => {
                assert_eq!(answer, Some(true), "{} did not run on a replica", case.name)
            }
        }
        if case.write {
            writes += 1;
        } else {
            reads += 1;
        }
    }
    assert!(cases.len() >= 25, "{} shapes", cases.len());
    assert!(
        writes >= 10 && reads >= 10,
        "{writes} writes, {reads} reads"
    );
}
