//! The client-side cost of a request: allocations (the system allocator wrapped by
//! `stats_alloc`) and CPU time of this process (`CLOCK_PROCESS_CPUTIME_ID`), read before and
//! after a sequential run of requests per system.
//!
//! Both cover every thread of this process: the client's task, the connection's driver task (the
//! same for every system), and the router's background probe (a few allocations and
//! microseconds per probe interval, a rounding error over the run). The servers' work is in
//! their own processes and not counted.
//!
//! The requests run in a task spawned on the runtime's workers, as a web handler's do and as the
//! cells' clients do; run on the main thread (`block_on`), every response would also have to
//! wake that thread from outside the runtime, a cost no service pays.

use std::alloc::System as SystemAlloc;

use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};

use std::fmt::Write as _;

use crate::BoxError;
use crate::report::{cell_text, ratio};
use crate::setup::IdRange;
use crate::systems::{Op, System, SystemKind};

/// The allocator of `routing-load`.
#[global_allocator]
static GLOBAL: &StatsAlloc<SystemAlloc> = &INSTRUMENTED_SYSTEM;

/// Requests per reading: enough that the probe's few allocations round away.
pub(crate) const REQUESTS: u32 = 5_000;

/// What one request costs this process.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Cost {
    /// Allocations, reallocations included.
    pub(crate) allocations: f64,
    /// CPU time, all threads, in microseconds.
    pub(crate) cpu_micros: f64,
    /// Context switches of this process's threads (voluntary: a thread parked for lack of
    /// work, woken again by the next event), when the system reports them.
    pub(crate) switches: Option<f64>,
}

/// The cost per request of `op` on `system`, one client, after a warm-up, measured in a task on
/// the runtime's workers (see [`crate::cost`]).
pub(crate) async fn per_request(system: System, op: Op, ids: IdRange) -> Result<Cost, BoxError> {
    tokio::spawn(async move { sequential(&system, op, ids).await }).await?
}

/// The cost per request of `op` on `system`, requests one after another in this task.
async fn sequential(system: &System, op: Op, ids: IdRange) -> Result<Cost, BoxError> {
    let mut rng = fastrand::Rng::with_seed(7);
    for _ in 0..200 {
        request(system, op, ids.random(&mut rng)).await?;
    }
    let before = GLOBAL.stats();
    let switches_before = context_switches();
    let cpu_before = cpu_time();
    for _ in 0..REQUESTS {
        request(system, op, ids.random(&mut rng)).await?;
    }
    let cpu = cpu_time() - cpu_before;
    let switches = context_switches()
        .zip(switches_before)
        .map(|(after, before)| after.saturating_sub(before));
    let after = GLOBAL.stats();
    let count =
        (after.allocations + after.reallocations) - (before.allocations + before.reallocations);
    #[allow(clippy::cast_precision_loss)]
    Ok(Cost {
        allocations: count as f64 / f64::from(REQUESTS),
        cpu_micros: cpu * 1e6 / f64::from(REQUESTS),
        #[allow(clippy::cast_precision_loss)]
        switches: switches.map(|count| count as f64 / f64::from(REQUESTS)),
    })
}

/// One request: awaited, or, for a synchronous system, run on this worker thread with the
/// runtime told that it blocks.
async fn request(system: &System, op: Op, id: i64) -> Result<(), BoxError> {
    if system.is_sync() {
        tokio::task::block_in_place(|| system.request_blocking(op, id))
    } else {
        system.request(op, id).await
    }
}

/// This process's CPU time so far, in seconds.
fn cpu_time() -> f64 {
    crate::cpu::process_cpu().as_secs_f64()
}

/// The context switches of every thread of this process so far, from `/proc/self/task`.
fn context_switches() -> Option<u64> {
    let mut total = 0;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let Ok(status) = std::fs::read_to_string(task.ok()?.path().join("status")) else {
            continue;
        };
        for line in status.lines() {
            if let Some(count) = line
                .strip_prefix("voluntary_ctxt_switches:")
                .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"))
            {
                total += count.trim().parse::<u64>().ok()?;
            }
        }
    }
    Some(total)
}

/// The cost per request of one operation on one system (see [`crate::cost`]).
#[derive(Debug)]
pub(crate) struct Costs {
    /// The system.
    pub(crate) system: SystemKind,
    /// The operation.
    pub(crate) op: Op,
    /// The cost, or why it could not be measured.
    pub(crate) per_request: Result<Cost, String>,
}

/// The cost table of `costs`, each row against its system's baseline.
pub(crate) fn markdown(out: &mut String, costs: &[Costs]) {
    if costs.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "\n## Cost per request\n\nOne client, {} sequential requests per row after a \
         warm-up, in a task on the runtime's workers (as a handler runs). Allocations are counted by a wrapper of the system allocator \
         (`stats_alloc`), CPU time is this process's (`CLOCK_PROCESS_CPUTIME_ID`), both over \
         every thread: the request's task, the connection's driver task and the router's \
         health probe; the servers' work is not counted.\n",
        REQUESTS
    );
    let _ = writeln!(
        out,
        "| operation | system | allocations | vs baseline | CPU µs | vs baseline | context switches |"
    );
    let _ = writeln!(out, "|---|---|--:|--:|--:|--:|--:|");
    for row in costs {
        let baseline = costs
            .iter()
            .find(|b| b.system == row.system.baseline() && b.op == row.op)
            .and_then(|b| b.per_request.as_ref().ok());
        match &row.per_request {
            Ok(cost) => {
                let (extra, cpu_ratio) = match baseline {
                    Some(b) => (
                        format!("{:+.1}", cost.allocations - b.allocations),
                        ratio(Some(b.cpu_micros), Some(cost.cpu_micros)),
                    ),
                    None => ("–".to_owned(), "–".to_owned()),
                };
                let switches = cost
                    .switches
                    .map_or_else(|| "–".to_owned(), |s| format!("{s:.2}"));
                let _ = writeln!(
                    out,
                    "| {} | {} | {:.1} | {extra} | {:.1} | {cpu_ratio} | {switches} |",
                    row.op, row.system, cost.allocations, cost.cpu_micros
                );
            }
            Err(error) => {
                let _ = writeln!(
                    out,
                    "| {} | {} | failed: {} | – | – | – | – |",
                    row.op,
                    row.system,
                    cell_text(error)
                );
            }
        }
    }
}
