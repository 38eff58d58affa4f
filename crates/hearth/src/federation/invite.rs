//! Invites across servers.
//!
//! - **Out** (a local user invites a remote one): the invite is built and authorized here
//!   but not appended; the invitee's server signs it (`invite` v2, with the room's
//!   stripped state); the event that comes back, signed by both, is appended as any
//!   received event, and the sender sends it to the room's other servers.
//! - **In** (a remote user invites a local one): the event is checked (signed by the
//!   inviting server, an invite of an existing local user, in a room version Hearth
//!   federates), signed here, and kept with the stripped state it came with: the user sees
//!   the invite in `/sync`. Accepting is a join through the inviting server; rejecting is a
//!   leave sent through it (`make_leave` / `send_leave`).

use std::time::Duration;

use http::StatusCode;
use ruma::{
    events::room::member::MembershipState, CanonicalJsonValue, OwnedServerName, RoomId, RoomVersionId, ServerName,
    UserId,
};
use serde::Deserialize;
use serde_json::{value::RawValue as RawJsonValue, Value};

use super::{
    pdu::{event_id_of, parse_raw},
    receive::encode,
    Federation,
};
use crate::{
    error::{Error, Result},
    rooms::{append::NewEvent, commit::StateBefore, remote::Appended, resolve::federates},
    transport::server_client::ServerRequest,
};

const INVITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Most stripped state events kept with an invite.
const MAX_INVITE_STATE: usize = 64;

impl Federation {
    /// A local user invites `target`: here for a local user, else through their server.
    pub async fn invite(
        &self,
        room: &RoomId,
        sender: &UserId,
        target: &UserId,
        reason: Option<String>,
        is_direct: bool,
        federate: bool,
    ) -> Result<()> {
        let content = crate::rooms::membership::invite_content(reason, is_direct);
        self.invite_with(room, sender, target, content, federate).await
    }

    /// As [`Federation::invite`], with the member event's content made by the caller (a
    /// third-party invite's redemption carries `third_party_invite`).
    pub async fn invite_with(
        &self,
        room: &RoomId,
        sender: &UserId,
        target: &UserId,
        content: Value,
        federate: bool,
    ) -> Result<()> {
        self.rooms.check_not_blocked(room)?;
        if target.server_name() == self.own || !federate {
            self.rooms.invite_with(room, sender, target, content)?;
            return Ok(());
        }
        let version = self.rooms.known_room(room)?.version;
        if !federates(&version) {
            return Err(Error::matrix(
                StatusCode::BAD_REQUEST,
                "M_UNSUPPORTED_ROOM_VERSION",
                format!("Rooms of version {version} cannot have members on other servers"),
            ));
        }
        let (pdu, snapshot) =
            self.rooms.prepare_local(room, sender, NewEvent::state("m.room.member", target.as_str(), content))?;
        let mut stripped = self.room_preview(room)?;
        // The inviter's own member event too, as Synapse sends it: clients show who invited.
        if let Some(inviter) =
            self.rooms.state_event(room, &ruma::events::StateEventType::RoomMember, sender.as_str())?
        {
            stripped.push(super::pdu::own_json(&inviter));
        }
        let body = serde_json::json!({
            "room_version": version,
            "event": pdu.json,
            "invite_room_state": stripped,
        });
        let path = format!("/_matrix/federation/v2/invite/{}/{}", encode(room.as_str()), encode(pdu.event_id.as_str()));
        let req = ServerRequest { method: http::Method::PUT, ..ServerRequest::post(&path, &body) }
            .limits(INVITE_TIMEOUT, 1024 * 1024);
        #[derive(Deserialize)]
        struct Answer {
            event: Box<RawJsonValue>,
        }
        let invalid = |e: serde_json::Error| {
            Error::unavailable(format!("{} sent an invalid invite answer: {e}", target.server_name()))
        };
        let answer: Answer = match self.ask(target.server_name(), req).await {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(invalid)?,
            // A server without v2 can still take an invite to a room of version 1 or 2 (the
            // only ones v1 carries): the event alone, the room's preview in its `unsigned`,
            // and the answer `[200, {"event": …}]`.
            Err(e) if super::join::lacks_endpoint(&e) && matches!(version, RoomVersionId::V1 | RoomVersionId::V2) => {
                let mut event = serde_json::to_value(&pdu.json).map_err(|e| Error::internal(e.to_string()))?;
                event["unsigned"] = serde_json::json!({"invite_room_state": body["invite_room_state"]});
                let path = path.replacen("/v2/invite/", "/v1/invite/", 1);
                let req = ServerRequest { method: http::Method::PUT, ..ServerRequest::post(&path, &event) }
                    .limits(INVITE_TIMEOUT, 1024 * 1024);
                let (_, answer): (u16, Answer) =
                    serde_json::from_slice(&self.ask(target.server_name(), req).await?).map_err(invalid)?;
                answer
            }
            Err(e) => return Err(e),
        };
        // Not canonical JSON (a float, an integer out of range): 400 M_BAD_JSON, as Synapse.
        let obj = parse_raw(&answer.event)
            .map_err(|e| Error::bad_json(format!("{} sent back an invalid invite: {e}", target.server_name())))?;
        let signed = self
            .verify_pdu(&version, obj, Some(room), Some(&pdu.event_id))
            .await
            .map_err(|e| Error::unavailable(format!("the invite came back altered: {e}")))?;
        self.verify_signature_of(target.server_name(), &version, &signed)
            .await
            .map_err(|e| Error::unavailable(format!("{} did not sign the invite: {e}", target.server_name())))?;
        let _turn = self.room_turn(room).await;
        match self.rooms.append_remote(signed, StateBefore::Snapshot(snapshot)) {
            Ok(Appended::Timeline) | Ok(Appended::Known) => Ok(()),
            Ok(Appended::SoftFailed) => Err(Error::forbidden("The room changed: the invite is no longer allowed")),
            Err(e) => Err(Error::forbidden(format!("The invite is not allowed: {e}"))),
        }
    }

