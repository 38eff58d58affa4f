//! Client-server API, "Server administration": `GET /admin/whois/{userId}`, the devices a
//! user has and where each was last seen. Served to the user themselves and to server
//! admins (the spec lets a server choose either), also at Synapse's admin path
//! `/_synapse/admin/v1/whois/{userId}` for admin tools.

use std::sync::Arc;

use axum::{
    extract::{Path, State},
    http::request::Parts,
    routing::get,
    Json, Router,
};
use ruma::OwnedUserId;
use serde_json::{json, Value};

use crate::{
    api::caller_of,
    error::{Error, Result},
    Services,
};

pub fn routes() -> Router<Arc<Services>> {
    Router::new()
        .route("/_matrix/client/v3/admin/whois/{userId}", get(whois))
        .route("/_matrix/client/r0/admin/whois/{userId}", get(whois))
        .route("/_synapse/admin/v1/whois/{userId}", get(whois))
}

/// The user's connections (each device's latest: address, time, user agent) in Synapse's
/// shape, which admin tools read: all under one entry keyed `""`, in one session. A device
/// never seen since logging in has none.
async fn whois(State(s): State<Arc<Services>>, Path(user): Path<String>, parts: Parts) -> Result<Json<Value>> {
    let caller = caller_of(&s, &parts)?;
    let user = OwnedUserId::try_from(user).map_err(|_| Error::invalid_param("Invalid user id"))?;
    let admin = s.users.account(&caller.user_id)?.is_some_and(|a| a.admin);
    if user != caller.user_id && !admin {
        return Err(Error::forbidden("Only server admins may look up other users"));
    }
    if s.users.account(&user)?.is_none() {
        return Err(Error::not_found("No such local user"));
    }
    let connections: Vec<Value> = s
        .users
        .devices(&user)?
        .into_iter()
        .filter_map(|(_, device)| {
            device.last_seen_ts.map(
                |ts| json!({"ip": device.last_seen_ip, "last_seen": ts, "user_agent": device.last_seen_user_agent}),
            )
        })
        .collect();
    Ok(Json(json!({"user_id": user, "devices": {"": {"sessions": [{"connections": connections}]}}})))
}
