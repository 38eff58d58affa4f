//! Inbound TLS for the client and federation listener (`tls.certs`, `tls.key`): reading the
//! PEM files, the resolver that hands rustls the current certificate, the check that
//! re-reads renewed files, and the listener that does handshakes beside the accept loop.
//!
//! - **Renewal without a restart.** cert-manager rewrites a Secret's files in place, and a
//!   Kubernetes Secret volume swaps a `..data` symlink to a new directory. [`ServerCert`]
//!   remembers, for each file, its canonical path (the symlink's current target), size and
//!   modification time; [`reload_certificates`] compares them every `tls_reload_interval_s`
//!   and re-reads both files when either changed. The new pair is swapped in only when
//!   both parse and the key fits the certificate; otherwise the error is logged and the old
//!   pair keeps being served. A bad pair is reported once: the next change retries. New
//!   connections get the new certificate; open ones keep theirs.
//! - **Handshakes never hold the accept loop.** [`TlsListener`] accepts TCP and runs each
//!   handshake as its own task, bounded by [`HANDSHAKE_TIMEOUT`], and hands axum only
//!   finished TLS streams. A client that never finishes (or never starts) its handshake
//!   costs one task for ten seconds, and a failed handshake is a debug line. The tasks
//!   belong to the listener: when axum drops it at shutdown, pending handshakes go too.
//!
//! Only the ring provider is used (the one reqwest already brings), passed explicitly, so
//! no process-wide default provider has to be installed.

use std::{
    fmt, fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, SystemTime},
};

use parking_lot::{Mutex, RwLock};
use rustls::{
    crypto::CryptoProvider,
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
    ServerConfig,
};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::oneshot,
    task::JoinSet,
    time::{Instant, MissedTickBehavior},
};
use tokio_rustls::{server::TlsStream, TlsAcceptor};

/// How long a client may take to finish its TLS handshake after connecting.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most TLS handshakes in progress at once. Past it, new connections wait in the kernel's
/// listen backlog until one finishes or times out: a flood of silent connections costs at
/// most this many tasks, not one per connection.
pub const MAX_PENDING_HANDSHAKES: usize = 512;

/// A problem with the TLS files, worded for the operator: names the key, the file and what
/// is wrong with it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(String);

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads a PEM certificate chain (leaf first) and the leaf's PEM private key, and checks
/// that the key belongs to the leaf.
pub fn load_pair(certs: &Path, key: &Path, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let chain_pem =
        fs::read(certs).map_err(|e| TlsError(format!("tls.certs: cannot read {}: {e}", certs.display())))?;
    let chain = CertificateDer::pem_slice_iter(&chain_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError(format!("tls.certs: {} is not a PEM certificate chain: {e}", certs.display())))?;
    if chain.is_empty() {
        return Err(TlsError(format!("tls.certs: {} holds no PEM certificate", certs.display())));
    }
    let key_pem = fs::read(key).map_err(|e| TlsError(format!("tls.key: cannot read {}: {e}", key.display())))?;
    let key_der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            TlsError(format!("tls.key: {} holds no PEM private key", key.display()))
        }
        e => TlsError(format!("tls.key: {} is not a PEM private key: {e}", key.display())),
    })?;
    CertifiedKey::from_der(chain, key_der, provider).map_err(|e| {
        TlsError(format!("tls.key: {} cannot serve the certificate in {}: {e}", key.display(), certs.display()))
    })
}

/// What a file looked like when last read: a rewrite in place changes the size or the
/// modification time, a Secret volume's symlink swap changes the canonical path.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    target: PathBuf,
    len: u64,
    modified: Option<SystemTime>,
}

impl FileStamp {
    /// `None` when the file cannot be looked at (missing in the middle of a swap): that
    /// too is a change, and the read that follows reports what is wrong.
    fn of(path: &Path) -> Option<Self> {
        let target = fs::canonicalize(path).ok()?;
        let meta = fs::metadata(&target).ok()?;
        Some(FileStamp { target, len: meta.len(), modified: meta.modified().ok() })
    }
}

type PairStamp = (Option<FileStamp>, Option<FileStamp>);

/// What one check of the files found.
#[derive(Debug)]
pub enum Reload {
    Unchanged,
    /// The new pair is now served.
    Reloaded,
    /// The files changed but do not make a usable pair; the previous one stays.
    Rejected(TlsError),
}

/// Counts of checks so far (for tests and operators).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReloadStats {
    /// Checks completed.
    pub checks: u64,
    /// Changed pairs swapped in.
    pub reloads: u64,
    /// Changed pairs refused.
    pub rejected: u64,
}

