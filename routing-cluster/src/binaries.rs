//! Locating the PostgreSQL server programs.

use std::env;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::ClusterError;

/// The programs a cluster needs, all of which must live in one directory.
const REQUIRED: [&str; 4] = ["postgres", "initdb", "pg_ctl", "pg_basebackup"];

/// The environment variable that overrides the search.
const ENV_VAR: &str = "PG_BIN_DIR";

/// Where distribution packages install versioned server binaries.
const DISTRO_ROOT: &str = "/usr/lib/postgresql";

/// A directory holding `postgres`, `initdb`, `pg_ctl` and `pg_basebackup`.
#[derive(Debug, Clone)]
pub(crate) struct PgBinaries {
    dir: PathBuf,
}

impl PgBinaries {
    /// Uses `dir`, failing if it lacks one of the required programs.
    pub(crate) fn in_dir(dir: PathBuf) -> Result<Self, ClusterError> {
        check_dir(&dir).map_err(|why| ClusterError::BinariesNotFound {
            searched: format!("{} ({why})", dir.display()),
        })?;
        Ok(Self { dir })
    }

    /// Searches `$PG_BIN_DIR`, then the directory of `pg_ctl` on `PATH`, then
    /// the highest version under `/usr/lib/postgresql/*/bin`.
    ///
    /// A set but unusable `$PG_BIN_DIR` is an error, not skipped.
    pub(crate) fn find() -> Result<Self, ClusterError> {
        if let Some(dir) = env::var_os(ENV_VAR).filter(|dir| !dir.is_empty()) {
            let dir = PathBuf::from(dir);
            return check_dir(&dir)
                .map(|()| Self { dir: dir.clone() })
                .map_err(|why| ClusterError::BinariesNotFound {
                    searched: format!("${ENV_VAR} = {} ({why})", dir.display()),
                });
        }
        let mut rejected = vec![format!("${ENV_VAR} (unset)")];
        match path_dir() {
            Ok(dir) => return Ok(Self { dir }),
            Err(why) => rejected.push(format!("PATH ({why})")),
        }
        match distro_dir() {
            Ok(dir) => return Ok(Self { dir }),
            Err(why) => rejected.push(format!("{DISTRO_ROOT}/*/bin ({why})")),
        }
        Err(ClusterError::BinariesNotFound {
            searched: rejected.join(", "),
        })
    }

    /// The directory holding the programs.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether the server can load the shared library `name` (from the `lib` directory beside
    /// the programs', where distribution packages put it).
    pub(crate) fn has_library(&self, name: &str) -> bool {
        self.dir
            .parent()
            .is_some_and(|root| root.join("lib").join(format!("{name}.so")).is_file())
    }

    /// The path of one program in the directory.
    pub(crate) fn program(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// The directory of the first `pg_ctl` on `PATH`, symlinks resolved.
fn path_dir() -> Result<PathBuf, String> {
    let path = env::var_os("PATH").ok_or("unset")?;
    let pg_ctl = env::split_paths(&path)
        .map(|dir| dir.join("pg_ctl"))
        .find(|candidate| is_executable(candidate))
        .ok_or("no pg_ctl")?;
    let resolved = std::fs::canonicalize(&pg_ctl)
        .map_err(|err| format!("cannot resolve {}: {err}", pg_ctl.display()))?;
    let dir = resolved
        .parent()
        .ok_or_else(|| format!("{} has no parent directory", resolved.display()))?
        .to_path_buf();
    check_dir(&dir).map_err(|why| format!("{}: {why}", dir.display()))?;
    Ok(dir)
}

/// The complete `bin` directory of the highest version under `/usr/lib/postgresql`.
fn distro_dir() -> Result<PathBuf, String> {
    let entries = std::fs::read_dir(DISTRO_ROOT).map_err(|err| err.to_string())?;
    let mut versions: Vec<(Vec<u32>, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let version = parse_version(entry.file_name().to_str()?)?;
            let bin = entry.path().join("bin");
            check_dir(&bin).ok()?;
            Some((version, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, dir)| dir)
        .ok_or_else(|| "no version directory with all programs".to_owned())
}

/// Parses `15` or `9.6` into comparable numbers.
fn parse_version(name: &str) -> Option<Vec<u32>> {
    name.split('.').map(|part| part.parse().ok()).collect()
}

/// Checks that every required program is an executable file in `dir`.
fn check_dir(dir: &Path) -> Result<(), String> {
    let missing: Vec<&str> = REQUIRED
        .into_iter()
        .filter(|name| !is_executable(&dir.join(name)))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!("missing {}", missing.join(", ")))
    }
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
    fn versions_compare_numerically() {
        assert!(parse_version("15") > parse_version("9.6"));
        assert_eq!(parse_version("main"), None);
    }

    #[test]
    fn empty_dir_is_rejected_with_a_clear_message() {
        let dir = tempfile::tempdir().unwrap();
        let err = PgBinaries::in_dir(dir.path().to_path_buf()).unwrap_err();
        let message = err.to_string();
        assert!(message.contains("missing postgres, initdb, pg_ctl, pg_basebackup"));
        assert!(message.contains("apt-get install postgresql"));
    }
}
