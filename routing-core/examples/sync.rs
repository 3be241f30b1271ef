//! Synchronous Diesel behind `routing_core::sync::RoutedPool`, on a throwaway cluster.
//!
//! Starts a primary with two streaming replicas (`routing-cluster`), migrates the primary with
//! diesel_migrations' `MigrationHarness` on a routed sync connection, then runs ordinary
//! synchronous diesel code (`get_result`, `load`, `execute`, `transaction`,
//! `build_transaction().read_only()`, `sql_query`, `batch_execute`) in and out of a replica
//! scope, on this thread and on one it hands the scope to, and prints where each statement ran,
//! as the servers answered (`pg_is_in_recovery()`, `inet_server_port()`).
//!
//! ```sh
//! cargo run -p routing-core --example sync --features sync
//! ```
//!
//! It needs the PostgreSQL server programs, as the workspace's tests do.

use std::process::ExitCode;

use diesel::connection::SimpleConnection;
use diesel::dsl::count_star;
use diesel::prelude::*;
use diesel::sql_types::{Bool, Integer};
use diesel_migrations::MigrationHarness;
use routing_cluster::LocalCluster;
use routing_core::dsl::{inet_server_port, pg_is_in_recovery};
use routing_core::sync::{RoutedConnection, RoutedPool};
use routing_core::{RoutingContext, with_read_replica_sync};
use routing_fixtures::products;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A raw statement's answer to "where did I run?".
#[derive(QueryableByName)]
struct RanOn {
    #[diesel(sql_type = Bool)]
    in_recovery: bool,
    #[diesel(sql_type = Integer)]
    port: i32,
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("sync example: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), BoxError> {
    println!("starting a throwaway cluster: one primary and two streaming replicas ...");
    // The harness is async; the example itself is not.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let cluster = runtime.block_on(LocalCluster::start())?;
    let pool = RoutedPool::builder(cluster.primary_url())
        .replicas(cluster.replica_urls())
        .build_sync()?;
    let mut conn = pool.get()?;
    let applied = conn.run_pending_migrations(routing_fixtures::MIGRATIONS)?;
    println!("  migrated the primary: {} migration(s)", applied.len());
    runtime.block_on(cluster.wait_for_replicas())?;
    drop(conn);

    let name = |in_recovery: bool, port: i32| {
        let role = u16::try_from(port)
            .ok()
            .and_then(|port| {
                if port == cluster.primary_port() {
                    return Some("primary".to_owned());
                }
                (0..cluster.replica_count())
                    .find(|&i| cluster.replica_port(i) == port)
                    .map(|i| format!("replica {i}"))
            })
            .unwrap_or_else(|| "unknown".to_owned());
        let mark = if in_recovery {
            "in recovery"
        } else {
            "read-write"
        };
        format!("{role} :{port} ({mark})")
    };
    let show = |label: &str, (in_recovery, port): (bool, i32)| {
        println!("  {label:<52} ran on {}", name(in_recovery, port));
    };
    let where_ran = |conn: &mut RoutedConnection| {
        diesel::select((pg_is_in_recovery(), inet_server_port())).get_result::<(bool, i32)>(conn)
    };

    println!("\none connection, outside every scope:");
    let mut conn = pool.get()?;
    show("select", where_ran(&mut conn)?);

    println!("\na request in a replica scope (with_read_replica_sync(true, ..)):");
    with_read_replica_sync(true, || -> Result<(), BoxError> {
        let mut conn = pool.get()?;
        show("select", where_ran(&mut conn)?);
        let (count, in_recovery, port) = products::table
            .select((count_star(), pg_is_in_recovery(), inet_server_port()))
            .get_result::<(i64, bool, i32)>(&mut conn)?;
        show(&format!("count products ({count})"), (in_recovery, port));
        let ran = diesel::sql_query(
            "SELECT pg_is_in_recovery() AS in_recovery, inet_server_port() AS port",
        )
        .load::<RanOn>(&mut conn)?;
        for row in ran {
            show("sql_query(..).load", (row.in_recovery, row.port));
        }
        let ran = conn
            .build_transaction()
            .read_only()
            .run(|conn| where_ran(conn))?;
        show("build_transaction().read_only().run", ran);
        let ran = conn.transaction(|conn| where_ran(conn))?;
        show("transaction (read-write)", ran);
        let (id, in_recovery, port) = diesel::insert_into(products::table)
            .values((
                products::name.eq("teapot"),
                products::price_cents.eq(1_900_i64),
            ))
            .returning((products::id, pg_is_in_recovery(), inet_server_port()))
            .get_result::<(i64, bool, i32)>(&mut conn)?;
        show("insert ... returning", (in_recovery, port));
        let updated = diesel::update(products::table.find(id))
            .set(products::price_cents.eq(2_100_i64))
            .execute(&mut conn)?;
        println!("  {:<52} updated {updated} row(s)", "update ... execute");
        show(
            "select after the write (read-your-writes)",
            where_ran(&mut conn)?,
        );
        conn.batch_execute("SELECT 1")?;
        println!("  {:<52} ran on the primary (always)", "batch_execute");

        // The next request reads from a replica again; a thread it starts carries the scope
        // only when handed it.
        let context = RoutingContext::current();
        let pool = pool.clone();
        let worker = std::thread::spawn(move || {
            let mut conn = pool.get()?;
            let plain = where_ran(&mut conn)?;
            let carried = context.sync_scope(|| where_ran(&mut conn))?;
            Ok::<_, BoxError>((plain, carried))
        });
        let (plain, carried) = worker.join().map_err(|_| "the worker thread panicked")??;
        show("a new thread, without the scope", plain);
        show(
            "a new thread, RoutingContext::current().sync_scope",
            carried,
        );
        Ok(())
    })?;
    println!("\n{}", pool.status());
    Ok(())
}
