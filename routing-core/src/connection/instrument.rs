//! diesel's instrumentation on a [`RoutedConnection`]: its user's statements report to it from
//! whichever server session runs them.
//!
//! The connection lends its instrumentation to the session that runs a statement of its user's
//! (see [`Relay`](crate::servers::connect::Relay)), so that the session's own events (the
//! query, the statement cache, the transaction manager's) reach it once and in order, as they do
//! from a plain `AsyncPgConnection`; it takes it back before anything else runs on the
//! connection. Nothing is lent while the router runs its own SQL, and nothing at all when no
//! instrumentation is set: the statement path then costs nothing more.

use diesel::connection::{DynInstrumentation, Instrumentation};

use super::RoutedConnection;
use crate::route::Target;
use crate::servers::connect;

impl RoutedConnection {
    /// Lends this connection's instrumentation to the session held for `target`, for a
    /// statement of the user's; with `cache_only`, only the statement cache's events (this
    /// connection reports the statement itself).
    pub(super) fn lend_instrumentation(&mut self, target: Target, cache_only: bool) {
        if !self.instrumented {
            return;
        }
        self.reclaim_instrumentation();
        let Some(conn) = self.held.conn(target) else {
            return;
        };
        let instrumentation =
            std::mem::replace(&mut self.instrumentation, DynInstrumentation::none());
        match connect::lend(conn, instrumentation, cache_only) {
            Ok(()) => self.lent = Some(target),
            Err(instrumentation) => self.instrumentation = instrumentation,
        }
    }

    /// Takes back the instrumentation lent to a session.
    pub(super) fn reclaim_instrumentation(&mut self) {
        let Some(target) = self.lent.take() else {
            return;
        };
        if let Some(instrumentation) = self.held.conn(target).and_then(connect::reclaim) {
            self.instrumentation = instrumentation;
        }
    }

    /// This connection's instrumentation, taken back from where it was lent.
    pub(super) fn own_instrumentation(&mut self) -> &mut dyn Instrumentation {
        self.reclaim_instrumentation();
        &mut *self.instrumentation
    }

    /// Sets this connection's instrumentation.
    pub(super) fn replace_instrumentation(&mut self, instrumentation: DynInstrumentation) {
        self.reclaim_instrumentation();
        self.instrumentation = instrumentation;
        self.instrumented = true;
    }
}

/// The default instrumentation (`diesel::connection::set_default_instrumentation`), as a new
/// connection takes it; and whether there is one.
pub(super) fn default_instrumentation() -> (DynInstrumentation, bool) {
    match diesel::connection::get_default_instrumentation() {
        Some(instrumentation) => (DynInstrumentation::from(instrumentation), true),
        None => (DynInstrumentation::none(), false),
    }
}

impl Drop for RoutedConnection {
    /// Takes the instrumentation back, so that it does not go back to the pool with a session.
    fn drop(&mut self) {
        self.reclaim_instrumentation();
    }
}
