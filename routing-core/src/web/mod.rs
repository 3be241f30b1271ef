//! Web integration: a tower layer (axum middleware) that scopes each request's routing decision
//! by its method and its handler's policy, and carries causal tokens between requests.

mod carrier;
mod future;
mod layer;
mod service;

pub use future::ResponseFuture;
pub use layer::ReadReplicaLayer;
pub use service::ReadReplicaService;
