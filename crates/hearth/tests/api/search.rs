//! Server-side search (`POST /search`): message bodies, names and topics of the rooms one
//! is in, as one may see them, ranked or newest first, with paging, context, state and
//! groups; redacted messages leave the index, and a lost index is rebuilt.

use hearth::store::Backend;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::{
    both_engines,
    common::{assert_error, TestServer},
};

both_engines!(search_finds_what_one_may_see, search_pages_orders_and_groups, a_lost_index_is_rebuilt);

/// Waits until the index has taken in everything written so far.
async fn indexed(s: &TestServer) {
    let services = s.services();
    for _ in 0..500 {
        if services.search.position() >= services.stream.now() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("the search index did not catch up");
}

async fn say(s: &TestServer, token: &str, room: &str, txn: &str, body: &str) -> String {
    let path = format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/{txn}");
    let (status, sent) = s.put(&path, Some(token), json!({"msgtype": "m.text", "body": body})).await;
    assert_eq!(status, StatusCode::OK, "{sent}");
    sent["event_id"].as_str().unwrap().to_owned()
}

async fn search(s: &TestServer, token: &str, criteria: Value) -> (StatusCode, Value) {
    s.post("/_matrix/client/v3/search", Some(token), json!({"search_categories": {"room_events": criteria}})).await
}

fn result_ids(res: &Value) -> Vec<String> {
    res["search_categories"]["room_events"]["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["result"]["event_id"].as_str().map(str::to_owned))
        .collect()
}

async fn search_finds_what_one_may_see(b: Backend) {
    let s = TestServer::start(b).await;
    let (_, at, _) = s.register("alice", "pw-alice-1").await;
    let (_, bt, _) = s.register("bob", "pw-bob-1").await;
    let (_, room) = s
        .post(
            "/_matrix/client/v3/createRoom",
            Some(&at),
            json!({"preset": "public_chat", "name": "Kitchen garden", "topic": "Tomatoes and beans"}),
        )
        .await;
    let room = room["room_id"].as_str().unwrap().to_owned();
    let (_, secret) = s.post("/_matrix/client/v3/createRoom", Some(&at), json!({"preset": "private_chat"})).await;
    let secret = secret["room_id"].as_str().unwrap().to_owned();
    let tomato = say(&s, &at, &room, "m1", "The tomatoes are ripening early this year").await;
    say(&s, &at, &room, "m2", "Beans need more water").await;
    say(&s, &at, &secret, "m3", "tomato soup recipe, secret").await;
    s.post(&format!("/_matrix/client/v3/join/{room}"), Some(&bt), json!({})).await;
    indexed(&s).await;

    let (status, res) = search(&s, &bt, json!({"search_term": "tomato"})).await;
    assert_eq!(status, StatusCode::OK, "{res}");
    // Prefixes match ("tomato" finds "tomatoes"); the topic matches too; the private room
    // bob is not in does not show.
    let found = result_ids(&res);
    assert!(found.contains(&tomato), "{res}");
    assert_eq!(found.len(), 2, "the message and the topic: {res}");
    let events = &res["search_categories"]["room_events"];
    assert_eq!(events["count"], 2);
    assert_eq!(events["highlights"], json!(["tomato"]));
    assert!(events["results"][0]["rank"].is_number());
    // Only message bodies.
    let (_, bodies) = search(&s, &bt, json!({"search_term": "tomato", "keys": ["content.body"]})).await;
    assert_eq!(result_ids(&bodies), [tomato.as_str()]);
    // alice sees the private room's message too.
    let (_, hers) = search(&s, &at, json!({"search_term": "tomato soup"})).await;
    assert_eq!(result_ids(&hers).len(), 1, "{hers}");

    // A redacted message leaves the index.
    let redact = format!("/_matrix/client/v3/rooms/{room}/redact/{tomato}/r1");
    assert_eq!(s.put(&redact, Some(&at), json!({})).await.0, StatusCode::OK);
    indexed(&s).await;
    let (_, after) = search(&s, &bt, json!({"search_term": "ripening"})).await;
    assert_eq!(result_ids(&after), Vec::<String>::new(), "{after}");

    // Context, profiles and state.
    let criteria = json!({
        "search_term": "beans water",
        "keys": ["content.body"],
        "event_context": {"before_limit": 2, "after_limit": 2, "include_profile": true},
        "include_state": true,
    });
    let (_, ctx) = search(&s, &bt, criteria).await;
    let first = &ctx["search_categories"]["room_events"]["results"][0];
    assert_eq!(first["result"]["content"]["body"], "Beans need more water", "{ctx}");
    assert!(first["context"]["events_before"].as_array().is_some_and(|e| !e.is_empty()), "{first}");
    assert!(first["context"]["start"].is_string() && first["context"]["end"].is_string());
    assert_eq!(first["context"]["profile_info"]["@alice:hearth.test"]["displayname"], "alice");
    let state = &ctx["search_categories"]["room_events"]["state"][&room];
    assert!(state.as_array().is_some_and(|st| st.iter().any(|e| e["type"] == "m.room.create")), "{ctx}");

    // Bad requests.
    assert_error(&search(&s, &bt, json!({})).await, 400, "M_MISSING_PARAM");
    assert_error(
        &search(&s, &bt, json!({"search_term": "x", "keys": ["content.sender"]})).await,
        400,
        "M_INVALID_PARAM",
    );
    assert_error(&search(&s, &bt, json!({"search_term": "x", "order_by": "size"})).await, 400, "M_INVALID_PARAM");
    assert_error(&s.post("/_matrix/client/v3/search", Some(&bt), json!({})).await, 400, "M_MISSING_PARAM");
    let (_, empty) = s.post("/_matrix/client/v3/search", Some(&bt), json!({"search_categories": {}})).await;
    assert_eq!(empty, json!({"search_categories": {}}));
    let (_, nothing) = search(&s, &bt, json!({"search_term": "  !! "})).await;
    assert_eq!(nothing["search_categories"]["room_events"]["count"], 0);
}

async fn search_pages_orders_and_groups(b: Backend) {
    let s = TestServer::start(b).await;
    let (_, at, _) = s.register("alice", "pw-alice-1").await;
    let (_, first) = s.post("/_matrix/client/v3/createRoom", Some(&at), json!({})).await;
    let first = first["room_id"].as_str().unwrap().to_owned();
    let (_, second) = s.post("/_matrix/client/v3/createRoom", Some(&at), json!({})).await;
    let second = second["room_id"].as_str().unwrap().to_owned();
    let mut sent = Vec::new();
    for i in 0..5 {
        let room = if i % 2 == 0 { &first } else { &second };
        sent.push(say(&s, &at, room, &format!("m{i}"), &format!("harvest report number {i}")).await);
    }
    indexed(&s).await;

    // Newest first, two at a time.
    let criteria = json!({"search_term": "harvest", "order_by": "recent", "filter": {"limit": 2}});
    let (_, p1) = search(&s, &at, criteria.clone()).await;
    assert_eq!(result_ids(&p1), [sent[4].as_str(), sent[3].as_str()]);
    assert_eq!(p1["search_categories"]["room_events"]["count"], 5);
    let next = p1["search_categories"]["room_events"]["next_batch"].as_str().unwrap().to_owned();
    let (_, p2) = s
        .post(
            &format!("/_matrix/client/v3/search?next_batch={next}"),
            Some(&at),
            json!({"search_categories": {"room_events": criteria.clone()}}),
        )
        .await;
    assert_eq!(result_ids(&p2), [sent[2].as_str(), sent[1].as_str()]);
    let next = p2["search_categories"]["room_events"]["next_batch"].as_str().unwrap().to_owned();
    let (_, p3) = s
        .post(
            &format!("/_matrix/client/v3/search?next_batch={next}"),
            Some(&at),
            json!({"search_categories": {"room_events": criteria}}),
        )
        .await;
    assert_eq!(result_ids(&p3), [sent[0].as_str()]);
    assert!(p3["search_categories"]["room_events"].get("next_batch").is_none(), "{p3}");

    // One room only, and groups.
    let criteria = json!({
        "search_term": "harvest",
        "filter": {"rooms": [second]},
        "groupings": {"group_by": [{"key": "room_id"}, {"key": "sender"}]},
    });
    let (_, only) = search(&s, &at, criteria).await;
    let mut ids = result_ids(&only);
    ids.sort();
    let mut expected = vec![sent[1].clone(), sent[3].clone()];
    expected.sort();
    assert_eq!(ids, expected);
    let groups = &only["search_categories"]["room_events"]["groups"];
    assert_eq!(groups["room_id"][&second]["results"].as_array().map(Vec::len), Some(2), "{groups}");
    assert_eq!(groups["sender"]["@alice:hearth.test"]["order"], 0);
    assert_error(
        &s.post(
            "/_matrix/client/v3/search?next_batch=zzz",
            Some(&at),
            json!({"search_categories": {"room_events": {"search_term": "x"}}}),
        )
        .await,
        400,
        "M_INVALID_PARAM",
    );
}

async fn a_lost_index_is_rebuilt(b: Backend) {
    let mut s = TestServer::start(b).await;
    let (_, at, _) = s.register("alice", "pw-alice-1").await;
    let (_, room) = s.post("/_matrix/client/v3/createRoom", Some(&at), json!({})).await;
    let room = room["room_id"].as_str().unwrap().to_owned();
    let kept = say(&s, &at, &room, "m1", "the compost heap is warm").await;
    indexed(&s).await;
    let index = s.dir.path().join("data").join("search.sqlite3");
    let data_dir = s.services().config.database_path.clone();
    let index = if index.exists() { index } else { data_dir.join("search.sqlite3") };
    assert!(index.exists(), "{}", index.display());
    // Lost (a backup restored without it, a disk tidied): a restart rebuilds it.
    s.restart().await;
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", index.display()));
    }
    s.restart().await;
    indexed(&s).await;
    let (_, res) = search(&s, &at, json!({"search_term": "compost"})).await;
    assert_eq!(result_ids(&res), [kept.as_str()], "{res}");

    // An index of the earlier layout (user_version 0; its rows emptied here, so only a
    // rebuild finds the messages again) is dropped at start and taken in again from the
    // stream; then a redaction removes its target's row by stream position.
    let gone = say(&s, &at, &room, "m2", "compost tea").await;
    indexed(&s).await;
    s.restart().await;
    {
        let db = rusqlite::Connection::open(&index).unwrap();
        db.execute_batch("PRAGMA user_version = 0; DELETE FROM texts;").unwrap();
    }
    s.restart().await;
    indexed(&s).await;
    let (_, res) = search(&s, &at, json!({"search_term": "compost", "order_by": "recent"})).await;
    assert_eq!(result_ids(&res), [gone.as_str(), kept.as_str()], "newest first: {res}");
    let redact = format!("/_matrix/client/v3/rooms/{room}/redact/{gone}/r1");
    assert_eq!(s.put(&redact, Some(&at), json!({})).await.0, StatusCode::OK);
    indexed(&s).await;
    let (_, res) = search(&s, &at, json!({"search_term": "compost"})).await;
    assert_eq!(result_ids(&res), [kept.as_str()], "the redacted message left the index: {res}");
}
