mod read;

use std::any::TypeId;
use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use diesel::QueryResult;
use diesel::connection::{
    CacheSize, DynInstrumentation, Instrumentation, InstrumentationEvent, StrQueryHelper,
    TransactionManagerStatus,
};
use diesel::pg::Pg;
use diesel::query_builder::{AsQuery, QueryFragment, QueryId};
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel_async::pooled_connection::deadpool::Object;
use diesel_async::{
    AnsiTransactionManager, AsyncConnection, AsyncConnectionCore, AsyncPgConnection,
    SimpleAsyncConnection, TransactionManager,
};
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;

use crate::causal::{CausalToken, ReadYourWrites};
use crate::classify::{Classification, WriteReason};
use crate::collected::{Identity, NoId, OwnedQuery, StaticId, render};
use crate::context::{ReadNeeds, read_needs, record_write};
use crate::error::{Error, Role};
use crate::health::Lease;
use crate::pool::current_wal_position;
use crate::pool::{PgObject, RoutedPool};
use crate::transaction::RoutedTransactionManager;
use read::Exclusions;

/// A row of a [`RoutedConnection`]'s results: diesel-async's PostgreSQL row.
pub(crate) type PgRow = <AsyncPgConnection as AsyncConnectionCore>::Row<'static, 'static>;
type PgStream = BoxStream<'static, QueryResult<PgRow>>;

/// Waits for the first item of a result, so that a read that fails before its first row (a
/// replica that refuses it, a connection that breaks) can still be retried elsewhere.
pub(crate) type FirstRow<R> = fn(R) -> BoxFuture<'static, QueryResult<R>>;

/// The stream again, with its first row (or its end) already received; its first error instead.
fn first_row(stream: PgStream) -> BoxFuture<'static, QueryResult<PgStream>> {
    use futures_util::StreamExt;
    async move {
        let mut stream = stream;
        match stream.next().await {
            None => Ok(futures_util::stream::empty().boxed()),
            Some(Err(e)) => Err(e),
            Some(Ok(row)) => Ok(futures_util::stream::once(std::future::ready(Ok(row)))
                .chain(stream)
                .boxed()),
        }
    }
    .boxed()
}

/// Runs an owned statement on a server connection.
pub(crate) type RunFn<I, R> =
    for<'c> fn(&'c mut AsyncPgConnection, &'c OwnedQuery<I>) -> BoxFuture<'c, QueryResult<R>>;

/// Where a statement goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    Primary,
    Replica,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Target::Primary => "primary",
            Target::Replica => "replica",
        })
    }
}

/// Why a statement went where it went, for the debug log and the metrics.
pub(crate) enum Reason<'a> {
    Transaction,
    TestTransaction,
    Write(&'a WriteReason),
    AfterWrite,
    RequestWrote,
    Forced,
    ScopeDeniesReplica,
    NoReplicas,
    ScopeAllowsReplica,
    CausalWindow,
    NoReplicaEligible(&'a Exclusions),
    Fallback,
    RefusedAsWrite,
}

/// The `reason` labels of the `routing_queries_total` metric, by [`Reason::metric`].
pub(crate) const REASON_LABELS: [&str; 13] = [
    "transaction",
    "test_transaction",
    "write",
    "after_write",
    "request_wrote",
    "forced",
    "scope_primary",
    "no_replica",
    "scope_replica",
    "causal_window",
    "no_replica_eligible",
    "fallback",
    "refused_as_write",
];

impl Reason<'_> {
    /// The position of the reason's label in [`REASON_LABELS`].
    pub(crate) fn metric(&self) -> usize {
        match self {
            Reason::Transaction => 0,
            Reason::TestTransaction => 1,
            Reason::Write(_) => 2,
            Reason::AfterWrite => 3,
            Reason::RequestWrote => 4,
            Reason::Forced => 5,
            Reason::ScopeDeniesReplica => 6,
            Reason::NoReplicas => 7,
            Reason::ScopeAllowsReplica => 8,
            Reason::CausalWindow => 9,
            Reason::NoReplicaEligible(_) => 10,
            Reason::Fallback => 11,
            Reason::RefusedAsWrite => 12,
        }
    }
}

