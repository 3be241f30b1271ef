use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{COOKIE, SET_COOKIE};
use http::{HeaderName, HeaderValue, Method, Request, Response};
use tower_layer::Layer;
use tower_service::Service;

use crate::causal::CausalToken;
use crate::context::RoutingContext;
use crate::control::ReadReplicaControl;

/// Tower middleware that scopes every request's routing decision, as the original design's
/// `ReadReplicaRoutingMiddleware` does.
///
/// `GET`, `HEAD` and `OPTIONS` requests get the policy of the layer (a handler's
/// [`ReadReplicaControl`], or a fixed choice); every other method is routed to the primary
/// whatever the policy says. The scope ends with the request's response future, so nothing
/// carries over to the next request on the same worker. Within one request, once any of its
/// connections wrote, its later reads go to the primary on every connection.
///
/// Attach a default to a whole router with [`Router::layer`], and a handler's policy to its route
/// with [`Router::route_layer`] or `MethodRouter::layer`; the innermost layer wins. A handler that
/// runs without any layer reads from the primary: outside every scope
/// [`should_use_read_replica`](crate::should_use_read_replica) is false.
///
/// With [`causal_header`](Self::causal_header) or [`causal_cookie`](Self::causal_cookie) the
/// layer also carries read-your-writes across requests: it reads a [`CausalToken`] from the
/// request, so that the request's reads see the write it stands for, and hands out a new token on
/// every response whose request wrote.
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
///     .layer(ReadReplicaLayer::allow_replica().causal_cookie("read_after"));
/// ```
#[derive(Clone, Debug)]
pub struct ReadReplicaLayer {
    decide: fn(&http::request::Parts) -> bool,
    max_lag: fn(&http::request::Parts) -> Option<Duration>,
    causal: Option<Arc<Carrier>>,
}

/// Where the layer reads and writes causal tokens.
#[derive(Debug)]
enum Carrier {
    Header(HeaderName),
    Cookie { name: String, max_age: Duration },
}

impl Carrier {
    /// The request's token, if it carries a valid one.
    fn read(&self, parts: &http::request::Parts) -> Option<CausalToken> {
        let text = match self {
            Carrier::Header(name) => parts.headers.get(name)?.to_str().ok()?.to_owned(),
            Carrier::Cookie { name, .. } => parts
                .headers
                .get_all(COOKIE)
                .iter()
                .filter_map(|value| value.to_str().ok())
                .flat_map(|value| value.split(';'))
                .filter_map(|pair| pair.trim().split_once('='))
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.trim_matches('"').to_owned())?,
        };
        match text.parse() {
            Ok(token) => Some(token),
            Err(error) => {
                tracing::debug!(target: "routing_core", %error, "ignoring the request's causal token");
                None
            }
        }
    }

    /// Puts `token` on the response.
    fn write<B>(&self, response: &mut Response<B>, token: CausalToken) {
        let (name, value) = match self {
            Carrier::Header(name) => (name.clone(), token.to_string()),
            Carrier::Cookie { name, max_age } => (
                SET_COOKIE,
                format!(
                    "{name}={token}; Max-Age={}; Path=/; HttpOnly; SameSite=Lax",
                    max_age.as_secs()
                ),
            ),
        };
        if let Ok(value) = HeaderValue::try_from(value) {
            response.headers_mut().append(name, value);
        }
    }
}

impl ReadReplicaLayer {
    /// The policy of the handler type `H`: its [`ReadReplicaControl::use_read_replica`] decides
    /// each read request, and its [`ReadReplicaControl::max_lag`] is the request's staleness
    /// budget.
    pub fn for_handler<H: ReadReplicaControl>() -> Self {
        ReadReplicaLayer {
            decide: H::use_read_replica,
            max_lag: H::max_lag,
            causal: None,
        }
    }

    /// Read requests may use a replica: the default of the original design's views.
    pub fn allow_replica() -> Self {
        ReadReplicaLayer {
            decide: |_| true,
            max_lag: |_| None,
            causal: None,
        }
    }

    /// Every request reads from the primary.
    pub fn primary_only() -> Self {
        ReadReplicaLayer {
            decide: |_| false,
            max_lag: |_| None,
            causal: None,
        }
    }

    /// Carries causal tokens in the request and response header `name`: a client that sends back
    /// the token of its last write reads its own writes on the next request.
    #[must_use]
    pub fn causal_header(mut self, name: HeaderName) -> Self {
        self.causal = Some(Arc::new(Carrier::Header(name)));
        self
    }

