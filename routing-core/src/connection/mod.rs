//! [`RoutedConnection`]: a diesel-async connection that sends each statement where the routing
//! rules say, checking server connections out of the pool's servers as it needs them.

mod cancel;
mod diesel_impls;
mod dispatch;
mod held;
mod instrument;
mod pg;
mod read;
mod transaction;
mod transaction_builder;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use diesel::QueryResult;
use diesel::connection::{CacheSize, DynInstrumentation, TransactionManagerStatus};
use diesel::result::Error as DieselError;
use diesel_async::{AsyncConnection, AsyncPgConnection};
use futures_util::future::BoxFuture;

use crate::causal::{CausalToken, ReadYourWrites, now_ms};
use crate::context::{ReadNeeds, record_write};
use crate::error::{Error, Role};
use crate::owned::OwnedQuery;
use crate::route::{self, Route, State, Statement, Target, log as log_route};
use crate::servers::{Lease, Outcome, PooledConn, RoutedPool, ServerSession, Shared, catalog};
use crate::trace::Trace;
pub use cancel::RoutedCancelToken;
use held::Held;
pub use transaction::RoutedTransactionManager;
pub use transaction_builder::TransactionBuilder;
#[cfg(feature = "sync")]
pub(crate) use transaction_builder::TransactionOptions;

/// Waits for the first item of a result, so that a read that fails before its first row (a
/// replica that refuses it, a connection that breaks) can still be retried elsewhere; the rows
/// after it are checked for a late refusal.
type FirstRow<R> = fn(R, read::AfterRows) -> BoxFuture<'static, QueryResult<R>>;

/// Runs an owned statement on a server connection.
type RunFn<I, R> =
    for<'c> fn(&'c mut ServerSession, &'c OwnedQuery<I>) -> <R as Outcome>::Future<'c>;

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
/// A statement whose future is dropped before it finishes (a request timeout, a client gone) is
/// cancelled on its server, and its server connection is closed rather than reused. So is the
/// statement of a row stream dropped before its end, unless the rest of its result had already
/// arrived (as after `get_result` or `first`, which read one row and drop the stream). A
/// transaction whose future is dropped midway is rolled back at once: its server process is
/// ended (`pg_terminate_backend`, in the background, from another connection of the same
/// server's pool), so its locks do not wait for this connection's next use; its server
/// connection is closed, and this connection's later statements run outside it. Behind a
/// transaction pooler, whose sessions are not the server's, the transaction is rolled back when
/// this connection is next used or dropped instead (its pooler connection closed).
///
/// A server connection whose session state a statement changed (`SET`, a session advisory
/// lock, `LISTEN`, a temporary table, `PREPARE`, ...) is closed when this connection releases
/// it, so that nothing carries over to the next checkout.
pub struct RoutedConnection {
    pool: RoutedPool,
    held: Held,
    /// The server of the open transaction.
    pinned: Option<Target>,
    /// The open transaction lost its server connection: its statements fail until it ends.
    transaction_lost: bool,
    /// The depth of a transaction whose future was dropped before it finished, set by its
    /// guard; [`NOT_ABANDONED`] otherwise. Made on the first transaction.
    abandoned: Option<Arc<AtomicU32>>,
    wrote: bool,
    idle_status: TransactionManagerStatus,
    /// diesel's instrumentation: the user's, else the default one, else none.
    instrumentation: DynInstrumentation,
    instrumented: bool,
    /// The session the instrumentation is lent to (see `instrument.rs`).
    lent: Option<Target>,
    cache_size: Option<CacheSize>,
    /// The telemetry of the statement running.
    trace: Trace,
}

impl fmt::Debug for RoutedConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RoutedConnection")
            .field("holds_primary", &self.held.holds(Target::Primary))
            .field("holds_replica", &self.held.replica_index())
            .field("transaction_on", &self.pinned)
            .field("wrote", &self.wrote)
            .finish_non_exhaustive()
    }
}

