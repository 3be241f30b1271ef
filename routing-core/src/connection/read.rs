//! Reads on replicas: one attempt on one replica ([`RoutedConnection::try_replica`]) and the
//! failover loop around it ([`RoutedConnection::read_on_replica`]).
//!
//! A slow read is not a fault: nothing here times a statement out or bans a replica for taking
//! long. A replica is banned when it cannot be checked out, its connection breaks, or the health
//! probe finds it down; the probe's ban also moves the reads waiting on it elsewhere.

use std::sync::Arc;
use std::time::Duration;

use diesel::QueryResult;
use diesel::result::Error as DieselError;
use futures_util::future::Either;

use super::{FirstRow, RoutedConnection, RunFn, Target};
use crate::causal::ReadYourWrites;
use crate::context::ReadNeeds;
use crate::error::{Error, Role};
use crate::failure::Failure;
use crate::owned::{Identity, OwnedQuery};
use crate::reads::{self, Attempt, ReadAttempts, Step};
use crate::reason::Reason;
use crate::route::{self, Pick};
use crate::servers::{Outcome, Shared, StatementKey, catalog};

/// What a `load` served by a replica needs to turn a refusal that comes after its first rows
/// into a clear error, and to learn the statement.
pub(super) struct AfterRows {
    shared: Arc<Shared>,
    key: StatementKey,
    role: Role,
}

impl AfterRows {
    /// `error`, from the rows of a read replica `index` served: a refusal as a write becomes
    /// [`Error::RefusedAsWrite`], and the pool learns the statement.
    pub(super) fn check(&self, error: DieselError) -> DieselError {
        if Failure::of(&error, false) != Failure::RefusedAsWrite {
            return error;
        }
        reads::learn(&self.shared, self.key.clone(), self.role, None);
        Error::RefusedAsWrite {
            role: self.role,
            after_rows: true,
            source: error,
        }
        .into_diesel()
    }
}

impl RoutedConnection {
    /// The role replica `index` has in errors and logs: its configured index, or its node.
    fn role_of(&self, index: usize) -> Role {
        self.shared().replicas()[index].role()
    }

    /// The routing decision for a statement without running it: the replica a read would try
    /// first, or `None` for the primary. For the benchmarks of the decision's cost; like a real
    /// statement, a write marks the connection, and the statement's telemetry (span and
    /// duration) is made and finished.
    pub(crate) fn decide_only(
        &mut self,
        query: &dyn diesel::query_builder::QueryFragment<diesel::pg::Pg>,
        query_id: Option<std::any::TypeId>,
    ) -> QueryResult<Option<usize>> {
        let prepared = self.prepare(query, query_id)?;
        self.trace
            .start(self.pool.shared(), prepared.operation, None);
        let (route, needs) = match prepared.fixed {
            Some(route) => (route, ReadNeeds::default()),
            None => {
                let needs = crate::context::read_needs();
                let route = route::decide(
                    &self.state(),
                    route::Statement::Read,
                    &needs,
                    self.shared().config(),
                    crate::causal::now_ms,
                );
                (route, needs)
            }
        };
        let decision = match route.target {
            Target::Primary => None,
            Target::Replica => match route::pick(
                reads::replica_views(self.shared()),
                &[],
                self.held.replica_index(),
                &needs,
                self.shared().config(),
                true,
            ) {
                Pick::Replica { index, .. } => Some(index),
                Pick::None(_) => None,
            },
        };
        let (target, index) = match decision {
            Some(index) => (Target::Replica, Some(index)),
            None => (Target::Primary, None),
        };
        self.trace
            .sent(self.pool.shared(), target, index, route.reason);
        self.trace
            .finish(self.pool.shared(), &Ok::<(), DieselError>(()));
        Ok(decision)
    }

    /// Holds a connection to an eligible replica for a read-only transaction (the held one when
    /// it still is; no causal token it has not been seen to replay): `Ok(true)` when one is held,
    /// `Ok(false)` when the primary must serve the transaction, an error when no replica can be
    /// reached and falling back is off.
    pub(super) async fn hold_eligible_replica(&mut self, needs: &ReadNeeds) -> Result<bool, Error> {
        let shared = Arc::clone(self.shared());
        let mut attempts = ReadAttempts::new();
        while let Some((index, _)) = attempts.next(&shared, self.held.replica_index(), needs, false)
        {
            match self.hold_replica(index).await {
                Ok(()) => return Ok(true),
                Err(e) => attempts.failed(e),
            }
        }
        attempts.fallback(&shared).map(|_| false)
    }

