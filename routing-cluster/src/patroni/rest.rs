//! A small HTTP/1.1 client for Patroni's REST API and etcd's health check,
//! both plain HTTP on loopback: one request per connection.

use std::net::Ipv4Addr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::ClusterError;

/// The largest response read; Patroni's answers are a few kilobytes.
const MAX_RESPONSE: u64 = 1 << 20;

/// A response: status code and body.
#[derive(Debug)]
pub(crate) struct Response {
    /// The status code.
    pub(crate) status: u16,
    /// The body, decoded as UTF-8 (lossily).
    pub(crate) body: String,
}

/// A request to `127.0.0.1:{port}`.
#[derive(Debug)]
pub(crate) struct Request<'a> {
    /// `GET`, `POST`, `PATCH`.
    pub(crate) method: &'a str,
    /// The port on 127.0.0.1.
    pub(crate) port: u16,
    /// The path, with its leading slash.
    pub(crate) path: &'a str,
    /// A JSON body, if any.
    pub(crate) body: Option<&'a str>,
}

impl Request<'_> {
    /// A `GET` of `path`.
    pub(crate) fn get(port: u16, path: &str) -> Request<'_> {
        Request {
            method: "GET",
            port,
            path,
            body: None,
        }
    }

    /// Sends the request and reads the whole response, within `timeout`.
    pub(crate) async fn send(&self, timeout: Duration) -> Result<Response, ClusterError> {
        match tokio::time::timeout(timeout, self.exchange()).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(detail)) => Err(self.error(detail)),
            Err(_) => Err(self.error(format!("no complete answer within {timeout:?}"))),
        }
    }

    /// Sends the request and parses the body of a `200 OK` as JSON.
    pub(crate) async fn json(&self, timeout: Duration) -> Result<Value, ClusterError> {
        let response = self.send(timeout).await?;
        if response.status != 200 {
            return Err(self.error(format!("status {}: {}", response.status, response.body)));
        }
        serde_json::from_str(&response.body)
            .map_err(|err| self.error(format!("body is not JSON ({err}): {}", response.body)))
    }

    /// A [`ClusterError::Http`] for this request.
    pub(crate) fn error(&self, detail: String) -> ClusterError {
        ClusterError::Http {
            request: self.to_string(),
            detail,
        }
    }

    /// Connects, writes the request, reads until the server closes.
    async fn exchange(&self) -> Result<Response, String> {
        let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port))
            .await
            .map_err(|err| format!("cannot connect: {err}"))?;
        let body = self.body.unwrap_or_default();
        let mut head = format!(
            "{} {} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\nAccept: application/json\r\n",
            self.method, self.path, self.port
        );
        if self.body.is_some() {
            head.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        head.push_str("\r\n");
        stream
            .write_all(head.as_bytes())
            .await
            .and(stream.write_all(body.as_bytes()).await)
            .map_err(|err| format!("cannot send: {err}"))?;
        let mut raw = Vec::new();
        stream
            .take(MAX_RESPONSE)
            .read_to_end(&mut raw)
            .await
            .map_err(|err| format!("cannot read the answer: {err}"))?;
        parse(&raw)
    }
}

impl std::fmt::Display for Request<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} http://127.0.0.1:{}{}",
            self.method, self.port, self.path
        )?;
        if let Some(body) = self.body {
            write!(f, " {body}")?;
        }
        Ok(())
    }
}

/// Parses a whole HTTP/1.x response, decoding a chunked body.
fn parse(raw: &[u8]) -> Result<Response, String> {
    let split = raw
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .ok_or_else(|| format!("incomplete answer: {:?}", String::from_utf8_lossy(raw)))?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let mut body = &raw[split + 4..];
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .filter(|_| status_line.starts_with("HTTP/1."))
        .ok_or_else(|| format!("not an HTTP status line: {status_line:?}"))?;
    let mut chunked = false;
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            let (name, value) = (name.trim(), value.trim());
            if name.eq_ignore_ascii_case("transfer-encoding") && value.contains("chunked") {
                chunked = true;
            } else if name.eq_ignore_ascii_case("content-length") {
                let length: usize = value
                    .parse()
                    .map_err(|_| format!("bad content-length {value:?}"))?;
                body = body
                    .get(..length)
                    .ok_or("body shorter than its content-length")?;
            }
        }
    }
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_vec()
    };
    Ok(Response {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// Joins the chunks of a chunked body.
fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let end = rest
            .windows(2)
            .position(|window| window == b"\r\n")
            .ok_or("truncated chunk size")?;
        let size_text = String::from_utf8_lossy(&rest[..end]);
        let size_hex = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_hex, 16)
            .map_err(|_| format!("bad chunk size {size_hex:?}"))?;
        rest = &rest[end + 2..];
        if size == 0 {
            return Ok(body);
        }
        let chunk = rest.get(..size).ok_or("truncated chunk")?;
        body.extend_from_slice(chunk);
        rest = rest.get(size + 2..).ok_or("truncated chunk end")?;
    }
}

/// The name of the member with role `leader` in a `GET /cluster` answer.
pub(crate) fn leader_name(cluster: &Value) -> Option<&str> {
    cluster
        .get("members")?
        .as_array()?
        .iter()
        .find(|member| member.get("role").and_then(Value::as_str) == Some("leader"))?
        .get("name")?
        .as_str()
}

/// Whether a `GET /cluster` answer names a synchronous standby (role `sync_standby`): the
/// member Patroni recorded as synchronous, the only one a switchover may promote in
/// synchronous mode.
pub(crate) fn has_sync_standby(cluster: &Value) -> bool {
    cluster
        .get("members")
        .and_then(Value::as_array)
        .is_some_and(|members| {
            members
                .iter()
                .any(|member| member.get("role").and_then(Value::as_str) == Some("sync_standby"))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_plain_response() {
        let raw = b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{\"a\": 1}";
        let response = parse(raw).unwrap();
        assert_eq!(response.status, 200);
        assert_eq!(response.body, "{\"a\": 1}");
    }

    #[test]
    fn honours_content_length_and_chunks() {
        let raw = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 3\r\n\r\nabcdef";
        assert_eq!(parse(raw).unwrap().body, "abc");
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nWiki\r\n5;x=y\r\npedia\r\n0\r\n\r\n";
        assert_eq!(parse(raw).unwrap().body, "Wikipedia");
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse(b"hello").is_err());
        assert!(parse(b"SSH-2.0 x\r\n\r\n").is_err());
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n";
        assert!(parse(raw).is_err());
    }

    #[test]
    fn finds_the_leader_in_a_cluster_answer() {
        let cluster: Value = serde_json::from_str(
            r#"{"members": [{"name": "node1", "role": "replica"},
                            {"name": "node2", "role": "leader"}]}"#,
        )
        .unwrap();
        assert_eq!(leader_name(&cluster), Some("node2"));
        assert_eq!(leader_name(&Value::Null), None);
    }
}
