//! What an operator sees of the running demo: its `/status` and a few lines of its `/metrics`,
//! fetched over HTTP as `curl` would.

use std::net::SocketAddr;

use axum::http::StatusCode;

use crate::BoxError;
use crate::client::get_text;

/// The series whose lines are shown, by the start of their Prometheus name.
const SHOWN: &[&str] = &[
    "db_client_connection_count{",
    "db_client_connection_max{",
    "db_client_connection_wait_time_count{",
    "db_client_connection_timeouts{",
    "db_client_operation_duration_count{",
    "routing_queries_total{",
    "routing_server_healthy{",
];

/// Prints one line per server from `/status` (JSON), then the lines of `/metrics` of the series
/// in [`SHOWN`].
pub(crate) async fn show(addr: SocketAddr) -> Result<(), BoxError> {
    let (code, status) = get_text(addr, "/status", "application/json").await?;
    if code != StatusCode::OK {
        return Err(format!("GET /status answered {code}: {status}").into());
    }
    let status: serde_json::Value = serde_json::from_str(&status)?;
    println!("\ncurl -s http://{addr}/status (JSON), one line per server:");
    for server in status["servers"].as_array().into_iter().flatten() {
        let reasons = server["statements"]["by_reason"]
            .as_object()
            .map(|by| {
                by.iter()
                    .map(|(reason, count)| format!("{reason} {count}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        let connections = &server["connections"];
        println!(
            "  {:<10} {:<7} statements {:>3} ({reasons}); connections {} open, {} idle, {} max",
            server["server"].as_str().unwrap_or("?"),
            if server["healthy"] == true {
                "healthy"
            } else {
                "banned"
            },
            server["statements"]["total"],
            connections["open"],
            connections["idle"],
            connections["max"],
        );
    }
    let (code, metrics) = get_text(addr, "/metrics", "text/plain").await?;
    if code != StatusCode::OK {
        return Err(format!("GET /metrics answered {code}: {metrics}").into());
    }
    println!("\ncurl -s http://{addr}/metrics | grep -E '^(db_client|routing)_' (a few series):");
    let mut shown: Vec<&str> = metrics
        .lines()
        .filter(|line| SHOWN.iter().any(|start| line.starts_with(start)))
        .collect();
    shown.sort_unstable();
    for line in shown {
        println!("  {line}");
    }
    Ok(())
}
