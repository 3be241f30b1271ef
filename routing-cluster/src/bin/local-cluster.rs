//! `local-cluster`: starts a throwaway primary with streaming replicas, prints the environment
//! that points `RoutedPool::from_env` (and the demo) at it, and keeps it up until Ctrl-C.
//!
//! Usage: `local-cluster [REPLICAS] [--tls] [--pgbouncer session|transaction]`, or
//! `local-cluster --patroni` for a Patroni cluster of three nodes whose leader can move.
//!
//! - `REPLICAS`: the number of replicas (default 2).
//! - `--tls`: the servers accept TCP logins over TLS only; the URLs verify the servers against
//!   the cluster's CA (`sslmode=verify-full`, `sslrootcert`).
//! - `--pgbouncer MODE`: a PgBouncer in front of each server; `PGBOUNCER_DATABASE_URL` and
//!   `PGBOUNCER_DATABASE_READ_REPLICA_URL` go through them, the other variables stay direct.

use std::process::ExitCode;

use routing_cluster::{LocalCluster, PatroniCluster, PoolMode};

const USAGE: &str = "usage: local-cluster [REPLICAS] [--tls] [--pgbouncer session|transaction]\n       \
                     local-cluster --patroni\n  \
                     REPLICAS: a number of replicas (default 2)";

/// What the command line asks for.
struct Options {
    replicas: usize,
    tls: bool,
    pgbouncer: Option<PoolMode>,
}

fn parse(args: impl IntoIterator<Item = String>) -> Result<Options, String> {
    let mut options = Options {
        replicas: 2,
        tls: false,
        pgbouncer: None,
    };
    let mut replicas_seen = false;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--tls" => options.tls = true,
            "--pgbouncer" => {
                let mode = args
                    .next()
                    .ok_or("--pgbouncer needs a pool mode: session or transaction")?;
                options.pgbouncer = Some(match mode.as_str() {
                    "session" => PoolMode::Session,
                    "transaction" => PoolMode::Transaction,
                    other => {
                        return Err(format!(
                            "unknown pool mode {other:?}: expected session or transaction"
                        ));
                    }
                });
            }
            "-h" | "--help" => return Err(String::new()),
            number if !replicas_seen && !number.starts_with('-') => {
                options.replicas = number
                    .parse()
                    .map_err(|_| format!("{number:?} is not a number of replicas"))?;
                replicas_seen = true;
            }
            other => return Err(format!("unexpected argument {other:?}")),
        }
    }
    Ok(options)
}

/// `value`, single-quoted for a shell when it holds anything but plain URL characters.
fn shell_word(value: &str) -> String {
    let plain = value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/:@.,_-+%=".contains(c));
    if plain {
        value.to_owned()
    } else {
        format!("'{}'", value.replace('\'', r"'\''"))
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("--patroni") {
        return patroni(std::env::args().len()).await;
    }
    let options = match parse(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(message) => {
            if !message.is_empty() {
                eprintln!("local-cluster: {message}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let mut builder = LocalCluster::builder()
        .replicas(options.replicas)
        .tls(options.tls);
    if let Some(mode) = options.pgbouncer {
        builder = builder.pgbouncer(mode);
    }
    let cluster = match builder.start().await {
        Ok(cluster) => cluster,
        Err(error) => {
            eprintln!("local-cluster: {error}");
            return ExitCode::FAILURE;
        }
    };
    let export = |name: &str, value: &str| println!("export {name}={}", shell_word(value));
    export("DATABASE_URL", &cluster.primary_url());
    if options.replicas > 0 {
        export("ENABLE_READ_REPLICA", "1");
        export(
            "DATABASE_READ_REPLICA_URL",
            &cluster.replica_urls().join(","),
        );
    }
    if let Some(url) = cluster.bouncer_primary_url() {
        export("PGBOUNCER_DATABASE_URL", &url);
        if options.replicas > 0 {
            export(
                "PGBOUNCER_DATABASE_READ_REPLICA_URL",
                &cluster.bouncer_replica_urls().join(","),
            );
        }
    }
    if let Some(ca) = cluster.ca_cert_path() {
        eprintln!("TLS only: the servers' CA is {}", ca.display());
    }
    if let Some(mode) = cluster.pool_mode() {
        eprintln!("PgBouncer in {mode} mode in front of every server");
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
