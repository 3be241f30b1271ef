//! libpq's TLS parameters in a connection string: `sslmode` with all of libpq's values (where
//! tokio-postgres knows only `disable`, `prefer` and `require`), and `sslrootcert`, `sslcert`
//! and `sslkey` (which it does not know at all). They are taken out of the string before
//! tokio-postgres parses the rest.

use std::ffi::OsString;
use std::fmt;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

use super::UrlError;

/// libpq's `sslmode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SslMode {
    /// Never TLS.
    Disable,
    /// TLS when the server offers it, else plain; libpq's default.
    Prefer,
    /// TLS or nothing; the certificate is verified only against an `sslrootcert`.
    Require,
    /// TLS, the certificate chain verified, not the host name.
    VerifyCa,
    /// TLS, the certificate chain and the host name verified.
    VerifyFull,
}

impl SslMode {
    const ALL: [SslMode; 5] = [
        SslMode::Disable,
        SslMode::Prefer,
        SslMode::Require,
        SslMode::VerifyCa,
        SslMode::VerifyFull,
    ];

    /// The mode's name in a connection string.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// The mode tokio-postgres is given: whether to ask for TLS, and whether it is required.
    /// Verification is the connector's business.
    pub(crate) fn for_tokio_postgres(self) -> tokio_postgres::config::SslMode {
        use tokio_postgres::config::SslMode as Tp;
        match self {
            SslMode::Disable => Tp::Disable,
            SslMode::Prefer => Tp::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => Tp::Require,
        }
    }

    fn parse(value: &str) -> Result<SslMode, UrlError> {
        SslMode::ALL
            .into_iter()
            .find(|mode| mode.as_str() == value)
            .ok_or_else(|| UrlError::InvalidSslMode(value.to_owned()))
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The TLS parameters of a connection string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SslParams {
    /// `sslmode`, `prefer` when absent.
    pub(crate) mode: SslMode,
    /// `sslrootcert`: a file of trusted CA certificates, or `system` for the system's roots.
    pub(crate) root_cert: Option<PathBuf>,
    /// `sslcert` and `sslkey`: the client certificate (PEM, its chain after it) and its private
    /// key, presented to a server that asks for one.
    pub(crate) client: Option<ClientCert>,
}

/// A client certificate and its key, as files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ClientCert {
    /// `sslcert`.
    pub(crate) cert: PathBuf,
    /// `sslkey`.
    pub(crate) key: PathBuf,
}

impl Default for SslParams {
    fn default() -> Self {
        SslParams {
            mode: SslMode::Prefer,
            root_cert: None,
            client: None,
        }
    }
}

/// The keys taken out of a connection string.
const KEYS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

/// Takes `sslmode`, `sslrootcert`, `sslcert` and `sslkey` out of `url` (a URL or a key-value
/// string): their values, and the string without them for tokio-postgres. The last occurrence
/// of a key wins; an empty value unsets it.
///
/// A string that cannot be read is returned whole, for tokio-postgres to report.
///
/// # Errors
///
/// An `sslmode` libpq does not know; an `sslcert` without an `sslkey`, or the reverse.
pub(crate) fn split(url: &str) -> Result<(SslParams, String), UrlError> {
    let (pairs, rest) = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        split_url(url)
    } else {
        match split_key_values(url) {
            Some(split) => split,
            None => return Ok((SslParams::default(), url.to_owned())),
        }
    };
    let mut params = SslParams::default();
    let (mut cert, mut key) = (None, None);
    let path =
        |value: Vec<u8>| (!value.is_empty()).then(|| PathBuf::from(OsString::from_vec(value)));
    for (name, value) in pairs {
        match name.as_str() {
            "sslmode" => params.mode = SslMode::parse(&String::from_utf8_lossy(&value))?,
            "sslcert" => cert = path(value),
            "sslkey" => key = path(value),
            _ => params.root_cert = path(value),
        }
    }
    params.client = match (cert, key) {
        (Some(cert), Some(key)) => Some(ClientCert { cert, key }),
        (None, None) => None,
        (Some(_), None) => return Err(UrlError::ClientCertWithoutKey("sslcert", "sslkey")),
        (None, Some(_)) => return Err(UrlError::ClientCertWithoutKey("sslkey", "sslcert")),
    };
    Ok((params, rest))
}

