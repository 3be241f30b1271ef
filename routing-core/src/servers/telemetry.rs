//! The names of every metric the router's servers record, and the handles of one server's pool
//! metrics.
//!
//! Two families, side by side: the router's own `routing_*` series, and the metrics of the
//! OpenTelemetry database-client semantic conventions: `db.client.operation.duration`, and the
//! connection-pool metrics `db.client.connection.*` with the attributes
//! `db.client.connection.pool.name` and `db.client.connection.state`.
//! Exporters spell the names their own way: Prometheus's turns `db.client.connection.count`
//! into `db_client_connection_count`.

use std::sync::{Arc, Once, OnceLock};
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Unit};

use crate::error::Role;

/// Statements sent to a server, by reason (`server`, `reason`).
pub(crate) const QUERIES: &str = "routing_queries_total";
/// Times a server was taken out of rotation (`server`).
pub(crate) const BANS: &str = "routing_bans_total";
/// 1 while a server is in rotation, 0 while it is banned (`server`).
pub(crate) const HEALTHY: &str = "routing_server_healthy";
/// A replica's lag behind the primary in bytes of WAL (`server`).
pub(crate) const LAG_BYTES: &str = "routing_replica_lag_bytes";
/// A replica's lag behind the primary in seconds (`server`).
pub(crate) const LAG_SECONDS: &str = "routing_replica_lag_seconds";
/// Causal tokens ignored as forged.
pub(crate) const FORGED_TOKENS: &str = "routing_forged_tokens_total";

/// How long statements took, in seconds (a histogram), by server, role and outcome.
pub(crate) const OPERATION_DURATION: &str = "db.client.operation.duration";
/// Connections of a pool, by state (`db.client.connection.state`: `idle` or `used`).
pub(crate) const CONNECTION_COUNT: &str = "db.client.connection.count";
/// The most connections a pool may open.
pub(crate) const CONNECTION_MAX: &str = "db.client.connection.max";
/// Checkouts waiting for a connection of a pool.
pub(crate) const CONNECTION_PENDING_REQUESTS: &str = "db.client.connection.pending_requests";
/// How long a checkout took to obtain a connection, in seconds (a histogram).
pub(crate) const CONNECTION_WAIT_TIME: &str = "db.client.connection.wait_time";
/// Checkouts that timed out: waiting for a free connection, opening one, or recycling one.
pub(crate) const CONNECTION_TIMEOUTS: &str = "db.client.connection.timeouts";

/// The attribute naming a pool: `primary`, `replica N` or `node N`.
pub(crate) const POOL_NAME: &str = "db.client.connection.pool.name";
/// The attribute of a connection's state in [`CONNECTION_COUNT`].
pub(crate) const STATE: &str = "db.client.connection.state";

/// Whether a metrics recorder is installed for the calling thread (a local one, or the global
/// one). The metrics facade runs without one on its no-op recorder, which has no state: a
/// recorder of size zero is taken for it.
pub(crate) fn recorder_installed() -> bool {
    metrics::with_recorder(|recorder| std::mem::size_of_val(recorder) != 0)
}

/// Describes every metric to the installed recorder (units and help texts), once per process:
/// called when a pool's metrics are first registered.
pub(crate) fn describe() {
    static DESCRIBED: Once = Once::new();
    DESCRIBED.call_once(|| {
        metrics::describe_counter!(QUERIES, "Statements sent to a server, by routing reason.");
        metrics::describe_counter!(BANS, "Times a server was taken out of rotation.");
        metrics::describe_gauge!(HEALTHY, "1 while a server is in rotation, 0 while banned.");
        metrics::describe_gauge!(
            LAG_BYTES,
            Unit::Bytes,
            "A replica's lag behind the primary in bytes of WAL."
        );
        metrics::describe_gauge!(
            LAG_SECONDS,
            Unit::Seconds,
            "A replica's lag behind the primary."
        );
        metrics::describe_counter!(FORGED_TOKENS, "Causal tokens ignored as forged.");
        metrics::describe_histogram!(
            OPERATION_DURATION,
            Unit::Seconds,
            "Duration of database client operations."
        );
        metrics::describe_gauge!(
            CONNECTION_COUNT,
            "The connections of a pool that are currently in the state described by the state \
             attribute."
        );
        metrics::describe_gauge!(
            CONNECTION_MAX,
            "The maximum number of open connections a pool allows."
        );
        metrics::describe_gauge!(
            CONNECTION_PENDING_REQUESTS,
            "The number of current pending requests for an open connection."
        );
        metrics::describe_histogram!(
            CONNECTION_WAIT_TIME,
            Unit::Seconds,
            "The time it took to obtain an open connection from the pool."
        );
        metrics::describe_counter!(
            CONNECTION_TIMEOUTS,
            "The number of connection timeouts that have occurred trying to obtain a connection \
             from the pool."
        );
    });
}

