//! Threads (`/threads`) and bundled aggregations (`unsigned.m.relations`): thread
//! summaries, the latest edit and references, wherever events are served.

use hearth::store::Backend;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::{
    both_engines,
    common::{assert_error, TestServer},
};

both_engines!(threads_are_listed_newest_first_with_summaries, edits_and_references_are_bundled);

async fn send(s: &TestServer, token: &str, room: &str, txn: &str, content: Value) -> String {
    let path = format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/{txn}");
    let (status, sent) = s.put(&path, Some(token), content).await;
    assert_eq!(status, StatusCode::OK, "{sent}");
    sent["event_id"].as_str().unwrap().to_owned()
}

fn reply(root: &str, body: &str) -> Value {
    json!({
        "msgtype": "m.text",
        "body": body,
        "m.relates_to": {"rel_type": "m.thread", "event_id": root, "is_falling_back": true, "m.in_reply_to": {"event_id": root}},
    })
}

fn ids(page: &Value) -> Vec<String> {
    page["chunk"].as_array().unwrap().iter().filter_map(|e| e["event_id"].as_str().map(str::to_owned)).collect()
}

async fn threads_are_listed_newest_first_with_summaries(b: Backend) {
    let s = TestServer::start(b).await;
    let (alice, at, _) = s.register("alice", "pw-alice-1").await;
    let (bob, bt, _) = s.register("bob", "pw-bob-1").await;
    let (_, ct, _) = s.register("carol", "pw-carol-1").await;
    let (_, room) = s.post("/_matrix/client/v3/createRoom", Some(&at), json!({"preset": "public_chat"})).await;
    let room = room["room_id"].as_str().unwrap().to_owned();
    for t in [&bt, &ct] {
        s.post(&format!("/_matrix/client/v3/join/{room}"), Some(t), json!({})).await;
    }
    let first = send(&s, &at, &room, "r1", json!({"msgtype": "m.text", "body": "first thread"})).await;
    let second = send(&s, &at, &room, "r2", json!({"msgtype": "m.text", "body": "second thread"})).await;
    send(&s, &bt, &room, "t1", reply(&first, "bob in the first")).await;
    send(&s, &at, &room, "t2", reply(&second, "alice in the second")).await;
    let latest = send(&s, &at, &room, "t3", reply(&first, "alice in the first")).await;

    let threads = format!("/_matrix/client/v1/rooms/{room}/threads");
    let (status, page) = s.get(&threads, Some(&ct)).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(ids(&page), [first.clone(), second.clone()], "newest activity first");
    let summary = &page["chunk"][0]["unsigned"]["m.relations"]["m.thread"];
    assert_eq!(summary["count"], 2, "{page}");
    assert_eq!(summary["latest_event"]["event_id"], latest.as_str());
    assert_eq!(summary["latest_event"]["sender"], alice.as_str());
    assert_eq!(summary["current_user_participated"], false, "carol took no part");
    let (_, for_bob) = s.get(&threads, Some(&bt)).await;
    assert_eq!(for_bob["chunk"][0]["unsigned"]["m.relations"]["m.thread"]["current_user_participated"], true);

    // Only the threads one started or replied in.
    let (_, mine) = s.get(&format!("{threads}?include=participated"), Some(&bt)).await;
    assert_eq!(ids(&mine), [first.as_str()]);
    let (_, none) = s.get(&format!("{threads}?include=participated"), Some(&ct)).await;
    assert_eq!(ids(&none), Vec::<String>::new());
    assert!(none.get("next_batch").is_none());

    // Pages.
    let (_, one) = s.get(&format!("{threads}?limit=1"), Some(&ct)).await;
    assert_eq!(ids(&one), [first.as_str()]);
    let next = one["next_batch"].as_str().expect("a next page").to_owned();
    let (_, two) = s.get(&format!("{threads}?limit=1&from={next}"), Some(&ct)).await;
    assert_eq!(ids(&two), [second.as_str()]);
    assert!(two.get("next_batch").is_none(), "{two}");

    // The summary is bundled wherever the root is served: /event, /messages, /sync.
    let (_, event) = s.get(&format!("/_matrix/client/v3/rooms/{room}/event/{first}"), Some(&ct)).await;
    assert_eq!(event["unsigned"]["m.relations"]["m.thread"]["count"], 2, "{event}");
    let (_, messages) = s.get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=50"), Some(&ct)).await;
    let root = messages["chunk"].as_array().unwrap().iter().find(|e| e["event_id"] == second.as_str()).unwrap();
    assert_eq!(root["unsigned"]["m.relations"]["m.thread"]["count"], 1, "{root}");
    let (_, sync) = s.get("/_matrix/client/v3/sync?timeout=0", Some(&ct)).await;
    let timeline = sync["rooms"]["join"][&room]["timeline"]["events"].as_array().unwrap();
    let root = timeline.iter().find(|e| e["event_id"] == first.as_str()).expect("root in the timeline");
    assert_eq!(root["unsigned"]["m.relations"]["m.thread"]["latest_event"]["event_id"], latest.as_str());

    // A redacted reply no longer counts.
    let redact = format!("/_matrix/client/v3/rooms/{room}/redact/{latest}/x1");
    assert_eq!(s.put(&redact, Some(&at), json!({})).await.0, StatusCode::OK);
    let (_, page) = s.get(&threads, Some(&ct)).await;
    let summary = page["chunk"].as_array().unwrap().iter().find(|e| e["event_id"] == first.as_str()).unwrap();
    assert_eq!(summary["unsigned"]["m.relations"]["m.thread"]["count"], 1, "{summary}");

    assert_error(&s.get(&format!("{threads}?include=some"), Some(&ct)).await, 400, "M_INVALID_PARAM");
    let (_, outsider, _) = s.register("dave", "pw-dave-1").await;
    let (_, private) = s.post("/_matrix/client/v3/createRoom", Some(&at), json!({"preset": "private_chat"})).await;
    let private = private["room_id"].as_str().unwrap();
    assert_error(
        &s.get(&format!("/_matrix/client/v1/rooms/{private}/threads"), Some(&outsider)).await,
        403,
        "M_FORBIDDEN",
    );
    let _ = bob;
}

