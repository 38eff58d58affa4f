//! Profiles: display name and avatar.

use hearth::store::Backend;
use reqwest::StatusCode;
use serde_json::json;

use crate::{
    both_engines,
    common::{assert_error, TestServer, SERVER_NAME},
};

async fn display_name_and_avatar(b: Backend) {
    let s = TestServer::start(b).await;
    let (user, token, _) = s.register("alice", "pw-alice-1").await;

    // Starts as the localpart.
    let (status, res) = s.get(&format!("/_matrix/client/v3/profile/{user}/displayname"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(res["displayname"], "alice");

    let (status, _) = s
        .put(
            &format!("/_matrix/client/v3/profile/{user}/displayname"),
            Some(&token),
            json!({"displayname": "Alice A."}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = s
        .put(
            &format!("/_matrix/client/v3/profile/{user}/avatar_url"),
            Some(&token),
            json!({"avatar_url": "mxc://hearth.test/abc"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    let (status, profile) = s.get(&format!("/_matrix/client/v3/profile/{user}"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(profile, json!({"displayname": "Alice A.", "avatar_url": "mxc://hearth.test/abc"}));
    let (_, avatar) = s.get(&format!("/_matrix/client/v3/profile/{user}/avatar_url"), None).await;
    assert_eq!(avatar["avatar_url"], "mxc://hearth.test/abc");

    // Clearing the name removes it.
    s.put(&format!("/_matrix/client/v3/profile/{user}/displayname"), Some(&token), json!({"displayname": null})).await;
    let (_, res) = s.get(&format!("/_matrix/client/v3/profile/{user}/displayname"), None).await;
    assert!(res.get("displayname").is_none_or(|v| v.is_null()), "{res}");
}

async fn cannot_edit_someone_else(b: Backend) {
    let s = TestServer::start(b).await;
    let (alice, _, _) = s.register("alice", "pw-alice-1").await;
    let (_, bob, _) = s.register("bob", "pw-bob-1").await;
    let got = s
        .put(&format!("/_matrix/client/v3/profile/{alice}/displayname"), Some(&bob), json!({"displayname": "pwned"}))
        .await;
    assert_error(&got, 403, "M_FORBIDDEN");
    let got =
        s.put(&format!("/_matrix/client/v3/profile/{alice}/displayname"), None, json!({"displayname": "pwned"})).await;
    assert_error(&got, 401, "M_MISSING_TOKEN");
}

async fn unknown_users_are_404_and_unreachable_servers_502(b: Backend) {
    let s = TestServer::start(b).await;
    assert_error(&s.get(&format!("/_matrix/client/v3/profile/@nobody:{SERVER_NAME}"), None).await, 404, "M_NOT_FOUND");
    // A remote user's profile is asked of their server; one that cannot be reached is 502,
    // as on Synapse (the federation tests cover a remote user that exists, and one that
    // does not: 404).
    assert_error(
        &s.get("/_matrix/client/v3/profile/@someone:elsewhere.example/displayname", None).await,
        502,
        "M_UNKNOWN",
    );
    // With federation off, nobody is asked: a remote user is not found.
    let closed = TestServer::start_with(b, |c| c.allow_federation = false).await;
    assert_error(
        &closed.get("/_matrix/client/v3/profile/@someone:elsewhere.example/displayname", None).await,
        404,
        "M_NOT_FOUND",
    );
}

async fn overlong_display_name_is_refused(b: Backend) {
    let s = TestServer::start(b).await;
    let (user, token, _) = s.register("alice", "pw-alice-1").await;
    let got = s
        .put(
            &format!("/_matrix/client/v3/profile/{user}/displayname"),
            Some(&token),
            json!({"displayname": "x".repeat(2000)}),
        )
        .await;
    assert_error(&got, 413, "M_TOO_LARGE");
}

/// A profile change reaches the member event of every room the user is in (others see
/// the new name); a per-room name set through the member event stays in that room until
/// the next profile change; a join keeps the client's own keys.
async fn profile_changes_reach_member_events(b: Backend) {
    let s = TestServer::start(b).await;
    let (alice, alice_token, _) = s.register("alice", "pw-alice-1").await;
    let (bob, bob_token, _) = s.register("bob", "pw-bob-12").await;
    let (_, room) = s.post("/_matrix/client/v3/createRoom", Some(&alice_token), json!({"preset": "public_chat"})).await;
    let room = room["room_id"].as_str().expect("room").to_owned();
    let (status, _) = s.post(&format!("/_matrix/client/v3/join/{room}"), Some(&bob_token), json!({"foo": "bar"})).await;
    assert_eq!(status, StatusCode::OK);
    let member = |user: String| {
        let path = format!("/_matrix/client/v3/rooms/{room}/state/m.room.member/{user}");
        let token = bob_token.clone();
        let s = &s;
        async move { s.get(&path, Some(&token)).await.1 }
    };
    // joined_members names every member with both keys, null when unset.
    let (_, listed) = s.get(&format!("/_matrix/client/v3/rooms/{room}/joined_members"), Some(&bob_token)).await;
    assert_eq!(listed["joined"][&bob]["display_name"], "bob", "{listed}");
    assert!(listed["joined"][&bob].get("avatar_url").is_some_and(|a| a.is_null()), "{listed}");
    let joined = member(bob.clone()).await;
    assert_eq!((joined["foo"].as_str(), joined["displayname"].as_str()), (Some("bar"), Some("bob")), "{joined}");

    s.put(
        &format!("/_matrix/client/v3/profile/{alice}/displayname"),
        Some(&alice_token),
        json!({"displayname": "Alice A."}),
    )
    .await;
    s.put(
        &format!("/_matrix/client/v3/profile/{alice}/avatar_url"),
        Some(&alice_token),
        json!({"avatar_url": "mxc://hearth.test/face"}),
    )
    .await;
    let seen = member(alice.clone()).await;
    assert_eq!(seen["displayname"], "Alice A.", "{seen}");
    assert_eq!(seen["avatar_url"], "mxc://hearth.test/face");
    assert_eq!(seen["membership"], "join");

    // A name for this room only, through the member event itself.
    let path = format!("/_matrix/client/v3/rooms/{room}/state/m.room.member/{alice}");
    let (status, first) =
        s.put(&path, Some(&alice_token), json!({"membership": "join", "displayname": "Ally here"})).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(member(alice.clone()).await["displayname"], "Ally here");
    // The same again is no new event.
    let (_, again) = s.put(&path, Some(&alice_token), json!({"membership": "join", "displayname": "Ally here"})).await;
    assert_eq!(again["event_id"], first["event_id"]);
    // Someone else's member event cannot be made up this way.
    let bob_path = format!("/_matrix/client/v3/rooms/{room}/state/m.room.member/{bob}");
    let got = s.put(&bob_path, Some(&alice_token), json!({"membership": "join"})).await;
    assert_error(&got, 403, "M_FORBIDDEN");
}

both_engines!(
    profile_changes_reach_member_events,
    display_name_and_avatar,
    cannot_edit_someone_else,
    unknown_users_are_404_and_unreachable_servers_502,
    overlong_display_name_is_refused
);
