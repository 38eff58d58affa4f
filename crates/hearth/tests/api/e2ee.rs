//! End-to-end encryption support: keys, to-device messages, cross-signing, key backup.

use hearth::store::Backend;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::{
    both_engines,
    common::{assert_error, TestServer},
};

fn device_keys(user: &str, device: &str) -> Value {
    json!({
        "user_id": user, "device_id": device,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": {format!("curve25519:{device}"): "curvekeybase64", format!("ed25519:{device}"): "edkeybase64"},
        "signatures": {user: {format!("ed25519:{device}"): "selfsig"}}
    })
}

fn otk(n: u32) -> (String, Value) {
    (format!("signed_curve25519:AAAA{n}"), json!({"key": format!("otk{n}"), "signatures": {}}))
}

struct Pair {
    s: TestServer,
    alice: String,
    at: String,
    ad: String,
    bob: String,
    bt: String,
    bd: String,
}

async fn pair(b: Backend) -> Pair {
    let s = TestServer::start(b).await;
    let (alice, at, ad) = s.register("alice", "pw-alice-1").await;
    let (bob, bt, bd) = s.register("bob", "pw-bob-1").await;
    let (_, res) = s.post("/_matrix/client/v3/createRoom", Some(&at), json!({"invite": [bob]})).await;
    let room = res["room_id"].as_str().unwrap().to_owned();
    s.post(&format!("/_matrix/client/v3/rooms/{room}/join"), Some(&bt), json!({})).await;
    Pair { s, alice, at, ad, bob, bt, bd }
}

async fn since(s: &TestServer, t: &str) -> String {
    s.get("/_matrix/client/v3/sync", Some(t)).await.1["next_batch"].as_str().unwrap().to_owned()
}

async fn upload_query_claim(b: Backend) {
    let p = pair(b).await;
    let bob_since = since(&p.s, &p.bt).await;
    let otks: serde_json::Map<String, Value> = (0..2).map(otk).collect();
    let body = json!({
        "device_keys": device_keys(&p.alice, &p.ad),
        "one_time_keys": otks,
        "fallback_keys": {"signed_curve25519:FB1": {"key": "fallback", "fallback": true, "signatures": {}}}
    });
    let (status, res) = p.s.post("/_matrix/client/v3/keys/upload", Some(&p.at), body).await;
    assert_eq!(status, StatusCode::OK, "{res}");
    assert_eq!(res["one_time_key_counts"]["signed_curve25519"], 2);

    // Keys naming someone else are refused.
    let bad = json!({"device_keys": device_keys(&p.bob, &p.ad)});
    assert_error(&p.s.post("/_matrix/client/v3/keys/upload", Some(&p.at), bad).await, 400, "M_INVALID_PARAM");

    // Bob shares a room with Alice: his sync says her keys changed, then he queries them.
    let (_, sync) = p.s.get(&format!("/_matrix/client/v3/sync?since={bob_since}&timeout=10000"), Some(&p.bt)).await;
    assert!(sync["device_lists"]["changed"].as_array().unwrap().iter().any(|u| u == p.alice.as_str()), "{sync}");
    let (status, q) =
        p.s.post("/_matrix/client/v3/keys/query", Some(&p.bt), json!({"device_keys": {&p.alice: []}})).await;
    assert_eq!(status, StatusCode::OK, "{q}");
    assert_eq!(q["device_keys"][&p.alice][&p.ad]["keys"][format!("ed25519:{}", p.ad)], "edkeybase64");
    assert_eq!(q["failures"], json!({}), "failures is always sent, empty when none failed: {q}");
    let (_, q) =
        p.s.post("/_matrix/client/v3/keys/query", Some(&p.bt), json!({"device_keys": {"@x:elsewhere.example": []}}))
            .await;
    assert!(q["failures"].get("elsewhere.example").is_some(), "{q}");

    // Claims hand out each one-time key once, then the fallback key.
    let claim = json!({"one_time_keys": {&p.alice: {&p.ad: "signed_curve25519"}}});
    let mut got = Vec::new();
    for _ in 0..3 {
        let (status, c) = p.s.post("/_matrix/client/v3/keys/claim", Some(&p.bt), claim.clone()).await;
        assert_eq!(status, StatusCode::OK, "{c}");
        let keys = c["one_time_keys"][&p.alice][&p.ad].as_object().unwrap().clone();
        got.push(keys.values().next().unwrap()["key"].as_str().unwrap().to_owned());
    }
    got.sort();
    assert_eq!(got, vec!["fallback", "otk0", "otk1"]);
    let (_, sync) = p.s.get("/_matrix/client/v3/sync", Some(&p.at)).await;
    assert_eq!(sync["device_one_time_keys_count"].get("signed_curve25519").and_then(Value::as_u64).unwrap_or(0), 0);
    assert_eq!(sync["device_unused_fallback_key_types"], json!([]));
}

