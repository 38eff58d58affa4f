//! Client-server API, "Threading": `GET /_matrix/client/v1/rooms/{roomId}/threads`, a
//! room's thread roots, newest activity first, each with its `m.thread` summary bundled
//! (`include=participated` keeps those the caller started or replied in). The index and
//! the summaries are in `rooms::threads`.

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
    rooms::{threads::MAX_THREADS, timeline::parse_token},
    Services,
};

/// Threads per page when the client names no limit.
const DEFAULT_THREADS: usize = 20;

pub fn routes() -> Router<Arc<Services>> {
    Router::new().route("/_matrix/client/v1/rooms/{room_id}/threads", get(threads))
}

async fn threads(
    State(s): State<Arc<Services>>,
    Path(room): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    parts: Parts,
) -> Result<Json<Value>> {
    let caller = caller_of(&s, &parts)?;
    let room = OwnedRoomId::try_from(room).map_err(|_| Error::invalid_param("Invalid room id"))?;
    let participated = match query.get("include").map(String::as_str) {
        None | Some("all") => false,
        Some("participated") => true,
        Some(_) => return Err(Error::invalid_param("include must be all or participated")),
    };
    let limit = match query.get("limit") {
        Some(l) => l.parse::<usize>().map_err(|_| Error::invalid_param("Invalid limit"))?.clamp(1, MAX_THREADS),
        None => DEFAULT_THREADS,
    };
    let from = query.get("from").map(|f| parse_token(f)).transpose()?;
    let listing = s.rooms.threads(&room, &caller.user_id, participated, from, limit)?;
    let viewer = Some((&*caller.user_id, caller.device_id.as_str()));
    let mut chunk = Vec::with_capacity(listing.roots.len());
    for root in &listing.roots {
        if let Some(event) = s.rooms.client_event_by_id(root, viewer)? {
            chunk.push(event);
        }
    }
    let mut body = json!({"chunk": chunk});
    if let Some(next) = listing.next_batch {
        body["next_batch"] = json!(next);
    }
    Ok(Json(body))
}
