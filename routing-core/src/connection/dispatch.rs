//! Sending a statement: classifying it, routing it now or when its future first runs, and
//! running it on the chosen server (directly, or through its owned form).

use std::any::TypeId;
use std::fmt;
use std::sync::Arc;

use diesel::QueryResult;
use diesel::connection::{DynInstrumentation, InstrumentationEvent, StrQueryHelper};
use diesel::pg::Pg;
use diesel::query_builder::{QueryFragment, QueryId};
use diesel_async::AsyncPgConnection;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;

use super::{FirstRow, RoutedConnection, RunFn, classified, held_in, log_route, lost_connection};
use crate::causal::now_ms;
use crate::classify::Classification;
use crate::context::{ReadNeeds, read_needs};
use crate::error::Error;
use crate::owned::{Identity, NoId, OwnedQuery, Rendered, StaticId};
use crate::route::{self, Route, Statement, Target};

impl RoutedConnection {
    /// The route of a statement that does not depend on the routing context (see
    /// [`route::fixed`]), classifying it only when the connection's state does not decide
    /// already; a write marks the connection. Returns the SQL too when classifying rendered it.
    pub(super) fn fixed_route(
        &mut self,
        query: &dyn QueryFragment<Pg>,
        query_id: Option<TypeId>,
    ) -> QueryResult<(Option<Route>, Option<Rendered>)> {
        let state = self.state();
        if let Some(route) = route::fixed(&state, Statement::Read) {
            log_route(route, None);
            return Ok((Some(route), None));
        }
        let (write, rendered) = classified::classify(self.shared(), query, query_id)?;
        let Some(write) = write else {
            return Ok((None, rendered));
        };
        let route = route::fixed(&state, Statement::Write);
        if let Some(route) = route {
            self.mark_written();
            let detail: &dyn fmt::Display = match &*write {
                Classification::Write(why) => why,
                Classification::Read => &"read",
            };
            log_route(route, Some(detail));
        }
        Ok((route, rendered))
    }

    /// The route of a read, from the routing context of the task running it.
    pub(super) fn read_route(&self) -> (Route, ReadNeeds) {
        let needs = read_needs();
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

    /// Sends `query` to its server: straight to a held connection when its route does not
    /// depend on the scope (a write, or anything inside a transaction or after a write), else
    /// through the owned form, routed when the future first runs.
    pub(super) fn dispatch<'conn, Q, R>(
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
        let (fixed, rendered) = match self.fixed_route(&query, Q::query_id()) {
            Ok(decision) => decision,
            Err(e) => return futures_util::future::ready(Err(e)).boxed(),
        };
        if let Some(route) = fixed.filter(|route| self.holds(route.target)) {
            self.count(route);
            let Some(conn) = held_in(&mut self.primary, &mut self.replica, route.target) else {
                return futures_util::future::ready(Err(lost_connection())).boxed();
            };
            let fut = direct(conn, query);
            return match debug_sql {
                None => fut,
                Some(sql) => instrument(&mut self.instrumentation, sql, fut),
            };
        }
        let rendered = match rendered.map_or_else(
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
        fixed: Option<Route>,
        run: RunFn<I, R>,
        first_row: Option<FirstRow<R>>,
        debug_sql: Option<String>,
    ) -> BoxFuture<'conn, QueryResult<R>> {
        let owned = match OwnedQuery::<I>::new(query, rendered, self.shared().types()) {
            Ok(owned) => owned,
            Err(e) => return futures_util::future::ready(Err(e)).boxed(),
        };
        async move {
            let Some(sql) = debug_sql else {
                return self.route_owned(fixed, owned, run, first_row).await;
            };
            let query = StrQueryHelper::new(&sql);
            self.instrumentation
                .on_connection_event(InstrumentationEvent::start_query(&query));
            let result = self.route_owned(fixed, owned, run, first_row).await;
            self.instrumentation
                .on_connection_event(InstrumentationEvent::finish_query(
                    &query,
                    result.as_ref().err(),
                ));
            result
        }
        .boxed()
    }

    /// Routes an owned statement (a read by the context of the task running it) and runs it.
    async fn route_owned<I: Identity, R>(
        &mut self,
        fixed: Option<Route>,
        owned: OwnedQuery<I>,
        run: RunFn<I, R>,
        first_row: Option<FirstRow<R>>,
    ) -> QueryResult<R> {
        let (route, needs) = match fixed {
            Some(route) => (route, ReadNeeds::default()),
            None => self.read_route(),
        };
        match route.target {
            Target::Replica if self.pinned.is_none() => {
                self.read_on_replica(owned, run, needs, first_row).await
            }
            _ => self.run_on(route, owned, run).await,
        }
    }

    /// Runs an owned statement on `route`'s server.
    pub(super) async fn run_on<I: Identity, R>(
        &mut self,
        route: Route,
        mut owned: OwnedQuery<I>,
        run: RunFn<I, R>,
    ) -> QueryResult<R> {
        let shared = Arc::clone(self.shared());
        let conn = match route.target {
            Target::Primary => self.checkout_primary().await.map_err(Error::into_diesel)?,
            Target::Replica => self.held(Target::Replica).ok_or_else(lost_connection)?,
        };
        owned.resolve(conn, shared.types()).await?;
        self.count(route);
        let conn = self.held(route.target).ok_or_else(lost_connection)?;
        run(conn, &owned).await
    }
}

/// How to run a statement's owned form, with or without the query's static id `Id`.
pub(super) struct Runners<Id: 'static, R> {
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
