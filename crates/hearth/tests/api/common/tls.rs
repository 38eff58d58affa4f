//! A throw-away certificate authority for TLS tests: a CA made fresh for each test, leaf
//! certificates it signs for given names (`localhost`, `127.0.0.1`, `hearth-a.test`),
//! written as the PEM files `tls.certs`/`tls.key` point at, and clients that trust it.
//!
//! Nothing here is shared between tests or kept on disk beyond a test's temporary
//! directory. Federation tests use one CA for two Hearths: each gets a leaf for its own
//! name, and each trusts the CA through `federation_ca_file` ([`TestCa::write_pem`]).

use std::{net::SocketAddr, path::Path, sync::Arc};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::{pki_types::CertificateDer, ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::{client::TlsStream, TlsConnector};

/// A certificate authority whose key lives only in this value.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
    der: CertificateDer<'static>,
}

/// A leaf certificate and its key, as PEM, and the certificate as DER (what a client sees
/// in `peer_certificates()`).
pub struct Leaf {
    pub chain_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
}

impl TestCa {
    /// A CA whose subject common name is `name`.
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA certificate");
        TestCa { pem: cert.pem(), der: cert.der().clone(), issuer: Issuer::new(params, key) }
    }

    /// The CA certificate as PEM (for `federation_ca_file` or `OutboundClient::new`).
    pub fn pem(&self) -> &str {
        &self.pem
    }

    pub fn write_pem(&self, path: &Path) {
        std::fs::write(path, self.pem()).expect("write CA PEM");
    }

    /// A server certificate for `names` (DNS names or IP addresses) with subject common name
    /// `subject`; every leaf has its own key, so its own serial.
    pub fn leaf(&self, subject: &str, names: &[&str]) -> Leaf {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names).expect("leaf names");
        params.distinguished_name.push(DnType::CommonName, subject);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("leaf certificate");
        Leaf { chain_pem: cert.pem(), key_pem: key.serialize_pem(), der: cert.der().clone() }
    }

    /// A rustls client configuration that trusts this CA only, offering `h2` and
    /// `http/1.1`.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.der.clone()).expect("CA is a valid root");
        let mut config = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(config)
    }

    /// A reqwest client that trusts this CA (for `TestServer::http` on a TLS server).
    pub fn http_client(&self) -> reqwest::Client {
        let ca = reqwest::Certificate::from_pem(self.pem().as_bytes()).expect("CA PEM");
        reqwest::Client::builder().add_root_certificate(ca).build().expect("client")
    }
}

impl Leaf {
    /// Writes the chain and key over `certs` and `key`, in place, as cert-manager does.
    pub fn write(&self, certs: &Path, key: &Path) {
        std::fs::write(certs, &self.chain_pem).expect("write certificate chain");
        std::fs::write(key, &self.key_pem).expect("write key");
    }
}

/// A fresh TLS connection to `addr`, verifying the server as `server_name`.
pub async fn connect(
    addr: SocketAddr,
    server_name: &str,
    config: Arc<ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from(server_name.to_owned()).expect("server name");
    TlsConnector::from(config).connect(name, tcp).await
}

/// The leaf certificate a new connection to `addr` is served.
pub async fn served_leaf(addr: SocketAddr, config: Arc<ClientConfig>) -> CertificateDer<'static> {
    let tls = connect(addr, "localhost", config).await.expect("TLS handshake");
    let (_, conn) = tls.get_ref();
    conn.peer_certificates().expect("the server sent certificates")[0].clone().into_owned()
}
