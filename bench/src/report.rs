//! The results as Markdown: the machine, the setup, one table per workload with the ratios to the
//! baseline of the same run, the primary offload and the failover.

use std::fmt::Write as _;
use std::time::Duration;

use crate::cost::Costs;
use crate::failover::{self, Failover};
use crate::machine::Machine;
use crate::offload::{self, Offload};
use crate::setup::{PRODUCTS, REPLICAS};
use crate::systems::{Recycling, SystemKind};
use crate::workload::{Measurement, Workload};

/// How the run was configured.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    /// Measured time per cell.
    pub(crate) cell: Duration,
    /// Epochs per cell, each on fresh pools.
    pub(crate) epochs: u32,
    /// Unmeasured warm-up before each epoch of a cell.
    pub(crate) warmup: Duration,
    /// Client counts.
    pub(crate) clients: Vec<usize>,
    /// Workloads.
    pub(crate) workloads: Vec<Workload>,
    /// Recycling of the plain pools.
    pub(crate) recycling: Recycling,
}

/// One system at one workload and client count.
#[derive(Clone, Debug)]
pub(crate) struct Cell {
    /// The workload.
    pub(crate) workload: Workload,
    /// Concurrent clients.
    pub(crate) clients: usize,
    /// The system.
    pub(crate) system: SystemKind,
    /// What was measured, or why nothing was.
    pub(crate) outcome: Result<Measurement, String>,
}

/// Everything the run found.
#[derive(Debug)]
pub(crate) struct Report {
    /// The machine.
    pub(crate) machine: Machine,
    /// The configuration.
    pub(crate) settings: Settings,
    /// What became of pgpool-II: verified, not installed, or failed.
    pub(crate) pgpool_note: String,
    /// Every cell measured, in run order.
    pub(crate) cells: Vec<Cell>,
    /// The primary offload run, or why it failed.
    pub(crate) offload: Result<Offload, String>,
    /// The failover run, or why it failed.
    pub(crate) failover: Result<Failover, String>,
    /// The client-side cost per request, by system and operation.
    pub(crate) costs: Vec<Costs>,
    /// The connection paths measured (TLS, PgBouncer).
    pub(crate) paths: Vec<crate::paths::PathRun>,
}

impl Report {
    /// The whole report.
    pub(crate) fn markdown(&self) -> String {
        let mut out = String::new();
        self.write_header(&mut out);
        for workload in &self.settings.workloads {
            self.write_workload(&mut out, *workload);
        }
        crate::cost::markdown(&mut out, &self.costs);
        crate::paths::markdown(&mut out, &self.paths, &self.settings);
        self.write_offload(&mut out, &self.offload);
        write_failover(&mut out, &self.failover);
        out
    }

