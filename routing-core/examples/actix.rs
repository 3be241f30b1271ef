//! An actix-web app behind `routing_core::web::actix::ReadReplica`, on a throwaway cluster.
//!
//! Starts a primary with two streaming replicas (`routing-cluster`), migrates the primary with
//! `routing_core::Migrator`, serves a small actix app on a loopback port, sends it a few requests
//! and prints where each request's statements ran, as the servers answered
//! (`pg_is_in_recovery()`, `inet_server_port()`).
//!
//! ```sh
//! cargo run -p routing-core --example actix --features actix
//! ```
//!
//! It needs the PostgreSQL server programs, as the workspace's tests do.

use std::net::SocketAddr;
use std::process::ExitCode;

use actix_web::{App, HttpResponse, HttpServer, web};
use diesel::dsl::count_star;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use routing_cluster::LocalCluster;
use routing_core::dsl::{inet_server_port, pg_is_in_recovery};
use routing_core::web::actix::ReadReplica;
use routing_core::{Migrator, ReadReplicaControl, RoutedPool, use_read_replica};
use routing_fixtures::{orders, products};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The reply of every handler: one line per statement, `label<TAB>in_recovery<TAB>port`.
fn lines(statements: &[(&str, bool, i32)]) -> HttpResponse {
    let body: String = statements
        .iter()
        .map(|(label, in_recovery, port)| format!("{label}\t{in_recovery}\t{port}\n"))
        .collect();
    HttpResponse::Ok().content_type("text/plain").body(body)
}

fn failed(error: impl std::fmt::Display) -> HttpResponse {
    HttpResponse::InternalServerError().body(error.to_string())
}

/// `GET /products`: the derive's default lets its reads use a replica.
#[derive(ReadReplicaControl)]
struct ListProducts;

async fn list_products(pool: web::Data<RoutedPool>) -> HttpResponse {
    let result = async {
        let mut conn = pool.get().await?;
        let (_, in_recovery, port) = products::table
            .select((count_star(), pg_is_in_recovery(), inet_server_port()))
            .get_result::<(i64, bool, i32)>(&mut conn)
            .await?;
        Ok::<_, BoxError>(lines(&[("count products", in_recovery, port)]))
    };
    result.await.unwrap_or_else(failed)
}

/// `GET /orders`: orders must be fresh.
#[use_read_replica(false)]
async fn list_orders(pool: web::Data<RoutedPool>) -> HttpResponse {
    let result = async {
        let mut conn = pool.get().await?;
        let (_, in_recovery, port) = orders::table
            .select((count_star(), pg_is_in_recovery(), inet_server_port()))
            .get_result::<(i64, bool, i32)>(&mut conn)
            .await?;
        Ok::<_, BoxError>(lines(&[("count orders", in_recovery, port)]))
    };
    result.await.unwrap_or_else(failed)
}

/// `POST /products`: a write, then a read of what it wrote.
async fn create_product(pool: web::Data<RoutedPool>) -> HttpResponse {
    let result = async {
        let mut conn = pool.get().await?;
        let (id, written_on, written_port) = diesel::insert_into(products::table)
            .values((
                products::name.eq("kettle"),
                products::price_cents.eq(2_500_i64),
            ))
            .returning((products::id, pg_is_in_recovery(), inet_server_port()))
            .get_result::<(i64, bool, i32)>(&mut conn)
            .await?;
        let (read_on, read_port) = products::table
            .find(id)
            .select((pg_is_in_recovery(), inet_server_port()))
            .get_result::<(bool, i32)>(&mut conn)
            .await?;
        Ok::<_, BoxError>(lines(&[
            ("insert product", written_on, written_port),
            ("read it back", read_on, read_port),
        ]))
    };
    result.await.unwrap_or_else(failed)
}

