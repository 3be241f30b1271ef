//! [`ReadReplica`]: the policy of an app, a scope or a resource, as an actix-web middleware.

use std::fmt;
use std::future::{Ready, ready};
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::{Service, ServiceRequest, ServiceResponse, Transform};
use actix_web::http::header::HeaderName;
use http::request::Parts;

use super::middleware::ReadReplicaMiddleware;
use crate::control::ReadReplicaControl;
use crate::web::carrier::{Carrier, SigningKey};

/// actix-web middleware that scopes every request's routing decision: the actix-web twin of
/// [`ReadReplicaLayer`](crate::web::ReadReplicaLayer), with the same policies.
///
/// `GET`, `HEAD` and `OPTIONS` requests get the policy of the middleware (a handler's
/// [`ReadReplicaControl`], a closure, or a fixed choice); every other method is routed to the
/// primary whatever the policy says. The scope covers the whole handler, extractors included,
/// and ends with its response, so nothing carries over to the next request that the same
/// (single-threaded) worker serves. Within one request, once any of its connections wrote, its
/// later reads go to the primary on every connection.
///
/// Wrap an app, a scope or a resource with it (`.wrap(..)`); the innermost wins, so a resource's
/// policy overrides the app's default. A handler that runs without any of it reads from the
/// primary: outside every scope [`should_use_read_replica`](crate::should_use_read_replica) is
/// false. Work the handler hands to the blocking thread pool keeps the request's routing when
/// it goes through [`block`](super::block) instead of `actix_web::web::block`.
///
/// With [`causal_header`](Self::causal_header) or [`causal_cookie`](Self::causal_cookie) the
/// middleware also carries read-your-writes across requests: it reads a
/// [`CausalToken`](crate::CausalToken) from the request, so that the request's reads see the
/// write it stands for, and hands out a new token on every response whose request wrote. A
/// token that does not parse or whose signature is wrong is ignored.
///
/// ```
/// use actix_web::{App, HttpResponse, web};
/// use routing_core::ReadReplicaControl;
/// use routing_core::web::actix::ReadReplica;
///
/// #[derive(ReadReplicaControl)]
/// #[read_replica(false)]
/// struct ListOrders;
///
/// async fn list_orders() -> HttpResponse { HttpResponse::Ok().body("orders") }
/// async fn list_products() -> HttpResponse { HttpResponse::Ok().body("products") }
/// async fn stock() -> HttpResponse { HttpResponse::Ok().body("stock") }
///
/// let app = App::new()
///     .service(
///         web::resource("/orders")
///             .route(web::get().to(list_orders))
///             .wrap(ReadReplica::for_handler::<ListOrders>()),
///     )
///     // A decision per request: `?fresh=1` reads from the primary.
///     .service(
///         web::resource("/stock")
///             .route(web::get().to(stock))
///             .wrap(ReadReplica::decide(|request| request.uri.query() != Some("fresh=1"))),
///     )
///     .route("/products", web::get().to(list_products))
///     .wrap(ReadReplica::allow_replica().causal_cookie("read_after"));
/// ```
#[derive(Clone)]
pub struct ReadReplica {
    pub(super) allow: Decision,
    pub(super) max_lag: Budget,
    pub(super) causal: Option<Arc<Carrier>>,
    pub(super) signing_key: Option<Arc<SigningKey>>,
}

/// Whether a read request may use a replica: fixed, or decided from the request's parts (which
/// are then made for it).
#[derive(Clone)]
pub(super) enum Decision {
    Fixed(bool),
    PerRequest(Arc<dyn Fn(&Parts) -> bool + Send + Sync>),
}

/// A request's staleness budget: fixed, or from the request's parts.
#[derive(Clone)]
pub(super) enum Budget {
    Fixed(Option<Duration>),
    PerRequest(Arc<MaxLagFn>),
}

/// A request's staleness budget, from its parts.
type MaxLagFn = dyn Fn(&Parts) -> Option<Duration> + Send + Sync;

