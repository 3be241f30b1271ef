//! The routing rules, as pure functions: where a statement goes ([`decide`]), which replica
//! serves a read ([`pick`]), what a replica's failure means for the read ([`after_failure`],
//! [`after_refusal`]), and what happens to a read no replica served ([`fallback`]). No I/O, no
//! clock, no shared state: the connections (async and sync) gather the inputs, and plain
//! statements, transactions and the decision benchmark all go through here.

use std::fmt;
use std::time::Duration;

use smallvec::SmallVec;

use crate::causal::ReadYourWrites;
use crate::config::Config;
use crate::context::ReadNeeds;
use crate::failure::Failure;
use crate::policy::Candidate;
use crate::reason::Reason;

#[cfg(test)]
mod tests;

/// Where a statement goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    Primary,
    Replica,
}

impl Target {
    /// `primary` or `replica`.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Target::Primary => "primary",
            Target::Replica => "replica",
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// A decision: where a statement goes, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Route {
    pub(crate) target: Target,
    pub(crate) reason: Reason,
}

impl Route {
    const fn new(target: Target, reason: Reason) -> Self {
        Route { target, reason }
    }

    const fn primary(reason: Reason) -> Self {
        Route::new(Target::Primary, reason)
    }
}

/// What a connection's history and its pool say, before the statement is looked at.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct State {
    /// The server of the open transaction.
    pub(crate) pinned: Option<Target>,
    /// Whether the connection wrote before (or opened a read-write transaction).
    pub(crate) wrote: bool,
    /// Whether the pool is in a test transaction.
    pub(crate) test_transaction: bool,
    /// How many replicas the pool has.
    pub(crate) replicas: usize,
}

/// What a statement is, as far as routing goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Statement {
    /// Classified as a read.
    Read,
    /// Classified as a write (or not known to be a read), and `batch_execute`.
    Write,
    /// Classified as a read, but learned as a write: a replica refused it (SQLSTATE 25006).
    Learned,
    /// `RoutedConnection::primary`: the escape hatch.
    Forced,
    /// The start of a transaction (a savepoint inside one).
    Begin {
        /// `READ ONLY`.
        read_only: bool,
        /// `SERIALIZABLE`, which a hot standby does not support.
        serializable: bool,
    },
}

/// The decision that does not depend on the routing context: the escape hatch, an open
/// transaction, a test transaction, an earlier write, a write, a read-write transaction.
/// `None` for a read (and a read-only transaction), which [`decide`] routes by the context.
pub(crate) fn fixed(state: &State, statement: Statement) -> Option<Route> {
    match (state.pinned, statement) {
        (_, Statement::Forced) => Some(Route::primary(Reason::Forced)),
        (Some(target), _) => Some(Route::new(target, Reason::Transaction)),
        _ if state.test_transaction => Some(Route::primary(Reason::TestTransaction)),
        _ if state.wrote => Some(Route::primary(Reason::AfterWrite)),
        (None, Statement::Write) => Some(Route::primary(Reason::Write)),
        (None, Statement::Learned) => Some(Route::primary(Reason::RefusedAsWrite)),
        (
            None,
            Statement::Begin {
                read_only,
                serializable,
            },
        ) if !read_only || serializable => Some(Route::primary(Reason::Transaction)),
        (None, Statement::Read | Statement::Begin { .. }) => None,
    }
}

/// Where `statement` goes, on a connection in `state`, for code whose routing context asks
/// `needs`. `now_ms` tells the time (Unix milliseconds) when the causal time window needs it.
pub(crate) fn decide(
    state: &State,
    statement: Statement,
    needs: &ReadNeeds,
    config: &Config,
    now_ms: impl FnOnce() -> u64,
) -> Route {
    if let Some(route) = fixed(state, statement) {
        return route;
    }
    if !needs.use_read_replica {
        return Route::primary(Reason::ScopeDeniesReplica);
    }
    if needs.request_wrote {
        return Route::primary(Reason::RequestWrote);
    }
    if state.replicas == 0 {
        return Route::primary(Reason::NoReplicas);
    }
    if let (Some(token), ReadYourWrites::TimeWindow(window)) =
        (needs.causal_token, config.read_your_writes())
    {
        let age = Duration::from_millis(now_ms().saturating_sub(token.written_at_ms()));
        if age < window {
            return Route::primary(Reason::CausalWindow);
        }
    }
    Route::new(Target::Replica, Reason::ScopeAllowsReplica)
}

/// What the router knows of a replica when it picks one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ReplicaView {
    /// What a policy sees.
    pub(crate) candidate: Candidate,
    /// Out of rotation after a failure.
    pub(crate) banned: bool,
    /// A standby now (a discovering pool's primary is not).
    pub(crate) standby: bool,
    /// The WAL position it is known to have replayed.
    pub(crate) replay_lsn: Option<u64>,
}

/// Why replicas were passed over for a read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Exclusions {
    pub(crate) banned: usize,
    pub(crate) not_standby: usize,
    pub(crate) lagging: usize,
    pub(crate) behind_token: usize,
}

impl Exclusions {
    /// Whether every replica passed over was down (banned, failing, or not a standby), as
    /// opposed to lagging or not having replayed a causal token.
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
        if self.not_standby > 0 {
            write!(f, ", {} not standbys", self.not_standby)?;
        }
        Ok(())
    }
}

