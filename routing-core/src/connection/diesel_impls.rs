//! diesel-async's connection traits for [`RoutedConnection`].

use diesel::QueryResult;
use diesel::connection::{
    CacheSize, Instrumentation, InstrumentationEvent, TransactionManagerStatus,
};
use diesel::pg::Pg;
use diesel::query_builder::{AsQuery, QueryFragment, QueryId};
use diesel::result::Error as DieselError;
use diesel_async::{
    AsyncConnection, AsyncConnectionCore, SimpleAsyncConnection, TransactionManager,
};
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tracing::Instrument;

use super::dispatch::Runners;
use super::read::AfterRows;
use super::{RoutedConnection, RoutedTransactionManager, log_route};
use crate::causal::now_ms;
use crate::classify::operation_name;
use crate::context::ReadNeeds;
use crate::error::Error;
use crate::owned::{Identity, NoId, OwnedQuery, StaticId};
use crate::route::{self, Statement, Target};
use crate::servers::{Outcome, RoutedPool, RoutedRow, RowStream, ServerSession};

/// The stream again, with its first row (or its end) already received, and its later errors
/// checked by `after`; its first error instead.
fn first_row(stream: RowStream, after: AfterRows) -> BoxFuture<'static, QueryResult<RowStream>> {
    use futures_util::StreamExt;
    async move {
        let mut stream = stream;
        match stream.next().await {
            None => Ok(RowStream::boxed(futures_util::stream::empty().boxed())),
            Some(Err(e)) => Err(e),
            Some(Ok(row)) => Ok(RowStream::boxed(
                futures_util::stream::once(std::future::ready(Ok(row)))
                    .chain(stream.map(move |item| item.map_err(|error| after.check(error))))
                    .boxed(),
            )),
        }
    }
    .boxed()
}

impl<Id: 'static> Runners<Id, RowStream> {
    fn load() -> Self {
        Runners {
            with_static_id: load_owned::<StaticId<Id>>,
            without_id: load_owned::<NoId>,
        }
    }
}

impl<Id: 'static> Runners<Id, usize> {
    fn execute() -> Self {
        Runners {
            with_static_id: execute_owned::<StaticId<Id>>,
            without_id: execute_owned::<NoId>,
        }
    }
}

fn load_owned<'c, I: Identity>(
    conn: &'c mut ServerSession,
    query: &'c OwnedQuery<I>,
) -> <RowStream as Outcome>::Future<'c> {
    AsyncConnectionCore::load(conn, query)
}

fn execute_owned<'c, I: Identity>(
    conn: &'c mut ServerSession,
    query: &'c OwnedQuery<I>,
) -> <usize as Outcome>::Future<'c> {
    AsyncConnectionCore::execute_returning_count(conn, query)
}

impl SimpleAsyncConnection for RoutedConnection {
    /// Runs raw SQL on the primary (on the transaction's server inside a transaction). Since it
    /// may write, later reads on this connection go to the primary.
    async fn batch_execute(&mut self, query: &str) -> QueryResult<()> {
        self.settle();
        if self.pinned.is_some() && self.transaction_lost {
            return Err(Error::TransactionLost.into_diesel());
        }
        let text = self.shared().config().record_query_text().then_some(query);
        self.trace
            .start(self.pool.shared(), operation_name(query), text);
        let span = self.trace.span().clone();
        let result = self.run_batch(query).instrument(span).await;
        self.trace.finish(self.pool.shared(), &result);
        result
    }
}

impl RoutedConnection {
    /// [`SimpleAsyncConnection::batch_execute`], without its telemetry.
    async fn run_batch(&mut self, query: &str) -> QueryResult<()> {
        let route = route::decide(
            &self.state(),
            Statement::Write,
            &ReadNeeds::default(),
            self.shared().config(),
            now_ms,
        );
        if self.pinned.is_none() {
            self.mark_written();
        }
        log_route(route, Some(&"batch_execute"));
        if route.target == Target::Primary {
            self.checkout_primary().await.map_err(Error::into_diesel)?;
        }
        let effects = self.shared().config().classifier().session_effects(query);
        if effects.any() {
            // An open transaction block keeps its server connection behind a pooler.
            if effects.state && self.pinned.is_none() && self.shared().config().transaction_pooler()
            {
                return Err(Error::SessionStateWithTransactionPooler.into_diesel());
            }
            self.mark_session_changed(route.target);
        }
        self.count(route);
        let index = self.held.index(route.target);
        self.trace
            .sent(self.pool.shared(), route.target, index, route.reason);
        self.lend_instrumentation(route.target, false);
        let guard = self.held.start(route.target);
        let conn = self
            .held
            .conn(route.target)
            .ok_or_else(super::lost_connection)?;
        let result = conn.batch_execute(query).await;
        self.held.finish(guard);
        self.reclaim_instrumentation();
        match route.target {
            Target::Primary => {
                let node = self.held.primary_node();
                result.map_err(|e| self.pool.shared().primary_error(node, e))
            }
            Target::Replica => result,
        }
    }
}

