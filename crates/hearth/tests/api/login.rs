//! Login flows, logout, and what a wrong password reveals (nothing).

use hearth::store::Backend;
use reqwest::StatusCode;
use serde_json::json;

use crate::{
    both_engines,
    common::{assert_error, TestServer, SERVER_NAME},
};

const LOGIN: &str = "/_matrix/client/v3/login";

async fn login_flows_and_identifiers(b: Backend) {
    let s = TestServer::start(b).await;
    let (status, flows) = s.get(LOGIN, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(flows["flows"], json!([{"type": "m.login.password"}]));

    s.register("alice", "pw-alice-1").await;
    // By localpart, by full id, by the legacy `user` field, case-insensitively.
    s.login("alice", "pw-alice-1").await;
    s.login(&format!("@alice:{SERVER_NAME}"), "pw-alice-1").await;
    s.login("Alice", "pw-alice-1").await;
    let (status, res) =
        s.post(LOGIN, None, json!({"type": "m.login.password", "user": "alice", "password": "pw-alice-1"})).await;
    assert_eq!(status, StatusCode::OK, "{res}");
    assert_eq!(res["user_id"], format!("@alice:{SERVER_NAME}"));
    assert_eq!(res["well_known"]["m.homeserver"]["base_url"], format!("https://{SERVER_NAME}"));

    // Login with an existing device id keeps the device and replaces its token.
    let (old_token, device) = s.login("alice", "pw-alice-1").await;
    // Used once, so resolved and kept in memory before it is replaced.
    assert_eq!(s.get("/_matrix/client/v3/account/whoami", Some(&old_token)).await.0, StatusCode::OK);
    let (status, res) = s
        .post(
            LOGIN,
            None,
            json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"},
            "password": "pw-alice-1", "device_id": device}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(res["device_id"], device.as_str());
    assert_error(&s.get("/_matrix/client/v3/account/whoami", Some(&old_token)).await, 401, "M_UNKNOWN_TOKEN");
}

async fn wrong_password_reveals_nothing(b: Backend) {
    let s = TestServer::start(b).await;
    s.register("alice", "pw-alice-1").await;
    let wrong = s
        .post(
            LOGIN,
            None,
            json!({"type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": "alice"}, "password": "nope"}),
        )
        .await;
    let nobody = s
        .post(
            LOGIN,
            None,
            json!({"type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": "nobody"}, "password": "nope"}),
        )
        .await;
    let elsewhere = s
        .post(
            LOGIN,
            None,
            json!({"type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": "@alice:other.example"}, "password": "pw-alice-1"}),
        )
        .await;
    assert_error(&wrong, 403, "M_FORBIDDEN");
    assert_eq!(wrong.1, nobody.1);
    assert_eq!(wrong.1, elsewhere.1);

    let got = s.post(LOGIN, None, json!({"type": "m.login.token", "token": "abc"})).await;
    assert_error(&got, 400, "M_UNKNOWN");
}

async fn logout_and_logout_all(b: Backend) {
    let s = TestServer::start(b).await;
    let (_, t1, d1) = s.register("alice", "pw-alice-1").await;
    let (t2, _) = s.login("alice", "pw-alice-1").await;
    let (t3, _) = s.login("alice", "pw-alice-1").await;
    // Every token used once, so kept in memory before it is revoked.
    for t in [&t1, &t2, &t3] {
        assert_eq!(s.get("/_matrix/client/v3/account/whoami", Some(t)).await.0, StatusCode::OK);
    }

    // Logout with no body at all, as clients do.
    let res = s.http.post(format!("{}/_matrix/client/v3/logout", s.base)).bearer_auth(&t1).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_error(&s.get("/_matrix/client/v3/account/whoami", Some(&t1)).await, 401, "M_UNKNOWN_TOKEN");
    let (_, devices) = s.get("/_matrix/client/v3/devices", Some(&t2)).await;
    let ids: Vec<_> = devices["devices"].as_array().unwrap().iter().map(|d| d["device_id"].clone()).collect();
    assert_eq!(ids.len(), 2);
    assert!(!ids.contains(&json!(d1)));

    let (status, _) = s.post("/_matrix/client/v3/logout/all", Some(&t2), json!({})).await;
    assert_eq!(status, StatusCode::OK);
    assert_error(&s.get("/_matrix/client/v3/account/whoami", Some(&t2)).await, 401, "M_UNKNOWN_TOKEN");
    assert_error(&s.get("/_matrix/client/v3/account/whoami", Some(&t3)).await, 401, "M_UNKNOWN_TOKEN");
}

async fn access_token_in_query_string(b: Backend) {
    let s = TestServer::start(b).await;
    let (user, token, _) = s.register("alice", "pw-alice-1").await;
    let (status, me) = s.get(&format!("/_matrix/client/v3/account/whoami?access_token={token}"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(me["user_id"], user);
}

async fn tokens_are_not_in_the_database(b: Backend) {
    let s = TestServer::start(b).await;
    let (_, token, _) = s.register("alice", "pw-alice-1").await;
    let (token2, _) = s.login("alice", "pw-alice-1").await;
    s.services().store.flush().unwrap();
    let data = s.dir.path().join("data");
    let mut found = Vec::new();
    for entry in walk(&data) {
        let bytes = std::fs::read(&entry).unwrap_or_default();
        for t in [&token, &token2] {
            if bytes.windows(t.len()).any(|w| w == t.as_bytes()) {
                found.push(entry.display().to_string());
            }
        }
        // Passwords are hashed too.
        assert!(!bytes.windows(10).any(|w| w == b"pw-alice-1"), "password in {}", entry.display());
    }
    assert!(found.is_empty(), "access token stored in plain text in {found:?}");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

both_engines!(
    login_flows_and_identifiers,
    wrong_password_reveals_nothing,
    logout_and_logout_all,
    access_token_in_query_string,
    tokens_are_not_in_the_database,
);