impl fmt::Display for Reason<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Transaction => f.write_str("inside a transaction"),
            Reason::TestTransaction => f.write_str("the pool is in a test transaction"),
            Reason::Write(why) => write!(f, "write: {why}"),
            Reason::AfterWrite => f.write_str("sticky: this connection wrote before"),
            Reason::RequestWrote => f.write_str("sticky: this request wrote before"),
            Reason::Forced => f.write_str("forced: RoutedConnection::primary"),
            Reason::ScopeDeniesReplica => f.write_str("scope: replica not allowed"),
            Reason::NoReplicas => f.write_str("no replica configured"),
            Reason::ScopeAllowsReplica => f.write_str("scope: replica allowed"),
            Reason::CausalWindow => f.write_str("causal token: within the time window of a write"),
            Reason::NoReplicaEligible(why) => write!(f, "no replica eligible: {why}"),
            Reason::Fallback => f.write_str("fallback: no replica could serve the read"),
            Reason::RefusedAsWrite => f.write_str("a replica refused the statement as a write"),
        }
    }
}

/// A connection to one replica, counted in its `in_flight` while held.
struct HeldReplica {
    index: usize,
    conn: PgObject,
    _lease: Lease,
}

/// A connection that sends each statement to the primary or a replica.
///
/// It implements diesel-async's [`AsyncConnection`] with `Backend = Pg`, so ordinary diesel code
/// runs on it unchanged. The rules, in order:
///
/// 1. Inside a transaction every statement goes to the transaction's server: the primary, or a
///    replica for a read-only transaction begun in a replica scope
///    ([`RoutedConnection::build_transaction`]).
/// 2. Writes go to the primary: `INSERT`/`UPDATE`/`DELETE`, `INSERT ... RETURNING`, locking
///    `SELECT`s, data-modifying CTEs, DDL, primary-only functions such as `nextval`,
///    `batch_execute`, and anything the [`Classifier`](crate::Classifier) does not recognise.
/// 3. After a write, every later read on this connection goes to the primary
///    (read-your-writes within a request).
/// 4. A read goes to a replica when the [routing scope](crate::with_read_replica) allows it and
///    a replica is configured, else to the primary. A read whose replica cannot be reached runs on
///    the next replica, then on the primary.
///
/// Server connections are checked out lazily: one that only reads in a replica scope never holds
/// a primary connection, and one in a primary scope never holds a replica connection.
///
/// As with diesel-async's own connections, a transaction whose future is dropped midway stays
/// open on its server connection, and this connection's later statements run inside it; drop the
/// `RoutedConnection` then: its pool discards a server connection returned inside a transaction,
/// which rolls the transaction back.
pub struct RoutedConnection {
    pool: RoutedPool,
    primary: Option<PgObject>,
    replica: Option<HeldReplica>,
    pinned: Option<Target>,
    wrote: bool,
    idle_status: TransactionManagerStatus,
    instrumentation: DynInstrumentation,
    instrumented: bool,
    cache_size: Option<CacheSize>,
}

impl fmt::Debug for RoutedConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RoutedConnection")
            .field("holds_primary", &self.primary.is_some())
            .field(
                "holds_replica",
                &self.replica.as_ref().map(|held| held.index),
            )
            .field("transaction_on", &self.pinned)
            .field("wrote", &self.wrote)
            .finish_non_exhaustive()
    }
}

impl RoutedConnection {
    pub(crate) fn new(pool: RoutedPool) -> Self {
        RoutedConnection {
            pool,
            primary: None,
            replica: None,
            pinned: None,
            wrote: false,
            idle_status: TransactionManagerStatus::default(),
            instrumentation: DynInstrumentation::none(),
            instrumented: false,
            cache_size: None,
        }
    }

    /// The pool this connection came from.
    pub fn pool(&self) -> &RoutedPool {
        &self.pool
    }

    /// The primary's connection, checked out if needed: the escape hatch for one call that must
    /// see the primary whatever the scope says.
    ///
    /// Since the caller may write through it, later reads on this connection go to the primary
    /// too, as after any write. For a whole block, use [`with_primary`](crate::with_primary).
    ///
    /// # Errors
    ///
    /// The primary cannot be checked out.
    pub async fn primary(&mut self) -> Result<&mut AsyncPgConnection, Error> {
        self.mark_written();
        log_decision(Target::Primary, &Reason::Forced);
        self.count(Target::Primary, Reason::Forced.metric());
        self.checkout(Target::Primary).await
    }