type Pairs = Vec<(String, Vec<u8>)>;

/// The TLS pairs of a URL's query, percent-decoded, and the URL without them.
fn split_url(url: &str) -> (Pairs, String) {
    let Some((base, query)) = url.split_once('?') else {
        return (Vec::new(), url.to_owned());
    };
    let mut pairs = Vec::new();
    let mut kept = Vec::new();
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = decode(key);
        if KEYS.contains(&String::from_utf8_lossy(&key).as_ref()) {
            pairs.push((String::from_utf8_lossy(&key).into_owned(), decode(value)));
        } else {
            kept.push(pair);
        }
    }
    let rest = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    (pairs, rest)
}

fn decode(text: &str) -> Vec<u8> {
    percent_encoding::percent_decode_str(text).collect()
}

/// The TLS pairs of a key-value string (`host=h sslmode='verify-full'`), unescaped, and the
/// string without them; `None` when it cannot be read.
fn split_key_values(s: &str) -> Option<(Pairs, String)> {
    let mut pairs = Vec::new();
    let mut rest = String::with_capacity(s.len());
    let mut chars = s.char_indices().peekable();
    let mut kept_from = 0;
    loop {
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        let Some(&(start, _)) = chars.peek() else {
            break;
        };
        let mut key = String::new();
        while let Some((_, c)) = chars.next_if(|(_, c)| !c.is_whitespace() && *c != '=') {
            key.push(c);
        }
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        chars.next_if(|(_, c)| *c == '=')?;
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if(|(_, c)| *c == '\'').is_some() {
            loop {
                match chars.next()? {
                    (_, '\'') => break,
                    (_, '\\') => value.push(chars.next()?.1),
                    (_, c) => value.push(c),
                }
            }
        } else {
            while let Some((_, c)) = chars.next_if(|(_, c)| !c.is_whitespace()) {
                if c == '\\' {
                    value.push(chars.next()?.1);
                } else {
                    value.push(c);
                }
            }
        }
        let end = chars.peek().map_or(s.len(), |&(index, _)| index);
        if KEYS.contains(&key.as_str()) {
            rest.push_str(&s[kept_from..start]);
            kept_from = end;
            pairs.push((key, value.into_bytes()));
        }
    }
    rest.push_str(&s[kept_from..]);
    Some((pairs, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(mode: SslMode, root_cert: Option<&str>) -> SslParams {
        SslParams {
            mode,
            root_cert: root_cert.map(PathBuf::from),
            client: None,
        }
    }

    #[test]
    fn a_client_certificate_takes_both_files() {
        let client = |cert: &str, key: &str| {
            Some(ClientCert {
                cert: PathBuf::from(cert),
                key: PathBuf::from(key),
            })
        };
        let (ssl, rest) = split(
            "postgres://app@h/db?sslmode=verify-full&sslcert=/c/app.crt&application_name=x\
             &sslkey=/c/app%20key.pem",
        )
        .unwrap();
        assert_eq!(ssl.client, client("/c/app.crt", "/c/app key.pem"));
        assert_eq!(rest, "postgres://app@h/db?application_name=x");
        let (ssl, rest) = split("host=h sslcert='/c/app.crt' user=app sslkey=/c/app.key").unwrap();
        assert_eq!(ssl.client, client("/c/app.crt", "/c/app.key"));
        assert_eq!(
            rest.split_whitespace().collect::<Vec<_>>(),
            ["host=h", "user=app"]
        );
        // An empty value unsets a key, as in libpq.
        let (ssl, _) = split("postgres://h/db?sslcert=/a&sslkey=/b&sslcert=&sslkey=").unwrap();
        assert_eq!(ssl.client, None);
        for (url, message) in [
            (
                "postgres://h/db?sslcert=/c/app.crt",
                "sslcert without sslkey: a client certificate needs both sslcert and sslkey",
            ),
            (
                "host=h sslkey=/c/app.key",
                "sslkey without sslcert: a client certificate needs both sslcert and sslkey",
            ),
        ] {
            assert_eq!(split(url).unwrap_err().to_string(), message, "{url}");
        }
    }

    #[test]
    fn urls_lose_their_tls_parameters() {
        for (url, expected, rest) in [
            (
                "postgres://u:pw@h:5432/db",
                params(SslMode::Prefer, None),
                "postgres://u:pw@h:5432/db",
            ),
            (
                "postgres://h/db?sslmode=verify-full&sslrootcert=/tmp/ca.crt",
                params(SslMode::VerifyFull, Some("/tmp/ca.crt")),
                "postgres://h/db",
            ),
            (
                "postgresql://h/db?application_name=x&sslmode=verify-ca&connect_timeout=5",
                params(SslMode::VerifyCa, None),
                "postgresql://h/db?application_name=x&connect_timeout=5",
            ),
            (
                "postgres://h/db?sslrootcert=%2Fa%20b%2Fca.crt&sslmode=require&sslmode=disable",
                params(SslMode::Disable, Some("/a b/ca.crt")),
                "postgres://h/db",
            ),
            (
                "postgres://h/db?sslrootcert=system&sslmode=verify-full",
                params(SslMode::VerifyFull, Some("system")),
                "postgres://h/db",
            ),
        ] {
            assert_eq!(split(url).unwrap(), (expected, rest.to_owned()), "{url}");
        }
    }

    #[test]
    fn key_value_strings_lose_their_tls_parameters() {
        for (text, expected, rest) in [
            (
                "host=h user=u",
                params(SslMode::Prefer, None),
                "host=h user=u",
            ),
            (
                "host=h sslmode=verify-full sslrootcert='/tmp/a b/ca.crt' user=u",
                params(SslMode::VerifyFull, Some("/tmp/a b/ca.crt")),
                "host=h   user=u",
            ),
            (
                "sslmode = require host=h sslrootcert=/x\\ y",
                params(SslMode::Require, Some("/x y")),
                " host=h ",
            ),
            (
                "host=h password='it\\'s' sslrootcert='c:\\\\ca'",
                params(SslMode::Prefer, Some("c:\\ca")),
                "host=h password='it\\'s' ",
            ),
        ] {
            assert_eq!(split(text).unwrap(), (expected, rest.to_owned()), "{text}");
        }
    }

    #[test]
    fn unreadable_strings_are_left_to_tokio_postgres() {
        let text = "host=h sslmode='verify-full";
        assert_eq!(
            split(text).unwrap(),
            (SslParams::default(), text.to_owned())
        );
    }

    #[test]
    fn unknown_modes_are_errors() {
        for url in [
            "postgres://h/db?sslmode=allow",
            "postgres://h/db?sslmode=VERIFY-FULL",
            "host=h sslmode=verify_full",
        ] {
            let err = split(url).unwrap_err();
            assert!(matches!(err, UrlError::InvalidSslMode(_)), "{url}");
            assert!(
                err.to_string()
                    .contains("expected disable, prefer, require, verify-ca or verify-full"),
                "{err}"
            );
        }
    }

    #[test]
    fn tokio_postgres_gets_the_mode_it_knows() {
        use tokio_postgres::config::SslMode as Tp;
        assert_eq!(SslMode::Disable.for_tokio_postgres(), Tp::Disable);
        assert_eq!(SslMode::Prefer.for_tokio_postgres(), Tp::Prefer);
        for mode in [SslMode::Require, SslMode::VerifyCa, SslMode::VerifyFull] {
            assert_eq!(mode.for_tokio_postgres(), Tp::Require);
        }
    }
}
