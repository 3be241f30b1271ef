//! Stopping and continuing a server's whole process tree with signals.
//!
//! Signals are sent with the `kill` command, so no unsafe code is needed.

use std::collections::HashMap;
use std::path::Path;

use crate::ClusterError;
use crate::command::{RunAs, ServerCommand, output_tail};

/// The pid of a server's postmaster (first line of `postmaster.pid`), or
/// `None` when the server is not running.
pub(crate) fn postmaster_pid(data_dir: &Path) -> Result<Option<u32>, ClusterError> {
    let path = data_dir.join("postmaster.pid");
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => {
            return Err(ClusterError::io(
                format!("cannot read {}", path.display()),
                err,
            ));
        }
    };
    let first = text.lines().next().unwrap_or_default().trim();
    first.parse().map(Some).map_err(|_| {
        ClusterError::io(
            format!("cannot parse the pid in {}", path.display()),
            std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{first:?}")),
        )
    })
}

/// Every descendant of `root`, parents before their children, found by
/// scanning the parent pid in `/proc/*/stat`.
pub(crate) fn descendants(root: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.filter_map(Result::ok) {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|name| name.parse().ok())
            else {
                continue;
            };
            if let Some(ppid) = parent_pid(&entry.path().join("stat")) {
                children.entry(ppid).or_default().push(pid);
            }
        }
    }
    let mut found = Vec::new();
    let mut queue = vec![root];
    while let Some(parent) = queue.pop() {
        for &child in children.get(&parent).into_iter().flatten() {
            found.push(child);
            queue.push(child);
        }
    }
    found
}

/// The parent pid from a `/proc/<pid>/stat` file.
fn parent_pid(stat: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(stat).ok()?;
    // The command name is in parentheses and may hold spaces or ')'.
    let rest = &text[text.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Whether a process with this pid exists.
pub(crate) fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Sends `signal` (e.g. `STOP`) to every pid with `kill`, ignoring pids that
/// vanished meanwhile.
pub(crate) async fn send(signal: &str, pids: &[u32]) -> Result<(), ClusterError> {
    if pids.is_empty() {
        return Ok(());
    }
    let command = kill_command(signal, pids);
    let output = command.raw_output().await?;
    if output.status.success() || pids.iter().all(|&pid| !alive(pid)) {
        return Ok(());
    }
    // Some pid failed: fine if exactly the vanished ones did.
    let stderr = String::from_utf8_lossy(&output.stderr);
    if stderr.lines().all(|line| line.contains("No such process")) {
        return Ok(());
    }
    Err(ClusterError::Command {
        command: command.to_string(),
        status: output.status.to_string(),
        output: output_tail(&output),
    })
}

/// Sends `signal` to every pid and waits, ignoring failures (for `Drop`).
pub(crate) fn send_blocking(signal: &str, pids: &[u32]) {
    if !pids.is_empty() {
        let _ = kill_command(signal, pids).std_command().output();
    }
}

/// `kill -SIGNAL pid...`; root may signal the postgres user's processes.
fn kill_command(signal: &str, pids: &[u32]) -> ServerCommand {
    ServerCommand::new("kill", RunAs::CurrentUser)
        .arg(format!("-{signal}"))
        .args(pids.iter().map(u32::to_string))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parent_of_ourselves_is_found() {
        let me = std::process::id();
        let stat = format!("/proc/{me}/stat");
        assert!(parent_pid(Path::new(&stat)).is_some());
        assert!(alive(me));
    }

    #[test]
    fn missing_pid_file_means_not_running() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(postmaster_pid(dir.path()).unwrap(), None);
        std::fs::write(dir.path().join("postmaster.pid"), "garbage\n").unwrap();
        assert!(postmaster_pid(dir.path()).is_err());
    }
}
