//! Client-server API: joining, inviting, leaving, kicking, banning; member lists.

use std::sync::Arc;

use serde_json::{Map, Value};

use ruma::{
    api::client::knock::knock_room,
    api::client::membership::{
        ban_user, forget_room, get_member_events, invite_user, join_room_by_id, join_room_by_id_or_alias, joined_rooms,
        kick_user, leave_room, unban_user,
    },
    events::room::member::MembershipState,
    OwnedRoomId, OwnedServerName, RoomOrAliasId,
};

use super::raw;
use crate::{
    api::Ruma,
    error::{Error, Result},
    Services,
};

/// The room a room id or alias names, with servers that may help join it: the alias's
/// server's answer for a remote alias, else `via`.
async fn resolve_remote(
    s: &Services,
    target: &RoomOrAliasId,
    via: &[OwnedServerName],
) -> Result<(OwnedRoomId, Vec<OwnedServerName>)> {
    match <&ruma::RoomId>::try_from(target) {
        Ok(room_id) => Ok((room_id.to_owned(), via.to_vec())),
        Err(alias) => {
            let (room, mut found) = super::alias::room_alias(s, alias).await?;
            found.extend(via.iter().cloned());
            Ok((room, found))
        }
    }
}

/// The content of a join: the keys the client sent beside `reason` (Synapse keeps them,
/// and clients put their own there), then the joiner's display name and avatar where the
/// client named none.
pub(crate) fn join_content(s: &Services, user: &ruma::UserId, body: &[u8]) -> Result<Map<String, Value>> {
    let mut content = match serde_json::from_slice(body) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    };
    for key in ["reason", "third_party_signed", "membership", "join_authorised_via_users_server"] {
        content.remove(key);
    }
    for (k, v) in s.users.member_profile(user)? {
        content.entry(k).or_insert(v);
    }
    Ok(content)
}

/// A join with `third_party_signed` first redeems that third-party invite (the invite's
/// member event), unless the user is already invited or in.
async fn redeem_signed(s: &Services, room: &ruma::RoomId, user: &ruma::UserId, body: &[u8]) -> Result<()> {
    let Ok(Value::Object(mut body)) = serde_json::from_slice(body) else { return Ok(()) };
    let Some(signed) = body.remove("third_party_signed").filter(Value::is_object) else { return Ok(()) };
    let current = s.rooms.membership(room, user)?.map(|m| m.membership);
    use ruma::events::room::member::MembershipState;
    if matches!(current, Some(MembershipState::Invite) | Some(MembershipState::Join)) {
        return Ok(());
    }
    s.identity.redeem_for_join(room, user, &signed).await
}

/// `POST /_matrix/client/v3/rooms/{roomId}/join`
pub async fn join_room_by_id(
    s: Arc<Services>,
    req: Ruma<join_room_by_id::v3::Request>,
) -> Result<join_room_by_id::v3::Response> {
    let caller = req.caller()?;
    let profile = join_content(&s, &caller.user_id, &req.json)?;
    let room = &req.body.room_id;
    let federate = s.config.allow_federation;
    redeem_signed(&s, room, &caller.user_id, &req.json).await?;
    s.federation.join(room, &caller.user_id, &[], profile, req.body.reason.clone(), federate).await?;
    super::room::after_join(&s, &caller.user_id, room)?;
    Ok(join_room_by_id::v3::Response::new(room.clone()))
}

/// `POST /_matrix/client/v3/join/{roomIdOrAlias}`
pub async fn join_room_by_id_or_alias(
    s: Arc<Services>,
    req: Ruma<join_room_by_id_or_alias::v3::Request>,
) -> Result<join_room_by_id_or_alias::v3::Response> {
    let caller = req.caller()?;
    let (room_id, via) = resolve_remote(&s, &req.body.room_id_or_alias, &req.body.via).await?;
    let profile = join_content(&s, &caller.user_id, &req.json)?;
    let federate = s.config.allow_federation;
    redeem_signed(&s, &room_id, &caller.user_id, &req.json).await?;
    s.federation.join(&room_id, &caller.user_id, &via, profile, req.body.reason.clone(), federate).await?;
    super::room::after_join(&s, &caller.user_id, &room_id)?;
    Ok(join_room_by_id_or_alias::v3::Response::new(room_id))
}

