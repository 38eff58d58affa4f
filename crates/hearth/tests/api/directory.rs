//! Public room directory, user directory, canonical aliases, /context, /relations, reports and knocking.

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

async fn send(s: &TestServer, token: &str, room: &str, txn: &str, content: Value) -> String {
    let (status, res) =
        s.put(&format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/{txn}"), Some(token), content).await;
    assert_eq!(status, StatusCode::OK, "{res}");
    res["event_id"].as_str().unwrap().to_owned()
}

async fn public_rooms_are_listed_and_searchable(b: Backend) {
    let s = TestServer::start(b).await;
    let (_, at, _) = s.register("alice", "pw-alice-1").await;
    let (_, bt, _) = s.register("bob", "pw-bob-1").await;
    let lounge = create(&s, &at, json!({"visibility": "public", "preset": "public_chat", "name": "Lounge", "topic": "chat about anything", "room_alias_name": "lounge"})).await;
    let hidden = create(&s, &at, json!({"preset": "public_chat", "name": "Hidden"})).await;
    let (status, list) = s.get("/_matrix/client/v3/publicRooms", None).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let rooms: Vec<&str> = list["chunk"].as_array().unwrap().iter().map(|r| r["room_id"].as_str().unwrap()).collect();
    assert_eq!(rooms, vec![lounge.as_str()]);
    assert_eq!(list["chunk"][0]["name"], "Lounge");
    assert_eq!(list["chunk"][0]["num_joined_members"], 1);
    assert_eq!(list["chunk"][0]["canonical_alias"], format!("#lounge:{}", crate::common::SERVER_NAME));

    // Publish the hidden one; only its admin may.
    let path = format!("/_matrix/client/v3/directory/list/room/{hidden}");
    assert_eq!(s.get(&path, None).await.1["visibility"], "private");
    s.post(&format!("/_matrix/client/v3/rooms/{hidden}/join"), Some(&bt), json!({})).await;
    assert_error(&s.put(&path, Some(&bt), json!({"visibility": "public"})).await, 403, "M_FORBIDDEN");
    assert_eq!(s.put(&path, Some(&at), json!({"visibility": "public"})).await.0, StatusCode::OK);
    assert_eq!(s.get(&path, None).await.1["visibility"], "public");

    let (status, found) = s
        .post("/_matrix/client/v3/publicRooms", Some(&bt), json!({"filter": {"generic_search_term": "anything"}}))
        .await;
    assert_eq!(status, StatusCode::OK, "{found}");
    assert_eq!(found["chunk"].as_array().unwrap().len(), 1);
    assert_eq!(found["chunk"][0]["room_id"], lounge.as_str());

    // Paging: one per page.
    let (_, p1) = s.get("/_matrix/client/v3/publicRooms?limit=1", None).await;
    assert_eq!(p1["chunk"].as_array().unwrap().len(), 1);
    let next = p1["next_batch"].as_str().unwrap();
    let (_, p2) = s.get(&format!("/_matrix/client/v3/publicRooms?limit=1&since={next}"), None).await;
    assert_ne!(p1["chunk"][0]["room_id"], p2["chunk"][0]["room_id"]);
    assert!(p2.get("next_batch").is_none_or(|n| n.is_null()), "{p2}");
}

async fn user_directory_shows_people_you_share_rooms_with(b: Backend) {
    let s = TestServer::start(b).await;
    let (_, at, _) = s.register("alice", "pw-alice-1").await;
    let (bob, bt, _) = s.register("bob", "pw-bob-1").await;
    let (_, _, _) = s.register("bobby", "pw-bobby-1").await;
    let (status, res) =
        s.post("/_matrix/client/v3/user_directory/search", Some(&at), json!({"search_term": "bob"})).await;
    assert_eq!(status, StatusCode::OK, "{res}");
    assert_eq!(res["results"], json!([]), "strangers are not listed");
    let room = create(&s, &at, json!({"invite": [bob]})).await;
    s.post(&format!("/_matrix/client/v3/rooms/{room}/join"), Some(&bt), json!({})).await;
    let (_, res) =
        s.post("/_matrix/client/v3/user_directory/search", Some(&at), json!({"search_term": "BOB", "limit": 10})).await;
    let ids: Vec<&str> = res["results"].as_array().unwrap().iter().map(|u| u["user_id"].as_str().unwrap()).collect();
    assert_eq!(ids, vec![bob.as_str()]);
    assert_eq!(res["results"][0]["display_name"], "bob");
    assert_eq!(res["limited"], false);
    // Bob does not find himself through a private room; a stranger finds him once the room
    // is open to join (a public room's members are listed for everyone).
    let (_, own) = s.post("/_matrix/client/v3/user_directory/search", Some(&bt), json!({"search_term": "bob"})).await;
    assert!(!own["results"].as_array().unwrap().iter().any(|u| u["user_id"] == bob.as_str()), "{own}");
    let (_, ct, _) = s.register("carol", "pw-carol-1").await;
    let search = |t: String| {
        let s = &s;
        async move { s.post("/_matrix/client/v3/user_directory/search", Some(&t), json!({"search_term": "bob"})).await.1 }
    };
    assert_eq!(search(ct.clone()).await["results"], json!([]));
    let rules = format!("/_matrix/client/v3/rooms/{room}/state/m.room.join_rules");
    assert_eq!(s.put(&rules, Some(&at), json!({"join_rule": "public"})).await.0, StatusCode::OK);
    let found = search(ct).await;
    assert!(found["results"].as_array().unwrap().iter().any(|u| u["user_id"] == bob.as_str()), "{found}");
}

async fn context_and_relations(b: Backend) {
    let s = TestServer::start(b).await;
    let (_, at, _) = s.register("alice", "pw-alice-1").await;
    let room = create(&s, &at, json!({"name": "ctx"})).await;
    let mut ids = Vec::new();
    for i in 0..9 {
        ids.push(send(&s, &at, &room, &format!("m{i}"), json!({"msgtype": "m.text", "body": format!("m{i}")})).await);
    }
    let (status, ctx) = s.get(&format!("/_matrix/client/v3/rooms/{room}/context/{}?limit=4", ids[4]), Some(&at)).await;
    assert_eq!(status, StatusCode::OK, "{ctx}");
    assert_eq!(ctx["event"]["content"]["body"], "m4");
    let before: Vec<&str> =
        ctx["events_before"].as_array().unwrap().iter().map(|e| e["content"]["body"].as_str().unwrap()).collect();
    let after: Vec<&str> =
        ctx["events_after"].as_array().unwrap().iter().map(|e| e["content"]["body"].as_str().unwrap()).collect();
    assert_eq!(before, vec!["m3", "m2"]);
    assert_eq!(after, vec!["m5", "m6"]);
    assert!(ctx["state"].as_array().unwrap().iter().any(|e| e["type"] == "m.room.name"));
    // With lazy-loaded members, only the senders' member events: bob, who joined and never
    // spoke, is left out.
    let (_, bt, _) = s.register("bob", "pw-bob-12").await;
    let (status, _) = s
        .post(
            &format!("/_matrix/client/v3/rooms/{room}/invite"),
            Some(&at),
            json!({"user_id": format!("@bob:{SERVER_NAME}")}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(s.post(&format!("/_matrix/client/v3/rooms/{room}/join"), Some(&bt), json!({})).await.0, StatusCode::OK);
    let mut later = Vec::new();
    for i in 9..12 {
        later.push(send(&s, &at, &room, &format!("m{i}"), json!({"msgtype": "m.text", "body": format!("m{i}")})).await);
    }
    let lazy = "%7B%22lazy_load_members%22%3Atrue%7D";
    let (_, lazy_ctx) =
        s.get(&format!("/_matrix/client/v3/rooms/{room}/context/{}?limit=2&filter={lazy}", later[2]), Some(&at)).await;
    let members: Vec<&str> = lazy_ctx["state"]
        .as_array()
        .expect("state")
        .iter()
        .filter(|e| e["type"] == "m.room.member")
        .filter_map(|e| e["state_key"].as_str())
        .collect();
    assert_eq!(members, vec![format!("@alice:{SERVER_NAME}")], "{lazy_ctx}");
    // The end token continues forwards.
    let end = ctx["end"].as_str().unwrap();
    let (_, more) =
        s.get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=f&limit=1&from={end}"), Some(&at)).await;
    assert_eq!(more["chunk"][0]["content"]["body"], "m7");

    // Reactions and a reply thread on m0.
    let root = &ids[0];
    let react = json!({"m.relates_to": {"rel_type": "m.annotation", "event_id": root, "key": "👍"}});
    s.put(&format!("/_matrix/client/v3/rooms/{room}/send/m.reaction/r1"), Some(&at), react).await;
    for i in 0..3 {
        send(&s, &at, &room, &format!("t{i}"), json!({"msgtype": "m.text", "body": format!("thread {i}"), "m.relates_to": {"rel_type": "m.thread", "event_id": root}})).await;
    }
    let (status, all) = s.get(&format!("/_matrix/client/v1/rooms/{room}/relations/{root}"), Some(&at)).await;
    assert_eq!(status, StatusCode::OK, "{all}");
    assert_eq!(all["chunk"].as_array().unwrap().len(), 4);
    let (_, threads) =
        s.get(&format!("/_matrix/client/v1/rooms/{room}/relations/{root}/m.thread?limit=2"), Some(&at)).await;
    let bodies: Vec<&str> =
        threads["chunk"].as_array().unwrap().iter().map(|e| e["content"]["body"].as_str().unwrap()).collect();
    assert_eq!(bodies, vec!["thread 2", "thread 1"]);
    let next = threads["next_batch"].as_str().unwrap();
    let (_, rest) = s
        .get(&format!("/_matrix/client/v1/rooms/{room}/relations/{root}/m.thread?limit=2&from={next}"), Some(&at))
        .await;
    assert_eq!(rest["chunk"][0]["content"]["body"], "thread 0");
    let (_, reactions) =
        s.get(&format!("/_matrix/client/v1/rooms/{room}/relations/{root}/m.annotation/m.reaction"), Some(&at)).await;
    assert_eq!(reactions["chunk"].as_array().unwrap().len(), 1);
}

async fn reports_are_accepted_for_visible_events(b: Backend) {
    let s = TestServer::start(b).await;
    let (_, at, _) = s.register("alice", "pw-alice-1").await;
    let (_, bt, _) = s.register("bob", "pw-bob-1").await;
    let room = create(&s, &at, json!({})).await;
    let ev = send(&s, &at, &room, "x", json!({"msgtype": "m.text", "body": "spam"})).await;
    let (status, _) =
        s.post(&format!("/_matrix/client/v3/rooms/{room}/report/{ev}"), Some(&at), json!({"reason": "spam"})).await;
    assert_eq!(status, StatusCode::OK);
    // Bob cannot see the room, so he cannot report into it: the operation's 404 names
    // that case ("not joined to the room where the event resides").
    assert_error(
        &s.post(&format!("/_matrix/client/v3/rooms/{room}/report/{ev}"), Some(&bt), json!({})).await,
        404,
        "M_NOT_FOUND",
    );
}

async fn knocking_needs_the_knock_join_rule(b: Backend) {
    let s = TestServer::start(b).await;
    let (_, at, _) = s.register("alice", "pw-alice-1").await;
    let (bob, bt, _) = s.register("bob", "pw-bob-1").await;
    let closed = create(&s, &at, json!({})).await;
    assert_error(
        &s.post(&format!("/_matrix/client/v3/knock/{closed}"), Some(&bt), json!({})).await,
        403,
        "M_FORBIDDEN",
    );
    let room = create(
        &s,
        &at,
        json!({"initial_state": [{"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "knock"}}]}),
    )
    .await;
    let (status, res) =
        s.post(&format!("/_matrix/client/v3/knock/{room}"), Some(&bt), json!({"reason": "let me in"})).await;
    assert_eq!(status, StatusCode::OK, "{res}");
    let (_, members) = s.get(&format!("/_matrix/client/v3/rooms/{room}/members?membership=knock"), Some(&at)).await;
    assert_eq!(members["chunk"][0]["state_key"], bob.as_str());
    // Alice lets him in.
    s.post(&format!("/_matrix/client/v3/rooms/{room}/invite"), Some(&at), json!({"user_id": bob})).await;
    assert_eq!(s.post(&format!("/_matrix/client/v3/rooms/{room}/join"), Some(&bt), json!({})).await.0, StatusCode::OK);
}

/// `m.room.canonical_alias` names only aliases that exist and point at the room, and a
/// deleted alias leaves it.
async fn canonical_alias_is_checked_and_cleared(b: Backend) {
    let s = TestServer::start(b).await;
    let (_, at, _) = s.register("alice", "a long password").await;
    let room = create(&s, &at, json!({})).await;
    let other = create(&s, &at, json!({})).await;
    let alias = format!("#home:{SERVER_NAME}");
    let elsewhere = format!("#away:{SERVER_NAME}");
    let enc = |a: &str| a.replace('#', "%23");
    assert_eq!(
        s.put(&format!("/_matrix/client/v3/directory/room/{}", enc(&alias)), Some(&at), json!({"room_id": room}))
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        s.put(&format!("/_matrix/client/v3/directory/room/{}", enc(&elsewhere)), Some(&at), json!({"room_id": other}))
            .await
            .0,
        StatusCode::OK
    );
    let path = format!("/_matrix/client/v3/rooms/{room}/state/m.room.canonical_alias");
    let (status, _) = s.put(&path, Some(&at), json!({"alias": alias, "alt_aliases": [alias]})).await;
    assert_eq!(status, StatusCode::OK);
    for (bad, errcode) in [
        (json!({"alias": format!("#missing:{SERVER_NAME}")}), "M_BAD_ALIAS"),
        (json!({"alias": alias, "alt_aliases": [elsewhere]}), "M_BAD_ALIAS"),
        // No alias at all: a bad parameter (as Synapse).
        (json!({"alias": format!("%home:{SERVER_NAME}")}), "M_INVALID_PARAM"),
        (json!({"alias": alias, "alt_aliases": [format!("%home:{SERVER_NAME}")]}), "M_INVALID_PARAM"),
    ] {
        let got = s.put(&path, Some(&at), bad.clone()).await;
        assert_error(&got, 400, errcode);
    }
    let gone =
        s.request(Method::DELETE, &format!("/_matrix/client/v3/directory/room/{}", enc(&alias)), Some(&at), None).await;
    assert_eq!(gone.0, StatusCode::OK);
    let (_, now) = s.get(&path, Some(&at)).await;
    assert!(now.get("alias").is_none(), "{now}");
    assert_eq!(now["alt_aliases"], json!([]), "{now}");
}

both_engines!(
    canonical_alias_is_checked_and_cleared,
    public_rooms_are_listed_and_searchable,
    user_directory_shows_people_you_share_rooms_with,
    context_and_relations,
    reports_are_accepted_for_visible_events,
    knocking_needs_the_knock_join_rule,
);

async fn a_knock_shows_in_the_knockers_sync(b: Backend) {
    let s = TestServer::start(b).await;
    let (_, at, _) = s.register("alice", "pw-alice-1").await;
    let (_, bt, _) = s.register("bob", "pw-bob-1").await;
    let room = create(&s, &at, json!({"name": "Door", "initial_state": [{"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "knock"}}]})).await;
    let (_, first) = s.get("/_matrix/client/v3/sync", Some(&bt)).await;
    let since = first["next_batch"].as_str().unwrap();
    s.post(&format!("/_matrix/client/v3/knock/{room}"), Some(&bt), json!({})).await;
    let (_, res) = s.get(&format!("/_matrix/client/v3/sync?since={since}&timeout=0"), Some(&bt)).await;
    let state = res["rooms"]["knock"][&room]["knock_state"]["events"].as_array().unwrap_or_else(|| panic!("{res}"));
    assert!(state.iter().any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "Door"), "{res}");
}

both_engines!(a_knock_shows_in_the_knockers_sync);
