//! The demo service: an axum app over the schema of `routing-fixtures`, with one handler for each
//! usage pattern of the original design. Every query of every handler also asks the server who it
//! is (`pg_is_in_recovery()`, `inet_server_port()`), and each response lists those answers, so
//! that anyone can see where a request's queries ran.

mod app;
mod error;
mod handlers;
mod observe;
mod reply;

pub use app::app;
pub use observe::{app_with_metrics, prometheus};
pub use reply::{QueryRecord, Reply};
