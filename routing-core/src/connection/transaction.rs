//! Transactions on a [`RoutedConnection`]: each is pinned to one server connection, the primary
//! or (read-only, in a replica scope) a replica, and watched, so that one whose future is dropped
//! midway is rolled back instead of swallowing the connection's later statements, and its
//! server process ended at once so that its locks do not wait for the connection's next use.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use diesel::QueryResult;
use diesel::connection::TransactionManagerStatus;
use diesel::result::Error as DieselError;
use diesel_async::{AnsiTransactionManager, TransactionManager};

use super::transaction_builder::{TransactionBuilder, TransactionOptions, sealed};
use super::{NOT_ABANDONED, RoutedConnection, log_route};
use crate::causal::now_ms;
use crate::context::read_needs;
use crate::error::Error;
use crate::route::{self, Statement, Target};
use crate::servers::catalog::{self, Backend};
use crate::servers::{ServerSession, Shared};

type Ansi = AnsiTransactionManager;

/// The transaction manager of [`RoutedConnection`].
///
/// A transaction is pinned to one server connection, checked out when it begins, and diesel-async's
/// [`AnsiTransactionManager`] runs it there, so that the server connection's own transaction state
/// stays truthful (the pool discards a connection returned mid-transaction).
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct RoutedTransactionManager;

impl TransactionManager<RoutedConnection> for RoutedTransactionManager {
    type TransactionStateData = TransactionManagerStatus;

    async fn begin_transaction(conn: &mut RoutedConnection) -> QueryResult<()> {
        begin(conn, None, None).await
    }

    async fn rollback_transaction(conn: &mut RoutedConnection) -> QueryResult<()> {
        end(conn, End::Rollback).await
    }

    async fn commit_transaction(conn: &mut RoutedConnection) -> QueryResult<()> {
        end(conn, End::Commit).await
    }

    fn transaction_manager_status_mut(
        conn: &mut RoutedConnection,
    ) -> &mut TransactionManagerStatus {
        conn.status_mut()
    }

    // An `async fn` would capture `R` and `E` in its future, which the trait does not require
    // to outlive `'conn`.
    #[allow(clippy::manual_async_fn)]
    fn transaction<'a, 'conn, F, R, E>(
        conn: &'conn mut RoutedConnection,
        callback: F,
    ) -> impl std::future::Future<Output = Result<R, E>> + Send + 'conn
    where
        for<'r> F: AsyncFnOnce(&'r mut RoutedConnection) -> Result<R, E>
            + sealed::AsyncFunc<&'r mut RoutedConnection, Result<R, E>, Fut: Send>
            + Send
            + 'a,
        E: From<DieselError> + Send,
        R: Send,
        'a: 'conn,
    {
        async move { in_transaction(conn, None, callback).await }
    }

    fn is_broken_transaction_manager(conn: &mut RoutedConnection) -> bool {
        match conn.pinned {
            Some(target) => conn.held(target).is_none_or(|inner| {
                <Ansi as TransactionManager<ServerSession>>::is_broken_transaction_manager(inner)
            }),
            None => !matches!(
                conn.status_mut().transaction_state(),
                Ok(status) if status.transaction_depth().is_none()
            ),
        }
    }
}

impl RoutedConnection {
    /// The status of the transaction's server connection, or an idle status outside one.
    pub(super) fn status_mut(&mut self) -> &mut TransactionManagerStatus {
        let inner = match self.pinned {
            Some(target) => self.held.conn(target),
            None => None,
        };
        match inner {
            Some(inner) => {
                <Ansi as TransactionManager<ServerSession>>::transaction_manager_status_mut(inner)
            }
            None => &mut self.idle_status,
        }
    }

    /// Starts configuring a transaction, as diesel-async's `build_transaction` does for its
    /// `AsyncPgConnection`.
    ///
    /// A read-only transaction (`.read_only()`) begun in a replica scope runs on a replica;
    /// every other transaction runs on the primary. `SERIALIZABLE` read-only transactions go to
    /// the primary too, since a hot standby does not support serializable isolation.
    ///
    /// ```no_run
    /// # async fn run(conn: &mut routing_core::RoutedConnection) -> diesel::QueryResult<()> {
    /// use diesel::sql_types::Integer;
    /// use diesel_async::RunQueryDsl;
    ///
    /// let n: i32 = conn
    ///     .build_transaction()
    ///     .read_only()
    ///     .repeatable_read()
    ///     .run(async |conn| {
    ///         diesel::select(diesel::dsl::sql::<Integer>("1")).get_result(conn).await
    ///     })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn build_transaction(&mut self) -> TransactionBuilder<'_> {
        TransactionBuilder::new(self)
    }

    /// A guard for a transaction about to begin: dropped before it completes, it marks the
    /// transaction abandoned, for [`RoutedConnection::settle`] to roll back.
    fn transaction_guard(&mut self) -> TransactionGuard {
        let depth = match self.status_mut().transaction_depth() {
            Ok(Some(depth)) => depth.get() + 1,
            _ => 1,
        };
        let cell = self
            .abandoned
            .get_or_insert_with(|| Arc::new(AtomicU32::new(NOT_ABANDONED)));
        TransactionGuard {
            cell: Some(Arc::clone(cell)),
            depth,
            process: None,
        }
    }
}

