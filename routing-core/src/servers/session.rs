//! [`ServerSession`]: one server connection as the router uses it, either diesel-async's, whose
//! statements are prepared, named and cached, or an [`UnnamedSession`] for a pool behind a
//! transaction pooler. Both run diesel queries and transactions the same way.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use diesel::connection::{CacheSize, Instrumentation};
use diesel::pg::Pg;
use diesel::query_builder::{AsQuery, QueryFragment, QueryId};
use diesel::result::Error as DieselError;
use diesel::sql_types::Integer;
use diesel::{ConnectionResult, IntoSql, QueryResult};
use diesel_async::{
    AnsiTransactionManager, AsyncConnection, AsyncConnectionCore, AsyncPgConnection, RunQueryDsl,
    SimpleAsyncConnection, TransactionManager,
};
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;

use super::cancel::Canceller;
use super::row::{PgRow, RoutedRow, RowStream};
use super::unnamed::UnnamedSession;
use crate::error::Error;
use crate::failure;

/// A server connection.
// Every session of a pool is of one kind: boxing the larger would only add an indirection to
// each statement.
#[allow(clippy::large_enum_variant)]
pub(crate) enum ServerSession {
    /// diesel-async's connection: statements prepared, named and cached.
    Prepared(AsyncPgConnection),
    /// Every statement unnamed, for a transaction pooler.
    Unnamed(UnnamedSession),
}

impl ServerSession {
    /// diesel-async's connection, unless the session runs unnamed statements.
    pub(crate) fn prepared(&mut self) -> Option<&mut AsyncPgConnection> {
        match self {
            ServerSession::Prepared(conn) => Some(conn),
            ServerSession::Unnamed(_) => None,
        }
    }

    /// diesel-async's connection, unless the session runs unnamed statements.
    #[cfg(feature = "migrations")]
    pub(crate) fn into_prepared(self) -> Option<AsyncPgConnection> {
        match self {
            ServerSession::Prepared(conn) => Some(conn),
            ServerSession::Unnamed(_) => None,
        }
    }

    /// What cancels the statement the session runs.
    pub(crate) fn cancel_token(&self) -> tokio_postgres::CancelToken {
        match self {
            ServerSession::Prepared(conn) => conn.cancel_token(),
            ServerSession::Unnamed(session) => session.client().cancel_token(),
        }
    }

    /// Whether the session is closed, or its transaction state is not idle and sound.
    pub(crate) fn is_broken(&mut self) -> bool {
        let closed = match self {
            ServerSession::Prepared(conn) => {
                return diesel_async::pooled_connection::PoolableConnection::is_broken(conn);
            }
            ServerSession::Unnamed(session) => session.client().is_closed(),
        };
        closed
            || <AnsiTransactionManager as TransactionManager<Self>>::is_broken_transaction_manager(
                self,
            )
    }

    /// Asks the server to answer a `SELECT 1`.
    pub(crate) async fn ping(&mut self) -> QueryResult<()> {
        diesel::select(1_i32.into_sql::<Integer>())
            .get_result::<i32>(self)
            .await
            .map(|_| ())
    }
}

impl SimpleAsyncConnection for ServerSession {
    async fn batch_execute(&mut self, query: &str) -> QueryResult<()> {
        match self {
            ServerSession::Prepared(conn) => conn.batch_execute(query).await,
            ServerSession::Unnamed(session) => session.batch_execute(query).await,
        }
    }
}

impl AsyncConnectionCore for ServerSession {
    type ExecuteFuture<'conn, 'query> = Checked<BoxFuture<'conn, QueryResult<usize>>>;
    type LoadFuture<'conn, 'query> = Load<'conn>;
    type Stream<'conn, 'query> = RowStream;
    type Row<'conn, 'query> = RoutedRow;
    type Backend = Pg;

    fn load<'conn, 'query, T>(&'conn mut self, source: T) -> Self::LoadFuture<'conn, 'query>
    where
        T: AsQuery + 'query,
        T::Query: QueryFragment<Self::Backend> + QueryId + 'query,
    {
        Load(match self {
            ServerSession::Prepared(conn) => {
                LoadInner::Prepared(AsyncConnectionCore::load(conn, source))
            }
            ServerSession::Unnamed(session) => {
                LoadInner::Unnamed(AsyncConnectionCore::load(session, source))
            }
        })
    }

    fn execute_returning_count<'conn, 'query, T>(
        &'conn mut self,
        source: T,
    ) -> Self::ExecuteFuture<'conn, 'query>
    where
        T: QueryFragment<Self::Backend> + QueryId + 'query,
    {
        Checked(match self {
            ServerSession::Prepared(conn) => conn.execute_returning_count(source),
            ServerSession::Unnamed(session) => session.execute_returning_count(source),
        })
    }
}

impl AsyncConnection for ServerSession {
    type TransactionManager = AnsiTransactionManager;