impl fmt::Debug for ReadReplica {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("ReadReplica");
        match &self.allow {
            Decision::Fixed(allow) => debug.field("use_read_replica", allow),
            Decision::PerRequest(_) => debug.field("use_read_replica", &"per request"),
        };
        match &self.max_lag {
            Budget::Fixed(max_lag) => debug.field("max_lag", max_lag),
            Budget::PerRequest(_) => debug.field("max_lag", &"per request"),
        };
        debug
            .field("causal", &self.causal)
            .field("signed", &self.signing_key.is_some())
            .finish()
    }
}

impl ReadReplica {
    fn new(allow: Decision, max_lag: Budget) -> Self {
        ReadReplica {
            allow,
            max_lag,
            causal: None,
            signing_key: None,
        }
    }

    /// A middleware deciding each read request with `allow`, a closure over the request's parts
    /// (method, URI, version and headers, as `http` 1 types): a policy that needs no handler
    /// type.
    pub fn decide<F>(allow: F) -> Self
    where
        F: Fn(&Parts) -> bool + Send + Sync + 'static,
    {
        Self::new(Decision::PerRequest(Arc::new(allow)), Budget::Fixed(None))
    }

    /// The policy of the handler type `H` (a `#[derive(ReadReplicaControl)]` type, or the
    /// companion type of a `#[use_read_replica]` fn): its
    /// [`ReadReplicaControl::use_read_replica`] decides each read request, and its
    /// [`ReadReplicaControl::max_lag`] is the request's staleness budget. Both are given the
    /// request's method, URI, version and headers as `http` 1 [`Parts`]; the extensions are
    /// empty.
    pub fn for_handler<H: ReadReplicaControl>() -> Self {
        Self::new(
            Decision::PerRequest(Arc::new(H::use_read_replica as fn(&Parts) -> bool)),
            Budget::PerRequest(Arc::new(H::max_lag as fn(&Parts) -> Option<Duration>)),
        )
    }

    /// Read requests may use a replica.
    pub fn allow_replica() -> Self {
        Self::new(Decision::Fixed(true), Budget::Fixed(None))
    }

    /// Every request reads from the primary.
    pub fn primary_only() -> Self {
        Self::new(Decision::Fixed(false), Budget::Fixed(None))
    }

    /// Gives every request of this middleware the staleness budget `max_lag`: its reads go only
    /// to replicas known to lag less (see [`with_max_lag`](crate::with_max_lag)). A handler's
    /// own budget can only tighten it.
    #[must_use]
    pub fn max_lag(mut self, max_lag: Duration) -> Self {
        let tighten =
            move |own: Option<Duration>| Some(own.map_or(max_lag, |own| own.min(max_lag)));
        self.max_lag = match self.max_lag {
            Budget::Fixed(own) => Budget::Fixed(tighten(own)),
            Budget::PerRequest(policy) => {
                Budget::PerRequest(Arc::new(move |request: &Parts| tighten(policy(request))))
            }
        };
        self
    }

    /// Carries causal tokens in the request and response header `name`: a client that sends back
    /// the token of its last write reads its own writes on the next request.
    #[must_use]
    pub fn causal_header(mut self, name: HeaderName) -> Self {
        // Both versions of `http` accept the same header names.
        match http::HeaderName::from_bytes(name.as_str().as_bytes()) {
            Ok(name) => self.causal = Some(Arc::new(Carrier::Header(name))),
            Err(_) => tracing::warn!(
                target: "routing_core",
                header = name.as_str(),
                "causal tokens cannot be carried in this header"
            ),
        }
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

    /// Signs the causal tokens this middleware hands out with `key` (HMAC-SHA-256) and accepts
    /// only tokens signed with it, so that a client can neither forge a token nor replay one
    /// from another deployment. Keep the key secret and the same on every instance. Without a
    /// key, tokens are still checked when used: one claiming a WAL position the primary has not
    /// reached, or a time in the future, is ignored.
    #[must_use]
    pub fn signing_key(mut self, key: impl AsRef<[u8]>) -> Self {
        self.signing_key = SigningKey::new(key.as_ref()).map(Arc::new);
        self
    }
}

impl<S, B> Transform<S, ServiceRequest> for ReadReplica
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>>,
{
    type Response = ServiceResponse<B>;
    type Error = S::Error;
    type Transform = ReadReplicaMiddleware<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(ReadReplicaMiddleware::new(service, self.clone())))
    }
}
