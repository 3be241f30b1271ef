//! Connection strings: the redacted form for messages, and the secret one for connecting.

mod hosts;
mod redact;

use std::fmt;
#[cfg(feature = "rustls")]
use std::sync::Arc;

mod ssl;

#[cfg(feature = "rustls")]
pub(crate) use ssl::ClientCert;
pub(crate) use ssl::{SslMode, SslParams};

use redact::password_spans;

/// Why a connection URL was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UrlError {
    /// The URL is empty or blank.
    #[error("the URL is empty")]
    Empty,
    /// The URL names no host.
    #[error("it names no host")]
    NoHost,
    /// tokio-postgres could not parse it; the message has any password removed.
    #[error("{0}")]
    Unparsable(String),
    /// `sslmode` has a value libpq does not know, or one this crate does not support (`allow`).
    #[error("invalid sslmode {0:?}: expected disable, prefer, require, verify-ca or verify-full")]
    InvalidSslMode(String),
    /// `sslcert` without `sslkey`, or `sslkey` without `sslcert`: a client certificate needs both.
    #[error("{0} without {1}: a client certificate needs both sslcert and sslkey")]
    ClientCertWithoutKey(&'static str, &'static str),
}

/// A connection string with its password replaced by `***`, safe to print and log.
///
/// Both forms PostgreSQL accepts are handled: URLs (`postgres://user:secret@host/db`,
/// `?password=secret`) and key-value strings (`host=h password='secret'`).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RedactedUrl(String);

impl RedactedUrl {
    /// Redacts the password of `url`.
    pub fn new(url: &str) -> Self {
        RedactedUrl(redact(url))
    }

    /// The redacted text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RedactedUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RedactedUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// A connection string as configured, before it is validated: `Debug` redacts its password.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct SecretUrl(String);

impl SecretUrl {
    pub(crate) fn new(url: String) -> Self {
        SecretUrl(url)
    }

    /// The connection string, password included: never print it.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }

    pub(crate) fn redacted(&self) -> RedactedUrl {
        RedactedUrl::new(&self.0)
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.redacted(), f)
    }
}

/// A validated connection string: the secret original for connecting, the redacted form for
/// everything else, its TLS parameters, and the pool's own TLS configuration if it has one.
#[derive(Clone)]
pub(crate) struct DatabaseUrl {
    secret: String,
    config: tokio_postgres::Config,
    redacted: RedactedUrl,
    ssl: SslParams,
    #[cfg(feature = "rustls")]
    tls_config: Option<Arc<rustls::ClientConfig>>,
}

impl DatabaseUrl {
    /// Validates `url`: libpq's TLS parameters (`sslmode`, `sslrootcert`) here, the rest with
    /// tokio-postgres's parser, which is given the `sslmode` it knows.
    pub(crate) fn parse(url: &str) -> Result<Self, UrlError> {
        let redacted = RedactedUrl::new(url);
        if url.trim().is_empty() {
            return Err(UrlError::Empty);
        }
        let (ssl, rest) = ssl::split(url)?;
        let mut config: tokio_postgres::Config = rest
            .parse()
            .map_err(|e: tokio_postgres::Error| UrlError::Unparsable(scrub(&e.to_string(), url)))?;
        if config.get_hosts().is_empty() {
            return Err(UrlError::NoHost);
        }
        config.ssl_mode(ssl.mode.for_tokio_postgres());
        Ok(DatabaseUrl {
            secret: url.to_owned(),
            config,
            redacted,
            ssl,
            #[cfg(feature = "rustls")]
            tls_config: None,
        })
    }

    /// The same URL whose connections use `tls_config` (a pool's
    /// [`tls_config`](crate::RoutedPoolBuilder::tls_config)) instead of the client
    /// configuration its TLS parameters describe.
    #[cfg(feature = "rustls")]
    pub(crate) fn with_tls_config(mut self, tls_config: Option<Arc<rustls::ClientConfig>>) -> Self {
        self.tls_config = tls_config;
        self
    }

    /// The pool's own TLS configuration, if it has one.
    #[cfg(feature = "rustls")]
    pub(crate) fn tls_config(&self) -> Option<&Arc<rustls::ClientConfig>> {
        self.tls_config.as_ref()
    }

    /// The connection string as configured, password included: never print it.
    #[cfg(feature = "migrations")]
    pub(crate) fn secret(&self) -> &str {
        &self.secret
    }

    /// `sslmode` and `sslrootcert`.
    pub(crate) fn ssl(&self) -> &SslParams {
        &self.ssl
    }

    /// The parsed connection settings, with the `sslmode` tokio-postgres knows.
    pub(crate) fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    pub(crate) fn redacted(&self) -> &RedactedUrl {
        &self.redacted
    }

    /// How many hosts the URL lists (libpq's `host1,host2` form).
    pub(crate) fn host_count(&self) -> usize {
        hosts::count(&self.config)
    }

