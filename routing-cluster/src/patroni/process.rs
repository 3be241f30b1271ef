//! Starting Patroni and etcd as the server user, and watching processes die.
//!
//! Patroni starts each postmaster through a helper that exits at once, so
//! postmasters are reparented to pid 1, which may reap them late: a zombie
//! counts as dead here.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::ClusterError;
use crate::command::{RunAs, file_tail};
use crate::signals;

/// The `PATH` of the daemons: the system's Python, not one from a version
/// manager earlier on the caller's `PATH` that lacks Patroni's modules.
const DAEMON_PATH: &str = "/usr/bin:/bin";

/// How often the waits below look again.
const INTERVAL: Duration = Duration::from_millis(20);

/// A daemon to start: its program, arguments, log and pid file.
#[derive(Debug)]
pub(crate) struct Daemon {
    /// The program.
    pub(crate) program: PathBuf,
    /// Its arguments.
    pub(crate) args: Vec<OsString>,
    /// Where its stdout and stderr go (appended).
    pub(crate) log: PathBuf,
    /// Where its pid is written, for the watchdog.
    pub(crate) pid_file: PathBuf,
}

impl Daemon {
    /// Starts the daemon in `dir` as `run_as`, in its own process group (a
    /// Ctrl-C to the terminal reaches only us, and we stop it), with a clean
    /// environment whose `HOME` is `dir`.
    pub(crate) fn spawn(&self, dir: &Path, run_as: RunAs) -> Result<Child, ClusterError> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|err| ClusterError::io(format!("cannot open {}", self.log.display()), err))?;
        let log_err = log
            .try_clone()
            .map_err(|err| ClusterError::io(format!("cannot dup {}", self.log.display()), err))?;
        let mut command = Command::new(&self.program);
        command
            .args(&self.args)
            .current_dir(dir)
            .env_clear()
            .env("PATH", DAEMON_PATH)
            .env("HOME", dir)
            .env("LANG", "C.UTF-8")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .process_group(0);
        if let RunAs::Postgres { uid, gid } = run_as {
            // As root, std also drops the supplementary groups.
            command.uid(uid).gid(gid);
        }
        let child = command.spawn().map_err(|err| ClusterError::Command {
            command: self.to_string(),
            status: format!("could not run: {err}"),
            output: String::new(),
        })?;
        std::fs::write(&self.pid_file, format!("{}\n", child.id())).map_err(|err| {
            ClusterError::io(format!("cannot write {}", self.pid_file.display()), err)
        })?;
        Ok(child)
    }
}

impl std::fmt::Display for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.program.display())?;
        for arg in &self.args {
            write!(f, " {}", arg.to_string_lossy())?;
        }
        Ok(())
    }
}

/// A daemon we start and may kill, and its process while it runs.
#[derive(Debug)]
pub(crate) struct Supervised {
    /// Its name in messages (`patroni of node 1`, `etcd`).
    pub(crate) name: String,
    /// How to start it.
    pub(crate) daemon: Daemon,
    /// The running process: ours, so its pid stays reserved until reaped.
    child: Mutex<Option<Child>>,
}

impl Supervised {
    /// A daemon that is not running yet.
    pub(crate) fn new(name: String, daemon: Daemon) -> Self {
        Self {
            name,
            daemon,
            child: Mutex::new(None),
        }
    }

    /// Starts the daemon unless it runs; `Ok(false)` if it already ran.
    pub(crate) fn start(&self, dir: &Path, run_as: RunAs) -> Result<bool, ClusterError> {
        let mut child = self.lock();
        if child.as_mut().is_some_and(child_running) {
            return Ok(false);
        }
        *child = Some(self.daemon.spawn(dir, run_as)?);
        Ok(true)
    }

