//! Client-server API, "Spaces": `GET /_matrix/client/v1/rooms/{roomId}/hierarchy`
//! (`from`, `limit`, `max_depth`, `suggested_only`). The walk, into other servers' rooms
//! too, is `federation::hierarchy`; pages are slices of it, and `from` is where the last
//! page stopped.

use std::{collections::HashMap, sync::Arc};

use axum::{
    extract::{Path, Query, State},
    http::request::Parts,
    routing::get,
    Json, Router,
};
use ruma::OwnedRoomId;
use serde_json::{json, Value};

use crate::{
    api::caller_of,
    error::{Error, Result},
    Services,
};

/// Rooms per page when the client names no limit, and the most it may ask for.
const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 100;

pub fn routes() -> Router<Arc<Services>> {
    Router::new().route("/_matrix/client/v1/rooms/{room_id}/hierarchy", get(hierarchy))
}

async fn hierarchy(
    State(s): State<Arc<Services>>,
    Path(room): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    parts: Parts,
) -> Result<Json<Value>> {
    let caller = caller_of(&s, &parts)?;
    let room = OwnedRoomId::try_from(room).map_err(|_| Error::invalid_param("Invalid room id"))?;
    let number = |name: &str| -> Result<Option<usize>> {
        query
            .get(name)
            .map(|v| {
                v.parse::<usize>().map_err(|_| Error::invalid_param(format!("{name} must be a non-negative integer")))
            })
            .transpose()
    };
    let limit = number("limit")?.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
    let max_depth = number("max_depth")?;
    let suggested_only = match query.get("suggested_only").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => return Err(Error::invalid_param("suggested_only must be true or false")),
    };
    let from = match query.get("from") {
        Some(f) => f
            .strip_prefix('h')
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| Error::invalid_param("Invalid from token"))?,
        None => 0,
    };
    let servers = s.config.allow_federation.then_some(&*s.transport.servers);
    let rooms =
        crate::federation::hierarchy::walk(&s.rooms, servers, &room, &caller.user_id, suggested_only, max_depth)
            .await?;
    if from > rooms.len() {
        return Err(Error::invalid_param("The from token is past the end of this hierarchy"));
    }
    let more = from + limit < rooms.len();
    let page: Vec<Value> = rooms.into_iter().skip(from).take(limit).collect();
    let mut body = json!({"rooms": page});
    if more {
        body["next_batch"] = json!(format!("h{}", from + limit));
    }
    Ok(Json(body))
}
