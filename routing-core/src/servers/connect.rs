//! How the router opens server connections: one `open` for every connection it makes (pools,
//! health probe, startup checks, migrations), over TLS as the URL says (see `tls`), with the
//! pool's credentials, as a [`ServerSession`] of the pool's kind; the [`ServerConn`] its pools
//! hold, and the deadpool [`Manager`] of each server's pool.

use std::sync::Arc;
use std::time::Duration;

use deadpool::managed::{Metrics, RecycleError, RecycleResult};
use diesel::connection::{DynInstrumentation, Instrumentation, InstrumentationEvent};
use diesel_async::{AsyncConnection, AsyncPgConnection};

use super::cancel::Canceller;
use super::catalog::Backend;
use super::session::ServerSession;
use super::unnamed::UnnamedSession;
use super::{catalog, tls};
use crate::config::{Config, OnConnect};
use crate::credentials::{Login, Provider};
use crate::error::{ConnectError, Role};
use crate::failure;
use crate::url::DatabaseUrl;

/// TCP keepalives on every connection, unless the URL sets its own: a server that vanishes from
/// the network (a dead path, a crashed host) is noticed within about a minute even on an idle
/// connection, instead of the kernel's two hours.
const KEEPALIVES_IDLE: Duration = Duration::from_secs(30);
const KEEPALIVES_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVES_RETRIES: u32 = 3;

/// How [`open`] opens a session.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Open<'a> {
    /// The `application_name`, instead of the URL's own.
    pub(crate) application_name: Option<&'a str>,
    /// What gives the password, instead of the URL.
    pub(crate) credentials: Option<&'a Provider>,
    /// Whether every statement is unnamed (a transaction pooler).
    pub(crate) unnamed: bool,
}

impl<'a> Open<'a> {
    /// Sessions as `config`'s pool opens them.
    pub(crate) fn of(config: &'a Config) -> Self {
        Open {
            application_name: None,
            credentials: config.credentials(),
            unnamed: config.transaction_pooler(),
        }
    }
}