async fn to_device_is_delivered_once_and_survives_restart(b: Backend) {
    let mut p = pair(b).await;
    let bob_since = since(&p.s, &p.bt).await;
    let msg = json!({"messages": {&p.bob: {&p.bd: {"secret": "for bob"}}}});
    let path = "/_matrix/client/v3/sendToDevice/m.room_key_request/txn1";
    assert_eq!(p.s.put(path, Some(&p.at), msg.clone()).await.0, StatusCode::OK);
    // A retried transaction is not delivered twice.
    assert_eq!(p.s.put(path, Some(&p.at), msg).await.0, StatusCode::OK);

    p.s.restart().await;
    let (_, sync) = p.s.get(&format!("/_matrix/client/v3/sync?since={bob_since}&timeout=0"), Some(&p.bt)).await;
    let events = sync["to_device"]["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{sync}");
    assert_eq!(events[0]["sender"], p.alice.as_str());
    assert_eq!(events[0]["type"], "m.room_key_request");
    assert_eq!(events[0]["content"]["secret"], "for bob");
    // Not yet acknowledged: a retry of the same since gets it again.
    let (_, again) = p.s.get(&format!("/_matrix/client/v3/sync?since={bob_since}&timeout=0"), Some(&p.bt)).await;
    assert_eq!(again["to_device"]["events"].as_array().unwrap().len(), 1);
    // Acknowledged by syncing from the next token: gone.
    let next = sync["next_batch"].as_str().unwrap();
    let (_, after) = p.s.get(&format!("/_matrix/client/v3/sync?since={next}&timeout=0"), Some(&p.bt)).await;
    assert!(after["to_device"]["events"].as_array().is_none_or(|a| a.is_empty()), "{after}");

    // "*" reaches every device of the user.
    let (bt2, _) = p.s.login("bob", "pw-bob-1").await;
    let s2 = since(&p.s, &bt2).await;
    let msg = json!({"messages": {&p.bob: {"*": {"hello": "all"}}}});
    p.s.put("/_matrix/client/v3/sendToDevice/m.dummy/txn2", Some(&p.at), msg).await;
    let (_, sync2) = p.s.get(&format!("/_matrix/client/v3/sync?since={s2}&timeout=10000"), Some(&bt2)).await;
    assert_eq!(sync2["to_device"]["events"][0]["content"]["hello"], "all", "{sync2}");
}

async fn deleting_a_device_drops_its_keys_and_tells_contacts(b: Backend) {
    let p = pair(b).await;
    let (bt2, bd2) = p.s.login("bob", "pw-bob-1").await;
    p.s.post("/_matrix/client/v3/keys/upload", Some(&bt2), json!({"device_keys": device_keys(&p.bob, &bd2)})).await;
    let alice_since = since(&p.s, &p.at).await;
    let got =
        p.s.with_password_uia(
            Method::DELETE,
            &format!("/_matrix/client/v3/devices/{bd2}"),
            &p.bt,
            json!({}),
            &p.bob,
            "pw-bob-1",
        )
        .await;
    assert_eq!(got.0, StatusCode::OK, "{}", got.1);
    let (_, sync) = p.s.get(&format!("/_matrix/client/v3/sync?since={alice_since}&timeout=10000"), Some(&p.at)).await;
    assert!(sync["device_lists"]["changed"].as_array().unwrap().iter().any(|u| u == p.bob.as_str()), "{sync}");
    let (_, q) = p.s.post("/_matrix/client/v3/keys/query", Some(&p.at), json!({"device_keys": {&p.bob: []}})).await;
    assert!(q["device_keys"][&p.bob].get(&bd2).is_none(), "{q}");
}

