//! Application services (bridges): a registration file names a service on loopback, run
//! inside the test as a real HTTP server that records what Hearth sends it and answers
//! Hearth's questions the way a bridge does (creating the user or alias it is asked about
//! through Hearth's client API before it answers).

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use axum::{
    extract::{Path, State},
    http::HeaderMap,
    routing::{get, post, put},
    Json, Router,
};
use hearth::store::Backend;
use parking_lot::Mutex;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::{
    both_engines,
    common::{assert_error, TestServer},
};

const AS_TOKEN: &str = "as-token-of-the-bridge";
const HS_TOKEN: &str = "hs-token-of-hearth";

#[derive(Clone, Default)]
struct Bridge {
    /// (transaction id, body, whether taken) in the order they arrived, repeats included.
    transactions: Arc<Mutex<Vec<(String, Value, bool)>>>,
    /// Transactions still to refuse with a 500.
    refuse: Arc<AtomicUsize>,
    /// Requests that came without Hearth's token.
    unauthorised: Arc<AtomicUsize>,
    /// Hearth's base URL, and the client the bridge calls it with.
    hearth: Arc<Mutex<String>>,
    client: Arc<Mutex<reqwest::Client>>,
    pings: Arc<Mutex<Vec<Value>>>,
}

impl Bridge {
    fn authorised(&self, headers: &HeaderMap) -> bool {
        let ok = headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(&format!("Bearer {HS_TOKEN}"));
        if !ok {
            self.unauthorised.fetch_add(1, Ordering::SeqCst);
        }
        ok
    }

    async fn start() -> (Bridge, String) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let bridge = Bridge::default();
        async fn transaction(
            State(b): State<Bridge>,
            Path(txn): Path<String>,
            headers: HeaderMap,
            Json(body): Json<Value>,
        ) -> (StatusCode, Json<Value>) {
            if !b.authorised(&headers) {
                return (StatusCode::FORBIDDEN, Json(json!({"errcode": "M_FORBIDDEN"})));
            }
            let refused = b.refuse.load(Ordering::SeqCst) > 0;
            b.transactions.lock().push((txn, body, !refused));
            if refused {
                b.refuse.fetch_sub(1, Ordering::SeqCst);
                return (StatusCode::INTERNAL_SERVER_ERROR, Json(json!({})));
            }
            (StatusCode::OK, Json(json!({})))
        }
        /// Asked about a user: the bridge registers `@bridge_asked*` users, then says yes.
        async fn user(State(b): State<Bridge>, Path(user): Path<String>, headers: HeaderMap) -> StatusCode {
            if !b.authorised(&headers) || !user.starts_with("@bridge_asked") {
                return StatusCode::NOT_FOUND;
            }
            let localpart = user.trim_start_matches('@').split(':').next().unwrap_or_default().to_owned();
            let base = b.hearth.lock().clone();
            let client = b.client.lock().clone();
            let res = client
                .post(format!("{base}/_matrix/client/v3/register"))
                .bearer_auth(AS_TOKEN)
                .json(&json!({"type": "m.login.application_service", "username": localpart}))
                .send()
                .await
                .expect("register");
            assert_eq!(res.status(), StatusCode::OK);
            StatusCode::OK
        }
        /// Asked about an alias: the bridge makes `#bridge_room*` aliases for a room named
        /// by the part after `bridge_room_`, then says yes.
        async fn alias(State(b): State<Bridge>, Path(alias): Path<String>, headers: HeaderMap) -> StatusCode {
            if !b.authorised(&headers) || !alias.starts_with("#bridge_room") {
                return StatusCode::NOT_FOUND;
            }
            let base = b.hearth.lock().clone();
            let http = b.client.lock().clone();
            let created: Value = http
                .post(format!("{base}/_matrix/client/v3/createRoom"))
                .bearer_auth(AS_TOKEN)
                .json(&json!({"preset": "public_chat"}))
                .send()
                .await
                .expect("create")
                .json()
                .await
                .expect("json");
            let encoded = alias.replace('#', "%23");
            let res = http
                .put(format!("{base}/_matrix/client/v3/directory/room/{encoded}"))
                .bearer_auth(AS_TOKEN)
                .json(&json!({"room_id": created["room_id"]}))
                .send()
                .await
                .expect("alias");
            assert_eq!(res.status(), StatusCode::OK);
            StatusCode::OK
        }
        async fn protocol(State(b): State<Bridge>, Path(name): Path<String>, headers: HeaderMap) -> Json<Value> {
            assert!(b.authorised(&headers) && name == "irc");
            Json(json!({
                "user_fields": ["nick"], "location_fields": ["channel"], "icon": "mxc://example.org/irc",
                "field_types": {}, "instances": [{"desc": "Libera", "network_id": "libera", "fields": {}}],
            }))
        }
        async fn lookup(State(b): State<Bridge>, headers: HeaderMap) -> Json<Value> {
            assert!(b.authorised(&headers));
            Json(json!([{"userid": "@bridge_nick:example", "protocol": "irc", "fields": {"nick": "nick"}}]))
        }
        async fn ping(State(b): State<Bridge>, headers: HeaderMap, Json(body): Json<Value>) -> Json<Value> {
            assert!(b.authorised(&headers));
            b.pings.lock().push(body);
            Json(json!({}))
        }
        let app = Router::new()
            .route("/_matrix/app/v1/transactions/{txn}", put(transaction))
            .route("/_matrix/app/v1/users/{user}", get(user))
            .route("/_matrix/app/v1/rooms/{alias}", get(alias))
            .route("/_matrix/app/v1/thirdparty/protocol/{name}", get(protocol))
            .route("/_matrix/app/v1/thirdparty/user/{name}", get(lookup))
            .route("/_matrix/app/v1/ping", post(ping))
            .with_state(bridge.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (bridge, url)
    }

