//! Rooms: creation in every room version, messages, state, membership, aliases, history.

use hearth::store::Backend;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::{
    both_engines,
    common::{assert_error, TestServer, SERVER_NAME},
};

async fn create(s: &TestServer, token: &str, body: Value) -> String {
    let (status, res) = s.post("/_matrix/client/v3/createRoom", Some(token), body).await;
    assert_eq!(status, StatusCode::OK, "{res}");
    res["room_id"].as_str().unwrap().to_owned()
}

async fn send(s: &TestServer, token: &str, room: &str, txn: &str, body: &str) -> (StatusCode, Value) {
    s.put(
        &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/{txn}"),
        Some(token),
        json!({"msgtype": "m.text", "body": body}),
    )
    .await
}

/// Every version works, for a server alone and for one that federates (which offers
/// 1 to 12 as well; an unknown version is refused).
async fn every_room_version_works(b: Backend) {
    let federating = TestServer::start(b).await;
    let (_, token, _) = federating.register("alice", "pw-alice-1").await;
    let (_, caps) = federating.get("/_matrix/client/v3/capabilities", Some(&token)).await;
    let mut offered: Vec<u32> = caps["capabilities"]["m.room_versions"]["available"]
        .as_object()
        .expect("versions")
        .keys()
        .map(|v| v.parse().expect("number"))
        .collect();
    offered.sort();
    // Every version, 1 included (state resolution v1 is Hearth's own), also when federating.
    assert_eq!(offered, (1..=12).collect::<Vec<_>>(), "{caps}");
    let (status, v1) =
        federating.post("/_matrix/client/v3/createRoom", Some(&token), json!({"room_version": "1"})).await;
    assert_eq!(status, StatusCode::OK, "{v1}");
    let refused = federating.post("/_matrix/client/v3/createRoom", Some(&token), json!({"room_version": "99"})).await;
    assert_error(&refused, 400, "M_UNSUPPORTED_ROOM_VERSION");
    drop(federating);

    let s = TestServer::start_with(b, |c| c.allow_federation = false).await;
    let (_, token, _) = s.register("alice", "pw-alice-1").await;
    for v in 1..=12 {
        let room = create(&s, &token, json!({"room_version": v.to_string(), "name": format!("v{v}")})).await;
        if v >= 12 {
            assert!(!room.contains(':'), "v12 room ids are hashes: {room}");
        } else {
            assert!(room.ends_with(&format!(":{SERVER_NAME}")), "{room}");
        }
        let (status, res) = send(&s, &token, &room, &format!("t{v}"), "hello").await;
        assert_eq!(status, StatusCode::OK, "v{v}: {res}");
        let event_id = res["event_id"].as_str().unwrap();
        match v {
            1 | 2 => assert!(event_id.ends_with(&format!(":{SERVER_NAME}")), "{event_id}"),
            3 => assert!(!event_id.contains(':') && event_id.len() == 44, "{event_id}"),
            _ => assert!(!event_id.contains(['+', '/', ':']) && event_id.len() == 44, "{event_id}"),
        }
        // v3 event ids are standard base64, so they need escaping in a path.
        let escaped = event_id.replace('+', "%2B").replace('/', "%2F");
        let (status, ev) = s.get(&format!("/_matrix/client/v3/rooms/{room}/event/{escaped}"), Some(&token)).await;
        assert_eq!(status, StatusCode::OK, "{ev}");
        assert_eq!(ev["content"]["body"], "hello");
        assert_eq!(ev["room_id"], room.as_str());

        let (_, create_content) =
            s.get(&format!("/_matrix/client/v3/rooms/{room}/state/m.room.create/"), Some(&token)).await;
        assert_eq!(create_content["room_version"], v.to_string());
        let (_, name) = s.get(&format!("/_matrix/client/v3/rooms/{room}/state/m.room.name/"), Some(&token)).await;
        assert_eq!(name["name"], format!("v{v}"));
    }
    // The PDUs are really signed by the server key with the right hashes: checked from the store.
    let services = s.services();
    let rooms = services.rooms.joined_rooms(&ruma::UserId::parse(format!("@alice:{SERVER_NAME}")).unwrap()).unwrap();
    assert_eq!(rooms.len(), 12);
}

async fn default_version_and_unsupported(b: Backend) {
    let s = TestServer::start(b).await;
    let (_, token, _) = s.register("alice", "pw-alice-1").await;
    let room = create(&s, &token, json!({})).await;
    let (_, c) = s.get(&format!("/_matrix/client/v3/rooms/{room}/state/m.room.create/"), Some(&token)).await;
    assert_eq!(c["room_version"], "12");
    let got = s.post("/_matrix/client/v3/createRoom", Some(&token), json!({"room_version": "99"})).await;
    assert_error(&got, 400, "M_UNSUPPORTED_ROOM_VERSION");
}

