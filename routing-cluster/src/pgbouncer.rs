//! PgBouncer in front of each server: one bouncer per server on a free loopback port, run as
//! the server user, trusting the `postgres` user, with small pools.

use std::env;
use std::ffi::OsString;
use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::command::{ServerCommand, file_tail, tail};
use crate::poll::{self, Check};
use crate::ports::free_port;
use crate::server::Context;
use crate::tls::Tls;
use crate::{ClusterError, LocalCluster, sql};

/// How PgBouncer hands server connections to clients (its `pool_mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PoolMode {
    /// A client keeps its server connection until it disconnects.
    Session,
    /// A client holds a server connection only for the length of each transaction.
    Transaction,
}

impl PoolMode {
    /// The mode's name in `pgbouncer.ini`: `session` or `transaction`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            PoolMode::Session => "session",
            PoolMode::Transaction => "transaction",
        }
    }
}

impl fmt::Display for PoolMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The environment variable naming the `pgbouncer` program, overriding the search.
const ENV_VAR: &str = "PGBOUNCER";

/// Where distributions install `pgbouncer` besides `PATH` (Debian: `/usr/sbin`, often not on a
/// user's `PATH`).
const EXTRA_DIRS: [&str; 4] = ["/usr/sbin", "/usr/local/sbin", "/usr/bin", "/usr/local/bin"];

/// Server connections per user and database of each bouncer, unless set.
pub(crate) const DEFAULT_POOL_SIZE: u32 = 4;

/// How the bouncers pool server connections.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Pooling {
    pub(crate) mode: PoolMode,
    /// Server connections per user and database (`default_pool_size`).
    pub(crate) size: u32,
}

/// How many ports a bouncer start tries before giving up.
const PORT_ATTEMPTS: usize = 3;

/// How long a stopping bouncer gets before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// The bouncers of a cluster.
#[derive(Debug)]
pub(crate) struct Bouncers {
    pub(crate) mode: PoolMode,
    pub(crate) primary: Bouncer,
    pub(crate) replicas: Vec<Bouncer>,
}

impl Bouncers {
    /// Every bouncer, the primary's first.
    pub(crate) fn all(&self) -> impl Iterator<Item = &Bouncer> {
        std::iter::once(&self.primary).chain(&self.replicas)
    }
}

/// One running PgBouncer.
#[derive(Debug)]
pub(crate) struct Bouncer {
    /// The name used in messages (`pgbouncer for replica 0`).
    name: String,
    /// Its configuration, pid file and user list.
    dir: PathBuf,
    /// Its log file.
    log_file: PathBuf,
    /// The port it listens on, on 127.0.0.1.
    pub(crate) port: u16,
}

/// Finds the `pgbouncer` program: `$PGBOUNCER`, else `PATH`, else the usual system directories.
pub(crate) fn find_program() -> Result<PathBuf, ClusterError> {
    search(env::var_os(ENV_VAR), env::var_os("PATH"), &EXTRA_DIRS)
}

/// [`find_program`] with the variables' values and the extra directories given.
fn search(
    program: Option<OsString>,
    path: Option<OsString>,
    extra_dirs: &[&str],
) -> Result<PathBuf, ClusterError> {
    if let Some(program) = program.filter(|value| !value.is_empty()) {
        let program = PathBuf::from(program);
        return if is_executable(&program) {
            Ok(program)
        } else {
            Err(ClusterError::PgBouncerNotFound {
                searched: format!("${ENV_VAR} = {} (not an executable)", program.display()),
            })
        };
    }
    let path_dirs = path
        .map(|path| env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default();
    path_dirs
        .iter()
        .map(PathBuf::as_path)
        .chain(extra_dirs.iter().map(Path::new))
        .map(|dir| dir.join("pgbouncer"))
        .find(|candidate| is_executable(candidate))
        .ok_or_else(|| {
            let mut searched = vec![format!("${ENV_VAR} (unset)"), "PATH".to_owned()];
            searched.extend(extra_dirs.iter().map(|dir| (*dir).to_owned()));
            ClusterError::PgBouncerNotFound {
                searched: searched.join(", "),
            }
        })
}

/// Whether `path` is a file with an execute bit set.
fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path)
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