/// Opens a session to `url` as `how` says, over TLS as the URL's `sslmode` and `sslrootcert`
/// (or its pool's `rustls::ClientConfig`) say.
pub(crate) async fn open(url: &DatabaseUrl, how: Open<'_>) -> Result<ServerSession, ConnectError> {
    let mut config = url.config().clone();
    if let Some(name) = how.application_name {
        config.application_name(name);
    }
    if let Some(credentials) = how.credentials {
        let login = Login::of(&config);
        let password = credentials
            .0
            .password(login.clone())
            .await
            .map_err(|source| ConnectError::Credentials {
                login: Box::new(login),
                source,
            })?;
        config.password(password);
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
    if how.unnamed {
        return Ok(ServerSession::Unnamed(UnnamedSession::new(
            client, connection,
        )));
    }
    AsyncPgConnection::try_from_client_and_connection(client, connection)
        .await
        .map(ServerSession::Prepared)
        .map_err(|error| match error {
            diesel::ConnectionError::CouldntSetupConfiguration(ref cause)
                if failure::lost_named_statement(cause) =>
            {
                ConnectError::NeedsTransactionPooler { source: error }
            }
            error => ConnectError::Session(error),
        })
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
pub(crate) fn silenced(mut conn: ServerSession) -> ServerSession {
    conn.set_instrumentation(Relay::default());
    conn
}

/// Lends `instrumentation` to the session of `conn`, whose [`Relay`] forwards events to it until
/// [`reclaim`]; gives it back when `conn` has no relay.
pub(crate) fn lend(
    conn: &mut ServerSession,
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
pub(crate) fn reclaim(conn: &mut ServerSession) -> Option<DynInstrumentation> {
    conn.instrumentation()
        .downcast_mut::<Relay>()
        .and_then(|relay| relay.lent.take())
}

/// A pooled server session and what the router knows of it.
///
/// Its contents are boxed: the pool's connections move whole (into and out of the pool, into
/// and out of a routed connection, through every checkout's future), and a session is large.
pub(crate) struct ServerConn(Box<Session>);

struct Session {
    conn: ServerSession,
    /// For cancel requests: made once per session, so that a statement's guard only clones an
    /// `Arc`.
    cancel: Arc<Canceller>,
    /// Whether a statement changed the session's state (a `SET`, a session advisory lock, a
    /// `LISTEN`, a temporary table, ...): such a session is closed instead of being reused.
    session_changed: bool,
    /// The server process of the session, learned when it was set up; `None` behind a
    /// transaction pooler, whose sessions are not the server's.
    backend: Option<Backend>,
}

impl ServerConn {
    fn new(
        conn: ServerSession,
        connector: Option<tls::Connector>,
        backend: Option<Backend>,
    ) -> Self {
        let cancel = Arc::new(Canceller::new(conn.cancel_token(), connector));
        ServerConn(Box::new(Session {
            conn,
            cancel,
            session_changed: false,
            backend,
        }))
    }

    /// The server session.
    pub(crate) fn pg(&mut self) -> &mut ServerSession {
        &mut self.0.conn
    }

    /// What cancels the statement this session runs.
    pub(crate) fn canceller(&self) -> &Arc<Canceller> {
        &self.0.cancel
    }

    /// Drops anything lent to the session's [`Relay`]: nothing of one routed connection's
    /// reaches the next.
    pub(crate) fn clear_relay(&mut self) {
        let _ = reclaim(&mut self.0.conn);
    }

    /// The server process of the session (`None` behind a transaction pooler).
    pub(crate) fn backend(&self) -> Option<Backend> {
        self.0.backend
    }

    /// Whether a row stream of the session was dropped before its end: its statement may still
    /// run, so the session must not run another.
    pub(crate) fn stream_abandoned(&self) -> bool {
        self.0.cancel.stream_abandoned()
    }

    /// Notes that a statement changed the session's state.
    pub(crate) fn mark_session_changed(&mut self) {
        self.0.session_changed = true;
    }

    /// Whether the session may serve another checkout as it is: open, outside every
    /// transaction, its state as the router set it up, no row stream of its alive or dropped
    /// before its end.
    pub(crate) fn reusable(&mut self) -> bool {
        // Open streams first: a stream dropped early marks the session before it stops counting.
        !self.0.session_changed
            && !self.0.cancel.streams_open()
            && !self.0.cancel.stream_abandoned()
            && !self.0.conn.is_broken()
    }
}

/// Makes and checks the connections of one server's pool.
#[derive(Debug)]
pub(crate) struct Manager {
    role: Role,
    url: DatabaseUrl,
    /// Whether each new session checks that the server is in its configured role.
    verify_role: bool,
    /// Whether a pooled connection answers a `SELECT 1` before each checkout hands it out.
    verify_checkouts: bool,
    credentials: Option<Provider>,
    on_connect: Option<OnConnect>,
    /// Whether every statement is unnamed (a transaction pooler): no session state is set.
    unnamed: bool,
    /// How long opening a session, or checking a pooled one, may take.
    timeout: Duration,
}

impl Manager {
    pub(crate) fn new(
        role: Role,
        url: DatabaseUrl,
        config: &Config,
        verify_checkouts: bool,
    ) -> Self {
        Manager {
            role,
            url,
            verify_role: config.verify_roles(),
            verify_checkouts,
            credentials: config.credentials().cloned(),
            on_connect: config.on_connect().cloned(),
            unnamed: config.transaction_pooler(),
            timeout: config.connect_timeout(),
        }
    }

    /// The router's own setup of a new session, in one round trip: a configured replica's is
    /// read-only on the server (unless no session state may be set), and with `verify_role` the
    /// server must be in its configured role; the session's server process is noted (except
    /// behind a transaction pooler, whose sessions are not the server's). A discovered node's
    /// session is left read-write: the node may be promoted. Returns the role to tell the
    /// `on_connect` hook.
    async fn set_up(
        &self,
        conn: &mut ServerSession,
    ) -> Result<(Role, Option<Backend>), ConnectError> {
        let (in_recovery, backend) = if self.unnamed {
            if matches!(self.role, Role::Node(_)) && self.on_connect.is_none() {
                return Ok((self.role, None));
            }
            (catalog::in_recovery(conn).await, None)
        } else {
            let read_only = matches!(self.role, Role::Replica(_));
            match catalog::set_up_session(conn, read_only).await {
                Ok((in_recovery, backend)) => (Ok(in_recovery), backend),
                Err(error) => (Err(error), None),
            }
        };
        let in_recovery = in_recovery.map_err(ConnectError::Setup)?;
        let role = match self.role {
            Role::Node(_) if self.on_connect.is_none() => self.role,
            Role::Node(node) if in_recovery => Role::Replica(node),
            Role::Node(_) => Role::Primary,
            role => {
                let replica = matches!(role, Role::Replica(_));
                if self.verify_role && in_recovery != replica {
                    return Err(ConnectError::WrongRole { in_recovery });
                }
                role
            }
        };
        Ok((role, backend))
    }
}

impl deadpool::managed::Manager for Manager {
    type Type = ServerConn;
    type Error = ConnectError;

    /// A new session, set up by the router, then by the pool's `on_connect` hook. Its future is
    /// boxed: opening a session is rare and its future large (the TLS handshake, the setup, the
    /// hook), and every checkout's future would hold it, moved with it on every statement.
    fn create(&self) -> impl Future<Output = Result<ServerConn, ConnectError>> + Send {
        Box::pin(async move {
            crate::clock::timeout(self.timeout, self.open_session())
                .await
                .unwrap_or(Err(ConnectError::Timeout(self.timeout)))
        })
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
            // Boxed, as `create`'s future is.
            Box::pin(crate::clock::timeout(self.timeout, conn.pg().ping()))
                .await
                .map_err(|_| RecycleError::message("the connection did not answer in time"))?
                .map_err(|e| RecycleError::Backend(ConnectError::Setup(e)))?;
        }
        Ok(())
    }
}

impl Manager {
    /// Opens a session, silent to every instrumentation, and sets it up: the router's own
    /// setup, then the pool's `on_connect` hook.
    async fn open_session(&self) -> Result<ServerConn, ConnectError> {
        let how = Open {
            application_name: None,
            credentials: self.credentials.as_ref(),
            unnamed: self.unnamed,
        };
        let mut conn = silenced(open(&self.url, how).await?);
        let (role, backend) = self.set_up(&mut conn).await?;
        if let (Some(hook), Some(pg)) = (&self.on_connect, conn.prepared()) {
            (hook.0)(pg, role)
                .await
                .map_err(|source| ConnectError::OnConnect { role, source })?;
        }
        Ok(ServerConn::new(
            conn,
            tls::connector(&self.url).ok(),
            backend,
        ))
    }
}
