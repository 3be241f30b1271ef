//! Where the layer reads and writes causal tokens (a header or a cookie), and how it signs them.

use std::fmt;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{KeyInit, Mac};
use http::header::{COOKIE, SET_COOKIE};
use http::{HeaderName, HeaderValue, Response};

use crate::causal::CausalToken;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// The key the layer signs its causal tokens with (HMAC-SHA-256), keyed once; `Debug` never
/// shows it.
#[derive(Clone)]
pub(super) struct SigningKey(HmacSha256);

impl SigningKey {
    /// A signing key from `key`'s bytes (any length: HMAC hashes long keys and pads short
    /// ones); `None` only if the HMAC implementation refused it.
    pub(super) fn new(key: &[u8]) -> Option<Self> {
        <HmacSha256 as KeyInit>::new_from_slice(key)
            .ok()
            .map(SigningKey)
    }

    fn mac(&self) -> HmacSha256 {
        self.0.clone()
    }

    /// `token`'s text with its signature: `<token>.<base64url HMAC>`.
    fn sign(&self, token: &str) -> String {
        let mut mac = self.mac();
        mac.update(token.as_bytes());
        let tag = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{token}.{tag}")
    }

    /// The token text of a signed value, if its signature is this key's.
    fn verify<'t>(&self, signed: &'t str) -> Option<&'t str> {
        let (token, tag) = signed.rsplit_once('.')?;
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        let mut mac = self.mac();
        mac.update(token.as_bytes());
        mac.verify_slice(&tag).ok().map(|()| token)
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningKey(***)")
    }
}

/// Where the layer reads and writes causal tokens.
#[derive(Debug)]
pub(super) enum Carrier {
    Header(HeaderName),
    Cookie { name: String, max_age: Duration },
}

impl Carrier {
    /// The request's token, if it carries a valid one (signed with `key`, when there is one).
    pub(super) fn read(
        &self,
        parts: &http::request::Parts,
        key: Option<&SigningKey>,
    ) -> Option<CausalToken> {
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
        let text = match key {
            None => text.as_str(),
            Some(key) => match key.verify(&text) {
                Some(token) => token,
                None => {
                    tracing::debug!(target: "routing_core", "ignoring a causal token without a valid signature");
                    metrics::counter!(crate::servers::telemetry::FORGED_TOKENS, "reason" => "signature")
                        .increment(1);
                    return None;
                }
            },
        };
        match text.parse() {
            Ok(token) => Some(token),
            Err(error) => {
                tracing::debug!(target: "routing_core", %error, "ignoring the request's causal token");
                None
            }
        }
    }

    /// Puts `token` on the response (signed with `key`, when there is one).
    pub(super) fn write<B>(
        &self,
        response: &mut Response<B>,
        token: CausalToken,
        key: Option<&SigningKey>,
    ) {
        let token = match key {
            Some(key) => key.sign(&token.to_string()),
            None => token.to_string(),
        };
        let (name, value) = match self {
            Carrier::Header(name) => (name.clone(), token),
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
            header.read(&parts("x-causal-token", &token.to_string()), None),
            Some(token)
        );
        assert_eq!(header.read(&parts("x-causal-token", "garbage"), None), None);
        assert_eq!(
            cookie.read(
                &parts("cookie", &format!("a=1; read_after={token}; b=2")),
                None
            ),
            Some(token)
        );
        assert_eq!(cookie.read(&parts("cookie", "a=1"), None), None);
        let mut response = Response::new(());
        cookie.write(&mut response, token, None);
        assert_eq!(
            response.headers()[SET_COOKIE],
            format!("read_after={token}; Max-Age=60; Path=/; HttpOnly; SameSite=Lax")
        );
    }

    #[test]
    fn signed_tokens_round_trip_and_forgeries_are_ignored() {
        let token: CausalToken = "0/16B3748@1764136800000".parse().unwrap();
        let key = SigningKey::new(b"a secret of the deployment").unwrap();
        let other = SigningKey::new(b"someone else's secret").unwrap();
        let header = Carrier::Header(HeaderName::from_static("x-causal-token"));
        let mut response = Response::new(());
        header.write(&mut response, token, Some(&key));
        let sent = response.headers()["x-causal-token"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(sent.starts_with(&format!("{token}.")), "{sent}");
        let request = |value: &str| {
            http::Request::builder()
                .header("x-causal-token", value)
                .body(())
                .unwrap()
                .into_parts()
                .0
        };
        assert_eq!(header.read(&request(&sent), Some(&key)), Some(token));
        assert_eq!(header.read(&request(&sent), Some(&other)), None);
        assert_eq!(header.read(&request(&token.to_string()), Some(&key)), None);
        let forged = sent.replace("16B3748", "FFFFFFF");
        assert_eq!(header.read(&request(&forged), Some(&key)), None);
        assert_eq!(
            header.read(&request("FFFFFFFF/FFFFFFFF@0.AAAA"), Some(&key)),
            None
        );
        assert!(!format!("{key:?}").contains("secret"));
    }
}