/// `POST /_matrix/client/v3/knock/{roomIdOrAlias}`
///
/// Allowed by the auth rules only in rooms (v7+) whose join rule is `knock`.
pub async fn knock_room(s: Arc<Services>, req: Ruma<knock_room::v3::Request>) -> Result<knock_room::v3::Response> {
    let caller = req.caller()?;
    let (room_id, via) = resolve_remote(&s, &req.body.room_id_or_alias, &req.body.via).await?;
    let profile = s.users.member_profile(&caller.user_id)?;
    let federate = s.config.allow_federation;
    s.federation.knock(&room_id, &caller.user_id, &via, profile, req.body.reason.clone(), federate).await?;
    Ok(knock_room::v3::Response::new(room_id))
}

/// `POST /_matrix/client/v3/rooms/{roomId}/invite`
pub async fn invite_user(s: Arc<Services>, req: Ruma<invite_user::v3::Request>) -> Result<invite_user::v3::Response> {
    let caller = req.caller()?;
    let invitee = match &req.body.recipient {
        invite_user::v3::InvitationRecipient::UserId(invitee) => invitee,
        invite_user::v3::InvitationRecipient::ThirdPartyId(tp) => {
            let to = crate::identity::invite::ThirdPartyInvitee {
                id_server: &tp.id_server,
                id_access_token: &tp.id_access_token,
                medium: tp.medium.as_str(),
                address: &tp.address,
            };
            s.identity.invite(&req.body.room_id, &caller.user_id, to, s.config.allow_federation).await?;
            return Ok(invite_user::v3::Response::new());
        }
        _ => return Err(Error::invalid_param("Invite a user id, or an address at an identity server")),
    };
    let user_id = &invitee.user_id;
    // A user of an application service's namespace may be made on demand: asked first.
    if user_id.server_name() == s.config.server_name
        && !s.users.is_active(user_id)?
        && !(s.appservices.query_user(user_id).await && s.users.is_active(user_id)?)
    {
        return Err(Error::not_found("No such user"));
    }
    let federate = s.config.allow_federation;
    let reason = invitee.reason.clone();
    s.federation.invite(&req.body.room_id, &caller.user_id, user_id, reason, false, federate).await?;
    Ok(invite_user::v3::Response::new())
}

/// `POST /_matrix/client/v3/rooms/{roomId}/leave`
pub async fn leave_room(s: Arc<Services>, req: Ruma<leave_room::v3::Request>) -> Result<leave_room::v3::Response> {
    let caller = req.caller()?;
    match s.rooms.membership(&req.body.room_id, &caller.user_id)? {
        // An invite to a room on another server is rejected through the inviting server.
        Some(m) if m.membership == MembershipState::Invite && s.rooms.room(&req.body.room_id)?.is_none() => {
            let inviter = s.federation.inviter_server(&req.body.room_id, &caller.user_id)?;
            let inviter = inviter.ok_or_else(|| Error::not_found("Unknown room"))?;
            s.federation.reject_remote_invite(&req.body.room_id, &caller.user_id, &inviter).await?;
        }
        Some(m)
            if m.membership == MembershipState::Join
                || m.membership == MembershipState::Invite
                || m.membership == MembershipState::Knock =>
        {
            s.rooms.set_leave(&req.body.room_id, &caller.user_id, &caller.user_id, req.body.reason.clone())?;
        }
        // Leaving a room one is not in is a no-op, as Synapse does.
        _ => {
            s.rooms.known_room(&req.body.room_id)?;
        }
    }
    Ok(leave_room::v3::Response::new())
}

