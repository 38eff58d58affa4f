//! Client-server API: typing notifications.
//!
//! Written against the JSON rather than ruma's request type: `timeout` is required by the
//! spec when typing starts, but clients leave it out and Synapse then takes 30 seconds.

use std::{sync::Arc, time::Duration};

use axum::{
    extract::{Path, State},
    http::request::Parts,
    routing::put,
    Json, Router,
};
use ruma::{events::room::member::MembershipState, OwnedRoomId, OwnedUserId};
use serde_json::{json, Value};

use crate::{
    api::caller_of,
    error::{Error, Result},
    Services,
};

/// The typing time-out when a client gives none.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

pub fn routes() -> Router<Arc<Services>> {
    Router::new()
        .route("/_matrix/client/v3/rooms/{roomId}/typing/{userId}", put(create_typing_event))
        .route("/_matrix/client/r0/rooms/{roomId}/typing/{userId}", put(create_typing_event))
}

/// `PUT /_matrix/client/v3/rooms/{roomId}/typing/{userId}`
pub async fn create_typing_event(
    State(s): State<Arc<Services>>,
    Path((room_id, user_id)): Path<(String, String)>,
    parts: Parts,
    body: axum::body::Bytes,
) -> Result<Json<Value>> {
    let caller = caller_of(&s, &parts)?;
    let room_id = OwnedRoomId::try_from(room_id).map_err(|_| Error::invalid_param("Invalid room id"))?;
    let user_id = OwnedUserId::try_from(user_id).map_err(|_| Error::invalid_param("Invalid user id"))?;
    if caller.user_id != user_id {
        return Err(Error::forbidden("You can only set your own typing state"));
    }
    let body: Value = serde_json::from_slice(&body).map_err(|_| Error::not_json("The body is not JSON"))?;
    let typing =
        body.get("typing").and_then(Value::as_bool).ok_or_else(|| Error::bad_json("typing must be true or false"))?;
    let timeout = match (typing, body.get("timeout")) {
        (false, _) => None,
        (true, None) => Some(DEFAULT_TIMEOUT),
        (true, Some(t)) => Some(Duration::from_millis(
            t.as_u64().ok_or_else(|| Error::bad_json("timeout must be a number of milliseconds"))?,
        )),
    };
    s.rooms.require_joined(&room_id, &caller.user_id)?;
    let members = s.rooms.members(&room_id, &MembershipState::Join)?;
    s.typing.set(&room_id, &caller.user_id, timeout, members);
    if s.config.allow_federation {
        s.federation.send_typing(&room_id, &caller.user_id, timeout.is_some());
    }
    Ok(Json(json!({})))
}
