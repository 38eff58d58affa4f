//! Rooms across two Hearths (`a.test` and `b.test`, over real TLS on loopback, found
//! through SRV records; see `federation.rs`): a user of one joins a room of the other by
//! alias and by room id with `via`, messages go both ways through the sender's
//! transactions, typing notices and receipts follow, a leave reaches the other side, and
//! a rejoin works.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::{common::TestServer, federation::pair};

/// How long a test waits for something to arrive from the other server before failing.
const ARRIVAL: Duration = Duration::from_secs(30);

/// Polls `check` until it gives `Some`, or fails naming `what` after [`ARRIVAL`].
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
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

/// A user of a.test joins a room of b.test by its alias; messages, typing and receipts go
/// both ways; a leave reaches b.test, and a rejoin works.
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
