//! Spaces: `/hierarchy` walks a space's children as each viewer may see them, and
//! restricted rooms let in the members of the space they allow.

use hearth::store::Backend;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::{
    both_engines,
    common::{assert_error, TestServer},
};

both_engines!(a_space_is_walked_as_each_viewer_may_see_it, restricted_rooms_let_in_members_of_the_space);

async fn create(s: &TestServer, token: &str, body: Value) -> String {
    let (status, made) = s.post("/_matrix/client/v3/createRoom", Some(token), body).await;
    assert_eq!(status, StatusCode::OK, "{made}");
    made["room_id"].as_str().unwrap().to_owned()
}

async fn add_child(s: &TestServer, token: &str, space: &str, child: &str, extra: Value) {
    let mut content = json!({"via": ["hearth.test"]});
    if let (Some(c), Some(e)) = (content.as_object_mut(), extra.as_object()) {
        c.extend(e.clone());
    }
    let path = format!("/_matrix/client/v3/rooms/{space}/state/m.space.child/{child}");
    let (status, res) = s.put(&path, Some(token), content).await;
    assert_eq!(status, StatusCode::OK, "{res}");
}

fn room_ids(page: &Value) -> Vec<String> {
    page["rooms"].as_array().unwrap().iter().filter_map(|r| r["room_id"].as_str().map(str::to_owned)).collect()
}

/// A space with a sub-space, each holding rooms: the walk is breadth-first, ordered by
/// `order`, and leaves out what the viewer may not see.
async fn a_space_is_walked_as_each_viewer_may_see_it(b: Backend) {
    let s = TestServer::start(b).await;
    let (_, at, _) = s.register("alice", "pw-alice-1").await;
    let (_, bt, _) = s.register("bob", "pw-bob-1").await;
    let space = json!({"preset": "public_chat", "name": "Family", "creation_content": {"type": "m.space"}});
    let root = create(&s, &at, space.clone()).await;
    let sub =
        create(&s, &at, json!({"preset": "public_chat", "name": "Cousins", "creation_content": {"type": "m.space"}}))
            .await;
    let photos = create(&s, &at, json!({"preset": "public_chat", "name": "Photos", "topic": "Holidays"})).await;
    let secrets = create(&s, &at, json!({"preset": "private_chat", "name": "Presents"})).await;
    let recipes = create(&s, &at, json!({"preset": "public_chat", "name": "Recipes"})).await;
    add_child(&s, &at, &root, &photos, json!({"order": "b", "suggested": true})).await;
    add_child(&s, &at, &root, &sub, json!({"order": "a"})).await;
    add_child(&s, &at, &root, &secrets, json!({})).await;
    add_child(&s, &at, &sub, &recipes, json!({})).await;
    // A removed child (empty via) is not one.
    add_child(&s, &at, &root, "!gone:hearth.test", json!({"via": []})).await;

    let path = format!("/_matrix/client/v1/rooms/{root}/hierarchy");
    let (status, page) = s.get(&path, Some(&at)).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(
        room_ids(&page),
        [root.as_str(), sub.as_str(), photos.as_str(), secrets.as_str(), recipes.as_str()],
        "breadth-first, by order"
    );
    let first = &page["rooms"][0];
    assert_eq!((first["room_type"].as_str(), first["name"].as_str()), (Some("m.space"), Some("Family")));
    assert_eq!((first["num_joined_members"].as_u64(), first["join_rule"].as_str()), (Some(1), Some("public")));
    let children = first["children_state"].as_array().unwrap();
    assert_eq!(children.len(), 3, "{first}");
    assert!(children
        .iter()
        .all(|c| c["type"] == "m.space.child" && c["origin_server_ts"].is_u64() && c["sender"].is_string()));
    assert_eq!(page["rooms"][2]["topic"], "Holidays");

    // bob, in none of them: the private room is not his to see.
    let (_, seen) = s.get(&path, Some(&bt)).await;
    assert_eq!(room_ids(&seen), [root.as_str(), sub.as_str(), photos.as_str(), recipes.as_str()]);
    let (_, suggested) = s.get(&format!("{path}?suggested_only=true"), Some(&bt)).await;
    assert_eq!(room_ids(&suggested), [root.as_str(), photos.as_str()]);
    let (_, shallow) = s.get(&format!("{path}?max_depth=0"), Some(&bt)).await;
    assert_eq!(room_ids(&shallow), [root.as_str()]);
    let (_, one) = s.get(&format!("{path}?max_depth=1"), Some(&bt)).await;
    assert_eq!(room_ids(&one), [root.as_str(), sub.as_str(), photos.as_str()]);

    // Pages.
    let (_, p1) = s.get(&format!("{path}?limit=2"), Some(&bt)).await;
    assert_eq!(room_ids(&p1), [root.as_str(), sub.as_str()]);
    let next = p1["next_batch"].as_str().unwrap().to_owned();
    let (_, p2) = s.get(&format!("{path}?limit=2&from={next}"), Some(&bt)).await;
    assert_eq!(room_ids(&p2), [photos.as_str(), recipes.as_str()]);
    assert!(p2.get("next_batch").is_none(), "{p2}");

    assert_error(&s.get(&format!("{path}?from=nonsense"), Some(&bt)).await, 400, "M_INVALID_PARAM");
    assert_error(&s.get(&format!("{path}?max_depth=-1"), Some(&bt)).await, 400, "M_INVALID_PARAM");
    let secret_space =
        create(&s, &at, json!({"preset": "private_chat", "creation_content": {"type": "m.space"}})).await;
    assert_error(
        &s.get(&format!("/_matrix/client/v1/rooms/{secret_space}/hierarchy"), Some(&bt)).await,
        403,
        "M_FORBIDDEN",
    );
    assert_error(
        &s.get("/_matrix/client/v1/rooms/!nowhere:hearth.test/hierarchy", Some(&bt)).await,
        403,
        "M_FORBIDDEN",
    );
}