async fn invite_join_chat_leave(b: Backend) {
    let s = TestServer::start(b).await;
    let (alice, at, _) = s.register("alice", "pw-alice-1").await;
    let (bob, bt, _) = s.register("bob", "pw-bob-1").await;
    let (_, ct, _) = s.register("carol", "pw-carol-1").await;
    let room = create(&s, &at, json!({"preset": "private_chat", "invite": [bob]})).await;

    // Carol was not invited: refused by the room's join rules.
    let got = s.post(&format!("/_matrix/client/v3/rooms/{room}/join"), Some(&ct), json!({})).await;
    assert_error(&got, 403, "M_FORBIDDEN");
    // Carol cannot read it either.
    assert_error(
        &s.get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=b"), Some(&ct)).await,
        403,
        "M_FORBIDDEN",
    );

    let (status, res) = s.post(&format!("/_matrix/client/v3/rooms/{room}/join"), Some(&bt), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{res}");
    assert_eq!(res["room_id"], room.as_str());
    let (_, jr) = s.get("/_matrix/client/v3/joined_rooms", Some(&bt)).await;
    assert_eq!(jr["joined_rooms"], json!([room]));

    for i in 0..5 {
        let (tok, who) = if i % 2 == 0 { (&at, "alice") } else { (&bt, "bob") };
        let (status, _) = send(&s, tok, &room, &format!("m{i}"), &format!("{who} {i}")).await;
        assert_eq!(status, StatusCode::OK);
    }
    let (_, members) = s.get(&format!("/_matrix/client/v3/rooms/{room}/joined_members"), Some(&at)).await;
    let joined = members["joined"].as_object().unwrap();
    assert_eq!(joined.len(), 2);
    assert_eq!(joined[&alice]["display_name"], "alice");

    let (_, all) = s.get(&format!("/_matrix/client/v3/rooms/{room}/members"), Some(&at)).await;
    assert_eq!(all["chunk"].as_array().unwrap().len(), 2);
    let (_, left) = s.get(&format!("/_matrix/client/v3/rooms/{room}/members?membership=leave"), Some(&at)).await;
    assert_eq!(left["chunk"], json!([]));

    let (status, _) = s.post(&format!("/_matrix/client/v3/rooms/{room}/leave"), Some(&bt), json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let got = send(&s, &bt, &room, "after", "still here?").await;
    assert_error(&got, 403, "M_FORBIDDEN");
    // Bob still sees the history up to his leave, not after.
    send(&s, &at, &room, "later", "after bob left").await;
    let (status, page) = s.get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=50"), Some(&bt)).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let bodies: Vec<&str> =
        page["chunk"].as_array().unwrap().iter().filter_map(|e| e["content"]["body"].as_str()).collect();
    assert!(bodies.contains(&"bob 1") && !bodies.contains(&"after bob left"), "{bodies:?}");
    let got = s.post(&format!("/_matrix/client/v3/rooms/{room}/forget"), Some(&bt), json!({})).await;
    assert_eq!(got.0, StatusCode::OK);
    let (_, jr) = s.get("/_matrix/client/v3/joined_rooms", Some(&bt)).await;
    assert_eq!(jr["joined_rooms"], json!([]));
}

async fn power_is_enforced(b: Backend) {
    let s = TestServer::start(b).await;
    let (_, at, _) = s.register("alice", "pw-alice-1").await;
    let (bob, bt, _) = s.register("bob", "pw-bob-1").await;
    let (carol, ct, _) = s.register("carol", "pw-carol-1").await;
    let room = create(&s, &at, json!({"preset": "public_chat"})).await;
    for t in [&bt, &ct] {
        let (status, res) = s.post(&format!("/_matrix/client/v3/rooms/{room}/join"), Some(t), json!({})).await;
        assert_eq!(status, StatusCode::OK, "{res}");
    }
    // Bob has no power to kick Carol or change the name.
    let got = s.post(&format!("/_matrix/client/v3/rooms/{room}/kick"), Some(&bt), json!({"user_id": carol})).await;
    assert_error(&got, 403, "M_FORBIDDEN");
    let got =
        s.put(&format!("/_matrix/client/v3/rooms/{room}/state/m.room.name/"), Some(&bt), json!({"name": "mine"})).await;
    assert_error(&got, 403, "M_FORBIDDEN");
    // Alice can kick and ban; a banned user cannot come back until unbanned.
    let (status, _) = s
        .post(&format!("/_matrix/client/v3/rooms/{room}/kick"), Some(&at), json!({"user_id": carol, "reason": "bye"}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = s.post(&format!("/_matrix/client/v3/rooms/{room}/ban"), Some(&at), json!({"user_id": bob})).await;
    assert_eq!(status, StatusCode::OK);
    assert_error(
        &s.post(&format!("/_matrix/client/v3/rooms/{room}/join"), Some(&bt), json!({})).await,
        403,
        "M_FORBIDDEN",
    );
    // A kicked user still reads the state as it was when they left; a banned one does not
    // (as Synapse answers).
    let (status, kicked) =
        s.get(&format!("/_matrix/client/v3/rooms/{room}/state/m.room.member/{carol}"), Some(&ct)).await;
    assert_eq!((status, kicked["membership"].as_str()), (StatusCode::OK, Some("leave")), "{kicked}");
    for path in [format!("state/m.room.member/{bob}"), "state".to_owned()] {
        assert_error(&s.get(&format!("/_matrix/client/v3/rooms/{room}/{path}"), Some(&bt)).await, 403, "M_FORBIDDEN");
    }
    let (status, _) =
        s.post(&format!("/_matrix/client/v3/rooms/{room}/unban"), Some(&at), json!({"user_id": bob})).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = s.post(&format!("/_matrix/client/v3/rooms/{room}/join"), Some(&bt), json!({})).await;
    assert_eq!(status, StatusCode::OK);
}

async fn unknown_rooms_and_events_are_404(b: Backend) {
    let s = TestServer::start(b).await;
    let (_, at, _) = s.register("alice", "pw-alice-1").await;
    let nowhere = format!("!nowhere:{SERVER_NAME}");
    assert_error(
        &s.post(&format!("/_matrix/client/v3/rooms/{nowhere}/join"), Some(&at), json!({})).await,
        404,
        "M_NOT_FOUND",
    );
    assert_error(&send(&s, &at, &nowhere, "x", "hi").await, 404, "M_NOT_FOUND");
    let room = create(&s, &at, json!({})).await;
    assert_error(&s.get(&format!("/_matrix/client/v3/rooms/{room}/event/$nope"), Some(&at)).await, 404, "M_NOT_FOUND");
    assert_error(
        &s.get(&format!("/_matrix/client/v3/rooms/{room}/state/m.room.topic/"), Some(&at)).await,
        404,
        "M_NOT_FOUND",
    );
}

async fn sends_are_idempotent_per_transaction(b: Backend) {
    let s = TestServer::start(b).await;
    let (_, at, _) = s.register("alice", "pw-alice-1").await;
    let room = create(&s, &at, json!({})).await;
    let (_, first) = send(&s, &at, &room, "same", "once").await;
    let (_, again) = send(&s, &at, &room, "same", "once").await;
    assert_eq!(first["event_id"], again["event_id"]);
    let (_, page) = s.get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=100"), Some(&at)).await;
    let count = page["chunk"].as_array().unwrap().iter().filter(|e| e["content"]["body"] == "once").count();
    assert_eq!(count, 1);
    // Our own device sees its transaction id; that is how clients match local echoes.
    let mine = page["chunk"].as_array().unwrap().iter().find(|e| e["content"]["body"] == "once").unwrap();
    assert_eq!(mine["unsigned"]["transaction_id"], "same");
}

async fn history_paginates_in_order(b: Backend) {
    let s = TestServer::start(b).await;
    let (_, at, _) = s.register("alice", "pw-alice-1").await;
    let room = create(&s, &at, json!({})).await;
    for i in 0..25 {
        send(&s, &at, &room, &format!("t{i}"), &format!("msg {i}")).await;
    }
    let mut seen = Vec::new();
    let mut from: Option<String> = None;
    loop {
        let q = match &from {
            Some(f) => format!("?dir=b&limit=10&from={f}&filter=%7B%22types%22%3A%5B%22m.room.message%22%5D%7D"),
            None => "?dir=b&limit=10&filter=%7B%22types%22%3A%5B%22m.room.message%22%5D%7D".to_owned(),
        };
        let (status, page) = s.get(&format!("/_matrix/client/v3/rooms/{room}/messages{q}"), Some(&at)).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        for e in page["chunk"].as_array().unwrap() {
            seen.push(e["content"]["body"].as_str().unwrap().to_owned());
        }
        match page["end"].as_str() {
            Some(end) => from = Some(end.to_owned()),
            None => break,
        }
    }
    let expected: Vec<String> = (0..25).rev().map(|i| format!("msg {i}")).collect();
    assert_eq!(seen, expected);

    // Forwards from the start.
    let (_, page) = s.get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=f&limit=1000"), Some(&at)).await;
    let bodies: Vec<&str> =
        page["chunk"].as_array().unwrap().iter().filter_map(|e| e["content"]["body"].as_str()).collect();
    assert_eq!(bodies.first(), Some(&"msg 0"));
    assert_eq!(page["chunk"][0]["type"], "m.room.create");
}

async fn aliases_resolve_and_join(b: Backend) {
    let s = TestServer::start(b).await;
    let (_, at, _) = s.register("alice", "pw-alice-1").await;
    let (_, bt, _) = s.register("bob", "pw-bob-1").await;
    let room = create(&s, &at, json!({"preset": "public_chat", "room_alias_name": "lounge"})).await;
    let alias = format!("#lounge:{SERVER_NAME}");
    let enc = alias.replace('#', "%23");
    let (status, res) = s.get(&format!("/_matrix/client/v3/directory/room/{enc}"), None).await;
    assert_eq!(status, StatusCode::OK, "{res}");
    assert_eq!(res["room_id"], room.as_str());
    let (_, ca) = s.get(&format!("/_matrix/client/v3/rooms/{room}/state/m.room.canonical_alias/"), Some(&at)).await;
    assert_eq!(ca["alias"], alias.as_str());
    let (status, res) = s.post(&format!("/_matrix/client/v3/join/{enc}"), Some(&bt), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{res}");
    assert_eq!(res["room_id"], room.as_str());

    let got = s.post("/_matrix/client/v3/createRoom", Some(&at), json!({"room_alias_name": "lounge"})).await;
    assert_error(&got, 400, "M_ROOM_IN_USE");

    let (status, _) = s
        .put(&format!("/_matrix/client/v3/directory/room/%23extra:{SERVER_NAME}"), Some(&at), json!({"room_id": room}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = s
        .request(Method::DELETE, &format!("/_matrix/client/v3/directory/room/%23extra:{SERVER_NAME}"), Some(&at), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_error(
        &s.get(&format!("/_matrix/client/v3/directory/room/%23extra:{SERVER_NAME}"), None).await,
        404,
        "M_NOT_FOUND",
    );
}

async fn state_put_and_get(b: Backend) {
    let s = TestServer::start(b).await;
    let (alice, at, _) = s.register("alice", "pw-alice-1").await;
    let room = create(&s, &at, json!({"topic": "first"})).await;
    let (status, res) = s
        .put(&format!("/_matrix/client/v3/rooms/{room}/state/m.room.topic/"), Some(&at), json!({"topic": "second"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{res}");
    let (_, t) = s.get(&format!("/_matrix/client/v3/rooms/{room}/state/m.room.topic/"), Some(&at)).await;
    assert_eq!(t, json!({"topic": "second"}));
    let (_, ev) = s.get(&format!("/_matrix/client/v3/rooms/{room}/state/m.room.topic/?format=event"), Some(&at)).await;
    assert_eq!(ev["sender"], alice.as_str());
    assert_eq!(ev["content"]["topic"], "second");
    let (_, all) = s.get(&format!("/_matrix/client/v3/rooms/{room}/state"), Some(&at)).await;
    let types: Vec<&str> = all.as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap()).collect();
    for t in [
        "m.room.create",
        "m.room.member",
        "m.room.power_levels",
        "m.room.join_rules",
        "m.room.history_visibility",
        "m.room.topic",
    ] {
        assert!(types.contains(&t), "{t} missing from {types:?}");
    }
    assert_eq!(types.iter().filter(|t| **t == "m.room.topic").count(), 1);

    // Content that is not canonical JSON (a float) is refused.
    let got = s.put(&format!("/_matrix/client/v3/rooms/{room}/state/m.custom/"), Some(&at), json!({"x": 1.5})).await;
    assert_error(&got, 400, "M_BAD_JSON");
}

async fn oversized_event_is_413(b: Backend) {
    // A request limit above the PDU limit, so the PDU limit is what refuses.
    let s = TestServer::start_with(b, |c| c.max_request_size = 1_000_000).await;
    let (_, at, _) = s.register("alice", "pw-alice-1").await;
    let room = create(&s, &at, json!({})).await;
    let got = s
        .put(&format!("/_matrix/client/v3/rooms/{room}/state/m.custom/"), Some(&at), json!({"x": "y".repeat(65_000)}))
        .await;
    assert_error(&got, 413, "M_TOO_LARGE");
    let got = send(&s, &at, &room, "big", &"z".repeat(70_000)).await;
    assert_error(&got, 413, "M_TOO_LARGE");
    // Just under the limit is fine.
    let (status, res) = send(&s, &at, &room, "ok", &"z".repeat(60_000)).await;
    assert_eq!(status, StatusCode::OK, "{res}");
}

/// Content nested too deep to be parsed back (JSON parsers stop at 128 levels) is refused
/// at send; before, it was stored and then broke `/sync` and `/messages` for the room.
async fn deeply_nested_content_is_refused(b: Backend) {
    let s = TestServer::start(b).await;
    let (_, at, _) = s.register("alice", "pw-alice-1").await;
    let (_, bt, _) = s.register("bob", "pw-bob-1").await;
    let room = create(&s, &at, json!({"preset": "public_chat"})).await;
    s.post(&format!("/_matrix/client/v3/rooms/{room}/join"), Some(&bt), json!({})).await;
    // `levels` = depth of the content object, itself level 1.
    let nested = |levels: usize| {
        let mut inner = json!("leaf");
        for _ in 0..levels {
            inner = json!({ "a": inner });
        }
        let mut content = inner;
        content["msgtype"] = json!("m.text");
        content["body"] = json!("deep");
        content
    };
    let path = |txn: &str| format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/{txn}");
    let (status, res) = s.put(&path("ok"), Some(&at), nested(100)).await;
    assert_eq!(status, StatusCode::OK, "{res}");
    for (txn, levels) in [("deeper", 101), ("deepest", 127)] {
        assert_error(&s.put(&path(txn), Some(&at), nested(levels)).await, 400, "M_BAD_JSON");
    }
    let state = format!("/_matrix/client/v3/rooms/{room}/state/m.custom/");
    assert_error(&s.put(&state, Some(&at), nested(120)).await, 400, "M_BAD_JSON");
    // Everyone's sync and history still work, and the accepted event is in them.
    let (status, sync) = s.get("/_matrix/client/v3/sync", Some(&bt)).await;
    assert_eq!(status, StatusCode::OK, "{sync}");
    assert_eq!(sync["rooms"]["join"][&room]["unread_notifications"]["notification_count"], 1, "{sync}");
    let (status, page) = s.get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=b"), Some(&bt)).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["chunk"][0]["content"]["body"], "deep");
}

async fn rooms_survive_restart(b: Backend) {
    let mut s = TestServer::start(b).await;
    let (_, at, _) = s.register("alice", "pw-alice-1").await;
    let room = create(&s, &at, json!({"name": "persistent"})).await;
    let (_, first) = send(&s, &at, &room, "a", "before").await;
    s.restart().await;
    let (status, second) = send(&s, &at, &room, "b", "after").await;
    assert_eq!(status, StatusCode::OK, "{second}");
    assert_ne!(first["event_id"], second["event_id"]);
    let (_, page) = s.get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=2"), Some(&at)).await;
    let bodies: Vec<&str> =
        page["chunk"].as_array().unwrap().iter().filter_map(|e| e["content"]["body"].as_str()).collect();
    assert_eq!(bodies, vec!["after", "before"]);
}

both_engines!(
    every_room_version_works,
    default_version_and_unsupported,
    invite_join_chat_leave,
    power_is_enforced,
    unknown_rooms_and_events_are_404,
    sends_are_idempotent_per_transaction,
    history_paginates_in_order,
    aliases_resolve_and_join,
    state_put_and_get,
    oversized_event_is_413,
    deeply_nested_content_is_refused,
    rooms_survive_restart,
);

/// Pages that start after a recent position are read from the stream's memory; after a
/// restart (memory empty) the same requests read the room's timeline on disk. Both give
/// the same pages, with another room's events interleaved.
async fn recent_pages_match_pages_from_disk(b: Backend) {
    let mut s = TestServer::start(b).await;
    let (_, at, _) = s.register("alice", "pw-alice-1").await;
    let room = create(&s, &at, json!({})).await;
    let other = create(&s, &at, json!({})).await;
    let mut positions = Vec::new();
    for i in 0..8 {
        let (_, sync) = s.get("/_matrix/client/v3/sync?timeout=0", Some(&at)).await;
        positions.push(sync["next_batch"].as_str().unwrap().split('_').next().unwrap().to_owned());
        send(&s, &at, &room, &format!("r{i}"), &format!("msg {i}")).await;
        send(&s, &at, &other, &format!("o{i}"), &format!("other {i}")).await;
    }
    let mut queries = Vec::new();
    for (i, from) in positions.iter().enumerate() {
        for limit in [1, 3, 20] {
            queries.push(format!("dir=f&from={from}&limit={limit}"));
            if let Some(to) = positions.get(i + 3) {
                queries.push(format!("dir=f&from={from}&to={to}&limit={limit}"));
                queries.push(format!("dir=b&from={to}&to={from}&limit={limit}"));
            }
        }
    }
    let from_memory = pages(&s, &at, &room, &queries).await;
    assert!(from_memory.iter().any(|(_, ids, _)| ids.len() == 3), "pages hold events: {from_memory:?}");
    s.restart().await;
    assert_eq!(pages(&s, &at, &room, &queries).await, from_memory);
}

/// Event ids and end token of each `/messages` query.
async fn pages(s: &TestServer, at: &str, room: &str, queries: &[String]) -> Vec<(String, Vec<Value>, Value)> {
    let mut out = Vec::new();
    for q in queries {
        let (status, page) = s.get(&format!("/_matrix/client/v3/rooms/{room}/messages?{q}"), Some(at)).await;
        assert_eq!(status, StatusCode::OK, "{q}: {page}");
        let ids = page["chunk"].as_array().unwrap().iter().map(|e| e["event_id"].clone()).collect();
        out.push((q.clone(), ids, page["end"].clone()));
    }
    out
}

both_engines!(recent_pages_match_pages_from_disk);

async fn redactions_in_every_version(b: Backend) {
    // Alone, so that version 1 rooms may be made.
    let s = TestServer::start_with(b, |c| c.allow_federation = false).await;
    let (_, at, _) = s.register("alice", "pw-alice-1").await;
    let (_, bt, _) = s.register("bob", "pw-bob-1").await;
    for v in [1, 5, 10, 11, 12] {
        let room =
            create(&s, &at, json!({"room_version": v.to_string(), "preset": "public_chat", "topic": "secret topic"}))
                .await;
        s.post(&format!("/_matrix/client/v3/rooms/{room}/join"), Some(&bt), json!({})).await;
        let (_, before) = s.get("/_matrix/client/v3/sync?timeout=0", Some(&at)).await;
        let a_since = before["next_batch"].as_str().unwrap().to_owned();
        let (_, mine) = send(&s, &bt, &room, "b1", "oops").await;
        let (_, theirs) = send(&s, &at, &room, "a1", "alice's").await;
        let esc = |id: &Value| id.as_str().unwrap().replace('+', "%2B").replace('/', "%2F");

        // Bob may redact his own message, not Alice's.
        let path = format!("/_matrix/client/v3/rooms/{room}/redact/{}/r1", esc(&mine["event_id"]));
        let (status, red) = s.put(&path, Some(&bt), json!({"reason": "typo"})).await;
        assert_eq!(status, StatusCode::OK, "v{v}: {red}");
        let path = format!("/_matrix/client/v3/rooms/{room}/redact/{}/r2", esc(&theirs["event_id"]));
        assert_error(&s.put(&path, Some(&bt), json!({})).await, 403, "M_FORBIDDEN");
        // An event of another room, named through this one: a bad request.
        let elsewhere = create(&s, &at, json!({"room_version": v.to_string()})).await;
        let path = format!("/_matrix/client/v3/rooms/{elsewhere}/redact/{}/r3", esc(&theirs["event_id"]));
        assert_error(&s.put(&path, Some(&at), json!({})).await, 400, "M_INVALID_PARAM");

        let (_, ev) =
            s.get(&format!("/_matrix/client/v3/rooms/{room}/event/{}", esc(&mine["event_id"])), Some(&at)).await;
        assert_eq!(ev["content"], json!({}), "v{v}: {ev}");
        assert_eq!(ev["unsigned"]["redacted_because"]["event_id"], red["event_id"], "v{v}: {ev}");
        assert_eq!(ev["unsigned"]["redacted_because"]["content"]["reason"], "typo");
        assert_eq!(ev["unsigned"]["redacted_by"], red["event_id"], "v{v}: Synapse's older name, sent too");
        if v >= 11 {
            assert_eq!(ev["unsigned"]["redacted_because"]["content"]["redacts"], mine["event_id"]);
        }
        // Also at the top level from version 11, as the spec asks for older clients.
        assert_eq!(ev["unsigned"]["redacted_because"]["redacts"], mine["event_id"], "v{v}");
        // The newest events are kept parsed in memory: the redacted one is gone from there
        // too, for syncs and pagination alike.
        let (_, sync) = s.get(&format!("/_matrix/client/v3/sync?since={a_since}&timeout=0"), Some(&at)).await;
        let timeline = sync["rooms"]["join"][&room]["timeline"]["events"].as_array().cloned().unwrap_or_default();
        let synced = timeline.iter().find(|e| e["event_id"] == mine["event_id"]).expect("in the timeline");
        assert_eq!(synced["content"], json!({}), "v{v}: {sync}");
        assert_eq!(synced["unsigned"]["redacted_because"]["event_id"], red["event_id"], "v{v}: {sync}");
        let (_, page) = s.get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=5"), Some(&at)).await;
        let chunk = page["chunk"].as_array().cloned().unwrap_or_default();
        let paged = chunk.iter().find(|e| e["event_id"] == mine["event_id"]).expect("in the page");
        assert_eq!(paged["content"], json!({}), "v{v}: {page}");

        // Alice (room admin) may redact state; the topic's content goes, also from the
        // whole-state readers, which keep parsed state events in memory.
        let full_topic = || async {
            let (_, all) = s.get(&format!("/_matrix/client/v3/rooms/{room}/state"), Some(&at)).await;
            let all = all.as_array().cloned().unwrap_or_default();
            all.into_iter().find(|e| e["type"] == "m.room.topic").map(|e| e["content"].clone())
        };
        assert_eq!(full_topic().await, Some(json!({"topic": "secret topic"})), "v{v}");
        let (_, topic) =
            s.get(&format!("/_matrix/client/v3/rooms/{room}/state/m.room.topic/?format=event"), Some(&at)).await;
        let path = format!("/_matrix/client/v3/rooms/{room}/redact/{}/r3", esc(&topic["event_id"]));
        assert_eq!(s.put(&path, Some(&at), json!({})).await.0, StatusCode::OK);
        let (status, content) = s.get(&format!("/_matrix/client/v3/rooms/{room}/state/m.room.topic/"), Some(&at)).await;
        assert_eq!((status, content), (StatusCode::OK, json!({})));
        assert_eq!(full_topic().await, Some(json!({})), "v{v}");
    }
}

both_engines!(redactions_in_every_version);

/// `POST …/redact/{eventId}` without a transaction id, as Synapse serves it and older
/// clients send it: a redaction like the `PUT`'s, a new one for each call; what the `PUT`
/// refuses it refuses too.
async fn redaction_by_post_without_a_transaction_id(b: Backend) {
    let s = TestServer::start(b).await;
    let (_, at, _) = s.register("alice", "pw-alice-1").await;
    let (_, bt, _) = s.register("bob", "pw-bob-1").await;
    let room = create(&s, &at, json!({"preset": "public_chat"})).await;
    s.post(&format!("/_matrix/client/v3/rooms/{room}/join"), Some(&bt), json!({})).await;
    let (_, mine) = send(&s, &bt, &room, "b1", "oops").await;
    let (_, theirs) = send(&s, &at, &room, "a1", "alice's").await;
    let esc = |id: &Value| id.as_str().unwrap().replace('+', "%2B").replace('/', "%2F");

    let path = format!("/_matrix/client/r0/rooms/{room}/redact/{}", esc(&mine["event_id"]));
    let (status, first) = s.post(&path, Some(&bt), json!({"reason": "typo"})).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let (status, second) = s.post(&path.replace("/r0/", "/v3/"), Some(&bt), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{second}");
    assert_ne!(first["event_id"], second["event_id"], "each call a new redaction");
    let (_, ev) = s.get(&format!("/_matrix/client/v3/rooms/{room}/event/{}", esc(&mine["event_id"])), Some(&at)).await;
    assert_eq!(ev["content"], json!({}), "{ev}");
    assert_eq!(ev["unsigned"]["redacted_because"]["event_id"], first["event_id"], "{ev}");

    let theirs_path = format!("/_matrix/client/v3/rooms/{room}/redact/{}", esc(&theirs["event_id"]));
    assert_error(&s.post(&theirs_path, Some(&bt), json!({})).await, 403, "M_FORBIDDEN");
    assert_error(&s.post(&theirs_path, Some(&at), json!({"reason": 5})).await, 400, "M_BAD_JSON");
    assert_error(&s.post(&theirs_path, None, json!({})).await, 401, "M_MISSING_TOKEN");
    let bad = format!("/_matrix/client/v3/rooms/{room}/redact/not-an-event-id");
    assert_error(&s.post(&bad, Some(&at), json!({})).await, 400, "M_INVALID_PARAM");
}

both_engines!(redaction_by_post_without_a_transaction_id);

async fn same_transaction_id_in_another_room_is_a_new_send(b: Backend) {
    let s = TestServer::start(b).await;
    let (_, at, _) = s.register("alice", "pw-alice-1").await;
    let one = create(&s, &at, json!({})).await;
    let two = create(&s, &at, json!({})).await;
    let (_, a) = send(&s, &at, &one, "same-txn", "in one").await;
    let (_, b2) = send(&s, &at, &two, "same-txn", "in two").await;
    assert_ne!(a["event_id"], b2["event_id"]);
    let (_, ev) =
        s.get(&format!("/_matrix/client/v3/rooms/{two}/event/{}", b2["event_id"].as_str().unwrap()), Some(&at)).await;
    assert_eq!(ev["content"]["body"], "in two");
}

both_engines!(same_transaction_id_in_another_room_is_a_new_send);

async fn upgrade_continues_the_room(b: Backend) {
    let s = TestServer::start(b).await;
    let (_, at, _) = s.register("alice", "pw-alice-1").await;
    let (_, bt, _) = s.register("bob", "pw-bob-1").await;
    let old = create(
        &s,
        &at,
        json!({"room_version": "10", "preset": "public_chat", "name": "Old", "topic": "t", "room_alias_name": "hall"}),
    )
    .await;
    s.post(&format!("/_matrix/client/v3/rooms/{old}/join"), Some(&bt), json!({})).await;
    // Bob has no power to upgrade.
    assert_error(
        &s.post(&format!("/_matrix/client/v3/rooms/{old}/upgrade"), Some(&bt), json!({"new_version": "12"})).await,
        403,
        "M_FORBIDDEN",
    );
    let (status, res) =
        s.post(&format!("/_matrix/client/v3/rooms/{old}/upgrade"), Some(&at), json!({"new_version": "12"})).await;
    assert_eq!(status, StatusCode::OK, "{res}");
    let new = res["replacement_room"].as_str().unwrap().to_owned();

    let (_, tomb) = s.get(&format!("/_matrix/client/v3/rooms/{old}/state/m.room.tombstone/"), Some(&at)).await;
    assert_eq!(tomb["replacement_room"], new.as_str());
    let (_, create_content) = s.get(&format!("/_matrix/client/v3/rooms/{new}/state/m.room.create/"), Some(&at)).await;
    assert_eq!(create_content["predecessor"]["room_id"], old.as_str());
    assert!(create_content["predecessor"]["event_id"].as_str().is_some_and(|e| e.starts_with('$')), "{create_content}");
    assert_eq!(create_content["room_version"], "12");
    let (_, name) = s.get(&format!("/_matrix/client/v3/rooms/{new}/state/m.room.name/"), Some(&at)).await;
    assert_eq!(name["name"], "Old");
    let (_, jr) = s.get(&format!("/_matrix/client/v3/rooms/{new}/state/m.room.join_rules/"), Some(&at)).await;
    assert_eq!(jr["join_rule"], "public");
    let (_, alias) = s.get(&format!("/_matrix/client/v3/directory/room/%23hall:{SERVER_NAME}"), None).await;
    assert_eq!(alias["room_id"], new.as_str());
    // Bob can no longer talk in the old room, and can join the new one.
    assert_error(&send(&s, &bt, &old, "late", "hello?").await, 403, "M_FORBIDDEN");
    assert_eq!(
        s.post(&format!("/_matrix/client/v3/join/%23hall:{SERVER_NAME}"), Some(&bt), json!({})).await.0,
        StatusCode::OK
    );
}

/// Upgrading to a version whose room ids are chosen (before 12): the tombstone comes
/// first, and the new room's create event names it as `predecessor.event_id`.
async fn upgrade_links_the_tombstone(b: Backend) {
    let s = TestServer::start(b).await;
    let (_, at, _) = s.register("alice", "pw-alice-1").await;
    let old = create(&s, &at, json!({"room_version": "10"})).await;
    let (status, res) =
        s.post(&format!("/_matrix/client/v3/rooms/{old}/upgrade"), Some(&at), json!({"new_version": "11"})).await;
    assert_eq!(status, StatusCode::OK, "{res}");
    let new = res["replacement_room"].as_str().unwrap().to_owned();
    let (_, tomb) =
        s.get(&format!("/_matrix/client/v3/rooms/{old}/state/m.room.tombstone/?format=event"), Some(&at)).await;
    assert_eq!(tomb["content"]["replacement_room"], new.as_str(), "{tomb}");
    let (_, create_content) = s.get(&format!("/_matrix/client/v3/rooms/{new}/state/m.room.create/"), Some(&at)).await;
    assert_eq!(create_content["predecessor"], json!({"room_id": old, "event_id": tomb["event_id"]}));
    assert_eq!(create_content["room_version"], "11");
}

/// What follows a room to its successor: a power level above 100, bans, every local alias
/// with the canonical alias event (alternatives too), the directory listing, and the
/// upgrader's `m.direct` entry and tags. The old room's floor for speaking is above its
/// `users_default`. A version that is no version id is M_UNSUPPORTED_ROOM_VERSION.
async fn upgrade_carries_links_and_bans(b: Backend) {
    let s = TestServer::start(b).await;
    let (alice, at, _) = s.register("alice", "pw-alice-1").await;
    let body = json!({
        "room_version": "10", "preset": "public_chat", "visibility": "public", "room_alias_name": "den",
        "power_level_content_override": {"users": {alice.clone(): 500}, "users_default": 80},
    });
    let old = create(&s, &at, body).await;
    let den = format!("#den:{SERVER_NAME}");
    let nook = format!("#nook:{SERVER_NAME}");
    let put = s
        .put(&format!("/_matrix/client/v3/directory/room/%23nook:{SERVER_NAME}"), Some(&at), json!({"room_id": old}))
        .await;
    assert_eq!(put.0, StatusCode::OK, "{}", put.1);
    let canonical = json!({"alias": den, "alt_aliases": [nook]});
    let path = format!("/_matrix/client/v3/rooms/{old}/state/m.room.canonical_alias");
    assert_eq!(s.put(&path, Some(&at), canonical.clone()).await.0, StatusCode::OK);
    let ban = s
        .post(&format!("/_matrix/client/v3/rooms/{old}/ban"), Some(&at), json!({"user_id": "@bob:elsewhere.test"}))
        .await;
    assert_eq!(ban.0, StatusCode::OK, "{}", ban.1);
    s.put(&format!("/_matrix/client/v3/user/{alice}/account_data/m.direct"), Some(&at), json!({alice.clone(): [old]}))
        .await;
    s.put(&format!("/_matrix/client/v3/user/{alice}/rooms/{old}/tags/u.work"), Some(&at), json!({"order": 0.5})).await;

    let got = s
        .post(&format!("/_matrix/client/v3/rooms/{old}/upgrade"), Some(&at), json!({"new_version": "my_bad_version"}))
        .await;
    assert_error(&got, 400, "M_UNSUPPORTED_ROOM_VERSION");
    let (status, res) =
        s.post(&format!("/_matrix/client/v3/rooms/{old}/upgrade"), Some(&at), json!({"new_version": "11"})).await;
    assert_eq!(status, StatusCode::OK, "{res}");
    let new = res["replacement_room"].as_str().unwrap().to_owned();

    let (_, pl) = s.get(&format!("/_matrix/client/v3/rooms/{new}/state/m.room.power_levels/"), Some(&at)).await;
    assert_eq!(pl["users"][&alice], 500, "{pl}");
    let (_, banned) =
        s.get(&format!("/_matrix/client/v3/rooms/{new}/state/m.room.member/@bob:elsewhere.test"), Some(&at)).await;
    assert_eq!(banned["membership"], "ban", "{banned}");
    let (_, now) = s.get(&format!("/_matrix/client/v3/rooms/{new}/state/m.room.canonical_alias/"), Some(&at)).await;
    assert_eq!(now, canonical);
    let (_, then) = s.get(&format!("/_matrix/client/v3/rooms/{old}/state/m.room.canonical_alias/"), Some(&at)).await;
    assert_eq!(then, json!({}));
    for alias in ["den", "nook"] {
        let (_, found) = s.get(&format!("/_matrix/client/v3/directory/room/%23{alias}:{SERVER_NAME}"), None).await;
        assert_eq!(found["room_id"], new.as_str(), "{alias}");
    }
    let (_, listed) = s.get(&format!("/_matrix/client/v3/directory/list/room/{new}"), None).await;
    assert_eq!(listed["visibility"], "public");
    let (_, listed) = s.get(&format!("/_matrix/client/v3/directory/list/room/{old}"), None).await;
    assert_eq!(listed["visibility"], "private");
    let (_, direct) = s.get(&format!("/_matrix/client/v3/user/{alice}/account_data/m.direct"), Some(&at)).await;
    assert_eq!(direct[&alice], json!([old, new]));
    let (_, tags) = s.get(&format!("/_matrix/client/v3/user/{alice}/rooms/{new}/tags"), Some(&at)).await;
    assert_eq!(tags["tags"]["u.work"]["order"], 0.5, "{tags}");
    let (_, old_pl) = s.get(&format!("/_matrix/client/v3/rooms/{old}/state/m.room.power_levels/"), Some(&at)).await;
    assert_eq!((old_pl["events_default"].as_i64(), old_pl["invite"].as_i64()), (Some(81), Some(81)), "{old_pl}");
}

/// A member who joins the successor of a room they were in finds their tags and their
/// per-room push rule there too (as Synapse copies them on that join).
async fn joining_the_successor_brings_tags_and_rules(b: Backend) {
    let s = TestServer::start(b).await;
    let (_, at, _) = s.register("alice", "pw-alice-1").await;
    let (bob, bt, _) = s.register("bob", "pw-bob-1").await;
    let old = create(&s, &at, json!({"room_version": "10", "preset": "public_chat"})).await;
    s.post(&format!("/_matrix/client/v3/rooms/{old}/join"), Some(&bt), json!({})).await;
    s.put(&format!("/_matrix/client/v3/user/{bob}/rooms/{old}/tags/test_tag"), Some(&bt), json!({})).await;
    let rule = format!("/_matrix/client/v3/pushrules/global/room/{old}");
    assert_eq!(s.put(&rule, Some(&bt), json!({"actions": ["dont_notify"]})).await.0, StatusCode::OK);
    let (_, res) =
        s.post(&format!("/_matrix/client/v3/rooms/{old}/upgrade"), Some(&at), json!({"new_version": "11"})).await;
    let new = res["replacement_room"].as_str().unwrap().to_owned();
    assert_eq!(s.post(&format!("/_matrix/client/v3/join/{new}"), Some(&bt), json!({})).await.0, StatusCode::OK);
    let (_, tags) = s.get(&format!("/_matrix/client/v3/user/{bob}/rooms/{new}/tags"), Some(&bt)).await;
    assert_eq!(tags["tags"], json!({"test_tag": {}}));
    let (status, copied) = s.get(&format!("/_matrix/client/v3/pushrules/global/room/{new}"), Some(&bt)).await;
    assert_eq!(status, StatusCode::OK, "{copied}");
    assert_eq!(copied["actions"], json!(["dont_notify"]));
}

both_engines!(
    upgrade_continues_the_room,
    upgrade_links_the_tombstone,
    upgrade_carries_links_and_bans,
    joining_the_successor_brings_tags_and_rules
);

async fn history_visibility_is_honoured(b: Backend) {
    let s = TestServer::start(b).await;
    let (_, at, _) = s.register("alice", "pw-alice-1").await;
    let (_, bt, _) = s.register("bob", "pw-bob-1").await;
    let room = create(&s, &at, json!({"preset": "public_chat"})).await;
    s.put(
        &format!("/_matrix/client/v3/rooms/{room}/state/m.room.history_visibility/"),
        Some(&at),
        json!({"history_visibility": "joined"}),
    )
    .await;
    send(&s, &at, &room, "before", "before bob").await;
    s.post(&format!("/_matrix/client/v3/rooms/{room}/join"), Some(&bt), json!({})).await;
    send(&s, &at, &room, "after", "after bob").await;
    let (_, page) = s.get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=50"), Some(&bt)).await;
    let bodies: Vec<&str> =
        page["chunk"].as_array().unwrap().iter().filter_map(|e| e["content"]["body"].as_str()).collect();
    assert_eq!(bodies, vec!["after bob"], "{page}");
    // Alice (joined throughout) sees both.
    let (_, page) = s.get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=50"), Some(&at)).await;
    let bodies: Vec<&str> =
        page["chunk"].as_array().unwrap().iter().filter_map(|e| e["content"]["body"].as_str()).collect();
    assert_eq!(bodies, vec!["after bob", "before bob"]);
    // Bob's initial sync shows only what he may see.
    let (_, sync) = s.get("/_matrix/client/v3/sync", Some(&bt)).await;
    let tl: Vec<&str> = sync["rooms"]["join"][&room]["timeline"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["content"]["body"].as_str())
        .collect();
    assert_eq!(tl, vec!["after bob"]);
}

async fn filtered_pages_lose_nothing(b: Backend) {
    // With a type filter the chunk fills across several underlying pages; paging on must
    // return every matching event exactly once.
    let s = TestServer::start(b).await;
    let (_, at, _) = s.register("alice", "pw-alice-1").await;
    let room = create(&s, &at, json!({})).await;
    for i in 0..30 {
        if i % 3 == 0 {
            s.put(&format!("/_matrix/client/v3/rooms/{room}/send/m.other/{i}"), Some(&at), json!({"n": i})).await;
        } else {
            send(&s, &at, &room, &format!("t{i}"), &format!("m{i}")).await;
        }
    }
    let filter = "%7B%22types%22%3A%5B%22m.room.message%22%5D%7D";
    let mut seen = Vec::new();
    let mut from = String::new();
    for _ in 0..20 {
        let q = if from.is_empty() { String::new() } else { format!("&from={from}") };
        let (_, page) = s
            .get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=7&filter={filter}{q}"), Some(&at))
            .await;
        seen.extend(
            page["chunk"].as_array().unwrap().iter().map(|e| e["content"]["body"].as_str().unwrap().to_owned()),
        );
        match page["end"].as_str() {
            Some(e) => from = e.to_owned(),
            None => break,
        }
    }
    let expected: Vec<String> = (0..30).rev().filter(|i| i % 3 != 0).map(|i| format!("m{i}")).collect();
    assert_eq!(seen, expected);
}

both_engines!(history_visibility_is_honoured, filtered_pages_lose_nothing);

async fn world_readable_rooms_can_be_peeked(b: Backend) {
    let s = TestServer::start(b).await;
    let (_, at, _) = s.register("alice", "pw-alice-1").await;
    let (_, ct, _) = s.register("carol", "pw-carol-1").await;
    let room = create(&s, &at, json!({"preset": "public_chat"})).await;
    send(&s, &at, &room, "shared-1", "members only").await;
    assert_error(
        &s.get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=b"), Some(&ct)).await,
        403,
        "M_FORBIDDEN",
    );
    s.put(
        &format!("/_matrix/client/v3/rooms/{room}/state/m.room.history_visibility/"),
        Some(&at),
        json!({"history_visibility": "world_readable"}),
    )
    .await;
    send(&s, &at, &room, "open-1", "for everyone").await;
    let (status, page) = s.get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=50"), Some(&ct)).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let bodies: Vec<&str> =
        page["chunk"].as_array().unwrap().iter().filter_map(|e| e["content"]["body"].as_str()).collect();
    assert_eq!(bodies, vec!["for everyone"], "only events sent while world readable: {page}");
}

both_engines!(world_readable_rooms_can_be_peeked);

/// A send is answered only once its event is durable: while disk syncs are held back, a
/// burst of concurrent sends gets no answer; once they may proceed, every send is answered
/// with its event under the durable watermark that syncs read up to.
// Holding the sync lock across awaits is the point: it keeps the server's syncs waiting.
#[allow(clippy::await_holding_lock)]
async fn sends_are_answered_only_when_durable(b: Backend) {
    let s = TestServer::start(b).await;
    let (_, token, _) = s.register("alice", "pw-alice-1").await;
    let room = create(&s, &token, json!({})).await;
    let held = s.services().stream.hold_syncs();
    let mut sends = Vec::new();
    for i in 0..12 {
        let (http, base, token, room) = (s.http.clone(), s.base.clone(), token.clone(), room.clone());
        sends.push(tokio::spawn(async move {
            http.put(format!("{base}/_matrix/client/v3/rooms/{room}/send/m.room.message/burst{i}"))
                .bearer_auth(token)
                .json(&json!({"msgtype": "m.text", "body": format!("burst {i}")}))
                .send()
                .await
                .unwrap()
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    assert!(sends.iter().all(|t| !t.is_finished()), "a send was answered before its event was durable");
    drop(held);
    for send in sends {
        let res = send.await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        let event: Value = res.json().await.unwrap();
        let id = ruma::OwnedEventId::try_from(event["event_id"].as_str().unwrap()).unwrap();
        let pos = s.services().rooms.event_meta(&id).unwrap().unwrap().stream;
        assert!(s.services().stream.now() >= pos, "event {pos} answered above the durable watermark");
    }
}

/// Should the syncer thread be gone or stuck, a send is still made durable (by the
/// request's own fallback) and answered.
async fn sends_are_made_durable_without_the_syncer(b: Backend) {
    let s = TestServer::start(b).await;
    let (_, token, _) = s.register("alice", "pw-alice-1").await;
    let room = create(&s, &token, json!({})).await;
    s.services().stream.pause_syncer(true);
    // A guard against hanging forever if the fallback broke, not a measure of speed.
    let sent = tokio::time::timeout(std::time::Duration::from_secs(30), send(&s, &token, &room, "alone", "hi"));
    let (status, event) = sent.await.expect("the send was never answered");
    assert_eq!(status, StatusCode::OK, "{event}");
    let id = ruma::OwnedEventId::try_from(event["event_id"].as_str().unwrap()).unwrap();
    let pos = s.services().rooms.event_meta(&id).unwrap().unwrap().stream;
    assert!(s.services().stream.now() >= pos, "answered before durable");
    s.services().stream.pause_syncer(false);
}

both_engines!(sends_are_answered_only_when_durable, sends_are_made_durable_without_the_syncer);

/// Small answers as Synapse gives them: a user who never set presence is offline; an
/// event of a room one may not read is not found (not forbidden); cross-signing keys
/// without a master key are refused.
async fn small_answers_as_synapse_gives_them(b: Backend) {
    let s = TestServer::start(b).await;
    let (alice, at, _) = s.register("alice", "pw-alice-1").await;
    let (bob, bt, _) = s.register("bob", "pw-bob-12").await;
    let (status, presence) = s.get(&format!("/_matrix/client/v3/presence/{alice}/status"), Some(&at)).await;
    assert_eq!((status, presence["presence"].as_str()), (StatusCode::OK, Some("offline")), "{presence}");

    let room = create(&s, &at, json!({"preset": "private_chat"})).await;
    let (_, sent) = send(&s, &at, &room, "t1", "private").await;
    let event = sent["event_id"].as_str().expect("event id").replace('+', "%2B").replace('/', "%2F");
    let got = s.get(&format!("/_matrix/client/v3/rooms/{room}/event/{event}"), Some(&bt)).await;
    assert_error(&got, 404, "M_NOT_FOUND");

    let self_signing =
        json!({"self_signing_key": {"user_id": bob, "usage": ["self_signing"], "keys": {"ed25519:abc": "abc"}}});
    let got = s.post("/_matrix/client/v3/keys/device_signing/upload", Some(&bt), self_signing).await;
    assert_error(&got, 400, "M_INVALID_PARAM");
}

both_engines!(small_answers_as_synapse_gives_them);

/// A change of history visibility is shown to whoever either setting lets see it: a late
/// joiner sees the boundaries around what they may read.
async fn history_visibility_changes_show_on_their_boundaries(b: Backend) {
    let s = TestServer::start(b).await;
    let (_, at, _) = s.register("alice", "pw-alice-1").await;
    let (_, bt, _) = s.register("bob", "pw-bob-12").await;
    let room = create(&s, &at, json!({"preset": "public_chat"})).await;
    let hv = format!("/_matrix/client/v3/rooms/{room}/state/m.room.history_visibility");
    for (i, setting) in ["joined", "invited", "shared"].iter().enumerate() {
        assert_eq!(s.put(&hv, Some(&at), json!({"history_visibility": setting})).await.0, StatusCode::OK);
        send(&s, &at, &room, &format!("t{i}"), &format!("{}", i + 1)).await;
    }
    assert_eq!(s.post(&format!("/_matrix/client/v3/join/{room}"), Some(&bt), json!({})).await.0, StatusCode::OK);
    let (_, sync) = s.get("/_matrix/client/v3/sync", Some(&bt)).await;
    let events = sync["rooms"]["join"][&room]["timeline"]["events"].as_array().expect("timeline").clone();
    let tail: Vec<String> = events[events.len().saturating_sub(4)..]
        .iter()
        .map(|e| match e["type"].as_str() {
            Some("m.room.history_visibility") => {
                format!("hv:{}", e["content"]["history_visibility"].as_str().unwrap_or(""))
            }
            Some("m.room.message") => format!("msg:{}", e["content"]["body"].as_str().unwrap_or("")),
            other => other.unwrap_or("").to_owned(),
        })
        .collect();
    assert_eq!(tail, vec!["hv:joined", "hv:shared", "msg:3", "m.room.member"], "{sync}");
}

both_engines!(history_visibility_changes_show_on_their_boundaries);

/// A message with `org.matrix.self_destruct_after` (MSC2228) loses its content when that
/// time comes, for everyone, in /messages and /sync alike; one without keeps it.
async fn self_destructing_messages_expire(b: Backend) {
    let s = TestServer::start(b).await;
    let (_, at, _) = s.register("alice", "pw-alice-1").await;
    let room = create(&s, &at, json!({"preset": "private_chat"})).await;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let body = json!({"msgtype": "m.text", "body": "gone soon", "org.matrix.self_destruct_after": now + 300});
    let (_, sent) = s.put(&format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/x1"), Some(&at), body).await;
    let gone = sent["event_id"].as_str().unwrap().to_owned();
    let kept = send(&s, &at, &room, "x2", "stays").await.1["event_id"].as_str().unwrap().to_owned();
    let content = |id: String| {
        let (s, at, room) = (&s, &at, &room);
        async move { s.get(&format!("/_matrix/client/v3/rooms/{room}/event/{id}"), Some(at)).await.1["content"].clone() }
    };
    assert_eq!(content(gone.clone()).await["body"], "gone soon");
    let mut expired = false;
    for _ in 0..100 {
        if content(gone.clone()).await == json!({}) {
            expired = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(expired, "the message did not expire");
    assert_eq!(content(kept).await["body"], "stays");
    let (_, page) = s.get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=b"), Some(&at)).await;
    let seen = page["chunk"].as_array().unwrap().iter().find(|e| e["event_id"] == gone.as_str()).cloned();
    assert_eq!(seen.map(|e| e["content"].clone()), Some(json!({})), "{page}");
}

both_engines!(self_destructing_messages_expire);
