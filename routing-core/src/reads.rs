//! What a read decides around its I/O, shared by the async connection (`connection/read.rs`)
//! and the sync one (`sync/read.rs`): the check of its causal token, the bookkeeping of its
//! replica attempts (which replicas were tried, why they failed, where the read goes when none
//! served it), and what a replica's failure or refusal means. The rules themselves are in
//! `route.rs`; here they meet the pool's shared state (bans, learned statements, tokens).

use diesel::result::Error as DieselError;
use smallvec::SmallVec;

use crate::causal::{CausalToken, now_ms};
use crate::context::ReadNeeds;
use crate::error::{Error, Role};
use crate::failure::{self, Failure};
use crate::route::{self, AfterFailure, Exclusions, Pick, ReplicaView, Route};
use crate::servers::tokens::Verdict;
use crate::servers::{Shared, StatementKey};

/// How one attempt to serve a read on one replica ended.
pub(crate) enum Attempt<R> {
    /// The replica answered (for an async `load`, with its first row or the end of the result).
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

/// What the read loop does after an attempt.
pub(crate) enum Step<R> {
    /// Try the next replica.
    Again,
    /// The read is over: its value, or the statement's own error.
    Return(Result<R, DieselError>),
    /// The replica refused the statement as a write: see [`refusal`].
    Refused(DieselError),
    /// No more replicas: see [`ReadAttempts::fallback`].
    Fallback,
}

/// The replica attempts of one read (or of one read-only transaction looking for its
/// replica): which replicas were tried, why they failed, and where the read goes when none
/// served it.
///
/// ```text
/// while let Some((index, verify_token)) = attempts.next(..) {
///     match attempts.record(try the replica) { Again => {}, Return(r) => return r, .. }
/// }
/// attempts.fallback(shared)
/// ```
pub(crate) struct ReadAttempts {
    tried: SmallVec<[usize; 8]>,
    failures: Vec<Error>,
    behind: usize,
    /// Why replicas were passed over, once none is left to try.
    exclusions: Option<Exclusions>,
}

impl ReadAttempts {
    pub(crate) fn new() -> Self {
        ReadAttempts {
            tried: SmallVec::new(),
            failures: Vec::new(),
            behind: 0,
            exclusions: None,
        }
    }

    /// The next replica to try, and whether to ask it first whether it replayed the causal
    /// token: the `held` one when it is eligible, else the pool's policy picks among those not
    /// tried (see [`route::pick`]). `None` when none is left.
    pub(crate) fn next(
        &mut self,
        shared: &Shared,
        held: Option<usize>,
        needs: &ReadNeeds,
        allow_unverified: bool,
    ) -> Option<(usize, bool)> {
        if self.exclusions.is_some() {
            return None;
        }
        let pick = route::pick(
            replica_views(shared),
            &self.tried,
            held,
            needs,
            shared.config(),
            allow_unverified,
        );
        match pick {
            Pick::Replica {
                index,
                verify_token,
            } => {
                self.tried.push(index);
                Some((index, verify_token))
            }
            Pick::None(exclusions) => {
                self.exclusions = Some(exclusions);
                None
            }
        }
    }

    /// Notes that the replica tried last failed with `error`: the next one may serve.
    pub(crate) fn failed(&mut self, error: Error) {
        self.failures.push(error);
    }

    /// What the read does after `attempt`.
    pub(crate) fn record<R>(&mut self, attempt: Attempt<R>) -> Step<R> {
        match attempt {
            Attempt::Served(value) => Step::Return(Ok(value)),
            Attempt::Next(error) => {
                self.failed(error);
                Step::Again
            }
            Attempt::Behind => {
                self.behind += 1;
                self.exclusions = Some(Exclusions::default());
                Step::Fallback
            }
            Attempt::Refused(error) => Step::Refused(error),
            Attempt::Fatal(error) => Step::Return(Err(error)),
        }
    }

