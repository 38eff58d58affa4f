//! Server discovery (`transport::resolve`) against a real DNS server on loopback
//! (`test_dns`) and real HTTP(S) servers: the spec's resolution order, SRV records, the
//! `.well-known` cache, and failures.

use std::{net::IpAddr, sync::Arc, time::Duration};

use hearth::transport::{
    client::OutboundClient,
    dns::Dns,
    policy::{default_denylist, AddressPolicy},
    resolve::{Destination, ResolveError, ServerResolver, WellKnown},
};
use ruma::{OwnedServerName, ServerName};

use super::{
    common::tls::TestCa,
    test_dns::{self, TestDns},
};

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

/// A resolver asking `dns`, allowed to reach loopback, trusting `ca` (PEM) if given.
fn resolver(dns: std::net::SocketAddr, ca: Option<&[u8]>) -> ServerResolver {
    let dns = Arc::new(Dns::new(&[dns]).expect("resolver"));
    let policy = AddressPolicy::new(default_denylist(), vec!["127.0.0.0/8".parse().expect("range")]);
    let client = OutboundClient::new(policy, ca, dns.clone()).expect("client");
    ServerResolver::new(client, dns)
}

fn name(s: &str) -> &ServerName {
    <&ServerName>::try_from(s).expect("server name")
}

fn dest(host: &str, port: u16, host_header: &str, srv_target: Option<&str>) -> Destination {
    Destination { host: host.into(), port, host_header: host_header.into(), srv_target: srv_target.map(Into::into) }
}

#[tokio::test]
async fn ip_literals_and_explicit_ports_are_used_as_they_are() {
    let dns = TestDns::start().await;
    let r = resolver(dns.addr, None);
    assert_eq!(r.resolve(name("127.0.0.1")).await.expect("ok"), dest("127.0.0.1", 8448, "127.0.0.1", None));
    assert_eq!(r.resolve(name("127.0.0.1:9000")).await.expect("ok"), dest("127.0.0.1", 9000, "127.0.0.1:9000", None));
    let v6 = r.resolve(name("[::1]:9001")).await.expect("ok");
    assert_eq!(v6, dest("::1", 9001, "[::1]:9001", None));
    assert_eq!(v6.base_url(), "https://[::1]:9001");
    // An explicit port skips .well-known and SRV, even where SRV records exist.
    dns.srv("_matrix-fed._tcp.ported.test", 10, 0, 7000, "elsewhere.test");
    assert_eq!(
        r.resolve(name("ported.test:8500")).await.expect("ok"),
        dest("ported.test", 8500, "ported.test:8500", None)
    );
    assert!(r.cached().is_empty(), "no .well-known was fetched");
}

#[tokio::test]
async fn srv_records_are_used_without_delegation() {
    let dns = TestDns::start().await;
    // fed.test has an address where nothing serves HTTPS: no .well-known.
    dns.address("fed.test", ip("127.0.0.9"));
    dns.srv("_matrix-fed._tcp.fed.test", 20, 0, 8000, "low.test");
    dns.srv("_matrix-fed._tcp.fed.test", 10, 5, 8999, "best.test");
    dns.srv("_matrix-fed._tcp.fed.test", 10, 1, 8998, "lighter.test");
    let r = resolver(dns.addr, None);
    let found = r.resolve(name("fed.test")).await.expect("resolved");
    assert_eq!(found, dest("fed.test", 8999, "fed.test", Some("best.test")), "lowest priority, then highest weight");
    assert_eq!(found.base_url(), "https://fed.test:8999", "TLS checks the server name, not the SRV target");

    // The failed .well-known is cached, for at most the first back-off.
    let cached = r.cached();
    assert_eq!(cached.len(), 1);
    assert_eq!((cached[0].host.as_str(), &cached[0].value), ("fed.test", &WellKnown::None));
    assert!(cached[0].expires_in <= Duration::from_secs(300));
    r.flush();
    assert!(r.cached().is_empty());
}

#[tokio::test]
async fn the_deprecated_srv_name_is_the_fallback() {
    let dns = TestDns::start().await;
    dns.srv("_matrix._tcp.old.test", 10, 0, 8449, "old-target.test");
    let r = resolver(dns.addr, None);
    assert_eq!(
        r.resolve(name("old.test")).await.expect("ok"),
        dest("old.test", 8449, "old.test", Some("old-target.test"))
    );
}

#[tokio::test]
async fn without_delegation_or_srv_port_8448() {
    let dns = TestDns::start().await;
    dns.address("plain.test", ip("127.0.0.9"));
    let r = resolver(dns.addr, None);
    assert_eq!(r.resolve(name("plain.test")).await.expect("ok"), dest("plain.test", 8448, "plain.test", None));
    // A name that does not exist at all ends the same way: connecting will fail later.
    assert_eq!(r.resolve(name("nowhere.test")).await.expect("ok"), dest("nowhere.test", 8448, "nowhere.test", None));
}

#[tokio::test]
async fn a_dns_server_that_does_not_answer_is_an_error_not_port_8448() {
    let (addr, _socket) = test_dns::silent().await;
    let r = resolver(addr, None);
    match r.resolve(name("quiet.test")).await {
        Err(ResolveError::Dns(e)) => assert!(e.contains("quiet.test"), "{e}"),
        other => panic!("expected a DNS error, got {other:?}"),
    }
}

