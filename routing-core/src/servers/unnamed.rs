//! A session for a pool behind a transaction pooler: every statement runs on a tokio-postgres
//! client as an unnamed statement (parse, bind, describe, execute and sync in one round trip,
//! tokio-postgres's `query_typed`), so that nothing is left on one server connection for a later
//! statement, which the pooler may send to another, to miss.

use diesel::connection::{
    CacheSize, DynInstrumentation, Instrumentation, InstrumentationEvent, StrQueryHelper,
};
use diesel::pg::{Pg, PgMetadataLookup, PgQueryBuilder, PgTypeMetadata};
use diesel::query_builder::bind_collector::RawBytesBindCollector;
use diesel::query_builder::{AsQuery, QueryBuilder, QueryFragment, QueryId};
use diesel::result::{DatabaseErrorInformation, DatabaseErrorKind, Error as DieselError};
use diesel::{ConnectionError, ConnectionResult, QueryResult};
use diesel_async::{
    AnsiTransactionManager, AsyncConnection, AsyncConnectionCore, SimpleAsyncConnection,
    TransactionManager,
};
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, TryStreamExt};
use tokio_postgres::types::{IsNull, ToSql, Type};

use super::row::{RoutedRow, RowStream};

/// A server session whose statements are all unnamed.
pub(crate) struct UnnamedSession {
    client: tokio_postgres::Client,
    transaction: AnsiTransactionManager,
    instrumentation: DynInstrumentation,
}

impl UnnamedSession {
    /// The session of `client`, whose connection is driven by a task of its own until the client
    /// is dropped.
    pub(crate) fn new<S, T>(
        client: tokio_postgres::Client,
        connection: tokio_postgres::Connection<S, T>,
    ) -> Self
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(target: "routing_core", %error, "a session's connection ended");
            }
        });
        UnnamedSession {
            client,
            transaction: AnsiTransactionManager::default(),
            instrumentation: DynInstrumentation::none(),
        }
    }

    pub(crate) fn client(&self) -> &tokio_postgres::Client {
        &self.client
    }

    /// Reports that the statement `sql` finished, as diesel-async's connection does.
    fn finish_query<T>(&mut self, sql: &str, result: &QueryResult<T>) {
        self.instrumentation
            .on_connection_event(InstrumentationEvent::finish_query(
                &StrQueryHelper::new(sql),
                result.as_ref().err(),
            ));
    }

    /// A statement that could not be rendered, reported as finished with its error.
    fn unrendered<T>(&mut self, error: DieselError) -> QueryResult<T> {
        let error = Err(error);
        self.finish_query("", &error);
        error
    }

    /// As diesel-async: a serialization failure inside a transaction dooms the transaction, up
    /// to its top level. (`COMMIT` runs through `batch_execute`, which does not mark.)
    fn note_failure<T>(&mut self, result: &QueryResult<T>) {
        if let Err(DieselError::DatabaseError(DatabaseErrorKind::SerializationFailure, _)) = result
        {
            <AnsiTransactionManager as TransactionManager<Self>>::transaction_manager_status_mut(
                self,
            )
            .set_requires_rollback_maybe_up_to_top_level(true);
        }
    }
}

impl SimpleAsyncConnection for UnnamedSession {
    /// Runs `sql` with the simple query protocol: no statement at all.
    async fn batch_execute(&mut self, sql: &str) -> QueryResult<()> {
        self.instrumentation
            .on_connection_event(InstrumentationEvent::start_query(&StrQueryHelper::new(sql)));
        let result = self.client.batch_execute(sql).await.map_err(diesel_error);
        self.finish_query(sql, &result);
        result
    }
}

impl AsyncConnectionCore for UnnamedSession {
    type ExecuteFuture<'conn, 'query> = BoxFuture<'conn, QueryResult<usize>>;
    type LoadFuture<'conn, 'query> = BoxFuture<'conn, QueryResult<RowStream>>;
    type Stream<'conn, 'query> = RowStream;
    type Row<'conn, 'query> = RoutedRow;
    type Backend = Pg;

