//! OpenID tokens: a client gets one for its own user, a third party exchanges it at the
//! federation userinfo endpoint for the user's id; unknown tokens and other users are
//! refused.

use hearth::store::Backend;
use serde_json::json;

use crate::{
    both_engines,
    common::{assert_error, TestServer},
};

async fn openid_token_names_its_user(b: Backend) {
    let s = TestServer::start(b).await;
    let (alice, token, _) = s.register("alice", "a long password").await;
    let (bob, _, _) = s.register("bob", "a long password").await;

    let got = s.post(&format!("/_matrix/client/v3/user/{alice}/openid/request_token"), Some(&token), json!({})).await;
    assert_eq!(got.0, 200, "{}", got.1);
    assert_eq!(got.1["token_type"], "Bearer");
    assert_eq!(got.1["matrix_server_name"], "hearth.test");
    assert_eq!(got.1["expires_in"], 3600);
    let openid = got.1["access_token"].as_str().expect("token").to_owned();

    let (status, info) = s.get(&format!("/_matrix/federation/v1/openid/userinfo?access_token={openid}"), None).await;
    assert_eq!(status, 200, "{info}");
    assert_eq!(info, json!({"sub": alice}));

    // An access token is not an OpenID token, and an unknown one is refused.
    assert_error(
        &s.get(&format!("/_matrix/federation/v1/openid/userinfo?access_token={token}"), None).await,
        401,
        "M_UNKNOWN_TOKEN",
    );
    // No token is no credential: 401, as Synapse answers (sytest checks it).
    assert_error(&s.get("/_matrix/federation/v1/openid/userinfo", None).await, 401, "M_UNKNOWN_TOKEN");
    // Only for oneself.
    assert_error(
        &s.post(&format!("/_matrix/client/v3/user/{bob}/openid/request_token"), Some(&token), json!({})).await,
        403,
        "M_FORBIDDEN",
    );
}

both_engines!(openid_token_names_its_user);
