//! [`BuildError`]: a configuration that cannot make a pool.

use super::Role;
use crate::url::{RedactedUrl, UrlError};

impl BuildError {
    /// The error for `url`, configured as `what`, that `source` says is invalid.
    pub(crate) fn invalid_url(what: impl Into<String>, url: &str, source: UrlError) -> Self {
        BuildError::InvalidUrl {
            what: what.into(),
            url: RedactedUrl::new(url),
            source,
        }
    }
}

/// A configuration that cannot make a pool: from [`RoutedPoolBuilder::build`],
/// [`RoutedPool::from_env`] and the builder's constructors.
///
/// [`RoutedPoolBuilder::build`]: crate::RoutedPoolBuilder::build
/// [`RoutedPool::from_env`]: crate::RoutedPool::from_env
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// A connection URL could not be parsed.
    #[error("invalid {what} URL {url}: {source}")]
    InvalidUrl {
        /// What the URL was for: "primary", "replica 0", a variable name.
        what: String,
        /// The URL, password redacted.
        url: RedactedUrl,
        /// Why it was rejected.
        #[source]
        source: UrlError,
    },

    /// A required environment variable is not set.
    #[error("environment variable {name} is not set: {why}")]
    MissingVariable {
        /// The variable.
        name: &'static str,
        /// What needs it.
        why: &'static str,
    },

    /// An environment variable holds a value that is not allowed.
    #[error("environment variable {name} has the value {value:?}: expected {expected}")]
    InvalidVariable {
        /// The variable.
        name: &'static str,
        /// The value found (never a password).
        value: String,
        /// What would have been accepted.
        expected: &'static str,
    },

    /// A builder setting is out of range.
    #[error("invalid setting {setting} = {value}: expected {expected}")]
    InvalidSetting {
        /// The setting's builder method.
        setting: &'static str,
        /// The value given.
        value: String,
        /// What would have been accepted.
        expected: &'static str,
    },

    /// deadpool refused to build a server's pool.
    #[error("failed to build the {role} connection pool for {url}: {source}")]
    Pool {
        /// The server the pool was for.
        role: Role,
        /// Its URL, password redacted.
        url: RedactedUrl,
        /// deadpool's error.
        #[source]
        source: deadpool::managed::BuildError,
    },
}