    fn load<'conn, 'query, T>(&'conn mut self, source: T) -> Self::LoadFuture<'conn, 'query>
    where
        T: AsQuery + 'query,
        T::Query: QueryFragment<Pg> + QueryId + 'query,
    {
        let query = source.as_query();
        self.instrumentation
            .on_connection_event(InstrumentationEvent::start_query(&diesel::debug_query::<
                Pg,
                _,
            >(&query)));
        let statement = Statement::of(&query);
        async move {
            let statement = match statement {
                Ok(statement) => statement,
                Err(error) => return self.unrendered(error),
            };
            let rows = self
                .client
                .query_typed_raw(&statement.sql, statement.params())
                .await
                .map(RowStream::unnamed)
                .map_err(diesel_error);
            self.note_failure(&rows);
            self.finish_query(&statement.sql, &rows);
            rows
        }
        .boxed()
    }

    fn execute_returning_count<'conn, 'query, T>(
        &'conn mut self,
        source: T,
    ) -> Self::ExecuteFuture<'conn, 'query>
    where
        T: QueryFragment<Pg> + QueryId + 'query,
    {
        self.instrumentation
            .on_connection_event(InstrumentationEvent::start_query(&diesel::debug_query::<
                Pg,
                _,
            >(&source)));
        let statement = Statement::of(&source);
        async move {
            let statement = match statement {
                Ok(statement) => statement,
                Err(error) => return self.unrendered(error),
            };
            let counted = async {
                let mut rows = std::pin::pin!(
                    self.client
                        .query_typed_raw(&statement.sql, statement.params())
                        .await?
                );
                while rows.try_next().await?.is_some() {}
                Ok(rows.rows_affected().unwrap_or_default())
            };
            let count = counted.await.map_err(diesel_error).and_then(|count| {
                usize::try_from(count).map_err(|e| DieselError::DeserializationError(Box::new(e)))
            });
            self.note_failure(&count);
            self.finish_query(&statement.sql, &count);
            count
        }
        .boxed()
    }
}

impl AsyncConnection for UnnamedSession {
    type TransactionManager = AnsiTransactionManager;

    /// A session to `database_url`, without TLS (the router opens its sessions itself).
    async fn establish(database_url: &str) -> ConnectionResult<Self> {
        let (client, connection) = tokio_postgres::connect(database_url, tokio_postgres::NoTls)
            .await
            .map_err(|e| ConnectionError::BadConnection(e.to_string()))?;
        Ok(UnnamedSession::new(client, connection))
    }

    fn transaction_state(&mut self) -> &mut AnsiTransactionManager {
        &mut self.transaction
    }

    fn instrumentation(&mut self) -> &mut dyn Instrumentation {
        &mut *self.instrumentation
    }

    fn set_instrumentation(&mut self, instrumentation: impl Instrumentation) {
        self.instrumentation = instrumentation.into();
    }

    /// Nothing is cached: every statement is unnamed.
    fn set_prepared_statement_cache_size(&mut self, _: CacheSize) {}
}

/// A statement's SQL and its binds, ready for an unnamed parse and bind.
struct Statement {
    sql: String,
    binds: Vec<(Bind, Type)>,
}

impl Statement {
    /// Renders `query`. Its custom types must be resolved already (as the router's owned
    /// statements are): a session that sends no named statement cannot look them up now.
    fn of(query: &dyn QueryFragment<Pg>) -> QueryResult<Statement> {
        let mut builder = PgQueryBuilder::default();
        query.to_sql(&mut builder, &Pg)?;
        let mut collector = RawBytesBindCollector::<Pg>::new();
        let mut lookup = NoLookup(None);
        query.collect_binds(&mut collector, &mut lookup, &Pg)?;
        if let Some(name) = lookup.0 {
            return Err(DieselError::QueryBuilderError(
                format!("the OID of type {name} was not looked up before the statement ran").into(),
            ));
        }
        let binds = collector
            .metadata
            .iter()
            .zip(collector.binds)
            .map(|(metadata, bytes)| Ok((Bind(bytes), type_of(metadata)?)))
            .collect::<QueryResult<_>>()?;
        Ok(Statement {
            sql: builder.finish(),
            binds,
        })
    }

