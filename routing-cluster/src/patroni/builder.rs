//! Options for starting a [`PatroniCluster`].

use std::path::PathBuf;
use std::time::Duration;

use super::PatroniCluster;
use super::config::{LOOP_WAIT_SECS, Settings};
use crate::ClusterError;

/// The default `ttl`.
const DEFAULT_TTL: Duration = Duration::from_secs(5);

/// The default `retry_timeout`.
const DEFAULT_RETRY_TIMEOUT: Duration = Duration::from_secs(2);

/// The default wait limit.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// Configures and starts a [`PatroniCluster`]; made by
/// [`PatroniCluster::builder`].
#[derive(Debug, Clone)]
#[must_use]
pub struct PatroniBuilder {
    pub(crate) ttl: Duration,
    pub(crate) retry_timeout: Duration,
    pub(crate) synchronous_mode: bool,
    pub(crate) timeout: Duration,
    pub(crate) bin_dir: Option<PathBuf>,
    pub(crate) patroni: Option<PathBuf>,
    pub(crate) etcd: Option<PathBuf>,
}

impl Default for PatroniBuilder {
    fn default() -> Self {
        Self {
            ttl: DEFAULT_TTL,
            retry_timeout: DEFAULT_RETRY_TIMEOUT,
            synchronous_mode: false,
            timeout: DEFAULT_TIMEOUT,
            bin_dir: None,
            patroni: None,
            etcd: None,
        }
    }
}

impl PatroniBuilder {
    /// Sets Patroni's `ttl`, how long the leader lock outlives a dead
    /// leader: a failover takes about this long (default 5 s). Whole
    /// seconds, with `1 s (loop_wait) + 2 * retry_timeout <= ttl`.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Sets Patroni's `retry_timeout` for etcd and PostgreSQL operations
    /// (default 2 s). Whole seconds, at least 1.
    pub fn retry_timeout(mut self, retry_timeout: Duration) -> Self {
        self.retry_timeout = retry_timeout;
        self
    }

    /// Turns on Patroni's `synchronous_mode` (default off): the leader
    /// commits only once one replica has the commit on disk, so a committed
    /// write survives a failover. The waits of the cluster then also wait
    /// for a synchronous standby.
    pub fn synchronous_mode(mut self, on: bool) -> Self {
        self.synchronous_mode = on;
        self
    }

    /// Sets how long each wait (startup, leader, streaming, switchover)
    /// may take before failing with [`ClusterError::Timeout`] (default
    /// 60 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Uses the PostgreSQL server programs in `dir` instead of searching
    /// for them as [`crate::LocalCluster`] does.
    pub fn bin_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.bin_dir = Some(dir.into());
        self
    }

    /// Uses this `patroni` program instead of the first on `PATH`, in
    /// `/usr/bin` or in `/usr/local/bin`.
    pub fn patroni_program(mut self, path: impl Into<PathBuf>) -> Self {
        self.patroni = Some(path.into());
        self
    }

    /// Uses this `etcd` program instead of the first on `PATH`, in
    /// `/usr/bin` or in `/usr/local/bin`.
    pub fn etcd_program(mut self, path: impl Into<PathBuf>) -> Self {
        self.etcd = Some(path.into());
        self
    }

    /// Starts etcd and three Patroni nodes, and waits until a leader
    /// accepts writes and both replicas stream from it.
    ///
    /// # Errors
    ///
    /// [`ClusterError::InvalidPatroniOption`] for options out of range,
    /// [`ClusterError::PatroniNotFound`] or
    /// [`ClusterError::BinariesNotFound`] for missing programs,
    /// [`ClusterError::ProcessExited`] when Patroni or etcd dies, or
    /// [`ClusterError::Timeout`] with the tail of every log; whatever was
    /// started is cleaned up before returning.
    pub async fn start(self) -> Result<PatroniCluster, ClusterError> {
        PatroniCluster::launch(self).await
    }

    /// Checks the options and returns the DCS settings.
    pub(crate) fn settings(&self) -> Result<Settings, ClusterError> {
        let ttl = whole_seconds("ttl", self.ttl)?;
        let retry_timeout = whole_seconds("retry_timeout", self.retry_timeout)?;
        if LOOP_WAIT_SECS + 2 * retry_timeout > ttl {
            return Err(ClusterError::InvalidPatroniOption {
                option: "ttl",
                reason: format!(
                    "loop_wait ({LOOP_WAIT_SECS} s) + 2 * retry_timeout ({retry_timeout} s) \
                     must not exceed ttl ({ttl} s)"
                ),
            });
        }
        if self.timeout.is_zero() {
            return Err(ClusterError::InvalidPatroniOption {
                option: "timeout",
                reason: "must be more than zero".to_owned(),
            });
        }
        Ok(Settings {
            ttl,
            retry_timeout,
            synchronous_mode: self.synchronous_mode,
        })
    }
}

/// `value` in seconds, if it is a whole, non-zero, sane number of them.
fn whole_seconds(option: &'static str, value: Duration) -> Result<u64, ClusterError> {
    let seconds = value.as_secs();
    if value.subsec_nanos() != 0 || seconds == 0 || seconds > 3600 {
        return Err(ClusterError::InvalidPatroniOption {
            option,
            reason: format!("{value:?} is not a whole number of seconds from 1 to 3600"),
        });
    }
    Ok(seconds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_keep_the_timing_rule() {
        let settings = PatroniBuilder::default().settings().unwrap();
        assert_eq!((settings.ttl, settings.retry_timeout), (5, 2));
        assert!(!settings.synchronous_mode);
    }

    #[test]
    fn out_of_range_options_are_errors() {
        let cases = [
            PatroniBuilder::default().ttl(Duration::from_secs(4)),
            PatroniBuilder::default().ttl(Duration::from_millis(5500)),
            PatroniBuilder::default().retry_timeout(Duration::ZERO),
            PatroniBuilder::default().timeout(Duration::ZERO),
        ];
        for builder in cases {
            let err = builder.settings().unwrap_err();
            assert!(
                matches!(err, ClusterError::InvalidPatroniOption { .. }),
                "{err}"
            );
        }
        let ten = PatroniBuilder::default()
            .ttl(Duration::from_secs(10))
            .retry_timeout(Duration::from_secs(3));
        assert_eq!(ten.settings().unwrap().ttl, 10);
    }
}