#[actix_web::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("actix example: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), BoxError> {
    println!("starting a throwaway cluster: one primary and two streaming replicas ...");
    let cluster = LocalCluster::start().await?;
    let applied = Migrator::connect(&cluster.primary_url())
        .await?
        .run_pending(routing_fixtures::MIGRATIONS)
        .await?;
    println!("  migrated the primary: {} migration(s)", applied.len());
    cluster.wait_for_replicas().await?;
    let pool = RoutedPool::builder(cluster.primary_url())
        .replicas(cluster.replica_urls())
        .build()?;
    pool.check().await?;

    let server = HttpServer::new(move || {
        App::new()
            .app_data(web::Data::new(pool.clone()))
            .service(
                web::resource("/products")
                    .route(web::get().to(list_products))
                    .route(web::post().to(create_product))
                    .wrap(ReadReplica::for_handler::<ListProducts>()),
            )
            .service(
                web::resource("/orders")
                    .route(web::get().to(list_orders))
                    .wrap(ReadReplica::for_handler::<list_orders>()),
            )
            // The app's default, and read-your-writes across requests in a cookie.
            .wrap(ReadReplica::allow_replica().causal_cookie("read_after"))
    })
    .workers(2)
    .disable_signals()
    .bind(("127.0.0.1", 0))?;
    let addr = server.addrs()[0];
    let server = server.run();
    let handle = server.handle();
    let running = actix_web::rt::spawn(server);
    println!("  serving on http://{addr}\n");

    let outcome = requests(addr, &cluster).await;
    handle.stop(true).await;
    running.await??;
    outcome
}

/// Sends the requests and prints where their statements ran.
async fn requests(addr: SocketAddr, cluster: &LocalCluster) -> Result<(), BoxError> {
    let name = |in_recovery: bool, port: i32| {
        let role = u16::try_from(port)
            .ok()
            .and_then(|port| {
                if port == cluster.primary_port() {
                    return Some("primary".to_owned());
                }
                (0..cluster.replica_count())
                    .find(|&i| cluster.replica_port(i) == port)
                    .map(|i| format!("replica {i}"))
            })
            .unwrap_or_else(|| "unknown".to_owned());
        let mark = if in_recovery {
            "in recovery"
        } else {
            "read-write"
        };
        format!("{role} :{port} ({mark})")
    };
    let mut cookie = None;
    for (method, path, what) in [
        ("GET", "/products", "replica-allowed handler"),
        ("GET", "/orders", "#[use_read_replica(false)] handler"),
        ("POST", "/products", "a write"),
        ("GET", "/products", "with the POST's causal cookie"),
    ] {
        let reply = send(addr, method, path, cookie.as_deref()).await?;
        println!("{method} {path} ({what}):");
        for line in reply.body.lines() {
            let mut fields = line.split('\t');
            let (Some(label), Some(in_recovery), Some(port)) =
                (fields.next(), fields.next(), fields.next())
            else {
                return Err(format!("unexpected reply to {method} {path}: {line}").into());
            };
            let server = name(in_recovery == "true", port.parse()?);
            println!("  {label:<16} ran on {server}");
        }
        if let Some(set) = reply.set_cookie {
            let value = set.split(';').next().unwrap_or_default().to_owned();
            println!("  response sets the cookie {value}");
            cookie = Some(value);
        }
    }
    Ok(())
}

/// A reply's body and its `set-cookie` header.
struct Reply {
    body: String,
    set_cookie: Option<String>,
}

/// One HTTP/1 request on a fresh loopback connection.
async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    cookie: Option<&str>,
) -> Result<Reply, BoxError> {
    use http_body_util::{BodyExt, Empty};
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    let driver = tokio::spawn(connection);
    let mut request = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, addr.to_string());
    if let Some(cookie) = cookie {
        request = request.header(http::header::COOKIE, cookie);
    }
    let response = sender
        .send_request(request.body(Empty::<hyper::body::Bytes>::new())?)
        .await?;
    let status = response.status();
    let set_cookie = response
        .headers()
        .get(http::header::SET_COOKIE)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let body = response.into_body().collect().await?.to_bytes();
    drop(sender);
    driver.await??;
    let body = String::from_utf8(body.to_vec())?;
    if !status.is_success() {
        return Err(format!("{method} {path} answered {status}: {body}").into());
    }
    Ok(Reply { body, set_cookie })
}
