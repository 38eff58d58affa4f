//! The rest of what Element and Nheko ask for daily: jump to date, room summaries,
//! mutual rooms, third-party protocols, TURN servers, reports of rooms and users, the
//! support document, and the third-party identifier operations' refusals.

use base64::Engine;
use hearth::store::Backend;
use hmac::{Hmac, Mac};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::{
    both_engines,
    common::{assert_error, TestServer},
};

both_engines!(jump_to_date, room_summaries_and_mutual_rooms, calls_reports_and_refusals);

async fn send(s: &TestServer, token: &str, room: &str, txn: &str) -> (String, u64) {
    let (_, sent) = s
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/{txn}"),
            Some(token),
            json!({"msgtype": "m.text", "body": txn}),
        )
        .await;
    let id = sent["event_id"].as_str().unwrap().to_owned();
    let (_, event) = s.get(&format!("/_matrix/client/v3/rooms/{room}/event/{id}"), Some(token)).await;
    (id, event["origin_server_ts"].as_u64().unwrap())
}

async fn jump_to_date(b: Backend) {
    let s = TestServer::start(b).await;
    let (_, at, _) = s.register("alice", "pw-alice-1").await;
    let (_, room) = s.post("/_matrix/client/v3/createRoom", Some(&at), json!({})).await;
    let room = room["room_id"].as_str().unwrap().to_owned();
    let mut sent = Vec::new();
    for txn in ["m1", "m2", "m3"] {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        sent.push(send(&s, &at, &room, txn).await);
    }
    let jump = |ts: u64, dir: &str| format!("/_matrix/client/v1/rooms/{room}/timestamp_to_event?ts={ts}&dir={dir}");
    let (status, found) = s.get(&jump(sent[1].1, "f"), Some(&at)).await;
    assert_eq!(status, StatusCode::OK, "{found}");
    assert_eq!(found, json!({"event_id": sent[1].0, "origin_server_ts": sent[1].1}));
    let (_, before) = s.get(&jump(sent[2].1 - 1, "b"), Some(&at)).await;
    assert_eq!(before["event_id"], sent[1].0.as_str());
    let (_, last) = s.get(&jump(u64::MAX / 2, "b"), Some(&at)).await;
    assert_eq!(last["event_id"], sent[2].0.as_str());
    assert_error(&s.get(&jump(u64::MAX / 2, "f"), Some(&at)).await, 404, "M_NOT_FOUND");
    assert_error(&s.get(&jump(1, "b"), Some(&at)).await, 404, "M_NOT_FOUND");
    assert_error(&s.get(&jump(1, "sideways"), Some(&at)).await, 400, "M_INVALID_PARAM");
    let no_dir = format!("/_matrix/client/v1/rooms/{room}/timestamp_to_event?ts=1");
    assert_error(&s.get(&no_dir, Some(&at)).await, 400, "M_MISSING_PARAM");
    let (_, outsider, _) = s.register("eve", "pw-eve-1").await;
    assert_error(&s.get(&jump(1, "f"), Some(&outsider)).await, 403, "M_FORBIDDEN");
}

