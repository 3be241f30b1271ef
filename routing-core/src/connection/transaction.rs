//! Transactions on a [`RoutedConnection`]: each is pinned to one server connection, the primary
//! or (read-only, in a replica scope) a replica.

use diesel::QueryResult;
use diesel::connection::TransactionManagerStatus;
use diesel::result::Error as DieselError;
use diesel_async::{AnsiTransactionManager, AsyncPgConnection, TransactionManager};

use super::{RoutedConnection, log_route};
use crate::causal::now_ms;
use crate::context::read_needs;
use crate::error::Error;
use crate::route::{self, Statement, Target};

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
        begin(conn, None).await
    }

    async fn rollback_transaction(conn: &mut RoutedConnection) -> QueryResult<()> {
        let (target, inner) = pinned(conn)?;
        let result =
            <Ansi as TransactionManager<AsyncPgConnection>>::rollback_transaction(inner).await;
        unpin_when_done(conn, target);
        result
    }

    async fn commit_transaction(conn: &mut RoutedConnection) -> QueryResult<()> {
        let (target, inner) = pinned(conn)?;
        let result =
            <Ansi as TransactionManager<AsyncPgConnection>>::commit_transaction(inner).await;
        unpin_when_done(conn, target);
        result
    }

    fn transaction_manager_status_mut(
        conn: &mut RoutedConnection,
    ) -> &mut TransactionManagerStatus {
        conn.status_mut()
    }

    fn is_broken_transaction_manager(conn: &mut RoutedConnection) -> bool {
        match conn.pinned {
            Some(target) => conn.held(target).is_none_or(|inner| {
                <Ansi as TransactionManager<AsyncPgConnection>>::is_broken_transaction_manager(
                    inner,
                )
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
            Some(target) => super::held_in(&mut self.primary, &mut self.replica, target),
            None => None,
        };
        match inner {
            Some(inner) => {
                <Ansi as TransactionManager<AsyncPgConnection>>::transaction_manager_status_mut(
                    inner,
                )
            }
            None => &mut self.idle_status,
        }
    }

    /// Starts configuring a transaction, as diesel-async's `build_transaction` does for
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
        TransactionBuilder {
            conn: self,
            options: TransactionOptions::default(),
        }
    }
}