    /// Whether it runs: `Ok(false)` if never started or killed by us, a
    /// [`ClusterError::ProcessExited`] if it exited on its own (reported
    /// once; it then counts as not running).
    pub(crate) fn check(&self) -> Result<bool, ClusterError> {
        let mut slot = self.lock();
        let Some(child) = slot.as_mut() else {
            return Ok(false);
        };
        match child.try_wait() {
            Ok(None) => Ok(true),
            Ok(Some(status)) => {
                *slot = None;
                Err(ClusterError::ProcessExited {
                    process: self.name.clone(),
                    status: status.to_string(),
                    log: self.daemon.log.display().to_string(),
                    log_tail: file_tail(&self.daemon.log),
                })
            }
            Err(err) => Err(ClusterError::io(
                format!("cannot wait for {}", self.name),
                err,
            )),
        }
    }

    /// Whether it runs, ignoring how it stopped.
    pub(crate) fn is_running(&self) -> bool {
        self.lock().as_mut().is_some_and(child_running)
    }

    /// The pid, while it runs.
    pub(crate) fn pid(&self) -> Option<u32> {
        let mut child = self.lock();
        let child = child.as_mut()?;
        child_running(child).then(|| child.id())
    }

    /// Takes the process out, to kill it; it then counts as not running.
    pub(crate) fn take(&self) -> Option<Child> {
        self.lock().take()
    }

    /// The process slot; a panic elsewhere does not poison it for us.
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Child>> {
        self.child.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Kills `child` with `SIGKILL` and reaps it.
pub(crate) fn kill_and_reap(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Whether `pid` exists and is not a zombie.
pub(crate) fn running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which is in parentheses.
        Ok(stat) => stat
            .rfind(')')
            .and_then(|end| stat[end + 1..].split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// The pid of the postmaster serving `data_dir`, if one runs: the pid in
/// `postmaster.pid`, checked to be alive and to name `data_dir` on its
/// command line (a stale file's pid may belong to another process by now).
pub(crate) fn postmaster(data_dir: &Path) -> Option<u32> {
    let pid = signals::postmaster_pid(data_dir).ok().flatten()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let needle = data_dir.as_os_str().as_encoded_bytes();
    let names_dir = cmdline.split(|&byte| byte == 0).any(|arg| arg == needle);
    (names_dir && running(pid)).then_some(pid)
}

/// Whether `child` still runs; reaps it if it exited.
pub(crate) fn child_running(child: &mut Child) -> bool {
    matches!(child.try_wait(), Ok(None))
}

/// Waits until none of `pids` runs, up to `timeout`; returns the survivors.
pub(crate) async fn wait_gone(pids: &[u32], timeout: Duration) -> Vec<u32> {
    let deadline = Instant::now() + timeout;
    loop {
        let alive: Vec<u32> = pids.iter().copied().filter(|&pid| running(pid)).collect();
        if alive.is_empty() || Instant::now() >= deadline {
            return alive;
        }
        tokio::time::sleep(INTERVAL).await;
    }
}

/// Like [`wait_gone`], blocking the thread (for `Drop`).
pub(crate) fn wait_gone_blocking(pids: &[u32], timeout: Duration) -> Vec<u32> {
    let deadline = Instant::now() + timeout;
    loop {
        let alive: Vec<u32> = pids.iter().copied().filter(|&pid| running(pid)).collect();
        if alive.is_empty() || Instant::now() >= deadline {
            return alive;
        }
        std::thread::sleep(INTERVAL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_running_process_is_running_and_a_reaped_one_is_not() {
        assert!(running(std::process::id()));
        let mut child = Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert!(!running(pid));
    }

    #[test]
    fn a_zombie_counts_as_dead() {
        let mut child = Command::new("true").spawn().unwrap();
        let pid = child.id();
        // Not reaped yet: a zombie once it exits.
        let deadline = Instant::now() + Duration::from_secs(10);
        while running(pid) && Instant::now() < deadline {
            std::thread::sleep(INTERVAL);
        }
        assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
        assert!(!running(pid));
        child.wait().unwrap();
    }

    #[test]
    fn no_postmaster_without_a_pid_file() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(postmaster(dir.path()), None);
        // A pid that is alive but is not a postmaster of this directory.
        std::fs::write(
            dir.path().join("postmaster.pid"),
            format!("{}\n", std::process::id()),
        )
        .unwrap();
        assert_eq!(postmaster(dir.path()), None);
    }
}
