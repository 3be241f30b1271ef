//! A throwaway Patroni cluster: one etcd and three PostgreSQL nodes whose
//! leader Patroni elects, with switchover, failover and split-brain
//! controls.
//!
//! The parts: [`builder`] holds the options, [`config`] writes Patroni's and
//! etcd's configuration, [`process`] starts and watches the daemons,
//! [`rest`] talks to Patroni's REST API, [`wait`] observes roles and
//! streaming, [`control`] changes them, [`watchdog`] cleans up after a
//! killed test process.

mod builder;
mod config;
mod control;
mod process;
mod programs;
mod rest;
mod wait;
mod watchdog;

use std::fmt;
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tempfile::TempDir;

pub use builder::PatroniBuilder;
use config::{EtcdFiles, NodeFiles, Settings};
use process::{Daemon, Supervised};
use programs::Programs;
use watchdog::Watchdog;

use crate::ClusterError;
use crate::binaries::PgBinaries;
use crate::command::{RunAs, file_tail};
use crate::signals;

/// How many PostgreSQL nodes a cluster has.
const NODES: usize = 3;

/// How long the shutdown waits for postmasters to exit.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(30);

/// A throwaway Patroni cluster on loopback: one etcd (v3 API) and three
/// PostgreSQL nodes managed by Patroni, one leader and two streaming
/// replicas.
///
/// Everything lives in one directory under `/tmp` (see
/// [`PatroniCluster::data_dir`]); as root, Patroni, etcd and PostgreSQL run
/// as the `postgres` user. Dropping the cluster kills Patroni, shuts every
/// postmaster down, kills etcd and removes the directory; if the process
/// dies without running `Drop`, a watchdog process does the same.
///
/// Needs Patroni and etcd (Debian/Ubuntu: `apt-get install
/// --no-install-recommends patroni etcd-server`) besides the PostgreSQL
/// server programs.
///
/// ```no_run
/// # async fn demo() -> Result<(), routing_cluster::ClusterError> {
/// let cluster = routing_cluster::PatroniCluster::start().await?;
/// println!("connect to {}", cluster.multi_host_url());
/// let old = cluster.kill_leader().await?;
/// let new = cluster.wait_for_leader().await?;
/// cluster.restart_node(old).await?;
/// println!("node {new} took over from node {old}, which follows it now");
/// # Ok(())
/// # }
/// ```
pub struct PatroniCluster {
    nodes: Vec<Node>,
    etcd: Etcd,
    bins: PgBinaries,
    run_as: RunAs,
    root: PathBuf,
    settings: Settings,
    timeout: Duration,
    /// Held for the whole of each control, so controls run one at a time.
    controls: tokio::sync::Mutex<()>,
    dir: Option<TempDir>,
    watchdog: Option<Watchdog>,
}

/// One PostgreSQL node and its Patroni.
#[derive(Debug)]
struct Node {
    files: NodeFiles,
    patroni: Supervised,
}

/// The etcd server.
#[derive(Debug)]
struct Etcd {
    files: EtcdFiles,
    process: Supervised,
}

impl PatroniCluster {
    /// Options: `ttl`, synchronous mode, timeout, program paths.
    #[must_use = "the builder starts nothing until `.start().await`"]
    pub fn builder() -> PatroniBuilder {
        PatroniBuilder::default()
    }

    /// Starts a cluster with the default options.
    ///
    /// # Errors
    ///
    /// See [`PatroniBuilder::start`].
    pub async fn start() -> Result<Self, ClusterError> {
        Self::builder().start().await
    }