/// Checks out the transaction's server and begins; `options` come from a
/// [`TransactionBuilder`]. Inside a transaction, begins a savepoint.
async fn begin(
    conn: &mut RoutedConnection,
    options: Option<&TransactionOptions>,
) -> QueryResult<()> {
    if let Some(target) = conn.pinned {
        if options.is_some() {
            return Err(DieselError::AlreadyInTransaction);
        }
        let inner = conn.held(target).ok_or_else(lost)?;
        return <Ansi as TransactionManager<AsyncPgConnection>>::begin_transaction(inner).await;
    }
    let statement = Statement::Begin {
        read_only: options.is_some_and(|o| o.read_only == Some(true)),
        serializable: options.is_some_and(|o| o.isolation == Some("SERIALIZABLE")),
    };
    let needs = read_needs();
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
    let inner = match route.target {
        Target::Primary => conn.checkout_primary().await.map_err(Error::into_diesel)?,
        Target::Replica => conn.held(Target::Replica).ok_or_else(lost)?,
    };
    // Inside a test transaction the pooled primary session is already in a transaction: a
    // configured one becomes a savepoint there, as a plain one does.
    let savepoint = in_test_transaction
        && <Ansi as TransactionManager<AsyncPgConnection>>::transaction_manager_status_mut(inner)
            .transaction_depth()
            .is_ok_and(|depth| depth.is_some());
    match options {
        Some(options) if !savepoint => {
            AnsiTransactionManager::begin_transaction_sql(inner, &options.sql()).await?;
        }
        _ => <Ansi as TransactionManager<AsyncPgConnection>>::begin_transaction(inner).await?,
    }
    conn.pinned = Some(route.target);
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

fn pinned(conn: &mut RoutedConnection) -> QueryResult<(Target, &mut AsyncPgConnection)> {
    let target = conn.pinned.ok_or(DieselError::NotInTransaction)?;
    let inner = conn.held(target).ok_or_else(lost)?;
    Ok((target, inner))
}

/// Releases the pin once the server connection's transaction is over. A connection whose
/// transaction state broke stays pinned, so its status keeps saying so.
fn unpin_when_done(conn: &mut RoutedConnection, target: Target) {
    let done = conn.held(target).is_none_or(|inner| {
        matches!(
            <Ansi as TransactionManager<AsyncPgConnection>>::transaction_manager_status_mut(inner)
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

/// Configures a transaction; made by [`RoutedConnection::build_transaction`].
#[must_use = "a transaction builder does nothing until `run` is called"]
pub struct TransactionBuilder<'a> {
    conn: &'a mut RoutedConnection,
    options: TransactionOptions,
}

/// What a [`TransactionBuilder`] asks for.
#[derive(Clone, Copy, Debug, Default)]
struct TransactionOptions {
    isolation: Option<&'static str>,
    read_only: Option<bool>,
    deferrable: Option<bool>,
}

impl TransactionOptions {
    /// The `BEGIN` statement.
    fn sql(&self) -> String {
        let mut sql = String::from("BEGIN TRANSACTION");
        if let Some(level) = self.isolation {
            sql.push_str(" ISOLATION LEVEL ");
            sql.push_str(level);
        }
        match self.read_only {
            Some(true) => sql.push_str(" READ ONLY"),
            Some(false) => sql.push_str(" READ WRITE"),
            None => {}
        }
        match self.deferrable {
            Some(true) => sql.push_str(" DEFERRABLE"),
            Some(false) => sql.push_str(" NOT DEFERRABLE"),
            None => {}
        }
        sql
    }
}

impl std::fmt::Debug for TransactionBuilder<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransactionBuilder")
            .field("sql", &self.options.sql())
            .finish_non_exhaustive()
    }
}

impl<'a> TransactionBuilder<'a> {
    /// `READ ONLY`: may run on a replica in a replica scope.
    pub fn read_only(mut self) -> Self {
        self.options.read_only = Some(true);
        self
    }

    /// `READ WRITE`.
    pub fn read_write(mut self) -> Self {
        self.options.read_only = Some(false);
        self
    }

    /// `DEFERRABLE`.
    pub fn deferrable(mut self) -> Self {
        self.options.deferrable = Some(true);
        self
    }

    /// `NOT DEFERRABLE`.
    pub fn not_deferrable(mut self) -> Self {
        self.options.deferrable = Some(false);
        self
    }

    /// `ISOLATION LEVEL READ COMMITTED`.
    pub fn read_committed(mut self) -> Self {
        self.options.isolation = Some("READ COMMITTED");
        self
    }

    /// `ISOLATION LEVEL REPEATABLE READ`.
    pub fn repeatable_read(mut self) -> Self {
        self.options.isolation = Some("REPEATABLE READ");
        self
    }

    /// `ISOLATION LEVEL SERIALIZABLE`; always on the primary.
    pub fn serializable(mut self) -> Self {
        self.options.isolation = Some("SERIALIZABLE");
        self
    }

    /// Runs `f` in the transaction: commits when it returns `Ok`, rolls back when it returns
    /// `Err`.
    ///
    /// # Errors
    ///
    /// `f`'s error, or the error of `BEGIN`, `COMMIT` or `ROLLBACK`.
    pub async fn run<T, E, F>(self, f: F) -> Result<T, E>
    where
        for<'r> F: AsyncFnOnce(&'r mut RoutedConnection) -> Result<T, E>
            + sealed::AsyncFunc<&'r mut RoutedConnection, Result<T, E>, Fut: Send>
            + Send
            + 'a,
        E: From<DieselError>,
    {
        let TransactionBuilder { conn, options } = self;
        begin(conn, Some(&options)).await?;
        match f(&mut *conn).await {
            Ok(value) => {
                RoutedTransactionManager::commit_transaction(conn).await?;
                Ok(value)
            }
            // As diesel-async's `transaction`: the caller's error wins over a broken rollback.
            Err(user_error) => match RoutedTransactionManager::rollback_transaction(conn).await {
                Ok(()) | Err(DieselError::BrokenTransactionManager) => Err(user_error),
                Err(rollback_error) => Err(rollback_error.into()),
            },
        }
    }
}

mod sealed {
    use std::future::Future;

    /// An async closure whose future type can be named, so that it can be required `Send`.
    #[allow(unreachable_pub)]
    pub trait AsyncFunc<T, R>:
        AsyncFnOnce(T) -> R + FnOnce(T) -> <Self as AsyncFunc<T, R>>::Fut
    {
        /// The closure's future.
        type Fut: Future<Output = R>;
    }

    impl<F, T, Fut, R> AsyncFunc<T, R> for F
    where
        F: AsyncFnOnce(T) -> R + FnOnce(T) -> Fut,
        Fut: Future<Output = R>,
    {
        type Fut = Fut;
    }
}
