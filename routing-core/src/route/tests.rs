//! The routing rules as tables: every row is one situation and the route the rules give.

use std::time::Duration;

use super::*;
use crate::causal::CausalToken;
use crate::config::RoutedPoolBuilder;
use crate::policy::Candidate;

const NOW: u64 = 1_000_000;

fn config() -> Config {
    RoutedPoolBuilder::new("postgres://h/db".to_owned())
        .into_config()
        .unwrap()
}

fn with(f: impl FnOnce(RoutedPoolBuilder) -> RoutedPoolBuilder) -> Config {
    f(RoutedPoolBuilder::new("postgres://h/db".to_owned()))
        .into_config()
        .unwrap()
}

fn state() -> State {
    State {
        replicas: 2,
        ..State::default()
    }
}

fn replica_scope() -> ReadNeeds {
    ReadNeeds {
        use_read_replica: true,
        ..ReadNeeds::default()
    }
}

fn token(lsn: u64, written_at_ms: u64) -> CausalToken {
    format!("0/{lsn:X}@{written_at_ms}").parse().unwrap()
}

const READ_ONLY: Statement = Statement::Begin {
    read_only: true,
    serializable: false,
};
const READ_WRITE: Statement = Statement::Begin {
    read_only: false,
    serializable: false,
};
const SERIALIZABLE_READ_ONLY: Statement = Statement::Begin {
    read_only: true,
    serializable: true,
};

fn primary(reason: Reason) -> Route {
    Route::primary(reason)
}

fn replica(reason: Reason) -> Route {
    Route::new(Target::Replica, reason)
}

#[test]
#[rustfmt::skip]
fn where_a_statement_goes() {
    let pinned_primary = State {
        pinned: Some(Target::Primary),
        ..state()
    };
    let pinned_replica = State {
        pinned: Some(Target::Replica),
        ..state()
    };
    let wrote = State {
        wrote: true,
        ..state()
    };
    let testing = State {
        test_transaction: true,
        ..state()
    };
    let no_replicas = State {
        replicas: 0,
        ..state()
    };
    let config = config();
    let outside = ReadNeeds::default();
    let request_wrote = ReadNeeds {
        request_wrote: true,
        ..replica_scope()
    };
    let window = with(|b| b.read_your_writes(ReadYourWrites::TimeWindow(Duration::from_secs(2))));
    let recent = ReadNeeds {
        causal_token: Some(token(16, NOW - 500)),
        ..replica_scope()
    };
    let old = ReadNeeds {
        causal_token: Some(token(16, NOW - 5_000)),
        ..replica_scope()
    };
    let rows: Vec<(&str, State, Statement, ReadNeeds, &Config, Route)> = vec![
        // 1. Transactions run on one server.
        ("statement in a primary transaction", pinned_primary, Statement::Read, replica_scope(), &config, primary(Reason::Transaction)),
        ("write in a primary transaction", pinned_primary, Statement::Write, replica_scope(), &config, primary(Reason::Transaction)),
        ("read in a replica transaction", pinned_replica, Statement::Read, replica_scope(), &config, replica(Reason::Transaction)),
        ("savepoint in a replica transaction", pinned_replica, READ_WRITE, outside, &config, replica(Reason::Transaction)),
        ("read-write transaction in a replica scope", state(), READ_WRITE, replica_scope(), &config, primary(Reason::Transaction)),
        ("read-only transaction in a replica scope", state(), READ_ONLY, replica_scope(), &config, replica(Reason::ScopeAllowsReplica)),
        ("read-only transaction outside every scope", state(), READ_ONLY, outside, &config, primary(Reason::ScopeDeniesReplica)),
        ("serializable read-only transaction", state(), SERIALIZABLE_READ_ONLY, replica_scope(), &config, primary(Reason::Transaction)),
        ("read-only transaction after the request wrote", state(), READ_ONLY, request_wrote, &config, primary(Reason::RequestWrote)),
        ("read-only transaction in the causal window", state(), READ_ONLY, recent, &window, primary(Reason::CausalWindow)),
        ("read in a test transaction", testing, Statement::Read, replica_scope(), &config, primary(Reason::TestTransaction)),
        ("read-only transaction in a test transaction", testing, READ_ONLY, replica_scope(), &config, primary(Reason::TestTransaction)),
        // 2. Writes go to the primary.
        ("write in a replica scope", state(), Statement::Write, replica_scope(), &config, primary(Reason::Write)),
        ("write outside every scope", state(), Statement::Write, outside, &config, primary(Reason::Write)),
        ("read a replica refused before, in a replica scope", state(), Statement::Learned, replica_scope(), &config, primary(Reason::RefusedAsWrite)),
        ("read a replica refused before, in a replica transaction", pinned_replica, Statement::Learned, replica_scope(), &config, replica(Reason::Transaction)),
        ("read a replica refused before, after a write", wrote, Statement::Learned, replica_scope(), &config, primary(Reason::AfterWrite)),
        // 3. After a write, reads stay on the primary.
        ("read after a write", wrote, Statement::Read, replica_scope(), &config, primary(Reason::AfterWrite)),
        ("read-only transaction after a write", wrote, READ_ONLY, replica_scope(), &config, primary(Reason::AfterWrite)),
        // 4. Reads follow the scope.
        ("read in a replica scope", state(), Statement::Read, replica_scope(), &config, replica(Reason::ScopeAllowsReplica)),
        ("read outside every scope", state(), Statement::Read, outside, &config, primary(Reason::ScopeDeniesReplica)),
        ("read after the request wrote elsewhere", state(), Statement::Read, request_wrote, &config, primary(Reason::RequestWrote)),
        ("read without replicas", no_replicas, Statement::Read, replica_scope(), &config, primary(Reason::NoReplicas)),
        ("read in the causal time window", state(), Statement::Read, recent, &window, primary(Reason::CausalWindow)),
        ("read after the causal time window", state(), Statement::Read, old, &window, replica(Reason::ScopeAllowsReplica)),
        ("read with an LSN token: the pick decides", state(), Statement::Read, recent, &config, replica(Reason::ScopeAllowsReplica)),
        // The escape hatch.
        ("escape hatch in a replica scope", state(), Statement::Forced, replica_scope(), &config, primary(Reason::Forced)),
        ("escape hatch in a replica transaction", pinned_replica, Statement::Forced, replica_scope(), &config, primary(Reason::Forced)),
    ];
    for (name, state, statement, needs, config, expected) in rows {
        assert_eq!(decide(&state, statement, &needs, config, || NOW), expected, "{name}");
        let fixed = fixed(&state, statement);
        assert!(fixed.is_none_or(|route| route == expected), "{name}: fixed {fixed:?}");
    }
}

