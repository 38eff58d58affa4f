//! Client-server API: creating rooms and reading single events.

use std::sync::Arc;

use ruma::{
    api::client::room::{create_room, get_room_event, Visibility},
    serde::Raw,
};
use serde_json::{Map, Value};

use super::raw;
use crate::{
    api::Ruma,
    error::{Error, Result},
    rooms::create::{CreateRoom, Preset},
    Services,
};

fn object_of<T>(raw: &Raw<T>, what: &str) -> Result<Map<String, Value>> {
    match serde_json::from_str(raw.json().get()) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(Error::bad_json(format!("{what} must be an object"))),
    }
}

/// Most users one `createRoom` may invite, and most `initial_state` events.
pub const MAX_INVITES: usize = 100;
pub const MAX_INITIAL_STATE: usize = 100;

/// `POST /_matrix/client/v3/createRoom`
pub async fn create_room(s: Arc<Services>, req: Ruma<create_room::v3::Request>) -> Result<create_room::v3::Response> {
    let caller = req.caller()?.clone();
    let body = req.body;
    let version = body.room_version.clone().unwrap_or_else(|| s.config.default_room_version.clone());
    if !s.room_versions().contains(&version) {
        return Err(Error::matrix(
            http::StatusCode::BAD_REQUEST,
            "M_UNSUPPORTED_ROOM_VERSION",
            format!("Room version {version} is not supported"),
        ));
    }
    if body.invite.len() + body.invite_3pid.len() > MAX_INVITES || body.initial_state.len() > MAX_INITIAL_STATE {
        return Err(Error::too_large("Too many invites or initial state events"));
    }
    let preset = match body.preset.as_ref().map(|p| p.as_str()) {
        Some("public_chat") => Preset::PublicChat,
        Some("trusted_private_chat") => Preset::TrustedPrivateChat,
        Some("private_chat") => Preset::PrivateChat,
        Some(other) => return Err(Error::invalid_param(format!("Unknown preset {other}"))),
        None if body.visibility == Visibility::Public => Preset::PublicChat,
        None => Preset::PrivateChat,
    };
    let creation_content = match &body.creation_content {
        Some(raw) => {
            let mut m = object_of(raw, "creation_content")?;
            // The server decides these.
            m.remove("room_version");
            m.remove("creator");
            m
        }
        None => Map::new(),
    };
    let mut initial_state = Vec::new();
    for raw in &body.initial_state {
        let ev = object_of(raw, "initial_state event")?;
        let kind = ev
            .get("type")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::bad_json("initial_state event needs a type"))?;
        let key = ev.get("state_key").and_then(Value::as_str).unwrap_or_default();
        let content = match ev.get("content") {
            Some(Value::Object(c)) => c.clone(),
            _ => return Err(Error::bad_json("initial_state event needs an object content")),
        };
        if kind == "m.room.encryption" && !s.config.allow_encryption {
            return Err(Error::forbidden("Encryption is disabled on this server"));
        }
        initial_state.push((kind.to_owned(), key.to_owned(), content));
    }
    let power_level_override = match &body.power_level_content_override {
        Some(raw) => Some(object_of(raw, "power_level_content_override")?),
        None => None,
    };
    let request = CreateRoom {
        room_id: None,
        version,
        creation_content,
        preset,
        name: body.name.clone(),
        topic: body.topic.clone(),
        alias_localpart: body.room_alias_name.clone(),
        invite: body.invite.clone(),
        is_direct: body.is_direct,
        initial_state,
        power_level_override,
        creator_member_content: s.users.member_profile(&caller.user_id)?,
    };
    let room_id = s.rooms.create_room(&caller.user_id, request)?;
    if body.visibility == Visibility::Public {
        s.rooms.set_published(&room_id, true)?;
    }
    let federate = s.config.allow_federation;
    for user in body.invite.iter().filter(|u| u.server_name() != s.config.server_name) {
        s.federation.invite(&room_id, &caller.user_id, user, None, body.is_direct, federate).await?;
    }
    for tp in &body.invite_3pid {
        let to = crate::identity::invite::ThirdPartyInvitee {
            id_server: &tp.id_server,
            id_access_token: &tp.id_access_token,
            medium: tp.medium.as_str(),
            address: &tp.address,
        };
        s.identity.invite(&room_id, &caller.user_id, to, federate).await?;
    }
    Ok(create_room::v3::Response::new(room_id))
}

/// `GET /_matrix/client/v3/rooms/{roomId}/event/{eventId}`
pub async fn get_room_event(
    s: Arc<Services>,
    req: Ruma<get_room_event::v3::Request>,
) -> Result<get_room_event::v3::Response> {
    let caller = req.caller()?;
    // Someone who may not read the room is told the event is not found (as Synapse), not
    // that the room exists.
    let until = s.rooms.require_visible(&req.body.room_id, &caller.user_id).map_err(|e| match e {
        Error::Matrix { status: http::StatusCode::FORBIDDEN, .. } => Error::not_found("Event not found"),
        other => other,
    })?;
    let meta = s.rooms.event_meta(&req.body.event_id)?.ok_or_else(|| Error::not_found("Event not found"))?;
    // A soft-failed event is kept for state resolution only: never shown to clients.
    if meta.room_id != req.body.room_id || meta.stream > until || meta.soft_failed {
        return Err(Error::not_found("Event not found"));
    }
    let pdu = s.rooms.pdu(&req.body.event_id)?.ok_or_else(|| Error::not_found("Event not found"))?;
    let pdu = s.rooms.visible_as(pdu.into(), &caller.user_id)?.ok_or_else(|| Error::not_found("Event not found"))?;
    let event = s.rooms.client_event(&pdu, Some(&meta), Some((&caller.user_id, caller.device_id.as_str())));
    Ok(get_room_event::v3::Response::new(raw(&event)?))
}