async fn edits_and_references_are_bundled(b: Backend) {
    let s = TestServer::start(b).await;
    let (_, at, _) = s.register("alice", "pw-alice-1").await;
    let (_, bt, _) = s.register("bob", "pw-bob-1").await;
    let (_, room) = s.post("/_matrix/client/v3/createRoom", Some(&at), json!({"preset": "public_chat"})).await;
    let room = room["room_id"].as_str().unwrap().to_owned();
    s.post(&format!("/_matrix/client/v3/join/{room}"), Some(&bt), json!({})).await;
    let original = send(&s, &at, &room, "o1", json!({"msgtype": "m.text", "body": "helo"})).await;
    let edit = |body: &str| {
        json!({
            "msgtype": "m.text",
            "body": format!("* {body}"),
            "m.new_content": {"msgtype": "m.text", "body": body},
            "m.relates_to": {"rel_type": "m.replace", "event_id": original},
        })
    };
    let first_edit = send(&s, &at, &room, "e1", edit("hello")).await;
    let second_edit = send(&s, &at, &room, "e2", edit("hello, all")).await;
    // The newest edit is the one with the later origin_server_ts and, sent in the same
    // millisecond, the larger event id (spec: "Event replacements").
    let mut stamped = Vec::new();
    for id in [&first_edit, &second_edit] {
        let (_, e) = s.get(&format!("/_matrix/client/v3/rooms/{room}/event/{id}"), Some(&at)).await;
        stamped.push((e["origin_server_ts"].as_u64().expect("a timestamp"), id.clone(), e["content"].clone()));
    }
    let (_, newest, newest_content) = stamped.into_iter().max_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1))).unwrap();
    // Someone else's "edit" is no edit.
    send(&s, &bt, &room, "e3", edit("hijacked")).await;
    let reference = send(
        &s,
        &bt,
        &room,
        "ref",
        json!({"msgtype": "m.text", "body": "see above", "m.relates_to": {"rel_type": "m.reference", "event_id": original}}),
    )
    .await;

    // A fresh login sees the latest edit bundled on first load.
    let (fresh, _) = s.login("bob", "pw-bob-1").await;
    let (_, messages) = s.get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=50"), Some(&fresh)).await;
    let shown = messages["chunk"].as_array().unwrap().iter().find(|e| e["event_id"] == original.as_str()).unwrap();
    let relations = &shown["unsigned"]["m.relations"];
    assert_eq!(relations["m.replace"]["event_id"], newest.as_str(), "{shown}");
    assert_eq!(relations["m.replace"]["content"]["m.new_content"]["body"], newest_content["m.new_content"]["body"]);
    assert_eq!(relations["m.reference"]["chunk"], json!([{"event_id": reference}]));
    let (_, context) =
        s.get(&format!("/_matrix/client/v3/rooms/{room}/context/{original}?limit=0"), Some(&fresh)).await;
    assert_eq!(context["event"]["unsigned"]["m.relations"]["m.replace"]["event_id"], newest.as_str(), "{context}");
    let (_, relations_page) =
        s.get(&format!("/_matrix/client/v1/rooms/{room}/relations/{original}/m.replace"), Some(&fresh)).await;
    assert_eq!(relations_page["chunk"].as_array().map(Vec::len), Some(3), "{relations_page}");

    // An unrelated event carries no m.relations.
    let plain = send(&s, &at, &room, "p1", json!({"msgtype": "m.text", "body": "plain"})).await;
    let (_, event) = s.get(&format!("/_matrix/client/v3/rooms/{room}/event/{plain}"), Some(&fresh)).await;
    assert!(event["unsigned"].get("m.relations").is_none(), "{event}");
}

