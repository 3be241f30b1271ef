//! Web integration: middleware that scopes each request's routing decision by its method and its
//! handler's policy, and carries causal tokens between requests: a tower layer for axum (feature
//! `tower`) and an actix-web middleware (feature `actix`, in `web::actix`); and a status endpoint,
//! [`StatusService`] (feature `tower`).

#[cfg(feature = "actix")]
pub mod actix;
mod carrier;
#[cfg(feature = "tower")]
mod future;
#[cfg(feature = "tower")]
mod layer;
#[cfg(feature = "tower")]
mod service;
#[cfg(feature = "tower")]
mod status;

#[cfg(feature = "tower")]
pub use future::ResponseFuture;
#[cfg(feature = "tower")]
pub use layer::ReadReplicaLayer;
#[cfg(feature = "tower")]
pub use service::ReadReplicaService;
#[cfg(feature = "tower")]
pub use status::StatusService;
