//! Membership changes: join, invite, leave, kick, ban, unban, forget.
//!
//! Each is an `m.room.member` event through the one append path, so the room version's
//! auth rules decide who may do what (joining an invite-only room uninvited, kicking
//! without power, … are refused there with 403).

use std::collections::BTreeSet;

use ruma::{events::room::member::MembershipState, OwnedRoomId, OwnedUserId, RoomId, UserId};
use serde_json::{json, Map, Value};

use super::{append::NewEvent, pdu::Pdu, Rooms, USER_ROOMS};
use crate::{
    error::{Error, Result},
    store::Batch,
};

/// Whether and by whom a join of a restricted room is vouched for
/// ([`Rooms::restricted_join_authoriser`]).
#[derive(Debug)]
pub(crate) enum Vouch {
    /// Not a restricted room, or the user is already invited or in.
    NotNeeded,
    /// This local member vouches (`join_authorised_via_users_server`).
    By(OwnedUserId),
    /// The user is in none of the allowed rooms this server is in; `all_known` when this
    /// server is in every allowed room, so that no other server could say otherwise.
    NotAllowed { all_known: bool },
    /// The user may join, but no local member has the power to invite.
    NoLocalInviter,
}

/// The content of an invite's member event.
pub fn invite_content(reason: Option<String>, is_direct: bool) -> Value {
    let mut content = json!({"membership": "invite"});
    if let Some(r) = reason {
        content["reason"] = json!(r);
    }
    if is_direct {
        content["is_direct"] = json!(true);
    }
    content
}

impl Rooms {
    fn member_event(&self, room_id: &RoomId, sender: &UserId, target: &UserId, content: Value) -> Result<Pdu> {
        self.append_local(room_id, sender, NewEvent::state("m.room.member", target.as_str(), content), None)
    }

    /// Joins a room this server knows. `profile` is the joiner's displayname/avatar_url.
    pub fn join(
        &self,
        room_id: &RoomId,
        user: &UserId,
        profile: Map<String, Value>,
        reason: Option<String>,
    ) -> Result<Pdu> {
        if self.room(room_id)?.is_none() {
            return Err(Error::not_found("Unknown room"));
        }
        self.check_not_blocked(room_id)?;
        let mut content = profile;
        content.insert("membership".into(), json!("join"));
        if let Some(r) = reason {
            content.insert("reason".into(), json!(r));
        }
        match self.restricted_join_authoriser(room_id, user)? {
            Vouch::NotNeeded => {}
            Vouch::By(authoriser) => {
                content.insert("join_authorised_via_users_server".into(), json!(authoriser));
            }
            Vouch::NotAllowed { .. } => {
                return Err(Error::forbidden("This room is restricted: join one of the rooms it allows first"))
            }
            Vouch::NoLocalInviter => {
                return Err(Error::forbidden("No member of this server may let you into this restricted room"))
            }
        }
        self.member_event(room_id, user, user, Value::Object(content))
    }

