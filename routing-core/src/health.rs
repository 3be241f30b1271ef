//! What the router knows of each server (bans, lag, latency, load), and the background probe that
//! keeps it current.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use diesel::sql_types::{BigInt, Bool, Nullable};
use diesel_async::AsyncPgConnection;
use futures_util::future::join_all;

use crate::connection::REASON_LABELS;
use crate::error::Role;
use crate::pool::{PoolInner, Server};
use crate::url::DatabaseUrl;

const UNKNOWN: u64 = u64::MAX;

/// The background health probe's schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct HealthCheck {
    /// Time between two probes of every replica. Default: 1 s.
    pub interval: Duration,
    /// How long one probe may take before the replica counts as down. Default: 1 s.
    pub timeout: Duration,
}

impl Default for HealthCheck {
    fn default() -> Self {
        HealthCheck {
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
        }
    }
}

impl HealthCheck {
    /// A probe every `interval`, each allowed `timeout`.
    pub fn new(interval: Duration, timeout: Duration) -> Self {
        HealthCheck { interval, timeout }
    }
}

/// The router's knowledge of one server. Every field is updated without locks on the read path
/// except the ban reason.
#[derive(Debug)]
pub(crate) struct Health {
    label: Arc<str>,
    banned: AtomicBool,
    ban_reason: Mutex<Option<String>>,
    replay_lsn: AtomicU64,
    lag_bytes: AtomicU64,
    lag_micros: AtomicU64,
    latency_micros: AtomicU64,
    in_flight: AtomicUsize,
    routed: AtomicU64,
    failures: AtomicU64,
    bans: AtomicU64,
    /// `routing_queries_total` per reason, registered on first use.
    queries: [OnceLock<metrics::Counter>; REASON_LABELS.len()],
}

impl Health {
    pub(crate) fn new(role: Role) -> Self {
        let label: Arc<str> = match role {
            Role::Primary => Arc::from("primary"),
            Role::Replica(index) => Arc::from(format!("replica{index}")),
        };
        Health {
            label,
            banned: AtomicBool::new(false),
            ban_reason: Mutex::new(None),
            replay_lsn: AtomicU64::new(UNKNOWN),
            lag_bytes: AtomicU64::new(UNKNOWN),
            lag_micros: AtomicU64::new(UNKNOWN),
            latency_micros: AtomicU64::new(UNKNOWN),
            in_flight: AtomicUsize::new(0),
            routed: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            bans: AtomicU64::new(0),
            queries: Default::default(),
        }
    }

    pub(crate) fn is_banned(&self) -> bool {
        self.banned.load(Ordering::Relaxed)
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
            metrics::counter!("routing_bans_total", "server" => Arc::clone(&self.label))
                .increment(1);
            metrics::gauge!("routing_server_healthy", "server" => Arc::clone(&self.label)).set(0.0);
            tracing::warn!(target: "routing_core", server = &*self.label, reason, "server banned");
        }
    }

    /// Puts the server back in rotation.
    fn admit(&self) {
        if self.banned.swap(false, Ordering::Relaxed) {
            tracing::info!(target: "routing_core", server = &*self.label, "server admitted again");
        }
        *self.ban_reason.lock().unwrap_or_else(|e| e.into_inner()) = None;
        metrics::gauge!("routing_server_healthy", "server" => Arc::clone(&self.label)).set(1.0);
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
        self.in_flight.load(Ordering::Relaxed)
    }

    pub(crate) fn routed(&self) -> u64 {
        self.routed.load(Ordering::Relaxed)
    }

    pub(crate) fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    pub(crate) fn bans(&self) -> u64 {
        self.bans.load(Ordering::Relaxed)
    }

    /// Counts a statement sent to this server for the reason at `reason` in [`REASON_LABELS`].
    /// The metric's handle is registered once (install a recorder before the first query).
    pub(crate) fn count_routed(&self, reason: usize) {
        self.routed.fetch_add(1, Ordering::Relaxed);
        if let Some(counter) = self.queries.get(reason) {
            counter
                .get_or_init(|| {
                    metrics::counter!(
                        "routing_queries_total",
                        "server" => Arc::clone(&self.label),
                        "reason" => REASON_LABELS[reason]
                    )
                })
                .increment(1);
        }
    }

    fn record_probe(
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
            metrics::gauge!("routing_replica_lag_bytes", "server" => Arc::clone(&server))
                .set(bytes as f64);
        }
        metrics::gauge!("routing_replica_lag_seconds", "server" => server).set(lag.as_secs_f64());
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
        health.in_flight.fetch_add(1, Ordering::Relaxed);
        Lease(Arc::clone(health))
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Starts the probe of `inner`'s replicas on the running tokio runtime, once.
pub(crate) fn start(inner: &Arc<PoolInner>) {
    // A plain load first: every `get` passes here, and a swap would contend on the cache line.
    if inner.replicas.is_empty()
        || inner.prober_started.load(Ordering::Acquire)
        || inner.prober_started.swap(true, Ordering::AcqRel)
    {
        return;
    }
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => {
            handle.spawn(probe_forever(Arc::downgrade(inner), inner.health_check));
        }
        Err(_) => inner.prober_started.store(false, Ordering::Release),
    }
}

