//! One cell of the load benchmark: every system at one workload and client count, measured in
//! short slices in which the systems take turns, over several sets of fresh pools.

use std::sync::Arc;

use crate::report::{Cell, Settings};
use crate::setup::IdRange;
use crate::systems::{Servers, System, SystemKind};
use crate::workload::{self, Measurement, Workload};

/// Slices each cell is measured in: the systems take turns, so that a drift of the machine
/// (another process, the servers' background work) weighs on every system alike. Short slices
/// (200 ms in a 5 s cell) leave a drift no time to favour one system: with five slices of a
/// second, one cell's ratio of the router to the baseline was 0.83×, 1.01× and 0.91× in three
/// runs of the same code; with 25, 0.93×, 0.97× and 0.93×.
pub(crate) const ROUNDS: u32 = 25;

/// Measures every system at one workload and client count. The cell runs in `settings.epochs`
/// epochs; in each, every system gets pools of its own, built anew (so new sessions, served by
/// new server processes, but for pgpool-II's, whose children keep their server connections),
/// and a warm-up, then the systems take turns in their share of the [`ROUNDS`] slices that add
/// up to the cell's duration, in a new random order each round: no system sits next to its
/// baseline more often than another, and none gets the slice after each warm-up. A system that
/// cannot be built fails its cell.
///
/// Fresh pools per epoch spread each system over several sets of server processes: how one
/// set happens to sit on the machine's cores and caches otherwise decides a whole cell.
pub(crate) async fn measure(
    servers: &Servers,
    settings: &Settings,
    workload: Workload,
    clients: usize,
    systems: &[SystemKind],
    ids: IdRange,
) -> Vec<Cell> {
    let mut measured: Vec<(SystemKind, Result<Option<Measurement>, String>)> =
        systems.iter().map(|system| (*system, Ok(None))).collect();
    let slice = settings.cell / ROUNDS;
    let epochs = settings.epochs.clamp(1, ROUNDS);
    let mut rng = fastrand::Rng::new();
    for epoch in 0..epochs {
        let mut built = Vec::new();
        for (index, (system, so_far)) in measured.iter_mut().enumerate() {
            if so_far.is_err() {
                continue;
            }
            match System::build(*system, servers, clients, settings.recycling) {
                Ok(pools) => {
                    let pools = Arc::new(pools);
                    workload::run(&pools, workload, clients, settings.warmup, ids).await;
                    built.push((index, pools));
                }
                Err(error) => *so_far = Err(format!("cannot build the system: {error}")),
            }
        }
        for _ in 0..rounds_in(epoch, epochs) {
            rng.shuffle(&mut built);
            for (index, pools) in &built {
                let run = workload::run(pools, workload, clients, slice, ids).await;
                if let Ok(so_far) = &mut measured[*index].1 {
                    *so_far = Some(match so_far.take() {
                        Some(earlier) => earlier.merge(run),
                        None => run,
                    });
                }
            }
        }
        // The epoch's pools close here, before the next epoch's open.
        drop(built);
    }
    measured
        .into_iter()
        .map(|(system, measured)| {
            let outcome =
                measured.and_then(|measured| measured.ok_or_else(|| "not measured".to_owned()));
            match &outcome {
                Ok(m) => eprintln!(
                    "  {workload:<5} {clients:>2} clients  {system:<8} {:>8.0} req/s  p50 {:>7.3} ms  p99 {:>7.3} ms  errors {}",
                    m.throughput(),
                    m.percentile(50.0)
                        .map_or(f64::NAN, |d| d.as_secs_f64() * 1e3),
                    m.percentile(99.0)
                        .map_or(f64::NAN, |d| d.as_secs_f64() * 1e3),
                    m.errors
                ),
                Err(error) => {
                    eprintln!("  {workload:<5} {clients:>2} clients  {system:<8} failed: {error}")
                }
            }
            Cell {
                workload,
                clients,
                system,
                outcome,
            }
        })
        .collect()
}

/// The `max_connections` each server needs for `systems` at up to `clients` clients (never
/// below PostgreSQL's usual 200): every system but pgpool-II holds up to `clients` connections
/// to a server, twice over across an epoch's end (the closed pools' server processes may still
/// be exiting while the next epoch's open), pgpool-II one per child (`clients` + 4), and the
/// routers' probes, the seeding and the statistics a few more.
pub(crate) fn server_connections(systems: &[SystemKind], clients: usize) -> u32 {
    let direct = systems
        .iter()
        .filter(|system| **system != SystemKind::Pgpool)
        .count();
    let pgpool = if systems.contains(&SystemKind::Pgpool) {
        clients + 4
    } else {
        0
    };
    let needed = 2 * direct * clients + pgpool + 20;
    u32::try_from(needed).unwrap_or(u32::MAX).max(200)
}

/// The rounds of epoch `epoch` of `epochs` (at most [`ROUNDS`]): shares as even as can be, that
/// add up to [`ROUNDS`].
fn rounds_in(epoch: u32, epochs: u32) -> u32 {
    ROUNDS * (epoch + 1) / epochs - ROUNDS * epoch / epochs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_have_room_for_every_pool() {
        let all = SystemKind::ALL;
        // Nine direct systems and pgpool-II at 64 clients: 2 × 9 × 64 + 68 + 20.
        assert_eq!(server_connections(&all, 64), 1240);
        assert_eq!(server_connections(&[SystemKind::Baseline], 4), 200);
    }

    #[test]
    fn every_epoch_has_rounds_and_they_add_up() {
        for epochs in 1..=ROUNDS {
            let shares: Vec<u32> = (0..epochs).map(|e| rounds_in(e, epochs)).collect();
            assert_eq!(
                shares.iter().sum::<u32>(),
                ROUNDS,
                "{epochs} epochs: {shares:?}"
            );
            let (least, most) = (shares.iter().min(), shares.iter().max());
            assert!(least >= Some(&1), "{epochs} epochs: {shares:?}");
            assert!(
                most.zip(least).is_some_and(|(m, l)| m - l <= 1),
                "{epochs}: {shares:?}"
            );
        }
    }
}
