//! The two connection kinds every routing case runs on: diesel-async's (`RoutedPool`) and
//! synchronous diesel's (`sync::RoutedPool`). A case is written once over [`Pool`] and [`Conn`],
//! with [`on!`] for its statements, and [`on_both_kinds!`] makes a test of it for each kind.
//!
//! The sync connection runs on a thread of its own (a scoped plain thread, the tokio worker
//! parked in `block_in_place`), inside the routing context of the code that calls it, handed
//! over as applications hand it to their thread pools: `RoutingContext::current()` here,
//! `sync_scope` there.

use diesel::result::QueryResult;
use routing_core::{RoutedConnection, RoutedPool, RoutedPoolBuilder, RoutingContext, sync};
use routing_fixtures::{OrderStatus, orders, products};
use routing_tests::{ServerId, inet_server_port, pg_is_in_recovery};

/// Runs the statement `$body` (a diesel query run with `RunQueryDsl`, over the connection
/// `$c`) on the [`Conn`] `$conn`, once for its kind: awaited with diesel-async's `RunQueryDsl`,
/// or called with diesel's on a thread of its own.
macro_rules! on {
    ($conn:expr, |$c:ident| $body:expr) => {
        $conn
            .run(
                async |$c: &mut routing_core::RoutedConnection| {
                    #[allow(unused_imports)]
                    use diesel_async::{RunQueryDsl, SaveChangesDsl};
                    $body.await
                },
                |$c: &mut routing_core::sync::RoutedConnection| {
                    #[allow(unused_imports)]
                    use diesel::{RunQueryDsl, SaveChangesDsl};
                    $body
                },
            )
            .await
    };
}
pub(crate) use on;

/// For each `async fn case(kind: Kind)` named, a module of the same name with one test per
/// connection kind: `case::on_async` and `case::on_sync`.
macro_rules! on_both_kinds {
    ($($case:ident),* $(,)?) => {$(
        mod $case {
            use crate::kinds::Kind;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn on_async() {
                super::$case(Kind::Async).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn on_sync() {
                super::$case(Kind::Sync).await
            }
        }
    )*};
}
pub(crate) use on_both_kinds;

/// diesel's prelude without `RunQueryDsl` and `SaveChangesDsl`, which [`on!`] brings in for
/// each connection kind: a module that glob-imports diesel's prelude cannot use [`on!`].
pub(crate) mod prelude {
    pub(crate) use diesel::prelude::{
        AsChangeset, ExpressionMethods, Identifiable, NullableExpressionMethods, QueryDsl,
        QueryResult, Queryable, QueryableByName, Selectable, SelectableHelper,
        TextExpressionMethods,
    };
}

use prelude::*;

/// Which connection a case runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `RoutedPool` and its diesel-async `RoutedConnection`.
    Async,
    /// `sync::RoutedPool` and its synchronous `RoutedConnection`.
    Sync,
}

/// A pool of either kind.
#[derive(Clone, Debug)]
pub(crate) enum Pool {
    Async(RoutedPool),
    Sync(sync::RoutedPool),
}

impl Pool {
    /// The pool `builder` makes, of `kind`.
    pub(crate) fn build(kind: Kind, builder: RoutedPoolBuilder) -> Pool {
        match kind {
            Kind::Async => Pool::Async(builder.build().expect("build the pool")),
            Kind::Sync => Pool::Sync(builder.build_sync().expect("build the sync pool")),
        }
    }

    /// A routed connection (no server session yet).
    pub(crate) async fn get(&self) -> Conn {
        match self {
            Pool::Async(pool) => {
                Conn::Async(Box::new(pool.get().await.expect("a routed connection")))
            }
            Pool::Sync(pool) => Conn::Sync(Box::new(pool.get().expect("a routed sync connection"))),
        }
    }
}

/// A routed connection of either kind.
#[derive(Debug)]
pub(crate) enum Conn {
    Async(Box<RoutedConnection>),
    Sync(Box<sync::RoutedConnection>),
}

impl Conn {
    /// Runs `on_async` on an async connection, or `on_sync` on a sync one (see [`blocking`]).
    pub(crate) async fn run<R: Send>(
        &mut self,
        on_async: impl AsyncFnOnce(&mut RoutedConnection) -> R,
        on_sync: impl FnOnce(&mut sync::RoutedConnection) -> R + Send,
    ) -> R {
        match self {
            Conn::Async(conn) => on_async(conn).await,
            Conn::Sync(conn) => blocking(|| on_sync(conn)),
        }
    }

    /// Asks the server that answers a read on this connection who it is.
    pub(crate) async fn where_ran(&mut self) -> ServerId {
        let (in_recovery, port) = on!(self, |c| diesel::select((
            pg_is_in_recovery(),
            inet_server_port()
        ))
        .get_result::<(bool, i32)>(c))
        .unwrap_or_else(|e| panic!("cannot ask the server who it is: {e}"));
        ServerId { port, in_recovery }
    }

    /// Inserts a product and returns its id and the server that ran the insert.
    pub(crate) async fn insert_product(&mut self, name: &str) -> (i64, ServerId) {
        let (id, in_recovery, port) = on!(self, |c| diesel::insert_into(products::table)
            .values((products::name.eq(name), products::price_cents.eq(100_i64)))
            .returning((products::id, pg_is_in_recovery(), inet_server_port()))
            .get_result::<(i64, bool, i32)>(c))
        .expect("insert a product");
        (id, ServerId { port, in_recovery })
    }

    /// Places an order of `product` in `status`.
    pub(crate) async fn insert_order(&mut self, product: i64, status: OrderStatus) {
        on!(self, |c| diesel::insert_into(orders::table)
            .values((
                orders::product_id.eq(product),
                orders::quantity.eq(1),
                orders::status.eq(status),
            ))
            .execute(c))
        .expect("insert an order");
    }

    /// Whether the connection has written.
    pub(crate) fn has_written(&self) -> bool {
        match self {
            Conn::Async(conn) => conn.has_written(),
            Conn::Sync(conn) => conn.has_written(),
        }
    }

    /// `batch_execute`, on either kind.
    pub(crate) async fn batch_execute(&mut self, sql: &str) -> QueryResult<()> {
        self.run(
            async |c| diesel_async::SimpleAsyncConnection::batch_execute(c, sql).await,
            |c| diesel::connection::SimpleConnection::batch_execute(c, sql),
        )
        .await
    }
}

/// Runs the synchronous `f` on a plain thread of its own, inside the caller's routing context
/// (`RoutingContext::current()` handed to `sync_scope`); the calling tokio worker waits in
/// `block_in_place`.
pub(crate) fn blocking<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    let context = RoutingContext::current();
    tokio::task::block_in_place(|| {
        std::thread::scope(|scope| {
            scope
                .spawn(|| context.sync_scope(f))
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    })
}
