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
use smallvec::SmallVec;

use super::{FirstRow, RoutedConnection, RunFn, Target, log_route};
use crate::causal::ReadYourWrites;
use crate::context::ReadNeeds;
use crate::error::{Error, Role};
use crate::failure::{self, Failure};
use crate::owned::{Identity, OwnedQuery};
use crate::reason::Reason;
use crate::route::{self, Exclusions, Pick, ReplicaView, Route};
use crate::servers::{Outcome, Shared, StatementKey, catalog};

/// How one attempt to serve a read on one replica ended.
enum Attempt<R> {
    /// The replica answered (for a `load`, with its first row or the end of the result).
    Served(R),
    /// The replica or its connection failed, or it was banned while the read waited: the next
    /// replica may serve the read.
    Next(Error),
    /// The replica has not replayed the read's causal token, even after the wait: waiting on the
    /// next one too would add up the waits.
    Behind,
    /// The replica refused the statement as a write: it must run on the primary.
    Refused(DieselError),
    /// The statement itself failed: the caller gets the error.
    Fatal(DieselError),
}

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
        learn(&self.shared, self.key.clone(), self.role, None);
        Error::RefusedAsWrite {
            role: self.role,
            after_rows: true,
            source: error,
        }
        .into_diesel()
    }
}

/// The pool learns that the statement `key` must run on the primary, and says so once.
fn learn(shared: &Shared, key: StatementKey, role: Role, sql: Option<&str>) {
    if shared.learned().learn(key) {
        tracing::warn!(
            target: "routing_core",
            server = %role,
            sql,
            "a statement classified as a read was refused by a replica as a write; the pool \
             sends it to the primary from now on (route it there from the start with a \
             /* routing:primary */ comment or Classifier::primary_functions)"
        );
    }
}

impl RoutedConnection {
    /// The role replica `index` has in errors and logs: its configured index, or its node.
    fn role_of(&self, index: usize) -> Role {
        self.shared().replicas()[index].role()
    }