/// A room restricted to the members of a space: shown to them in the hierarchy, joinable
/// by them (a local member with invite power vouches for the join), refused to others.
async fn restricted_rooms_let_in_members_of_the_space(b: Backend) {
    let s = TestServer::start(b).await;
    let (alice, at, _) = s.register("alice", "pw-alice-1").await;
    let (_, bt, _) = s.register("bob", "pw-bob-1").await;
    let (_, ct, _) = s.register("carol", "pw-carol-1").await;
    let space = create(&s, &at, json!({"preset": "public_chat", "creation_content": {"type": "m.space"}})).await;
    let rule = json!({"join_rule": "restricted", "allow": [{"type": "m.room_membership", "room_id": space}]});
    let club = create(
        &s,
        &at,
        json!({"preset": "private_chat", "name": "Club", "initial_state": [{"type": "m.room.join_rules", "state_key": "", "content": rule}]}),
    )
    .await;
    add_child(&s, &at, &space, &club, json!({})).await;
    let path = format!("/_matrix/client/v1/rooms/{space}/hierarchy");

    // Not yet in the space: the club is hidden and closed.
    assert_eq!(room_ids(&s.get(&path, Some(&bt)).await.1), [space.as_str()]);
    let join = format!("/_matrix/client/v3/join/{club}");
    assert_error(&s.post(&join, Some(&bt), json!({})).await, 403, "M_FORBIDDEN");

    // In the space: shown (with the rooms it allows) and open to bob.
    assert_eq!(s.post(&format!("/_matrix/client/v3/join/{space}"), Some(&bt), json!({})).await.0, StatusCode::OK);
    let (_, page) = s.get(&path, Some(&bt)).await;
    assert_eq!(room_ids(&page), [space.as_str(), club.as_str()]);
    assert_eq!(page["rooms"][1]["join_rule"], "restricted");
    assert_eq!(page["rooms"][1]["allowed_room_ids"], json!([space]));
    let (status, joined) = s.post(&join, Some(&bt), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{joined}");
    let (_, member) =
        s.get(&format!("/_matrix/client/v3/rooms/{club}/state/m.room.member/@bob:hearth.test"), Some(&bt)).await;
    assert_eq!(member["join_authorised_via_users_server"], alice.as_str(), "{member}");
    assert_eq!(member["membership"], "join");

    // carol, not in the space, still cannot.
    assert_error(&s.post(&join, Some(&ct), json!({})).await, 403, "M_FORBIDDEN");
}