impl Bouncer {
    /// Starts a bouncer named `pgbouncer for {server}` in front of the server on `target_port`,
    /// its files under `{root}/pgbouncer/{file_name}`, and waits until a query passes through.
    pub(crate) async fn start(
        ctx: &Context,
        program: &Path,
        pooling: Pooling,
        tls: Option<&Tls>,
        server: &str,
        file_name: &str,
        target_port: u16,
    ) -> Result<Self, ClusterError> {
        let parent = ctx.root.join("pgbouncer");
        for dir in [&parent, &parent.join(file_name)] {
            if !dir.exists() {
                std::fs::create_dir(dir).map_err(|err| {
                    ClusterError::io(format!("cannot create {}", dir.display()), err)
                })?;
                ctx.run_as.hand_over(dir)?;
            }
        }
        let mut bouncer = Bouncer {
            name: format!("pgbouncer for {server}"),
            dir: parent.join(file_name),
            log_file: ctx
                .root
                .join("log")
                .join(format!("pgbouncer-{file_name}.log")),
            port: 0,
        };
        let users = bouncer.dir.join("userlist.txt");
        write_owned(ctx, &users, "\"postgres\" \"\"\n")?;
        if let Some(tls) = tls {
            tls.install_certificate(&bouncer.dir, ctx.run_as)?;
        }
        let mut attempt = 1;
        loop {
            bouncer.port = free_port()?;
            let ini = bouncer.ini(pooling, tls, target_port, &users);
            let ini_path = bouncer.dir.join("pgbouncer.ini");
            write_owned(ctx, &ini_path, &ini)?;
            let log_before = std::fs::metadata(&bouncer.log_file).map_or(0, |meta| meta.len());
            ServerCommand::new(program, ctx.run_as)
                .current_dir(&ctx.root)
                .args(["-d", "-q"])
                .arg(&ini_path)
                .output()
                .await?;
            match bouncer.wait_ready(ctx, log_before).await {
                Err(err) if attempt < PORT_ATTEMPTS && port_was_taken(&err) => {
                    tracing::debug!(bouncer = %bouncer.name, port = bouncer.port, "port taken, retrying");
                    attempt += 1;
                }
                Err(err) => return Err(err),
                Ok(()) => return Ok(bouncer),
            }
        }
    }

    /// The bouncer's `pgbouncer.ini`.
    fn ini(&self, pooling: Pooling, tls: Option<&Tls>, target_port: u16, users: &Path) -> String {
        let dir = self.dir.display();
        let mut ini = format!(
            "; made by routing-cluster\n\
             [databases]\n\
             * = host=127.0.0.1 port={target_port}\n\n\
             [pgbouncer]\n\
             listen_addr = 127.0.0.1\n\
             listen_port = {port}\n\
             unix_socket_dir =\n\
             auth_type = trust\n\
             auth_file = {users}\n\
             admin_users = postgres\n\
             pool_mode = {mode}\n\
             default_pool_size = {size}\n\
             max_client_conn = 500\n\
             server_login_retry = 1\n\
             query_wait_timeout = 30\n\
             ignore_startup_parameters = extra_float_digits\n\
             logfile = {log}\n\
             pidfile = {dir}/pgbouncer.pid\n",
            port = self.port,
            mode = pooling.mode,
            size = pooling.size,
            users = users.display(),
            log = self.log_file.display(),
        );
        if let Some(tls) = tls {
            ini.push_str(&format!(
                "client_tls_sslmode = require\n\
                 client_tls_cert_file = {dir}/server.crt\n\
                 client_tls_key_file = {dir}/server.key\n\
                 server_tls_sslmode = verify-full\n\
                 server_tls_ca_file = {ca}\n",
                ca = tls.ca_path().display(),
            ));
        }
        ini
    }

