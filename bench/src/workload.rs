//! The timed request loop: concurrent clients, one latency per request, and the percentiles.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cpu::CpuTimes;
use crate::setup::IdRange;
use crate::systems::{Op, System};

/// What the clients send.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum)]
pub(crate) enum Workload {
    /// Point `SELECT`s by primary key, in a replica scope: read-only.
    Point,
    /// 90 % point `SELECT`s, 10 % single-row `UPDATE`s (which go to the primary).
    Mixed,
    /// Single-row `UPDATE`s only, in a replica scope: what routing a write costs.
    Write,
}

impl Workload {
    /// One in this many requests of the workload is a write.
    const MIXED_WRITE_ONE_IN: u8 = 10;

    /// The operation of the next request.
    fn next_op(self, rng: &mut fastrand::Rng) -> Op {
        match self {
            Workload::Point => Op::Read,
            Workload::Mixed if rng.u8(0..Self::MIXED_WRITE_ONE_IN) == 0 => Op::Write,
            Workload::Mixed => Op::Read,
            Workload::Write => Op::Write,
        }
    }

    /// What the workload sends, for the report.
    pub(crate) fn description(self) -> &'static str {
        match self {
            Workload::Point => {
                "point `SELECT id, name, price_cents FROM products WHERE id = $1` (random id), read scope"
            }
            Workload::Mixed => {
                "90 % the point `SELECT`, 10 % `UPDATE products SET price_cents = price_cents + 1 WHERE id = $1`"
            }
            Workload::Write => {
                "`UPDATE products SET price_cents = price_cents + 1 WHERE id = $1` (random id), read scope"
            }
        }
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Workload::Point => "point",
            Workload::Mixed => "mixed",
            Workload::Write => "write",
        })
    }
}

/// What one timed run measured.
#[derive(Clone, Debug)]
pub(crate) struct Measurement {
    /// Requests that succeeded.
    pub(crate) requests: usize,
    /// Requests that failed.
    pub(crate) errors: u64,
    /// The first failure's message, if any.
    pub(crate) first_error: Option<String>,
    /// From the start of the run until the last client finished its last request.
    pub(crate) elapsed: Duration,
    /// Latencies of the successful requests, sorted ascending.
    latencies: Vec<Duration>,
    /// The throughput of each run merged into this one, in order: of each slice of a cell.
    slices: Vec<f64>,
    /// The CPU time this process and the servers spent meanwhile.
    pub(crate) cpu: CpuTimes,
}

impl Measurement {
    /// Successful requests per second.
    pub(crate) fn throughput(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.requests as f64 / secs
        } else {
            0.0
        }
    }

    /// CPU time per successful request, in microseconds: this process's and the servers'.
    pub(crate) fn cpu_micros_per_request(&self) -> Option<(f64, f64)> {
        #[allow(clippy::cast_precision_loss)]
        let requests = self.requests as f64;
        (self.requests > 0).then(|| {
            (
                self.cpu.client.as_secs_f64() * 1e6 / requests,
                self.cpu.servers.as_secs_f64() * 1e6 / requests,
            )
        })
    }

    /// The median, over the slices of a cell, of this measurement's throughput divided by
    /// `baseline`'s in the same round (the systems' slices of a round run one after the
    /// other): a drift of the machine that outlasts a round cancels out, and a burst in one
    /// slice moves the median little. `None` without paired slices.
    pub(crate) fn paired_ratio(&self, baseline: &Measurement) -> Option<f64> {
        let mut ratios: Vec<f64> = self
            .slices
            .iter()
            .zip(&baseline.slices)
            .filter(|(_, base)| **base > 0.0)
            .map(|(own, base)| own / base)
            .collect();
        ratios.sort_by(f64::total_cmp);
        let middle = ratios.len() / 2;
        match ratios.len() {
            0 => None,
            n if n % 2 == 1 => Some(ratios[middle]),
            _ => Some(f64::midpoint(ratios[middle - 1], ratios[middle])),
        }
    }

    /// The `p`-th percentile latency (nearest rank), `None` without successful requests.
    pub(crate) fn percentile(&self, p: f64) -> Option<Duration> {
        percentile(&self.latencies, p)
    }

    /// A measurement of `requests` in `elapsed` with these latencies, for tests.
    #[cfg(test)]
    pub(crate) fn of(elapsed: Duration, mut latencies: Vec<Duration>) -> Measurement {
        latencies.sort_unstable();
        Measurement {
            requests: latencies.len(),
            errors: 0,
            first_error: None,
            elapsed,
            latencies,
            slices: Vec::new(),
            cpu: CpuTimes::default(),
        }
    }

    /// This measurement with these slices' throughputs, for tests.
    #[cfg(test)]
    pub(crate) fn with_slices(mut self, slices: &[f64]) -> Measurement {
        self.slices = slices.to_vec();
        self
    }

    /// Both runs as one: requests, errors and time add up, latencies pool.
    pub(crate) fn merge(mut self, other: Measurement) -> Measurement {
        self.requests += other.requests;
        self.errors += other.errors;
        self.first_error = self.first_error.or(other.first_error);
        self.elapsed += other.elapsed;
        self.latencies.extend(other.latencies);
        self.latencies.sort_unstable();
        self.slices.extend(other.slices);
        self.cpu = self.cpu + other.cpu;
        self
    }
}

