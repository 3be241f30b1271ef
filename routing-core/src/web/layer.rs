//! [`ReadReplicaLayer`]: the policy of a route, as a tower layer.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use http::request::Parts;
use tower_layer::Layer;

use super::carrier::{Carrier, SigningKey};
use super::service::ReadReplicaService;
use crate::control::ReadReplicaControl;

/// Tower middleware that scopes every request's routing decision.
///
/// `GET`, `HEAD` and `OPTIONS` requests get the policy of the layer (a handler's
/// [`ReadReplicaControl`], a closure, or a fixed choice); every other method is routed to the
/// primary whatever the policy says. The scope ends with the request's response future, so
/// nothing carries over to the next request on the same worker. Within one request, once any of
/// its connections wrote, its later reads go to the primary on every connection.
///
/// Attach a default to a whole router with [`Router::layer`], and a handler's policy to its route
/// with [`Router::route_layer`] or `MethodRouter::layer`; the innermost layer wins. A handler that
/// runs without any layer reads from the primary: outside every scope
/// [`should_use_read_replica`](crate::should_use_read_replica) is false.
///
/// With [`causal_header`](Self::causal_header) or [`causal_cookie`](Self::causal_cookie) the
/// layer also carries read-your-writes across requests: it reads a
/// [`CausalToken`](crate::CausalToken) from the request, so that the request's reads see the
/// write it stands for, and hands out a new token on every response whose request wrote.
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
/// async fn stock() -> &'static str { "stock" }
///
/// let app: Router = Router::new()
///     .route("/orders", get(list_orders).layer(ReadReplicaLayer::for_handler::<ListOrders>()))
///     // A decision per request: `?fresh=1` reads from the primary.
///     .route("/stock", get(stock).layer(ReadReplicaLayer::decide(|request| {
///         request.uri.query() != Some("fresh=1")
///     })))
///     .route("/products", get(list_products))
///     .layer(ReadReplicaLayer::allow_replica().causal_cookie("read_after"));
/// ```
#[derive(Clone)]
pub struct ReadReplicaLayer {
    pub(super) allow: Arc<dyn Fn(&Parts) -> bool + Send + Sync>,
    pub(super) max_lag: Arc<MaxLagFn>,
    pub(super) causal: Option<Arc<Carrier>>,
    pub(super) signing_key: Option<Arc<SigningKey>>,
}

/// A request's staleness budget.
type MaxLagFn = dyn Fn(&Parts) -> Option<Duration> + Send + Sync;

impl fmt::Debug for ReadReplicaLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReadReplicaLayer")
            .field("causal", &self.causal)
            .field("signed", &self.signing_key.is_some())
            .finish_non_exhaustive()
    }
}

impl ReadReplicaLayer {
    /// A layer deciding each read request with `allow`, a closure over the request's parts: a
    /// policy that needs no handler type.
    pub fn decide<F>(allow: F) -> Self
    where
        F: Fn(&Parts) -> bool + Send + Sync + 'static,
    {
        ReadReplicaLayer {
            allow: Arc::new(allow),
            max_lag: Arc::new(|_: &Parts| None),
            causal: None,
            signing_key: None,
        }
    }

    /// The policy of the handler type `H`: its [`ReadReplicaControl::use_read_replica`] decides
    /// each read request, and its [`ReadReplicaControl::max_lag`] is the request's staleness
    /// budget.
    pub fn for_handler<H: ReadReplicaControl>() -> Self {
        ReadReplicaLayer {
            allow: Arc::new(H::use_read_replica as fn(&Parts) -> bool),
            max_lag: Arc::new(H::max_lag as fn(&Parts) -> Option<Duration>),
            causal: None,
            signing_key: None,
        }
    }

    /// Read requests may use a replica.
    pub fn allow_replica() -> Self {
        Self::decide(|_| true)
    }

    /// Every request reads from the primary.
    pub fn primary_only() -> Self {
        Self::decide(|_| false)
    }

    /// Gives every request of this layer the staleness budget `max_lag`: its reads go only to
    /// replicas known to lag less (see [`with_max_lag`](crate::with_max_lag)).
    #[must_use]
    pub fn max_lag(mut self, max_lag: Duration) -> Self {
        let policy = self.max_lag;
        self.max_lag = Arc::new(move |request: &Parts| {
            Some(policy(request).map_or(max_lag, |own| own.min(max_lag)))
        });
        self
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

    /// Signs the causal tokens this layer hands out with `key` (HMAC-SHA-256) and accepts only
    /// tokens signed with it, so that a client can neither forge a token nor replay one from
    /// another deployment. Keep the key secret and the same on every instance. Without a key,
    /// tokens are still checked when used: one claiming a WAL position the primary has not
    /// reached, or a time in the future, is ignored.
    #[must_use]
    pub fn signing_key(mut self, key: impl AsRef<[u8]>) -> Self {
        self.signing_key = SigningKey::new(key.as_ref()).map(Arc::new);
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
        ReadReplicaService::new(inner, self.clone())
    }
}
