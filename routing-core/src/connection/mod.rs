//! [`RoutedConnection`]: a diesel-async connection that sends each statement where the routing
//! rules say, checking server connections out of the pool's servers as it needs them.

mod classified;
mod diesel_impls;
mod dispatch;
mod read;
mod transaction;

use std::fmt;
use std::sync::Arc;

use deadpool::managed::Object;
use diesel::QueryResult;
use diesel::connection::{CacheSize, DynInstrumentation, TransactionManagerStatus};
use diesel::result::Error as DieselError;
use diesel_async::{AsyncConnection, AsyncConnectionCore, AsyncPgConnection};
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;

use crate::causal::{CausalToken, ReadYourWrites, now_ms};
use crate::context::{ReadNeeds, record_write};
use crate::error::{Error, Role};
use crate::owned::OwnedQuery;
use crate::route::{self, Route, State, Statement, Target};
use crate::servers::{Lease, PooledConn, RoutedPool, Shared, catalog};
pub use transaction::{RoutedTransactionManager, TransactionBuilder};

/// A row of a [`RoutedConnection`]'s results: diesel-async's PostgreSQL row.
pub(crate) type PgRow = <AsyncPgConnection as AsyncConnectionCore>::Row<'static, 'static>;
type PgStream = BoxStream<'static, QueryResult<PgRow>>;

/// Waits for the first item of a result, so that a read that fails before its first row (a
/// replica that refuses it, a connection that breaks) can still be retried elsewhere.
type FirstRow<R> = fn(R) -> BoxFuture<'static, QueryResult<R>>;

/// Runs an owned statement on a server connection.
type RunFn<I, R> =
    for<'c> fn(&'c mut AsyncPgConnection, &'c OwnedQuery<I>) -> BoxFuture<'c, QueryResult<R>>;

/// A connection to one replica, counted in its `in_flight` while held.
struct HeldReplica {
    index: usize,
    conn: PooledConn,
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
    primary: Option<PooledConn>,
    replica: Option<HeldReplica>,
    /// The server of the open transaction.
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
        let route = route::decide(
            &self.state(),
            Statement::Forced,
            &ReadNeeds::default(),
            self.shared().config(),
            now_ms,
        );
        self.mark_written();
        log_route(route, None);
        self.count(route);
        self.checkout_primary().await
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
        if let ReadYourWrites::TimeWindow(_) = self.shared().config().read_your_writes() {
            return Ok(Some(CausalToken::new(0)));
        }
        let conn = self.checkout_primary().await?;
        catalog::wal_insert_position(conn)
            .await
            .map(|lsn| Some(CausalToken::new(lsn)))
            .map_err(|source| Error::Query {
                role: Role::Primary,
                source,
            })
    }

    /// Whether this connection has sent a write (or opened a read-write transaction), which
    /// pins its later reads to the primary.
    pub fn has_written(&self) -> bool {
        self.wrote
    }

    fn shared(&self) -> &Arc<Shared> {
        self.pool.shared()
    }

    /// What the rules need to know of this connection and its pool.
    fn state(&self) -> State {
        let shared = self.shared();
        State {
            pinned: self.pinned,
            wrote: self.wrote,
            test_transaction: shared.in_test_transaction(),
            replicas: shared.replicas().len(),
        }
    }

    /// Notes a write: later reads of this connection, and of the request, go to the primary.
    fn mark_written(&mut self) {
        self.wrote = true;
        record_write(&self.pool);
    }

    fn holds(&self, target: Target) -> bool {
        match target {
            Target::Primary => self.primary.is_some(),
            Target::Replica => self.replica.is_some(),
        }
    }

    /// The connection held for `target`.
    fn held(&mut self, target: Target) -> Option<&mut AsyncPgConnection> {
        held_in(&mut self.primary, &mut self.replica, target)
    }

    /// The primary's connection, checked out if not held.
    async fn checkout_primary(&mut self) -> Result<&mut AsyncPgConnection, Error> {
        let conn = match self.primary.take() {
            Some(conn) => conn,
            None => {
                let conn = self.shared().primary().checkout().await?;
                self.prepare(conn)
            }
        };
        Ok(&mut **self.primary.insert(conn))
    }

    fn prepare(&self, mut conn: PooledConn) -> PooledConn {
        if let Some(size) = self.cache_size {
            conn.set_prepared_statement_cache_size(size);
        }
        conn
    }

    /// Holds a connection to replica `index`, releasing any other replica held. A checkout
    /// failure bans the replica, unless only its pool was busy.
    async fn hold_replica(&mut self, index: usize) -> Result<(), Error> {
        if self
            .replica
            .as_ref()
            .is_some_and(|held| held.index == index)
        {
            return Ok(());
        }
        self.replica = None;
        let shared = Arc::clone(self.shared());
        let server = &shared.replicas()[index];
        match server.checkout().await {
            Ok(conn) => {
                self.replica = Some(HeldReplica {
                    index,
                    conn: self.prepare(conn),
                    _lease: Lease::new(server.health()),
                });
                Ok(())
            }
            // A busy pool is no sign of a sick server: try another replica, but do not ban.
            Err(e @ Error::PoolExhausted { .. }) => Err(e),
            Err(e) => {
                server.health().ban(e.to_string());
                Err(e)
            }
        }
    }

    /// Closes the held replica connection instead of returning it to its pool.
    fn discard_replica(&mut self) {
        if let Some(held) = self.replica.take() {
            drop(Object::take(held.conn));
        }
    }

    /// Counts a statement sent to the server held for `route.target`, for its reason.
    fn count(&self, route: Route) {
        let shared = self.shared();
        let server = match route.target {
            Target::Primary => Some(shared.primary()),
            Target::Replica => self
                .replica
                .as_ref()
                .map(|held| &shared.replicas()[held.index]),
        };
        if let Some(server) = server {
            server.health().count_routed(route.reason);
        }
    }
}

/// The connection held for `target`, from the connection's fields (so that the others stay
/// free to borrow).
fn held_in<'c>(
    primary: &'c mut Option<PooledConn>,
    replica: &'c mut Option<HeldReplica>,
    target: Target,
) -> Option<&'c mut AsyncPgConnection> {
    match target {
        Target::Primary => primary.as_deref_mut(),
        Target::Replica => replica.as_mut().map(|held| &mut *held.conn),
    }
}

/// The error of a statement whose server connection went missing, which the router's own
/// bookkeeping should never allow.
fn lost_connection() -> DieselError {
    DieselError::DatabaseError(
        diesel::result::DatabaseErrorKind::UnableToSendCommand,
        Box::new("routed connection lost its server connection".to_owned()),
    )
}

/// Logs a decision as a debug event naming the server and the reason (and what made it, for a
/// write or a read no replica served).
fn log_route(route: Route, detail: Option<&dyn fmt::Display>) {
    match detail {
        Some(detail) => tracing::debug!(
            target: "routing_core",
            server = %route.target,
            reason = %format_args!("{}: {detail}", route.reason),
            "route"
        ),
        None => tracing::debug!(
            target: "routing_core",
            server = %route.target,
            reason = %route.reason,
            "route"
        ),
    }
}
