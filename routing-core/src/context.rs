//! The routing context: what the running code allows its reads, set by scopes and read by the
//! connection when a statement runs.

mod routed;

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::causal::CausalToken;
use crate::servers::RoutedPool;
pub use routed::{Routed, RoutingExt};

tokio::task_local! {
    static CONTEXT: RoutingContext;
}

/// The routing decision of the code that is running: may its reads go to a replica?
///
/// It lives in a tokio task-local set by a scope ([`with_read_replica`],
/// [`RoutingContext::scope`]); it is never set by assignment, so nothing needs clearing and
/// nothing leaks from one request to the next. Outside every scope reads go to the primary.
///
/// Besides the replica flag it carries a staleness budget ([`with_max_lag`]) and a causal token
/// ([`with_causal_token`]) that narrow which replicas may serve the reads.
///
/// The context carries routing preferences only, never a connection or a transaction: handing
/// it to a spawned task with [`RoutingContext::scope`] or [`spawn_in_context`] lets that task
/// route its reads the same way, on its own connections.
#[derive(Clone, Debug, Default)]
pub struct RoutingContext {
    use_read_replica: bool,
    max_lag: Option<Duration>,
    causal_token: Option<CausalToken>,
    /// The request's record of writes, set by the middleware; not carried into spawned tasks.
    sink: Option<Arc<WriteSink>>,
}

impl PartialEq for RoutingContext {
    fn eq(&self, other: &Self) -> bool {
        self.use_read_replica == other.use_read_replica
            && self.max_lag == other.max_lag
            && self.causal_token == other.causal_token
            && match (&self.sink, &other.sink) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            }
    }
}

impl Eq for RoutingContext {}

impl RoutingContext {
    /// A context that allows (`true`) or denies (`false`) the replica.
    pub fn new(use_read_replica: bool) -> Self {
        RoutingContext {
            use_read_replica,
            ..RoutingContext::default()
        }
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

    /// The staleness budget: replicas known to lag more than this do not serve the reads.
    pub fn max_lag(&self) -> Option<Duration> {
        self.max_lag
    }

    /// This context with a staleness budget. Budgets only tighten: the smaller of this one and
    /// the one in force wins.
    #[must_use]
    pub fn with_max_lag(mut self, max_lag: Duration) -> Self {
        self.max_lag = Some(self.max_lag.map_or(max_lag, |current| current.min(max_lag)));
        self
    }

    /// The causal token the reads must see.
    pub fn causal_token(&self) -> Option<CausalToken> {
        self.causal_token
    }

    /// This context with reads that must see the write `token` stands for. Tokens only move
    /// forward: the later of this one and the one in force wins.
    #[must_use]
    pub fn with_causal_token(mut self, token: CausalToken) -> Self {
        self.causal_token = Some(
            self.causal_token
                .map_or(token, |current| current.max(token)),
        );
        self
    }

    /// The request's record of writes, if a middleware set one.
    #[cfg(any(feature = "tower", feature = "actix"))]
    pub(crate) fn sink(&self) -> Option<Arc<WriteSink>> {
        self.sink.clone()
    }

    /// This context recording writes in `sink`.
    #[cfg(any(feature = "tower", feature = "actix"))]
    pub(crate) fn with_sink(mut self, sink: Arc<WriteSink>) -> Self {
        self.sink = Some(sink);
        self
    }

    /// This context without the request's record of writes, for work that outlives the request.
    fn detached(mut self) -> Self {
        self.sink = None;
        self
    }

    /// Runs `fut` inside this context. Scopes nest: the innermost wins while it runs, and the
    /// outer context is back as soon as `fut` finishes or is dropped.
    pub fn scope<F: Future>(self, fut: F) -> Routed<F> {
        Routed::new(fut, routed::Change::Set(self))
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
pub fn with_read_replica<F: Future>(use_replica: bool, fut: F) -> Routed<F> {
    Routed::new(fut, routed::Change::UseReplica(use_replica))
}

/// The synchronous twin of [`with_read_replica`], for blocking code.
pub fn with_read_replica_sync<R>(use_replica: bool, f: impl FnOnce() -> R) -> R {
    RoutingContext::current()
        .with_use_read_replica(use_replica)
        .sync_scope(f)
}

/// Runs `fut` with reads forced to the primary: shorthand for `with_read_replica(false, fut)`.
pub fn with_primary<F: Future>(fut: F) -> Routed<F> {
    with_read_replica(false, fut)
}

/// Whether the running code's reads may go to a replica. False outside every scope: the primary
/// is the safe default.
pub fn should_use_read_replica() -> bool {
    CONTEXT
        .try_with(|context| context.use_read_replica)
        .unwrap_or(false)
}

/// Runs `fut` with a staleness budget: its reads go only to replicas known to lag less than
/// `max_lag` (or to the primary). It tightens the pool's `max_lag`, never loosens it.
pub fn with_max_lag<F: Future>(max_lag: Duration, fut: F) -> Routed<F> {
    Routed::new(fut, routed::Change::MaxLag(max_lag))
}

/// Runs `fut` with reads that must see the write `token` stands for: they go only to replicas
/// that have replayed it, else to the primary (see [`ReadYourWrites`](crate::ReadYourWrites)).
pub fn with_causal_token<F: Future>(token: CausalToken, fut: F) -> Routed<F> {
    Routed::new(fut, routed::Change::After(token))
}

/// What a read needs from the context, read once per read.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ReadNeeds {
    pub(crate) use_read_replica: bool,
    pub(crate) max_lag: Option<Duration>,
    pub(crate) causal_token: Option<CausalToken>,
    pub(crate) request_wrote: bool,
}

/// The running code's read needs.
pub(crate) fn read_needs() -> ReadNeeds {
    CONTEXT
        .try_with(|context| ReadNeeds {
            use_read_replica: context.use_read_replica,
            max_lag: context.max_lag,
            causal_token: context.causal_token,
            request_wrote: context.sink.as_ref().is_some_and(|sink| sink.wrote()),
        })
        .unwrap_or_default()
}

/// Notes a write through `pool` in the running request's record, if it has one.
pub(crate) fn record_write(pool: &RoutedPool) {
    let _ = CONTEXT.try_with(|context| {
        if let Some(sink) = &context.sink {
            sink.record(pool);
        }
    });
}

/// Records, for one request, whether it wrote and through which pool, so that the middleware
/// can hand out a token when the response goes out.
#[derive(Debug, Default)]
pub(crate) struct WriteSink {
    pool: OnceLock<RoutedPool>,
}

impl WriteSink {
    /// Notes a write through `pool` (the first pool written through is the one kept).
    fn record(&self, pool: &RoutedPool) {
        if self.pool.get().is_none() {
            let _ = self.pool.set(pool.clone());
        }
    }

    /// Whether the request wrote.
    fn wrote(&self) -> bool {
        self.pool.get().is_some()
    }

    /// The pool the request wrote through, if it did.
    #[cfg(any(feature = "tower", feature = "actix"))]
    pub(crate) fn pool(&self) -> Option<&RoutedPool> {
        self.pool.get()
    }
}

/// Spawns `fut` on the tokio runtime inside the caller's routing context.
///
/// `tokio::spawn` does not carry task-locals into the new task; this does, and carries only the
/// routing context: the new task opens its own connections, never joins the caller's
/// transaction, and its writes do not count as the request's.
///
/// # Panics
///
/// Panics when called outside a tokio runtime, as `tokio::spawn` does.
pub fn spawn_in_context<F>(fut: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(RoutingContext::current().detached().scope(fut))
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
