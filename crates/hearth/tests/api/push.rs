//! Push rules and the unread counts they drive in /sync.

use hearth::store::Backend;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::{both_engines, common::TestServer};

async fn unread(s: &TestServer, token: &str, room: &str) -> (u64, u64) {
    let (_, res) = s.get("/_matrix/client/v3/sync", Some(token)).await;
    let n = &res["rooms"]["join"][room]["unread_notifications"];
    (n["notification_count"].as_u64().unwrap_or(0), n["highlight_count"].as_u64().unwrap_or(0))
}

/// A server where Alice and Bob (both joined) share a direct chat:
/// (server, Alice's token, Bob's id, Bob's token, room id).
pub(crate) async fn direct_chat(b: Backend) -> (TestServer, String, String, String, String) {
    direct_chat_on(TestServer::start(b).await).await
}

/// [`direct_chat`] on a server started as the caller wants.
pub(crate) async fn direct_chat_on(s: TestServer) -> (TestServer, String, String, String, String) {
    let (_, at, _) = s.register("alice", "pw-alice-1").await;
    let (bob, bt, _) = s.register("bob", "pw-bob-1").await;
    let (_, res) =
        s.post("/_matrix/client/v3/createRoom", Some(&at), json!({"invite": [bob], "is_direct": true})).await;
    let room = res["room_id"].as_str().unwrap().to_owned();
    s.post(&format!("/_matrix/client/v3/rooms/{room}/join"), Some(&bt), json!({})).await;
    (s, at, bob, bt, room)
}

