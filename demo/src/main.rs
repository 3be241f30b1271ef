//! `routing-demo`: the demo service.
//!
//! With no database variables set it starts a throwaway local cluster (a primary and two
//! streaming replicas), migrates its primary (`RoutedPool::run_pending_migrations`), serves the
//! app on a loopback port, drives a short scripted workload against itself over HTTP, and prints
//! each request's queries with the server that answered them, then what `/status` and
//! `/metrics` show. With `--ha` it does the same on a throwaway Patroni cluster found through a
//! multi-host URL, with a switchover in the middle of a stream of reads and writes. With
//! `DATABASE_URL` (and the replica variables of `RoutedPool::from_env`) set, it migrates and
//! serves those servers on `DEMO_ADDR` (default `127.0.0.1:3000`) until interrupted.

mod client;
mod ha;
mod script;
mod table;
mod watch;

use std::process::ExitCode;

use routing_cluster::LocalCluster;
use routing_core::RoutedPool;
use tokio::net::TcpListener;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const USAGE: &str = "usage: routing-demo [--ha]
  (no argument)  a scripted run on a throwaway primary and two replicas, or, with DATABASE_URL
                 set, serve those servers on DEMO_ADDR (default 127.0.0.1:3000)
  --ha           a scripted run on a throwaway Patroni cluster with a switchover in the middle";

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        [] if std::env::var_os("DATABASE_URL").is_some() => serve_from_env().await,
        [] => scripted().await,
        ["--ha"] => ha::run().await,
        ["-h" | "--help"] => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        _ => {
            eprintln!("routing-demo: unknown arguments {args:?}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("routing-demo: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Applies the schema's pending migrations on the pool's primary, refusing it if it is one of
/// the pool's replicas or a standby (`RoutedPool::run_pending_migrations`).
async fn migrate(pool: &RoutedPool) -> Result<(), BoxError> {
    let applied = pool
        .run_pending_migrations(routing_fixtures::MIGRATIONS)
        .await
        .map_err(|e| format!("migration failed: {e}"))?;
    if applied.is_empty() {
        println!("  migrate: no pending migrations");
    }
    for name in applied {
        println!("  migrate: applied {name}");
    }
    Ok(())
}

/// The scripted run on a throwaway cluster.
async fn scripted() -> Result<(), BoxError> {
    println!("starting a throwaway cluster: one primary and two streaming replicas ...");
    let cluster = LocalCluster::start().await?;
    println!(
        "  primary on port {}, replicas on ports {} and {}",
        cluster.primary_port(),
        cluster.replica_port(0),
        cluster.replica_port(1)
    );
    // The recorder first: the pool's series are registered at its first statement.
    let metrics = routing_demo::prometheus()?;
    let pool = RoutedPool::builder(cluster.primary_url())
        .replicas(cluster.replica_urls())
        .build()?;
    migrate(&pool).await?;
    pool.check().await?;

    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    println!("  serving on http://{addr}\n");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let app = routing_demo::app_with_metrics(pool.clone(), metrics);
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
    });

    let outcome = script::run(addr, &cluster).await;
    let shown = match outcome {
        Ok(rows) => {
            table::print(&rows, &|port, in_recovery| {
                server_name(&cluster, port, in_recovery)
            });
            watch::show(addr).await
        }
        Err(error) => Err(error),
    };
    let _ = stop.send(());
    server.await??;
    shown?;
    println!(
        "\nthe router's view (RoutedPool::status):\n{}",
        pool.status()
    );
    drop(cluster);
    Ok(())
}

/// Names a server from its own answer, with the cluster's ports.
fn server_name(cluster: &LocalCluster, port: i32, in_recovery: bool) -> String {
    let port = u16::try_from(port).unwrap_or_default();
    let role = if port == cluster.primary_port() {
        "primary".to_owned()
    } else {
        (0..cluster.replica_count())
            .find(|&i| cluster.replica_port(i) == port)
            .map_or_else(|| "unknown".to_owned(), |i| format!("replica {i}"))
    };
    let mark = if in_recovery { "standby" } else { "read-write" };
    format!("{role} :{port} ({mark})")
}

/// Serves the servers of the environment until interrupted.
async fn serve_from_env() -> Result<(), BoxError> {
    let metrics = routing_demo::prometheus()?;
    let pool = RoutedPool::from_env()?;
    migrate(&pool).await?;
    pool.check().await?;
    let addr = std::env::var("DEMO_ADDR").unwrap_or_else(|_| "127.0.0.1:3000".to_owned());
    let listener = TcpListener::bind(&addr).await?;
    let addr = listener.local_addr()?;
    println!(
        "serving on http://{addr} (primary {}, {} replica(s)); the pool's status at /status, \
         metrics at /metrics; Ctrl-C stops",
        pool.primary_url(),
        pool.replica_count()
    );
    axum::serve(listener, routing_demo::app_with_metrics(pool, metrics))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
