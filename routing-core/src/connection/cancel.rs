//! [`RoutedCancelToken`]: cancels the statement a [`RoutedConnection`](super::RoutedConnection)
//! runs, on whichever server runs it.

use std::sync::Arc;

use tokio_postgres::Socket;
use tokio_postgres::tls::MakeTlsConnect;

use super::held::Running;
use crate::servers::cancel::Canceller;

/// Cancels the statement its connection is running, on the server that runs it: the primary or
/// a replica. Made by [`RoutedConnection::cancel_token`](super::RoutedConnection::cancel_token),
/// it outlives the connection's borrow, so another task can cancel what the connection runs.
///
/// A cancelled statement fails with PostgreSQL's `canceling statement due to user request`. When
/// the connection runs no statement, cancelling does nothing.
#[derive(Clone)]
pub struct RoutedCancelToken {
    running: Arc<Running>,
}

impl std::fmt::Debug for RoutedCancelToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoutedCancelToken")
            .field("running", &self.current().is_some())
            .finish()
    }
}

impl RoutedCancelToken {
    pub(super) fn new(running: Arc<Running>) -> Self {
        RoutedCancelToken { running }
    }

    fn current(&self) -> Option<Arc<Canceller>> {
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Asks the server running the connection's statement to cancel it, connecting as `tls`
    /// says, as tokio-postgres's `CancelToken::cancel_query` does.
    ///
    /// # Errors
    ///
    /// The cancel request could not be sent.
    pub async fn cancel_query<T>(&self, tls: T) -> Result<(), tokio_postgres::Error>
    where
        T: MakeTlsConnect<Socket>,
    {
        match self.current() {
            Some(canceller) => canceller.cancel_with(tls).await,
            None => Ok(()),
        }
    }

    /// Asks the server running the connection's statement to cancel it, over TLS as the
    /// connection's session is (the pool's `sslmode` and certificates).
    ///
    /// # Errors
    ///
    /// The cancel request could not be sent.
    pub async fn cancel(&self) -> Result<(), tokio_postgres::Error> {
        match self.current() {
            Some(canceller) => canceller.cancel().await,
            None => Ok(()),
        }
    }
}
