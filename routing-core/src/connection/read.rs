//! Reads on replicas: choosing an eligible replica, failing over, and causal tokens.

use std::fmt;
use std::time::{Duration, Instant};

use diesel::QueryResult;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel::sql_types::{Bool, Text};
use diesel_async::pooled_connection::PoolableConnection;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::{
    FirstRow, Reason, RoutedConnection, RunFn, Target, is_read_only_violation, is_unreachable,
    log_decision,
};
use smallvec::SmallVec;

use crate::balance::Candidate;
use crate::causal::{CausalToken, ReadYourWrites};
use crate::collected::{Identity, OwnedQuery};
use crate::context::ReadNeeds;
use crate::error::{Error, Role};

/// Why replicas were passed over for a read.
#[derive(Debug, Default)]
pub(crate) struct Exclusions {
    banned: usize,
    lagging: usize,
    behind_token: usize,
    failures: Vec<String>,
}

impl Exclusions {
    /// Whether every replica was passed over for being down (banned or failing), as opposed to
    /// lagging or not having replayed a causal token.
    fn all_unreachable(&self) -> bool {
        self.lagging == 0 && self.behind_token == 0
    }
}

impl fmt::Display for Exclusions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} banned, {} lagging, {} behind the causal token",
            self.banned, self.lagging, self.behind_token
        )?;
        if !self.failures.is_empty() {
            write!(f, "; failures: {}", self.failures.join("; "))?;
        }
        Ok(())
    }
}

/// The outcome of choosing a replica.
pub(crate) enum Pick {
    /// Use this replica; `verify_token`: ask it whether it has replayed the causal token first.
    Replica { index: usize, verify_token: bool },
    /// No replica is eligible.
    None(Exclusions),
}

impl RoutedConnection {
    /// The routing decision for `query`, without sending it: the replica a read would try
    /// first, or `None` for the primary. For benchmarks of the decision's cost; like a real
    /// statement, a write makes the connection's later reads go to the primary.
    pub(crate) fn decide_only(
        &mut self,
        query: &dyn diesel::query_builder::QueryFragment<diesel::pg::Pg>,
        query_id: Option<std::any::TypeId>,
    ) -> QueryResult<Option<usize>> {
        let (target, needs) = match self.fixed_target(query, query_id)?.0 {
            Some((target, _)) => (target, ReadNeeds::default()),
            None => {
                let (target, needs, _) = self.read_target();
                (target, needs)
            }
        };
        if target == Target::Primary {
            return Ok(None);
        }
        match self.pick_replica(&[], &needs, true) {
            Pick::Replica { index, .. } => Ok(Some(index)),
            Pick::None(_) => Ok(None),
        }
    }

    /// Chooses a replica for a read among those not `tried`: not banned, within the lag bounds,
    /// and, with a causal token, known to have replayed it (or, with `allow_unverified`, not
    /// known either way). The held replica wins when it is eligible; else the pool's policy
    /// chooses.
    pub(crate) fn pick_replica(
        &self,
        tried: &[usize],
        needs: &ReadNeeds,
        allow_unverified: bool,
    ) -> Pick {
        let inner = &self.pool.inner;
        let token = match inner.read_your_writes {
            ReadYourWrites::Lsn { .. } => needs.causal_token,
            ReadYourWrites::TimeWindow(_) => None,
        };
        let lag_limit = match (inner.max_lag, needs.max_lag) {
            (Some(pool), Some(request)) => Some(pool.min(request)),
            (pool, request) => pool.or(request),
        };
        let mut exclusions = Exclusions::default();
        // On the stack for up to eight replicas: the decision allocates nothing.
        let mut caught_up: SmallVec<[Candidate; 8]> = SmallVec::new();
        let mut unverified: SmallVec<[Candidate; 8]> = SmallVec::new();
        for (index, server) in inner.replicas.iter().enumerate() {
            if tried.contains(&index) {
                continue;
            }
            let health = &server.health;
            if health.is_banned() {
                exclusions.banned += 1;
                continue;
            }
            let lag = health.lag();
            let lag_bytes = health.lag_bytes();
            let too_far = lag_limit.zip(lag).is_some_and(|(limit, lag)| lag > limit)
                || inner
                    .max_lag_bytes
                    .zip(lag_bytes)
                    .is_some_and(|(limit, bytes)| bytes > limit);
            if too_far {
                exclusions.lagging += 1;
                continue;
            }
            let candidate = Candidate {
                index,
                weight: server.weight,
                in_flight: health.in_flight(),
                latency: health.latency(),
                lag,
                lag_bytes,
            };
            match token {
                Some(token) if health.replay_lsn().is_none_or(|lsn| lsn < token.lsn()) => {
                    if allow_unverified {
                        unverified.push(candidate);
                    } else {
                        exclusions.behind_token += 1;
                    }
                }
                _ => caught_up.push(candidate),
            }
        }
        if let Some(held) = &self.replica {
            if caught_up.iter().any(|c| c.index == held.index) {
                return Pick::Replica {
                    index: held.index,
                    verify_token: false,
                };
            }
        }
        // Borrowed, not moved: a move would copy the inline buffers.
        let (candidates, verify_token): (&[Candidate], bool) = if !caught_up.is_empty() {
            (&caught_up, false)
        } else if !unverified.is_empty() {
            (&unverified, true)
        } else {
            return Pick::None(exclusions);
        };
        let position = inner.policy.0.choose(candidates) % candidates.len();
        Pick::Replica {
            index: candidates[position].index,
            verify_token,
        }
    }

