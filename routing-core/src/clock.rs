//! The router's own clock: its timeouts and pauses work in any tokio runtime, with timers or
//! without.
//!
//! A runtime built without `enable_time` (as diesel-async's `AsyncConnectionWrapper` builds one
//! outside a runtime) panics on the first `tokio::time` timer, and tokio cannot tell a library
//! beforehand whether the running one has timers. So every timer of the router is made on a
//! runtime of its own, with timers only, on a thread of its own: the timer still wakes the task
//! that waits on it, in whichever runtime that task runs.

use std::future::IntoFuture;
use std::sync::OnceLock;
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::time::{Sleep, Timeout};

/// The clock's runtime, started on first use; `None` when it could not start (the caller's
/// runtime's timers serve then).
static CLOCK: OnceLock<Option<Handle>> = OnceLock::new();

fn clock() -> Option<&'static Handle> {
    CLOCK
        .get_or_init(|| {
            let (started, handle) = std::sync::mpsc::channel();
            let spawned = std::thread::Builder::new()
                .name("routing-core clock".to_owned())
                .spawn(move || {
                    match tokio::runtime::Builder::new_current_thread()
                        .enable_time()
                        .build()
                    {
                        Ok(runtime) => {
                            let _ = started.send(Some(runtime.handle().clone()));
                            runtime.block_on(std::future::pending::<()>());
                        }
                        Err(error) => {
                            tracing::warn!(target: "routing_core", %error, "cannot start the clock");
                            let _ = started.send(None);
                        }
                    }
                });
            match spawned {
                Ok(_) => handle.recv().ok().flatten(),
                Err(error) => {
                    tracing::warn!(target: "routing_core", %error, "cannot start the clock");
                    None
                }
            }
        })
        .as_ref()
}

/// `future`, given up after `duration` (tokio's `timeout`, on the router's clock).
pub(crate) fn timeout<F: IntoFuture>(duration: Duration, future: F) -> Timeout<F::IntoFuture> {
    let _clock = clock().map(Handle::enter);
    tokio::time::timeout(duration, future)
}

/// A pause of `duration` (tokio's `sleep`, on the router's clock).
pub(crate) fn sleep(duration: Duration) -> Sleep {
    let _clock = clock().map(Handle::enter);
    tokio::time::sleep(duration)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    /// A runtime without timers, as diesel-async's `AsyncConnectionWrapper` makes one.
    fn runtime_without_timers() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap()
    }

    #[test]
    fn timeouts_work_in_a_runtime_without_timers() {
        let began = Instant::now();
        let waited = runtime_without_timers().block_on(async {
            super::timeout(Duration::from_millis(50), std::future::pending::<()>()).await
        });
        assert!(waited.is_err());
        assert!(began.elapsed() >= Duration::from_millis(50));
        let done = runtime_without_timers()
            .block_on(async { super::timeout(Duration::from_secs(60), async { 7 }).await });
        assert_eq!(done.ok(), Some(7));
    }

    #[test]
    fn sleeps_work_in_a_runtime_without_timers() {
        let began = Instant::now();
        runtime_without_timers().block_on(super::sleep(Duration::from_millis(20)));
        assert!(began.elapsed() >= Duration::from_millis(20));
    }
}
