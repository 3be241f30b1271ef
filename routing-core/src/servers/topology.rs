//! Which node is the primary now, for a pool that discovers it (a multi-host URL): set by the
//! health probe, read by every write, waited on while a failover is under way.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::Notify;

const NONE: usize = usize::MAX;

/// The current primary of a discovering pool.
#[derive(Debug)]
pub(crate) struct Topology {
    /// The primary's node index, or [`NONE`].
    primary: AtomicUsize,
    /// Why there is no primary, when there is none.
    missing: Mutex<String>,
    /// Notified when the primary changes.
    changed: Notify,
    /// Notified to make the probe look again at once (a primary connection broke, a write
    /// waits for a primary).
    look_again: Arc<Notify>,
}

impl Topology {
    pub(crate) fn new() -> Self {
        Topology {
            primary: AtomicUsize::new(NONE),
            missing: Mutex::new("the health probe has not found it yet".to_owned()),
            changed: Notify::new(),
            look_again: Arc::new(Notify::new()),
        }
    }

    /// The primary's node index, if there is one now.
    pub(crate) fn primary(&self) -> Option<usize> {
        let node = self.primary.load(Ordering::Acquire);
        (node != NONE).then_some(node)
    }

    /// Why there is no primary now.
    pub(crate) fn missing(&self) -> Option<String> {
        self.primary().is_none().then(|| {
            self.missing
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
        })
    }

    /// Records what the probe found: the primary's node, or why there is none. Returns whether
    /// the primary changed.
    pub(crate) fn set(&self, found: Result<usize, String>) -> bool {
        let (node, why) = match found {
            Ok(node) => (node, None),
            Err(why) => (NONE, Some(why)),
        };
        if let Some(why) = why {
            *self.missing.lock().unwrap_or_else(|e| e.into_inner()) = why;
        }
        let before = self.primary.swap(node, Ordering::AcqRel);
        if before != node {
            self.changed.notify_waiters();
            return true;
        }
        false
    }

    /// Waits until `deadline` for a primary other than `failed` (a node that could not be
    /// reached as the primary): its node index, or `None`.
    pub(crate) async fn wait(&self, failed: Option<usize>, deadline: Instant) -> Option<usize> {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let usable = self.primary().filter(|node| Some(*node) != failed);
            if usable.is_some() {
                return usable;
            }
            self.look_again.notify_one();
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || crate::clock::timeout(left, changed).await.is_err() {
                return self.primary().filter(|node| Some(*node) != failed);
            }
        }
    }

    /// [`Topology::wait`] for a thread that may block: checks every few milliseconds.
    #[cfg(feature = "sync")]
    pub(crate) fn wait_blocking(&self, failed: Option<usize>, deadline: Instant) -> Option<usize> {
        const CHECK_EVERY: std::time::Duration = std::time::Duration::from_millis(5);
        loop {
            let usable = self.primary().filter(|node| Some(*node) != failed);
            if usable.is_some() {
                return usable;
            }
            self.look_again.notify_one();
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            std::thread::sleep(left.min(CHECK_EVERY));
        }
    }

    /// Asks the probe to look at the nodes again without waiting for its next round.
    pub(crate) fn look_again(&self) {
        self.look_again.notify_one();
    }

    /// Notified when something asks the probe to look again.
    pub(crate) fn wake(&self) -> Arc<Notify> {
        Arc::clone(&self.look_again)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn writers_wait_for_a_primary_and_wake_when_one_appears() {
        let topology = std::sync::Arc::new(Topology::new());
        assert_eq!(topology.primary(), None);
        assert!(topology.missing().is_some());
        let soon = || Instant::now() + Duration::from_millis(20);
        assert_eq!(topology.wait(None, soon()).await, None);
        let waiting = {
            let topology = std::sync::Arc::clone(&topology);
            tokio::spawn(async move {
                topology
                    .wait(None, Instant::now() + Duration::from_secs(30))
                    .await
            })
        };
        tokio::task::yield_now().await;
        assert!(topology.set(Ok(2)));
        assert_eq!(waiting.await.unwrap(), Some(2));
        // A primary that could not be reached is not waited for again.
        assert_eq!(topology.wait(Some(2), soon()).await, None);
        assert_eq!(topology.wait(Some(1), soon()).await, Some(2));
        assert!(!topology.set(Ok(2)));
        assert!(topology.set(Err("nodes 0 and 2 both answer as primaries".to_owned())));
        assert_eq!(
            topology.missing().as_deref(),
            Some("nodes 0 and 2 both answer as primaries")
        );
    }
}
