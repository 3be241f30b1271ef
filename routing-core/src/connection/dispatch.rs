//! Sending a statement: classifying it, routing it now or when its future first runs, and
//! running it on the chosen server (directly, or through its owned form).

use std::any::TypeId;
use std::fmt;
use std::sync::Arc;

use diesel::QueryResult;
use diesel::connection::{DynInstrumentation, InstrumentationEvent, StrQueryHelper};
use diesel::pg::Pg;
use diesel::query_builder::{QueryFragment, QueryId};
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tracing::Instrument;

use super::trace::Traced;
use super::{FirstRow, RoutedConnection, RunFn, classified, log_route, lost_connection};
use crate::causal::now_ms;
use crate::classify::Classification;
use crate::context::{ReadNeeds, read_needs};
use crate::error::{Error, Role};
use crate::owned::{Identity, NoId, OwnedQuery, Rendered, StaticId};
use crate::reason::Reason;
use crate::route::{self, Route, Statement, Target};
use crate::servers::tokens::Verdict;
use crate::servers::{Outcome, ServerSession, Shared, catalog};

/// A statement, classified, and its route when the routing context does not matter.
pub(super) struct Prepared {
    /// The route, when the connection's state or the statement fix it (see [`route::fixed`]).
    pub(super) fixed: Option<Route>,
    /// The SQL, when classifying rendered it.
    pub(super) rendered: Option<Rendered>,
    /// Whether the statement may change its session's state.
    pub(super) changes_session: bool,
    /// Its leading statement keyword (`db.operation.name`).
    pub(super) operation: Option<&'static str>,
}

impl RoutedConnection {
    /// Classifies `query` and fixes its route where the routing context does not matter: an
    /// open transaction, a test transaction, an earlier write, a write, a statement the pool
    /// learned must run on the primary. A write marks the connection.
    pub(super) fn prepare(
        &mut self,
        query: &dyn QueryFragment<Pg>,
        query_id: Option<TypeId>,
    ) -> QueryResult<Prepared> {
        let state = self.state();
        let (class, rendered) = classified::classify(self.shared(), query, query_id)?;
        let learned = class.write.is_none()
            && self
                .shared()
                .learned()
                .contains(query_id, rendered.as_ref().map(|rendered| &*rendered.sql));
        let fixed = match (&class.write, learned) {
            (Some(_), _) => route::fixed(&state, Statement::Write),
            (None, true) => route::fixed(&state, Statement::Write).map(|route| Route {
                reason: if route.reason == Reason::Write {
                    Reason::RefusedAsWrite
                } else {
                    route.reason
                },
                ..route
            }),
            (None, false) => route::fixed(&state, Statement::Read),
        };
        if let Some(route) = fixed {
            let detail: Option<&dyn fmt::Display> = match class.write.as_deref() {
                Some(Classification::Write(why)) => Some(why),
                _ => None,
            };
            if matches!(route.reason, Reason::Write | Reason::RefusedAsWrite) {
                self.mark_written();
            }
            log_route(route, detail);
        }
        Ok(Prepared {
            fixed,
            rendered,
            changes_session: class.changes_session,
            operation: class.operation,
        })
    }

    /// The route of a read, from the routing context of the task running it; a causal token
    /// that claims what the primary has not reached is dropped first.
    pub(super) async fn route_read(&mut self) -> (Route, ReadNeeds) {
        let mut needs = read_needs();
        if needs.causal_token.is_some() {
            self.vet_token(&mut needs).await;
        }
        let route = route::decide(
            &self.state(),
            Statement::Read,
            &needs,
            self.shared().config(),
            now_ms,
        );
        log_route(route, None);
        (route, needs)
    }

    /// Drops the causal token of `needs` when it is forged: a time in the future, or a WAL
    /// position beyond the primary's (asked once when beyond the last position known).
    pub(super) async fn vet_token(&mut self, needs: &mut ReadNeeds) {
        let Some(token) = needs.causal_token else {
            return;
        };
        let shared = Arc::clone(self.shared());
        let tokens = shared.tokens();
        if tokens.lost_in_failover(&token) {
            tracing::debug!(
                target: "routing_core",
                %token,
                "dropping a causal token of a write the new primary never received"
            );
            needs.causal_token = None;
            return;
        }
        let mut verdict = tokens.check(&token, shared.config().read_your_writes(), now_ms());
        if verdict == Verdict::Unknown {
            verdict = match self.primary_position(&shared).await {
                Ok(lsn) => {
                    tokens.note_primary(lsn);
                    if token.lsn() <= lsn {
                        Verdict::Plausible
                    } else {
                        Verdict::Forged
                    }
                }
                // The primary cannot say: keep the token, the careful choice.
                Err(error) => {
                    tracing::debug!(target: "routing_core", %error, "cannot check a causal token");
                    Verdict::Plausible
                }
            };
        }
        if verdict == Verdict::Forged {
            tracing::debug!(target: "routing_core", %token, "ignoring a forged causal token");
            tokens.count_forged();
            needs.causal_token = None;
        }
    }

