//! [`RoutedConnection`]: a synchronous diesel connection that sends each statement where the
//! routing rules say, checking sessions out of the pool's r2d2 pools as it needs them.

use std::any::TypeId;
use std::fmt;
use std::sync::Arc;

use diesel::connection::{
    AnsiTransactionManager, CacheSize, Connection, DynInstrumentation, InstrumentationEvent,
    SimpleConnection, StrQueryHelper, TransactionManager, TransactionManagerStatus,
};
use diesel::pg::Pg;
use diesel::query_builder::QueryFragment;
use diesel::result::Error as DieselError;
use diesel::{PgConnection, QueryResult};

use super::RoutedPool;
use super::server::{Pooled, SyncConn};
use crate::causal::{CausalToken, ReadYourWrites, now_ms};
use crate::classified;
use crate::context::{ReadNeeds, read_needs, record_write};
use crate::error::{Error, Role};
use crate::failure::Failure;
use crate::reads::{self, TokenCheck};
use crate::route::{self, Route, State, Statement, Target};
use crate::servers::{Lease, Shared};

/// A synchronous connection that sends each statement to the primary or a replica.
///
/// It implements `diesel::Connection` with `Backend = Pg` and `LoadConnection`, so ordinary
/// synchronous diesel code runs on it unchanged, with the rules of the async
/// [`RoutedConnection`](crate::RoutedConnection): transactions on one server (the primary, or a
/// replica for a read-only one begun in a replica scope, see
/// [`build_transaction`](RoutedConnection::build_transaction)); writes, `batch_execute` and
/// anything not known to be a read on the primary; after a write, reads on the primary too; a
/// read on a replica when the thread's [routing scope](crate::with_read_replica_sync) allows it,
/// moving to the next replica, then the primary, when its replica fails.
///
/// Sessions are checked out lazily and go back to their pools when the connection is dropped;
/// one whose state a statement changed (`SET`, a temporary table, ...) is closed instead.
/// A statement runs until it finishes: unlike the async connection's, a read waiting on a
/// replica that stops answering is not moved when the probe bans it, nor bounded by
/// `first_row_timeout` (give the database role a `statement_timeout` for that).
pub struct RoutedConnection {
    pool: RoutedPool,
    primary: Option<Pooled>,
    /// The node the primary session goes to, in a pool that discovers its primary.
    primary_node: Option<usize>,
    replica: Option<HeldReplica>,
    /// The server of the open transaction.
    pub(super) pinned: Option<Target>,
    /// The open transaction lost its session (a discovering pool's primary moved): its
    /// statements fail until it ends.
    pub(super) transaction_lost: bool,
    wrote: bool,
    idle_status: TransactionManagerStatus,
    instrumentation: DynInstrumentation,
    instrumented: bool,
    cache_size: Option<CacheSize>,
}

/// A session to one replica, counted in its `in_flight` while held.
struct HeldReplica {
    index: usize,
    conn: Pooled,
    _lease: Lease,
}

impl fmt::Debug for RoutedConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("sync::RoutedConnection")
            .field("holds_primary", &self.primary.is_some())
            .field("holds_replica", &self.replica_index())
            .field("transaction_on", &self.pinned)
            .field("wrote", &self.wrote)
            .finish_non_exhaustive()
    }
}