fn view(index: usize) -> ReplicaView {
    ReplicaView {
        candidate: Candidate::new(index),
        banned: false,
        standby: true,
        replay_lsn: None,
    }
}

fn banned(index: usize) -> ReplicaView {
    ReplicaView {
        banned: true,
        ..view(index)
    }
}

fn lagging(index: usize, seconds: u64) -> ReplicaView {
    ReplicaView {
        candidate: Candidate::new(index).with_lag(Duration::from_secs(seconds)),
        ..view(index)
    }
}

fn replayed(index: usize, lsn: u64) -> ReplicaView {
    ReplicaView {
        replay_lsn: Some(lsn),
        ..view(index)
    }
}

fn chosen(index: usize) -> Pick {
    Pick::Replica {
        index,
        verify_token: false,
    }
}

fn none(banned: usize, lagging: usize, behind_token: usize) -> Pick {
    Pick::None(Exclusions {
        banned,
        lagging,
        behind_token,
        ..Exclusions::default()
    })
}

fn primary_node(index: usize) -> ReplicaView {
    ReplicaView {
        standby: false,
        ..view(index)
    }
}

/// Replicas, those tried, the one held, the context's needs, the pool, whether unverified
/// replicas may be asked, and the pick.
type PickRow<'a> = (
    &'a str,
    Vec<ReplicaView>,
    &'a [usize],
    Option<usize>,
    &'a ReadNeeds,
    &'a Config,
    bool,
    Pick,
);