/// An HTTPS server on `ip`:443 (loopback; the tests run as root) with a leaf of `ca` for
/// `host`, answering `/.well-known/matrix/server` with `body` and `cache_control`.
async fn well_known_server(ca: &TestCa, dir: &std::path::Path, ip: &str, host: &str, body: &str, cache_control: &str) {
    let (certs, key) = (dir.join(format!("{host}.crt")), dir.join(format!("{host}.key")));
    ca.leaf(host, &[host]).write(&certs, &key);
    let cert = Arc::new(hearth::tls::ServerCert::load(&certs, &key).expect("leaf"));
    let config = hearth::tls::server_config(cert).expect("TLS config");
    let tcp = tokio::net::TcpListener::bind((ip, 443)).await.expect("bind :443 (the tests run as root)");
    let listener = hearth::tls::TlsListener::new(tcp, config);
    let (body, cache_control) = (body.to_owned(), cache_control.to_owned());
    let app = axum::Router::new().route(
        "/.well-known/matrix/server",
        axum::routing::get(move || {
            let (body, cache_control) = (body.clone(), cache_control.clone());
            async move { ([(http::header::CACHE_CONTROL, cache_control)], body) }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
}

#[tokio::test]
async fn well_known_delegation_is_followed_in_the_spec_order() {
    let ca = TestCa::new("discovery test CA");
    let files = tempfile::tempdir().expect("tempdir");
    let dns = TestDns::start().await;
    // 3.2: a delegated host with a port; Cache-Control honoured.
    dns.address("ported.test", ip("127.0.0.31"));
    well_known_server(
        &ca,
        files.path(),
        "127.0.0.31",
        "ported.test",
        r#"{"m.server": "matrix.ported.test:8500"}"#,
        "max-age=600",
    )
    .await;
    // 3.3: a delegated host without a port, with an SRV record.
    dns.address("srvd.test", ip("127.0.0.32"));
    well_known_server(&ca, files.path(), "127.0.0.32", "srvd.test", r#"{"m.server": "fed.srvd.test"}"#, "no-store")
        .await;
    dns.srv("_matrix-fed._tcp.fed.srvd.test", 10, 0, 8700, "box.srvd.test");
    // 3.1: an IP literal; 3.5: a delegated host with neither port nor SRV.
    dns.address("literal.test", ip("127.0.0.33"));
    well_known_server(&ca, files.path(), "127.0.0.33", "literal.test", r#"{"m.server": "127.0.0.99"}"#, "").await;
    dns.address("plain.test", ip("127.0.0.34"));
    well_known_server(&ca, files.path(), "127.0.0.34", "plain.test", r#"{"m.server": "fed.plain.test"}"#, "").await;
    // An invalid document is no delegation: the name's own SRV record is used.
    dns.address("broken.test", ip("127.0.0.35"));
    well_known_server(&ca, files.path(), "127.0.0.35", "broken.test", r#"{"m.server": 12}"#, "").await;
    dns.srv("_matrix-fed._tcp.broken.test", 10, 0, 8800, "box.broken.test");

    let r = resolver(dns.addr, Some(ca.pem().as_bytes()));
    assert_eq!(
        r.resolve(name("ported.test")).await.expect("ok"),
        dest("matrix.ported.test", 8500, "matrix.ported.test:8500", None)
    );
    assert_eq!(
        r.resolve(name("srvd.test")).await.expect("ok"),
        dest("fed.srvd.test", 8700, "fed.srvd.test", Some("box.srvd.test")),
        "TLS and Host stay the delegated name; the SRV target is only where to connect"
    );
    assert_eq!(r.resolve(name("literal.test")).await.expect("ok"), dest("127.0.0.99", 8448, "127.0.0.99", None));
    assert_eq!(r.resolve(name("plain.test")).await.expect("ok"), dest("fed.plain.test", 8448, "fed.plain.test", None));
    assert_eq!(
        r.resolve(name("broken.test")).await.expect("ok"),
        dest("broken.test", 8800, "broken.test", Some("box.broken.test"))
    );

    let cached = r.cached();
    let ttl = |host: &str| cached.iter().find(|c| c.host == host).map(|c| (c.value.clone(), c.expires_in));
    let (value, expires_in) = ttl("ported.test").expect("cached");
    assert_eq!(value, WellKnown::Delegated(OwnedServerName::try_from("matrix.ported.test:8500").expect("name")));
    assert!(expires_in <= Duration::from_secs(600) && expires_in > Duration::from_secs(500), "{expires_in:?}");
    let (_, expires_in) = ttl("plain.test").expect("cached");
    assert!(expires_in > Duration::from_secs(23 * 3600), "24 h without Cache-Control: {expires_in:?}");
    let (value, expires_in) = ttl("broken.test").expect("cached");
    assert_eq!(value, WellKnown::None);
    assert!(expires_in <= Duration::from_secs(300), "an invalid file is a failure, cached briefly");

    // A server whose certificate this CA did not sign gives no delegation.
    let other = TestCa::new("another CA");
    dns.address("untrusted.test", ip("127.0.0.36"));
    well_known_server(&other, files.path(), "127.0.0.36", "untrusted.test", r#"{"m.server": "evil.test:1"}"#, "").await;
    assert_eq!(
        r.resolve(name("untrusted.test")).await.expect("ok"),
        dest("untrusted.test", 8448, "untrusted.test", None)
    );
}
