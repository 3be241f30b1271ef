//! [`Routed`], the future that runs another inside a routing scope, and [`RoutingExt`], the
//! extension trait that makes one from any future.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;

use super::{CONTEXT, RoutingContext};
use crate::causal::CausalToken;

/// How a scope changes the context it starts in.
#[derive(Clone, Debug)]
pub(super) enum Change {
    /// Allows or denies the replica.
    UseReplica(bool),
    /// Tightens the staleness budget.
    MaxLag(Duration),
    /// Reads must see this write.
    After(CausalToken),
    /// Replaces the context.
    Set(RoutingContext),
}

impl Change {
    fn apply(&self, current: RoutingContext) -> RoutingContext {
        match self {
            Change::UseReplica(allow) => current.with_use_read_replica(*allow),
            Change::MaxLag(max_lag) => current.with_max_lag(*max_lag),
            Change::After(token) => current.with_causal_token(*token),
            Change::Set(context) => context.clone(),
        }
    }
}

pin_project! {
    /// A future that runs inside a routing scope: made by [`RoutingExt`]'s methods,
    /// [`with_read_replica`](crate::with_read_replica) and the other scope functions.
    ///
    /// The scope's context is the one in force when the future is first polled, changed as the
    /// scope says; it is in force whenever the inner future runs, and never outside it.
    #[must_use = "futures do nothing unless awaited"]
    #[derive(Debug)]
    pub struct Routed<F> {
        change: Change,
        context: Option<RoutingContext>,
        #[pin]
        inner: F,
    }
}

impl<F> Routed<F> {
    pub(super) fn new(inner: F, change: Change) -> Self {
        Routed {
            change,
            context: None,
            inner,
        }
    }
}

impl<F: Future> Future for Routed<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let change = &*this.change;
        let context = this
            .context
            .get_or_insert_with(|| change.apply(RoutingContext::current()));
        let inner = this.inner;
        CONTEXT.sync_scope(context.clone(), || inner.poll(cx))
    }
}

/// Routing scopes as methods of any future, in the manner of tracing's `Instrument`:
///
/// ```no_run
/// # async fn run(conn: &mut routing_core::RoutedConnection) -> diesel::QueryResult<()> {
/// use std::time::Duration;
/// use diesel::sql_types::Integer;
/// use diesel_async::RunQueryDsl;
/// use routing_core::RoutingExt;
///
/// let n: i32 = diesel::select(diesel::dsl::sql::<Integer>("1"))
///     .get_result(conn)
///     .on_replica()
///     .max_lag(Duration::from_secs(2))
///     .await?;
/// # Ok(()) }
/// ```
pub trait RoutingExt: Future + Sized {
    /// Lets the reads of this future go to a replica: [`with_read_replica(true, ..)`].
    ///
    /// [`with_read_replica(true, ..)`]: crate::with_read_replica
    fn on_replica(self) -> Routed<Self> {
        Routed::new(self, Change::UseReplica(true))
    }

    /// Keeps the reads of this future on the primary: [`with_primary`](crate::with_primary).
    fn on_primary(self) -> Routed<Self> {
        Routed::new(self, Change::UseReplica(false))
    }

    /// Lets the reads of this future go only to replicas known to lag less than `max_lag`:
    /// [`with_max_lag`](crate::with_max_lag).
    fn max_lag(self, max_lag: Duration) -> Routed<Self> {
        Routed::new(self, Change::MaxLag(max_lag))
    }

    /// Makes the reads of this future see the write `token` stands for:
    /// [`with_causal_token`](crate::with_causal_token).
    fn after(self, token: CausalToken) -> Routed<Self> {
        Routed::new(self, Change::After(token))
    }
}

impl<F: Future> RoutingExt for F {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::should_use_read_replica;

    #[tokio::test]
    async fn methods_scope_the_future_they_wrap() {
        assert!(async { should_use_read_replica() }.on_replica().await);
        let inner = async { should_use_read_replica() }.on_primary();
        assert!(!inner.on_replica().await, "the innermost scope wins");
        let context = async { RoutingContext::current() }
            .max_lag(Duration::from_secs(5))
            .max_lag(Duration::from_secs(2))
            .on_replica()
            .await;
        assert!(context.use_read_replica());
        assert_eq!(context.max_lag(), Some(Duration::from_secs(2)));
        let token: CausalToken = "0/10@1".parse().unwrap();
        let context = async { RoutingContext::current() }.after(token).await;
        assert_eq!(context.causal_token(), Some(token));
        assert!(!should_use_read_replica());
    }

    #[tokio::test]
    async fn the_scope_is_in_force_only_while_the_future_runs() {
        let mut routed = Box::pin(
            async {
                let before = should_use_read_replica();
                tokio::task::yield_now().await;
                (before, should_use_read_replica())
            }
            .on_replica(),
        );
        let first = std::future::poll_fn(|cx| Poll::Ready(routed.as_mut().poll(cx))).await;
        assert!(first.is_pending());
        assert!(!should_use_read_replica(), "nothing leaks between polls");
        assert_eq!(routed.await, (true, true));
    }
}
