//! Device listing, naming and deletion behind UIA.

use hearth::store::Backend;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

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

/// Every device key is there, `null` when unknown (matrix-nio refuses a list without
/// them); a name given at login or registration is the device's name.
async fn device_keys_are_always_present(b: Backend) {
    let s = TestServer::start(b).await;
    let (_, token, named) = s.register("alice", "pw-alice-1").await;
    let login = json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"}, "password": "pw-alice-1"});
    let (_, nameless) = s.post("/_matrix/client/v3/login", None, login.clone()).await;
    let mut with_name = login;
    with_name["initial_device_display_name"] = json!("Nheko on the laptop");
    let (_, laptop) = s.post("/_matrix/client/v3/login", None, with_name).await;
    let (status, list) = s.get("/_matrix/client/v3/devices", Some(&token)).await;
    assert_eq!(status, StatusCode::OK);
    let devices = list["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 3, "{list}");
    for d in devices {
        for key in ["device_id", "display_name", "last_seen_ip", "last_seen_ts"] {
            assert!(d.get(key).is_some(), "{key} missing: {d}");
        }
    }
    let by_id = |id: &Value| devices.iter().find(|d| &d["device_id"] == id).unwrap().clone();
    assert_eq!(by_id(&nameless["device_id"])["display_name"], Value::Null);
    assert_eq!(by_id(&laptop["device_id"])["display_name"], "Nheko on the laptop");
    assert!(by_id(&json!(named))["last_seen_ip"].is_string());
    let (_, one) =
        s.get(&format!("/_matrix/client/v3/devices/{}", nameless["device_id"].as_str().unwrap()), Some(&token)).await;
    assert!(one.get("display_name").is_some_and(Value::is_null), "{one}");
}

/// Where a device was last seen: the peer address, or the address a trusted proxy
/// forwards (never one an untrusted client claims), with its user agent; `/admin/whois`
/// shows it to the user and to admins only.
async fn last_seen_address_and_whois(b: Backend) {
    let s = TestServer::start_with(b, |c| c.trusted_proxies = Vec::new()).await;
    let (admin, at, _) = s.register("root", "pw-root-1").await;
    let (alice, token, device) = s.register("alice", "pw-alice-1").await;
    let claim = |t: &str| {
        s.http
            .get(format!("{}/_matrix/client/v3/account/whoami", s.base))
            .bearer_auth(t.to_owned())
            .header("X-Forwarded-For", "203.0.113.7")
            .header("User-Agent", "hearth-test/1.0")
    };
    assert_eq!(claim(&token).send().await.unwrap().status(), StatusCode::OK);
    let (_, dev) = s.get(&format!("/_matrix/client/v3/devices/{device}"), Some(&token)).await;
    // Not a trusted proxy: the header is not believed.
    assert_eq!(dev["last_seen_ip"], "127.0.0.1", "{dev}");
    assert!(dev["last_seen_ts"].is_u64(), "{dev}");

    let whois = format!("/_matrix/client/v3/admin/whois/{alice}");
    let (status, me) = s.get(&whois, Some(&token)).await;
    assert_eq!(status, StatusCode::OK, "{me}");
    // Synapse's shape, which synapse-admin reads: one entry under "", one session.
    assert_eq!(me["devices"].as_object().map(|d| d.len()), Some(1), "{me}");
    let connection = &me["devices"][""]["sessions"][0]["connections"][0];
    assert_eq!(connection["ip"], "127.0.0.1", "{me}");
    assert!(connection["last_seen"].is_u64() && connection["user_agent"].is_string(), "{me}");
    let (_, bob_token, _) = s.register("bob", "pw-bob-1").await;
    assert_error(&s.get(&whois, Some(&bob_token)).await, 403, "M_FORBIDDEN");
    let (status, seen) = s.get(&format!("/_synapse/admin/v1/whois/{alice}"), Some(&at)).await;
    assert_eq!((status, seen["user_id"].as_str()), (StatusCode::OK, Some(alice.as_str())), "{admin}");
}

/// Behind a trusted proxy the forwarded address is the client's (the last one in
/// `X-Forwarded-For` that is no trusted proxy).
async fn forwarded_address_from_a_trusted_proxy(b: Backend) {
    let s = TestServer::start_with(b, |c| c.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()]).await;
    let (_, token, device) = s.register("alice", "pw-alice-1").await;
    let res = s
        .http
        .get(format!("{}/_matrix/client/v3/devices/{device}", s.base))
        .bearer_auth(&token)
        .header("X-Forwarded-For", "198.51.100.9, 127.0.0.2")
        .header("User-Agent", "Element/1.11")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    // The request is recorded before it is answered.
    let dev: serde_json::Value = res.json().await.unwrap();
    assert_eq!(dev["last_seen_ip"], "198.51.100.9", "{dev}");
}

both_engines!(
    last_seen_address_and_whois,
    forwarded_address_from_a_trusted_proxy,
    list_get_rename,
    other_users_devices_are_invisible,
    delete_device_needs_password,
    delete_devices_in_bulk,
    uia_is_bound_to_device_and_owner,
    device_keys_are_always_present
);