/// Samples of the primary's WAL position, oldest first, to turn a replica's replay position into
/// a time lag that reads zero while the primary is idle.
#[derive(Debug, Default)]
struct WalHistory {
    samples: VecDeque<(Instant, u64)>,
    /// Whether older samples were dropped: a replica behind the oldest kept one lags more than
    /// can be told.
    pruned: bool,
}

impl WalHistory {
    const KEEP: Duration = Duration::from_secs(600);

    fn push(&mut self, at: Instant, lsn: u64) {
        if self.samples.back().is_some_and(|(_, last)| *last == lsn) {
            // Idle: the oldest sample at this position says since when it has been there.
            return;
        }
        self.samples.push_back((at, lsn));
        while self
            .samples
            .front()
            .is_some_and(|(t, _)| at.duration_since(*t) > Self::KEEP)
        {
            self.samples.pop_front();
            self.pruned = true;
        }
    }

    /// How long ago the primary first stood past `replay`: zero for a replica that has replayed
    /// every sample, unbounded for one behind every sample kept after older ones were dropped.
    fn lag(&self, replay: u64, now: Instant) -> Duration {
        match self.samples.iter().position(|(_, lsn)| *lsn > replay) {
            None => Duration::ZERO,
            Some(0) if self.pruned => Duration::MAX,
            Some(index) => now.duration_since(self.samples[index].0),
        }
    }
}

/// Clears the pool's "probe started" flag when the probe task ends (its runtime shut down), so
/// that the next `get` starts it again.
struct Restartable(Weak<PoolInner>);

impl Drop for Restartable {
    fn drop(&mut self) {
        if let Some(inner) = self.0.upgrade() {
            inner.prober_started.store(false, Ordering::Release);
        }
    }
}

async fn probe_forever(pool: Weak<PoolInner>, schedule: HealthCheck) {
    let _restartable = Restartable(pool.clone());
    let mut primary: Option<AsyncPgConnection> = None;
    let mut replicas: Vec<Option<AsyncPgConnection>> = Vec::new();
    let mut history = WalHistory::default();
    let mut ticker = tokio::time::interval(schedule.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(inner) = pool.upgrade() else {
            return;
        };
        replicas.resize_with(inner.replicas.len(), || None);
        let primary_lsn = probe_primary(&inner.primary.url, &mut primary, schedule.timeout).await;
        let now = Instant::now();
        if let Some(lsn) = primary_lsn {
            history.push(now, lsn);
        }
        let probes = inner
            .replicas
            .iter()
            .zip(replicas.iter_mut())
            .map(|(server, conn)| {
                probe_replica(
                    server,
                    conn,
                    primary_lsn,
                    &history,
                    schedule.timeout,
                    inner.verify_roles,
                )
            });
        join_all(probes).await;
    }
}

/// Opens a probe session: its own `application_name`, never from the pools.
async fn connect(url: &DatabaseUrl) -> Result<AsyncPgConnection, String> {
    let mut config: tokio_postgres::Config = url.secret().parse().map_err(|e| format!("{e}"))?;
    config.application_name("routing-core health probe");
    let (client, connection) = config
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    AsyncPgConnection::try_from_client_and_connection(client, connection)
        .await
        .map_err(|e| format!("cannot set up the session: {e}"))
}

