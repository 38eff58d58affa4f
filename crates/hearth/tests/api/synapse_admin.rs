//! Synapse's admin API as admin tools (synapse-admin, scripts) use it: the request and
//! response shapes of Synapse's documentation for users, registration tokens, rooms and
//! the server version; non-admins refused with 403.

use hearth::store::Backend;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::{
    both_engines,
    common::{assert_error, TestServer},
};

both_engines!(version_and_who_may_ask, users, devices_and_rooms_of_a_user, registration_tokens, rooms);

async fn version_and_who_may_ask(b: Backend) {
    let s = TestServer::start(b).await;
    // The version needs no login: admin tools show it on their login page.
    let (status, v) = s.get("/_synapse/admin/v1/server_version", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(v["server_version"].as_str().is_some_and(|v| v.starts_with("Hearth ")), "{v}");

    let (_, admin, _) = s.register("root", "pw-root-1").await;
    let (_, user, _) = s.register("mallory", "pw-mallory-1").await;
    for path in [
        "/_synapse/admin/v2/users",
        "/_synapse/admin/v3/users",
        "/_synapse/admin/v2/users/@root:hearth.test",
        "/_synapse/admin/v1/registration_tokens",
        "/_synapse/admin/v1/rooms",
    ] {
        assert_error(&s.get(path, Some(&user)).await, 403, "M_FORBIDDEN");
        assert_error(&s.get(path, None).await, 401, "M_MISSING_TOKEN");
        assert_eq!(s.get(path, Some(&admin)).await.0, StatusCode::OK, "{path}");
    }
    // What synapse-admin needs around the API: `home_server` from login (it builds new
    // users' ids from it), and CORS, since it runs on another origin.
    let login = json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "root"}, "password": "pw-root-1"});
    let (_, logged_in) = s.post("/_matrix/client/v3/login", None, login).await;
    assert_eq!(logged_in["home_server"], "hearth.test", "{logged_in}");
    let preflight = s
        .http
        .request(Method::OPTIONS, format!("{}/_synapse/admin/v2/users", s.base))
        .header("Origin", "https://admin.example.org")
        .header("Access-Control-Request-Method", "GET")
        .header("Access-Control-Request-Headers", "authorization")
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success(), "{}", preflight.status());
    assert_eq!(preflight.headers()["access-control-allow-origin"], "*");
    let (_, e) = s.get("/_synapse/admin/v1/rooms", Some(&user)).await;
    assert_eq!(e["error"], "You are not a server admin");
    let new_user = json!({"password": "pw-new-1"});
    assert_error(&s.put("/_synapse/admin/v2/users/@new:hearth.test", Some(&user), new_user).await, 403, "M_FORBIDDEN");
    assert_error(
        &s.post("/_synapse/admin/v1/registration_tokens/new", Some(&user), json!({})).await,
        403,
        "M_FORBIDDEN",
    );
}

