//! Each `sslmode` against an in-memory server with a certificate from a test CA, and the
//! messages of refused handshakes.

use std::path::Path;
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{CertificateError, ClientConfig, ClientConnection, ServerConfig, ServerConnection};

use super::*;

/// A CA, a server certificate for `localhost` and 127.0.0.1 signed by it, and an unrelated CA,
/// the CAs written to files.
struct Pki {
    _dir: tempfile::TempDir,
    ca: std::path::PathBuf,
    wrong_ca: std::path::PathBuf,
    server: Arc<ServerConfig>,
}

fn ca(dir: &Path, name: &str) -> (CertifiedIssuer<'static, KeyPair>, std::path::PathBuf) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, issuer.pem()).unwrap();
    (issuer, path)
}

fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let (issuer, ca_path) = ca(dir.path(), "ca.crt");
    let (_, wrong_ca) = ca(dir.path(), "wrong-ca.crt");
    let key = KeyPair::generate().unwrap();
    let params =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    let server =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .unwrap();
    Pki {
        ca: ca_path,
        wrong_ca,
        server: Arc::new(server),
        _dir: dir,
    }
}

/// Runs a handshake in memory between `client` connecting to `host` and the test server.
fn handshake(
    client: ClientConfig,
    host: &str,
    server: &Arc<ServerConfig>,
) -> Result<(), rustls::Error> {
    let name = ServerName::try_from(host.to_owned()).unwrap();
    let mut client = ClientConnection::new(Arc::new(client), name)?;
    let mut server = ServerConnection::new(server.clone())?;
    for _ in 0..10 {
        let mut bytes = Vec::new();
        client.write_tls(&mut bytes).unwrap();
        server.read_tls(&mut bytes.as_slice()).unwrap();
        server.process_new_packets()?;
        bytes.clear();
        server.write_tls(&mut bytes).unwrap();
        client.read_tls(&mut bytes.as_slice()).unwrap();
        client.process_new_packets()?;
        if !client.is_handshaking() && !server.is_handshaking() {
            return Ok(());
        }
    }
    panic!("the handshake did not finish");
}

fn config(mode: SslMode, root_cert: Option<&Path>) -> ClientConfig {
    verify::client_config(mode, root_cert, None).unwrap()
}

fn certificate_error(result: Result<(), rustls::Error>) -> CertificateError {
    match result {
        Err(rustls::Error::InvalidCertificate(error)) => error,
        other => panic!("expected a certificate error, got {other:?}"),
    }
}

#[test]
fn verify_full_checks_the_chain_and_the_host_name() {
    let pki = pki();
    let verify_full = || config(SslMode::VerifyFull, Some(&pki.ca));
    handshake(verify_full(), "localhost", &pki.server).unwrap();
    handshake(verify_full(), "127.0.0.1", &pki.server).unwrap();
    let wrong_host = certificate_error(handshake(verify_full(), "127.0.0.2", &pki.server));
    assert!(
        matches!(
            wrong_host,
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
        ),
        "{wrong_host:?}"
    );
    let wrong_ca = config(SslMode::VerifyFull, Some(&pki.wrong_ca));
    assert_eq!(
        certificate_error(handshake(wrong_ca, "localhost", &pki.server)),
        CertificateError::UnknownIssuer
    );
}

#[test]
fn verify_ca_checks_the_chain_only() {
    let pki = pki();
    handshake(
        config(SslMode::VerifyCa, Some(&pki.ca)),
        "db.example",
        &pki.server,
    )
    .unwrap();
    let wrong_ca = config(SslMode::VerifyCa, Some(&pki.wrong_ca));
    assert_eq!(
        certificate_error(handshake(wrong_ca, "localhost", &pki.server)),
        CertificateError::UnknownIssuer
    );
}