    /// Where a read goes that no replica served: the primary (logged), or an error when every
    /// replica is down and falling back is off (see [`route::fallback`]).
    pub(crate) fn fallback(self, shared: &Shared) -> Result<Route, Error> {
        let mut exclusions = self.exclusions.unwrap_or_default();
        exclusions.behind_token += self.behind;
        let failures = self.failures;
        match route::fallback(&exclusions, failures.len(), shared.config()) {
            Some(route) => {
                route::log(route, Some(&exclusions));
                if !failures.is_empty() {
                    for failure in &failures {
                        tracing::debug!(target: "routing_core", error = %failure, "replica failed");
                    }
                    metrics::counter!("routing_fallbacks_total").increment(1);
                }
                Ok(route)
            }
            None => {
                // The replicas passed over as banned say why, after those that were tried.
                let mut failures = failures;
                if exclusions.banned > 0 {
                    failures.extend(
                        shared
                            .replicas()
                            .iter()
                            .enumerate()
                            .filter(|(index, server)| {
                                !self.tried.contains(index) && server.health().is_banned()
                            })
                            .map(|(_, server)| server.banned_error()),
                    );
                }
                Err(Error::NoReplicaAvailable {
                    banned: exclusions.banned,
                    not_standby: exclusions.not_standby,
                    lagging: exclusions.lagging,
                    behind_token: exclusions.behind_token,
                    failures,
                })
            }
        }
    }
}

/// What the router knows of each replica now.
pub(crate) fn replica_views(shared: &Shared) -> impl Iterator<Item = ReplicaView> + '_ {
    shared.replicas().iter().enumerate().map(|(index, server)| {
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

/// What `error` from replica `index` means for the read, given whether its connection is now
/// `broken`: the replica is banned when the rules say so ([`route::after_failure`]); the `bool`
/// says whether to close its connection instead of reusing it.
pub(crate) fn judge<R>(
    shared: &Shared,
    index: usize,
    error: DieselError,
    broken: bool,
) -> (Attempt<R>, bool) {
    let server = &shared.replicas()[index];
    let role = server.role();
    let failure = Failure::of(&error, broken);
    tracing::debug!(
        target: "routing_core",
        server = %role,
        ?failure,
        sqlstate = failure::known(&error).map(|known| known.sqlstate),
        %error,
        "read failed"
    );
    match route::after_failure(failure, broken) {
        AfterFailure::Fatal => (Attempt::Fatal(error), false),
        AfterFailure::Refused => (Attempt::Refused(error), false),
        AfterFailure::Next { ban, discard } => {
            let error = Error::Query {
                role,
                source: error,
            };
            if ban {
                server.health().ban(format!("{role}: {error}"));
            }
            (Attempt::Next(error), discard)
        }
    }
}

/// The pool learns that the statement `key` must run on the primary, and says so once.
pub(crate) fn learn(shared: &Shared, key: StatementKey, role: Role, sql: Option<&str>) {
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

/// A statement (`key`, `sql`) that replica `index` refused as a write (SQLSTATE 25006) before
/// any row reached the caller: the pool learns it, and it runs on the primary (the route,
/// logged) unless the pool says not to (the error for the caller).
pub(crate) fn refusal(
    shared: &Shared,
    index: usize,
    key: StatementKey,
    sql: Option<&str>,
    error: DieselError,
) -> Result<Route, DieselError> {
    let role = shared.replicas()[index].role();
    learn(shared, key, role, sql);
    match route::after_refusal(shared.config()) {
        Some(route) => {
            route::log(route, None);
            Ok(route)
        }
        None => Err(Error::RefusedAsWrite {
            role,
            after_rows: false,
            source: error,
        }
        .into_diesel()),
    }
}

/// The first look at a read's causal token, without asking anyone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TokenCheck {
    /// Within what the primary is known to have reached: the read honours it.
    Keep,
    /// Forged, or of a write a failover lost: the read ignores it.
    Drop,
    /// Beyond the last position known: ask the primary, then [`keep_token`].
    AskPrimary,
}

/// Checks `token` against what the pool knows: dropped when it is of a write the new primary
/// never received, or claims a time in the future.
pub(crate) fn check_token(shared: &Shared, token: &CausalToken) -> TokenCheck {
    let tokens = shared.tokens();
    if tokens.lost_in_failover(token) {
        tracing::debug!(
            target: "routing_core",
            %token,
            "dropping a causal token of a write the new primary never received"
        );
        return TokenCheck::Drop;
    }
    match tokens.check(token, shared.config().read_your_writes(), now_ms()) {
        Verdict::Plausible => TokenCheck::Keep,
        Verdict::Unknown => TokenCheck::AskPrimary,
        Verdict::Forged => {
            forged(shared, token);
            TokenCheck::Drop
        }
    }
}

/// Whether to keep `token`, given the primary's WAL position as asked (or why it could not
/// be): kept when the primary has reached it, or cannot say (the careful choice).
pub(crate) fn keep_token(
    shared: &Shared,
    token: &CausalToken,
    primary: Result<u64, Error>,
) -> bool {
    match primary {
        Ok(lsn) => {
            shared.tokens().note_primary(lsn);
            if token.lsn() <= lsn {
                return true;
            }
            forged(shared, token);
            false
        }
        Err(error) => {
            tracing::debug!(target: "routing_core", %error, "cannot check a causal token");
            true
        }
    }
}

fn forged(shared: &Shared, token: &CausalToken) {
    tracing::debug!(target: "routing_core", %token, "ignoring a forged causal token");
    shared.tokens().count_forged();
}
