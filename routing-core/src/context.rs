use std::future::Future;

use tokio::task::futures::TaskLocalFuture;

tokio::task_local! {
    static CONTEXT: RoutingContext;
}

/// The routing decision of the code that is running: may its reads go to a replica?
///
/// It lives in a tokio task-local set by a scope ([`with_read_replica`],
/// [`RoutingContext::scope`]); it is never set by assignment, so nothing needs clearing and
/// nothing leaks from one request to the next. Outside every scope reads go to the primary.
///
/// The context carries routing preferences only, never a connection or a transaction: handing
/// it to a spawned task with [`RoutingContext::scope`] or [`spawn_in_context`] lets that task
/// route its reads the same way, on its own connections.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoutingContext {
    use_read_replica: bool,
}

impl RoutingContext {
    /// A context that allows (`true`) or denies (`false`) the replica.
    pub fn new(use_read_replica: bool) -> Self {
        RoutingContext { use_read_replica }
    }

    /// The context of the running code: the innermost scope's, or the default (primary) outside
    /// every scope.
    pub fn current() -> Self {
        CONTEXT.try_with(Clone::clone).unwrap_or_default()
    }

    /// Whether reads may go to a replica.
    pub fn use_read_replica(&self) -> bool {
        self.use_read_replica
    }

    /// This context with the replica allowed or denied.
    #[must_use]
    pub fn with_use_read_replica(mut self, use_read_replica: bool) -> Self {
        self.use_read_replica = use_read_replica;
        self
    }

    /// Runs `fut` inside this context. Scopes nest: the innermost wins while it runs, and the
    /// outer context is back as soon as `fut` finishes or is dropped.
    pub async fn scope<F: Future>(self, fut: F) -> F::Output {
        self.scoped(fut).await
    }

    /// `fut` inside this context, as a nameable future type.
    pub(crate) fn scoped<F: Future>(self, fut: F) -> TaskLocalFuture<RoutingContext, F> {
        CONTEXT.scope(self, fut)
    }

    /// Runs the blocking closure `f` inside this context, for synchronous code and
    /// `spawn_blocking`.
    pub fn sync_scope<R>(self, f: impl FnOnce() -> R) -> R {
        CONTEXT.sync_scope(self, f)
    }
}

/// Runs `fut` with the replica allowed (`true`) or denied (`false`) for its reads.
///
/// Writes and transactions go to the primary whatever the scope says. Nested scopes shadow outer
/// ones, and the setting ends with `fut`.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use routing_core::{should_use_read_replica, with_read_replica};
///
/// assert!(!should_use_read_replica());
/// with_read_replica(true, async {
///     assert!(should_use_read_replica());
///     with_read_replica(false, async { assert!(!should_use_read_replica()) }).await;
///     assert!(should_use_read_replica());
/// })
/// .await;
/// assert!(!should_use_read_replica());
/// # }
/// ```
pub async fn with_read_replica<F: Future>(use_replica: bool, fut: F) -> F::Output {
    RoutingContext::current()
        .with_use_read_replica(use_replica)
        .scope(fut)
        .await
}

/// The synchronous twin of [`with_read_replica`], for blocking code.
pub fn with_read_replica_sync<R>(use_replica: bool, f: impl FnOnce() -> R) -> R {
    RoutingContext::current()
        .with_use_read_replica(use_replica)
        .sync_scope(f)
}

/// Runs `fut` with reads forced to the primary: shorthand for `with_read_replica(false, fut)`.
pub async fn with_primary<F: Future>(fut: F) -> F::Output {
    with_read_replica(false, fut).await
}

/// Whether the running code's reads may go to a replica. False outside every scope: the primary
/// is the safe default.
pub fn should_use_read_replica() -> bool {
    CONTEXT
        .try_with(|context| context.use_read_replica)
        .unwrap_or(false)
}

/// Spawns `fut` on the tokio runtime inside the caller's routing context.
///
/// `tokio::spawn` does not carry task-locals into the new task; this does, and carries only the
/// routing context: the new task opens its own connections and never joins the caller's
/// transaction.
///
/// # Panics
///
/// Panics when called outside a tokio runtime, as `tokio::spawn` does.
pub fn spawn_in_context<F>(fut: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(RoutingContext::current().scope(fut))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn primary_outside_every_scope() {
        assert!(!should_use_read_replica());
        assert_eq!(RoutingContext::current(), RoutingContext::new(false));
    }

    #[tokio::test]
    async fn scopes_nest_and_end_with_their_future() {
        with_read_replica(true, async {
            assert!(should_use_read_replica());
            with_primary(async {
                assert!(!should_use_read_replica());
                tokio::task::yield_now().await;
                assert!(!should_use_read_replica());
            })
            .await;
            assert!(should_use_read_replica());
        })
        .await;
        assert!(!should_use_read_replica());
    }

    #[tokio::test]
    async fn sync_scope_sets_and_restores() {
        with_read_replica_sync(true, || {
            assert!(should_use_read_replica());
            with_read_replica_sync(false, || assert!(!should_use_read_replica()));
            assert!(should_use_read_replica());
        });
        assert!(!should_use_read_replica());
    }

    #[tokio::test]
    async fn sync_scope_restores_after_a_panic() {
        let caught = std::panic::catch_unwind(|| {
            with_read_replica_sync(true, || panic!("handler failed"));
        });
        assert!(caught.is_err());
        assert!(!should_use_read_replica());
    }

    #[tokio::test]
    async fn tokio_spawn_does_not_inherit_but_spawn_in_context_does() {
        with_read_replica(true, async {
            let plain = tokio::spawn(async { should_use_read_replica() });
            let carried = spawn_in_context(async { should_use_read_replica() });
            assert!(!plain.await.unwrap());
            assert!(carried.await.unwrap());
        })
        .await;
    }

    #[tokio::test]
    async fn dropped_scope_future_restores_the_outer_value() {
        with_read_replica(true, async {
            let mut inner = Box::pin(with_read_replica(false, async {
                std::future::pending::<()>().await;
            }));
            // Poll once, then drop it mid-flight.
            std::future::poll_fn(|cx| {
                assert!(inner.as_mut().poll(cx).is_pending());
                std::task::Poll::Ready(())
            })
            .await;
            drop(inner);
            assert!(should_use_read_replica());
        })
        .await;
    }
}