#[test]
fn require_and_prefer_verify_only_against_an_sslrootcert() {
    let pki = pki();
    for mode in [SslMode::Require, SslMode::Prefer] {
        handshake(config(mode, None), "db.example", &pki.server).unwrap();
        handshake(config(mode, Some(&pki.ca)), "db.example", &pki.server).unwrap();
        let wrong_ca = config(mode, Some(&pki.wrong_ca));
        assert_eq!(
            certificate_error(handshake(wrong_ca, "localhost", &pki.server)),
            CertificateError::UnknownIssuer,
            "{mode}"
        );
    }
}

fn url(text: &str) -> DatabaseUrl {
    DatabaseUrl::parse(text).unwrap()
}

#[test]
fn refused_certificates_have_clear_messages() {
    let with_root = url("postgres://u:topsecret@h/db?sslmode=verify-full&sslrootcert=/etc/ca.crt");
    let unknown = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
    let message = verify::from_rustls(&with_root, &unknown).to_string();
    assert_eq!(
        message,
        "the server's certificate is not signed by the CA in sslrootcert /etc/ca.crt"
    );

    let system = url("postgres://h/db?sslmode=verify-ca");
    assert_eq!(
        verify::from_rustls(&system, &unknown).to_string(),
        "the server's certificate is not signed by any of the system's root certificates"
    );
    let custom = system.with_tls_config(Some(Arc::new(config(SslMode::Require, None))));
    assert_eq!(
        verify::from_rustls(&custom, &unknown).to_string(),
        "the server's certificate is not signed by a CA the pool's rustls::ClientConfig trusts"
    );

    let wrong_host = rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext {
        expected: ServerName::try_from("127.0.0.2").unwrap(),
        presented: vec!["localhost".to_owned()],
    });
    assert_eq!(
        verify::from_rustls(&with_root, &wrong_host).to_string(),
        "the server's certificate is not valid for host 127.0.0.2"
    );
    let wrong_host = rustls::Error::InvalidCertificate(CertificateError::NotValidForName);
    assert_eq!(
        verify::from_rustls(&with_root, &wrong_host).to_string(),
        "the server's certificate is not valid for host h"
    );

    // An unrelated CA of the same name as the trusted one.
    let same_name = rustls::Error::InvalidCertificate(CertificateError::BadSignature);
    assert!(matches!(
        verify::from_rustls(&with_root, &same_name),
        TlsError::UntrustedCertificate { .. }
    ));

    let expired = rustls::Error::InvalidCertificate(CertificateError::Expired);
    assert!(matches!(
        verify::from_rustls(&with_root, &expired),
        TlsError::BadCertificate { .. }
    ));
    let other = rustls::Error::HandshakeNotComplete;
    assert!(matches!(
        verify::from_rustls(&with_root, &other),
        TlsError::Handshake { .. }
    ));
}

#[test]
fn tls_errors_are_found_inside_io_errors() {
    let target = url("postgres://h/db?sslmode=verify-full&sslrootcert=/ca.crt");
    let io = std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
    );
    assert!(matches!(
        verify::explain(&target, &io),
        Some(TlsError::UntrustedCertificate { .. })
    ));
    let plain = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
    assert!(verify::explain(&target, &plain).is_none());
}

#[test]
fn connectors_need_a_readable_sslrootcert() {
    assert!(connector(&url("postgres://h/db?sslmode=disable&sslrootcert=/missing")).is_ok());
    assert!(connector(&url("postgres://h/db")).is_ok());
    assert!(connector(&url("postgres://h/db?sslmode=require")).is_ok());
    for mode in ["prefer", "require", "verify-ca", "verify-full"] {
        let Err(err) = connector(&url(&format!(
            "postgres://h/db?sslmode={mode}&sslrootcert=/nonexistent/ca.crt"
        ))) else {
            panic!("{mode}: a missing sslrootcert was accepted");
        };
        assert_eq!(
            err.to_string(),
            "sslrootcert /nonexistent/ca.crt: no such file",
            "{mode}"
        );
    }
}