    /// The primary's WAL insert position: asked on the primary connection this connection
    /// holds (a second checkout could wait for that very connection, in a pool of one or a busy
    /// one), else on a connection of its own, returned to the pool at once, so that a reader
    /// never holds the primary for it.
    async fn primary_position(&mut self, shared: &Arc<Shared>) -> Result<u64, Error> {
        let error = |source| Error::Query {
            role: Role::Primary,
            source,
        };
        if self.held.holds(Target::Primary) && !self.primary_moved() {
            let asked = self
                .held
                .watched(Target::Primary, shared, catalog::wal_insert_position);
            return match asked {
                Some(asked) => asked.await.map_err(error),
                None => Err(error(lost_connection())),
            };
        }
        let (primary, _) = shared.wait_for_primary().await?;
        let mut session = primary.checkout().await?;
        catalog::wal_insert_position(session.pg())
            .await
            .map_err(error)
    }

    /// Sends `query` to its server: straight to a held connection when its route does not
    /// depend on the scope (a write, or anything inside a transaction or after a write), else
    /// through the owned form, routed when the future first runs. Behind a transaction pooler,
    /// always through the owned form, whose custom types are looked up before it runs (an
    /// unnamed session cannot look them up while it renders); and a statement that changes
    /// the session outside a transaction is refused.
    pub(super) fn dispatch<'conn, Q, R>(
        &'conn mut self,
        query: Q,
        direct: impl FnOnce(&'conn mut ServerSession, Q) -> R::Future<'conn>,
        run: Runners<Q::QueryId, R>,
        first_row: Option<FirstRow<R>>,
    ) -> BoxFuture<'conn, QueryResult<R>>
    where
        Q: QueryFragment<Pg> + QueryId,
        R: Outcome,
    {
        self.settle();
        if self.pinned.is_some() && self.transaction_lost {
            return futures_util::future::ready(Err(Error::TransactionLost.into_diesel())).boxed();
        }
        let debug_sql = self
            .instrumented
            .then(|| diesel::debug_query::<Pg, _>(&query).to_string());
        let prepared = match self.prepare(&query, Q::query_id()) {
            Ok(prepared) => prepared,
            Err(e) => return futures_util::future::ready(Err(e)).boxed(),
        };
        let pooler = self.shared().config().transaction_pooler();
        if pooler && prepared.changes_session && self.pinned.is_none() {
            let refused = Error::SessionStateWithTransactionPooler.into_diesel();
            return futures_util::future::ready(Err(refused)).boxed();
        }
        if self.shared().config().record_query_text() {
            let text = prepared.rendered.clone().map_or_else(
                || classified::rendered(self.shared(), &query, Q::query_id()),
                Ok,
            );
            let text = text.as_ref().ok().map(|rendered| &*rendered.sql);
            self.trace.start(prepared.operation, text);
        } else {
            self.trace.start(prepared.operation, None);
        }
        if let Some(route) = prepared
            .fixed
            .filter(|route| !pooler && self.held.holds(route.target))
        {
            self.count(route);
            if prepared.changes_session {
                self.mark_session_changed(route.target);
            }
            let index = self.held.index(route.target);
            self.trace
                .sent(self.pool.shared(), route.target, index, route.reason);
            let watched = self
                .held
                .watched(route.target, self.pool.shared(), |conn| direct(conn, query));
            let Some(watched) = watched else {
                let error = Err(lost_connection());
                self.trace.finish(self.pool.shared(), &error);
                return futures_util::future::ready(error).boxed();
            };
            let fut = Box::pin(Traced::new(watched, &mut self.trace, self.pool.shared()));
            return match debug_sql {
                None => fut,
                Some(sql) => instrument(&mut self.instrumentation, sql, fut),
            };
        }
        let rendered = match prepared.rendered.clone().map_or_else(
            || classified::rendered(self.shared(), &query, Q::query_id()),
            Ok,
        ) {
            Ok(rendered) => rendered,
            Err(e) => return futures_util::future::ready(Err(e)).boxed(),
        };
        // The owned form keeps the query's static id, so that the server connection's statement
        // cache finds its prepared statement by type, as for the query itself.
        if Q::HAS_STATIC_QUERY_ID {
            self.run_later(
                &query,
                rendered,
                prepared,
                run.with_static_id,
                first_row,
                debug_sql,
            )
        } else {
            self.run_later(
                &query,
                rendered,
                prepared,
                run.without_id,
                first_row,
                debug_sql,
            )
        }
    }

