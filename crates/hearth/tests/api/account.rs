//! Registration, username rules, whoami, password change and deactivation.

use hearth::store::Backend;
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::{
    both_engines,
    common::{assert_error, TestServer, SERVER_NAME, TOKEN},
};

const REGISTER: &str = "/_matrix/client/v3/register";

async fn registration_token_flow(b: Backend) {
    let s = TestServer::start(b).await;
    let body = json!({"username": "alice", "password": "pw-alice-1", "initial_device_display_name": "Laptop"});
    let (status, challenge) = s.post(REGISTER, None, body.clone()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(challenge["flows"], json!([{"stages": ["m.login.registration_token", "m.login.dummy"]}]));
    let session = challenge["session"].as_str().unwrap();

    // A wrong token is refused within the session.
    let mut wrong = body.clone();
    wrong["auth"] = json!({"type": "m.login.registration_token", "token": "nope", "session": session});
    let (status, res) = s.post(REGISTER, None, wrong).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(res["errcode"], "M_FORBIDDEN");
    assert_eq!(res["session"], session);

    // A stage that is not offered completes nothing.
    let mut other = body.clone();
    other["auth"] = json!({"type": "m.login.recaptcha", "response": "x", "session": session});
    let (status, res) = s.post(REGISTER, None, other).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(res.get("completed").is_none_or(|c| c == &json!([])), "{res}");

    let mut right = body.clone();
    right["auth"] = json!({"type": "m.login.registration_token", "token": TOKEN, "session": session});
    let (status, res) = s.post(REGISTER, None, right).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{res}");
    assert_eq!(res["completed"], json!(["m.login.registration_token"]));

    // The dummy stage alone would not have done; after the token it completes the flow.
    let mut dummy = body.clone();
    dummy["auth"] = json!({"type": "m.login.dummy", "session": session});
    let (status, res) = s.post(REGISTER, None, dummy).await;
    assert_eq!(status, StatusCode::OK, "{res}");
    assert_eq!(res["user_id"], format!("@alice:{SERVER_NAME}"));
    let token = res["access_token"].as_str().unwrap();
    assert!(token.len() >= 43);

    let (_, me) = s.get("/_matrix/client/v3/account/whoami", Some(token)).await;
    assert_eq!(me["user_id"], format!("@alice:{SERVER_NAME}"));
    assert_eq!(me["device_id"], res["device_id"]);
    // `is_guest` defaults to false and may be left out.
    assert!(me.get("is_guest").is_none_or(|g| g == false), "{me}");

    let (_, devices) = s.get("/_matrix/client/v3/devices", Some(token)).await;
    assert_eq!(devices["devices"][0]["display_name"], "Laptop");
}

async fn dummy_alone_does_not_register(b: Backend) {
    let s = TestServer::start(b).await;
    let body = json!({"username": "alice", "password": "pw", "auth": {"type": "m.login.dummy"}});
    let (status, res) = s.post(REGISTER, None, body).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{res}");
    assert_eq!(res["completed"], json!(["m.login.dummy"]));
}

async fn auth_without_type_or_session_starts_uia(b: Backend) {
    // matrix-nio's register_with_token opens with this; Synapse reads it as "no auth yet".
    let s = TestServer::start(b).await;
    let body = json!({"username": "alice", "password": "pw", "auth": {"initial_device_display_name": "matrix-nio"}});
    let (status, res) = s.post(REGISTER, None, body).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{res}");
    assert!(res["session"].is_string());
    // With a session but no type it is still a UIA continuation, not a parse error.
    let body =
        json!({"username": "alice", "password": "pw", "auth": {"type": "m.login.bogus", "session": res["session"]}});
    let (status, _) = s.post(REGISTER, None, body).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

async fn token_validity_endpoint(b: Backend) {
    let s = TestServer::start(b).await;
    let path = "/_matrix/client/v1/register/m.login.registration_token/validity";
    let (status, res) = s.get(&format!("{path}?token={TOKEN}"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(res["valid"], true);
    let (_, res) = s.get(&format!("{path}?token=wrong"), None).await;
    assert_eq!(res["valid"], false);
    assert_error(&s.get(path, None).await, 400, "M_INVALID_PARAM");
}

async fn open_registration_uses_dummy(b: Backend) {
    let s = TestServer::start_with(b, |c| c.registration_token = None).await;
    let body = json!({"username": "bob", "password": "pw-bob-1"});
    let (status, challenge) = s.post(REGISTER, None, body.clone()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(challenge["flows"], json!([{"stages": ["m.login.dummy"]}]));
    let mut body = body;
    body["auth"] = json!({"type": "m.login.dummy", "session": challenge["session"]});
    let (status, res) = s.post(REGISTER, None, body).await;
    assert_eq!(status, StatusCode::OK, "{res}");
}

async fn closed_registration_is_forbidden(b: Backend) {
    let s = TestServer::start_with(b, |c| c.allow_registration = false).await;
    let got = s.post(REGISTER, None, json!({"username": "carol", "password": "x"})).await;
    assert_error(&got, 403, "M_FORBIDDEN");
    assert_error(&s.get("/_matrix/client/v3/register/available?username=carol", None).await, 403, "M_FORBIDDEN");
}

async fn username_rules(b: Backend) {
    let s = TestServer::start(b).await;
    s.register("alice", "pw-alice-1").await;
    let got = s.post(REGISTER, None, json!({"username": "alice", "password": "x"})).await;
    assert_error(&got, 400, "M_USER_IN_USE");
    let got = s.post(REGISTER, None, json!({"username": "al ice", "password": "x"})).await;
    assert_error(&got, 400, "M_INVALID_USERNAME");
    let got = s.post(REGISTER, None, json!({"username": "a".repeat(300), "password": "x"})).await;
    assert_error(&got, 400, "M_INVALID_USERNAME");
    // A taken name with a newline after it is an invalid name, not the taken one.
    let got = s.post(REGISTER, None, json!({"username": "alice\n", "password": "x"})).await;
    assert_error(&got, 400, "M_INVALID_USERNAME");
    // A body that is not UTF-8 is not JSON.
    let res = s
        .http
        .post(format!("{}{REGISTER}", s.base))
        .body(b"{\"username\": \"\xff\xfe\"}".to_vec())
        .send()
        .await
        .expect("post");
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert_eq!(res.json::<serde_json::Value>().await.expect("json")["errcode"], "M_NOT_JSON");

    // Upper case is folded, as Conduit does, so "Alice" is alice and taken.
    let got = s.post(REGISTER, None, json!({"username": "ALICE", "password": "x"})).await;
    assert_error(&got, 400, "M_USER_IN_USE");

    let avail = "/_matrix/client/v3/register/available";
    let (status, res) = s.get(&format!("{avail}?username=dave"), None).await;
    assert_eq!((status, res["available"].clone()), (StatusCode::OK, json!(true)));
    assert_error(&s.get(&format!("{avail}?username=alice"), None).await, 400, "M_USER_IN_USE");
    assert_error(&s.get(&format!("{avail}?username=d%20ave"), None).await, 400, "M_INVALID_USERNAME");
}

async fn registration_options(b: Backend) {
    let s = TestServer::start(b).await;
    // inhibit_login: an account, but no device and no token.
    let body = json!({"username": "erin", "password": "pw-erin-1", "inhibit_login": true});
    let (status, res) = s.register_walking_uia(body).await;
    assert_eq!(status, StatusCode::OK, "{res}");
    // No `device_id` key at all (`null` reads as a device to some clients).
    assert!(res.get("access_token").is_none() && res.get("device_id").is_none(), "{res}");

    // A client-chosen device id is kept.
    let body = json!({"username": "frank", "password": "pw-frank-1", "device_id": "MYPHONE"});
    let (_, res) = s.register_walking_uia(body).await;
    assert_eq!(res["device_id"], "MYPHONE");

    // No username: one is made up.
    let (status, res) = s.register_walking_uia(json!({"password": "pw-x"})).await;
    assert_eq!(status, StatusCode::OK, "{res}");
    assert!(res["user_id"].as_str().unwrap().ends_with(&format!(":{SERVER_NAME}")));

    // Guests are not allowed.
    let got = s.post(&format!("{REGISTER}?kind=guest"), None, json!({})).await;
    assert_error(&got, 403, "M_GUEST_ACCESS_FORBIDDEN");
}

async fn first_user_is_admin(b: Backend) {
    let s = TestServer::start(b).await;
    let (first, _, _) = s.register("first", "pw-first").await;
    let (second, _, _) = s.register("second", "pw-second").await;
    let users = &s.services().users;
    assert!(users.account(&ruma::UserId::parse(&first).unwrap()).unwrap().unwrap().admin);
    assert!(!users.account(&ruma::UserId::parse(&second).unwrap()).unwrap().unwrap().admin);
}

async fn uia_session_is_bound_to_its_purpose(b: Backend) {
    let s = TestServer::start(b).await;
    let (_, token, _) = s.register("alice", "pw-alice-1").await;
    // A session from a registration attempt cannot be used for deactivation.
    let (_, challenge) = s.post(REGISTER, None, json!({"username": "zed"})).await;
    let body = json!({"auth": {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"},
        "password": "pw-alice-1", "session": challenge["session"]}});
    let (status, res) = s.post("/_matrix/client/v3/account/deactivate", Some(&token), body).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{res}");
    assert_ne!(res["session"], challenge["session"]);
}

async fn change_password_logs_out_other_devices(b: Backend) {
    let s = TestServer::start(b).await;
    let (user, token1, device1) = s.register("alice", "pw-old").await;
    let (token2, _) = s.login("alice", "pw-old").await;
    assert_eq!(s.get("/_matrix/client/v3/account/whoami", Some(&token2)).await.0, StatusCode::OK);

    // Wrong password in the UIA stage.
    let path = "/_matrix/client/v3/account/password";
    let (_, challenge) = s.post(path, Some(&token1), json!({"new_password": "pw-new"})).await;
    let body = json!({"new_password": "pw-new", "auth": {"type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": user}, "password": "wrong", "session": challenge["session"]}});
    let (status, res) = s.post(path, Some(&token1), body).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(res["errcode"], "M_FORBIDDEN");

    // Another user's password does not count either: refused outright (403, as Synapse).
    let (_, _, _) = s.register("mallory", "pw-mallory").await;
    let body = json!({"new_password": "pw-new", "auth": {"type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": "mallory"}, "password": "pw-mallory"}});
    assert_error(&s.post(path, Some(&token1), body).await, 403, "M_FORBIDDEN");

    let got =
        s.with_password_uia(Method::POST, path, &token1, json!({"new_password": "pw-new"}), &user, "pw-old").await;
    assert_eq!(got.0, StatusCode::OK, "{}", got.1);

    // The calling device stays, the other is gone, the old password no longer works.
    let (status, me) = s.get("/_matrix/client/v3/account/whoami", Some(&token1)).await;
    assert_eq!((status, me["device_id"].as_str().unwrap()), (StatusCode::OK, device1.as_str()));
    assert_error(&s.get("/_matrix/client/v3/account/whoami", Some(&token2)).await, 401, "M_UNKNOWN_TOKEN");
    let got = s.post("/_matrix/client/v3/login", None,
        json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"}, "password": "pw-old"})).await;
    assert_error(&got, 403, "M_FORBIDDEN");
    s.login("alice", "pw-new").await;
}

async fn deactivation_is_final(b: Backend) {
    let s = TestServer::start(b).await;
    let (user, token, _) = s.register("alice", "pw-alice-1").await;
    let got = s
        .with_password_uia(
            Method::POST,
            "/_matrix/client/v3/account/deactivate",
            &token,
            json!({}),
            &user,
            "pw-alice-1",
        )
        .await;
    assert_eq!(got.0, StatusCode::OK, "{}", got.1);
    // Nothing to unbind anywhere: done (as Synapse answers for an account without addresses).
    assert_eq!(got.1["id_server_unbind_result"], "success");

    assert_error(&s.get("/_matrix/client/v3/account/whoami", Some(&token)).await, 401, "M_UNKNOWN_TOKEN");
    let got = s.post("/_matrix/client/v3/login", None,
        json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"}, "password": "pw-alice-1"})).await;
    assert_error(&got, 403, "M_FORBIDDEN");
    // The id is never handed out again.
    let got = s.post(REGISTER, None, json!({"username": "alice", "password": "x"})).await;
    assert_error(&got, 400, "M_USER_IN_USE");
    assert_error(&s.get(&format!("/_matrix/client/v3/profile/{user}"), None).await, 404, "M_NOT_FOUND");
}

async fn accounts_survive_restart(b: Backend) {
    let mut s = TestServer::start(b).await;
    let (_, token, _) = s.register("alice", "pw-alice-1").await;
    s.restart().await;
    let (status, _) = s.get("/_matrix/client/v3/account/whoami", Some(&token)).await;
    assert_eq!(status, StatusCode::OK);
    s.login("alice", "pw-alice-1").await;
}

/// The request that opens the UIA session may carry the parameters alone; the final one
/// may send `auth` only (sytest, older clients), and a retry of a completed request gets
/// the same account back, logged in again.
async fn registration_remembers_and_is_idempotent(b: Backend) {
    let s = TestServer::start(b).await;
    let first = json!({
        "username": "grace", "password": "pw-grace-1", "device_id": "XYZZY",
        "initial_device_display_name": "Phone",
    });
    let (status, challenge) = s.post(REGISTER, None, first).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let session = challenge["session"].clone();
    let token_stage = json!({"auth": {"type": "m.login.registration_token", "token": TOKEN, "session": session}});
    let (status, _) = s.post(REGISTER, None, token_stage).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let dummy = json!({"auth": {"type": "m.login.dummy", "session": session}});
    let (status, res) = s.post(REGISTER, None, dummy.clone()).await;
    assert_eq!(status, StatusCode::OK, "{res}");
    assert_eq!(res["user_id"], format!("@grace:{SERVER_NAME}"));
    assert_eq!(res["device_id"], "XYZZY");
    let token = res["access_token"].as_str().unwrap().to_owned();
    let (_, device) = s.get("/_matrix/client/v3/devices/XYZZY", Some(&token)).await;
    assert_eq!(device["display_name"], "Phone");
    s.login("grace", "pw-grace-1").await;

    // The same final request again (a lost response): the same account, not M_USER_IN_USE.
    let mut again = dummy;
    again["username"] = json!("grace");
    let (status, res) = s.post(REGISTER, None, again).await;
    assert_eq!(status, StatusCode::OK, "{res}");
    assert_eq!(res["user_id"], format!("@grace:{SERVER_NAME}"));
    assert!(res["access_token"].is_string(), "{res}");

    // inhibit_login sent only with the first request still holds at the end.
    let (_, challenge) =
        s.post(REGISTER, None, json!({"username": "heidi", "password": "pw-h", "inhibit_login": true})).await;
    let session = challenge["session"].clone();
    s.post(REGISTER, None, json!({"auth": {"type": "m.login.registration_token", "token": TOKEN, "session": session}}))
        .await;
    let (status, res) = s.post(REGISTER, None, json!({"auth": {"type": "m.login.dummy", "session": session}})).await;
    assert_eq!(status, StatusCode::OK, "{res}");
    assert_eq!(res["user_id"], format!("@heidi:{SERVER_NAME}"));
    assert!(res.get("access_token").is_none() && res.get("device_id").is_none(), "{res}");
}

both_engines!(
    registration_remembers_and_is_idempotent,
    registration_token_flow,
    dummy_alone_does_not_register,
    auth_without_type_or_session_starts_uia,
    token_validity_endpoint,
    open_registration_uses_dummy,
    closed_registration_is_forbidden,
    username_rules,
    registration_options,
    first_user_is_admin,
    uia_session_is_bound_to_its_purpose,
    change_password_logs_out_other_devices,
    deactivation_is_final,
    accounts_survive_restart,
);

async fn no_third_party_ids(b: Backend) {
    let s = TestServer::start(b).await;
    let (_, token, _) = s.register("alice", "pw-alice-1").await;
    let (status, res) = s.get("/_matrix/client/v3/account/3pid", Some(&token)).await;
    assert_eq!((status, res), (StatusCode::OK, json!({"threepids": []})));
}

both_engines!(no_third_party_ids);

/// Deactivation with `erase`: those who were in the room when the erased user spoke keep
/// seeing it; those who joined later see it redacted, in /sync, /messages and /event.
async fn erased_users_messages_are_hidden_from_later_members(b: Backend) {
    let s = TestServer::start(b).await;
    let (alice, at, _) = s.register("alice", "pw-alice-1").await;
    let (_, bt, _) = s.register("bob", "pw-bob-1").await;
    let (_, ct, _) = s.register("carol", "pw-carol-1").await;
    let (_, room) = s.post("/_matrix/client/v3/createRoom", Some(&at), json!({"preset": "public_chat"})).await;
    let room = room["room_id"].as_str().unwrap().to_owned();
    s.post(&format!("/_matrix/client/v3/rooms/{room}/join"), Some(&bt), json!({})).await;
    let (_, sent) = s
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/e1"),
            Some(&at),
            json!({"msgtype": "m.text", "body": "body1"}),
        )
        .await;
    let event = sent["event_id"].as_str().unwrap().to_owned();
    s.post(&format!("/_matrix/client/v3/rooms/{room}/join"), Some(&ct), json!({})).await;
    let got = s
        .with_password_uia(
            Method::POST,
            "/_matrix/client/v3/account/deactivate",
            &at,
            json!({"erase": true}),
            &alice,
            "pw-alice-1",
        )
        .await;
    assert_eq!(got.0, StatusCode::OK, "{}", got.1);
    let content = |token: &str| {
        let path = format!("/_matrix/client/v3/rooms/{room}/event/{event}");
        let s = &s;
        let token = token.to_owned();
        async move { s.get(&path, Some(&token)).await.1["content"].clone() }
    };
    assert_eq!(content(&bt).await["body"], "body1", "bob was there");
    assert_eq!(content(&ct).await, json!({}), "carol joined later");
    let (_, page) = s.get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=50"), Some(&ct)).await;
    let seen = page["chunk"].as_array().unwrap().iter().find(|e| e["event_id"] == event.as_str()).cloned();
    assert_eq!(seen.map(|e| e["content"].clone()), Some(json!({})), "{page}");
    // And in /sync; the erased account has left the room.
    let (_, sync) = s.get("/_matrix/client/v3/sync", Some(&ct)).await;
    let timeline = sync["rooms"]["join"][&room]["timeline"]["events"].as_array().cloned().unwrap_or_default();
    let seen = timeline.iter().find(|e| e["event_id"] == event.as_str()).cloned();
    assert_eq!(seen.map(|e| e["content"].clone()), Some(json!({})), "{sync}");
    let (_, member) = s.get(&format!("/_matrix/client/v3/rooms/{room}/state/m.room.member/{alice}"), Some(&bt)).await;
    assert_eq!(member["membership"], "leave", "{member}");
}

both_engines!(erased_users_messages_are_hidden_from_later_members);