    /// A token for this connection's writes, to hand to a later request (see [`CausalToken`]):
    /// `None` when it has not written. Asks the primary for its WAL position, so call it after
    /// the writes have committed.
    ///
    /// # Errors
    ///
    /// The primary cannot be checked out or asked.
    pub async fn causal_token(&mut self) -> Result<Option<CausalToken>, Error> {
        if !self.wrote {
            return Ok(None);
        }
        if let ReadYourWrites::TimeWindow(_) = self.pool.inner.read_your_writes {
            return Ok(Some(CausalToken::new(0)));
        }
        let conn = self.checkout(Target::Primary).await?;
        current_wal_position(conn).await.map(Some)
    }

    /// Whether this connection has sent a write (or opened a read-write transaction), which
    /// pins its later reads to the primary.
    pub fn has_written(&self) -> bool {
        self.wrote
    }

    pub(crate) fn pinned(&self) -> Option<Target> {
        self.pinned
    }

    pub(crate) fn set_pinned(&mut self, target: Option<Target>) {
        self.pinned = target;
    }

    /// The status of the transaction's server connection, or an idle status outside one.
    pub(crate) fn status_mut(&mut self) -> &mut TransactionManagerStatus {
        let inner = match self.pinned {
            Some(Target::Primary) => self.primary.as_deref_mut(),
            Some(Target::Replica) => self.replica.as_mut().map(|held| &mut *held.conn),
            None => None,
        };
        match inner {
            Some(inner) => {
                <AnsiTransactionManager as TransactionManager<AsyncPgConnection>>::transaction_manager_status_mut(inner)
            }
            None => &mut self.idle_status,
        }
    }

    /// Notes a write: later reads of this connection, and of the request, go to the primary.
    pub(crate) fn mark_written(&mut self) {
        self.wrote = true;
        record_write(&self.pool);
    }

    fn holds(&self, target: Target) -> bool {
        match target {
            Target::Primary => self.primary.is_some(),
            Target::Replica => self.replica.is_some(),
        }
    }

    /// The connection for `target`, which must be held.
    pub(crate) fn held(&mut self, target: Target) -> Option<&mut AsyncPgConnection> {
        match target {
            Target::Primary => self.primary.as_deref_mut(),
            Target::Replica => self.replica.as_mut().map(|held| &mut *held.conn),
        }
    }

    /// The connection for `target`, checked out if not held. A replica is chosen by the pool's
    /// policy among the eligible ones, skipping and banning those that cannot be reached.
    pub(crate) async fn checkout(
        &mut self,
        target: Target,
    ) -> Result<&mut AsyncPgConnection, Error> {
        match target {
            Target::Primary if self.primary.is_none() => {
                let conn = self.pool.inner.primary.checkout().await?;
                self.primary = Some(self.prepare(conn));
            }
            Target::Replica if self.replica.is_none() => {
                let held = self.hold_eligible_replica(&read_needs()).await?;
                if !held {
                    return Err(Error::NoReplicaAvailable {
                        reasons: "every replica lags or is behind the causal token".to_owned(),
                    });
                }
            }
            _ => {}
        }
        self.held(target)
            .ok_or_else(lost_connection)
            .map_err(|e| Error::Query {
                role: Role::Primary,
                source: e,
            })
    }

    fn prepare(&self, mut conn: PgObject) -> PgObject {
        if let Some(size) = self.cache_size {
            conn.set_prepared_statement_cache_size(size);
        }
        conn
    }

    /// The target of a statement when it does not depend on the routing scope: inside a
    /// transaction, after a write, or for a write. `None` for a read, whose target is decided by
    /// [`RoutedConnection::read_target`] when it runs, inside the scope that awaits it. Returns
    /// the SQL too when classifying had to render it.
    fn fixed_target(
        &mut self,
        query: &dyn QueryFragment<Pg>,
        query_id: Option<TypeId>,
    ) -> QueryResult<(Option<Fixed>, Option<Rendered>)> {
        if let Some(reason) = self.sticky_reason() {
            let target = self.pinned.unwrap_or(Target::Primary);
            log_decision(target, &reason);
            return Ok((Some((target, reason.metric())), None));
        }
        let (write, rendered) = self.classify(query, query_id)?;
        match write.as_deref() {
            Some(Classification::Write(why)) => {
                self.mark_written();
                let reason = Reason::Write(why);
                log_decision(Target::Primary, &reason);
                Ok((Some((Target::Primary, reason.metric())), rendered))
            }
            _ => Ok((None, rendered)),
        }
    }