/// `POST /_matrix/client/v3/rooms/{roomId}/upgrade`
///
/// Written outside ruma's types so that a version that is no version id at all is 400
/// `M_UNSUPPORTED_ROOM_VERSION`, as for any unknown version (ruma would refuse the body as
/// `M_BAD_JSON`). The caller's own links to the room follow it: its entry in `m.direct`
/// and its tags.
pub async fn upgrade_room(
    axum::extract::State(s): axum::extract::State<Arc<Services>>,
    axum::extract::Path(room_id): axum::extract::Path<String>,
    parts: axum::http::request::Parts,
    body: axum::body::Bytes,
) -> Result<axum::Json<Value>> {
    let caller = crate::api::caller_of(&s, &parts)?;
    let room_id = ruma::OwnedRoomId::try_from(room_id).map_err(|_| Error::invalid_param("Invalid room id"))?;
    let body: Value = serde_json::from_slice(&body).map_err(|_| Error::not_json("The body is not JSON"))?;
    let requested =
        body.get("new_version").and_then(Value::as_str).ok_or_else(|| Error::missing_param("new_version"))?;
    let version = s.room_versions().into_iter().find(|v| v.as_str() == requested).ok_or_else(|| {
        Error::matrix(
            http::StatusCode::BAD_REQUEST,
            "M_UNSUPPORTED_ROOM_VERSION",
            format!("Room version {requested} is not supported"),
        )
    })?;
    let content = s.users.member_profile(&caller.user_id)?;
    let new_room = s.rooms.upgrade_room(&room_id, &caller.user_id, version, content)?;
    follow_upgrade(&s, &caller.user_id, &room_id, &new_room)?;
    Ok(axum::Json(serde_json::json!({"replacement_room": new_room})))
}

/// Copies a user's links to an upgraded room to its successor: the `m.direct` entries
/// naming it, its tags and its per-room push rule (as Synapse does for the upgrading user
/// and for each local member who joins the successor). Tags or a rule the successor has
/// already are kept.
pub(crate) fn follow_upgrade(s: &Services, user: &ruma::UserId, old: &ruma::RoomId, new: &ruma::RoomId) -> Result<()> {
    if let Some(Value::Object(mut direct)) = s.account_data.get(user, None, "m.direct")? {
        let mut changed = false;
        for rooms in direct.values_mut() {
            if let Value::Array(list) = rooms {
                if list.iter().any(|r| r == old.as_str()) && !list.iter().any(|r| r == new.as_str()) {
                    list.push(Value::from(new.as_str()));
                    changed = true;
                }
            }
        }
        if changed {
            s.account_data.set(user, None, "m.direct", direct)?;
        }
    }
    if s.account_data.get(user, Some(new), "m.tag")?.is_none() {
        if let Some(Value::Object(tags)) = s.account_data.get(user, Some(old), "m.tag")? {
            s.account_data.set(user, Some(new), "m.tag", tags)?;
        }
    }
    let mut rules = crate::push::stored_rules(&s.account_data, user)?;
    let room_rule = |id: &str| {
        rules.get("room").and_then(Value::as_array).and_then(|l| l.iter().find(|r| r["rule_id"] == id).cloned())
    };
    if let (Some(rule), None) = (room_rule(old.as_str()), room_rule(new.as_str())) {
        let body = rule.as_object().cloned().unwrap_or_default();
        let new_rule =
            crate::push::rules::NewRule { kind: "room", rule_id: new.as_str(), body: &body, before: None, after: None };
        crate::push::rules::insert(&mut rules, new_rule)?;
        crate::push::save_rules(&s.account_data, user, rules)?;
    }
    Ok(())
}

/// After a local user joined `room`: when it continues an upgraded room, this server's
/// aliases and directory entry of the old one follow (`Rooms::follow_remote_upgrade`),
/// and so do the user's links to it if they were in it ([`follow_upgrade`]).
pub(crate) fn after_join(s: &Services, user: &ruma::UserId, room: &ruma::RoomId) -> Result<()> {
    // A room joined is no longer peeked into, by any of the user's devices (MSC2753).
    s.rooms.unpeek(user, None, room)?;
    let create = s.rooms.state_event(room, &ruma::events::StateEventType::RoomCreate, "")?;
    let Some(old) = create.and_then(|c| c.content_value()["predecessor"]["room_id"].as_str().map(str::to_owned)) else {
        return Ok(());
    };
    let Ok(old) = ruma::OwnedRoomId::try_from(old) else { return Ok(()) };
    // An upgrade made elsewhere: this server's aliases and directory entry follow.
    s.rooms.follow_remote_upgrade(&old, room)?;
    if s.rooms.membership(&old, user)?.is_none() {
        return Ok(());
    }
    follow_upgrade(s, user, &old, room)
}
