//! What an operator sees over HTTP: the demo's `/metrics` (Prometheus) and `/status` (JSON and
//! the table), after requests whose servers said where they ran.

use std::net::SocketAddr;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use routing_tests::{ServerId, servers, unique};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};

/// One request on a fresh connection: the status code and the body as text.
async fn fetch(
    addr: SocketAddr,
    method: http::Method,
    path: &str,
    accept: &str,
    body: Option<Value>,
) -> (http::StatusCode, String) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let body = body.map_or_else(Bytes::new, |json| Bytes::from(json.to_string()));
    let request = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, addr.to_string())
        .header(http::header::ACCEPT, accept)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(body))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(bytes.to_vec()).unwrap())
}

/// The value of the Prometheus sample `series` (name and labels exactly as rendered).
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_serves_metrics_and_the_pool_status_over_http() {
    // The recorder before the pool: its series are registered at its first statement.
    let metrics = routing_demo::prometheus().expect("install the Prometheus recorder");
    let servers = servers().await;
    let pool = servers.pool(&unique("observe"));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = routing_demo::app_with_metrics(pool.clone(), metrics);
    tokio::spawn(async move { axum::serve(listener, app).await });

    let (code, created) = fetch(
        addr,
        http::Method::POST,
        "/products",
        "application/json",
        Some(json!({"name": unique("observe"), "price_cents": 300})),
    )
    .await;
    assert!(code.is_success(), "{code}: {created}");
    servers.wait_for_replicas().await;
    let (code, listed) = fetch(addr, http::Method::GET, "/products", "*/*", None).await;
    assert!(code.is_success(), "{code}: {listed}");
    let listed: Value = serde_json::from_str(&listed).unwrap();
    let ran_on = ServerId {
        port: listed["queries"][0]["port"].as_i64().unwrap() as i32,
        in_recovery: listed["queries"][0]["in_recovery"].as_bool().unwrap(),
    };
    let replica = servers
        .replica_index(&ran_on)
        .unwrap_or_else(|| panic!("the read ran on {ran_on:?}, not on a replica"));

    // The status as JSON: the replica that answered counts the read under its reason.
    let (code, status) = fetch(addr, http::Method::GET, "/status", "application/json", None).await;
    assert_eq!(code, http::StatusCode::OK, "{status}");
    let status: Value = serde_json::from_str(&status).unwrap();
    let listed_servers = status["servers"].as_array().unwrap();
    assert_eq!(listed_servers.len(), 1 + servers.replica_urls.len());
    assert_eq!(listed_servers[0]["role"], "primary");
    assert_eq!(listed_servers[0]["primary"], true);
    assert!(
        listed_servers[0]["statements"]["by_reason"]["write"]
            .as_u64()
            .is_some_and(|n| n >= 1),
        "{status}"
    );
    let shown = &listed_servers[1 + replica];
    assert_eq!(shown["server"], format!("replica {replica}"));
    assert_eq!(shown["healthy"], true);
    assert!(
        shown["statements"]["by_reason"]["scope_replica"]
            .as_u64()
            .is_some_and(|n| n >= 1),
        "{status}"
    );
    let max = pool.status().servers[1 + replica].max_size;
    assert_eq!(shown["connections"]["max"], max);
    assert!(
        shown["connections"]["open"].as_u64().unwrap() >= 1,
        "{status}"
    );
    assert_eq!(status["no_primary"], Value::Null);

    // The same status as the table.
    let (code, table) = fetch(addr, http::Method::GET, "/status", "text/plain", None).await;
    assert_eq!(code, http::StatusCode::OK);
    assert!(table.starts_with("server"), "{table}");
    assert!(table.contains(&format!("replica {replica}")), "{table}");

    // The metrics: the checkouts of the replica that answered, its connection gauges (refreshed
    // by the status request), and the router's own series.
    let (code, metrics) = fetch(addr, http::Method::GET, "/metrics", "text/plain", None).await;
    assert_eq!(code, http::StatusCode::OK);
    let pool_name = format!("db_client_connection_pool_name=\"replica {replica}\"");
    let checkouts = sample(
        &metrics,
        &format!("db_client_connection_wait_time_count{{{pool_name}}}"),
    );
    assert!(checkouts.is_some_and(|n| n >= 1.0), "{metrics}");
    for series in [
        format!("db_client_connection_count{{{pool_name},db_client_connection_state=\"idle\"}}"),
        format!("db_client_connection_count{{{pool_name},db_client_connection_state=\"used\"}}"),
        format!("db_client_connection_max{{{pool_name}}}"),
        format!("db_client_connection_pending_requests{{{pool_name}}}"),
        format!("db_client_connection_timeouts{{{pool_name}}}"),
        "db_client_connection_max{db_client_connection_pool_name=\"primary\"}".to_owned(),
    ] {
        assert!(
            sample(&metrics, &series).is_some(),
            "no {series} in {metrics}"
        );
    }
    let routed = sample(
        &metrics,
        &format!("routing_queries_total{{server=\"replica{replica}\",reason=\"scope_replica\"}}"),
    );
    assert!(routed.is_some_and(|n| n >= 1.0), "{metrics}");
}
