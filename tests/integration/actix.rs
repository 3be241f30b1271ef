//! The actix-web middleware on an actix app: each request's statements, asked of the servers.

use std::net::SocketAddr;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::http::{Method, StatusCode};
use actix_web::test::{TestRequest, call_service, init_service, read_body};
use actix_web::{App, HttpResponse, HttpServer, web};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use futures_util::future::join_all;
use routing_core::web::actix::{Parts, ReadReplica, block};
use routing_core::{ReadReplicaControl, RoutedPool, should_use_read_replica, use_read_replica};
use routing_fixtures::products;
use routing_tests::{ServerId, Servers, inet_server_port, pg_is_in_recovery, servers, unique};

/// `GET /api/products`: the derive's default, reads from a replica.
#[derive(ReadReplicaControl)]
struct ListProducts;

/// `GET /api/orders`: must be fresh.
#[derive(ReadReplicaControl)]
#[read_replica(false)]
struct ListOrders;

/// `GET /api/stock`: a replica, unless the client asks for fresh data with `?fresh=1`.
struct Stock;

impl ReadReplicaControl for Stock {
    fn use_read_replica(request: &Parts) -> bool {
        !request
            .uri
            .query()
            .is_some_and(|query| query.split('&').any(|pair| pair == "fresh=1"))
    }
}

/// Asks the server that answers a read on `pool` who it is.
async fn ask(pool: &RoutedPool) -> Result<(bool, i32), String> {
    let mut conn = pool.get().await.map_err(|e| e.to_string())?;
    diesel::select((pg_is_in_recovery(), inet_server_port()))
        .get_result(&mut conn)
        .await
        .map_err(|e| e.to_string())
}

fn reply(answer: Result<(bool, i32), String>) -> HttpResponse {
    match answer {
        Ok(answer) => HttpResponse::Ok().json(answer),
        Err(error) => HttpResponse::InternalServerError().body(error),
    }
}

/// Any method: where its read ran.
async fn probe(pool: web::Data<RoutedPool>) -> HttpResponse {
    reply(ask(&pool).await)
}

/// `GET /api/orders/status`: a fn handler kept on the primary.
#[use_read_replica(false)]
async fn order_status(pool: web::Data<RoutedPool>) -> HttpResponse {
    reply(ask(&pool).await)
}

/// The read runs on actix-web's blocking thread pool, through `routing_core::web::actix::block`.
async fn in_block(pool: web::Data<RoutedPool>) -> HttpResponse {
    let pool = RoutedPool::clone(&pool);
    let runtime = tokio::runtime::Handle::current();
    match block(move || runtime.block_on(ask(&pool))).await {
        Ok(answer) => reply(answer),
        Err(error) => HttpResponse::InternalServerError().body(error.to_string()),
    }
}

/// The same through plain `actix_web::web::block`, which leaves the request's scope behind.
async fn in_plain_block(pool: web::Data<RoutedPool>) -> HttpResponse {
    let pool = RoutedPool::clone(&pool);
    let runtime = tokio::runtime::Handle::current();
    match web::block(move || runtime.block_on(ask(&pool))).await {
        Ok(answer) => reply(answer),
        Err(error) => HttpResponse::InternalServerError().body(error.to_string()),
    }
}

/// The test app: `/api` lets reads use a replica, its resources carry their handlers' policies
/// (the innermost wins), and `/bare` has no middleware at all.
fn app(
    pool: RoutedPool,
) -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    App::new()
        .app_data(web::Data::new(pool))
        .service(
            web::scope("/api")
                .service(
                    web::resource("/products")
                        .route(web::get().to(probe))
                        .route(web::head().to(probe))
                        .route(web::post().to(probe))
                        .route(web::put().to(probe))
                        .route(web::patch().to(probe))
                        .route(web::delete().to(probe))
                        .wrap(ReadReplica::for_handler::<ListProducts>()),
                )
                .service(
                    web::resource("/orders")
                        .route(web::get().to(probe))
                        .wrap(ReadReplica::for_handler::<ListOrders>()),
                )
                .service(
                    web::resource("/orders/status")
                        .route(web::get().to(order_status))
                        .wrap(ReadReplica::for_handler::<order_status>()),
                )
                .service(
                    web::resource("/stock")
                        .route(web::get().to(probe))
                        .wrap(ReadReplica::for_handler::<Stock>()),
                )
                .route("/catalog", web::get().to(probe))
                .route("/report", web::get().to(in_block))
                .route("/report/plain", web::get().to(in_plain_block))
                .wrap(ReadReplica::allow_replica()),
        )
        .route("/bare", web::get().to(probe))
        .route("/bare/report", web::get().to(in_block))
}

