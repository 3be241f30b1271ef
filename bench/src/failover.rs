//! Failover under load: replica 0 stops while the router serves point reads, then starts again.
//!
//! Timeline (from the start of the load): at 2 s `stop_replica(0)`; at 4 s (or when the stop is
//! done, if later) `start_replica(0)`, which returns once the replica streams again; the load runs
//! until 6 s, and at least [`AFTER_RETURN`] after replica 0 served a read again (waiting for that
//! at most [`RETURN_TIMEOUT`] after `start_replica` returned), so that the timeline shows it
//! back. Each read asks its server for its port
//! (`inet_server_port()`), so a read served by replica 0 is known for certain; a sampler reads
//! `RoutedPool::status()` every 10 ms for the statements routed to replica 0.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use routing_cluster::LocalCluster;
use routing_core::dsl::inet_server_port;
use routing_core::{RoutedPool, with_read_replica};
use routing_fixtures::products;

use crate::BoxError;
use crate::setup::IdRange;

/// Concurrent clients.
pub(crate) const CLIENTS: usize = 16;
/// The run's length when replica 0 is back in time.
pub(crate) const RUN: Duration = Duration::from_secs(6);
/// When replica 0 is stopped.
pub(crate) const STOP_AT: Duration = Duration::from_secs(2);
/// When replica 0 is started again.
pub(crate) const RESTART_AT: Duration = Duration::from_secs(4);
/// How long after `start_replica` returned the load waits for replica 0 to serve again.
pub(crate) const RETURN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the load goes on after replica 0 served again.
pub(crate) const AFTER_RETURN: Duration = Duration::from_secs(1);
/// How often the router's status is sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(10);
/// The width of one bucket of the timeline.
pub(crate) const BUCKET: Duration = Duration::from_millis(100);

/// Reads per bucket of [`BUCKET`] from the start of the load: served by each server, and failed.
#[derive(Clone, Debug, Default)]
pub(crate) struct Timeline {
    /// The servers' names (`primary`, `replica 0`, ...), in the order of `served`'s columns.
    pub(crate) servers: Vec<String>,
    /// Per bucket, the reads each server answered.
    pub(crate) served: Vec<Vec<u64>>,
    /// Per bucket, the reads that failed.
    pub(crate) failed: Vec<u64>,
}

impl Timeline {
    fn new(servers: Vec<String>) -> Self {
        Timeline {
            servers,
            ..Timeline::default()
        }
    }

    fn bucket(&mut self, at: Duration) -> usize {
        let index = usize::try_from(at.as_millis() / BUCKET.as_millis()).unwrap_or(usize::MAX);
        let index = index.min(100_000);
        if self.failed.len() <= index {
            self.failed.resize(index + 1, 0);
            self.served.resize(index + 1, vec![0; self.servers.len()]);
        }
        index
    }

    /// Counts a read completed at `at`, answered by server `server` (an index of `servers`) or
    /// failed (`None`).
    fn count(&mut self, at: Duration, server: Option<usize>) {
        let bucket = self.bucket(at);
        match server {
            Some(server) if server < self.servers.len() => self.served[bucket][server] += 1,
            Some(_) => {}
            None => self.failed[bucket] += 1,
        }
    }

    fn merge(&mut self, other: &Timeline) {
        if let Some(last) = other.failed.len().checked_sub(1) {
            self.bucket(BUCKET * u32::try_from(last).unwrap_or(u32::MAX));
        }
        for (bucket, (served, failed)) in other.served.iter().zip(&other.failed).enumerate() {
            for (mine, theirs) in self.served[bucket].iter_mut().zip(served) {
                *mine += theirs;
            }
            self.failed[bucket] += failed;
        }
    }
}

/// What the failover run saw. Times are from the start of the load.
#[derive(Clone, Debug)]
pub(crate) struct Failover {
    /// Reads that succeeded.
    pub(crate) reads: u64,
    /// Reads that failed.
    pub(crate) failed: u64,
    /// The first failure's message.
    pub(crate) first_error: Option<String>,
    /// When `stop_replica(0)` was called.
    pub(crate) stop_began: Duration,
    /// When it returned.
    pub(crate) stop_ended: Duration,
    /// When `start_replica(0)` was called.
    pub(crate) restart_began: Duration,
    /// When it returned (replica 0 streaming again).
    pub(crate) restart_ended: Duration,
    /// When the load stopped.
    pub(crate) ended: Duration,
    /// The last sample, between the stop and the restart, at which the statements routed to
    /// replica 0 had grown: a read was sent to it shortly before.
    pub(crate) last_routed_while_down: Option<Duration>,
    /// The last read answered by replica 0 before the restart.
    pub(crate) last_answer_before_restart: Option<Duration>,
    /// The first sample after the restart began at which the statements routed to replica 0 had
    /// grown.
    pub(crate) first_routed_after_restart: Option<Duration>,
    /// The first read answered by replica 0 after the restart began.
    pub(crate) first_answer_after_restart: Option<Duration>,
    /// Times the router banned replica 0.
    pub(crate) bans: u64,
    /// Reads per server and failed reads over time.
    pub(crate) timeline: Timeline,
}

