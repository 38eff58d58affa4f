//! The client and federation listener over real TLS (`tls.certs`, `tls.key`): clients that
//! trust the CA are served, others fail the handshake; a renewed certificate reaches new
//! connections without a restart and a broken one is ignored; clients that stall or botch
//! their handshake do not hold up anyone else; a graceful stop still lets requests finish.

use std::{path::PathBuf, time::Duration};

use hearth::{
    store::Backend,
    transport::client::{OutboundClient, OutboundError},
    Config,
};
use reqwest::StatusCode;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::{
    tls::{self, TestCa},
    TestServer,
};

/// The names the test leaves are valid for.
const NAMES: &[&str] = &["localhost", "127.0.0.1", "hearth.test"];
/// A bound on waits for something that happens within about a second, so a bug fails the
/// test instead of hanging it.
const PATIENCE: Duration = Duration::from_secs(30);

/// A Hearth serving TLS with a leaf of `ca`, checking its files every second.
struct TlsHearth {
    server: TestServer,
    certs: PathBuf,
    key: PathBuf,
    files: TempDir,
}

async fn start(ca: &TestCa) -> TlsHearth {
    let files = tempfile::tempdir().unwrap();
    let (certs, key) = (files.path().join("tls.crt"), files.path().join("tls.key"));
    ca.leaf("first", NAMES).write(&certs, &key);
    let mut server = TestServer::start_with(Backend::Rocksdb, |c| {
        c.tls.certs = Some(certs.clone());
        c.tls.key = Some(key.clone());
        c.tls_reload_interval_s = 1;
    })
    .await;
    assert!(server.base.starts_with("https://"), "{}", server.base);
    server.http = ca.http_client();
    TlsHearth { server, certs, key, files }
}

/// An outbound client as Hearth builds one from its configuration: loopback allowed, the
/// test CA as `federation_ca_file`.
fn outbound_trusting(ca: &TestCa, dir: &TempDir) -> OutboundClient {
    let ca_file = dir.path().join("ca.pem");
    ca.write_pem(&ca_file);
    let config = Config {
        ip_range_allowlist: vec!["127.0.0.1/32".parse().unwrap()],
        federation_ca_file: Some(ca_file),
        ..Config::default()
    };
    OutboundClient::from_config(&config).unwrap()
}

async fn versions(client: &OutboundClient, url: &str) -> Result<serde_json::Value, OutboundError> {
    let got = client.get(&format!("{url}/_matrix/client/versions"), PATIENCE, 64 * 1024).await?;
    assert_eq!(got.status, StatusCode::OK);
    Ok(serde_json::from_slice(&got.body).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_trusting_the_ca_are_served_and_others_fail_the_handshake() {
    let ca = TestCa::new("Hearth test CA");
    let h = start(&ca).await;
    let addr = h.server.running().addr;

    let trusting = outbound_trusting(&ca, &h.files);
    for url in [format!("https://{addr}"), format!("https://localhost:{}", addr.port())] {
        let body = versions(&trusting, &url).await.unwrap_or_else(|e| panic!("{url}: {e}"));
        assert!(body["versions"].as_array().is_some_and(|v| !v.is_empty()), "{body}");
    }
    let (status, _) = h.server.get("/_matrix/client/versions", None).await;
    assert_eq!(status, StatusCode::OK, "the harness's own client is served too");

    let direct = tls::connect(addr, "localhost", ca.client_config()).await.expect("handshake");
    assert_eq!(direct.get_ref().1.alpn_protocol(), Some(&b"h2"[..]), "HTTP/2 is offered first");

    // Without the CA: Hearth's outbound client (system roots only) and a client trusting
    // another CA both refuse the server's certificate.
    let loopback = vec!["127.0.0.1/32".parse().unwrap()];
    let untrusting = OutboundClient::new(
        hearth::transport::policy::AddressPolicy::new(vec![], loopback),
        None,
        std::sync::Arc::new(hearth::transport::dns::Dns::new(&[]).unwrap()),
    )
    .unwrap();
    let refused = versions(&untrusting, &format!("https://{addr}")).await;
    assert!(matches!(refused, Err(OutboundError::Other(_))), "{refused:?}");
    let stranger = TestCa::new("Someone else's CA");
    let err = tls::connect(addr, "localhost", stranger.client_config()).await.expect_err("unknown issuer");
    let rustls_err = err.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>());
    assert!(
        matches!(rustls_err, Some(rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer))),
        "{err:?}"
    );
}

