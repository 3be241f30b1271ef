//! [`ReadReplicaControl`]: a handler's read-replica policy.

use std::time::Duration;

/// A handler's read-replica policy: may the reads of its requests go to a replica?
///
/// Middleware (the tower layer `ReadReplicaLayer`, with the `tower` feature) asks it for every
/// `GET`, `HEAD` and `OPTIONS` request of the handler; every other method goes to the primary
/// whatever the handler says. Derive it, with `#[read_replica(false)]` to keep a handler on the
/// primary:
///
/// ```
/// use routing_core::ReadReplicaControl;
///
/// #[derive(ReadReplicaControl)]
/// struct ListProducts;
///
/// #[derive(ReadReplicaControl)]
/// #[read_replica(false)]
/// struct ListOrders;
///
/// // A report that accepts data up to two seconds old.
/// #[derive(ReadReplicaControl)]
/// #[read_replica(max_lag = "2s")]
/// struct SalesReport;
///
/// assert!(ListProducts::USE_READ_REPLICA);
/// assert!(!ListOrders::USE_READ_REPLICA);
/// assert_eq!(SalesReport::MAX_LAG, Some(std::time::Duration::from_secs(2)));
/// ```
///
/// For a decision per request, implement the trait by hand and override
/// `ReadReplicaControl::use_read_replica` (with the `tower` feature):
///
/// ```
/// # #[cfg(any(feature = "tower", feature = "actix"))] {
/// use routing_core::ReadReplicaControl;
///
/// struct ProductStock;
///
/// impl ReadReplicaControl for ProductStock {
///     fn use_read_replica(request: &http::request::Parts) -> bool {
///         // `?fresh=1` asks for the primary.
///         !request.uri.query().is_some_and(|q| q.contains("fresh=1"))
///     }
/// }
/// # }
/// ```
pub trait ReadReplicaControl {
    /// Whether the handler's reads may go to a replica. Default: `true`.
    const USE_READ_REPLICA: bool = true;

    /// The handler's staleness budget (`#[read_replica(max_lag = "2s")]`): its reads go only to
    /// replicas known to lag less, which tightens the pool's `max_lag` for its requests.
    /// Default: `None`, the pool's bound.
    const MAX_LAG: Option<Duration> = None;

    /// The decision for one `GET`, `HEAD` or `OPTIONS` request. Default:
    /// [`ReadReplicaControl::USE_READ_REPLICA`].
    #[cfg(any(feature = "tower", feature = "actix"))]
    fn use_read_replica(request: &http::request::Parts) -> bool {
        let _ = request;
        Self::USE_READ_REPLICA
    }

    /// The staleness budget for one request. Default: [`ReadReplicaControl::MAX_LAG`].
    #[cfg(any(feature = "tower", feature = "actix"))]
    fn max_lag(request: &http::request::Parts) -> Option<Duration> {
        let _ = request;
        Self::MAX_LAG
    }
}
