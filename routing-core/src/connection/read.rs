//! Reads on replicas: one attempt on one replica ([`RoutedConnection::try_replica`]) and the
//! failover loop around it ([`RoutedConnection::read_on_replica`]).

use std::sync::Arc;
use std::time::Duration;

use diesel::QueryResult;
use diesel::result::Error as DieselError;
use diesel_async::pooled_connection::PoolableConnection;
use smallvec::SmallVec;

use super::{FirstRow, RoutedConnection, RunFn, Target, log_route};
use crate::causal::ReadYourWrites;
use crate::context::ReadNeeds;
use crate::error::{Error, Role};
use crate::failure::{self, Failure};
use crate::owned::{Identity, OwnedQuery};
use crate::reason::Reason;
use crate::route::{self, Exclusions, Pick, ReplicaView, Route};
use crate::servers::catalog;

/// How one attempt to serve a read on one replica ended.
enum Attempt<R> {
    /// The replica answered (for a `load`, with its first row or the end of the result).
    Served(R),
    /// The replica or its connection failed: the next replica may serve the read.
    Next(Error),
    /// The replica has not replayed the read's causal token, even after the wait: waiting on the
    /// next one too would add up the waits.
    Behind,
    /// The replica refused the statement as a write: it must run on the primary.
    Refused(DieselError),
    /// The statement itself failed: the caller gets the error.
    Fatal(DieselError),
}

impl RoutedConnection {
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
                    replay_lsn: health.replay_lsn(),
                }
            })
    }

    /// The replica for a read that `needs` what it needs, among those not `tried`.
    pub(super) fn pick(&self, tried: &[usize], needs: &ReadNeeds, allow_unverified: bool) -> Pick {
        let held = self.replica.as_ref().map(|held| held.index);
        route::pick(
            self.replica_views(),
            tried,
            held,
            needs,
            self.shared().config(),
            allow_unverified,
        )
    }

    /// The routing decision for a statement without running it: the replica a read would try
    /// first, or `None` for the primary. For the benchmarks of the decision's cost; like a real
    /// statement, a write marks the connection.
    pub(crate) fn decide_only(
        &mut self,
        query: &dyn diesel::query_builder::QueryFragment<diesel::pg::Pg>,
        query_id: Option<std::any::TypeId>,
    ) -> QueryResult<Option<usize>> {
        let (route, needs) = match self.fixed_route(query, query_id)?.0 {
            Some(route) => (route, ReadNeeds::default()),
            None => self.read_route(),
        };
        if route.target == Target::Primary {
            return Ok(None);
        }
        match self.pick(&[], &needs, true) {
            Pick::Replica { index, .. } => Ok(Some(index)),
            Pick::None(_) => Ok(None),
        }
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
    pub(super) async fn read_on_replica<I: Identity, R>(
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
        Box::pin(self.run_on(route, owned, run)).await
    }

    /// One attempt to serve a read on replica `index`: holds a connection to it, checks the
    /// causal token when the probe does not know (`verify_token`), looks up custom type OIDs,
    /// runs the statement and, for a `load`, waits for its first row. A frozen server answers
    /// nothing: every step on it is bounded by the checkout timeout.
    async fn try_replica<I: Identity, R>(
        &mut self,
        index: usize,
        verify_token: bool,
        owned: &mut OwnedQuery<I>,
        run: RunFn<I, R>,
        needs: &ReadNeeds,
        first_row: Option<FirstRow<R>>,
    ) -> Attempt<R> {
        if let Err(error) = self.hold_replica(index).await {
            return Attempt::Next(error);
        }
        let shared = Arc::clone(self.shared());
        let config = shared.config();
        let health = shared.replicas()[index].health();
        let limit = config.checkout_timeout();
        let Some(conn) = self.held(Target::Replica) else {
            return Attempt::Next(lost(index));
        };
        if let Some(token) = needs.causal_token.filter(|_| verify_token) {
            let wait = match config.read_your_writes() {
                ReadYourWrites::Lsn { wait } => wait,
                ReadYourWrites::TimeWindow(_) => Duration::ZERO,
            };
            let asked = Box::pin(catalog::replayed(conn, token, wait));
            match tokio::time::timeout(limit + wait, asked).await {
                Ok(Ok(true)) => health.note_replay(token.lsn()),
                Ok(Ok(false)) => return Attempt::Behind,
                Ok(Err(error)) => return self.failed(index, error),
                Err(_) => {
                    return self.no_answer(index, "asking for the replay position", limit + wait);
                }
            }
        }
        health.count_routed(Reason::ScopeAllowsReplica);
        let Some(conn) = self.held(Target::Replica) else {
            return Attempt::Next(lost(index));
        };
        if owned.needs_lookup() {
            match tokio::time::timeout(limit, owned.resolve(conn, shared.types())).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => return self.failed(index, error),
                Err(_) => return self.no_answer(index, "looking up custom types", limit),
            }
        }
        let result = match first_row {
            None => run(conn, owned).await,
            // A frozen server never starts answering; a slow query does, at once.
            Some(first_row) => match tokio::time::timeout(limit, run(conn, owned)).await {
                Ok(Ok(stream)) => first_row(stream).await,
                Ok(Err(error)) => Err(error),
                Err(_) => return self.no_answer(index, "starting to answer a read", limit),
            },
        };
        match result {
            Ok(value) => {
                tracing::debug!(target: "routing_core", server = %Role::Replica(index), "read served");
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
            server = %Role::Replica(index),
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
                Attempt::Next(replica_error(index, error))
            }
            Failure::Unreachable => {
                let error = replica_error(index, error);
                self.ban(index, &error);
                Attempt::Next(error)
            }
        }
    }

    /// Replica `index` did not answer within `timeout` while `doing` something.
    fn no_answer<R>(&mut self, index: usize, doing: &'static str, timeout: Duration) -> Attempt<R> {
        let error = Error::Timeout {
            what: doing,
            timeout,
        };
        self.ban(index, &error);
        Attempt::Next(error)
    }

    /// Takes replica `index` out of rotation and closes the connection held to it.
    fn ban(&mut self, index: usize, error: &Error) {
        let role = Role::Replica(index);
        self.shared().replicas()[index]
            .health()
            .ban(format!("{role}: {error}"));
        self.discard_replica();
    }

    /// A statement that replica `index` refused as a write (SQLSTATE 25006) runs on the
    /// primary, with a warning, unless the pool says not to.
    async fn refused<I: Identity, R>(
        &mut self,
        index: usize,
        owned: OwnedQuery<I>,
        run: RunFn<I, R>,
        error: DieselError,
    ) -> QueryResult<R> {
        if !self.shared().config().retry_refused_writes() {
            return Err(error);
        }
        tracing::warn!(
            target: "routing_core",
            server = %Role::Replica(index),
            sql = owned.sql(),
            "a statement classified as a read was refused by the replica as a write; \
             running it on the primary (register its functions with \
             Classifier::primary_functions)"
        );
        self.mark_written();
        let route = Route {
            target: Target::Primary,
            reason: Reason::RefusedAsWrite,
        };
        log_route(route, None);
        self.run_on(route, owned, run).await
    }
}

fn replica_error(index: usize, source: DieselError) -> Error {
    Error::Query {
        role: Role::Replica(index),
        source,
    }
}

/// The held replica connection went missing.
fn lost(index: usize) -> Error {
    replica_error(index, super::lost_connection())
}