    fn write_header(&self, out: &mut String) {
        let m = &self.machine;
        let s = &self.settings;
        let _ = writeln!(out, "# routing-load\n");
        let _ = writeln!(out, "## Machine\n");
        let _ = writeln!(out, "| | |\n|---|---|");
        for (key, value) in [
            ("CPU", &m.cpu),
            ("cores", &m.cores),
            ("memory", &m.memory),
            ("PostgreSQL", &m.postgres),
            ("pgpool-II", &m.pgpool),
            ("rustc", &m.rustc),
        ] {
            let _ = writeln!(out, "| {key} | {} |", cell_text(value));
        }
        let _ = writeln!(out, "\n## Setup\n");
        let _ = writeln!(
            out,
            "- A throwaway local cluster on this machine (clients and servers share its cores): \
             one primary and {REPLICAS} streaming replicas on 127.0.0.1, `products` seeded with \
             {PRODUCTS} rows."
        );
        let _ = writeln!(
            out,
            "- Each cell: {} measured per system, in {} slices of {} in which the systems take \
             turns (in a new random order each round), so that a drift of the machine (a \
             checkpoint, the servers' background work, another process) weighs on every system \
             alike; in {} epoch(s), each of which builds every system's pools anew (new \
             sessions, served by new server processes, but through pgpool-II, whose children \
             keep theirs) and warms them up for {} (not measured). Every request takes \
             a fresh connection from its pool and returns it, as a web handler does; its \
             latency runs from the checkout to the release. Throughput counts successful \
             requests.",
            secs(s.cell),
            crate::cells::ROUNDS,
            secs(s.cell / crate::cells::ROUNDS),
            s.epochs.clamp(1, crate::cells::ROUNDS),
            secs(s.warmup),
        );
        let _ = writeln!(
            out,
            "- CPU per request, read before and after each slice: `client` is this process (the \
             clients, the connections' driver tasks, the router or the hand-written routing), \
             `server` the PostgreSQL, PgBouncer and pgpool-II processes (in clock ticks of \
             10 ms, summed over the slices). Where the machine is saturated, throughput follows \
             their sum."
        );
        let _ = writeln!(
            out,
            "- Pools: `max_size` = the client count, per server (baseline, routed) or to \
             pgpool-II; checkout and connect timeouts 5 s everywhere."
        );
        let recycling = match s.recycling {
            Recycling::Verified => {
                "`verified` (`--plain-recycling verified`, diesel-async's default: a `SELECT 1` \
                 round trip on every checkout, which the router's replica pools skip, so that the \
                 ratios then also measure that choice)"
            }
            Recycling::Fast => {
                "`fast` (no round trip at checkout, as the router's replica pools: the ratios \
                 measure the routing itself; `--plain-recycling verified` gives diesel-async's \
                 default instead)"
            }
        };
        let _ = writeln!(
            out,
            "- `baseline`: plain diesel-async deadpool pools, one per server, as applications \
             write by hand: reads pick a replica pool round robin (an `AtomicUsize`), writes use \
             the primary's pool. Recycling {recycling}."
        );
        let _ = writeln!(
            out,
            "- `routed`: `RoutedPool` over the same servers; each request runs in \
             `with_read_replica(true, ..)` (the scope a web middleware sets), checkout included; \
             the router sends the `UPDATE`s to the primary itself. Its replica pools recycle \
             `fast` (a dead connection is retried on another server), its primary pool as the \
             baseline's (`verify_primary_checkouts`)."
        );
        let _ = writeln!(
            out,
            "- `pgpool`: one plain deadpool pool (recycling as the baseline's) to pgpool-II in \
             streaming-replication load-balancing mode, primary weight 0, replicas weight 1. \
             {}",
            cell_text(&self.pgpool_note)
        );
        let _ = writeln!(
            out,
            "- `sync-baseline`: synchronous diesel, plain r2d2 pools of `PgConnection` (libpq), one \
             per server, opened on demand, a `SELECT 1` at checkout only with `verified` \
             recycling: reads pick a replica pool round robin, writes use the primary's pool. \
             `sync-routed`: `sync::RoutedPool` over the same servers, each request in \
             `with_read_replica_sync(true, ..)`. Their clients are threads (tokio's blocking \
             pool), one per client."
        );
        let _ = writeln!(
            out,
            "- Ratios divide a system's figure by its baseline's in the same cell (`baseline` for \
             the async systems, `sync-baseline` for the synchronous ones): above 1 for req/s is \
             faster, below 1 for p50 is faster. `req/s vs baseline` divides the throughputs of \
             the whole cell; `paired` is the median, over the cell's rounds, of the system's \
             slice divided by its baseline's slice of the same round. A `-twin` is its baseline \
             again, its slices placed as every other system's: its ratios are the spread of the \
             measurement itself."
        );
    }