    /// Runs a read on a replica: the held one when eligible, else one chosen by the policy; a
    /// replica that fails moves the read to the next one, and the primary serves the read when
    /// no replica is eligible (lag, causal token) and, unless fallback is off, when none can be
    /// reached. A statement a replica refuses as a write runs on the primary.
    pub(super) async fn read_on_replica<I: Identity, R: Outcome>(
        &mut self,
        owned: &mut OwnedQuery<I>,
        run: RunFn<I, R>,
        needs: &ReadNeeds,
        first_row: Option<FirstRow<R>>,
    ) -> QueryResult<R> {
        let shared = Arc::clone(self.shared());
        let mut attempts = ReadAttempts::new();
        while let Some((index, verify_token)) =
            attempts.next(&shared, self.held.replica_index(), needs, true)
        {
            let attempt = self
                .try_replica(index, verify_token, owned, run, needs, first_row)
                .await;
            match attempts.record(attempt) {
                Step::Again => {}
                Step::Return(result) => return result,
                // Cold paths are boxed, to keep the read's own future small.
                Step::Refused(error) => {
                    return Box::pin(self.refused(index, owned, run, error)).await;
                }
                Step::Fallback => break,
            }
        }
        let route = attempts.fallback(&shared).map_err(Error::into_diesel)?;
        self.trace.fell_back();
        Box::pin(self.run_on(route, owned, run, false, false)).await
    }

    /// One attempt to serve a read on replica `index`, given up as soon as the replica is banned
    /// (by the health probe, or by another read that found it down): the statement is cancelled
    /// there and its connection closed. With a `first_row_timeout`, also given up (without a
    /// ban) when the replica has not started answering in time.
    async fn try_replica<I: Identity, R: Outcome>(
        &mut self,
        index: usize,
        verify_token: bool,
        owned: &mut OwnedQuery<I>,
        run: RunFn<I, R>,
        needs: &ReadNeeds,
        first_row: Option<FirstRow<R>>,
    ) -> Attempt<R> {
        let shared = Arc::clone(self.shared());
        let health = shared.replicas()[index].health();
        let banned = health.ban_signal().notified();
        tokio::pin!(banned);
        banned.as_mut().enable();
        if health.is_banned() {
            return Attempt::Next(shared.replicas()[index].banned_error());
        }
        let limit = shared.config().first_row_timeout();
        let attempt = self.attempt(index, verify_token, owned, run, needs, first_row);
        let outcome = tokio::select! {
            biased;
            attempt = optional_timeout(limit, attempt) => attempt,
            () = &mut banned => None,
        };
        match outcome {
            Some(attempt) => attempt,
            None => {
                // The attempt's statement guard sent the cancel request; close the connection.
                self.settle();
                if health.is_banned() {
                    Attempt::Next(shared.replicas()[index].banned_error())
                } else {
                    Attempt::Next(Error::Timeout {
                        what: "a replica starting to answer a read",
                        timeout: limit.unwrap_or_default(),
                    })
                }
            }
        }
    }