    /// Every event taken so far (each transaction once, as a bridge dedupes them).
    fn events(&self) -> Vec<Value> {
        let mut seen = std::collections::BTreeSet::new();
        let mut out = Vec::new();
        for (txn, body, _) in self.transactions.lock().iter().filter(|t| t.2) {
            if seen.insert(txn.clone()) {
                out.extend(body["events"].as_array().cloned().unwrap_or_default());
            }
        }
        out
    }

    async fn wait_for_event(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        for _ in 0..300 {
            if let Some(e) = self.events().into_iter().find(|e| pred(e)) {
                return e;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the bridge never got {what}; it got {:?}", self.transactions.lock());
    }
}

fn registration(url: &str) -> String {
    format!(
        r#"
id: test-bridge
url: {url}
as_token: {AS_TOKEN}
hs_token: {HS_TOKEN}
sender_localpart: bridgebot
rate_limited: false
protocols: [irc]
namespaces:
  users:
    - {{ regex: '@bridge_.*', exclusive: true }}
  aliases:
    - {{ regex: '#bridge_.*', exclusive: true }}
  rooms: []
"#
    )
}

async fn start(b: Backend) -> (TestServer, Bridge, tempfile::TempDir) {
    let (bridge, url) = Bridge::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("bridge.yaml");
    std::fs::write(&file, registration(&url)).expect("write");
    let s = TestServer::start_with(b, |c| c.app_service_config_files = vec![file.clone()]).await;
    *bridge.hearth.lock() = s.base.clone();
    (s, bridge, dir)
}

fn encode(s: &str) -> String {
    s.replace('@', "%40").replace(':', "%3A").replace('#', "%23").replace('!', "%21")
}

/// Registration, masquerading and the namespaces' exclusivity.
async fn application_services_register_and_masquerade(b: Backend) {
    let (s, _bridge, _dir) = start(b).await;
    let server = s.services().config.server_name.to_string();
    // The bridge's sender exists from the start, and is not the server's first account:
    // the first person to register still becomes its admin.
    let (status, me) = s.get("/_matrix/client/v3/account/whoami", Some(AS_TOKEN)).await;
    assert_eq!((status, me["user_id"].as_str()), (StatusCode::OK, Some(&*format!("@bridgebot:{server}"))), "{me}");
    let (alice, at, _) = s.register("alice", "pw-alice-1").await;
    let admin_view = |user: &str| format!("/_synapse/admin/v2/users/{}", encode(user));
    let (_, view) = s.get(&admin_view(&alice), Some(&at)).await;
    assert_eq!(view["admin"], true, "alice is the server's admin: {view}");
    let (_, view) = s.get(&admin_view(&format!("@bridgebot:{server}")), Some(&at)).await;
    assert_eq!((&view["admin"], &view["appservice_id"]), (&json!(false), &json!("test-bridge")), "{view}");

    // A user of the bridge's exclusive namespace: the bridge registers it, nobody else.
    let reg = |name: &str, extra: Value| {
        let mut body = json!({"type": "m.login.application_service", "username": name});
        body.as_object_mut().unwrap().extend(extra.as_object().cloned().unwrap_or_default());
        body
    };
    let (status, ghost) = s.post("/_matrix/client/v3/register", Some(AS_TOKEN), reg("bridge_ghost", json!({}))).await;
    assert_eq!(status, StatusCode::OK, "{ghost}");
    assert!(ghost["access_token"].is_string() && ghost["device_id"].is_string(), "{ghost}");
    let (status, quiet) = s
        .post("/_matrix/client/v3/register", Some(AS_TOKEN), reg("bridge_quiet", json!({"inhibit_login": true})))
        .await;
    assert_eq!(status, StatusCode::OK, "{quiet}");
    assert!(quiet.get("access_token").is_none() && quiet.get("device_id").is_none(), "{quiet}");
    assert_error(
        &s.post("/_matrix/client/v3/register", Some(AS_TOKEN), reg("outsider", json!({}))).await,
        400,
        "M_EXCLUSIVE",
    );
    assert_error(
        &s.post("/_matrix/client/v3/register", Some(&at), reg("bridge_x", json!({}))).await,
        403,
        "M_FORBIDDEN",
    );
    assert_error(&s.post("/_matrix/client/v3/register", None, reg("bridge_y", json!({}))).await, 403, "M_FORBIDDEN");
    let walked = s.register_walking_uia(json!({"username": "bridge_squatter", "password": "pw-squatter-1"})).await;
    assert_error(&walked, 400, "M_EXCLUSIVE");
    assert_error(
        &s.get("/_matrix/client/v3/register/available?username=bridge_squatter", None).await,
        400,
        "M_EXCLUSIVE",
    );

    // Masquerading: as a user it registered, never as someone else's or an unregistered one.
    let ghost_id = format!("@bridge_ghost:{server}");
    let as_ghost = |path: &str| format!("{path}?user_id={}", encode(&ghost_id));
    let (status, me) = s.get(&as_ghost("/_matrix/client/v3/account/whoami"), Some(AS_TOKEN)).await;
    assert_eq!((status, me["user_id"].as_str()), (StatusCode::OK, Some(&*ghost_id)), "{me}");
    let path = format!("/_matrix/client/v3/account/whoami?user_id={}", encode(&alice));
    assert_error(&s.get(&path, Some(AS_TOKEN)).await, 403, "M_FORBIDDEN");
    let path = format!("/_matrix/client/v3/account/whoami?user_id={}", encode(&format!("@bridge_nobody:{server}")));
    assert_error(&s.get(&path, Some(AS_TOKEN)).await, 403, "M_FORBIDDEN");
    // The ghost's profile, set by the bridge.
    let path = as_ghost(&format!("/_matrix/client/v3/profile/{}/displayname", encode(&ghost_id)));
    assert_eq!(s.put(&path, Some(AS_TOKEN), json!({"displayname": "Ghost"})).await.0, StatusCode::OK);
    let (_, name) = s.get(&format!("/_matrix/client/v3/profile/{}/displayname", encode(&ghost_id)), None).await;
    assert_eq!(name["displayname"], "Ghost");

    // The bridge logs its user in (double puppeting); nobody else may, and not as others.
    let as_login =
        |user: &str| json!({"type": "m.login.application_service", "identifier": {"type": "m.id.user", "user": user}});
    let (status, login) = s.post("/_matrix/client/v3/login", Some(AS_TOKEN), as_login(&ghost_id)).await;
    assert_eq!(status, StatusCode::OK, "{login}");
    let (_, me) = s.get("/_matrix/client/v3/account/whoami", login["access_token"].as_str()).await;
    assert_eq!(me["user_id"], ghost_id.as_str());
    assert_error(&s.post("/_matrix/client/v3/login", Some(&at), as_login(&ghost_id)).await, 403, "M_FORBIDDEN");
    assert_error(&s.post("/_matrix/client/v3/login", Some(AS_TOKEN), as_login(&alice)).await, 403, "M_FORBIDDEN");
    let (_, types) = s.get("/_matrix/client/v3/login", None).await;
    assert!(types["flows"].as_array().unwrap().iter().any(|f| f["type"] == "m.login.application_service"), "{types}");

    // Aliases of the exclusive namespace are the bridge's.
    let (_, room) = s.post("/_matrix/client/v3/createRoom", Some(&at), json!({})).await;
    let room_id = room["room_id"].as_str().unwrap().to_owned();
    let alias = |name: &str| format!("/_matrix/client/v3/directory/room/{}", encode(&format!("#{name}:{server}")));
    assert_error(&s.put(&alias("bridge_taken"), Some(&at), json!({"room_id": room_id})).await, 400, "M_EXCLUSIVE");
    assert_eq!(s.put(&alias("bridge_ok"), Some(AS_TOKEN), json!({"room_id": room_id})).await.0, StatusCode::OK);
    assert_error(&s.put(&alias("elsewhere"), Some(AS_TOKEN), json!({"room_id": room_id})).await, 400, "M_EXCLUSIVE");
    assert_eq!(s.put(&alias("mine"), Some(&at), json!({"room_id": room_id})).await.0, StatusCode::OK);

    // The bridge deactivates its user without UIA.
    let path = as_ghost("/_matrix/client/v3/account/deactivate");
    assert_eq!(s.post(&path, Some(AS_TOKEN), json!({})).await.0, StatusCode::OK);
    assert_error(&s.get(&as_ghost("/_matrix/client/v3/account/whoami"), Some(AS_TOKEN)).await, 403, "M_FORBIDDEN");
    // Only the bridge itself may list rooms in its directory or ping.
    let path = format!("/_matrix/client/v3/directory/list/appservice/net/{}", encode(&room_id));
    assert_error(&s.put(&path, Some(&at), json!({"visibility": "public"})).await, 403, "M_FORBIDDEN");
    let ping = "/_matrix/client/v1/appservice/test-bridge/ping";
    assert_error(&s.post(ping, Some(&at), json!({})).await, 403, "M_FORBIDDEN");
    assert_error(
        &s.post("/_matrix/client/v1/appservice/other/ping", Some(AS_TOKEN), json!({})).await,
        403,
        "M_FORBIDDEN",
    );
}
both_engines!(application_services_register_and_masquerade);

/// What Hearth sends the bridge: transactions of the events it is interested in (retried
/// under the same id until taken, and resumed after a restart), questions about users and
/// aliases of its namespaces, its protocols, its room list, a ping.
async fn application_services_receive_events_and_questions(b: Backend) {
    let (mut s, bridge, _dir) = start(b).await;
    let server = s.services().config.server_name.to_string();
    let (_, at, _) = s.register("alice", "pw-alice-1").await;
    let (_, room) = s.post("/_matrix/client/v3/createRoom", Some(&at), json!({})).await;
    let room_id = room["room_id"].as_str().unwrap().to_owned();
    let (_, other) = s.post("/_matrix/client/v3/createRoom", Some(&at), json!({})).await;
    let other_id = other["room_id"].as_str().unwrap().to_owned();

    // Inviting a user of the namespace that does not exist yet asks the bridge, which
    // registers it; the invite then goes through and the bridge hears of it.
    let asked = format!("@bridge_asked:{server}");
    let path = format!("/_matrix/client/v3/rooms/{room_id}/invite");
    let (status, res) = s.post(&path, Some(&at), json!({"user_id": asked})).await;
    assert_eq!(status, StatusCode::OK, "{res}");
    let invite =
        bridge.wait_for_event("the invite", |e| e["type"] == "m.room.member" && e["state_key"] == asked.as_str()).await;
    assert_eq!(
        (invite["content"]["membership"].as_str(), invite["room_id"].as_str()),
        (Some("invite"), Some(&*room_id))
    );
    // A user outside the namespace is not asked about, and is not found.
    let nobody = format!("@nobody:{server}");
    assert_error(&s.post(&path, Some(&at), json!({"user_id": nobody})).await, 404, "M_NOT_FOUND");

    // The ghost joins (masqueraded); from then on every event of that room is the bridge's,
    // and none of a room without its users.
    let join = format!("/_matrix/client/v3/rooms/{room_id}/join?user_id={}", encode(&asked));
    assert_eq!(s.post(&join, Some(AS_TOKEN), json!({})).await.0, StatusCode::OK);
    let say = |room: &str, txn: &str| format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/{txn}");
    s.put(&say(&other_id, "o1"), Some(&at), json!({"msgtype": "m.text", "body": "not for the bridge"})).await;
    // The bridge refuses the next two transactions: Hearth retries the same one.
    bridge.refuse.store(2, Ordering::SeqCst);
    let (_, sent) = s.put(&say(&room_id, "t1"), Some(&at), json!({"msgtype": "m.text", "body": "hello"})).await;
    let hello = sent["event_id"].as_str().unwrap().to_owned();
    bridge.wait_for_event("alice's message", |e| e["event_id"] == hello.as_str()).await;
    {
        let txns = bridge.transactions.lock();
        let with_hello: Vec<&String> = txns
            .iter()
            .filter(|(_, b, _)| {
                b["events"].as_array().is_some_and(|l| l.iter().any(|e| e["event_id"] == hello.as_str()))
            })
            .map(|(t, _, _)| t)
            .collect();
        assert_eq!(with_hello.len(), 3, "refused twice, then taken: {txns:?}");
        assert!(with_hello.iter().all(|t| *t == with_hello[0]), "one transaction id for the retries: {with_hello:?}");
        let ids: Vec<u64> = txns.iter().filter_map(|(t, _, _)| t.parse().ok()).collect();
        assert!(ids.windows(2).all(|w| w[0] <= w[1]), "transaction ids only grow: {ids:?}");
    }
    assert!(bridge.events().iter().all(|e| e["room_id"] != other_id.as_str()), "{:?}", bridge.events());
    assert_eq!(bridge.unauthorised.load(Ordering::SeqCst), 0);

    // After a restart, delivery goes on from where it was taken: nothing twice, nothing lost.
    s.restart().await;
    *bridge.hearth.lock() = s.base.clone();
    let before = bridge.events().len();
    let (_, sent) = s.put(&say(&room_id, "t2"), Some(&at), json!({"msgtype": "m.text", "body": "again"})).await;
    let again = sent["event_id"].as_str().unwrap().to_owned();
    bridge.wait_for_event("the message after a restart", |e| e["event_id"] == again.as_str()).await;
    let events = bridge.events();
    let mut ids: Vec<&str> = events.iter().filter_map(|e| e["event_id"].as_str()).collect();
    assert_eq!(events.len(), before + 1, "{events:?}");
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), events.len(), "an event was delivered twice: {events:?}");

