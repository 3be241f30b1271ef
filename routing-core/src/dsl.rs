//! SQL functions that ask the server who it is, for checking where a statement ran.
//!
//! Put them in a statement's select list (or `RETURNING`) and the answer comes from the server
//! that ran that very statement:
//!
//! ```no_run
//! # async fn run(conn: &mut routing_core::RoutedConnection) -> diesel::QueryResult<()> {
//! use diesel_async::RunQueryDsl;
//! use routing_core::dsl::{inet_server_port, pg_is_in_recovery};
//!
//! let (standby, port): (bool, i32) = diesel::select((pg_is_in_recovery(), inet_server_port()))
//!     .get_result(conn)
//!     .await?;
//! # Ok(()) }
//! ```

diesel::define_sql_function! {
    /// `pg_is_in_recovery()`: true on a standby.
    fn pg_is_in_recovery() -> Bool;
}

diesel::define_sql_function! {
    /// `inet_server_port()`: the port of the server that answers.
    fn inet_server_port() -> Integer;
}