    /// Does the work of [`PatroniBuilder::start`].
    pub(crate) async fn launch(options: PatroniBuilder) -> Result<Self, ClusterError> {
        let began = Instant::now();
        let settings = options.settings()?;
        let programs = Programs::find(options.patroni.as_deref(), options.etcd.as_deref())?;
        let bins = match options.bin_dir {
            Some(dir) => PgBinaries::in_dir(dir)?,
            None => PgBinaries::find()?,
        };
        let run_as = RunAs::detect().await?;
        // A short path: the Unix sockets live in it.
        let dir = tempfile::Builder::new()
            .prefix("rp-")
            .tempdir_in("/tmp")
            .map_err(|err| ClusterError::io("cannot create a directory under /tmp", err))?;
        let root = dir.path().to_path_buf();
        // Patroni creates the data directories and rewrites them on rejoin.
        make_server_dir(&root, run_as)?;
        make_server_dir(&root.join("log"), run_as)?;

        let ports = free_ports(2 * NODES + 2)?;
        let etcd = EtcdFiles::new(&root, ports[2 * NODES], ports[2 * NODES + 1]);
        let mut nodes = Vec::with_capacity(NODES);
        for index in 0..NODES {
            let files = NodeFiles::new(&root, index, ports[index], ports[NODES + index]);
            let yaml = files.patroni_yaml(settings, etcd.client_port, bins.dir(), &root)?;
            std::fs::write(&files.config, yaml).map_err(|err| {
                ClusterError::io(format!("cannot write {}", files.config.display()), err)
            })?;
            let daemon = Daemon {
                program: programs.patroni.clone(),
                args: vec![files.config.clone().into()],
                log: files.log.clone(),
                pid_file: files.pid_file.clone(),
            };
            let patroni = Supervised::new(format!("patroni of node {index}"), daemon);
            nodes.push(Node { files, patroni });
        }
        let daemon = Daemon {
            program: programs.etcd.clone(),
            args: etcd.args(),
            log: etcd.log.clone(),
            pid_file: etcd.pid_file.clone(),
        };
        let etcd = Etcd {
            files: etcd,
            process: Supervised::new("etcd".to_owned(), daemon),
        };
        let watchdog = Watchdog::spawn(&root)?;

        // From here on, an early return drops `cluster`, which cleans up.
        let cluster = Self {
            nodes,
            etcd,
            bins,
            run_as,
            root,
            settings,
            timeout: options.timeout,
            controls: tokio::sync::Mutex::new(()),
            dir: Some(dir),
            watchdog: Some(watchdog),
        };
        cluster.boot().await?;
        tracing::info!(
            dir = %cluster.root.display(),
            ports = ?cluster.node_ports(),
            elapsed_ms = began.elapsed().as_millis(),
            "patroni cluster started"
        );
        Ok(cluster)
    }

    /// Starts etcd, waits until it is healthy, starts every Patroni at once
    /// (one wins the bootstrap, the others clone it) and waits until all
    /// stream.
    async fn boot(&self) -> Result<(), ClusterError> {
        self.etcd.process.start(&self.root, self.run_as)?;
        self.wait_for_etcd().await?;
        for node in &self.nodes {
            node.patroni.start(&self.root, self.run_as)?;
        }
        self.wait_until_streaming().await?;
        Ok(())
    }