    /// Carries causal tokens in the cookie `name`, set for one minute on every response whose
    /// request wrote (see [`causal_cookie_max_age`](Self::causal_cookie_max_age)): a browser
    /// that is redirected after a POST reads its own write on the next page.
    #[must_use]
    pub fn causal_cookie(mut self, name: impl Into<String>) -> Self {
        self.causal = Some(Arc::new(Carrier::Cookie {
            name: name.into(),
            max_age: Duration::from_secs(60),
        }));
        self
    }

    /// How long the causal cookie lives. Default: 60 s. No effect without
    /// [`causal_cookie`](Self::causal_cookie).
    #[must_use]
    pub fn causal_cookie_max_age(mut self, max_age: Duration) -> Self {
        if let Some(carrier) = self.causal.as_mut() {
            if let Carrier::Cookie { name, .. } = &**carrier {
                *carrier = Arc::new(Carrier::Cookie {
                    name: name.clone(),
                    max_age,
                });
            }
        }
        self
    }
}

impl<S> Layer<S> for ReadReplicaLayer {
    type Service = ReadReplicaService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ReadReplicaService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service made by [`ReadReplicaLayer`].
#[derive(Clone, Debug)]
pub struct ReadReplicaService<S> {
    inner: S,
    layer: ReadReplicaLayer,
}

/// Whether `method` only reads, so that a handler's policy applies.
fn is_read_method(method: &Method) -> bool {
    *method == Method::GET || *method == Method::HEAD || *method == Method::OPTIONS
}

/// The response future of [`ReadReplicaService`].
pub type ResponseFuture<R, E> = Pin<Box<dyn Future<Output = Result<R, E>> + Send>>;

impl<S, B, ResBody> Service<Request<B>> for ReadReplicaService<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let (parts, body) = request.into_parts();
        let use_replica = is_read_method(&parts.method) && (self.layer.decide)(&parts);
        let mut context = RoutingContext::current().with_use_read_replica(use_replica);
        if let Some(max_lag) = (self.layer.max_lag)(&parts) {
            context = context.with_max_lag(max_lag);
        }
        let carrier = self.layer.causal.clone();
        if let Some(token) = carrier.as_ref().and_then(|carrier| carrier.read(&parts)) {
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
        let response = context.scoped(response);
        Box::pin(async move {
            let mut response = response.await?;
            if let (Some(carrier), Some(pool)) = (carrier, sink.pool()) {
                match pool.causal_token().await {
                    Ok(token) => carrier.write(&mut response, token),
                    Err(error) => tracing::warn!(
                        target: "routing_core",
                        %error,
                        "the request wrote but no causal token could be made"
                    ),
                }
            }
            Ok(response)
        })
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
        type Response = Response<bool>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<Response<bool>, Infallible>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: Request<()>) -> Self::Future {
            std::future::ready(Ok(Response::new(should_use_read_replica())))
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
        service.call(request).await.unwrap().into_body()
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
        assert!(flag(layer.clone(), Method::GET, "/stock").await);
        assert!(!flag(layer, Method::GET, "/stock?fresh=1").await);
    }

    #[test]
    fn tokens_are_read_from_headers_and_cookies() {
        let token: CausalToken = "0/16B3748@1764136800000".parse().unwrap();
        let header = Carrier::Header(HeaderName::from_static("x-causal-token"));
        let cookie = Carrier::Cookie {
            name: "read_after".to_owned(),
            max_age: Duration::from_secs(60),
        };
        let parts = |name: &str, value: &str| {
            Request::builder()
                .header(name, value)
                .body(())
                .unwrap()
                .into_parts()
                .0
        };
        assert_eq!(
            header.read(&parts("x-causal-token", &token.to_string())),
            Some(token)
        );
        assert_eq!(header.read(&parts("x-causal-token", "garbage")), None);
        assert_eq!(
            cookie.read(&parts("cookie", &format!("a=1; read_after={token}; b=2"))),
            Some(token)
        );
        assert_eq!(cookie.read(&parts("cookie", "a=1")), None);
        let mut response = Response::new(());
        cookie.write(&mut response, token);
        assert_eq!(
            response.headers()[SET_COOKIE],
            format!("read_after={token}; Max-Age=60; Path=/; HttpOnly; SameSite=Lax")
        );
    }

    #[tokio::test]
    async fn the_scope_ends_with_the_request() {
        let mut service = ReadReplicaLayer::allow_replica().layer(Probe);
        let request = Request::builder().uri("/").body(()).unwrap();
        assert!(service.call(request).await.unwrap().into_body());
        assert!(!should_use_read_replica());
    }
}
