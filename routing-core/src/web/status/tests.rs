//! The status endpoint over HTTP, on a pool whose servers are never reached (the status asks
//! none of them).

use std::net::SocketAddr;

use http::header::{ACCEPT, ALLOW, CONTENT_TYPE};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use tokio::net::{TcpListener, TcpStream};

use super::*;

fn pool() -> RoutedPool {
    RoutedPool::builder("postgres://app:secret@127.0.0.1:1/app")
        .replica("postgres://app:secret@127.0.0.1:2/app")
        .replica_with_weight("postgres://app:secret@127.0.0.1:3/app", 3)
        .max_size(7)
        .build()
        .unwrap()
}

/// Serves `StatusService` on a loopback port for the rest of the test.
async fn serve() -> SocketAddr {
    let app = axum::Router::new().route_service("/status", StatusService::new(pool()));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// Sends one request; the status, the content type and the body.
async fn send(
    addr: SocketAddr,
    method: Method,
    accept: Option<&str>,
) -> (StatusCode, String, String) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let mut request = Request::builder()
        .method(method)
        .uri("/status")
        .header(http::header::HOST, addr.to_string());
    if let Some(accept) = accept {
        request = request.header(ACCEPT, accept);
    }
    let response = sender
        .send_request(request.body(Empty::<Bytes>::new()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let content_type = response
        .headers()
        .get(CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    if status == StatusCode::METHOD_NOT_ALLOWED {
        assert_eq!(response.headers()[ALLOW], "GET, HEAD");
    }
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        content_type,
        String::from_utf8(body.to_vec()).unwrap(),
    )
}

#[tokio::test]
async fn get_serves_every_server_as_json() {
    let addr = serve().await;
    let (status, content_type, body) = send(addr, Method::GET, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(content_type, "application/json");
    assert!(!body.contains("secret"), "a password in {body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    let servers = json["servers"].as_array().unwrap();
    assert_eq!(servers.len(), 3);
    assert_eq!(servers[0]["server"], "primary");
    assert_eq!(servers[0]["role"], "primary");
    assert_eq!(servers[0]["index"], serde_json::Value::Null);
    assert_eq!(servers[0]["primary"], true);
    assert_eq!(servers[2]["server"], "replica 1");
    assert_eq!(servers[2]["role"], "replica");
    assert_eq!(servers[2]["index"], 1);
    assert_eq!(servers[2]["primary"], false);
    assert_eq!(servers[2]["weight"], 3);
    assert_eq!(servers[2]["healthy"], true);
    assert_eq!(servers[2]["ban_reason"], serde_json::Value::Null);
    assert_eq!(servers[2]["url"], "postgres://app:***@127.0.0.1:3/app");
    // Nothing probed yet: lag and latency unknown.
    assert_eq!(
        servers[1]["lag"],
        serde_json::json!({"seconds": null, "bytes": null})
    );
    assert_eq!(servers[1]["probe_latency_seconds"], serde_json::Value::Null);
    assert_eq!(
        servers[1]["connections"],
        serde_json::json!({"open": 0, "idle": 0, "used": 0, "waiting": 0, "max": 7})
    );
    assert_eq!(
        servers[1]["statements"],
        serde_json::json!({"total": 0, "by_reason": {}})
    );
    assert_eq!(servers[1]["failures"], 0);
    assert_eq!(servers[1]["bans"], 0);
    assert_eq!(json["no_primary"], serde_json::Value::Null);
    assert_eq!(json["forged_tokens"], 0);
    assert_eq!(json["learned_statements"], 0);
}

#[tokio::test]
async fn a_client_that_prefers_text_gets_the_table() {
    let addr = serve().await;
    for accept in [
        "text/plain",
        "text/*",
        "application/json;q=0.5, text/plain",
        "text/plain, */*;q=0.1",
    ] {
        let (status, content_type, body) = send(addr, Method::GET, Some(accept)).await;
        assert_eq!(status, StatusCode::OK, "{accept}");
        assert_eq!(content_type, "text/plain; charset=utf-8", "{accept}");
        assert_eq!(body, pool().status().to_string(), "{accept}");
        assert!(body.starts_with("server"), "{body}");
        assert!(body.contains("replica 1"), "{body}");
    }
}

#[tokio::test]
async fn json_wins_a_tie_and_a_wildcard() {
    let addr = serve().await;
    for accept in [
        "*/*",
        "application/json, text/plain",
        "text/plain;q=0.9, application/*",
        "application/json;q=bad, text/plain;q=0.2, */*;q=0.3",
    ] {
        let (status, content_type, _) = send(addr, Method::GET, Some(accept)).await;
        assert_eq!(status, StatusCode::OK, "{accept}");
        assert_eq!(content_type, "application/json", "{accept}");
    }
}

#[tokio::test]
async fn head_has_the_headers_and_no_body() {
    let addr = serve().await;
    let (status, content_type, body) = send(addr, Method::HEAD, Some("text/plain")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(content_type, "text/plain; charset=utf-8");
    assert!(body.is_empty());
}

#[tokio::test]
async fn other_methods_and_formats_are_refused() {
    let addr = serve().await;
    let (status, _, _) = send(addr, Method::POST, None).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    for accept in [
        "image/png",
        "text/plain;q=0, application/json;q=0",
        "text/html",
    ] {
        let (status, _, body) = send(addr, Method::GET, Some(accept)).await;
        assert_eq!(status, StatusCode::NOT_ACCEPTABLE, "{accept}");
        assert!(body.contains("application/json or text/plain"), "{body}");
    }
}

#[test]
fn malformed_accept_headers_do_not_panic() {
    for accept in [
        "",
        ",,,",
        "text",
        "/",
        "text/plain;q",
        "text/plain;q=2",
        ";;;q=1",
    ] {
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_str(accept).unwrap());
        let _ = negotiate(&headers);
    }
    let mut headers = HeaderMap::new();
    headers.insert(ACCEPT, HeaderValue::from_bytes(b"text/plain\xff").unwrap());
    assert_eq!(negotiate(&headers), Some(Format::Json));
}
