//! Connection paths: the baseline and the router over TLS (beside both over plain TCP to the
//! same servers), and both through PgBouncer, each path on a throwaway cluster of its own, with
//! ratios against the baseline measured on the same cluster, in the same slices.

use std::fmt::Write as _;

use routing_cluster::{LocalCluster, PoolMode};

use crate::report::{Cell, Settings, cell_text, millis, opt_ms, ratio};
use crate::systems::{Servers, SystemKind, TlsServers};
use crate::workload::Measurement;
use crate::{BoxError, setup};

/// A way to reach the servers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum)]
pub(crate) enum Path {
    /// Every connection over TLS, verified as `verify-full` against the cluster's CA, beside
    /// the same systems over plain TCP.
    Tls,
    /// Through a PgBouncer in session mode in front of each server.
    Pgbouncer,
}

/// What one path's run found.
#[derive(Debug)]
pub(crate) struct PathRun {
    pub(crate) path: Path,
    /// Its cells, or why it could not run.
    pub(crate) cells: Result<Vec<Cell>, String>,
}

impl Path {
    /// The systems measured on this path, the baseline first.
    fn systems(self) -> &'static [SystemKind] {
        match self {
            Path::Tls => &[
                SystemKind::Baseline,
                SystemKind::Routed,
                SystemKind::BaselineTls,
                SystemKind::RoutedTls,
            ],
            Path::Pgbouncer => &[
                SystemKind::Baseline,
                SystemKind::Routed,
                SystemKind::RoutedUnnamed,
            ],
        }
    }
}

/// Measures every workload and client count of `settings` on `path`, on a cluster of its own.
pub(crate) async fn measure(path: Path, settings: &Settings) -> PathRun {
    let cells = run(path, settings).await.map_err(|e| e.to_string());
    PathRun { path, cells }
}

async fn run(path: Path, settings: &Settings) -> Result<Vec<Cell>, BoxError> {
    let max_clients = settings.clients.iter().copied().max().unwrap_or(1);
    let connections = crate::cells::server_connections(path.systems(), max_clients);
    let builder = LocalCluster::builder().max_connections(connections);
    let builder = match path {
        // TLS on, plain TCP still open: both on the same servers, in the same slices.
        Path::Tls => builder.tls(true).tls_only(false),
        // In session mode each client holds a server connection: room for every system's pools
        // (built side by side) and the router's health probe.
        Path::Pgbouncer => builder
            .pgbouncer(PoolMode::Session)
            .pgbouncer_pool_size(u32::try_from(3 * max_clients + 4)?),
    };
    eprintln!("{path:?} path: starting a throwaway cluster of its own ...");
    let (cluster, ids) = setup::start(builder).await?;
    let servers = match path {
        Path::Tls => Servers {
            primary: without_tls(&cluster.primary_url()),
            replicas: cluster
                .replica_urls()
                .iter()
                .map(|u| without_tls(u))
                .collect(),
            pgpool: None,
            tls: Some(TlsServers {
                primary: cluster.primary_url(),
                replicas: cluster.replica_urls(),
                ca: cluster.ca_cert_path().ok_or("no CA")?.to_owned(),
            }),
        },
        Path::Pgbouncer => Servers {
            primary: cluster.bouncer_primary_url().ok_or("no bouncer")?,
            replicas: cluster.bouncer_replica_urls(),
            pgpool: None,
            tls: None,
        },
    };
    let mut cells = Vec::new();
    for workload in &settings.workloads {
        for clients in &settings.clients {
            let measured =
                crate::cells::measure(&servers, settings, *workload, *clients, path.systems(), ids)
                    .await;
            cells.extend(measured);
        }
    }
    Ok(cells)
}

/// `url` (a TLS URL of the cluster) over plain TCP.
fn without_tls(url: &str) -> String {
    let base = url.split_once('?').map_or(url, |(base, _)| base);
    format!("{base}?sslmode=disable")
}

