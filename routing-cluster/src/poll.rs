//! Polling a condition until it holds or a deadline passes.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use crate::ClusterError;

/// The pause between two checks.
const INTERVAL: Duration = Duration::from_millis(50);

/// What one check of a condition found.
pub(crate) enum Check<T> {
    /// The condition holds.
    Done(T),
    /// Not yet; the text describes what was observed.
    Pending(String),
}

/// Checks `condition` until it is done, an error is returned, or `timeout`
/// passes, which yields [`ClusterError::Timeout`] naming `what`.
pub(crate) async fn until<T, F, Fut>(
    what: impl FnOnce() -> String,
    timeout: Duration,
    mut condition: F,
) -> Result<T, ClusterError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Check<T>, ClusterError>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let detail = match tokio::time::timeout_at(deadline, condition()).await {
            Ok(Ok(Check::Done(value))) => return Ok(value),
            Ok(Ok(Check::Pending(detail))) => detail,
            Ok(Err(err)) => return Err(err),
            Err(_) => "the last check did not finish".to_owned(),
        };
        if Instant::now() + INTERVAL >= deadline {
            return Err(ClusterError::Timeout {
                what: what(),
                after: timeout,
                detail,
            });
        }
        tokio::time::sleep(INTERVAL).await;
    }
}