    /// Polls until a query passes through the bouncer, failing early when it stopped.
    async fn wait_ready(&self, ctx: &Context, log_before: u64) -> Result<(), ClusterError> {
        poll::until(
            || format!("{} to accept connections on port {}", self.name, self.port),
            ctx.timeout,
            || async {
                let log = self.log_since(log_before);
                if log.contains("FATAL") {
                    return Err(ClusterError::ServerStart {
                        server: self.name.clone(),
                        command: format!("pgbouncer -d -q {}/pgbouncer.ini", self.dir.display()),
                        status: "stopped right after starting".to_owned(),
                        output: String::new(),
                        log_tail: tail(&log),
                    });
                }
                if self.pid().is_none() {
                    return Ok(Check::Pending(
                        "no running pgbouncer in the pid file".to_owned(),
                    ));
                }
                // The pid check first: another process could hold the port meanwhile.
                match sql::simple_query(&self.name, self.port, "SELECT 1").await {
                    Ok(()) => Ok(Check::Done(())),
                    Err(err) => Ok(Check::Pending(err.to_string())),
                }
            },
        )
        .await
        .map_err(|err| match err {
            ClusterError::Timeout {
                what,
                after,
                detail,
            } => ClusterError::Timeout {
                what,
                after,
                detail: format!(
                    "{detail}\nlast lines of {}:\n{}",
                    self.log_file.display(),
                    file_tail(&self.log_file)
                ),
            },
            other => other,
        })
    }

    /// The log written after byte offset `from`.
    fn log_since(&self, from: u64) -> String {
        match std::fs::read(&self.log_file) {
            Ok(bytes) => {
                let start = usize::try_from(from).unwrap_or(0).min(bytes.len());
                String::from_utf8_lossy(&bytes[start..]).into_owned()
            }
            Err(_) => String::new(),
        }
    }

    /// The bouncer's pid, when it runs.
    fn pid(&self) -> Option<u32> {
        let text = std::fs::read_to_string(self.dir.join("pgbouncer.pid")).ok()?;
        let pid = text.lines().next()?.trim().parse().ok()?;
        running(pid).then_some(pid)
    }

    /// Stops the bouncer (`SIGTERM`, then `SIGKILL` after a grace period) and waits until it is
    /// gone; blocking, needs no runtime. A bouncer that is not running is left alone.
    pub(crate) fn stop_blocking(&self) -> Result<(), ClusterError> {
        let Some(pid) = self.pid() else {
            return Ok(());
        };
        for (signal, wait) in [("TERM", STOP_GRACE), ("KILL", Duration::from_secs(2))] {
            let _ = std::process::Command::new("kill")
                .arg(format!("-{signal}"))
                .arg(pid.to_string())
                .output();
            let deadline = std::time::Instant::now() + wait;
            while running(pid) && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if !running(pid) {
                return Ok(());
            }
        }
        Err(ClusterError::io(
            format!("cannot stop {} (pid {pid})", self.name),
            std::io::Error::new(std::io::ErrorKind::TimedOut, "still running after SIGKILL"),
        ))
    }
}

/// Whether `pid` is a live pgbouncer process; a zombie counts as dead (a daemon is reparented,
/// and its new parent may reap it late).
fn running(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let Some(close) = stat.rfind(')') else {
        return false;
    };
    let name = stat.find('(').map_or("", |open| &stat[open + 1..close]);
    let state = stat[close + 1..].split_whitespace().next().unwrap_or("");
    name.starts_with("pgbouncer") && state != "Z" && state != "X"
}

/// Whether a start failed because the port was in use.
fn port_was_taken(err: &ClusterError) -> bool {
    matches!(err, ClusterError::ServerStart { log_tail, .. }
        if log_tail.contains("Address already in use") || log_tail.contains("nowhere to listen"))
}