/// The certificate the listener serves, and the files it comes from. rustls asks it for the
/// certificate at every handshake, so a swap here reaches the next connection.
pub struct ServerCert {
    certs: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
    /// The stamps taken before the last read; held while a check runs, so two checks
    /// never interleave.
    seen: Mutex<PairStamp>,
    checks: AtomicU64,
    reloads: AtomicU64,
    rejected: AtomicU64,
}

impl ServerCert {
    /// Reads the pair; a problem here stops start-up.
    pub fn load(certs: &Path, key: &Path) -> Result<Self, TlsError> {
        // Stamps before the read: a change while reading shows as a change at the next check.
        let seen = (FileStamp::of(certs), FileStamp::of(key));
        let provider = provider();
        let current = load_pair(certs, key, &provider)?;
        Ok(ServerCert {
            certs: certs.to_owned(),
            key: key.to_owned(),
            provider,
            current: RwLock::new(Arc::new(current)),
            seen: Mutex::new(seen),
            checks: AtomicU64::new(0),
            reloads: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
        })
    }

    /// The pair served to new connections.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.read().clone()
    }

    pub fn files(&self) -> (&Path, &Path) {
        (&self.certs, &self.key)
    }

    /// Re-reads the files when either changed since the last check, and swaps in the new
    /// pair when it is usable. Blocking (file system); run it off the async workers.
    pub fn reload_if_changed(&self) -> Reload {
        let outcome = self.check();
        self.checks.fetch_add(1, Ordering::Release);
        outcome
    }

    fn check(&self) -> Reload {
        let now = (FileStamp::of(&self.certs), FileStamp::of(&self.key));
        let mut seen = self.seen.lock();
        if *seen == now {
            return Reload::Unchanged;
        }
        // Remembered even when the pair is refused: a bad pair is reported once, and the
        // next change (the writer finishing, or a fixed Secret) is tried again.
        *seen = now;
        match load_pair(&self.certs, &self.key, &self.provider) {
            Ok(pair) => {
                *self.current.write() = Arc::new(pair);
                self.reloads.fetch_add(1, Ordering::Release);
                Reload::Reloaded
            }
            Err(e) => {
                self.rejected.fetch_add(1, Ordering::Release);
                Reload::Rejected(e)
            }
        }
    }

    pub fn stats(&self) -> ReloadStats {
        ReloadStats {
            checks: self.checks.load(Ordering::Acquire),
            reloads: self.reloads.load(Ordering::Acquire),
            rejected: self.rejected.load(Ordering::Acquire),
        }
    }
}

impl fmt::Debug for ServerCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerCert").field("certs", &self.certs).field("key", &self.key).finish_non_exhaustive()
    }
}

impl ResolvesServerCert for ServerCert {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// rustls's server configuration over `cert`: TLS 1.2 and 1.3, ALPN `h2` then `http/1.1`.
pub fn server_config(cert: Arc<ServerCert>) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(cert.provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError(format!("cannot set up TLS: {e}")))?
        .with_no_client_auth()
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The reload worker: checks `cert`'s files every `every` until `shutdown` fires or its
/// sender is dropped (the owner went away).
pub async fn reload_certificates(cert: Arc<ServerCert>, every: Duration, mut shutdown: oneshot::Receiver<()>) {
    let mut ticks = tokio::time::interval_at(Instant::now() + every, every);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = ticks.tick() => {}
        }
        let check = cert.clone();
        // A Secret volume is local, but a certificate on a network file system may block.
        match tokio::task::spawn_blocking(move || check.reload_if_changed()).await {
            Ok(Reload::Unchanged) => {}
            Ok(Reload::Reloaded) => {
                tracing::info!(certs = %cert.certs.display(), "TLS certificate reloaded; new connections get it")
            }
            Ok(Reload::Rejected(e)) => {
                tracing::error!("the changed TLS files were not loaded; still serving the previous certificate: {e}")
            }
            Err(e) => tracing::error!(error = %e, "checking the TLS files failed"),
        }
    }
}

type Handshake = Option<(TlsStream<TcpStream>, SocketAddr)>;

/// A TCP listener whose connections come out as finished TLS streams (see the module doc).
pub struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    handshakes: JoinSet<Handshake>,
    handshake_timeout: Duration,
    max_pending: usize,
    /// The most handshakes that were ever in progress at once (for tests).
    peak_pending: Arc<std::sync::atomic::AtomicUsize>,
}

impl TlsListener {
    pub fn new(tcp: TcpListener, config: Arc<ServerConfig>) -> Self {
        TlsListener {
            tcp,
            acceptor: TlsAcceptor::from(config),
            handshakes: JoinSet::new(),
            handshake_timeout: HANDSHAKE_TIMEOUT,
            max_pending: MAX_PENDING_HANDSHAKES,
            peak_pending: Default::default(),
        }
    }
}

