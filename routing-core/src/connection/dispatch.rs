//! Sending a statement: classifying it, routing it now or when its future first runs, and
//! running it on the chosen server (directly, or through its owned form).

use std::any::TypeId;
use std::sync::Arc;

use diesel::QueryResult;
use diesel::connection::{InstrumentationEvent, StrQueryHelper};
use diesel::pg::Pg;
use diesel::query_builder::{QueryFragment, QueryId};
use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Either};
use tracing::Instrument;

use super::{FirstRow, RoutedConnection, RunFn, log_route, lost_connection};
use crate::causal::now_ms;
use crate::classified::{self, Prepared};
use crate::context::{ReadNeeds, read_needs};
use crate::error::{Error, Role};
use crate::owned::{Identity, NoId, OwnedQuery, Rendered, StaticId};
use crate::reads::{self, TokenCheck};
use crate::route::{self, Route, Statement, Target};
use crate::servers::{Outcome, ServerSession, Shared, catalog};
use crate::trace::Traced;

impl RoutedConnection {
    /// Classifies `query` and fixes its route where the routing context does not matter (see
    /// [`classified::prepare`]). A write marks the connection.
    pub(super) fn prepare(
        &mut self,
        query: &dyn QueryFragment<Pg>,
        query_id: Option<TypeId>,
    ) -> QueryResult<Prepared> {
        let prepared = classified::prepare(self.shared(), &self.state(), query, query_id)?;
        if prepared.writes {
            self.mark_written();
        }
        Ok(prepared)
    }