    /// Verifies `server`'s signature of an event (over its redacted form, as events are
    /// signed), with that server's keys valid at the event's time.
    async fn verify_signature_of(
        &self,
        server: &ServerName,
        version: &RoomVersionId,
        pdu: &crate::rooms::pdu::Pdu,
    ) -> std::result::Result<(), String> {
        let rules = version.rules().ok_or("unsupported room version")?;
        let key_ids: Vec<String> = match pdu.json.get("signatures") {
            Some(CanonicalJsonValue::Object(all)) => match all.get(server.as_str()) {
                Some(CanonicalJsonValue::Object(by_key)) => by_key.keys().take(8).cloned().collect(),
                _ => Vec::new(),
            },
            _ => Vec::new(),
        };
        if key_ids.is_empty() {
            return Err("no signature".into());
        }
        let ts = u64::from(pdu.origin_server_ts.0);
        let mut keys = self.keys.keys_for(server, &key_ids, ts).await.map_err(|e| e.to_string())?;
        if keys.get(server.as_str()).is_none_or(|k| k.is_empty()) {
            return Err("none of its keys is known".into());
        }
        // Every signature on the object is checked: this server's own too.
        let own = vec![self.server_key.key_id()];
        keys.extend(self.keys.keys_for(&self.own, &own, ts).await.map_err(|e| e.to_string())?);
        let redacted =
            ruma::canonical_json::redact(pdu.json.clone(), &rules.redaction, None).map_err(|e| e.to_string())?;
        ruma::signatures::verify_json(&keys, &redacted).map_err(|e| e.to_string())
    }

