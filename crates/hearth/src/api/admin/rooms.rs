//! Synapse's room admin API, in its paths and shapes, for server admins:
//!
//! - `GET /_synapse/admin/v1/rooms`: every room this server knows, paged (`from`,
//!   `limit`), searched (`search_term`: in the name, the canonical alias, or the exact
//!   room id), filtered (`public_rooms`, `empty_rooms`) and sorted (`order_by`, `dir`);
//! - `GET /_synapse/admin/v1/rooms/{roomId}`, `…/members` (joined, any server), `…/state`
//!   (current state in client format, `type` filters);
//! - `DELETE /_synapse/admin/v1/rooms/{roomId}` (answers when done) and
//!   `DELETE /_synapse/admin/v2/rooms/{roomId}` (answers with a `delete_id`; its status at
//!   `GET /_synapse/admin/v2/rooms/delete_status/{deleteId}` and
//!   `GET /_synapse/admin/v2/rooms/{roomId}/delete_status`): every local member leaves
//!   and forgets the room, its local aliases go, it leaves the directory; `block` blocks
//!   it; `purge` (the default) removes its history and state from the database
//!   (`rooms::purge`). Hearth does the work before answering either, so a v2 status is at
//!   once `complete` or `failed`. `new_room_user_id` (a replacement room) is refused with
//!   400: Hearth cannot make one;
//! - `GET`/`PUT /_synapse/admin/v1/rooms/{roomId}/block`.

use std::{collections::HashMap, sync::Arc};

use axum::{
    body::Bytes,
    extract::{Path, Query, State},
    routing::get,
    Json, Router,
};
use ruma::{events::room::member::MembershipState, OwnedRoomId, RoomId};
use serde_json::{json, Map, Value};

use super::{bool_field, object, users::compare, Params, ServerAdmin};
use crate::{
    admin::{DeleteRoom, DeletedRoom, Deletion},
    error::{Error, Result},
    rooms::admin::RoomSummary,
    Services,
};

pub fn routes() -> Router<Arc<Services>> {
    Router::new()
        .route("/_synapse/admin/v1/rooms", get(list))
        .route("/_synapse/admin/v1/rooms/{room_id}", get(details).delete(delete_v1))
        .route("/_synapse/admin/v2/rooms/{room_id}", axum::routing::delete(delete_v2))
        .route("/_synapse/admin/v1/rooms/{room_id}/members", get(members))
        .route("/_synapse/admin/v1/rooms/{room_id}/state", get(state))
        .route("/_synapse/admin/v1/rooms/{room_id}/block", get(get_block).put(put_block))
        .route("/_synapse/admin/v2/rooms/delete_status/{delete_id}", get(delete_status))
        .route("/_synapse/admin/v2/rooms/{room_id}/delete_status", get(room_delete_status))
}

fn room_id(raw: &str) -> Result<OwnedRoomId> {
    OwnedRoomId::try_from(raw).map_err(|_| Error::invalid_param(format!("{raw} is not a legal room ID")))
}

fn summary(s: &Services, room: &RoomId) -> Result<RoomSummary> {
    s.rooms.summary(room)?.ok_or_else(|| Error::not_found("Room not found"))
}

/// The list's fields of a room (Synapse's list leaves out topic and avatar).
fn listed(r: &RoomSummary) -> Value {
    json!({
        "room_id": r.room_id,
        "name": r.name,
        "canonical_alias": r.canonical_alias,
        "joined_members": r.joined_members,
        "joined_local_members": r.joined_local_members,
        "version": r.version,
        "creator": r.creator,
        "encryption": r.encryption,
        "federatable": r.federatable,
        "public": r.public,
        "join_rules": r.join_rules,
        "guest_access": r.guest_access,
        "history_visibility": r.history_visibility,
        "state_events": r.state_events,
        "room_type": r.room_type,
    })
}

/// `order_by` values, with whether `dir=f` sorts them largest first (Synapse's choice
/// for counts and versions).
const ROOM_ORDER: &[(&str, &str, bool)] = &[
    ("name", "name", false),
    ("alphabetical", "name", false),
    ("canonical_alias", "canonical_alias", false),
    ("joined_members", "joined_members", true),
    ("size", "joined_members", true),
    ("joined_local_members", "joined_local_members", true),
    ("version", "version", true),
    ("creator", "creator", false),
    ("encryption", "encryption", false),
    ("federatable", "federatable", false),
    ("public", "public", false),
    ("join_rules", "join_rules", false),
    ("guest_access", "guest_access", false),
    ("history_visibility", "history_visibility", false),
    ("state_events", "state_events", true),
];