    /// The future of a statement sent through its owned form: routed when it first runs.
    fn run_later<'conn, I: Identity, R: Outcome>(
        &'conn mut self,
        query: &dyn QueryFragment<Pg>,
        rendered: Rendered,
        prepared: Prepared,
        run: RunFn<I, R>,
        first_row: Option<FirstRow<R>>,
        debug_sql: Option<String>,
    ) -> BoxFuture<'conn, QueryResult<R>> {
        let owned = match OwnedQuery::<I>::new(query, rendered, self.shared().types()) {
            Ok(owned) => owned,
            Err(e) => {
                let error = Err(e);
                self.trace.finish(self.pool.shared(), &error);
                return futures_util::future::ready(error).boxed();
            }
        };
        let span = self.trace.span().clone();
        async move {
            let result =
                match debug_sql {
                    None => self.route_owned(prepared, owned, run, first_row).await,
                    Some(sql) => {
                        let query = StrQueryHelper::new(&sql);
                        self.instrumentation
                            .on_connection_event(InstrumentationEvent::start_query(&query));
                        let result = self.route_owned(prepared, owned, run, first_row).await;
                        self.instrumentation.on_connection_event(
                            InstrumentationEvent::finish_query(&query, result.as_ref().err()),
                        );
                        result
                    }
                };
            self.trace.finish(self.pool.shared(), &result);
            result
        }
        .instrument(span)
        .boxed()
    }

    /// Routes an owned statement (a read by the context of the task running it) and runs it.
    async fn route_owned<I: Identity, R: Outcome>(
        &mut self,
        prepared: Prepared,
        owned: OwnedQuery<I>,
        run: RunFn<I, R>,
        first_row: Option<FirstRow<R>>,
    ) -> QueryResult<R> {
        let (route, needs) = match prepared.fixed {
            Some(route) => (route, ReadNeeds::default()),
            None => self.route_read().await,
        };
        match route.target {
            Target::Replica if self.pinned.is_none() => {
                self.read_on_replica(owned, run, needs, first_row).await
            }
            _ => {
                self.run_on(route, owned, run, prepared.changes_session)
                    .await
            }
        }
    }

    /// Runs an owned statement on `route`'s server, watched (see [`held::Held::start`]).
    pub(super) async fn run_on<I: Identity, R: Outcome>(
        &mut self,
        route: Route,
        mut owned: OwnedQuery<I>,
        run: RunFn<I, R>,
        changes_session: bool,
    ) -> QueryResult<R> {
        let shared = Arc::clone(self.shared());
        if route.target == Target::Primary {
            self.checkout_primary().await.map_err(Error::into_diesel)?;
        }
        if changes_session {
            self.mark_session_changed(route.target);
        }
        self.count(route);
        let index = self.held.index(route.target);
        self.trace
            .sent(self.pool.shared(), route.target, index, route.reason);
        let node = self.held.primary_node();
        let guard = self.held.start(route.target);
        let conn = self.held.conn(route.target).ok_or_else(lost_connection)?;
        let result = match owned.resolve(conn, shared.types()).await {
            Ok(()) => run(conn, &owned).await.map(|value| guard.watch(value)),
            Err(e) => Err(e),
        };
        self.held.finish(guard);
        match route.target {
            Target::Primary => result.map_err(|e| super::primary_error(&shared, node, e)),
            Target::Replica => result,
        }
    }
}

/// How to run a statement's owned form, with or without the query's static id `Id`.
pub(super) struct Runners<Id: 'static, R: Outcome> {
    pub(super) with_static_id: RunFn<StaticId<Id>, R>,
    pub(super) without_id: RunFn<NoId, R>,
}

/// Wraps `fut` in diesel's query events for `sql`.
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