/// How long ending an abandoned transaction's server process may take (a checkout, then one
/// statement) before it is given up; the transaction is then rolled back when its connection
/// is next used or dropped.
const END_PATIENCE: Duration = Duration::from_secs(10);

/// The server process of a transaction, and where to reach its server from another session.
struct ServerProcess {
    shared: Arc<Shared>,
    /// The server's index among the replicas (or nodes); `None` for the configured primary.
    server: Option<usize>,
    backend: Backend,
}

impl ServerProcess {
    /// Ends the process from another session of the same server's pool, in the background:
    /// its transaction is rolled back and its locks released at once. Outside a tokio runtime,
    /// nothing is done.
    fn end_in_background(self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            let Some(server) = self.shared.server(self.server) else {
                return;
            };
            let role = server.role();
            let ended = tokio::time::timeout(END_PATIENCE, async {
                let mut conn = server.checkout().await?;
                catalog::terminate(conn.pg(), self.backend)
                    .await
                    .map_err(|source| Error::Query { role, source })
            })
            .await;
            match ended {
                Ok(Ok(ended)) => tracing::debug!(
                    target: "routing_core",
                    server = %role,
                    ended,
                    "transaction dropped midway: its server process ended"
                ),
                Ok(Err(error)) => tracing::debug!(
                    target: "routing_core",
                    server = %role,
                    %error,
                    "transaction dropped midway: cannot end its server process"
                ),
                Err(_) => tracing::debug!(
                    target: "routing_core",
                    server = %role,
                    "transaction dropped midway: ending its server process timed out"
                ),
            }
        });
    }
}

/// Marks a transaction abandoned when dropped before [`TransactionGuard::complete`], and then
/// ends the transaction's server process (see [`ServerProcess::end_in_background`]).
struct TransactionGuard {
    cell: Option<Arc<AtomicU32>>,
    /// The transaction's depth: 1 for a transaction, more for a savepoint inside one.
    depth: u32,
    /// The server process of a transaction (never of a savepoint, nor of a session behind a
    /// transaction pooler), once it is about to begin.
    process: Option<ServerProcess>,
}

impl TransactionGuard {
    fn complete(mut self) {
        self.cell = None;
        self.process = None;
    }
}

impl Drop for TransactionGuard {
    fn drop(&mut self) {
        if let Some(cell) = self.cell.take() {
            cell.fetch_min(self.depth, Ordering::AcqRel);
            if let Some(process) = self.process.take() {
                process.end_in_background();
            }
        }
    }
}

/// Runs `callback` in a transaction begun with `options` (a savepoint inside a transaction):
/// commits when it returns `Ok`, rolls back when it returns `Err`, and, when this future is
/// dropped before either, leaves the transaction to be rolled back by the connection.
pub(super) async fn in_transaction<'a, F, R, E>(
    conn: &mut RoutedConnection,
    options: Option<&TransactionOptions>,
    callback: F,
) -> Result<R, E>
where
    for<'r> F: AsyncFnOnce(&'r mut RoutedConnection) -> Result<R, E>
        + sealed::AsyncFunc<&'r mut RoutedConnection, Result<R, E>, Fut: Send>
        + Send
        + 'a,
    E: From<DieselError>,
{
    conn.settle();
    let mut guard = conn.transaction_guard();
    let result = match begin(conn, options, Some(&mut guard)).await {
        Err(error) => Err(error.into()),
        Ok(()) => match callback(&mut *conn).await {
            Ok(value) => match end(conn, End::Commit).await {
                Ok(()) => Ok(value),
                Err(error) => Err(error.into()),
            },
            // As diesel-async's `transaction`: the caller's error wins over a broken rollback.
            Err(user_error) => match end(conn, End::Rollback).await {
                Ok(()) | Err(DieselError::BrokenTransactionManager) => Err(user_error),
                Err(rollback_error) => Err(rollback_error.into()),
            },
        },
    };
    guard.complete();
    result
}