    /// Why every statement goes to the transaction's server or the primary, if one does.
    pub(crate) fn sticky_reason(&self) -> Option<Reason<'static>> {
        if self.pinned.is_some() {
            Some(Reason::Transaction)
        } else if self.pool.inner.test_transaction.load(Ordering::Relaxed) {
            Some(Reason::TestTransaction)
        } else if self.wrote {
            Some(Reason::AfterWrite)
        } else {
            None
        }
    }

    /// The target of a read, from the routing context of the task running it.
    fn read_target(&self) -> (Target, ReadNeeds, Reason<'static>) {
        let needs = read_needs();
        let (target, reason) = match self.sticky_reason() {
            Some(reason) => (self.pinned.unwrap_or(Target::Primary), reason),
            None if !needs.use_read_replica => (Target::Primary, Reason::ScopeDeniesReplica),
            None if needs.request_wrote => (Target::Primary, Reason::RequestWrote),
            None if self.pool.inner.replicas.is_empty() => (Target::Primary, Reason::NoReplicas),
            None => (Target::Replica, Reason::ScopeAllowsReplica),
        };
        log_decision(target, &reason);
        (target, needs, reason)
    }

    /// Classifies `query`: the classification of a write (`None` for a read), and its SQL when
    /// it had to be rendered. Queries with a static id (whose SQL never changes) are rendered and
    /// classified once per pool and thread: a cached read costs one lookup, and its SQL is
    /// fetched by [`RoutedConnection::rendered`] only when needed.
    fn classify(
        &self,
        query: &dyn QueryFragment<Pg>,
        query_id: Option<TypeId>,
    ) -> QueryResult<(Option<Arc<Classification>>, Option<Rendered>)> {
        let key = query_id.map(|id| (self.pool.inner.id, id));
        if let Some(key) = key {
            let cached = CLASSIFIED
                .with(|cache| cache.borrow().get(&key).map(|cached| cached.write.clone()));
            if let Some(write) = cached {
                return Ok((write, None));
            }
        }
        let rendered = render_for_owned(query)?;
        let class = self.pool.inner.classifier.classify(&rendered.sql);
        let write = (!class.is_read()).then(|| Arc::new(class));
        // Diesel's own statement cache trusts a static id only for SQL that is safe to cache.
        if let Some(key) = key.filter(|_| rendered.safe_to_cache) {
            let cached = Classified {
                write: write.clone(),
                rendered: rendered.clone(),
            };
            CLASSIFIED.with(|cache| cache.borrow_mut().insert(key, cached));
        }
        Ok((write, Some(rendered)))
    }

    /// The SQL of `query`: from the cache of static queries, or rendered now.
    fn rendered(
        &self,
        query: &dyn QueryFragment<Pg>,
        query_id: Option<TypeId>,
    ) -> QueryResult<Rendered> {
        let key = query_id.map(|id| (self.pool.inner.id, id));
        let cached = key.and_then(|key| {
            CLASSIFIED.with(|cache| cache.borrow().get(&key).map(|c| c.rendered.clone()))
        });
        match cached {
            Some(rendered) => Ok(rendered),
            None => render_for_owned(query),
        }
    }

    /// Runs an owned statement on `target`; reads on a replica fail over.
    async fn run_owned<I: Identity, R>(
        &mut self,
        target: Target,
        owned: OwnedQuery<I>,
        run: RunFn<I, R>,
        needs: ReadNeeds,
        metric: usize,
        first_row: Option<FirstRow<R>>,
    ) -> QueryResult<R> {
        match target {
            Target::Replica if self.pinned.is_none() => {
                self.read_on_replica(owned, run, needs, first_row).await
            }
            target => self.run_on(target, owned, run, metric).await,
        }
    }

    pub(crate) async fn run_on<I: Identity, R>(
        &mut self,
        target: Target,
        mut owned: OwnedQuery<I>,
        run: RunFn<I, R>,
        metric: usize,
    ) -> QueryResult<R> {
        let pool = self.pool.clone();
        let conn = self.checkout(target).await.map_err(Error::into_diesel)?;
        owned.resolve(conn, &pool.inner.types).await?;
        self.count(target, metric);
        let Some(conn) = self.held(target) else {
            return Err(lost_connection());
        };
        run(conn, &owned).await
    }

    /// Counts a statement sent to the server held for `target`, for the reason at `metric` in
    /// [`REASON_LABELS`].
    fn count(&self, target: Target, metric: usize) {
        let health = match target {
            Target::Primary => Some(&self.pool.inner.primary.health),
            Target::Replica => self
                .replica
                .as_ref()
                .map(|held| &self.pool.inner.replicas[held.index].health),
        };
        if let Some(health) = health {
            health.count_routed(metric);
        }
    }

    /// Holds a connection to replica `index`, releasing any other replica held. A checkout
    /// failure bans the replica.
    pub(crate) async fn hold_replica(&mut self, index: usize) -> Result<(), Error> {
        if self
            .replica
            .as_ref()
            .is_some_and(|held| held.index == index)
        {
            return Ok(());
        }
        self.replica = None;
        let pool = self.pool.clone();
        let server = &pool.inner.replicas[index];
        match server.checkout().await {
            Ok(conn) => {
                self.replica = Some(HeldReplica {
                    index,
                    conn: self.prepare(conn),
                    _lease: Lease::new(&server.health),
                });
                Ok(())
            }
            // A busy pool is no sign of a sick server: try another replica, but do not ban.
            Err(e @ Error::PoolExhausted { .. }) => Err(e),
            Err(e) => {
                server.health.ban(e.to_string());
                Err(e)
            }
        }
    }

    /// Closes the held replica connection instead of returning it to its pool.
    pub(crate) fn discard_replica(&mut self) {
        if let Some(held) = self.replica.take() {
            drop(Object::take(held.conn));
        }
    }

    /// Sends `query` to its server: straight to a held connection when its target does not
    /// depend on the scope (a write, or anything inside a transaction or after a write), else
    /// through the owned form, routed when the future first runs.
    fn dispatch<'conn, Q, R>(
        &'conn mut self,
        query: Q,
        direct: impl FnOnce(&'conn mut AsyncPgConnection, Q) -> BoxFuture<'conn, QueryResult<R>>,
        run: Runners<Q::QueryId, R>,
        first_row: Option<FirstRow<R>>,
    ) -> BoxFuture<'conn, QueryResult<R>>
    where
        Q: QueryFragment<Pg> + QueryId,
        R: Send + 'conn,
    {
        let debug_sql = self
            .instrumented
            .then(|| diesel::debug_query::<Pg, _>(&query).to_string());
        let (fixed, rendered) = match self.fixed_target(&query, Q::query_id()) {
            Ok(decision) => decision,
            Err(e) => return futures_util::future::ready(Err(e)).boxed(),
        };
        if let Some((target, metric)) = fixed.filter(|(target, _)| self.holds(*target)) {
            self.count(target, metric);
            let conn = match target {
                Target::Primary => self.primary.as_deref_mut(),
                Target::Replica => self.replica.as_mut().map(|held| &mut *held.conn),
            };
            let Some(conn) = conn else {
                return futures_util::future::ready(Err(lost_connection())).boxed();
            };
            let fut = direct(conn, query);
            return match debug_sql {
                None => fut,
                Some(sql) => instrument(&mut self.instrumentation, sql, fut),
            };
        }
        let rendered = match rendered.map_or_else(|| self.rendered(&query, Q::query_id()), Ok) {
            Ok(rendered) => rendered,
            Err(e) => return futures_util::future::ready(Err(e)).boxed(),
        };
        // The owned form keeps the query's static id, so that the server connection's statement
        // cache finds its prepared statement by type, as for the query itself.
        if Q::HAS_STATIC_QUERY_ID {
            self.run_later(
                &query,
                rendered,
                fixed,
                run.with_static_id,
                first_row,
                debug_sql,
            )
        } else {
            self.run_later(
                &query,
                rendered,
                fixed,
                run.without_id,
                first_row,
                debug_sql,
            )
        }
    }

    /// The future of a statement sent through its owned form: routed when it first runs.
    fn run_later<'conn, I: Identity, R: Send + 'conn>(
        &'conn mut self,
        query: &dyn QueryFragment<Pg>,
        rendered: Rendered,
        fixed: Option<Fixed>,
        run: RunFn<I, R>,
        first_row: Option<FirstRow<R>>,
        debug_sql: Option<String>,
    ) -> BoxFuture<'conn, QueryResult<R>> {
        let owned = match OwnedQuery::<I>::new(
            query,
            rendered.sql,
            rendered.safe_to_cache,
            &self.pool.inner.types,
        ) {
            Ok(owned) => owned,
            Err(e) => return futures_util::future::ready(Err(e)).boxed(),
        };
        async move {
            let (target, needs, metric) = match fixed {
                Some((target, metric)) => (target, ReadNeeds::default(), metric),
                None => {
                    let (target, needs, reason) = self.read_target();
                    (target, needs, reason.metric())
                }
            };
            let Some(sql) = debug_sql else {
                return self
                    .run_owned(target, owned, run, needs, metric, first_row)
                    .await;
            };
            let query = StrQueryHelper::new(&sql);
            self.instrumentation
                .on_connection_event(InstrumentationEvent::start_query(&query));
            let result = self
                .run_owned(target, owned, run, needs, metric, first_row)
                .await;
            self.instrumentation
                .on_connection_event(InstrumentationEvent::finish_query(
                    &query,
                    result.as_ref().err(),
                ));
            result
        }
        .boxed()
    }
}

