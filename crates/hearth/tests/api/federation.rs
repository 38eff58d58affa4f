//! Two Hearths federating over real TLS on loopback: each has a leaf certificate of one
//! throw-away CA and trusts it through `federation_ca_file`; their server names (`a.test`,
//! `b.test`) are found through SRV records of a real DNS server on loopback, so discovery,
//! the SRV-pinned connection with TLS checking the server name, `X-Matrix` signing and
//! verification, key fetching and the notary API all run as between two real servers.
//! Hostile requests (no or forged `X-Matrix`, another destination) get 401, a malformed
//! `X-Matrix` 400.
//! A client's profile lookup of a remote user goes through its own server to the other.

use std::sync::Arc;

use hearth::{
    store::Backend,
    transport::server_client::{ServerClient, ServerRequest},
};
use reqwest::StatusCode;
use ruma::{
    api::federation::authentication::{XMatrix, XMatrixSigningInput},
    signatures::Ed25519KeyPair,
    OwnedServerName,
};
use serde_json::{json, Value};
use tempfile::TempDir;

use crate::{
    common::{tls::TestCa, TestServer},
    test_dns::TestDns,
};

/// A Hearth named `name`, serving TLS with a leaf of `ca` for that name, asking `dns`,
/// allowed to reach loopback and trusting `ca`.
async fn hearth(
    name: &str,
    ca: &TestCa,
    dns: &TestDns,
    files: &TempDir,
    tweak: impl FnOnce(&mut hearth::Config),
) -> TestServer {
    let certs = files.path().join(format!("{name}.crt"));
    let key = files.path().join(format!("{name}.key"));
    ca.leaf(name, &[name, "localhost", "127.0.0.1"]).write(&certs, &key);
    let ca_file = files.path().join("ca.pem");
    ca.write_pem(&ca_file);
    let dns_addr = dns.addr;
    let mut server = TestServer::start_with(Backend::Rocksdb, |c| {
        c.server_name = name.try_into().expect("server name");
        c.tls.certs = Some(certs);
        c.tls.key = Some(key);
        c.federation_ca_file = Some(ca_file);
        c.dns_servers = vec![dns_addr];
        c.ip_range_allowlist = vec!["127.0.0.0/8".parse().expect("range")];
        c.trusted_servers = vec![];
        tweak(c);
    })
    .await;
    server.http = ca.http_client();
    // Other servers find it through `_matrix-fed._tcp.<name>` → `<name>-host.test:<port>`.
    let target = format!("{}-host.test", name.trim_end_matches(".test"));
    dns.srv(&format!("_matrix-fed._tcp.{name}"), 10, 0, server.running().addr.port(), &target);
    dns.address(&target, "127.0.0.1".parse().expect("ip"));
    server
}

pub(crate) struct Pair {
    pub a: TestServer,
    pub b: TestServer,
    _ca: TestCa,
    _dns: TestDns,
    _files: TempDir,
}

pub(crate) async fn pair() -> Pair {
    pair_with(|_| {}).await
}

/// [`pair`], with a.test's configuration changed by `tweak`.
pub(crate) async fn pair_with(tweak: impl FnOnce(&mut hearth::Config)) -> Pair {
    let ca = TestCa::new("federation test CA");
    let dns = TestDns::start().await;
    let files = tempfile::tempdir().expect("tempdir");
    let a = hearth("a.test", &ca, &dns, &files, tweak).await;
    let b = hearth("b.test", &ca, &dns, &files, |_| {}).await;
    Pair { a, b, _ca: ca, _dns: dns, _files: files }
}

fn servers(s: &TestServer) -> &Arc<ServerClient> {
    &s.services().transport.servers
}

