//! Client-server API: room state (read all, read one, set one).

use std::sync::Arc;

use ruma::api::client::state::{get_state_event_for_key, get_state_events, send_state_event};
use serde_json::{Map, Value};

use super::raw;
use crate::{
    api::Ruma,
    error::{Error, Result},
    rooms::append::NewEvent,
    Services,
};

/// The state a user may see: current if joined, as it was when they left otherwise.
fn visible_state(
    s: &Services,
    room_id: &ruma::RoomId,
    user: &ruma::UserId,
) -> Result<Arc<crate::rooms::state::StateMap>> {
    let until = s.rooms.require_visible(room_id, user)?;
    if until == u64::MAX {
        return s.rooms.current_state_map(room_id);
    }
    let rec = s.rooms.membership(room_id, user)?.ok_or_else(|| Error::forbidden("Not a member"))?;
    // As it was when they left, their leave included.
    s.rooms.state_after(&rec.event_id)
}

/// `GET /_matrix/client/v3/rooms/{roomId}/state`
pub async fn get_state_events(
    s: Arc<Services>,
    req: Ruma<get_state_events::v3::Request>,
) -> Result<get_state_events::v3::Response> {
    let caller = req.caller()?;
    let map = visible_state(&s, &req.body.room_id, &caller.user_id)?;
    let mut events = Vec::new();
    for pdu in s.rooms.state_events(&map)? {
        events.push(raw(&s.rooms.client_event(&pdu, None, None))?);
    }
    Ok(get_state_events::v3::Response::new(events))
}

/// `GET /_matrix/client/v3/rooms/{roomId}/state/{eventType}/{stateKey}`
///
/// The content by default; the whole event with `?format=event`.
pub async fn get_state_event_for_key(
    s: Arc<Services>,
    req: Ruma<get_state_event_for_key::v3::Request>,
) -> Result<get_state_event_for_key::v3::Response> {
    let caller = req.caller()?;
    let b = &req.body;
    let map = visible_state(&s, &b.room_id, &caller.user_id)?;
    let pdu = s
        .rooms
        .state_event_in(&map, &b.event_type, &b.state_key)?
        .ok_or_else(|| Error::not_found("State event not found"))?;
    let value = match b.format.as_str() {
        "event" => s.rooms.client_event(&pdu, None, None),
        _ => pdu.content_value(),
    };
    let json = serde_json::value::to_raw_value(&value).map_err(|e| Error::internal(e.to_string()))?;
    Ok(get_state_event_for_key::v3::Response::new(json))
}

/// `PUT /_matrix/client/v3/rooms/{roomId}/state/{eventType}/{stateKey}`
pub async fn send_state_event(
    s: Arc<Services>,
    req: Ruma<send_state_event::v3::Request>,
) -> Result<send_state_event::v3::Response> {
    let caller = req.caller()?.clone();
    let b = req.body;
    let content: Map<String, Value> = match serde_json::from_str(b.body.json().get()) {
        Ok(Value::Object(m)) => m,
        _ => return Err(Error::bad_json("State content must be an object")),
    };
    let kind = b.event_type.to_string();
    if kind == "m.room.encryption" && !s.config.allow_encryption {
        return Err(Error::forbidden("Encryption is disabled on this server"));
    }
    if kind == "m.room.create" {
        return Err(Error::forbidden("The create event cannot be replaced"));
    }
    if kind == "m.room.member" {
        return Err(Error::forbidden("Use the membership endpoints to change membership"));
    }
    s.rooms.require_joined(&b.room_id, &caller.user_id)?;
    let pdu = s.rooms.append_local(
        &b.room_id,
        &caller.user_id,
        NewEvent::state(kind, b.state_key, Value::Object(content)),
        None,
    )?;
    Ok(send_state_event::v3::Response::new(pdu.event_id))
}