/// Sets the flag when dropped: the readers stop on every way out, errors included.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// What one reader saw.
#[derive(Default)]
struct ReaderLog {
    reads: u64,
    failed: u64,
    first_error: Option<String>,
    /// When each read answered by replica 0 completed.
    victim_answers: Vec<Duration>,
    /// Every read, over time.
    timeline: Timeline,
}

/// Runs the failover scenario on replica 0 of `cluster`, through a `RoutedPool` with the
/// default health check.
pub(crate) async fn measure(cluster: &LocalCluster, ids: IdRange) -> Result<Failover, BoxError> {
    let pool = RoutedPool::builder(cluster.primary_url())
        .replicas(cluster.replica_urls())
        .max_size(CLIENTS)
        .build()?;
    pool.check().await?;
    let ports: Arc<[i32]> = std::iter::once(cluster.primary_port())
        .chain((0..cluster.replica_count()).map(|i| cluster.replica_port(i)))
        .map(i32::from)
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let _stop_readers = StopOnDrop(Arc::clone(&stop));
    // Nanoseconds from `start` of the latest read answered by replica 0.
    let victim_last = Arc::new(AtomicU64::new(0));
    let start = Instant::now();

    let readers: Vec<_> = (0..CLIENTS)
        .map(|_| {
            tokio::spawn(reader(
                pool.clone(),
                ids,
                Arc::clone(&stop),
                start,
                Arc::clone(&ports),
                Arc::clone(&victim_last),
            ))
        })
        .collect();
    let sampler = tokio::spawn(sample_routed(pool.clone(), start, Arc::clone(&stop)));

    tokio::time::sleep_until((start + STOP_AT).into()).await;
    let stop_began = start.elapsed();
    cluster.stop_replica(0).await?;
    let stop_ended = start.elapsed();

    tokio::time::sleep_until((start + RESTART_AT).into()).await;
    let restart_began = start.elapsed();
    cluster.start_replica(0).await?;
    let restart_ended = start.elapsed();

    let give_up = Instant::now() + RETURN_TIMEOUT;
    while nanos(AtomicU64::load(&victim_last, Ordering::Relaxed)) < restart_began
        && Instant::now() < give_up
    {
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
    let end = (start + RUN).max(Instant::now() + AFTER_RETURN);
    tokio::time::sleep_until(end.into()).await;
    stop.store(true, Ordering::Relaxed);
    let ended = start.elapsed();

    let mut log = ReaderLog {
        timeline: Timeline::new(server_names(ports.len())),
        ..ReaderLog::default()
    };
    for reader in readers {
        match reader.await {
            Ok(one) => {
                log.reads += one.reads;
                log.failed += one.failed;
                if log.first_error.is_none() {
                    log.first_error = one.first_error;
                }
                log.victim_answers.extend(one.victim_answers);
                log.timeline.merge(&one.timeline);
            }
            Err(join) => {
                log.failed += 1;
                log.first_error
                    .get_or_insert_with(|| format!("a reader task failed: {join}"));
            }
        }
    }
    let samples = sampler
        .await
        .map_err(|e| format!("the status sampler failed: {e}"))?;
    let bans = pool.status().servers.get(1).map_or(0, |s| s.bans);

    let growth = growth_times(&samples);
    Ok(Failover {
        reads: log.reads,
        failed: log.failed,
        first_error: log.first_error,
        stop_began,
        stop_ended,
        restart_began,
        restart_ended,
        ended,
        last_routed_while_down: growth
            .iter()
            .copied()
            .filter(|t| *t >= stop_began && *t < restart_began)
            .max(),
        last_answer_before_restart: log
            .victim_answers
            .iter()
            .copied()
            .filter(|t| *t < restart_began)
            .max(),
        first_routed_after_restart: growth.iter().copied().find(|t| *t >= restart_began),
        first_answer_after_restart: log
            .victim_answers
            .iter()
            .copied()
            .filter(|t| *t >= restart_began)
            .min(),
        bans,
        timeline: log.timeline,
    })
}

/// `primary`, `replica 0`, ... for `count` servers.
fn server_names(count: usize) -> Vec<String> {
    std::iter::once("primary".to_owned())
        .chain((1..count).map(|i| format!("replica {}", i - 1)))
        .collect()
}

fn nanos(value: u64) -> Duration {
    Duration::from_nanos(value)
}

/// Reads the flag (spelled out: diesel-async's `RunQueryDsl::load` shadows `AtomicBool::load`).
fn is_set(flag: &AtomicBool) -> bool {
    AtomicBool::load(flag, Ordering::Relaxed)
}

/// One reader: point reads in a replica scope, each on a fresh routed connection, until `stop`.
/// `ports` are the servers' ports: the primary's, then the replicas'; replica 0 is the victim.
async fn reader(
    pool: RoutedPool,
    ids: IdRange,
    stop: Arc<AtomicBool>,
    start: Instant,
    ports: Arc<[i32]>,
    victim_last: Arc<AtomicU64>,
) -> ReaderLog {
    let mut rng = fastrand::Rng::new();
    let mut log = ReaderLog {
        timeline: Timeline::new(server_names(ports.len())),
        ..ReaderLog::default()
    };
    let victim_port = ports.get(1).copied().unwrap_or_default();
    while !is_set(&stop) {
        let id = ids.random(&mut rng);
        let outcome = read_port(&pool, id).await;
        let at = start.elapsed();
        let server = outcome
            .as_ref()
            .ok()
            .map(|port| ports.iter().position(|p| p == port).unwrap_or(usize::MAX));
        log.timeline.count(at, server);
        match outcome {
            Ok(port) => {
                log.reads += 1;
                if port == victim_port {
                    log.victim_answers.push(at);
                    let at = u64::try_from(at.as_nanos()).unwrap_or(u64::MAX);
                    victim_last.fetch_max(at, Ordering::Relaxed);
                }
            }
            Err(error) => {
                log.failed += 1;
                log.first_error
                    .get_or_insert_with(|| format!("read of id {id} at {at:?}: {error}"));
            }
        }
    }
    log
}

/// The point read, with the answering server's port.
async fn read_port(pool: &RoutedPool, id: i64) -> Result<i32, BoxError> {
    with_read_replica(true, async {
        let mut conn = pool.get().await?;
        let (_, _, _, port) = products::table
            .find(id)
            .select((
                products::id,
                products::name,
                products::price_cents,
                inet_server_port(),
            ))
            .get_result::<(i64, String, i64, i32)>(&mut conn)
            .await?;
        Ok(port)
    })
    .await
}

/// Samples the statements routed to replica 0 every [`SAMPLE_EVERY`] until `stop`.
async fn sample_routed(
    pool: RoutedPool,
    start: Instant,
    stop: Arc<AtomicBool>,
) -> Vec<(Duration, u64)> {
    let mut ticker = tokio::time::interval(SAMPLE_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut samples = Vec::new();
    while !is_set(&stop) {
        ticker.tick().await;
        let routed = pool.status().servers.get(1).map_or(0, |s| s.queries_routed);
        samples.push((start.elapsed(), routed));
    }
    samples
}

/// The sample times at which the count had grown since the previous sample.
fn growth_times(samples: &[(Duration, u64)]) -> Vec<Duration> {
    samples
        .windows(2)
        .filter(|pair| pair[1].1 > pair[0].1)
        .map(|pair| pair[1].0)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growth_is_seen_at_the_sample_after_it() {
        let ms = Duration::from_millis;
        let samples = [(ms(0), 5), (ms(10), 7), (ms(20), 7), (ms(30), 8)];
        assert_eq!(growth_times(&samples), vec![ms(10), ms(30)]);
        assert!(growth_times(&[]).is_empty());
    }

    #[test]
    fn the_timeline_counts_reads_per_bucket_and_merges() {
        let ms = Duration::from_millis;
        let names = server_names(3);
        assert_eq!(names, ["primary", "replica 0", "replica 1"]);
        let mut one = Timeline::new(names.clone());
        one.count(ms(50), Some(1));
        one.count(ms(150), Some(2));
        one.count(ms(160), None);
        one.count(ms(170), Some(usize::MAX));
        let mut other = Timeline::new(names);
        other.count(ms(420), Some(1));
        one.merge(&other);
        assert_eq!(
            one.served,
            vec![
                vec![0, 1, 0],
                vec![0, 0, 1],
                vec![0, 0, 0],
                vec![0, 0, 0],
                vec![0, 1, 0]
            ]
        );
        assert_eq!(one.failed, vec![0, 1, 0, 0, 0]);
    }
}