    /// The number of PostgreSQL nodes (3), running or not.
    #[must_use]
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// The URL of every node, by index:
    /// `postgres://postgres@127.0.0.1:{port}/postgres`.
    #[must_use]
    pub fn node_urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|node| crate::sql::url(node.files.pg_port))
            .collect()
    }

    /// The PostgreSQL port of every node on 127.0.0.1, by index.
    #[must_use]
    pub fn node_ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|node| node.files.pg_port).collect()
    }

    /// A libpq multi-host URL listing every node,
    /// `postgres://postgres@127.0.0.1:p0,127.0.0.1:p1,127.0.0.1:p2/postgres`;
    /// add `?target_session_attrs=read-write` to reach the leader.
    #[must_use]
    pub fn multi_host_url(&self) -> String {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|node| format!("127.0.0.1:{}", node.files.pg_port))
            .collect();
        format!("postgres://postgres@{}/postgres", hosts.join(","))
    }

    /// The base URL of every node's Patroni REST API, by index:
    /// `http://127.0.0.1:{port}`.
    #[must_use]
    pub fn rest_urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|node| format!("http://127.0.0.1:{}", node.files.rest_port))
            .collect()
    }

    /// The client URL of etcd, `http://127.0.0.1:{port}`.
    #[must_use]
    pub fn etcd_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.etcd.files.client_port)
    }

    /// The cluster directory: data directories, Patroni configurations,
    /// logs (`log/node0.log`, ..., `log/etcd.log`).
    #[must_use]
    pub fn data_dir(&self) -> &Path {
        &self.root
    }

    /// Stops everything and removes the directory, like `Drop` but
    /// reporting failures. Blocks the thread until done.
    ///
    /// # Errors
    ///
    /// The first failure among stopping the processes and removing the
    /// directory; every step is attempted regardless.
    pub fn stop(mut self) -> Result<(), ClusterError> {
        self.shutdown()
    }

    /// Node `index`, or [`ClusterError::NoSuchNode`].
    fn node(&self, index: usize) -> Result<&Node, ClusterError> {
        self.nodes.get(index).ok_or(ClusterError::NoSuchNode {
            index,
            count: self.nodes.len(),
        })
    }

    /// The index of the node with member name `name`.
    fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|node| node.files.name == name)
    }

    /// The last lines of every log (each node's Patroni and PostgreSQL, and etcd's), for a
    /// failure's message.
    #[must_use]
    pub fn log_tails(&self) -> String {
        self.nodes
            .iter()
            .map(|node| &node.files.log)
            .chain(std::iter::once(&self.etcd.files.log))
            .map(|log| format!("--- {}:\n{}", log.display(), file_tail(log)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Adds the log tails to a timeout.
    fn with_logs(&self, err: ClusterError) -> ClusterError {
        match err {
            ClusterError::Timeout {
                what,
                after,
                detail,
            } => ClusterError::Timeout {
                what,
                after,
                detail: format!("{detail}\nlast lines of the logs:\n{}", self.log_tails()),
            },
            other => other,
        }
    }

    /// Kills every Patroni (so none restarts a server), shuts every
    /// postmaster down (`SIGQUIT`, PostgreSQL's immediate shutdown), kills
    /// etcd and removes the directory; blocking, needs no runtime, never
    /// panics.
    fn shutdown(&mut self) -> Result<(), ClusterError> {
        let Some(dir) = self.dir.take() else {
            return Ok(());
        };
        let mut errors = Vec::new();
        for node in &self.nodes {
            if let Some(child) = node.patroni.take() {
                process::kill_and_reap(child);
            }
        }
        let postmasters: Vec<u32> = self
            .nodes
            .iter()
            .filter_map(|node| process::postmaster(&node.files.data_dir))
            .collect();
        signals::send_blocking("CONT", &postmasters);
        signals::send_blocking("QUIT", &postmasters);
        let left = process::wait_gone_blocking(&postmasters, SHUTDOWN_WAIT);
        if !left.is_empty() {
            let mut tree = left.clone();
            for &pid in &left {
                tree.extend(signals::descendants(pid));
            }
            signals::send_blocking("KILL", &tree);
            errors.push(ClusterError::io(
                "stopping the postmasters of the patroni cluster",
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("pids {left:?} ignored SIGQUIT for {SHUTDOWN_WAIT:?}; killed"),
                ),
            ));
        }
        if let Some(child) = self.etcd.process.take() {
            process::kill_and_reap(child);
        }
        let path = dir.path().display().to_string();
        match dir.close() {
            Ok(()) => {
                if let Some(watchdog) = self.watchdog.take() {
                    watchdog.dismiss();
                }
            }
            // Dropping the watchdog closes its pipe: it retries the cleanup.
            Err(err) => errors.push(ClusterError::io(format!("cannot remove {path}"), err)),
        }
        match errors.into_iter().next() {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }
}

impl Drop for PatroniCluster {
    fn drop(&mut self) {
        if let Err(err) = self.shutdown() {
            tracing::warn!("cleaning up the patroni cluster: {err}");
        }
    }
}

impl fmt::Debug for PatroniCluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PatroniCluster")
            .field("dir", &self.root)
            .field("node_ports", &self.node_ports())
            .field(
                "rest_ports",
                &self
                    .nodes
                    .iter()
                    .map(|node| node.files.rest_port)
                    .collect::<Vec<_>>(),
            )
            .field("etcd_port", &self.etcd.files.client_port)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// `count` distinct loopback ports that were free a moment ago: all are
/// bound at once, so none is picked twice, then released for the servers.
fn free_ports(count: usize) -> Result<Vec<u16>, ClusterError> {
    let listeners = (0..count)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| ClusterError::io("cannot bind 127.0.0.1:0 to find free ports", err))?;
    listeners
        .iter()
        .map(|listener| listener.local_addr().map(|addr| addr.port()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| ClusterError::io("cannot read the address of a bound socket", err))
}

/// Makes `path` (created if missing) mode 0755 and owned by the server user.
fn make_server_dir(path: &Path, run_as: RunAs) -> Result<(), ClusterError> {
    std::fs::create_dir_all(path)
        .map_err(|err| ClusterError::io(format!("cannot create {}", path.display()), err))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).map_err(|err| {
        ClusterError::io(format!("cannot set the mode of {}", path.display()), err)
    })?;
    run_as.hand_over(path)
}
