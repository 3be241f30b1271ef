//! The schema of the demo service and of the integration tests: its diesel migrations, embedded,
//! and the diesel table definitions and types that match them.

mod schema;
mod status;

pub use schema::{orders, products};
pub use status::{OrderStatus, sql_types};

/// The migrations in this folder, embedded at compile time.
pub const MIGRATIONS: diesel_migrations::EmbeddedMigrations =
    diesel_migrations::embed_migrations!(".");