/// Polls `done` (each try a fresh look) until it holds, at most [`PATIENCE`] long.
async fn eventually<F: std::future::Future<Output = bool>>(what: &str, mut done: impl FnMut() -> F) {
    let give_up = tokio::time::Instant::now() + PATIENCE;
    while !done().await {
        assert!(tokio::time::Instant::now() < give_up, "gave up waiting: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewed_certificate_reaches_new_connections_and_a_broken_one_is_ignored() {
    let ca = TestCa::new("Hearth test CA");
    let h = start(&ca).await;
    let addr = h.server.running().addr;
    let client = ca.client_config();
    let first = tls::served_leaf(addr, client.clone()).await;

    let renewed = ca.leaf("second", NAMES);
    assert_ne!(renewed.der, first);
    renewed.write(&h.certs, &h.key);
    eventually("the renewed certificate is served", || {
        let client = client.clone();
        let want = renewed.der.clone();
        async move { tls::served_leaf(addr, client).await == want }
    })
    .await;

    // Garbage over both files: wait for two completed checks after the writes (the second
    // began after they ended), then the last good certificate must still be served.
    let cert = h.server.running().tls().expect("TLS is on").clone();
    let before = cert.stats();
    std::fs::write(&h.certs, "-----BEGIN CERTIFICATE-----\nZ2FyYmFnZQ==\n-----END CERTIFICATE-----\n").unwrap();
    std::fs::write(&h.key, "not a key\n").unwrap();
    let written = cert.stats().checks;
    eventually("two checks after the garbage was written", || {
        let checks = cert.stats().checks;
        async move { checks >= written + 2 }
    })
    .await;
    assert!(cert.stats().rejected > before.rejected, "{:?}", cert.stats());
    assert_eq!(tls::served_leaf(addr, client.clone()).await, renewed.der, "the last good certificate stays");
    let (status, _) = h.server.get("/_matrix/client/versions", None).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_and_broken_handshakes_do_not_hold_up_other_clients() {
    let ca = TestCa::new("Hearth test CA");
    let h = start(&ca).await;
    let addr = h.server.running().addr;

    // One client connects and says nothing; another speaks plain HTTP to the TLS port.
    let silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut plain = tokio::net::TcpStream::connect(addr).await.unwrap();
    plain.write_all(b"GET /_matrix/client/versions HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();

    for _ in 0..3 {
        let leaf = tokio::time::timeout(PATIENCE, tls::served_leaf(addr, ca.client_config())).await;
        assert!(leaf.is_ok(), "a TLS client waited behind the stalled one");
    }
    let (status, _) = tokio::time::timeout(PATIENCE, h.server.get("/_matrix/client/versions", None))
        .await
        .expect("served while a handshake stalls");
    assert_eq!(status, StatusCode::OK);

    // Served while the silent client's handshake is still pending: the server has not
    // hung up on it (that happens only after the handshake time-out).
    let mut byte = [0u8; 1];
    let pending = silent.try_read(&mut byte);
    assert!(
        matches!(&pending, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the stalled connection should still be open and quiet: {pending:?}"
    );

    // The plain-HTTP client gets no HTTP answer: its handshake failed and the server hung up
    // (possibly after a TLS alert).
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, plain.read_to_end(&mut answer)).await.expect("the server hangs up");
    assert!(!answer.starts_with(b"HTTP/"), "{:?}", String::from_utf8_lossy(&answer));
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_stop_over_tls_lets_a_waiting_sync_finish() {
    let ca = TestCa::new("Hearth test CA");
    let mut h = start(&ca).await;
    let (_, token, _) = h.server.register("alice", "pw-alice-1").await;
    let (status, first) = h.server.get("/_matrix/client/v3/sync", Some(&token)).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let since = first["next_batch"].as_str().unwrap().to_owned();

    let (http, base) = (h.server.http.clone(), h.server.base.clone());
    let waiting = tokio::spawn(async move {
        let url = format!("{base}/_matrix/client/v3/sync?since={since}&timeout=1000");
        let res = http.get(url).bearer_auth(token).send().await.expect("the sync is answered");
        (res.status(), res.text().await.unwrap())
    });
    let services = h.server.services().clone();
    eventually("the sync waits for news", || {
        let waiting = services.notifier.waiting_users();
        async move { waiting > 0 }
    })
    .await;
    drop(services);

    h.server.restart().await;
    let (status, body) = waiting.await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) = h.server.get("/_matrix/client/versions", None).await;
    assert_eq!(status, StatusCode::OK, "the restarted server serves TLS again");
}
