//! The rustls client configuration of each `sslmode`, its certificate verifiers, and what a
//! failed handshake means.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{WebPkiServerVerifier, verify_server_cert_signed_by_trust_anchor};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

use super::TlsError;
use super::roots::Roots;
use crate::url::{ClientCert, DatabaseUrl, SslMode};

/// The client configuration of `mode` with the `sslrootcert` file `root_cert`, as libpq
/// verifies: `prefer` and `require` check the chain only against an `sslrootcert`, `verify-ca`
/// always checks the chain, `verify-full` the chain and the host name.
pub(super) fn client_config(
    mode: SslMode,
    root_cert: Option<&Path>,
    client: Option<&ClientCert>,
) -> Result<ClientConfig, TlsError> {
    let provider = provider();
    let algorithms = provider.signature_verification_algorithms;
    let roots = match (mode, Roots::of(root_cert)) {
        (SslMode::Disable | SslMode::Prefer | SslMode::Require, None) => None,
        (SslMode::VerifyCa | SslMode::VerifyFull, None) => Some(Roots::System),
        (_, Some(roots)) => Some(roots),
    };
    let verifier: Arc<dyn ServerCertVerifier> = match roots {
        None => Arc::new(AnyCertificate { algorithms }),
        Some(roots) => {
            let roots = roots.load(mode.as_str())?;
            if mode == SslMode::VerifyFull {
                WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                    .build()
                    .map_err(|e| TlsError::Setup {
                        reason: e.to_string(),
                    })?
            } else {
                Arc::new(ChainOnly { roots, algorithms })
            }
        }
    };
    let config = builder(provider)?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    match client {
        None => Ok(config.with_no_client_auth()),
        Some(client) => {
            let (chain, key) = super::client::load(client)?;
            config
                .with_client_auth_cert(chain, key)
                .map_err(|e| TlsError::ClientKeyInvalid {
                    path: client.key.clone(),
                    reason: format!("does not go with sslcert {}: {e}", client.cert.display()),
                })
        }
    }
}

/// A configuration for a connector tokio-postgres never uses (`sslmode=disable`).
pub(super) fn never_used() -> Result<ClientConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let algorithms = provider.signature_verification_algorithms;
    Ok(builder(provider)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate { algorithms }))
        .with_no_client_auth())
}

/// The process's default crypto provider if the application installed one, else ring.
fn provider() -> Arc<CryptoProvider> {
    CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()))
}

fn builder(
    provider: Arc<CryptoProvider>,
) -> Result<rustls::ConfigBuilder<ClientConfig, rustls::WantsVerifier>, TlsError> {
    ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Setup {
            reason: e.to_string(),
        })
}

/// What `error`, one cause of a failed connection to `url`, says about TLS, if it is a TLS
/// error.
pub(super) fn explain(
    url: &DatabaseUrl,
    error: &(dyn std::error::Error + 'static),
) -> Option<TlsError> {
    let rustls_error = error.downcast_ref::<rustls::Error>().or_else(|| {
        error
            .downcast_ref::<std::io::Error>()?
            .get_ref()?
            .downcast_ref::<rustls::Error>()
    })?;
    Some(from_rustls(url, rustls_error))
}

/// The [`TlsError`] of a handshake with `url` that rustls refused with `error`.
pub(super) fn from_rustls(url: &DatabaseUrl, error: &rustls::Error) -> TlsError {
    let rustls::Error::InvalidCertificate(certificate) = error else {
        return TlsError::Handshake {
            reason: error.to_string(),
        };
    };
    match certificate {
        // A bad signature: a CA of the same name as a trusted one signed it.
        CertificateError::UnknownIssuer | CertificateError::BadSignature => {
            TlsError::UntrustedCertificate {
                trusted: trusted(url),
            }
        }
        CertificateError::NotValidForNameContext { expected, .. } => TlsError::WrongHost {
            host: expected.to_str().into_owned(),
        },
        CertificateError::NotValidForName => TlsError::WrongHost { host: hosts(url) },
        _ => TlsError::BadCertificate {
            reason: error.to_string(),
        },
    }
}

/// What `url`'s connections trust, for messages.
fn trusted(url: &DatabaseUrl) -> String {
    if url.tls_config().is_some() {
        return "a CA the pool's rustls::ClientConfig trusts".to_owned();
    }
    Roots::of(url.ssl().root_cert.as_deref())
        .unwrap_or(Roots::System)
        .describe()
}

/// The TCP hosts of `url`, for messages.
fn hosts(url: &DatabaseUrl) -> String {
    let names: Vec<String> = url
        .config()
        .get_hosts()
        .iter()
        .map(|host| match host {
            tokio_postgres::config::Host::Tcp(name) => name.clone(),
            tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .collect();
    names.join(", ")
}

/// Accepts any certificate (`prefer` and `require` without `sslrootcert`: encrypted, not
/// authenticated, as in libpq); still checks that the server holds the certificate's key.
#[derive(Debug)]
struct AnyCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

/// Checks the certificate chain against `roots` but not the host name (`verify-ca`, and
/// `prefer`/`require` with `sslrootcert`).
#[derive(Debug)]
struct ChainOnly {
    roots: Arc<RootCertStore>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let certificate = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &certificate,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
