//! Locating the `patroni` and `etcd` programs.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::ClusterError;

/// Where distribution packages install them, searched after `PATH`.
const SYSTEM_DIRS: [&str; 2] = ["/usr/bin", "/usr/local/bin"];

/// The programs a Patroni cluster runs besides PostgreSQL's own.
#[derive(Debug, Clone)]
pub(crate) struct Programs {
    /// The `patroni` daemon.
    pub(crate) patroni: PathBuf,
    /// The `etcd` server.
    pub(crate) etcd: PathBuf,
}

impl Programs {
    /// Uses the given paths, or searches `PATH`, `/usr/bin` and
    /// `/usr/local/bin` for each program not given.
    pub(crate) fn find(patroni: Option<&Path>, etcd: Option<&Path>) -> Result<Self, ClusterError> {
        let patroni = locate("patroni", patroni);
        let etcd = locate("etcd", etcd);
        match (patroni, etcd) {
            (Ok(patroni), Ok(etcd)) => Ok(Self { patroni, etcd }),
            (patroni, etcd) => {
                let missing: Vec<String> =
                    [patroni.err(), etcd.err()].into_iter().flatten().collect();
                Err(ClusterError::PatroniNotFound {
                    missing: missing.join("; "),
                })
            }
        }
    }
}

/// The path of `name`: `explicit` if given and executable, else the first
/// executable file of that name on `PATH` or in [`SYSTEM_DIRS`].
fn locate(name: &str, explicit: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(path) = explicit {
        return if is_executable(path) {
            Ok(path.to_path_buf())
        } else {
            Err(format!(
                "{name}: {} is not an executable file",
                path.display()
            ))
        };
    }
    let path_dirs = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default();
    path_dirs
        .into_iter()
        .chain(SYSTEM_DIRS.into_iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
        .ok_or_else(|| format!("{name} not found on PATH or in {}", SYSTEM_DIRS.join(", ")))
}

/// Whether `path` is a file with an execute bit set.
fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path)
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_programs_name_the_packages() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("patroni");
        let err = Programs::find(Some(&missing), Some(&missing)).unwrap_err();
        let message = err.to_string();
        assert!(message.contains("patroni: "), "{message}");
        assert!(message.contains("etcd: "), "{message}");
        assert!(message.contains("apt-get install --no-install-recommends patroni etcd-server"));
    }
}
