//! Guest access (`allow_guest_access`): guest accounts, what they may call, joining only
//! rooms that let guests in (and leaving when that changes), reading world-readable rooms
//! without joining, and upgrading to a full account.

use hearth::store::Backend;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::{
    both_engines,
    common::{assert_error, TestServer},
};

const REGISTER: &str = "/_matrix/client/v3/register";

async fn guest(s: &TestServer) -> (String, String) {
    let (status, res) = s.post(&format!("{REGISTER}?kind=guest"), None, json!({})).await;
    assert_eq!(status, StatusCode::OK, "{res}");
    (res["user_id"].as_str().unwrap().to_owned(), res["access_token"].as_str().unwrap().to_owned())
}

async fn create(s: &TestServer, token: &str, body: Value) -> String {
    let (status, res) = s.post("/_matrix/client/v3/createRoom", Some(token), body).await;
    assert_eq!(status, StatusCode::OK, "{res}");
    res["room_id"].as_str().unwrap().to_owned()
}

async fn membership(s: &TestServer, token: &str, room: &str, user: &str) -> Option<String> {
    let (status, res) =
        s.get(&format!("/_matrix/client/v3/rooms/{room}/state/m.room.member/{user}"), Some(token)).await;
    (status == StatusCode::OK).then(|| res["membership"].as_str().unwrap_or_default().to_owned())
}

