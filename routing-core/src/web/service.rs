//! [`ReadReplicaService`]: a request's routing scope, from its method and the layer's policy.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Method, Request, Response};
use tower_service::Service;

use super::future::ResponseFuture;
use super::layer::ReadReplicaLayer;
use crate::context::RoutingContext;

/// The service made by [`ReadReplicaLayer`].
#[derive(Clone, Debug)]
pub struct ReadReplicaService<S> {
    inner: S,
    layer: ReadReplicaLayer,
}

impl<S> ReadReplicaService<S> {
    pub(super) fn new(inner: S, layer: ReadReplicaLayer) -> Self {
        ReadReplicaService { inner, layer }
    }
}

/// Whether `method` only reads, so that a handler's policy applies.
fn is_read_method(method: &Method) -> bool {
    *method == Method::GET || *method == Method::HEAD || *method == Method::OPTIONS
}

impl<S, B, ResBody> Service<Request<B>> for ReadReplicaService<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let (parts, body) = request.into_parts();
        let use_replica = is_read_method(&parts.method) && (self.layer.allow)(&parts);
        let mut context = RoutingContext::current().with_use_read_replica(use_replica);
        if let Some(max_lag) = (self.layer.max_lag)(&parts) {
            context = context.with_max_lag(max_lag);
        }
        let carrier = self.layer.causal.clone();
        let key = self.layer.signing_key.clone();
        if let Some(token) = carrier
            .as_ref()
            .and_then(|carrier| carrier.read(&parts, key.as_deref()))
        {
            context = context.with_causal_token(token);
        }
        // An outer layer's record of writes serves this request too.
        let sink = context.sink().unwrap_or_default();
        let context = context.with_sink(Arc::clone(&sink));
        tracing::debug!(
            target: "routing_core",
            method = %parts.method,
            path = parts.uri.path(),
            use_read_replica = use_replica,
            max_lag = ?context.max_lag(),
            causal_token = ?context.causal_token(),
            "request scope"
        );
        let request = Request::from_parts(parts, body);
        // The inner `call` may do work before its future is polled: scope both.
        let response = context.clone().sync_scope(|| self.inner.call(request));
        ResponseFuture::new(context.scope(response), carrier, key, sink)
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::time::Duration;

    use http::Request;
    use tower_layer::Layer;
    use tower_service::Service;

    use super::*;
    use crate::control::ReadReplicaControl;
    use crate::should_use_read_replica;

    /// A service that answers with the routing context it sees.
    #[derive(Clone, Copy)]
    struct Probe;

    impl Service<Request<()>> for Probe {
        type Response = Response<RoutingContext>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<Response<RoutingContext>, Infallible>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: Request<()>) -> Self::Future {
            std::future::ready(Ok(Response::new(RoutingContext::current())))
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

    async fn context(layer: ReadReplicaLayer, method: Method, uri: &str) -> RoutingContext {
        let mut service = layer.layer(Probe);
        let request = Request::builder().method(method).uri(uri).body(()).unwrap();
        service.call(request).await.unwrap().into_body()
    }

    async fn flag(layer: ReadReplicaLayer, method: Method, uri: &str) -> bool {
        context(layer, method, uri).await.use_read_replica()
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
    async fn dynamic_policies_see_the_request() {
        let layer = ReadReplicaLayer::for_handler::<Fresh>();
        assert!(flag(layer.clone(), Method::GET, "/stock").await);
        assert!(!flag(layer, Method::GET, "/stock?fresh=1").await);
        let layer = ReadReplicaLayer::decide(|request| request.uri.path() != "/admin");
        assert!(flag(layer.clone(), Method::GET, "/stock").await);
        assert!(!flag(layer.clone(), Method::GET, "/admin").await);
        assert!(!flag(layer, Method::POST, "/stock").await);
    }

    #[tokio::test]
    async fn a_layer_budget_tightens_the_handlers() {
        let layer = ReadReplicaLayer::allow_replica().max_lag(Duration::from_secs(3));
        let seen = context(layer.clone(), Method::GET, "/").await;
        assert_eq!(seen.max_lag(), Some(Duration::from_secs(3)));
        let seen = context(layer.max_lag(Duration::from_secs(1)), Method::GET, "/").await;
        assert_eq!(seen.max_lag(), Some(Duration::from_secs(1)));
    }

    #[tokio::test]
    async fn the_scope_ends_with_the_request() {
        let mut service = ReadReplicaLayer::allow_replica().layer(Probe);
        let request = Request::builder().uri("/").body(()).unwrap();
        assert!(
            service
                .call(request)
                .await
                .unwrap()
                .into_body()
                .use_read_replica()
        );
        assert!(!should_use_read_replica());
    }
}
