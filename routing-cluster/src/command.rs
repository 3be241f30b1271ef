//! Running external programs, as the `postgres` user when we are root.

use std::ffi::{OsStr, OsString};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

use crate::ClusterError;

/// How many trailing lines of output or log an error message carries.
pub(crate) const TAIL_LINES: usize = 20;

/// The user server programs run as.
///
/// PostgreSQL refuses to run as root, so a root process runs them as the
/// `postgres` system user through `runuser` and hands it the directories.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RunAs {
    /// The current user (we are not root).
    CurrentUser,
    /// The `postgres` system user (we are root).
    Postgres {
        /// Its user id.
        uid: u32,
        /// Its primary group id.
        gid: u32,
    },
}

impl RunAs {
    /// Picks the user from our effective uid.
    pub(crate) async fn detect() -> Result<Self, ClusterError> {
        let euid = std::fs::metadata("/proc/self")
            .map_err(|err| ClusterError::io("cannot read /proc/self to find our user id", err))?
            .uid();
        if euid != 0 {
            return Ok(Self::CurrentUser);
        }
        let uid = id_of("-u").await?;
        let gid = id_of("-g").await?;
        Ok(Self::Postgres { uid, gid })
    }

    /// Gives `path` to the server user (a no-op when not root).
    pub(crate) fn hand_over(self, path: &Path) -> Result<(), ClusterError> {
        if let Self::Postgres { uid, gid } = self {
            std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(|err| {
                ClusterError::io(format!("cannot chown {} to postgres", path.display()), err)
            })?;
        }
        Ok(())
    }
}

/// Asks `id` for a numeric id of the `postgres` user.
async fn id_of(flag: &str) -> Result<u32, ClusterError> {
    let command = ServerCommand::new("id", RunAs::CurrentUser)
        .arg(flag)
        .arg("postgres");
    let output = command.raw_output().await?;
    let text = String::from_utf8_lossy(&output.stdout);
    match text.trim().parse() {
        Ok(id) if output.status.success() => Ok(id),
        _ => Err(ClusterError::Command {
            command: command.to_string(),
            status: format!(
                "{}; PostgreSQL refuses to run as root, so a `postgres` system user is needed",
                output.status
            ),
            output: output_tail(&output),
        }),
    }
}

/// An external program with arguments, run as the server user.
#[derive(Debug, Clone)]
pub(crate) struct ServerCommand {
    program: PathBuf,
    args: Vec<OsString>,
    run_as: RunAs,
    cwd: Option<PathBuf>,
}

impl ServerCommand {
    /// A command for `program`, to be run as `run_as`.
    pub(crate) fn new(program: impl Into<PathBuf>, run_as: RunAs) -> Self {
        Self {
            program: program.into(),
            args: Vec::new(),
            run_as,
            cwd: None,
        }
    }

    /// Appends one argument.
    pub(crate) fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_os_string());
        self
    }

    /// Appends several arguments.
    pub(crate) fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|arg| arg.as_ref().to_os_string()));
        self
    }

    /// Runs in `dir` (which the server user must be able to enter).
    pub(crate) fn current_dir(mut self, dir: &Path) -> Self {
        self.cwd = Some(dir.to_path_buf());
        self
    }

    /// The blocking standard-library command, stdin closed and output piped.
    pub(crate) fn std_command(&self) -> std::process::Command {
        let mut command = match self.run_as {
            RunAs::CurrentUser => std::process::Command::new(&self.program),
            RunAs::Postgres { .. } => {
                let mut command = std::process::Command::new("runuser");
                command.args(["-u", "postgres", "--"]).arg(&self.program);
                command
            }
        };
        command
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(dir) = &self.cwd {
            command.current_dir(dir);
        }
        command
    }

    /// Runs to completion, failing unless it exits successfully.
    pub(crate) async fn output(&self) -> Result<Output, ClusterError> {
        let output = self.raw_output().await?;
        if output.status.success() {
            Ok(output)
        } else {
            Err(ClusterError::Command {
                command: self.to_string(),
                status: output.status.to_string(),
                output: output_tail(&output),
            })
        }
    }

    /// Runs to completion, whatever its exit status.
    pub(crate) async fn raw_output(&self) -> Result<Output, ClusterError> {
        tokio::process::Command::from(self.std_command())
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|err| ClusterError::Command {
                command: self.to_string(),
                status: format!("could not run: {err}"),
                output: String::new(),
            })
    }
}

impl std::fmt::Display for ServerCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if matches!(self.run_as, RunAs::Postgres { .. }) {
            f.write_str("runuser -u postgres -- ")?;
        }
        write!(f, "{}", self.program.display())?;
        for arg in &self.args {
            write!(f, " {}", arg.to_string_lossy())?;
        }
        Ok(())
    }
}

/// The last lines of a command's stderr followed by its stdout.
pub(crate) fn output_tail(output: &Output) -> String {
    let mut text = String::from_utf8_lossy(&output.stderr).into_owned();
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !stdout.trim().is_empty() {
        text.push_str(&stdout);
    }
    tail(&text)
}

/// The last [`TAIL_LINES`] non-empty lines of `text`, or `(empty)`.
pub(crate) fn tail(text: &str) -> String {
    let lines: Vec<&str> = text
        .lines()
        .filter(|line| !line.trim().is_empty())
        .collect();
    if lines.is_empty() {
        return "(empty)".to_owned();
    }
    lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n")
}

/// The last lines of a log file, or why it could not be read.
pub(crate) fn file_tail(path: &Path) -> String {
    match std::fs::read(path) {
        Ok(bytes) => tail(&String::from_utf8_lossy(&bytes)),
        Err(err) => format!("(cannot read {}: {err})", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_last_lines() {
        let text: String = (0..30).map(|i| format!("line {i}\n")).collect();
        let tail = tail(&text);
        assert!(tail.starts_with("line 10\n"));
        assert!(tail.ends_with("line 29"));
        assert_eq!(super::tail("\n \n"), "(empty)");
    }

    #[test]
    fn command_line_shows_runuser() {
        let command = ServerCommand::new("/bin/pg_ctl", RunAs::Postgres { uid: 1, gid: 1 })
            .args(["-D", "/tmp/x"]);
        assert_eq!(
            command.to_string(),
            "runuser -u postgres -- /bin/pg_ctl -D /tmp/x"
        );
    }
}