impl RoutedConnection {
    pub(super) fn new(pool: RoutedPool) -> Self {
        RoutedConnection {
            pool,
            primary: None,
            primary_node: None,
            replica: None,
            pinned: None,
            transaction_lost: false,
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

    /// The primary's session, checked out if needed: the escape hatch for one call that must
    /// see the primary whatever the scope says. Later reads on this connection go to the
    /// primary too, as after any write.
    ///
    /// # Errors
    ///
    /// The primary cannot be checked out.
    pub fn primary(&mut self) -> Result<&mut PgConnection, Error> {
        let route = route::decide(
            &self.state(),
            Statement::Forced,
            &ReadNeeds::default(),
            self.shared().config(),
            now_ms,
        );
        self.mark_written();
        route::log(route, None);
        self.count(route);
        self.checkout_primary()
    }

    /// A token for this connection's writes, to hand to a later request (see [`CausalToken`]):
    /// `None` when it has not written. Asks the primary for its WAL position, so call it after
    /// the writes have committed.
    ///
    /// # Errors
    ///
    /// The primary cannot be checked out or asked.
    pub fn causal_token(&mut self) -> Result<Option<CausalToken>, Error> {
        if !self.wrote {
            return Ok(None);
        }
        if let ReadYourWrites::TimeWindow(_) = self.shared().config().read_your_writes() {
            return Ok(Some(CausalToken::new(0)));
        }
        let shared = Arc::clone(self.shared());
        let conn = self.checkout_primary()?;
        let lsn =
            crate::servers::catalog::blocking::wal_insert_position(conn).map_err(|source| {
                Error::Query {
                    role: Role::Primary,
                    source,
                }
            })?;
        shared.tokens().note_primary(lsn);
        Ok(Some(CausalToken::new(lsn)))
    }

    /// Whether this connection has sent a write (or opened a read-write transaction), which
    /// pins its later reads to the primary.
    pub fn has_written(&self) -> bool {
        self.wrote
    }

    pub(super) fn shared(&self) -> &Arc<Shared> {
        self.pool.shared()
    }

    /// What the rules need to know of this connection and its pool.
    pub(super) fn state(&self) -> State {
        let shared = self.shared();
        State {
            pinned: self.pinned,
            wrote: self.wrote,
            test_transaction: shared.in_test_transaction(),
            replicas: shared.replicas().len(),
        }
    }

    /// Notes a write: later reads of this connection, and of the request, go to the primary.
    pub(super) fn mark_written(&mut self) {
        self.wrote = true;
        record_write(&self.pool.routed);
    }

    /// The index of the replica held.
    pub(super) fn replica_index(&self) -> Option<usize> {
        self.replica.as_ref().map(|held| held.index)
    }

    /// Whether a session is held for `target`.
    pub(super) fn holds(&self, target: Target) -> bool {
        match target {
            Target::Primary => self.primary.is_some(),
            Target::Replica => self.replica.is_some(),
        }
    }

    /// The session held for `target`.
    pub(super) fn session(&mut self, target: Target) -> Option<&mut SyncConn> {
        match target {
            Target::Primary => self.primary.as_deref_mut(),
            Target::Replica => self.replica.as_mut().map(|held| &mut *held.conn),
        }
    }

    /// The diesel connection held for `target`.
    pub(super) fn conn(&mut self, target: Target) -> Option<&mut PgConnection> {
        self.session(target).map(SyncConn::pg)
    }

    /// The status of the transaction's session, or an idle status outside one.
    pub(super) fn status_mut(&mut self) -> &mut TransactionManagerStatus {
        // Field by field: the idle status is borrowed apart from the sessions.
        let inner = match self.pinned {
            Some(Target::Primary) => self.primary.as_deref_mut().map(SyncConn::pg),
            Some(Target::Replica) => self.replica.as_mut().map(|held| held.conn.pg()),
            None => None,
        };
        match inner {
            Some(inner) => {
                <AnsiTransactionManager as TransactionManager<PgConnection>>::transaction_manager_status_mut(inner)
            }
            None => &mut self.idle_status,
        }
    }

    /// The primary's session, checked out if not held; in a pool that discovers its primary,
    /// waiting for one during a failover.
    pub(super) fn checkout_primary(&mut self) -> Result<&mut PgConnection, Error> {
        if self.primary.is_some() && !self.primary_moved() {
            return self.conn(Target::Primary).ok_or_else(|| Error::Query {
                role: Role::Primary,
                source: lost_connection(),
            });
        }
        let shared = Arc::clone(self.shared());
        let began = std::time::Instant::now();
        let deadline = began + shared.config().primary_wait();
        let mut node = shared.primary_other_than_blocking(None, began, deadline)?;
        let conn = loop {
            let server = self
                .pool
                .servers
                .primary(node)
                .ok_or_else(super::no_primary)?;
            match server.checkout() {
                Ok(conn) => break conn,
                // A discovering pool's primary that cannot be reached may be failing over: wait
                // for the probe to find the next one, within the same bound.
                Err(error @ Error::Checkout { .. }) if node.is_some() => {
                    tracing::debug!(target: "routing_core", ?node, %error, "the primary cannot be reached");
                    shared.topology().look_again();
                    node = shared.primary_other_than_blocking(node, began, deadline)?;
                }
                Err(error) => return Err(error),
            }
        };
        self.primary_node = node;
        let conn = self.primary.insert(self.prepare_session(conn));
        Ok(conn.pg())
    }

    /// Whether the held primary session goes to a node that is no longer the primary (a
    /// discovering pool's failover): it is released, and, inside a transaction on it, the
    /// transaction is lost.
    pub(super) fn primary_moved(&mut self) -> bool {
        let shared = self.pool.shared();
        if self.primary.is_none()
            || !shared.discovers()
            || shared.primary_node() == self.primary_node
        {
            return false;
        }
        self.primary = None;
        if self.pinned == Some(Target::Primary) {
            self.transaction_lost = true;
        }
        true
    }

    fn prepare_session(&self, mut conn: Pooled) -> Pooled {
        if let Some(size) = self.cache_size {
            conn.pg().set_prepared_statement_cache_size(size);
        }
        conn
    }

    /// Holds a session to replica `index`, releasing any other replica held. A checkout
    /// failure bans the replica, unless only its pool was busy.
    pub(super) fn hold_replica(&mut self, index: usize) -> Result<(), Error> {
        if self.replica_index() == Some(index) {
            return Ok(());
        }
        self.replica = None;
        let shared = Arc::clone(self.shared());
        let server = &shared.replicas()[index];
        let pool = self
            .pool
            .servers
            .replica(index)
            .ok_or_else(super::no_primary)?;
        match pool.checkout() {
            Ok(conn) => {
                self.replica = Some(HeldReplica {
                    index,
                    conn: self.prepare_session(conn),
                    _lease: Lease::new(server.health()),
                });
                Ok(())
            }
            Err(error) => {
                server.note_checkout_failure(&error);
                Err(error)
            }
        }
    }

    /// Closes the held replica session instead of returning it to its pool.
    pub(super) fn discard_replica(&mut self) {
        if let Some(mut held) = self.replica.take() {
            held.conn.discard();
        }
    }

    /// Counts a statement sent to the server held for `route.target`, for its reason.
    pub(super) fn count(&self, route: Route) {
        let shared = self.shared();
        let server = match route.target {
            Target::Primary => shared.primary(),
            Target::Replica => self.replica_index().map(|index| &shared.replicas()[index]),
        };
        if let Some(server) = server {
            server.health().count_routed(route.reason);
        }
    }

    /// Runs a statement (`query`, with static id `query_id`) where the rules say: `exec` runs it
    /// on a server's session, again on the next one when a replica fails it. Inside diesel's
    /// query events when the connection is instrumented (`debug_sql`).
    pub(super) fn run_statement<R>(
        &mut self,
        query: &dyn QueryFragment<Pg>,
        query_id: Option<TypeId>,
        debug_sql: Option<String>,
        exec: impl FnMut(&mut PgConnection) -> QueryResult<R>,
    ) -> QueryResult<R> {
        let Some(sql) = debug_sql else {
            return self.route_and_run(query, query_id, exec);
        };
        let event = StrQueryHelper::new(&sql);
        self.instrumentation
            .on_connection_event(InstrumentationEvent::start_query(&event));
        let result = self.route_and_run(query, query_id, exec);
        self.instrumentation
            .on_connection_event(InstrumentationEvent::finish_query(
                &event,
                result.as_ref().err(),
            ));
        result
    }

    fn route_and_run<R>(
        &mut self,
        query: &dyn QueryFragment<Pg>,
        query_id: Option<TypeId>,
        exec: impl FnMut(&mut PgConnection) -> QueryResult<R>,
    ) -> QueryResult<R> {
        self.primary_moved();
        if self.pinned.is_some() && self.transaction_lost {
            return Err(Error::TransactionLost.into_diesel());
        }
        let prepared = classified::prepare(self.shared(), &self.state(), query, query_id)?;
        if prepared.writes {
            self.mark_written();
        }
        let (route, needs) = match prepared.fixed {
            Some(route) => (route, ReadNeeds::default()),
            None => self.route_read(),
        };
        match route.target {
            Target::Replica if self.pinned.is_none() => {
                self.read_on_replica(&needs, query, query_id, exec)
            }
            _ => self.run_on(route, prepared.changes_session, exec),
        }
    }

    /// The route of a read, from the thread's routing context; a causal token that claims what
    /// the primary has not reached is dropped first.
    pub(super) fn route_read(&mut self) -> (Route, ReadNeeds) {
        let mut needs = read_needs();
        self.vet_token(&mut needs);
        let route = route::decide(
            &self.state(),
            Statement::Read,
            &needs,
            self.shared().config(),
            now_ms,
        );
        route::log(route, None);
        (route, needs)
    }

    /// Drops the causal token of `needs` when it is forged: a time in the future, or a WAL
    /// position beyond the primary's (asked once when beyond the last position known).
    pub(super) fn vet_token(&mut self, needs: &mut ReadNeeds) {
        let Some(token) = needs.causal_token else {
            return;
        };
        let shared = Arc::clone(self.shared());
        let keep = match reads::check_token(&shared, &token) {
            TokenCheck::Keep => true,
            TokenCheck::Drop => false,
            TokenCheck::AskPrimary => {
                reads::keep_token(&shared, &token, self.pool.primary_position())
            }
        };
        if !keep {
            needs.causal_token = None;
        }
    }

    /// Runs `exec` on `route`'s server: a session to the primary is checked out if needed; on
    /// the primary, errors that mean the primary is gone are told apart.
    pub(super) fn run_on<R>(
        &mut self,
        route: Route,
        changes_session: bool,
        exec: impl FnOnce(&mut PgConnection) -> QueryResult<R>,
    ) -> QueryResult<R> {
        if route.target == Target::Primary {
            self.checkout_primary().map_err(Error::into_diesel)?;
        }
        self.count(route);
        let node = self.primary_node;
        let session = self.session(route.target).ok_or_else(lost_connection)?;
        if changes_session {
            session.mark_session_changed();
        }
        let result = exec(session.pg());
        if let Err(error) = &result {
            // A session the server or the network closed is not reused.
            if Failure::of(error, false) == Failure::Unreachable {
                session.discard();
            }
        }
        match route.target {
            Target::Primary => result.map_err(|e| self.shared().primary_error(node, e)),
            Target::Replica => result,
        }
    }

    /// Runs `batch_execute` where the rules send it: the primary, or the transaction's server.
    pub(super) fn batch(&mut self, query: &str) -> QueryResult<()> {
        self.primary_moved();
        if self.pinned.is_some() && self.transaction_lost {
            return Err(Error::TransactionLost.into_diesel());
        }
        let route = route::decide(
            &self.state(),
            Statement::Write,
            &ReadNeeds::default(),
            self.shared().config(),
            now_ms,
        );
        if self.pinned.is_none() {
            self.mark_written();
        }
        route::log(route, Some(&"batch_execute"));
        let changes_session = self.shared().config().classifier().changes_session(query);
        self.run_on(route, changes_session, |conn| conn.batch_execute(query))
    }

    /// Keeps `size` for every session this connection checks out, and sets it on those held.
    pub(super) fn set_cache_size(&mut self, size: CacheSize) {
        self.cache_size = Some(size);
        for target in [Target::Primary, Target::Replica] {
            if let Some(conn) = self.conn(target) {
                conn.set_prepared_statement_cache_size(size);
            }
        }
    }

    /// Whether the connection emits diesel's query events.
    pub(super) fn instrumented(&self) -> bool {
        self.instrumented
    }

    /// The connection's instrumentation.
    pub(super) fn instrumentation_mut(&mut self) -> &mut DynInstrumentation {
        &mut self.instrumentation
    }

    /// Replaces the connection's instrumentation.
    pub(super) fn set_instrumentation_to(&mut self, instrumentation: DynInstrumentation) {
        self.instrumentation = instrumentation;
        self.instrumented = true;
    }
}

/// The error of a statement whose session went missing, which the router's own bookkeeping
/// should never allow.
pub(super) fn lost_connection() -> DieselError {
    DieselError::DatabaseError(
        diesel::result::DatabaseErrorKind::UnableToSendCommand,
        Box::new("routed connection lost its server session".to_owned()),
    )
}