    fn write_workload(&self, out: &mut String, workload: Workload) {
        let _ = writeln!(
            out,
            "\n## Workload `{workload}`\n\n{}\n",
            workload.description()
        );
        let _ = writeln!(
            out,
            "| clients | system | req/s | p50 | p99 | req/s vs baseline | paired | p50 vs baseline | p99 vs baseline | client CPU µs/req | server CPU µs/req | errors |"
        );
        let _ = writeln!(out, "|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
        let mut notes = Vec::new();
        for clients in &self.settings.clients {
            let cells: Vec<&Cell> = self
                .cells
                .iter()
                .filter(|c| c.workload == workload && c.clients == *clients)
                .collect();
            let baseline_of = |kind: SystemKind| {
                cells
                    .iter()
                    .find(|c| c.system == kind.baseline())
                    .and_then(|c| c.outcome.as_ref().ok())
            };
            for cell in SystemKind::ALL
                .iter()
                .filter_map(|kind| cells.iter().find(|c| c.system == *kind))
            {
                let baseline = baseline_of(cell.system);
                match &cell.outcome {
                    Ok(m) => {
                        let (client_cpu, server_cpu) = m.cpu_micros_per_request().map_or_else(
                            || ("–".to_owned(), "–".to_owned()),
                            |(client, servers)| (format!("{client:.1}"), format!("{servers:.1}")),
                        );
                        let _ = writeln!(
                            out,
                            "| {clients} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {client_cpu} | {server_cpu} | {} |",
                            cell.system,
                            m.throughput(),
                            opt_ms(m.percentile(50.0)),
                            opt_ms(m.percentile(99.0)),
                            ratio(baseline.map(Measurement::throughput), Some(m.throughput())),
                            ratio(Some(1.0), baseline.and_then(|b| m.paired_ratio(b))),
                            ratio(
                                baseline.and_then(|b| b.percentile(50.0)).map(millis),
                                m.percentile(50.0).map(millis)
                            ),
                            ratio(
                                baseline.and_then(|b| b.percentile(99.0)).map(millis),
                                m.percentile(99.0).map(millis)
                            ),
                            m.errors,
                        );
                        if let Some(error) = &m.first_error {
                            notes.push(format!(
                                "{} at {clients} clients: {} errors, the first: {error}",
                                cell.system, m.errors
                            ));
                        }
                    }
                    Err(error) => {
                        let _ = writeln!(
                            out,
                            "| {clients} | {} | – | – | – | – | – | – | – | – | – | failed |",
                            cell.system
                        );
                        notes.push(format!("{} at {clients} clients: {error}", cell.system));
                    }
                }
            }
        }
        for note in notes {
            let _ = writeln!(out, "\n- {}", cell_text(&note));
        }
    }

    fn write_offload(&self, out: &mut String, offload: &Result<Offload, String>) {
        let _ = writeln!(
            out,
            "\n## Primary offload\n\n`routed`, workload `point` (read-only), {} clients, {}. \
             Committed transactions per server (`pg_stat_database.xact_commit`, database \
             `postgres`), read on separate connections before and after; after the run the pools \
             are dropped and the servers get {} to flush their statistics.\n",
            offload::CLIENTS,
            secs(self.settings.cell),
            secs(offload::SETTLE),
        );
        let offload = match offload {
            Ok(offload) => offload,
            Err(error) => {
                let _ = writeln!(out, "Failed: {}", cell_text(error));
                return;
            }
        };
        let _ = writeln!(
            out,
            "| server | xact_commit before | after | transactions | statements routed |"
        );
        let _ = writeln!(out, "|---|--:|--:|--:|--:|");
        for server in &offload.servers {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} |",
                server.name,
                server.before,
                server.after,
                server.delta(),
                server.routed
            );
        }
        let m = &offload.measurement;
        let share = offload
            .primary_share()
            .map_or_else(|| "unknown".to_owned(), |s| format!("{:.3} %", s * 100.0));
        let verdict = match offload.primary_share() {
            Some(s) if s < 0.01 => "met",
            Some(_) => "missed",
            None => "not measured",
        };
        // The probe runs once at the pool's first use, then once per interval until the pool
        // is gone.
        let probes = m.elapsed.as_secs() + 1;
        let routed_to_primary = offload.servers.first().map_or(0, |s| s.routed);
        let workload_part = if routed_to_primary == 0 {
            "None of the primary's transactions are the workload's: the router sent it no \
             statement."
                .to_owned()
        } else {
            format!("The router sent the primary {routed_to_primary} of the workload's statements.")
        };
        let _ = writeln!(
            out,
            "\nPrimary share of the transactions: **{share}** (target under 1 %: {verdict}), for \
             {} requests ({:.0} req/s, {} errors). {workload_part} Besides the workload, the \
             router's background health probe sends one query per second to every server \
             (about {probes} each here, on a connection whose session setup commits too), the \
             statistics connection opened before the run commits its session setup and query on \
             every server, and autovacuum works on the primary.",
            m.requests,
            m.throughput(),
            m.errors
        );
    }
}