    /// Who vouches for `user`'s join of a restricted room (`restricted` or
    /// `knock_restricted`, room versions 8 and later) that they are not yet invited to or
    /// in: a local member with the power to invite, when the user is joined to one of the
    /// rooms the join rule allows. Used for local joins and for other servers' `make_join`.
    pub(crate) fn restricted_join_authoriser(&self, room_id: &RoomId, user: &UserId) -> Result<Vouch> {
        let Some(rules) =
            self.state_event(room_id, &ruma::events::StateEventType::RoomJoinRules, "")?.map(|p| p.content_value())
        else {
            return Ok(Vouch::NotNeeded);
        };
        let rule = rules.get("join_rule").and_then(Value::as_str).unwrap_or_default();
        if rule != "restricted" && rule != "knock_restricted" {
            return Ok(Vouch::NotNeeded);
        }
        let current = self.membership(room_id, user)?.map(|m| m.membership);
        if matches!(current, Some(MembershipState::Join) | Some(MembershipState::Invite)) {
            return Ok(Vouch::NotNeeded);
        }
        let allowed_rooms: Vec<&RoomId> = rules
            .get("allow")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|a| a.get("type").and_then(Value::as_str) == Some("m.room_membership"))
            .filter_map(|a| a.get("room_id").and_then(Value::as_str).and_then(|r| <&RoomId>::try_from(r).ok()))
            .collect();
        let mut all_known = true;
        let mut allowed = false;
        for allowed_room in allowed_rooms {
            allowed |= self.is_joined(allowed_room, user)?;
            all_known &= self
                .members_shared(allowed_room, &MembershipState::Join)?
                .iter()
                .any(|m| m.server_name() == self.server_name);
        }
        if !allowed {
            return Ok(Vouch::NotAllowed { all_known });
        }
        let needed = self.required_power(room_id, "invite", 0)?;
        for member in self.members_shared(room_id, &MembershipState::Join)?.iter() {
            if member.server_name() == self.server_name && self.user_power(room_id, member)? >= needed {
                return Ok(Vouch::By(member.clone()));
            }
        }
        Ok(Vouch::NoLocalInviter)
    }

    /// Whether the room lets guests join: its `m.room.guest_access` is `can_join` (spec,
    /// "Guest access").
    pub fn guests_may_join(&self, room_id: &RoomId) -> Result<bool> {
        Ok(self.state_str(room_id, ruma::events::StateEventType::RoomGuestAccess, "guest_access")?.as_deref()
            == Some("can_join"))
    }

    /// Makes the joined local members that `is_guest` names leave, when the room no longer
    /// lets guests join (the spec's server behaviour for guest access). Each leave is the
    /// guest's own; one the room refuses is logged and skipped.
    pub fn remove_guests(&self, room_id: &RoomId, is_guest: impl Fn(&UserId) -> bool) -> Result<()> {
        if self.guests_may_join(room_id)? {
            return Ok(());
        }
        let joined = self.members_shared(room_id, &ruma::events::room::member::MembershipState::Join)?;
        for user in joined.iter().filter(|u| u.server_name() == self.server_name && is_guest(u)) {
            if let Err(e) = self.set_leave(room_id, user, user, None) {
                tracing::warn!(%room_id, %user, error = %e, "could not make a guest leave");
            }
        }
        Ok(())
    }

    /// Copies a profile change (`displayname` or `avatar_url`, `None` to remove it) into
    /// the member event of every room `user` is joined to, as Synapse does, so the others
    /// in those rooms see the new name. Per-room names set through the member event are
    /// replaced too, as on Synapse. A room that refuses the update is logged and skipped.
    pub fn copy_profile_to_rooms(&self, user: &UserId, field: &str, value: Option<&str>) -> Result<()> {
        for room_id in self.joined_rooms(user)? {
            let Some(current) = self.state_event(&room_id, &"m.room.member".into(), user.as_str())? else { continue };
            let Value::Object(mut content) = current.content_value() else { continue };
            if content.get("membership").and_then(Value::as_str) != Some("join")
                || content.get(field).and_then(Value::as_str) == value
            {
                continue;
            }
            match value {
                Some(v) => content.insert(field.to_owned(), json!(v)),
                None => content.remove(field),
            };
            if let Err(e) = self.member_event(&room_id, user, user, Value::Object(content)) {
                tracing::warn!(%room_id, %user, error = %e, "could not copy a profile change into a room");
            }
        }
        Ok(())
    }

    /// Asks to join a room whose join rule is `knock`.
    pub fn knock(
        &self,
        room_id: &RoomId,
        user: &UserId,
        profile: Map<String, Value>,
        reason: Option<String>,
    ) -> Result<Pdu> {
        self.known_room(room_id)?;
        self.check_not_blocked(room_id)?;
        let mut content = profile;
        content.insert("membership".into(), json!("knock"));
        if let Some(r) = reason {
            content.insert("reason".into(), json!(r));
        }
        self.member_event(room_id, user, user, Value::Object(content))
    }

    pub fn invite(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        target: &UserId,
        reason: Option<String>,
        is_direct: bool,
    ) -> Result<Pdu> {
        self.invite_with(room_id, sender, target, invite_content(reason, is_direct))
    }

    /// An invite whose member event content the caller made (`membership` is `invite`):
    /// a plain one, or one that redeems a third-party invite (`third_party_invite`).
    pub fn invite_with(&self, room_id: &RoomId, sender: &UserId, target: &UserId, content: Value) -> Result<Pdu> {
        self.known_room(room_id)?;
        self.check_not_blocked(room_id)?;
        self.member_event(room_id, sender, target, content)
    }

    /// Leave (target = sender), kick (target ≠ sender) or unban: all are `leave`.
    pub fn set_leave(&self, room_id: &RoomId, sender: &UserId, target: &UserId, reason: Option<String>) -> Result<Pdu> {
        self.known_room(room_id)?;
        let mut content = json!({"membership": "leave"});
        if let Some(r) = reason {
            content["reason"] = json!(r);
        }
        self.member_event(room_id, sender, target, content)
    }

    pub fn ban(&self, room_id: &RoomId, sender: &UserId, target: &UserId, reason: Option<String>) -> Result<Pdu> {
        self.known_room(room_id)?;
        let mut content = json!({"membership": "ban"});
        if let Some(r) = reason {
            content["reason"] = json!(r);
        }
        self.member_event(room_id, sender, target, content)
    }

    /// Forgets a room the user has left: it disappears from their sync and room lists.
    pub fn forget(&self, room_id: &RoomId, user: &UserId) -> Result<()> {
        match self.membership(room_id, user)? {
            Some(m)
                if m.membership == MembershipState::Join
                    || m.membership == MembershipState::Invite
                    || m.membership == MembershipState::Knock =>
            {
                Err(Error::matrix(http::StatusCode::BAD_REQUEST, "M_UNKNOWN", "Leave the room before forgetting it"))
            }
            Some(_) => {
                let mut batch = Batch::new();
                USER_ROOMS.delete(&mut batch, (user.as_str(), room_id.as_str()));
                self.store.write(batch)?;
                self.members.invalidate_user(user);
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Joined rooms of a user.
    pub fn joined_rooms(&self, user: &UserId) -> Result<Vec<OwnedRoomId>> {
        Ok(self.rooms_of(user, &[MembershipState::Join])?.into_iter().map(|(r, _)| r).collect())
    }

    /// Everyone who shares a room with `user`, and `user`: whom a change of their presence
    /// or device keys concerns. Sorted, without duplicates.
    pub fn users_sharing_a_room(&self, user: &UserId) -> Result<Vec<OwnedUserId>> {
        let mut users = self.members_of_joined_rooms(user)?;
        users.insert(user.to_owned());
        Ok(users.into_iter().collect())
    }

    /// Whether `a` and `b` are both joined to at least one room.
    pub fn share_a_room(&self, a: &UserId, b: &UserId) -> Result<bool> {
        for room in self.joined_rooms(a)? {
            if self.is_joined(&room, b)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The joined members of every room `user` has joined (`user` among them only if they
    /// joined one).
    pub(super) fn members_of_joined_rooms(&self, user: &UserId) -> Result<BTreeSet<OwnedUserId>> {
        let mut users = BTreeSet::new();
        for room in self.joined_rooms(user)? {
            users.extend(self.members_shared(&room, &MembershipState::Join)?.iter().cloned());
        }
        Ok(users)
    }
}
