//! Simplified sliding sync (MSC4186) over HTTP: lists, windows and filters, required state,
//! connections and positions, extensions, long-polling and bad input.

use hearth::store::Backend;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::{
    both_engines,
    common::{assert_error, TestServer},
};

const PATH: &str = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync";

async fn slide(s: &TestServer, token: &str, pos: Option<&str>, body: Value) -> Value {
    let path = match pos {
        Some(p) => format!("{PATH}?pos={p}&timeout=0"),
        None => PATH.to_owned(),
    };
    let (status, res) = s.post(&path, Some(token), body).await;
    assert_eq!(status, StatusCode::OK, "{res}");
    res
}

fn pos(res: &Value) -> String {
    res["pos"].as_str().unwrap_or_else(|| panic!("no pos in {res}")).to_owned()
}

async fn create_room(s: &TestServer, token: &str, body: Value) -> String {
    let (status, res) = s.post("/_matrix/client/v3/createRoom", Some(token), body).await;
    assert_eq!(status, StatusCode::OK, "{res}");
    res["room_id"].as_str().unwrap().to_owned()
}

async fn say(s: &TestServer, token: &str, room: &str, text: &str) -> String {
    let path = format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/{}", rand_txn());
    let (status, res) = s.put(&path, Some(token), json!({"msgtype": "m.text", "body": text})).await;
    assert_eq!(status, StatusCode::OK, "{res}");
    res["event_id"].as_str().unwrap().to_owned()
}

fn rand_txn() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!("t{}", N.fetch_add(1, Ordering::Relaxed))
}