    async fn establish(database_url: &str) -> ConnectionResult<Self> {
        AsyncPgConnection::establish(database_url)
            .await
            .map(ServerSession::Prepared)
    }

    fn transaction_state(&mut self) -> &mut AnsiTransactionManager {
        match self {
            ServerSession::Prepared(conn) => conn.transaction_state(),
            ServerSession::Unnamed(session) => session.transaction_state(),
        }
    }

    fn instrumentation(&mut self) -> &mut dyn Instrumentation {
        match self {
            ServerSession::Prepared(conn) => conn.instrumentation(),
            ServerSession::Unnamed(session) => session.instrumentation(),
        }
    }

    fn set_instrumentation(&mut self, instrumentation: impl Instrumentation) {
        match self {
            ServerSession::Prepared(conn) => conn.set_instrumentation(instrumentation),
            ServerSession::Unnamed(session) => session.set_instrumentation(instrumentation),
        }
    }

    fn set_prepared_statement_cache_size(&mut self, size: CacheSize) {
        if let ServerSession::Prepared(conn) = self {
            conn.set_prepared_statement_cache_size(size);
        }
    }
}

/// What a statement gives, as it outlives the statement's future: a row stream, whose statement
/// runs on until the stream ends, is watched (see [`RowStream`]); anything else is over.
pub(crate) trait Watchable: Sized {
    /// `self`, watched for the session behind `canceller`; `cancels` as for
    /// [`RowsWatch`](super::cancel::RowsWatch).
    fn watch_rows(self, canceller: &Arc<Canceller>, cancels: bool) -> Self {
        let _ = (canceller, cancels);
        self
    }
}

impl Watchable for RowStream {
    fn watch_rows(self, canceller: &Arc<Canceller>, cancels: bool) -> Self {
        self.watched(canceller, cancels)
    }
}

impl Watchable for usize {}

impl Watchable for u64 {}

/// What a statement gives, rows or a count, and the type of its future on a session.
pub(crate) trait Outcome: Watchable + Send + Sized + 'static {
    /// The future of a statement on a session borrowed for `'c`.
    type Future<'c>: Future<Output = QueryResult<Self>> + Send + 'c;

    /// Whether the statement gives rows (a `load`), which a write outside a transaction reads
    /// to its end before it hands them out (see [`RowStream::settled`]).
    const ROWS: bool = false;

    /// What the statement gave, once its server said whether it succeeded. A count comes
    /// after that already: diesel-async's `execute` waits for the server to be ready again.
    fn settled(self) -> impl Future<Output = QueryResult<Self>> + Send {
        std::future::ready(Ok(self))
    }
}

impl Outcome for RowStream {
    type Future<'c> = Load<'c>;

    const ROWS: bool = true;

    fn settled(self) -> impl Future<Output = QueryResult<Self>> + Send {
        RowStream::settled(self)
    }
}

impl Outcome for usize {
    type Future<'c> = Checked<BoxFuture<'c, QueryResult<usize>>>;
}

/// A statement's future, whose error says when a transaction pooler lost a named prepared
/// statement (see [`failure::lost_named_statement`]).
pub(crate) struct Checked<F>(F);

impl<F: Future<Output = QueryResult<T>> + Unpin, T> Future for Checked<F> {
    type Output = QueryResult<T>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<QueryResult<T>> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|result| result.map_err(checked))
    }
}

fn checked(error: DieselError) -> DieselError {
    if failure::lost_named_statement(&error) {
        Error::NeedsTransactionPooler { source: error }.into_diesel()
    } else {
        error
    }
}

/// A `load`'s future.
pub(crate) struct Load<'c>(LoadInner<'c>);

enum LoadInner<'c> {
    Prepared(BoxFuture<'c, QueryResult<BoxStream<'static, QueryResult<PgRow>>>>),
    Unnamed(BoxFuture<'c, QueryResult<RowStream>>),
}

impl Future for Load<'_> {
    type Output = QueryResult<RowStream>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<QueryResult<RowStream>> {
        match &mut self.0 {
            LoadInner::Prepared(load) => load
                .as_mut()
                .poll(cx)
                .map(|rows| rows.map(RowStream::prepared).map_err(checked)),
            LoadInner::Unnamed(load) => load.as_mut().poll(cx),
        }
    }
}