async fn users(b: Backend) {
    let s = TestServer::start(b).await;
    let (root, admin, _) = s.register("root", "pw-root-1").await;
    for name in ["carol", "dave", "erin"] {
        s.register(name, &format!("pw-{name}-1")).await;
    }
    let users = "/_synapse/admin/v2/users";

    // Paging: `total` counts all, `next_token` is a string while more remain.
    let (_, page) = s.get(&format!("{users}?from=0&limit=2"), Some(&admin)).await;
    assert_eq!((page["total"].as_u64(), page["next_token"].as_str()), (Some(4), Some("2")), "{page}");
    let names: Vec<&str> = page["users"].as_array().unwrap().iter().filter_map(|u| u["name"].as_str()).collect();
    assert_eq!(names, ["@carol:hearth.test", "@dave:hearth.test"], "sorted by name");
    let (_, last) = s.get(&format!("{users}?from=2&limit=2"), Some(&admin)).await;
    assert!(last.get("next_token").is_none(), "{last}");
    let entry = &page["users"][0];
    for key in ["is_guest", "admin", "deactivated", "shadow_banned", "erased", "locked"] {
        assert!(entry[key].is_boolean(), "{key}: {entry}");
    }
    assert!(entry["creation_ts"].as_u64().is_some_and(|t| t > 1_000_000_000_000), "milliseconds in lists: {entry}");
    assert_eq!(entry["displayname"], "carol");
    let (_, back) = s.get(&format!("{users}?order_by=name&dir=b&limit=1"), Some(&admin)).await;
    assert_eq!(back["users"][0]["name"], root.as_str());
    let (_, found) = s.get(&format!("{users}?name=DAV"), Some(&admin)).await;
    assert_eq!((found["total"].as_u64(), found["users"][0]["name"].as_str()), (Some(1), Some("@dave:hearth.test")));
    let (_, admins) = s.get(&format!("{users}?admins=true"), Some(&admin)).await;
    assert_eq!(admins["total"], 1);
    assert_error(&s.get(&format!("{users}?guests=maybe"), Some(&admin)).await, 400, "M_INVALID_PARAM");
    assert_error(&s.get(&format!("{users}?from=-1"), Some(&admin)).await, 400, "M_INVALID_PARAM");
    assert_error(&s.get(&format!("{users}?order_by=shoe_size"), Some(&admin)).await, 400, "M_INVALID_PARAM");

    // Create (201), then the account logs in; the answer is the user in detail.
    let frank = "/_synapse/admin/v2/users/@frank:hearth.test";
    let (status, made) =
        s.put(frank, Some(&admin), json!({"password": "pw-frank-1", "displayname": "Frank", "admin": false})).await;
    assert_eq!(status, StatusCode::CREATED, "{made}");
    assert_eq!((made["name"].as_str(), made["displayname"].as_str()), (Some("@frank:hearth.test"), Some("Frank")));
    assert!(made["creation_ts"].as_u64().is_some_and(|t| t < 10_000_000_000), "seconds in detail: {made}");
    assert_eq!((made["threepids"].clone(), made["external_ids"].clone()), (json!([]), json!([])));
    let (frank_token, _) = s.login("frank", "pw-frank-1").await;

    // Change what an admin tool sends back: the whole record, unknown keys and all.
    let (_, mut record) = s.get(frank, Some(&admin)).await;
    record["displayname"] = json!("Frank F.");
    record["admin"] = json!(true);
    record["password"] = json!("pw-frank-2");
    record["avatar_src"] = json!("ignored by the server");
    let (status, changed) = s.put(frank, Some(&admin), record).await;
    assert_eq!(status, StatusCode::OK, "{changed}");
    assert_eq!((changed["displayname"].as_str(), changed["admin"].as_bool()), (Some("Frank F."), Some(true)));
    // A new password logs the account's devices out (logout_devices defaults to true).
    assert_error(&s.get("/_matrix/client/v3/account/whoami", Some(&frank_token)).await, 401, "M_UNKNOWN_TOKEN");
    let (frank_token, _) = s.login("frank", "pw-frank-2").await;
    let (_, profile) = s.get("/_matrix/client/v3/profile/@frank:hearth.test", None).await;
    assert_eq!(profile["displayname"], "Frank F.");
    assert_eq!(
        s.get("/_synapse/admin/v1/users/@frank:hearth.test/admin", Some(&admin)).await.1,
        json!({"admin": true})
    );
    let (status, _) =
        s.put("/_synapse/admin/v1/users/@frank:hearth.test/admin", Some(&admin), json!({"admin": false})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(s.get("/_synapse/admin/v1/users/@frank:hearth.test/admin", Some(&admin)).await.1["admin"], false);

    // Refusals, with Synapse's statuses.
    let me = format!("/_synapse/admin/v2/users/{root}");
    assert_error(&s.put(&me, Some(&admin), json!({"admin": false})).await, 400, "M_INVALID_PARAM");
    let threepid = json!({"threepids": [{"medium": "email", "address": "f@example.org"}]});
    assert_error(&s.put(frank, Some(&admin), threepid).await, 400, "M_INVALID_PARAM");
    assert_error(&s.put(frank, Some(&admin), json!({"admin": "yes"})).await, 400, "M_BAD_JSON");
    assert_error(&s.put(frank, Some(&admin), json!({"password": ""})).await, 400, "M_INVALID_PARAM");
    assert_error(
        &s.put("/_synapse/admin/v2/users/@Upper:hearth.test", Some(&admin), json!({})).await,
        400,
        "M_INVALID_USERNAME",
    );
    assert_error(&s.get("/_synapse/admin/v2/users/@ghost:hearth.test", Some(&admin)).await, 404, "M_NOT_FOUND");
    assert_error(
        &s.get("/_synapse/admin/v2/users/@someone:elsewhere.test", Some(&admin)).await,
        400,
        "M_INVALID_PARAM",
    );
    assert_error(&s.get("/_synapse/admin/v2/users/not-a-user", Some(&admin)).await, 400, "M_INVALID_PARAM");
    let raw = s.request(Method::PUT, frank, Some(&admin), None).await;
    assert_error(&raw, 400, "M_NOT_JSON");

    // Reset password, keeping the devices this time.
    let reset = "/_synapse/admin/v1/reset_password/@frank:hearth.test";
    let (status, _) = s.post(reset, Some(&admin), json!({"new_password": "pw-frank-3", "logout_devices": false})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(s.get("/_matrix/client/v3/account/whoami", Some(&frank_token)).await.0, StatusCode::OK);
    s.login("frank", "pw-frank-3").await;
    assert_error(&s.post(reset, Some(&admin), json!({})).await, 400, "M_MISSING_PARAM");

    // Deactivate (with erase): out of lists by default in v2, only with deactivated=true in v3.
    let (status, res) =
        s.post("/_synapse/admin/v1/deactivate/@frank:hearth.test", Some(&admin), json!({"erase": true})).await;
    assert_eq!((status, res["id_server_unbind_result"].as_str()), (StatusCode::OK, Some("success")));
    assert_error(&s.get("/_matrix/client/v3/account/whoami", Some(&frank_token)).await, 401, "M_UNKNOWN_TOKEN");
    let (_, v2) = s.get(users, Some(&admin)).await;
    assert_eq!(v2["total"], 4, "{v2}");
    let (_, v2all) = s.get(&format!("{users}?deactivated=true"), Some(&admin)).await;
    assert_eq!(v2all["total"], 5);
    let (_, v3) = s.get("/_synapse/admin/v3/users?deactivated=true", Some(&admin)).await;
    assert_eq!((v3["total"].as_u64(), v3["users"][0]["erased"].as_bool()), (Some(1), Some(true)), "{v3}");
    assert_eq!(s.get("/_synapse/admin/v3/users", Some(&admin)).await.1["total"], 5);

    // Reactivation needs a password.
    let back = json!({"deactivated": false});
    assert_error(&s.put(frank, Some(&admin), back).await, 400, "M_INVALID_PARAM");
    let (status, res) = s.put(frank, Some(&admin), json!({"deactivated": false, "password": "pw-frank-4"})).await;
    assert_eq!((status, res["deactivated"].as_bool()), (StatusCode::OK, Some(false)), "{res}");
    s.login("frank", "pw-frank-4").await;
    // And deactivation through the same PUT.
    let (_, res) = s.put(frank, Some(&admin), json!({"deactivated": true})).await;
    assert_eq!(res["deactivated"], true);
}

async fn devices_and_rooms_of_a_user(b: Backend) {
    let s = TestServer::start(b).await;
    let (_, admin, _) = s.register("root", "pw-root-1").await;
    let (grace, token, first) = s.register("grace", "pw-grace-1").await;
    let (second_token, _) = s.login("grace", "pw-grace-1").await;
    let base = format!("/_synapse/admin/v2/users/{grace}/devices");

    let (_, list) = s.get(&base, Some(&admin)).await;
    assert_eq!(list["total"], 2, "{list}");
    let device = list["devices"].as_array().unwrap().iter().find(|d| d["device_id"] == first.as_str()).unwrap();
    for key in ["display_name", "last_seen_ip", "last_seen_ts", "last_seen_user_agent"] {
        assert!(device.get(key).is_some(), "{key} present (maybe null): {device}");
    }
    assert_eq!(device["user_id"], grace.as_str());
    let one = format!("{base}/{first}");
    assert_eq!(s.put(&one, Some(&admin), json!({"display_name": "Grace's phone"})).await.0, StatusCode::OK);
    assert_eq!(s.get(&one, Some(&admin)).await.1["display_name"], "Grace's phone");
    let (_, mine) = s.get(&format!("/_matrix/client/v3/devices/{first}"), Some(&token)).await;
    assert_eq!(mine["display_name"], "Grace's phone");
    assert_error(&s.put(&one, Some(&admin), json!({"display_name": "x".repeat(101)})).await, 413, "M_TOO_LARGE");
    assert_error(&s.get(&format!("{base}/NOPE"), Some(&admin)).await, 404, "M_NOT_FOUND");
    // Deleting a device logs it out; an unknown one is no error.
    assert_eq!(s.request(Method::DELETE, &one, Some(&admin), None).await.0, StatusCode::OK);
    assert_error(&s.get("/_matrix/client/v3/account/whoami", Some(&token)).await, 401, "M_UNKNOWN_TOKEN");
    assert_eq!(s.request(Method::DELETE, &format!("{base}/NOPE"), Some(&admin), None).await.0, StatusCode::OK);
    let (_, list) = s.get(&base, Some(&admin)).await;
    let rest: Vec<String> =
        list["devices"].as_array().unwrap().iter().filter_map(|d| d["device_id"].as_str().map(str::to_owned)).collect();
    let bulk = format!("/_synapse/admin/v2/users/{grace}/delete_devices");
    assert_eq!(s.post(&bulk, Some(&admin), json!({"devices": rest})).await.0, StatusCode::OK);
    assert_error(&s.get("/_matrix/client/v3/account/whoami", Some(&second_token)).await, 401, "M_UNKNOWN_TOKEN");
    assert_eq!(s.get(&base, Some(&admin)).await.1["total"], 0);
    assert_error(&s.post(&bulk, Some(&admin), json!({})).await, 400, "M_MISSING_PARAM");

    // Joined rooms and pushers.
    let (token, _) = s.login("grace", "pw-grace-1").await;
    let (_, room) = s.post("/_matrix/client/v3/createRoom", Some(&token), json!({})).await;
    let (_, joined) = s.get(&format!("/_synapse/admin/v1/users/{grace}/joined_rooms"), Some(&admin)).await;
    assert_eq!(joined, json!({"joined_rooms": [room["room_id"]], "total": 1}));
    let (_, none) = s.get("/_synapse/admin/v1/users/@ghost:hearth.test/joined_rooms", Some(&admin)).await;
    assert_eq!(none, json!({"joined_rooms": [], "total": 0}));
    let (_, pushers) = s.get(&format!("/_synapse/admin/v1/users/{grace}/pushers"), Some(&admin)).await;
    assert_eq!(pushers, json!({"pushers": [], "total": 0}));
}

async fn registration_tokens(b: Backend) {
    let s = TestServer::start_with(b, |c| c.registration_token = None).await;
    let (_, admin, _) = s.register("root", "pw-root-1").await;
    let new = "/_synapse/admin/v1/registration_tokens/new";

    let (status, random) = s.post(new, Some(&admin), json!({"length": 20, "uses_allowed": 2})).await;
    assert_eq!(status, StatusCode::OK, "{random}");
    let token = random["token"].as_str().unwrap().to_owned();
    assert_eq!(token.len(), 20);
    assert_eq!(random, json!({"token": token, "uses_allowed": 2, "pending": 0, "completed": 0, "expiry_time": null}));
    let later = hearth::time::now_millis() + 86_400_000;
    let (_, named) = s.post(new, Some(&admin), json!({"token": "family.2026", "expiry_time": later})).await;
    assert_eq!((named["token"].as_str(), named["expiry_time"].as_u64()), (Some("family.2026"), Some(later)));

    for bad in [
        json!({"token": "no spaces"}),
        json!({"token": ""}),
        json!({"token": 7}),
        json!({"length": 0}),
        json!({"length": 65}),
        json!({"length": true}),
        json!({"uses_allowed": -1}),
        json!({"uses_allowed": true}),
        json!({"expiry_time": 1}),
        json!({"expiry_time": "tomorrow"}),
        json!({"token": "family.2026"}),
    ] {
        assert_error(&s.post(new, Some(&admin), bad.clone()).await, 400, "M_INVALID_PARAM");
    }

    // The token works for registration, and its use shows.
    let body = json!({"username": "henry", "password": "pw-henry-1"});
    let (_, challenge) = s.post("/_matrix/client/v3/register", None, body.clone()).await;
    let mut with_token = body.clone();
    with_token["auth"] = json!({"type": "m.login.registration_token", "token": token, "session": challenge["session"]});
    s.post("/_matrix/client/v3/register", None, with_token).await;
    let mut dummy = body;
    dummy["auth"] = json!({"type": "m.login.dummy", "session": challenge["session"]});
    assert_eq!(s.post("/_matrix/client/v3/register", None, dummy).await.0, StatusCode::OK);
    let one = format!("/_synapse/admin/v1/registration_tokens/{token}");
    assert_eq!(s.get(&one, Some(&admin)).await.1["completed"], 1);

    // Used up → listed as invalid; lifting the limit makes it valid again.
    let (_, changed) = s.put(&one, Some(&admin), json!({"uses_allowed": 1})).await;
    assert_eq!(changed["uses_allowed"], 1);
    let list = |valid: &str| format!("/_synapse/admin/v1/registration_tokens?valid={valid}");
    let tokens_in = |v: &Value| -> Vec<String> {
        v["registration_tokens"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|t| t["token"].as_str().map(str::to_owned))
            .collect()
    };
    assert_eq!(tokens_in(&s.get(&list("false"), Some(&admin)).await.1), std::slice::from_ref(&token));
    assert_eq!(tokens_in(&s.get(&list("true"), Some(&admin)).await.1), ["family.2026"]);
    let (_, all) = s.get("/_synapse/admin/v1/registration_tokens", Some(&admin)).await;
    assert_eq!(tokens_in(&all).len(), 2);
    // Keys besides the limits are ignored (tools send the whole record back).
    let (_, lifted) =
        s.put(&one, Some(&admin), json!({"uses_allowed": null, "token": token, "completed": 99, "id": token})).await;
    assert_eq!((lifted["uses_allowed"].clone(), lifted["completed"].as_u64()), (Value::Null, Some(1)));
    assert_error(&s.put(&one, Some(&admin), json!({"expiry_time": 5})).await, 400, "M_INVALID_PARAM");
    assert_error(&s.get(&list("sometimes"), Some(&admin)).await, 400, "M_INVALID_PARAM");

    assert_eq!(s.request(Method::DELETE, &one, Some(&admin), None).await, (StatusCode::OK, json!({})));
    assert_error(&s.get(&one, Some(&admin)).await, 404, "M_NOT_FOUND");
    assert_error(&s.request(Method::DELETE, &one, Some(&admin), None).await, 404, "M_NOT_FOUND");
    assert_error(&s.put(&one, Some(&admin), json!({})).await, 404, "M_NOT_FOUND");
}

async fn rooms(b: Backend) {
    let s = TestServer::start(b).await;
    let (root, admin, _) = s.register("root", "pw-root-1").await;
    let (ivy, ivy_token, _) = s.register("ivy", "pw-ivy-1").await;
    let create = |body: Value| s.post("/_matrix/client/v3/createRoom", Some(&ivy_token), body);
    let (_, big) = create(json!({"name": "Allotment", "topic": "Beans", "room_alias_name": "allotment", "preset": "public_chat", "visibility": "public"})).await;
    let big = big["room_id"].as_str().unwrap().to_owned();
    let (_, small) = create(json!({"name": "Book club", "initial_state": [{"type": "m.room.encryption", "state_key": "", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}]})).await;
    let small = small["room_id"].as_str().unwrap().to_owned();
    let (token, _) = s.login("root", "pw-root-1").await;
    assert_eq!(s.post(&format!("/_matrix/client/v3/join/{big}"), Some(&token), json!({})).await.0, StatusCode::OK);
    // History to purge: messages, a reaction, a receipt, a report; and a sync token from
    // before the deletion.
    let server = &s;
    let message = |txn: &'static str, body: &'static str| {
        let path = format!("/_matrix/client/v3/rooms/{big}/send/m.room.message/{txn}");
        let token = ivy_token.clone();
        async move { server.put(&path, Some(&token), json!({"msgtype": "m.text", "body": body})).await }
    };
    let (_, sent) = message("m1", "first").await;
    let first_event = sent["event_id"].as_str().unwrap().to_owned();
    message("m2", "root: look").await;
    let react = json!({"m.relates_to": {"rel_type": "m.annotation", "event_id": first_event, "key": "+1"}});
    s.put(&format!("/_matrix/client/v3/rooms/{big}/send/m.reaction/r1"), Some(&token), react).await;
    s.post(&format!("/_matrix/client/v3/rooms/{big}/receipt/m.read/{first_event}"), Some(&token), json!({})).await;
    s.post(&format!("/_matrix/client/v3/rooms/{big}/report/{first_event}"), Some(&token), json!({"reason": "test"}))
        .await;
    let (_, before) = s.get("/_matrix/client/v3/sync?timeout=0", Some(&ivy_token)).await;
    let since = before["next_batch"].as_str().unwrap().to_owned();

    let (_, page) = s.get("/_synapse/admin/v1/rooms", Some(&admin)).await;
    assert_eq!((page["total_rooms"].as_u64(), page["offset"].as_u64()), (Some(2), Some(0)), "{page}");
    let first = &page["rooms"][0];
    assert_eq!((first["room_id"].as_str(), first["name"].as_str()), (Some(big.as_str()), Some("Allotment")));
    assert_eq!(first["canonical_alias"], "#allotment:hearth.test");
    assert_eq!((first["joined_members"].as_u64(), first["joined_local_members"].as_u64()), (Some(2), Some(2)));
    assert_eq!((first["public"].as_bool(), first["federatable"].as_bool()), (Some(true), Some(true)));
    assert_eq!((first["creator"].as_str(), first["join_rules"].as_str()), (Some(ivy.as_str()), Some("public")));
    assert!(first["version"].is_string() && first["state_events"].as_u64().is_some_and(|n| n >= 5), "{first}");
    assert_eq!(page["rooms"][1]["encryption"], "m.megolm.v1.aes-sha2");
    let (_, by_size) = s.get("/_synapse/admin/v1/rooms?order_by=joined_members&limit=1", Some(&admin)).await;
    assert_eq!(
        (by_size["rooms"][0]["room_id"].as_str(), by_size["next_batch"].as_u64()),
        (Some(big.as_str()), Some(1))
    );
    let (_, second) = s.get("/_synapse/admin/v1/rooms?order_by=joined_members&from=1&limit=1", Some(&admin)).await;
    assert_eq!(
        (second["rooms"][0]["room_id"].as_str(), second["prev_batch"].as_u64()),
        (Some(small.as_str()), Some(0))
    );
    let (_, found) = s.get("/_synapse/admin/v1/rooms?search_term=book", Some(&admin)).await;
    assert_eq!(found["total_rooms"], 1);
    let (_, by_alias) = s.get("/_synapse/admin/v1/rooms?search_term=allot", Some(&admin)).await;
    assert_eq!(by_alias["rooms"][0]["room_id"], big.as_str());
    assert_error(&s.get("/_synapse/admin/v1/rooms?search_term=", Some(&admin)).await, 400, "M_INVALID_PARAM");
    assert_error(&s.get("/_synapse/admin/v1/rooms?order_by=colour", Some(&admin)).await, 400, "M_INVALID_PARAM");

    let room = format!("/_synapse/admin/v1/rooms/{big}");
    let (_, detail) = s.get(&room, Some(&admin)).await;
    assert_eq!(
        (detail["topic"].as_str(), detail["joined_local_devices"].as_u64()),
        (Some("Beans"), Some(3)),
        "{detail}"
    );
    assert_eq!(detail["forgotten"], false);
    let (_, members) = s.get(&format!("{room}/members"), Some(&admin)).await;
    assert_eq!(members["total"], 2);
    assert!(members["members"].as_array().unwrap().contains(&json!(root)), "{members}");
    let (_, state) = s.get(&format!("{room}/state"), Some(&admin)).await;
    assert!(state["state"].as_array().unwrap().iter().all(|e| e["event_id"].is_string() && e["type"].is_string()));
    let (_, names) = s.get(&format!("{room}/state?type=m.room.name"), Some(&admin)).await;
    assert_eq!(names["state"].as_array().map(Vec::len), Some(1));
    assert_eq!(names["state"][0]["content"]["name"], "Allotment");
    assert_error(&s.get("/_synapse/admin/v1/rooms/!nope:hearth.test", Some(&admin)).await, 404, "M_NOT_FOUND");
    assert_error(&s.get("/_synapse/admin/v1/rooms/nonsense", Some(&admin)).await, 400, "M_INVALID_PARAM");

    // Blocking by itself: joins refused, lifted again.
    let block = format!("/_synapse/admin/v1/rooms/{small}/block");
    assert_eq!(s.get(&block, Some(&admin)).await.1, json!({"block": false}));
    assert_eq!(s.put(&block, Some(&admin), json!({"block": true})).await.1, json!({"block": true}));
    assert_eq!(s.get(&block, Some(&admin)).await.1, json!({"block": true, "user_id": root}));
    assert_error(
        &s.post(&format!("/_matrix/client/v3/join/{small}"), Some(&token), json!({})).await,
        403,
        "M_FORBIDDEN",
    );
    s.put(&block, Some(&admin), json!({"block": false})).await;
    assert_error(&s.put(&block, Some(&admin), json!({})).await, 400, "M_MISSING_PARAM");

    // v1 delete: the local members leave, the aliases go, the directory forgets it.
    assert_error(&s.request(Method::DELETE, &room, Some(&admin), None).await, 400, "M_NOT_JSON");
    let refused = json!({"new_room_user_id": root});
    assert_error(&s.request(Method::DELETE, &room, Some(&admin), Some(refused)).await, 400, "M_INVALID_PARAM");
    let (status, done) = s.request(Method::DELETE, &room, Some(&admin), Some(json!({"block": true}))).await;
    assert_eq!(status, StatusCode::OK, "{done}");
    let mut kicked: Vec<String> = done["kicked_users"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|u| u["user_id"].as_str().or(u.as_str()).map(str::to_owned))
        .collect();
    kicked.sort();
    assert_eq!(kicked, [ivy.clone(), root.clone()]);
    assert_eq!(
        (done["local_aliases"].clone(), done["new_room_id"].clone()),
        (json!(["#allotment:hearth.test"]), Value::Null)
    );
    assert_eq!(s.get("/_matrix/client/v3/joined_rooms", Some(&ivy_token)).await.1["joined_rooms"], json!([small]));
    assert_error(&s.get("/_matrix/client/v3/directory/room/%23allotment:hearth.test", None).await, 404, "M_NOT_FOUND");
    let (_, public) = s.get("/_matrix/client/v3/publicRooms", None).await;
    assert_eq!(public["chunk"], json!([]));
    assert_error(
        &s.post(&format!("/_matrix/client/v3/join/{big}"), Some(&ivy_token), json!({})).await,
        403,
        "M_FORBIDDEN",
    );
    // Purged (the default): the server knows nothing of the room any more, and those who
    // were in it sync, read notifications and list rooms as before.
    assert_error(&s.get(&room, Some(&admin)).await, 404, "M_NOT_FOUND");
    let rooms = &s.services().rooms;
    let gone = ruma::OwnedEventId::try_from(first_event.as_str()).unwrap();
    assert!(rooms.pdu(&gone).unwrap().is_none() && rooms.event_meta(&gone).unwrap().is_none(), "the event is purged");
    let big_id = ruma::OwnedRoomId::try_from(big.as_str()).unwrap();
    assert!(rooms.room(&big_id).unwrap().is_none() && rooms.all_rooms().unwrap() == [small.as_str()]);
    let event = format!("/_matrix/client/v3/rooms/{big}/event/{first_event}");
    let (status, body) = s.get(&event, Some(&ivy_token)).await;
    assert!(status == StatusCode::FORBIDDEN || status == StatusCode::NOT_FOUND, "{status} {body}");
    let (status, _) = s.get(&format!("/_matrix/client/v3/rooms/{big}/messages?dir=b"), Some(&ivy_token)).await;
    assert!(status == StatusCode::FORBIDDEN || status == StatusCode::NOT_FOUND, "{status}");
    let (status, later) = s.get(&format!("/_matrix/client/v3/sync?timeout=0&since={since}"), Some(&ivy_token)).await;
    assert_eq!(status, StatusCode::OK, "{later}");
    assert!(later["rooms"]["join"].get(&big).is_none(), "{later}");
    let (status, fresh) = s.get("/_matrix/client/v3/sync?timeout=0", Some(&token)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(fresh["rooms"]["join"].get(&big).is_none() && fresh["rooms"]["leave"].get(&big).is_none(), "{fresh}");
    let (status, notes) = s.get("/_matrix/client/v3/notifications", Some(&token)).await;
    assert_eq!(status, StatusCode::OK, "{notes}");
    assert!(notes["notifications"].as_array().unwrap().iter().all(|n| n["room_id"] != big.as_str()), "{notes}");
    let (_, listed) = s.get("/_synapse/admin/v1/rooms", Some(&admin)).await;
    assert_eq!(listed["total_rooms"], 1, "{listed}");
    // An unknown room: nothing to do, as on Synapse.
    let (status, nothing) =
        s.request(Method::DELETE, "/_synapse/admin/v1/rooms/!gone:hearth.test", Some(&admin), Some(json!({}))).await;
    assert_eq!((status, nothing["kicked_users"].clone()), (StatusCode::OK, json!([])));

    // v2 delete: an id, and its status.
    let v2 = format!("/_synapse/admin/v2/rooms/{small}");
    let (status, started) = s.request(Method::DELETE, &v2, Some(&admin), Some(json!({"block": false}))).await;
    assert_eq!(status, StatusCode::OK, "{started}");
    let id = started["delete_id"].as_str().unwrap().to_owned();
    let (_, status_page) = s.get(&format!("/_synapse/admin/v2/rooms/delete_status/{id}"), Some(&admin)).await;
    assert_eq!(
        (status_page["status"].as_str(), status_page["room_id"].as_str()),
        (Some("complete"), Some(small.as_str()))
    );
    assert_eq!(status_page["shutdown_room"]["kicked_users"], json!([ivy]));
    let (_, by_room) = s.get(&format!("{v2}/delete_status"), Some(&admin)).await;
    assert_eq!(by_room["results"][0]["delete_id"], id.as_str());
    assert_error(&s.get("/_synapse/admin/v2/rooms/delete_status/nope", Some(&admin)).await, 404, "M_NOT_FOUND");
    assert_error(
        &s.get(&format!("/_synapse/admin/v2/rooms/{big}/delete_status"), Some(&admin)).await,
        404,
        "M_NOT_FOUND",
    );
    assert_eq!(s.get("/_matrix/client/v3/joined_rooms", Some(&ivy_token)).await.1["joined_rooms"], json!([]));
}