    /// `PUT /invite` (v2): signs and keeps an invite of a local user (see the module doc).
    pub async fn receive_invite(
        &self,
        origin: &ServerName,
        room: &RoomId,
        event_id: &ruma::EventId,
        version: &RoomVersionId,
        raw: &RawJsonValue,
        stripped: Vec<Value>,
    ) -> Result<Box<RawJsonValue>> {
        self.rooms.check_not_blocked(room)?;
        if !federates(version) {
            return Err(Error::matrix(
                StatusCode::BAD_REQUEST,
                "M_INCOMPATIBLE_ROOM_VERSION",
                format!("Room version {version} is not available over federation on this server"),
            )
            .with_field("room_version", Value::String(version.to_string())));
        }
        let rules = version.rules().ok_or_else(|| Error::internal("rules of a federated version"))?;
        let obj = parse_raw(raw).map_err(Error::bad_json)?;
        if event_id_of(&obj, &rules).map_err(Error::bad_json)? != event_id {
            return Err(Error::bad_json("The event id does not match the event"));
        }
        // An invite of a room this server is in passes through `/send` as well; either way
        // the invite is checked here for what it claims.
        let pdu = self.verify_pdu(version, obj, Some(room), Some(event_id)).await.map_err(super::pdu::refusal)?;
        let member = pdu.content_value().get("membership").and_then(Value::as_str).map(MembershipState::from);
        let target = pdu.state_key.as_deref().and_then(|k| UserId::parse(k).ok());
        let Some(target) = target.filter(|_| pdu.kind.to_string() == "m.room.member") else {
            return Err(Error::bad_json("Not a member event"));
        };
        if member != Some(MembershipState::Invite) {
            return Err(Error::bad_json("Not an invite"));
        }
        if pdu.sender.server_name() != origin {
            return Err(Error::forbidden("The inviter is not of the requesting server"));
        }
        if self.rooms.room(room)?.is_some() && !self.acl_allows(room, origin)? {
            return Err(Error::forbidden("The room's server ACL denies the inviting server"));
        }
        // Synapse takes invites for users it does not have; this server does not keep
        // rows for whatever names another server makes up.
        if target.server_name() != self.own || !self.users.is_active(&target)? {
            return Err(Error::not_found("No such user on this server"));
        }
        let mut event = pdu.json.clone();
        ruma::signatures::sign_event(self.own.as_str(), self.server_key.key_pair(), &mut event, &rules.redaction)
            .map_err(|e| Error::internal(format!("cannot sign the invite: {e}")))?;
        let invite = crate::rooms::pdu::Pdu::from_json(pdu.event_id.clone(), event.clone(), Some(room))?;
        let stripped: Vec<Value> = stripped.into_iter().take(MAX_INVITE_STATE).collect();
        let in_room_here = self.rooms.room(room)?.is_some()
            && self.rooms.members_shared(room, &MembershipState::Join)?.iter().any(|u| u.server_name() == self.own);
        if !in_room_here {
            self.rooms.append_remote_invite(invite, stripped)?;
        }
        serde_json::value::to_raw_value(&event).map_err(|e| Error::internal(e.to_string()))
    }

    /// A local user rejects an invite to a room on another server: a leave through the
    /// inviting server. When that server refuses or cannot be reached, the invite is
    /// rejected here alone (as Synapse does), so that a dead server cannot leave an invite
    /// stuck in the user's client forever; the inviting server then still thinks it open.
    pub async fn reject_remote_invite(&self, room: &RoomId, user: &UserId, inviter_server: &ServerName) -> Result<()> {
        if let Err(e) = self.reject_through(room, user, inviter_server).await {
            tracing::info!(%room, %user, server = %inviter_server, error = %e, "invite rejected here alone");
            return self.reject_here_alone(room, user);
        }
        Ok(())
    }

