//! One PostgreSQL server of the cluster: its files, port and process.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use crate::ClusterError;
use crate::binaries::PgBinaries;
use crate::command::{RunAs, ServerCommand, file_tail, output_tail, tail};
use crate::poll::{self, Check};
use crate::ports::free_port;
use crate::signals;
use crate::sql;

/// How many ports a server start tries before giving up.
const PORT_ATTEMPTS: usize = 3;

/// What every server of one cluster shares.
#[derive(Debug)]
pub(crate) struct Context {
    /// The server programs.
    pub(crate) bins: PgBinaries,
    /// The user the programs run as.
    pub(crate) run_as: RunAs,
    /// The cluster directory, working directory of every command.
    pub(crate) root: PathBuf,
    /// The directory of the servers' Unix sockets.
    pub(crate) socket_dir: PathBuf,
    /// How long each wait may take.
    pub(crate) timeout: Duration,
}

impl Context {
    /// A command for one of the server programs.
    pub(crate) fn command(&self, program: &str) -> ServerCommand {
        ServerCommand::new(self.bins.program(program), self.run_as).current_dir(&self.root)
    }
}

/// The run state of a replica, changed by the fault controls.
#[derive(Debug, Default)]
pub(crate) struct State {
    /// The server process is up.
    pub(crate) running: bool,
    /// WAL replay is paused.
    pub(crate) paused: bool,
    /// The pids stopped with `SIGSTOP`, when frozen.
    pub(crate) frozen: Option<Vec<u32>>,
}

/// One server: primary or replica.
#[derive(Debug)]
pub(crate) struct Server {
    /// The name used in messages (`primary`, `replica 0`).
    pub(crate) name: String,
    /// The data directory.
    pub(crate) data_dir: PathBuf,
    /// The log file.
    pub(crate) log_file: PathBuf,
    /// The TCP port on 127.0.0.1 (0 until first started).
    pub(crate) port: u16,
    /// The value of `cluster_name`, also the replication application name.
    pub(crate) cluster_name: String,
    /// The run state, locked for the whole of each control operation.
    pub(crate) state: tokio::sync::Mutex<State>,
}

impl Server {
    /// A server whose files will live under `root` as `file_name`.
    pub(crate) fn new(name: String, file_name: &str, root: &Path) -> Self {
        Self {
            name,
            data_dir: root.join(file_name),
            log_file: root.join("log").join(format!("{file_name}.log")),
            port: 0,
            cluster_name: file_name.to_owned(),
            state: tokio::sync::Mutex::new(State::default()),
        }
    }

    /// Appends settings to `postgresql.conf` (later lines win).
    pub(crate) async fn append_config(&self, lines: &str) -> Result<(), ClusterError> {
        append(&self.data_dir.join("postgresql.conf"), lines).await
    }

