//! What the router knows of each server: bans, lag, latency, load and statements routed. Every
//! field is an atomic, read without locks on the decision path.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::Notify;

use super::telemetry::{BANS, HEALTHY, LAG_BYTES, LAG_SECONDS, OPERATION_DURATION, QUERIES};
use crate::error::Role;
use crate::reason::Reason;

const UNKNOWN: u64 = u64::MAX;

/// The router's knowledge of one server. Every field is updated without locks on the read path
/// except the ban reason.
///
/// Aligned to a cache line pair, as are the parts every statement writes ([`Load`], the ban
/// signal): the `Arc`'s reference counts, changed by every lease, and the counters stay off the
/// lines every read checks (ban, lag), which clients on other cores would otherwise keep
/// taking from each other.
#[derive(Debug)]
#[repr(align(128))]
pub(crate) struct Health {
    label: Arc<str>,
    banned: AtomicBool,
    /// Whether the server is a standby, as far as the router knows: always for a configured
    /// replica, as the probe found for a node of a discovering pool.
    standby: AtomicBool,
    ban_reason: Mutex<Option<String>>,
    replay_lsn: AtomicU64,
    lag_bytes: AtomicU64,
    lag_micros: AtomicU64,
    latency_micros: AtomicU64,
    load: Load,
    failures: AtomicU64,
    bans: AtomicU64,
    /// `routing_queries_total` per reason, registered on first use.
    queries: [OnceLock<metrics::Counter>; Reason::COUNT],
    /// `db.client.operation.duration` by role (primary, replica) and outcome (ok, error),
    /// registered on first use.
    durations: [OnceLock<metrics::Histogram>; 4],
    /// Wakes the reads waiting on this server when it is banned.
    banned_now: BanSignal,
}

/// What every statement sent to a server writes.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Load {
    in_flight: AtomicUsize,
    /// Statements sent to this server, per reason.
    routed: [AtomicU64; Reason::COUNT],
}

/// The ban signal, which every read on a replica registers with while it runs.
#[derive(Debug, Default)]
#[repr(align(128))]
struct BanSignal(Notify);

impl Health {
    pub(crate) fn new(role: Role) -> Self {
        let label: Arc<str> = match role {
            Role::Primary => Arc::from("primary"),
            Role::Replica(index) => Arc::from(format!("replica{index}")),
            Role::Node(index) => Arc::from(format!("node{index}")),
        };
        Health {
            label,
            banned: AtomicBool::new(false),
            standby: AtomicBool::new(matches!(role, Role::Replica(_))),
            ban_reason: Mutex::new(None),
            replay_lsn: AtomicU64::new(UNKNOWN),
            lag_bytes: AtomicU64::new(UNKNOWN),
            lag_micros: AtomicU64::new(UNKNOWN),
            latency_micros: AtomicU64::new(UNKNOWN),
            load: Load::default(),
            failures: AtomicU64::new(0),
            bans: AtomicU64::new(0),
            queries: Default::default(),
            durations: Default::default(),
            banned_now: BanSignal::default(),
        }
    }

    pub(crate) fn is_banned(&self) -> bool {
        self.banned.load(Ordering::Relaxed)
    }

    pub(crate) fn is_standby(&self) -> bool {
        self.standby.load(Ordering::Relaxed)
    }

    /// Notes whether the server is a standby now.
    pub(crate) fn set_standby(&self, standby: bool) {
        self.standby.store(standby, Ordering::Relaxed);
    }

