//! Client-server API: capabilities negotiation (`GET /capabilities`).

use std::{collections::BTreeMap, sync::Arc};

use axum::{extract::State, http::request::Parts, routing::get, Json, Router};
#[allow(deprecated)]
use ruma::api::client::discovery::get_capabilities::v3::{
    Capabilities, RoomVersionStability, RoomVersionsCapability, SetAvatarUrlCapability, SetDisplayNameCapability,
};
use serde_json::{json, Value};

use crate::{
    api::caller_of,
    error::{Error, Result},
    Services,
};

/// `GET /_matrix/client/v3/capabilities` (and `r0`)
///
/// `m.set_displayname` / `m.set_avatar_url` are deprecated in favour of `m.profile_fields`
/// but Element and Nheko still read them. Written as JSON here rather than through ruma's
/// response type, which leaves out `m.change_password` when it is enabled (its default):
/// clients and sytest look for it.
#[allow(deprecated)]
pub async fn get_capabilities(State(s): State<Arc<Services>>, parts: Parts) -> Result<Json<Value>> {
    caller_of(&s, &parts)?;
    let available: BTreeMap<_, _> = s.room_versions().into_iter().map(|v| (v, RoomVersionStability::Stable)).collect();
    let mut caps = Capabilities::new();
    caps.room_versions = RoomVersionsCapability::new(s.config.default_room_version.clone(), available);
    caps.set_displayname = SetDisplayNameCapability::new(true);
    caps.set_avatar_url = SetAvatarUrlCapability::new(true);
    let mut value = serde_json::to_value(&caps).map_err(|e| Error::internal(e.to_string()))?;
    value["m.change_password"] = json!({"enabled": true});
    // Addresses can be added and removed once Hearth can send validation mails. Written
    // out either way: ruma leaves the default (`true`) out.
    value["m.3pid_changes"] = json!({"enabled": s.identity.email.enabled()});
    Ok(Json(json!({"capabilities": value})))
}

pub fn routes() -> Router<Arc<Services>> {
    Router::new()
        .route("/_matrix/client/v3/capabilities", get(get_capabilities))
        .route("/_matrix/client/r0/capabilities", get(get_capabilities))
}
