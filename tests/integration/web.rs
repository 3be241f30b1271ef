//! The axum layer on the demo app: each request's queries, asked of the servers.

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{Method, Request, StatusCode};
use axum::routing::get;
use diesel_async::RunQueryDsl;
use routing_core::{ReadReplicaLayer, RoutedPool};
use routing_demo::{QueryRecord, Reply};
use routing_tests::{ServerId, Servers, inet_server_port, pg_is_in_recovery, servers, unique};
use serde_json::{Value, json};
use tower::ServiceExt;

/// Sends one request to `app` in process and returns the status and the reply.
async fn call(app: &Router, method: Method, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
    let body = body.map_or_else(Body::empty, |json| Body::from(json.to_string()));
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(body)
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    let json = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    (status, json)
}

/// The servers that answered the queries of a reply.
fn answered_by(reply: &Value) -> Vec<ServerId> {
    let reply: Reply<Value> = serde_json::from_value(reply.clone()).unwrap();
    assert!(!reply.queries.is_empty(), "{reply:?}");
    reply
        .queries
        .iter()
        .map(
            |QueryRecord {
                 in_recovery,
                 port,
                 label,
             }| ServerId {
                in_recovery: in_recovery.unwrap_or_else(|| panic!("{label}: no row to ask")),
                port: port.unwrap_or_else(|| panic!("{label}: no row to ask")),
            },
        )
        .collect()
}

fn all_replica(servers: &Servers, reply: &Value) {
    for id in answered_by(reply) {
        assert!(servers.is_replica(&id), "{id:?} in {reply}");
    }
}

fn all_primary(servers: &Servers, reply: &Value) {
    for id in answered_by(reply) {
        assert!(servers.is_primary(&id), "{id:?} in {reply}");
    }
}

