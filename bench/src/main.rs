//! `routing-load`: a load benchmark of read-replica routing, on a throwaway local cluster.
//!
//! ```text
//! cargo run --release -p routing-bench --bin routing-load -- [--seconds N] [--epochs N]
//!     [--clients 1,4,16] [--workloads point,mixed] [--markdown FILE]
//!     [--plain-recycling fast|verified]
//!     [--systems baseline,baseline-twin,routed,pgpool,sync-baseline,sync-baseline-twin,
//!     sync-routed]
//!     [--paths tls,pgbouncer] [--no-paths] [--no-scenarios] [--charts DIR]
//! ```
//!
//! It starts a primary with two streaming replicas, migrates and seeds them, and measures four
//! async systems with pools of the same size over the same servers, at every workload and client
//! count: `baseline` (hand-written round robin over plain deadpool pools), `baseline-twin` (the
//! same again, on pools of its own: an A/A control of the measurement), `routed`
//! (`routing_core::RoutedPool`) and `pgpool` (pgpool-II in load-balancing mode, skipped when not
//! installed), and two synchronous ones: `sync-baseline` (hand-written round robin over plain
//! r2d2 pools of `diesel::PgConnection`, and its twin `sync-baseline-twin`) and `sync-routed`
//! (`routing_core::sync::RoutedPool`).
//! Then the baseline and the router again on two connection paths, each on a cluster of its
//! own: over TLS, and through PgBouncer. Then it measures the primary's share of a read-only
//! workload's transactions through the router, and the router's behaviour while a replica stops
//! and starts again. The results go to stdout as Markdown (and to `--markdown FILE`), and as SVG
//! charts to `--charts DIR`; progress goes to stderr.
//!
//! Modules: [`systems`] the systems under test, [`workload`] the timed loop, [`cells`] the
//! slices and epochs of a cell, [`pgpool`]
//! pgpool-II's process, [`paths`] TLS and PgBouncer, [`offload`] and [`failover`] the two router
//! scenarios, [`setup`] the cluster, [`cost`] the cost per request, [`machine`], [`report`] and
//! [`charts`] the output.

mod blocking;
mod cells;
mod charts;
mod cost;
mod cpu;
mod failover;
mod machine;
mod offload;
mod paths;
mod pgpool;
mod report;
mod setup;
mod systems;
mod workload;

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use routing_cluster::LocalCluster;

use crate::cost::Costs;
use crate::pgpool::Pgpool;
use crate::report::{Report, Settings};
use crate::setup::IdRange;
use crate::systems::{Op, Recycling, Servers, System, SystemKind};
use crate::workload::Workload;

/// The error type of the run's steps.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The most clients per cell: every server allows 200 connections, and pgpool-II keeps one per
/// child and backend besides the pools.
const MAX_CLIENTS: i64 = 64;

/// Unmeasured requests before each epoch of a cell: pools open their connections, caches warm
/// up.
const WARMUP: Duration = Duration::from_millis(500);

/// A load benchmark of read-replica routing on a throwaway local PostgreSQL cluster: a plain
/// hand-written baseline, `RoutedPool`, and pgpool-II, compared in the same run.
#[derive(Debug, Parser)]
#[command(name = "routing-load", version)]
struct Args {
    /// Measured seconds per cell (system, workload, client count); also the length of the
    /// primary offload run.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3600))]
    seconds: u64,

    /// Epochs per cell: each builds every system's pools anew (new sessions, new server
    /// processes) and takes its share of the cell's slices; from 1 to 25.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=25))]
    epochs: u32,

    /// Concurrent clients, comma-separated; each from 1 to 64.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1,4,16",
        value_parser = clap::value_parser!(u16).range(1..=MAX_CLIENTS)
    )]
    clients: Vec<u16>,

    /// Workloads, comma-separated: `point` (read-only point SELECTs) and `mixed` (90 % point
    /// SELECTs, 10 % single-row UPDATEs).
    #[arg(long, value_delimiter = ',', default_value = "point,mixed")]
    workloads: Vec<Workload>,

    /// Also write the Markdown report to FILE.
    #[arg(long, value_name = "FILE")]
    markdown: Option<PathBuf>,

    /// How the plain pools (baseline and pgpool) check a pooled connection at checkout:
    /// `verified` (diesel-async's default, a `SELECT 1` each time) or `fast` (no round trip,
    /// like the router's replica pools).
    #[arg(long, value_enum, default_value_t = Recycling::Fast)]
    plain_recycling: Recycling,

    /// Systems to measure, comma-separated (the baselines are needed for the ratios:
    /// `baseline` for `routed` and `pgpool`, `sync-baseline` for `sync-routed`).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "baseline,baseline-twin,routed,pgpool,sync-baseline,sync-baseline-twin,sync-routed"
    )]
    systems: Vec<SystemKind>,

    /// Connection paths to measure the baseline and the router on, each on a cluster of its
    /// own, comma-separated: `tls` (every connection over TLS) and `pgbouncer` (through
    /// PgBouncer in session mode).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "tls,pgbouncer"
    )]
    paths: Vec<paths::Path>,

    /// The operations whose cost per request is measured, comma-separated: `read` (the point
    /// `SELECT`) and `write` (the single-row `UPDATE`).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "read,write")]
    cost_ops: Vec<Op>,

    /// Skip the connection paths.
    #[arg(long)]
    no_paths: bool,

    /// Skip the primary offload and failover scenarios.
    #[arg(long)]
    no_scenarios: bool,

    /// Also draw SVG charts into DIR (created if missing): `<workload>.svg` (throughput and
    /// p50/p99 per system and client count) and `failover.svg` (the failover timeline).
    #[arg(long, value_name = "DIR")]
    charts: Option<PathBuf>,
}

