//! Allocations per request: the system allocator wrapped by `stats_alloc`, read before and after
//! a sequential run of requests per system.
//!
//! The counts cover every thread: the client's task, the connection's driver task (the same for
//! every system), and the router's background probe (a few allocations per probe interval, a
//! rounding error over the run).

use std::alloc::System as SystemAlloc;

use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};

use crate::BoxError;
use crate::setup::IdRange;
use crate::systems::{Op, System};

/// The allocator of `routing-load`.
#[global_allocator]
static GLOBAL: &StatsAlloc<SystemAlloc> = &INSTRUMENTED_SYSTEM;

/// Requests per reading: enough that the probe's few allocations round away.
pub(crate) const REQUESTS: u32 = 5_000;

/// The allocations (including reallocations) per request of `op` on `system`, one client,
/// after a warm-up.
pub(crate) async fn per_request(system: &System, op: Op, ids: IdRange) -> Result<f64, BoxError> {
    let mut rng = fastrand::Rng::with_seed(7);
    for _ in 0..200 {
        system.request(op, ids.random(&mut rng)).await?;
    }
    let before = GLOBAL.stats();
    for _ in 0..REQUESTS {
        system.request(op, ids.random(&mut rng)).await?;
    }
    let after = GLOBAL.stats();
    let count =
        (after.allocations + after.reallocations) - (before.allocations + before.reallocations);
    #[allow(clippy::cast_precision_loss)]
    Ok(count as f64 / f64::from(REQUESTS))
}
