//! Choosing a replica among the eligible ones: the [`ReplicaPolicy`] trait, its built-in
//! implementations, and [`Candidate`], what a policy sees of a replica.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// An eligible replica, as a [`ReplicaPolicy`] sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Candidate {
    /// The replica's index, in configuration order.
    pub index: usize,
    /// Its weight (see `RoutedPoolBuilder::replica_with_weight`); at least 1.
    pub weight: u32,
    /// How many routed connections hold a connection to it right now.
    pub in_flight: usize,
    /// The round trip of its last health probe, when known.
    pub latency: Option<Duration>,
    /// Its lag behind the primary in time, when known.
    pub lag: Option<Duration>,
    /// Its lag behind the primary in bytes of WAL, when known.
    pub lag_bytes: Option<u64>,
}

impl Candidate {
    /// A replica at `index` of weight 1, with nothing in flight and nothing known of its latency
    /// and lag: a starting point for testing a policy.
    ///
    /// ```
    /// use std::time::Duration;
    /// use routing_core::policy::{Candidate, LowestLatency, ReplicaPolicy};
    ///
    /// let near = Candidate::new(0).with_latency(Duration::from_millis(1));
    /// let far = Candidate::new(1).with_latency(Duration::from_millis(40));
    /// assert_eq!(LowestLatency::new().choose(&[far, near]), 1);
    /// ```
    pub fn new(index: usize) -> Self {
        Candidate {
            index,
            weight: 1,
            in_flight: 0,
            latency: None,
            lag: None,
            lag_bytes: None,
        }
    }

    /// This candidate with weight `weight`.
    #[must_use]
    pub fn with_weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }

    /// This candidate with `in_flight` connections in use.
    #[must_use]
    pub fn with_in_flight(mut self, in_flight: usize) -> Self {
        self.in_flight = in_flight;
        self
    }

    /// This candidate with a probe round trip of `latency`.
    #[must_use]
    pub fn with_latency(mut self, latency: Duration) -> Self {
        self.latency = Some(latency);
        self
    }

    /// This candidate lagging `lag` behind the primary.
    #[must_use]
    pub fn with_lag(mut self, lag: Duration) -> Self {
        self.lag = Some(lag);
        self
    }

    /// This candidate `lag_bytes` of WAL behind the primary.
    #[must_use]
    pub fn with_lag_bytes(mut self, lag_bytes: u64) -> Self {
        self.lag_bytes = Some(lag_bytes);
        self
    }
}

/// Picks the replica that serves a read.
///
/// `choose` gets the eligible replicas (healthy, within the lag bounds), never an empty slice,
/// and returns a position in it; a position out of range wraps around. A read that fails on the
/// chosen replica asks again without it. Any `Fn(&[Candidate]) -> usize` is a policy:
///
/// ```
/// use routing_core::RoutedPool;
/// use routing_core::policy::Candidate;
///
/// // Always the first configured replica that is eligible: a primary/secondary setup.
/// let pool = RoutedPool::builder("postgres://app@primary/app")
///     .replica("postgres://app@near/app")
///     .replica("postgres://app@far/app")
///     .policy(|candidates: &[Candidate]| 0)
///     .build();
/// ```
pub trait ReplicaPolicy: Send + Sync + 'static {
    /// The position in `candidates` of the replica to use.
    fn choose(&self, candidates: &[Candidate]) -> usize;
}

impl<F> ReplicaPolicy for F
where
    F: Fn(&[Candidate]) -> usize + Send + Sync + 'static,
{
    fn choose(&self, candidates: &[Candidate]) -> usize {
        self(candidates)
    }
}

/// Takes the replicas in turn, each as often as its weight. The default.
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl RoundRobin {
    /// A round robin starting at the first replica.
    pub fn new() -> Self {
        RoundRobin::default()
    }
}

impl ReplicaPolicy for RoundRobin {
    fn choose(&self, candidates: &[Candidate]) -> usize {
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        by_weight(candidates, turn)
    }
}

/// Picks a replica at random, in proportion to its weight.
#[derive(Debug, Default, Clone, Copy)]
pub struct Random;

impl ReplicaPolicy for Random {
    fn choose(&self, candidates: &[Candidate]) -> usize {
        let total = total_weight(candidates);
        by_weight(candidates, fastrand::usize(..total.max(1)))
    }
}

/// Picks the replica with the fewest connections in use per unit of weight; ties go round.
#[derive(Debug, Default)]
pub struct LeastOutstanding {
    tie: AtomicUsize,
}

impl LeastOutstanding {
    /// A least-outstanding policy.
    pub fn new() -> Self {
        LeastOutstanding::default()
    }
}

