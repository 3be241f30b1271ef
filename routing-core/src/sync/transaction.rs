//! Transactions on a synchronous [`RoutedConnection`]: each runs on one session, the primary's
//! or (read-only, in a replica scope) a replica's, where diesel's `AnsiTransactionManager`
//! runs it, so that the session's own transaction state stays truthful.

use diesel::PgConnection;
use diesel::QueryResult;
use diesel::connection::{AnsiTransactionManager, TransactionManager, TransactionManagerStatus};
use diesel::result::Error as DieselError;

use super::RoutedConnection;
use crate::causal::now_ms;
use crate::connection::TransactionOptions;
use crate::context::read_needs;
use crate::error::Error;
use crate::route::{self, Statement, Target};

type Ansi = AnsiTransactionManager;

/// The transaction manager of the synchronous [`RoutedConnection`].
///
/// A transaction is pinned to one session, checked out when it begins; diesel's
/// `AnsiTransactionManager` runs it there.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct RoutedTransactionManager;

impl TransactionManager<RoutedConnection> for RoutedTransactionManager {
    type TransactionStateData = TransactionManagerStatus;

    fn begin_transaction(conn: &mut RoutedConnection) -> QueryResult<()> {
        begin(conn, None)
    }

    fn rollback_transaction(conn: &mut RoutedConnection) -> QueryResult<()> {
        end(conn, End::Rollback)
    }

    fn commit_transaction(conn: &mut RoutedConnection) -> QueryResult<()> {
        end(conn, End::Commit)
    }

    fn transaction_manager_status_mut(
        conn: &mut RoutedConnection,
    ) -> &mut TransactionManagerStatus {
        conn.status_mut()
    }

    fn is_broken_transaction_manager(conn: &mut RoutedConnection) -> bool {
        match conn.pinned {
            Some(target) => conn.conn(target).is_none_or(|inner| {
                <Ansi as TransactionManager<PgConnection>>::is_broken_transaction_manager(inner)
            }),
            None => !matches!(
                conn.status_mut().transaction_state(),
                Ok(status) if status.transaction_depth().is_none()
            ),
        }
    }
}

impl RoutedConnection {
    /// Starts configuring a transaction, as diesel's `PgConnection::build_transaction` does.
    ///
    /// A read-only transaction (`.read_only()`) begun in a replica scope runs on a replica;
    /// every other transaction runs on the primary. `SERIALIZABLE` read-only transactions go to
    /// the primary too, since a hot standby does not support serializable isolation.
    ///
    /// ```no_run
    /// # fn run(conn: &mut routing_core::sync::RoutedConnection) -> diesel::QueryResult<()> {
    /// use diesel::prelude::*;
    /// use diesel::sql_types::Integer;
    ///
    /// let n: i32 = conn.build_transaction().read_only().repeatable_read().run(|conn| {
    ///     diesel::select(diesel::dsl::sql::<Integer>("1")).get_result(conn)
    /// })?;
    /// # Ok(()) }
    /// ```
    pub fn build_transaction(&mut self) -> TransactionBuilder<'_> {
        TransactionBuilder {
            conn: self,
            options: TransactionOptions::default(),
        }
    }
}

/// Configures a transaction; made by [`RoutedConnection::build_transaction`].
#[must_use = "a transaction builder does nothing until `run` is called"]
pub struct TransactionBuilder<'a> {
    conn: &'a mut RoutedConnection,
    options: TransactionOptions,
}

impl std::fmt::Debug for TransactionBuilder<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransactionBuilder")
            .field("sql", &self.options.sql())
            .finish_non_exhaustive()
    }
}

impl TransactionBuilder<'_> {
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
    pub fn run<T, E, F>(self, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut RoutedConnection) -> Result<T, E>,
        E: From<DieselError>,
    {
        let TransactionBuilder { conn, options } = self;
        begin(conn, Some(&options))?;
        match f(&mut *conn) {
            Ok(value) => {
                end(conn, End::Commit)?;
                Ok(value)
            }
            // As diesel's `transaction`: the caller's error wins over a broken rollback.
            Err(user_error) => match end(conn, End::Rollback) {
                Ok(()) | Err(DieselError::BrokenTransactionManager) => Err(user_error),
                Err(rollback_error) => Err(rollback_error.into()),
            },
        }
    }
}

