//! The machine the numbers were measured on: CPU, cores, memory, and the software versions.

use std::path::Path;

use tokio::process::Command;

/// What the report says about the machine. Anything that cannot be found reads `unknown`.
#[derive(Clone, Debug)]
pub(crate) struct Machine {
    /// The CPU model, from `/proc/cpuinfo`.
    pub(crate) cpu: String,
    /// Logical cores available to this process.
    pub(crate) cores: String,
    /// Total memory, from `/proc/meminfo`.
    pub(crate) memory: String,
    /// `postgres --version` of the cluster's servers.
    pub(crate) postgres: String,
    /// `pgpool --version`, when pgpool-II is installed.
    pub(crate) pgpool: String,
    /// `rustc --version`.
    pub(crate) rustc: String,
}

const UNKNOWN: &str = "unknown";

/// Describes this machine; `pg_bin_dir` holds the cluster's `postgres`, `pgpool` is pgpool-II's
/// program if installed.
pub(crate) async fn describe(pg_bin_dir: &Path, pgpool: Option<&Path>) -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let pgpool = match pgpool {
        Some(program) => version_of(program).await,
        None => "not installed".to_owned(),
    };
    Machine {
        cpu: cpu_model(&cpuinfo).unwrap_or_else(|| UNKNOWN.to_owned()),
        cores: cores(&cpuinfo),
        memory: memory(&meminfo).unwrap_or_else(|| UNKNOWN.to_owned()),
        postgres: version_of(&pg_bin_dir.join("postgres")).await,
        pgpool,
        rustc: version_of(Path::new("rustc")).await,
    }
}

/// The first `model name` of `/proc/cpuinfo`.
fn cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == "model name").then(|| value.trim().to_owned())
    })
}

/// Cores usable by this process, and the processors `/proc/cpuinfo` lists when they differ.
fn cores(cpuinfo: &str) -> String {
    let listed = cpuinfo
        .lines()
        .filter(|line| {
            line.split(':')
                .next()
                .is_some_and(|k| k.trim() == "processor")
        })
        .count();
    match std::thread::available_parallelism() {
        Ok(usable) if listed == 0 || usable.get() == listed => usable.to_string(),
        Ok(usable) => format!("{usable} usable ({listed} listed in /proc/cpuinfo)"),
        Err(_) if listed > 0 => listed.to_string(),
        Err(_) => UNKNOWN.to_owned(),
    }
}

/// `MemTotal` of `/proc/meminfo`, in GiB.
fn memory(meminfo: &str) -> Option<String> {
    let line = meminfo.lines().find(|line| line.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(format!("{:.1} GiB", kib as f64 / (1024.0 * 1024.0)))
}

/// The first line of `program --version`, or `unknown`.
async fn version_of(program: &Path) -> String {
    match Command::new(program).arg("--version").output().await {
        Ok(output) if output.status.success() => {
            let text = String::from_utf8_lossy(&output.stdout);
            let text = if text.trim().is_empty() {
                String::from_utf8_lossy(&output.stderr)
            } else {
                text
            };
            text.lines()
                .next()
                .map(str::trim)
                .filter(|line| !line.is_empty())
                .unwrap_or(UNKNOWN)
                .to_owned()
        }
        _ => UNKNOWN.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_proc_files() {
        let cpuinfo =
            "processor\t: 0\nmodel name\t: AMD EPYC\n\nprocessor\t: 1\nmodel name\t: AMD EPYC\n";
        assert_eq!(cpu_model(cpuinfo).as_deref(), Some("AMD EPYC"));
        assert_eq!(
            memory("MemTotal:       24684092 kB\nMemFree: 1 kB\n").as_deref(),
            Some("23.5 GiB")
        );
        assert_eq!(memory("garbage"), None);
        assert_eq!(cpu_model(""), None);
    }
}