/// Checks out the transaction's server and begins; `options` come from a
/// [`TransactionBuilder`]. Inside a transaction, begins a savepoint. A transaction's `guard`
/// learns its server process before it begins.
async fn begin(
    conn: &mut RoutedConnection,
    options: Option<&TransactionOptions>,
    guard: Option<&mut TransactionGuard>,
) -> QueryResult<()> {
    conn.settle();
    if let Some(target) = conn.pinned {
        if options.is_some() {
            return Err(DieselError::AlreadyInTransaction);
        }
        if conn.transaction_lost {
            return Err(Error::TransactionLost.into_diesel());
        }
        conn.lend_instrumentation(target, false);
        let guard = conn.held.start(target);
        let inner = conn.held(target).ok_or_else(lost)?;
        let result = <Ansi as TransactionManager<ServerSession>>::begin_transaction(inner).await;
        conn.held.finish(guard);
        conn.reclaim_instrumentation();
        return result;
    }
    let statement = Statement::Begin {
        read_only: options.is_some_and(|o| o.read_only == Some(true)),
        serializable: options.is_some_and(|o| o.isolation == Some("SERIALIZABLE")),
    };
    let mut needs = read_needs();
    if matches!(
        statement,
        Statement::Begin {
            read_only: true,
            ..
        }
    ) {
        conn.vet_token(&mut needs).await;
    }
    let mut route = route::decide(
        &conn.state(),
        statement,
        &needs,
        conn.shared().config(),
        now_ms,
    );
    log_route(route, Some(&"begin"));
    if route.target == Target::Replica {
        match conn.hold_eligible_replica(&needs).await {
            Ok(true) => {}
            // Every replica lags or is behind the causal token, or none can be reached: the
            // primary, by design.
            Ok(false) => route.target = Target::Primary,
            Err(e) => return Err(e.into_diesel()),
        }
    }
    let in_test_transaction = conn.shared().in_test_transaction();
    if route.target == Target::Primary {
        conn.checkout_primary().await.map_err(Error::into_diesel)?;
    }
    conn.lend_instrumentation(route.target, false);
    let process = conn
        .held
        .session(route.target)
        .and_then(|session| session.backend())
        .map(|backend| ServerProcess {
            shared: Arc::clone(conn.shared()),
            server: conn.held.index(route.target),
            backend,
        });
    let statement_guard = conn.held.start(route.target);
    let inner = conn.held(route.target).ok_or_else(lost)?;
    // Inside a test transaction the pooled primary session is already in a transaction: a
    // configured one becomes a savepoint there, as a plain one does.
    let savepoint = in_test_transaction
        && <Ansi as TransactionManager<ServerSession>>::transaction_manager_status_mut(inner)
            .transaction_depth()
            .is_ok_and(|depth| depth.is_some());
    if let Some(guard) = guard.filter(|_| !savepoint) {
        guard.process = process;
    }
    let begun = match options {
        Some(options) if !savepoint => {
            AnsiTransactionManager::begin_transaction_sql(inner, &options.sql()).await
        }
        _ => <Ansi as TransactionManager<ServerSession>>::begin_transaction(inner).await,
    };
    conn.held.finish(statement_guard);
    conn.reclaim_instrumentation();
    begun?;
    conn.pinned = Some(route.target);
    conn.transaction_lost = false;
    let read_only = matches!(
        statement,
        Statement::Begin {
            read_only: true,
            ..
        }
    );
    if route.target == Target::Primary && !read_only {
        conn.mark_written();
    }
    Ok(())
}

/// How a transaction ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    Commit,
    Rollback,
}

/// Commits or rolls back the innermost transaction level. A transaction that lost its server
/// connection is over: rolling it back succeeds, committing it fails.
async fn end(conn: &mut RoutedConnection, how: End) -> QueryResult<()> {
    conn.settle();
    let target = conn.pinned.ok_or(DieselError::NotInTransaction)?;
    if conn.transaction_lost || !conn.held.holds(target) {
        conn.pinned = None;
        conn.transaction_lost = false;
        return match how {
            End::Rollback => Ok(()),
            End::Commit => Err(Error::TransactionLost.into_diesel()),
        };
    }
    conn.lend_instrumentation(target, false);
    let guard = conn.held.start(target);
    let inner = conn.held(target).ok_or_else(lost)?;
    let result = match how {
        End::Commit => <Ansi as TransactionManager<ServerSession>>::commit_transaction(inner).await,
        End::Rollback => {
            <Ansi as TransactionManager<ServerSession>>::rollback_transaction(inner).await
        }
    };
    conn.held.finish(guard);
    conn.reclaim_instrumentation();
    unpin_when_done(conn, target);
    match target {
        Target::Primary => {
            let node = conn.held.primary_node();
            result.map_err(|e| conn.pool.shared().primary_error(node, e))
        }
        Target::Replica => result,
    }
}

/// Releases the pin once the server connection's transaction is over. A connection whose
/// transaction state broke stays pinned, so its status keeps saying so.
fn unpin_when_done(conn: &mut RoutedConnection, target: Target) {
    let done = conn.held(target).is_none_or(|inner| {
        matches!(
            <Ansi as TransactionManager<ServerSession>>::transaction_manager_status_mut(inner)
                .transaction_state(),
            Ok(status) if status.transaction_depth().is_none()
        )
    });
    if done {
        conn.pinned = None;
    }
}

fn lost() -> DieselError {
    DieselError::DatabaseError(
        diesel::result::DatabaseErrorKind::UnableToSendCommand,
        Box::new("the transaction's server connection is gone".to_owned()),
    )
}