/// Checks out the transaction's session and begins; `options` come from a
/// [`TransactionBuilder`]. Inside a transaction, begins a savepoint.
fn begin(conn: &mut RoutedConnection, options: Option<&TransactionOptions>) -> QueryResult<()> {
    conn.primary_moved();
    if let Some(target) = conn.pinned {
        if options.is_some() {
            return Err(DieselError::AlreadyInTransaction);
        }
        if conn.transaction_lost {
            return Err(Error::TransactionLost.into_diesel());
        }
        let inner = conn.conn(target).ok_or_else(lost)?;
        return <Ansi as TransactionManager<PgConnection>>::begin_transaction(inner);
    }
    let read_only = options.is_some_and(|o| o.read_only == Some(true));
    let statement = Statement::Begin {
        read_only,
        serializable: options.is_some_and(|o| o.isolation == Some("SERIALIZABLE")),
    };
    let mut needs = read_needs();
    if read_only {
        conn.vet_token(&mut needs);
    }
    let mut route = route::decide(
        &conn.state(),
        statement,
        &needs,
        conn.shared().config(),
        now_ms,
    );
    route::log(route, Some(&"begin"));
    if route.target == Target::Replica {
        match conn.hold_eligible_replica(&needs) {
            Ok(true) => {}
            // Every replica lags or is behind the causal token, or none can be reached: the
            // primary, by design.
            Ok(false) => route.target = Target::Primary,
            Err(e) => return Err(e.into_diesel()),
        }
    }
    let in_test_transaction = conn.shared().in_test_transaction();
    if route.target == Target::Primary {
        conn.checkout_primary().map_err(Error::into_diesel)?;
    }
    let inner = conn.conn(route.target).ok_or_else(lost)?;
    // Inside a test transaction the primary session is already in a transaction: a configured
    // one becomes a savepoint there, as a plain one does.
    let savepoint = in_test_transaction
        && <Ansi as TransactionManager<PgConnection>>::transaction_manager_status_mut(inner)
            .transaction_depth()
            .is_ok_and(|depth| depth.is_some());
    match options {
        Some(options) if !savepoint => Ansi::begin_transaction_sql(inner, &options.sql())?,
        _ => <Ansi as TransactionManager<PgConnection>>::begin_transaction(inner)?,
    }
    conn.pinned = Some(route.target);
    conn.transaction_lost = false;
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

/// Commits or rolls back the innermost transaction level. A transaction that lost its session
/// is over: rolling it back succeeds, committing it fails.
fn end(conn: &mut RoutedConnection, how: End) -> QueryResult<()> {
    conn.primary_moved();
    let target = conn.pinned.ok_or(DieselError::NotInTransaction)?;
    if conn.transaction_lost || !conn.holds(target) {
        conn.pinned = None;
        conn.transaction_lost = false;
        return match how {
            End::Rollback => Ok(()),
            End::Commit => Err(Error::TransactionLost.into_diesel()),
        };
    }
    let inner = conn.conn(target).ok_or_else(lost)?;
    let result = match how {
        End::Commit => <Ansi as TransactionManager<PgConnection>>::commit_transaction(inner),
        End::Rollback => <Ansi as TransactionManager<PgConnection>>::rollback_transaction(inner),
    };
    // The pin ends once the session's transaction is over; a session whose transaction state
    // broke stays pinned, so its status keeps saying so.
    let done = conn.conn(target).is_none_or(|inner| {
        matches!(
            <Ansi as TransactionManager<PgConnection>>::transaction_manager_status_mut(inner)
                .transaction_state(),
            Ok(status) if status.transaction_depth().is_none()
        )
    });
    if done {
        conn.pinned = None;
    }
    result
}

fn lost() -> DieselError {
    DieselError::DatabaseError(
        diesel::result::DatabaseErrorKind::UnableToSendCommand,
        Box::new("the transaction's server session is gone".to_owned()),
    )
}
