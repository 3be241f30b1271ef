//! How the router opens server connections: one `open` for every connection it makes (pools,
//! health probe, startup checks, migrations), over TLS as the URL says (see `tls`), and the
//! deadpool [`Manager`] of each server's pool.

use deadpool::managed::{Metrics, RecycleError, RecycleResult};
use diesel_async::AsyncPgConnection;
use diesel_async::pooled_connection::{PoolableConnection, RecyclingMethod};

use super::{catalog, tls};
use crate::error::{ConnectError, Role};
use crate::url::DatabaseUrl;

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
    let connector = tls::connector(url).map_err(ConnectError::Tls)?;
    // Boxed: the TLS handshake's future is deep, and connecting is no hot path.
    let (client, connection) = Box::pin(config.connect(connector))
        .await
        .map_err(|error| tls::connect_error(url, error))?;
    AsyncPgConnection::try_from_client_and_connection(client, connection)
        .await
        .map_err(ConnectError::Session)
}

/// Makes and checks the connections of one server's pool.
#[derive(Debug)]
pub(crate) struct Manager {
    role: Role,
    url: DatabaseUrl,
    /// Whether each new session checks that the server is in `role`.
    verify_role: bool,
    /// Whether a pooled connection answers a `SELECT 1` before each checkout hands it out.
    verify_checkouts: bool,
}

impl Manager {
    pub(crate) fn new(
        role: Role,
        url: DatabaseUrl,
        verify_role: bool,
        verify_checkouts: bool,
    ) -> Self {
        Manager {
            role,
            url,
            verify_role,
            verify_checkouts,
        }
    }
}

impl deadpool::managed::Manager for Manager {
    type Type = AsyncPgConnection;
    type Error = ConnectError;

    /// A new session: a replica's is read-only on the server, and with `verify_role` the server
    /// must be in the configured role.
    async fn create(&self) -> Result<AsyncPgConnection, ConnectError> {
        let mut conn = open(&self.url, None).await?;
        let replica = matches!(self.role, Role::Replica(_));
        let in_recovery = catalog::set_up_session(&mut conn, replica)
            .await
            .map_err(ConnectError::Setup)?;
        if self.verify_role && in_recovery != replica {
            return Err(ConnectError::WrongRole { in_recovery });
        }
        Ok(conn)
    }

    /// A connection goes back into use only when it is open and outside every transaction
    /// (and, with `verify_checkouts`, answers).
    async fn recycle(
        &self,
        conn: &mut AsyncPgConnection,
        _: &Metrics,
    ) -> RecycleResult<ConnectError> {
        if std::thread::panicking() || conn.is_broken() {
            return Err(RecycleError::message(
                "the connection is closed or inside a transaction",
            ));
        }
        if self.verify_checkouts {
            conn.ping(&RecyclingMethod::Verified)
                .await
                .map_err(|e| RecycleError::Backend(ConnectError::Setup(e)))?;
        }
        Ok(())
    }
}