/// Renders `query` for its owned form.
fn render_for_owned(query: &dyn QueryFragment<Pg>) -> QueryResult<Rendered> {
    Ok(Rendered {
        sql: Arc::from(render(query)?),
        safe_to_cache: query.is_safe_to_cache_prepared(&Pg)?,
    })
}

/// A target fixed before the statement runs, and the metric index of its reason.
type Fixed = (Target, usize);

/// A statement's SQL, rendered once (and, for a static query, kept).
#[derive(Clone)]
pub(crate) struct Rendered {
    sql: Arc<str>,
    safe_to_cache: bool,
}

/// What the cache keeps of a static query.
#[derive(Clone)]
struct Classified {
    /// `None` for a read, the classification of a write.
    write: Option<Arc<Classification>>,
    rendered: Rendered,
}

/// How to run a statement's owned form, with or without the query's static id `Id`.
pub(crate) struct Runners<Id: 'static, R> {
    with_static_id: RunFn<StaticId<Id>, R>,
    without_id: RunFn<NoId, R>,
}

impl<Id: 'static> Runners<Id, PgStream> {
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

pub(crate) fn lost_connection() -> DieselError {
    DieselError::DatabaseError(
        DatabaseErrorKind::UnableToSendCommand,
        Box::new("routed connection lost its server connection".to_owned()),
    )
}