/// The replica chosen for a read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pick {
    /// Use replica `index`; with `verify_token`, ask it first whether it has replayed the causal
    /// token (the probe does not know).
    Replica { index: usize, verify_token: bool },
    /// No replica is eligible.
    None(Exclusions),
}

/// Chooses a replica for a read among `replicas` not in `tried`: not banned, within the lag
/// bounds (the pool's and the context's), and, with a causal token in LSN mode, known to have
/// replayed it (or, with `allow_unverified`, not known either way). The `held` replica wins when
/// it is eligible and caught up; else `config`'s policy chooses.
pub(crate) fn pick(
    replicas: impl IntoIterator<Item = ReplicaView>,
    tried: &[usize],
    held: Option<usize>,
    needs: &ReadNeeds,
    config: &Config,
    allow_unverified: bool,
) -> Pick {
    let token = match config.read_your_writes() {
        ReadYourWrites::Lsn { .. } => needs.causal_token,
        ReadYourWrites::TimeWindow(_) => None,
    };
    let lag_limit = match (config.max_lag(), needs.max_lag) {
        (Some(pool), Some(request)) => Some(pool.min(request)),
        (pool, request) => pool.or(request),
    };
    let mut exclusions = Exclusions::default();
    // On the stack for up to eight replicas: the decision allocates nothing.
    let mut caught_up: SmallVec<[Candidate; 8]> = SmallVec::new();
    let mut unverified: SmallVec<[Candidate; 8]> = SmallVec::new();
    for replica in replicas {
        let candidate = replica.candidate;
        if tried.contains(&candidate.index) {
            continue;
        }
        if replica.banned {
            exclusions.banned += 1;
            continue;
        }
        if !replica.standby {
            exclusions.not_standby += 1;
            continue;
        }
        let too_far = lag_limit
            .zip(candidate.lag)
            .is_some_and(|(limit, lag)| lag > limit)
            || config
                .max_lag_bytes()
                .zip(candidate.lag_bytes)
                .is_some_and(|(limit, bytes)| bytes > limit);
        if too_far {
            exclusions.lagging += 1;
            continue;
        }
        match token {
            Some(token) if replica.replay_lsn.is_none_or(|lsn| lsn < token.lsn()) => {
                if allow_unverified {
                    unverified.push(candidate);
                } else {
                    exclusions.behind_token += 1;
                }
            }
            _ => caught_up.push(candidate),
        }
    }
    if let Some(held) = held.filter(|held| caught_up.iter().any(|c| c.index == *held)) {
        return Pick::Replica {
            index: held,
            verify_token: false,
        };
    }
    // Borrowed, not moved: a move would copy the inline buffers.
    let (candidates, verify_token): (&[Candidate], bool) = if !caught_up.is_empty() {
        (&caught_up, false)
    } else if !unverified.is_empty() {
        (&unverified, true)
    } else {
        return Pick::None(exclusions);
    };
    let position = config.policy().choose(candidates) % candidates.len();
    Pick::Replica {
        index: candidates[position].index,
        verify_token,
    }
}

/// Where a read goes that no replica served, given why replicas were passed over and how many
/// failed when tried: the primary, or nowhere (`None`: fail with `NoReplicaAvailable`) when
/// every replica is down and falling back is off.
pub(crate) fn fallback(exclusions: &Exclusions, failures: usize, config: &Config) -> Option<Route> {
    if exclusions.all_unreachable() && !config.fallback_to_primary() {
        return None;
    }
    Some(Route::primary(if failures == 0 {
        Reason::NoReplicaEligible
    } else {
        Reason::Fallback
    }))
}

/// What a read does after the replica it ran on failed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AfterFailure {
    /// The statement's own error (a constraint, a syntax error, ...): the caller gets it.
    Fatal,
    /// The replica refused it as a write: see [`after_refusal`].
    Refused,
    /// The next replica may serve the read. With `ban`, this replica is taken out of rotation
    /// until a probe admits it; with `discard`, its connection is closed, not reused.
    Next { ban: bool, discard: bool },
}

/// What a read does after a replica failed it with `failure`, its connection now `broken` or
/// not.
pub(crate) fn after_failure(failure: Failure, broken: bool) -> AfterFailure {
    match failure {
        Failure::Statement => AfterFailure::Fatal,
        Failure::RefusedAsWrite => AfterFailure::Refused,
        // The server is fine; only a connection the conflict closed is dropped.
        Failure::RecoveryConflict => AfterFailure::Next {
            ban: false,
            discard: broken,
        },
        Failure::Unreachable => AfterFailure::Next {
            ban: true,
            discard: true,
        },
    }
}

/// Where a read goes that a replica refused as a write before any row reached the caller: the
/// primary, or nowhere (`None`: the refusal is the caller's error) when the pool does not retry
/// refused statements.
pub(crate) fn after_refusal(config: &Config) -> Option<Route> {
    config
        .retry_refused_writes()
        .then_some(Route::primary(Reason::RefusedAsWrite))
}

/// Logs a decision as a debug event naming the server and the reason (and what made it, for a
/// write or a read no replica served).
pub(crate) fn log(route: Route, detail: Option<&dyn fmt::Display>) {
    match detail {
        Some(detail) => tracing::debug!(
            target: "routing_core",
            server = %route.target,
            reason = %format_args!("{}: {detail}", route.reason),
            "route"
        ),
        None => tracing::debug!(
            target: "routing_core",
            server = %route.target,
            reason = %route.reason,
            "route"
        ),
    }
}
