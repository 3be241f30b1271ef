//! A detached process that cleans up if our process dies without `Drop`.
//!
//! A `static` is never dropped and a killed process runs no destructors, so
//! every cluster starts a small `sh` process that reads from a pipe we hold.
//! When our process is gone the kernel closes the pipe, `read` returns, and
//! the script kills every PgBouncer (found by the pid files under
//! `pgbouncer/`), stops every server and removes the directory. After a normal
//! cleanup we write `done` and it exits without doing anything.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};

use crate::ClusterError;
use crate::command::RunAs;

/// The script: `$1` root directory, `$2` pg_ctl, `$3` 1 to run pg_ctl as
/// postgres, then the data directories.
const SCRIPT: &str = r#"
trap '' INT TERM HUP
IFS= read -r line
[ "$line" = done ] && exit 0
root=$1 pg_ctl=$2 as_postgres=$3
shift 3
for pidfile in "$root"/pgbouncer/*/pgbouncer.pid; do
  [ -f "$pidfile" ] || continue
  pid=$(head -n 1 "$pidfile")
  case $pid in
    ''|*[!0-9]*) ;;
    *) grep -q pgbouncer "/proc/$pid/comm" 2>/dev/null && kill -KILL "$pid" ;;
  esac
done
for dir in "$@"; do
  [ -f "$dir/postmaster.pid" ] || continue
  pm=$(head -n 1 "$dir/postmaster.pid")
  case $pm in
    ''|*[!0-9]*) ;;
    *)
      kill -CONT "$pm"
      for stat in /proc/[0-9]*/stat; do
        { read -r pid comm state ppid rest < "$stat"; } 2>/dev/null || continue
        [ "$ppid" = "$pm" ] && kill -CONT "$pid"
      done
      ;;
  esac
  if [ "$as_postgres" = 1 ]; then
    runuser -u postgres -- "$pg_ctl" stop -D "$dir" -m immediate -w -t 30
  else
    "$pg_ctl" stop -D "$dir" -m immediate -w -t 30
  fi
done
rm -rf "$root"
"#;

/// The running watchdog; dismiss it once cleanup succeeded.
#[derive(Debug)]
pub(crate) struct Watchdog {
    child: Child,
    pipe: Option<ChildStdin>,
}

impl Watchdog {
    /// Starts the watchdog for the servers in `data_dirs` under `root`.
    pub(crate) fn spawn(
        root: &Path,
        pg_ctl: &Path,
        run_as: RunAs,
        data_dirs: &[PathBuf],
    ) -> Result<Self, ClusterError> {
        let as_postgres = if matches!(run_as, RunAs::Postgres { .. }) {
            "1"
        } else {
            "0"
        };
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(SCRIPT)
            .arg("routing-cluster-watchdog")
            .arg(root)
            .arg(pg_ctl)
            .arg(as_postgres)
            .args(data_dirs)
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