fn instrument<'a, R: Send + 'a>(
    instrumentation: &'a mut DynInstrumentation,
    sql: String,
    fut: BoxFuture<'a, QueryResult<R>>,
) -> BoxFuture<'a, QueryResult<R>> {
    async move {
        let query = StrQueryHelper::new(&sql);
        instrumentation.on_connection_event(InstrumentationEvent::start_query(&query));
        let result = fut.await;
        instrumentation.on_connection_event(InstrumentationEvent::finish_query(
            &query,
            result.as_ref().err(),
        ));
        result
    }
    .boxed()
}

pub(crate) fn log_decision(target: Target, reason: &Reason<'_>) {
    tracing::debug!(target: "routing_core", server = %target, reason = %reason, "route");
}

/// SQLSTATE 25006: the server refused a write in a read-only transaction.
pub(crate) fn is_read_only_violation(e: &DieselError) -> bool {
    matches!(
        e,
        DieselError::DatabaseError(DatabaseErrorKind::ReadOnlyTransaction, _)
    )
}

/// Whether `e` means the server, not the statement, failed: the read may run elsewhere.
pub(crate) fn is_unreachable(e: &DieselError, conn: &mut AsyncPgConnection) -> bool {
    use diesel_async::pooled_connection::PoolableConnection;
    match e {
        DieselError::DatabaseError(
            DatabaseErrorKind::UnableToSendCommand | DatabaseErrorKind::ClosedConnection,
            _,
        ) => true,
        DieselError::DatabaseError(_, info) => {
            let message = info.message();
            message.starts_with("terminating connection")
                || message.starts_with("the database system is")
                || message.contains("conflict with recovery")
                || conn.is_broken()
        }
        _ => false,
    }
}

/// Builds a hash from a `TypeId`'s own bits: `TypeId`s are already well-distributed hashes.
#[derive(Default)]
struct TypeIdHasher(u64);

impl Hasher for TypeIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(5) ^ u64::from_ne_bytes(word);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = self.0.rotate_left(5) ^ n;
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

