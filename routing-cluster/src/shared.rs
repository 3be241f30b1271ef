//! One cluster per process, shared by every caller.

use tokio::sync::OnceCell;

use crate::{ClusterError, LocalCluster};

/// The shared cluster, or the message of the error that stopped it.
static SHARED: OnceCell<Result<LocalCluster, String>> = OnceCell::const_new();

/// The process-wide cluster (primary + 2 replicas), started on first use.
///
/// Concurrent first callers, even on different tokio runtimes (one per
/// `#[tokio::test]`), wait for a single startup. The cluster is never
/// dropped; when the process exits, its watchdog stops the servers and
/// removes the directory. Fault controls on it affect every test sharing it.
///
/// # Errors
///
/// [`ClusterError::SharedStartFailed`] carrying the startup error, for every
/// caller once the startup has failed.
pub async fn shared() -> Result<&'static LocalCluster, ClusterError> {
    let started = SHARED
        .get_or_init(|| async { LocalCluster::start().await.map_err(|err| err.to_string()) })
        .await;
    match started {
        Ok(cluster) => Ok(cluster),
        Err(message) => Err(ClusterError::SharedStartFailed {
            message: message.clone(),
        }),
    }
}
