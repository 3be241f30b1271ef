//! `local-cluster`: starts a throwaway primary with streaming replicas, prints the environment
//! that points `RoutedPool::from_env` (and the demo) at it, and keeps it up until Ctrl-C.
//!
//! Usage: `local-cluster [REPLICAS]` (default 2), or `local-cluster --patroni` for a Patroni
//! cluster of three nodes whose leader can move.

use std::process::ExitCode;

use routing_cluster::{LocalCluster, PatroniCluster};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("--patroni") {
        return patroni(std::env::args().len()).await;
    }
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

/// `--patroni`: starts a Patroni cluster, prints `DATABASE_URL` as the multi-host URL of every
/// node (with `target_session_attrs=read-write`, so it reaches whichever node leads), the node
/// URLs and the REST API URLs, and keeps it up until Ctrl-C.
async fn patroni(arg_count: usize) -> ExitCode {
    if arg_count != 2 {
        eprintln!("usage: local-cluster --patroni   (takes no other argument)");
        return ExitCode::from(2);
    }
    let cluster = match PatroniCluster::start().await {
        Ok(cluster) => cluster,
        Err(error) => {
            eprintln!("local-cluster: {error}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "export DATABASE_URL='{}?target_session_attrs=read-write'",
        cluster.multi_host_url()
    );
    println!("export CLUSTER_NODE_URLS={}", cluster.node_urls().join(","));
    println!("export CLUSTER_REST_URLS={}", cluster.rest_urls().join(","));
    match cluster.leader().await {
        Ok(Some(leader)) => eprintln!("node {leader} leads: {}", cluster.node_urls()[leader]),
        Ok(None) => eprintln!("no node leads right now"),
        Err(error) => eprintln!("local-cluster: cannot ask for the leader: {error}"),
    }
    eprintln!(
        "patroni cluster up in {}; Ctrl-C stops it",
        cluster.data_dir().display()
    );
    if let Err(error) = tokio::signal::ctrl_c().await {
        eprintln!("local-cluster: cannot wait for Ctrl-C: {error}");
    }
    drop(cluster);
    ExitCode::SUCCESS
}