impl Args {
    /// The run's settings, without repeated client counts or workloads.
    fn settings(&self) -> Settings {
        let mut clients: Vec<usize> = Vec::new();
        for count in self.clients.iter().map(|c| usize::from(*c)) {
            if !clients.contains(&count) {
                clients.push(count);
            }
        }
        let mut workloads = Vec::new();
        for workload in &self.workloads {
            if !workloads.contains(workload) {
                workloads.push(*workload);
            }
        }
        Settings {
            cell: Duration::from_secs(self.seconds),
            epochs: self.epochs,
            warmup: WARMUP,
            clients,
            workloads,
            recycling: self.plain_recycling,
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("routing-load: cannot start the tokio runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        tokio::select! {
            outcome = run(&args) => outcome,
            () = interrupted() => Err("interrupted; the cluster and pgpool-II were stopped".into()),
        }
    });
    // Client tasks still running after an interruption end with the runtime.
    runtime.shutdown_timeout(Duration::from_secs(1));
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("routing-load: some measurements failed; see the report");
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("routing-load: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on Ctrl-C; never when the signal cannot be watched.
async fn interrupted() {
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// The whole run; `Ok(false)` when the report holds a failed measurement. Dropping the future
/// (on Ctrl-C) stops pgpool-II and the cluster through their `Drop`.
async fn run(args: &Args) -> Result<bool, BoxError> {
    let settings = args.settings();
    // Fail before the run, not after it, on a file that cannot be written.
    let mut markdown = match &args.markdown {
        Some(path) => Some((
            path,
            std::fs::File::create(path)
                .map_err(|e| format!("cannot create {}: {e}", path.display()))?,
        )),
        None => None,
    };
    let pgpool_program = pgpool::find();

    eprintln!(
        "starting a throwaway cluster (a primary and two streaming replicas), seeding it ..."
    );
    let max_clients = settings.clients.iter().copied().max().unwrap_or(1);
    let connections = cells::server_connections(&args.systems, max_clients);
    let (cluster, ids) = setup::start(LocalCluster::builder().max_connections(connections)).await?;
    eprintln!(
        "  primary on port {}, replicas on ports {} and {}",
        cluster.primary_port(),
        cluster.replica_port(0),
        cluster.replica_port(1)
    );
    let machine = machine::describe(cluster.bin_dir(), pgpool_program.as_deref()).await;
    let (pgpool, pgpool_note) = if args.systems.contains(&SystemKind::Pgpool) {
        start_pgpool(pgpool_program, &cluster, max_clients).await
    } else {
        (None, "pgpool-II was not asked for.".to_owned())
    };
    let servers = Servers {
        primary: cluster.primary_url(),
        replicas: cluster.replica_urls(),
        pgpool: pgpool.as_ref().map(Pgpool::url),
        tls: None,
    };

    let systems: Vec<SystemKind> = SystemKind::ALL
        .into_iter()
        .filter(|system| args.systems.contains(system))
        .filter(|system| *system != SystemKind::Pgpool || pgpool.is_some())
        .collect();
    let mut cells = Vec::new();
    for workload in &settings.workloads {
        for clients in &settings.clients {
            cells.extend(
                cells::measure(&servers, &settings, *workload, *clients, &systems, ids).await,
            );
        }
    }
    let costs = measure_costs(&servers, &settings, &systems, &args.cost_ops, ids).await;
    let pgpool_note = match &pgpool {
        Some(pgpool) => format!("{pgpool_note} {}", node_selects_note(pgpool).await),
        None => pgpool_note,
    };
    drop(pgpool);

    let (offload, failover) = if args.no_scenarios {
        (
            Err("skipped (--no-scenarios)".to_owned()),
            Err("skipped (--no-scenarios)".to_owned()),
        )
    } else {
        eprintln!(
            "primary offload: routed, point, {} clients, {} s ...",
            offload::CLIENTS,
            settings.cell.as_secs()
        );
        let offload = offload::measure(&cluster, settings.cell, ids)
            .await
            .map_err(|e| e.to_string());
        eprintln!(
            "failover: routed, point, {} clients, replica 0 stopped and started again ...",
            failover::CLIENTS
        );
        let failover = failover::measure(&cluster, ids)
            .await
            .map_err(|e| e.to_string());
        (offload, failover)
    };
    eprintln!("stopping the cluster ...");
    drop(cluster);

    let mut path_runs = Vec::new();
    if !args.no_paths {
        for path in &args.paths {
            if path_runs
                .iter()
                .any(|run: &paths::PathRun| run.path == *path)
            {
                continue;
            }
            path_runs.push(paths::measure(*path, &settings).await);
        }
    }

    let path_cells_ok = path_runs.iter().all(|run| {
        run.cells.as_ref().is_ok_and(|cells| {
            cells
                .iter()
                .all(|c| c.outcome.as_ref().is_ok_and(|m| m.errors == 0))
        })
    });
    let all_ok = (args.no_scenarios || (offload.is_ok() && failover.is_ok()))
        && path_cells_ok
        && cells
            .iter()
            .all(|c| c.outcome.as_ref().is_ok_and(|m| m.errors == 0));
    let report = Report {
        machine,
        settings,
        pgpool_note,
        cells,
        offload,
        failover,
        costs,
        paths: path_runs,
    };
    if let Some(dir) = &args.charts {
        for path in charts::write(dir, &report)? {
            eprintln!("chart written to {}", path.display());
        }
    }
    let text = report.markdown();
    if let Some((path, file)) = &mut markdown {
        file.write_all(text.as_bytes())
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        eprintln!("report written to {}", path.display());
    }
    std::io::stdout()
        .lock()
        .write_all(text.as_bytes())
        .map_err(|e| format!("cannot write the report to stdout: {e}"))?;
    Ok(all_ok)
}

/// The client-side cost per request of each system but pgpool-II (whose work is in its own
/// processes) and the baselines' twins, for each of `ops` (a read, a write).
async fn measure_costs(
    servers: &Servers,
    settings: &Settings,
    systems: &[SystemKind],
    ops: &[Op],
    ids: IdRange,
) -> Vec<Costs> {
    let mut rows = Vec::new();
    for op in [Op::Read, Op::Write]
        .into_iter()
        .filter(|op| ops.contains(op))
    {
        // pgpool-II's work is in its own processes; a twin's is its baseline's.
        for &system in systems.iter().filter(|s| {
            !matches!(
                s,
                SystemKind::Pgpool | SystemKind::BaselineTwin | SystemKind::SyncBaselineTwin
            )
        }) {
            eprintln!("cost per request: {system}, {op} ...");
            let per_request = match System::build(system, servers, 1, settings.recycling) {
                Ok(pools) => cost::per_request(pools, op, ids)
                    .await
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            rows.push(Costs {
                system,
                op,
                per_request,
            });
        }
    }
    rows
}

/// Starts pgpool-II when installed; the note says what became of it, for the report.
async fn start_pgpool(
    program: Option<PathBuf>,
    cluster: &LocalCluster,
    max_clients: usize,
) -> (Option<Pgpool>, String) {
    let Some(program) = program else {
        let note = "pgpool-II is not installed (`apt-get install pgpool2`); skipped.".to_owned();
        eprintln!("{note}");
        return (None, note);
    };
    eprintln!("starting pgpool-II ({}) ...", program.display());
    match Pgpool::start(&program, cluster, max_clients).await {
        Ok(pgpool) => {
            let (on_replica, sessions) = pgpool.replica_sessions();
            let note = format!(
                "Verified before measuring: `SELECT pg_is_in_recovery()` through it answered \
                 true in {on_replica} of {sessions} new sessions (it picks a session's \
                 load-balancing node at connect time, not per statement).{}",
                if pgpool.runs_as_postgres() {
                    " It runs as the `postgres` user (it would not run as root)."
                } else {
                    ""
                }
            );
            eprintln!("  pgpool-II on {}", pgpool.url());
            (Some(pgpool), note)
        }
        Err(error) => {
            eprintln!("pgpool-II could not be used, skipping it: {error}");
            let note = format!(
                "pgpool-II could not be used and was skipped: {} (its log tail is on stderr).",
                error.summary()
            );
            (None, note)
        }
    }
}

/// What `SHOW POOL_NODES` says of the `SELECT`s pgpool-II sent to each backend, for the report.
async fn node_selects_note(pgpool: &Pgpool) -> String {
    match pgpool.node_selects().await {
        Ok(nodes) => format!(
            "`SHOW POOL_NODES` after its cells, `SELECT`s per backend (verification and \
             `SELECT 1` checks included): {}.",
            nodes
                .iter()
                .map(|n| format!("{} :{} {}", n.role, n.port, n.select_cnt))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Err(error) => {
            eprintln!("SHOW POOL_NODES through pgpool-II failed: {error}");
            "`SHOW POOL_NODES` failed after its cells.".to_owned()
        }
    }
}
