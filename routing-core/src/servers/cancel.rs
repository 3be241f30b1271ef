//! Cancelling what a session runs: its [`Canceller`] sends PostgreSQL's cancel request, and a
//! [`RowsWatch`] does so for a row stream dropped before its end, marking its session so that
//! it is closed rather than reused while the statement may still run.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use tokio_postgres::CancelToken;

use super::tls;

/// How long a cancel request may take before it is given up (a frozen server never answers).
pub(crate) const CANCEL_PATIENCE: Duration = Duration::from_secs(5);

/// What cancels the statement a session runs: its cancel key, and the connector its cancel
/// request goes through (TLS as for the session itself); and what the session's row streams
/// left behind.
pub(crate) struct Canceller {
    token: CancelToken,
    connector: Option<tls::Connector>,
    /// How many watched row streams of the session are alive.
    open_streams: AtomicU32,
    /// A watched row stream was dropped before its end: its statement may still run.
    abandoned: AtomicBool,
}

impl Canceller {
    pub(crate) fn new(token: CancelToken, connector: Option<tls::Connector>) -> Self {
        Canceller {
            token,
            connector,
            open_streams: AtomicU32::new(0),
            abandoned: AtomicBool::new(false),
        }
    }

    /// Asks the server to cancel whatever the session is running, connecting as `tls` says.
    pub(crate) async fn cancel_with<T>(&self, tls: T) -> Result<(), tokio_postgres::Error>
    where
        T: tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>,
    {
        self.token.cancel_query(tls).await
    }

    /// Asks the server to cancel whatever the session is running, over TLS as the session is.
    pub(crate) async fn cancel(&self) -> Result<(), tokio_postgres::Error> {
        match &self.connector {
            Some(connector) => self.token.cancel_query(connector.clone()).await,
            None => self.token.cancel_query(tokio_postgres::NoTls).await,
        }
    }

    /// Whether a row stream of the session was dropped before its end.
    pub(crate) fn stream_abandoned(&self) -> bool {
        self.abandoned.load(Ordering::Acquire)
    }

    /// Whether a row stream of the session is alive: the session still owes it rows.
    pub(crate) fn streams_open(&self) -> bool {
        self.open_streams.load(Ordering::Acquire) > 0
    }
}

/// Asks the server behind `canceller` to cancel whatever its session is running, in the
/// background: a server that does not answer (frozen) is given up on after `patience`.
pub(crate) fn cancel(canceller: &Arc<Canceller>, patience: Duration) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let canceller = Arc::clone(canceller);
    runtime.spawn(async move {
        let request = canceller.cancel();
        let cancelled = crate::clock::timeout(patience, Box::pin(request));
        match cancelled.await {
            Ok(Ok(())) => tracing::debug!(target: "routing_core", "cancel request sent"),
            outcome => {
                tracing::debug!(target: "routing_core", ?outcome, "cancel request not delivered")
            }
        }
    });
}

/// Watches a row stream of a session: counted among the session's open streams while alive,
/// and, dropped before the stream ended, marks the session abandoned and cancels its statement.
pub(crate) struct RowsWatch {
    canceller: Arc<Canceller>,
    ended: bool,
    /// Whether dropping the stream early cancels its statement: not for a write outside a
    /// transaction, whose rows come before its commit is acknowledged. A cancel request then
    /// could reach the commit's wait for a synchronous standby, which PostgreSQL ends with a
    /// warning and a commit made on this server only: a write the caller saw succeed, lost if
    /// a standby is promoted. Its session is closed all the same.
    cancels: bool,
}

impl RowsWatch {
    /// Watches a stream of the session behind `canceller`; `cancels` says whether dropping it
    /// early sends a cancel request (see [`RowsWatch`]'s `Drop`).
    pub(crate) fn new(canceller: &Arc<Canceller>, cancels: bool) -> Self {
        canceller.open_streams.fetch_add(1, Ordering::AcqRel);
        RowsWatch {
            canceller: Arc::clone(canceller),
            ended: false,
            cancels,
        }
    }

    /// The stream ended: its statement is over.
    pub(crate) fn end(&mut self) {
        self.ended = true;
    }

    pub(crate) fn ended(&self) -> bool {
        self.ended
    }
}

impl Drop for RowsWatch {
    fn drop(&mut self) {
        if !self.ended {
            tracing::debug!(target: "routing_core", "row stream dropped before its end: cancelling its statement");
            self.canceller.abandoned.store(true, Ordering::Release);
            if self.cancels {
                cancel(&self.canceller, CANCEL_PATIENCE);
            }
        }
        self.canceller.open_streams.fetch_sub(1, Ordering::AcqRel);
    }
}