/// Where a request's read ran, from its reply.
fn ran_on(status: StatusCode, body: &[u8]) -> ServerId {
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(body));
    let (in_recovery, port): (bool, i32) = serde_json::from_slice(body).unwrap();
    ServerId { port, in_recovery }
}

/// Sends one request to `app` in process; returns where its read ran.
async fn call<S, B>(app: &S, method: Method, uri: &str) -> ServerId
where
    S: actix_web::dev::Service<
            actix_http::Request,
            Response = ServiceResponse<B>,
            Error = actix_web::Error,
        >,
    B: MessageBody,
{
    let request = TestRequest::default().method(method).uri(uri);
    let response = call_service(app, request.to_request()).await;
    let status = response.status();
    ran_on(status, &read_body(response).await)
}

/// Asserts that `id` is a replica (`true`) or the primary (`false`).
fn assert_ran_on(servers: &Servers, id: &ServerId, replica: bool, what: &str) {
    if replica {
        assert!(
            servers.is_replica(id),
            "{what} ran on {id:?}, not a replica"
        );
    } else {
        assert!(
            servers.is_primary(id),
            "{what} ran on {id:?}, not the primary"
        );
    }
}

/// Every kind of request of the test app, and whether its read may use a replica.
const REQUESTS: [(&str, &str, bool); 12] = [
    ("GET", "/api/products", true),
    ("GET", "/api/catalog", true),
    ("GET", "/api/orders", false),
    ("GET", "/api/orders/status", false),
    ("GET", "/api/stock", true),
    ("GET", "/api/stock?fresh=1", false),
    ("POST", "/api/products", false),
    ("PUT", "/api/products", false),
    ("DELETE", "/api/products", false),
    ("GET", "/api/report", true),
    ("GET", "/api/report/plain", false),
    ("GET", "/bare", false),
];

fn method(name: &str) -> Method {
    Method::from_bytes(name.as_bytes()).unwrap()
}

#[actix_web::test]
async fn actix_default_policy_reads_from_a_replica() {
    let servers = servers().await;
    let app = init_service(app(servers.pool(&unique("actix_default")))).await;
    for uri in ["/api/products", "/api/catalog", "/api/stock"] {
        let id = call(&app, Method::GET, uri).await;
        assert_ran_on(servers, &id, true, uri);
    }
    // In process the reply to a HEAD request keeps its body.
    let id = call(&app, Method::HEAD, "/api/products").await;
    assert_ran_on(servers, &id, true, "HEAD /api/products");
}

#[actix_web::test]
async fn actix_read_replica_false_type_and_fn_read_from_the_primary() {
    let servers = servers().await;
    let app = init_service(app(servers.pool(&unique("actix_false")))).await;
    // Both inside the /api scope, whose own middleware allows the replica: the innermost wins.
    for uri in ["/api/orders", "/api/orders/status"] {
        let id = call(&app, Method::GET, uri).await;
        assert_ran_on(servers, &id, false, uri);
    }
}

#[actix_web::test]
async fn actix_dynamic_policy_decides_per_request() {
    let servers = servers().await;
    let app = init_service(app(servers.pool(&unique("actix_dynamic")))).await;
    let id = call(&app, Method::GET, "/api/stock").await;
    assert_ran_on(servers, &id, true, "/api/stock");
    let id = call(&app, Method::GET, "/api/stock?fresh=1").await;
    assert_ran_on(servers, &id, false, "/api/stock?fresh=1");
    let id = call(&app, Method::GET, "/api/stock?page=2&fresh=1").await;
    assert_ran_on(servers, &id, false, "/api/stock?page=2&fresh=1");
}