async fn room_summaries_and_mutual_rooms(b: Backend) {
    let s = TestServer::start(b).await;
    let (alice, at, _) = s.register("alice", "pw-alice-1").await;
    let (bob, bt, _) = s.register("bob", "pw-bob-1").await;
    let public = json!({"preset": "public_chat", "name": "Garden", "topic": "Seeds", "room_alias_name": "garden"});
    let (_, garden) = s.post("/_matrix/client/v3/createRoom", Some(&at), public).await;
    let garden = garden["room_id"].as_str().unwrap().to_owned();
    let (_, private) = s.post("/_matrix/client/v3/createRoom", Some(&at), json!({"preset": "private_chat"})).await;
    let private = private["room_id"].as_str().unwrap().to_owned();

    // Anyone may preview a public room, by alias too, on every path clients use.
    for path in [
        "/_matrix/client/v1/room_summary/%23garden:hearth.test".to_owned(),
        format!("/_matrix/client/unstable/im.nheko.summary/summary/{garden}"),
        format!("/_matrix/client/unstable/im.nheko.summary/rooms/{garden}/summary"),
    ] {
        let (status, summary) = s.get(&path, None).await;
        assert_eq!(status, StatusCode::OK, "{path}: {summary}");
        assert_eq!((summary["room_id"].as_str(), summary["name"].as_str()), (Some(garden.as_str()), Some("Garden")));
        assert_eq!((summary["num_joined_members"].as_u64(), summary["join_rule"].as_str()), (Some(1), Some("public")));
        assert_eq!(summary["topic"], "Seeds");
        assert!(summary["room_version"].is_string() && summary["guest_can_join"].is_boolean(), "{summary}");
        assert!(summary.get("membership").is_none(), "no membership without a token: {summary}");
    }
    let (_, mine) = s.get(&format!("/_matrix/client/v1/room_summary/{garden}"), Some(&at)).await;
    assert_eq!(mine["membership"], "join");
    // A private room is not described to those outside it.
    let private_summary = format!("/_matrix/client/v1/room_summary/{private}");
    assert_error(&s.get(&private_summary, None).await, 404, "M_NOT_FOUND");
    assert_error(&s.get(&private_summary, Some(&bt)).await, 404, "M_NOT_FOUND");
    assert_eq!(s.get(&private_summary, Some(&at)).await.0, StatusCode::OK);
    assert_error(&s.get("/_matrix/client/v1/room_summary/%23nowhere:hearth.test", None).await, 404, "M_NOT_FOUND");

    // Mutual rooms.
    assert_eq!(s.post(&format!("/_matrix/client/v3/join/{garden}"), Some(&bt), json!({})).await.0, StatusCode::OK);
    for path in ["/_matrix/client/v1/mutual_rooms", "/_matrix/client/unstable/uk.half-shot.msc2666/user/mutual_rooms"] {
        let (status, shared) = s.get(&format!("{path}?user_id={bob}"), Some(&at)).await;
        assert_eq!(status, StatusCode::OK, "{shared}");
        assert_eq!(shared, json!({"joined": [garden], "count": 1}));
    }
    let mutual = "/_matrix/client/v1/mutual_rooms";
    assert_error(&s.get(mutual, Some(&at)).await, 400, "M_MISSING_PARAM");
    assert_error(&s.get(&format!("{mutual}?user_id={alice}"), Some(&at)).await, 400, "M_INVALID_PARAM");
    assert_error(&s.get(&format!("{mutual}?user_id={bob}"), None).await, 401, "M_MISSING_TOKEN");
    let (_, versions) = s.get("/_matrix/client/versions", None).await;
    assert_eq!(versions["unstable_features"]["uk.half-shot.msc2666.query_mutual_rooms"], true, "{versions}");
}

