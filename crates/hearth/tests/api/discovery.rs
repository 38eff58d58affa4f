//! `/versions`, `/.well-known/matrix/*`, `/capabilities` and the server key document.

use hearth::store::Backend;
use reqwest::StatusCode;
use ruma::{
    serde::Base64,
    signatures::{verify_json, PublicKeyMap, PublicKeySet},
    CanonicalJsonObject,
};

use crate::{
    both_engines,
    common::{assert_error, TestServer, SERVER_NAME},
};

async fn versions_lists_only_what_we_serve(b: Backend) {
    let s = TestServer::start(b).await;
    let (status, body) = s.get("/_matrix/client/versions", None).await;
    assert_eq!(status, StatusCode::OK);
    let versions: Vec<&str> = body["versions"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert!(versions.contains(&"v1.1"));
    assert!(versions.iter().all(|v| v.starts_with("v1.")), "{versions:?}");
    // The unstable features claimed are those served (mutual rooms, tested in room_extras;
    // simplified sliding sync, in sliding_sync and by tests/element-x).
    assert_eq!(
        body["unstable_features"],
        serde_json::json!({"uk.half-shot.msc2666.query_mutual_rooms": true, "org.matrix.simplified_msc3575": true}),
        "{body}"
    );
}

async fn well_known_defaults_and_overrides(b: Backend) {
    let s = TestServer::start(b).await;
    let res = s
        .http
        .get(format!("{}/.well-known/matrix/client", s.base))
        .header("origin", "https://app.element.io")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["access-control-allow-origin"], "*");
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["m.homeserver"]["base_url"], format!("https://{SERVER_NAME}"));
    let (status, body) = s.get("/.well-known/matrix/server", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["m.server"], format!("{SERVER_NAME}:443"));

    let s = TestServer::start_with(b, |c| {
        c.well_known.client = Some("https://talk.example.org/".into());
        c.well_known.server = Some("talk.example.org:8448".into());
    })
    .await;
    let (_, body) = s.get("/.well-known/matrix/client", None).await;
    assert_eq!(body["m.homeserver"]["base_url"], "https://talk.example.org");
    let (_, body) = s.get("/.well-known/matrix/server", None).await;
    assert_eq!(body["m.server"], "talk.example.org:8448");

    // The built-in server name, `localhost`: clients that follow the document (Nheko,
    // Element) are sent to where this server really listens, not to https://localhost.
    let s = TestServer::start_with(b, |c| c.server_name = "localhost".try_into().unwrap()).await;
    let port = s.running().addr.port();
    let (_, body) = s.get("/.well-known/matrix/client", None).await;
    assert_eq!(body["m.homeserver"]["base_url"], format!("http://localhost:{port}"));
    let versions = s.http.get(format!("http://localhost:{port}/_matrix/client/versions")).send().await.unwrap();
    assert_eq!(versions.status(), StatusCode::OK, "the advertised address answers");
}

async fn well_known_server_needs_federation(b: Backend) {
    let s = TestServer::start_with(b, |c| c.allow_federation = false).await;
    assert_eq!(s.get("/.well-known/matrix/client", None).await.0, StatusCode::OK);
    assert_error(&s.get("/.well-known/matrix/server", None).await, 404, "M_NOT_FOUND");

    let s = TestServer::start_with(b, |c| c.allow_well_known = false).await;
    assert_error(&s.get("/.well-known/matrix/client", None).await, 404, "M_NOT_FOUND");
    assert_error(&s.get("/.well-known/matrix/server", None).await, 404, "M_NOT_FOUND");
}

async fn capabilities_need_a_token(b: Backend) {
    let s = TestServer::start(b).await;
    assert_error(&s.get("/_matrix/client/v3/capabilities", None).await, 401, "M_MISSING_TOKEN");
    let (_, token, _) = s.register("alice", "pw-alice-1").await;
    let (status, body) = s.get("/_matrix/client/v3/capabilities", Some(&token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Said outright, though it is the default: sytest and some clients look for it.
    assert_eq!(body["capabilities"]["m.change_password"]["enabled"], true, "{body}");
    assert_eq!(body["capabilities"]["m.room_versions"]["default"], "12");
}

async fn server_key_is_signed_and_stable(b: Backend) {
    let mut s = TestServer::start(b).await;
    let (status, doc) = s.get("/_matrix/key/v2/server", None).await;
    assert_eq!(status, StatusCode::OK, "{doc}");
    assert_eq!(doc["server_name"], SERVER_NAME);
    let keys = doc["verify_keys"].as_object().unwrap();
    assert_eq!(keys.len(), 1);
    let (key_id, key) = keys.iter().next().unwrap();
    assert!(key_id.starts_with("ed25519:"));
    // The deprecated form with a key id answers the same document.
    let (status, by_id) = s.get(&format!("/_matrix/key/v2/server/{}", key_id.replace(':', "%3A")), None).await;
    assert_eq!((status, &by_id["verify_keys"]), (StatusCode::OK, &doc["verify_keys"]));

    // The document verifies against its own key.
    let mut set = PublicKeySet::new();
    set.insert(key_id.clone(), Base64::parse(key["key"].as_str().unwrap()).unwrap());
    let mut map = PublicKeyMap::new();
    map.insert(SERVER_NAME.to_owned(), set);
    let object: CanonicalJsonObject = serde_json::from_value(doc.clone()).unwrap();
    verify_json(&map, &object).unwrap();

    // The key survives a restart.
    s.restart().await;
    let (_, doc2) = s.get("/_matrix/key/v2/server", None).await;
    assert_eq!(doc2["verify_keys"], doc["verify_keys"]);
}

both_engines!(
    versions_lists_only_what_we_serve,
    well_known_defaults_and_overrides,
    well_known_server_needs_federation,
    capabilities_need_a_token,
    server_key_is_signed_and_stable,
);

async fn health_endpoint_answers(b: Backend) {
    let s = TestServer::start(b).await;
    let (status, body) = s.get("/_hearth/health", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "ok");
}

both_engines!(health_endpoint_answers);

/// `hearth well-known` (no database) serves the very documents Hearth serves, with CORS,
/// a health check, and 404 for everything else or when delegation is off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_well_known_only_mode_serves_the_same_documents() {
    for (federation, well_known) in [(true, true), (false, true), (true, false)] {
        let s = TestServer::start_with(Backend::Rocksdb, |c| {
            c.allow_federation = federation;
            c.allow_well_known = well_known;
            c.well_known.client = Some("https://talk.example.org/".into());
            c.well_known.server = Some("talk.example.org:443".into());
        })
        .await;
        let config = s.services().config.clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let router = hearth::well_known_only::router(&config);
        tokio::spawn(async move { axum::serve(listener, router).await });
        let http = reqwest::Client::new();
        for doc in ["client", "server"] {
            let (want_status, want) = s.get(&format!("/.well-known/matrix/{doc}"), None).await;
            let got = http.get(format!("http://{addr}/.well-known/matrix/{doc}")).send().await.expect("get");
            assert_eq!(got.status(), want_status, "{doc} with federation {federation}, well-known {well_known}");
            if want_status == StatusCode::OK {
                assert_eq!(got.headers()["access-control-allow-origin"], "*");
                assert_eq!(got.json::<serde_json::Value>().await.expect("json"), want, "{doc}");
            }
        }
        let health = http.get(format!("http://{addr}/_hearth/health")).send().await.expect("get");
        assert_eq!(health.status(), StatusCode::OK);
        let other = http.get(format!("http://{addr}/_matrix/client/versions")).send().await.expect("get");
        assert_eq!(other.status(), StatusCode::NOT_FOUND);
    }
}
