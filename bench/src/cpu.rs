//! CPU time spent on requests, on both sides of the socket: this process (the clients, the
//! connections' driver tasks, the router) and the servers' processes (PostgreSQL's backends and
//! background processes, PgBouncer, pgpool-II), read before and after each timed slice. On a
//! saturated machine throughput follows the sum of both per request, so the split shows on which
//! side a system's extra cost lies.

use std::ops::{Add, Sub};
use std::time::Duration;

/// The names (`/proc/<pid>/stat`'s `comm`) of the processes counted as servers.
const SERVER_PROGRAMS: [&str; 3] = ["postgres", "pgbouncer", "pgpool"];

/// CPU time used so far, by this process and by the server processes alive now.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct CpuTimes {
    /// This process, every thread.
    pub(crate) client: Duration,
    /// Every process named in [`SERVER_PROGRAMS`] (all clusters on the machine: an idle one adds
    /// a little background work).
    pub(crate) servers: Duration,
}

impl CpuTimes {
    /// The times now; a server process that ends between two readings takes its time with it,
    /// which the pools' long-lived sessions make rare during a slice.
    pub(crate) fn now() -> CpuTimes {
        CpuTimes {
            client: process_cpu(),
            servers: servers_cpu(),
        }
    }
}

impl Sub for CpuTimes {
    type Output = CpuTimes;

    fn sub(self, earlier: CpuTimes) -> CpuTimes {
        CpuTimes {
            client: self.client.saturating_sub(earlier.client),
            servers: self.servers.saturating_sub(earlier.servers),
        }
    }
}

impl Add for CpuTimes {
    type Output = CpuTimes;

    fn add(self, other: CpuTimes) -> CpuTimes {
        CpuTimes {
            client: self.client + other.client,
            servers: self.servers + other.servers,
        }
    }
}

/// This process's CPU time so far, every thread.
pub(crate) fn process_cpu() -> Duration {
    let time = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(
        u64::try_from(time.tv_sec).unwrap_or(0),
        u32::try_from(time.tv_nsec).unwrap_or(0),
    )
}

/// The user and system time of every server process, from `/proc/<pid>/stat`.
fn servers_cpu() -> Duration {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Duration::ZERO;
    };
    let ticks: u64 = entries
        .flatten()
        .filter_map(|entry| std::fs::read_to_string(entry.path().join("stat")).ok())
        .filter_map(|stat| server_ticks(&stat))
        .sum();
    // `/proc` counts in clock ticks of 1/100 s (`USER_HZ`) on Linux.
    Duration::from_millis(ticks * 10)
}

/// The user plus system ticks of the process whose `/proc/<pid>/stat` is `stat`, when it is a
/// server.
fn server_ticks(stat: &str) -> Option<u64> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?;
    if !SERVER_PROGRAMS.contains(&comm) {
        return None;
    }
    // After the command: state (field 3) first; utime and stime are fields 14 and 15.
    let mut fields = stat.get(close + 2..)?.split(' ').skip(11);
    let user = fields.next()?.parse::<u64>().ok()?;
    let system = fields.next()?.parse::<u64>().ok()?;
    Some(user + system)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_server_process_s_ticks() {
        let stat = "4242 (postgres) S 4200 4200 4200 0 -1 4194560 300 0 0 0 17 5 0 0 20 0 1 0 \
                    123 1000 50";
        assert_eq!(server_ticks(stat), Some(22));
        let odd = "7 (pgpool) R 1 7 7 0 -1 0 0 0 0 0 3 4 0 0";
        assert_eq!(server_ticks(odd), Some(7));
        assert_eq!(
            server_ticks("9 (routing-load) S 1 9 9 0 -1 0 0 0 0 0 3 4"),
            None
        );
        assert_eq!(
            server_ticks("10 (post gres) S 1 9 9 0 -1 0 0 0 0 0 3 4"),
            None
        );
        assert_eq!(server_ticks("garbage"), None);
    }

    #[test]
    fn this_process_uses_cpu() {
        let before = CpuTimes::now();
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
        let spent = CpuTimes::now() - before;
        assert!(spent.client > Duration::ZERO, "{spent:?}");
    }
}
