//! Typing, receipts, read markers, account data and tags, and how sync carries them.

use hearth::store::Backend;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::{
    both_engines,
    common::{assert_error, TestServer},
};

struct Pair {
    s: TestServer,
    alice: String,
    at: String,
    bob: String,
    bt: String,
    room: String,
}

async fn pair(b: Backend) -> Pair {
    let s = TestServer::start(b).await;
    let (alice, at, _) = s.register("alice", "pw-alice-1").await;
    let (bob, bt, _) = s.register("bob", "pw-bob-1").await;
    let (_, res) = s.post("/_matrix/client/v3/createRoom", Some(&at), json!({"invite": [bob]})).await;
    let room = res["room_id"].as_str().unwrap().to_owned();
    s.post(&format!("/_matrix/client/v3/rooms/{room}/join"), Some(&bt), json!({})).await;
    Pair { s, alice, at, bob, bt, room }
}

async fn next_batch(s: &TestServer, token: &str) -> String {
    let (_, res) = s.get("/_matrix/client/v3/sync", Some(token)).await;
    res["next_batch"].as_str().unwrap().to_owned()
}

async fn sync_since(s: &TestServer, token: &str, since: &str, timeout: u32) -> Value {
    let (status, res) = s.get(&format!("/_matrix/client/v3/sync?since={since}&timeout={timeout}"), Some(token)).await;
    assert_eq!(status, StatusCode::OK, "{res}");
    res
}

fn ephemeral<'a>(res: &'a Value, room: &str, kind: &str) -> Option<&'a Value> {
    res["rooms"]["join"][room]["ephemeral"]["events"].as_array()?.iter().find(|e| e["type"] == kind)
}

async fn typing_reaches_the_other_member(b: Backend) {
    let p = pair(b).await;
    let since = next_batch(&p.s, &p.bt).await;
    let path = format!("/_matrix/client/v3/rooms/{}/typing/{}", p.room, p.alice);
    let (status, _) = p.s.put(&path, Some(&p.at), json!({"typing": true, "timeout": 20000})).await;
    assert_eq!(status, StatusCode::OK);
    let res = sync_since(&p.s, &p.bt, &since, 10000).await;
    let typing = ephemeral(&res, &p.room, "m.typing").unwrap_or_else(|| panic!("no typing in {res}"));
    assert_eq!(typing["content"]["user_ids"], json!([p.alice]));

    // Stopping is seen too.
    let since = res["next_batch"].as_str().unwrap().to_owned();
    p.s.put(&path, Some(&p.at), json!({"typing": false})).await;
    let res = sync_since(&p.s, &p.bt, &since, 10000).await;
    assert_eq!(ephemeral(&res, &p.room, "m.typing").unwrap()["content"]["user_ids"], json!([]));
    // A sync to which the room is new (an initial one here) says nobody types now, as
    // Synapse's does for a room where typing happened: a client whose last view of the
    // room had Alice typing learns that she stopped.
    let (_, initial) = p.s.get("/_matrix/client/v3/sync", Some(&p.bt)).await;
    assert_eq!(ephemeral(&initial, &p.room, "m.typing").unwrap()["content"]["user_ids"], json!([]), "{initial}");

    // Nobody sets another user's typing state.
    let other = format!("/_matrix/client/v3/rooms/{}/typing/{}", p.room, p.bob);
    assert_error(&p.s.put(&other, Some(&p.at), json!({"typing": true, "timeout": 1000})).await, 403, "M_FORBIDDEN");

    // Without a timeout (clients leave it out), as Synapse: typing for 30 seconds.
    let since = res["next_batch"].as_str().unwrap().to_owned();
    assert_eq!(p.s.put(&path, Some(&p.at), json!({"typing": true})).await.0, StatusCode::OK);
    let res = sync_since(&p.s, &p.bt, &since, 10000).await;
    assert_eq!(ephemeral(&res, &p.room, "m.typing").unwrap()["content"]["user_ids"], json!([p.alice]));
    assert_error(&p.s.put(&path, Some(&p.at), json!({"typing": "yes"})).await, 400, "M_BAD_JSON");
}

