//! What the demo shows of the router besides its pages: the pool's status and the process's
//! metrics in Prometheus's text format.

use std::sync::OnceLock;

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use routing_core::RoutedPool;

/// Buckets of `db.client.connection.wait_time`, in seconds: a pooled connection is handed out
/// in microseconds, a new one in milliseconds, and a checkout that waits for a busy pool takes
/// up to its timeout.
const WAIT_TIME_BUCKETS: &[f64] = &[
    0.000_01, 0.000_05, 0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0,
];

/// Buckets of `db.client.operation.duration`, in seconds: the conventions' advice, with finer
/// steps below a millisecond, where a point read on loopback lands.
const OPERATION_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0,
];

/// The process's Prometheus recorder, installed on first call (as the global `metrics`
/// recorder). Install it before the pool's first statement: series are registered then.
///
/// # Errors
///
/// The buckets are invalid, or another recorder was installed first.
pub fn prometheus() -> Result<PrometheusHandle, BuildError> {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("db.client.connection.wait_time".to_owned()),
            WAIT_TIME_BUCKETS,
        )?
        .set_buckets_for_metric(
            Matcher::Full("db.client.operation.duration".to_owned()),
            OPERATION_BUCKETS,
        )?
        .install_recorder()?;
    Ok(HANDLE.get_or_init(|| handle).clone())
}

/// The demo's app with the metrics at `/metrics` (Prometheus's text format, from `metrics`);
/// the pool's status is at `/status` as in [`app`](crate::app).
pub fn app_with_metrics(pool: RoutedPool, metrics: PrometheusHandle) -> Router {
    crate::app(pool).route(
        "/metrics",
        get(move || {
            let text = metrics.render();
            async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    text,
                )
                    .into_response()
            }
        }),
    )
}