    fn params(&self) -> impl ExactSizeIterator<Item = (&(dyn ToSql + Sync), Type)> {
        self.binds
            .iter()
            .map(|(bind, ty)| (bind as &(dyn ToSql + Sync), ty.clone()))
    }
}

/// Refuses custom types that are not resolved, noting the first one's name.
struct NoLookup(Option<String>);

impl PgMetadataLookup for NoLookup {
    fn lookup_type(&mut self, type_name: &str, schema: Option<&str>) -> PgTypeMetadata {
        self.0.get_or_insert_with(|| match schema {
            Some(schema) => format!("{schema}.{type_name}"),
            None => type_name.to_owned(),
        });
        PgTypeMetadata::new(0, 0)
    }
}

/// The tokio-postgres type of a bind: only its OID is sent.
fn type_of(metadata: &PgTypeMetadata) -> QueryResult<Type> {
    let oid = metadata
        .oid()
        .map_err(|e| DieselError::SerializationError(Box::new(e)))?;
    Ok(Type::from_oid(oid).unwrap_or_else(|| {
        Type::new(
            format!("custom_{oid}"),
            oid,
            tokio_postgres::types::Kind::Simple,
            String::new(),
        )
    }))
}

/// A bind's bytes, as diesel serialized them (binary format).
#[derive(Debug)]
struct Bind(Option<Vec<u8>>);

impl ToSql for Bind {
    fn to_sql(
        &self,
        _: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match &self.0 {
            Some(bytes) => {
                out.extend_from_slice(bytes);
                Ok(IsNull::No)
            }
            None => Ok(IsNull::Yes),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    tokio_postgres::types::to_sql_checked!();
}

/// `error` as diesel reports a server error: its kind from the SQLSTATE, its message and
/// fields kept; an error without a SQLSTATE (a closed connection) cannot reach the server.
pub(crate) fn diesel_error(error: tokio_postgres::Error) -> DieselError {
    use tokio_postgres::error::SqlState;
    let Some(code) = error.code().cloned() else {
        return DieselError::DatabaseError(
            DatabaseErrorKind::UnableToSendCommand,
            Box::new(error.to_string()),
        );
    };
    let kind = match code {
        SqlState::UNIQUE_VIOLATION => DatabaseErrorKind::UniqueViolation,
        SqlState::FOREIGN_KEY_VIOLATION => DatabaseErrorKind::ForeignKeyViolation,
        SqlState::RESTRICT_VIOLATION => DatabaseErrorKind::RestrictViolation,
        SqlState::EXCLUSION_VIOLATION => DatabaseErrorKind::ExclusionViolation,
        SqlState::T_R_SERIALIZATION_FAILURE => DatabaseErrorKind::SerializationFailure,
        SqlState::READ_ONLY_SQL_TRANSACTION => DatabaseErrorKind::ReadOnlyTransaction,
        SqlState::NOT_NULL_VIOLATION => DatabaseErrorKind::NotNullViolation,
        SqlState::CHECK_VIOLATION => DatabaseErrorKind::CheckViolation,
        _ => DatabaseErrorKind::Unknown,
    };
    match error.as_db_error() {
        Some(db) => DieselError::DatabaseError(kind, Box::new(ServerError(db.clone()))),
        None => DieselError::DatabaseError(kind, Box::new(error.to_string())),
    }
}

/// A server's error, as diesel reads it.
struct ServerError(tokio_postgres::error::DbError);

impl DatabaseErrorInformation for ServerError {
    fn message(&self) -> &str {
        self.0.message()
    }

    fn details(&self) -> Option<&str> {
        self.0.detail()
    }

    fn hint(&self) -> Option<&str> {
        self.0.hint()
    }

    fn table_name(&self) -> Option<&str> {
        self.0.table()
    }

    fn column_name(&self) -> Option<&str> {
        self.0.column()
    }

    fn constraint_name(&self) -> Option<&str> {
        self.0.constraint()
    }

    fn statement_position(&self) -> Option<i32> {
        use tokio_postgres::error::ErrorPosition;
        match self.0.position()? {
            ErrorPosition::Original(position) | ErrorPosition::Internal { position, .. } => {
                i32::try_from(*position).ok()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use diesel::IntoSql;
    use diesel::sql_types::{Integer, Nullable, Text};
    use routing_fixtures::OrderStatus;

    use super::*;

    #[test]
    fn statements_carry_binary_binds_and_their_types() {
        let query = diesel::select((
            7_i32.into_sql::<Integer>(),
            None::<String>.into_sql::<Nullable<Text>>(),
        ));
        let statement = Statement::of(&query).unwrap();
        assert_eq!(statement.sql, "SELECT $1, $2");
        let types: Vec<_> = statement.params().map(|(_, ty)| ty).collect();
        assert_eq!(types, vec![Type::INT4, Type::TEXT]);
        assert_eq!(statement.binds[0].0.0.as_deref(), Some(&[0, 0, 0, 7][..]));
        assert_eq!(statement.binds[1].0.0, None);
    }

    #[test]
    fn custom_types_must_be_looked_up_first() {
        let query = diesel::select(
            OrderStatus::Paid.into_sql::<routing_fixtures::sql_types::OrderStatus>(),
        );
        let error = Statement::of(&query).err().expect("an unresolved type");
        assert!(error.to_string().contains("order_status"), "{error}");
    }
}
