//! Where the layer reads and writes causal tokens: a header or a cookie.

use std::time::Duration;

use http::header::{COOKIE, SET_COOKIE};
use http::{HeaderName, HeaderValue, Response};

use crate::causal::CausalToken;

/// Where the layer reads and writes causal tokens.
#[derive(Debug)]
pub(super) enum Carrier {
    Header(HeaderName),
    Cookie { name: String, max_age: Duration },
}

impl Carrier {
    /// The request's token, if it carries a valid one.
    pub(super) fn read(&self, parts: &http::request::Parts) -> Option<CausalToken> {
        let text = match self {
            Carrier::Header(name) => parts.headers.get(name)?.to_str().ok()?.to_owned(),
            Carrier::Cookie { name, .. } => parts
                .headers
                .get_all(COOKIE)
                .iter()
                .filter_map(|value| value.to_str().ok())
                .flat_map(|value| value.split(';'))
                .filter_map(|pair| pair.trim().split_once('='))
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.trim_matches('"').to_owned())?,
        };
        match text.parse() {
            Ok(token) => Some(token),
            Err(error) => {
                tracing::debug!(target: "routing_core", %error, "ignoring the request's causal token");
                None
            }
        }
    }

    /// Puts `token` on the response.
    pub(super) fn write<B>(&self, response: &mut Response<B>, token: CausalToken) {
        let (name, value) = match self {
            Carrier::Header(name) => (name.clone(), token.to_string()),
            Carrier::Cookie { name, max_age } => (
                SET_COOKIE,
                format!(
                    "{name}={token}; Max-Age={}; Path=/; HttpOnly; SameSite=Lax",
                    max_age.as_secs()
                ),
            ),
        };
        if let Ok(value) = HeaderValue::try_from(value) {
            response.headers_mut().append(name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use http::Request;

    use super::*;

    #[test]
    fn tokens_are_read_from_headers_and_cookies() {
        let token: CausalToken = "0/16B3748@1764136800000".parse().unwrap();
        let header = Carrier::Header(HeaderName::from_static("x-causal-token"));
        let cookie = Carrier::Cookie {
            name: "read_after".to_owned(),
            max_age: Duration::from_secs(60),
        };
        let parts = |name: &str, value: &str| {
            Request::builder()
                .header(name, value)
                .body(())
                .unwrap()
                .into_parts()
                .0
        };
        assert_eq!(
            header.read(&parts("x-causal-token", &token.to_string())),
            Some(token)
        );
        assert_eq!(header.read(&parts("x-causal-token", "garbage")), None);
        assert_eq!(
            cookie.read(&parts("cookie", &format!("a=1; read_after={token}; b=2"))),
            Some(token)
        );
        assert_eq!(cookie.read(&parts("cookie", "a=1")), None);
        let mut response = Response::new(());
        cookie.write(&mut response, token);
        assert_eq!(
            response.headers()[SET_COOKIE],
            format!("read_after={token}; Max-Age=60; Path=/; HttpOnly; SameSite=Lax")
        );
    }
}
