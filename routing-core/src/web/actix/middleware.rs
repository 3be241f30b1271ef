//! [`ReadReplicaMiddleware`]: a request's routing scope, from its method and the middleware's
//! policy.

use std::sync::Arc;

use actix_web::dev::{RequestHead, Service, ServiceRequest, ServiceResponse, forward_ready};
use actix_web::http::Method;
use http::request::Parts;

use super::future::ResponseFuture;
use super::head::{header_parts, request_parts};
use super::transform::{Budget, Decision, ReadReplica};
use crate::causal::CausalToken;
use crate::context::RoutingContext;
use crate::web::carrier::Carrier;

/// The service made by [`ReadReplica`].
#[derive(Debug)]
pub struct ReadReplicaMiddleware<S> {
    service: S,
    policy: ReadReplica,
}

impl<S> ReadReplicaMiddleware<S> {
    pub(super) fn new(service: S, policy: ReadReplica) -> Self {
        ReadReplicaMiddleware { service, policy }
    }
}

/// Whether `method` only reads, so that a handler's policy applies.
fn is_read_method(method: &Method) -> bool {
    *method == Method::GET || *method == Method::HEAD || *method == Method::OPTIONS
}

/// The request's parts in `http` 1 types, made on first use and at most once.
struct LazyParts<'r> {
    head: &'r RequestHead,
    parts: Option<Parts>,
}

impl LazyParts<'_> {
    fn get(&mut self) -> &Parts {
        self.parts.get_or_insert_with(|| request_parts(self.head))
    }
}

impl ReadReplica {
    /// Whether the read request of `parts` may use a replica.
    fn allows(&self, parts: &mut LazyParts<'_>) -> bool {
        match &self.allow {
            Decision::Fixed(allow) => *allow,
            Decision::PerRequest(allow) => allow(parts.get()),
        }
    }

    /// The staleness budget of the request of `parts`.
    fn budget(&self, parts: &mut LazyParts<'_>) -> Option<std::time::Duration> {
        match &self.max_lag {
            Budget::Fixed(max_lag) => *max_lag,
            Budget::PerRequest(max_lag) => max_lag(parts.get()),
        }
    }

    /// The request's causal token, if the middleware carries tokens and the request has a valid
    /// one. Reads the parts already made, else only the carrier's header.
    fn token(&self, parts: &LazyParts<'_>) -> Option<CausalToken> {
        let carrier = self.causal.as_deref()?;
        let key = self.signing_key.as_deref();
        if let Some(parts) = &parts.parts {
            return carrier.read(parts, key);
        }
        let name = match carrier {
            Carrier::Header(name) => name,
            Carrier::Cookie { .. } => &http::header::COOKIE,
        };
        carrier.read(&header_parts(parts.head, name), key)
    }
}

impl<S, B> Service<ServiceRequest> for ReadReplicaMiddleware<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>>,
{
    type Response = ServiceResponse<B>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, B>;

    forward_ready!(service);