/// A database from before the bundled-targets index (its rows and its done-mark removed
/// here) has them noted again at start, so edits made then are still bundled.
async fn bundled_targets_of_an_older_database_are_noted_at_start(b: Backend) {
    let mut s = TestServer::start(b).await;
    let (_, at, _) = s.register("alice", "pw-alice-1").await;
    let (_, room) = s.post("/_matrix/client/v3/createRoom", Some(&at), json!({})).await;
    let room = room["room_id"].as_str().unwrap().to_owned();
    let original = send(&s, &at, &room, "o1", json!({"msgtype": "m.text", "body": "helo"})).await;
    let edit = json!({
        "msgtype": "m.text",
        "body": "* hello",
        "m.new_content": {"msgtype": "m.text", "body": "hello"},
        "m.relates_to": {"rel_type": "m.replace", "event_id": original},
    });
    let newest = send(&s, &at, &room, "e1", edit).await;
    let reaction = json!({"m.relates_to": {"rel_type": "m.annotation", "event_id": newest, "key": "👍"}});
    s.put(&format!("/_matrix/client/v3/rooms/{room}/send/m.reaction/r1"), Some(&at), reaction).await;
    let targets = hearth::rooms::threads::BUNDLED_TARGETS;
    let store = s.services().store.clone();
    let mut noted = Vec::new();
    targets
        .scan_all(&store, |id, ()| {
            noted.push(id);
            true
        })
        .unwrap();
    assert_eq!(noted, std::slice::from_ref(&original), "the edit's target alone: reactions are not bundled");
    let mut batch = hearth::store::Batch::new();
    for id in &noted {
        targets.delete(&mut batch, id);
    }
    hearth::store::tables::META.delete(&mut batch, "bundled_targets_indexed");
    store.write(batch).unwrap();
    drop(store);

    s.restart().await;
    let (_, event) = s.get(&format!("/_matrix/client/v3/rooms/{room}/event/{original}"), Some(&at)).await;
    assert_eq!(event["unsigned"]["m.relations"]["m.replace"]["event_id"], newest.as_str(), "{event}");
}

both_engines!(bundled_targets_of_an_older_database_are_noted_at_start);
