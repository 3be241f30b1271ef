//! `local-cluster`: starts a throwaway primary with streaming replicas, prints the environment
//! that points `RoutedPool::from_env` (and the demo) at it, and keeps it up until Ctrl-C.
//!
//! Usage: `local-cluster [REPLICAS]` (default 2).

use std::process::ExitCode;

use routing_cluster::LocalCluster;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let replicas = match std::env::args().nth(1).map(|arg| arg.parse::<usize>()) {
        None => 2,
        Some(Ok(count)) => count,
        Some(Err(_)) => {
            eprintln!("usage: local-cluster [REPLICAS]   (a number of replicas, default 2)");
            return ExitCode::from(2);
        }
    };
    let cluster = match LocalCluster::builder().replicas(replicas).start().await {
        Ok(cluster) => cluster,
        Err(error) => {
            eprintln!("local-cluster: {error}");
            return ExitCode::FAILURE;
        }
    };
    println!("export DATABASE_URL={}", cluster.primary_url());
    if replicas > 0 {
        println!("export ENABLE_READ_REPLICA=1");
        println!(
            "export DATABASE_READ_REPLICA_URL={}",
            cluster.replica_urls().join(",")
        );
    }
    eprintln!(
        "cluster up in {}; Ctrl-C stops it",
        cluster.data_dir().display()
    );
    if let Err(error) = tokio::signal::ctrl_c().await {
        eprintln!("local-cluster: cannot wait for Ctrl-C: {error}");
    }
    drop(cluster);
    ExitCode::SUCCESS
}
