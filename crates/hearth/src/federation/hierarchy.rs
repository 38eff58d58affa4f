//! Spaces across servers (spec: "Spaces", client and server-server `/hierarchy`).
//!
//! [`walk`] is the walk a client's `/hierarchy` gets: breadth-first from the space, each
//! room this server knows described from its own state (as `rooms::hierarchy` does), each
//! room it does not know asked of the servers its parent's `m.space.child` names in `via`
//! (`GET /_matrix/federation/v1/hierarchy/{roomId}`), whose answer also describes that
//! room's children, so they need no question of their own. A restricted room another
//! server describes is shown only when the viewer is joined to one of its
//! `allowed_room_ids`; a server that does not answer leaves its rooms out.
//!
//! [`serve`] answers another server's `/hierarchy`: the room and its children this server
//! knows, each if any server may preview it (public, knockable, world-readable,
//! restricted), and the ids of the children it may not (`inaccessible_children`).

use std::{
    collections::{HashMap, HashSet, VecDeque},
    time::Duration,
};

use ruma::{OwnedRoomId, OwnedServerName, RoomId, ServerName, UserId};
use serde_json::{json, Map, Value};

use crate::{
    error::{Error, Result},
    rooms::{hierarchy::MAX_HIERARCHY_ROOMS, Rooms},
    transport::server_client::{ServerClient, ServerRequest},
};

/// How long one server may take to describe a room, and the largest answer read.
const REMOTE_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_REMOTE_BYTES: usize = 1024 * 1024;
/// Most servers asked about one room, and most rooms asked about in one walk.
const MAX_VIA: usize = 3;
const MAX_REMOTE_ROOMS: usize = 50;

/// The children a room entry names: (room id, via servers), in the entry's order.
fn children_of(entry: &Map<String, Value>, suggested_only: bool) -> Vec<(OwnedRoomId, Vec<OwnedServerName>)> {
    entry
        .get("children_state")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|e| e.get("type").and_then(Value::as_str) == Some("m.space.child"))
        .filter(|e| !suggested_only || e["content"].get("suggested").and_then(Value::as_bool) == Some(true))
        .filter_map(|e| {
            let room = e.get("state_key").and_then(Value::as_str).and_then(|k| OwnedRoomId::try_from(k).ok())?;
            let via: Vec<OwnedServerName> = e["content"]
                .get("via")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().and_then(|v| OwnedServerName::try_from(v).ok()))
                .take(MAX_VIA)
                .collect();
            (!via.is_empty()).then_some((room, via))
        })
        .collect()
}

/// The rooms a described room's restricted join rule allows.
fn allowed_ids(entry: &Map<String, Value>) -> Vec<OwnedRoomId> {
    entry
        .get("allowed_room_ids")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|r| r.as_str().and_then(|r| OwnedRoomId::try_from(r).ok()))
        .collect()
}

/// A space's rooms as `viewer` may see them, walking into other servers' rooms (see the
/// module doc). `servers` is `None` when federation is off: then only local rooms.
pub async fn walk(
    rooms: &Rooms,
    servers: Option<&ServerClient>,
    root: &RoomId,
    viewer: &UserId,
    suggested_only: bool,
    max_depth: Option<usize>,
) -> Result<Vec<Value>> {
    if rooms.room(root)?.is_none() || !rooms.may_preview(root, viewer)? {
        return Err(Error::forbidden("You may not see this space"));
    }
    let mut out = Vec::new();
    let mut seen: HashSet<OwnedRoomId> = HashSet::from([root.to_owned()]);
    let mut queue: VecDeque<(OwnedRoomId, usize, Vec<OwnedServerName>)> =
        VecDeque::from([(root.to_owned(), 0, vec![])]);
    // Rooms other servers described along the way, by id.
    let mut described: HashMap<OwnedRoomId, Map<String, Value>> = HashMap::new();
    let mut asked = 0usize;
    while let Some((room, depth, via)) = queue.pop_front() {
        if out.len() == MAX_HIERARCHY_ROOMS {
            break;
        }
        let entry = if rooms.room(&room)?.is_some() {
            if !rooms.may_preview(&room, viewer)? {
                continue;
            }
            let children = rooms.space_children(&room, suggested_only)?;
            rooms.space_entry(&room, &children)?
        } else {
            let found = match described.remove(&room) {
                Some(e) => Some(e),
                None => match servers {
                    Some(servers) if asked < MAX_REMOTE_ROOMS => {
                        asked += 1;
                        ask(servers, &room, &via, suggested_only, &mut described).await
                    }
                    _ => None,
                },
            };
            let Some(entry) = found else { continue };
            let rule = entry.get("join_rule").and_then(Value::as_str).unwrap_or("public");
            if rule == "restricted" && !rooms.joined_any(&allowed_ids(&entry), viewer)? {
                continue;
            }
            entry
        };
        let children = children_of(&entry, suggested_only);
        out.push(Value::Object(entry));
        if max_depth.is_some_and(|m| depth >= m) {
            continue;
        }
        for (child, child_via) in children {
            if seen.insert(child.clone()) {
                queue.push_back((child, depth + 1, child_via));
            }
        }
    }
    Ok(out)
}

