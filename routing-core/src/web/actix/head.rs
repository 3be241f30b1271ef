//! actix-web's request and response heads (`http` 0.2 types) in the `http` 1 types that
//! [`ReadReplicaControl`](crate::ReadReplicaControl) and the token carrier work with.
//!
//! Both versions of `http` accept the same method, header name and header value grammar, so
//! whatever actix-web parsed from the wire converts; a value that somehow did not is left out
//! (a policy or a token carrier then sees the request without it), never a panic.

use actix_web::dev::RequestHead;
use actix_web::http::Version;
use actix_web::http::header::{self as actix_header, HeaderMap};
use http::request::Parts;

/// A request's parts as `http` 1 types: method, URI, version and headers. The extensions are
/// empty: actix-web keeps its own.
pub(super) fn request_parts(head: &RequestHead) -> Parts {
    let mut parts = empty_parts();
    if let Ok(method) = http::Method::from_bytes(head.method.as_str().as_bytes()) {
        parts.method = method;
    }
    if let Ok(uri) = http::Uri::try_from(head.uri.to_string()) {
        parts.uri = uri;
    }
    parts.version = version(head.version);
    parts.headers.reserve(head.headers.len());
    for (name, value) in head.headers.iter() {
        append(&mut parts.headers, name.as_str(), value.as_bytes());
    }
    parts
}

/// A request's parts with only the values of the header `name`: all that a token carrier reads.
pub(super) fn header_parts(head: &RequestHead, name: &http::HeaderName) -> Parts {
    let mut parts = empty_parts();
    for value in head.headers.get_all(name.as_str()) {
        append(&mut parts.headers, name.as_str(), value.as_bytes());
    }
    parts
}

/// Appends every header of `from` (as a token carrier wrote them) to actix-web's `to`.
pub(super) fn copy_headers(from: &http::HeaderMap, to: &mut HeaderMap) {
    for (name, value) in from {
        let name = actix_header::HeaderName::from_bytes(name.as_str().as_bytes());
        let value = actix_header::HeaderValue::from_bytes(value.as_bytes());
        if let (Ok(name), Ok(value)) = (name, value) {
            to.append(name, value);
        }
    }
}

fn empty_parts() -> Parts {
    http::Request::new(()).into_parts().0
}

fn append(headers: &mut http::HeaderMap, name: &str, value: &[u8]) {
    let name = http::HeaderName::from_bytes(name.as_bytes());
    let value = http::HeaderValue::from_bytes(value);
    if let (Ok(name), Ok(value)) = (name, value) {
        headers.append(name, value);
    }
}

fn version(version: Version) -> http::Version {
    match version {
        Version::HTTP_09 => http::Version::HTTP_09,
        Version::HTTP_10 => http::Version::HTTP_10,
        Version::HTTP_2 => http::Version::HTTP_2,
        Version::HTTP_3 => http::Version::HTTP_3,
        _ => http::Version::HTTP_11,
    }
}

#[cfg(test)]
mod tests {
    use actix_web::test::TestRequest;

    use super::*;

    #[test]
    fn a_request_head_converts_whole() {
        let request = TestRequest::post()
            .uri("/stock/7?fresh=1&x=%20y")
            .version(Version::HTTP_2)
            .insert_header(("x-consistency", "strong"))
            .append_header(("cookie", "a=1"))
            .append_header(("cookie", "read_after=0/10@1"))
            .to_srv_request();
        let parts = request_parts(request.head());
        assert_eq!(parts.method, http::Method::POST);
        assert_eq!(parts.uri.path(), "/stock/7");
        assert_eq!(parts.uri.query(), Some("fresh=1&x=%20y"));
        assert_eq!(parts.version, http::Version::HTTP_2);
        assert_eq!(parts.headers["x-consistency"], "strong");
        let cookies: Vec<_> = parts.headers.get_all("cookie").iter().collect();
        assert_eq!(cookies, ["a=1", "read_after=0/10@1"]);

        let only = header_parts(request.head(), &http::header::COOKIE);
        assert_eq!(only.headers.len(), 2);
        assert!(only.headers.get("x-consistency").is_none());
    }

    #[test]
    fn carrier_headers_reach_the_actix_response() {
        let mut from = http::HeaderMap::new();
        from.append(http::header::SET_COOKIE, "a=1".parse().unwrap());
        from.append(http::header::SET_COOKIE, "b=2".parse().unwrap());
        let mut to = HeaderMap::new();
        to.insert(
            actix_header::SET_COOKIE,
            actix_header::HeaderValue::from_static("theme=dark"),
        );
        copy_headers(&from, &mut to);
        let cookies: Vec<_> = to.get_all(actix_header::SET_COOKIE).collect();
        assert_eq!(cookies, ["theme=dark", "a=1", "b=2"]);
    }
}