fn write_failover(out: &mut String, failover: &Result<Failover, String>) {
    let _ = writeln!(
        out,
        "\n## Failover\n\n`routed`, workload `point` (each read also selects \
         `inet_server_port()`), {} clients, default health check (1 s probe). \
         `stop_replica(0)` at {}, `start_replica(0)` at {} (it returns once the replica streams \
         again); the load runs {}, and at least {} after replica 0 served again. The router's \
         statements routed to replica 0 are sampled every 10 ms.\n",
        failover::CLIENTS,
        secs(failover::STOP_AT),
        secs(failover::RESTART_AT),
        secs(failover::RUN),
        secs(failover::AFTER_RETURN),
    );
    let f = match failover {
        Ok(f) => f,
        Err(error) => {
            let _ = writeln!(out, "Failed: {}", cell_text(error));
            return;
        }
    };
    let rows = [
        (
            "failed reads".to_owned(),
            f.failed.to_string(),
            if f.failed == 0 { "0: met" } else { "0: missed" },
        ),
        (
            "reads served".to_owned(),
            format!(
                "{} in {} ({:.0}/s)",
                f.reads,
                secs(f.ended),
                f.reads as f64 / f.ended.as_secs_f64().max(1e-9)
            ),
            "",
        ),
        (
            "`stop_replica(0)` took".to_owned(),
            ms(f.stop_ended.saturating_sub(f.stop_began)),
            "",
        ),
        (
            "stop began → last read sent to replica 0".to_owned(),
            f.last_routed_while_down.map_or_else(
                || "none after the stop began".to_owned(),
                |t| format!("{} (10 ms sampling)", signed_ms(t, f.stop_began)),
            ),
            "",
        ),
        (
            "stop began → last read answered by replica 0".to_owned(),
            f.last_answer_before_restart
                .map_or_else(|| "none".to_owned(), |t| signed_ms(t, f.stop_began)),
            "",
        ),
        (
            "`start_replica(0)` took".to_owned(),
            ms(f.restart_ended.saturating_sub(f.restart_began)),
            "",
        ),
        (
            "`start_replica(0)` returned → first read served by replica 0".to_owned(),
            f.first_answer_after_restart.map_or_else(
                || format!("not within {}", secs(failover::RETURN_TIMEOUT)),
                |t| signed_ms(t, f.restart_ended),
            ),
            "about one probe interval (1 s) at most",
        ),
        (
            "`start_replica(0)` returned → statements routed to replica 0 grow".to_owned(),
            f.first_routed_after_restart.map_or_else(
                || "never".to_owned(),
                |t| format!("{} (10 ms sampling)", signed_ms(t, f.restart_ended)),
            ),
            "",
        ),
        ("bans of replica 0".to_owned(), f.bans.to_string(), ""),
    ];
    let _ = writeln!(out, "| measure | value | target |\n|---|--:|---|");
    for (measure, value, target) in rows {
        let _ = writeln!(out, "| {measure} | {value} | {target} |");
    }
    if let Some(error) = &f.first_error {
        let _ = writeln!(out, "\nFirst failed read: {}", cell_text(error));
    }
    let _ = writeln!(
        out,
        "\nA negative time means the event came before the reference: a replica that accepts \
         connections is admitted by the next probe, which may come before `start_replica` has \
         seen it stream."
    );
}

/// `d` in milliseconds.
pub(crate) fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// A latency: three decimals of a millisecond.
pub(crate) fn opt_ms(d: Option<Duration>) -> String {
    d.map_or_else(|| "–".to_owned(), |d| format!("{:.3} ms", millis(d)))
}

/// A span in whole milliseconds.
fn ms(d: Duration) -> String {
    format!("{:.0} ms", millis(d))
}

/// `t - reference` in whole milliseconds, with its sign.
fn signed_ms(t: Duration, reference: Duration) -> String {
    let diff = millis(t) - millis(reference);
    format!("{diff:+.0} ms")
}

/// A duration in seconds, as short as it goes.
fn secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{s:.0} s")
    } else {
        format!("{s:.1} s")
    }
}

/// `value / baseline` as `1.23×`, or a dash when either is missing or zero.
pub(crate) fn ratio(baseline: Option<f64>, value: Option<f64>) -> String {
    match (baseline, value) {
        (Some(b), Some(v)) if b > 0.0 => format!("{:.2}×", v / b),
        _ => "–".to_owned(),
    }
}

/// Text safe inside a Markdown table cell or list item: one line, no column breaks.
pub(crate) fn cell_text(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(ratio(Some(2.0), Some(3.0)), "1.50×");
        assert_eq!(ratio(Some(0.0), Some(3.0)), "–");
        assert_eq!(ratio(None, Some(3.0)), "–");
        assert_eq!(opt_ms(Some(Duration::from_micros(412))), "0.412 ms");
        assert_eq!(
            signed_ms(Duration::from_millis(1900), Duration::from_secs(2)),
            "-100 ms"
        );
        assert_eq!(secs(Duration::from_millis(500)), "0.5 s");
        assert_eq!(secs(Duration::from_secs(5)), "5 s");
        assert_eq!(cell_text("a | b\n c"), "a \\| b c");
    }
}