    pub(crate) fn ban_reason(&self) -> Option<String> {
        self.ban_reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Takes the server out of rotation until a probe succeeds.
    pub(crate) fn ban(&self, reason: String) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        *self.ban_reason.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason.clone());
        if !self.banned.swap(true, Ordering::Relaxed) {
            self.bans.fetch_add(1, Ordering::Relaxed);
            metrics::counter!(BANS, "server" => Arc::clone(&self.label)).increment(1);
            metrics::gauge!(HEALTHY, "server" => Arc::clone(&self.label)).set(0.0);
            tracing::warn!(target: "routing_core", server = &*self.label, reason, "server banned");
            self.banned_now.0.notify_waiters();
        }
    }

    /// Notified when the server is banned: wait on `notified()` (enabled before checking
    /// [`is_banned`](Self::is_banned), so that no ban is missed).
    pub(crate) fn ban_signal(&self) -> &Notify {
        &self.banned_now.0
    }

    /// Puts the server back in rotation.
    pub(crate) fn admit(&self) {
        if self.banned.swap(false, Ordering::Relaxed) {
            tracing::info!(target: "routing_core", server = &*self.label, "server admitted again");
        }
        *self.ban_reason.lock().unwrap_or_else(|e| e.into_inner()) = None;
        metrics::gauge!(HEALTHY, "server" => Arc::clone(&self.label)).set(1.0);
    }

    pub(crate) fn replay_lsn(&self) -> Option<u64> {
        known(self.replay_lsn.load(Ordering::Relaxed))
    }

    /// Notes that the server has replayed at least `lsn`.
    pub(crate) fn note_replay(&self, lsn: u64) {
        let current = self.replay_lsn.load(Ordering::Relaxed);
        if current == UNKNOWN || current < lsn {
            self.replay_lsn.store(lsn, Ordering::Relaxed);
        }
    }

    pub(crate) fn lag_bytes(&self) -> Option<u64> {
        known(self.lag_bytes.load(Ordering::Relaxed))
    }

    pub(crate) fn lag(&self) -> Option<Duration> {
        known(self.lag_micros.load(Ordering::Relaxed)).map(Duration::from_micros)
    }

    pub(crate) fn latency(&self) -> Option<Duration> {
        known(self.latency_micros.load(Ordering::Relaxed)).map(Duration::from_micros)
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.load.in_flight.load(Ordering::Relaxed)
    }

    /// Statements sent to this server so far.
    pub(crate) fn routed(&self) -> u64 {
        self.load
            .routed
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .sum()
    }

    /// Statements sent to this server so far for `reason`.
    pub(crate) fn routed_for(&self, reason: Reason) -> u64 {
        self.load.routed[reason.index()].load(Ordering::Relaxed)
    }

    pub(crate) fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    pub(crate) fn bans(&self) -> u64 {
        self.bans.load(Ordering::Relaxed)
    }

    /// Counts a statement sent to this server for `reason`. The metric's handle is registered
    /// once (install a recorder before the first query).
    pub(crate) fn count_routed(&self, reason: Reason) {
        self.load.routed[reason.index()].fetch_add(1, Ordering::Relaxed);
        self.queries[reason.index()]
            .get_or_init(|| {
                metrics::counter!(
                    QUERIES,
                    "server" => Arc::clone(&self.label),
                    "reason" => reason.label()
                )
            })
            .increment(1);
    }

    /// Records the duration of a statement this server served as the primary or as a replica,
    /// and whether it succeeded (the OpenTelemetry `db.client.operation.duration`, in seconds).
    pub(crate) fn record_duration(&self, as_primary: bool, ok: bool, elapsed: Duration) {
        let role = if as_primary { "primary" } else { "replica" };
        let outcome = if ok { "ok" } else { "error" };
        self.durations[usize::from(as_primary) * 2 + usize::from(ok)]
            .get_or_init(|| {
                metrics::histogram!(
                    OPERATION_DURATION,
                    "db.system.name" => "postgresql",
                    "db.routing.server" => Arc::clone(&self.label),
                    "db.routing.role" => role,
                    "outcome" => outcome
                )
            })
            .record(elapsed.as_secs_f64());
    }

    pub(crate) fn record_probe(
        &self,
        replay_lsn: Option<u64>,
        lag_bytes: Option<u64>,
        lag: Duration,
        latency: Duration,
    ) {
        if let Some(lsn) = replay_lsn {
            self.replay_lsn.store(lsn, Ordering::Relaxed);
        }
        self.lag_bytes
            .store(lag_bytes.unwrap_or(UNKNOWN), Ordering::Relaxed);
        self.lag_micros.store(micros(lag), Ordering::Relaxed);
        let latency = micros(latency);
        let previous = self.latency_micros.load(Ordering::Relaxed);
        // A moving average that follows a real change within a few probes.
        let smoothed = if previous == UNKNOWN {
            latency
        } else {
            (previous * 3 + latency) / 4
        };
        self.latency_micros.store(smoothed, Ordering::Relaxed);
        let server = Arc::clone(&self.label);
        if let Some(bytes) = lag_bytes {
            metrics::gauge!(LAG_BYTES, "server" => Arc::clone(&server)).set(bytes as f64);
        }
        metrics::gauge!(LAG_SECONDS, "server" => server).set(lag.as_secs_f64());
    }
}

fn known(value: u64) -> Option<u64> {
    (value != UNKNOWN).then_some(value)
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(UNKNOWN - 1)
}

/// A hold on one connection to a server, counted in its `in_flight` until dropped.
#[derive(Debug)]
pub(crate) struct Lease(Arc<Health>);

impl Lease {
    pub(crate) fn new(health: &Arc<Health>) -> Self {
        health.load.in_flight.fetch_add(1, Ordering::Relaxed);
        Lease(Arc::clone(health))
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.0.load.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ban_keeps_its_reason_until_a_probe_admits_the_server() {
        let health = Health::new(Role::Replica(1));
        assert_eq!(&*health.label, "replica1");
        health.ban("connection refused".to_owned());
        health.ban("connection refused again".to_owned());
        assert!(health.is_banned());
        assert_eq!(health.bans(), 1);
        assert_eq!(health.failures(), 2);
        assert_eq!(
            health.ban_reason().as_deref(),
            Some("connection refused again")
        );
        health.admit();
        assert!(!health.is_banned());
        assert_eq!(health.ban_reason(), None);
    }

    #[test]
    fn leases_count_connections_in_use() {
        let health = Arc::new(Health::new(Role::Replica(0)));
        let a = Lease::new(&health);
        let b = Lease::new(&health);
        assert_eq!(health.in_flight(), 2);
        drop(a);
        assert_eq!(health.in_flight(), 1);
        drop(b);
        assert_eq!(health.in_flight(), 0);
    }
}