async fn list(
    State(s): State<Arc<Services>>,
    _: ServerAdmin,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>> {
    let q = Params(query);
    let from = q.int("from", 0)?;
    let limit = q.int("limit", 100)?;
    let names: Vec<&str> = ROOM_ORDER.iter().map(|(n, _, _)| *n).collect();
    let order = q.one_of("order_by", &names, "name")?;
    let (_, field, largest_first) =
        ROOM_ORDER.iter().find(|(n, _, _)| *n == order).copied().unwrap_or(("name", "name", false));
    let backwards = q.one_of("dir", &["f", "b"], "f")? == "b";
    let term = q.text("search_term").map(str::to_lowercase);
    if term.as_deref() == Some("") {
        return Err(Error::invalid_param("search_term cannot be an empty string"));
    }
    let public = q.flag("public_rooms")?;
    let empty = q.flag("empty_rooms")?;
    let mut rooms = Vec::new();
    for id in s.rooms.all_rooms()? {
        let Some(r) = s.rooms.summary(&id)? else { continue };
        if public.is_some_and(|p| r.public != p) || empty.is_some_and(|e| (r.joined_members == 0) != e) {
            continue;
        }
        if let Some(t) = &term {
            let in_name = r.name.as_deref().is_some_and(|n| n.to_lowercase().contains(t.as_str()));
            let in_alias = r
                .canonical_alias
                .as_deref()
                .and_then(|a| a.strip_prefix('#'))
                .and_then(|a| a.split(':').next())
                .is_some_and(|a| a.to_lowercase().contains(t.as_str()));
            if !in_name && !in_alias && r.room_id.as_str().to_lowercase() != *t {
                continue;
            }
        }
        rooms.push(listed(&r));
    }
    rooms.sort_by(|a, b| {
        let by = compare(&a[field], &b[field]).then_with(|| compare(&a["room_id"], &b["room_id"]));
        if largest_first {
            by.reverse()
        } else {
            by
        }
    });
    if backwards {
        rooms.reverse();
    }
    let total = rooms.len();
    let page: Vec<Value> = rooms.into_iter().skip(from).take(limit).collect();
    let mut body = json!({"rooms": page, "offset": from, "total_rooms": total});
    if from + limit < total {
        body["next_batch"] = json!(from + limit);
    }
    if from > 0 {
        body["prev_batch"] = json!(from.saturating_sub(limit));
    }
    Ok(Json(body))
}

async fn details(State(s): State<Arc<Services>>, _: ServerAdmin, Path(room): Path<String>) -> Result<Json<Value>> {
    let room = room_id(&room)?;
    let r = summary(&s, &room)?;
    let mut v = listed(&r);
    v["topic"] = json!(r.topic);
    v["avatar"] = json!(r.avatar);
    let mut devices = 0;
    for member in s.rooms.members(&room, &MembershipState::Join)? {
        if member.server_name() == s.config.server_name {
            devices += s.users.devices(&member)?.len();
        }
    }
    v["joined_local_devices"] = json!(devices);
    v["forgotten"] = json!(false);
    Ok(Json(v))
}

async fn members(State(s): State<Arc<Services>>, _: ServerAdmin, Path(room): Path<String>) -> Result<Json<Value>> {
    let room = room_id(&room)?;
    summary(&s, &room)?;
    let members = s.rooms.members(&room, &MembershipState::Join)?;
    Ok(Json(json!({"members": members, "total": members.len()})))
}

async fn state(
    State(s): State<Arc<Services>>,
    _: ServerAdmin,
    Path(room): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>> {
    let room = room_id(&room)?;
    if s.rooms.room(&room)?.is_none() {
        return Err(Error::not_found("Room not found"));
    }
    let kind = query.get("type");
    let map = s.rooms.current_state_map(&room)?;
    let events: Vec<Value> = s
        .rooms
        .state_events(&map)?
        .iter()
        .filter(|p| kind.is_none_or(|k| p.kind.to_string() == *k))
        .map(|p| p.to_client_json(Map::new()))
        .collect();
    Ok(Json(json!({"state": events})))
}

/// What a deletion request asks for; `new_room_user_id` is refused (see the module doc).
fn deletion_request(body: &[u8], admin: &ruma::UserId) -> Result<DeleteRoom> {
    let body = object(body)?;
    let block = bool_field(&body, "block")?.unwrap_or(false);
    let purge = bool_field(&body, "purge")?.unwrap_or(true);
    bool_field(&body, "force_purge")?;
    if body.get("new_room_user_id").is_some_and(|v| !v.is_null()) {
        return Err(Error::invalid_param(
            "Hearth cannot make a replacement room (new_room_user_id); delete the room without one",
        ));
    }
    Ok(DeleteRoom { block, purge, by: Some(admin.to_owned()) })
}

fn result_json(done: &DeletedRoom) -> Value {
    json!({
        "kicked_users": done.kicked_users,
        "failed_to_kick_users": done.failed_to_kick_users,
        "local_aliases": done.local_aliases,
        "new_room_id": null,
    })
}

async fn delete_v1(
    State(s): State<Arc<Services>>,
    ServerAdmin(admin): ServerAdmin,
    Path(room): Path<String>,
    body: Bytes,
) -> Result<Json<Value>> {
    let room = room_id(&room)?;
    let how = deletion_request(&body, &admin)?;
    match s.admin.delete_room(&room, &how).await {
        Ok(done) => Ok(Json(result_json(&done))),
        // A room this server does not know: nothing to do, as on Synapse.
        Err(Error::Matrix { status: http::StatusCode::NOT_FOUND, .. }) => {
            Ok(Json(result_json(&DeletedRoom::default())))
        }
        Err(e) => Err(e),
    }
}

async fn delete_v2(
    State(s): State<Arc<Services>>,
    ServerAdmin(admin): ServerAdmin,
    Path(room): Path<String>,
    body: Bytes,
) -> Result<Json<Value>> {
    let room = room_id(&room)?;
    let how = deletion_request(&body, &admin)?;
    let deletion = s.admin.delete_room_tracked(&room, &how).await;
    Ok(Json(json!({"delete_id": deletion.delete_id})))
}

fn status_json(d: &Deletion) -> Value {
    let mut v = json!({"delete_id": d.delete_id, "room_id": d.room_id});
    match &d.outcome {
        Ok(done) => {
            v["status"] = json!("complete");
            v["shutdown_room"] = result_json(done);
        }
        Err(e) => {
            v["status"] = json!("failed");
            v["shutdown_room"] = Value::Null;
            v["error"] = json!(e);
        }
    }
    v
}

async fn delete_status(
    State(s): State<Arc<Services>>,
    _: ServerAdmin,
    Path(delete_id): Path<String>,
) -> Result<Json<Value>> {
    let d =
        s.admin.deletion(&delete_id).ok_or_else(|| Error::not_found(format!("delete id '{delete_id}' not found")))?;
    Ok(Json(status_json(&d)))
}

async fn room_delete_status(
    State(s): State<Arc<Services>>,
    _: ServerAdmin,
    Path(room): Path<String>,
) -> Result<Json<Value>> {
    let room = room_id(&room)?;
    let found = s.admin.deletions_of(&room);
    if found.is_empty() {
        return Err(Error::not_found(format!("No delete task for room_id '{room}' found")));
    }
    Ok(Json(json!({"results": found.iter().map(status_json).collect::<Vec<_>>()})))
}

async fn get_block(State(s): State<Arc<Services>>, _: ServerAdmin, Path(room): Path<String>) -> Result<Json<Value>> {
    let room = room_id(&room)?;
    Ok(Json(match s.rooms.blocked(&room)? {
        Some(b) => match b.by {
            Some(by) => json!({"block": true, "user_id": by}),
            None => json!({"block": true}),
        },
        None => json!({"block": false}),
    }))
}

async fn put_block(
    State(s): State<Arc<Services>>,
    ServerAdmin(admin): ServerAdmin,
    Path(room): Path<String>,
    body: Bytes,
) -> Result<Json<Value>> {
    let room = room_id(&room)?;
    let body = object(&body)?;
    let block = bool_field(&body, "block")?.ok_or_else(|| Error::missing_param("Missing params: ['block']"))?;
    s.rooms.set_blocked(&room, Some(&admin), block)?;
    tracing::info!(%admin, %room, block, "admin changed a room's block");
    Ok(Json(json!({"block": block})))
}