/// `POST /_matrix/client/v3/rooms/{roomId}/kick`
pub async fn kick_user(s: Arc<Services>, req: Ruma<kick_user::v3::Request>) -> Result<kick_user::v3::Response> {
    let caller = req.caller()?;
    match s.rooms.membership(&req.body.room_id, &req.body.user_id)? {
        Some(m)
            if m.membership == MembershipState::Join
                || m.membership == MembershipState::Invite
                || m.membership == MembershipState::Knock => {}
        _ => return Err(Error::forbidden("That user is not in the room")),
    }
    s.rooms.set_leave(&req.body.room_id, &caller.user_id, &req.body.user_id, req.body.reason.clone())?;
    Ok(kick_user::v3::Response::new())
}

/// `POST /_matrix/client/v3/rooms/{roomId}/ban`
pub async fn ban_user(s: Arc<Services>, req: Ruma<ban_user::v3::Request>) -> Result<ban_user::v3::Response> {
    let caller = req.caller()?;
    s.rooms.ban(&req.body.room_id, &caller.user_id, &req.body.user_id, req.body.reason.clone())?;
    Ok(ban_user::v3::Response::new())
}

/// `POST /_matrix/client/v3/rooms/{roomId}/unban`
pub async fn unban_user(s: Arc<Services>, req: Ruma<unban_user::v3::Request>) -> Result<unban_user::v3::Response> {
    let caller = req.caller()?;
    match s.rooms.membership(&req.body.room_id, &req.body.user_id)? {
        Some(m) if m.membership == MembershipState::Ban => {}
        _ => return Err(Error::forbidden("That user is not banned")),
    }
    s.rooms.set_leave(&req.body.room_id, &caller.user_id, &req.body.user_id, req.body.reason.clone())?;
    Ok(unban_user::v3::Response::new())
}

/// `POST /_matrix/client/v3/rooms/{roomId}/forget`
pub async fn forget_room(s: Arc<Services>, req: Ruma<forget_room::v3::Request>) -> Result<forget_room::v3::Response> {
    let caller = req.caller()?;
    s.rooms.forget(&req.body.room_id, &caller.user_id)?;
    s.initial_sync_cache.forget_user(&caller.user_id);
    Ok(forget_room::v3::Response::new())
}

/// `GET /_matrix/client/v3/joined_rooms`
pub async fn joined_rooms(
    s: Arc<Services>,
    req: Ruma<joined_rooms::v3::Request>,
) -> Result<joined_rooms::v3::Response> {
    let caller = req.caller()?;
    Ok(joined_rooms::v3::Response::new(s.rooms.joined_rooms(&caller.user_id)?))
}

/// `GET /_matrix/client/v3/rooms/{roomId}/members`
pub async fn get_member_events(
    s: Arc<Services>,
    req: Ruma<get_member_events::v3::Request>,
) -> Result<get_member_events::v3::Response> {
    let caller = req.caller()?;
    let b = &req.body;
    let until = s.rooms.require_visible(&b.room_id, &caller.user_id)?;
    let map = match &b.at {
        Some(t) => {
            // `at` is a sync or pagination token: the state at that point of the timeline.
            let pos = crate::rooms::timeline::parse_token(t)?.min(until);
            let page = s.rooms.page(&b.room_id, pos, ruma::api::Direction::Backward, 1, until, None)?;
            match page.first() {
                Some((_, pdu)) => s.rooms.state_after(&pdu.event_id)?,
                None => Default::default(),
            }
        }
        None if until == u64::MAX => s.rooms.current_state_map(&b.room_id)?,
        None => {
            let rec =
                s.rooms.membership(&b.room_id, &caller.user_id)?.ok_or_else(|| Error::forbidden("Not a member"))?;
            // The state as the caller left it, their own leave included (as Synapse).
            s.rooms.state_after(&rec.event_id)?
        }
    };
    let mut chunk = Vec::new();
    for pdu in s.rooms.state_events(&map)? {
        if pdu.kind.to_string() != "m.room.member" {
            continue;
        }
        let membership = pdu.content_value().get("membership").and_then(|m| m.as_str()).unwrap_or_default().to_owned();
        if b.membership.as_ref().is_some_and(|m| m.as_str() != membership) {
            continue;
        }
        if b.not_membership.as_ref().is_some_and(|m| m.as_str() == membership) {
            continue;
        }
        chunk.push(raw(&s.rooms.client_event(&pdu, None, None))?);
    }
    Ok(get_member_events::v3::Response::new(chunk))
}