    fn call(&self, request: ServiceRequest) -> Self::Future {
        let policy = &self.policy;
        let mut parts = LazyParts {
            head: request.head(),
            parts: None,
        };
        let use_replica = is_read_method(&request.head().method) && policy.allows(&mut parts);
        let mut context = RoutingContext::current().with_use_read_replica(use_replica);
        if let Some(max_lag) = policy.budget(&mut parts) {
            context = context.with_max_lag(max_lag);
        }
        if let Some(token) = policy.token(&parts) {
            context = context.with_causal_token(token);
        }
        // An outer middleware's record of writes serves this request too.
        let sink = context.sink().unwrap_or_default();
        let context = context.with_sink(Arc::clone(&sink));
        tracing::debug!(
            target: "routing_core",
            method = %request.method(),
            path = request.path(),
            use_read_replica = use_replica,
            max_lag = ?context.max_lag(),
            causal_token = ?context.causal_token(),
            "request scope"
        );
        // The inner `call` may do work before its future is polled: scope both.
        let response = context.clone().sync_scope(|| self.service.call(request));
        ResponseFuture::new(
            context.scope(response),
            policy.causal.clone(),
            policy.signing_key.clone(),
            sink,
        )
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use actix_web::http::header::HeaderName;
    use actix_web::test::{TestRequest, call_service, init_service};
    use actix_web::{App, HttpResponse, web};

    use super::*;
    use crate::control::ReadReplicaControl;
    use crate::should_use_read_replica;

    /// A handler that answers with the routing context it sees, in the response's extensions.
    async fn probe() -> HttpResponse {
        let mut response = HttpResponse::Ok().finish();
        response.extensions_mut().insert(RoutingContext::current());
        response
    }

    struct Fresh;

    impl ReadReplicaControl for Fresh {
        fn use_read_replica(request: &Parts) -> bool {
            request.uri.query() != Some("fresh=1")
        }
    }

    struct Orders;

    impl ReadReplicaControl for Orders {
        const USE_READ_REPLICA: bool = false;
    }

    /// The context the probe saw for `request`, behind `policy`.
    async fn context(policy: ReadReplica, request: TestRequest) -> RoutingContext {
        let app = init_service(App::new().default_service(web::to(probe).wrap(policy))).await;
        let response = call_service(&app, request.to_request()).await;
        let context = response
            .response()
            .extensions()
            .get::<RoutingContext>()
            .cloned();
        context.expect("the probe ran")
    }

    async fn flag(policy: ReadReplica, method: Method, uri: &str) -> bool {
        let request = TestRequest::default().method(method).uri(uri);
        context(policy, request).await.use_read_replica()
    }

    #[test]
    fn the_middleware_can_be_made_once_and_cloned_into_every_worker() {
        fn shareable<T: Clone + Send + Sync + 'static>() {}
        shareable::<ReadReplica>();
    }

    #[actix_web::test]
    async fn read_methods_follow_the_policy_and_others_go_to_the_primary() {
        for method in [Method::GET, Method::HEAD, Method::OPTIONS] {
            assert!(flag(ReadReplica::allow_replica(), method.clone(), "/").await);
            assert!(!flag(ReadReplica::for_handler::<Orders>(), method, "/").await);
        }
        for method in [Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
            assert!(!flag(ReadReplica::allow_replica(), method, "/").await);
        }
        assert!(!flag(ReadReplica::primary_only(), Method::GET, "/").await);
    }

    #[actix_web::test]
    async fn dynamic_policies_see_the_request() {
        let policy = ReadReplica::for_handler::<Fresh>();
        assert!(flag(policy.clone(), Method::GET, "/stock").await);
        assert!(!flag(policy, Method::GET, "/stock?fresh=1").await);
        let policy = ReadReplica::decide(|request| {
            request.uri.path() != "/admin"
                && request
                    .headers
                    .get("x-consistency")
                    .is_none_or(|v| v != "strong")
        });
        assert!(flag(policy.clone(), Method::GET, "/stock").await);
        assert!(!flag(policy.clone(), Method::GET, "/admin").await);
        assert!(!flag(policy.clone(), Method::POST, "/stock").await);
        let strong = TestRequest::get()
            .uri("/stock")
            .insert_header(("x-consistency", "strong"));
        assert!(!context(policy, strong).await.use_read_replica());
    }

    #[actix_web::test]
    async fn a_middleware_budget_tightens_the_handlers() {
        let policy = ReadReplica::allow_replica().max_lag(Duration::from_secs(3));
        let seen = context(policy.clone(), TestRequest::get()).await;
        assert_eq!(seen.max_lag(), Some(Duration::from_secs(3)));
        let seen = context(policy.max_lag(Duration::from_secs(1)), TestRequest::get()).await;
        assert_eq!(seen.max_lag(), Some(Duration::from_secs(1)));
        struct Report;
        impl ReadReplicaControl for Report {
            const MAX_LAG: Option<Duration> = Some(Duration::from_secs(2));
        }
        let policy = ReadReplica::for_handler::<Report>();
        let seen = context(policy.clone(), TestRequest::get()).await;
        assert_eq!(seen.max_lag(), Some(Duration::from_secs(2)));
        let seen = context(policy.max_lag(Duration::from_secs(5)), TestRequest::get()).await;
        assert_eq!(seen.max_lag(), Some(Duration::from_secs(2)));
    }

    #[actix_web::test]
    async fn the_innermost_middleware_wins() {
        let app = init_service(
            App::new()
                .service(
                    web::resource("/orders")
                        .route(web::get().to(probe))
                        .wrap(ReadReplica::for_handler::<Orders>()),
                )
                .default_service(web::to(probe))
                .wrap(ReadReplica::allow_replica().max_lag(Duration::from_secs(4))),
        )
        .await;
        for (uri, replica) in [("/orders", false), ("/products", true)] {
            let response = call_service(&app, TestRequest::get().uri(uri).to_request()).await;
            let seen = response
                .response()
                .extensions()
                .get::<RoutingContext>()
                .cloned();
            let seen = seen.expect("the probe ran");
            assert_eq!(seen.use_read_replica(), replica, "{uri}");
            // The outer middleware's budget still holds inside.
            assert_eq!(seen.max_lag(), Some(Duration::from_secs(4)), "{uri}");
        }
    }

    #[actix_web::test]
    async fn tokens_are_read_and_garbage_is_ignored() {
        let token: CausalToken = "0/16B3748@1764136800000".parse().unwrap();
        let cookie = ReadReplica::allow_replica().causal_cookie("read_after");
        let request =
            TestRequest::get().insert_header(("cookie", format!("a=1; read_after={token}")));
        assert_eq!(
            context(cookie.clone(), request).await.causal_token(),
            Some(token)
        );
        for garbage in ["read_after=garbage", "read_after", "=;;="] {
            let request = TestRequest::get().insert_header(("cookie", garbage));
            let seen = context(cookie.clone(), request).await;
            assert_eq!(seen.causal_token(), None, "{garbage}");
            assert!(seen.use_read_replica());
        }
        let request = TestRequest::get().insert_header(("cookie", b"read_after=\xff".as_slice()));
        assert_eq!(context(cookie, request).await.causal_token(), None);

        let header = ReadReplica::allow_replica()
            .causal_header(HeaderName::from_static("x-causal-token"))
            .signing_key("a secret");
        let unsigned = TestRequest::get().insert_header(("x-causal-token", token.to_string()));
        assert_eq!(context(header.clone(), unsigned).await.causal_token(), None);
        let forged = TestRequest::get().insert_header(("x-causal-token", format!("{token}.AAAA")));
        assert_eq!(context(header, forged).await.causal_token(), None);
    }

    #[actix_web::test]
    async fn the_scope_ends_with_the_request_and_block_carries_it() {
        async fn blocking() -> HttpResponse {
            let inside = super::super::block(should_use_read_replica).await.unwrap();
            let plain = web::block(should_use_read_replica).await.unwrap();
            HttpResponse::Ok().body(format!("{inside} {plain}"))
        }
        let app = init_service(
            App::new()
                .route("/scoped", web::get().to(probe))
                .route("/blocking", web::get().to(blocking))
                .wrap(ReadReplica::allow_replica()),
        )
        .await;
        let response = call_service(&app, TestRequest::get().uri("/scoped").to_request()).await;
        let seen = response
            .response()
            .extensions()
            .get::<RoutingContext>()
            .cloned();
        assert!(seen.expect("the probe ran").use_read_replica());
        assert!(!should_use_read_replica());
        let body = actix_web::test::call_and_read_body(
            &app,
            TestRequest::get().uri("/blocking").to_request(),
        )
        .await;
        assert_eq!(body, "true false");
        assert!(!should_use_read_replica());
    }
}
