//! TLS for a cluster: a throwaway CA and server certificate, the servers' settings that force
//! TLS on TCP, the client URLs that verify against the CA, and the connector of the harness's
//! own connections.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::ClusterError;
use crate::command::RunAs;
use crate::server::{Context, Server};
use crate::{LocalCluster, sql};

/// The host name client URLs use; the server certificate names it, `127.0.0.1` and `::1`.
const HOST: &str = "localhost";

/// The role that logs in over TCP only with the cluster's client certificate (`cert`
/// authentication: the certificate signed by the cluster's CA, its common name the role's name),
/// with TLS on; see [`LocalCluster::with_client_cert`]. The cluster does not create the role.
pub const CERT_USER: &str = "certuser";

/// The certificates of one cluster, and where the CAs are for clients.
#[derive(Debug)]
pub(crate) struct Tls {
    /// The CA that signed the servers' certificate, as PEM.
    ca_pem: String,
    /// Where that CA is, readable by everyone.
    ca_path: PathBuf,
    /// A second CA, which signed nothing.
    wrong_ca_path: PathBuf,
    /// The servers' certificate, as PEM.
    server_cert_pem: String,
    /// Its private key, as PEM.
    server_key_pem: String,
    /// The certificate of [`CERT_USER`], signed by the CA, readable by everyone.
    client_cert_path: PathBuf,
    /// Its private key, readable by its owner only.
    client_key_path: PathBuf,
}

impl Tls {
    /// Makes a CA, a server certificate signed by it and a second, unrelated CA, and writes
    /// both CAs to `root` (`ca.crt`, `wrong-ca.crt`).
    pub(crate) fn create(root: &Path) -> Result<Self, ClusterError> {
        let ca = certificate_authority("routing-cluster test CA")?;
        let wrong_ca = certificate_authority("routing-cluster unrelated CA")?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(cert_error)?;
        params.distinguished_name.push(DnType::CommonName, HOST);
        params.subject_alt_names = vec![
            SanType::DnsName(HOST.try_into().map_err(cert_error)?),
            SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            SanType::IpAddress(IpAddr::V6(Ipv6Addr::LOCALHOST)),
        ];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().map_err(cert_error)?;
        let cert = params.signed_by(&key, &ca).map_err(cert_error)?;

        let mut client = CertificateParams::new(Vec::<String>::new()).map_err(cert_error)?;
        client
            .distinguished_name
            .push(DnType::CommonName, CERT_USER);
        client.is_ca = IsCa::ExplicitNoCa;
        client.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client_key = KeyPair::generate().map_err(cert_error)?;
        let client_cert = client.signed_by(&client_key, &ca).map_err(cert_error)?;

        let tls = Tls {
            ca_pem: ca.pem(),
            ca_path: root.join("ca.crt"),
            wrong_ca_path: root.join("wrong-ca.crt"),
            server_cert_pem: cert.pem(),
            server_key_pem: key.serialize_pem(),
            client_cert_path: root.join("client.crt"),
            client_key_path: root.join("client.key"),
        };
        write_file(&tls.ca_path, &tls.ca_pem, 0o644, None)?;
        write_file(&tls.wrong_ca_path, &wrong_ca.pem(), 0o644, None)?;
        write_file(&tls.client_cert_path, &client_cert.pem(), 0o644, None)?;
        write_file(
            &tls.client_key_path,
            &client_key.serialize_pem(),
            0o600,
            None,
        )?;
        Ok(tls)
    }

    /// Puts the server certificate and key into `dir`, owned by the server user (key mode 0600).
    pub(crate) fn install_certificate(
        &self,
        dir: &Path,
        run_as: RunAs,
    ) -> Result<(), ClusterError> {
        write_file(
            &dir.join("server.crt"),
            &self.server_cert_pem,
            0o644,
            Some(run_as),
        )?;
        write_file(
            &dir.join("server.key"),
            &self.server_key_pem,
            0o600,
            Some(run_as),
        )
    }

    /// Turns TLS on in the primary's data directory, with the CA as the one client certificates
    /// are checked against and [`CERT_USER`] let in by its certificate only, and, when `only`,
    /// refuses every TCP login without TLS, replication included; replicas cloned from it
    /// inherit all of this.
    pub(crate) async fn configure_primary(
        &self,
        primary: &Server,
        ctx: &Context,
        only: bool,
    ) -> Result<(), ClusterError> {
        self.install_certificate(&primary.data_dir, ctx.run_as)?;
        write_file(
            &primary.data_dir.join("ca.crt"),
            &self.ca_pem,
            0o644,
            Some(ctx.run_as),
        )?;
        primary
            .append_config(
                "\n# TLS, added by routing-cluster\n\
                 ssl = on\n\
                 ssl_cert_file = 'server.crt'\n\
                 ssl_key_file = 'server.key'\n\
                 ssl_ca_file = 'ca.crt'\n\
                 ssl_min_protocol_version = 'TLSv1.2'\n",
            )
            .await?;
        // The first matching line wins: these must come before initdb's trust lines.
        let hba = primary.data_dir.join("pg_hba.conf");
        let context = || format!("cannot rewrite {}", hba.display());
        let existing = tokio::fs::read_to_string(&hba)
            .await
            .map_err(|err| ClusterError::io(context(), err))?;
        let tls_only = if only {
            "# TLS only on TCP, added by routing-cluster\n\
             hostnossl all all 0.0.0.0/0 reject\n\
             hostnossl all all ::/0 reject\n\
             hostnossl replication all 0.0.0.0/0 reject\n\
             hostnossl replication all ::/0 reject\n"
        } else {
            ""
        };
        let rewritten = format!(
            "# A role that logs in with its client certificate only, added by routing-cluster\n\
             hostssl all {CERT_USER} 0.0.0.0/0 cert\n\
             hostssl all {CERT_USER} ::/0 cert\n\
             {tls_only}\n\
             {existing}"
        );
        tokio::fs::write(&hba, rewritten)
            .await
            .map_err(|err| ClusterError::io(context(), err))
    }