    /// Starts the server for the first time on a free port, retrying with
    /// another port when the chosen one was taken meanwhile.
    pub(crate) async fn start_on_free_port(&mut self, ctx: &Context) -> Result<(), ClusterError> {
        let mut attempt = 1;
        loop {
            self.port = free_port()?;
            self.append_config(&format!("port = {}\n", self.port))
                .await?;
            match self.start(ctx).await {
                Err(err) if attempt < PORT_ATTEMPTS && port_was_taken(&err) => {
                    tracing::debug!(server = %self.name, port = self.port, "port taken, retrying");
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    /// Starts the server and waits until it answers queries over TCP.
    pub(crate) async fn start(&self, ctx: &Context) -> Result<(), ClusterError> {
        let command = ctx
            .command("pg_ctl")
            .arg("start")
            .arg("-D")
            .arg(&self.data_dir)
            .arg("-l")
            .arg(&self.log_file)
            .arg("-w")
            .arg("-t")
            .arg(ctx.timeout.as_secs().max(1).to_string());
        let log_before = log_len(&self.log_file);
        let output = command.raw_output().await?;
        if !output.status.success() {
            return Err(ClusterError::ServerStart {
                server: self.name.clone(),
                command: command.to_string(),
                status: output.status.to_string(),
                output: output_tail(&output),
                log_tail: self.log_since(log_before),
            });
        }
        self.wait_ready(ctx).await?;
        tracing::debug!(server = %self.name, port = self.port, "server started");
        Ok(())
    }

    /// Stops the server with `pg_ctl stop -m <mode>` and waits until it is gone.
    pub(crate) async fn stop(&self, ctx: &Context, mode: &str) -> Result<(), ClusterError> {
        ctx.command("pg_ctl")
            .arg("stop")
            .arg("-D")
            .arg(&self.data_dir)
            .arg("-m")
            .arg(mode)
            .arg("-w")
            .arg("-t")
            .arg(ctx.timeout.as_secs().max(1).to_string())
            .output()
            .await?;
        Ok(())
    }

    /// Polls over TCP until `SELECT 1` succeeds.
    async fn wait_ready(&self, ctx: &Context) -> Result<(), ClusterError> {
        let result = poll::until(
            || format!("{} to accept connections on port {}", self.name, self.port),
            ctx.timeout,
            || async {
                match sql::query_value::<i32>(&self.name, self.port, "SELECT 1", &[]).await {
                    Ok(_) => Ok(Check::Done(())),
                    Err(err) => Ok(Check::Pending(err.to_string())),
                }
            },
        )
        .await;
        result.map_err(|err| match err {
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

    /// Waits until this standby streams WAL from the primary on `primary_port`,
    /// as seen by both its WAL receiver and the primary's WAL sender.
    pub(crate) async fn wait_streaming(
        &self,
        ctx: &Context,
        primary_port: u16,
    ) -> Result<(), ClusterError> {
        poll::until(
            || format!("{} to stream from the primary", self.name),
            ctx.timeout,
            || async {
                let receiver: String = sql::query_value(
                    &self.name,
                    self.port,
                    "SELECT coalesce((SELECT status FROM pg_stat_wal_receiver), 'no wal receiver')",
                    &[],
                )
                .await?;
                if receiver != "streaming" {
                    return Ok(Check::Pending(format!("wal receiver status: {receiver}")));
                }
                let senders: i64 = sql::query_value(
                    "primary",
                    primary_port,
                    "SELECT count(*) FROM pg_stat_replication \
                     WHERE application_name = $1 AND state = 'streaming'",
                    &[&self.cluster_name],
                )
                .await?;
                if senders == 0 {
                    return Ok(Check::Pending(format!(
                        "no streaming entry for {} in the primary's pg_stat_replication",
                        self.cluster_name
                    )));
                }
                Ok(Check::Done(()))
            },
        )
        .await
    }

    /// `SIGSTOP`s the postmaster, then all its descendants; returns the pids.
    pub(crate) async fn freeze(&self) -> Result<Vec<u32>, ClusterError> {
        let postmaster = self.postmaster_pid()?;
        signals::send("STOP", &[postmaster]).await?;
        // The stopped postmaster cannot fork, so this list is complete.
        let children = signals::descendants(postmaster);
        if let Err(err) = signals::send("STOP", &children).await {
            let mut stopped = children.clone();
            stopped.reverse();
            stopped.push(postmaster);
            let _ = signals::send("CONT", &stopped).await;
            return Err(err);
        }
        let mut pids = vec![postmaster];
        pids.extend(children);
        Ok(pids)
    }

    /// `SIGCONT`s what [`Server::freeze`] stopped, in reverse order.
    pub(crate) async fn thaw(&self, frozen: &[u32]) -> Result<(), ClusterError> {
        let mut pids = frozen.to_vec();
        if let Some(postmaster) = signals::postmaster_pid(&self.data_dir)? {
            for pid in signals::descendants(postmaster) {
                if !pids.contains(&pid) {
                    pids.push(pid);
                }
            }
            if !pids.contains(&postmaster) {
                pids.insert(0, postmaster);
            }
        }
        pids.reverse();
        pids.retain(|&pid| signals::alive(pid));
        signals::send("CONT", &pids).await
    }

    /// The postmaster pid, failing if the server is not running.
    fn postmaster_pid(&self) -> Result<u32, ClusterError> {
        signals::postmaster_pid(&self.data_dir)?.ok_or_else(|| {
            ClusterError::io(
                format!("{} has no postmaster.pid", self.name),
                std::io::Error::new(std::io::ErrorKind::NotFound, "server not running"),
            )
        })
    }

    /// The log lines written after byte offset `from`.
    fn log_since(&self, from: u64) -> String {
        match std::fs::read(&self.log_file) {
            Ok(bytes) => {
                let start = usize::try_from(from).unwrap_or(0).min(bytes.len());
                tail(&String::from_utf8_lossy(&bytes[start..]))
            }
            Err(err) => format!("(cannot read {}: {err})", self.log_file.display()),
        }
    }
}

/// Whether a start failed because the port was in use.
fn port_was_taken(err: &ClusterError) -> bool {
    matches!(err, ClusterError::ServerStart { log_tail, .. }
        if log_tail.contains("could not bind") || log_tail.contains("Address already in use"))
}

/// The current size of a log file (0 if missing).
fn log_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |meta| meta.len())
}

/// Appends `text` to the file at `path`.
pub(crate) async fn append(path: &Path, text: &str) -> Result<(), ClusterError> {
    let context = || format!("cannot append to {}", path.display());
    let mut file = tokio::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .await
        .map_err(|err| ClusterError::io(context(), err))?;
    file.write_all(text.as_bytes())
        .await
        .map_err(|err| ClusterError::io(context(), err))?;
    file.flush()
        .await
        .map_err(|err| ClusterError::io(context(), err))
}