    // A local alias of the bridge's namespace that does not exist is asked of the bridge,
    // which makes it; joining by it works.
    let alias = format!("#bridge_room_lobby:{server}");
    let (status, found) = s.get(&format!("/_matrix/client/v3/directory/room/{}", encode(&alias)), Some(&at)).await;
    assert_eq!(status, StatusCode::OK, "{found}");
    let (status, joined) = s.post(&format!("/_matrix/client/v3/join/{}", encode(&alias)), Some(&at), json!({})).await;
    assert_eq!((status, &joined["room_id"]), (StatusCode::OK, &found["room_id"]), "{joined}");
    let missing = format!("/_matrix/client/v3/directory/room/{}", encode(&format!("#elsewhere:{server}")));
    assert_error(&s.get(&missing, Some(&at)).await, 404, "M_NOT_FOUND");

    // Protocols and lookups are the bridge's answers; its instances carry the id that
    // `/publicRooms` takes for its room list.
    let (status, protocols) = s.get("/_matrix/client/v3/thirdparty/protocols", Some(&at)).await;
    assert_eq!(status, StatusCode::OK, "{protocols}");
    assert_eq!(protocols["irc"]["instances"][0]["instance_id"], "test-bridge|libera", "{protocols}");
    let (_, one) = s.get("/_matrix/client/v3/thirdparty/protocol/irc", Some(&at)).await;
    assert_eq!(one, protocols["irc"]);
    assert_error(&s.get("/_matrix/client/v3/thirdparty/protocol/xmpp", Some(&at)).await, 404, "M_NOT_FOUND");
    let (_, users) = s.get("/_matrix/client/v3/thirdparty/user/irc?nick=nick", Some(&at)).await;
    assert_eq!(users[0]["userid"], "@bridge_nick:example", "{users}");