impl RoutedConnection {
    pub(crate) fn new(pool: RoutedPool) -> Self {
        let (instrumentation, instrumented) = instrument::default_instrumentation();
        RoutedConnection {
            pool,
            held: Held::default(),
            pinned: None,
            transaction_lost: false,
            abandoned: None,
            wrote: false,
            idle_status: TransactionManagerStatus::default(),
            instrumentation,
            instrumented,
            lent: None,
            cache_size: None,
            trace: Trace::default(),
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
    /// The primary cannot be checked out; [`Error::NotWithTransactionPooler`] with
    /// [`transaction_pooler(true)`](crate::RoutedPoolBuilder::transaction_pooler).
    pub async fn primary(&mut self) -> Result<&mut AsyncPgConnection, Error> {
        self.settle();
        if self.shared().config().transaction_pooler() {
            return Err(Error::NotWithTransactionPooler {
                what: "RoutedConnection::primary",
                why: "a diesel-async connection prepares named statements, which a transaction \
                      pooler loses",
            });
        }
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
        self.checkout_primary().await?;
        // The caller's statements report to this connection's instrumentation, until the next
        // call on this connection takes it back.
        self.lend_instrumentation(Target::Primary, false);
        let session = self
            .held
            .conn(Target::Primary)
            .ok_or_else(|| Error::Query {
                role: Role::Primary,
                source: lost_connection(),
            })?;
        session.prepared().ok_or(Error::NotWithTransactionPooler {
            what: "RoutedConnection::primary",
            why: "the pool's sessions run unnamed statements",
        })
    }

    /// A token for this connection's writes, to hand to a later request (see [`CausalToken`]):
    /// `None` when it has not written. Asks the primary for its WAL position, so call it after
    /// the writes have committed.
    ///
    /// # Errors
    ///
    /// The primary cannot be checked out or asked.
    pub async fn causal_token(&mut self) -> Result<Option<CausalToken>, Error> {
        self.settle();
        if !self.wrote {
            return Ok(None);
        }
        if let ReadYourWrites::TimeWindow(_) = self.shared().config().read_your_writes() {
            return Ok(Some(CausalToken::new(0)));
        }
        self.checkout_primary().await?;
        let asked = self.held.watched(
            Target::Primary,
            self.pool.shared(),
            false,
            catalog::wal_insert_position,
        );
        let lsn = match asked {
            Some(asked) => asked.await,
            None => Err(lost_connection()),
        };
        lsn.map(|lsn| Some(CausalToken::new(lsn)))
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

    /// The connection held for `target`.
    fn held(&mut self, target: Target) -> Option<&mut ServerSession> {
        self.held.conn(target)
    }

    /// The primary's connection, checked out if not held; in a pool that discovers its
    /// primary, waiting for one during a failover.
    async fn checkout_primary(&mut self) -> Result<&mut ServerSession, Error> {
        if self.held.holds(Target::Primary) && !self.primary_moved() {
            return self.held.conn(Target::Primary).ok_or_else(|| Error::Query {
                role: Role::Primary,
                source: lost_connection(),
            });
        }
        let shared = Arc::clone(self.shared());
        let began = std::time::Instant::now();
        let deadline = began + shared.config().primary_wait();
        let (mut server, mut node) = shared.primary_other_than(None, began, deadline).await?;
        let conn = loop {
            match server.checkout().await {
                Ok(conn) => break conn,
                // A discovering pool's primary that cannot be reached may be failing over: wait
                // for the probe to find the next one, within the same bound.
                Err(error @ Error::Checkout { .. }) if node.is_some() => {
                    tracing::debug!(target: "routing_core", ?node, %error, "the primary cannot be reached");
                    shared.topology().look_again();
                    (server, node) = shared.primary_other_than(node, began, deadline).await?;
                }
                Err(error) => return Err(error),
            }
        };
        let conn = self.prepare_session(conn);
        Ok(self.held.hold_primary(conn, node))
    }

    /// Whether the held primary connection goes to a node that is no longer the primary (a
    /// discovering pool's failover): it is released, and, inside a transaction on it, the
    /// transaction is lost.
    fn primary_moved(&mut self) -> bool {
        let shared = self.pool.shared();
        if !shared.discovers() || shared.primary_node() == self.held.primary_node() {
            return false;
        }
        self.held.release(Target::Primary);
        if self.pinned == Some(Target::Primary) {
            self.transaction_lost = true;
        }
        true
    }

    /// Clears what a dropped statement future, row stream or transaction future left behind,
    /// before anything else runs on this connection: a primary connection to a node that is no
    /// longer the primary is released; a server connection that may still run a statement (its
    /// cancel request already sent) is closed; an abandoned transaction's server connection
    /// (its process already being ended, where the router knows it) is closed, which rolls it
    /// back, and later statements run outside it; a transaction that lost its server
    /// connection while it goes on fails its statements until it ends.
    fn settle(&mut self) {
        self.reclaim_instrumentation();
        if self.held.holds(Target::Primary) {
            self.primary_moved();
        }
        // A primary session that broke (the server ended it, or it was lost with its server)
        // is let go, outside a transaction: the next statement checks out an open one.
        if self.pinned.is_none()
            && self
                .held(Target::Primary)
                .is_some_and(|conn| conn.is_broken())
        {
            self.held.discard(Target::Primary);
        }
        while let Some(target) = self.held.take_busy() {
            self.held.discard(target);
            if self.pinned == Some(target) {
                self.transaction_lost = true;
            }
        }
        let abandoned = self.abandoned.as_ref().map_or(NOT_ABANDONED, |cell| {
            cell.swap(NOT_ABANDONED, Ordering::AcqRel)
        });
        if abandoned == NOT_ABANDONED {
            return;
        }
        let Some(target) = self.pinned else {
            return;
        };
        self.held.discard(target);
        if abandoned <= 1 {
            // The whole transaction was dropped: nothing of it remains.
            tracing::debug!(target: "routing_core", server = %target, "transaction dropped midway: rolled back");
            self.pinned = None;
            self.transaction_lost = false;
        } else {
            // A savepoint was dropped while its transaction goes on: the rest must not commit.
            tracing::debug!(target: "routing_core", server = %target, "savepoint dropped midway: its transaction is rolled back");
            self.transaction_lost = true;
        }
    }

    fn prepare_session(&self, mut conn: PooledConn) -> PooledConn {
        if let Some(size) = self.cache_size {
            conn.pg().set_prepared_statement_cache_size(size);
        }
        conn
    }

    /// Holds a connection to replica `index`, releasing any other replica held. A checkout
    /// failure bans the replica, unless only its pool was busy.
    async fn hold_replica(&mut self, index: usize) -> Result<(), Error> {
        if self.held.replica_index() == Some(index) {
            return Ok(());
        }
        self.held.release(Target::Replica);
        let shared = Arc::clone(self.shared());
        let server = &shared.replicas()[index];
        match server.checkout().await {
            Ok(conn) => {
                let conn = self.prepare_session(conn);
                self.held
                    .hold_replica(index, conn, Lease::new(server.health()));
                Ok(())
            }
            Err(e) => {
                server.note_checkout_failure(&e);
                Err(e)
            }
        }
    }

    /// Notes that a statement sent to `target` may change its session's state: the server
    /// connection will be closed instead of going back to its pool.
    fn mark_session_changed(&mut self, target: Target) {
        if let Some(session) = self.held.session(target) {
            session.mark_session_changed();
        }
    }

    /// Closes the held replica connection instead of returning it to its pool.
    fn discard_replica(&mut self) {
        self.held.discard(Target::Replica);
    }

    /// Counts a statement sent to the server held for `route.target`, for its reason.
    fn count(&self, route: Route) {
        let shared = self.shared();
        let server = match route.target {
            Target::Primary => shared.primary(),
            Target::Replica => self
                .held
                .replica_index()
                .map(|index| &shared.replicas()[index]),
        };
        if let Some(server) = server {
            server.health().count_routed(route.reason);
        }
    }
}

/// [`RoutedConnection::abandoned`] when no transaction was abandoned.
const NOT_ABANDONED: u32 = u32::MAX;

/// The error of a statement whose server connection went missing, which the router's own
/// bookkeeping should never allow.
fn lost_connection() -> DieselError {
    DieselError::DatabaseError(
        diesel::result::DatabaseErrorKind::UnableToSendCommand,
        Box::new("routed connection lost its server connection".to_owned()),
    )
}
