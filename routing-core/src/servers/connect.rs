//! How the router opens server connections: one `open` for every connection it makes (pools,
//! health probe, startup checks, migrations), over TLS as the URL says (see `tls`), the
//! [`ServerConn`] its pools hold, and the deadpool [`Manager`] of each server's pool.

use std::sync::Arc;
use std::time::Duration;

use deadpool::managed::{Metrics, RecycleError, RecycleResult};
use diesel::connection::{DynInstrumentation, Instrumentation, InstrumentationEvent};
use diesel_async::pooled_connection::{PoolableConnection, RecyclingMethod};
use diesel_async::{AsyncConnection, AsyncPgConnection};
use tokio_postgres::CancelToken;

use super::{catalog, tls};
use crate::error::{ConnectError, Role};
use crate::url::DatabaseUrl;

/// TCP keepalives on every connection, unless the URL sets its own: a server that vanishes from
/// the network (a dead path, a crashed host) is noticed within about a minute even on an idle
/// connection, instead of the kernel's two hours.
const KEEPALIVES_IDLE: Duration = Duration::from_secs(30);
const KEEPALIVES_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVES_RETRIES: u32 = 3;

/// Opens a session to `url`, with `application_name` when given (else the URL's own), over TLS
/// as its `sslmode` and `sslrootcert` (or its pool's `rustls::ClientConfig`) say.
pub(crate) async fn open(
    url: &DatabaseUrl,
    application_name: Option<&str>,
) -> Result<AsyncPgConnection, ConnectError> {
    let mut config = url.config().clone();
    if let Some(name) = application_name {
        config.application_name(name);
    }
    // tokio-postgres's default idle time is two hours: take ours unless the URL chose one.
    if config.get_keepalives_idle() == Duration::from_secs(2 * 60 * 60) {
        config
            .keepalives(true)
            .keepalives_idle(KEEPALIVES_IDLE)
            .keepalives_interval(KEEPALIVES_INTERVAL)
            .keepalives_retries(KEEPALIVES_RETRIES);
    }
    let connector = tls::connector(url).map_err(ConnectError::Tls)?;
    // Boxed: the TLS handshake's future is deep, and connecting is no hot path.
    let (client, connection) = Box::pin(config.connect(connector))
        .await
        .map_err(|error| tls::connect_error(url, error))?;
    AsyncPgConnection::try_from_client_and_connection(client, connection)
        .await
        .map_err(ConnectError::Session)
}

/// The instrumentation of the router's sessions: silent, but while a routed connection lends
/// its own for a statement of its user's, whose events (queries, statement cache, transactions)
/// then reach it as they happen. The router's own SQL (session setup, health probe, role and
/// token checks, type lookups) runs with nothing lent, so no user sees it.
#[derive(Default)]
pub(crate) struct Relay {
    lent: Option<DynInstrumentation>,
    /// Forward only the statement cache's events: the routed connection reports the statement
    /// itself (its own rendering of it, once, however many servers it tried).
    cache_only: bool,
}

impl Instrumentation for Relay {
    fn on_connection_event(&mut self, event: InstrumentationEvent<'_>) {
        if let Some(lent) = &mut self.lent {
            if !self.cache_only || matches!(event, InstrumentationEvent::CacheQuery { .. }) {
                lent.on_connection_event(event);
            }
        }
    }
}

/// `conn` with the router's silent [`Relay`] instead of the default instrumentation
/// diesel-async gave it when it opened.
pub(crate) fn silenced(mut conn: AsyncPgConnection) -> AsyncPgConnection {
    conn.set_instrumentation(Relay::default());
    conn
}

/// Lends `instrumentation` to the session of `conn`, whose [`Relay`] forwards events to it until
/// [`reclaim`]; gives it back when `conn` has no relay.
pub(crate) fn lend(
    conn: &mut AsyncPgConnection,
    instrumentation: DynInstrumentation,
    cache_only: bool,
) -> Result<(), DynInstrumentation> {
    match conn.instrumentation().downcast_mut::<Relay>() {
        Some(relay) => {
            relay.lent = Some(instrumentation);
            relay.cache_only = cache_only;
            Ok(())
        }
        None => Err(instrumentation),
    }
}

/// Takes back what [`lend`] lent to the session of `conn`.
pub(crate) fn reclaim(conn: &mut AsyncPgConnection) -> Option<DynInstrumentation> {
    conn.instrumentation()
        .downcast_mut::<Relay>()
        .and_then(|relay| relay.lent.take())
}

