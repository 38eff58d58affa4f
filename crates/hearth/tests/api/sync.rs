//! `/sync`: initial, incremental, long-poll wake-ups, invites, leaves, filters.

use hearth::store::Backend;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::{both_engines, common::TestServer};

async fn create(s: &TestServer, token: &str, body: Value) -> String {
    let (status, res) = s.post("/_matrix/client/v3/createRoom", Some(token), body).await;
    assert_eq!(status, StatusCode::OK, "{res}");
    res["room_id"].as_str().unwrap().to_owned()
}

async fn sync(s: &TestServer, token: &str, query: &str) -> Value {
    let (status, res) = s.get(&format!("/_matrix/client/v3/sync{query}"), Some(token)).await;
    assert_eq!(status, StatusCode::OK, "{res}");
    res
}

fn bodies(timeline: &Value) -> Vec<String> {
    timeline["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
        .collect()
}

async fn initial_then_incremental(b: Backend) {
    let s = TestServer::start(b).await;
    let (_, at, _) = s.register("alice", "pw-alice-1").await;
    let room = create(&s, &at, json!({"name": "Kitchen"})).await;
    s.put(
        &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/1"),
        Some(&at),
        json!({"msgtype": "m.text", "body": "hi"}),
    )
    .await;

    let first = sync(&s, &at, "").await;
    let joined = &first["rooms"]["join"][&room];
    assert_eq!(bodies(&joined["timeline"]), vec!["hi"]);
    // Empty state sections may be left out.
    let state_types: Vec<&str> = joined["state"]["events"]
        .as_array()
        .map(|a| a.iter().map(|e| e["type"].as_str().unwrap()).collect())
        .unwrap_or_default();
    let timeline_types: Vec<&str> =
        joined["timeline"]["events"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap()).collect();
    // The room name is known one way or the other.
    assert!(state_types.contains(&"m.room.name") || timeline_types.contains(&"m.room.name"), "{joined}");
    assert_eq!(joined["summary"]["m.joined_member_count"], 1);
    assert!(joined["summary"].get("m.heroes").is_none(), "a named room needs no heroes: {joined}");
    let mine = joined["timeline"]["events"].as_array().unwrap().iter().find(|e| e["content"]["body"] == "hi").unwrap();
    assert_eq!(mine["unsigned"]["transaction_id"], "1");
    // Sync's events are ClientEventWithoutRoomID: the room is the key they sit under.
    for section in ["state", "timeline"] {
        for e in joined[section]["events"].as_array().cloned().unwrap_or_default() {
            assert!(e.get("room_id").is_none(), "{section}: {e}");
        }
    }
    let next = first["next_batch"].as_str().unwrap().to_owned();

    // Nothing new: an immediate empty answer with timeout=0.
    let empty = sync(&s, &at, &format!("?since={next}&timeout=0")).await;
    assert!(empty["rooms"]["join"].get(&room).is_none(), "{empty}");

    s.put(
        &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/2"),
        Some(&at),
        json!({"msgtype": "m.text", "body": "again"}),
    )
    .await;
    let inc = sync(&s, &at, &format!("?since={next}&timeout=0")).await;
    assert_eq!(bodies(&inc["rooms"]["join"][&room]["timeline"]), vec!["again"]);
    // `limited: false` is the default and may be left out.
    assert_ne!(inc["rooms"]["join"][&room]["timeline"]["limited"], true);
}

async fn long_poll_wakes_on_message(b: Backend) {
    let s = TestServer::start(b).await;
    let (bob, bt, _) = s.register("bob", "pw-bob-1").await;
    let (_, at, _) = s.register("alice", "pw-alice-1").await;
    let room = create(&s, &at, json!({"invite": [bob]})).await;
    s.post(&format!("/_matrix/client/v3/rooms/{room}/join"), Some(&bt), json!({})).await;
    let next = sync(&s, &bt, "").await["next_batch"].as_str().unwrap().to_owned();

    // Bob waits (up to a minute); Alice then speaks. The sync must come back with it —
    // a sync that ran into its timeout would come back empty.
    let url = format!("{}/_matrix/client/v3/sync?since={next}&timeout=60000", s.base);
    let http = s.http.clone();
    let bt2 = bt.clone();
    let waiting =
        tokio::spawn(
            async move { http.get(url).bearer_auth(bt2).send().await.unwrap().json::<Value>().await.unwrap() },
        );
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    s.put(
        &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/x"),
        Some(&at),
        json!({"msgtype": "m.text", "body": "wake up"}),
    )
    .await;
    let res = waiting.await.unwrap();
    assert_eq!(bodies(&res["rooms"]["join"][&room]["timeline"]), vec!["wake up"], "{res}");
}

async fn invites_and_leaves_show_up(b: Backend) {
    let s = TestServer::start(b).await;
    let (bob, bt, _) = s.register("bob", "pw-bob-1").await;
    let (_, at, _) = s.register("alice", "pw-alice-1").await;
    let next = sync(&s, &bt, "").await["next_batch"].as_str().unwrap().to_owned();
    let room = create(&s, &at, json!({"name": "Secret", "invite": [bob], "is_direct": true})).await;
    let inc = sync(&s, &bt, &format!("?since={next}&timeout=0")).await;
    let invite = &inc["rooms"]["invite"][&room]["invite_state"]["events"];
    let types: Vec<&str> = invite.as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert!(types.contains(&"m.room.name") && types.contains(&"m.room.member"), "{inc}");
    let me = invite.as_array().unwrap().iter().find(|e| e["state_key"] == bob.as_str()).unwrap();
    assert_eq!(me["content"]["is_direct"], true);

    s.post(&format!("/_matrix/client/v3/rooms/{room}/join"), Some(&bt), json!({})).await;
    let next = inc["next_batch"].as_str().unwrap().to_owned();
    let inc = sync(&s, &bt, &format!("?since={next}&timeout=0")).await;
    assert!(inc["rooms"]["join"].get(&room).is_some(), "{inc}");
    assert!(inc["rooms"]["invite"].get(&room).is_none(), "{inc}");

    let next = inc["next_batch"].as_str().unwrap().to_owned();
    s.post(&format!("/_matrix/client/v3/rooms/{room}/leave"), Some(&bt), json!({})).await;
    let inc = sync(&s, &bt, &format!("?since={next}&timeout=0")).await;
    let left = &inc["rooms"]["leave"][&room];
    // Sections are always written out with their events lists (nio requires them).
    assert!(left["state"]["events"].is_array() && left["timeline"]["events"].is_array(), "{inc}");
    let last = left["timeline"]["events"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["content"]["membership"], "leave", "{inc}");
}

async fn filters_limit_the_timeline(b: Backend) {
    let s = TestServer::start(b).await;
    let (alice, at, _) = s.register("alice", "pw-alice-1").await;
    let room = create(&s, &at, json!({})).await;
    for i in 0..8 {
        s.put(
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/{i}"),
            Some(&at),
            json!({"msgtype": "m.text", "body": format!("m{i}")}),
        )
        .await;
    }
    let filter = json!({"room": {"timeline": {"limit": 3}, "state": {"lazy_load_members": true}}});
    let (status, res) = s.post(&format!("/_matrix/client/v3/user/{alice}/filter"), Some(&at), filter.clone()).await;
    assert_eq!(status, StatusCode::OK, "{res}");
    let id = res["filter_id"].as_str().unwrap();
    let (_, back) = s.get(&format!("/_matrix/client/v3/user/{alice}/filter/{id}"), Some(&at)).await;
    assert_eq!(back["room"]["timeline"]["limit"], 3);

    let res = sync(&s, &at, &format!("?filter={id}")).await;
    let tl = &res["rooms"]["join"][&room]["timeline"];
    assert_eq!(bodies(tl), vec!["m5", "m6", "m7"]);
    assert_eq!(tl["limited"], true);
    // prev_batch continues where the timeline starts.
    let prev = tl["prev_batch"].as_str().unwrap();
    let (_, page) =
        s.get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=1&from={prev}"), Some(&at)).await;
    assert_eq!(page["chunk"][0]["content"]["body"], "m4");
    // Paging back to the start: the last page with events has an `end`; the page after it
    // is empty and has none.
    let (_, rest) =
        s.get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=100&from={prev}"), Some(&at)).await;
    let end = rest["end"].as_str().expect("a page with events has an end").to_owned();
    let (_, after) = s.get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&from={end}"), Some(&at)).await;
    assert_eq!(after["chunk"], json!([]));
    assert!(after.get("end").is_none(), "{after}");

    // An inline filter works too.
    let inline = urlencode(&json!({"room": {"timeline": {"limit": 1}}}).to_string());
    let res = sync(&s, &at, &format!("?filter={inline}")).await;
    assert_eq!(bodies(&res["rooms"]["join"][&room]["timeline"]), vec!["m7"]);

    // `event_format: federation`: the events as PDUs, with their ids.
    let federation = urlencode(&json!({"event_format": "federation", "room": {"timeline": {"limit": 1}}}).to_string());
    let res = sync(&s, &at, &format!("?filter={federation}")).await;
    let event = &res["rooms"]["join"][&room]["timeline"]["events"][0];
    for field in ["event_id", "room_id", "sender", "origin_server_ts", "prev_events", "auth_events", "depth", "hashes"]
    {
        assert!(event.get(field).is_some(), "{field} missing: {event}");
    }
    assert!(event["signatures"].is_object() && event["content"]["body"] == "m7", "{event}");
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

both_engines!(
    initial_then_incremental,
    long_poll_wakes_on_message,
    invites_and_leaves_show_up,
    filters_limit_the_timeline
);

async fn a_gap_sends_only_the_state_that_changed(b: Backend) {
    let s = TestServer::start(b).await;
    let (_, at, _) = s.register("alice", "pw-alice-1").await;
    let room = create(&s, &at, json!({"name": "Before"})).await;
    let since = sync(&s, &at, "").await["next_batch"].as_str().unwrap().to_owned();
    s.put(&format!("/_matrix/client/v3/rooms/{room}/state/m.room.name/"), Some(&at), json!({"name": "After"})).await;
    for i in 0..5 {
        s.put(
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/{i}"),
            Some(&at),
            json!({"msgtype": "m.text", "body": format!("m{i}")}),
        )
        .await;
    }
    let filter = urlencode(&json!({"room": {"timeline": {"limit": 2}}}).to_string());
    let res = sync(&s, &at, &format!("?since={since}&timeout=0&filter={filter}")).await;
    let joined = &res["rooms"]["join"][&room];
    assert_eq!(joined["timeline"]["limited"], true);
    let state: Vec<(&str, &str)> = joined["state"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["type"].as_str().unwrap(), e["content"]["name"].as_str().unwrap_or("")))
        .collect();
    assert_eq!(state, vec![("m.room.name", "After")], "{joined}");
}

async fn messages_lazy_load_members(b: Backend) {
    let s = TestServer::start(b).await;
    let (_, at, _) = s.register("alice", "pw-alice-1").await;
    let (bob, bt, _) = s.register("bob", "pw-bob-1").await;
    let room = create(&s, &at, json!({"preset": "public_chat"})).await;
    s.post(&format!("/_matrix/client/v3/rooms/{room}/join"), Some(&bt), json!({})).await;
    s.put(
        &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/b"),
        Some(&bt),
        json!({"msgtype": "m.text", "body": "from bob"}),
    )
    .await;
    let filter = urlencode(&json!({"lazy_load_members": true, "types": ["m.room.message"]}).to_string());
    let (_, page) =
        s.get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=1&filter={filter}"), Some(&at)).await;
    let members: Vec<&str> =
        page["state"].as_array().unwrap().iter().map(|e| e["state_key"].as_str().unwrap()).collect();
    assert_eq!(members, vec![bob.as_str()], "{page}");
}

async fn room_aliases_are_listed(b: Backend) {
    let s = TestServer::start(b).await;
    let (_, at, _) = s.register("alice", "pw-alice-1").await;
    let room = create(&s, &at, json!({"room_alias_name": "one"})).await;
    s.put(
        &format!("/_matrix/client/v3/directory/room/%23two:{}", crate::common::SERVER_NAME),
        Some(&at),
        json!({"room_id": room}),
    )
    .await;
    let (status, res) = s.get(&format!("/_matrix/client/v3/rooms/{room}/aliases"), Some(&at)).await;
    assert_eq!(status, StatusCode::OK, "{res}");
    let mut aliases: Vec<&str> = res["aliases"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    aliases.sort();
    assert_eq!(
        aliases,
        vec![format!("#one:{}", crate::common::SERVER_NAME), format!("#two:{}", crate::common::SERVER_NAME)]
    );
}

both_engines!(a_gap_sends_only_the_state_that_changed, messages_lazy_load_members, room_aliases_are_listed);

/// A repeated initial sync may come from the cache, but never stale: a new message, new
/// one-time keys and a forgotten room all show in the next one.
async fn repeated_initial_syncs_stay_exact(b: Backend) {
    let s = TestServer::start(b).await;
    let (_, at, device) = s.register("alice", "pw-alice-1").await;
    let room = create(&s, &at, json!({"name": "Porch"})).await;
    let gone = create(&s, &at, json!({"name": "Shed"})).await;
    let first = sync(&s, &at, "").await;
    let again = sync(&s, &at, "").await;
    assert_eq!(first, again, "nothing changed, so the same answer");

    s.put(
        &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/1"),
        Some(&at),
        json!({"msgtype": "m.text", "body": "new"}),
    )
    .await;
    let after_message = sync(&s, &at, "").await;
    assert_eq!(bodies(&after_message["rooms"]["join"][&room]["timeline"]), ["new"], "{after_message}");

    // One-time keys move no stream position; the counts must still be fresh.
    assert_eq!(after_message["device_one_time_keys_count"]["signed_curve25519"], 0);
    let key = json!({"key": "a".repeat(43), "signatures": {}});
    let (status, _) = s
        .post("/_matrix/client/v3/keys/upload", Some(&at), json!({"one_time_keys": {"signed_curve25519:AAAAAQ": key}}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let after_keys = sync(&s, &at, "").await;
    assert_eq!(after_keys["device_one_time_keys_count"]["signed_curve25519"], 1, "device {device}");

    // Forgetting a left room removes it from syncs that include left rooms.
    let include_leave = "?filter=%7B%22room%22%3A%7B%22include_leave%22%3Atrue%7D%7D";
    s.post(&format!("/_matrix/client/v3/rooms/{gone}/leave"), Some(&at), json!({})).await;
    let with_leave = sync(&s, &at, include_leave).await;
    assert!(with_leave["rooms"]["leave"].get(&gone).is_some(), "{with_leave}");
    assert_eq!(sync(&s, &at, include_leave).await, with_leave);
    let (status, _) = s.post(&format!("/_matrix/client/v3/rooms/{gone}/forget"), Some(&at), json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let forgotten = sync(&s, &at, include_leave).await;
    assert!(forgotten["rooms"].get("leave").and_then(|l| l.get(&gone)).is_none(), "{forgotten}");
}

both_engines!(repeated_initial_syncs_stay_exact);

async fn send_text(s: &TestServer, token: &str, room: &str, body: &str) {
    let txn = format!("t{}", rand_suffix());
    let (status, res) = s
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/{txn}"),
            Some(token),
            json!({"msgtype": "m.text", "body": body}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{res}");
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// The member events among a room's sync state, by state key.
fn members(room: &Value) -> Vec<String> {
    let mut found: Vec<String> = room["state"]["events"]
        .as_array()
        .map(|events| {
            events
                .iter()
                .filter(|e| e["type"] == "m.room.member")
                .filter_map(|e| e["state_key"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

/// Lazy-loaded members in incremental syncs (what Element relies on to name new senders):
/// a sender's member event comes once per device, again with `include_redundant_members`,
/// and a gap carries the members who changed in it.
async fn lazy_loaded_members_in_incremental_syncs(b: Backend) {
    let s = TestServer::start(b).await;
    let (alice, at, _) = s.register("alice", "pw-alice-1").await;
    let (bob, bt, _) = s.register("bob", "pw-bob-12").await;
    let (carol, ct, _) = s.register("carol", "pw-carol-1").await;
    let (dave, dt, _) = s.register("dave", "pw-dave-12").await;
    let room = create(&s, &at, json!({"preset": "public_chat"})).await;
    for t in [&bt, &ct] {
        assert_eq!(s.post(&format!("/_matrix/client/v3/join/{room}"), Some(t), json!({})).await.0, StatusCode::OK);
    }
    for i in 0..3 {
        send_text(&s, &bt, &room, &format!("bob {i}")).await;
    }
    let lazy =
        urlencode(&json!({"room": {"timeline": {"limit": 3}, "state": {"lazy_load_members": true}}}).to_string());
    let first = sync(&s, &at, &format!("?filter={lazy}")).await;
    assert_eq!(members(&first["rooms"]["join"][&room]), vec![alice.clone(), bob.clone()]);
    let since = first["next_batch"].as_str().expect("next_batch").to_owned();

    // Carol speaks: her member event comes with it, once.
    send_text(&s, &ct, &room, "carol speaks").await;
    let second = sync(&s, &at, &format!("?filter={lazy}&since={since}")).await;
    assert_eq!(members(&second["rooms"]["join"][&room]), vec![carol.clone()], "{second}");
    let since = second["next_batch"].as_str().expect("next_batch").to_owned();
    send_text(&s, &ct, &room, "carol again").await;
    send_text(&s, &bt, &room, "bob again").await;
    let third = sync(&s, &at, &format!("?filter={lazy}&since={since}")).await;
    assert_eq!(members(&third["rooms"]["join"][&room]), Vec::<String>::new(), "sent before: {third}");

    // With include_redundant_members, again.
    let redundant = urlencode(
        &json!({"room": {"timeline": {"limit": 3}, "state": {"lazy_load_members": true, "include_redundant_members": true}}})
            .to_string(),
    );
    let since = third["next_batch"].as_str().expect("next_batch").to_owned();
    send_text(&s, &ct, &room, "carol thrice").await;
    let fourth = sync(&s, &at, &format!("?filter={redundant}&since={since}")).await;
    assert_eq!(members(&fourth["rooms"]["join"][&room]), vec![carol.clone()]);

    // A gap: dave joins, then more messages than the limit; dave's join is in the state.
    let since = fourth["next_batch"].as_str().expect("next_batch").to_owned();
    assert_eq!(s.post(&format!("/_matrix/client/v3/join/{room}"), Some(&dt), json!({})).await.0, StatusCode::OK);
    for i in 0..5 {
        send_text(&s, &ct, &room, &format!("filler {i}")).await;
    }
    let gappy = sync(&s, &at, &format!("?filter={lazy}&since={since}")).await;
    let joined = &gappy["rooms"]["join"][&room];
    assert_eq!(joined["timeline"]["limited"], true);
    assert_eq!(members(joined), vec![dave.clone()], "{gappy}");
}

/// Filters: the state filter's `types`, a timeline filtered by type still filled to its
/// limit, and `types: []` leaving a section out; ignored users' messages and invites are
/// not shown.
async fn filters_for_each_section_and_ignored_users(b: Backend) {
    let s = TestServer::start(b).await;
    let (alice, at, _) = s.register("alice", "pw-alice-1").await;
    let (bob, bt, _) = s.register("bob", "pw-bob-12").await;
    let room = create(&s, &at, json!({"preset": "public_chat"})).await;
    s.put(&format!("/_matrix/client/v3/rooms/{room}/state/a.made.up/"), Some(&at), json!({"my_key": 1})).await;
    for i in 0..6 {
        send_text(&s, &at, &room, &format!("m{i}")).await;
        let (status, _) =
            s.put(&format!("/_matrix/client/v3/rooms/{room}/send/a.other/{i}"), Some(&at), json!({"n": i})).await;
        assert_eq!(status, StatusCode::OK);
    }
    let filter = urlencode(
        &json!({
            "room": {"timeline": {"limit": 4, "types": ["m.room.message"]}, "state": {"types": ["a.made.up"]}, "ephemeral": {"types": []}},
            "presence": {"types": []},
            "account_data": {"types": []},
        })
        .to_string(),
    );
    let res = sync(&s, &at, &format!("?filter={filter}")).await;
    let joined = &res["rooms"]["join"][&room];
    assert_eq!(bodies(&joined["timeline"]), vec!["m2", "m3", "m4", "m5"], "filled to the limit");
    // Every message fits, the rest filtered out: not limited (as on Synapse).
    let wide = urlencode(&json!({"room": {"timeline": {"limit": 50, "types": ["m.room.message"]}}}).to_string());
    let all = sync(&s, &at, &format!("?filter={wide}")).await;
    assert_eq!(bodies(&all["rooms"]["join"][&room]["timeline"]).len(), 6);
    assert_eq!(all["rooms"]["join"][&room]["timeline"]["limited"], false);
    let state: Vec<&str> =
        joined["state"]["events"].as_array().expect("state").iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(state, vec!["a.made.up"]);
    assert!(res.get("account_data").is_none(), "{res}");
    assert!(res.get("presence").is_none(), "{res}");

    // Ignoring bob: his messages and his invites stay out of alice's sync.
    assert_eq!(s.post(&format!("/_matrix/client/v3/join/{room}"), Some(&bt), json!({})).await.0, StatusCode::OK);
    let (status, _) = s
        .put(
            &format!("/_matrix/client/v3/user/{alice}/account_data/m.ignored_user_list"),
            Some(&at),
            json!({"ignored_users": {bob.clone(): {}}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let since = sync(&s, &at, "").await["next_batch"].as_str().expect("next_batch").to_owned();
    send_text(&s, &bt, &room, "from bob").await;
    send_text(&s, &at, &room, "from alice").await;
    let private = create(&s, &bt, json!({"invite": [alice.clone()]})).await;
    let res = sync(&s, &at, &format!("?since={since}")).await;
    assert_eq!(bodies(&res["rooms"]["join"][&room]["timeline"]), vec!["from alice"]);
    assert!(res["rooms"]["invite"].get(&private).is_none(), "an ignored user's invite: {res}");
    // When only the ignored user spoke, the room does not come at all.
    let since = res["next_batch"].as_str().expect("next_batch").to_owned();
    send_text(&s, &bt, &room, "bob alone").await;
    let res = sync(&s, &at, &format!("?since={since}&timeout=0")).await;
    assert!(res["rooms"]["join"].get(&room).is_none(), "{res}");
}

both_engines!(lazy_loaded_members_in_incremental_syncs, filters_for_each_section_and_ignored_users);

/// A new display name in a room one is in is no new join: the next incremental sync
/// carries the member event in the timeline, not the room from scratch.
async fn a_name_change_is_no_new_join(b: Backend) {
    let s = TestServer::start(b).await;
    let (alice, at, _) = s.register("alice", "pw-alice-1").await;
    let room = create(&s, &at, json!({"name": "Porch"})).await;
    let since = sync(&s, &at, "").await["next_batch"].as_str().expect("next_batch").to_owned();
    let member = format!("/_matrix/client/v3/rooms/{room}/state/m.room.member/{alice}");
    let (status, _) = s.put(&member, Some(&at), json!({"membership": "join", "displayname": "boris"})).await;
    assert_eq!(status, StatusCode::OK);
    send_text(&s, &at, &room, "after").await;
    let res = sync(&s, &at, &format!("?since={since}")).await;
    let timeline = res["rooms"]["join"][&room]["timeline"]["events"].as_array().expect("timeline").clone();
    let types: Vec<&str> = timeline.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(types, vec!["m.room.member", "m.room.message"], "{res}");
    assert_eq!(res["rooms"]["join"][&room]["timeline"]["limited"], false);
    // A room really joined since the last sync is limited, as Synapse marks it.
    let (_, bt, _) = s.register("bob", "pw-bob-12").await;
    let (status, _) = s
        .post(&format!("/_matrix/client/v3/rooms/{room}/invite"), Some(&at), json!({"user_id": "@bob:hearth.test"}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let b_since = sync(&s, &bt, "").await["next_batch"].as_str().expect("next_batch").to_owned();
    assert_eq!(s.post(&format!("/_matrix/client/v3/rooms/{room}/join"), Some(&bt), json!({})).await.0, StatusCode::OK);
    let res = sync(&s, &bt, &format!("?since={b_since}")).await;
    assert_eq!(res["rooms"]["join"][&room]["timeline"]["limited"], true, "{res}");
}

both_engines!(a_name_change_is_no_new_join);

/// Joining a room brings the presence of its members in the next incremental sync, even
/// when it did not change since.
async fn a_new_room_brings_its_members_presence(b: Backend) {
    let s = TestServer::start(b).await;
    let (_, at, _) = s.register("alice", "pw-alice-1").await;
    let (bob, bt, _) = s.register("bob", "pw-bob-12").await;
    let (status, _) =
        s.put(&format!("/_matrix/client/v3/presence/{bob}/status"), Some(&bt), json!({"presence": "online"})).await;
    assert_eq!(status, StatusCode::OK);
    let room = create(&s, &bt, json!({"preset": "public_chat"})).await;
    let since = sync(&s, &at, "").await["next_batch"].as_str().expect("next_batch").to_owned();
    assert_eq!(s.post(&format!("/_matrix/client/v3/join/{room}"), Some(&at), json!({})).await.0, StatusCode::OK);
    let res = sync(&s, &at, &format!("?since={since}&timeout=0")).await;
    let presence = res["presence"]["events"].as_array().cloned().unwrap_or_default();
    assert!(presence.iter().any(|e| e["sender"] == bob.as_str()), "{res}");
}

both_engines!(a_new_room_brings_its_members_presence);

/// Joining and leaving between two syncs: the leave section carries the room's state
/// afresh (the user was never in the room at the earlier sync).
async fn join_and_leave_in_one_batch_brings_the_state(b: Backend) {
    let s = TestServer::start(b).await;
    let (_, at, _) = s.register("alice", "pw-alice-1").await;
    let (bob, bt, _) = s.register("bob", "pw-bob-12").await;
    let room = create(&s, &at, json!({"invite": [bob]})).await;
    s.put(&format!("/_matrix/client/v3/rooms/{room}/state/a.made.up/"), Some(&at), json!({"my_key": 1})).await;
    let filter = urlencode(
        &json!({"room": {"timeline": {"types": []}, "state": {"types": ["a.made.up"]}, "include_leave": true}})
            .to_string(),
    );
    let since = sync(&s, &bt, &format!("?filter={filter}")).await["next_batch"].as_str().expect("next").to_owned();
    assert_eq!(s.post(&format!("/_matrix/client/v3/rooms/{room}/join"), Some(&bt), json!({})).await.0, StatusCode::OK);
    assert_eq!(s.post(&format!("/_matrix/client/v3/rooms/{room}/leave"), Some(&bt), json!({})).await.0, StatusCode::OK);
    let res = sync(&s, &bt, &format!("?filter={filter}&since={since}")).await;
    let state = res["rooms"]["leave"][&room]["state"]["events"].as_array().cloned().unwrap_or_default();
    let types: Vec<&str> = state.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(types, vec!["a.made.up"], "{res}");
}

both_engines!(join_and_leave_in_one_batch_brings_the_state);

/// A member who left a `joined`-history room and came back sees the joins that happened
/// while away in the timeline: they are current state, which history visibility does not
/// hide (as Synapse shows them).
async fn current_state_shows_in_a_private_timeline(b: Backend) {
    let s = TestServer::start(b).await;
    let (_, at, _) = s.register("alice", "pw-alice-1").await;
    let (_, bt, _) = s.register("bob", "pw-bob-1").await;
    let (carol, ct, _) = s.register("carol", "pw-carol-1").await;
    let room = create(&s, &at, json!({"preset": "public_chat"})).await;
    let hv = format!("/_matrix/client/v3/rooms/{room}/state/m.room.history_visibility");
    assert_eq!(s.put(&hv, Some(&at), json!({"history_visibility": "joined"})).await.0, StatusCode::OK);
    let join = format!("/_matrix/client/v3/rooms/{room}/join");
    s.post(&join, Some(&bt), json!({})).await;
    let since = sync(&s, &bt, "").await["next_batch"].as_str().unwrap().to_owned();
    s.post(&format!("/_matrix/client/v3/rooms/{room}/leave"), Some(&bt), json!({})).await;
    assert_eq!(s.post(&join, Some(&ct), json!({})).await.0, StatusCode::OK);
    assert_eq!(s.post(&join, Some(&bt), json!({})).await.0, StatusCode::OK);
    let res = sync(&s, &bt, &format!("?since={since}&timeout=0")).await;
    let timeline = res["rooms"]["join"][&room]["timeline"]["events"].as_array().cloned().unwrap_or_default();
    assert!(
        timeline.iter().any(|e| e["type"] == "m.room.member"
            && e["state_key"] == carol.as_str()
            && e["content"]["membership"] == "join"),
        "{res}"
    );
}

both_engines!(current_state_shows_in_a_private_timeline);

/// An initial sync whose timeline holds the whole room has "now" as prev_batch (as
/// Synapse): paging back from it gives the timeline again with an `end`, and from that
/// `end` nothing more and no `end`.
async fn a_complete_timeline_pages_back_from_now(b: Backend) {
    let s = TestServer::start(b).await;
    let (_, at, _) = s.register("alice", "pw-alice-1").await;
    let room = create(&s, &at, json!({"preset": "private_chat"})).await;
    let path = format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/p1");
    s.put(&path, Some(&at), json!({"msgtype": "m.text", "body": "only one"})).await;
    let res = sync(&s, &at, "").await;
    let timeline = &res["rooms"]["join"][&room]["timeline"];
    assert_eq!(timeline["limited"], false, "{timeline}");
    let held = timeline["events"].as_array().unwrap().len();
    let from = timeline["prev_batch"].as_str().unwrap();
    let (_, page) =
        s.get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&from={from}&limit=50"), Some(&at)).await;
    assert_eq!(page["chunk"].as_array().unwrap().len(), held, "{page}");
    assert_eq!(page["chunk"][0]["content"]["body"], "only one");
    let end = page["end"].as_str().expect("an end after a page with events");
    let (_, more) = s.get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&from={end}"), Some(&at)).await;
    assert_eq!(more["chunk"], json!([]), "{more}");
    assert!(more.get("end").is_none(), "{more}");
}

both_engines!(a_complete_timeline_pages_back_from_now);

/// Peeking (MSC2753): a device follows a world-readable room without joining it; its sync
/// shows the room under `rooms.peek` (the whole recent room first, new events after), is
/// woken by the room's events, and no other device of the user sees it. Rooms that are
/// not world-readable refuse, `/unpeek` and joining end a peek, and a peek survives a
/// restart.
async fn peeking_follows_a_world_readable_room(b: Backend) {
    let mut s = TestServer::start(b).await;
    let (_, alice, _) = s.register("alice", "pw-alice-1").await;
    let (_, bob, _) = s.register("bob", "pw-bob-1").await;
    let (bob_phone, _) = s.login("bob", "pw-bob-1").await;
    let public = create(&s, &alice, json!({"preset": "public_chat", "room_alias_name": "lobby"})).await;
    let hidden = create(&s, &alice, json!({"preset": "public_chat"})).await;
    let readable = json!({"history_visibility": "world_readable"});
    let path = format!("/_matrix/client/v3/rooms/{public}/state/m.room.history_visibility/");
    assert_eq!(s.put(&path, Some(&alice), readable).await.0, StatusCode::OK);

    // Only world-readable rooms may be peeked into; unknown rooms are 404.
    let refused = s.post(&format!("/_matrix/client/v3/peek/{hidden}"), Some(&bob), json!({})).await;
    crate::common::assert_error(&refused, 403, "M_FORBIDDEN");
    let unknown = s.post("/_matrix/client/v3/peek/!nowhere:hearth.test", Some(&bob), json!({})).await;
    crate::common::assert_error(&unknown, 404, "M_NOT_FOUND");

    let before = sync(&s, &bob, "").await;
    let since = before["next_batch"].as_str().unwrap().to_owned();
    // By alias; the answer names the room.
    let (status, peeked) =
        s.post(&format!("/_matrix/client/v3/peek/{}", urlencode("#lobby:hearth.test")), Some(&bob), json!({})).await;
    assert_eq!((status, peeked["room_id"].as_str()), (StatusCode::OK, Some(public.as_str())), "{peeked}");
    send_text(&s, &alice, &public, "something to peek").await;

    let first = sync(&s, &bob, &format!("?since={since}")).await;
    let room = &first["rooms"]["peek"][&public];
    let types: Vec<&str> =
        room["timeline"]["events"].as_array().unwrap().iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(types.first(), Some(&"m.room.create"), "{room}");
    assert_eq!(bodies(&room["timeline"]), vec!["something to peek"], "{room}");
    assert!(first["rooms"].get("join").is_none(), "bob joined nothing: {first}");
    let since = first["next_batch"].as_str().unwrap().to_owned();
    // Nothing new: the room stays out.
    let quiet = sync(&s, &bob, &format!("?since={since}&timeout=0")).await;
    assert!(quiet["rooms"]["peek"].get(&public).is_none(), "{quiet}");
    // The other device does not peek.
    let phone = sync(&s, &bob_phone, "").await;
    assert!(phone["rooms"].get("peek").is_none(), "{phone}");

    // A waiting sync of the peeking device wakes for the room's next event.
    let waiting = {
        let (base, http, token, since) = (s.base.clone(), s.http.clone(), bob.clone(), since.clone());
        tokio::spawn(async move {
            let url = format!("{base}/_matrix/client/v3/sync?since={since}&timeout=20000");
            http.get(url).bearer_auth(token).send().await.unwrap().json::<Value>().await.unwrap()
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    send_text(&s, &alice, &public, "something else to peek").await;
    let woken = waiting.await.unwrap();
    assert_eq!(bodies(&woken["rooms"]["peek"][&public]["timeline"]), vec!["something else to peek"], "{woken}");
    let since = woken["next_batch"].as_str().unwrap().to_owned();

    // The peek survives a restart.
    s.restart().await;
    send_text(&s, &alice, &public, "after the restart").await;
    let again = sync(&s, &bob, &format!("?since={since}")).await;
    assert_eq!(bodies(&again["rooms"]["peek"][&public]["timeline"]), vec!["after the restart"], "{again}");
    let since = again["next_batch"].as_str().unwrap().to_owned();

    // `/unpeek` ends it.
    assert_eq!(s.post(&format!("/_matrix/client/v3/unpeek/{public}"), Some(&bob), json!({})).await.0, StatusCode::OK);
    send_text(&s, &alice, &public, "unseen").await;
    let after = sync(&s, &bob, &format!("?since={since}&timeout=0")).await;
    assert!(after["rooms"].get("peek").is_none(), "{after}");
    let since = after["next_batch"].as_str().unwrap().to_owned();

    // Joining moves the room from peeked to joined for good: after leaving, it is not
    // peeked into again.
    assert_eq!(s.post(&format!("/_matrix/client/v3/peek/{public}"), Some(&bob), json!({})).await.0, StatusCode::OK);
    assert_eq!(s.post(&format!("/_matrix/client/v3/join/{public}"), Some(&bob), json!({})).await.0, StatusCode::OK);
    let joined = sync(&s, &bob, &format!("?since={since}")).await;
    assert!(joined["rooms"]["join"].get(&public).is_some(), "{joined}");
    assert!(joined["rooms"].get("peek").is_none(), "{joined}");
    assert_eq!(
        s.post(&format!("/_matrix/client/v3/rooms/{public}/leave"), Some(&bob), json!({})).await.0,
        StatusCode::OK
    );
    let since = joined["next_batch"].as_str().unwrap().to_owned();
    send_text(&s, &alice, &public, "after bob left").await;
    let left = sync(&s, &bob, &format!("?since={since}&timeout=0")).await;
    assert!(left["rooms"].get("peek").is_none(), "{left}");
}

both_engines!(peeking_follows_a_world_readable_room);
