//! Client-server API, room summaries: `GET /_matrix/client/v1/room_summary/{roomIdOrAlias}`
//! and the unstable paths Nheko and Element X use for previews
//! (`/_matrix/client/unstable/im.nheko.summary/summary/{roomIdOrAlias}` and
//! `…/im.nheko.summary/rooms/{roomIdOrAlias}/summary`): what a client shows of a room before
//! joining it. Anyone may ask (a token, when sent, adds the caller's `membership`); a
//! room is described only to those who may preview it, as in a space's hierarchy, and
//! otherwise is 404 as an unknown one is. Rooms this server does not know are not asked
//! of other servers yet.

use std::sync::Arc;

use axum::{
    extract::{Path, State},
    http::request::Parts,
    routing::get,
    Json, Router,
};
use ruma::{events::StateEventType, OwnedRoomId, RoomAliasId};
use serde_json::{json, Value};

use crate::{
    api::caller_of,
    error::{Error, Result},
    Services,
};

pub fn routes() -> Router<Arc<Services>> {
    Router::new()
        .route("/_matrix/client/v1/room_summary/{room}", get(summary))
        .route("/_matrix/client/unstable/im.nheko.summary/summary/{room}", get(summary))
        .route("/_matrix/client/unstable/im.nheko.summary/rooms/{room}/summary", get(summary))
}

async fn summary(State(s): State<Arc<Services>>, Path(room): Path<String>, parts: Parts) -> Result<Json<Value>> {
    let caller = match parts.headers.contains_key(http::header::AUTHORIZATION)
        || parts.uri.query().is_some_and(|q| q.contains("access_token="))
    {
        true => Some(caller_of(&s, &parts)?),
        false => None,
    };
    let unknown = || Error::not_found("No such room, or you may not see it");
    let room_id = match OwnedRoomId::try_from(room.as_str()) {
        Ok(id) => id,
        Err(_) => {
            let alias = <&RoomAliasId>::try_from(room.as_str())
                .map_err(|_| Error::invalid_param(format!("{room} is neither a room id nor an alias")))?;
            s.rooms.resolve_alias(alias.as_str())?.ok_or_else(unknown)?
        }
    };
    let Some(record) = s.rooms.room(&room_id)? else { return Err(unknown()) };
    let visible = match &caller {
        Some(c) => s.rooms.may_preview(&room_id, &c.user_id)?,
        None => {
            let preview = s.rooms.room_preview(&room_id)?;
            matches!(preview.get("join_rule").and_then(Value::as_str), Some("public" | "knock" | "knock_restricted"))
                || preview.get("world_readable") == Some(&Value::Bool(true))
        }
    };
    if !visible {
        return Err(unknown());
    }
    let mut out = s.rooms.room_preview(&room_id)?;
    out.insert("room_version".into(), json!(record.version));
    let encryption = s.rooms.state_event(&room_id, &StateEventType::RoomEncryption, "")?;
    if let Some(algorithm) = encryption.and_then(|p| p.content_value().get("algorithm").cloned()) {
        out.insert("encryption".into(), algorithm);
    }
    if let Some(c) = &caller {
        if let Some(m) = s.rooms.membership(&room_id, &c.user_id)? {
            out.insert("membership".into(), json!(m.membership));
        }
    }
    Ok(Json(Value::Object(out)))
}
