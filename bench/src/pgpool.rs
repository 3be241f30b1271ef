//! pgpool-II in streaming-replication load-balancing mode in front of the cluster: configured in
//! a temporary directory, run in the foreground as a child process, stopped on drop.

use std::fmt;
use std::fs::{self, File};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use diesel::sql_types::{Bool, Integer};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use routing_cluster::LocalCluster;
use rustix::process::{Pid, Signal};
use tempfile::TempDir;

/// Where Debian's `pgpool2` package installs the program, when it is not on `PATH`.
const SBIN_PGPOOL: &str = "/usr/sbin/pgpool";

/// How long pgpool-II may take to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a graceful stop may take before the process group is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Sessions opened to check that reads reach a replica (pgpool-II picks a session's
/// load-balancing node when the session starts).
const VERIFY_SESSIONS: usize = 8;

/// Idle pgpool-II children beyond the largest client count.
const SPARE_CHILDREN: usize = 4;

/// pgpool-II's program: `pgpool` on `PATH`, else `/usr/sbin/pgpool`.
pub(crate) fn find() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|dir| dir.join("pgpool"));
    on_path
        .chain(std::iter::once(PathBuf::from(SBIN_PGPOOL)))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// Why pgpool-II could not be used, with the tail of its log.
#[derive(Debug)]
pub(crate) struct PgpoolError {
    message: String,
    log_tail: String,
}

impl fmt::Display for PgpoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if !self.log_tail.is_empty() {
            write!(f, "\nlast lines of the pgpool-II log:\n{}", self.log_tail)?;
        }
        Ok(())
    }
}

impl std::error::Error for PgpoolError {}

impl PgpoolError {
    /// The message without the log tail.
    pub(crate) fn summary(&self) -> &str {
        &self.message
    }
}

/// A running pgpool-II. Dropping it stops the process (`SIGINT`, pgpool-II's fast shutdown),
/// kills whatever is left of its process group, and removes its directory.
pub(crate) struct Pgpool {
    child: Child,
    port: u16,
    dir: TempDir,
    /// Whether it runs as the `postgres` user (through `runuser`) rather than as us.
    as_postgres: bool,
    /// How many sessions of the verification reached a replica.
    replica_sessions: usize,
}

impl fmt::Debug for Pgpool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pgpool")
            .field("pid", &self.child.id())
            .field("port", &self.port)
            .field("dir", &self.dir.path())
            .field("as_postgres", &self.as_postgres)
            .finish()
    }
}

impl Pgpool {
    /// Starts `program` in front of `cluster` with room for `max_clients` client connections,
    /// waits until it accepts connections, and checks that it sends reads to a replica.
    ///
    /// As root it first runs as root; should it exit at once, it runs again as the `postgres`
    /// user. On any failure nothing is left running.
    pub(crate) async fn start(
        program: &Path,
        cluster: &LocalCluster,
        max_clients: usize,
    ) -> Result<Pgpool, PgpoolError> {
        let mut pgpool = match Self::launch(program, cluster, max_clients, false).await {
            Err(error) if error.exited_early && rustix::process::getuid().is_root() => {
                eprintln!(
                    "pgpool-II did not run as root ({}); running it as the postgres user",
                    error.error.message
                );
                Self::launch(program, cluster, max_clients, true)
                    .await
                    .map_err(|e| e.error)?
            }
            other => other.map_err(|e| e.error)?,
        };
        pgpool.replica_sessions = pgpool.verify_replica_reads(cluster).await?;
        Ok(pgpool)
    }

    /// pgpool-II's URL for the cluster's user and database.
    pub(crate) fn url(&self) -> String {
        url(self.port)
    }

    /// Whether it runs as the `postgres` user because it would not run as root.
    pub(crate) fn runs_as_postgres(&self) -> bool {
        self.as_postgres
    }

    /// Sessions of the verification whose `SELECT pg_is_in_recovery()` answered true, and how
    /// many were opened.
    pub(crate) fn replica_sessions(&self) -> (usize, usize) {
        (self.replica_sessions, VERIFY_SESSIONS)
    }