impl AsyncConnectionCore for RoutedConnection {
    type ExecuteFuture<'conn, 'query> = BoxFuture<'conn, QueryResult<usize>>;
    type LoadFuture<'conn, 'query> = BoxFuture<'conn, QueryResult<Self::Stream<'conn, 'query>>>;
    type Stream<'conn, 'query> = RowStream;
    type Row<'conn, 'query> = RoutedRow;
    type Backend = Pg;

    fn load<'conn, 'query, T>(&'conn mut self, source: T) -> Self::LoadFuture<'conn, 'query>
    where
        T: AsQuery + 'query,
        T::Query: QueryFragment<Self::Backend> + QueryId + 'query,
    {
        self.dispatch(
            source.as_query(),
            |conn, query| conn.load(query),
            Runners::load(),
            Some(first_row),
        )
    }

    fn execute_returning_count<'conn, 'query, T>(
        &'conn mut self,
        source: T,
    ) -> Self::ExecuteFuture<'conn, 'query>
    where
        T: QueryFragment<Self::Backend> + QueryId + 'query,
    {
        self.dispatch(
            source,
            |conn, query| conn.execute_returning_count(query),
            Runners::execute(),
            None,
        )
    }
}

impl AsyncConnection for RoutedConnection {
    type TransactionManager = RoutedTransactionManager;

    /// Opens a routed connection of a pool of its own, with `database_url` as its primary and
    /// no replica, and connects to the primary. A URL that lists several hosts makes a pool that
    /// discovers its primary among them, the others serving as replicas (see
    /// [`RoutedPool::builder`]).
    ///
    /// Works in any tokio runtime, with timers or without (as diesel-async's
    /// `AsyncConnectionWrapper` makes one outside a runtime): the router times its waits on a
    /// clock of its own.
    async fn establish(database_url: &str) -> diesel::ConnectionResult<Self> {
        let pool = RoutedPool::builder(database_url)
            .max_size(1)
            .build()
            .map_err(|e| diesel::ConnectionError::BadConnection(e.to_string()))?;
        let mut conn = pool
            .get()
            .await
            .map_err(|e| diesel::ConnectionError::BadConnection(e.to_string()))?;
        conn.instrumentation
            .on_connection_event(InstrumentationEvent::start_establish_connection(
                database_url,
            ));
        let connected = conn
            .checkout_primary()
            .await
            .map(|_| ())
            .map_err(|e| diesel::ConnectionError::BadConnection(e.to_string()));
        conn.instrumentation.on_connection_event(
            InstrumentationEvent::finish_establish_connection(
                database_url,
                connected.as_ref().err(),
            ),
        );
        connected.map(|()| conn)
    }

    /// Begins a transaction that is never committed, on the primary, and from then on sends every
    /// statement of every connection of this pool to the primary, so that tests read their own
    /// uncommitted rows. As with diesel-async's pools, give the pool `max_size(1)` so that every
    /// connection shares the one primary session that holds the test transaction.
    async fn begin_test_transaction(&mut self) -> QueryResult<()> {
        match self.status_mut().transaction_state() {
            Ok(status) if status.transaction_depth().is_none() => {}
            Ok(_) => return Err(DieselError::AlreadyInTransaction),
            Err(e) => return Err(e),
        }
        self.shared().enter_test_transaction();
        <RoutedTransactionManager as TransactionManager<Self>>::begin_transaction(self).await?;
        self.status_mut().set_test_transaction_flag();
        Ok(())
    }

    fn transaction_state(&mut self) -> &mut TransactionManagerStatus {
        &mut self.idle_status
    }

    fn instrumentation(&mut self) -> &mut dyn Instrumentation {
        self.own_instrumentation()
    }

    fn set_instrumentation(&mut self, instrumentation: impl Instrumentation) {
        self.replace_instrumentation(instrumentation.into());
    }

