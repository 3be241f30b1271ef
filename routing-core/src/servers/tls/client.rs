//! The client certificate of a URL's `sslcert` and `sslkey`: a PEM certificate (its chain after
//! it) and a PEM private key (PKCS #8, PKCS #1 or SEC1), read on every connection as libpq does.

use std::path::Path;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::TlsError;
use crate::url::ClientCert;

/// The certificate chain and the private key of `client`.
pub(super) fn load(
    client: &ClientCert,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let pem = File::Cert.read(&client.cert)?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| File::Cert.error(&client.cert, format!("not a PEM file: {e}")))?;
    if chain.is_empty() {
        return Err(File::Cert.error(&client.cert, "holds no PEM certificate".to_owned()));
    }
    let pem = File::Key.read(&client.key)?;
    let key = PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| File::Key.error(&client.key, format!("holds no PEM private key ({e})")))?;
    Ok((chain, key))
}

/// One of the two files.
#[derive(Clone, Copy)]
enum File {
    /// `sslcert`.
    Cert,
    /// `sslkey`.
    Key,
}

impl File {
    fn read(self, path: &Path) -> Result<Vec<u8>, TlsError> {
        std::fs::read(path).map_err(|source| {
            let reason = match source.kind() {
                std::io::ErrorKind::NotFound => "no such file".to_owned(),
                _ => format!("cannot read it: {source}"),
            };
            self.error(path, reason)
        })
    }

    fn error(self, path: &Path, reason: String) -> TlsError {
        let path = path.to_path_buf();
        match self {
            File::Cert => TlsError::ClientCertInvalid { path, reason },
            File::Key => TlsError::ClientKeyInvalid { path, reason },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(dir: &Path, cert: &str, key: &str) -> ClientCert {
        ClientCert {
            cert: dir.join(cert),
            key: dir.join(key),
        }
    }

    #[test]
    fn a_certificate_and_its_key_load() {
        let dir = tempfile::tempdir().unwrap();
        let made = rcgen::generate_simple_self_signed(vec!["app".to_owned()]).unwrap();
        std::fs::write(dir.path().join("app.crt"), made.cert.pem()).unwrap();
        std::fs::write(dir.path().join("app.key"), made.signing_key.serialize_pem()).unwrap();
        let (chain, _key) = load(&client(dir.path(), "app.crt", "app.key")).unwrap();
        assert_eq!(chain.len(), 1);
    }

    #[test]
    fn unusable_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let made = rcgen::generate_simple_self_signed(vec!["app".to_owned()]).unwrap();
        std::fs::write(dir.path().join("app.crt"), made.cert.pem()).unwrap();
        std::fs::write(dir.path().join("text"), "no PEM here\n").unwrap();
        let path = |name: &str| dir.path().join(name).display().to_string();
        for (cert, key, message) in [
            (
                "missing.crt",
                "app.key",
                format!("sslcert {}: no such file", path("missing.crt")),
            ),
            (
                "text",
                "app.key",
                format!("sslcert {}: holds no PEM certificate", path("text")),
            ),
            (
                "app.crt",
                "missing.key",
                format!("sslkey {}: no such file", path("missing.key")),
            ),
        ] {
            let error = load(&client(dir.path(), cert, key)).unwrap_err();
            assert_eq!(error.to_string(), message);
        }
        let error = load(&client(dir.path(), "app.crt", "text")).unwrap_err();
        assert!(
            error.to_string().starts_with(&format!(
                "sslkey {}: holds no PEM private key",
                path("text")
            )),
            "{error}"
        );
    }
}
