//! A pool's configuration: one [`Config`], with its defaults and its validation, filled in by
//! [`RoutedPoolBuilder`] and stored once in the pool.

use std::sync::Arc;
use std::time::Duration;

use diesel::QueryResult;
use diesel_async::AsyncPgConnection;
use futures_util::future::BoxFuture;

use crate::causal::ReadYourWrites;
use crate::classify::Classifier;
use crate::credentials::Provider;
use crate::error::{BuildError, Role};
#[allow(unused_imports)] // named in the docs
use crate::policy::{LeastOutstanding, LowestLatency, Random};
use crate::policy::{Policy, ReplicaPolicy, RoundRobin};
use crate::url::SecretUrl;

mod builder;

pub use builder::RoutedPoolBuilder;

/// The background health probe's schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct HealthCheck {
    /// Time between two probes of every replica. Default: 1 s.
    pub interval: Duration,
    /// How long one probe may take before the replica counts as down. Default: 1 s.
    pub timeout: Duration,
}

impl Default for HealthCheck {
    fn default() -> Self {
        HealthCheck {
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
        }
    }
}

impl HealthCheck {
    /// A probe every `interval`, each allowed `timeout`.
    pub fn new(interval: Duration, timeout: Duration) -> Self {
        HealthCheck { interval, timeout }
    }
}

/// What runs on every new server connection of a pool, after the router's own setup.
pub(crate) type HookFn =
    dyn for<'c> Fn(&'c mut AsyncPgConnection, Role) -> BoxFuture<'c, QueryResult<()>> + Send + Sync;

/// A pool's `on_connect` hook.
#[derive(Clone)]
pub(crate) struct OnConnect(pub(crate) Arc<HookFn>);

impl std::fmt::Debug for OnConnect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OnConnect")
    }
}

/// A replica as configured.
#[derive(Clone, Debug)]
pub(crate) struct ReplicaConfig {
    pub(crate) url: SecretUrl,
    pub(crate) weight: u32,
}

/// Everything a pool is configured with. Each field's default is in [`Config::new`]; the
/// builder's methods document them for users.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    primary: SecretUrl,
    replicas: Vec<ReplicaConfig>,
    policy: Policy,
    health_check: HealthCheck,
    max_lag: Option<Duration>,
    max_lag_bytes: Option<u64>,
    read_your_writes: ReadYourWrites,
    primary_max_size: usize,
    replica_max_size: usize,
    primary_checkout_timeout: Duration,
    replica_checkout_timeout: Duration,
    connect_timeout: Duration,
    fallback_to_primary: bool,
    retry_refused_writes: bool,
    verify_roles: bool,
    verify_primary_checkouts: bool,
    classifier: Classifier,
    first_row_timeout: Option<Duration>,
    record_query_text: bool,
    max_causal_waits: Option<usize>,
    primary_wait: Option<Duration>,
    credentials: Option<Provider>,
    on_connect: Option<OnConnect>,
    transaction_pooler: bool,
    #[cfg(feature = "rustls")]
    tls_config: Option<Arc<rustls::ClientConfig>>,
}

impl Config {
    fn new(primary: String) -> Self {
        Config {
            primary: SecretUrl::new(primary),
            replicas: Vec::new(),
            policy: Policy(Arc::new(RoundRobin::new())),
            health_check: HealthCheck::default(),
            max_lag: Some(Duration::from_secs(30)),
            max_lag_bytes: None,
            read_your_writes: ReadYourWrites::default(),
            primary_max_size: 16,
            replica_max_size: 16,
            primary_checkout_timeout: Duration::from_secs(5),
            replica_checkout_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            fallback_to_primary: true,
            retry_refused_writes: true,
            verify_roles: true,
            verify_primary_checkouts: true,
            classifier: Classifier::new(),
            first_row_timeout: None,
            record_query_text: false,
            max_causal_waits: None,
            primary_wait: None,
            credentials: None,
            on_connect: None,
            transaction_pooler: false,
            #[cfg(feature = "rustls")]
            tls_config: None,
        }
    }

    /// Checks every setting; URLs are checked when the servers are made from them.
    fn validate(&self) -> Result<(), BuildError> {
        let invalid = |setting, value: String, expected| {
            Err(BuildError::InvalidSetting {
                setting,
                value,
                expected,
            })
        };
        for (setting, size) in [
            // Both zero: `max_size(0)`, most likely.
            ("max_size", self.primary_max_size.max(self.replica_max_size)),
            ("primary_max_size", self.primary_max_size),
            ("replica_max_size", self.replica_max_size),
        ] {
            if size == 0 {
                return invalid(setting, "0".to_owned(), "at least one connection");
            }
        }
        for (setting, value) in [
            ("primary_checkout_timeout", self.primary_checkout_timeout),
            ("replica_checkout_timeout", self.replica_checkout_timeout),
            ("connect_timeout", self.connect_timeout),
            ("health_check.interval", self.health_check.interval),
            ("health_check.timeout", self.health_check.timeout),
        ] {
            if value.is_zero() {
                return invalid(setting, "0s".to_owned(), "a duration above zero");
            }
        }
        if self.first_row_timeout.is_some_and(|t| t.is_zero()) {
            return invalid(
                "first_row_timeout",
                "0s".to_owned(),
                "a duration above zero, or None",
            );
        }
        if self.max_causal_waits == Some(0) {
            return invalid("max_causal_waits", "0".to_owned(), "at least one read");
        }
        if self.transaction_pooler && self.on_connect.is_some() {
            return invalid(
                "on_connect",
                "a hook, with transaction_pooler(true)".to_owned(),
                "no on_connect hook: a transaction pooler gives each transaction any server \
                 connection, so there is no session to set up",
            );
        }
        if let Some(index) = self.replicas.iter().position(|r| r.weight == 0) {
            return invalid(
                "replica_with_weight",
                format!("0 for replica {index}"),
                "a weight of at least 1",
            );
        }
        Ok(())
    }

