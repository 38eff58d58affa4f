//! Client-server API, "Voice over IP": `GET /_matrix/client/v3/voip/turnServer`, the TURN
//! servers calls relay through, from Conduit's settings (`turn_uris`, and `turn_secret`
//! or `turn_username`/`turn_password`, `turn_ttl`).
//!
//! With a shared secret the credentials are coturn's time-limited ones
//! (`use-auth-secret`): the username is `<expiry>:<user id>`, the password the base64 of
//! its HMAC-SHA1 under the secret. Without TURN servers the answer is `{}`, as Synapse's,
//! and clients call without a relay.

use std::sync::Arc;

use axum::{extract::State, http::request::Parts, routing::get, Json, Router};
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};

use crate::{
    api::caller_of,
    error::{Error, Result},
    Services,
};

pub fn routes() -> Router<Arc<Services>> {
    Router::new()
        .route("/_matrix/client/v3/voip/turnServer", get(turn_server))
        .route("/_matrix/client/r0/voip/turnServer", get(turn_server))
}

async fn turn_server(State(s): State<Arc<Services>>, parts: Parts) -> Result<Json<Value>> {
    let caller = caller_of(&s, &parts)?;
    let config = &s.config;
    if config.turn_uris.is_empty() {
        // The spec's answer has all four fields and none fits "no server"; an empty `uris`
        // would break WebRTC (an ICE server needs a URL). 404 is MSC4166's answer, and
        // matrix-js-sdk then simply has no TURN server.
        return Err(Error::not_found("No TURN server is configured"));
    }
    let (username, password) = match (&config.turn_secret, &config.turn_username, &config.turn_password) {
        (Some(secret), _, _) => {
            let expiry = crate::time::now_millis() / 1000 + config.turn_ttl;
            let username = format!("{expiry}:{}", caller.user_id);
            let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes())
                .map_err(|e| Error::internal(format!("turn_secret: {e}")))?;
            mac.update(username.as_bytes());
            (username, base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes()))
        }
        (None, Some(user), Some(pass)) => (user.clone(), pass.clone()),
        // TURN servers without credentials: some allow anonymous use.
        _ => (String::new(), String::new()),
    };
    Ok(Json(json!({"username": username, "password": password, "uris": config.turn_uris, "ttl": config.turn_ttl})))
}