async fn typing_expires(b: Backend) {
    let p = pair(b).await;
    let path = format!("/_matrix/client/v3/rooms/{}/typing/{}", p.room, p.alice);
    p.s.put(&path, Some(&p.at), json!({"typing": true, "timeout": 300})).await;
    // After the timeout a waiting sync is woken with the typing list emptied.
    let since = next_batch(&p.s, &p.bt).await;
    let res = sync_since(&p.s, &p.bt, &since, 10000).await;
    assert_eq!(
        ephemeral(&res, &p.room, "m.typing").map(|t| t["content"]["user_ids"].clone()),
        Some(json!([])),
        "{res}"
    );
}

async fn receipts_public_and_private(b: Backend) {
    let p = pair(b).await;
    let (_, sent) =
        p.s.put(
            &format!("/_matrix/client/v3/rooms/{}/send/m.room.message/r1", p.room),
            Some(&p.at),
            json!({"msgtype": "m.text", "body": "read me"}),
        )
        .await;
    let event = sent["event_id"].as_str().unwrap().to_owned();
    let a_since = next_batch(&p.s, &p.at).await;

    let path = format!("/_matrix/client/v3/rooms/{}/receipt/m.read.private/{event}", p.room);
    assert_eq!(p.s.post(&path, Some(&p.bt), json!({})).await.0, StatusCode::OK);
    let res = sync_since(&p.s, &p.at, &a_since, 0).await;
    assert!(ephemeral(&res, &p.room, "m.receipt").is_none(), "private receipt leaked: {res}");
    let b_res = p.s.get("/_matrix/client/v3/sync", Some(&p.bt)).await.1;
    assert!(ephemeral(&b_res, &p.room, "m.receipt").unwrap()["content"][&event]["m.read.private"]
        .get(&p.bob)
        .is_some());

    let path = format!("/_matrix/client/v3/rooms/{}/receipt/m.read/{event}", p.room);
    assert_eq!(p.s.post(&path, Some(&p.bt), json!({"thread_id": "main"})).await.0, StatusCode::OK);
    let res = sync_since(&p.s, &p.at, &a_since, 10000).await;
    let r =
        &ephemeral(&res, &p.room, "m.receipt").unwrap_or_else(|| panic!("{res}"))["content"][&event]["m.read"][&p.bob];
    assert!(r["ts"].is_u64());
    assert_eq!(r["thread_id"], "main");

    let bad = format!("/_matrix/client/v3/rooms/{}/receipt/m.read/$nope", p.room);
    assert_error(&p.s.post(&bad, Some(&p.bt), json!({})).await, 404, "M_NOT_FOUND");
}