    /// Holds a connection to an eligible replica (the held one when it still is; no causal token
    /// it has not been seen to replay): `Ok(false)` when every replica lags or is behind the
    /// token, an error when none of the others can be reached.
    pub(crate) async fn hold_eligible_replica(&mut self, needs: &ReadNeeds) -> Result<bool, Error> {
        let mut tried: SmallVec<[usize; 8]> = SmallVec::new();
        let mut failures = Vec::new();
        loop {
            match self.pick_replica(&tried, needs, false) {
                Pick::Replica { index, .. } => {
                    tried.push(index);
                    match self.hold_replica(index).await {
                        Ok(()) => return Ok(true),
                        Err(e) => failures.push(e.to_string()),
                    }
                }
                Pick::None(mut exclusions) => {
                    exclusions.failures = failures;
                    if exclusions.all_unreachable() {
                        return Err(Error::NoReplicaAvailable {
                            reasons: exclusions.to_string(),
                        });
                    }
                    return Ok(false);
                }
            }
        }
    }

    /// Runs a read on a replica: the held one when eligible, else one chosen by the policy. A
    /// replica that cannot be reached (or, for a `load`, has not started answering within the
    /// checkout timeout) is banned and the next one tried; a `load` is retried until its first
    /// row has been received (`first_row`), never after; the primary serves the read when no
    /// replica is eligible (lag, causal token) and, unless fallback is off, when none can be
    /// reached. A statement a replica refuses as a write runs on the primary.
    pub(crate) async fn read_on_replica<I: Identity, R>(
        &mut self,
        mut owned: OwnedQuery<I>,
        run: RunFn<I, R>,
        needs: ReadNeeds,
        first_row: Option<FirstRow<R>>,
    ) -> QueryResult<R> {
        let pool = self.pool.clone();
        let inner = &pool.inner;
        if let (Some(token), ReadYourWrites::TimeWindow(window)) =
            (needs.causal_token, inner.read_your_writes)
        {
            if token.age() < window {
                log_decision(Target::Primary, &Reason::CausalWindow);
                // Cold paths are boxed, to keep the read's own future small.
                return Box::pin(self.run_on(
                    Target::Primary,
                    owned,
                    run,
                    Reason::CausalWindow.metric(),
                ))
                .await;
            }
        }
        let wait = match inner.read_your_writes {
            ReadYourWrites::Lsn { wait } => wait,
            ReadYourWrites::TimeWindow(_) => Duration::ZERO,
        };
        let mut tried: SmallVec<[usize; 8]> = SmallVec::new();
        let mut failures = Vec::new();
        let mut token_missed = 0;
        let mut exclusions = loop {
            let (index, verify_token) = match self.pick_replica(&tried, &needs, true) {
                Pick::Replica {
                    index,
                    verify_token,
                } => (index, verify_token),
                Pick::None(exclusions) => break exclusions,
            };
            tried.push(index);
            let role = Role::Replica(index);
            let health = &inner.replicas[index].health;
            if let Err(e) = self.hold_replica(index).await {
                failures.push(e.to_string());
                continue;
            }
            let Some(held) = self.replica.as_mut() else {
                continue;
            };
            let conn = &mut *held.conn;
            // A frozen server answers nothing: every step on it is bounded.
            let limit = inner.replicas[index].checkout_timeout;
            if let Some(token) = needs.causal_token.filter(|_| verify_token) {
                let asked =
                    tokio::time::timeout(limit + wait, Box::pin(replayed(conn, token, wait)));
                match asked.await.unwrap_or_else(|_| Err(no_answer(limit + wait))) {
                    Ok(true) => health.note_replay(token.lsn()),
                    Ok(false) => {
                        // Waiting on the next replica too would add up the waits.
                        token_missed += 1;
                        break Exclusions::default();
                    }
                    Err(e) if is_no_answer(&e) || is_unreachable(&e, conn) => {
                        health.ban(format!("{role}: {e}"));
                        failures.push(format!("{role}: {e}"));
                        self.discard_replica();
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            health.count_routed(Reason::ScopeAllowsReplica.metric());
            let resolved = if owned.needs_lookup() {
                tokio::time::timeout(limit, owned.resolve(conn, &inner.types))
                    .await
                    .unwrap_or_else(|_| Err(no_answer(limit)))
            } else {
                Ok(())
            };
            let result = match resolved {
                Ok(()) => {
                    match first_row {
                        None => run(conn, &owned).await,
                        // A frozen server never starts answering; a slow query does, at once.
                        Some(first_row) => {
                            match tokio::time::timeout(limit, run(conn, &owned)).await {
                                Ok(Ok(stream)) => first_row(stream).await,
                                Ok(Err(e)) => Err(e),
                                Err(_) => Err(no_answer(limit)),
                            }
                        }
                    }
                }
                Err(e) => Err(e),
            };
            match result {
                Ok(value) => {
                    tracing::debug!(target: "routing_core", server = %role, "read served");
                    return Ok(value);
                }
                Err(e) if is_read_only_violation(&e) && inner.retry_refused_writes => {
                    tracing::warn!(
                        target: "routing_core",
                        server = %role,
                        sql = owned.sql(),
                        "a statement classified as a read was refused by the replica as a write; \
                         running it on the primary (register its functions with \
                         Classifier::primary_functions)"
                    );
                    self.mark_written();
                    return Box::pin(self.run_on(
                        Target::Primary,
                        owned,
                        run,
                        Reason::RefusedAsWrite.metric(),
                    ))
                    .await;
                }
                // A query cancelled by a conflict with recovery: this replica is fine, the next
                // one may serve it.
                Err(e) if is_recovery_conflict(&e) && !conn.is_broken() => {
                    failures.push(format!("{role}: {e}"));
                }
                Err(e) if is_no_answer(&e) || is_unreachable(&e, conn) => {
                    health.ban(format!("{e}"));
                    failures.push(format!("{role}: {e}"));
                    self.discard_replica();
                }
                Err(e) => return Err(e),
            }
        };
        exclusions.behind_token += token_missed;
        exclusions.failures = failures;
        if exclusions.all_unreachable() && !inner.fallback_to_primary {
            return Err(Error::NoReplicaAvailable {
                reasons: exclusions.to_string(),
            }
            .into_diesel());
        }
        let reason = if exclusions.failures.is_empty() {
            Reason::NoReplicaEligible(&exclusions)
        } else {
            Reason::Fallback
        };
        log_decision(Target::Primary, &reason);
        if !exclusions.failures.is_empty() {
            metrics::counter!("routing_fallbacks_total").increment(1);
        }
        let metric = reason.metric();
        Box::pin(self.run_on(Target::Primary, owned, run, metric)).await
    }
}

/// Whether the replica on `conn` has replayed `token`, asking again for up to `wait`.
async fn replayed(
    conn: &mut AsyncPgConnection,
    token: CausalToken,
    wait: Duration,
) -> QueryResult<bool> {
    let deadline = Instant::now() + wait;
    loop {
        let done: bool = diesel::select(
            diesel::dsl::sql::<Bool>("coalesce(pg_last_wal_replay_lsn() >= ")
                .bind::<Text, _>(token.lsn_text())
                .sql("::pg_lsn, false)"),
        )
        .get_result(conn)
        .await?;
        let now = Instant::now();
        if done || now >= deadline {
            return Ok(done);
        }
        tokio::time::sleep((deadline - now).min(Duration::from_millis(5))).await;
    }
}

const NO_ANSWER: &str = "the replica did not start answering within";

fn no_answer(limit: Duration) -> DieselError {
    DieselError::DatabaseError(
        DatabaseErrorKind::UnableToSendCommand,
        Box::new(format!("{NO_ANSWER} {limit:?}")),
    )
}

/// A statement a standby cancelled because replay needed what it read.
fn is_recovery_conflict(e: &DieselError) -> bool {
    matches!(e, DieselError::DatabaseError(_, info) if info.message().contains("conflict with recovery"))
}

fn is_no_answer(e: &DieselError) -> bool {
    matches!(e, DieselError::DatabaseError(_, info) if info.message().starts_with(NO_ANSWER))
}