#[actix_web::test]
async fn actix_every_other_method_goes_to_the_primary() {
    let servers = servers().await;
    let app = init_service(app(servers.pool(&unique("actix_methods")))).await;
    // ListProducts allows the replica, but these are not reads.
    for method in [Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
        let id = call(&app, method.clone(), "/api/products").await;
        assert_ran_on(servers, &id, false, &format!("{method} /api/products"));
    }
}

#[actix_web::test]
async fn actix_without_the_middleware_reads_go_to_the_primary() {
    let servers = servers().await;
    let app = init_service(app(servers.pool(&unique("actix_bare")))).await;
    let id = call(&app, Method::GET, "/bare").await;
    assert_ran_on(servers, &id, false, "/bare");
}

#[actix_web::test]
async fn actix_block_runs_blocking_work_in_the_request_scope() {
    let servers = servers().await;
    let app = init_service(app(servers.pool(&unique("actix_block")))).await;
    let id = call(&app, Method::GET, "/api/report").await;
    assert_ran_on(servers, &id, true, "block(..) in a replica scope");
    // Plain web::block leaves the scope behind: the primary, outside every scope.
    let id = call(&app, Method::GET, "/api/report/plain").await;
    assert_ran_on(servers, &id, false, "web::block(..) in a replica scope");
    // Without a middleware there is no scope to carry.
    let id = call(&app, Method::GET, "/bare/report").await;
    assert_ran_on(servers, &id, false, "block(..) without a middleware");
}

#[actix_web::test]
async fn actix_scopes_end_with_their_request_on_a_single_threaded_worker() {
    let servers = servers().await;
    let app = init_service(app(servers.pool(&unique("actix_no_leak")))).await;
    // One thread serves every request in turn, as an actix worker does.
    for _ in 0..3 {
        let id = call(&app, Method::GET, "/api/products").await;
        assert_ran_on(servers, &id, true, "/api/products");
        assert!(!should_use_read_replica(), "the scope outlived its request");
        let id = call(&app, Method::GET, "/bare").await;
        assert_ran_on(servers, &id, false, "/bare after /api/products");
        let id = call(&app, Method::GET, "/api/orders").await;
        assert_ran_on(servers, &id, false, "/api/orders after /bare");
    }
    // And interleaved on that one thread: each request's statements follow its own scope.
    let calls = REQUESTS
        .iter()
        .cycle()
        .take(3 * REQUESTS.len())
        .map(|&(name, uri, replica)| {
            let app = &app;
            async move { (name, uri, replica, call(app, method(name), uri).await) }
        });
    for (name, uri, replica, id) in join_all(calls).await {
        assert_ran_on(servers, &id, replica, &format!("{name} {uri}"));
    }
    assert!(!should_use_read_replica());
}

#[actix_web::test]
async fn actix_concurrent_requests_over_loopback_follow_their_own_policies() {
    let servers = servers().await;
    let pool = servers.pool(&unique("actix_http"));
    // One worker: every request is served by the same single-threaded arbiter, interleaved.
    let server = HttpServer::new(move || app(pool.clone()))
        .workers(1)
        .disable_signals()
        .bind(("127.0.0.1", 0))
        .unwrap();
    let addr = server.addrs()[0];
    let server = server.run();
    let handle = server.handle();
    let running = actix_web::rt::spawn(server);
    let calls = (0..60).map(|i| {
        let (name, uri, replica) = REQUESTS[i % REQUESTS.len()];
        async move { (i, name, uri, replica, http_call(addr, name, uri).await) }
    });
    for (i, name, uri, replica, (status, body)) in join_all(calls).await {
        let id = ran_on(status, &body);
        assert_ran_on(servers, &id, replica, &format!("request {i}: {name} {uri}"));
    }
    handle.stop(true).await;
    running.await.unwrap().unwrap();
}