/// The demo app over the test servers, with a product and an order that the replicas have.
async fn demo() -> (&'static Servers, Router, i64, i64) {
    let servers = servers().await;
    let app = routing_demo::app(servers.pool(&unique("web")));
    let (status, product) = call(
        &app,
        Method::POST,
        "/products",
        Some(json!({"name": unique("web"), "price_cents": 700})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{product}");
    all_primary(servers, &product);
    let id = product["data"]["id"].as_i64().unwrap();
    let (status, placed) = call(
        &app,
        Method::POST,
        "/orders",
        Some(json!({"product_id": id, "quantity": 1})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{placed}");
    // The insert and the read-back of the same request, both on the primary.
    assert_eq!(answered_by(&placed).len(), 2);
    all_primary(servers, &placed);
    let order = placed["data"]["order"]["id"].as_i64().unwrap();
    servers.wait_for_replicas().await;
    (servers, app, id, order)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_handler_with_the_default_policy_reads_from_a_replica() {
    let (servers, app, _, _) = demo().await;
    let (status, reply) = call(&app, Method::GET, "/products", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(reply["handler"], "ListProducts");
    all_replica(servers, &reply);
    let (_, report) = call(&app, Method::GET, "/reports/sales", None).await;
    assert_eq!(answered_by(&report).len(), 2);
    all_replica(servers, &report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_with_read_replica_false_reads_from_the_primary() {
    let (servers, app, _, order) = demo().await;
    let (_, orders) = call(&app, Method::GET, "/orders", None).await;
    assert_eq!(orders["handler"], "ListOrders");
    all_primary(servers, &orders);
    // The fn handler with #[use_read_replica(false)].
    let (status, state) = call(&app, Method::GET, &format!("/orders/{order}/status"), None).await;
    assert_eq!(status, StatusCode::OK, "{state}");
    assert_eq!(state["data"], "pending");
    all_primary(servers, &state);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamic_policy_decides_per_request() {
    let (servers, app, id, _) = demo().await;
    let (_, stale_ok) = call(&app, Method::GET, &format!("/products/{id}"), None).await;
    all_replica(servers, &stale_ok);
    let (_, fresh) = call(&app, Method::GET, &format!("/products/{id}?fresh=1"), None).await;
    all_primary(servers, &fresh);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_other_method_goes_to_the_primary_whatever_the_handler_says() {
    let (servers, app, id, order) = demo().await;
    // SalesReport allows the replica, but this is a POST.
    let (status, report) = call(&app, Method::POST, "/reports/sales", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(answered_by(&report).len(), 2);
    all_primary(servers, &report);
    let (_, put) = call(
        &app,
        Method::PUT,
        &format!("/products/{id}"),
        Some(json!({"price_cents": 800})),
    )
    .await;
    all_primary(servers, &put);
    let (_, deleted) = call(&app, Method::DELETE, &format!("/orders/{order}"), None).await;
    assert_eq!(deleted["data"]["status"], "cancelled");
    all_primary(servers, &deleted);
}

async fn probe(State(pool): State<RoutedPool>) -> axum::Json<(bool, i32)> {
    let mut conn = pool.get().await.unwrap();
    let answer = diesel::select((pg_is_in_recovery(), inet_server_port()))
        .get_result(&mut conn)
        .await
        .unwrap();
    axum::Json(answer)
}

fn probe_id(reply: &Value) -> ServerId {
    let (in_recovery, port): (bool, i32) = serde_json::from_value(reply.clone()).unwrap();
    ServerId { port, in_recovery }
}

#[tokio::test(flavor = "current_thread")]
async fn without_a_layer_reads_go_to_the_primary_and_scopes_end_with_their_request() {
    let servers = servers().await;
    let pool = servers.pool(&unique("no_layer"));
    let app = Router::new()
        .route("/bare", get(probe))
        .route(
            "/scoped",
            get(probe).layer(ReadReplicaLayer::allow_replica()),
        )
        .with_state(pool);
    // One worker thread: the same worker serves each request in turn.
    for _ in 0..3 {
        let (_, scoped) = call(&app, Method::GET, "/scoped", None).await;
        assert!(servers.is_replica(&probe_id(&scoped)), "{scoped}");
        let (_, bare) = call(&app, Method::GET, "/bare", None).await;
        assert!(servers.is_primary(&probe_id(&bare)), "{bare}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closure_policy_decides_per_request() {
    let servers = servers().await;
    let pool = servers.pool(&unique("closure_policy"));
    let policy = ReadReplicaLayer::decide(|request| {
        request
            .headers
            .get("x-consistency")
            .is_none_or(|value| value != "strong")
    });
    let app = Router::new()
        .route("/probe", get(probe).post(probe))
        .layer(policy)
        .with_state(pool);
    let (_, reply) = call(&app, Method::GET, "/probe", None).await;
    assert!(servers.is_replica(&probe_id(&reply)), "{reply}");
    let request = Request::builder()
        .uri("/probe")
        .header("x-consistency", "strong")
        .body(Body::empty())
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    let reply: Value = serde_json::from_slice(&bytes).unwrap();
    assert!(servers.is_primary(&probe_id(&reply)), "{reply}");
    let (_, reply) = call(&app, Method::POST, "/probe", None).await;
    assert!(servers.is_primary(&probe_id(&reply)), "POST: {reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_with_different_policies_over_loopback() {
    let (servers, app, id, _) = demo().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let requests = [
        (Method::GET, "/products".to_owned(), true),
        (Method::GET, "/orders".to_owned(), false),
        (Method::POST, "/reports/sales".to_owned(), false),
        (Method::GET, "/reports/sales".to_owned(), true),
        (Method::GET, format!("/products/{id}?fresh=1"), false),
        (Method::GET, format!("/products/{id}"), true),
    ];
    let mut tasks = Vec::new();
    for round in 0..10 {
        for (method, path, replica) in requests.clone() {
            tasks.push(tokio::spawn(async move {
                let reply = http_call(addr, method.clone(), &path).await;
                (round, method, path, replica, reply)
            }));
        }
    }
    for task in tasks {
        let (round, method, path, replica, reply) = task.await.unwrap();
        for id in answered_by(&reply) {
            assert_eq!(
                servers.is_replica(&id),
                replica,
                "round {round}: {method} {path} ran on {id:?}"
            );
        }
    }
    server.abort();
}

/// One HTTP/1 request over a loopback connection.
async fn http_call(addr: std::net::SocketAddr, method: Method, path: &str) -> Value {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let text = String::from_utf8(response).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}\n{body}");
    serde_json::from_str(body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_a_clear_error_not_a_crash() {
    let (_, app, _, _) = demo().await;
    let (status, reply) = call(
        &app,
        Method::POST,
        "/orders",
        Some(json!({"product_id": -1, "quantity": 1})),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{reply}");
    assert!(
        reply["error"].as_str().unwrap().contains("foreign key"),
        "{reply}"
    );
    let (status, _) = call(&app, Method::GET, "/products/999999999", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn causal_cookie_lets_the_next_request_read_its_own_write() {
    let Some(cluster) = crate::support::private_cluster("causal_cookie").await else {
        return;
    };
    let pool = RoutedPool::builder(cluster.primary_url())
        .replicas(cluster.replica_urls())
        .build()
        .unwrap();
    let app = routing_demo::app(pool);
    for i in 0..cluster.replica_count() {
        cluster.pause_replay(i).await.unwrap();
    }
    let request = Request::builder()
        .method(Method::POST)
        .uri("/products")
        .header("content-type", "application/json")
        .body(Body::from(
            json!({"name": "fresh", "price_cents": 1}).to_string(),
        ))
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let cookie = response.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(cookie.starts_with("read_after="), "{cookie}");
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    let created: Value = serde_json::from_slice(&bytes).unwrap();
    let id = created["data"]["id"].as_i64().unwrap();

    // Without the cookie a lagging replica answers: the new product is not there yet.
    let (status, _) = call(&app, Method::GET, &format!("/products/{id}"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // With it (a browser redirected after the POST), the read sees the write.
    let token = cookie
        .trim_start_matches("read_after=")
        .split(';')
        .next()
        .unwrap();
    let request = Request::builder()
        .uri(format!("/products/{id}"))
        .header("cookie", format!("theme=dark; read_after={token}"))
        .body(Body::empty())
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    let reply: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(reply["data"]["name"], "fresh");
    let id = answered_by(&reply)[0].clone();
    assert_eq!(id.port, i32::from(cluster.primary_port()), "{reply}");
    for i in 0..cluster.replica_count() {
        cluster.resume_replay(i).await.unwrap();
    }
}
