//! The operator's side: registration tokens with uses and expiry, metrics, online backup
//! under writes, restore.

use std::sync::Arc;

use hearth::store::Backend;
use parking_lot::Mutex;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::{
    both_engines,
    common::{assert_error, TestServer},
};

const REGISTER: &str = "/_matrix/client/v3/register";

async fn register_with(s: &TestServer, user: &str, token: &str) -> (StatusCode, Value) {
    let body = json!({"username": user, "password": "pw-1234"});
    let (_, challenge) = s.post(REGISTER, None, body.clone()).await;
    let mut body = body;
    body["auth"] = json!({"type": "m.login.registration_token", "token": token, "session": challenge["session"]});
    let (status, res) = s.post(REGISTER, None, body.clone()).await;
    if status != StatusCode::UNAUTHORIZED || res.get("errcode").is_some() {
        return (status, res);
    }
    body["auth"] = json!({"type": "m.login.dummy", "session": challenge["session"]});
    s.post(REGISTER, None, body).await
}

async fn tokens_with_uses_and_expiry(b: Backend) {
    // No static token: database tokens alone make registration require one.
    let s = TestServer::start_with(b, |c| c.registration_token = None).await;
    let (_, challenge) = s.post(REGISTER, None, json!({"username": "x"})).await;
    assert_eq!(challenge["flows"][0]["stages"], json!(["m.login.dummy"]), "open registration while no token exists");

    let tokens = &s.services().registration_tokens;
    let once = tokens.create(Some("just-once".into()), Some(1), None).unwrap();
    let (_, challenge) = s.post(REGISTER, None, json!({"username": "x"})).await;
    assert_eq!(challenge["flows"][0]["stages"][0], "m.login.registration_token");

    let validity = |t: &str| format!("/_matrix/client/v1/register/m.login.registration_token/validity?token={t}");
    assert_eq!(s.get(&validity(&once), None).await.1["valid"], true);
    let (status, res) = register_with(&s, "first", &once).await;
    assert_eq!(status, StatusCode::OK, "{res}");
    // Used up: refused at the token stage, and reported invalid.
    let (status, res) = register_with(&s, "second", &once).await;
    assert_eq!((status, res["errcode"].as_str()), (StatusCode::UNAUTHORIZED, Some("M_FORBIDDEN")), "{res}");
    assert_eq!(s.get(&validity(&once), None).await.1["valid"], false);
    assert_eq!(tokens.list().unwrap()[0].1.completed, 1);

    // Expired tokens are refused; revoked ones vanish.
    let expired = tokens.create(None, None, Some(1)).unwrap();
    assert_eq!(s.get(&validity(&expired), None).await.1["valid"], false);
    let (status, _) = register_with(&s, "third", &expired).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let open = tokens.create(None, None, None).unwrap();
    assert_eq!(register_with(&s, "fourth", &open).await.0, StatusCode::OK);
    assert!(tokens.revoke(&open).unwrap());
    assert_eq!(s.get(&validity(&open), None).await.1["valid"], false);
    assert!(tokens.create(Some("bad token!".into()), None, None).is_err());
}

