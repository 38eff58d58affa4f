//! The deprecated endpoints Synapse still serves: `/events`, `/events/{eventId}`,
//! `/initialSync`, `/rooms/{roomId}/initialSync`, and a send without a transaction id.

use hearth::store::Backend;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::{both_engines, common::TestServer};

async fn create(s: &TestServer, token: &str, body: Value) -> String {
    let (status, res) = s.post("/_matrix/client/v3/createRoom", Some(token), body).await;
    assert_eq!(status, StatusCode::OK, "{res}");
    res["room_id"].as_str().expect("room").to_owned()
}

fn types_and_bodies(chunk: &Value) -> Vec<(String, Option<String>)> {
    chunk
        .as_array()
        .expect("chunk")
        .iter()
        .map(|e| (e["type"].as_str().unwrap_or_default().to_owned(), e["content"]["body"].as_str().map(str::to_owned)))
        .collect()
}

async fn event_stream_and_initial_syncs(b: Backend) {
    let s = TestServer::start(b).await;
    let (alice, at, _) = s.register("alice", "pw-alice-1").await;
    let (_, bt, _) = s.register("bob", "pw-bob-12").await;
    let room = create(&s, &at, json!({"preset": "public_chat", "name": "Porch"})).await;

    // The stream: nothing yet, then a message sent without a transaction id, with its room.
    let (status, first) = s.get("/_matrix/client/v3/events?timeout=0", Some(&at)).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    // Nothing but alice's own presence (polling made her online).
    assert!(first["chunk"].as_array().expect("chunk").iter().all(|e| e["type"] == "m.presence"), "{first}");
    let end = first["end"].as_str().expect("end").to_owned();
    for bad in ["limit=-1", "limit=x"] {
        assert_eq!(
            s.get(&format!("/_matrix/client/v3/events?timeout=0&{bad}"), Some(&at)).await.0,
            StatusCode::BAD_REQUEST
        );
    }
    let (status, sent) = s
        .post(
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message"),
            Some(&at),
            json!({"msgtype": "m.text", "body": "hello"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{sent}");
    let (_, next) = s.get(&format!("/_matrix/client/r0/events?from={end}&timeout=5000"), Some(&at)).await;
    assert_eq!(types_and_bodies(&next["chunk"]), vec![("m.room.message".to_owned(), Some("hello".to_owned()))]);
    assert_eq!(next["chunk"][0]["room_id"], room.as_str());
    assert_eq!(next["start"].as_str(), Some(end.as_str()));

    // One event by id; not for someone who may not see it.
    let event_id = sent["event_id"].as_str().expect("event id");
    let (status, one) = s.get(&format!("/_matrix/client/v3/events/{event_id}"), Some(&at)).await;
    assert_eq!((status, one["content"]["body"].as_str()), (StatusCode::OK, Some("hello")));

    // The global initial sync: the room with its current state and latest message.
    s.put(&format!("/_matrix/client/v3/user/{alice}/account_data/my.type"), Some(&at), json!({"cats": 1})).await;
    let (status, init) = s.get("/_matrix/client/v3/initialSync?limit=5", Some(&at)).await;
    assert_eq!(status, StatusCode::OK, "{init}");
    let entry = &init["rooms"][0];
    assert_eq!((entry["room_id"].as_str(), entry["membership"].as_str()), (Some(room.as_str()), Some("join")));
    let chunk = entry["messages"]["chunk"].as_array().expect("chunk");
    assert_eq!(chunk.last().expect("a message")["content"]["body"], "hello");
    assert!(entry["state"].as_array().expect("state").iter().any(|e| e["type"] == "m.room.name"), "{entry}");
    let account: Vec<&str> =
        init["account_data"].as_array().expect("account data").iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(account, vec!["my.type"], "only what the user stored");
    assert!(init["end"].is_string());

    // The room's initial sync: for a member, and for a non-member only when world-readable.
    let path = format!("/_matrix/client/v3/rooms/{room}/initialSync");
    let (status, one_room) = s.get(&path, Some(&at)).await;
    assert_eq!(status, StatusCode::OK, "{one_room}");
    assert_eq!(one_room["membership"], "join");
    // The old event format: `user_id` beside `sender`.
    let mine =
        one_room["state"].as_array().expect("state").iter().find(|e| e["type"] == "m.room.member").expect("a member");
    assert_eq!(mine["user_id"], mine["sender"]);
    let (_, none) = s.get(&format!("{path}?limit=0"), Some(&at)).await;
    assert_eq!(none["messages"]["chunk"], json!([]));
    assert!(one_room["messages"]["start"].is_string());
    // Polling the event stream made alice online, as a sync would.
    let mine =
        one_room["presence"].as_array().expect("presence").iter().find(|p| p["sender"] == alice.as_str()).cloned();
    assert_eq!(mine.map(|p| p["content"]["presence"].clone()), Some(json!("online")), "{one_room}");
    assert_eq!(s.get(&path, Some(&bt)).await.0, StatusCode::FORBIDDEN);
    let hv = format!("/_matrix/client/v3/rooms/{room}/state/m.room.history_visibility");
    assert_eq!(s.put(&hv, Some(&at), json!({"history_visibility": "world_readable"})).await.0, StatusCode::OK);
    let (status, peek) = s.get(&path, Some(&bt)).await;
    assert_eq!(status, StatusCode::OK, "{peek}");
    assert!(peek.get("membership").is_none(), "{peek}");
    // And the stream of that room for the non-member.
    let (_, now) = s.get("/_matrix/client/v3/events?timeout=0", Some(&bt)).await;
    let from = now["end"].as_str().expect("end").to_owned();
    s.post(
        &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message"),
        Some(&at),
        json!({"msgtype": "m.text", "body": "public"}),
    )
    .await;
    let (_, read) =
        s.get(&format!("/_matrix/client/v3/events?from={from}&room_id={room}&timeout=5000"), Some(&bt)).await;
    assert_eq!(types_and_bodies(&read["chunk"]), vec![("m.room.message".to_owned(), Some("public".to_owned()))]);
}

/// A user who left sees the room as they left it: its members with their own leave
/// (`/members`), and a room initial sync with no live presence or receipts.
async fn a_departed_room_as_it_was_left(b: Backend) {
    let s = TestServer::start(b).await;
    let (_, at, _) = s.register("alice", "pw-alice-1").await;
    let (bob, bt, _) = s.register("bob", "pw-bob-12").await;
    let room = create(&s, &at, json!({"preset": "public_chat"})).await;
    s.post(&format!("/_matrix/client/v3/rooms/{room}/join"), Some(&bt), json!({})).await;
    let (_, sent) = s
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/d1"),
            Some(&at),
            json!({"msgtype": "m.text", "body": "before"}),
        )
        .await;
    let receipt = format!("/_matrix/client/v3/rooms/{room}/receipt/m.read/{}", sent["event_id"].as_str().unwrap());
    s.post(&receipt, Some(&at), json!({})).await;
    s.post(&format!("/_matrix/client/v3/rooms/{room}/leave"), Some(&bt), json!({})).await;

    let (status, members) = s.get(&format!("/_matrix/client/v3/rooms/{room}/members"), Some(&bt)).await;
    assert_eq!(status, StatusCode::OK, "{members}");
    let own = members["chunk"].as_array().unwrap().iter().find(|e| e["state_key"] == bob.as_str()).cloned();
    assert_eq!(own.map(|e| e["content"]["membership"].clone()), Some(json!("leave")), "{members}");

    let (status, init) = s.get(&format!("/_matrix/client/v3/rooms/{room}/initialSync"), Some(&bt)).await;
    assert_eq!(status, StatusCode::OK, "{init}");
    assert_eq!(init["membership"], "leave");
    assert_eq!((&init["presence"], &init["receipts"]), (&json!([]), &json!([])), "{init}");
    let (_, joined) = s.get(&format!("/_matrix/client/v3/rooms/{room}/initialSync"), Some(&at)).await;
    assert_eq!(joined["receipts"].as_array().map(Vec::len), Some(1), "{joined}");
}

both_engines!(event_stream_and_initial_syncs, a_departed_room_as_it_was_left);