    fn set_prepared_statement_cache_size(&mut self, size: CacheSize) {
        self.cache_size = Some(size);
        for target in [Target::Primary, Target::Replica] {
            if let Some(conn) = self.held.conn(target) {
                conn.set_prepared_statement_cache_size(size);
            }
        }
    }
}

impl<'b, Changes, Output, Tab, V> diesel_async::UpdateAndFetchResults<Changes, Output>
    for RoutedConnection
where
    Output: Send + 'static,
    Changes: Copy
        + diesel::AsChangeset<Target = Tab>
        + Send
        + diesel::associations::Identifiable<Table = Tab>,
    Tab: diesel::Table + diesel::query_dsl::methods::FindDsl<Changes::Id> + 'b,
    diesel::dsl::Find<Tab, Changes::Id>:
        diesel::query_builder::IntoUpdateTarget<Table = Tab, WhereClause = V>,
    diesel::query_builder::UpdateStatement<Tab, V, Changes::Changeset>:
        diesel::query_builder::AsQuery,
    diesel::dsl::Update<Changes, Changes>: diesel_async::methods::LoadQuery<'b, Self, Output>,
    V: Send + 'b,
    Changes::Changeset: Send + 'b,
    Tab::FromClause: Send,
{
    fn update_and_fetch<'conn, 'changes>(
        &'conn mut self,
        changeset: Changes,
    ) -> BoxFuture<'changes, QueryResult<Output>>
    where
        Changes: 'changes,
        Changes::Changeset: 'changes,
        'conn: 'changes,
        Self: 'changes,
    {
        use diesel_async::RunQueryDsl;
        async move {
            diesel::update(changeset)
                .set(changeset)
                .get_result(self)
                .await
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use diesel::sql_types::{Bool, Integer};
    use diesel_async::{RunQueryDsl, SimpleAsyncConnection};

    use crate::{RoutedPool, with_read_replica};

    /// Collects the formatted log lines written on one thread, and drops every other thread's.
    #[derive(Clone)]
    struct Lines {
        buf: Arc<Mutex<Vec<u8>>>,
        thread: std::thread::ThreadId,
    }

    /// Where one event's line goes: into the lines, or nowhere.
    struct Line(Option<Arc<Mutex<Vec<u8>>>>);

    impl std::io::Write for Line {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if let Some(lines) = &self.0 {
                lines.lock().unwrap().extend_from_slice(buf);
            }
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Lines {
        type Writer = Line;

        fn make_writer(&'a self) -> Line {
            Line((std::thread::current().id() == self.thread).then(|| self.buf.clone()))
        }
    }

    fn closed_port() -> u16 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    }

    /// Each routing decision is a debug event naming the server and the reason, even when the
    /// server then cannot be reached.
    #[test]
    fn decisions_are_logged_with_their_reason() {
        let lines = Lines {
            buf: Arc::default(),
            thread: std::thread::current().id(),
        };
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(lines.clone())
            .finish();
        // The process's subscriber, not a scoped one: tracing caches each call site's interest
        // process-wide, and a call site first reached on another thread (another test's, or the
        // health probe's) while a scoped subscriber is the only one alive is cached as
        // uninteresting for this thread too. This is the crate's only test that logs.
        tracing::subscriber::set_global_default(subscriber).expect("one global subscriber");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let pool =
                RoutedPool::builder(format!("postgres://u:pw@127.0.0.1:{}/db", closed_port()))
                    .replica(format!("postgres://u:pw@127.0.0.1:{}/db", closed_port()))
                    .build()
                    .unwrap();
            let mut conn = pool.get().await.unwrap();
            let read = || diesel::select(diesel::dsl::sql::<Integer>("1"));
            let _ = with_read_replica(true, read().get_result::<i32>(&mut conn)).await;
            let _ = read().get_result::<i32>(&mut conn).await;
            let _ = diesel::sql_query("DELETE FROM t").execute(&mut conn).await;
            let _ = conn.batch_execute("SELECT 1").await;
            let _ = diesel::select(diesel::dsl::sql::<Bool>("true"))
                .get_result::<bool>(&mut conn)
                .await;
        });
        let text = String::from_utf8(lines.buf.lock().unwrap().clone()).unwrap();
        let routes: Vec<&str> = text.lines().filter(|l| l.contains(" route ")).collect();
        // The health probe (on its own thread) may ban the unreachable replica before the read
        // tries it: then the read's fallback says so instead of having failed there itself.
        let expect = [
            "server=replica reason=scope: replica allowed",
            "server=primary reason=fallback: no replica could serve the read|server=primary reason=no replica eligible: 1 banned",
            "server=primary reason=scope: replica not allowed",
            "server=primary reason=write: write statement DELETE",
            "server=primary reason=sticky: this connection wrote before: batch_execute",
            "server=primary reason=sticky: this connection wrote before",
        ];
        assert_eq!(routes.len(), expect.len(), "{text}");
        for (line, expected) in routes.iter().zip(expect) {
            assert!(line.contains("DEBUG"), "{line}");
            assert!(
                expected.split('|').any(|expected| line.contains(expected)),
                "expected {expected:?} in {line}"
            );
        }
        assert!(!text.contains("pw@"), "no password in logs: {text}");
    }
}