async fn calls_reports_and_refusals(b: Backend) {
    // No TURN servers: 404 (MSC4166), since every field of the spec's answer is required.
    let s = TestServer::start(b).await;
    let (_, at, _) = s.register("alice", "pw-alice-1").await;
    assert_error(&s.get("/_matrix/client/v3/voip/turnServer", Some(&at)).await, 404, "M_NOT_FOUND");
    assert_error(&s.get("/_matrix/client/v3/voip/turnServer", None).await, 401, "M_MISSING_TOKEN");

    // Third-party networks: none.
    assert_eq!(s.get("/_matrix/client/v3/thirdparty/protocols", Some(&at)).await, (StatusCode::OK, json!({})));
    assert_error(&s.get("/_matrix/client/v3/thirdparty/protocol/irc", Some(&at)).await, 404, "M_NOT_FOUND");
    assert_eq!(s.get("/_matrix/client/v3/thirdparty/location?alias=%23x:irc", Some(&at)).await.1, json!([]));

    // Reports of a room and of a user.
    let (_, room) = s.post("/_matrix/client/v3/createRoom", Some(&at), json!({})).await;
    let room = room["room_id"].as_str().unwrap().to_owned();
    let report = format!("/_matrix/client/v3/rooms/{room}/report");
    assert_eq!(s.post(&report, Some(&at), json!({"reason": "spam"})).await, (StatusCode::OK, json!({})));
    assert_error(
        &s.post("/_matrix/client/v3/rooms/!nope:hearth.test/report", Some(&at), json!({})).await,
        404,
        "M_NOT_FOUND",
    );
    assert_error(&s.post(&report, Some(&at), json!({"reason": 5})).await, 400, "M_BAD_JSON");
    let user_report = "/_matrix/client/v3/users/@mallory:hearth.test/report";
    assert_eq!(s.post(user_report, Some(&at), json!({"reason": "rude"})).await, (StatusCode::OK, json!({})));
    let reports = hearth::rooms::reports::REPORTS;
    let mut kept = Vec::new();
    reports
        .scan_all(&s.services().store, |(room, _), r| {
            kept.push((room, r.event_id, r.user.map(|u| u.to_string()), r.reason));
            true
        })
        .unwrap();
    assert!(kept.contains(&(room.clone(), String::new(), None, Some("spam".into()))), "{kept:?}");
    assert!(kept.contains(&(String::new(), String::new(), Some("@mallory:hearth.test".into()), Some("rude".into()))));

    // Third-party identifiers without a mail server (no `smtp_host`): no address can be
    // validated, and phone numbers never are (`identity.rs` has the rest).
    for (path, authed, status, errcode) in [
        ("/_matrix/client/v3/account/3pid/add", true, 400, "M_BAD_JSON"),
        ("/_matrix/client/v3/account/3pid/bind", true, 400, "M_BAD_JSON"),
        ("/_matrix/client/v3/account/3pid/email/requestToken", true, 403, "M_THREEPID_DENIED"),
        ("/_matrix/client/v3/account/3pid/msisdn/requestToken", true, 403, "M_THREEPID_DENIED"),
        ("/_matrix/client/v3/register/email/requestToken", false, 403, "M_THREEPID_DENIED"),
        ("/_matrix/client/v3/register/msisdn/requestToken", false, 403, "M_THREEPID_DENIED"),
        ("/_matrix/client/v3/account/password/email/requestToken", false, 403, "M_THREEPID_DENIED"),
        ("/_matrix/client/v3/account/password/msisdn/requestToken", false, 403, "M_THREEPID_DENIED"),
    ] {
        let token = authed.then_some(at.as_str());
        let body = json!({"client_secret": "s3cret", "email": "a@example.org", "send_attempt": 1});
        assert_error(&s.post(path, token, body).await, status, errcode);
    }
    for path in ["/_matrix/client/v3/account/3pid/delete", "/_matrix/client/v3/account/3pid/unbind"] {
        let (status, res) = s.post(path, Some(&at), json!({"medium": "email", "address": "a@example.org"})).await;
        assert_eq!((status, res["id_server_unbind_result"].as_str()), (StatusCode::OK, Some("no-support")), "{path}");
    }
    assert_error(&s.get("/.well-known/matrix/support", None).await, 404, "M_NOT_FOUND");
    // What only an application service may call, and refresh tokens, which Hearth never
    // hands out.
    let ping = "/_matrix/client/v1/appservice/bridge/ping";
    assert_error(&s.post(ping, Some(&at), json!({})).await, 403, "M_FORBIDDEN");
    let listing = format!("/_matrix/client/v3/directory/list/appservice/irc/{room}");
    assert_error(&s.put(&listing, Some(&at), json!({"visibility": "public"})).await, 403, "M_FORBIDDEN");
    let refresh = json!({"refresh_token": "whatever"});
    assert_error(&s.post("/_matrix/client/v3/refresh", None, refresh).await, 401, "M_UNKNOWN_TOKEN");

    // With TURN and support contacts configured.
    let s = TestServer::start_with(b, |c| {
        c.turn_uris = vec!["turn:turn.example.org:3478?transport=udp".into()];
        c.turn_secret = Some("a shared secret".into());
        c.turn_ttl = 3600;
        c.well_known.support_page = Some("https://example.org/help".into());
        c.well_known.support_mxid = Some("@admin:hearth.test".into());
    })
    .await;
    let (alice, at, _) = s.register("alice", "pw-alice-1").await;
    let (status, turn) = s.get("/_matrix/client/v3/voip/turnServer", Some(&at)).await;
    assert_eq!(status, StatusCode::OK, "{turn}");
    assert_eq!(
        (turn["uris"].clone(), turn["ttl"].as_u64()),
        (json!(["turn:turn.example.org:3478?transport=udp"]), Some(3600))
    );
    let username = turn["username"].as_str().unwrap();
    let (expiry, user) = username.split_once(':').unwrap();
    assert_eq!(user, alice);
    let expiry: u64 = expiry.parse().unwrap();
    let now = hearth::time::now_millis() / 1000;
    assert!(expiry > now + 3500 && expiry <= now + 3600, "{expiry} vs {now}");
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(b"a shared secret").unwrap();
    mac.update(username.as_bytes());
    let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    assert_eq!(turn["password"], expected.as_str());
    let (status, support) = s.get("/.well-known/matrix/support", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        support,
        json!({"support_page": "https://example.org/help", "contacts": [{"role": "m.role.admin", "matrix_id": "@admin:hearth.test"}]})
    );
    let _: Value = support;
}