/// `GET /_matrix/client/v3/rooms/{roomId}/joined_members` (and `r0`)
///
/// Written as JSON here: every member carries `display_name` and `avatar_url`, null when
/// unset, as Synapse answers (ruma's type leaves unset ones out, and sytest and some bots
/// read the keys).
pub async fn joined_members(
    axum::extract::State(s): axum::extract::State<Arc<Services>>,
    axum::extract::Path(room_id): axum::extract::Path<String>,
    parts: axum::http::request::Parts,
) -> Result<axum::Json<Value>> {
    let caller = crate::api::caller_of(&s, &parts)?;
    let room_id = OwnedRoomId::try_from(room_id).map_err(|_| Error::invalid_param("Invalid room id"))?;
    s.rooms.require_joined(&room_id, &caller.user_id)?;
    let map = s.rooms.current_state_map(&room_id)?;
    let mut joined = Map::new();
    for pdu in s.rooms.state_events(&map)? {
        if pdu.kind.to_string() != "m.room.member" {
            continue;
        }
        let content = pdu.content_value();
        if content.get("membership").and_then(|m| m.as_str()) != Some("join") {
            continue;
        }
        let Some(user) = pdu.state_key.as_deref() else { continue };
        let text =
            |k: &str| content.get(k).and_then(Value::as_str).map_or(Value::Null, |v| Value::String(v.to_owned()));
        joined.insert(
            user.to_owned(),
            serde_json::json!({"display_name": text("displayname"), "avatar_url": text("avatar_url")}),
        );
    }
    Ok(axum::Json(serde_json::json!({"joined": joined})))
}

pub fn routes() -> axum::Router<Arc<Services>> {
    let mut router = axum::Router::new()
        .route("/_matrix/client/v3/rooms/{roomId}/joined_members", axum::routing::get(joined_members))
        .route("/_matrix/client/r0/rooms/{roomId}/joined_members", axum::routing::get(joined_members));
    for v in ["r0", "v3", "unstable/org.matrix.msc2753"] {
        router = router
            .route(&format!("/_matrix/client/{v}/peek/{{roomIdOrAlias}}"), axum::routing::post(peek))
            .route(&format!("/_matrix/client/{v}/unpeek/{{roomId}}"), axum::routing::post(unpeek));
    }
    router
}

/// `POST /_matrix/client/v3/peek/{roomIdOrAlias}` (MSC2753): this device follows a
/// world-readable room of this server without joining it (see `rooms::peek`).
async fn peek(
    axum::extract::State(s): axum::extract::State<Arc<Services>>,
    axum::extract::Path(target): axum::extract::Path<String>,
    parts: http::request::Parts,
) -> Result<axum::Json<Value>> {
    let caller = crate::api::caller_of(&s, &parts)?;
    let target =
        <&RoomOrAliasId>::try_from(target.as_str()).map_err(|_| Error::invalid_param("Not a room id or alias"))?;
    let (room_id, _) = resolve_remote(&s, target, &[]).await?;
    s.rooms.peek(&caller.user_id, caller.device_id.as_str(), &room_id)?;
    s.initial_sync_cache.forget_user(&caller.user_id);
    Ok(axum::Json(serde_json::json!({"room_id": room_id})))
}

/// `POST /_matrix/client/v3/unpeek/{roomId}` (MSC2753).
async fn unpeek(
    axum::extract::State(s): axum::extract::State<Arc<Services>>,
    axum::extract::Path(room): axum::extract::Path<String>,
    parts: http::request::Parts,
) -> Result<axum::Json<Value>> {
    let caller = crate::api::caller_of(&s, &parts)?;
    let room = ruma::OwnedRoomId::try_from(room).map_err(|_| Error::invalid_param("Not a room id"))?;
    s.rooms.unpeek(&caller.user_id, Some(caller.device_id.as_str()), &room)?;
    s.initial_sync_cache.forget_user(&caller.user_id);
    Ok(axum::Json(serde_json::json!({})))
}