    /// The steps of [`RoutedConnection::try_replica`]: holds a connection to the replica,
    /// checks the causal token when the probe does not know (`verify_token`), looks up custom
    /// type OIDs, runs the statement and, for a `load`, waits for its first row.
    async fn attempt<I: Identity, R: Outcome>(
        &mut self,
        index: usize,
        verify_token: bool,
        owned: &mut OwnedQuery<I>,
        run: RunFn<I, R>,
        needs: &ReadNeeds,
        first_row: Option<FirstRow<R>>,
    ) -> Attempt<R> {
        self.trace.sent(
            self.pool.shared(),
            Target::Replica,
            Some(index),
            Reason::ScopeAllowsReplica,
        );
        if let Err(error) = self.hold_replica(index).await {
            return Attempt::Next(error);
        }
        let shared = Arc::clone(self.shared());
        let health = shared.replicas()[index].health();
        let guard = self.held.start(Target::Replica);
        let Some(conn) = self.held.conn(Target::Replica) else {
            return Attempt::Next(replica_error(self.role_of(index), super::lost_connection()));
        };
        if let Some(token) = needs.causal_token.filter(|_| verify_token) {
            // Only a bounded number of reads wait at once; the others ask once.
            let permit = shared.tokens().waits().try_acquire();
            let wait = match (shared.config().read_your_writes(), &permit) {
                (ReadYourWrites::Lsn { wait }, Ok(_)) => wait,
                _ => Duration::ZERO,
            };
            // Boxed: few reads carry a token, and every read's future would hold this one.
            let replayed = Box::pin(catalog::replayed(conn, token, wait)).await;
            drop(permit);
            match replayed {
                Ok(true) => health.note_replay(token.lsn()),
                Ok(false) => {
                    self.held.finish(guard);
                    return Attempt::Behind;
                }
                Err(error) => {
                    self.held.finish(guard);
                    return self.failed(index, error);
                }
            }
        }
        health.count_routed(Reason::ScopeAllowsReplica);
        let Some(conn) = self.held.conn(Target::Replica) else {
            return Attempt::Next(replica_error(self.role_of(index), super::lost_connection()));
        };
        let result = match owned.resolve(conn, shared.types()).await {
            Ok(()) => {
                self.lend_instrumentation(Target::Replica, true);
                let Some(conn) = self.held.conn(Target::Replica) else {
                    return Attempt::Next(replica_error(
                        self.role_of(index),
                        super::lost_connection(),
                    ));
                };
                let ran = run(conn, owned).await.map(|value| guard.watch(value));
                self.reclaim_instrumentation();
                match (ran, first_row) {
                    (Ok(value), Some(first_row)) => {
                        let after = AfterRows {
                            key: StatementKey::of(owned.static_id(), owned.shared_sql()),
                            role: shared.replicas()[index].role(),
                            shared,
                        };
                        first_row(value, after).await
                    }
                    (result, _) => result,
                }
            }
            Err(error) => Err(error),
        };
        self.held.finish(guard);
        match result {
            Ok(value) => {
                tracing::debug!(target: "routing_core", server = %self.role_of(index), "read served");
                Attempt::Served(value)
            }
            Err(error) => self.failed(index, error),
        }
    }

    /// What `error` from replica `index` means for the read (see [`reads::judge`]).
    fn failed<R>(&mut self, index: usize, error: DieselError) -> Attempt<R> {
        let broken = self
            .held(Target::Replica)
            .is_none_or(|conn| conn.is_broken());
        let (attempt, discard) = reads::judge(self.shared(), index, error, broken);
        if discard {
            self.discard_replica();
        }
        attempt
    }

    /// A statement that replica `index` refused as a write (SQLSTATE 25006) before any row
    /// reached the caller: the pool learns it, and it runs on the primary unless the pool says
    /// not to.
    async fn refused<I: Identity, R: Outcome>(
        &mut self,
        index: usize,
        owned: &mut OwnedQuery<I>,
        run: RunFn<I, R>,
        error: DieselError,
    ) -> QueryResult<R> {
        let shared = Arc::clone(self.shared());
        let key = StatementKey::of(owned.static_id(), owned.shared_sql());
        let route = reads::refusal(&shared, index, key, Some(owned.sql()), error)?;
        self.mark_written();
        self.run_on(route, owned, run, false, true).await
    }
}

/// `future`, given up after `limit` when there is one. Not an `async fn`: one that moved
/// `future` into a `match` arm would hold it twice, and every read's future with it.
fn optional_timeout<F: std::future::Future>(
    limit: Option<Duration>,
    future: F,
) -> impl std::future::Future<Output = Option<F::Output>> {
    use futures_util::FutureExt;
    match limit {
        Some(limit) => Either::Left(crate::clock::timeout(limit, future).map(Result::ok)),
        None => Either::Right(future.map(Some)),
    }
}

fn replica_error(role: Role, source: DieselError) -> Error {
    Error::Query { role, source }
}
