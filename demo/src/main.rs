//! `routing-demo`: the demo service.
//!
//! With no database variables set it starts a throwaway local cluster (a primary and two
//! streaming replicas), migrates its primary (`RoutedPool::run_pending_migrations`), serves the
//! app on a loopback port, drives a short scripted workload against itself over HTTP, and prints
//! each request's queries with the server that answered them. With `DATABASE_URL` (and the replica
//! variables of `RoutedPool::from_env`) set, it migrates and serves those servers on
//! `DEMO_ADDR` (default `127.0.0.1:3000`) until interrupted.

mod client;
mod script;
mod table;

use std::process::ExitCode;

use routing_cluster::LocalCluster;
use routing_core::RoutedPool;
use tokio::net::TcpListener;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = if std::env::var_os("DATABASE_URL").is_some() {
        serve_from_env().await
    } else {
        scripted().await
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
    let pool = RoutedPool::builder(cluster.primary_url())
        .replicas(cluster.replica_urls())
        .build()?;
    migrate(&pool).await?;
    pool.check().await?;

    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    println!("  serving on http://{addr}\n");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let app = routing_demo::app(pool.clone());
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
    });

    let outcome = script::run(addr, &cluster).await;
    let _ = stop.send(());
    server.await??;
    let rows = outcome?;
    table::print(&rows, &|port, in_recovery| {
        server_name(&cluster, port, in_recovery)
    });
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
    let pool = RoutedPool::from_env()?;
    migrate(&pool).await?;
    pool.check().await?;
    let addr = std::env::var("DEMO_ADDR").unwrap_or_else(|_| "127.0.0.1:3000".to_owned());
    let listener = TcpListener::bind(&addr).await?;
    println!(
        "serving on http://{} (primary {}, {} replica(s)); Ctrl-C stops",
        listener.local_addr()?,
        pool.primary_url(),
        pool.replica_count()
    );
    axum::serve(listener, routing_demo::app(pool))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