/// The `p`-th percentile (0 < p <= 100) of `sorted` by the nearest-rank method: the smallest
/// value with at least `p` % of the values at or below it.
fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

/// What one client saw.
#[derive(Default)]
struct ClientLog {
    latencies: Vec<Duration>,
    errors: u64,
    first_error: Option<String>,
}

/// Runs `workload` on `system` with `clients` concurrent tasks for `duration`; each task sends
/// one request after another, and each request is timed from before the checkout until after
/// the connection is back in its pool. Requests started before the deadline are finished and
/// counted; the elapsed time runs until the last one finished. The CPU time is read before the
/// first client starts and after the last one finished.
pub(crate) async fn run(
    system: &Arc<System>,
    workload: Workload,
    clients: usize,
    duration: Duration,
    ids: IdRange,
) -> Measurement {
    let cpu_before = CpuTimes::now();
    let started = Instant::now();
    let deadline = started + duration;
    // A synchronous system's clients are threads, as its requests block.
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let system = Arc::clone(system);
            if system.is_sync() {
                tokio::task::spawn_blocking(move || {
                    client_blocking(&system, workload, deadline, ids)
                })
            } else {
                tokio::spawn(client(system, workload, deadline, ids))
            }
        })
        .collect();
    let mut all = ClientLog::default();
    for task in tasks {
        match task.await {
            Ok(log) => {
                all.latencies.extend(log.latencies);
                all.errors += log.errors;
                if all.first_error.is_none() {
                    all.first_error = log.first_error;
                }
            }
            Err(join) => {
                all.errors += 1;
                all.first_error
                    .get_or_insert_with(|| format!("a client task failed: {join}"));
            }
        }
    }
    let elapsed = started.elapsed();
    let cpu = CpuTimes::now() - cpu_before;
    all.latencies.sort_unstable();
    let mut measured = Measurement {
        requests: all.latencies.len(),
        errors: all.errors,
        first_error: all.first_error,
        elapsed,
        latencies: all.latencies,
        slices: Vec::new(),
        cpu,
    };
    measured.slices.push(measured.throughput());
    measured
}

/// One client: requests back to back until `deadline`.
async fn client(
    system: Arc<System>,
    workload: Workload,
    deadline: Instant,
    ids: IdRange,
) -> ClientLog {
    let mut rng = fastrand::Rng::new();
    let mut log = ClientLog::default();
    while Instant::now() < deadline {
        let id = ids.random(&mut rng);
        let op = workload.next_op(&mut rng);
        let began = Instant::now();
        match system.request(op, id).await {
            Ok(()) => log.latencies.push(began.elapsed()),
            Err(error) => {
                log.errors += 1;
                log.first_error
                    .get_or_insert_with(|| format!("{op} of id {id}: {error}"));
            }
        }
    }
    log
}

/// One client of a synchronous system: requests back to back until `deadline`, on this thread.
fn client_blocking(
    system: &System,
    workload: Workload,
    deadline: Instant,
    ids: IdRange,
) -> ClientLog {
    let mut rng = fastrand::Rng::new();
    let mut log = ClientLog::default();
    while Instant::now() < deadline {
        let id = ids.random(&mut rng);
        let op = workload.next_op(&mut rng);
        let began = Instant::now();
        match system.request_blocking(op, id) {
            Ok(()) => log.latencies.push(began.elapsed()),
            Err(error) => {
                log.errors += 1;
                log.first_error
                    .get_or_insert_with(|| format!("{op} of id {id}: {error}"));
            }
        }
    }
    log
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(values: &[u64]) -> Vec<Duration> {
        values.iter().map(|v| Duration::from_millis(*v)).collect()
    }

    #[test]
    fn nearest_rank_percentiles() {
        let sorted = ms(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
        assert_eq!(percentile(&sorted, 50.0), Some(Duration::from_millis(5)));
        assert_eq!(percentile(&sorted, 99.0), Some(Duration::from_millis(10)));
        assert_eq!(percentile(&sorted, 100.0), Some(Duration::from_millis(10)));
        assert_eq!(percentile(&ms(&[7]), 50.0), Some(Duration::from_millis(7)));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn paired_ratio_is_the_median_of_the_rounds() {
        let one =
            |slices: &[f64]| Measurement::of(Duration::from_secs(1), ms(&[1])).with_slices(slices);
        let baseline = one(&[100.0, 200.0, 300.0, 50.0]);
        // A burst in one slice (the last) moves the median little.
        let system = one(&[90.0, 180.0, 270.0, 500.0]);
        assert_eq!(system.paired_ratio(&baseline), Some(0.9));
        let odd = one(&[90.0, 220.0, 300.0]);
        assert_eq!(odd.paired_ratio(&baseline), Some(1.0));
        assert_eq!(one(&[]).paired_ratio(&baseline), None);
        assert_eq!(system.paired_ratio(&one(&[0.0, 0.0])), None);
    }

    #[test]
    fn mixed_writes_about_one_in_ten() {
        let mut rng = fastrand::Rng::with_seed(7);
        let writes = (0..100_000)
            .filter(|_| Workload::Mixed.next_op(&mut rng) == Op::Write)
            .count();
        assert!((9_000..11_000).contains(&writes), "{writes} writes");
        assert!((0..100).all(|_| Workload::Point.next_op(&mut rng) == Op::Read));
    }
}