    /// The CA's file.
    pub(crate) fn ca_path(&self) -> &Path {
        &self.ca_path
    }

    /// A client URL for the server on `port` that verifies its certificate and host name
    /// against the CA (`sslmode=verify-full`).
    pub(crate) fn url(&self, port: u16) -> String {
        format!(
            "postgres://postgres@{HOST}:{port}/postgres?sslmode=verify-full&sslrootcert={}",
            encode_path(&self.ca_path)
        )
    }
}

impl LocalCluster {
    /// Whether the cluster was started with [`ClusterBuilder::tls`](crate::ClusterBuilder::tls).
    #[must_use]
    pub fn tls_enabled(&self) -> bool {
        self.tls.is_some()
    }

    /// The file of the CA that signed every server's certificate, with TLS on; readable by
    /// every user. Client URLs name it as `sslrootcert`.
    #[must_use]
    pub fn ca_cert_path(&self) -> Option<&Path> {
        self.tls.as_ref().map(|tls| tls.ca_path.as_path())
    }

    /// The CA certificate of [`LocalCluster::ca_cert_path`], as PEM.
    #[must_use]
    pub fn ca_cert_pem(&self) -> Option<&str> {
        self.tls.as_ref().map(|tls| tls.ca_pem.as_str())
    }

    /// `url` (one of this cluster's client URLs) as [`CERT_USER`] with its client certificate
    /// (`sslcert`, `sslkey`), with TLS on.
    #[must_use]
    pub fn with_client_cert(&self, url: &str) -> Option<String> {
        let tls = self.tls.as_ref()?;
        let rest = url.strip_prefix("postgres://postgres@")?;
        Some(format!(
            "postgres://{CERT_USER}@{rest}&sslcert={}&sslkey={}",
            encode_path(&tls.client_cert_path),
            encode_path(&tls.client_key_path)
        ))
    }

    /// The file of a second CA that signed nothing, with TLS on: a client that trusts only it
    /// must refuse every server of the cluster.
    #[must_use]
    pub fn wrong_ca_cert_path(&self) -> Option<&Path> {
        self.tls.as_ref().map(|tls| tls.wrong_ca_path.as_path())
    }

    /// The client URL of the server on `port`: verify-full against the CA with TLS on, else
    /// plain `postgres://postgres@127.0.0.1:{port}/postgres`.
    pub(crate) fn client_url(&self, port: u16) -> String {
        match &self.tls {
            Some(tls) => tls.url(port),
            None => sql::url(port),
        }
    }
}

/// A self-signed CA that may sign server certificates.
fn certificate_authority(name: &str) -> Result<CertifiedIssuer<'static, KeyPair>, ClusterError> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(cert_error)?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate().map_err(cert_error)?;
    CertifiedIssuer::self_signed(params, key).map_err(cert_error)
}

fn cert_error(err: rcgen::Error) -> ClusterError {
    ClusterError::Certificates {
        reason: err.to_string(),
    }
}

/// Writes `text` to a new file at `path` with `mode`, handed to the server user if given.
fn write_file(
    path: &Path,
    text: &str,
    mode: u32,
    owner: Option<RunAs>,
) -> Result<(), ClusterError> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};

    let context = || format!("cannot write {}", path.display());
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(|err| ClusterError::io(context(), err))?;
    file.write_all(text.as_bytes())
        .map_err(|err| ClusterError::io(context(), err))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|err| ClusterError::io(context(), err))?;
    match owner {
        Some(run_as) => run_as.hand_over(path),
        None => Ok(()),
    }
}

/// `path` for a URL query value: bytes outside the unreserved set and `/` percent-encoded.
fn encode_path(path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;

    let mut out = String::new();
    for &byte in path.as_os_str().as_bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~/".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The connector of the harness's own connections: TLS when the server offers it
/// (`sslmode=prefer`, tokio-postgres's default), without verifying the certificate. These
/// connections only reach servers the harness started itself, on the loopback interface;
/// clients get URLs that verify.
pub(crate) fn internal_connector() -> MakeRustlsConnect {
    static CONFIG: OnceLock<ClientConfig> = OnceLock::new();
    let config = CONFIG.get_or_init(|| {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = Arc::new(AnyServerCertificate {
            algorithms: provider.signature_verification_algorithms,
        });
        ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth()
    });
    MakeRustlsConnect::new(config.clone())
}

/// Accepts any server certificate; checks the handshake signatures.
#[derive(Debug)]
struct AnyServerCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AnyServerCertificate {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_encoded_for_urls() {
        assert_eq!(
            encode_path(Path::new("/tmp/rc-a_b.c/ca.crt")),
            "/tmp/rc-a_b.c/ca.crt"
        );
        assert_eq!(encode_path(Path::new("/tmp/a b&c")), "/tmp/a%20b%26c");
    }

    #[test]
    fn certificates_are_made_and_written() {
        let dir = tempfile::tempdir().unwrap();
        let tls = Tls::create(dir.path()).unwrap();
        let ca = std::fs::read_to_string(dir.path().join("ca.crt")).unwrap();
        assert_eq!(ca, tls.ca_pem);
        assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"));
        assert_ne!(
            std::fs::read_to_string(dir.path().join("wrong-ca.crt")).unwrap(),
            ca
        );
        assert!(tls.server_key_pem.contains("PRIVATE KEY"));
        assert!(tls.url(5432).starts_with(
            "postgres://postgres@localhost:5432/postgres?sslmode=verify-full&sslrootcert=/"
        ));
    }
}