#[test]
#[rustfmt::skip]
fn which_replica_serves_a_read() {
    // The last candidate, so that the table shows which replicas were candidates.
    let last = with(|b| b.policy(|c: &[Candidate]| c.len() - 1));
    let bytes = with(|b| b.policy(|c: &[Candidate]| c.len() - 1).max_lag_bytes(Some(100)));
    let unbounded = with(|b| b.policy(|c: &[Candidate]| c.len() - 1).max_lag(None));
    let budget = ReadNeeds {
        max_lag: Some(Duration::from_secs(2)),
        ..replica_scope()
    };
    let after = ReadNeeds {
        causal_token: Some(token(50, NOW)),
        ..replica_scope()
    };
    let window = with(|b| {
        b.policy(|c: &[Candidate]| c.len() - 1)
            .read_your_writes(ReadYourWrites::TimeWindow(Duration::from_secs(1)))
    });
    let heavy = ReplicaView {
        candidate: Candidate::new(1).with_lag_bytes(500),
        ..view(1)
    };
    let scope = replica_scope();
    let rows: Vec<PickRow<'_>> = vec![
        ("the policy chooses among healthy replicas", vec![view(0), view(1)], &[], None, &scope, &last, false, chosen(1)),
        ("a banned replica is passed over", vec![view(0), banned(1)], &[], None, &scope, &last, false, chosen(0)),
        ("a discovered primary is no replica", vec![view(0), primary_node(1)], &[], None, &scope, &last, false, chosen(0)),
        ("only the primary answers", vec![primary_node(0)], &[], None, &scope, &last, false, Pick::None(Exclusions { not_standby: 1, ..Exclusions::default() })),
        ("every replica banned", vec![banned(0), banned(1)], &[], None, &scope, &last, false, none(2, 0, 0)),
        ("a replica past the pool's max_lag (30 s)", vec![view(0), lagging(1, 31)], &[], None, &scope, &last, false, chosen(0)),
        ("the pool bound off", vec![view(0), lagging(1, 31)], &[], None, &scope, &unbounded, false, chosen(1)),
        ("a request budget tightens the bound", vec![lagging(0, 1), lagging(1, 3)], &[], None, &budget, &last, false, chosen(0)),
        ("a request budget with the pool bound off", vec![lagging(0, 3)], &[], None, &budget, &unbounded, false, none(0, 1, 0)),
        ("a replica past max_lag_bytes", vec![view(0), heavy], &[], None, &scope, &bytes, false, chosen(0)),
        ("a tried replica is not tried again", vec![view(0), view(1)], &[1], None, &scope, &last, false, chosen(0)),
        ("every replica tried", vec![view(0), view(1)], &[0, 1], None, &scope, &last, false, none(0, 0, 0)),
        ("the held replica wins when eligible", vec![view(0), view(1)], &[], Some(0), &scope, &last, false, chosen(0)),
        ("the held replica when it lags", vec![lagging(0, 60), view(1)], &[], Some(0), &scope, &last, false, chosen(1)),
        ("a token replayed by one replica", vec![replayed(0, 60), replayed(1, 40)], &[], None, &after, &last, false, chosen(0)),
        ("a token no replica is known to have replayed", vec![replayed(0, 40), view(1)], &[], None, &after, &last, true, Pick::Replica { index: 1, verify_token: true }),
        ("the same, without asking replicas", vec![replayed(0, 40), view(1)], &[], None, &after, &last, false, none(0, 0, 2)),
        ("the held replica behind the token", vec![replayed(0, 40), replayed(1, 50)], &[], Some(0), &after, &last, false, chosen(1)),
        ("a time-window token does not look at replay", vec![replayed(0, 40), replayed(1, 40)], &[], None, &after, &window, false, chosen(1)),
    ];
    for (name, replicas, tried, held, needs, config, allow_unverified, expected) in rows {
        let got = pick(replicas, tried, held, needs, config, allow_unverified);
        assert_eq!(got, expected, "{name}");
    }
}

#[test]
fn round_robin_is_the_default_policy() {
    let config = config();
    let picks: Vec<Pick> = (0..4)
        .map(|_| {
            pick(
                [view(0), view(1)],
                &[],
                None,
                &replica_scope(),
                &config,
                false,
            )
        })
        .collect();
    assert_eq!(picks, [chosen(0), chosen(1), chosen(0), chosen(1)]);
}

#[test]
#[rustfmt::skip]
fn what_happens_to_a_read_no_replica_served() {
    let config = config();
    let strict = with(|b| b.fallback_to_primary(false));
    let down = Exclusions {
        banned: 2,
        ..Exclusions::default()
    };
    let behind = Exclusions {
        behind_token: 1,
        ..Exclusions::default()
    };
    let lag = Exclusions {
        lagging: 1,
        banned: 1,
        ..Exclusions::default()
    };
    let rows: Vec<(&str, Exclusions, usize, &Config, Option<Route>)> = vec![
        ("every replica banned, fallback on", down, 0, &config, Some(primary(Reason::NoReplicaEligible))),
        ("replicas failed when tried, fallback on", Exclusions::default(), 2, &config, Some(primary(Reason::Fallback))),
        ("every replica banned, fallback off", down, 0, &strict, None),
        ("replicas failed when tried, fallback off", Exclusions::default(), 2, &strict, None),
        ("behind the causal token, fallback off", behind, 0, &strict, Some(primary(Reason::NoReplicaEligible))),
        ("lagging, fallback off", lag, 1, &strict, Some(primary(Reason::Fallback))),
    ];
    for (name, exclusions, failures, config, expected) in rows {
        assert_eq!(fallback(&exclusions, failures, config), expected, "{name}");
    }
}

#[test]
#[rustfmt::skip]
fn what_a_replica_failure_means_for_the_read() {
    let rows: Vec<(&str, Failure, bool, AfterFailure)> = vec![
        ("the statement's own error", Failure::Statement, false, AfterFailure::Fatal),
        ("refused as a write", Failure::RefusedAsWrite, false, AfterFailure::Refused),
        ("recovery conflict, connection open", Failure::RecoveryConflict, false, AfterFailure::Next { ban: false, discard: false }),
        ("recovery conflict, connection closed", Failure::RecoveryConflict, true, AfterFailure::Next { ban: false, discard: true }),
        ("server unreachable", Failure::Unreachable, true, AfterFailure::Next { ban: true, discard: true }),
        ("server unreachable, connection looks open", Failure::Unreachable, false, AfterFailure::Next { ban: true, discard: true }),
    ];
    for (name, failure, broken, expected) in rows {
        assert_eq!(after_failure(failure, broken), expected, "{name}");
    }
}

#[test]
fn a_refused_read_goes_to_the_primary_unless_the_pool_says_not_to() {
    assert_eq!(
        after_refusal(&config()),
        Some(primary(Reason::RefusedAsWrite))
    );
    let strict = with(|b| b.retry_writes_refused_by_replica(false));
    assert_eq!(after_refusal(&strict), None);
}