/// What cancels the statement a session runs: its cancel key, and the connector its cancel
/// request goes through (TLS as for the session itself).
pub(crate) struct Canceller {
    token: CancelToken,
    connector: Option<tls::Connector>,
}

impl Canceller {
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

/// A pooled server session and what the router knows of it.
pub(crate) struct ServerConn {
    conn: AsyncPgConnection,
    /// For cancel requests: made once per session, so that a statement's guard only clones an
    /// `Arc`.
    cancel: Arc<Canceller>,
    /// Whether a statement changed the session's state (a `SET`, a session advisory lock, a
    /// `LISTEN`, a temporary table, ...): such a session is closed instead of being reused.
    session_changed: bool,
}

impl ServerConn {
    fn new(conn: AsyncPgConnection, connector: Option<tls::Connector>) -> Self {
        let conn = silenced(conn);
        let cancel = Arc::new(Canceller {
            token: conn.cancel_token(),
            connector,
        });
        ServerConn {
            conn,
            cancel,
            session_changed: false,
        }
    }

    /// The diesel-async connection.
    pub(crate) fn pg(&mut self) -> &mut AsyncPgConnection {
        &mut self.conn
    }

    /// What cancels the statement this session runs.
    pub(crate) fn canceller(&self) -> &Arc<Canceller> {
        &self.cancel
    }

    /// Drops anything lent to the session's [`Relay`]: nothing of one routed connection's
    /// reaches the next.
    pub(crate) fn clear_relay(&mut self) {
        let _ = reclaim(&mut self.conn);
    }

    /// Notes that a statement changed the session's state.
    pub(crate) fn mark_session_changed(&mut self) {
        self.session_changed = true;
    }

    /// Whether the session may serve another checkout as it is: open, outside every
    /// transaction, its state as the router set it up.
    pub(crate) fn reusable(&mut self) -> bool {
        !self.session_changed && !self.conn.is_broken()
    }
}

/// Makes and checks the connections of one server's pool.
#[derive(Debug)]
pub(crate) struct Manager {
    /// The server's configured role; `None` for a node whose role the probe discovers.
    role: Option<Role>,
    url: DatabaseUrl,
    /// Whether each new session checks that the server is in `role`.
    verify_role: bool,
    /// Whether a pooled connection answers a `SELECT 1` before each checkout hands it out.
    verify_checkouts: bool,
    /// How long opening a session, or checking a pooled one, may take.
    timeout: Duration,
}

impl Manager {
    pub(crate) fn new(
        role: Option<Role>,
        url: DatabaseUrl,
        verify_role: bool,
        verify_checkouts: bool,
        timeout: Duration,
    ) -> Self {
        Manager {
            role,
            url,
            verify_role,
            verify_checkouts,
            timeout,
        }
    }
}

impl deadpool::managed::Manager for Manager {
    type Type = ServerConn;
    type Error = ConnectError;

    /// A new session: a configured replica's is read-only on the server, and with
    /// `verify_role` the server must be in its configured role. A discovered node's session is
    /// left as it is: the node may be promoted.
    async fn create(&self) -> Result<ServerConn, ConnectError> {
        crate::clock::timeout(self.timeout, self.open_session())
            .await
            .unwrap_or(Err(ConnectError::Timeout(self.timeout)))
    }

    /// A connection goes back into use only when it is open, outside every transaction, with
    /// its session state untouched (and, with `verify_checkouts`, answers in time).
    async fn recycle(&self, conn: &mut ServerConn, _: &Metrics) -> RecycleResult<ConnectError> {
        if std::thread::panicking() || !conn.reusable() {
            return Err(RecycleError::message(
                "the connection is closed, inside a transaction or its session state changed",
            ));
        }
        if self.verify_checkouts {
            crate::clock::timeout(self.timeout, conn.pg().ping(&RecyclingMethod::Verified))
                .await
                .map_err(|_| RecycleError::message("the connection did not answer in time"))?
                .map_err(|e| RecycleError::Backend(ConnectError::Setup(e)))?;
        }
        Ok(())
    }
}

impl Manager {
    /// Opens a session and sets it up.
    async fn open_session(&self) -> Result<ServerConn, ConnectError> {
        let mut conn = open(&self.url, None).await?;
        if let Some(role) = self.role {
            let replica = matches!(role, Role::Replica(_));
            let in_recovery = catalog::set_up_session(&mut conn, replica)
                .await
                .map_err(ConnectError::Setup)?;
            if self.verify_role && in_recovery != replica {
                return Err(ConnectError::WrongRole { in_recovery });
            }
        }
        Ok(ServerConn::new(conn, tls::connector(&self.url).ok()))
    }
}
