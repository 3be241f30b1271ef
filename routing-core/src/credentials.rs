//! [`Credentials`]: what gives the password of each new server connection (a rotating secret, an
//! IAM authentication token), and the [`Login`] it is asked for.

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;

use futures_util::future::BoxFuture;

/// The error a [`Credentials`] provider returns.
pub type CredentialsError = Box<dyn StdError + Send + Sync>;

/// Gives the password of each new server connection a pool opens: its pooled sessions, the
/// health probe's, [`RoutedPool::check`](crate::RoutedPool::check)'s. Set it with
/// [`RoutedPoolBuilder::credentials`](crate::RoutedPoolBuilder::credentials); the password
/// it gives replaces the URL's.
///
/// It is asked once per new connection, never for a pooled one: a rotated password is used by
/// the next connection opened, and the connections already open stay as they are (PostgreSQL
/// checks a password only at login). Cache inside the provider if asking is slow; the time it
/// takes counts in the pool's connect timeout.
///
/// Any `Fn(Login) -> impl Future<Output = Result<String, E>>` is a provider:
///
/// ```no_run
/// # fn run() -> Result<(), routing_core::BuildError> {
/// use routing_core::{Login, RoutedPool};
///
/// let pool = RoutedPool::builder("postgres://app@primary/app")
///     .replica("postgres://app@replica-1/app")
///     .credentials(|login: Login| async move {
///         // Ask a secrets manager, or sign an IAM token for login.host, login.port, login.user.
///         std::env::var("APP_DB_PASSWORD")
///     })
///     .build()?;
/// # Ok(()) }
/// ```
pub trait Credentials: Send + Sync + 'static {
    /// The password for a new connection as `login`.
    ///
    /// # Errors
    ///
    /// When no password can be had: the connection fails with
    /// [`ConnectError::Credentials`](crate::ConnectError::Credentials), which keeps this error
    /// as its source.
    fn password(&self, login: Login) -> BoxFuture<'static, Result<String, CredentialsError>>;
}

impl<F, Fut, E> Credentials for F
where
    F: Fn(Login) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<String, E>> + Send + 'static,
    E: Into<CredentialsError>,
{
    fn password(&self, login: Login) -> BoxFuture<'static, Result<String, CredentialsError>> {
        let password = self(login);
        Box::pin(async move { password.await.map_err(Into::into) })
    }
}

/// The login a password is asked for: the server and the user, from the connection's URL.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Login {
    /// The host name or address (a directory for a Unix socket).
    pub host: String,
    /// The port.
    pub port: u16,
    /// The user name.
    pub user: String,
    /// The database name, when the URL names one.
    pub dbname: Option<String>,
}

impl Login {
    /// The login of `config`: its first host and port (the router makes one URL per host).
    pub(crate) fn of(config: &tokio_postgres::Config) -> Self {
        let host = match config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
            #[cfg(unix)]
            Some(tokio_postgres::config::Host::Unix(path)) => path.display().to_string(),
            None => String::new(),
        };
        Login {
            host,
            port: config.get_ports().first().copied().unwrap_or(5432),
            user: config.get_user().unwrap_or_default().to_owned(),
            dbname: config.get_dbname().map(str::to_owned),
        }
    }
}

impl fmt::Display for Login {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}:{}", self.user, self.host, self.port)
    }
}

/// A pool's provider, shared by its servers and its probe.
#[derive(Clone)]
pub(crate) struct Provider(pub(crate) std::sync::Arc<dyn Credentials>);

impl fmt::Debug for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Credentials")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn closures_are_providers_and_keep_their_errors() {
        let login = Login::of(&"postgres://app:old@db.internal:6432/shop".parse().unwrap());
        assert_eq!(login.to_string(), "app@db.internal:6432");
        assert_eq!(login.dbname.as_deref(), Some("shop"));
        let rotating =
            |login: Login| async move { Ok::<_, std::io::Error>(format!("{}-v2", login.user)) };
        assert_eq!(rotating.password(login.clone()).await.unwrap(), "app-v2");
        let failing =
            |_: Login| async { Err::<String, _>(std::io::Error::other("vault is sealed")) };
        let error = failing.password(login).await.unwrap_err();
        assert_eq!(error.to_string(), "vault is sealed");
    }
}