async fn read_markers_set_fully_read_and_receipt(b: Backend) {
    let p = pair(b).await;
    let (_, sent) =
        p.s.put(
            &format!("/_matrix/client/v3/rooms/{}/send/m.room.message/r1", p.room),
            Some(&p.at),
            json!({"msgtype": "m.text", "body": "x"}),
        )
        .await;
    let event = sent["event_id"].as_str().unwrap().to_owned();
    let (status, res) =
        p.s.post(
            &format!("/_matrix/client/v3/rooms/{}/read_markers", p.room),
            Some(&p.bt),
            json!({"m.fully_read": event, "m.read": event}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{res}");
    let (_, fr) =
        p.s.get(&format!("/_matrix/client/v3/user/{}/rooms/{}/account_data/m.fully_read", p.bob, p.room), Some(&p.bt))
            .await;
    assert_eq!(fr["event_id"], event.as_str());
    let res = p.s.get("/_matrix/client/v3/sync", Some(&p.bt)).await.1;
    let room_data = res["rooms"]["join"][&p.room]["account_data"]["events"].as_array().unwrap();
    assert!(room_data.iter().any(|e| e["type"] == "m.fully_read"), "{res}");
    assert!(ephemeral(&res, &p.room, "m.receipt").unwrap()["content"][&event]["m.read"].get(&p.bob).is_some());
}

async fn account_data_and_tags(b: Backend) {
    let p = pair(b).await;
    let since = next_batch(&p.s, &p.at).await;
    let path = format!("/_matrix/client/v3/user/{}/account_data/im.example.settings", p.alice);
    assert_eq!(p.s.put(&path, Some(&p.at), json!({"theme": "dark"})).await.0, StatusCode::OK);
    assert_eq!(p.s.get(&path, Some(&p.at)).await.1, json!({"theme": "dark"}));
    assert_error(&p.s.get(&path, Some(&p.bt)).await, 403, "M_FORBIDDEN");
    assert_error(
        &p.s.get(&format!("/_matrix/client/v3/user/{}/account_data/none.here", p.alice), Some(&p.at)).await,
        404,
        "M_NOT_FOUND",
    );
    let res = sync_since(&p.s, &p.at, &since, 0).await;
    let global = res["account_data"]["events"].as_array().unwrap();
    assert!(global.iter().any(|e| e["type"] == "im.example.settings" && e["content"]["theme"] == "dark"), "{res}");

    let tag = format!("/_matrix/client/v3/user/{}/rooms/{}/tags/m.favourite", p.alice, p.room);
    assert_eq!(p.s.put(&tag, Some(&p.at), json!({"order": 0.5})).await.0, StatusCode::OK);
    let (_, tags) = p.s.get(&format!("/_matrix/client/v3/user/{}/rooms/{}/tags", p.alice, p.room), Some(&p.at)).await;
    assert_eq!(tags["tags"]["m.favourite"]["order"], 0.5);
    let res = p.s.get("/_matrix/client/v3/sync", Some(&p.at)).await.1;
    let room_data = res["rooms"]["join"][&p.room]["account_data"]["events"].as_array().unwrap();
    assert!(room_data.iter().any(|e| e["type"] == "m.tag" && e["content"]["tags"]["m.favourite"].is_object()), "{res}");
    assert_eq!(p.s.request(Method::DELETE, &tag, Some(&p.at), None).await.0, StatusCode::OK);
    let (_, tags) = p.s.get(&format!("/_matrix/client/v3/user/{}/rooms/{}/tags", p.alice, p.room), Some(&p.at)).await;
    assert_eq!(tags["tags"], json!({}));
}

/// A receipt never moves back: one for an earlier event is accepted (200) and ignored.
async fn receipts_only_move_forward(b: Backend) {
    let p = pair(b).await;
    let mut ids = Vec::new();
    for txn in ["f1", "f2"] {
        let path = format!("/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}", p.room);
        let (_, sent) = p.s.put(&path, Some(&p.at), json!({"msgtype": "m.text", "body": txn})).await;
        ids.push(sent["event_id"].as_str().unwrap().to_owned());
    }
    for id in [&ids[1], &ids[0]] {
        let path = format!("/_matrix/client/v3/rooms/{}/receipt/m.read/{id}", p.room);
        assert_eq!(p.s.post(&path, Some(&p.bt), json!({})).await.0, StatusCode::OK);
    }
    let (_, sync) = p.s.get("/_matrix/client/v3/sync", Some(&p.at)).await;
    let receipts = &ephemeral(&sync, &p.room, "m.receipt").unwrap_or_else(|| panic!("{sync}"))["content"];
    assert!(receipts[&ids[1]]["m.read"].get(&p.bob).is_some(), "{receipts}");
    assert!(receipts.get(&ids[0]).is_none(), "{receipts}");
}

both_engines!(
    receipts_only_move_forward,
    typing_reaches_the_other_member,
    typing_expires,
    receipts_public_and_private,
    read_markers_set_fully_read_and_receipt,
    account_data_and_tags,
);

async fn presence_reaches_contacts_only(b: Backend) {
    let p = pair(b).await;
    let (_, ct, _) = p.s.register("carol", "pw-carol-1").await;
    let since = next_batch(&p.s, &p.bt).await;
    let path = format!("/_matrix/client/v3/presence/{}/status", p.alice);
    let (status, _) = p.s.put(&path, Some(&p.at), json!({"presence": "unavailable", "status_msg": "lunch"})).await;
    assert_eq!(status, StatusCode::OK);
    let (status, got) = p.s.get(&path, Some(&p.bt)).await;
    assert_eq!(status, StatusCode::OK, "{got}");
    assert_eq!((got["presence"].as_str(), got["status_msg"].as_str()), (Some("unavailable"), Some("lunch")));
    assert_error(&p.s.get(&path, Some(&ct)).await, 403, "M_FORBIDDEN");
    assert_error(&p.s.put(&path, Some(&p.bt), json!({"presence": "online"})).await, 403, "M_FORBIDDEN");

    let res = sync_since(&p.s, &p.bt, &since, 10000).await;
    let ev = res["presence"]["events"].as_array().unwrap().iter().find(|e| e["sender"] == p.alice.as_str()).cloned();
    let ev = ev.unwrap_or_else(|| panic!("no presence for alice in {res}"));
    assert_eq!(ev["content"]["presence"], "unavailable");
    assert_eq!(ev["content"]["status_msg"], "lunch");
    // A sync with `set_presence=offline` does not mark her present, nor offline: her
    // presence stays as she set it (sytest's "Presence changes to UNAVAILABLE are
    // reported to local room members" syncs so).
    let (status, _) = p.s.get("/_matrix/client/v3/sync?set_presence=offline&timeout=0", Some(&p.at)).await;
    assert_eq!(status, StatusCode::OK);
    let (_, got) = p.s.get(&path, Some(&p.bt)).await;
    assert_eq!(got["presence"], "unavailable", "{got}");
    // Carol shares no room with Alice: nothing about her.
    let (_, carol) = p.s.get("/_matrix/client/v3/sync", Some(&ct)).await;
    let senders: Vec<&str> = carol["presence"]["events"]
        .as_array()
        .map(|a| a.iter().filter_map(|e| e["sender"].as_str()).collect())
        .unwrap_or_default();
    assert!(!senders.contains(&p.alice.as_str()), "{carol}");
}

both_engines!(presence_reaches_contacts_only);

/// Alice's presence as Bob's syncs from `since` report it, waiting (long-polls) until it
/// is `want`; gives up after a minute of polls.
async fn wait_for_presence(s: &TestServer, token: &str, since: &mut String, user: &str, want: &str) -> Value {
    for _ in 0..6 {
        let res = sync_since(s, token, since, 10000).await;
        *since = res["next_batch"].as_str().unwrap().to_owned();
        let found = res["presence"]["events"].as_array().and_then(|a| a.iter().rev().find(|e| e["sender"] == user));
        if let Some(ev) = found {
            if ev["content"]["presence"] == want {
                return ev.clone();
            }
        }
    }
    panic!("{user} never turned {want}");
}

async fn presence_times_out_when_clients_stop_syncing(b: Backend) {
    let mut s = TestServer::start_with(b, |c| c.presence_offline_timeout_s = 1).await;
    let (alice, at, _) = s.register("alice", "pw-alice-1").await;
    let (bob, bt, _) = s.register("bob", "pw-bob-1").await;
    let (_, res) = s.post("/_matrix/client/v3/createRoom", Some(&at), json!({"invite": [bob]})).await;
    let room = res["room_id"].as_str().unwrap().to_owned();
    s.post(&format!("/_matrix/client/v3/rooms/{room}/join"), Some(&bt), json!({})).await;

    // Alice's client syncs once, then goes away: she turns offline, and Bob is told.
    let mut since = next_batch(&s, &bt).await;
    next_batch(&s, &at).await;
    wait_for_presence(&s, &bt, &mut since, &alice, "online").await;
    let ev = wait_for_presence(&s, &bt, &mut since, &alice, "offline").await;
    assert_eq!(ev["content"]["currently_active"], false, "{ev}");
    // Bob kept long-polling all along: still online.
    let (_, bob_status) = s.get(&format!("/_matrix/client/v3/presence/{bob}/status"), Some(&bt)).await;
    assert_eq!(bob_status["presence"], "online", "{bob_status}");

    // A long-poll that outlasts the time-out keeps its user online.
    let alice_since = next_batch(&s, &at).await;
    wait_for_presence(&s, &bt, &mut since, &alice, "online").await;
    let (status, _) = s.get(&format!("/_matrix/client/v3/sync?since={alice_since}&timeout=2500"), Some(&at)).await;
    assert_eq!(status, StatusCode::OK);
    let (_, status) = s.get(&format!("/_matrix/client/v3/presence/{alice}/status"), Some(&bt)).await;
    assert_eq!(status["presence"], "online", "alice was syncing: {status}");

    // Set explicitly and then silent counts the same; a restart gives her the same grace.
    s.put(&format!("/_matrix/client/v3/presence/{alice}/status"), Some(&at), json!({"presence": "unavailable"})).await;
    s.restart().await;
    let mut since = next_batch(&s, &bt).await;
    wait_for_presence(&s, &bt, &mut since, &alice, "offline").await;
}

both_engines!(presence_times_out_when_clients_stop_syncing);