async fn guest_accounts_and_their_limits(b: Backend) {
    let s = TestServer::start_with(b, |c| c.allow_guest_access = true).await;
    let (alice_id, alice, _) = s.register("alice", "pw-alice-1").await;
    let (guest_id, gt) = guest(&s).await;
    // Digits only, as Synapse names guests; never the server's admin though it came early.
    let localpart = guest_id.trim_start_matches('@').split(':').next().unwrap();
    assert!(localpart.chars().all(|c| c.is_ascii_digit()), "{guest_id}");
    let (_, me) = s.get("/_matrix/client/v3/account/whoami", Some(&gt)).await;
    assert_eq!((me["user_id"].as_str(), me["is_guest"].as_bool()), (Some(guest_id.as_str()), Some(true)));

    // Outside the guest list: 403 M_GUEST_ACCESS_FORBIDDEN, on ruma and hand-written routes.
    let forbidden = [
        s.post("/_matrix/client/v3/createRoom", Some(&gt), json!({})).await,
        s.get("/_matrix/client/v3/initialSync", Some(&gt)).await,
        s.get("/_matrix/client/v3/events?timeout=0", Some(&gt)).await,
        s.get("/_matrix/client/v3/joined_rooms", Some(&gt)).await,
        s.post("/_matrix/client/v3/user_directory/search", Some(&gt), json!({"search_term": "a"})).await,
    ];
    for got in &forbidden {
        assert_error(got, 403, "M_GUEST_ACCESS_FORBIDDEN");
    }
    // Media: reading yes, uploading no.
    let upload = s
        .http
        .post(format!("{}/_matrix/media/v3/upload", s.base))
        .bearer_auth(&gt)
        .header("Content-Type", "text/plain")
        .body("hi")
        .send()
        .await
        .unwrap();
    assert_eq!(upload.status(), StatusCode::FORBIDDEN);
    // On the list: sync, own devices, filters, push rules.
    for path in ["/_matrix/client/v3/sync?timeout=0", "/_matrix/client/v3/devices", "/_matrix/client/v3/pushrules/"] {
        assert_eq!(s.get(path, Some(&gt)).await.0, StatusCode::OK, "{path}");
    }

    // Joining: only where m.room.guest_access is can_join.
    let room = create(&s, &alice, json!({"preset": "public_chat"})).await;
    let got = s.post(&format!("/_matrix/client/v3/rooms/{room}/join"), Some(&gt), json!({})).await;
    assert_error(&got, 403, "M_FORBIDDEN");
    let path = format!("/_matrix/client/v3/rooms/{room}/state/m.room.guest_access");
    assert_eq!(s.put(&path, Some(&alice), json!({"guest_access": "can_join"})).await.0, StatusCode::OK);
    let (status, res) = s.post(&format!("/_matrix/client/v3/join/{room}"), Some(&gt), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{res}");
    let (status, res) = s
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/t1"),
            Some(&gt),
            json!({"msgtype": "m.text", "body": "hi"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{res}");
    // A display name of its own, copied into its member event.
    let (status, _) = s
        .put(
            &format!("/_matrix/client/v3/profile/{guest_id}/displayname"),
            Some(&gt),
            json!({"displayname": "creeper"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, member) =
        s.get(&format!("/_matrix/client/v3/rooms/{room}/state/m.room.member/{guest_id}"), Some(&alice)).await;
    assert_eq!(member["displayname"], "creeper");
    // Guests may not invite.
    let got = s.post(&format!("/_matrix/client/v3/rooms/{room}/invite"), Some(&gt), json!({"user_id": "@x:y"})).await;
    assert_error(&got, 403, "M_GUEST_ACCESS_FORBIDDEN");

    // Guest access withdrawn: the guest is made to leave; alice, no guest, stays.
    assert_eq!(s.put(&path, Some(&alice), json!({"guest_access": "forbidden"})).await.0, StatusCode::OK);
    assert_eq!(membership(&s, &alice, &room, &guest_id).await.as_deref(), Some("leave"));
    assert_eq!(membership(&s, &alice, &room, &alice_id).await.as_deref(), Some("join"));
}

/// A guest (or anyone) reads a world-readable room without joining: its history, its
/// initial sync, and the event stream of that room (events, typing), from the initial
/// sync's `end`.
async fn guests_read_world_readable_rooms(b: Backend) {
    let s = TestServer::start_with(b, |c| c.allow_guest_access = true).await;
    let (alice_id, alice, _) = s.register("alice", "pw-alice-1").await;
    let (_, gt) = guest(&s).await;
    let room = create(&s, &alice, json!({"preset": "public_chat"})).await;
    let private = create(&s, &alice, json!({"preset": "private_chat"})).await;
    let hv = format!("/_matrix/client/v3/rooms/{room}/state/m.room.history_visibility");
    assert_eq!(s.put(&hv, Some(&alice), json!({"history_visibility": "world_readable"})).await.0, StatusCode::OK);

    let (status, init) = s.get(&format!("/_matrix/client/v3/rooms/{room}/initialSync"), Some(&gt)).await;
    assert_eq!(status, StatusCode::OK, "{init}");
    assert!(init.get("membership").is_none(), "{init}");
    let end = init["messages"]["end"].as_str().unwrap().to_owned();
    let got = s.get(&format!("/_matrix/client/v3/rooms/{private}/initialSync"), Some(&gt)).await;
    assert_error(&got, 403, "M_FORBIDDEN");

    let send = format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/m1");
    s.put(&send, Some(&alice), json!({"msgtype": "m.text", "body": "mice"})).await;
    let stream = format!("/_matrix/client/v3/events?room_id={room}&timeout=5000&from={end}");
    let (status, got) = s.get(&stream, Some(&gt)).await;
    assert_eq!(status, StatusCode::OK, "{got}");
    assert_eq!(got["chunk"][0]["content"]["body"], "mice", "{got}");
    let end = got["end"].as_str().unwrap().to_owned();
    let typing = format!("/_matrix/client/v3/rooms/{room}/typing/{alice_id}");
    s.put(&typing, Some(&alice), json!({"typing": true, "timeout": 30000})).await;
    let stream = format!("/_matrix/client/v3/events?room_id={room}&timeout=5000&from={end}");
    let (_, got) = s.get(&stream, Some(&gt)).await;
    let typing = got["chunk"].as_array().unwrap().iter().find(|e| e["type"] == "m.typing").cloned();
    let typing = typing.unwrap_or_else(|| panic!("no typing in {got}"));
    assert_eq!((typing["room_id"].as_str(), &typing["content"]["user_ids"]), (Some(room.as_str()), &json!([alice_id])));

    let (status, msgs) = s.get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=b"), Some(&gt)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(msgs["chunk"].as_array().unwrap().iter().any(|e| e["content"]["body"] == "mice"), "{msgs}");
    // Sending without joining is refused.
    let got = s.put(&format!("{send}-guest"), Some(&gt), json!({"msgtype": "m.text", "body": "x"})).await;
    assert_eq!(got.0, StatusCode::FORBIDDEN, "{}", got.1);
}

/// `/register` with `guest_access_token` and the guest's own localpart makes the guest a
/// full account (behind the usual UIA); another guest's token is refused.
async fn guests_upgrade(b: Backend) {
    let s = TestServer::start_with(b, |c| c.allow_guest_access = true).await;
    let (g1, t1) = guest(&s).await;
    let (_, t2) = guest(&s).await;
    let localpart = g1.trim_start_matches('@').split(':').next().unwrap().to_owned();
    let body = json!({"username": localpart, "password": "pw-upgraded", "guest_access_token": t2});
    assert_eq!(s.post(REGISTER, None, body).await.0, StatusCode::FORBIDDEN);

    let body = json!({"username": localpart, "password": "pw-upgraded", "guest_access_token": t1});
    let (status, res) = s.register_walking_uia(body).await;
    assert_eq!(status, StatusCode::OK, "{res}");
    assert_eq!(res["user_id"], g1.as_str());
    let token = res["access_token"].as_str().unwrap();
    let (_, me) = s.get("/_matrix/client/v3/account/whoami", Some(token)).await;
    assert!(me.get("is_guest").is_none_or(|g| g == false), "{me}");
    // A full account now: the guest's own token too, and a password login.
    assert_eq!(s.post("/_matrix/client/v3/createRoom", Some(&t1), json!({})).await.0, StatusCode::OK);
    s.login(&g1, "pw-upgraded").await;
    // Upgrading twice is not possible.
    let body = json!({"username": localpart, "password": "pw-again", "guest_access_token": t1});
    assert_eq!(s.post(REGISTER, None, body).await.0, StatusCode::FORBIDDEN);
}

both_engines!(guest_accounts_and_their_limits, guests_read_world_readable_rooms, guests_upgrade);
