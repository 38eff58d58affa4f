//! Pushers and delivery to a push gateway: a gateway on loopback inside the test records
//! every body and answers as the test asks (accept, reject the pushkey, fail).

use std::{sync::Arc, time::Duration};

use axum::{extract::State, routing::post, Json, Router};
use hearth::store::Backend;
use parking_lot::Mutex;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::{
    both_engines,
    common::{assert_error, TestServer},
};

/// How the gateway answers.
#[derive(Clone, Copy, PartialEq)]
enum Answer {
    Accept,
    Reject,
    Fail,
    /// Hold every request until `release` has a permit, then accept.
    Stall,
}

#[derive(Clone)]
pub(crate) struct Gateway {
    bodies: Arc<Mutex<Vec<Value>>>,
    /// Event ids of the pushes answered with a failure.
    failed: Arc<Mutex<Vec<String>>>,
    answer: Arc<Mutex<Answer>>,
    /// Stalled requests wait for a permit (given back at once): one permit releases all.
    release: Arc<tokio::sync::Semaphore>,
    pub(crate) url: String,
}

impl Gateway {
    pub(crate) async fn start() -> Gateway {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let gw = Gateway {
            bodies: Arc::default(),
            failed: Arc::default(),
            answer: Arc::new(Mutex::new(Answer::Accept)),
            release: Arc::new(tokio::sync::Semaphore::new(0)),
            url: format!("http://{addr}/_matrix/push/v1/notify"),
        };
        async fn notify(State(gw): State<Gateway>, Json(body): Json<Value>) -> (StatusCode, Json<Value>) {
            let answer = *gw.answer.lock();
            if answer == Answer::Stall {
                let _ = gw.release.acquire().await;
            }
            if answer == Answer::Fail {
                let event = body["notification"]["event_id"].as_str().unwrap_or_default().to_owned();
                gw.failed.lock().push(event);
                return (StatusCode::INTERNAL_SERVER_ERROR, Json(json!({})));
            }
            let pushkey = body["notification"]["devices"][0]["pushkey"].clone();
            gw.bodies.lock().push(body);
            let rejected = if answer == Answer::Reject { vec![pushkey] } else { vec![] };
            (StatusCode::OK, Json(json!({"rejected": rejected})))
        }
        let app = Router::new().route("/_matrix/push/v1/notify", post(notify)).with_state(gw.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        gw
    }

    /// Waits until a body matching `pred` arrived; returns it.
    pub(crate) async fn wait_for(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        for _ in 0..200 {
            if let Some(found) = self.bodies.lock().iter().find(|b| pred(b)).cloned() {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no push {what} arrived; got {:?}", self.bodies.lock());
    }
}

pub(crate) fn pusher(url: &str, pushkey: &str, format: Option<&str>) -> Value {
    let mut data = json!({"url": url, "secret": "kept-by-the-app"});
    if let Some(f) = format {
        data["format"] = json!(f);
    }
    json!({
        "kind": "http", "app_id": "im.hearth.test", "pushkey": pushkey,
        "app_display_name": "Test", "device_display_name": "Phone", "lang": "en",
        "profile_tag": "tag", "data": data,
    })
}

/// (server, gateway, alice token, bob token, room): alice and bob share a direct chat;
/// the test server may reach loopback.
async fn setup(b: Backend) -> (TestServer, Gateway, String, String, String) {
    let s = TestServer::start_with(b, |c| c.ip_range_allowlist = vec!["127.0.0.0/8".parse().unwrap()]).await;
    let (s, at, _, bt, room) = crate::push::direct_chat_on(s).await;
    (s, Gateway::start().await, at, bt, room)
}

async fn say(s: &TestServer, token: &str, room: &str, txn: &str, body: &str) -> String {
    let path = format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/{txn}");
    let (status, res) = s.put(&path, Some(token), json!({"msgtype": "m.text", "body": body})).await;
    assert_eq!(status, StatusCode::OK, "{res}");
    res["event_id"].as_str().unwrap().to_owned()
}

/// Registering, listing and removing pushers, and what is refused.
async fn pushers_are_registered_and_checked(b: Backend) {
    let s = TestServer::start(b).await;
    let (_, at, _) = s.register("alice", "pw-alice-1").await;
    let set = "/_matrix/client/v3/pushers/set";
    let url = "https://push.example.org/_matrix/push/v1/notify";
    assert_eq!(s.post(set, Some(&at), pusher(url, "key1", None)).await.0, StatusCode::OK);
    let (_, list) = s.get("/_matrix/client/v3/pushers", Some(&at)).await;
    let p = &list["pushers"][0];
    assert_eq!((p["pushkey"].as_str(), p["data"]["url"].as_str()), (Some("key1"), Some(url)), "{list}");
    assert_eq!(p["profile_tag"], "tag");
    assert!(p.get("delivered").is_none() && p.get("device_id").is_none(), "internal fields leak: {p}");
    for bad in [
        pusher("https://push.example.org/somewhere/else", "k", None),
        pusher("ftp://push.example.org/_matrix/push/v1/notify", "k", None),
        json!({"kind": "email", "app_id": "m.email", "pushkey": "a@b.c", "app_display_name": "x",
               "device_display_name": "x", "lang": "en", "data": {}}),
        pusher(url, &"k".repeat(600), None),
    ] {
        assert_error(&s.post(set, Some(&at), bad).await, 400, "M_INVALID_PARAM");
    }
    let gone = json!({"kind": null, "app_id": "im.hearth.test", "pushkey": "key1"});
    assert_eq!(s.post(set, Some(&at), gone).await.0, StatusCode::OK);
    let (_, list) = s.get("/_matrix/client/v3/pushers", Some(&at)).await;
    assert_eq!(list["pushers"], json!([]));
    // A device's pushers go when it logs out.
    let (t2, _) = s.login("alice", "pw-alice-1").await;
    assert_eq!(s.post(set, Some(&t2), pusher(url, "key2", None)).await.0, StatusCode::OK);
    assert_eq!(s.post("/_matrix/client/v3/logout", Some(&t2), json!({})).await.0, StatusCode::OK);
    let (_, list) = s.get("/_matrix/client/v3/pushers", Some(&at)).await;
    assert_eq!(list["pushers"], json!([]));
}

/// A message reaches the gateway in the full format with the right counts, devices and
/// priority; reading it sends a badge update to zero; the sender is never pushed; the
/// pusher's `url` is not echoed back.
async fn a_message_rings_and_reading_clears_the_badge(b: Backend) {
    let (s, gw, at, bt, room) = setup(b).await;
    assert_eq!(
        s.post("/_matrix/client/v3/pushers/set", Some(&at), pusher(&gw.url, "alice-phone", None)).await.0,
        StatusCode::OK
    );
    let event = say(&s, &bt, &room, "m1", "ring ring").await;
    let body = gw.wait_for("for the message", |b| b["notification"]["event_id"] == event.as_str()).await;
    let n = &body["notification"];
    assert_eq!(n["type"], "m.room.message");
    assert_eq!(n["content"]["body"], "ring ring");
    assert_eq!(n["room_id"], room.as_str());
    assert_eq!(n["counts"]["unread"], 1, "{body}");
    assert_eq!(n["prio"], "high", "a direct message makes a sound: {body}");
    let device = &n["devices"][0];
    assert_eq!((device["app_id"].as_str(), device["pushkey"].as_str()), (Some("im.hearth.test"), Some("alice-phone")));
    assert_eq!(device["data"], json!({"secret": "kept-by-the-app"}), "url must not be echoed: {body}");
    assert!(device["pushkey_ts"].is_u64() && device["tweaks"]["sound"].is_string(), "{body}");

    let receipt = format!("/_matrix/client/v3/rooms/{room}/receipt/m.read/{event}");
    assert_eq!(s.post(&receipt, Some(&at), json!({})).await.0, StatusCode::OK);
    gw.wait_for("with the badge at zero", |b| b["notification"]["counts"]["unread"] == 0).await;

    // Alice's own message pushes nothing to her.
    let before = gw.bodies.lock().len();
    say(&s, &at, &room, "m2", "from me").await;
    let bob_says = say(&s, &bt, &room, "m3", "from bob").await;
    gw.wait_for("for bob's second message", |b| b["notification"]["event_id"] == bob_says.as_str()).await;
    let bodies = gw.bodies.lock().clone();
    assert!(bodies[before..].iter().all(|b| b["notification"]["content"]["body"] != "from me"), "{bodies:?}");

    // /notifications lists what was pushed, newest first, with the read flag.
    let (status, list) = s.get("/_matrix/client/v3/notifications", Some(&at)).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let notifs = list["notifications"].as_array().unwrap();
    assert_eq!(notifs[0]["event"]["event_id"], bob_says.as_str());
    assert_eq!(notifs[0]["read"], false);
    assert_eq!(notifs.last().unwrap()["event"]["event_id"], event.as_str());
    assert_eq!(notifs.last().unwrap()["read"], true);
    assert!(notifs.iter().all(|n| n["room_id"] == room.as_str() && n["ts"].is_u64() && n["actions"].is_array()));
}

/// `event_id_only` (Element's format) carries ids and counts, no content; a muted room
/// pushes nothing; a rejected pushkey removes the pusher.
async fn formats_muted_rooms_and_rejections(b: Backend) {
    let (s, gw, at, bt, room) = setup(b).await;
    let set = "/_matrix/client/v3/pushers/set";
    assert_eq!(s.post(set, Some(&at), pusher(&gw.url, "ids-only", Some("event_id_only"))).await.0, StatusCode::OK);
    let event = say(&s, &bt, &room, "e1", "secret text").await;
    let body = gw.wait_for("in event_id_only", |b| b["notification"]["event_id"] == event.as_str()).await;
    let n = body["notification"].as_object().unwrap();
    assert!(!n.contains_key("content") && !n.contains_key("sender") && !n.contains_key("type"), "{body}");
    assert_eq!(n["room_id"], room.as_str());

    let mute = format!("/_matrix/client/v3/pushrules/global/room/{room}");
    assert_eq!(s.put(&mute, Some(&at), json!({"actions": ["dont_notify"]})).await.0, StatusCode::OK);
    let muted = say(&s, &bt, &room, "e2", "hush").await;
    // Rules count as they are when the event is evaluated: unmute only once it has been.
    let muted_id = ruma::OwnedEventId::try_from(muted.as_str()).unwrap();
    let at_pos = s.services().rooms.event_meta(&muted_id).unwrap().unwrap().stream;
    for _ in 0..300 {
        if s.services().push_sender.notifications().position().unwrap() >= at_pos {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(s.request(reqwest::Method::DELETE, &mute, Some(&at), None).await.0, StatusCode::OK);
    let after = say(&s, &bt, &room, "e3", "loud again").await;
    gw.wait_for("after unmuting", |b| b["notification"]["event_id"] == after.as_str()).await;
    assert!(!gw.bodies.lock().iter().any(|b| b["notification"]["event_id"] == muted.as_str()), "a muted room rang");

    *gw.answer.lock() = Answer::Reject;
    let rejected = say(&s, &bt, &room, "e4", "to a gone phone").await;
    gw.wait_for("to the rejected key", |b| b["notification"]["event_id"] == rejected.as_str()).await;
    for _ in 0..100 {
        let (_, list) = s.get("/_matrix/client/v3/pushers", Some(&at)).await;
        if list["pushers"] == json!([]) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("a rejected pushkey kept its pusher");
}

/// A gateway that fails gets the backlog in order once it answers again, also across a
/// restart of Hearth, and each notification once.
async fn a_failing_gateway_gets_the_backlog_in_order(b: Backend) {
    let (mut s, gw, at, bt, room) = setup(b).await;
    assert_eq!(s.post("/_matrix/client/v3/pushers/set", Some(&at), pusher(&gw.url, "k", None)).await.0, StatusCode::OK);
    *gw.answer.lock() = Answer::Fail;
    let mut sent = Vec::new();
    for i in 0..3 {
        sent.push(say(&s, &bt, &room, &format!("b{i}"), &format!("backlog {i}")).await);
    }
    s.restart().await;
    *gw.answer.lock() = Answer::Accept;
    let last = sent.last().unwrap().clone();
    gw.wait_for("for the last of the backlog", |b| b["notification"]["event_id"] == last.as_str()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got: Vec<String> =
        gw.bodies.lock().iter().filter_map(|b| b["notification"]["event_id"].as_str().map(str::to_owned)).collect();
    assert_eq!(got, sent, "in order, each once");
}

/// A notification older than a day is not sent when the gateway comes back (a phone must
/// not ring for yesterday); newer ones still are.
async fn day_old_notifications_are_skipped(b: Backend) {
    use hearth::push::notifications::{Row, NOTIFICATIONS};
    let (s, gw, at, bt, room) = setup(b).await;
    assert_eq!(s.post("/_matrix/client/v3/pushers/set", Some(&at), pusher(&gw.url, "k", None)).await.0, StatusCode::OK);
    *gw.answer.lock() = Answer::Fail;
    let old = say(&s, &bt, &room, "o1", "yesterday").await;
    // Age the logged notification by two days, as if the gateway had been down since.
    let store = &s.services().store;
    let alice = s.get("/_matrix/client/v3/account/whoami", Some(&at)).await.1["user_id"].as_str().unwrap().to_owned();
    let alice_id = ruma::UserId::parse(alice.as_str()).unwrap();
    let mut found = None;
    for _ in 0..100 {
        let log = s.services().push_sender.notifications().after(&alice_id, 0, 100).expect("read");
        found = log.into_iter().find(|(_, n)| n.event_id.as_str() == old);
        if found.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (pos, mut n) = found.expect("the notification was logged");
    assert!(matches!(NOTIFICATIONS.get(store, (alice.as_str(), pos)).expect("get"), Some(Row::Compact { .. })));
    // Written back as a row from before rows were compact (JSON, with its event and room):
    // such rows are still read and delivered.
    n.ts -= 2 * 24 * 60 * 60 * 1000;
    let mut batch = hearth::store::Batch::new();
    NOTIFICATIONS.put(&mut batch, (alice.as_str(), pos), &Row::Whole(n));
    store.write(batch).expect("write");
    // Today's message is tried (and fails) only once the pusher has moved past yesterday's,
    // read again after the change: then the gateway may answer.
    let new = say(&s, &bt, &room, "o2", "today").await;
    for _ in 0..400 {
        if gw.failed.lock().contains(&new) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gw.failed.lock().contains(&new), "today's message was never tried");
    *gw.answer.lock() = Answer::Accept;
    gw.wait_for("for today's message", |b| b["notification"]["event_id"] == new.as_str()).await;
    assert!(!gw.bodies.lock().iter().any(|b| b["notification"]["event_id"] == old.as_str()), "yesterday's rang");
}

/// A gateway that does not answer delays neither sending nor /sync: both go on while a
/// push hangs, and the pushes arrive in order once it answers.
async fn a_stalled_gateway_holds_up_nothing_else(b: Backend) {
    let (s, gw, at, bt, room) = setup(b).await;
    assert_eq!(s.post("/_matrix/client/v3/pushers/set", Some(&at), pusher(&gw.url, "k", None)).await.0, StatusCode::OK);
    *gw.answer.lock() = Answer::Stall;
    let since = s.get("/_matrix/client/v3/sync", Some(&at)).await.1["next_batch"].as_str().unwrap().to_owned();
    let first = say(&s, &bt, &room, "s1", "first").await;
    let second = say(&s, &bt, &room, "s2", "second").await;
    let (_, sync) = s.get(&format!("/_matrix/client/v3/sync?since={since}&timeout=5000"), Some(&at)).await;
    let events = sync["rooms"]["join"][&room]["timeline"]["events"].as_array().cloned().unwrap_or_default();
    assert!(events.iter().any(|e| e["event_id"] == second.as_str()), "sync waited for the gateway: {sync}");
    *gw.answer.lock() = Answer::Accept;
    gw.release.add_permits(1);
    gw.wait_for("for the second message", |b| b["notification"]["event_id"] == second.as_str()).await;
    let got: Vec<String> =
        gw.bodies.lock().iter().filter_map(|b| b["notification"]["event_id"].as_str().map(str::to_owned)).collect();
    assert_eq!(got, vec![first, second]);
}

/// `counts.missed_calls`: the call invites that rang and are not read yet.
async fn missed_calls_are_counted(b: Backend) {
    let (s, gw, at, bt, room) = setup(b).await;
    assert_eq!(s.post("/_matrix/client/v3/pushers/set", Some(&at), pusher(&gw.url, "k", None)).await.0, StatusCode::OK);
    let invite = json!({"call_id": "c1", "version": "1", "lifetime": 60000,
        "offer": {"type": "offer", "sdp": "v=0"}});
    let (status, call) =
        s.put(&format!("/_matrix/client/v3/rooms/{room}/send/m.call.invite/c1"), Some(&bt), invite).await;
    assert_eq!(status, StatusCode::OK, "{call}");
    let call = call["event_id"].as_str().unwrap().to_owned();
    let n = gw.wait_for("for the call", |b| b["notification"]["event_id"] == call.as_str()).await;
    assert_eq!(n["notification"]["counts"]["missed_calls"], 1, "{n}");
    s.post(&format!("/_matrix/client/v3/rooms/{room}/receipt/m.read/{call}"), Some(&at), json!({})).await;
    let after = say(&s, &bt, &room, "m1", "called you").await;
    let n = gw.wait_for("after reading", |b| b["notification"]["event_id"] == after.as_str()).await;
    assert_eq!(n["notification"]["counts"]["missed_calls"], 0, "{n}");
}

both_engines!(
    a_stalled_gateway_holds_up_nothing_else,
    missed_calls_are_counted,
    day_old_notifications_are_skipped,
    pushers_are_registered_and_checked,
    a_message_rings_and_reading_clears_the_badge,
    formats_muted_rooms_and_rejections,
    a_failing_gateway_gets_the_backlog_in_order,
);

/// Every notification of a user, newest first, through `/notifications` paging.
async fn all_notifications(s: &TestServer, token: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut from = String::new();
    loop {
        let (status, page) = s.get(&format!("/_matrix/client/v3/notifications?limit=100{from}"), Some(token)).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        out.extend(page["notifications"].as_array().unwrap().iter().cloned());
        match page["next_token"].as_str() {
            Some(next) => from = format!("&from={next}"),
            None => return out,
        }
    }
}

/// The log keeps each user's newest thousand notifications (give or take the trim's
/// slack of a hundred): the oldest go as new ones come, the newest are all there.
async fn the_log_keeps_the_newest_thousand(b: Backend) {
    let (s, at, _, bt, room) = crate::push::direct_chat(b).await;
    let mut sent = Vec::new();
    for i in 0..1250 {
        sent.push(say(&s, &bt, &room, &format!("t{i}"), &format!("message {i}")).await);
    }
    let last = ruma::OwnedEventId::try_from(sent.last().unwrap().as_str()).unwrap();
    let at_pos = s.services().rooms.event_meta(&last).unwrap().unwrap().stream;
    for _ in 0..1500 {
        if s.services().push_sender.notifications().position().unwrap() >= at_pos {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let kept: Vec<String> =
        all_notifications(&s, &at).await.iter().map(|n| n["event"]["event_id"].as_str().unwrap().to_owned()).collect();
    assert!((1000..=1100).contains(&kept.len()), "{} kept", kept.len());
    let newest: Vec<String> = sent.iter().rev().take(kept.len()).cloned().collect();
    assert_eq!(kept, newest, "the newest, newest first");
}

both_engines!(the_log_keeps_the_newest_thousand);