    /// The local leave that ends an invite without the inviting server: signed by this
    /// server, after the invite, never sent anywhere.
    fn reject_here_alone(&self, room: &RoomId, user: &UserId) -> Result<()> {
        let Some(rec) = self.rooms.membership(room, user)? else { return Ok(()) };
        let Some(invite) = self.rooms.pdu(&rec.event_id)? else { return Ok(()) };
        // The invite's id tells the event format: `$id:server` for versions 1 and 2.
        let (version, v1_id) = if invite.event_id.as_str().contains(':') {
            let local: String = crate::random::alphanumeric(18);
            (RoomVersionId::V1, Some(format!("${local}:{}", self.own)))
        } else {
            (RoomVersionId::V10, None)
        };
        let rules = version.rules().ok_or_else(|| Error::internal("rules of a known version"))?;
        let depth =
            invite.json.get("depth").cloned().unwrap_or(ruma::CanonicalJsonValue::Integer(ruma::Int::from(0u32)));
        let mut event = serde_json::json!({
            "type": "m.room.member",
            "room_id": room,
            "sender": user,
            "state_key": user,
            "content": {"membership": "leave"},
            "origin_server_ts": crate::time::now_millis(),
            "depth": depth,
            "prev_events": [invite.event_id],
            "auth_events": [invite.event_id],
        });
        if let Some(id) = &v1_id {
            event["event_id"] = Value::String(id.clone());
            event["prev_events"] = serde_json::json!([[invite.event_id, {}]]);
            event["auth_events"] = serde_json::json!([[invite.event_id, {}]]);
        }
        let mut event: ruma::CanonicalJsonObject =
            serde_json::from_value(event).map_err(|e| Error::internal(e.to_string()))?;
        ruma::signatures::hash_and_sign_event(
            self.own.as_str(),
            self.server_key.key_pair(),
            &mut event,
            &rules.redaction,
        )
        .map_err(|e| Error::internal(format!("cannot sign the rejection: {e}")))?;
        let event_id = event_id_of(&event, &rules).map_err(Error::internal)?;
        let leave = crate::rooms::pdu::Pdu::from_json(event_id, event, Some(room))?;
        self.rooms.append_remote_leave(leave)
    }

    async fn reject_through(&self, room: &RoomId, user: &UserId, inviter_server: &ServerName) -> Result<()> {
        let path = format!("/_matrix/federation/v1/make_leave/{}/{}", encode(room.as_str()), encode(user.as_str()));
        let made = self.ask(inviter_server, ServerRequest::get(&path).limits(INVITE_TIMEOUT, 1024 * 1024)).await?;
        #[derive(Deserialize)]
        struct Made {
            room_version: Option<RoomVersionId>,
            event: Box<RawJsonValue>,
        }
        let made: Made = serde_json::from_slice(&made)
            .map_err(|e| Error::unavailable(format!("{inviter_server} sent an invalid make_leave answer: {e}")))?;
        let version = made.room_version.unwrap_or(RoomVersionId::V1);
        if !federates(&version) {
            return Err(Error::matrix(StatusCode::BAD_REQUEST, "M_INCOMPATIBLE_ROOM_VERSION", "Not over federation"));
        }
        let rules = version.rules().ok_or_else(|| Error::internal("rules of a federated version"))?;
        let (event, event_id) =
            self.complete_template(&made.event, room, user, &serde_json::Map::new(), &rules, "leave")?;
        let path = format!("/_matrix/federation/v2/send_leave/{}/{}", encode(room.as_str()), encode(event_id.as_str()));
        let body = serde_json::to_value(&event).map_err(|e| Error::internal(e.to_string()))?;
        let req = ServerRequest { method: http::Method::PUT, ..ServerRequest::post(&path, &body) }
            .limits(INVITE_TIMEOUT, 1024 * 1024);
        self.ask(inviter_server, req).await?;
        let leave = crate::rooms::pdu::Pdu::from_json(event_id, event, Some(room))?;
        self.rooms.append_remote_leave(leave)
    }

    /// The server of whoever invited `user` to `room`, when that invite is the user's
    /// membership.
    pub fn inviter_server(&self, room: &RoomId, user: &UserId) -> Result<Option<OwnedServerName>> {
        let Some(rec) = self.rooms.membership(room, user)? else { return Ok(None) };
        if rec.membership != MembershipState::Invite {
            return Ok(None);
        }
        Ok(self.rooms.pdu(&rec.event_id)?.map(|p| p.sender.server_name().to_owned()))
    }
}
