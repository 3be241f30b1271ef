//! The background health probe: every interval it asks the primary for its WAL position and each
//! replica whether it answers, is in recovery, and how far it has replayed; it bans and admits
//! replicas and records their lag and latency in their [`Health`](super::Health), and refreshes
//! every pool's connection gauges.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use futures_util::future::join_all;

mod nodes;

use super::connect::{self, Open};
use super::{Server, ServerSession, Shared, catalog};
use crate::config::HealthCheck;
use crate::error::ConnectError;
use crate::url::DatabaseUrl;

/// The `application_name` of the probe's sessions.
const APPLICATION_NAME: &str = "routing-core health probe";

/// The shortest pause between two rounds, however often the probe is asked to look again.
const MIN_PAUSE: Duration = Duration::from_millis(50);

/// Starts the probe of `shared`'s replicas, once, when called from a tokio runtime (code
/// outside one, such as a benchmark of decisions, starts none).
///
/// The probe runs on a thread of its own with its own single-threaded runtime, so that an
/// application whose runtime is saturated does not make healthy replicas look down: the probe's
/// timeout measures the servers, not the application's queue. The thread ends within one
/// interval of the pool's last clone being dropped.
pub(crate) fn start(shared: &Arc<Shared>) {
    // The flag first: every `get` passes here, and `try_current` clones the runtime's handle.
    if !shared.probe_started.load(Ordering::Acquire)
        && tokio::runtime::Handle::try_current().is_ok()
    {
        start_anywhere(shared);
    }
}

/// Starts the probe of `shared`'s replicas, once, from any thread: the synchronous pool's
/// `get`, which runs outside every runtime.
#[cfg(feature = "sync")]
pub(crate) fn start_from_any_thread(shared: &Arc<Shared>) {
    start_anywhere(shared);
}

fn start_anywhere(shared: &Arc<Shared>) {
    // A plain load first: every `get` passes here, and a swap would contend on the cache line.
    if shared.replicas.is_empty()
        || shared.probe_started.load(Ordering::Acquire)
        || shared.probe_started.swap(true, Ordering::AcqRel)
    {
        return;
    }
    let pool = Arc::downgrade(shared);
    let schedule = shared.config.health_check();
    let spawned = std::thread::Builder::new()
        .name("routing-core health probe".to_owned())
        .spawn(move || {
            let _restartable = Restartable(pool.clone());
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime.block_on(probe_forever(pool, schedule)),
                Err(error) => {
                    tracing::warn!(target: "routing_core", %error, "cannot start the health probe")
                }
            }
        });
    if let Err(error) = spawned {
        tracing::warn!(target: "routing_core", %error, "cannot start the health probe");
        shared.probe_started.store(false, Ordering::Release);
    }
}

/// Samples of the primary's WAL position, oldest first, to turn a replica's replay position into
/// a time lag that reads zero while the primary is idle.
#[derive(Debug, Default)]
pub(super) struct WalHistory {
    samples: VecDeque<(Instant, u64)>,
    /// Whether older samples were dropped: a replica behind the oldest kept one lags more than
    /// can be told.
    pruned: bool,
}

impl WalHistory {
    const KEEP: Duration = Duration::from_secs(600);