async fn handshake(acceptor: TlsAcceptor, tcp: TcpStream, peer: SocketAddr, limit: Duration) -> Handshake {
    match tokio::time::timeout(limit, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => Some((tls, peer)),
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            None
        }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    /// Cancel-safe (axum drops it when shutdown begins): both awaited futures are, and a
    /// handshake task lives in `self.handshakes`, not in this future.
    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            tokio::select! {
                accepted = self.tcp.accept(), if self.handshakes.len() < self.max_pending => match accepted {
                    Ok((tcp, peer)) => {
                        // As on plain connections (`server::serve`): no Nagle delay.
                        let _ = tcp.set_nodelay(true);
                        let limit = self.handshake_timeout;
                        self.handshakes.spawn(handshake(self.acceptor.clone(), tcp, peer, limit));
                        self.peak_pending.fetch_max(self.handshakes.len(), std::sync::atomic::Ordering::Relaxed);
                    }
                    Err(e) => accept_failed(e).await,
                },
                Some(done) = self.handshakes.join_next(), if !self.handshakes.is_empty() => {
                    if let Ok(Some(conn)) = done {
                        return conn;
                    }
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// As axum does for plain TCP: a connection that went away before it was accepted is
/// nothing; anything else (out of file descriptors) is logged and retried after a pause.
async fn accept_failed(e: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(e.kind(), ConnectionRefused | ConnectionAborted | ConnectionReset) {
        return;
    }
    tracing::error!(error = %e, "accepting a connection failed");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed leaf for `name`: (chain PEM, key PEM).
    fn leaf(name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap().self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn write_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let (chain, key) = leaf(name);
        let (c, k) = (dir.join("tls.crt"), dir.join("tls.key"));
        fs::write(&c, chain).unwrap();
        fs::write(&k, key).unwrap();
        (c, k)
    }

    fn served_leaf(cert: &ServerCert) -> CertificateDer<'static> {
        cert.current().cert[0].clone()
    }

    #[test]
    fn load_errors_name_the_key_the_file_and_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let (certs, key) = write_pair(dir.path(), "a.example");
        let missing = dir.path().join("missing.pem");
        let err = ServerCert::load(&missing, &key).unwrap_err().to_string();
        assert!(err.starts_with("tls.certs: cannot read") && err.contains("missing.pem"), "{err}");

        let garbage = dir.path().join("garbage.pem");
        fs::write(&garbage, "not PEM at all\n").unwrap();
        let err = ServerCert::load(&garbage, &key).unwrap_err().to_string();
        assert!(
            err.contains("tls.certs") && err.contains("garbage.pem") && err.contains("no PEM certificate"),
            "{err}"
        );
        let err = ServerCert::load(&certs, &garbage).unwrap_err().to_string();
        assert!(err.contains("tls.key") && err.contains("garbage.pem") && err.contains("no PEM private key"), "{err}");

        let other_key = dir.path().join("other.key");
        fs::write(&other_key, leaf("b.example").1).unwrap();
        let err = ServerCert::load(&certs, &other_key).unwrap_err().to_string();
        assert!(err.contains("tls.key") && err.contains("other.key") && err.contains("tls.crt"), "{err}");
    }

    #[test]
    fn rewrite_in_place_is_picked_up_and_a_bad_one_keeps_the_old() {
        let dir = tempfile::tempdir().unwrap();
        let (certs, key) = write_pair(dir.path(), "a.example");
        let cert = ServerCert::load(&certs, &key).unwrap();
        let first = served_leaf(&cert);
        assert!(matches!(cert.reload_if_changed(), Reload::Unchanged));

        write_pair(dir.path(), "b.example");
        assert!(matches!(cert.reload_if_changed(), Reload::Reloaded));
        let second = served_leaf(&cert);
        assert_ne!(first, second);

        fs::write(&certs, "-----BEGIN CERTIFICATE-----\nbm9wZQ==\n-----END CERTIFICATE-----\n").unwrap();
        assert!(matches!(cert.reload_if_changed(), Reload::Rejected(_)));
        assert_eq!(served_leaf(&cert), second, "the last good pair stays");
        assert!(matches!(cert.reload_if_changed(), Reload::Unchanged), "a bad pair is reported once");
        assert_eq!(cert.stats(), ReloadStats { checks: 4, reloads: 1, rejected: 1 });
    }

    /// A Secret volume: `tls.crt -> ..data/tls.crt`, `..data -> ..<timestamp>`; the update
    /// swaps `..data`. The same bytes and times on both sides, so only the target tells.
    /// A client that connects and never says anything is hung up on after the time-out.
    #[tokio::test]
    async fn a_stalled_handshake_is_dropped_after_the_time_out() {
        use tokio::io::AsyncReadExt;
        let dir = tempfile::tempdir().unwrap();
        let (certs, key) = write_pair(dir.path(), "a.example");
        let config = server_config(Arc::new(ServerCert::load(&certs, &key).unwrap())).unwrap();
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let mut listener = TlsListener::new(tcp, config);
        listener.handshake_timeout = Duration::from_millis(100);
        let accepting = tokio::spawn(async move {
            loop {
                drop(axum::serve::Listener::accept(&mut listener).await);
            }
        });
        let mut silent = TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(30), silent.read(&mut buf)).await;
        let read = read.expect("the server hangs up instead of waiting forever");
        assert!(matches!(read, Ok(0) | Err(_)), "no handshake, so no bytes: {read:?}");
        accepting.abort();
    }

    /// Silent connections beyond the cap wait in the backlog: no more handshake tasks than
    /// the cap ever exist, and a real client is served once the silent ones time out.
    #[tokio::test]
    async fn pending_handshakes_are_capped() {
        let dir = tempfile::tempdir().unwrap();
        let (certs, key) = write_pair(dir.path(), "a.example");
        let config = server_config(Arc::new(ServerCert::load(&certs, &key).unwrap())).unwrap();
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let mut listener = TlsListener::new(tcp, config);
        listener.handshake_timeout = Duration::from_millis(300);
        listener.max_pending = 2;
        let peak = listener.peak_pending.clone();
        let (served_tx, mut served_rx) = tokio::sync::mpsc::unbounded_channel();
        let accepting = tokio::spawn(async move {
            loop {
                let (conn, _) = axum::serve::Listener::accept(&mut listener).await;
                let _ = served_tx.send(());
                drop(conn);
            }
        });
        let mut silent = Vec::new();
        for _ in 0..6 {
            silent.push(TcpStream::connect(addr).await.unwrap());
        }
        // A real TLS client, behind the six silent ones (it accepts the test's self-signed
        // certificate: what is tested is the server side).
        let client = tokio::spawn(async move {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let config =
                rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                    .with_safe_default_protocol_versions()
                    .unwrap()
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(AcceptAny))
                    .with_no_client_auth();
            let name = rustls::pki_types::ServerName::try_from("a.example").unwrap();
            tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.map(|_| ())
        });
        tokio::time::timeout(Duration::from_secs(60), served_rx.recv()).await.expect("served").expect("open");
        client.await.unwrap().expect("handshake");
        assert!(peak.load(std::sync::atomic::Ordering::Relaxed) <= 2, "at most the cap at once");
        drop(silent);
        accepting.abort();
    }

    /// A test-only verifier that accepts any server certificate.
    #[derive(Debug)]
    struct AcceptAny;

    impl rustls::client::danger::ServerCertVerifier for AcceptAny {
        fn verify_server_cert(
            &self,
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &[rustls::pki_types::CertificateDer<'_>],
            _: &rustls::pki_types::ServerName<'_>,
            _: &[u8],
            _: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }

        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }

        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            rustls::crypto::ring::default_provider().signature_verification_algorithms.supported_schemes()
        }
    }

    #[test]
    fn secret_volume_symlink_swap_is_picked_up() {
        let dir = tempfile::tempdir().unwrap();
        let (old, new) = (dir.path().join("..2024_01_01"), dir.path().join("..2024_03_01"));
        fs::create_dir(&old).unwrap();
        fs::create_dir(&new).unwrap();
        write_pair(&old, "a.example");
        for file in ["tls.crt", "tls.key"] {
            fs::copy(old.join(file), new.join(file)).unwrap();
        }
        let when = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        for file in ["tls.crt", "tls.key"] {
            for d in [&old, &new] {
                fs::File::options().write(true).open(d.join(file)).unwrap().set_modified(when).unwrap();
            }
            std::os::unix::fs::symlink(Path::new("..data").join(file), dir.path().join(file)).unwrap();
        }
        std::os::unix::fs::symlink("..2024_01_01", dir.path().join("..data")).unwrap();
        let cert = ServerCert::load(&dir.path().join("tls.crt"), &dir.path().join("tls.key")).unwrap();
        assert!(matches!(cert.reload_if_changed(), Reload::Unchanged));

        let swap = dir.path().join("..data_tmp");
        std::os::unix::fs::symlink("..2024_03_01", &swap).unwrap();
        fs::rename(&swap, dir.path().join("..data")).unwrap();
        assert!(matches!(cert.reload_if_changed(), Reload::Reloaded));
    }
}
