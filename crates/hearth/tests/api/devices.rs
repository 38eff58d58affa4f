//! Device listing, naming and deletion behind UIA.

use hearth::store::Backend;
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::{
    both_engines,
    common::{assert_error, TestServer},
};

async fn list_get_rename(b: Backend) {
    let s = TestServer::start(b).await;
    let (_, token, d1) = s.register("alice", "pw-alice-1").await;
    let (_, d2) = s.login("alice", "pw-alice-1").await;

    let (status, list) = s.get("/_matrix/client/v3/devices", Some(&token)).await;
    assert_eq!(status, StatusCode::OK);
    let mut ids: Vec<String> =
        list["devices"].as_array().unwrap().iter().map(|d| d["device_id"].as_str().unwrap().to_owned()).collect();
    ids.sort();
    let mut expected = vec![d1.clone(), d2.clone()];
    expected.sort();
    assert_eq!(ids, expected);
    assert!(list["devices"][0]["last_seen_ts"].is_u64());

    let path = format!("/_matrix/client/v3/devices/{d2}");
    let (status, _) = s.put(&path, Some(&token), json!({"display_name": "Phone"})).await;
    assert_eq!(status, StatusCode::OK);
    let (status, dev) = s.get(&path, Some(&token)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(dev["display_name"], "Phone");
    assert_eq!(dev["device_id"], d2.as_str());

    assert_error(&s.get("/_matrix/client/v3/devices/NOSUCH", Some(&token)).await, 404, "M_NOT_FOUND");
    assert_error(
        &s.put("/_matrix/client/v3/devices/NOSUCH", Some(&token), json!({"display_name": "x"})).await,
        404,
        "M_NOT_FOUND",
    );
}

async fn other_users_devices_are_invisible(b: Backend) {
    let s = TestServer::start(b).await;
    let (_, _, alice_dev) = s.register("alice", "pw-alice-1").await;
    let (_, bob, _) = s.register("bob", "pw-bob-1").await;
    assert_error(&s.get(&format!("/_matrix/client/v3/devices/{alice_dev}"), Some(&bob)).await, 404, "M_NOT_FOUND");
}

async fn delete_device_needs_password(b: Backend) {
    let s = TestServer::start(b).await;
    let (user, token, _) = s.register("alice", "pw-alice-1").await;
    let (t2, d2) = s.login("alice", "pw-alice-1").await;
    assert_eq!(s.get("/_matrix/client/v3/account/whoami", Some(&t2)).await.0, StatusCode::OK);
    let path = format!("/_matrix/client/v3/devices/{d2}");
    let got = s.with_password_uia(Method::DELETE, &path, &token, json!({}), &user, "pw-alice-1").await;
    assert_eq!(got.0, StatusCode::OK, "{}", got.1);
    assert_error(&s.get("/_matrix/client/v3/account/whoami", Some(&t2)).await, 401, "M_UNKNOWN_TOKEN");
    assert_error(&s.get(&path, Some(&token)).await, 404, "M_NOT_FOUND");
    // Deleting it again: 404 before any UIA.
    assert_error(&s.request(Method::DELETE, &path, Some(&token), Some(json!({}))).await, 404, "M_NOT_FOUND");
}

async fn delete_devices_in_bulk(b: Backend) {
    let s = TestServer::start(b).await;
    let (user, token, d1) = s.register("alice", "pw-alice-1").await;
    let (t2, d2) = s.login("alice", "pw-alice-1").await;
    let (t3, d3) = s.login("alice", "pw-alice-1").await;
    for t in [&t2, &t3] {
        assert_eq!(s.get("/_matrix/client/v3/account/whoami", Some(t)).await.0, StatusCode::OK);
    }
    let body = json!({"devices": [d2, d3, "UNKNOWN"]});
    let got =
        s.with_password_uia(Method::POST, "/_matrix/client/v3/delete_devices", &token, body, &user, "pw-alice-1").await;
    assert_eq!(got.0, StatusCode::OK, "{}", got.1);
    for t in [&t2, &t3] {
        assert_error(&s.get("/_matrix/client/v3/account/whoami", Some(t)).await, 401, "M_UNKNOWN_TOKEN");
    }
    let (_, list) = s.get("/_matrix/client/v3/devices", Some(&token)).await;
    assert_eq!(list["devices"].as_array().unwrap().len(), 1);
    assert_eq!(list["devices"][0]["device_id"], d1.as_str());
}

/// A UIA session is bound to what it was started for: opened to delete one device, it
/// cannot delete another (403), and someone else's password (a stolen token plus the
/// thief's own password) is 403 too. Neither deletes anything.
async fn uia_is_bound_to_device_and_owner(b: Backend) {
    let s = TestServer::start(b).await;
    let (alice, token, _) = s.register("alice", "pw-alice-1").await;
    let (eve, _, _) = s.register("eve", "pw-eve-1").await;
    let (_, d2) = s.login("alice", "pw-alice-1").await;
    let (_, d3) = s.login("alice", "pw-alice-1").await;
    let (status, challenge) =
        s.request(Method::DELETE, &format!("/_matrix/client/v3/devices/{d2}"), Some(&token), Some(json!({}))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let auth = |user: &str, password: &str| {
        json!({"auth": {
            "type": "m.login.password", "identifier": {"type": "m.id.user", "user": user},
            "password": password, "session": challenge["session"],
        }})
    };
    let other = format!("/_matrix/client/v3/devices/{d3}");
    let got = s.request(Method::DELETE, &other, Some(&token), Some(auth(&alice, "pw-alice-1"))).await;
    assert_error(&got, 403, "M_FORBIDDEN");
    assert_eq!(s.get(&other, Some(&token)).await.0, StatusCode::OK);

    let (_, challenge) = s.request(Method::DELETE, &other, Some(&token), Some(json!({}))).await;
    let body = json!({"auth": {
        "type": "m.login.password", "identifier": {"type": "m.id.user", "user": eve},
        "password": "pw-eve-1", "session": challenge["session"],
    }});
    assert_error(&s.request(Method::DELETE, &other, Some(&token), Some(body)).await, 403, "M_FORBIDDEN");
    assert_eq!(s.get(&other, Some(&token)).await.0, StatusCode::OK);
}

both_engines!(
    list_get_rename,
    other_users_devices_are_invisible,
    delete_device_needs_password,
    delete_devices_in_bulk,
    uia_is_bound_to_device_and_owner
);