    let list = format!("/_matrix/client/v3/directory/list/appservice/libera/{}", encode(&room_id));
    assert_eq!(s.put(&list, Some(AS_TOKEN), json!({"visibility": "public"})).await.0, StatusCode::OK);
    let listed = |body: &Value| body["chunk"].as_array().unwrap().iter().any(|r| r["room_id"] == room_id.as_str());
    let (_, main) = s.post("/_matrix/client/v3/publicRooms", Some(&at), json!({})).await;
    assert!(!listed(&main), "not in the server's own directory: {main}");
    let (_, bridged) = s
        .post("/_matrix/client/v3/publicRooms", Some(&at), json!({"third_party_instance_id": "test-bridge|libera"}))
        .await;
    assert!(listed(&bridged), "{bridged}");
    let (_, all) = s.post("/_matrix/client/v3/publicRooms", Some(&at), json!({"include_all_networks": true})).await;
    assert!(listed(&all), "{all}");
    let (status, _) = s.request(reqwest::Method::DELETE, &list, Some(AS_TOKEN), None).await;
    assert_eq!(status, StatusCode::OK);
    let (_, bridged) = s
        .post("/_matrix/client/v3/publicRooms", Some(&at), json!({"third_party_instance_id": "test-bridge|libera"}))
        .await;
    assert!(!listed(&bridged), "{bridged}");