    /// Writes the configuration, starts the process and waits until it accepts connections.
    async fn launch(
        program: &Path,
        cluster: &LocalCluster,
        max_clients: usize,
        as_postgres: bool,
    ) -> Result<Pgpool, LaunchError> {
        let setup = LaunchError::setup;
        let dir = tempfile::Builder::new()
            .prefix("routing-load-pgpool-")
            .tempdir_in("/tmp")
            .map_err(|e| setup(format!("cannot create a directory for pgpool-II: {e}")))?;
        let port = free_port().map_err(|e| setup(format!("no free port for pgpool-II: {e}")))?;
        let pcp_port = free_port().map_err(|e| setup(format!("no free port for PCP: {e}")))?;
        let config = Config {
            dir: dir.path(),
            port,
            pcp_port,
            primary_port: cluster.primary_port(),
            replica_ports: (0..cluster.replica_count())
                .map(|i| cluster.replica_port(i))
                .collect(),
            children: max_clients + SPARE_CHILDREN,
        };
        let conf = dir.path().join("pgpool.conf");
        let pcp_conf = dir.path().join("pcp.conf");
        let log_path = dir.path().join("pgpool.log");
        let files = [(&conf, config.render()), (&pcp_conf, String::new())];
        for (path, text) in files {
            fs::write(path, text)
                .map_err(|e| setup(format!("cannot write {}: {e}", path.display())))?;
        }
        if as_postgres {
            // The postgres user writes its pid file, sockets and status file here.
            fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777))
                .map_err(|e| setup(format!("cannot open up {}: {e}", dir.path().display())))?;
        }
        let log = File::create(&log_path)
            .map_err(|e| setup(format!("cannot create {}: {e}", log_path.display())))?;
        let log_err = log
            .try_clone()
            .map_err(|e| setup(format!("cannot share {}: {e}", log_path.display())))?;

        let mut command = if as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        };
        // -n: foreground; -D: ignore any saved node status; its own process group, so a Ctrl-C
        // on the terminal reaches only us and we stop it in order.
        command
            .arg("-n")
            .arg("-D")
            .arg("-f")
            .arg(&conf)
            .arg("-F")
            .arg(&pcp_conf)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .process_group(0);
        let child = command.spawn().map_err(|e| {
            setup(format!(
                "cannot start {}: {e}",
                if as_postgres { "runuser" } else { "pgpool" }
            ))
        })?;
        let mut pgpool = Pgpool {
            child,
            port,
            dir,
            as_postgres,
            replica_sessions: 0,
        };
        pgpool.wait_ready().await?;
        Ok(pgpool)
    }

    /// Waits until a connection through pgpool-II succeeds.
    async fn wait_ready(&mut self) -> Result<(), LaunchError> {
        let began = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(LaunchError {
                    error: self.error(format!("pgpool-II exited at start ({status})")),
                    exited_early: true,
                });
            }
            let attempt = tokio::time::timeout(
                Duration::from_secs(1),
                AsyncPgConnection::establish(&self.url()),
            )
            .await;
            let last_error = match attempt {
                Ok(Ok(_conn)) => return Ok(()),
                Ok(Err(e)) => e.to_string(),
                Err(_) => "connecting timed out after 1s".to_owned(),
            };
            if began.elapsed() > READY_TIMEOUT {
                return Err(LaunchError {
                    error: self.error(format!(
                        "pgpool-II did not accept connections within {READY_TIMEOUT:?}: {last_error}"
                    )),
                    exited_early: false,
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Opens [`VERIFY_SESSIONS`] sessions through pgpool-II and asks each `SELECT
    /// pg_is_in_recovery()`: at least one must answer from a replica.
    async fn verify_replica_reads(&self, cluster: &LocalCluster) -> Result<usize, PgpoolError> {
        let replica_ports: Vec<i32> = (0..cluster.replica_count())
            .map(|i| i32::from(cluster.replica_port(i)))
            .collect();
        let mut on_replica = 0;
        let mut answers = Vec::new();
        for _ in 0..VERIFY_SESSIONS {
            let mut conn = AsyncPgConnection::establish(&self.url())
                .await
                .map_err(|e| self.error(format!("connecting through pgpool-II failed: {e}")))?;
            let (in_recovery, port) = diesel::select((
                diesel::dsl::sql::<Bool>("pg_is_in_recovery()"),
                diesel::dsl::sql::<Integer>("inet_server_port()"),
            ))
            .get_result::<(bool, i32)>(&mut conn)
            .await
            .map_err(|e| self.error(format!("a read through pgpool-II failed: {e}")))?;
            if in_recovery && replica_ports.contains(&port) {
                on_replica += 1;
            }
            answers.push(format!("in recovery {in_recovery} on port {port}"));
        }
        if on_replica == 0 {
            return Err(self.error(format!(
                "no read through pgpool-II reached a replica in {VERIFY_SESSIONS} sessions: {}",
                answers.join(", ")
            )));
        }
        Ok(on_replica)
    }

    /// `SHOW POOL_NODES` (over the simple query protocol: pgpool-II does not intercept its
    /// `SHOW` commands in the extended one): each backend's role, port and the `SELECT`s sent to
    /// it.
    pub(crate) async fn node_selects(&self) -> Result<Vec<NodeSelects>, PgpoolError> {
        let failed = |what: &str, e: tokio_postgres::Error| self.error(format!("{what}: {e}"));
        let (client, connection) = tokio_postgres::connect(&self.url(), tokio_postgres::NoTls)
            .await
            .map_err(|e| failed("connecting through pgpool-II failed", e))?;
        let connection = tokio::spawn(connection);
        let messages = client
            .simple_query("SHOW POOL_NODES")
            .await
            .map_err(|e| failed("SHOW POOL_NODES failed", e));
        drop(client);
        let _ = connection.await;
        let column = |row: &tokio_postgres::SimpleQueryRow, name: &str| {
            row.try_get(name).ok().flatten().unwrap_or("?").to_owned()
        };
        Ok(messages?
            .iter()
            .filter_map(|message| match message {
                tokio_postgres::SimpleQueryMessage::Row(row) => Some(NodeSelects {
                    role: column(row, "role"),
                    port: column(row, "port"),
                    select_cnt: column(row, "select_cnt"),
                }),
                _ => None,
            })
            .collect())
    }

    /// An error about this process, with its log tail.
    fn error(&self, message: String) -> PgpoolError {
        PgpoolError {
            message,
            log_tail: log_tail(&self.dir.path().join("pgpool.log"), 20),
        }
    }

    /// The pid of pgpool-II's main process: from its pid file when it runs under `runuser`.
    fn main_pid(&self) -> Option<Pid> {
        let from_file = || {
            let text = fs::read_to_string(self.dir.path().join("pgpool.pid")).ok()?;
            text.lines().next()?.trim().parse::<i32>().ok()
        };
        let raw = if self.as_postgres {
            from_file()
        } else {
            i32::try_from(self.child.id()).ok()
        };
        raw.and_then(Pid::from_raw)
    }

    /// Stops pgpool-II: fast shutdown, then `SIGKILL` to its process group if it lingers.
    fn stop(&mut self) {
        let group = i32::try_from(self.child.id()).ok().and_then(Pid::from_raw);
        if matches!(self.child.try_wait(), Ok(None)) {
            if let Some(pid) = self.main_pid() {
                let _ = rustix::process::kill_process(pid, Signal::INT);
            }
            let began = Instant::now();
            while matches!(self.child.try_wait(), Ok(None)) && began.elapsed() < STOP_TIMEOUT {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        // Children that outlived the main process, or everything after a timeout.
        if let Some(group) = group
            && rustix::process::test_kill_process_group(group).is_ok()
        {
            let _ = rustix::process::kill_process_group(group, Signal::KILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Pgpool {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What `SHOW POOL_NODES` says of one backend.
#[derive(Clone, Debug)]
pub(crate) struct NodeSelects {
    /// `primary` or `standby`.
    pub(crate) role: String,
    /// The backend's port.
    pub(crate) port: String,
    /// `SELECT`s sent to the backend so far.
    pub(crate) select_cnt: String,
}

/// A failed launch, and whether the process exited by itself before accepting connections.
struct LaunchError {
    error: PgpoolError,
    exited_early: bool,
}

impl LaunchError {
    /// A failure before the process started.
    fn setup(message: String) -> Self {
        LaunchError {
            error: PgpoolError {
                message,
                log_tail: String::new(),
            },
            exited_early: false,
        }
    }
}

/// The client URL of a pgpool-II on `port`.
fn url(port: u16) -> String {
    format!("postgres://postgres@127.0.0.1:{port}/postgres")
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
fn free_port() -> std::io::Result<u16> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    Ok(listener.local_addr()?.port())
}

/// The last `lines` lines of the file at `path`.
fn log_tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The settings that differ from pgpool-II's defaults.
struct Config<'a> {
    dir: &'a Path,
    port: u16,
    pcp_port: u16,
    primary_port: u16,
    replica_ports: Vec<u16>,
    children: usize,
}

impl Config<'_> {
    /// `pgpool.conf`.
    fn render(&self) -> String {
        let dir = self.dir.display().to_string().replace('\'', "''");
        let mut text = format!(
            "# Written by routing-load: pgpool-II in front of a throwaway local cluster.\n\
             backend_clustering_mode = 'streaming_replication'\n\
             listen_addresses = '127.0.0.1'\n\
             port = {port}\n\
             socket_dir = '{dir}'\n\
             pcp_listen_addresses = ''\n\
             pcp_port = {pcp_port}\n\
             pcp_socket_dir = '{dir}'\n\
             wd_ipc_socket_dir = '{dir}'\n\
             pid_file_name = '{dir}/pgpool.pid'\n\
             logdir = '{dir}'\n\
             log_destination = 'stderr'\n\
             # The cluster trusts local TCP connections: no pgpool-side authentication.\n\
             enable_pool_hba = off\n\
             pool_passwd = ''\n\
             # One child per client connection; each caches one connection per backend.\n\
             num_init_children = {children}\n\
             max_pool = 1\n\
             connection_cache = on\n\
             load_balance_mode = on\n\
             # Verification only (the workloads call no function): pgpool-II does not load-balance\n\
             # volatile functions such as pg_is_in_recovery() unless they are listed here.\n\
             read_only_function_list = 'pg_is_in_recovery,inet_server_port'\n\
             # No periodic replication or health checks; the user finds the primary at start.\n\
             sr_check_period = 0\n\
             sr_check_user = 'postgres'\n\
             sr_check_password = ''\n\
             health_check_period = 0\n\
             health_check_user = 'postgres'\n\
             # Backend 0 is the primary, weight 0: reads go to the replicas.\n",
            port = self.port,
            pcp_port = self.pcp_port,
            children = self.children,
        );
        let backends = std::iter::once((self.primary_port, 0))
            .chain(self.replica_ports.iter().map(|port| (*port, 1)));
        for (index, (port, weight)) in backends.enumerate() {
            text.push_str(&format!(
                "backend_hostname{index} = '127.0.0.1'\n\
                 backend_port{index} = {port}\n\
                 backend_weight{index} = {weight}\n\
                 backend_flag{index} = 'ALLOW_TO_FAILOVER'\n"
            ));
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_names_every_backend_with_its_weight() {
        let config = Config {
            dir: Path::new("/tmp/it's"),
            port: 7000,
            pcp_port: 7001,
            primary_port: 6000,
            replica_ports: vec![6001, 6002],
            children: 20,
        }
        .render();
        for line in [
            "port = 7000",
            "socket_dir = '/tmp/it''s'",
            "num_init_children = 20",
            "backend_port0 = 6000\nbackend_weight0 = 0",
            "backend_port1 = 6001\nbackend_weight1 = 1",
            "backend_port2 = 6002\nbackend_weight2 = 1",
        ] {
            assert!(config.contains(line), "{line:?} missing from\n{config}");
        }
        assert!(!config.contains("backend_port3"));
    }
}
