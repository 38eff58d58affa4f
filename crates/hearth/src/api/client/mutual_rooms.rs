//! Client-server API, mutual rooms: `GET /_matrix/client/v1/mutual_rooms?user_id=` (and
//! MSC2666's unstable path, which Element uses when `/versions` lists
//! `uk.half-shot.msc2666.query_mutual_rooms`): the rooms both the caller and the other
//! user are joined to, as this server knows them. One page holds them all.

use std::{collections::HashMap, sync::Arc};

use axum::{
    extract::{Query, State},
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
        .route("/_matrix/client/v1/mutual_rooms", get(mutual_rooms))
        .route("/_matrix/client/unstable/uk.half-shot.msc2666/user/mutual_rooms", get(mutual_rooms))
}

async fn mutual_rooms(
    State(s): State<Arc<Services>>,
    Query(query): Query<HashMap<String, String>>,
    parts: Parts,
) -> Result<Json<Value>> {
    let caller = caller_of(&s, &parts)?;
    let other = query.get("user_id").ok_or_else(|| Error::missing_param("Missing user_id"))?;
    let other = OwnedUserId::try_from(other.as_str()).map_err(|_| Error::invalid_param("Invalid user_id"))?;
    if other == caller.user_id {
        return Err(Error::invalid_param("You cannot ask which rooms you share with yourself"));
    }
    if query.contains_key("from") {
        return Err(Error::invalid_param("There is no further page"));
    }
    let theirs = s.rooms.joined_rooms(&other)?;
    let joined: Vec<_> = s.rooms.joined_rooms(&caller.user_id)?.into_iter().filter(|r| theirs.contains(r)).collect();
    Ok(Json(json!({"count": joined.len(), "joined": joined})))
}