/// One HTTP/1 request on a fresh loopback connection: the status and the body.
async fn http_call(addr: SocketAddr, method: &str, path: &str) -> (StatusCode, Vec<u8>) {
    use http_body_util::{BodyExt, Empty};
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    let driver = tokio::spawn(connection);
    let request = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, addr.to_string())
        .body(Empty::<hyper::body::Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = StatusCode::from_u16(response.status().as_u16()).unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    drop(sender);
    driver.await.unwrap().unwrap();
    (status, body.to_vec())
}

/// `POST /products`: inserts a product; replies with its id.
async fn create_product(pool: web::Data<RoutedPool>) -> HttpResponse {
    let created = async {
        let mut conn = pool.get().await.map_err(|e| e.to_string())?;
        diesel::insert_into(products::table)
            .values((products::name.eq("fresh"), products::price_cents.eq(1_i64)))
            .returning(products::id)
            .get_result::<i64>(&mut conn)
            .await
            .map_err(|e| e.to_string())
    };
    match created.await {
        Ok(id) => HttpResponse::Ok().json(id),
        Err(error) => HttpResponse::InternalServerError().body(error),
    }
}

/// `GET /products/{id}`: where the product was found, or 404 where it was not.
async fn find_product(pool: web::Data<RoutedPool>, id: web::Path<i64>) -> HttpResponse {
    let found = async {
        let mut conn = pool.get().await.map_err(|e| e.to_string())?;
        products::table
            .find(id.into_inner())
            .select((pg_is_in_recovery(), inet_server_port()))
            .first::<(bool, i32)>(&mut conn)
            .await
            .optional()
            .map_err(|e| e.to_string())
    };
    match found.await {
        Ok(Some(answer)) => HttpResponse::Ok().json(answer),
        Ok(None) => HttpResponse::NotFound().finish(),
        Err(error) => HttpResponse::InternalServerError().body(error),
    }
}

#[actix_web::test]
async fn actix_causal_cookie_lets_the_next_request_read_its_own_write() {
    let Some(cluster) = crate::support::private_cluster("actix_causal_cookie").await else {
        return;
    };
    let pool = RoutedPool::builder(cluster.primary_url())
        .replicas(cluster.replica_urls())
        .build()
        .unwrap();
    let app = init_service(
        App::new()
            .app_data(web::Data::new(pool))
            .route("/products", web::post().to(create_product))
            .route("/products/{id}", web::get().to(find_product))
            .wrap(ReadReplica::allow_replica().causal_cookie("read_after")),
    )
    .await;
    for i in 0..cluster.replica_count() {
        cluster.pause_replay(i).await.unwrap();
    }

    let response = call_service(&app, TestRequest::post().uri("/products").to_request()).await;
    assert_eq!(response.status(), StatusCode::OK);
    let cookie = response
        .headers()
        .get("set-cookie")
        .expect("a POST that wrote sets the causal cookie")
        .to_str()
        .unwrap()
        .to_owned();
    assert!(cookie.starts_with("read_after="), "{cookie}");
    assert!(cookie.contains("Max-Age=60; Path=/; HttpOnly"), "{cookie}");
    let id: i64 = serde_json::from_slice(&read_body(response).await).unwrap();
    let uri = format!("/products/{id}");

    // Without the cookie a lagging replica answers: the new product is not there yet.
    let response = call_service(&app, TestRequest::get().uri(&uri).to_request()).await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert!(
        response.headers().get("set-cookie").is_none(),
        "a read sets no token"
    );

    // A garbage cookie is ignored like no cookie.
    let garbage = TestRequest::get()
        .uri(&uri)
        .insert_header(("cookie", "read_after=not-a-token"));
    let response = call_service(&app, garbage.to_request()).await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);

    // With it (a browser redirected after the POST), the read sees the write.
    let token = cookie
        .trim_start_matches("read_after=")
        .split(';')
        .next()
        .unwrap();
    let request = TestRequest::get()
        .uri(&uri)
        .insert_header(("cookie", format!("theme=dark; read_after={token}")));
    let response = call_service(&app, request.to_request()).await;
    let status = response.status();
    let id = ran_on(status, &read_body(response).await);
    assert_eq!(id.port, i32::from(cluster.primary_port()), "{id:?}");
    for i in 0..cluster.replica_count() {
        cluster.resume_replay(i).await.unwrap();
    }
}