fn name(s: &str) -> OwnedServerName {
    s.try_into().expect("server name")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_profile_query_is_verified_with_keys_fetched_from_the_origin() {
    let p = pair().await;
    let (bob, token, _) = p.b.register("bob", "a long password").await;
    let (status, _) =
        p.b.put(&format!("/_matrix/client/v3/profile/{bob}/displayname"), Some(&token), json!({"displayname": "Bob"}))
            .await;
    assert_eq!(status, StatusCode::OK);

    // a.test asks b.test, signed; b.test fetches a.test's keys from a.test to verify.
    let path = format!("/_matrix/federation/v1/query/profile?user_id={}", urlencode(&bob));
    let got = servers(&p.a).request(&name("b.test"), ServerRequest::get(&path)).await.expect("request");
    assert_eq!(got.status, 200, "{}", String::from_utf8_lossy(&got.body));
    let body: Value = serde_json::from_slice(&got.body).expect("json");
    assert_eq!(body["displayname"], "Bob");

    // b.test now serves a.test's keys as a notary: a.test's own signature and b.test's.
    let (status, notarised) = p.b.get("/_matrix/key/v2/query/a.test", None).await;
    assert_eq!(status, StatusCode::OK, "{notarised}");
    let doc = &notarised["server_keys"][0];
    assert_eq!(doc["server_name"], "a.test");
    assert!(doc["signatures"]["a.test"].is_object() && doc["signatures"]["b.test"].is_object(), "{doc}");

    // A client of a.test asks a.test for bob's profile; a.test asks b.test.
    let (_, alice_token, _) = p.a.register("alice", "a long password").await;
    let (status, profile) = p.a.get(&format!("/_matrix/client/v3/profile/{bob}"), Some(&alice_token)).await;
    assert_eq!(status, StatusCode::OK, "{profile}");
    assert_eq!(profile["displayname"], "Bob");
    let (status, shown) = p.a.get(&format!("/_matrix/client/v3/profile/{bob}/displayname"), Some(&alice_token)).await;
    assert_eq!((status, &shown["displayname"]), (StatusCode::OK, &json!("Bob")), "{shown}");
    let (status, missing) = p.a.get("/_matrix/client/v3/profile/@nobody:b.test", Some(&alice_token)).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{missing}");
    // A server that does not exist: 502, not a hang or a 500.
    let (status, gone) = p.a.get("/_matrix/client/v3/profile/@x:nowhere.test", Some(&alice_token)).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{gone}");

    // The operator sees what discovery cached (b.test has no .well-known, so a failure is
    // cached) and can flush it; only server admins may (alice was a.test's first user).
    let (status, cache) = p.a.get("/_hearth/admin/v1/federation/discovery", Some(&alice_token)).await;
    assert_eq!(status, StatusCode::OK, "{cache}");
    let b_entry = cache["well_known"].as_array().expect("list").iter().find(|e| e["host"] == "b.test").cloned();
    assert_eq!(b_entry.expect("b.test is cached")["delegated_to"], Value::Null);
    let (_, carol_token, _) = p.a.register("carol", "a long password").await;
    let (status, _) = p.a.get("/_hearth/admin/v1/federation/discovery", Some(&carol_token)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, flushed) =
        p.a.request(reqwest::Method::DELETE, "/_hearth/admin/v1/federation/discovery", Some(&alice_token), None).await;
    assert_eq!(status, StatusCode::OK, "{flushed}");
    assert!(flushed["flushed"].as_u64().expect("count") >= 1);
    let (_, cache) = p.a.get("/_hearth/admin/v1/federation/discovery", Some(&alice_token)).await;
    assert_eq!(cache["well_known"], json!([]));

    // An unknown user is 404, signed request or not.
    let path = "/_matrix/federation/v1/query/profile?user_id=%40nobody%3Ab.test";
    let got = servers(&p.a).request(&name("b.test"), ServerRequest::get(path)).await.expect("request");
    assert_eq!(got.status, 404);
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// An `Authorization` value for `GET uri` signed by `key` as `origin` for `destination`.
fn x_matrix(key: &Ed25519KeyPair, origin: &str, destination: &str, uri: &str) -> String {
    let request = http::Request::builder().method("GET").uri(uri).body(Vec::<u8>::new()).expect("request");
    let input = XMatrixSigningInput::new(name(origin), name(destination), key);
    XMatrix::sign_http_request(&request, input).expect("sign").to_string()
}

/// A client of a.test finds a room of b.test by its alias and in b.test's public
/// directory: a.test asks b.test (`query/directory`, `publicRooms`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_aliases_and_public_rooms_are_asked_of_their_server() {
    let p = pair().await;
    let (_, bob_token, _) = p.b.register("bob", "a long password").await;
    let (status, created) =
        p.b.post(
            "/_matrix/client/v3/createRoom",
            Some(&bob_token),
            json!({"room_alias_name": "lobby", "visibility": "public", "name": "The Lobby"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{created}");
    let room_id = created["room_id"].as_str().expect("room id");

    let (_, alice_token, _) = p.a.register("alice", "a long password").await;
    let (status, alias) = p.a.get("/_matrix/client/v3/directory/room/%23lobby%3Ab.test", Some(&alice_token)).await;
    assert_eq!(status, StatusCode::OK, "{alias}");
    assert_eq!(alias["room_id"], room_id);
    assert_eq!(alias["servers"], json!(["b.test"]));
    let (status, missing) = p.a.get("/_matrix/client/v3/directory/room/%23nope%3Ab.test", Some(&alice_token)).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{missing}");

    let (status, dir) = p.a.get("/_matrix/client/v3/publicRooms?server=b.test", Some(&alice_token)).await;
    assert_eq!(status, StatusCode::OK, "{dir}");
    assert_eq!(dir["chunk"][0]["room_id"], room_id, "{dir}");
    assert_eq!(dir["chunk"][0]["name"], "The Lobby");
    let (status, found) =
        p.a.post(
            "/_matrix/client/v3/publicRooms?server=b.test",
            Some(&alice_token),
            json!({"filter": {"generic_search_term": "lobb"}}),
        )
        .await;
    assert_eq!((status, found["chunk"].as_array().map(Vec::len)), (StatusCode::OK, Some(1)), "{found}");
    let (_, none) =
        p.a.post(
            "/_matrix/client/v3/publicRooms?server=b.test",
            Some(&alice_token),
            json!({"filter": {"generic_search_term": "zzz"}}),
        )
        .await;
    assert_eq!(none["chunk"], json!([]), "{none}");
    // a.test's own directory is empty: the room is b.test's.
    let (_, own) = p.a.get("/_matrix/client/v3/publicRooms", Some(&alice_token)).await;
    assert_eq!(own["chunk"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_and_forged_x_matrix_are_401_malformed_400() {
    let p = pair().await;
    p.b.register("bob", "a long password").await;
    let uri = "/_matrix/federation/v1/query/profile?user_id=%40bob%3Ab.test";
    let url = format!("{}{uri}", p.b.base);
    let send = |auth: Option<String>| {
        let mut req = p.b.http.get(&url);
        if let Some(a) = auth {
            req = req.header("Authorization", a);
        }
        async move {
            let res = req.send().await.expect("send");
            let status = res.status();
            (status, res.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let unauthorized = |(status, body): (StatusCode, Value), what: &str| {
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}: {body}");
        assert_eq!(body["errcode"], "M_UNAUTHORIZED", "{what}: {body}");
    };

    unauthorized(send(None).await, "no Authorization");
    // A header that does not parse is a bad request, as on Synapse (sytest's "Non-numeric
    // ports in server names are rejected").
    for malformed in ["X-Matrix nonsense", "X-Matrix origin=\"localhost:http\",key=\"ed25519:1\",sig=\"x\""] {
        let (status, body) = send(Some(malformed.into())).await;
        assert_eq!((status, &body["errcode"]), (StatusCode::BAD_REQUEST, &json!("M_UNAUTHORIZED")), "{malformed}");
    }
    unauthorized(send(Some("Bearer abc".into())).await, "another scheme");

    // a.test's real key (from its database), for requests that differ in one thing each.
    let a_key = p.a.services().server_key.clone();
    let real = |destination: &str, uri: &str| x_matrix(a_key.ed25519(), "a.test", destination, uri);
    unauthorized(send(Some(real("c.test", uri))).await, "another destination");
    unauthorized(send(Some(real("b.test", "/_matrix/federation/v1/query/profile?user_id=x"))).await, "another URI");
    // A key of the same id that is not a.test's: the signature does not verify.
    let forger =
        Ed25519KeyPair::from_der(&Ed25519KeyPair::generate(), a_key.key_id()[8..].to_owned()).expect("key pair");
    unauthorized(send(Some(x_matrix(&forger, "a.test", "b.test", uri))).await, "forged signature");
    // A server nobody can reach: no keys, so nothing verifies.
    let stranger = Ed25519KeyPair::from_der(&Ed25519KeyPair::generate(), "k1".into()).expect("pair");
    unauthorized(send(Some(x_matrix(&stranger, "nowhere.test", "b.test", uri))).await, "unknown origin");

    // The same request, properly signed, is answered.
    let (status, body) = send(Some(real("b.test", uri))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsigned_version_and_key_endpoints() {
    let p = pair().await;
    let got = servers(&p.a)
        .request(&name("b.test"), ServerRequest::get("/_matrix/federation/v1/version").unsigned())
        .await
        .expect("request");
    assert_eq!(got.status, 200);
    let body: Value = serde_json::from_slice(&got.body).expect("json");
    assert_eq!(body["server"]["name"], "Hearth");

    // The key document is the same between two requests (served from memory) and valid
    // for days.
    let (_, first) = p.b.get("/_matrix/key/v2/server", None).await;
    let (_, second) = p.b.get("/_matrix/key/v2/server", None).await;
    assert_eq!(first, second);
    let until = first["valid_until_ts"].as_u64().expect("valid_until_ts");
    assert!(until > hearth::time::now_millis() + 3 * 24 * 3600 * 1000);

    // A batch notary query for both servers and one that does not exist.
    let (status, batch) = p
        .b
        .post("/_matrix/key/v2/query", None, json!({"server_keys": {"a.test": {}, "b.test": {}, "nowhere.test": {}}}))
        .await;
    assert_eq!(status, StatusCode::OK, "{batch}");
    let mut names: Vec<&str> =
        batch["server_keys"].as_array().expect("list").iter().filter_map(|d| d["server_name"].as_str()).collect();
    names.sort();
    assert_eq!(names, ["a.test", "b.test"]);

    // A batch over the limit is refused before anything is fetched, and so is a server name
    // that is not one.
    let many: serde_json::Map<String, Value> = (0..101).map(|i| (format!("s{i}.test"), json!({}))).collect();
    let (status, refused) = p.b.post("/_matrix/key/v2/query", None, json!({ "server_keys": many })).await;
    assert_eq!((status, &refused["errcode"]), (StatusCode::BAD_REQUEST, &json!("M_INVALID_PARAM")), "{refused}");
    let (status, _) = p.b.get("/_matrix/key/v2/query/not%20a%20server", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

/// A burst of signed requests from a server whose keys are not cached yet: all are
/// answered, and the origin is asked for its keys once, not once per request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_from_a_new_server_fetches_its_keys_once() {
    let p = pair().await;
    p.b.register("bob", "a long password").await;
    let path = "/_matrix/federation/v1/query/profile?user_id=%40bob%3Ab.test";
    let b_name = name("b.test");
    let sends = (0..8).map(|_| servers(&p.a).request(&b_name, ServerRequest::get(path)));
    for got in futures_util::future::join_all(sends).await {
        assert_eq!(got.expect("request").status, 200);
    }
    // a.test's own count of `GET /_matrix/key/v2/server` served (its metrics text).
    let text = p.a.services().metrics.render(&[], &[]);
    let fetches: u64 = text
        .lines()
        .filter(|l| l.starts_with("hearth_http_requests_total") && l.contains("/_matrix/key/v2/server"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(fetches, 1, "{text}");
}

/// Two Hearths, and bob of b.test's public room of version 10: (pair, bob's token, room).
async fn pair_with_a_room_at_b() -> (Pair, String, String) {
    let p = pair().await;
    let (_, bob_token, _) = p.b.register("bob", "a long password").await;
    let (_, created) = p
        .b
        .post("/_matrix/client/v3/createRoom", Some(&bob_token), json!({"preset": "public_chat", "room_version": "10"}))
        .await;
    let room = created["room_id"].as_str().expect("room id").to_owned();
    (p, bob_token, room)
}

/// `user` of a.test's join of b.test's `room`: `make_join` asked of b.test, the template
/// signed with a.test's key. Returns the event id and the event.
async fn a_join_made_at_b(p: &Pair, room: &str, user: &str) -> (String, ruma::CanonicalJsonObject) {
    let path = format!("/_matrix/federation/v1/make_join/{}/{}?ver=10", urlencode(room), urlencode(user));
    let got = servers(&p.a).request(&name("b.test"), ServerRequest::get(&path)).await.expect("make_join");
    assert_eq!(got.status, 200, "{}", String::from_utf8_lossy(&got.body));
    let made: Value = serde_json::from_slice(&got.body).expect("json");
    let version: ruma::RoomVersionId = made["room_version"].as_str().expect("version").try_into().expect("version");
    let rules = version.rules().expect("rules");
    let mut event: ruma::CanonicalJsonObject = serde_json::from_value(made["event"].clone()).expect("template");
    event.insert(
        "origin_server_ts".into(),
        ruma::CanonicalJsonValue::Integer(ruma::Int::from(1_700_000_000u32) * ruma::Int::from(1000u32)),
    );
    ruma::signatures::hash_and_sign_event("a.test", p.a.services().server_key.ed25519(), &mut event, &rules.redaction)
        .expect("sign");
    let hash = ruma::signatures::reference_hash(&event, &rules).expect("hash");
    (format!("${hash}"), event)
}

/// a.test's `send_join` v2 of `event` to b.test, with `omit_members` as given: the answer.
async fn send_join_v2(p: &Pair, room: &str, event_id: &str, event: &ruma::CanonicalJsonObject, omit: bool) -> Value {
    let path =
        format!("/_matrix/federation/v2/send_join/{}/{}?omit_members={omit}", urlencode(room), urlencode(event_id));
    let body = serde_json::to_value(event).expect("json");
    let req = ServerRequest { method: http::Method::PUT, ..ServerRequest::post(&path, &body) };
    let got = servers(&p.a).request(&name("b.test"), req).await.expect("send_join");
    assert_eq!(got.status, 200, "{}", String::from_utf8_lossy(&got.body));
    serde_json::from_slice(&got.body).expect("json")
}

/// A join that asks for partial state (`omit_members`, as Synapse asks): the state leaves
/// out member events but for the heroes of an unnamed room, the auth chain leaves out what
/// the state carries and still holds the members the auth rules need, and
/// `servers_in_room` names the servers in the room before the join.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_state_join_leaves_out_members_but_the_heroes() {
    let (p, bob_token, room) = pair_with_a_room_at_b().await;
    // Six members besides the joining user: one more than the five heroes.
    let mut others = vec!["@bob:b.test".to_owned()];
    for i in 1..=5 {
        let (user, token, _) = p.b.register(&format!("member{i}"), "a long password").await;
        let join = format!("/_matrix/client/v3/rooms/{}/join", urlencode(&room));
        assert_eq!(p.b.post(&join, Some(&token), json!({})).await.0, StatusCode::OK);
        others.push(user);
    }
    // Version 10 PDUs carry no id: it is their reference hash.
    let rules = ruma::RoomVersionId::V10.rules().expect("rules");
    let ids = |events: &Value| -> Vec<String> {
        let events = events.as_array().expect("events").iter();
        events
            .map(|e| {
                let object: ruma::CanonicalJsonObject = serde_json::from_value(e.clone()).expect("pdu");
                format!("${}", ruma::signatures::reference_hash(&object, &rules).expect("hash"))
            })
            .collect()
    };
    let members = |state: &Value| -> Vec<String> {
        let mut m: Vec<String> = state
            .as_array()
            .expect("state")
            .iter()
            .filter(|e| e["type"] == "m.room.member")
            .map(|e| e["state_key"].as_str().expect("key").to_owned())
            .collect();
        m.sort();
        m
    };
    // An unnamed room: the five heroes' member events come, the sixth member's does not.
    let (event_id, event) = a_join_made_at_b(&p, &room, "@alice:a.test").await;
    let answer = send_join_v2(&p, &room, &event_id, &event, true).await;
    assert_eq!(answer["members_omitted"], true, "{answer}");
    assert_eq!(answer["servers_in_room"], json!(["b.test"]), "{answer}");
    others.sort();
    assert_eq!(members(&answer["state"]), others[..5].to_vec(), "{answer}");
    assert!(answer["state"].as_array().expect("state").iter().any(|e| e["type"] == "m.room.create"));
    // No event twice, and the creator's join (which the power levels rest on) in the chain.
    let state_ids = ids(&answer["state"]);
    let chain_ids = ids(&answer["auth_chain"]);
    assert!(chain_ids.iter().all(|id| !state_ids.contains(id)), "{answer}");
    let (_, current) = p.b.get(&format!("/_matrix/client/v3/rooms/{}/state", urlencode(&room)), Some(&bob_token)).await;
    let bob_join = current
        .as_array()
        .expect("state")
        .iter()
        .find(|e| e["type"] == "m.room.member" && e["state_key"] == "@bob:b.test")
        .map(|e| e["event_id"].as_str().expect("id").to_owned())
        .expect("bob's join");
    assert!(state_ids.contains(&bob_join), "bob is a hero: {answer}");

    // Named, the room has no heroes: no member event in the state at all; without
    // `omit_members` the state is whole again.
    let name_path = format!("/_matrix/client/v3/rooms/{}/state/m.room.name", urlencode(&room));
    assert_eq!(p.b.put(&name_path, Some(&bob_token), json!({"name": "Named"})).await.0, StatusCode::OK);
    let (event_id, event) = a_join_made_at_b(&p, &room, "@dave:a.test").await;
    let answer = send_join_v2(&p, &room, &event_id, &event, true).await;
    assert_eq!(answer["members_omitted"], true, "{answer}");
    assert_eq!(members(&answer["state"]), Vec::<String>::new(), "{answer}");
    let chain_ids = ids(&answer["auth_chain"]);
    assert!(chain_ids.contains(&bob_join), "the creator's join is in the auth chain: {answer}");
    // a.test now has alice in the room: it counts as in the room before dave's join.
    assert_eq!(answer["servers_in_room"], json!(["a.test", "b.test"]), "{answer}");
    let (event_id, event) = a_join_made_at_b(&p, &room, "@erin:a.test").await;
    let answer = send_join_v2(&p, &room, &event_id, &event, false).await;
    assert_ne!(answer["members_omitted"], true, "{answer}");
    let mut everyone = others.clone();
    everyone.extend(["@alice:a.test".to_owned(), "@dave:a.test".to_owned()]);
    everyone.sort();
    assert_eq!(members(&answer["state"]), everyone, "{answer}");
}

/// An erased user's events go to other servers redacted: after bob of b.test deactivates
/// with `erase`, a.test fetching his message over federation gets no content.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erased_users_events_are_served_redacted() {
    let (p, bob_token, room) = pair_with_a_room_at_b().await;
    let (_, alice_token, _) = p.a.register("alice", "a long password").await;
    let join = format!("/_matrix/client/v3/join/{}?via=b.test", urlencode(&room));
    assert_eq!(p.a.post(&join, Some(&alice_token), json!({})).await.0, StatusCode::OK);
    let (_, sent) =
        p.b.put(
            &format!("/_matrix/client/v3/rooms/{}/send/m.room.message/e1", urlencode(&room)),
            Some(&bob_token),
            json!({"msgtype": "m.text", "body": "forget me"}),
        )
        .await;
    let event = sent["event_id"].as_str().expect("event id").to_owned();
    let fetch = || async {
        let path = format!("/_matrix/federation/v1/event/{}", urlencode(&event));
        let got = servers(&p.a).request(&name("b.test"), ServerRequest::get(&path)).await.expect("event");
        assert_eq!(got.status, 200, "{}", String::from_utf8_lossy(&got.body));
        let body: Value = serde_json::from_slice(&got.body).expect("json");
        body["pdus"][0]["content"].clone()
    };
    assert_eq!(fetch().await["body"], "forget me");
    let got =
        p.b.with_password_uia(
            http::Method::POST,
            "/_matrix/client/v3/account/deactivate",
            &bob_token,
            json!({"erase": true}),
            "@bob:b.test",
            "a long password",
        )
        .await;
    assert_eq!(got.0, StatusCode::OK, "{}", got.1);
    assert_eq!(fetch().await, json!({}), "served redacted");
}

/// `get_missing_events` takes a body with fields left out (Synapse's defaults), answers a
/// member server, and refuses a server the room's ACL bans before reading anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_events_default_their_body_and_honour_the_acl() {
    let (p, bob_token, room) = pair_with_a_room_at_b().await;
    let (_, alice_token, _) = p.a.register("alice", "a long password").await;
    let join = format!("/_matrix/client/v3/join/{}?via=b.test", urlencode(&room));
    assert_eq!(p.a.post(&join, Some(&alice_token), json!({})).await.0, StatusCode::OK);
    let send = |txn: &'static str| {
        let path = format!("/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}", urlencode(&room));
        let (b, token) = (&p.b, &bob_token);
        async move { b.put(&path, Some(token), json!({"msgtype": "m.text", "body": txn})).await.1["event_id"].clone() }
    };
    let first = send("first").await;
    let second = send("second").await;
    let path = format!("/_matrix/federation/v1/get_missing_events/{}", urlencode(&room));
    let ask = |body: Value| {
        let path = path.clone();
        let p = &p;
        async move {
            let got = servers(&p.a).request(&name("b.test"), ServerRequest::post(&path, &body)).await.expect("answer");
            (got.status.as_u16(), serde_json::from_slice::<Value>(&got.body).expect("json"))
        }
    };
    assert_eq!(ask(json!({})).await, (200, json!({"events": []})));
    let (status, got) = ask(json!({"latest_events": [second], "earliest_events": [], "limit": 1})).await;
    assert_eq!(status, 200, "{got}");
    let ids: Vec<&str> =
        got["events"].as_array().expect("events").iter().filter_map(|e| e["content"]["body"].as_str()).collect();
    assert_eq!(ids, ["first"], "{got} (first: {first})");
    let (status, got) = ask(json!({"latest_events": "nope"})).await;
    assert_eq!((status, got["errcode"].as_str()), (400, Some("M_BAD_JSON")), "{got}");

    let acl = format!("/_matrix/client/v3/rooms/{}/state/m.room.server_acl/", urlencode(&room));
    let deny = json!({"allow": ["*"], "deny": ["a.test"], "allow_ip_literals": false});
    assert_eq!(p.b.put(&acl, Some(&bob_token), deny).await.0, StatusCode::OK);
    let (status, got) = ask(json!({})).await;
    assert_eq!((status, got["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{got}");
}

/// What older servers and sytest still send, answered as Synapse answers it: a join through
/// `send_join` v1 (its answer is `[200, {…}]`), the notary's key query with a key id, a
/// `make_join` for a room this server has left (404), and a body the signature cannot
/// cover (a float has no canonical JSON form: 400 `M_BAD_JSON`, not 401).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn older_forms_and_edge_answers_of_the_federation_api() {
    let (p, bob_token, room) = pair_with_a_room_at_b().await;
    let alice = "@alice:a.test";
    let b = name("b.test");

    // A notary asked for keys it has never fetched fetches them, even with a minimum
    // validity of 0 (sytest asks so).
    let key_id = p.a.services().server_key.key_id();
    let query = json!({"server_keys": {"a.test": {&key_id: {"minimum_valid_until_ts": 0}}}});
    let (status, keys) = p.b.post("/_matrix/key/v2/query", None, query).await;
    assert_eq!(status, StatusCode::OK, "{keys}");
    assert_eq!(keys["server_keys"][0]["server_name"], "a.test", "{keys}");

    // send_join v1: a.test's join, made from b.test's template and signed with a.test's key.
    let (event_id, event) = a_join_made_at_b(&p, &room, alice).await;
    let path = format!("/_matrix/federation/v1/send_join/{}/{}", urlencode(&room), urlencode(&event_id));
    // Without a.test's signature the join is refused with 403, as Synapse refuses it.
    let mut unsigned = serde_json::to_value(&event).expect("json");
    unsigned.as_object_mut().expect("object").remove("signatures");
    let req = ServerRequest { method: http::Method::PUT, ..ServerRequest::post(&path, &unsigned) };
    let got = servers(&p.a).request(&b, req).await.expect("send_join v1");
    let refused: Value = serde_json::from_slice(&got.body).unwrap_or(Value::Null);
    assert_eq!((got.status.as_u16(), &refused["errcode"]), (403, &json!("M_FORBIDDEN")), "{refused}");
    let body = serde_json::to_value(&event).expect("json");
    let req = ServerRequest { method: http::Method::PUT, ..ServerRequest::post(&path, &body) };
    let got = servers(&p.a).request(&b, req).await.expect("send_join v1");
    assert_eq!(got.status, 200, "{}", String::from_utf8_lossy(&got.body));
    let answer: Value = serde_json::from_slice(&got.body).expect("json");
    assert_eq!(answer[0], 200, "{answer}");
    let state = answer[1]["state"].as_array().expect("state");
    assert!(state.iter().any(|e| e["type"] == "m.room.create"), "{answer}");
    assert!(answer[1]["auth_chain"].is_array() && answer[1]["origin"] == "b.test", "{answer}");
    let (_, members) = p.b.get(&format!("/_matrix/client/v3/rooms/{room}/joined_members"), Some(&bob_token)).await;
    assert!(members["joined"].get(alice).is_some(), "{members}");

    // The notary's deprecated form with a key id (a.test's keys are cached by now).
    let (status, keys) = p.b.get(&format!("/_matrix/key/v2/query/a.test/{key_id}"), None).await;
    assert_eq!(status, StatusCode::OK, "{keys}");
    let doc = &keys["server_keys"][0];
    assert!(doc["server_name"] == "a.test" && doc["verify_keys"][&key_id].is_object(), "{keys}");
    assert!(doc["signatures"]["b.test"].is_object(), "notarised: {keys}");

    // A body with a float: 400, whatever the signature.
    let url = format!("{}/_matrix/federation/v1/send/float-1", p.b.base);
    let auth = x_matrix(p.a.services().server_key.ed25519(), "a.test", "b.test", "/_matrix/federation/v1/send/float-1");
    let res =
        p.b.http
            .put(&url)
            .header("Authorization", auth)
            .header("Content-Type", "application/json")
            .body(r#"{"origin":"a.test","origin_server_ts":1,"pdus":[],"edus":[],"x":1.5}"#)
            .send()
            .await
            .expect("send");
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let body: Value = res.json().await.expect("json");
    assert_eq!(body["errcode"], "M_BAD_JSON", "{body}");

    // Once its last member left, b.test no longer makes joins for the room.
    let (_, other) = p
        .b
        .post("/_matrix/client/v3/createRoom", Some(&bob_token), json!({"preset": "public_chat", "room_version": "10"}))
        .await;
    let other = other["room_id"].as_str().expect("room id").to_owned();
    let leave = format!("/_matrix/client/v3/rooms/{}/leave", urlencode(&other));
    assert_eq!(p.b.post(&leave, Some(&bob_token), json!({})).await.0, StatusCode::OK);
    let path = format!("/_matrix/federation/v1/make_join/{}/{}?ver=10", urlencode(&other), urlencode(alice));
    let got = servers(&p.a).request(&b, ServerRequest::get(&path)).await.expect("make_join");
    assert_eq!(got.status, 404, "{}", String::from_utf8_lossy(&got.body));
}
