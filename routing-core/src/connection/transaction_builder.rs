//! [`TransactionBuilder`]: a transaction with options (`READ ONLY`, isolation levels), as
//! diesel-async's `build_transaction`.

use diesel::QueryResult;
use diesel::pg::Pg;
use diesel::query_builder::{AstPass, QueryFragment};
use diesel::result::Error as DieselError;

use super::RoutedConnection;
use super::transaction::in_transaction;

/// Configures a transaction; made by [`RoutedConnection::build_transaction`].
#[must_use = "a transaction builder does nothing until `run` is called"]
pub struct TransactionBuilder<'a> {
    conn: &'a mut RoutedConnection,
    options: TransactionOptions,
}

/// What a [`TransactionBuilder`] (async or sync) asks for.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct TransactionOptions {
    pub(crate) isolation: Option<&'static str>,
    pub(crate) read_only: Option<bool>,
    pub(crate) deferrable: Option<bool>,
}

impl TransactionOptions {
    /// The `BEGIN` statement.
    pub(crate) fn sql(&self) -> String {
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
    pub(super) fn new(conn: &'a mut RoutedConnection) -> Self {
        TransactionBuilder {
            conn,
            options: TransactionOptions::default(),
        }
    }

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
    /// `Err`. As diesel-async's, the builder stays usable: `run` may be called again.
    ///
    /// # Errors
    ///
    /// `f`'s error, or the error of `BEGIN`, `COMMIT` or `ROLLBACK`.
    pub async fn run<'b, T, E, F>(&mut self, f: F) -> Result<T, E>
    where
        for<'r> F: AsyncFnOnce(&'r mut RoutedConnection) -> Result<T, E>
            + sealed::AsyncFunc<&'r mut RoutedConnection, Result<T, E>, Fut: Send>
            + Send
            + 'a,
        T: 'b,
        E: From<DieselError> + 'b,
    {
        in_transaction(self.conn, Some(&self.options), f).await
    }
}

/// The `BEGIN` statement the builder sends, as diesel-async's builder renders it.
impl QueryFragment<Pg> for TransactionBuilder<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.push_sql(&self.options.sql());
        Ok(())
    }
}

pub(super) mod sealed {
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