    pub(crate) fn primary(&self) -> &SecretUrl {
        &self.primary
    }

    pub(crate) fn replicas(&self) -> &[ReplicaConfig] {
        &self.replicas
    }

    pub(crate) fn policy(&self) -> &dyn ReplicaPolicy {
        &*self.policy.0
    }

    pub(crate) fn health_check(&self) -> HealthCheck {
        self.health_check
    }

    pub(crate) fn max_lag(&self) -> Option<Duration> {
        self.max_lag
    }

    pub(crate) fn max_lag_bytes(&self) -> Option<u64> {
        self.max_lag_bytes
    }

    pub(crate) fn read_your_writes(&self) -> ReadYourWrites {
        self.read_your_writes
    }

    /// The most connections of the primary's pool (`true`) or of each replica's.
    pub(crate) fn max_size(&self, primary: bool) -> usize {
        if primary {
            self.primary_max_size
        } else {
            self.replica_max_size
        }
    }

    /// How long a checkout from the primary's pool (`true`) or a replica's waits.
    pub(crate) fn checkout_timeout(&self, primary: bool) -> Duration {
        if primary {
            self.primary_checkout_timeout
        } else {
            self.replica_checkout_timeout
        }
    }

    pub(crate) fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    pub(crate) fn fallback_to_primary(&self) -> bool {
        self.fallback_to_primary
    }

    pub(crate) fn retry_refused_writes(&self) -> bool {
        self.retry_refused_writes
    }

    pub(crate) fn verify_roles(&self) -> bool {
        self.verify_roles
    }

    pub(crate) fn verify_primary_checkouts(&self) -> bool {
        self.verify_primary_checkouts
    }

    pub(crate) fn classifier(&self) -> &Classifier {
        &self.classifier
    }

    pub(crate) fn first_row_timeout(&self) -> Option<Duration> {
        self.first_row_timeout
    }

    pub(crate) fn record_query_text(&self) -> bool {
        self.record_query_text
    }

    /// The configured wait, else two probe intervals.
    pub(crate) fn primary_wait(&self) -> Duration {
        self.primary_wait.unwrap_or(self.health_check.interval * 2)
    }

    /// The configured bound, else a quarter of a replica's pool (at least one).
    pub(crate) fn max_causal_waits(&self) -> usize {
        self.max_causal_waits
            .unwrap_or_else(|| (self.replica_max_size / 4).max(1))
    }

    pub(crate) fn credentials(&self) -> Option<&Provider> {
        self.credentials.as_ref()
    }

    pub(crate) fn on_connect(&self) -> Option<&OnConnect> {
        self.on_connect.as_ref()
    }

    pub(crate) fn transaction_pooler(&self) -> bool {
        self.transaction_pooler
    }

    #[cfg(feature = "rustls")]
    pub(crate) fn tls_config(&self) -> Option<&Arc<rustls::ClientConfig>> {
        self.tls_config.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build_error(builder: RoutedPoolBuilder) -> String {
        builder.into_config().unwrap_err().to_string()
    }

    #[test]
    fn settings_are_validated_in_one_place() {
        let builder = || RoutedPoolBuilder::new("postgres://h/db".to_owned());
        assert!(builder().into_config().is_ok());
        assert_eq!(
            build_error(builder().max_size(0)),
            "invalid setting max_size = 0: expected at least one connection"
        );
        assert!(
            build_error(builder().max_size(4).replica_max_size(0)).contains("replica_max_size")
        );
        assert!(
            build_error(builder().checkout_timeout(Duration::ZERO))
                .contains("primary_checkout_timeout")
        );
        assert!(
            build_error(builder().replica_checkout_timeout(Duration::ZERO))
                .contains("replica_checkout_timeout")
        );
        assert!(
            build_error(
                builder().health_check(HealthCheck::new(Duration::ZERO, Duration::from_secs(1)))
            )
            .contains("health_check.interval")
        );
        assert!(
            build_error(
                builder()
                    .replica("postgres://r/db")
                    .replica_with_weight("postgres://s/db", 0)
            )
            .contains("0 for replica 1")
        );
    }

    #[test]
    fn debug_output_redacts_every_url() {
        let builder = RoutedPoolBuilder::new("postgres://u:hunter2@h/db".to_owned())
            .replica("postgres://u:hunter3@r/db");
        let text = format!("{builder:?}");
        assert!(!text.contains("hunter"), "{text}");
        assert!(text.contains("u:***@r/db"), "{text}");
        assert_eq!(
            builder.replica_url_list()[0].as_str(),
            "postgres://u:***@r/db"
        );
    }
}