async fn cross_signing_and_signatures(b: Backend) {
    let p = pair(b).await;
    let key = |usage: &str, k: &str| json!({"user_id": p.alice, "usage": [usage], "keys": {format!("ed25519:{k}"): k}});
    let body = json!({"master_key": key("master", "MASTER"), "self_signing_key": key("self_signing", "SELF"), "user_signing_key": key("user_signing", "USER")});
    // The first upload needs no password (bootstrap right after registration).
    let (status, res) = p.s.post("/_matrix/client/v3/keys/device_signing/upload", Some(&p.at), body.clone()).await;
    assert_eq!(status, StatusCode::OK, "{res}");
    // Replacing them does.
    let (status, _) = p.s.post("/_matrix/client/v3/keys/device_signing/upload", Some(&p.at), body.clone()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let got =
        p.s.with_password_uia(
            Method::POST,
            "/_matrix/client/v3/keys/device_signing/upload",
            &p.at,
            body,
            &p.alice,
            "pw-alice-1",
        )
        .await;
    assert_eq!(got.0, StatusCode::OK, "{}", got.1);

    let (_, q) = p.s.post("/_matrix/client/v3/keys/query", Some(&p.bt), json!({"device_keys": {&p.alice: []}})).await;
    assert_eq!(q["master_keys"][&p.alice]["keys"]["ed25519:MASTER"], "MASTER");
    assert_eq!(q["self_signing_keys"][&p.alice]["keys"]["ed25519:SELF"], "SELF");
    assert!(q["user_signing_keys"].get(&p.alice).is_none(), "user-signing keys are private: {q}");
    let (_, mine) =
        p.s.post("/_matrix/client/v3/keys/query", Some(&p.at), json!({"device_keys": {&p.alice: []}})).await;
    assert_eq!(mine["user_signing_keys"][&p.alice]["keys"]["ed25519:USER"], "USER");

    // Alice signs her device with her self-signing key: a real ed25519 signature.
    let (ssk, ssk_public) = keypair();
    let body = json!({"self_signing_key": {"user_id": p.alice, "usage": ["self_signing"], "keys": {format!("ed25519:{ssk_public}"): ssk_public}}});
    let got =
        p.s.with_password_uia(
            Method::POST,
            "/_matrix/client/v3/keys/device_signing/upload",
            &p.at,
            body,
            &p.alice,
            "pw-alice-1",
        )
        .await;
    assert_eq!(got.0, StatusCode::OK, "{}", got.1);
    p.s.post("/_matrix/client/v3/keys/upload", Some(&p.at), json!({"device_keys": device_keys(&p.alice, &p.ad)})).await;
    let mut unsigned = device_keys(&p.alice, &p.ad);
    unsigned.as_object_mut().unwrap().remove("signatures");
    let mut object: ruma::CanonicalJsonObject = serde_json::from_value(unsigned).unwrap();
    ruma::signatures::sign_json(&p.alice, &ssk, &mut object).unwrap();
    let signed = serde_json::to_value(&object).unwrap();
    let (status, res) =
        p.s.post("/_matrix/client/v3/keys/signatures/upload", Some(&p.at), json!({&p.alice: {&p.ad: signed}})).await;
    assert_eq!(status, StatusCode::OK, "{res}");
    assert!(res.get("failures").is_none_or(|f| f.as_object().is_some_and(|o| o.is_empty())), "{res}");
    let (_, q) =
        p.s.post("/_matrix/client/v3/keys/query", Some(&p.bt), json!({"device_keys": {&p.alice: [&p.ad]}})).await;
    let sigs = &q["device_keys"][&p.alice][&p.ad]["signatures"][&p.alice];
    assert_eq!(sigs[format!("ed25519:{ssk_public}")], signed["signatures"][&p.alice][format!("ed25519:{ssk_public}")]);
    assert_eq!(sigs[format!("ed25519:{}", p.ad)], "selfsig");

    // A forged signature is a failure and changes nothing.
    let mut forged = signed.clone();
    forged["signatures"][&p.alice][format!("ed25519:{ssk_public}")] = json!("AAAAforgedAAAA");
    let (_, res) =
        p.s.post("/_matrix/client/v3/keys/signatures/upload", Some(&p.at), json!({&p.alice: {&p.ad: forged}})).await;
    assert_eq!(res["failures"][&p.alice][&p.ad]["errcode"], "M_INVALID_SIGNATURE", "{res}");
    // Signing a key that does not exist is a failure too.
    let (_, res) =
        p.s.post("/_matrix/client/v3/keys/signatures/upload", Some(&p.at), json!({&p.alice: {"NOPE": signed}})).await;
    assert!(res["failures"][&p.alice].get("NOPE").is_some(), "{res}");
}

/// A new user-signing key alone is private: the owner's other devices hear of it, the
/// people they share rooms with do not (they never see that key). The UIA stage names the
/// user with r0's top-level `user`, which Synapse still accepts.
async fn user_signing_key_changes_stay_with_the_owner(b: Backend) {
    let p = pair(b).await;
    let key = |usage: &str, k: &str| json!({"user_id": p.alice, "usage": [usage], "keys": {format!("ed25519:{k}"): k}});
    let body = json!({"master_key": key("master", "MASTER"), "self_signing_key": key("self_signing", "SELF")});
    let (status, res) = p.s.post("/_matrix/client/v3/keys/device_signing/upload", Some(&p.at), body).await;
    assert_eq!(status, StatusCode::OK, "{res}");
    let (a_since, b_since) = (since(&p.s, &p.at).await, since(&p.s, &p.bt).await);
    let path = "/_matrix/client/v3/keys/device_signing/upload";
    let body = json!({"user_signing_key": key("user_signing", "USER")});
    let (status, challenge) = p.s.post(path, Some(&p.at), body.clone()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let mut body = body;
    body["auth"] =
        json!({"type": "m.login.password", "user": p.alice, "password": "pw-alice-1", "session": challenge["session"]});
    let (status, res) = p.s.post(path, Some(&p.at), body).await;
    assert_eq!(status, StatusCode::OK, "{res}");
    let changed = |sync: &Value| sync["device_lists"]["changed"].as_array().cloned().unwrap_or_default();
    let (_, mine) = p.s.get(&format!("/_matrix/client/v3/sync?since={a_since}&timeout=0"), Some(&p.at)).await;
    assert!(changed(&mine).iter().any(|u| u == p.alice.as_str()), "{mine}");
    let (_, bobs) = p.s.get(&format!("/_matrix/client/v3/sync?since={b_since}&timeout=0"), Some(&p.bt)).await;
    assert!(!changed(&bobs).iter().any(|u| u == p.alice.as_str()), "{bobs}");
    let (_, keys) = p
        .s
        .get(&format!("/_matrix/client/v3/keys/changes?from={b_since}&to={}", since(&p.s, &p.bt).await), Some(&p.bt))
        .await;
    assert!(!keys["changed"].as_array().unwrap().iter().any(|u| u == p.alice.as_str()), "{keys}");
}

/// A fresh ed25519 key pair whose key id is its own public key, as cross-signing keys are.
fn keypair() -> (ruma::signatures::Ed25519KeyPair, String) {
    use ruma::signatures::Ed25519KeyPair;
    let doc = Ed25519KeyPair::generate();
    let probe = Ed25519KeyPair::from_der(&doc, "probe".into()).unwrap();
    let public = ruma::serde::Base64::<ruma::serde::base64::Standard>::new(probe.public_key().to_vec()).encode();
    (Ed25519KeyPair::from_der(&doc, public.clone()).unwrap(), public)
}

async fn key_backup_round_trip(b: Backend) {
    let p = pair(b).await;
    let algo = json!({"algorithm": "m.megolm_backup.v1.curve25519-aes-sha2", "auth_data": {"public_key": "pk", "signatures": {}}});
    let (status, res) = p.s.post("/_matrix/client/v3/room_keys/version", Some(&p.at), algo.clone()).await;
    assert_eq!(status, StatusCode::OK, "{res}");
    let v = res["version"].as_str().unwrap().to_owned();
    let data = |index: u64, verified: bool| {
        json!({"first_message_index": index, "forwarded_count": 0, "is_verified": verified,
        "session_data": {"ephemeral": "e", "ciphertext": format!("c{index}"), "mac": "m"}})
    };
    let room = "!room:hearth.test";
    let (status, res) =
        p.s.put(
            &format!("/_matrix/client/v3/room_keys/keys?version={v}"),
            Some(&p.at),
            json!({"rooms": {room: {"sessions": {"s1": data(5, false), "s2": data(0, true)}}}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{res}");
    assert_eq!(res["count"], 2);
    let etag1 = res["etag"].clone();
    // A worse key does not replace a better one; a better one does.
    p.s.put(&format!("/_matrix/client/v3/room_keys/keys/{room}/s1?version={v}"), Some(&p.at), data(9, false)).await;
    let (_, one) = p.s.get(&format!("/_matrix/client/v3/room_keys/keys/{room}/s1?version={v}"), Some(&p.at)).await;
    assert_eq!(one["first_message_index"], 5);
    let (_, res) =
        p.s.put(&format!("/_matrix/client/v3/room_keys/keys/{room}/s1?version={v}"), Some(&p.at), data(1, false)).await;
    assert_ne!(res["etag"], etag1);
    let (_, info) = p.s.get("/_matrix/client/v3/room_keys/version", Some(&p.at)).await;
    assert_eq!((info["version"].as_str(), info["count"].as_u64()), (Some(v.as_str()), Some(2)));
    assert_eq!(info["algorithm"], "m.megolm_backup.v1.curve25519-aes-sha2");

    // A new device restores everything.
    let (bt2, _) = p.s.login("alice", "pw-alice-1").await;
    let (_, all) = p.s.get(&format!("/_matrix/client/v3/room_keys/keys?version={v}"), Some(&bt2)).await;
    assert_eq!(all["rooms"][room]["sessions"]["s1"]["first_message_index"], 1);
    assert_eq!(all["rooms"][room]["sessions"]["s2"]["is_verified"], true);

    // Old versions are read-only; others' backups are invisible.
    let (_, res) = p.s.post("/_matrix/client/v3/room_keys/version", Some(&p.at), algo).await;
    let v2 = res["version"].as_str().unwrap().to_owned();
    let got =
        p.s.put(&format!("/_matrix/client/v3/room_keys/keys/{room}/s3?version={v}"), Some(&p.at), data(0, false)).await;
    assert_error(&got, 403, "M_WRONG_ROOM_KEYS_VERSION");
    assert_eq!(got.1["current_version"], v2.as_str());
    assert_error(&p.s.get(&format!("/_matrix/client/v3/room_keys/version/{v}"), Some(&p.bt)).await, 404, "M_NOT_FOUND");
    let (status, _) =
        p.s.request(Method::DELETE, &format!("/_matrix/client/v3/room_keys/version/{v}"), Some(&p.at), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_error(&p.s.get(&format!("/_matrix/client/v3/room_keys/version/{v}"), Some(&p.at)).await, 404, "M_NOT_FOUND");
}

both_engines!(
    upload_query_claim,
    to_device_is_delivered_once_and_survives_restart,
    deleting_a_device_drops_its_keys_and_tells_contacts,
    cross_signing_and_signatures,
    key_backup_round_trip,
    user_signing_key_changes_stay_with_the_owner,
);

async fn device_lists_follow_membership(b: Backend) {
    joins_and_leaves_reach_device_lists(b, false).await
}

/// Membership changes from before a restart still reach a token from before it.
async fn device_lists_span_a_restart(b: Backend) {
    joins_and_leaves_reach_device_lists(b, true).await
}

async fn joins_and_leaves_reach_device_lists(b: Backend, restart_after_join: bool) {
    let mut s = TestServer::start(b).await;
    let (_, at, _) = s.register("alice", "pw-alice-1").await;
    let (bob, bt, _) = s.register("bob", "pw-bob-1").await;
    let (_, res) = s.post("/_matrix/client/v3/createRoom", Some(&at), json!({"preset": "public_chat"})).await;
    let room = res["room_id"].as_str().unwrap().to_owned();
    let a_since = since(&s, &at).await;
    s.post(&format!("/_matrix/client/v3/rooms/{room}/join"), Some(&bt), json!({})).await;
    if restart_after_join {
        s.restart().await;
    }
    let (_, sync) = s.get(&format!("/_matrix/client/v3/sync?since={a_since}&timeout=0"), Some(&at)).await;
    assert!(
        sync["device_lists"]["changed"].as_array().unwrap().iter().any(|u| u == bob.as_str()),
        "a new member's devices must be queried: {sync}"
    );
    // /keys/changes says the same for the same span.
    let to = sync["next_batch"].as_str().unwrap().to_owned();
    let (_, changes) = s.get(&format!("/_matrix/client/v3/keys/changes?from={a_since}&to={to}"), Some(&at)).await;
    assert!(changes["changed"].as_array().unwrap().iter().any(|u| u == bob.as_str()), "{changes}");
    let a_since = to;
    s.post(&format!("/_matrix/client/v3/rooms/{room}/leave"), Some(&bt), json!({})).await;
    let (_, sync) = s.get(&format!("/_matrix/client/v3/sync?since={a_since}&timeout=0"), Some(&at)).await;
    assert!(sync["device_lists"]["left"].as_array().unwrap().iter().any(|u| u == bob.as_str()), "{sync}");
    let to = sync["next_batch"].as_str().unwrap().to_owned();
    let (_, changes) = s.get(&format!("/_matrix/client/v3/keys/changes?from={a_since}&to={to}"), Some(&at)).await;
    assert!(changes["left"].as_array().unwrap().iter().any(|u| u == bob.as_str()), "{changes}");

    // Someone invited who shares no room is a change (clients that encrypt for invited
    // members need their devices, and Synapse lists them so), never a leave: they never
    // were a member.
    let (carol, _, _) = s.register("carol", "pw-carol-1").await;
    let a_since = to;
    s.post(&format!("/_matrix/client/v3/rooms/{room}/invite"), Some(&at), json!({"user_id": carol})).await;
    let (_, sync) = s.get(&format!("/_matrix/client/v3/sync?since={a_since}&timeout=0"), Some(&at)).await;
    let listed = |kind: &str| sync["device_lists"][kind].as_array().is_some_and(|l| l.iter().any(|u| u == &carol));
    assert!(!listed("left") && listed("changed"), "{sync}");
}

/// A new device (a login) or a renamed one is a device-list change: the user's own other
/// devices and their contacts see it, so they encrypt for the new device.
async fn new_and_renamed_devices_reach_device_lists(b: Backend) {
    let p = pair(b).await;
    let (a_since, b_since) = (since(&p.s, &p.at).await, since(&p.s, &p.bt).await);
    let (bob_new_token, bob_new_device) = p.s.login("bob", "pw-bob-1").await;
    for (token, from) in [(&p.at, &a_since), (&p.bt, &b_since)] {
        let (_, sync) = p.s.get(&format!("/_matrix/client/v3/sync?since={from}&timeout=0"), Some(token)).await;
        let changed = sync["device_lists"]["changed"].as_array().cloned().unwrap_or_default();
        assert!(changed.iter().any(|u| u == p.bob.as_str()), "bob's new device: {sync}");
    }
    let a_since = since(&p.s, &p.at).await;
    let (status, _) =
        p.s.put(
            &format!("/_matrix/client/v3/devices/{bob_new_device}"),
            Some(&bob_new_token),
            json!({"display_name": "phone"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, sync) = p.s.get(&format!("/_matrix/client/v3/sync?since={a_since}&timeout=0"), Some(&p.at)).await;
    assert!(sync["device_lists"]["changed"].as_array().unwrap().iter().any(|u| u == p.bob.as_str()), "{sync}");
    // Keys without their required fields are refused; /keys/query always has `unsigned`.
    let bare = json!({"device_keys": {"user_id": p.bob, "device_id": bob_new_device}});
    assert_error(&p.s.post("/_matrix/client/v3/keys/upload", Some(&bob_new_token), bare).await, 400, "M_BAD_JSON");
    let keys = json!({"device_keys": device_keys(&p.bob, &bob_new_device)});
    assert_eq!(p.s.post("/_matrix/client/v3/keys/upload", Some(&bob_new_token), keys).await.0, StatusCode::OK);
    let (_, query) =
        p.s.post("/_matrix/client/v3/keys/query", Some(&p.at), json!({"device_keys": {p.bob.clone(): []}})).await;
    assert_eq!(query["device_keys"][&p.bob][&bob_new_device]["unsigned"]["device_display_name"], "phone", "{query}");
    let _ = (&p.alice, &p.ad, &p.bd);
}

async fn encryption_can_be_disabled(b: Backend) {
    let s = TestServer::start_with(b, |c| c.allow_encryption = false).await;
    let (_, at, _) = s.register("alice", "pw-alice-1").await;
    let enc = json!({"initial_state": [{"type": "m.room.encryption", "state_key": "", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}]});
    assert_error(&s.post("/_matrix/client/v3/createRoom", Some(&at), enc).await, 403, "M_FORBIDDEN");
    let (_, res) = s.post("/_matrix/client/v3/createRoom", Some(&at), json!({})).await;
    let room = res["room_id"].as_str().unwrap();
    let got = s
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/state/m.room.encryption/"),
            Some(&at),
            json!({"algorithm": "m.megolm.v1.aes-sha2"}),
        )
        .await;
    assert_error(&got, 403, "M_FORBIDDEN");
    let got = s
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.encrypted/1"),
            Some(&at),
            json!({"algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "x"}),
        )
        .await;
    assert_error(&got, 403, "M_FORBIDDEN");
}

/// A device whose queue is empty and known to be (it acknowledged everything) still gets
/// what arrives later, also after syncing once from a made-up token from the future.
async fn to_device_reaches_a_device_with_an_empty_queue(b: Backend) {
    let p = pair(b).await;
    let sync = |since: String| {
        let s = &p.s;
        let bt = p.bt.clone();
        async move { s.get(&format!("/_matrix/client/v3/sync?since={since}&timeout=0"), Some(&bt)).await.1 }
    };
    let first = since(&p.s, &p.bt).await;
    // Two incremental syncs with nothing queued: the second has its queue known empty.
    let next = sync(first).await["next_batch"].as_str().unwrap().to_owned();
    let next = sync(next).await["next_batch"].as_str().unwrap().to_owned();
    let send = |n: u32| {
        let msg = json!({"messages": {&p.bob: {&p.bd: {"n": n}}}});
        let (s, at) = (&p.s, p.at.clone());
        async move {
            let path = format!("/_matrix/client/v3/sendToDevice/m.dummy/txn{n}");
            assert_eq!(s.put(&path, Some(&at), msg).await.0, StatusCode::OK);
        }
    };
    // A token from the future claims everything queued so far was seen (message 0 goes),
    // but says nothing about what is queued later.
    send(0).await;
    let (status, future) = p.s.get("/_matrix/client/v3/sync?since=s999999_0&timeout=0", Some(&p.bt)).await;
    assert_eq!(status, StatusCode::OK, "{future}");
    send(1).await;
    send(2).await;
    let got = sync(next).await;
    let events = got["to_device"]["events"].as_array().unwrap();
    assert_eq!(events.iter().map(|e| e["content"]["n"].clone()).collect::<Vec<_>>(), [json!(1), json!(2)], "{got}");
    // Acknowledged by the next token, and nothing comes twice.
    let after = sync(got["next_batch"].as_str().unwrap().to_owned()).await;
    assert!(after["to_device"]["events"].as_array().is_none_or(|a| a.is_empty()), "{after}");
}

/// Key counts in sync follow uploads and claims (they are kept in memory between syncs).
async fn key_counts_in_sync_follow_uploads_and_claims(b: Backend) {
    let p = pair(b).await;
    let counts = || async {
        let (_, sync) = p.s.get("/_matrix/client/v3/sync?timeout=0", Some(&p.at)).await;
        let otks = sync["device_one_time_keys_count"]["signed_curve25519"].as_u64().unwrap_or(0);
        (otks, sync["device_unused_fallback_key_types"].clone())
    };
    assert_eq!(counts().await, (0, json!([])));
    let otks: serde_json::Map<String, Value> = (0..3).map(otk).collect();
    let body = json!({
        "one_time_keys": otks,
        "fallback_keys": {"signed_curve25519:FB1": {"key": "fallback", "fallback": true, "signatures": {}}}
    });
    assert_eq!(p.s.post("/_matrix/client/v3/keys/upload", Some(&p.at), body).await.0, StatusCode::OK);
    assert_eq!(counts().await, (3, json!(["signed_curve25519"])));
    let claim = json!({"one_time_keys": {&p.alice: {&p.ad: "signed_curve25519"}}});
    for left in [2, 1, 0] {
        assert_eq!(p.s.post("/_matrix/client/v3/keys/claim", Some(&p.bt), claim.clone()).await.0, StatusCode::OK);
        assert_eq!(counts().await, (left, json!(["signed_curve25519"])));
    }
    // Out of one-time keys: the fallback key is handed out and no longer unused.
    assert_eq!(p.s.post("/_matrix/client/v3/keys/claim", Some(&p.bt), claim).await.0, StatusCode::OK);
    assert_eq!(counts().await, (0, json!([])));
}

/// Claims racing for one device's keys each get a different one-time key (then the
/// fallback key, which may be handed out again).
async fn concurrent_claims_never_share_a_key(b: Backend) {
    let p = pair(b).await;
    let otks: serde_json::Map<String, Value> = (0..10).map(otk).collect();
    let body = json!({
        "one_time_keys": otks,
        "fallback_keys": {"signed_curve25519:FB1": {"key": "fallback", "fallback": true, "signatures": {}}}
    });
    assert_eq!(p.s.post("/_matrix/client/v3/keys/upload", Some(&p.at), body).await.0, StatusCode::OK);
    let claim = json!({"one_time_keys": {&p.alice: {&p.ad: "signed_curve25519"}}});
    let claims = (0..14).map(|_| p.s.post("/_matrix/client/v3/keys/claim", Some(&p.bt), claim.clone()));
    let mut got: Vec<String> = futures_util::future::join_all(claims)
        .await
        .into_iter()
        .map(|(status, c)| {
            assert_eq!(status, StatusCode::OK, "{c}");
            let keys = c["one_time_keys"][&p.alice][&p.ad].as_object().cloned().unwrap_or_default();
            keys.values().next().map(|k| k["key"].as_str().unwrap_or_default().to_owned()).unwrap_or_default()
        })
        .collect();
    got.sort();
    let mut expected: Vec<String> = (0..10).map(|n| format!("otk{n}")).collect();
    expected.extend(std::iter::repeat_n("fallback".to_owned(), 4));
    expected.sort();
    assert_eq!(got, expected);
}

/// When the user leaves, the members they no longer share a room with are `left` for them.
async fn leaving_makes_the_others_left(b: Backend) {
    let p = pair(b).await;
    let a_since = since(&p.s, &p.at).await;
    let (_, rooms) = p.s.get("/_matrix/client/v3/joined_rooms", Some(&p.at)).await;
    let room = rooms["joined_rooms"][0].as_str().expect("a room").to_owned();
    assert_eq!(
        p.s.post(&format!("/_matrix/client/v3/rooms/{room}/leave"), Some(&p.at), json!({})).await.0,
        StatusCode::OK
    );
    let (_, sync) = p.s.get(&format!("/_matrix/client/v3/sync?since={a_since}&timeout=0"), Some(&p.at)).await;
    let left = sync["device_lists"]["left"].as_array().cloned().unwrap_or_default();
    assert!(left.iter().any(|u| u == p.bob.as_str()), "{sync}");
}

both_engines!(
    leaving_makes_the_others_left,
    new_and_renamed_devices_reach_device_lists,
    concurrent_claims_never_share_a_key,
    device_lists_follow_membership,
    encryption_can_be_disabled,
    to_device_reaches_a_device_with_an_empty_queue,
    key_counts_in_sync_follow_uploads_and_claims,
    device_lists_span_a_restart,
);