    /// The route of a read, from the routing context of the task running it; a causal token
    /// that claims what the primary has not reached is dropped first.
    pub(super) async fn route_read(&mut self) -> (Route, ReadNeeds) {
        let mut needs = read_needs();
        if needs.causal_token.is_some() {
            // Boxed: its checks of the primary would make every read's future larger.
            Box::pin(self.vet_token(&mut needs)).await;
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
        let keep = match reads::check_token(&shared, &token) {
            TokenCheck::Keep => true,
            TokenCheck::Drop => false,
            TokenCheck::AskPrimary => {
                let primary = self.primary_position(&shared).await;
                reads::keep_token(&shared, &token, primary)
            }
        };
        if !keep {
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
            let asked =
                self.held
                    .watched(Target::Primary, shared, false, catalog::wal_insert_position);
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
        let prepared = match self.prepare(&query, Q::query_id()) {
            Ok(prepared) => prepared,
            Err(e) => return futures_util::future::ready(Err(e)).boxed(),
        };
        let pooler = self.shared().config().transaction_pooler();
        if pooler && prepared.session.state && self.pinned.is_none() {
            let refused = Error::SessionStateWithTransactionPooler.into_diesel();
            return futures_util::future::ready(Err(refused)).boxed();
        }
        if self.shared().config().record_query_text() {
            let text = prepared.rendered.clone().map_or_else(
                || classified::rendered(self.shared(), &query, Q::query_id()),
                Ok,
            );
            let text = text.as_ref().ok().map(|rendered| &*rendered.sql);
            self.trace
                .start(self.pool.shared(), prepared.operation, text);
        } else {
            self.trace
                .start(self.pool.shared(), prepared.operation, None);
        }
        if let Some(route) = prepared
            .fixed
            .filter(|route| !pooler && self.held.holds(route.target))
        {
            self.count(route);
            if prepared.session.any() {
                self.mark_session_changed(route.target);
            }
            // The session reports the statement, as a plain connection does.
            self.lend_instrumentation(route.target, false);
            let index = self.held.index(route.target);
            self.trace
                .sent(self.pool.shared(), route.target, index, route.reason);
            let autocommit_write = prepared.commits;
            let node = self.held.primary_node();
            let watched =
                self.held
                    .watched(route.target, self.pool.shared(), autocommit_write, |conn| {
                        direct(conn, query)
                    });
            let Some(watched) = watched else {
                let error = Err(lost_connection());
                self.trace.finish(self.pool.shared(), &error);
                return futures_util::future::ready(error).boxed();
            };
            // The rows of a write outside a transaction are handed out once its commit is known
            // (see `RowStream::settled`).
            let future = if autocommit_write && R::ROWS {
                let on_primary = (route.target == Target::Primary)
                    .then(|| (Arc::clone(self.pool.shared()), node));
                Either::Left(settle(watched, on_primary))
            } else {
                Either::Right(watched)
            };
            return Box::pin(Traced::new(future, &mut self.trace, self.pool.shared()));
        }
        // This connection reports the statement, once, as the user wrote it, wherever it runs.
        let debug_sql = self
            .instrumented
            .then(|| diesel::debug_query::<Pg, _>(&query).to_string());
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
        let mut owned = match OwnedQuery::<I>::new(query, rendered, self.shared().types()) {
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
                    None => {
                        self.route_owned(&prepared, &mut owned, run, first_row)
                            .await
                    }
                    Some(sql) => {
                        let query = StrQueryHelper::new(&sql);
                        self.instrumentation
                            .on_connection_event(InstrumentationEvent::start_query(&query));
                        let result = self
                            .route_owned(&prepared, &mut owned, run, first_row)
                            .await;
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
    /// The statement is borrowed down to where it runs, never moved: each move would copy it
    /// into one more layer of the read's future.
    async fn route_owned<I: Identity, R: Outcome>(
        &mut self,
        prepared: &Prepared,
        owned: &mut OwnedQuery<I>,
        run: RunFn<I, R>,
        first_row: Option<FirstRow<R>>,
    ) -> QueryResult<R> {
        let (route, needs) = match prepared.fixed {
            Some(route) => (route, ReadNeeds::default()),
            None => self.route_read().await,
        };
        match route.target {
            Target::Replica if self.pinned.is_none() => {
                self.read_on_replica(owned, run, &needs, first_row).await
            }
            _ => {
                self.run_on(route, owned, run, prepared.session.any(), prepared.commits)
                    .await
            }
        }
    }

    /// Runs an owned statement on `route`'s server, watched (see [`held::Held::start`]).
    /// `commits` when it may write outside a transaction (see [`Prepared::commits`]), as a read
    /// rerun on the primary after a replica refused it as a write may.
    pub(super) async fn run_on<I: Identity, R: Outcome>(
        &mut self,
        route: Route,
        owned: &mut OwnedQuery<I>,
        run: RunFn<I, R>,
        changes_session: bool,
        commits: bool,
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
        let autocommit_write = commits && self.pinned.is_none();
        let guard = self.held.start(route.target).of_write(autocommit_write);
        let conn = self.held.conn(route.target).ok_or_else(lost_connection)?;
        let result = match owned.resolve(conn, shared.types()).await {
            Ok(()) => {
                self.lend_instrumentation(route.target, true);
                let conn = self.held.conn(route.target).ok_or_else(lost_connection)?;
                let result = run(conn, owned).await.map(|value| guard.watch(value));
                self.reclaim_instrumentation();
                result
            }
            Err(e) => Err(e),
        };
        self.held.finish(guard);
        // Its statement guard finished, a write's commit is no longer cancelled (see
        // `settle`): dropped while it settles, its row stream closes the connection.
        let result = match result {
            Ok(value) if autocommit_write => value.settled().await,
            result => result,
        };
        match route.target {
            Target::Primary => result.map_err(|e| shared.primary_error(node, e)),
            Target::Replica => result,
        }
    }
}

/// What the statement of `watched` gave, once its server said whether its commit succeeded (see
/// `RowStream::settled`). Settled after the statement guard
/// finished: the rows have arrived, the statement ran, and only its commit is left, which may be
/// waiting for a synchronous standby. A cancel then would leave the write committed on this
/// server only; dropped meanwhile, the watched row stream closes the connection instead (see
/// `StatementGuard::of_write`), and the commit completes or fails on the server.
async fn settle<R: Outcome>(
    watched: impl Future<Output = QueryResult<R>>,
    on_primary: Option<(Arc<Shared>, Option<usize>)>,
) -> QueryResult<R> {
    let settled = watched.await?.settled().await;
    match on_primary {
        Some((shared, node)) => settled.map_err(|e| shared.primary_error(node, e)),
        None => settled,
    }
}

/// How to run a statement's owned form, with or without the query's static id `Id`.
pub(super) struct Runners<Id: 'static, R: Outcome> {
    pub(super) with_static_id: RunFn<StaticId<Id>, R>,
    pub(super) without_id: RunFn<NoId, R>,
}
