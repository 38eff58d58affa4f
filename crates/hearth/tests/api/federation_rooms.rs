//! Rooms across two Hearths (`a.test` and `b.test`, over real TLS on loopback, found
//! through SRV records; see `federation.rs`): a user of one joins a room of the other by
//! alias and by room id with `via`, messages go both ways through the sender's
//! transactions, typing notices and receipts follow, a leave reaches the other side, and
//! a rejoin works.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use hearth::stream::StreamItem;

use crate::{
    common::TestServer,
    federation::{pair, pair_with},
};

/// How long a test waits for something to arrive from the other server before failing.
const ARRIVAL: Duration = Duration::from_secs(30);

/// Polls `check` until it gives `Some`, or fails naming `what` after [`ARRIVAL`].
pub(crate) async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + ARRIVAL;
    loop {
        if let Some(found) = check().await {
            return found;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what} never arrived");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The bodies of the room's newest `m.room.message` events as `token`'s user sees them.
async fn bodies(server: &TestServer, token: &str, room: &str) -> Vec<String> {
    let (status, page) =
        server.get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=50"), Some(token)).await;
    if status != StatusCode::OK {
        return vec![];
    }
    let mut out: Vec<String> = page["chunk"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["type"] == "m.room.message")
        .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
        .collect();
    out.reverse();
    out
}

async fn send(server: &TestServer, token: &str, room: &str, txn: &str, body: &str) -> String {
    let (status, sent) = server
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/{txn}"),
            Some(token),
            json!({"msgtype": "m.text", "body": body}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{sent}");
    sent["event_id"].as_str().expect("event id").to_owned()
}

async fn joined_members(server: &TestServer, token: &str, room: &str) -> Vec<String> {
    let (_, members) = server.get(&format!("/_matrix/client/v3/rooms/{room}/joined_members"), Some(token)).await;
    let mut ids: Vec<String> = members["joined"].as_object().map(|m| m.keys().cloned().collect()).unwrap_or_default();
    ids.sort();
    ids
}

fn encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// A user of a.test joins a room of b.test by its alias; messages, typing, receipts and
/// presence go across; a leave reaches b.test, and a rejoin works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_by_alias_then_messages_both_ways_leave_and_rejoin() {
    let p = pair().await;
    let (bob, bob_token, _) = p.b.register("bob", "a long password").await;
    let (status, created) =
        p.b.post(
            "/_matrix/client/v3/createRoom",
            Some(&bob_token),
            json!({"room_alias_name": "lobby", "preset": "public_chat", "name": "The Lobby"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{created}");
    let room = created["room_id"].as_str().expect("room id").to_owned();
    send(&p.b, &bob_token, &room, "t0", "before alice came").await;

    let (alice, alice_token, _) = p.a.register("alice", "a long password").await;
    let (status, joined) =
        p.a.post(&format!("/_matrix/client/v3/join/{}", encode("#lobby:b.test")), Some(&alice_token), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{joined}");
    assert_eq!(joined["room_id"], room.as_str());

    // Both sides see both members; a.test has the room's state (its name).
    let mut both = vec![alice.clone(), bob.clone()];
    both.sort();
    assert_eq!(joined_members(&p.a, &alice_token, &room).await, both);
    eventually("alice's join on b.test", || async {
        (joined_members(&p.b, &bob_token, &room).await == both).then_some(())
    })
    .await;
    let (status, name) =
        p.a.get(&format!("/_matrix/client/v3/rooms/{room}/state/m.room.name/"), Some(&alice_token)).await;
    assert_eq!((status, &name["name"]), (StatusCode::OK, &json!("The Lobby")), "{name}");

    // History from before the join is paged in from b.test (backfill), down to the
    // room's creation, and the pages end there.
    assert_eq!(bodies(&p.a, &alice_token, &room).await, vec!["before alice came".to_owned()]);
    let mut from: Option<String> = None;
    let mut types = Vec::new();
    for _ in 0..20 {
        let path = match &from {
            Some(t) => format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=3&from={t}"),
            None => format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=3"),
        };
        let (status, page) = p.a.get(&path, Some(&alice_token)).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        types.extend(
            page["chunk"].as_array().into_iter().flatten().map(|e| e["type"].as_str().unwrap_or("").to_owned()),
        );
        match page["end"].as_str() {
            Some(t) => from = Some(t.to_owned()),
            None => break,
        }
    }
    assert_eq!(types.last().map(String::as_str), Some("m.room.create"), "{types:?}");
    assert!(types.contains(&"m.room.name".to_owned()), "{types:?}");

    // Messages both ways, in order.
    send(&p.a, &alice_token, &room, "a1", "hello from a").await;
    send(&p.a, &alice_token, &room, "a2", "second from a").await;
    eventually("alice's messages on b.test", || async {
        let b = bodies(&p.b, &bob_token, &room).await;
        b.ends_with(&["hello from a".to_owned(), "second from a".to_owned()]).then_some(())
    })
    .await;
    let reply = send(&p.b, &bob_token, &room, "b1", "hello from b").await;
    eventually("bob's message on a.test", || async {
        bodies(&p.a, &alice_token, &room).await.contains(&"hello from b".to_owned()).then_some(())
    })
    .await;

    // A typing notice and a read receipt cross too.
    let (status, _) =
        p.a.put(
            &format!("/_matrix/client/v3/rooms/{room}/typing/{}", encode(&alice)),
            Some(&alice_token),
            json!({"typing": true, "timeout": 20000}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) =
        p.a.post(
            &format!("/_matrix/client/v3/rooms/{room}/receipt/m.read/{}", encode(&reply)),
            Some(&alice_token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let mut since: Option<String> = None;
    let (mut saw_typing, mut saw_receipt) = (false, false);
    let deadline = tokio::time::Instant::now() + ARRIVAL;
    while !(saw_typing && saw_receipt) {
        assert!(tokio::time::Instant::now() < deadline, "typing {saw_typing}, receipt {saw_receipt} on b.test");
        let path = match &since {
            Some(s) => format!("/_matrix/client/v3/sync?timeout=500&since={s}"),
            None => "/_matrix/client/v3/sync?timeout=0".to_owned(),
        };
        let (_, sync) = p.b.get(&path, Some(&bob_token)).await;
        since = sync["next_batch"].as_str().map(str::to_owned);
        for e in sync["rooms"]["join"][&room]["ephemeral"]["events"].as_array().into_iter().flatten() {
            if e["type"] == "m.typing" && e["content"]["user_ids"].as_array().is_some_and(|u| u.contains(&json!(alice)))
            {
                saw_typing = true;
            }
            if e["type"] == "m.receipt" && e["content"][&reply]["m.read"][&alice].is_object() {
                saw_receipt = true;
            }
        }
    }

    // Presence: alice's status reaches b.test, where bob shares the room with her.
    let (status, _) =
        p.a.put(
            &format!("/_matrix/client/v3/presence/{}/status", encode(&alice)),
            Some(&alice_token),
            json!({"presence": "unavailable", "status_msg": "out for lunch"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    eventually("alice's presence on b.test", || async {
        let path = format!("/_matrix/client/v3/presence/{}/status", encode(&alice));
        let (_, shown) = p.b.get(&path, Some(&bob_token)).await;
        (shown["presence"] == "unavailable" && shown["status_msg"] == "out for lunch").then_some(())
    })
    .await;

    // Alice leaves: b.test sees it; then she joins again by room id, through b.test.
    let (status, _) = p.a.post(&format!("/_matrix/client/v3/rooms/{room}/leave"), Some(&alice_token), json!({})).await;
    assert_eq!(status, StatusCode::OK);
    eventually("alice's leave on b.test", || async {
        (joined_members(&p.b, &bob_token, &room).await == vec![bob.clone()]).then_some(())
    })
    .await;
    let (status, rejoined) =
        p.a.post(&format!("/_matrix/client/v3/join/{}?via=b.test", encode(&room)), Some(&alice_token), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{rejoined}");
    eventually("alice's rejoin on b.test", || async {
        (joined_members(&p.b, &bob_token, &room).await == both).then_some(())
    })
    .await;
    send(&p.b, &bob_token, &room, "b2", "welcome back").await;
    eventually("bob's message after the rejoin on a.test", || async {
        bodies(&p.a, &alice_token, &room).await.contains(&"welcome back".to_owned()).then_some(())
    })
    .await;
}

/// A version 12 room (its id names no server) is joined by id with `via`; a message of
/// b.test's user sent before the join is not needed, and later ones arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_a_version_12_room_by_id_with_via() {
    let p = pair().await;
    let (_, bob_token, _) = p.b.register("bob", "a long password").await;
    let (status, created) = p
        .b
        .post("/_matrix/client/v3/createRoom", Some(&bob_token), json!({"preset": "public_chat", "room_version": "12"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{created}");
    let room = created["room_id"].as_str().expect("room id").to_owned();
    let (_, alice_token, _) = p.a.register("alice", "a long password").await;

    // Without `via` there is nobody to ask: a v12 room id names no server.
    let (status, refused) =
        p.a.post(&format!("/_matrix/client/v3/join/{}", encode(&room)), Some(&alice_token), json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{refused}");

    let (status, joined) =
        p.a.post(&format!("/_matrix/client/v3/join/{}?via=b.test", encode(&room)), Some(&alice_token), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{joined}");
    send(&p.b, &bob_token, &room, "b1", "in a v12 room").await;
    eventually("bob's message on a.test", || async {
        bodies(&p.a, &alice_token, &room).await.contains(&"in a v12 room".to_owned()).then_some(())
    })
    .await;
    send(&p.a, &alice_token, &room, "a1", "and back").await;
    eventually("alice's message on b.test", || async {
        bodies(&p.b, &bob_token, &room).await.contains(&"and back".to_owned()).then_some(())
    })
    .await;
}

/// A public room of version 11 that `token`'s user of b.test creates.
async fn public_room_at_b(b: &TestServer, token: &str) -> String {
    let (_, created) = b
        .post("/_matrix/client/v3/createRoom", Some(token), json!({"preset": "public_chat", "room_version": "11"}))
        .await;
    created["room_id"].as_str().expect("room id").to_owned()
}

/// Every `m.room.message` body of a room, newest first, as `token`'s user pages back from
/// `from` (now when `None`) with pages of `limit`; fails on an event seen twice.
async fn page_back(server: &TestServer, token: &str, room: &str, from: Option<String>, limit: u32) -> Vec<String> {
    let mut from = from;
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for _ in 0..100 {
        let mut path = format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit={limit}", encode(room));
        if let Some(f) = &from {
            path.push_str(&format!("&from={}", encode(f)));
        }
        let (status, page) = server.get(&path, Some(token)).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        for e in page["chunk"].as_array().expect("chunk") {
            let id = e["event_id"].as_str().expect("event id").to_owned();
            assert!(seen.insert(id.clone()), "{id} came twice: {page}");
            if e["type"] == "m.room.message" {
                out.push(e["content"]["body"].as_str().expect("body").to_owned());
            }
        }
        match page["end"].as_str() {
            Some(end) => from = Some(end.to_owned()),
            None => return out,
        }
    }
    panic!("paging back never ended: {out:?}");
}

/// History missing behind a rejoin is filled: what b.test's room said while alice was
/// away comes in its place when she pages back, between her rejoin and what she saw
/// before she left, in pages of any size. Her sync after the rejoin starts its timeline
/// at the rejoin, limited, with a `prev_batch` that leads into that history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_missed_while_away_is_filled_behind_a_rejoin() {
    let p = pair().await;
    let (_, bob_token, _) = p.b.register("bob", "a long password").await;
    let room = public_room_at_b(&p.b, &bob_token).await;
    let (alice, alice_token, _) = p.a.register("alice", "a long password").await;
    let join = format!("/_matrix/client/v3/join/{}?via=b.test", encode(&room));
    assert_eq!(p.a.post(&join, Some(&alice_token), json!({})).await.0, StatusCode::OK);
    send(&p.b, &bob_token, &room, "b1", "before she left").await;
    eventually("bob's first message on a.test", || async {
        bodies(&p.a, &alice_token, &room).await.contains(&"before she left".to_owned()).then_some(())
    })
    .await;
    let leave = format!("/_matrix/client/v3/rooms/{}/leave", encode(&room));
    assert_eq!(p.a.post(&leave, Some(&alice_token), json!({})).await.0, StatusCode::OK);
    eventually("alice's leave on b.test", || async {
        (!joined_members(&p.b, &bob_token, &room).await.contains(&alice)).then_some(())
    })
    .await;
    for i in 1..=5 {
        send(&p.b, &bob_token, &room, &format!("away{i}"), &format!("while away {i}")).await;
    }
    let (_, synced) = p.a.get("/_matrix/client/v3/sync?timeout=0", Some(&alice_token)).await;
    let since = synced["next_batch"].as_str().expect("next_batch").to_owned();
    assert_eq!(p.a.post(&join, Some(&alice_token), json!({})).await.0, StatusCode::OK);
    send(&p.b, &bob_token, &room, "b2", "welcome back").await;
    eventually("bob's message after the rejoin on a.test", || async {
        bodies(&p.a, &alice_token, &room).await.last().is_some_and(|b| b == "welcome back").then_some(())
    })
    .await;

    let expected: Vec<String> = ["welcome back", "while away 5", "while away 4", "while away 3"]
        .into_iter()
        .chain(["while away 2", "while away 1", "before she left"])
        .map(str::to_owned)
        .collect();
    for limit in [50, 3, 1] {
        assert_eq!(page_back(&p.a, &alice_token, &room, None, limit).await, expected, "pages of {limit}");
    }

    // The sync after the rejoin: the timeline starts at the rejoin and leads into the gap.
    let (_, sync) = p.a.get(&format!("/_matrix/client/v3/sync?timeout=0&since={since}"), Some(&alice_token)).await;
    let joined = &sync["rooms"]["join"][&room];
    let timeline = joined["timeline"]["events"].as_array().expect("timeline");
    let first = &timeline[0];
    assert!(first["type"] == "m.room.member" && first["state_key"] == alice.as_str(), "{joined}");
    assert_eq!(joined["timeline"]["limited"], true, "{joined}");
    let prev_batch = joined["timeline"]["prev_batch"].as_str().expect("prev_batch").to_owned();
    assert_eq!(page_back(&p.a, &alice_token, &room, Some(prev_batch), 2).await, expected[1..].to_vec());
}

/// `device` of `user` uploads device keys of its own.
async fn upload_device_keys(server: &TestServer, user: &str, token: &str, device: &str) {
    let keys = json!({"device_keys": {
        "user_id": user, "device_id": device,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": {format!("curve25519:{device}"): "curvekey", format!("ed25519:{device}"): "edkey"},
        "signatures": {user: {format!("ed25519:{device}"): "selfsig"}}
    }});
    let (status, body) = server.post("/_matrix/client/v3/keys/upload", Some(token), keys).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// The devices of `of` that `token`'s user gets from `keys/query`, and the failures.
async fn queried_devices(server: &TestServer, token: &str, of: &str) -> (Vec<String>, Value) {
    let (status, body) =
        server.post("/_matrix/client/v3/keys/query", Some(token), json!({"device_keys": {of: []}})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut devices: Vec<String> =
        body["device_keys"][of].as_object().map(|d| d.keys().cloned().collect()).unwrap_or_default();
    devices.sort();
    (devices, body["failures"].clone())
}

/// Another server's users' device lists are kept: alice's first query of bob's keys
/// syncs his list from b.test (`user/devices`); a device bob adds later reaches a.test as
/// an `m.device_list_update` and is applied to the kept list; and with b.test gone,
/// alice still gets both devices, with no failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_servers_device_lists_are_kept_and_updated() {
    let mut p = pair().await;
    let (bob, bob_token, bob_device) = p.b.register("bob", "a long password").await;
    upload_device_keys(&p.b, &bob, &bob_token, &bob_device).await;
    let room = public_room_at_b(&p.b, &bob_token).await;
    let (_, alice_token, _) = p.a.register("alice", "a long password").await;
    let join = format!("/_matrix/client/v3/join/{}?via=b.test", encode(&room));
    assert_eq!(p.a.post(&join, Some(&alice_token), json!({})).await.0, StatusCode::OK);

    let (devices, failures) = queried_devices(&p.a, &alice_token, &bob).await;
    assert_eq!(devices, vec![bob_device.clone()], "{failures}");
    let bob_id = ruma::UserId::parse(bob.as_str()).expect("user id");
    let kept = p.a.services().keys.remote_devices(&bob_id).expect("read").expect("kept after the first query");
    assert!(kept.devices.contains_key(&bob_device));

    let (second_token, second_device) = p.b.login("bob", "a long password").await;
    upload_device_keys(&p.b, &bob, &second_token, &second_device).await;
    eventually("bob's new device in a.test's kept list", || async {
        let kept = p.a.services().keys.remote_devices(&bob_id).ok().flatten()?;
        kept.devices.contains_key(&second_device).then_some(())
    })
    .await;

    p.b.stop().await;
    let (devices, failures) = queried_devices(&p.a, &alice_token, &bob).await;
    let mut both = vec![bob_device, second_device];
    both.sort();
    assert_eq!(devices, both);
    assert!(failures.as_object().is_none_or(|f| f.is_empty()), "{failures}");
}

/// A to-device message for a user of another server is kept in the database from the
/// moment the client is answered: with b.test down, alice's message to bob waits in
/// a.test's queue, and is still there after a.test restarts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_to_device_message_for_another_server_survives_a_restart() {
    let mut p = pair().await;
    let (_, alice_token, _) = p.a.register("alice", "a long password").await;
    p.b.stop().await;
    let body = json!({"messages": {"@bob:b.test": {"BOBDEVICE": {"algorithm": "m.olm.v1", "ciphertext": "room key"}}}});
    let (status, sent) = p.a.put("/_matrix/client/v3/sendToDevice/m.room.encrypted/t1", Some(&alice_token), body).await;
    assert_eq!(status, StatusCode::OK, "{sent}");
    let waiting = |s: &TestServer| {
        let rows = hearth::federation::sender::FEDERATION_EDUS.collect_prefix(&s.services().store, "b.test");
        rows.expect("read").into_iter().map(|(_, edu)| edu).collect::<Vec<Value>>()
    };
    let before = waiting(&p.a);
    assert_eq!(before.len(), 1, "{before:?}");
    assert_eq!(before[0]["content"]["messages"]["@bob:b.test"]["BOBDEVICE"]["ciphertext"], "room key");
    p.a.restart().await;
    assert_eq!(waiting(&p.a), before, "still queued after a restart");
}

/// Whether `server` heard of a device-list change of `user`, another server's user: such
/// a change is on its stream only when that user's server sent `m.device_list_update`.
fn heard_of_devices(server: &TestServer, user: &str) -> bool {
    let stream = &server.services().stream;
    let items = stream.items_between(0, stream.now()).expect("stream items");
    items.iter().any(|(_, item)| matches!(item, StreamItem::DeviceList { user_id, .. } if user_id == user))
}

/// A join that brings two servers together in a room introduces their users' device
/// lists and presence: b.test learns of alice's devices when she joins its room, and
/// a.test of the devices and presence of bob, who was in the room already. Neither had a
/// room with the other before, so no other device-list update went across.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_that_brings_servers_together_introduces_device_lists() {
    let p = pair().await;
    let (bob, bob_token, bob_device) = p.b.register("bob", "a long password").await;
    let (alice, alice_token, alice_device) = p.a.register("alice", "a long password").await;
    upload_device_keys(&p.b, &bob, &bob_token, &bob_device).await;
    upload_device_keys(&p.a, &alice, &alice_token, &alice_device).await;
    // Bob's presence, set while he shares no room with a.test: it goes nowhere yet.
    let presence_path = format!("/_matrix/client/v3/presence/{}/status", encode(&bob));
    let away = json!({"presence": "unavailable", "status_msg": "before alice came"});
    assert_eq!(p.b.put(&presence_path, Some(&bob_token), away).await.0, StatusCode::OK);
    let room = public_room_at_b(&p.b, &bob_token).await;
    assert!(!heard_of_devices(&p.b, &alice) && !heard_of_devices(&p.a, &bob));

    let (status, joined) =
        p.a.post(&format!("/_matrix/client/v3/join/{}?via=b.test", encode(&room)), Some(&alice_token), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{joined}");
    eventually("alice's devices introduced to b.test", || async { heard_of_devices(&p.b, &alice).then_some(()) }).await;
    eventually("bob's devices introduced to a.test", || async { heard_of_devices(&p.a, &bob).then_some(()) }).await;
    // And his presence, though it did not change.
    eventually("bob's presence on a.test", || async {
        let (_, shown) = p.a.get(&presence_path, Some(&alice_token)).await;
        (shown["presence"] == "unavailable" && shown["status_msg"] == "before alice came").then_some(())
    })
    .await;
}

/// A room whose join rule is `invite` refuses a remote join at `make_join` with 403.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_room_refuses_a_remote_join() {
    let p = pair().await;
    let (_, bob_token, _) = p.b.register("bob", "a long password").await;
    let (_, created) =
        p.b.post("/_matrix/client/v3/createRoom", Some(&bob_token), json!({"preset": "private_chat"})).await;
    let room = created["room_id"].as_str().expect("room id").to_owned();
    let (_, alice_token, _) = p.a.register("alice", "a long password").await;
    let (status, refused) =
        p.a.post(&format!("/_matrix/client/v3/join/{}?via=b.test", encode(&room)), Some(&alice_token), json!({})).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{refused}");
    let (_, rooms) = p.a.get("/_matrix/client/v3/joined_rooms", Some(&alice_token)).await;
    assert_eq!(rooms["joined_rooms"], json!([]), "{rooms}");
}

/// A restricted room (join rule `restricted`, allowing members of a space) lets a user of
/// another server in once they joined the space: b.test vouches for the join through
/// `join_authorised_via_users_server` and signs it. A user in no allowed room gets 403;
/// when b.test is not in the allowed room itself it answers `make_join` with
/// `M_UNABLE_TO_AUTHORISE_JOIN`, so that the joining server can try another resident.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restricted_room_lets_in_members_of_its_space() {
    let p = pair().await;
    let (bob, bob_token, _) = p.b.register("bob", "a long password").await;
    let create = |body: Value| p.b.post("/_matrix/client/v3/createRoom", Some(&bob_token), body);
    let (_, space) = create(json!({"preset": "public_chat", "creation_content": {"type": "m.space"}})).await;
    let space = space["room_id"].as_str().expect("space id").to_owned();
    let restricted_to = |allowed: &str| {
        json!({"room_version": "10", "preset": "private_chat", "initial_state": [{
            "type": "m.room.join_rules", "state_key": "",
            "content": {"join_rule": "restricted", "allow": [{"type": "m.room_membership", "room_id": allowed}]}
        }]})
    };
    let (_, room) = create(restricted_to(&space)).await;
    let room = room["room_id"].as_str().expect("room id").to_owned();

    let (alice, alice_token, _) = p.a.register("alice", "a long password").await;
    let (_, carol_token, _) = p.a.register("carol", "a long password").await;
    let join = |r: &str| format!("/_matrix/client/v3/join/{}?via=b.test", encode(r));
    let (status, refused) = p.a.post(&join(&room), Some(&carol_token), json!({})).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "not in the space: {refused}");

    assert_eq!(p.a.post(&join(&space), Some(&alice_token), json!({})).await.0, StatusCode::OK);
    let (status, joined) = p.a.post(&join(&room), Some(&alice_token), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{joined}");
    let member = format!("/_matrix/client/v3/rooms/{}/state/m.room.member/{}", encode(&room), encode(&alice));
    let (status, content) = p.b.get(&member, Some(&bob_token)).await;
    assert_eq!(status, StatusCode::OK, "{content}");
    assert_eq!(content["membership"], "join");
    assert_eq!(content["join_authorised_via_users_server"], bob.as_str());
    send(&p.a, &alice_token, &room, "r1", "in through the space").await;
    eventually("alice's message on b.test", || async {
        bodies(&p.b, &bob_token, &room).await.contains(&"in through the space".to_owned()).then_some(())
    })
    .await;

    // A room restricted to a space b.test is not in: b.test cannot tell, and says so.
    let (_, elsewhere) =
        p.a.post("/_matrix/client/v3/createRoom", Some(&alice_token), json!({"preset": "public_chat"})).await;
    let elsewhere = elsewhere["room_id"].as_str().expect("room id").to_owned();
    let (_, unknowable) = create(restricted_to(&elsewhere)).await;
    let unknowable = unknowable["room_id"].as_str().expect("room id").to_owned();
    let path = format!("/_matrix/federation/v1/make_join/{}/{}?ver=10", encode(&unknowable), encode(&alice));
    let b_name: ruma::OwnedServerName = "b.test".try_into().expect("name");
    let got =
        p.a.services()
            .transport
            .servers
            .request(&b_name, hearth::transport::server_client::ServerRequest::get(&path))
            .await
            .expect("request");
    let body: Value = serde_json::from_slice(&got.body).expect("json");
    assert_eq!((got.status.as_u16(), &body["errcode"]), (400, &json!("M_UNABLE_TO_AUTHORISE_JOIN")), "{body}");
}

/// What b.test's key signs: an event of the room on b.test's current heads, completed and
/// signed as b.test would, with `edit` applied before signing.
fn signed_by_b(
    p: &crate::federation::Pair,
    room: &ruma::RoomId,
    sender: &ruma::UserId,
    body: &str,
    edit: impl FnOnce(&mut ruma::CanonicalJsonObject),
) -> (ruma::CanonicalJsonObject, String) {
    let b = p.b.services();
    let content = json!({"msgtype": "m.text", "body": body}).as_object().cloned().expect("object");
    let mut obj = b
        .rooms
        .template(room, sender, hearth::rooms::append::NewEvent::message("m.room.message", content))
        .expect("template");
    edit(&mut obj);
    let rules = ruma::RoomVersionId::V12.rules().expect("rules");
    ruma::signatures::hash_and_sign_event("b.test", b.server_key.ed25519(), &mut obj, &rules.redaction).expect("sign");
    let id = format!("${}", ruma::signatures::reference_hash(&obj, &rules).expect("hash"));
    (obj, id)
}

/// b.test sends a.test a transaction (signed with b.test's real key over real TLS).
async fn transaction(p: &crate::federation::Pair, txn: &str, pdus: Vec<Value>, edus: Vec<Value>) -> (u16, Value) {
    let body = json!({"origin": "b.test", "origin_server_ts": 1, "pdus": pdus, "edus": edus});
    let path = format!("/_matrix/federation/v1/send/{txn}");
    let req = hearth::transport::server_client::ServerRequest {
        method: http::Method::PUT,
        ..hearth::transport::server_client::ServerRequest::post(&path, &body)
    };
    let a: ruma::OwnedServerName = "a.test".try_into().expect("name");
    let got = p.b.services().transport.servers.request(&a, req).await.expect("request");
    (got.status.as_u16(), serde_json::from_slice(&got.body).unwrap_or(Value::Null))
}

/// Hostile transactions from a real peer's key: each bad PDU gets its own error and is
/// not stored (a wrong content hash stores the redacted form), an oversized transaction
/// is 400, a replayed transaction id gets the first answer, and an EDU about another
/// server's user is ignored while one about the origin's own user is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_transactions_are_refused_piece_by_piece() {
    let p = pair().await;
    let (bob, bob_token, _) = p.b.register("bob", "a long password").await;
    let (_, created) = p
        .b
        .post("/_matrix/client/v3/createRoom", Some(&bob_token), json!({"preset": "public_chat", "room_version": "12"}))
        .await;
    let room_str = created["room_id"].as_str().expect("room id").to_owned();
    let (alice, alice_token, _) = p.a.register("alice", "a long password").await;
    let (status, _) =
        p.a.post(&format!("/_matrix/client/v3/join/{}?via=b.test", encode(&room_str)), Some(&alice_token), json!({}))
            .await;
    assert_eq!(status, StatusCode::OK);
    let room = ruma::OwnedRoomId::try_from(room_str.as_str()).expect("room id");
    let bob = ruma::OwnedUserId::try_from(bob.as_str()).expect("user");
    let stored = |id: &str| {
        let id = ruma::OwnedEventId::try_from(id).expect("id");
        p.a.services().rooms.pdu(&id).expect("read")
    };
    let err_of = |answer: &Value, id: &str| answer["pdus"][id]["error"].as_str().map(str::to_owned);

    // An answer kept from long ago: the first transaction's sweep forgets it.
    {
        use hearth::federation::transactions::{TxnAnswer, FEDERATION_TXNS};
        let mut batch = hearth::store::Batch::new();
        FEDERATION_TXNS.put(&mut batch, ("b.test", "ancient"), &TxnAnswer { pdus: Default::default(), ts: 1 });
        p.a.services().store.write(batch).expect("write");
    }

    // A good one, to show the path works.
    let (good, good_id) = signed_by_b(&p, &room, &bob, "good", |_| {});
    let (status, answer) = transaction(&p, "t1", vec![json!(good)], vec![]).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["pdus"][&good_id], json!({}), "{answer}");
    assert!(stored(&good_id).is_some());
    let ancient = hearth::federation::transactions::FEDERATION_TXNS.get(&p.a.services().store, ("b.test", "ancient"));
    assert!(ancient.expect("read").is_none(), "a day-old answer is forgotten");

    // Replayed id: the first answer, and the new PDU is not even looked at.
    let (other, other_id) = signed_by_b(&p, &room, &bob, "replayed", |_| {});
    let (status, replay) = transaction(&p, "t1", vec![json!(other)], vec![]).await;
    assert_eq!((status, &replay), (200, &answer));
    assert!(stored(&other_id).is_none());

    // A forged signature: signed, then the signed part changed.
    let (mut forged, _) = signed_by_b(&p, &room, &bob, "forged", |_| {});
    forged.insert("origin_server_ts".into(), ruma::CanonicalJsonValue::Integer(7u32.into()));
    let rules = ruma::RoomVersionId::V12.rules().expect("rules");
    let forged_id = format!("${}", ruma::signatures::reference_hash(&forged, &rules).expect("hash"));
    // A content hash that does not match: the content changed after signing.
    let (mut tampered, tampered_id) = signed_by_b(&p, &room, &bob, "original", |_| {});
    tampered.insert(
        "content".into(),
        ruma::CanonicalJsonValue::Object(
            [("body".to_owned(), ruma::CanonicalJsonValue::String("tampered".into()))].into_iter().collect(),
        ),
    );
    // A sender of another server than the origin, signed by the origin only.
    let carol = ruma::OwnedUserId::try_from("@carol:c.test").expect("user");
    let (not_origin, not_origin_id) = signed_by_b(&p, &room, &bob, "not mine", |o| {
        o.insert("sender".into(), ruma::CanonicalJsonValue::String(carol.to_string()));
    });
    // A sender of the origin who is not in the room: the auth rules reject it.
    let (outsider, outsider_id) = signed_by_b(&p, &room, &bob, "let me in", |o| {
        o.insert("sender".into(), ruma::CanonicalJsonValue::String("@mallory:b.test".into()));
    });
    let (status, answer) =
        transaction(&p, "t2", vec![json!(forged), json!(tampered), json!(not_origin), json!(outsider)], vec![]).await;
    assert_eq!(status, 200, "{answer}");
    let forged_err = err_of(&answer, &forged_id).expect("forged signature refused");
    assert!(forged_err.contains("signature"), "{forged_err}");
    assert!(stored(&forged_id).is_none());
    assert_eq!(answer["pdus"][&tampered_id], json!({}), "{answer}");
    let kept = stored(&tampered_id).expect("the redacted form is kept");
    assert_eq!(kept.content_value(), json!({}), "content dropped, not the tampered text");
    // Refused for want of c.test's signature (and were it signed, for its sender).
    assert!(err_of(&answer, &not_origin_id).expect("refused").contains("c.test"), "{answer}");
    assert!(stored(&not_origin_id).is_none());
    // Rejected by the auth rules: handled, so no error in the answer (as Synapse). Kept
    // only as rejected (so that later events naming it need not fetch it again), never
    // shown to alice.
    assert_eq!(answer["pdus"][&outsider_id], json!({}), "{answer}");
    let outsider_event = ruma::OwnedEventId::try_from(outsider_id.as_str()).expect("id");
    let meta = p.a.services().rooms.event_meta(&outsider_event).expect("read").expect("kept as rejected");
    assert!(meta.rejected && meta.soft_failed, "{meta:?}");
    let path = format!("/_matrix/client/v3/rooms/{}/event/{}", encode(&room_str), encode(&outsider_id));
    assert_eq!(p.a.get(&path, Some(&alice_token)).await.0, StatusCode::NOT_FOUND);
    // An event of bob's that names the rejected one as its prev event is taken, on the
    // state before it (the rejected event changed nothing), without fetching anything.
    let (after, after_id) = signed_by_b(&p, &room, &bob, "after the rejected one", |o| {
        o.insert("prev_events".into(), ruma::CanonicalJsonValue::Array(vec![outsider_id.clone().into()]));
    });
    let (status, answer) = transaction(&p, "t2b", vec![json!(after)], vec![]).await;
    assert_eq!((status, &answer["pdus"][&after_id]), (200, &json!({})), "{answer}");
    assert!(bodies(&p.a, &alice_token, &room_str).await.contains(&"after the rejected one".to_owned()));

    // A redaction of an event of another room (alice's own room on a.test) is rejected, and
    // the event stays as it was.
    let (_, own_room) = p.a.post("/_matrix/client/v3/createRoom", Some(&alice_token), json!({})).await;
    let own_room = own_room["room_id"].as_str().expect("room id").to_owned();
    let target = send(&p.a, &alice_token, &own_room, "mine", "not yours to redact").await;
    let (redaction, redaction_id) = signed_by_b(&p, &room, &bob, "unused", |o| {
        o.insert("type".into(), ruma::CanonicalJsonValue::String("m.room.redaction".into()));
        o.insert(
            "content".into(),
            ruma::CanonicalJsonValue::Object([("redacts".to_owned(), target.clone().into())].into_iter().collect()),
        );
        o.insert("redacts".into(), target.clone().into());
    });
    let (status, answer) = transaction(&p, "t2c", vec![json!(redaction)], vec![]).await;
    assert_eq!(status, 200, "{answer}");
    let redaction_event = ruma::OwnedEventId::try_from(redaction_id.as_str()).expect("id");
    let meta = p.a.services().rooms.event_meta(&redaction_event).expect("read").expect("kept as rejected");
    assert!(meta.rejected, "{meta:?}");
    assert!(bodies(&p.a, &alice_token, &own_room).await.contains(&"not yours to redact".to_owned()));

    // Too many PDUs at once.
    let many: Vec<Value> = (0..51).map(|_| json!(good)).collect();
    let (status, refused) = transaction(&p, "t3", many, vec![]).await;
    assert_eq!(status, 400, "{refused}");

    // EDUs: typing for a.test's own user is ignored; for b.test's user it is applied.
    let typing =
        |user: &str| json!({"edu_type": "m.typing", "content": {"room_id": room, "user_id": user, "typing": true}});
    let (status, _) = transaction(&p, "t4", vec![], vec![typing(&alice), typing(bob.as_str())]).await;
    assert_eq!(status, 200);
    let typing_now = p.a.services().typing.typing_since(&room, None).unwrap_or_default();
    assert_eq!(typing_now, vec![bob.clone()], "only the origin's own user");
}

/// The rooms `token`'s user is invited to, with the names their invites show.
async fn invites(server: &TestServer, token: &str) -> Vec<(String, Option<String>)> {
    let (_, sync) = server.get("/_matrix/client/v3/sync?timeout=0", Some(token)).await;
    let mut out = Vec::new();
    for (room, invite) in sync["rooms"]["invite"].as_object().into_iter().flatten() {
        let name = invite["invite_state"]["events"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["type"] == "m.room.name")
            .and_then(|e| e["content"]["name"].as_str().map(str::to_owned));
        out.push((room.clone(), name));
    }
    out
}

/// An invite from a server that has gone away can still be rejected: the leave cannot
/// reach b.test, so a.test rejects it alone (as Synapse does) rather than leaving it
/// stuck in the user's client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invite_from_a_vanished_server_is_rejected_here() {
    let mut p = pair().await;
    let (_, bob_token, _) = p.b.register("bob", "a long password").await;
    let (_, created) =
        p.b.post("/_matrix/client/v3/createRoom", Some(&bob_token), json!({"preset": "private_chat"})).await;
    let room = created["room_id"].as_str().expect("room id").to_owned();
    let (alice, alice_token, _) = p.a.register("alice", "a long password").await;
    let invite = format!("/_matrix/client/v3/rooms/{room}/invite");
    assert_eq!(p.b.post(&invite, Some(&bob_token), json!({"user_id": alice})).await.0, StatusCode::OK);
    assert_eq!(invites(&p.a, &alice_token).await.len(), 1);
    let (_, synced) = p.a.get("/_matrix/client/v3/sync?timeout=0", Some(&alice_token)).await;
    let since = synced["next_batch"].as_str().expect("next_batch").to_owned();
    // b.test comes back on another port; its SRV record still names the old one.
    p.b.restart().await;
    let (status, body) =
        p.a.post(&format!("/_matrix/client/v3/rooms/{}/leave", encode(&room)), Some(&alice_token), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(invites(&p.a, &alice_token).await, vec![], "the invite is gone");
    // The next sync has the room in `leave`, with her leave in its timeline.
    let (_, sync) = p.a.get(&format!("/_matrix/client/v3/sync?timeout=0&since={since}"), Some(&alice_token)).await;
    let left = &sync["rooms"]["leave"][&room]["timeline"]["events"];
    let leave = &left[0];
    assert!(
        leave["type"] == "m.room.member"
            && leave["state_key"] == alice.as_str()
            && leave["sender"] == alice.as_str()
            && leave["content"]["membership"] == "leave",
        "{sync}"
    );
}

/// A private room's owner on b.test invites two users of a.test: one accepts (a join
/// through b.test) and talks, the other rejects (a leave sent through b.test).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invites_across_servers_accepted_and_rejected() {
    let p = pair().await;
    let (bob, bob_token, _) = p.b.register("bob", "a long password").await;
    let (_, created) = p
        .b
        .post("/_matrix/client/v3/createRoom", Some(&bob_token), json!({"preset": "private_chat", "name": "Secret"}))
        .await;
    let room = created["room_id"].as_str().expect("room id").to_owned();
    let (alice, alice_token, _) = p.a.register("alice", "a long password").await;
    let (carol, carol_token, _) = p.a.register("carol", "a long password").await;
    for user in [&alice, &carol] {
        let (status, body) =
            p.b.post(&format!("/_matrix/client/v3/rooms/{room}/invite"), Some(&bob_token), json!({"user_id": user}))
                .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    // The invites show on a.test with the room's name; b.test lists both as invited.
    assert_eq!(invites(&p.a, &alice_token).await, vec![(room.clone(), Some("Secret".to_owned()))]);
    assert_eq!(invites(&p.a, &carol_token).await, vec![(room.clone(), Some("Secret".to_owned()))]);

    // Alice accepts: her join goes through b.test (the inviter's server) with no `via`.
    let (status, joined) =
        p.a.post(&format!("/_matrix/client/v3/join/{}", encode(&room)), Some(&alice_token), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{joined}");
    let mut both = vec![alice.clone(), bob.clone()];
    both.sort();
    eventually("alice's join on b.test", || async {
        (joined_members(&p.b, &bob_token, &room).await == both).then_some(())
    })
    .await;
    send(&p.a, &alice_token, &room, "a1", "thanks for the invite").await;
    eventually("alice's message on b.test", || async {
        bodies(&p.b, &bob_token, &room).await.contains(&"thanks for the invite".to_owned()).then_some(())
    })
    .await;

    // Carol rejects: b.test sees her leave, and the invite is gone from her sync.
    let (status, left) =
        p.a.post(&format!("/_matrix/client/v3/rooms/{}/leave", encode(&room)), Some(&carol_token), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{left}");
    // (a.test is in the room by now, through alice: the leave is its own event, sent on.)
    eventually("carol's leave on b.test", || async {
        let path = format!("/_matrix/client/v3/rooms/{room}/state/m.room.member/{}", encode(&carol));
        let (_, state) = p.b.get(&path, Some(&bob_token)).await;
        (state["membership"] == "leave").then_some(())
    })
    .await;
    assert_eq!(invites(&p.a, &carol_token).await, vec![]);
}

/// A room's server ACL that denies a.test: a.test's transactions into the room are refused
/// per PDU, and its reads of the room's events and `make_join` are 403.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_acl_shuts_a_server_out() {
    let p = pair().await;
    let (_, bob_token, _) = p.b.register("bob", "a long password").await;
    let (_, created) =
        p.b.post("/_matrix/client/v3/createRoom", Some(&bob_token), json!({"preset": "public_chat"})).await;
    let room = created["room_id"].as_str().expect("room id").to_owned();
    let (alice, alice_token, _) = p.a.register("alice", "a long password").await;
    let (status, _) =
        p.a.post(&format!("/_matrix/client/v3/join/{}?via=b.test", encode(&room)), Some(&alice_token), json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let first = send(&p.b, &bob_token, &room, "b1", "before the ACL").await;
    let (status, acl) =
        p.b.put(
            &format!("/_matrix/client/v3/rooms/{room}/state/m.room.server_acl/"),
            Some(&bob_token),
            json!({"allow": ["*"], "deny": ["a.test"], "allow_ip_literals": false}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{acl}");

    // a.test (signing as itself, over TLS) sends alice's message into the room: refused.
    let room_id = ruma::OwnedRoomId::try_from(room.as_str()).expect("room id");
    let alice_id = ruma::OwnedUserId::try_from(alice.as_str()).expect("user");
    let a = p.a.services();
    let content = json!({"msgtype": "m.text", "body": "denied"}).as_object().cloned().expect("object");
    let mut obj = eventually("the ACL on a.test", || async {
        // Built on a.test's view of the room, once the ACL event has arrived there.
        a.rooms.state_event(&room_id, &ruma::events::StateEventType::RoomServerAcl, "").expect("read").and_then(|_| {
            a.rooms
                .template(
                    &room_id,
                    &alice_id,
                    hearth::rooms::append::NewEvent::message("m.room.message", content.clone()),
                )
                .ok()
        })
    })
    .await;
    let rules = ruma::RoomVersionId::V12.rules().expect("rules");
    ruma::signatures::hash_and_sign_event("a.test", a.server_key.ed25519(), &mut obj, &rules.redaction).expect("sign");
    let id = format!("${}", ruma::signatures::reference_hash(&obj, &rules).expect("hash"));
    let body = json!({"origin": "a.test", "origin_server_ts": 1, "pdus": [obj], "edus": []});
    let req = hearth::transport::server_client::ServerRequest {
        method: http::Method::PUT,
        ..hearth::transport::server_client::ServerRequest::post("/_matrix/federation/v1/send/acl-1", &body)
    };
    let b_name: ruma::OwnedServerName = "b.test".try_into().expect("name");
    let got = a.transport.servers.request(&b_name, req).await.expect("request");
    let answer: Value = serde_json::from_slice(&got.body).expect("json");
    assert_eq!(got.status, 200, "{answer}");
    let error = answer["pdus"][&id]["error"].as_str().unwrap_or_default();
    assert!(error.contains("ACL"), "{answer}");
    assert!(p.b.services().rooms.pdu(&ruma::OwnedEventId::try_from(id.as_str()).expect("id")).expect("read").is_none());

    // Reading the room's events is refused too.
    let path = format!("/_matrix/federation/v1/event/{}", encode(&first));
    let got = a.transport.servers.request(&b_name, hearth::transport::server_client::ServerRequest::get(&path)).await;
    assert_eq!(got.expect("request").status, 403);

    // And b.test hands a.test no join template for another of its users.
    let path = format!("/_matrix/federation/v1/make_join/{}/{}?ver=12", encode(&room), encode("@carol:a.test"));
    let got = a.transport.servers.request(&b_name, hearth::transport::server_client::ServerRequest::get(&path)).await;
    assert_eq!(got.expect("request").status, 403);
}

/// A user of a.test knocks on a room of b.test whose join rule is `knock`: b.test sees the
/// knock and a.test's sync shows it; bob lets her in (an invite), and she joins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_knock_across_servers_then_an_invite_and_a_join() {
    let p = pair().await;
    let (bob, bob_token, _) = p.b.register("bob", "a long password").await;
    let (_, created) = p
        .b
        .post(
            "/_matrix/client/v3/createRoom",
            Some(&bob_token),
            json!({"preset": "private_chat", "name": "Knock first",
                   "initial_state": [{"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "knock"}}]}),
        )
        .await;
    let room = created["room_id"].as_str().expect("room id").to_owned();
    let (alice, alice_token, _) = p.a.register("alice", "a long password").await;
    let (status, knocked) =
        p.a.post(
            &format!("/_matrix/client/v3/knock/{}?via=b.test", encode(&room)),
            Some(&alice_token),
            json!({"reason": "hello?"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{knocked}");
    let (_, state) =
        p.b.get(&format!("/_matrix/client/v3/rooms/{room}/state/m.room.member/{}", encode(&alice)), Some(&bob_token))
            .await;
    assert_eq!((state["membership"].as_str(), state["reason"].as_str()), (Some("knock"), Some("hello?")), "{state}");
    let (_, sync) = p.a.get("/_matrix/client/v3/sync?timeout=0", Some(&alice_token)).await;
    let names: Vec<&str> = sync["rooms"]["knock"][&room]["knock_state"]["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["type"] == "m.room.name")
        .filter_map(|e| e["content"]["name"].as_str())
        .collect();
    assert_eq!(names, vec!["Knock first"], "{sync}");

    let (status, _) =
        p.b.post(&format!("/_matrix/client/v3/rooms/{room}/invite"), Some(&bob_token), json!({"user_id": alice})).await;
    assert_eq!(status, StatusCode::OK);
    let (status, joined) =
        p.a.post(&format!("/_matrix/client/v3/join/{}", encode(&room)), Some(&alice_token), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{joined}");
    let mut both = vec![alice.clone(), bob.clone()];
    both.sort();
    eventually("alice's join on b.test", || async {
        (joined_members(&p.b, &bob_token, &room).await == both).then_some(())
    })
    .await;
}

/// History visibility holds for servers: in a room whose history is `joined`, what was
/// said before a.test's user joined reaches a.test only redacted when she pages back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joined_only_history_is_not_backfilled_readable() {
    let p = pair().await;
    let (_, bob_token, _) = p.b.register("bob", "a long password").await;
    let (_, created) =
        p.b.post(
            "/_matrix/client/v3/createRoom",
            Some(&bob_token),
            json!({"preset": "public_chat",
                   "initial_state": [{"type": "m.room.history_visibility", "state_key": "",
                                      "content": {"history_visibility": "joined"}}]}),
        )
        .await;
    let room = created["room_id"].as_str().expect("room id").to_owned();
    let secret = send(&p.b, &bob_token, &room, "b0", "said before alice came").await;
    let (_, alice_token, _) = p.a.register("alice", "a long password").await;
    let (status, _) =
        p.a.post(&format!("/_matrix/client/v3/join/{}?via=b.test", encode(&room)), Some(&alice_token), json!({})).await;
    assert_eq!(status, StatusCode::OK);
    send(&p.b, &bob_token, &room, "b1", "said after alice came").await;
    eventually("bob's later message on a.test", || async {
        bodies(&p.a, &alice_token, &room).await.contains(&"said after alice came".to_owned()).then_some(())
    })
    .await;
    // Paging back fetched the earlier event from b.test, redacted.
    assert!(!bodies(&p.a, &alice_token, &room).await.contains(&"said before alice came".to_owned()));
    let held = p.a.services().rooms.pdu(&ruma::OwnedEventId::try_from(secret.as_str()).expect("id")).expect("read");
    let held = held.expect("the earlier event was backfilled");
    assert_eq!(held.content_value(), json!({}), "a.test holds the content of an event it may not see");
    // Nor is it shown to alice as an empty message: history kept to members from before
    // she joined is not hers to page through (sytest's "Backfill works correctly with
    // history visibility set to joined").
    let (_, page) =
        p.a.get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=50"), Some(&alice_token)).await;
    let ids: Vec<&str> =
        page["chunk"].as_array().expect("chunk").iter().filter_map(|e| e["event_id"].as_str()).collect();
    assert!(!ids.contains(&secret.as_str()), "{page}");
    assert!(
        page["chunk"]
            .as_array()
            .expect("chunk")
            .iter()
            .all(|e| e["type"] != "m.room.message" || e["content"]["body"] == "said after alice came"),
        "{page}"
    );
    // Her own join is hers to see.
    assert!(page["chunk"].as_array().expect("chunk").iter().any(|e| e["state_key"] == "@alice:a.test"), "{page}");
}

/// A user of b.test sees a picture a user of a.test uploaded: b.test fetches it from a.test
/// (`federation/v1/media/download`, signed, multipart), keeps it, and makes thumbnails of
/// it itself; a media id a.test does not have is 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_of_another_server_is_fetched_and_kept() {
    let p = pair().await;
    let (_, alice_token, _) = p.a.register("alice", "a long password").await;
    let (_, bob_token, _) = p.b.register("bob", "a long password").await;
    let img = image::RgbImage::from_fn(400, 300, |x, y| image::Rgb([(x % 256) as u8, (y % 256) as u8, 7]));
    let mut png = std::io::Cursor::new(Vec::new());
    img.write_to(&mut png, image::ImageFormat::Png).expect("encode");
    let png = png.into_inner();
    let up =
        p.a.http
            .post(format!("{}/_matrix/media/v3/upload?filename=garden.png", p.a.base))
            .bearer_auth(&alice_token)
            .header("content-type", "image/png")
            .body(png.clone())
            .send()
            .await
            .expect("upload");
    let uri: Value = up.json().await.expect("json");
    let path = uri["content_uri"].as_str().expect("uri").strip_prefix("mxc://").expect("mxc").to_owned();

    let get = |what: String| {
        p.b.http.get(format!("{}/_matrix/client/v1/media/{what}", p.b.base)).bearer_auth(bob_token.clone()).send()
    };
    // Four clients ask at once: b.test fetches it from a.test once, and all get it.
    let asks = futures_util::future::join_all((0..4).map(|_| get(format!("download/{path}")))).await;
    let mut asks = asks.into_iter().map(|r| r.expect("get"));
    let res = asks.next().expect("an answer");
    for other in asks {
        assert_eq!(other.status(), StatusCode::OK);
        assert_eq!(other.bytes().await.expect("body").to_vec(), png);
    }
    let served = p.a.services().metrics.render(&[], &[]);
    let fetches: Vec<&str> = served
        .lines()
        .filter(|l| l.starts_with("hearth_http_requests_total") && l.contains("/v1/media/download/"))
        .collect();
    assert_eq!(fetches.len(), 1, "{served}");
    assert!(fetches[0].ends_with("status=\"200\"} 1"), "fetched once: {}", fetches[0]);
    assert_eq!(res.status(), StatusCode::OK, "{}", res.text().await.unwrap_or_default());
    assert_eq!(res.headers()["content-type"], "image/png");
    assert_eq!(res.headers()["content-disposition"], "inline; filename=garden.png");
    assert_eq!(res.bytes().await.expect("body").to_vec(), png);
    let res = get(format!("thumbnail/{path}?width=96&height=96&method=crop")).await.expect("get");
    assert_eq!(res.status(), StatusCode::OK);
    let thumb = image::load_from_memory(&res.bytes().await.expect("body")).expect("decodable");
    assert_eq!((thumb.width(), thumb.height()), (96, 96));
    let res = get("download/a.test/nothing-here".to_owned()).await.expect("get");
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    // b.test's admin (its first user, bob) purges other servers' media: the copy and its
    // thumbnails go, and the next read fetches it from a.test again.
    let thumbnails = p.b.services().config.database_path.join("media").join("thumbnails");
    assert!(std::fs::read_dir(&thumbnails).expect("thumbnails").count() >= 1, "thumbnails made here");
    let later = hearth::time::now_millis() + 60_000;
    let purge = format!("/_synapse/admin/v1/purge_media_cache?before_ts={later}");
    let (status, purged) = p.b.post(&purge, Some(&bob_token), json!({})).await;
    assert_eq!((status, purged["deleted"].as_u64()), (StatusCode::OK, Some(1)), "{purged}");
    assert_eq!(std::fs::read_dir(&thumbnails).expect("thumbnails").count(), 0, "thumbnails go with the file");
    let res = get(format!("download/{path}")).await.expect("get");
    assert_eq!(res.bytes().await.expect("body").to_vec(), png, "fetched again");
    // Kept: b.test serves it again with a.test gone.
    drop(p.a);
    let res = p.b.http.get(format!("{}/_matrix/media/v3/download/{path}", p.b.base)).send().await.expect("get");
    assert_eq!(res.bytes().await.expect("body").to_vec(), png);
}

/// An admin of a.test deletes, purges and blocks a room of b.test that alice joined: her
/// leave reaches b.test before a.test forgets the room, the room lives on at b.test, and
/// alice cannot join it again through a.test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purged_room_lets_the_other_server_know_first() {
    let p = pair().await;
    let (_, bob_token, _) = p.b.register("bob", "a long password").await;
    let (_, created) =
        p.b.post("/_matrix/client/v3/createRoom", Some(&bob_token), json!({"preset": "public_chat"})).await;
    let room = created["room_id"].as_str().expect("room id").to_owned();
    let (_, admin_token, _) = p.a.register("root", "a long password").await;
    let (alice, alice_token, _) = p.a.register("alice", "a long password").await;
    let join = format!("/_matrix/client/v3/join/{}?via=b.test", encode(&room));
    assert_eq!(p.a.post(&join, Some(&alice_token), json!({})).await.0, StatusCode::OK);
    send(&p.a, &alice_token, &room, "a1", "soon gone from a.test").await;
    eventually("alice's message on b.test", || async {
        bodies(&p.b, &bob_token, &room).await.contains(&"soon gone from a.test".to_owned()).then_some(())
    })
    .await;

    let delete = format!("/_synapse/admin/v1/rooms/{}", encode(&room));
    let (status, done) =
        p.a.request(reqwest::Method::DELETE, &delete, Some(&admin_token), Some(json!({"block": true}))).await;
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(done["kicked_users"], json!([alice]));
    assert_eq!(p.a.get(&delete, Some(&admin_token)).await.0, StatusCode::NOT_FOUND, "purged from a.test");
    eventually("alice's leave on b.test", || async {
        (!joined_members(&p.b, &bob_token, &room).await.contains(&alice)).then_some(())
    })
    .await;
    send(&p.b, &bob_token, &room, "b1", "still here").await;
    assert!(bodies(&p.b, &bob_token, &room).await.contains(&"still here".to_owned()));
    let (status, _) = p.a.post(&join, Some(&alice_token), json!({})).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "blocked on a.test");
}

/// A server that cannot be reached shows as waiting, with its queue, in Synapse's
/// destinations admin API and in `hearth admin list-destinations`; an admin can make the
/// sender try it again at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_destination_shows_and_can_be_retried() {
    let mut p = pair().await;
    let (_, bob_token, _) = p.b.register("bob", "a long password").await;
    let (_, created) =
        p.b.post("/_matrix/client/v3/createRoom", Some(&bob_token), json!({"preset": "public_chat"})).await;
    let room = created["room_id"].as_str().expect("room id").to_owned();
    let (_, alice_token, _) = p.a.register("alice", "a long password").await;
    let join = format!("/_matrix/client/v3/join/{}?via=b.test", encode(&room));
    assert_eq!(p.a.post(&join, Some(&alice_token), json!({})).await.0, StatusCode::OK);
    // b.test comes back on another port; its SRV record still names the old one.
    p.b.restart().await;
    send(&p.a, &alice_token, &room, "a1", "into the void").await;

    let list = "/_synapse/admin/v1/federation/destinations";
    let entry = eventually("b.test backing off", || async {
        let (_, page) = p.a.get(list, Some(&alice_token)).await;
        page["destinations"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|d| d["destination"] == "b.test" && d["retry_interval"].as_u64().is_some_and(|i| i > 0))
            .cloned()
    })
    .await;
    assert!(entry["queued"].as_u64().is_some_and(|q| q >= 1), "{entry}");
    assert!(entry["failure_ts"].is_u64() && entry["retry_last_ts"].is_u64(), "{entry}");
    assert!(entry.get("last_successful_stream_ordering").is_some(), "{entry}");
    let (status, one) = p.a.get(&format!("{list}/b.test"), Some(&alice_token)).await;
    assert_eq!((status, one["destination"].as_str()), (StatusCode::OK, Some("b.test")), "{one}");
    let (status, _) = p.a.get(&format!("{list}/nowhere.test"), Some(&alice_token)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let said =
        hearth::api::admin::command::execute(p.a.services(), hearth::api::admin::command::Command::ListDestinations)
            .await
            .expect("list-destinations");
    assert!(said.contains("b.test\tqueued=") && said.contains("error="), "{said}");

    let (status, reset) = p.a.post(&format!("{list}/b.test/reset_connection"), Some(&alice_token), json!({})).await;
    assert_eq!((status, reset), (StatusCode::OK, json!({})));
    let (_, mallory, _) = p.a.register("mallory", "a long password").await;
    assert_eq!(p.a.get(list, Some(&mallory)).await.0, StatusCode::FORBIDDEN);
}

/// A space on b.test, joined from a.test: its rooms that a.test does not know are
/// described by b.test (`/hierarchy` over federation), each as the viewer may see it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_space_on_another_server_is_walked_through_it() {
    let p = pair().await;
    let (_, bob_token, _) = p.b.register("bob", "a long password").await;
    let create = |body: Value| p.b.post("/_matrix/client/v3/createRoom", Some(&bob_token), body);
    let (_, space) =
        create(json!({"preset": "public_chat", "name": "Club house", "creation_content": {"type": "m.space"}})).await;
    let space = space["room_id"].as_str().expect("space").to_owned();
    let (_, lounge) = create(json!({"preset": "public_chat", "name": "Lounge"})).await;
    let lounge = lounge["room_id"].as_str().expect("lounge").to_owned();
    let rule = json!({"join_rule": "restricted", "allow": [{"type": "m.room_membership", "room_id": space}]});
    let (_, members) = create(json!({"preset": "private_chat", "name": "Members", "initial_state": [{"type": "m.room.join_rules", "state_key": "", "content": rule}]})).await;
    let members = members["room_id"].as_str().expect("members").to_owned();
    let (_, secret) = create(json!({"preset": "private_chat", "name": "Board"})).await;
    let secret = secret["room_id"].as_str().expect("secret").to_owned();
    for child in [&lounge, &members, &secret] {
        let path = format!("/_matrix/client/v3/rooms/{}/state/m.space.child/{}", encode(&space), encode(child));
        assert_eq!(p.b.put(&path, Some(&bob_token), json!({"via": ["b.test"]})).await.0, StatusCode::OK);
    }

    // b.test describes the space to a server that asks, leaving out what is private.
    let path = format!("/_matrix/federation/v1/hierarchy/{}", encode(&space));
    let got =
        p.a.services()
            .transport
            .servers
            .request(
                &ruma::OwnedServerName::try_from("b.test").expect("name"),
                hearth::transport::server_client::ServerRequest::get(&path),
            )
            .await
            .expect("request");
    assert_eq!(got.status, 200, "{}", String::from_utf8_lossy(&got.body));
    let answer: Value = serde_json::from_slice(&got.body).expect("json");
    assert_eq!(answer["room"]["room_id"], space.as_str());
    let described: Vec<&str> =
        answer["children"].as_array().expect("children").iter().filter_map(|c| c["room_id"].as_str()).collect();
    assert!(described.contains(&lounge.as_str()) && described.contains(&members.as_str()), "{answer}");
    assert_eq!(answer["inaccessible_children"], json!([secret]));

    // alice joins the space from a.test and walks it there: the rooms a.test does not
    // know come from b.test; the restricted one shows since she is in the space.
    let (_, alice_token, _) = p.a.register("alice", "a long password").await;
    let join = format!("/_matrix/client/v3/join/{}?via=b.test", encode(&space));
    assert_eq!(p.a.post(&join, Some(&alice_token), json!({})).await.0, StatusCode::OK);
    let walk = format!("/_matrix/client/v1/rooms/{}/hierarchy", encode(&space));
    let (status, page) = p.a.get(&walk, Some(&alice_token)).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let mut ids: Vec<&str> =
        page["rooms"].as_array().expect("rooms").iter().filter_map(|r| r["room_id"].as_str()).collect();
    // Children sent in the same millisecond are ordered by room id, which is random.
    ids[1..].sort_unstable();
    let mut expected = [space.as_str(), lounge.as_str(), members.as_str()];
    expected[1..].sort_unstable();
    assert_eq!(ids, expected, "{page}");
    let named = page["rooms"].as_array().expect("rooms").iter().find(|r| r["room_id"] == lounge.as_str());
    assert_eq!(named.map(|r| r["name"].clone()), Some(json!("Lounge")));
    // carol, on a.test but not in the space, does not see the members' room.
    let (_, carol_token, _) = p.a.register("carol", "a long password").await;
    let (_, hers) = p.a.get(&walk, Some(&carol_token)).await;
    let ids: Vec<&str> =
        hers["rooms"].as_array().expect("rooms").iter().filter_map(|r| r["room_id"].as_str()).collect();
    assert_eq!(ids, [space.as_str(), lounge.as_str()], "{hers}");
}

/// A room whose state is larger than `join_max_state_events` is refused with 413
/// `M_TOO_LARGE` naming the setting, not joined half-way; a room within the limit joins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_over_the_join_size_limit_is_refused_with_a_clear_error() {
    let p = pair_with(|c| c.join_max_state_events = 14).await;
    let (_, bob_token, _) = p.b.register("bob", "a long password").await;
    let create = |body: Value| p.b.post("/_matrix/client/v3/createRoom", Some(&bob_token), body);
    let (_, small) = create(json!({"preset": "public_chat"})).await;
    let small = small["room_id"].as_str().expect("room id").to_owned();
    let (_, big) = create(json!({"preset": "public_chat"})).await;
    let big = big["room_id"].as_str().expect("room id").to_owned();
    for i in 0..12 {
        let path = format!("/_matrix/client/v3/rooms/{big}/state/org.example.shelf/{i}");
        let (status, _) = p.b.put(&path, Some(&bob_token), json!({"books": i})).await;
        assert_eq!(status, StatusCode::OK);
    }

    let (_, alice_token, _) = p.a.register("alice", "a long password").await;
    let join = |room: &str| format!("/_matrix/client/v3/join/{}?via=b.test", encode(room));
    let (status, refused) = p.a.post(&join(&big), Some(&alice_token), json!({})).await;
    assert_eq!((status, &refused["errcode"]), (StatusCode::PAYLOAD_TOO_LARGE, &json!("M_TOO_LARGE")), "{refused}");
    assert!(refused["error"].as_str().is_some_and(|e| e.contains("join_max_state_events")), "{refused}");
    let (status, _) = p.a.get(&format!("/_matrix/client/v3/rooms/{big}/state"), Some(&alice_token)).await;
    assert_ne!(status, StatusCode::OK, "nothing of the refused room is shown");

    let (status, joined) = p.a.post(&join(&small), Some(&alice_token), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{joined}");
}

/// A room whose state spans several of the chunks a join's answer is checked and stored
/// in comes over whole: every state event is in a.test's `/state`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_with_more_state_than_one_chunk_joins_whole() {
    let p = pair().await;
    let (_, bob_token, _) = p.b.register("bob", "a long password").await;
    let (_, room) = p.b.post("/_matrix/client/v3/createRoom", Some(&bob_token), json!({"preset": "public_chat"})).await;
    let room = room["room_id"].as_str().expect("room id").to_owned();
    const SHELVES: usize = 600;
    for i in 0..SHELVES {
        let path = format!("/_matrix/client/v3/rooms/{room}/state/org.example.shelf/{i}");
        assert_eq!(p.b.put(&path, Some(&bob_token), json!({"books": i})).await.0, StatusCode::OK);
    }
    let (_, alice_token, _) = p.a.register("alice", "a long password").await;
    let join = format!("/_matrix/client/v3/join/{}?via=b.test", encode(&room));
    let (status, joined) = p.a.post(&join, Some(&alice_token), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{joined}");
    let (status, state) = p.a.get(&format!("/_matrix/client/v3/rooms/{room}/state"), Some(&alice_token)).await;
    assert_eq!(status, StatusCode::OK, "{state}");
    let shelves: std::collections::BTreeSet<u64> = state
        .as_array()
        .expect("state events")
        .iter()
        .filter(|e| e["type"] == "org.example.shelf")
        .filter_map(|e| e["content"]["books"].as_u64())
        .collect();
    assert_eq!(shelves.len(), SHELVES);
}

/// An invite from another server goes through the invitee's push rules as a local one
/// does (`.m.rule.invite_for_me`): it is in their `/notifications`, and their pusher
/// delivers it, named from the stripped state the invite came with.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invite_from_another_server_notifies_the_invitee() {
    let p = pair().await;
    let (alice, alice_token, _) = p.a.register("alice", "a long password").await;
    let gateway = crate::push_delivery::Gateway::start().await;
    let set = crate::push_delivery::pusher(&gateway.url, "alices-phone", None);
    assert_eq!(p.a.post("/_matrix/client/v3/pushers/set", Some(&alice_token), set).await.0, StatusCode::OK);
    let (_, bob_token, _) = p.b.register("bob", "a long password").await;
    // Each room version: the invite's stripped state and event differ between them.
    for version in ["10", "11", "12"] {
        let body = json!({"preset": "private_chat", "name": "Club house", "invite": [alice], "room_version": version});
        let (status, created) = p.b.post("/_matrix/client/v3/createRoom", Some(&bob_token), body).await;
        assert_eq!(status, StatusCode::OK, "{created}");
        let room = created["room_id"].as_str().expect("room id").to_owned();
        let found = eventually("the invite in alice's notifications", || async {
            let (_, list) = p.a.get("/_matrix/client/v3/notifications", Some(&alice_token)).await;
            list["notifications"].as_array().into_iter().flatten().find(|n| n["room_id"] == room.as_str()).cloned()
        })
        .await;
        assert_eq!(found["event"]["type"], "m.room.member", "{found}");
        assert_eq!(found["event"]["content"]["membership"], "invite", "{found}");
        assert_eq!(found["event"]["state_key"], alice.as_str(), "{found}");
        let pushed = gateway.wait_for("of the invite", |b| b["notification"]["room_id"] == room.as_str()).await;
        let n = &pushed["notification"];
        assert_eq!((&n["membership"], &n["user_is_target"]), (&json!("invite"), &json!(true)), "{pushed}");
        assert_eq!(n["room_name"], "Club house", "version {version}: {pushed}");
    }
}

/// The user directory lists a user of another server while this server shares a room with
/// them, with the name their member event gives; once this server has left the room (a
/// public one: anyone could find its members while it was known here), it no longer does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_directory_lists_other_servers_users_while_a_room_is_shared() {
    let p = pair().await;
    let (bob, bob_token, _) = p.b.register("bob", "a long password").await;
    let (_, alice_token, _) = p.a.register("alice", "a long password").await;
    let name_path = format!("/_matrix/client/v3/profile/{}/displayname", encode(&bob));
    assert_eq!(p.b.put(&name_path, Some(&bob_token), json!({"displayname": "Bobby Tables"})).await.0, StatusCode::OK);
    let room = public_room_at_b(&p.b, &bob_token).await;
    let (status, joined) =
        p.a.post(&format!("/_matrix/client/v3/join/{}?via=b.test", encode(&room)), Some(&alice_token), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{joined}");
    let search = |term: &'static str| {
        let (a, token) = (&p.a, alice_token.clone());
        async move {
            let (status, found) =
                a.post("/_matrix/client/v3/user_directory/search", Some(&token), json!({"search_term": term})).await;
            assert_eq!(status, StatusCode::OK, "{found}");
            found["results"].as_array().cloned().unwrap_or_default()
        }
    };
    let found = search("tables").await;
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(
        (found[0]["user_id"].as_str(), found[0]["display_name"].as_str()),
        (Some(bob.as_str()), Some("Bobby Tables"))
    );

    let (status, left) =
        p.a.post(&format!("/_matrix/client/v3/rooms/{}/leave", encode(&room)), Some(&alice_token), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{left}");
    assert_eq!(search("tables").await, Vec::<Value>::new());
    assert_eq!(search("bob").await, Vec::<Value>::new());
}

/// A guest of a.test in a room that lets guests in leaves it when a member of b.test, with
/// the power to, forbids guests there: the change arrives over federation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_access_revoked_from_another_server_removes_this_servers_guests() {
    let p = pair_with(|c| c.allow_guest_access = true).await;
    let (alice, alice_token, _) = p.a.register("alice", "a long password").await;
    let (bob, bob_token, _) = p.b.register("bob", "a long password").await;
    let (_, created) =
        p.a.post("/_matrix/client/v3/createRoom", Some(&alice_token), json!({"preset": "public_chat"})).await;
    let room = created["room_id"].as_str().expect("room id").to_owned();
    let (status, res) =
        p.b.post(&format!("/_matrix/client/v3/join/{}?via=a.test", encode(&room)), Some(&bob_token), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{res}");
    let state = |kind: &str| format!("/_matrix/client/v3/rooms/{}/state/{kind}/", encode(&room));
    let (_, mut levels) = p.a.get(&state("m.room.power_levels"), Some(&alice_token)).await;
    levels["users"][&bob] = json!(50);
    assert_eq!(p.a.put(&state("m.room.power_levels"), Some(&alice_token), levels).await.0, StatusCode::OK);
    let (status, res) =
        p.a.put(&state("m.room.guest_access"), Some(&alice_token), json!({"guest_access": "can_join"})).await;
    assert_eq!(status, StatusCode::OK, "{res}");
    let (status, res) = p.a.post("/_matrix/client/v3/register?kind=guest", None, json!({})).await;
    assert_eq!(status, StatusCode::OK, "{res}");
    let (guest, guest_token) =
        (res["user_id"].as_str().unwrap().to_owned(), res["access_token"].as_str().unwrap().to_owned());
    let (status, res) =
        p.a.post(&format!("/_matrix/client/v3/rooms/{}/join", encode(&room)), Some(&guest_token), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{res}");

    eventually("bob may forbid guests on b.test", || async {
        let (status, _) =
            p.b.put(&state("m.room.guest_access"), Some(&bob_token), json!({"guest_access": "forbidden"})).await;
        (status == StatusCode::OK).then_some(())
    })
    .await;
    let member = format!("/_matrix/client/v3/rooms/{}/state/m.room.member/{}", encode(&room), encode(&guest));
    eventually("the guest gone from the room on a.test", || async {
        let (_, m) = p.a.get(&member, Some(&alice_token)).await;
        (m["membership"] == "leave").then_some(())
    })
    .await;
    let _ = alice;
}

/// A room upgraded on another server: once a user of this server joins its successor,
/// this server's aliases of the old room point at the new one and its directory lists
/// the new one instead (sytest's "/upgrade moves remote aliases to the new room" and
/// "Local and remote users' homeservers remove a room from their public directory on
/// upgrade").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_made_elsewhere_moves_this_servers_aliases_and_listing() {
    let p = pair().await;
    let (_, bob_token, _) = p.b.register("bob", "a long password").await;
    let (_, alice_token, _) = p.a.register("alice", "a long password").await;
    let (_, created) =
        p.b.post("/_matrix/client/v3/createRoom", Some(&bob_token), json!({"preset": "public_chat"})).await;
    let old = created["room_id"].as_str().expect("room id").to_owned();
    let join = |room: &str| format!("/_matrix/client/v3/join/{}?via=b.test", encode(room));
    assert_eq!(p.a.post(&join(&old), Some(&alice_token), json!({})).await.0, StatusCode::OK);
    let alias = "/_matrix/client/v3/directory/room/%23lobby%3Aa.test";
    assert_eq!(p.a.put(alias, Some(&alice_token), json!({"room_id": old})).await.0, StatusCode::OK);
    let listing = format!("/_matrix/client/v3/directory/list/room/{}", encode(&old));
    assert_eq!(p.a.put(&listing, Some(&alice_token), json!({"visibility": "public"})).await.0, StatusCode::OK);

    let upgrade = format!("/_matrix/client/v3/rooms/{}/upgrade", encode(&old));
    let (status, upgraded) = p.b.post(&upgrade, Some(&bob_token), json!({"new_version": "12"})).await;
    assert_eq!(status, StatusCode::OK, "{upgraded}");
    let new = upgraded["replacement_room"].as_str().expect("new room").to_owned();
    // The tombstone reaches a.test; alice follows it.
    eventually("the tombstone on a.test", || async {
        let path = format!("/_matrix/client/v3/rooms/{}/state/m.room.tombstone/", encode(&old));
        let (status, _) = p.a.get(&path, Some(&alice_token)).await;
        (status == StatusCode::OK).then_some(())
    })
    .await;
    assert_eq!(p.a.post(&join(&new), Some(&alice_token), json!({})).await.0, StatusCode::OK);
    let (_, found) = p.a.get(alias, Some(&alice_token)).await;
    assert_eq!(found["room_id"], new.as_str(), "{found}");
    let (_, listed) = p.a.get("/_matrix/client/v3/publicRooms", Some(&alice_token)).await;
    let ids: Vec<&str> =
        listed["chunk"].as_array().expect("chunk").iter().filter_map(|r| r["room_id"].as_str()).collect();
    assert!(ids.contains(&new.as_str()) && !ids.contains(&old.as_str()), "{listed}");
}
