//! What the pool knows to check the causal tokens that clients send: the primary's last known
//! WAL position, how many tokens were ignored as forged, and the bound on reads waiting for a
//! replica to catch up.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::causal::{CausalToken, ReadYourWrites};

/// How far in the future a token's time may be (clocks differ between hosts).
pub(crate) const CLOCK_ALLOWANCE: Duration = Duration::from_secs(5);

/// The pool's state for checking causal tokens.
#[derive(Debug)]
pub(crate) struct Tokens {
    /// The highest WAL position the primary was seen at (probe or token check).
    primary_lsn: AtomicU64,
    /// Tokens ignored because they claimed a position or time not reached yet.
    forged: AtomicU64,
    /// Permits for reads that wait for a replica to replay their token.
    waits: Semaphore,
    /// When a discovering pool last saw its primary change, and the new primary's position
    /// then: tokens of writes from before, beyond that position, were never replicated.
    switch: std::sync::Mutex<Option<(u64, u64)>>,
}

/// What a token's check found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Within what the primary has reached.
    Plausible,
    /// Claims a WAL position beyond the last one known: ask the primary.
    Unknown,
    /// Claims a time in the future, or a position the primary has not reached.
    Forged,
}

impl Tokens {
    pub(crate) fn new(max_waits: usize) -> Self {
        Tokens {
            primary_lsn: AtomicU64::new(0),
            forged: AtomicU64::new(0),
            waits: Semaphore::new(max_waits),
            switch: std::sync::Mutex::new(None),
        }
    }

    /// Notes that a new primary took over at `at_ms`, standing at `lsn` (when known).
    pub(crate) fn note_switch(&self, at_ms: u64, lsn: Option<u64>) {
        if let Some(lsn) = lsn {
            // Positions the old primary reached but never replicated are not the new one's.
            self.primary_lsn.store(lsn, Ordering::Relaxed);
            *self.switch.lock().unwrap_or_else(|e| e.into_inner()) = Some((at_ms, lsn));
        }
    }

    /// Whether `token` is of a write from before the last change of primary that the new
    /// primary never received: no server will ever have replayed it.
    pub(crate) fn lost_in_failover(&self, token: &CausalToken) -> bool {
        self.switch
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|(at_ms, lsn)| token.written_at_ms() < at_ms && token.lsn() > lsn)
    }

    /// Notes that the primary stood at `lsn`.
    pub(crate) fn note_primary(&self, lsn: u64) {
        self.primary_lsn.fetch_max(lsn, Ordering::Relaxed);
    }

    /// Checks `token` in `mode` at `now_ms` against what is known, without asking anyone.
    pub(crate) fn check(&self, token: &CausalToken, mode: ReadYourWrites, now_ms: u64) -> Verdict {
        let allowance = u64::try_from(CLOCK_ALLOWANCE.as_millis()).unwrap_or(u64::MAX);
        if token.written_at_ms() > now_ms.saturating_add(allowance) {
            return Verdict::Forged;
        }
        match mode {
            ReadYourWrites::TimeWindow(_) => Verdict::Plausible,
            ReadYourWrites::Lsn { .. }
                if token.lsn() <= self.primary_lsn.load(Ordering::Relaxed) =>
            {
                Verdict::Plausible
            }
            ReadYourWrites::Lsn { .. } => Verdict::Unknown,
        }
    }

    /// Counts a token ignored as forged.
    pub(crate) fn count_forged(&self) {
        self.forged.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(super::telemetry::FORGED_TOKENS).increment(1);
    }

    /// How many tokens were ignored as forged.
    pub(crate) fn forged(&self) -> u64 {
        self.forged.load(Ordering::Relaxed)
    }

    /// The reads that may wait for a replica to catch up at once.
    pub(crate) fn waits(&self) -> &Semaphore {
        &self.waits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_000_000_000;

    fn token(text: &str) -> CausalToken {
        text.parse().unwrap()
    }

    #[test]
    fn tokens_beyond_the_primary_or_in_the_future_are_caught() {
        let tokens = Tokens::new(1);
        tokens.note_primary(0x500);
        let lsn = ReadYourWrites::Lsn {
            wait: Duration::ZERO,
        };
        let window = ReadYourWrites::TimeWindow(Duration::from_secs(2));
        assert_eq!(
            tokens.check(&token(&format!("0/400@{NOW}")), lsn, NOW),
            Verdict::Plausible
        );
        assert_eq!(
            tokens.check(&token(&format!("0/600@{NOW}")), lsn, NOW),
            Verdict::Unknown
        );
        assert_eq!(
            tokens.check(&token("FFFFFFFF/FFFFFFFF@0"), lsn, NOW),
            Verdict::Unknown
        );
        let ahead = NOW + 10 * 365 * 24 * 3600 * 1000;
        assert_eq!(
            tokens.check(&token(&format!("0/0@{ahead}")), window, NOW),
            Verdict::Forged
        );
        assert_eq!(
            tokens.check(&token(&format!("0/0@{}", NOW + 1000)), window, NOW),
            Verdict::Plausible
        );
        tokens.note_primary(0x100);
        assert_eq!(
            tokens.check(&token(&format!("0/500@{NOW}")), lsn, NOW),
            Verdict::Plausible
        );
    }
}
