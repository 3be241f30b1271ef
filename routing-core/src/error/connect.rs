//! The errors of opening and checking out a server connection: [`TlsError`], [`ConnectError`]
//! and [`CheckoutError`].

use std::path::PathBuf;
use std::time::Duration;

use super::Role;

/// Why a TLS connection could not be made. Messages name files and hosts, never a password.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The `sslrootcert` file does not exist.
    #[error("sslrootcert {}: no such file", path.display())]
    RootCertNotFound {
        /// The file.
        path: PathBuf,
    },
    /// The `sslrootcert` file could not be read.
    #[error("sslrootcert {}: cannot read it: {source}", path.display())]
    RootCertUnreadable {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The `sslrootcert` file holds no usable CA certificate.
    #[error("sslrootcert {}: {reason}", path.display())]
    RootCertInvalid {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The mode verifies against the system's root certificates, and there are none.
    #[error(
        "sslmode={mode} without sslrootcert verifies the server against the system's root certificates, but none could be loaded{reason}; set sslrootcert to the server's CA"
    )]
    NoSystemRoots {
        /// The `sslmode`.
        mode: &'static str,
        /// Why, as the end of the message.
        reason: String,
    },
    /// The server's certificate is not signed by a trusted CA.
    #[error("the server's certificate is not signed by {trusted}")]
    UntrustedCertificate {
        /// What was trusted: `the CA in sslrootcert /path`, the system's roots, or the pool's
        /// `rustls::ClientConfig`.
        trusted: String,
    },
    /// The server's certificate does not name the host connected to.
    #[error("the server's certificate is not valid for host {host}")]
    WrongHost {
        /// The host of the URL.
        host: String,
    },
    /// The server's certificate was rejected for another reason (expired, wrong usage, ...).
    #[error("the server's certificate was rejected: {reason}")]
    BadCertificate {
        /// rustls's reason.
        reason: String,
    },
    /// The server does not offer TLS, and the mode requires it.
    #[error("the server does not accept TLS connections, and sslmode={mode} requires TLS")]
    NotOffered {
        /// The `sslmode`.
        mode: &'static str,
    },
    /// The TLS handshake failed for another reason.
    #[error("the TLS handshake failed: {reason}")]
    Handshake {
        /// What failed.
        reason: String,
    },
    /// The mode needs TLS, and this build of routing-core has none.
    #[error("sslmode={mode} needs TLS, and routing-core was built without its `rustls` feature")]
    Unsupported {
        /// The `sslmode`.
        mode: &'static str,
    },
    /// The `sslcert` file cannot be read or holds no certificate.
    #[error("sslcert {}: {reason}", path.display())]
    ClientCertInvalid {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The `sslkey` file cannot be read, holds no private key, or is not the key of the
    /// `sslcert`.
    #[error("sslkey {}: {reason}", path.display())]
    ClientKeyInvalid {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// rustls refused to make a client configuration.
    #[error("cannot set up TLS: {reason}")]
    Setup {
        /// rustls's reason.
        reason: String,
    },
}

/// Why a new server connection could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The server could not be reached or refused the login.
    #[error("cannot connect: {}", WithCauses(.0))]
    Connect(#[source] tokio_postgres::Error),
    /// TLS could not be set up, or the server's certificate was refused.
    #[error("cannot connect over TLS: {0}")]
    Tls(#[source] TlsError),
    /// libpq could not open the session (the server could not be reached, refused the login,
    /// or TLS failed), for the synchronous pool.
    #[error("cannot connect: {0}")]
    Establish(#[source] diesel::ConnectionError),
    /// diesel-async could not set the session up.
    #[error("cannot set up the session: {0}")]
    Session(#[source] diesel::ConnectionError),
    /// The router's own session setup failed.
    #[error("cannot prepare the session: {0}")]
    Setup(#[source] diesel::result::Error),
    /// Opening and setting up the session took longer than the connect timeout.
    #[error("connecting took longer than {0:?}")]
    Timeout(Duration),
    /// The pool's [`Credentials`](crate::Credentials) provider gave no password.
    #[error("cannot get the password for {login}: {source}")]
    Credentials {
        /// The login the password was asked for.
        login: Box<crate::Login>,
        /// The provider's error.
        #[source]
        source: crate::CredentialsError,
    },
    /// The pool's [`on_connect`](crate::RoutedPoolBuilder::on_connect) hook failed on the new
    /// connection, which is closed.
    #[error("the on_connect hook failed on a new {role} connection: {source}")]
    OnConnect {
        /// The role the hook was told.
        role: Role,
        /// The hook's error.
        #[source]
        source: diesel::result::Error,
    },
    /// The session could not be set up because a transaction pooler in front of the server
    /// lost the named prepared statements of the setup.
    #[error(
        "cannot set up the session: {source}; this is what a transaction pooler (PgBouncer in \
         transaction mode) does to named prepared statements: set \
         RoutedPoolBuilder::transaction_pooler(true)"
    )]
    NeedsTransactionPooler {
        /// The server's error.
        #[source]
        source: diesel::ConnectionError,
    },
    /// The server is not in the role it is configured for.
    #[error("the server is {}", if *in_recovery { "in recovery (a standby)" } else { "not in recovery (a primary)" })]
    WrongRole {
        /// What `pg_is_in_recovery()` answered.
        in_recovery: bool,
    },
}

/// A tokio-postgres error and its causes (the server's message), which its own message leaves
/// out. A login error never holds the password.
struct WithCauses<'a>(&'a tokio_postgres::Error);

impl std::fmt::Display for WithCauses<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = std::error::Error::source(self.0);
        while let Some(current) = cause {
            write!(f, ": {current}")?;
            cause = current.source();
        }
        Ok(())
    }
}

/// Why a pooled connection could not be checked out, besides a busy pool.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckoutError {
    /// A new connection could not be opened.
    #[error("{0}")]
    Connect(#[source] ConnectError),
    /// Opening a new connection took longer than the connect timeout.
    #[error("connecting took longer than {0:?}")]
    ConnectTimeout(Duration),
    /// Checking a pooled connection before reuse took longer than the connect timeout.
    #[error("checking a pooled connection took longer than {0:?}")]
    RecycleTimeout(Duration),
    /// The pool was closed.
    #[error("the pool is closed")]
    Closed,
    /// The pool's timeouts need a tokio runtime with timers.
    #[error("no async runtime for timeouts")]
    NoRuntime,
}
