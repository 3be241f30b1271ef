//! Options for starting a [`LocalCluster`].

use std::path::PathBuf;
use std::time::Duration;

use crate::{ClusterError, LocalCluster};

/// The replica count when not set.
const DEFAULT_REPLICAS: usize = 2;

/// The wait limit when not set.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Configures and starts a [`LocalCluster`]; made by [`LocalCluster::builder`].
#[derive(Debug, Clone)]
#[must_use]
pub struct ClusterBuilder {
    pub(crate) replicas: usize,
    pub(crate) bin_dir: Option<PathBuf>,
    pub(crate) timeout: Duration,
}

impl Default for ClusterBuilder {
    fn default() -> Self {
        Self {
            replicas: DEFAULT_REPLICAS,
            bin_dir: None,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

impl ClusterBuilder {
    /// Sets the number of hot-standby replicas (default 2; 0 is allowed).
    pub fn replicas(mut self, count: usize) -> Self {
        self.replicas = count;
        self
    }

    /// Uses the server programs in `dir` instead of searching for them.
    pub fn bin_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.bin_dir = Some(dir.into());
        self
    }

    /// Sets how long each wait (server start, streaming, catch-up) may
    /// take before failing with [`ClusterError::Timeout`] (default 30 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Creates the directory, starts the primary and the replicas, and
    /// waits until every replica streams.
    ///
    /// # Errors
    ///
    /// Fails if the binaries are missing, a command fails or a wait times
    /// out; whatever was started is cleaned up before returning.
    pub async fn start(self) -> Result<LocalCluster, ClusterError> {
        LocalCluster::launch(self).await
    }
}