/// Asks the `via` servers, in turn, to describe `room`; keeps the children they describe
/// too in `described`.
async fn ask(
    servers: &ServerClient,
    room: &RoomId,
    via: &[OwnedServerName],
    suggested_only: bool,
    described: &mut HashMap<OwnedRoomId, Map<String, Value>>,
) -> Option<Map<String, Value>> {
    let path = format!(
        "/_matrix/federation/v1/hierarchy/{}?suggested_only={suggested_only}",
        super::receive::encode(room.as_str())
    );
    for server in via.iter().take(MAX_VIA) {
        let req = ServerRequest::get(&path).limits(REMOTE_TIMEOUT, MAX_REMOTE_BYTES);
        let answer = match servers.request(server, req).await {
            Ok(a) if a.status.is_success() => a,
            Ok(a) => {
                tracing::debug!(%server, %room, status = %a.status, "a server did not describe a room of a space");
                continue;
            }
            Err(e) => {
                tracing::debug!(%server, %room, error = %e, "a server could not be asked about a room of a space");
                continue;
            }
        };
        let Ok(Value::Object(mut body)) = serde_json::from_slice::<Value>(&answer.body) else { continue };
        let Some(Value::Object(entry)) = body.remove("room") else { continue };
        if entry.get("room_id").and_then(Value::as_str) != Some(room.as_str()) {
            continue;
        }
        for child in body.remove("children").and_then(|c| c.as_array().cloned()).unwrap_or_default() {
            if let Value::Object(child) = child {
                if let Some(id) =
                    child.get("room_id").and_then(Value::as_str).and_then(|r| OwnedRoomId::try_from(r).ok())
                {
                    described.entry(id).or_insert(child);
                }
            }
        }
        return Some(entry);
    }
    None
}

/// Another server's `/hierarchy` of `room` (see the module doc).
pub fn serve(rooms: &Rooms, origin: &ServerName, room: &RoomId, suggested_only: bool) -> Result<Value> {
    if rooms.room(room)?.is_none() || !rooms.may_preview_remotely(room)? {
        return Err(Error::not_found("No such room, or it is not for other servers to see"));
    }
    let children = rooms.space_children(room, suggested_only)?;
    let entry = rooms.space_entry(room, &children)?;
    let mut shown = Vec::new();
    let mut inaccessible = Vec::new();
    for (child, _) in &children {
        if rooms.room(child)?.is_none() {
            continue;
        }
        if rooms.may_preview_remotely(child)? {
            let grandchildren = rooms.space_children(child, suggested_only)?;
            shown.push(Value::Object(rooms.space_entry(child, &grandchildren)?));
        } else {
            inaccessible.push(json!(child));
        }
    }
    tracing::debug!(%origin, %room, children = shown.len(), "described a space to another server");
    Ok(json!({"room": entry, "children": shown, "inaccessible_children": inaccessible}))
}