async fn probe_primary(
    url: &DatabaseUrl,
    conn: &mut Option<AsyncPgConnection>,
    timeout: Duration,
) -> Option<u64> {
    let probe = async {
        if conn.is_none() {
            *conn = Some(connect(url).await?);
        }
        let Some(session) = conn.as_mut() else {
            return Err("no session".to_owned());
        };
        use diesel_async::RunQueryDsl;
        // The flushed position: all that replicas can replay. (The insert position can sit a page
        // header past it on an idle primary, which no replica ever reaches.)
        diesel::select(diesel::dsl::sql::<BigInt>(
            "(pg_current_wal_flush_lsn() - '0/0'::pg_lsn)::bigint",
        ))
        .get_result::<i64>(session)
        .await
        .map_err(|e| e.to_string())
    };
    match tokio::time::timeout(timeout, probe).await {
        Ok(Ok(lsn)) => u64::try_from(lsn).ok(),
        outcome => {
            *conn = None;
            tracing::debug!(target: "routing_core", ?outcome, "primary WAL position unknown this round");
            None
        }
    }
}

async fn probe_replica(
    server: &Server,
    conn: &mut Option<AsyncPgConnection>,
    primary_lsn: Option<u64>,
    history: &WalHistory,
    timeout: Duration,
    verify_roles: bool,
) {
    let started = Instant::now();
    let probe = async {
        if conn.is_none() {
            *conn = Some(connect(&server.url).await?);
        }
        let Some(session) = conn.as_mut() else {
            return Err("no session".to_owned());
        };
        use diesel_async::RunQueryDsl;
        diesel::select((
            diesel::dsl::sql::<Bool>("pg_is_in_recovery()"),
            diesel::dsl::sql::<Nullable<BigInt>>(
                "(pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::bigint",
            ),
        ))
        .get_result::<(bool, Option<i64>)>(session)
        .await
        .map_err(|e| format!("probe query failed: {e}"))
    };
    let outcome = tokio::time::timeout(timeout, probe).await;
    let health = &server.health;
    match outcome {
        Err(_) => {
            *conn = None;
            health.ban(format!("health probe timed out after {timeout:?}"));
        }
        Ok(Err(reason)) => {
            *conn = None;
            health.ban(format!("health probe failed: {reason}"));
        }
        Ok(Ok((in_recovery, _))) if verify_roles && !in_recovery => {
            health.ban("not in recovery: it is a primary, not a standby".to_owned());
        }
        Ok(Ok((_, replay))) => {
            let latency = started.elapsed();
            let replay = replay.and_then(|lsn| u64::try_from(lsn).ok());
            let lag_bytes = match (primary_lsn, replay) {
                (Some(primary), Some(replay)) => Some(primary.saturating_sub(replay)),
                _ => None,
            };
            let lag = replay.map_or(Duration::ZERO, |replay| history.lag(replay, Instant::now()));
            health.record_probe(replay, lag_bytes, lag, latency);
            health.admit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_primary_means_zero_time_lag() {
        let start = Instant::now();
        let mut history = WalHistory::default();
        history.push(start, 100);
        // Idle for a long time: the same position sampled again and again.
        history.push(start + Duration::from_secs(40), 100);
        assert_eq!(history.samples.len(), 1);
        assert_eq!(
            history.lag(100, start + Duration::from_secs(41)),
            Duration::ZERO
        );
    }

    #[test]
    fn time_lag_is_the_age_of_the_oldest_position_not_replayed() {
        let start = Instant::now();
        let mut history = WalHistory::default();
        history.push(start, 100);
        history.push(start + Duration::from_secs(1), 200);
        history.push(start + Duration::from_secs(2), 300);
        let now = start + Duration::from_secs(3);
        assert_eq!(history.lag(150, now), Duration::from_secs(2));
        assert_eq!(history.lag(250, now), Duration::from_secs(1));
        assert_eq!(history.lag(300, now), Duration::ZERO);
    }

    #[test]
    fn a_replica_behind_every_kept_sample_lags_without_bound() {
        let start = Instant::now();
        let mut history = WalHistory::default();
        history.push(start, 100);
        history.push(start + WalHistory::KEEP + Duration::from_secs(1), 200);
        history.push(start + WalHistory::KEEP + Duration::from_secs(2), 300);
        let now = start + WalHistory::KEEP + Duration::from_secs(3);
        assert_eq!(history.lag(50, now), Duration::MAX);
        assert_eq!(history.lag(250, now), Duration::from_secs(1));
    }

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