    /// What the router knows of each replica now.
    fn replica_views(&self) -> impl Iterator<Item = ReplicaView> + '_ {
        self.shared()
            .replicas()
            .iter()
            .enumerate()
            .map(|(index, server)| {
                let health = server.health();
                let mut candidate = crate::policy::Candidate::new(index)
                    .with_weight(server.weight())
                    .with_in_flight(health.in_flight());
                candidate.latency = health.latency();
                candidate.lag = health.lag();
                candidate.lag_bytes = health.lag_bytes();
                ReplicaView {
                    candidate,
                    banned: health.is_banned(),
                    standby: health.is_standby(),
                    replay_lsn: health.replay_lsn(),
                }
            })
    }

    /// The replica for a read that `needs` what it needs, among those not `tried`.
    pub(super) fn pick(&self, tried: &[usize], needs: &ReadNeeds, allow_unverified: bool) -> Pick {
        route::pick(
            self.replica_views(),
            tried,
            self.held.replica_index(),
            needs,
            self.shared().config(),
            allow_unverified,
        )
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
        self.trace.start(prepared.operation, None);
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
            Target::Replica => match self.pick(&[], &needs, true) {
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
        let mut tried: SmallVec<[usize; 8]> = SmallVec::new();
        let mut failures = Vec::new();
        loop {
            match self.pick(&tried, needs, false) {
                Pick::Replica { index, .. } => {
                    tried.push(index);
                    match self.hold_replica(index).await {
                        Ok(()) => return Ok(true),
                        Err(e) => failures.push(e),
                    }
                }
                Pick::None(exclusions) => {
                    return self.fallback(exclusions, failures).map(|_| false);
                }
            }
        }
    }

    /// Where a read goes that no replica served: the primary (logged), or an error.
    fn fallback(&self, exclusions: Exclusions, failures: Vec<Error>) -> Result<Route, Error> {
        match route::fallback(&exclusions, failures.len(), self.shared().config()) {
            Some(route) => {
                log_route(route, Some(&exclusions));
                if !failures.is_empty() {
                    for failure in &failures {
                        tracing::debug!(target: "routing_core", error = %failure, "replica failed");
                    }
                    metrics::counter!("routing_fallbacks_total").increment(1);
                }
                Ok(route)
            }
            None => Err(Error::NoReplicaAvailable {
                banned: exclusions.banned,
                not_standby: exclusions.not_standby,
                lagging: exclusions.lagging,
                behind_token: exclusions.behind_token,
                failures,
            }),
        }
    }

    /// Runs a read on a replica: the held one when eligible, else one chosen by the policy; a
    /// replica that fails moves the read to the next one, and the primary serves the read when
    /// no replica is eligible (lag, causal token) and, unless fallback is off, when none can be
    /// reached. A statement a replica refuses as a write runs on the primary.
    pub(super) async fn read_on_replica<I: Identity, R: Outcome>(
        &mut self,
        mut owned: OwnedQuery<I>,
        run: RunFn<I, R>,
        needs: ReadNeeds,
        first_row: Option<FirstRow<R>>,
    ) -> QueryResult<R> {
        let mut tried: SmallVec<[usize; 8]> = SmallVec::new();
        let mut failures = Vec::new();
        let mut behind = 0;
        let mut exclusions = loop {
            let (index, verify_token) = match self.pick(&tried, &needs, true) {
                Pick::Replica {
                    index,
                    verify_token,
                } => (index, verify_token),
                Pick::None(exclusions) => break exclusions,
            };
            tried.push(index);
            let attempt = self
                .try_replica(index, verify_token, &mut owned, run, &needs, first_row)
                .await;
            match attempt {
                Attempt::Served(value) => return Ok(value),
                Attempt::Next(error) => failures.push(error),
                Attempt::Behind => {
                    behind += 1;
                    break Exclusions::default();
                }
                Attempt::Refused(error) => {
                    // Cold paths are boxed, to keep the read's own future small.
                    return Box::pin(self.refused(index, owned, run, error)).await;
                }
                Attempt::Fatal(error) => return Err(error),
            }
        };
        exclusions.behind_token += behind;
        let route = self
            .fallback(exclusions, failures)
            .map_err(Error::into_diesel)?;
        self.trace.fell_back();
        Box::pin(self.run_on(route, owned, run, false)).await
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
            return Attempt::Next(banned_error(&shared, index));
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
                    Attempt::Next(banned_error(&shared, index))
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
            let replayed = catalog::replayed(conn, token, wait).await;
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
            Ok(()) => match (run(conn, owned).await.map(|v| guard.watch(v)), first_row) {
                (Ok(value), Some(first_row)) => {
                    let after = AfterRows {
                        key: StatementKey::of(owned.static_id(), owned.shared_sql()),
                        role: shared.replicas()[index].role(),
                        shared,
                    };
                    first_row(value, after).await
                }
                (result, _) => result,
            },
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

    /// What `error` from replica `index` means for the read.
    fn failed<R>(&mut self, index: usize, error: DieselError) -> Attempt<R> {
        let broken = self
            .held(Target::Replica)
            .is_none_or(|conn| conn.is_broken());
        let failure = Failure::of(&error, broken);
        tracing::debug!(
            target: "routing_core",
            server = %self.role_of(index),
            ?failure,
            sqlstate = failure::known(&error).map(|known| known.sqlstate),
            %error,
            "read failed"
        );
        match failure {
            Failure::Statement => Attempt::Fatal(error),
            Failure::RefusedAsWrite => Attempt::Refused(error),
            Failure::RecoveryConflict => {
                // The server is fine; only a connection the conflict closed is dropped.
                if broken {
                    self.discard_replica();
                }
                Attempt::Next(replica_error(self.role_of(index), error))
            }
            Failure::Unreachable => {
                let role = self.role_of(index);
                let error = replica_error(role, error);
                self.shared().replicas()[index]
                    .health()
                    .ban(format!("{role}: {error}"));
                self.discard_replica();
                Attempt::Next(error)
            }
        }
    }

    /// A statement that replica `index` refused as a write (SQLSTATE 25006) before any row
    /// reached the caller: the pool learns it, and it runs on the primary unless the pool says
    /// not to.
    async fn refused<I: Identity, R: Outcome>(
        &mut self,
        index: usize,
        owned: OwnedQuery<I>,
        run: RunFn<I, R>,
        error: DieselError,
    ) -> QueryResult<R> {
        let shared = Arc::clone(self.shared());
        let key = StatementKey::of(owned.static_id(), owned.shared_sql());
        let role = self.role_of(index);
        learn(&shared, key, role, Some(owned.sql()));
        if !shared.config().retry_refused_writes() {
            return Err(Error::RefusedAsWrite {
                role,
                after_rows: false,
                source: error,
            }
            .into_diesel());
        }
        self.mark_written();
        let route = Route {
            target: Target::Primary,
            reason: Reason::RefusedAsWrite,
        };
        log_route(route, None);
        self.run_on(route, owned, run, false).await
    }
}

/// `future`, given up after `limit` when there is one.
async fn optional_timeout<F: std::future::Future>(
    limit: Option<Duration>,
    future: F,
) -> Option<F::Output> {
    match limit {
        Some(limit) => tokio::time::timeout(limit, future).await.ok(),
        None => Some(future.await),
    }
}

fn replica_error(role: Role, source: DieselError) -> Error {
    Error::Query { role, source }
}

fn banned_error(shared: &Shared, index: usize) -> Error {
    let server = &shared.replicas()[index];
    Error::Banned {
        role: server.role(),
        ban_reason: server.health().ban_reason(),
    }
}