async fn metrics_are_prometheus_text_on_their_own_port(b: Backend) {
    // A free port, found by binding and letting go: another test may take it in between,
    // so a start that fails tries another one.
    let mut started = None;
    for _ in 0..5 {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        if let Ok(s) = TestServer::try_start_with(b, |c| c.metrics_port = port).await {
            started = Some((s, port));
            break;
        }
    }
    let (s, port) = started.expect("a free metrics port within five tries");
    s.get("/_matrix/client/versions", None).await;
    s.get("/_matrix/client/v3/profile/@nobody:hearth.test", None).await;
    // Three sends one after another: each is answered once durable, so each needs a sync
    // of its own (a sync covers only what was written before it).
    let (_, token, _) = s.register("metered", "pw-metered-1").await;
    let (_, room) = s.post("/_matrix/client/v3/createRoom", Some(&token), json!({})).await;
    let room = room["room_id"].as_str().unwrap().to_owned();
    for i in 0..3 {
        let (status, res) = s
            .put(
                &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/m{i}"),
                Some(&token),
                json!({"body": "x", "msgtype": "m.text"}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{res}");
    }
    let body = s.http.get(format!("http://127.0.0.1:{port}/metrics")).send().await.unwrap().text().await.unwrap();
    let sample = |name: &str| -> f64 {
        let line =
            body.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_else(|| panic!("no {name}: {body}"));
        line.rsplit_once(' ').unwrap().1.parse().unwrap()
    };
    assert!(body.contains("# TYPE hearth_database_syncs_total counter"), "{body}");
    let (syncs, position) = (sample("hearth_database_syncs_total"), sample("hearth_stream_position"));
    assert!(syncs >= 3.0 && syncs <= position, "syncs {syncs}, stream position {position}");
    let mut samples = 0;
    for line in body.lines() {
        if line.starts_with('#') {
            assert!(line.starts_with("# HELP ") || line.starts_with("# TYPE "), "{line}");
            continue;
        }
        // name{labels} value
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("bad sample line {line:?}"));
        assert!(value.parse::<f64>().is_ok(), "{line}");
        let name = series.split('{').next().unwrap();
        assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "{line}");
        samples += 1;
    }
    assert!(samples > 5);
    assert!(
        body.contains(r#"hearth_http_requests_total{method="GET",route="/_matrix/client/versions",status="200"} 1"#),
        "{body}"
    );
    assert!(body.contains(r#"route="/_matrix/client/v3/profile/{user_id}",status="404""#), "{body}");
    assert!(body.contains("hearth_database_bytes "), "{body}");
    assert!(body.contains("hearth_sync_waiters 0"), "{body}");
    // Not on the public port.
    assert_error(&s.get("/metrics", None).await, 404, "M_UNRECOGNIZED");
}

async fn online_backup_under_writes_restores(b: Backend) {
    let s = TestServer::start(b).await;
    let (_, admin, _) = s.register("admin", "pw-admin-1").await;
    let (_, bt, _) = s.register("bob", "pw-bob-1").await;
    let (_, res) = s.post("/_matrix/client/v3/createRoom", Some(&admin), json!({"preset": "public_chat"})).await;
    let room = res["room_id"].as_str().unwrap().to_owned();
    s.post(&format!("/_matrix/client/v3/rooms/{room}/join"), Some(&bt), json!({})).await;

    // A writer keeps sending while the backup is taken.
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (http, base, room, acked, stop, bt) =
            (s.http.clone(), s.base.clone(), room.clone(), acked.clone(), stop.clone(), bt.clone());
        tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) && i < 2000 {
                let url = format!("{base}/_matrix/client/v3/rooms/{room}/send/m.room.message/w{i}");
                let res = http
                    .put(url)
                    .bearer_auth(&bt)
                    .json(&json!({"msgtype": "m.text", "body": format!("w{i}")}))
                    .send()
                    .await
                    .unwrap();
                if res.status() == StatusCode::OK {
                    let v: Value = res.json().await.unwrap();
                    acked.lock().push(v["event_id"].as_str().unwrap().to_owned());
                }
                i += 1;
            }
        })
    };
    while acked.lock().len() < 20 {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    // A picture uploaded before the backup comes back with it.
    let picture: Vec<u8> = (0..3000u32).map(|i| (i % 199) as u8).collect();
    let uploaded: Value = s
        .http
        .post(format!("{}/_matrix/media/v3/upload", s.base))
        .bearer_auth(&bt)
        .header("content-type", "image/png")
        .body(picture.clone())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let media = uploaded["content_uri"].as_str().unwrap().strip_prefix("mxc://").unwrap().to_owned();
    let before: Vec<String> = acked.lock().clone();
    let dir = s.dir.path().join("backup");
    // Only admins may back up.
    assert_error(&s.post("/_hearth/admin/v1/backup", Some(&bt), json!({"to": dir})).await, 403, "M_FORBIDDEN");
    // A place that cannot hold a backup is the operator's mistake: 400, saying why.
    let nowhere = json!({"to": "/proc/version/backup"});
    let (status, res) = s.post("/_hearth/admin/v1/backup", Some(&admin), nowhere).await;
    assert_eq!((status, res["errcode"].as_str()), (StatusCode::BAD_REQUEST, Some("M_INVALID_PARAM")), "{res}");
    assert!(res["error"].as_str().is_some_and(|e| e.contains("/proc/version/backup")), "{res}");
    let (status, res) = s.post("/_hearth/admin/v1/backup", Some(&admin), json!({"to": dir})).await;
    assert_eq!(status, StatusCode::OK, "{res}");
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    writer.await.unwrap();

    // Restore into a fresh directory and start a server there.
    let restored = s.dir.path().join("restored");
    hearth::store::restore(&dir, &restored).unwrap();
    let mut config = crate::common::test_config(b, &s.dir);
    config.database_path = restored;
    let services = hearth::Services::open(config).unwrap();
    let running = hearth::server::Running::start(services).await.unwrap();
    let base = format!("http://{}", running.addr);
    let http = reqwest::Client::new();
    let login: Value = http
        .post(format!("{base}/_matrix/client/v3/login"))
        .json(&json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "bob"}, "password": "pw-bob-1"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = login["access_token"].as_str().unwrap();
    // Each acknowledged event is there by id...
    for id in &before {
        let res = http
            .get(format!("{base}/_matrix/client/v3/rooms/{room}/event/{id}"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(
            res.status(),
            StatusCode::OK,
            "event {id}, acknowledged before the backup began, is missing from the restore"
        );
    }
    // ...and in the room's timeline. The writer may have got far during the backup (on a
    // loaded machine, more than a page of 1,000), so the whole timeline is paged through.
    let mut present = std::collections::BTreeSet::new();
    let mut from: Option<String> = None;
    loop {
        let mut url = format!("{base}/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=1000");
        if let Some(from) = &from {
            url.push_str(&format!("&from={from}"));
        }
        let page: Value = http.get(url).bearer_auth(token).send().await.unwrap().json().await.unwrap();
        let chunk = page["chunk"].as_array().unwrap();
        present.extend(chunk.iter().filter_map(|e| e["event_id"].as_str().map(str::to_owned)));
        match page["end"].as_str() {
            Some(end) if !chunk.is_empty() => from = Some(end.to_owned()),
            _ => break,
        }
    }
    for id in &before {
        assert!(present.contains(id), "event {id} is in the restore but not in the room's timeline");
    }
    let restored_picture =
        http.get(format!("{base}/_matrix/media/v3/download/{media}")).send().await.unwrap().bytes().await.unwrap();
    assert_eq!(restored_picture.to_vec(), picture, "the upload is in the backup");
    running.stop().await.unwrap();
    // Restoring over existing data is refused.
    assert!(hearth::store::restore(&dir, &s.dir.path().join("data")).is_err());
}

both_engines!(
    tokens_with_uses_and_expiry,
    metrics_are_prometheus_text_on_their_own_port,
    online_backup_under_writes_restores
);