async fn default_rules_and_edits(b: Backend) {
    let s = TestServer::start(b).await;
    let (_, at, _) = s.register("alice", "pw-alice-1").await;
    let (status, rules) = s.get("/_matrix/client/v3/pushrules/", Some(&at)).await;
    assert_eq!(status, StatusCode::OK);
    let overrides: Vec<&str> =
        rules["global"]["override"].as_array().unwrap().iter().map(|r| r["rule_id"].as_str().unwrap()).collect();
    assert!(overrides.contains(&".m.rule.master") && overrides.contains(&".m.rule.suppress_notices"), "{overrides:?}");

    // The first sync carries them too.
    let (_, first) = s.get("/_matrix/client/v3/sync", Some(&at)).await;
    assert!(first["account_data"]["events"].as_array().unwrap().iter().any(|e| e["type"] == "m.push_rules"), "{first}");

    let rule = "/_matrix/client/v3/pushrules/global/content/cheese";
    let (status, res) = s.put(rule, Some(&at), json!({"pattern": "cheese", "actions": ["notify"]})).await;
    assert_eq!(status, StatusCode::OK, "{res}");
    let (_, got) = s.get(rule, Some(&at)).await;
    assert_eq!(got["pattern"], "cheese");
    assert_eq!(s.put(&format!("{rule}/enabled"), Some(&at), json!({"enabled": false})).await.0, StatusCode::OK);
    assert_eq!(s.get(&format!("{rule}/enabled"), Some(&at)).await.1["enabled"], false);
    assert_eq!(s.put(&format!("{rule}/actions"), Some(&at), json!({"actions": []})).await.0, StatusCode::OK);
    assert_eq!(s.get(&format!("{rule}/actions"), Some(&at)).await.1["actions"], json!([]));
    assert_eq!(s.request(Method::DELETE, rule, Some(&at), None).await.0, StatusCode::OK);
    assert_eq!(s.get(rule, Some(&at)).await.0, StatusCode::NOT_FOUND);
    // Server defaults cannot be deleted.
    let (status, _) =
        s.request(Method::DELETE, "/_matrix/client/v3/pushrules/global/override/.m.rule.master", Some(&at), None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // Toggling a default works.
    let master = "/_matrix/client/v3/pushrules/global/override/.m.rule.master/enabled";
    assert_eq!(s.put(master, Some(&at), json!({"enabled": true})).await.0, StatusCode::OK);
    assert_eq!(s.get(master, Some(&at)).await.1["enabled"], true);
}

async fn unread_counts_follow_messages_mentions_and_receipts(b: Backend) {
    let (s, at, bob, bt, room) = direct_chat(b).await;
    assert_eq!(unread(&s, &bt, &room).await, (0, 0));

    let mut last = Value::Null;
    for (i, body) in ["hello", "are you there?", "hey bob, look"].iter().enumerate() {
        let mut content = json!({"msgtype": "m.text", "body": body});
        if body.contains("bob") {
            // An intentional mention, as current clients send it.
            content["m.mentions"] = json!({"user_ids": [bob]});
        }
        let (_, r) =
            s.put(&format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/{i}"), Some(&at), content).await;
        last = r["event_id"].clone();
    }
    // Three messages in a one-to-one room notify; the one mentioning Bob highlights.
    assert_eq!(unread(&s, &bt, &room).await, (3, 1));
    // Alice's own messages never count for her.
    assert_eq!(unread(&s, &at, &room).await, (0, 0));

    let path = format!("/_matrix/client/v3/rooms/{room}/receipt/m.read/{}", last.as_str().unwrap());
    assert_eq!(s.post(&path, Some(&bt), json!({})).await.0, StatusCode::OK);
    assert_eq!(unread(&s, &bt, &room).await, (0, 0));

    // A room rule that does not notify silences the room.
    let (status, res) =
        s.put(&format!("/_matrix/client/v3/pushrules/global/room/{room}"), Some(&bt), json!({"actions": []})).await;
    assert_eq!(status, StatusCode::OK, "{res}");
    s.put(
        &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/9"),
        Some(&at),
        json!({"msgtype": "m.text", "body": "quiet"}),
    )
    .await;
    assert_eq!(unread(&s, &bt, &room).await.0, 0);
}

/// A mention by name in the body, from a client that sends no `m.mentions` (Nheko 0.11,
/// bots), still highlights (Synapse's legacy mention rules); one that sends `m.mentions`
/// is judged by those alone.
async fn legacy_mentions_highlight(b: Backend) {
    let (s, at, _, bt, room) = direct_chat(b).await;
    let send = |txn: &'static str, content: Value| {
        let path = format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/{txn}");
        let (s, at) = (&s, &at);
        async move { s.put(&path, Some(at), content).await }
    };
    send("l1", json!({"msgtype": "m.text", "body": "bob: lunch?"})).await;
    assert_eq!(unread(&s, &bt, &room).await, (1, 1));
    send("l2", json!({"msgtype": "m.text", "body": "bob again", "m.mentions": {}})).await;
    assert_eq!(unread(&s, &bt, &room).await, (2, 1), "m.mentions without bob: no highlight");
    let (_, rules) = s.get("/_matrix/client/v3/pushrules/global/content/.m.rule.contains_user_name", Some(&bt)).await;
    assert_eq!(rules["pattern"], "bob", "{rules}");
}

both_engines!(default_rules_and_edits, unread_counts_follow_messages_mentions_and_receipts, legacy_mentions_highlight);

async fn thread_notifications_are_counted_per_thread(b: Backend) {
    let (s, at, bob, bt, room) = direct_chat(b).await;
    let (_, root) = s
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/root"),
            Some(&at),
            json!({"msgtype": "m.text", "body": "root"}),
        )
        .await;
    let root = root["event_id"].as_str().unwrap().to_owned();
    for i in 0..2 {
        let content = json!({"msgtype": "m.text", "body": format!("in thread {i}"), "m.relates_to": {"rel_type": "m.thread", "event_id": root}});
        s.put(&format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/t{i}"), Some(&at), content).await;
    }
    let filter = "%7B%22room%22%3A%7B%22timeline%22%3A%7B%22unread_thread_notifications%22%3Atrue%7D%7D%7D";
    let (_, res) = s.get(&format!("/_matrix/client/v3/sync?filter={filter}"), Some(&bt)).await;
    let joined = &res["rooms"]["join"][&room];
    assert_eq!(joined["unread_notifications"]["notification_count"], 1, "{joined}");
    assert_eq!(joined["unread_thread_notifications"][&root]["notification_count"], 2, "{joined}");
    // Without the filter flag everything counts in the room's total.
    assert_eq!(unread(&s, &bt, &room).await.0, 3);

    // Threaded receipts (MSC3771): one in the thread clears the thread alone, one on the
    // main timeline clears the main timeline alone, and an unthreaded one clears both.
    let main_message = s
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/after"),
            Some(&at),
            json!({"msgtype": "m.text", "body": "after the thread"}),
        )
        .await
        .1["event_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, threads) = s.get(&format!("/_matrix/client/v1/rooms/{room}/threads"), Some(&bt)).await;
    let latest = threads["chunk"][0]["unsigned"]["m.relations"]["m.thread"]["latest_event"]["event_id"]
        .as_str()
        .unwrap_or_else(|| panic!("{threads}"))
        .to_owned();
    let counts = || async {
        let (_, res) = s.get(&format!("/_matrix/client/v3/sync?filter={filter}"), Some(&bt)).await;
        let joined = &res["rooms"]["join"][&room];
        let thread = joined["unread_thread_notifications"].get(&root).map(|t| t["notification_count"].clone());
        (joined["unread_notifications"]["notification_count"].as_u64(), thread)
    };
    assert_eq!(counts().await, (Some(2), Some(json!(2))));
    let receipt = |event: &str, thread: &str| {
        let path = format!("/_matrix/client/v3/rooms/{room}/receipt/m.read/{event}");
        let body = if thread.is_empty() { json!({}) } else { json!({"thread_id": thread}) };
        let (s, bt) = (&s, &bt);
        async move { assert_eq!(s.post(&path, Some(bt), body).await.0, StatusCode::OK) }
    };
    receipt(&latest, &root).await;
    assert_eq!(counts().await, (Some(2), None), "the thread's receipt leaves the main timeline unread");
    receipt(&root, "main").await;
    assert_eq!(counts().await, (Some(1), None), "read up to the root on the main timeline");
    receipt(&main_message, "main").await;
    assert_eq!(counts().await, (Some(0), None));

    // A new reply in the thread is unread again until an unthreaded receipt covers it.
    let content =
        json!({"msgtype": "m.text", "body": "late reply", "m.relates_to": {"rel_type": "m.thread", "event_id": root}});
    let (_, late) = s.put(&format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/t9"), Some(&at), content).await;
    assert_eq!(counts().await, (Some(0), Some(json!(1))));
    receipt(late["event_id"].as_str().unwrap(), "").await;
    assert_eq!(counts().await, (Some(0), None));

    // The receipt reaches the sender with its thread id; a thread id that is neither
    // "main" nor an event id is refused.
    let (_, res) = s.get("/_matrix/client/v3/sync", Some(&at)).await;
    let receipts = res["rooms"]["join"][&room]["ephemeral"]["events"]
        .as_array()
        .and_then(|e| e.iter().find(|e| e["type"] == "m.receipt"))
        .unwrap_or_else(|| panic!("{res}"))
        .clone();
    assert_eq!(receipts["content"][&latest]["m.read"][&bob]["thread_id"], json!(root), "{receipts}");
    let path = format!("/_matrix/client/v3/rooms/{room}/receipt/m.read/{main_message}");
    let (status, err) = s.post(&path, Some(&bt), json!({"thread_id": "sideways"})).await;
    assert_eq!((status, err["errcode"].as_str()), (StatusCode::BAD_REQUEST, Some("M_INVALID_PARAM")), "{err}");
    let path = format!("/_matrix/client/v3/rooms/{room}/receipt/m.fully_read/{main_message}");
    let (status, err) = s.post(&path, Some(&bt), json!({"thread_id": "main"})).await;
    assert_eq!((status, err["errcode"].as_str()), (StatusCode::BAD_REQUEST, Some("M_INVALID_PARAM")), "{err}");
}

both_engines!(thread_notifications_are_counted_per_thread);

/// What was said before a user joined is not unread for them (Synapse notifies the members
/// of an event's time), in the main timeline and in threads alike; what comes after is.
async fn history_before_a_join_is_not_unread(b: Backend) {
    let s = TestServer::start(b).await;
    let (_, at, _) = s.register("alice", "pw-alice-1").await;
    let (_, bt, _) = s.register("bob", "pw-bob-1").await;
    let (_, res) = s.post("/_matrix/client/v3/createRoom", Some(&at), json!({"preset": "public_chat"})).await;
    let room = res["room_id"].as_str().unwrap().to_owned();
    let send = |txn: String, content: Value| {
        let path = format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/{txn}");
        let (s, at) = (&s, &at);
        async move { s.put(&path, Some(at), content).await.1["event_id"].as_str().unwrap().to_owned() }
    };
    let root = send("root".into(), json!({"msgtype": "m.text", "body": "bob, look"})).await;
    for i in 0..5 {
        let thread = json!({"rel_type": "m.thread", "event_id": root});
        send(format!("b{i}"), json!({"msgtype": "m.text", "body": format!("before {i}"), "m.relates_to": thread}))
            .await;
    }
    s.post(&format!("/_matrix/client/v3/join/{room}"), Some(&bt), json!({})).await;
    let filter = "%7B%22room%22%3A%7B%22timeline%22%3A%7B%22unread_thread_notifications%22%3Atrue%7D%7D%7D";
    let (_, res) = s.get(&format!("/_matrix/client/v3/sync?filter={filter}"), Some(&bt)).await;
    let joined = &res["rooms"]["join"][&room];
    assert_eq!(joined["unread_notifications"]["notification_count"], 0, "{joined}");
    assert!(joined["unread_thread_notifications"].get(&root).is_none(), "{joined}");
    assert_eq!(unread(&s, &bt, &room).await, (0, 0));

    send("after".into(), json!({"msgtype": "m.text", "body": "welcome bob"})).await;
    let thread = json!({"rel_type": "m.thread", "event_id": root});
    send("t-after".into(), json!({"msgtype": "m.text", "body": "and here", "m.relates_to": thread})).await;
    let (_, res) = s.get(&format!("/_matrix/client/v3/sync?filter={filter}"), Some(&bt)).await;
    let joined = &res["rooms"]["join"][&room];
    assert_eq!(joined["unread_notifications"]["highlight_count"], 1, "{joined}");
    assert_eq!(joined["unread_thread_notifications"][&root]["notification_count"], 1, "{joined}");
    assert_eq!(unread(&s, &bt, &room).await, (2, 1));
}

both_engines!(history_before_a_join_is_not_unread);

/// The running tally is carried from sync to sync: each incremental sync adds only what is
/// new, the user's own message and a private receipt both clear it, and a push rule change
/// starts it over.
async fn unread_counts_carry_forward_between_syncs(b: Backend) {
    let (s, at, _, bt, room) = direct_chat(b).await;
    let (_, first) = s.get("/_matrix/client/v3/sync", Some(&bt)).await;
    let mut since = first["next_batch"].as_str().unwrap().to_owned();
    let mut n = 0;
    let mut send_path = || {
        n += 1;
        format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/c{n}")
    };
    let counts_after = |res: &Value| {
        let n = &res["rooms"]["join"][&room]["unread_notifications"];
        (n["notification_count"].as_u64(), n["highlight_count"].as_u64())
    };
    let mut last_event = String::new();
    for expected in 1..=3u64 {
        let body = format!("message {expected}");
        let (_, r) = s.put(&send_path(), Some(&at), json!({"msgtype": "m.text", "body": body})).await;
        last_event = r["event_id"].as_str().unwrap().to_owned();
        let (_, res) = s.get(&format!("/_matrix/client/v3/sync?since={since}"), Some(&bt)).await;
        assert_eq!(counts_after(&res), (Some(expected), Some(0)), "{res}");
        since = res["next_batch"].as_str().unwrap().to_owned();
    }
    // A repeated initial sync reports the same tally.
    assert_eq!(unread(&s, &bt, &room).await, (3, 0));

    // Bob answering counts as having read what came before.
    s.put(&send_path(), Some(&bt), json!({"msgtype": "m.text", "body": "reply"})).await;
    let (_, r) = s.put(&send_path(), Some(&at), json!({"msgtype": "m.text", "body": "one more"})).await;
    last_event = r["event_id"].as_str().map(str::to_owned).unwrap_or(last_event);
    let (_, res) = s.get(&format!("/_matrix/client/v3/sync?since={since}"), Some(&bt)).await;
    assert_eq!(counts_after(&res), (Some(1), Some(0)), "{res}");

    // A private read receipt clears the count as a public one does.
    let path = format!("/_matrix/client/v3/rooms/{room}/receipt/m.read.private/{last_event}");
    assert_eq!(s.post(&path, Some(&bt), json!({})).await.0, StatusCode::OK);
    assert_eq!(unread(&s, &bt, &room).await, (0, 0));

    // A keyword rule added later highlights new messages that match it.
    let rule = "/_matrix/client/v3/pushrules/global/content/cheese";
    let body = json!({"pattern": "cheese", "actions": ["notify", {"set_tweak": "highlight"}]});
    assert_eq!(s.put(rule, Some(&bt), body).await.0, StatusCode::OK);
    s.put(&send_path(), Some(&at), json!({"msgtype": "m.text", "body": "cheese please"})).await;
    assert_eq!(unread(&s, &bt, &room).await, (1, 1));
}

both_engines!(unread_counts_carry_forward_between_syncs);

/// Counts made after a restart read a backlog from the timeline's rows: the events cut down
/// to what the default rules read. A user whose rules read more (here `content.format`) is
/// counted from the stored events instead, and a redaction cuts the row's view again.
async fn unread_backlog_after_restart_reads_rows_or_events(b: Backend) {
    let mut s = TestServer::start(b).await;
    let (_, at, _) = s.register("alice", "pw-alice-1").await;
    let (bob, bt, _) = s.register("bob", "pw-bob-1").await;
    let (_, ct, _) = s.register("carol", "pw-carol-1").await;
    let (_, res) = s.post("/_matrix/client/v3/createRoom", Some(&at), json!({"preset": "public_chat"})).await;
    let room = res["room_id"].as_str().unwrap().to_owned();
    for t in [&bt, &ct] {
        assert_eq!(
            s.post(&format!("/_matrix/client/v3/rooms/{room}/join"), Some(t), json!({})).await.0,
            StatusCode::OK
        );
    }
    // Carol highlights HTML messages: a path the default rules never read.
    let rule = json!({"conditions": [{"kind": "event_match", "key": "content.format", "pattern": "org.matrix.custom.html"}],
                      "actions": ["notify", {"set_tweak": "highlight"}]});
    let (status, res) = s.put("/_matrix/client/v3/pushrules/global/override/html", Some(&ct), rule).await;
    assert_eq!(status, StatusCode::OK, "{res}");

    let mention = json!({"user_ids": [bob]});
    let messages = [
        json!({"msgtype": "m.text", "body": "hello"}),
        json!({"msgtype": "m.text", "body": "hey bob", "m.mentions": mention}),
        json!({"msgtype": "m.text", "body": "bob, forget this", "m.mentions": mention}),
        json!({"msgtype": "m.text", "body": "bold", "format": "org.matrix.custom.html", "formatted_body": "<b>bold</b>"}),
    ];
    let mut ids = Vec::new();
    for (i, content) in messages.into_iter().enumerate() {
        let (status, r) =
            s.put(&format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/m{i}"), Some(&at), content).await;
        assert_eq!(status, StatusCode::OK, "{r}");
        ids.push(r["event_id"].as_str().unwrap().replace('$', "%24"));
    }
    let (status, r) =
        s.put(&format!("/_matrix/client/v3/rooms/{room}/redact/{}/r1", ids[2]), Some(&at), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{r}");

    // After a restart nothing is in memory: every count is made from the database.
    s.restart().await;
    // Bob: four messages notify; the mention he still has highlights, the redacted one no
    // longer does.
    assert_eq!(unread(&s, &bt, &room).await, (4, 1));
    // Carol: the same four notify, and her own rule highlights the HTML one.
    assert_eq!(unread(&s, &ct, &room).await, (4, 1));

    // Rows as an older Hearth wrote them (the id alone) are still read, from the events.
    let store = &s.services().store;
    let rows = hearth::rooms::TIMELINE.collect_prefix(store, &room).unwrap();
    assert!(rows.iter().all(|(_, row)| row.push_view.is_some()), "every row has its view");
    let mut batch = hearth::store::Batch::new();
    for (pos, row) in rows {
        let bare = hearth::rooms::TimelineEntry { event_id: row.event_id, push_view: None };
        hearth::rooms::TIMELINE.put(&mut batch, (room.as_str(), pos), &bare);
    }
    store.write(batch).unwrap();
    s.restart().await;
    assert_eq!(unread(&s, &bt, &room).await, (4, 1));
    assert_eq!(unread(&s, &ct, &room).await, (4, 1));
}

both_engines!(unread_backlog_after_restart_reads_rows_or_events);

/// Push rule paths as Synapse answers them: a kind's rules as a list; a missing or
/// unknown scope, kind, rule id or attribute is 400; an unknown rule is 404.
async fn push_rule_paths(b: Backend) {
    let s = TestServer::start(b).await;
    let (_, at, _) = s.register("alice", "pw-alice-1").await;
    let rule = json!({"actions": ["notify"], "pattern": "cake"});
    assert_eq!(s.put("/_matrix/client/v3/pushrules/global/content/cake", Some(&at), rule).await.0, StatusCode::OK);
    let (status, list) = s.get("/_matrix/client/v3/pushrules/global/content/", Some(&at)).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert!(list.as_array().expect("a list").iter().any(|r| r["rule_id"] == "cake"), "{list}");
    for (method, path) in [
        (Method::GET, "/global"),
        (Method::GET, "/global/room"),
        (Method::GET, "/not_a_scope/"),
        (Method::GET, "/global/not_a_template/"),
        (Method::GET, "/global/override/.m.rule.master/not_an_attr"),
        (Method::PUT, "/not_a_scope/room/!a:x"),
        (Method::PUT, "/global"),
        (Method::PUT, "/global/room"),
        (Method::PUT, "/global/room/"),
        (Method::PUT, "/global/override/.m.rule.master/not_an_attr"),
    ] {
        let (status, body) =
            s.request(method.clone(), &format!("/_matrix/client/v3/pushrules{path}"), Some(&at), Some(json!({}))).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{method} {path}: {body}");
    }
    let (status, _) = s.get("/_matrix/client/v3/pushrules/global/override/not_a_rule_id", Some(&at)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// Room rules named freely (as Element names per-room rules by room id, and others by
/// alias), in the order the spec gives: a new rule first, or `before` / `after` another;
/// a PUT without a scope is 400.
async fn push_rules_by_any_id_and_in_order(b: Backend) {
    let s = TestServer::start(b).await;
    let (_, at, _) = s.register("alice", "pw-alice-1").await;
    let base = "/_matrix/client/v3/pushrules/global/room";
    let notify = json!({"actions": ["notify"]});
    for (id, query) in [
        ("%23a:x.test", ""),
        ("%23b:x.test", ""),
        ("!c:x.test", "?after=%23a:x.test"),
        ("!d:x.test", "?before=%23b:x.test"),
    ] {
        let (status, res) = s.put(&format!("{base}/{id}{query}"), Some(&at), notify.clone()).await;
        assert_eq!(status, StatusCode::OK, "{id}: {res}");
    }
    let (_, list) = s.get(&format!("{base}/"), Some(&at)).await;
    let ids: Vec<&str> = list.as_array().unwrap().iter().map(|r| r["rule_id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["!d:x.test", "#b:x.test", "#a:x.test", "!c:x.test"]);
    let (_, one) = s.get(&format!("{base}/%23a:x.test"), Some(&at)).await;
    assert_eq!(one["conditions"], json!([{"kind": "event_match", "key": "room_id", "pattern": "#a:x.test"}]), "{one}");
    let (status, _) = s.put(&format!("{base}/%23e:x.test?before=%23nope:x.test"), Some(&at), notify.clone()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(s.put("/_matrix/client/v3/pushrules/", Some(&at), notify.clone()).await.0, StatusCode::BAD_REQUEST);
    assert_eq!(
        s.put(&format!("{base}/%23a:x.test/enabled"), Some(&at), json!({"enabled": false})).await.0,
        StatusCode::OK
    );
    let (_, all) = s.get("/_matrix/client/v3/pushrules/", Some(&at)).await;
    let a = all["global"]["room"].as_array().unwrap().iter().find(|r| r["rule_id"] == "#a:x.test").cloned();
    assert_eq!(a.map(|r| r["enabled"].clone()), Some(json!(false)));
    assert_eq!(s.request(Method::DELETE, &format!("{base}/%23a:x.test"), Some(&at), None).await.0, StatusCode::OK);
    assert_eq!(s.get(&format!("{base}/%23a:x.test"), Some(&at)).await.0, StatusCode::NOT_FOUND);
}

both_engines!(push_rule_paths, push_rules_by_any_id_and_in_order);

/// Waits until the push follower has evaluated everything in the stream (it runs behind
/// the requests, on durable positions).
async fn follower_caught_up(s: &TestServer) {
    use hearth::push::notifications::PUSH_STATE;
    let services = s.services();
    for _ in 0..1000 {
        let now = services.rooms.stream_now();
        if PUSH_STATE.get(&services.store, "position").unwrap().is_some_and(|p| p >= now) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("the push follower did not catch up");
}

/// A user's unread marks in a room: (stream position, `OWN | NOTIFY | HIGHLIGHT` bits),
/// and how many rows the room has.
fn marks_of(s: &TestServer, user: &str, room: &str) -> (Vec<(u64, u8)>, usize) {
    let (mut out, mut rows) = (Vec::new(), 0);
    let user = ruma::UserId::parse(user).unwrap();
    let room = ruma::RoomId::parse(room).unwrap();
    hearth::push::marks::scan(&s.services().store, &room, 0, u64::MAX - 1, |pos, marks| {
        rows += 1;
        if marks.of(&user) != 0 {
            out.push((pos, marks.of(&user)));
        }
    })
    .unwrap();
    (out, rows)
}

/// Counts made from the push follower's unread marks equal counts made by evaluating the
/// events (threads, the user's own message, a mention, a redacted mention), both split by
/// thread and not. A rule changed later applies to later events only (as Synapse's push
/// actions); rows behind every member's receipt are deleted, and all once no member is left.
async fn unread_counts_from_marks_match_evaluation(b: Backend) {
    use hearth::push::{marks::MARKS_FROM, notifications::PUSH_STATE};
    let (mut s, at, bob, bt, room) = direct_chat(b).await;
    async fn send_as(s: &TestServer, token: &str, room: &str, txn: &str, content: Value) -> String {
        let path = format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/{txn}");
        let (status, r) = s.put(&path, Some(token), content).await;
        assert_eq!(status, StatusCode::OK, "{r}");
        r["event_id"].as_str().unwrap().to_owned()
    }
    let root = send_as(&s, &at, &room, "root", json!({"msgtype": "m.text", "body": "root"})).await;
    let in_thread = |body: &str| json!({"msgtype": "m.text", "body": body, "m.relates_to": {"rel_type": "m.thread", "event_id": root}});
    send_as(&s, &at, &room, "t1", in_thread("one")).await;
    send_as(&s, &at, &room, "t2", in_thread("two")).await;
    // Bob answering on the main timeline reads the root, not the thread.
    send_as(&s, &bt, &room, "own", json!({"msgtype": "m.text", "body": "here"})).await;
    let mention = json!({"user_ids": [bob]});
    send_as(&s, &at, &room, "m1", json!({"msgtype": "m.text", "body": "hey bob", "m.mentions": mention})).await;
    let secret =
        send_as(&s, &at, &room, "m2", json!({"msgtype": "m.text", "body": "bob: psst", "m.mentions": mention})).await;
    let path = format!("/_matrix/client/v3/rooms/{room}/redact/{}/r1", secret.replace('$', "%24"));
    assert_eq!(s.put(&path, Some(&at), json!({})).await.0, StatusCode::OK);
    let last = send_as(&s, &at, &room, "t3", in_thread("three")).await;

    type Counts = ((Option<u64>, Option<u64>, Option<u64>), (u64, u64));
    async fn counts(s: &TestServer, bt: &str, room: &str, root: &str) -> Counts {
        let filter = "%7B%22room%22%3A%7B%22timeline%22%3A%7B%22unread_thread_notifications%22%3Atrue%7D%7D%7D";
        let (_, res) = s.get(&format!("/_matrix/client/v3/sync?filter={filter}"), Some(bt)).await;
        let joined = &res["rooms"]["join"][room];
        let main = &joined["unread_notifications"];
        let thread = &joined["unread_thread_notifications"][root];
        let split = (
            main["notification_count"].as_u64(),
            main["highlight_count"].as_u64(),
            thread["notification_count"].as_u64(),
        );
        (split, unread(s, bt, room).await)
    }
    // Split: the main timeline has the mention and the redacted one (which still notifies
    // but no longer highlights); the thread its three replies. Unsplit: Bob's message read
    // the first two replies.
    let expected = ((Some(2), Some(1), Some(3)), (3, 1));

    follower_caught_up(&s).await;
    s.restart().await;
    // From Bob's join on (a follower that comes late may also mark what it finds Bob
    // joined for, before his join; those never count).
    use hearth::push::marks::{HIGHLIGHT, NOTIFY, OWN};
    let (marked, _) = marks_of(&s, &bob, &room);
    let after_join: Vec<u8> = marked.iter().map(|(_, m)| *m).skip_while(|m| *m != OWN).skip(1).collect();
    let n = NOTIFY;
    assert_eq!(after_join, [n, n, n, OWN, n | HIGHLIGHT, n, n], "the redacted mention no longer highlights");
    let set_marks_from = |s: &TestServer, at: u64| {
        let mut batch = hearth::store::Batch::new();
        PUSH_STATE.put(&mut batch, MARKS_FROM, &at);
        s.services().store.write(batch).unwrap();
    };
    let marks_from = PUSH_STATE.get(&s.services().store, MARKS_FROM).unwrap().unwrap();
    set_marks_from(&s, s.services().rooms.stream_now());
    s.restart().await;
    assert_eq!(counts(&s, &bt, &room, &root).await, expected, "by evaluation");
    set_marks_from(&s, marks_from);
    s.restart().await;

    // Muting the room silences what comes next; what was already unread stays.
    let (status, res) =
        s.put(&format!("/_matrix/client/v3/pushrules/global/room/{room}"), Some(&bt), json!({"actions": []})).await;
    assert_eq!(status, StatusCode::OK, "{res}");
    send_as(&s, &at, &room, "quiet", json!({"msgtype": "m.text", "body": "quiet"})).await;
    follower_caught_up(&s).await;
    assert_eq!(counts(&s, &bt, &room, &root).await.1, (3, 1));
    assert_eq!(marks_of(&s, &bob, &room).0, marked, "no mark for a muted message");
    let path = format!("/_matrix/client/v3/pushrules/global/room/{room}");
    assert_eq!(s.request(Method::DELETE, &path, Some(&bt), None).await.0, StatusCode::OK);

    // Unthreaded receipts of both on the last reply: every row up to it can count for
    // neither and goes.
    for token in [&at, &bt] {
        let path = format!("/_matrix/client/v3/rooms/{room}/receipt/m.read/{last}");
        assert_eq!(s.post(&path, Some(token), json!({})).await.0, StatusCode::OK);
    }
    assert_eq!(counts(&s, &bt, &room, &root).await, ((Some(0), Some(0), None), (0, 0)));
    let last_pos = s.services().rooms.event_meta(&ruma::EventId::parse(&last).unwrap()).unwrap().unwrap().stream;
    let rows_up_to_last = |s: &TestServer| {
        let mut n = 0;
        let room = ruma::RoomId::parse(&room).unwrap();
        hearth::push::marks::scan(&s.services().store, &room, 0, last_pos, |_, _| n += 1).unwrap();
        n
    };
    for _ in 0..500 {
        if rows_up_to_last(&s) == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(rows_up_to_last(&s), 0, "rows behind both receipts are deleted");

    // A new message is marked; once every local member has left, no row is kept.
    send_as(&s, &at, &room, "later", json!({"msgtype": "m.text", "body": "later"})).await;
    follower_caught_up(&s).await;
    assert_eq!(marks_of(&s, &bob, &room).0.len(), 1);
    assert_eq!(counts(&s, &bt, &room, &root).await.1, (1, 0));
    for token in [&bt, &at] {
        let path = format!("/_matrix/client/v3/rooms/{room}/leave");
        assert_eq!(s.post(&path, Some(token), json!({})).await.0, StatusCode::OK);
    }
    follower_caught_up(&s).await;
    for _ in 0..500 {
        if marks_of(&s, &bob, &room).1 == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(marks_of(&s, &bob, &room).1, 0);
}

both_engines!(unread_counts_from_marks_match_evaluation);

/// The push follower evaluates rules once per class of members whose rules differ only in
/// their own identity, for events that name none of them; a member an event names is
/// evaluated on their own. Three members with the default rules: each mention highlights
/// for the one it names alone, by `m.mentions`, by user name and by display name.
async fn members_an_event_names_are_evaluated_apart(b: Backend) {
    let mut s = TestServer::start(b).await;
    let (_, at, _) = s.register("alice", "pw-alice-1").await;
    let mut members = Vec::new();
    for name in ["bob", "carol", "dan"] {
        members.push(s.register(name, &format!("pw-{name}-1")).await);
    }
    let (_, res) = s.post("/_matrix/client/v3/createRoom", Some(&at), json!({"preset": "public_chat"})).await;
    let room = res["room_id"].as_str().unwrap().to_owned();
    for (_, token, _) in &members {
        assert_eq!(s.post(&format!("/_matrix/client/v3/join/{room}"), Some(token), json!({})).await.0, StatusCode::OK);
    }
    let (carol_id, carol_token) = (&members[1].0, &members[1].1);
    let path = format!("/_matrix/client/v3/profile/{carol_id}/displayname");
    assert_eq!(s.put(&path, Some(carol_token), json!({"displayname": "Caroline"})).await.0, StatusCode::OK);
    let bob = members[0].0.clone();
    let messages = [
        json!({"msgtype": "m.text", "body": "hello all"}),
        json!({"msgtype": "m.text", "body": "hey you", "m.mentions": {"user_ids": [bob]}}),
        json!({"msgtype": "m.text", "body": "caroline, lunch?"}),
        json!({"msgtype": "m.text", "body": "dan: and you?"}),
    ];
    for (i, content) in messages.into_iter().enumerate() {
        let (status, r) =
            s.put(&format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/n{i}"), Some(&at), content).await;
        assert_eq!(status, StatusCode::OK, "{r}");
    }
    follower_caught_up(&s).await;
    // Counted from the follower's marks alone.
    s.restart().await;
    let mut counts = Vec::new();
    for (_, token, _) in &members {
        counts.push(unread(&s, token, &room).await);
    }
    // Carol's display-name change is an event too; it notifies nobody by default.
    assert_eq!(counts, vec![(4, 1), (4, 1), (4, 1)], "each highlighted once, by the mention that names them");
}

both_engines!(members_an_event_names_are_evaluated_apart);
