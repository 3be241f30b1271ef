//! [`StatusService`]: a pool's status over HTTP, as JSON or as the status table.

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::task::{Context, Poll};

use http::header::{ACCEPT, ALLOW, CACHE_CONTROL, CONTENT_TYPE, HeaderValue, VARY};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use tower_service::Service;

use crate::servers::{PoolStatus, RoutedPool};

#[cfg(test)]
mod tests;

/// A tower service that answers `GET` (and `HEAD`) with [`RoutedPool::status`]: as JSON by
/// default, and as the status table (`PoolStatus`'s `Display`) to a client that prefers
/// `text/plain` in its `Accept` header.
///
/// The JSON lists each server with its role, health and ban reason, lag in seconds and bytes,
/// probe latency, connections (open, idle, used, waiting, max) and statements by routing reason;
/// then why there is no primary (`no_primary`), the forged causal tokens ignored and the
/// statements learned for the primary. Every request reads the status anew; nothing is sent to
/// the servers.
///
/// It shows the servers' addresses (passwords redacted): mount it where only operators reach
/// it.
///
/// ```
/// use axum::Router;
/// use routing_core::RoutedPool;
/// use routing_core::web::StatusService;
///
/// # fn app() -> Result<(), routing_core::BuildError> {
/// let pool = RoutedPool::builder("postgres://app:secret@primary/app")
///     .replica("postgres://app:secret@replica-1/app")
///     .build()?;
/// let app: Router = Router::new().route_service("/status", StatusService::new(pool));
/// # Ok(()) }
/// ```
///
/// ```sh
/// curl -s localhost:3000/status                        # JSON
/// curl -s -H 'Accept: text/plain' localhost:3000/status  # the table
/// ```
#[derive(Clone, Debug)]
pub struct StatusService {
    pool: RoutedPool,
}

impl StatusService {
    /// A service that shows `pool`'s status.
    pub fn new(pool: RoutedPool) -> Self {
        StatusService { pool }
    }
}

impl<B> Service<Request<B>> for StatusService {
    type Response = Response<String>;
    type Error = Infallible;
    type Future = Ready<Result<Response<String>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        ready(Ok(respond(&self.pool, request.method(), request.headers())))
    }
}

/// What a client asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Json,
    Text,
}

impl Format {
    fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Text => "text/plain; charset=utf-8",
        }
    }
}

/// The answer to a request of `method` with `headers`.
fn respond(pool: &RoutedPool, method: &Method, headers: &HeaderMap) -> Response<String> {
    if method != Method::GET && method != Method::HEAD {
        let mut response = plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "the status answers GET and HEAD only\n".to_owned(),
        );
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let Some(format) = negotiate(headers) else {
        return plain(
            StatusCode::NOT_ACCEPTABLE,
            "the status is served as application/json or text/plain\n".to_owned(),
        );
    };
    let status = pool.status();
    let body = match render(&status, format) {
        Ok(body) => body,
        Err(error) => {
            return plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot render the status: {error}\n"),
            );
        }
    };
    let body = if method == Method::HEAD {
        String::new()
    } else {
        body
    };
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(VARY, HeaderValue::from_static("accept"));
    response
}

/// `status` in `format`.
fn render(status: &PoolStatus, format: Format) -> Result<String, serde_json::Error> {
    match format {
        Format::Json => serde_json::to_string(status),
        Format::Text => Ok(status.to_string()),
    }
}

/// A plain-text answer with `code`.
fn plain(code: StatusCode, text: String) -> Response<String> {
    let mut response = Response::new(text);
    *response.status_mut() = code;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static(Format::Text.content_type()),
    );
    response
}

/// The format the `Accept` headers prefer: JSON when there are none, or when JSON is liked as
/// well as the text; `None` when neither is acceptable. Each format takes the quality of the
/// most specific media range that matches it (`application/json` before `application/*`
/// before `*/*`); a range with an unreadable quality is ignored.
fn negotiate(headers: &HeaderMap) -> Option<Format> {
    let mut ranges = headers
        .get_all(ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(media_range)
        .peekable();
    if ranges.peek().is_none() {
        return Some(Format::Json);
    }
    // (specificity, quality) of the best match so far, for JSON and for text.
    let mut json = (0, 0.0);
    let mut text = (0, 0.0);
    for (kind, subtype, quality) in ranges {
        let offer = |best: &mut (u8, f32), main: &str, sub: &str| {
            let specificity = match (kind.as_str(), subtype.as_str()) {
                (k, s) if k == main && s == sub => 3,
                (k, "*") if k == main => 2,
                ("*", "*") => 1,
                _ => return,
            };
            if specificity > best.0 {
                *best = (specificity, quality);
            }
        };
        offer(&mut json, "application", "json");
        offer(&mut text, "text", "plain");
    }
    match (json.1, text.1) {
        (json, text) if json <= 0.0 && text <= 0.0 => None,
        (json, text) if text > json => Some(Format::Text),
        _ => Some(Format::Json),
    }
}

/// One media range of an `Accept` header: its type, subtype (lowercase) and quality.
fn media_range(range: &str) -> Option<(String, String, f32)> {
    let mut parts = range.split(';');
    let (kind, subtype) = parts.next()?.trim().split_once('/')?;
    let mut quality = 1.0;
    for parameter in parts {
        if let Some((name, value)) = parameter.split_once('=') {
            if name.trim().eq_ignore_ascii_case("q") {
                quality = value.trim().parse::<f32>().ok()?;
                if !(0.0..=1.0).contains(&quality) {
                    return None;
                }
            }
        }
    }
    Some((
        kind.trim().to_ascii_lowercase(),
        subtype.trim().to_ascii_lowercase(),
        quality,
    ))
}
