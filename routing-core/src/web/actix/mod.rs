//! actix-web 4 integration: [`ReadReplica`], a middleware that scopes each request's routing
//! decision by its method and its handler's policy and carries causal tokens between requests,
//! and [`block`], which runs blocking work inside the request's routing scope.
//!
//! ```no_run
//! use actix_web::{App, HttpResponse, HttpServer, web};
//! use routing_core::web::actix::ReadReplica;
//! use routing_core::{RoutedPool, use_read_replica};
//!
//! async fn list_products(pool: web::Data<RoutedPool>) -> HttpResponse {
//!     // Reads on `pool` here go to a replica.
//!     HttpResponse::Ok().finish()
//! }
//!
//! #[use_read_replica(false)] // orders must be fresh
//! async fn list_orders(pool: web::Data<RoutedPool>) -> HttpResponse {
//!     HttpResponse::Ok().finish()
//! }
//!
//! # async fn run() -> std::io::Result<()> {
//! let pool = RoutedPool::from_env().expect("database variables");
//! HttpServer::new(move || {
//!     App::new()
//!         .app_data(web::Data::new(pool.clone()))
//!         .service(
//!             web::resource("/orders")
//!                 .route(web::get().to(list_orders))
//!                 .wrap(ReadReplica::for_handler::<list_orders>()),
//!         )
//!         .route("/products", web::get().to(list_products))
//!         // The default of every other route, and read-your-writes across requests.
//!         .wrap(ReadReplica::allow_replica().causal_cookie("read_after"))
//! })
//! .bind(("127.0.0.1", 8080))?
//! .run()
//! .await
//! # }
//! ```
//!
//! actix-web 4 speaks `http` 0.2 while [`ReadReplicaControl`](crate::ReadReplicaControl) takes
//! `http` 1 request parts: the middleware converts the request's method, URI, version and headers
//! for the policies that decide per request (a handler type, a closure), and only for them. The
//! type is re-exported here as [`Parts`], for policies written by hand:
//!
//! ```
//! use routing_core::ReadReplicaControl;
//! use routing_core::web::actix::Parts;
//!
//! struct ProductStock;
//!
//! impl ReadReplicaControl for ProductStock {
//!     fn use_read_replica(request: &Parts) -> bool {
//!         // `?fresh=1` asks for the primary.
//!         request.uri.query() != Some("fresh=1")
//!     }
//! }
//! ```

mod future;
mod head;
mod middleware;
mod transform;

use std::future::Future;

use actix_web::error::BlockingError;

use crate::context::RoutingContext;
pub use future::ResponseFuture;
/// A request's method, URI, version and headers as `http` 1 types: what the policies that decide
/// per request are given ([`ReadReplicaControl::use_read_replica`], [`ReadReplica::decide`]).
///
/// [`ReadReplicaControl::use_read_replica`]: crate::ReadReplicaControl::use_read_replica
pub use http::request::Parts;
pub use middleware::ReadReplicaMiddleware;
pub use transform::ReadReplica;

/// Runs the blocking closure `f` on actix-web's blocking thread pool inside the caller's routing
/// context: `actix_web::web::block`, with the request's routing decision carried along.
///
/// `web::block` runs `f` on another thread, where the request's scope is not in force, so reads
/// made there would go to the primary and writes would not count as the request's. With this
/// `block`, [`should_use_read_replica`](crate::should_use_read_replica) and the statements that
/// `f` runs (on a [`RoutedPool`](crate::RoutedPool), with
/// `tokio::runtime::Handle::current().block_on(..)`) follow the request: its replica choice,
/// staleness budget and causal token; a write marks the request as having written, so that its
/// later reads go to the primary and its response carries a causal token. The context is the
/// one in force when `block` is called.
///
/// # Errors
///
/// [`BlockingError`] when `f` panicked or the thread pool is shut down, as with
/// `web::block`.
///
/// ```no_run
/// use actix_web::{HttpResponse, web};
/// use routing_core::{RoutedPool, should_use_read_replica};
///
/// async fn export(pool: web::Data<RoutedPool>) -> actix_web::Result<HttpResponse> {
///     let on_replica = routing_core::web::actix::block(|| {
///         // Synchronous code sees the request's routing decision.
///         should_use_read_replica()
///     })
///     .await?;
///     Ok(HttpResponse::Ok().body(format!("replica allowed: {on_replica}")))
/// }
/// ```
pub fn block<F, R>(f: F) -> impl Future<Output = Result<R, BlockingError>>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    let context = RoutingContext::current();
    actix_web::web::block(move || context.sync_scope(f))
}
