//! A minimal HTTP/1 client for the scripted workload.

use std::net::SocketAddr;

use axum::http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use tokio::net::TcpStream;

use crate::BoxError;

/// Sends one request on a fresh connection; returns the status and the JSON body (`Null` when
/// empty).
pub(crate) async fn send(
    addr: SocketAddr,
    method: Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<(StatusCode, serde_json::Value), BoxError> {
    let body = match body {
        Some(json) => Bytes::from(serde_json::to_vec(&json)?),
        None => Bytes::new(),
    };
    let (status, bytes) = exchange(addr, method, path, "application/json", body).await?;
    let json = if bytes.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&bytes)?
    };
    Ok((status, json))
}

/// `GET path` with `Accept: accept`; the status and the body as text.
pub(crate) async fn get_text(
    addr: SocketAddr,
    path: &str,
    accept: &str,
) -> Result<(StatusCode, String), BoxError> {
    let (status, bytes) = exchange(addr, Method::GET, path, accept, Bytes::new()).await?;
    Ok((status, String::from_utf8(bytes.to_vec())?))
}

/// One request on a fresh connection: the status and the whole body.
async fn exchange(
    addr: SocketAddr,
    method: Method,
    path: &str,
    accept: &str,
    body: Bytes,
) -> Result<(StatusCode, Bytes), BoxError> {
    let stream = TcpStream::connect(addr).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    let driver = tokio::spawn(connection);
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, addr.to_string())
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::ACCEPT, accept)
        .body(Full::new(body))?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let bytes = response.into_body().collect().await?.to_bytes();
    drop(sender);
    driver.await??;
    Ok((status, bytes))
}