fn bodies(room: &Value) -> Vec<String> {
    room["timeline"]
        .as_array()
        .map(|t| t.iter().filter_map(|e| e["content"]["body"].as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

fn list(ranges: Value, limit: u64) -> Value {
    json!({"ranges": ranges, "timeline_limit": limit, "required_state": [["m.room.name", ""]]})
}

async fn lists_order_rooms_by_activity_and_send_only_changes(b: Backend) {
    let s = TestServer::start(b).await;
    let (_, at, _) = s.register("alice", "pw-alice-1").await;
    let first = create_room(&s, &at, json!({"name": "First"})).await;
    let second = create_room(&s, &at, json!({"name": "Second"})).await;
    let third = create_room(&s, &at, json!({"name": "Third"})).await;
    say(&s, &at, &first, "one").await;
    say(&s, &at, &second, "two").await;
    say(&s, &at, &third, "three").await;

    // The two most recent rooms, in full.
    let req = json!({"lists": {"all": list(json!([[0, 1]]), 5)}});
    let res = slide(&s, &at, None, req.clone()).await;
    assert_eq!(res["lists"]["all"]["count"], 3, "{res}");
    let rooms = res["rooms"].as_object().unwrap();
    assert_eq!(rooms.len(), 2, "{res}");
    for (room, name, text) in [(&third, "Third", "three"), (&second, "Second", "two")] {
        let r = &res["rooms"][room];
        assert_eq!(r["initial"], true);
        assert_eq!(r["name"], name);
        assert_eq!(bodies(r), vec![text.to_owned()]);
        assert_eq!(r["joined_count"], 1);
        assert!(r["bump_stamp"].as_u64().is_some());
        assert!(r["prev_batch"].is_string());
        let state = r["required_state"].as_array().unwrap();
        assert!(state.iter().any(|e| e["type"] == "m.room.name" && e["content"]["name"] == name), "{r}");
    }
    assert!(res["rooms"][&third]["bump_stamp"].as_u64() > res["rooms"][&second]["bump_stamp"].as_u64());

    // Nothing new: an empty answer, no room sent again.
    let p = pos(&res);
    let res = slide(&s, &at, Some(&p), req.clone()).await;
    assert!(res["rooms"].as_object().unwrap().is_empty(), "{res}");

    // A message in the oldest room moves it to the top: it comes in with just what is new.
    say(&s, &at, &first, "again").await;
    let res = slide(&s, &at, Some(&pos(&res)), req.clone()).await;
    let r = &res["rooms"][&first];
    assert_eq!(r["initial"], true, "new to the connection: {res}");
    let p = pos(&res);
    say(&s, &at, &first, "and again").await;
    let res = slide(&s, &at, Some(&p), req.clone()).await;
    let r = &res["rooms"][&first];
    assert!(r.get("initial").is_none(), "{r}");
    assert_eq!(bodies(r), vec!["and again".to_owned()]);
    assert_eq!(r["num_live"], 1);
    assert!(r.get("required_state").is_none(), "state already sent: {r}");
    assert_eq!(res["rooms"].as_object().unwrap().len(), 1, "{res}");

    // A longer timeline asked for is sent, replacing the shorter one.
    let longer = json!({"lists": {"all": list(json!([[0, 1]]), 10)}});
    let res = slide(&s, &at, Some(&pos(&res)), longer).await;
    let r = &res["rooms"][&first];
    assert_eq!(bodies(r), vec!["one", "again", "and again"], "{r}");
    assert_eq!(r["limited"], true);
}

async fn filters_pick_dms_encrypted_rooms_invites_and_spaces(b: Backend) {
    let s = TestServer::start(b).await;
    let (alice, at, _) = s.register("alice", "pw-alice-1").await;
    let (bob, bt, _) = s.register("bob", "pw-bob-1").await;
    let plain = create_room(&s, &bt, json!({})).await;
    let encrypted = create_room(
        &s,
        &bt,
        json!({"initial_state": [{"type": "m.room.encryption", "state_key": "", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}]}),
    )
    .await;
    let space = create_room(&s, &bt, json!({"creation_content": {"type": "m.space"}})).await;
    let dm = create_room(&s, &at, json!({"invite": [bob], "is_direct": true})).await;
    s.put(&format!("/_matrix/client/v3/user/{bob}/account_data/m.direct"), Some(&bt), json!({alice.clone(): [dm]}))
        .await;
    let invited = create_room(&s, &at, json!({"invite": [bob], "name": "Come in"})).await;
    for room in [&dm] {
        let (status, _) = s.post(&format!("/_matrix/client/v3/rooms/{room}/join"), Some(&bt), json!({})).await;
        assert_eq!(status, StatusCode::OK);
    }
    let all = |filters: Value| json!({"ranges": [[0, 20]], "timeline_limit": 0, "filters": filters});
    let req = json!({"lists": {
        "dms": all(json!({"is_dm": true})),
        "not_dms": all(json!({"is_dm": false})),
        "encrypted": all(json!({"is_encrypted": true})),
        "invites": all(json!({"is_invite": true})),
        "spaces": all(json!({"room_types": ["m.space"]})),
        "no_spaces": all(json!({"not_room_types": ["m.space"], "is_invite": false})),
        "everything": all(json!({})),
    }});
    let res = slide(&s, &bt, None, req).await;
    let count = |name: &str| res["lists"][name]["count"].as_u64().unwrap();
    assert_eq!(count("everything"), 5, "{res}");
    assert_eq!(count("dms"), 1);
    assert_eq!(count("not_dms"), 4);
    assert_eq!(count("encrypted"), 1);
    assert_eq!(count("invites"), 1);
    assert_eq!(count("spaces"), 1);
    assert_eq!(count("no_spaces"), 3);
    assert_eq!(res["rooms"][&dm]["is_dm"], true, "{res}");
    let invite = &res["rooms"][&invited];
    assert_eq!(invite["name"], "Come in");
    // The inviter's member event names who invited (Element X shows it).
    let stripped = invite["invite_state"].as_array().unwrap();
    let member_of = |u: &str| stripped.iter().find(|e| e["type"] == "m.room.member" && e["state_key"] == u).cloned();
    assert_eq!(member_of(&bob).unwrap()["content"]["membership"], "invite", "{invite}");
    assert_eq!(member_of(&alice).unwrap()["content"]["membership"], "join", "{invite}");
    assert!(invite.get("timeline").is_none());
    for room in [&plain, &encrypted, &space] {
        assert_eq!(res["rooms"][room]["initial"], true);
    }

    // Accepting the invite sends the room afresh, as joined.
    let p = pos(&res);
    s.post(&format!("/_matrix/client/v3/rooms/{invited}/join"), Some(&bt), json!({})).await;
    let res = slide(&s, &bt, Some(&p), json!({"lists": {"all": all(json!({}))}})).await;
    let r = &res["rooms"][&invited];
    assert_eq!(r["initial"], true, "{res}");
    assert!(r.get("invite_state").is_none());
    assert_eq!(r["joined_count"], 2);
}

async fn required_state_takes_wildcards_me_and_lazy_members(b: Backend) {
    let s = TestServer::start(b).await;
    let (alice, at, _) = s.register("alice", "pw-alice-1").await;
    let (bob, bt, _) = s.register("bob", "pw-bob-1").await;
    let (carol, ct, _) = s.register("carol", "pw-carol-1").await;
    let room = create_room(&s, &at, json!({"preset": "public_chat", "topic": "Things"})).await;
    for t in [&bt, &ct] {
        s.post(&format!("/_matrix/client/v3/rooms/{room}/join"), Some(t), json!({})).await;
    }
    say(&s, &bt, &room, "bob speaks").await;
    let ask = |required: Value| json!({"room_subscriptions": {room.clone(): {"timeline_limit": 1, "required_state": required}}});
    let state_of = |res: &Value| -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = res["rooms"][&room]["required_state"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|e| (e["type"].as_str().unwrap().to_owned(), e["state_key"].as_str().unwrap().to_owned()))
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    };
    let member = |u: &str| ("m.room.member".to_owned(), u.to_owned());
    // $LAZY: the timeline's senders; $ME: the user.
    let res = slide(&s, &ct, None, ask(json!([["m.room.member", "$LAZY"], ["m.room.member", "$ME"]]))).await;
    assert_eq!(state_of(&res), vec![member(&bob), member(&carol)], "{res}");
    // A type with any state key.
    let res = slide(&s, &ct, None, ask(json!([["m.room.member", "*"]]))).await;
    assert_eq!(state_of(&res), vec![member(&alice), member(&bob), member(&carol)]);
    // Everything.
    let res = slide(&s, &ct, None, ask(json!([["*", "*"]]))).await;
    let all = state_of(&res);
    assert!(all.contains(&("m.room.create".to_owned(), String::new())), "{all:?}");
    assert!(all.contains(&("m.room.topic".to_owned(), String::new())));
    assert!(all.contains(&member(&alice)));
    // One exact pair; more asked later is sent then, without what was sent before.
    let res = slide(&s, &ct, None, ask(json!([["m.room.topic", ""]]))).await;
    assert_eq!(state_of(&res), vec![("m.room.topic".to_owned(), String::new())]);
    let res = slide(&s, &ct, Some(&pos(&res)), ask(json!([["m.room.topic", ""], ["m.room.create", ""]]))).await;
    assert_eq!(state_of(&res), vec![("m.room.create".to_owned(), String::new())], "{res}");
    // A state change is sent once.
    let p = pos(&res);
    s.put(&format!("/_matrix/client/v3/rooms/{room}/state/m.room.topic/"), Some(&at), json!({"topic": "New"})).await;
    let res = slide(&s, &ct, Some(&p), ask(json!([["m.room.topic", ""], ["m.room.create", ""]]))).await;
    let topic = &res["rooms"][&room]["required_state"][0];
    assert_eq!(topic["content"]["topic"], "New", "{res}");
    assert_eq!(state_of(&res).len(), 1);
}

async fn positions_are_per_connection_and_a_retry_loses_nothing(b: Backend) {
    let s = TestServer::start(b).await;
    let (_, at, _) = s.register("alice", "pw-alice-1").await;
    let room = create_room(&s, &at, json!({})).await;
    let req = json!({"conn_id": "main", "lists": {"all": list(json!([[0, 9]]), 3)}});
    let res = slide(&s, &at, None, req.clone()).await;
    let p = pos(&res);
    say(&s, &at, &room, "hello").await;
    // The answer is lost on the way: the retry with the same pos gets the message again.
    let lost = slide(&s, &at, Some(&p), req.clone()).await;
    assert_eq!(bodies(&lost["rooms"][&room]), vec!["hello"]);
    let again = slide(&s, &at, Some(&p), req.clone()).await;
    assert_eq!(bodies(&again["rooms"][&room]), vec!["hello"], "{again}");
    // The newer pos has it already.
    let res = slide(&s, &at, Some(&pos(&again)), req.clone()).await;
    assert!(res["rooms"].as_object().unwrap().is_empty(), "{res}");

    // A pos of another connection, or made up, is unknown.
    let other = json!({"conn_id": "other", "lists": {"all": list(json!([[0, 9]]), 3)}});
    let (status, err) = s.post(&format!("{PATH}?pos={p}"), Some(&at), other).await;
    assert_error(&(status, err), 400, "M_UNKNOWN_POS");
    for bad in ["nonsense", "0_0", "99999999999999999999_1"] {
        let got = s.post(&format!("{PATH}?pos={bad}"), Some(&at), req.clone()).await;
        assert_error(&got, 400, "M_UNKNOWN_POS");
    }
    // After a restart every pos is unknown, and a new connection works.
    let mut s = s;
    s.restart().await;
    let got = s.post(&format!("{PATH}?pos={}", pos(&res)), Some(&at), req.clone()).await;
    assert_error(&got, 400, "M_UNKNOWN_POS");
    let res = slide(&s, &at, None, req).await;
    assert_eq!(bodies(&res["rooms"][&room]), vec!["hello"]);
}

async fn a_waiting_request_wakes_for_a_message_and_yields_to_a_newer_one(b: Backend) {
    let s = std::sync::Arc::new(TestServer::start(b).await);
    let (_, at, _) = s.register("alice", "pw-alice-1").await;
    let (bob, bt, _) = s.register("bob", "pw-bob-1").await;
    let room = create_room(&s, &at, json!({"invite": [bob]})).await;
    s.post(&format!("/_matrix/client/v3/rooms/{room}/join"), Some(&bt), json!({})).await;
    let req = json!({"lists": {"all": list(json!([[0, 9]]), 3)}});
    let p = pos(&slide(&s, &bt, None, req.clone()).await);

    let waiting = {
        let (s, bt, p, req) = (s.clone(), bt.clone(), p.clone(), req.clone());
        tokio::spawn(async move { s.post(&format!("{PATH}?pos={p}&timeout=60000"), Some(&bt), req).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    say(&s, &at, &room, "wake up").await;
    let (status, res) = waiting.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(bodies(&res["rooms"][&room]), vec!["wake up"], "{res}");

    // A second request on the connection ends the first one's wait (the client gave up on
    // it); both are answered.
    let p = pos(&res);
    let first = {
        let (s, bt, p, req) = (s.clone(), bt.clone(), p.clone(), req.clone());
        tokio::spawn(async move { s.post(&format!("{PATH}?pos={p}&timeout=120000"), Some(&bt), req).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let wider = json!({"lists": {"all": list(json!([[0, 19]]), 3)}});
    let second = s.post(&format!("{PATH}?pos={p}&timeout=0"), Some(&bt), wider).await;
    assert_eq!(second.0, StatusCode::OK, "{}", second.1);
    // The first answers well before its two minutes (bounded here only so that a failure
    // ends the test rather than hanging it).
    let first = tokio::time::timeout(std::time::Duration::from_secs(60), first).await.expect("the first request ended");
    assert_eq!(first.unwrap().0, StatusCode::OK);
}

async fn extensions_carry_to_device_keys_account_data_receipts_and_typing(b: Backend) {
    let s = TestServer::start(b).await;
    let (alice, at, _) = s.register("alice", "pw-alice-1").await;
    let (bob, bt, bob_device) = s.register("bob", "pw-bob-1").await;
    let room = create_room(&s, &at, json!({"invite": [bob]})).await;
    s.post(&format!("/_matrix/client/v3/rooms/{room}/join"), Some(&bt), json!({})).await;
    let event = say(&s, &at, &room, "read me").await;
    let extensions = |since: Option<&str>| {
        let mut to_device = json!({"enabled": true});
        if let Some(s) = since {
            to_device["since"] = json!(s);
        }
        json!({
            "lists": {"all": list(json!([[0, 9]]), 3)},
            "extensions": {
                "to_device": to_device,
                "e2ee": {"enabled": true},
                "account_data": {"enabled": true},
                "receipts": {"enabled": true},
                "typing": {"enabled": true},
            }
        })
    };
    let res = slide(&s, &bt, None, extensions(None)).await;
    let ext = &res["extensions"];
    assert_eq!(ext["e2ee"]["device_one_time_keys_count"]["signed_curve25519"], 0, "{ext}");
    assert!(ext["e2ee"]["device_unused_fallback_key_types"].is_array());
    assert!(ext["account_data"]["global"].as_array().unwrap().iter().any(|e| e["type"] == "m.push_rules"));
    let next = ext["to_device"]["next_batch"].as_str().unwrap().to_owned();

    // A to-device message, a receipt, typing, and account data arrive.
    let path = format!("/_matrix/client/v3/sendToDevice/m.test/{}", rand_txn());
    let body = json!({"messages": {bob.clone(): {bob_device.clone(): {"hello": "bob"}}}});
    assert_eq!(s.put(&path, Some(&at), body).await.0, StatusCode::OK);
    s.post(&format!("/_matrix/client/v3/rooms/{room}/receipt/m.read/{event}"), Some(&at), json!({})).await;
    s.put(
        &format!("/_matrix/client/v3/rooms/{room}/typing/{alice}"),
        Some(&at),
        json!({"typing": true, "timeout": 30000}),
    )
    .await;
    s.put(&format!("/_matrix/client/v3/user/{bob}/account_data/org.example.x"), Some(&bt), json!({"a": 1})).await;
    let res = slide(&s, &bt, Some(&pos(&res)), extensions(Some(&next))).await;
    let ext = &res["extensions"];
    let messages = ext["to_device"]["events"].as_array().unwrap();
    assert_eq!(messages.len(), 1, "{ext}");
    assert_eq!(messages[0]["content"]["hello"], "bob");
    let receipt = &ext["receipts"]["rooms"][&room];
    assert_eq!(receipt["type"], "m.receipt", "{ext}");
    assert!(receipt["content"][&event]["m.read"][&alice].is_object());
    assert_eq!(ext["typing"]["rooms"][&room]["content"]["user_ids"], json!([alice]));
    assert!(ext["account_data"]["global"].as_array().unwrap().iter().any(|e| e["type"] == "org.example.x"));

    // Acknowledged with the next since, the message is not sent again.
    let next = ext["to_device"]["next_batch"].as_str().unwrap().to_owned();
    let res = slide(&s, &bt, Some(&pos(&res)), extensions(Some(&next))).await;
    assert!(res["extensions"]["to_device"]["events"].as_array().is_none_or(|e| e.is_empty()), "{res}");
}

async fn bad_input_gets_matrix_errors(b: Backend) {
    let s = TestServer::start(b).await;
    let (_, at, _) = s.register("alice", "pw-alice-1").await;
    let room = create_room(&s, &at, json!({})).await;
    let many_lists: serde_json::Map<String, Value> =
        (0..100).map(|i| (format!("l{i}"), list(json!([[0, 1]]), 1))).collect();
    let many_subs: serde_json::Map<String, Value> =
        (0..1000).map(|i| (format!("!r{i}:hearth.test"), json!({"timeline_limit": 1}))).collect();
    let many_ranges: Vec<Value> = (0..100).map(|i| json!([i, i])).collect();
    for (body, code) in [
        (json!({"lists": many_lists}), "M_INVALID_PARAM"),
        (json!({"room_subscriptions": many_subs}), "M_INVALID_PARAM"),
        (json!({"lists": {"a": list(json!(many_ranges), 1)}}), "M_INVALID_PARAM"),
        (json!({"lists": {"a": list(json!([[5, 1]]), 1)}}), "M_INVALID_PARAM"),
        (json!({"conn_id": "x".repeat(300)}), "M_INVALID_PARAM"),
        (json!({"lists": {"a": {"ranges": "all"}}}), "M_BAD_JSON"),
        (json!({"lists": {"a": list(json!([[-1, 2]]), 1)}}), "M_BAD_JSON"),
        (json!({"extensions": {"to_device": {"enabled": true, "since": "nonsense"}}}), "M_INVALID_PARAM"),
    ] {
        let got = s.post(PATH, Some(&at), body.clone()).await;
        assert_error(&got, 400, code);
    }
    // A range far past the end, a huge timeline limit: clamped, not refused.
    let body = json!({"lists": {"a": list(json!([[0, 9007199254740991_u64]]), 9007199254740991_u64)}});
    let res = slide(&s, &at, None, body).await;
    assert_eq!(res["lists"]["a"]["count"], 1);
    assert!(res["rooms"][&room]["timeline"].as_array().unwrap().len() <= 100);
    // No token.
    let got = s.post(PATH, None, json!({})).await;
    assert_error(&got, 401, "M_MISSING_TOKEN");
}

async fn a_room_left_is_sent_with_the_leave_and_then_dropped(b: Backend) {
    let s = TestServer::start(b).await;
    let (alice, at, _) = s.register("alice", "pw-alice-1").await;
    let (bob, bt, _) = s.register("bob", "pw-bob-1").await;
    let room = create_room(&s, &at, json!({"invite": [bob]})).await;
    s.post(&format!("/_matrix/client/v3/rooms/{room}/join"), Some(&bt), json!({})).await;
    let req = json!({"lists": {"all": list(json!([[0, 9]]), 5)}});
    let res = slide(&s, &bt, None, req.clone()).await;
    assert_eq!(res["lists"]["all"]["count"], 1);
    s.post(&format!("/_matrix/client/v3/rooms/{room}/leave"), Some(&bt), json!({})).await;
    say(&s, &at, &room, "after bob left").await;
    let res = slide(&s, &bt, Some(&pos(&res)), req.clone()).await;
    let r = &res["rooms"][&room];
    let leave = r["timeline"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(leave["content"]["membership"], "leave", "{r}");
    assert!(!bodies(r).contains(&"after bob left".to_owned()), "nothing after the leave: {r}");
    let res = slide(&s, &bt, Some(&pos(&res)), req).await;
    assert_eq!(res["lists"]["all"]["count"], 0, "{res}");
    assert!(res["rooms"].as_object().unwrap().is_empty());
    let _ = alice;
}

both_engines!(
    lists_order_rooms_by_activity_and_send_only_changes,
    filters_pick_dms_encrypted_rooms_invites_and_spaces,
    required_state_takes_wildcards_me_and_lazy_members,
    positions_are_per_connection_and_a_retry_loses_nothing,
    a_waiting_request_wakes_for_a_message_and_yields_to_a_newer_one,
    extensions_carry_to_device_keys_account_data_receipts_and_typing,
    bad_input_gets_matrix_errors,
    a_room_left_is_sent_with_the_leave_and_then_dropped,
);