    pub(super) fn push(&mut self, at: Instant, lsn: u64) {
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
    pub(super) fn lag(&self, replay: u64, now: Instant) -> Duration {
        match self.samples.iter().position(|(_, lsn)| *lsn > replay) {
            None => Duration::ZERO,
            Some(0) if self.pruned => Duration::MAX,
            Some(index) => now.duration_since(self.samples[index].0),
        }
    }
}

/// Clears the pool's "probe started" flag when the probe thread ends, so that the next `get`
/// starts it again.
struct Restartable(Weak<Shared>);

impl Drop for Restartable {
    fn drop(&mut self) {
        if let Some(shared) = self.0.upgrade() {
            shared.probe_started.store(false, Ordering::Release);
        }
    }
}

async fn probe_forever(pool: Weak<Shared>, schedule: HealthCheck) {
    let Some(wake) = pool.upgrade().map(|shared| shared.topology.wake()) else {
        return;
    };
    let mut primary: Option<ServerSession> = None;
    let mut sessions: Vec<Option<ServerSession>> = Vec::new();
    let mut history = WalHistory::default();
    let mut ticker = tokio::time::interval(schedule.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = wake.notified() => {}
        }
        let Some(shared) = pool.upgrade() else {
            return;
        };
        sessions.resize_with(shared.replicas.len(), || None);
        match &shared.primary {
            Some(server) => {
                let primary_lsn =
                    probe_primary(&shared, server, &mut primary, schedule.timeout).await;
                if let Some(lsn) = primary_lsn {
                    history.push(Instant::now(), lsn);
                    shared.tokens.note_primary(lsn);
                }
                let verify_roles = shared.config.verify_roles();
                let probes =
                    shared
                        .replicas
                        .iter()
                        .zip(sessions.iter_mut())
                        .map(|(server, conn)| {
                            probe_replica(
                                &shared,
                                server,
                                conn,
                                primary_lsn,
                                &history,
                                schedule.timeout,
                                verify_roles,
                            )
                        });
                join_all(probes).await;
            }
            None => nodes::probe(&shared, &mut sessions, &mut history, schedule.timeout).await,
        }
        // The pools' gauges follow the probe's rhythm, off the statements' path.
        for server in shared.servers() {
            server.refresh_metrics();
        }
        drop(shared);
        // A burst of requests to look again costs at most one round per this pause.
        tokio::time::sleep(MIN_PAUSE).await;
    }
}

/// Why one probe failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum ProbeError {
    #[error("{0}")]
    Connect(#[from] ConnectError),
    #[error("probe query failed: {0}")]
    Query(#[from] diesel::result::Error),
}

/// The probe's session to `url`, opened as `shared`'s sessions are when there is none. The
/// pool's `on_connect` hook does not run: the probe runs only the router's own statements.
pub(super) async fn session<'c>(
    shared: &Shared,
    url: &DatabaseUrl,
    conn: &'c mut Option<ServerSession>,
) -> Result<&'c mut ServerSession, ProbeError> {
    let session = match conn.take() {
        Some(session) => session,
        None => {
            let how = Open {
                application_name: Some(APPLICATION_NAME),
                ..Open::of(shared.config())
            };
            connect::silenced(connect::open(url, how).await?)
        }
    };
    Ok(conn.insert(session))
}

async fn probe_primary(
    shared: &Shared,
    server: &Server,
    conn: &mut Option<ServerSession>,
    timeout: Duration,
) -> Option<u64> {
    let probe = async {
        let session = session(shared, server.database_url(), conn).await?;
        Ok::<_, ProbeError>(catalog::wal_flush_position(session).await?)
    };
    match tokio::time::timeout(timeout, probe).await {
        Ok(Ok(lsn)) => Some(lsn),
        outcome => {
            *conn = None;
            tracing::debug!(target: "routing_core", ?outcome, "primary WAL position unknown this round");
            None
        }
    }
}

async fn probe_replica(
    shared: &Shared,
    server: &Server,
    conn: &mut Option<ServerSession>,
    primary_lsn: Option<u64>,
    history: &WalHistory,
    timeout: Duration,
    verify_roles: bool,
) {
    let started = Instant::now();
    let probe = async {
        let session = session(shared, server.database_url(), conn).await?;
        Ok::<_, ProbeError>(catalog::replica_state(session).await?)
    };
    let outcome = tokio::time::timeout(timeout, probe).await;
    let health = server.health();
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
            // Worded as a checkout's `ReplicaIsPrimary`: a read that finds the replica banned
            // says the same as one that found its role itself.
            health.ban(
                "it is not in recovery (pg_is_in_recovery() is false): a primary, not a standby"
                    .to_owned(),
            );
        }
        Ok(Ok((_, replay))) => {
            let latency = started.elapsed();
            let lag_bytes = primary_lsn
                .zip(replay)
                .map(|(primary, replay)| primary.saturating_sub(replay));
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
}
