use std::task::{Context, Poll};

use http::{Method, Request};
use tokio::task::futures::TaskLocalFuture;
use tower_layer::Layer;
use tower_service::Service;

use crate::context::RoutingContext;
use crate::control::ReadReplicaControl;

/// Tower middleware that scopes every request's routing decision, as the original design's
/// `ReadReplicaRoutingMiddleware` does.
///
/// `GET`, `HEAD` and `OPTIONS` requests get the policy of the layer (a handler's
/// [`ReadReplicaControl`], or a fixed choice); every other method is routed to the primary
/// whatever the policy says. The scope ends with the request's response future, so nothing
/// carries over to the next request on the same worker.
///
/// Attach a default to a whole router with [`Router::layer`], and a handler's policy to its route
/// with [`Router::route_layer`] or `MethodRouter::layer`; the innermost layer wins. A handler that
/// runs without any layer reads from the primary: outside every scope
/// [`should_use_read_replica`](crate::should_use_read_replica) is false.
///
/// [`Router::layer`]: https://docs.rs/axum/0.8/axum/struct.Router.html#method.layer
/// [`Router::route_layer`]: https://docs.rs/axum/0.8/axum/struct.Router.html#method.route_layer
///
/// ```
/// use axum::{Router, routing::get};
/// use routing_core::{ReadReplicaControl, ReadReplicaLayer};
///
/// #[derive(ReadReplicaControl)]
/// #[read_replica(false)]
/// struct ListOrders;
///
/// async fn list_orders() -> &'static str { "orders" }
/// async fn list_products() -> &'static str { "products" }
///
/// let app: Router = Router::new()
///     .route("/orders", get(list_orders).layer(ReadReplicaLayer::for_handler::<ListOrders>()))
///     .route("/products", get(list_products))
///     .layer(ReadReplicaLayer::allow_replica());
/// ```
#[derive(Clone, Copy, Debug)]
pub struct ReadReplicaLayer {
    decide: fn(&http::request::Parts) -> bool,
}

impl ReadReplicaLayer {
    /// The policy of the handler type `H`: its [`ReadReplicaControl::use_read_replica`] decides
    /// each read request.
    pub fn for_handler<H: ReadReplicaControl>() -> Self {
        ReadReplicaLayer {
            decide: H::use_read_replica,
        }
    }

    /// Read requests may use a replica: the default of the original design's views.
    pub fn allow_replica() -> Self {
        ReadReplicaLayer { decide: |_| true }
    }

    /// Every request reads from the primary.
    pub fn primary_only() -> Self {
        ReadReplicaLayer { decide: |_| false }
    }
}

impl<S> Layer<S> for ReadReplicaLayer {
    type Service = ReadReplicaService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ReadReplicaService {
            inner,
            decide: self.decide,
        }
    }
}

/// The service made by [`ReadReplicaLayer`].
#[derive(Clone, Copy, Debug)]
pub struct ReadReplicaService<S> {
    inner: S,
    decide: fn(&http::request::Parts) -> bool,
}

/// Whether `method` only reads, so that a handler's policy applies.
fn is_read_method(method: &Method) -> bool {
    *method == Method::GET || *method == Method::HEAD || *method == Method::OPTIONS
}

impl<S, B> Service<Request<B>> for ReadReplicaService<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = TaskLocalFuture<RoutingContext, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let (parts, body) = request.into_parts();
        let use_replica = is_read_method(&parts.method) && (self.decide)(&parts);
        tracing::debug!(
            target: "routing_core",
            method = %parts.method,
            path = parts.uri.path(),
            use_read_replica = use_replica,
            "request scope"
        );
        let request = Request::from_parts(parts, body);
        let context = RoutingContext::current().with_use_read_replica(use_replica);
        // The inner `call` may do work before its future is polled: scope both.
        let response = context.clone().sync_scope(|| self.inner.call(request));
        context.scoped(response)
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use http::Request;
    use tower_service::Service;

    use super::*;
    use crate::should_use_read_replica;

    /// A service that answers with the routing flag it sees.
    #[derive(Clone, Copy)]
    struct Probe;

    impl Service<Request<()>> for Probe {
        type Response = bool;
        type Error = Infallible;
        type Future = std::future::Ready<Result<bool, Infallible>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: Request<()>) -> Self::Future {
            std::future::ready(Ok(should_use_read_replica()))
        }
    }

    struct Fresh;

    impl ReadReplicaControl for Fresh {
        fn use_read_replica(request: &http::request::Parts) -> bool {
            request.uri.query() != Some("fresh=1")
        }
    }

    struct Orders;

    impl ReadReplicaControl for Orders {
        const USE_READ_REPLICA: bool = false;
    }

    async fn flag(layer: ReadReplicaLayer, method: Method, uri: &str) -> bool {
        let mut service = layer.layer(Probe);
        let request = Request::builder().method(method).uri(uri).body(()).unwrap();
        service.call(request).await.unwrap()
    }

    #[tokio::test]
    async fn read_methods_follow_the_policy_and_others_go_to_the_primary() {
        for method in [Method::GET, Method::HEAD, Method::OPTIONS] {
            assert!(flag(ReadReplicaLayer::allow_replica(), method.clone(), "/").await);
            assert!(!flag(ReadReplicaLayer::for_handler::<Orders>(), method, "/").await);
        }
        for method in [Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
            assert!(!flag(ReadReplicaLayer::allow_replica(), method, "/").await);
        }
        assert!(!flag(ReadReplicaLayer::primary_only(), Method::GET, "/").await);
    }

    #[tokio::test]
    async fn dynamic_policy_sees_the_request() {
        let layer = ReadReplicaLayer::for_handler::<Fresh>();
        assert!(flag(layer, Method::GET, "/stock").await);
        assert!(!flag(layer, Method::GET, "/stock?fresh=1").await);
    }

    #[tokio::test]
    async fn the_scope_ends_with_the_request() {
        let mut service = ReadReplicaLayer::allow_replica().layer(Probe);
        let request = Request::builder().uri("/").body(()).unwrap();
        assert!(service.call(request).await.unwrap());
        assert!(!should_use_read_replica());
    }
}