impl ReplicaPolicy for LeastOutstanding {
    fn choose(&self, candidates: &[Candidate]) -> usize {
        // Compare in_flight / weight without division: a.in_flight * b.weight.
        let load = |c: &Candidate| (c.in_flight as u128, u128::from(c.weight.max(1)));
        let best = candidates
            .iter()
            .map(load)
            .min_by(|a, b| (a.0 * b.1).cmp(&(b.0 * a.1)));
        let Some(best) = best else { return 0 };
        let is_best = |c: &Candidate| {
            let l = load(c);
            l.0 * best.1 == best.0 * l.1
        };
        nth_tied(
            candidates,
            is_best,
            self.tie.fetch_add(1, Ordering::Relaxed),
        )
    }
}

/// Picks the replica whose health probe answered fastest: the nearest replica of a multi-region
/// setup. Replicas not probed yet count as slowest; ties go round.
#[derive(Debug, Default)]
pub struct LowestLatency {
    tie: AtomicUsize,
}

impl LowestLatency {
    /// A lowest-latency policy.
    pub fn new() -> Self {
        LowestLatency::default()
    }
}

impl ReplicaPolicy for LowestLatency {
    fn choose(&self, candidates: &[Candidate]) -> usize {
        let latency = |c: &Candidate| c.latency.unwrap_or(Duration::MAX);
        let Some(best) = candidates.iter().map(latency).min() else {
            return 0;
        };
        nth_tied(
            candidates,
            |c| latency(c) == best,
            self.tie.fetch_add(1, Ordering::Relaxed),
        )
    }
}

/// The position of the `turn`-th (wrapping) candidate for which `tied` holds, without allocating.
fn nth_tied(candidates: &[Candidate], tied: impl Fn(&Candidate) -> bool, turn: usize) -> usize {
    let count = candidates.iter().filter(|c| tied(c)).count();
    if count == 0 {
        return 0;
    }
    candidates
        .iter()
        .enumerate()
        .filter(|(_, c)| tied(c))
        .nth(turn % count)
        .map_or(0, |(position, _)| position)
}

fn total_weight(candidates: &[Candidate]) -> usize {
    candidates.iter().map(|c| c.weight.max(1) as usize).sum()
}

/// The candidate that the `ticket`-th slot of a weighted cycle falls on.
fn by_weight(candidates: &[Candidate], ticket: usize) -> usize {
    let total = total_weight(candidates);
    if total == 0 {
        return 0;
    }
    let mut slot = ticket % total;
    for (position, candidate) in candidates.iter().enumerate() {
        let weight = candidate.weight.max(1) as usize;
        if slot < weight {
            return position;
        }
        slot -= weight;
    }
    0
}

/// A shared policy, printable for `Debug` output.
#[derive(Clone)]
pub(crate) struct Policy(pub(crate) std::sync::Arc<dyn ReplicaPolicy>);

impl fmt::Debug for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ReplicaPolicy")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidates(weights: &[u32]) -> Vec<Candidate> {
        weights
            .iter()
            .enumerate()
            .map(|(index, &weight)| Candidate::new(index).with_weight(weight))
            .collect()
    }

    fn counts(policy: &dyn ReplicaPolicy, candidates: &[Candidate], rounds: usize) -> Vec<usize> {
        let mut counts = vec![0; candidates.len()];
        for _ in 0..rounds {
            counts[policy.choose(candidates) % candidates.len()] += 1;
        }
        counts
    }

    #[test]
    fn round_robin_follows_weights_exactly() {
        assert_eq!(
            counts(&RoundRobin::new(), &candidates(&[1, 1]), 100),
            [50, 50]
        );
        assert_eq!(
            counts(&RoundRobin::new(), &candidates(&[1, 3]), 100),
            [25, 75]
        );
    }

    #[test]
    fn random_follows_weights_roughly() {
        let counts = counts(&Random, &candidates(&[1, 3]), 40_000);
        assert!((9_000..11_000).contains(&counts[0]), "{counts:?}");
    }

    #[test]
    fn least_outstanding_prefers_the_least_loaded_per_weight() {
        let mut c = candidates(&[1, 2, 1]);
        c[0].in_flight = 3;
        c[1].in_flight = 4;
        c[2].in_flight = 1;
        assert_eq!(LeastOutstanding::new().choose(&c), 2);
        c[2].in_flight = 5;
        // 4 / 2 = 2 beats 3 / 1.
        assert_eq!(LeastOutstanding::new().choose(&c), 1);
        // Ties go round.
        let policy = LeastOutstanding::new();
        assert_eq!(counts(&policy, &candidates(&[1, 1]), 10), [5, 5]);
    }

    #[test]
    fn lowest_latency_prefers_the_nearest_and_treats_unknown_as_far() {
        let mut c = candidates(&[1, 1, 1]);
        c[0].latency = Some(Duration::from_millis(20));
        c[1].latency = Some(Duration::from_millis(2));
        assert_eq!(LowestLatency::new().choose(&c), 1);
        c[1].latency = None;
        assert_eq!(LowestLatency::new().choose(&c), 0);
    }

    #[test]
    fn closures_are_policies() {
        let last = |c: &[Candidate]| c.len() - 1;
        assert_eq!(last.choose(&candidates(&[1, 1, 1])), 2);
    }
}
