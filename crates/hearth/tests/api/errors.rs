//! Bad input gets a Matrix error: never a crash, never a bare HTTP error.

use hearth::store::Backend;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::{
    both_engines,
    common::{assert_error, TestServer},
};

async fn unknown_endpoint_and_wrong_method(b: Backend) {
    let s = TestServer::start(b).await;
    assert_error(&s.get("/_matrix/client/v3/nope", None).await, 404, "M_UNRECOGNIZED");
    assert_error(&s.get("/totally/elsewhere", None).await, 404, "M_UNRECOGNIZED");
    // /login exists for GET and POST, not DELETE.
    assert_error(&s.request(Method::DELETE, "/_matrix/client/v3/login", None, None).await, 405, "M_UNRECOGNIZED");
}

async fn malformed_and_misshapen_json(b: Backend) {
    let s = TestServer::start(b).await;
    let res = s
        .http
        .post(format!("{}/_matrix/client/v3/login", s.base))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["errcode"], "M_NOT_JSON");

    // Valid JSON, wrong shape: password must be a string.
    let got = s.post("/_matrix/client/v3/login", None, json!({"type": "m.login.password", "password": 5})).await;
    assert_error(&got, 400, "M_BAD_JSON");
    // Valid JSON that is not an object at all.
    let got = s.post("/_matrix/client/v3/register", None, json!([1, 2, 3])).await;
    assert_error(&got, 400, "M_BAD_JSON");
}

async fn oversized_body_is_413(b: Backend) {
    let s = TestServer::start(b).await;
    // The test server's limit is 64 KiB.
    let big = "x".repeat(70 * 1024);
    let got = s.post("/_matrix/client/v3/login", None, json!({"type": "m.login.password", "password": big})).await;
    assert_error(&got, 413, "M_TOO_LARGE");
}

async fn missing_and_unknown_tokens(b: Backend) {
    let s = TestServer::start(b).await;
    assert_error(&s.get("/_matrix/client/v3/account/whoami", None).await, 401, "M_MISSING_TOKEN");
    let got = s.get("/_matrix/client/v3/account/whoami", Some("not-a-token")).await;
    assert_error(&got, 401, "M_UNKNOWN_TOKEN");
    assert_eq!(got.1["soft_logout"], false);
    // A malformed Authorization header is an unknown token, not a crash.
    let res = s
        .http
        .get(format!("{}/_matrix/client/v3/account/whoami", s.base))
        .header("authorization", "Basic Zm9vOmJhcg==")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
}

async fn invalid_path_identifier_is_a_client_error(b: Backend) {
    let s = TestServer::start(b).await;
    let got = s.get("/_matrix/client/v3/profile/not-a-user-id", None).await;
    assert_error(&got, 400, "M_INVALID_PARAM");
    let got = s.get("/_matrix/client/v3/profile/%FF%FE", None).await;
    assert_eq!(got.0, StatusCode::BAD_REQUEST, "{}", got.1);
}

async fn cors_preflight_is_answered(b: Backend) {
    let s = TestServer::start(b).await;
    let res = s
        .http
        .request(Method::OPTIONS, format!("{}/_matrix/client/v3/login", s.base))
        .header("origin", "https://app.element.io")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "authorization,content-type")
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "{}", res.status());
    assert_eq!(res.headers()["access-control-allow-origin"], "*");
    let methods = res.headers()["access-control-allow-methods"].to_str().unwrap().to_owned();
    assert!(methods.contains("POST"), "{methods}");
}

async fn responses_carry_a_request_id(b: Backend) {
    let s = TestServer::start(b).await;
    let res = s.http.get(format!("{}/_matrix/client/versions", s.base)).send().await.unwrap();
    assert!(res.headers().contains_key("x-request-id"));
}

/// Bodies nested deeper than stored JSON can be read back are refused everywhere. Before,
/// account data or a to-device message at 127 levels was stored, and the receiver's
/// `/sync` failed from then on.
async fn deeply_nested_bodies_are_refused(b: Backend) {
    let s = TestServer::start(b).await;
    let (_, at, _) = s.register("alice", "pw-alice-1").await;
    let (_, bt, _) = s.register("bob", "pw-bob-1").await;
    let deep = |levels: usize| (0..levels).fold(json!("leaf"), |inner, _| json!({ "a": inner }));
    let data = "/_matrix/client/v3/user/@bob:hearth.test/account_data/x.deep";
    assert_error(&s.put(data, Some(&bt), deep(101)).await, 400, "M_BAD_JSON");
    assert_error(&s.put(data, Some(&bt), deep(127)).await, 400, "M_BAD_JSON");
    let to_device = json!({"messages": {"@bob:hearth.test": {"*": deep(98)}}});
    assert_error(&s.put("/_matrix/client/v3/sendToDevice/x.deep/t1", Some(&at), to_device).await, 400, "M_BAD_JSON");
    // At the limit is accepted, and reads back.
    let (status, res) = s.put(data, Some(&bt), deep(100)).await;
    assert_eq!(status, StatusCode::OK, "{res}");
    let (status, sync) = s.get("/_matrix/client/v3/sync", Some(&bt)).await;
    assert_eq!(status, StatusCode::OK, "{sync}");
    let (status, _) = s.get(data, Some(&bt)).await;
    assert_eq!(status, StatusCode::OK);
}

both_engines!(
    unknown_endpoint_and_wrong_method,
    malformed_and_misshapen_json,
    deeply_nested_bodies_are_refused,
    oversized_body_is_413,
    missing_and_unknown_tokens,
    invalid_path_identifier_is_a_client_error,
    cors_preflight_is_answered,
    responses_carry_a_request_id,
);

async fn requests_beyond_the_limit_wait_their_turn(b: Backend) {
    // One place for requests doing work.
    let s = TestServer::start_with(b, |c| c.max_concurrent_requests = 1).await;
    let (alice, token, _) = s.register("alice", "pw-alice-1").await;

    // While the place is taken, a request waits for it...
    let held = s.services().request_slots.clone().acquire_owned().await.unwrap();
    let (http, base) = (s.http.clone(), s.base.clone());
    let waiting = tokio::spawn(async move { http.get(format!("{base}/_matrix/client/versions")).send().await });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "a request was served beyond max_concurrent_requests");
    // ...and is served once it is free.
    drop(held);
    let res = waiting.await.unwrap().unwrap();
    assert_eq!(res.status(), StatusCode::OK);

    // A long-polling sync gives its place back while it waits: other requests go on.
    let (_, first) = s.get("/_matrix/client/v3/sync", Some(&token)).await;
    let since = first["next_batch"].as_str().unwrap().to_owned();
    let (http, base) = (s.http.clone(), s.base.clone());
    let t1 = token.clone();
    let sync = tokio::spawn(async move {
        http.get(format!("{base}/_matrix/client/v3/sync?since={since}&timeout=3000"))
            .bearer_auth(t1)
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    });
    for _ in 0..200 {
        if s.services().notifier.waiting_users() > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert_eq!(s.services().notifier.waiting_users(), 1, "the sync never started waiting");
    // Served while the sync still waits, and its answer wakes the sync.
    let (status, _) = s
        .put(&format!("/_matrix/client/v3/user/{alice}/account_data/org.example.x"), Some(&token), json!({"a": 1}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let woke = sync.await.unwrap();
    let events = woke["account_data"]["events"].as_array().cloned().unwrap_or_default();
    assert!(events.iter().any(|e| e["type"] == "org.example.x"), "{woke}");
}

both_engines!(requests_beyond_the_limit_wait_their_turn);