/// A pool's name in the conventions' attribute: its role as `Display` spells it.
pub(crate) fn pool_name(role: Role) -> Arc<str> {
    Arc::from(role.to_string())
}

/// The handles of one server's pool metrics, registered with the recorder on first use (so that
/// a recorder installed after the pool was built, but before its first statement, sees them).
#[derive(Debug)]
pub(crate) struct PoolMetrics {
    name: Arc<str>,
    checkout: OnceLock<CheckoutMetrics>,
    gauges: OnceLock<PoolGauges>,
}

#[derive(Debug)]
struct CheckoutMetrics {
    wait_time: Histogram,
    timeouts: Counter,
}

#[derive(Debug)]
struct PoolGauges {
    idle: Gauge,
    used: Gauge,
    max: Gauge,
    pending: Gauge,
}

impl PoolMetrics {
    /// The metrics of the pool of the server in `role`.
    pub(crate) fn new(role: Role) -> Self {
        PoolMetrics {
            name: pool_name(role),
            checkout: OnceLock::new(),
            gauges: OnceLock::new(),
        }
    }

    fn checkout(&self) -> &CheckoutMetrics {
        self.checkout.get_or_init(|| {
            describe();
            let name = Arc::clone(&self.name);
            CheckoutMetrics {
                wait_time: metrics::histogram!(CONNECTION_WAIT_TIME, POOL_NAME => Arc::clone(&name)),
                timeouts: metrics::counter!(CONNECTION_TIMEOUTS, POOL_NAME => name),
            }
        })
    }

    /// Records a checkout that obtained a connection after `waited`.
    pub(crate) fn checked_out(&self, waited: Duration) {
        self.checkout().wait_time.record(waited.as_secs_f64());
    }

    /// Counts a checkout that timed out.
    pub(crate) fn timed_out(&self) {
        self.checkout().timeouts.increment(1);
    }

    /// Sets the pool's gauges from deadpool's `status`.
    pub(crate) fn refresh(&self, status: &deadpool::Status) {
        let gauges = self.gauges.get_or_init(|| {
            describe();
            let name = &self.name;
            PoolGauges {
                idle: metrics::gauge!(
                    CONNECTION_COUNT,
                    POOL_NAME => Arc::clone(name),
                    STATE => "idle"
                ),
                used: metrics::gauge!(
                    CONNECTION_COUNT,
                    POOL_NAME => Arc::clone(name),
                    STATE => "used"
                ),
                max: metrics::gauge!(CONNECTION_MAX, POOL_NAME => Arc::clone(name)),
                pending: metrics::gauge!(CONNECTION_PENDING_REQUESTS, POOL_NAME => Arc::clone(name)),
            }
        });
        gauges.idle.set(status.available as f64);
        gauges
            .used
            .set(status.size.saturating_sub(status.available) as f64);
        gauges.max.set(status.max_size as f64);
        gauges.pending.set(status.waiting as f64);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    use super::*;

    #[test]
    fn a_pools_metrics_follow_the_conventions() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || {
            let pool = PoolMetrics::new(Role::Replica(1));
            pool.refresh(&deadpool::Status {
                max_size: 8,
                size: 3,
                available: 1,
                waiting: 2,
            });
            pool.checked_out(Duration::from_millis(2));
            pool.checked_out(Duration::from_millis(4));
            pool.timed_out();
        });
        let recorded: HashMap<(String, Vec<(String, String)>), DebugValue> = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .map(|(key, _, _, value)| {
                let (_, key) = key.into_parts();
                let labels = key
                    .labels()
                    .map(|l| (l.key().to_owned(), l.value().to_owned()))
                    .collect();
                ((key.name().to_owned(), labels), value)
            })
            .collect();
        let pool = || (POOL_NAME.to_owned(), "replica 1".to_owned());
        let state = |s: &str| (STATE.to_owned(), s.to_owned());
        let value = |name: &str, labels: Vec<(String, String)>| {
            recorded
                .get(&(name.to_owned(), labels))
                .unwrap_or_else(|| panic!("no {name} in {recorded:?}"))
        };
        let gauge = |n: f64| DebugValue::Gauge(n.into());
        assert_eq!(
            value(CONNECTION_COUNT, vec![pool(), state("idle")]),
            &gauge(1.0)
        );
        assert_eq!(
            value(CONNECTION_COUNT, vec![pool(), state("used")]),
            &gauge(2.0)
        );
        assert_eq!(value(CONNECTION_MAX, vec![pool()]), &gauge(8.0));
        assert_eq!(
            value(CONNECTION_PENDING_REQUESTS, vec![pool()]),
            &gauge(2.0)
        );
        assert_eq!(
            value(CONNECTION_TIMEOUTS, vec![pool()]),
            &DebugValue::Counter(1)
        );
        assert_eq!(
            value(CONNECTION_WAIT_TIME, vec![pool()]),
            &DebugValue::Histogram(vec![0.002.into(), 0.004.into()])
        );
    }
}
