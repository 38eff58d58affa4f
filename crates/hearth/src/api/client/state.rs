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

/// The state a user may see: current if joined (or the room is world-readable), as it was
/// when they left if they left. A banned user may not, as Synapse answers: their ban is
/// not theirs to look back from.
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
    if rec.membership == ruma::events::room::member::MembershipState::Ban {
        return Err(Error::forbidden("You are banned from this room"));
    }
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
        return member_state(&s, &caller.user_id, &b.room_id, &b.state_key, content).await;
    }
    s.rooms.require_joined(&b.room_id, &caller.user_id)?;
    if kind == "m.room.canonical_alias" {
        check_canonical_alias(&s, &b.room_id, &content).await?;
    }
    let guest_access = kind == "m.room.guest_access" && b.state_key.is_empty();
    let pdu = s.rooms.append_local(
        &b.room_id,
        &caller.user_id,
        NewEvent::state(kind, b.state_key, Value::Object(content)),
        None,
    )?;
    if guest_access {
        s.federation.remove_barred_guests(&b.room_id)?;
    }
    Ok(send_state_event::v3::Response::new(pdu.event_id))
}

/// `PUT …/state/m.room.member/{userId}`, as Synapse serves it: one's own `join` joins (or,
/// when joined already, updates one's member event: a per-room display name), one's own
/// `leave` leaves; other changes to local users go through the auth rules as they are.
/// Invites of users on other servers need `/invite`, which asks their server.
async fn member_state(
    s: &Services,
    sender: &ruma::UserId,
    room_id: &ruma::RoomId,
    state_key: &str,
    mut content: Map<String, Value>,
) -> Result<send_state_event::v3::Response> {
    let target = ruma::OwnedUserId::try_from(state_key)
        .map_err(|_| Error::bad_json("The state key of a member event must be a user id"))?;
    let membership = content.get("membership").and_then(Value::as_str).map(str::to_owned);
    let membership = membership.ok_or_else(|| Error::bad_json("A member event needs a membership"))?;
    let reason = content.get("reason").and_then(Value::as_str).map(str::to_owned);
    let pdu = match membership.as_str() {
        "join" if target == sender => {
            content.remove("membership");
            content.remove("reason");
            for (k, v) in s.users.member_profile(sender)? {
                content.entry(k).or_insert(v);
            }
            let federate = s.config.allow_federation;
            s.federation.join(room_id, sender, &[], content, reason, federate).await?;
            let joined = s.rooms.state_event(room_id, &"m.room.member".into(), sender.as_str())?;
            joined.ok_or_else(|| Error::internal("joined without a member event"))?
        }
        "leave" if target == sender => s.rooms.set_leave(room_id, sender, sender, reason)?,
        // Only an invite needs the invitee's server; a ban or kick is this room's business.
        "invite" if target.server_name() != s.config.server_name => {
            return Err(Error::forbidden("Invite users of other servers with /invite"));
        }
        _ => s.rooms.append_local(
            room_id,
            sender,
            NewEvent::state("m.room.member", state_key, Value::Object(content)),
            None,
        )?,
    };
    Ok(send_state_event::v3::Response::new(pdu.event_id))
}

/// The aliases an `m.room.canonical_alias` names (`alias`, `alt_aliases`) must be valid
/// and point at this room (checked with their server for others' aliases), as the spec
/// asks: 400 `M_BAD_ALIAS` otherwise (`M_INVALID_PARAM` for what is no alias at all, as
/// Synapse).
async fn check_canonical_alias(s: &Services, room_id: &ruma::RoomId, content: &Map<String, Value>) -> Result<()> {
    let bad = |why: String| Error::matrix(http::StatusCode::BAD_REQUEST, "M_BAD_ALIAS", why);
    let mut named: Vec<&Value> = content.get("alias").into_iter().collect();
    match content.get("alt_aliases") {
        None => {}
        Some(Value::Array(alts)) => named.extend(alts),
        Some(_) => return Err(Error::invalid_param("alt_aliases must be a list")),
    }
    for value in named {
        let Some(text) = value.as_str() else { return Err(Error::invalid_param("An alias must be a string")) };
        let alias = <&ruma::RoomAliasId>::try_from(text)
            .map_err(|_| Error::invalid_param(format!("{text} is not a room alias")))?;
        let servers = s.config.allow_federation.then_some(&*s.transport.servers);
        let found = crate::federation::query::room_alias(&s.rooms, servers, &s.config.server_name, alias).await;
        match found {
            Ok((points_at, _)) if points_at == room_id => {}
            Ok(_) => return Err(bad(format!("{alias} points at another room"))),
            Err(_) => return Err(bad(format!("{alias} does not exist"))),
        }
    }
    Ok(())
}
