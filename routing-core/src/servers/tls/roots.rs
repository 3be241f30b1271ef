//! The certificates a connection trusts: an `sslrootcert` file, or the system's roots.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use super::TlsError;

/// Where the trusted certificates come from.
#[derive(Clone, Copy, Debug)]
pub(super) enum Roots<'a> {
    /// An `sslrootcert` file.
    File(&'a Path),
    /// The system's roots (no `sslrootcert`, or `sslrootcert=system`).
    System,
}

impl<'a> Roots<'a> {
    /// The roots `sslrootcert` names; `None` when it is absent.
    pub(super) fn of(root_cert: Option<&'a Path>) -> Option<Roots<'a>> {
        root_cert.map(|path| {
            if path == Path::new("system") {
                Roots::System
            } else {
                Roots::File(path)
            }
        })
    }

    /// Loads them; `mode` names the `sslmode` in errors.
    pub(super) fn load(self, mode: &'static str) -> Result<Arc<RootCertStore>, TlsError> {
        match self {
            Roots::File(path) => from_file(path).map(Arc::new),
            Roots::System => system(mode),
        }
    }

    /// How an error message names them.
    pub(super) fn describe(self) -> String {
        match self {
            Roots::File(path) => format!("the CA in sslrootcert {}", path.display()),
            Roots::System => "any of the system's root certificates".to_owned(),
        }
    }
}

/// The CA certificates of a PEM file.
fn from_file(path: &Path) -> Result<RootCertStore, TlsError> {
    let pem = std::fs::read(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => TlsError::RootCertNotFound {
            path: path.to_path_buf(),
        },
        _ => TlsError::RootCertUnreadable {
            path: path.to_path_buf(),
            source,
        },
    })?;
    let invalid = |reason: String| TlsError::RootCertInvalid {
        path: path.to_path_buf(),
        reason,
    };
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(format!("not a PEM file: {e}")))?;
    if certificates.is_empty() {
        return Err(invalid("holds no PEM certificate".to_owned()));
    }
    let mut roots = RootCertStore::empty();
    for (index, certificate) in certificates.into_iter().enumerate() {
        roots.add(certificate).map_err(|e| {
            invalid(format!(
                "certificate {} is not a usable CA certificate: {e}",
                index + 1
            ))
        })?;
    }
    Ok(roots)
}

/// The system's root certificates, loaded once per process.
fn system(mode: &'static str) -> Result<Arc<RootCertStore>, TlsError> {
    static SYSTEM: OnceLock<Result<Arc<RootCertStore>, String>> = OnceLock::new();
    let loaded = SYSTEM.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        let mut roots = RootCertStore::empty();
        roots.add_parsable_certificates(found.certs);
        if roots.is_empty() {
            Err(found
                .errors
                .first()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default())
        } else {
            Ok(Arc::new(roots))
        }
    });
    loaded
        .clone()
        .map_err(|reason| TlsError::NoSystemRoots { mode, reason })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslrootcert_system_means_the_system_roots() {
        assert!(matches!(
            Roots::of(Some(Path::new("system"))),
            Some(Roots::System)
        ));
        assert!(matches!(
            Roots::of(Some(Path::new("/ca.crt"))),
            Some(Roots::File(_))
        ));
        assert!(Roots::of(None).is_none());
    }

    #[test]
    fn unusable_files_are_clear_errors() {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path();
        let missing = dir.join("missing.crt");
        let err = from_file(&missing).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("sslrootcert {}: no such file", missing.display())
        );

        let empty = dir.join("empty.crt");
        std::fs::write(&empty, "no certificate here\n").unwrap();
        let err = from_file(&empty).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("sslrootcert {}: holds no PEM certificate", empty.display())
        );

        let garbage = dir.join("garbage.crt");
        std::fs::write(
            &garbage,
            "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let err = from_file(&garbage).unwrap_err();
        assert!(
            err.to_string().starts_with(&format!(
                "sslrootcert {}: certificate 1 is not a usable CA certificate",
                garbage.display()
            )),
            "{err}"
        );

        let err = from_file(dir).unwrap_err();
        assert!(matches!(err, TlsError::RootCertUnreadable { .. }), "{err}");
    }

    #[test]
    fn a_ca_file_loads() {
        let dir = tempfile::tempdir().unwrap();
        let ca = rcgen::generate_simple_self_signed(vec!["test CA".to_owned()]).unwrap();
        let path = dir.path().join("ca.crt");
        std::fs::write(&path, ca.cert.pem()).unwrap();
        assert_eq!(Roots::File(&path).load("verify-full").unwrap().len(), 1);
    }
}
