//! The cleanup watchdog of a Patroni cluster, on the pattern of the local
//! cluster's: a detached `sh` reads from a pipe we hold; when our process is
//! gone, the kernel closes the pipe and the script kills every Patroni (so it
//! restarts nothing), shuts every postmaster down, kills etcd and removes the
//! directory. After a normal cleanup we write `done` and it exits.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};

use crate::ClusterError;

/// The script: `$1` the cluster directory. Pids come from the pid files
/// under it and are signalled only while their command line names the
/// directory (a pid may be reused by then). A zombie counts as dead.
const SCRIPT: &str = r#"
trap '' INT TERM HUP
IFS= read -r line
[ "$line" = done ] && exit 0
root=$1
ours() {
  [ -n "$1" ] && tr '\0' '\n' < "/proc/$1/cmdline" 2>/dev/null | grep -q -F -- "$root/"
}
alive() {
  [ -r "/proc/$1/stat" ] && ! grep -q '^[0-9]* (.*) [ZX] ' "/proc/$1/stat" 2>/dev/null
}
for file in "$root"/*.patroni.pid; do
  pid=$(cat "$file" 2>/dev/null)
  ours "$pid" && kill -KILL "$pid"
done
postmasters=
for file in "$root"/node*/postmaster.pid; do
  pid=$(head -n 1 "$file" 2>/dev/null)
  case $pid in ''|*[!0-9]*) continue ;; esac
  if ours "$pid"; then
    kill -CONT "$pid"
    kill -QUIT "$pid"
    postmasters="$postmasters $pid"
  fi
done
for _ in $(seq 1 300); do
  left=
  for pid in $postmasters; do alive "$pid" && left=1; done
  [ -z "$left" ] && break
  sleep 0.1
done
for pid in $postmasters; do alive "$pid" && kill -KILL "$pid"; done
pid=$(cat "$root/etcd.pid" 2>/dev/null)
ours "$pid" && kill -KILL "$pid"
sleep 0.2
rm -rf "$root" || { sleep 1; rm -rf "$root"; }
"#;

/// The running watchdog; dismiss it once cleanup succeeded.
#[derive(Debug)]
pub(crate) struct Watchdog {
    child: Child,
    pipe: Option<ChildStdin>,
}

impl Watchdog {
    /// Starts the watchdog for the cluster in `root`.
    pub(crate) fn spawn(root: &Path) -> Result<Self, ClusterError> {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(SCRIPT)
            .arg("routing-cluster-patroni-watchdog")
            .arg(root)
            .current_dir("/")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group: a Ctrl-C to our terminal must not hit it.
            .process_group(0)
            .spawn()
            .map_err(|err| ClusterError::io("cannot start the cleanup watchdog `sh`", err))?;
        let pipe = child.stdin.take();
        Ok(Self { child, pipe })
    }

    /// Tells the watchdog that everything is cleaned up, and reaps it.
    pub(crate) fn dismiss(mut self) {
        if let Some(mut pipe) = self.pipe.take() {
            let _ = pipe.write_all(b"done\n");
        }
        let _ = self.child.wait();
    }
}
