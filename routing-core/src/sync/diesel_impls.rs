//! diesel's connection traits for the synchronous [`RoutedConnection`]: `Connection`,
//! `LoadConnection`, `SimpleConnection`, `MigrationConnection` (so diesel_migrations'
//! `MigrationHarness` runs on it, on the primary) and `UpdateAndFetchResults` (`save_changes`).

use diesel::connection::{
    CacheSize, Connection, ConnectionSealed, DefaultLoadingMode, Instrumentation, LoadConnection,
    SimpleConnection, TransactionManager, TransactionManagerStatus,
};
use diesel::expression::QueryMetadata;
use diesel::pg::Pg;
use diesel::query_builder::{Query, QueryFragment, QueryId};
use diesel::result::Error as DieselError;
use diesel::{ConnectionResult, PgConnection, QueryResult};

use super::{RoutedConnection, RoutedPool, RoutedTransactionManager};
use crate::config::RoutedPoolBuilder;
use crate::owned::{NoId, OwnedQuery};

/// The rows of a [`RoutedConnection`]'s results: `PgConnection`'s, all received at once.
type PgCursor = <PgConnection as LoadConnection<DefaultLoadingMode>>::Cursor<'static, 'static>;
type PgRow = <PgConnection as LoadConnection<DefaultLoadingMode>>::Row<'static, 'static>;

impl SimpleConnection for RoutedConnection {
    /// Runs raw SQL on the primary (on the transaction's server inside a transaction). Since it
    /// may write, later reads on this connection go to the primary.
    fn batch_execute(&mut self, query: &str) -> QueryResult<()> {
        self.batch(query)
    }
}

impl ConnectionSealed for RoutedConnection {}

impl Connection for RoutedConnection {
    type Backend = Pg;
    type TransactionManager = RoutedTransactionManager;

    /// Opens a routed connection with `database_url` as its primary and no replica.
    fn establish(database_url: &str) -> ConnectionResult<Self> {
        let bad = |e: &dyn std::fmt::Display| diesel::ConnectionError::BadConnection(e.to_string());
        let pool: RoutedPool = RoutedPoolBuilder::new(database_url.to_owned())
            .max_size(1)
            .build_sync()
            .map_err(|e| bad(&e))?;
        let mut conn = RoutedConnection::new(pool);
        conn.checkout_primary().map_err(|e| bad(&e))?;
        Ok(conn)
    }

    fn execute_returning_count<T>(&mut self, source: &T) -> QueryResult<usize>
    where
        T: QueryFragment<Pg> + QueryId,
    {
        let debug_sql = self
            .instrumented()
            .then(|| diesel::debug_query::<Pg, _>(source).to_string());
        self.run_statement(
            source,
            T::query_id(),
            debug_sql,
            |conn, rendered| match rendered {
                Some(rendered) => {
                    let query = OwnedQuery::<NoId>::collected(source, rendered.clone(), conn)?;
                    conn.execute_returning_count(&query)
                }
                None => conn.execute_returning_count(source),
            },
        )
    }

    /// Begins a transaction that is never committed, on the primary, and from then on sends every
    /// statement of every connection of this pool to the primary, so that tests read their own
    /// uncommitted rows.
    fn begin_test_transaction(&mut self) -> QueryResult<()> {
        match self.status_mut().transaction_state() {
            Ok(status) if status.transaction_depth().is_none() => {}
            Ok(_) => return Err(DieselError::AlreadyInTransaction),
            Err(e) => return Err(e),
        }
        self.shared().enter_test_transaction();
        <RoutedTransactionManager as TransactionManager<Self>>::begin_transaction(self)?;
        self.status_mut().set_test_transaction_flag();
        Ok(())
    }

    fn transaction_state(&mut self) -> &mut TransactionManagerStatus {
        self.status_mut()
    }

    fn instrumentation(&mut self) -> &mut dyn Instrumentation {
        &mut **self.instrumentation_mut()
    }

    fn set_instrumentation(&mut self, instrumentation: impl Instrumentation) {
        self.set_instrumentation_to(instrumentation.into());
    }

    fn set_prepared_statement_cache_size(&mut self, size: CacheSize) {
        self.set_cache_size(size);
    }
}

impl LoadConnection<DefaultLoadingMode> for RoutedConnection {
    type Cursor<'conn, 'query> = PgCursor;
    type Row<'conn, 'query> = PgRow;

    fn load<'conn, 'query, T>(
        &'conn mut self,
        source: T,
    ) -> QueryResult<Self::Cursor<'conn, 'query>>
    where
        T: Query + QueryFragment<Pg> + QueryId + 'query,
        Pg: QueryMetadata<T::SqlType>,
    {
        let debug_sql = self
            .instrumented()
            .then(|| diesel::debug_query::<Pg, _>(&source).to_string());
        self.run_statement(
            &source,
            T::query_id(),
            debug_sql,
            |conn, rendered| match rendered {
                Some(rendered) => {
                    let query = OwnedQuery::<NoId>::collected(&source, rendered.clone(), conn)?;
                    load_owned(conn, query)
                }
                None => LoadConnection::<DefaultLoadingMode>::load(conn, &source),
            },
        )
    }
}

/// Loads the owned form of a query on `session`: outside the generic `load`, whose bound on the
/// caller's SQL type would be taken for the owned form's.
fn load_owned(session: &mut PgConnection, query: OwnedQuery<NoId>) -> QueryResult<PgCursor> {
    LoadConnection::<DefaultLoadingMode>::load(session, query)
}

impl diesel::migration::MigrationConnection for RoutedConnection {
    /// Creates diesel's table of applied migrations: DDL, so on the primary.
    fn setup(&mut self) -> QueryResult<usize> {
        use diesel::RunQueryDsl;
        diesel::sql_query(diesel::migration::CREATE_MIGRATIONS_TABLE).execute(self)
    }
}

impl<'b, Changes, Output> diesel::query_dsl::UpdateAndFetchResults<Changes, Output>
    for RoutedConnection
where
    Changes: Copy
        + diesel::AsChangeset<Target = <Changes as diesel::associations::HasTable>::Table>
        + diesel::query_builder::IntoUpdateTarget,
    diesel::dsl::Update<Changes, Changes>:
        diesel::query_dsl::LoadQuery<'b, RoutedConnection, Output>,
    <Changes::Table as diesel::Table>::AllColumns: diesel::expression::ValidGrouping<()>,
    <<Changes::Table as diesel::Table>::AllColumns as diesel::expression::ValidGrouping<()>>::IsAggregate:
        diesel::expression::MixedAggregates<
            diesel::expression::is_aggregate::No,
            Output = diesel::expression::is_aggregate::No,
        >,
{
    /// `UPDATE ... RETURNING`: a write, so on the primary.
    fn update_and_fetch(&mut self, changeset: Changes) -> QueryResult<Output> {
        use diesel::RunQueryDsl;
        diesel::update(changeset).set(changeset).get_result(self)
    }
}