    // A ping reaches the bridge with its transaction id.
    let (status, pong) =
        s.post("/_matrix/client/v1/appservice/test-bridge/ping", Some(AS_TOKEN), json!({"transaction_id": "p1"})).await;
    assert_eq!(status, StatusCode::OK, "{pong}");
    assert!(pong["duration_ms"].is_u64(), "{pong}");
    assert_eq!(bridge.pings.lock().first().map(|p| p["transaction_id"].clone()), Some(json!("p1")));
}
both_engines!(application_services_receive_events_and_questions);

/// A registration that cannot be used stops start-up, naming its file.
#[tokio::test]
async fn a_broken_registration_stops_start_up() {
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("broken.yaml");
    std::fs::write(&file, registration("http://127.0.0.1:1").replace("'@bridge_.*'", "'@bridge_(('")).expect("write");
    let result =
        TestServer::try_start_with(Backend::Rocksdb, |c| c.app_service_config_files = vec![file.clone()]).await;
    let err = result.err().expect("refused").to_string();
    assert!(err.contains("broken.yaml") && err.contains("regular expression"), "{err}");
}

/// Across servers: another server's user invites a bridge's user that does not exist yet
/// (this server asks the bridge, which makes it, and the bridge hears of the invite), and
/// resolves an alias of the bridge's namespace (asked of the bridge the same way).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_servers_users_reach_a_bridges_users_and_aliases() {
    let (bridge, url) = Bridge::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("bridge.yaml");
    std::fs::write(&file, registration(&url)).expect("write");
    let p = crate::federation::pair_with(|c| c.app_service_config_files = vec![file.clone()]).await;
    *bridge.hearth.lock() = p.a.base.clone();
    *bridge.client.lock() = p.a.http.clone();
    let (_, bob_token, _) = p.b.register("bob", "a long password").await;
    let (_, created) = p.b.post("/_matrix/client/v3/createRoom", Some(&bob_token), json!({})).await;
    let room = created["room_id"].as_str().expect("room id").to_owned();
    let asked = "@bridge_asked:a.test";
    let path = format!("/_matrix/client/v3/rooms/{room}/invite");
    let (status, res) = p.b.post(&path, Some(&bob_token), json!({"user_id": asked})).await;
    assert_eq!(status, StatusCode::OK, "{res}");
    let invite = bridge
        .wait_for_event("the invite from b.test", |e| e["type"] == "m.room.member" && e["state_key"] == asked)
        .await;
    assert_eq!((invite["room_id"].as_str(), invite["content"]["membership"].as_str()), (Some(&*room), Some("invite")));
    // Someone b.test does not know is still refused.
    let (status, _) = p.b.post(&path, Some(&bob_token), json!({"user_id": "@nobody:a.test"})).await;
    assert_ne!(status, StatusCode::OK);

    let alias = "/_matrix/client/v3/directory/room/%23bridge_room_x%3Aa.test";
    let (status, found) = p.b.get(alias, Some(&bob_token)).await;
    assert_eq!(status, StatusCode::OK, "{found}");
    assert!(found["room_id"].is_string() && found["servers"] == json!(["a.test"]), "{found}");
}