type ClassCache = HashMap<(usize, TypeId), Classified, BuildHasherDefault<TypeIdHasher>>;

thread_local! {
    /// Classifications of statically known queries, by pool and query type.
    static CLASSIFIED: RefCell<ClassCache> = RefCell::new(ClassCache::default());
}

fn load_owned<'c, I: Identity>(
    conn: &'c mut AsyncPgConnection,
    query: &'c OwnedQuery<I>,
) -> BoxFuture<'c, QueryResult<PgStream>> {
    AsyncConnectionCore::load(conn, query)
}

fn execute_owned<'c, I: Identity>(
    conn: &'c mut AsyncPgConnection,
    query: &'c OwnedQuery<I>,
) -> BoxFuture<'c, QueryResult<usize>> {
    AsyncConnectionCore::execute_returning_count(conn, query)
}

impl SimpleAsyncConnection for RoutedConnection {
    /// Runs raw SQL on the primary (on the transaction's server inside a transaction). Since it
    /// may write, later reads on this connection go to the primary.
    async fn batch_execute(&mut self, query: &str) -> QueryResult<()> {
        let target = match self.pinned {
            Some(target) => {
                log_decision(target, &Reason::Transaction);
                target
            }
            None => {
                self.mark_written();
                log_decision(
                    Target::Primary,
                    &Reason::Write(&WriteReason::Statement("batch_execute".into())),
                );
                Target::Primary
            }
        };
        let conn = self.checkout(target).await.map_err(Error::into_diesel)?;
        conn.batch_execute(query).await
    }
}

impl AsyncConnectionCore for RoutedConnection {
    type ExecuteFuture<'conn, 'query> = BoxFuture<'conn, QueryResult<usize>>;
    type LoadFuture<'conn, 'query> = BoxFuture<'conn, QueryResult<Self::Stream<'conn, 'query>>>;
    type Stream<'conn, 'query> = PgStream;
    type Row<'conn, 'query> = PgRow;
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

    /// Opens a routed connection with `database_url` as its primary and no replica.
    async fn establish(database_url: &str) -> diesel::ConnectionResult<Self> {
        let pool = RoutedPool::builder(database_url)
            .max_size(1)
            .build()
            .map_err(|e| diesel::ConnectionError::BadConnection(e.to_string()))?;
        let mut conn = RoutedConnection::new(pool);
        conn.checkout(Target::Primary)
            .await
            .map_err(|e| diesel::ConnectionError::BadConnection(e.to_string()))?;
        Ok(conn)
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
        self.pool
            .inner
            .test_transaction
            .store(true, Ordering::Relaxed);
        <RoutedTransactionManager as TransactionManager<Self>>::begin_transaction(self).await?;
        self.status_mut().set_test_transaction_flag();
        Ok(())
    }

    fn transaction_state(&mut self) -> &mut TransactionManagerStatus {
        &mut self.idle_status
    }

    fn instrumentation(&mut self) -> &mut dyn Instrumentation {
        &mut *self.instrumentation
    }

    fn set_instrumentation(&mut self, instrumentation: impl Instrumentation) {
        self.instrumentation = instrumentation.into();
        self.instrumented = true;
    }

    fn set_prepared_statement_cache_size(&mut self, size: CacheSize) {
        self.cache_size = Some(size);
        if let Some(conn) = self.primary.as_mut() {
            conn.set_prepared_statement_cache_size(size);
        }
        if let Some(held) = self.replica.as_mut() {
            held.conn.set_prepared_statement_cache_size(size);
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

    /// Collects formatted log lines.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
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
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
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
        });
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        let routes: Vec<&str> = text.lines().filter(|l| l.contains(" route ")).collect();
        let expect = [
            "server=replica reason=scope: replica allowed",
            "server=primary reason=fallback: no replica could serve the read",
            "server=primary reason=scope: replica not allowed",
            "server=primary reason=write: write statement DELETE",
            "server=primary reason=write: write statement batch_execute",
            "server=primary reason=sticky: this connection wrote before",
        ];
        assert_eq!(routes.len(), expect.len(), "{text}");
        for (line, expected) in routes.iter().zip(expect) {
            assert!(line.contains("DEBUG"), "{line}");
            assert!(line.contains(expected), "expected {expected:?} in {line}");
        }
        assert!(!text.contains("pw@"), "no password in logs: {text}");
    }
}