    /// This URL, asking for a read-write session when it lists several hosts: connecting tries
    /// them in order and keeps the first that accepts writes, the primary.
    #[cfg(feature = "migrations")]
    pub(crate) fn read_write(&self) -> DatabaseUrl {
        let mut url = self.clone();
        if self.host_count() > 1 {
            url.config
                .target_session_attrs(tokio_postgres::config::TargetSessionAttrs::ReadWrite);
        }
        url
    }

    /// One URL per host, each with the others' settings; the URL itself when it lists one.
    pub(crate) fn hosts(&self) -> Vec<DatabaseUrl> {
        if self.host_count() <= 1 {
            return vec![self.clone()];
        }
        (0..self.host_count())
            .map(|index| DatabaseUrl {
                config: hosts::single(&self.config, index),
                redacted: RedactedUrl(hosts::display(&self.config, index)),
                ..self.clone()
            })
            .collect()
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.redacted, f)
    }
}

impl PartialEq for DatabaseUrl {
    fn eq(&self, other: &Self) -> bool {
        self.secret == other.secret
    }
}

/// Removes anything that looks like the password of `url` from a parser's message.
fn scrub(message: &str, url: &str) -> String {
    match password_span(url) {
        Some((start, end)) if end > start => message.replace(&url[start..end], "***"),
        _ => message.to_owned(),
    }
}

fn redact(url: &str) -> String {
    let mut out = url.to_owned();
    // Replace from the back so that earlier spans stay valid.
    let mut spans = password_spans(url);
    spans.sort_unstable_by_key(|span| std::cmp::Reverse(span.0));
    for (start, end) in spans {
        out.replace_range(start..end, "***");
    }
    out
}

fn password_span(url: &str) -> Option<(usize, usize)> {
    password_spans(url).into_iter().next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_password_is_redacted() {
        assert_eq!(
            RedactedUrl::new("postgres://app:s3cret@db.example.com:5432/app").as_str(),
            "postgres://app:***@db.example.com:5432/app"
        );
        assert_eq!(
            RedactedUrl::new("postgresql://app:p%40ss@h/db?sslmode=disable").as_str(),
            "postgresql://app:***@h/db?sslmode=disable"
        );
    }

    #[test]
    fn url_without_password_is_unchanged() {
        let url = "postgres://app@127.0.0.1:5433/postgres";
        assert_eq!(RedactedUrl::new(url).as_str(), url);
    }

    #[test]
    fn password_query_parameter_is_redacted() {
        assert_eq!(
            RedactedUrl::new("postgres://h/db?user=a&password=hunter2&sslmode=disable").as_str(),
            "postgres://h/db?user=a&password=***&sslmode=disable"
        );
    }

    #[test]
    fn at_sign_in_path_redacts_more_never_less() {
        let redacted = RedactedUrl::new("postgres://u:pw@h/db@x");
        assert!(!redacted.as_str().contains("pw"), "{redacted}");
    }

    #[test]
    fn key_value_password_is_redacted() {
        assert_eq!(
            RedactedUrl::new("host=h user=u password=hunter2 dbname=d").as_str(),
            "host=h user=u password=*** dbname=d"
        );
        assert_eq!(
            RedactedUrl::new("host=h password = 'two words' dbname=d").as_str(),
            "host=h password = '***' dbname=d"
        );
    }

    #[test]
    fn debug_and_display_never_show_the_password() {
        let url = DatabaseUrl::parse("postgres://u:topsecret@localhost/db").unwrap();
        assert!(!format!("{url:?}").contains("topsecret"));
        assert!(!url.redacted().to_string().contains("topsecret"));
    }

    #[test]
    fn tls_parameters_are_read_here_and_the_rest_by_tokio_postgres() {
        let url = DatabaseUrl::parse(
            "postgres://u:topsecret@localhost:5433/db?sslmode=verify-full&sslrootcert=/tmp/ca.crt",
        )
        .unwrap();
        assert_eq!(url.ssl().mode, SslMode::VerifyFull);
        assert_eq!(
            url.ssl().root_cert.as_deref(),
            Some(std::path::Path::new("/tmp/ca.crt"))
        );
        assert_eq!(
            url.config().get_ssl_mode(),
            tokio_postgres::config::SslMode::Require
        );
        assert_eq!(url.config().get_ports(), [5433]);
        // The original is kept, for the URL's own display.
        assert!(url.redacted().as_str().ends_with("sslrootcert=/tmp/ca.crt"));

        let err = DatabaseUrl::parse("postgres://u:topsecret@h/db?sslmode=allow").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid sslmode \"allow\": expected disable, prefer, require, verify-ca or verify-full"
        );
    }

    #[test]
    fn invalid_urls_are_errors_without_the_password() {
        for bad in [
            "",
            "   ",
            "postgres://u:topsecret@localhost:notaport/db",
            "mysql://u:topsecret@localhost/db",
            "host=localhost port=99999999 password=topsecret",
            "postgres://u:topsecret@/db",
        ] {
            let err = DatabaseUrl::parse(bad).unwrap_err();
            let message = err.to_string();
            assert!(!message.contains("topsecret"), "{message}");
            assert!(!format!("{err:?}").contains("topsecret"), "{err:?}");
        }
    }
}
