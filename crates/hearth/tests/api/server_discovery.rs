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
use ruma::ServerName;

use super::test_dns::{self, TestDns};

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
