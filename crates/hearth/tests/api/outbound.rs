//! The outbound HTTP client (`transport::client`) against real HTTP servers on loopback:
//! the address policy applied to the address connected to, for names, IP literals and
//! redirects; size caps; time-outs.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{
    response::{IntoResponse, Redirect},
    routing::get,
    Router,
};
use hearth::transport::{
    client::{OutboundClient, OutboundError},
    dns::Dns,
    policy::{default_denylist, AddressPolicy, Refused},
};

const WAIT: Duration = Duration::from_secs(10);

/// A plain HTTP server on 127.0.0.1 with a few routes; returns its address.
async fn serve() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = Router::new()
        .route("/hello", get(|| async { "hello" }))
        .route("/big", get(|| async { vec![b'x'; 64 * 1024] }))
        .route(
            "/to-loopback-literal",
            get(move || async move { Redirect::temporary(&format!("http://127.0.0.1:{}/hello", addr.port())) }),
        )
        .route(
            "/to-other-loopback",
            get(move || async move { Redirect::temporary(&format!("http://127.0.0.2:{}/hello", addr.port())) }),
        )
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                "late".into_response()
            }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// The system's resolver (`localhost` comes from the hosts file).
fn dns() -> Arc<Dns> {
    Arc::new(Dns::new(&[]).expect("resolver"))
}

fn default_client() -> OutboundClient {
    OutboundClient::new(AddressPolicy::new(default_denylist(), vec![]), None, dns()).expect("client")
}

fn loopback_allowed() -> OutboundClient {
    let allow = vec!["127.0.0.1/32".parse().expect("range")];
    OutboundClient::new(AddressPolicy::new(default_denylist(), allow), None, dns()).expect("client")
}

fn refused_range(e: OutboundError) -> String {
    match e {
        OutboundError::Refused(Refused::Denied { range, .. }) => range.to_string(),
        other => panic!("expected a policy refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn loopback_is_refused_by_name_and_by_literal() {
    let addr = serve().await;
    let client = default_client();
    // `localhost` resolves to loopback: the resolver drops the address, nothing connects.
    let by_name = client.get(&format!("http://localhost:{}/hello", addr.port()), WAIT, 1024).await;
    let e = by_name.expect_err("a name resolving to loopback is refused");
    assert!(matches!(&e, OutboundError::Refused(_)), "{e:?}");
    assert!(e.to_string().contains("ip_range_denylist"), "the refusal names the rule: {e}");
    let by_literal = client.get(&format!("http://{addr}/hello"), WAIT, 1024).await;
    assert_eq!(refused_range(by_literal.expect_err("a loopback literal is refused")), "127.0.0.0/8");
}

#[tokio::test]
async fn allowlist_admits_loopback() {
    let addr = serve().await;
    let client = loopback_allowed();
    for url in [format!("http://{addr}/hello"), format!("http://localhost:{}/hello", addr.port())] {
        let got = client.get(&url, WAIT, 1024).await.unwrap_or_else(|e| panic!("{url}: {e}"));
        assert_eq!(got.status, 200);
        assert_eq!(&got.body[..], b"hello");
    }
}

#[tokio::test]
async fn redirects_are_checked_like_the_first_hop() {
    let addr = serve().await;
    let client = loopback_allowed();
    let followed = client.get(&format!("http://{addr}/to-loopback-literal"), WAIT, 1024).await.expect("allowed");
    assert_eq!(&followed.body[..], b"hello", "a redirect to an allowed address is followed");

    // 127.0.0.2 is loopback too but outside the allowlist: the redirect is refused by the
    // policy before any connection (without it, this would be "connection refused").
    let e = client.get(&format!("http://{addr}/to-other-loopback"), WAIT, 1024).await.expect_err("refused");
    assert_eq!(refused_range(e), "127.0.0.0/8");
}

#[tokio::test]
async fn a_body_over_the_cap_is_refused() {
    let addr = serve().await;
    let client = loopback_allowed();
    let e = client.get(&format!("http://{addr}/big"), WAIT, 1024).await.expect_err("64 KiB over a 1 KiB cap");
    assert!(matches!(e, OutboundError::TooLarge(1024)), "{e:?}");
    let got = client.get(&format!("http://{addr}/big"), WAIT, 64 * 1024).await.expect("within the cap");
    assert_eq!(got.body.len(), 64 * 1024);
}

#[tokio::test]
async fn a_slow_server_times_out() {
    let addr = serve().await;
    let client = loopback_allowed();
    let e = client.get(&format!("http://{addr}/slow"), Duration::from_millis(300), 1024).await.expect_err("slow");
    assert!(matches!(e, OutboundError::TimedOut), "{e:?}");
}

#[tokio::test]
async fn only_http_and_https_urls() {
    let client = loopback_allowed();
    for url in ["file:///etc/passwd", "ftp://example.org/", "not a url"] {
        assert!(matches!(client.get(url, WAIT, 1024).await, Err(OutboundError::Other(_))), "{url}");
    }
}