/// Writes `text` to `path` and gives it to the server user.
fn write_owned(ctx: &Context, path: &Path, text: &str) -> Result<(), ClusterError> {
    std::fs::write(path, text)
        .map_err(|err| ClusterError::io(format!("cannot write {}", path.display()), err))?;
    ctx.run_as.hand_over(path)
}

impl LocalCluster {
    /// The PgBouncer pool mode, when the cluster was started with
    /// [`ClusterBuilder::pgbouncer`](crate::ClusterBuilder::pgbouncer).
    #[must_use]
    pub fn pool_mode(&self) -> Option<PoolMode> {
        self.bouncers.as_ref().map(|bouncers| bouncers.mode)
    }

    /// The URL of the PgBouncer in front of the primary, when there are bouncers. Like
    /// [`LocalCluster::primary_url`], it verifies the server certificate with TLS on.
    #[must_use]
    pub fn bouncer_primary_url(&self) -> Option<String> {
        let bouncers = self.bouncers.as_ref()?;
        Some(self.client_url(bouncers.primary.port))
    }

    /// The URLs of the PgBouncers in front of the replicas, by replica index (empty without
    /// bouncers).
    #[must_use]
    pub fn bouncer_replica_urls(&self) -> Vec<String> {
        self.bouncers
            .iter()
            .flat_map(|bouncers| &bouncers.replicas)
            .map(|bouncer| self.client_url(bouncer.port))
            .collect()
    }

    /// Starts a bouncer in front of the primary and of each replica.
    pub(crate) async fn start_bouncers(&mut self, pooling: Pooling) -> Result<(), ClusterError> {
        let program = find_program()?;
        let ctx = &self.ctx;
        let tls = self.tls.as_ref();
        let start = async |server: &str, file_name: &str, port: u16| {
            Bouncer::start(ctx, &program, pooling, tls, server, file_name, port).await
        };
        let primary = start("primary", "primary", self.primary.port).await?;
        let mut bouncers = Bouncers {
            mode: pooling.mode,
            primary,
            replicas: Vec::new(),
        };
        let mut failed = None;
        for replica in &self.replicas {
            match start(&replica.name, &replica.cluster_name, replica.port).await {
                Ok(bouncer) => bouncers.replicas.push(bouncer),
                Err(err) => {
                    failed = Some(err);
                    break;
                }
            }
        }
        // Recorded before failing, so that dropping the cluster stops those that started.
        self.bouncers = Some(bouncers);
        match failed {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }

    /// Stops every bouncer; blocking. Returns the failures.
    pub(crate) fn stop_bouncers(&mut self) -> Vec<ClusterError> {
        let Some(bouncers) = self.bouncers.take() else {
            return Vec::new();
        };
        bouncers
            .all()
            .filter_map(|bouncer| bouncer.stop_blocking().err())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_modes_have_their_ini_names() {
        assert_eq!(PoolMode::Session.to_string(), "session");
        assert_eq!(PoolMode::Transaction.as_str(), "transaction");
    }

    #[test]
    fn missing_pgbouncer_is_a_clear_error() {
        let empty = tempfile::tempdir().unwrap();
        let dir = empty.path().to_str().unwrap();
        let err = search(None, Some(dir.into()), &[dir]).unwrap_err();
        assert!(matches!(err, ClusterError::PgBouncerNotFound { .. }));
        let message = err.to_string();
        assert!(message.contains("apt-get install pgbouncer"), "{message}");
        assert!(message.contains(dir), "{message}");

        let err = search(Some("/nonexistent/pgbouncer".into()), None, &[]).unwrap_err();
        assert!(
            err.to_string()
                .contains("$PGBOUNCER = /nonexistent/pgbouncer"),
            "{err}"
        );
    }

    #[test]
    fn our_own_process_is_not_a_bouncer() {
        assert!(!running(std::process::id()));
        assert!(!running(u32::MAX));
    }
}
