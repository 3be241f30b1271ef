//! TLS for every connection the router makes, with libpq's meaning of a URL's `sslmode`,
//! `sslrootcert`, `sslcert` and `sslkey`:
//!
//! | `sslmode` | TLS | certificate chain | host name |
//! |---|---|---|---|
//! | `disable` | never | | |
//! | `prefer` (default) | when the server offers it | against `sslrootcert` if given | no |
//! | `require` | always | against `sslrootcert` if given | no |
//! | `verify-ca` | always | against `sslrootcert`, else the system's roots | no |
//! | `verify-full` | always | against `sslrootcert`, else the system's roots | yes |
//!
//! `sslrootcert=system` names the system's roots. `sslcert` and `sslkey` (both or neither) are the
//! client certificate, presented to a server that asks for one. A pool's own `rustls::ClientConfig`
//! ([`tls_config`](crate::RoutedPoolBuilder::tls_config)) replaces all of this but `sslmode`,
//! which still says whether TLS is used and required. [`connector`] gives the connector of a
//! URL, also for cancel requests.

use crate::error::{ConnectError, TlsError};
use crate::url::{DatabaseUrl, SslMode};

#[cfg(feature = "rustls")]
mod client;
#[cfg(feature = "rustls")]
mod roots;
#[cfg(feature = "rustls")]
mod verify;

/// What connects a URL's sessions: the rustls connector, or none without the `rustls` feature.
#[cfg(feature = "rustls")]
pub(crate) type Connector = tokio_postgres_rustls::MakeRustlsConnect;
/// What connects a URL's sessions: the rustls connector, or none without the `rustls` feature.
#[cfg(not(feature = "rustls"))]
pub(crate) type Connector = tokio_postgres::NoTls;

/// The connector for `url`'s sessions and cancel requests, for its `sslmode` and `sslrootcert`
/// or its pool's `rustls::ClientConfig`; pass it to tokio-postgres with `url.config()`, whose
/// `sslmode` says when it is used. Reads `sslrootcert` on every call, as libpq does.
///
/// # Errors
///
/// An `sslrootcert` that cannot be read or holds no CA certificate, no system roots for a
/// `verify-*` mode without `sslrootcert`, or, without the `rustls` feature, a mode that needs
/// TLS.
#[cfg(feature = "rustls")]
pub(crate) fn connector(url: &DatabaseUrl) -> Result<Connector, TlsError> {
    let config = match (url.ssl().mode, url.tls_config()) {
        (SslMode::Disable, _) => verify::never_used()?,
        (_, Some(custom)) => (**custom).clone(),
        (mode, None) => {
            let ssl = url.ssl();
            verify::client_config(mode, ssl.root_cert.as_deref(), ssl.client.as_ref())?
        }
    };
    Ok(Connector::new(config))
}

/// The connector for `url`'s sessions and cancel requests: none, for a mode that does not need
/// TLS.
///
/// # Errors
///
/// [`TlsError::Unsupported`] for a mode that needs TLS (`require`, `verify-ca`, `verify-full`).
#[cfg(not(feature = "rustls"))]
pub(crate) fn connector(url: &DatabaseUrl) -> Result<Connector, TlsError> {
    match url.ssl().mode {
        SslMode::Disable | SslMode::Prefer => Ok(tokio_postgres::NoTls),
        mode => Err(TlsError::Unsupported {
            mode: mode.as_str(),
        }),
    }
}

/// The error of a failed connection to `url`: [`ConnectError::Tls`] when TLS made it fail,
/// else [`ConnectError::Connect`].
pub(crate) fn connect_error(url: &DatabaseUrl, error: tokio_postgres::Error) -> ConnectError {
    match tls_failure(url, &error) {
        Some(tls) => ConnectError::Tls(tls),
        None => ConnectError::Connect(error),
    }
}

/// The TLS failure in `error`'s causes, if any.
fn tls_failure(url: &DatabaseUrl, error: &tokio_postgres::Error) -> Option<TlsError> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = cause {
        // tokio-postgres's own words when the server answers an SSLRequest with "no".
        if current.to_string() == "server does not support TLS" {
            return Some(TlsError::NotOffered {
                mode: url.ssl().mode.as_str(),
            });
        }
        #[cfg(feature = "rustls")]
        if let Some(tls) = verify::explain(url, current) {
            return Some(tls);
        }
        cause = current.source();
    }
    None
}

#[cfg(all(test, feature = "rustls"))]
mod tests;
