//! Sending one statement: routing it by the rules and running it where they say, inside its span
//! (see [`crate::trace`]).

use std::any::TypeId;
use std::sync::Arc;

use diesel::connection::{InstrumentationEvent, SimpleConnection, StrQueryHelper};
use diesel::pg::Pg;
use diesel::query_builder::QueryFragment;
use diesel::{PgConnection, QueryResult};

use super::{RoutedConnection, lost_connection};
use crate::causal::now_ms;
use crate::classified;
use crate::classify::operation_name;
use crate::context::{ReadNeeds, read_needs};
use crate::error::Error;
use crate::failure::Failure;
use crate::owned::Rendered;
use crate::reads::{self, TokenCheck};
use crate::reason::Reason;
use crate::route::{self, Route, Statement, Target};
use crate::sync::prerendered::reports_statements;

impl RoutedConnection {
    /// Runs a statement (`query`, with static id `query_id`) where the rules say: `exec` runs it
    /// on a server's session, again on the next one when a replica fails it, given the SQL of a
    /// query without a static id, rendered already to classify it (see `sync/prerendered.rs`).
    /// Inside diesel's query events when the connection is instrumented (`debug_sql`).
    pub(in crate::sync) fn run_statement<R>(
        &mut self,
        query: &dyn QueryFragment<Pg>,
        query_id: Option<TypeId>,
        debug_sql: Option<String>,
        exec: impl FnMut(&mut PgConnection, Option<&Rendered>) -> QueryResult<R>,
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
        mut exec: impl FnMut(&mut PgConnection, Option<&Rendered>) -> QueryResult<R>,
    ) -> QueryResult<R> {
        self.primary_moved();
        if self.pinned.is_some() && self.transaction_lost {
            return Err(Error::TransactionLost.into_diesel());
        }
        let prepared = classified::prepare(self.shared(), &self.state(), query, query_id)?;
        if prepared.writes {
            self.mark_written();
        }
        if self.shared().config().record_query_text() {
            let shared = Arc::clone(self.shared());
            let text = prepared
                .rendered
                .clone()
                .map_or_else(|| classified::rendered(&shared, query, query_id), Ok);
            let text = text.as_ref().ok().map(|rendered| &*rendered.sql);
            self.trace
                .start(self.pool.shared(), prepared.operation, text);
        } else {
            self.trace
                .start(self.pool.shared(), prepared.operation, None);
        }
        // A query without a static id was rendered to classify it: it runs as rendered, but on
        // a session that reports its statements (see `sync/prerendered.rs`).
        let rendered = prepared.rendered.as_ref().filter(|_| query_id.is_none());
        let exec = move |conn: &mut PgConnection| {
            let rendered = rendered.filter(|_| !reports_statements(conn));
            exec(conn, rendered)
        };
        let span = self.trace.span().clone();
        let result = span.in_scope(|| {
            let (route, needs) = match prepared.fixed {
                Some(route) => (route, ReadNeeds::default()),
                None => self.route_read(),
            };
            match route.target {
                Target::Replica if self.pinned.is_none() => {
                    self.read_on_replica(&needs, query, query_id, exec)
                }
                _ => self.run_on(route, prepared.session.any(), exec),
            }
        });
        self.trace.finish(self.pool.routed.shared(), &result);
        result
    }

    /// The route of a read, from the thread's routing context; a causal token that claims what
    /// the primary has not reached is dropped first.
    pub(in crate::sync) fn route_read(&mut self) -> (Route, ReadNeeds) {
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
    pub(in crate::sync) fn vet_token(&mut self, needs: &mut ReadNeeds) {
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
    pub(in crate::sync) fn run_on<R>(
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
        let index = match route.target {
            Target::Primary => node,
            Target::Replica => self.replica_index(),
        };
        self.trace
            .sent(self.pool.routed.shared(), route.target, index, route.reason);
        let session = self.session(route.target).ok_or_else(lost_connection)?;
        if changes_session {
            session.mark_session_changed();
        }
        let result = exec(session.pg());
        // A session the server or the network closed is not reused; outside a transaction, the
        // connection lets go of it at once, and its next statement checks out an open one.
        let closed = result
            .as_ref()
            .is_err_and(|error| Failure::of(error, false) == Failure::Unreachable);
        if closed {
            session.discard();
            if route.target == Target::Primary && self.pinned.is_none() {
                self.primary = None;
            }
        }
        match route.target {
            Target::Primary => result.map_err(|e| self.shared().primary_error(node, e)),
            Target::Replica => result,
        }
    }

    /// Runs `batch_execute` where the rules send it: the primary, or the transaction's server.
    pub(in crate::sync) fn batch(&mut self, query: &str) -> QueryResult<()> {
        self.primary_moved();
        if self.pinned.is_some() && self.transaction_lost {
            return Err(Error::TransactionLost.into_diesel());
        }
        let text = self.shared().config().record_query_text().then_some(query);
        self.trace
            .start(self.pool.shared(), operation_name(query), text);
        let span = self.trace.span().clone();
        let result = span.in_scope(|| self.run_batch(query));
        self.trace.finish(self.pool.routed.shared(), &result);
        result
    }

    /// [`batch`](Self::batch), without its telemetry.
    fn run_batch(&mut self, query: &str) -> QueryResult<()> {
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

    /// The read is sent to replica `index`: its span says so.
    pub(in crate::sync) fn trace_replica(&mut self, index: usize) {
        let shared = self.pool.routed.shared();
        self.trace.sent(
            shared,
            Target::Replica,
            Some(index),
            Reason::ScopeAllowsReplica,
        );
    }

    /// No replica served the read: the primary does, and its span says so.
    pub(in crate::sync) fn trace_fallback(&self) {
        self.trace.fell_back();
    }
}