/// The Markdown section of the paths: one table per path, and what TLS costs each system.
pub(crate) fn markdown(out: &mut String, runs: &[PathRun], settings: &Settings) {
    if runs.is_empty() {
        return;
    }
    let _ = writeln!(out, "\n## Connection paths\n");
    let _ = writeln!(
        out,
        "Each path on a throwaway cluster of its own (a primary and two streaming replicas, \
         seeded as above), measured as the cells above: the systems of a cell take turns in the \
         same slices, and ratios divide by the baseline measured on the same cluster.\n\n\
         - `tls`: the servers accept TCP logins with and without TLS. `baseline` and `routed` \
         connect without (`sslmode=disable`); `baseline-tls` connects over rustls \
         (`tokio-postgres-rustls`, diesel-async's `try_from_client_and_connection`) and \
         `routed-tls` with `sslmode=verify-full` and the cluster's CA: both verify the chain and \
         the host name.\n\
         - `pgbouncer`: a PgBouncer 1.x in session mode in front of each server; both systems \
         connect through it with their default settings. `routed-unnamed` is the router with \
         `transaction_pooler(true)` through the same bouncers: every statement unnamed, none \
         cached (what transaction mode needs; session mode shows its cost alone)."
    );
    for run in runs {
        let name = match run.path {
            Path::Tls => "tls",
            Path::Pgbouncer => "pgbouncer",
        };
        let _ = writeln!(out, "\n### Path `{name}`\n");
        let cells = match &run.cells {
            Ok(cells) => cells,
            Err(error) => {
                let _ = writeln!(out, "Not measured: {}", cell_text(error));
                continue;
            }
        };
        let _ = writeln!(
            out,
            "| workload | clients | system | req/s | p50 | p99 | req/s vs baseline | p50 vs baseline | errors |"
        );
        let _ = writeln!(out, "|---|--:|---|--:|--:|--:|--:|--:|--:|");
        for cell in cells {
            let baseline = find(cells, cell, SystemKind::Baseline);
            match &cell.outcome {
                Ok(m) => {
                    let _ = writeln!(
                        out,
                        "| {} | {} | {} | {:.0} | {} | {} | {} | {} | {} |",
                        cell.workload,
                        cell.clients,
                        cell.system,
                        m.throughput(),
                        opt_ms(m.percentile(50.0)),
                        opt_ms(m.percentile(99.0)),
                        ratio(baseline.map(Measurement::throughput), Some(m.throughput())),
                        ratio(
                            baseline.and_then(|b| b.percentile(50.0)).map(millis),
                            m.percentile(50.0).map(millis)
                        ),
                        m.errors
                    );
                }
                Err(error) => {
                    let _ = writeln!(
                        out,
                        "| {} | {} | {} | failed: {} | | | | | |",
                        cell.workload,
                        cell.clients,
                        cell.system,
                        cell_text(error)
                    );
                }
            }
        }
        if run.path == Path::Tls {
            tls_cost(out, cells, settings);
        }
    }
}

/// What TLS costs each system: its throughput over TLS divided by its throughput over plain TCP
/// on the same servers, and whether the router's share is no worse than the baseline's.
fn tls_cost(out: &mut String, cells: &[Cell], settings: &Settings) {
    let _ = writeln!(
        out,
        "\nWhat TLS costs each system: req/s over TLS divided by req/s over plain TCP, both on \
         these servers in the same slices. TLS costs the router no more than the baseline when \
         the router's quotient is at least the baseline's.\n"
    );
    let _ = writeln!(
        out,
        "| workload | clients | baseline TLS/plain | routed TLS/plain | routed vs baseline, plain | routed vs baseline, TLS | TLS costs the router no more |"
    );
    let _ = writeln!(out, "|---|--:|--:|--:|--:|--:|---|");
    for workload in &settings.workloads {
        for clients in &settings.clients {
            let get = |system| {
                cells
                    .iter()
                    .find(|c| {
                        c.workload == *workload && c.clients == *clients && c.system == system
                    })
                    .and_then(|c| c.outcome.as_ref().ok())
                    .map(Measurement::throughput)
            };
            let (Some(bp), Some(rp), Some(bt), Some(rt)) = (
                get(SystemKind::Baseline),
                get(SystemKind::Routed),
                get(SystemKind::BaselineTls),
                get(SystemKind::RoutedTls),
            ) else {
                continue;
            };
            let (baseline_cost, routed_cost) = (bt / bp, rt / rp);
            let verdict = if routed_cost >= baseline_cost {
                "yes".to_owned()
            } else {
                format!(
                    "no: {:.1} % more",
                    (baseline_cost / routed_cost - 1.0) * 100.0
                )
            };
            let _ = writeln!(
                out,
                "| {workload} | {clients} | {baseline_cost:.2} | {routed_cost:.2} | {:.2}× | {:.2}× | {verdict} |",
                rp / bp,
                rt / bt,
            );
        }
    }
}

/// The measurement of `system` in `cell`'s workload and client count.
fn find<'c>(cells: &'c [Cell], cell: &Cell, system: SystemKind) -> Option<&'c Measurement> {
    cells
        .iter()
        .find(|c| c.workload == cell.workload && c.clients == cell.clients && c.system == system)
        .and_then(|c| c.outcome.as_ref().ok())
}
