//! Joins and leaves through another server, both ways.
//!
//! **Served** (a remote user joins a room here): `make_join` hands out the join event's
//! template, built on the room's current heads and allowed by its current state, in the
//! room's version if the user's server supports it; `send_join` takes the signed event,
//! checks it as any received PDU and appends it, and answers with the state before it and
//! the auth chain; the other servers in the room then get it from the sender. `make_leave`
//! and `send_leave` are the same for leaving (a remote user rejecting an invite from here).
//!
//! **Asked** (a local user joins a room elsewhere): `make_join` to each candidate server in
//! turn, the template completed and signed here, `send_join`, every event of the answer
//! verified and stored, and the join appended on the state the resident server sent: from
//! then on the room is here as any other, and its events arrive through `/send`.
//!
//! A join through another server runs as a task of its own, apart from the client's
//! request ([`JoinsUnderWay`]): a client that gives up waiting (a big room's state takes
//! a while) and asks again waits for the same join instead of starting a second one. The
//! answer's size is capped (`join_max_state_events`): a larger room is refused with 413
//! `M_TOO_LARGE` rather than read into memory.
//!
//! Only room versions whose federation rules all work here are offered and accepted
//! ([`crate::rooms::resolve::federates`]: 2 to 12).

use std::{collections::HashMap, sync::Arc, time::Duration};

use futures_util::{
    future::{BoxFuture, Shared},
    FutureExt,
};
use parking_lot::Mutex;

use http::StatusCode;
use ruma::{
    events::{room::member::MembershipState, StateEventType},
    signatures::hash_and_sign_event,
    CanonicalJsonObject, CanonicalJsonValue, EventId, OwnedEventId, OwnedRoomId, OwnedServerName, OwnedUserId, RoomId,
    RoomVersionId, ServerName, UserId,
};
use serde::Deserialize;
use serde_json::{value::RawValue as RawJsonValue, Map, Value};

use super::{
    pdu::{event_id_of, own_json, parse_raw},
    receive::{encode, MAX_STATE_BYTES},
    Federation,
};
use crate::{
    error::{Error, Result},
    rooms::{
        append::NewEvent,
        membership::Vouch,
        pdu::{to_canonical, Pdu},
        remote::Appended,
        resolve::{federates, StateEvents},
        ROOM_VERSIONS,
    },
    time::now_millis,
    transport::{
        client::OutboundError,
        server_client::{ServerRequest, ServerRequestError},
    },
};

/// Most servers tried for one join.
const MAX_JOIN_CANDIDATES: usize = 10;
const MAKE_TIMEOUT: Duration = Duration::from_secs(30);
const SEND_JOIN_TIMEOUT: Duration = Duration::from_secs(180);
/// Bytes of a `send_join` answer allowed per event: a member event is 0.5 to 1 KiB.
const JOIN_BYTES_PER_EVENT: usize = 1400;

/// A join through another server, as its waiters share it.
type SharedJoin = Shared<BoxFuture<'static, std::result::Result<(), Arc<Error>>>>;

/// Joins through other servers under way, by (room, user); each leaves the map when done.
#[derive(Default)]
pub struct JoinsUnderWay(Mutex<HashMap<(OwnedRoomId, OwnedUserId), SharedJoin>>);

/// A member event's content: the user's profile, and the reason when given.
pub(crate) fn with_reason(profile: Map<String, Value>, reason: Option<String>) -> Map<String, Value> {
    let mut content = profile;
    if let Some(r) = reason {
        content.insert("reason".into(), Value::String(r));
    }
    content
}

/// Room versions this server joins and serves over federation, as `ver` parameters.
pub fn federated_versions() -> Vec<RoomVersionId> {
    ROOM_VERSIONS.iter().filter(|v| federates(v)).cloned().collect()
}

/// What `send_join` answers.
pub struct JoinAnswer {
    pub state: Vec<Box<RawJsonValue>>,
    pub auth_chain: Vec<Box<RawJsonValue>>,
    pub event: Box<RawJsonValue>,
    pub servers_in_room: Vec<String>,
    /// Whether member events were left out of `state` (`omit_members`).
    pub members_omitted: bool,
}

#[derive(Deserialize)]
struct MakeAnswer {
    room_version: Option<RoomVersionId>,
    event: Box<RawJsonValue>,
}

#[derive(Deserialize)]
struct SendJoinAnswer {
    #[serde(default)]
    state: Vec<Box<RawJsonValue>>,
    #[serde(default)]
    auth_chain: Vec<Box<RawJsonValue>>,
    event: Option<Box<RawJsonValue>>,
}

impl Federation {
    /// `GET /make_join`: the template of `user`'s join (see the module doc).
    pub fn make_join(
        &self,
        origin: &ServerName,
        room: &RoomId,
        user: &UserId,
        supported: &[RoomVersionId],
    ) -> Result<(RoomVersionId, CanonicalJsonObject)> {
        let version = self.make_checks(origin, room, user)?;
        let supported_default = [RoomVersionId::V1];
        let supported = if supported.is_empty() { &supported_default[..] } else { supported };
        if !supported.contains(&version) {
            return Err(Error::matrix(
                StatusCode::BAD_REQUEST,
                "M_INCOMPATIBLE_ROOM_VERSION",
                format!("The room's version is {version}, which your server does not support"),
            )
            .with_field("room_version", Value::String(version.to_string())));
        }
        let mut content = serde_json::json!({"membership": "join"});
        let unable = |why: &str| Error::matrix(StatusCode::BAD_REQUEST, "M_UNABLE_TO_AUTHORISE_JOIN", why);
        match self.rooms.restricted_join_authoriser(room, user)? {
            Vouch::NotNeeded => {}
            Vouch::By(authoriser) => content["join_authorised_via_users_server"] = Value::String(authoriser.into()),
            Vouch::NotAllowed { all_known: true } => {
                return Err(Error::forbidden("This room is restricted: join one of the rooms it allows first"))
            }
            // Another resident, in the allowed rooms this server is not in, may know better.
            Vouch::NotAllowed { all_known: false } => {
                return Err(unable("This server is not in every room the join rule allows; try another"))
            }
            Vouch::NoLocalInviter => return Err(unable("No member of this server may invite; try another")),
        }
        let new = NewEvent::state("m.room.member", user.as_str(), content);
        Ok((version, self.rooms.template(room, user, new)?))
    }

    /// `GET /make_leave`: the template of `user`'s leave.
    pub fn make_leave(
        &self,
        origin: &ServerName,
        room: &RoomId,
        user: &UserId,
    ) -> Result<(RoomVersionId, CanonicalJsonObject)> {
        let version = self.make_checks(origin, room, user)?;
        let new = NewEvent::state("m.room.member", user.as_str(), serde_json::json!({"membership": "leave"}));
        Ok((version, self.rooms.template(room, user, new)?))
    }

    fn make_checks(&self, origin: &ServerName, room: &RoomId, user: &UserId) -> Result<RoomVersionId> {
        if user.server_name() != origin {
            return Err(Error::forbidden("The user is not of the requesting server"));
        }
        self.require_acl(room, origin)?;
        self.rooms.check_not_blocked(room)?;
        let version = self.rooms.known_room(room)?.version;
        // With every local member gone this server no longer takes part in the room: its
        // view may be stale, and its signature on a join would vouch for nothing.
        if !self.is_resident(room)? {
            return Err(Error::not_found("This server has no member in the room any more"));
        }
        if !federates(&version) {
            return Err(Error::matrix(
                StatusCode::BAD_REQUEST,
                "M_INCOMPATIBLE_ROOM_VERSION",
                format!("Room version {version} is not available over federation on this server"),
            )
            .with_field("room_version", Value::String(version.to_string())));
        }
        Ok(version)
    }

    /// `PUT /send_join` (v2): appends `user`'s join and answers with the room's state.
    ///
    /// With `omit_members` (a "partial state" join, as Synapse asks for) the state leaves
    /// out member events, but for the heroes of a room with neither name nor canonical
    /// alias, and the auth chain leaves out what the state already carries.
    pub async fn send_join(
        &self,
        origin: &ServerName,
        room: &RoomId,
        event_id: &EventId,
        raw: &RawJsonValue,
        omit_members: bool,
    ) -> Result<JoinAnswer> {
        self.rooms.check_not_blocked(room)?;
        let pdu = self.receive_membership(origin, room, event_id, raw, MembershipState::Join).await?;
        let state_map = self.rooms.state_before(&pdu.event_id)?;
        let mut state_events = self.rooms.state_events_of(&state_map)?;
        let joiner = pdu.state_key.as_deref().unwrap_or_default();
        // "Before the join": the joining server counts only if another of its users is in.
        let mut servers_in_room: Vec<String> = (self.rooms.joined_in(&state_map)?.iter())
            .filter(|u| u.as_str() != joiner)
            .map(|u| u.server_name().to_string())
            .chain([self.own.to_string()])
            .collect();
        servers_in_room.sort();
        servers_in_room.dedup();
        if omit_members {
            let heroes = self.heroes(&state_events, joiner)?;
            state_events.retain(|(kind, key), _| *kind != StateEventType::RoomMember || heroes.contains(key));
        }
        let state: Vec<OwnedEventId> = state_events.into_values().collect();
        let mut chain = self.rooms.auth_chain(state.iter().cloned().chain([pdu.event_id.clone()]))?;
        if omit_members {
            for id in &state {
                chain.remove(id);
            }
        }
        let chain: Vec<OwnedEventId> = chain.into_iter().collect();
        Ok(JoinAnswer {
            state: self.jsons(&state)?,
            auth_chain: self.jsons(&chain)?,
            event: own_json(&pdu),
            servers_in_room,
            members_omitted: omit_members,
        })
    }

    /// Who a client would name a room after, when it has neither name nor canonical alias:
    /// up to five joined or invited members other than `joiner`, as `/sync`'s summary.
    fn heroes(&self, state: &StateEvents, joiner: &str) -> Result<Vec<String>> {
        let named = |kind: StateEventType, field: &str| -> Result<bool> {
            let Some(id) = state.get(&(kind, String::new())) else { return Ok(false) };
            Ok(self
                .rooms
                .pdu(id)?
                .is_some_and(|p| p.content_value().get(field).and_then(Value::as_str).is_some_and(|v| !v.is_empty())))
        };
        if named(StateEventType::RoomName, "name")? || named(StateEventType::RoomCanonicalAlias, "alias")? {
            return Ok(Vec::new());
        }
        let mut members: Vec<(&String, &OwnedEventId)> = state
            .iter()
            .filter(|((kind, key), _)| *kind == StateEventType::RoomMember && key.as_str() != joiner)
            .map(|((_, key), id)| (key, id))
            .collect();
        members.sort();
        let mut heroes = Vec::new();
        for (user, id) in members {
            let membership = self.rooms.pdu(id)?.and_then(|p| p.membership());
            if matches!(membership, Some(MembershipState::Join | MembershipState::Invite)) {
                heroes.push(user.clone());
                if heroes.len() == 5 {
                    break;
                }
            }
        }
        Ok(heroes)
    }

    /// `PUT /send_leave` (v2).
    pub async fn send_leave(
        &self,
        origin: &ServerName,
        room: &RoomId,
        event_id: &EventId,
        raw: &RawJsonValue,
    ) -> Result<()> {
        self.receive_membership(origin, room, event_id, raw, MembershipState::Leave).await.map(|_| ())
    }

    /// A member event a remote user's server sends through this one: checked, appended,
    /// and queued for the room's other servers.
    pub(crate) async fn receive_membership(
        &self,
        origin: &ServerName,
        room: &RoomId,
        event_id: &EventId,
        raw: &RawJsonValue,
        membership: MembershipState,
    ) -> Result<Pdu> {
        self.require_acl(room, origin)?;
        let version = self.rooms.known_room(room)?.version;
        if !federates(&version) {
            return Err(Error::matrix(StatusCode::BAD_REQUEST, "M_INCOMPATIBLE_ROOM_VERSION", "Not over federation"));
        }
        let mut obj = parse_raw(raw).map_err(Error::bad_json)?;
        if membership == MembershipState::Join {
            self.sign_as_authoriser(&version, &mut obj)?;
        }
        let pdu = self.verify_pdu(&version, obj, Some(room), Some(event_id)).await.map_err(super::pdu::refusal)?;
        let member = pdu.content_value().get("membership").and_then(Value::as_str).map(MembershipState::from);
        if pdu.kind.to_string() != "m.room.member"
            || pdu.state_key.as_deref() != Some(pdu.sender.as_str())
            || member.as_ref() != Some(&membership)
        {
            return Err(Error::bad_json(format!("Not a {membership} event of its sender")));
        }
        if pdu.sender.server_name() != origin {
            return Err(Error::forbidden("The event's sender is not of the requesting server"));
        }
        let _turn = self.room_turn(room).await;
        match self.append_received(origin, &version, pdu.clone()).await {
            Ok(Appended::Timeline) | Ok(Appended::Known) => {}
            Ok(Appended::SoftFailed) => return Err(Error::forbidden("The room's current state does not allow it")),
            Err(e) => return Err(Error::forbidden(format!("Refused: {e}"))),
        }
        self.sender.queue_pdu(room, &pdu.event_id, &[origin.to_owned()])?;
        Ok(pdu)
    }

    /// A join vouched for by a local user (`join_authorised_via_users_server`, filled in by
    /// [`Federation::make_join`]) gets this server's signature, which the room's rules
    /// require of the vouching user's server. Whether that user may vouch is for the auth
    /// rules to decide when the join is appended.
    fn sign_as_authoriser(&self, version: &RoomVersionId, obj: &mut CanonicalJsonObject) -> Result<()> {
        let authoriser = match obj.get("content") {
            Some(CanonicalJsonValue::Object(c)) => match c.get("join_authorised_via_users_server") {
                Some(CanonicalJsonValue::String(u)) => u.clone(),
                _ => return Ok(()),
            },
            _ => return Ok(()),
        };
        let Ok(authoriser) = ruma::UserId::parse(&authoriser) else {
            return Err(Error::bad_json("join_authorised_via_users_server is not a user id"));
        };
        if authoriser.server_name() != self.own {
            return Ok(());
        }
        let rules = version.rules().ok_or_else(|| Error::internal("rules of a federated version"))?;
        if !rules.authorization.restricted_join_rule {
            return Ok(());
        }
        ruma::signatures::sign_event(self.own.as_str(), self.server_key.key_pair(), obj, &rules.redaction)
            .map_err(|e| Error::bad_json(format!("cannot sign the join: {e}")))
    }

    /// A local user joins a room: here, when a local user is joined to it (or federation is
    /// off), else through another server ([`Federation::join_remote`]). A guest joins only
    /// a room whose `m.room.guest_access` is `can_join` (403 otherwise); in a room elsewhere
    /// that is known only once joined, so a guest that finds it barred leaves again.
    pub async fn join(
        self: &Arc<Self>,
        room: &RoomId,
        user: &UserId,
        via: &[OwnedServerName],
        profile: Map<String, Value>,
        reason: Option<String>,
        federate: bool,
    ) -> Result<()> {
        self.rooms.check_not_blocked(room)?;
        let guest = self.users.is_guest(user)?;
        let barred = || Error::forbidden("Guests may not join this room (its guest_access is not can_join)");
        if self.is_resident(room)? || !federate {
            if guest && self.rooms.room(room)?.is_some() && !self.rooms.guests_may_join(room)? {
                return Err(barred());
            }
            self.rooms.join(room, user, profile, reason)?;
            return Ok(());
        }
        // An invite names the server to join through.
        let mut via = via.to_vec();
        if let Some(inviter) = self.inviter_server(room, user)? {
            via.insert(0, inviter);
        }
        self.join_remote(room, user, &via, with_reason(profile, reason)).await?;
        if guest && !self.rooms.guests_may_join(room)? {
            self.rooms.set_leave(room, user, user, None)?;
            return Err(barred());
        }
        Ok(())
    }

    /// Makes this server's guests leave a room that no longer lets guests join (after a
    /// change of its `m.room.guest_access`, local or received).
    pub fn remove_barred_guests(&self, room: &RoomId) -> Result<()> {
        self.rooms.remove_guests(room, |u| self.users.is_guest(u).unwrap_or(false))
    }

    /// A local user joins a room on another server, through the first of `candidates`
    /// that answers (see the module doc). Returns the room's id. While the same user's
    /// join of the same room is under way, this waits for that one.
    pub async fn join_remote(
        self: &Arc<Self>,
        room: &RoomId,
        user: &UserId,
        candidates: &[OwnedServerName],
        content: Map<String, Value>,
    ) -> Result<OwnedRoomId> {
        let key = (room.to_owned(), user.to_owned());
        let work = {
            let mut under_way = self.joins.0.lock();
            match under_way.get(&key) {
                Some(work) => {
                    tracing::info!(%room, %user, "a join asked again waits for the one under way");
                    work.clone()
                }
                None => {
                    let candidates = self.candidates(room, candidates, MAX_JOIN_CANDIDATES)?;
                    let this = self.clone();
                    let (room, user) = key.clone();
                    // The map's lock is held until the work is in it, so the task's
                    // removal always comes after.
                    let task = tokio::spawn(async move {
                        // Its writes (every event of the room's state) wait for the disk
                        // once, at the end, as a request's do.
                        let (mut done, written) = crate::stream::with_deferred_durability(this.through(
                            &candidates,
                            &room,
                            "join",
                            |server| this.join_through(server, &room, &user, &content),
                        ))
                        .await;
                        if written > 0 {
                            if let Err(e) = this.rooms.stream.wait_durable(written).await {
                                done = done.and(Err(e));
                            }
                        }
                        this.joins.0.lock().remove(&(room, user));
                        done.map_err(Arc::new)
                    });
                    let work = async move {
                        task.await.unwrap_or_else(|e| Err(Arc::new(Error::internal(format!("the join stopped: {e}")))))
                    }
                    .boxed()
                    .shared();
                    under_way.insert(key, work.clone());
                    work
                }
            }
        };
        work.await.map_err(|e| e.duplicate())?;
        Ok(room.to_owned())
    }

    /// Whether a local user is joined to the room: this server then acts in it itself.
    pub(crate) fn is_resident(&self, room: &RoomId) -> Result<bool> {
        Ok(self.rooms.room(room)?.is_some()
            && self.rooms.members_shared(room, &MembershipState::Join)?.iter().any(|u| u.server_name() == self.own))
    }

    /// The servers to go through for a room elsewhere, at most `max`: `via` (this server
    /// left out), then the server a room id names (none from version 12). 404 when none.
    pub(crate) fn candidates(
        &self,
        room: &RoomId,
        via: &[OwnedServerName],
        max: usize,
    ) -> Result<Vec<OwnedServerName>> {
        let mut candidates: Vec<OwnedServerName> = via.iter().filter(|s| **s != self.own).cloned().collect();
        if let Some(server) = room.server_name().filter(|s| *s != self.own) {
            if !candidates.iter().any(|c| c == server) {
                candidates.push(server.to_owned());
            }
        }
        if candidates.is_empty() {
            return Err(Error::not_found("No server to go through for this room (give one with `via`)"));
        }
        candidates.truncate(max);
        Ok(candidates)
    }

    /// Tries `attempt` through each server in turn until one succeeds; else the last error.
    pub(crate) async fn through<'a, F, Fut>(
        &self,
        candidates: &'a [OwnedServerName],
        room: &RoomId,
        what: &str,
        attempt: F,
    ) -> Result<()>
    where
        F: Fn(&'a ServerName) -> Fut,
        Fut: std::future::Future<Output = Result<()>>,
    {
        let mut last = Error::unavailable(format!("No server could be reached to {what}"));
        for server in candidates {
            match attempt(server).await {
                Ok(()) => return Ok(()),
                // The room is as large through any server.
                Err(e @ Error::Matrix { errcode: "M_TOO_LARGE", .. }) => return Err(e),
                Err(e) => {
                    tracing::info!(%server, %room, error = %e, "{what} through this server failed");
                    last = e;
                }
            }
        }
        Err(last)
    }

    async fn join_through(
        &self,
        server: &ServerName,
        room: &RoomId,
        user: &UserId,
        content: &Map<String, Value>,
    ) -> Result<()> {
        let mut path = format!("/_matrix/federation/v1/make_join/{}/{}?", encode(room.as_str()), encode(user.as_str()));
        path.push_str(&federated_versions().iter().map(|v| format!("ver={v}")).collect::<Vec<_>>().join("&"));
        let answer = self.ask(server, ServerRequest::get(&path).limits(MAKE_TIMEOUT, 1024 * 1024)).await?;
        let made: MakeAnswer = serde_json::from_slice(&answer)
            .map_err(|e| Error::unavailable(format!("{server} sent an invalid make_join answer: {e}")))?;
        let version = made.room_version.unwrap_or(RoomVersionId::V1);
        if !federates(&version) {
            return Err(Error::matrix(
                StatusCode::BAD_REQUEST,
                "M_INCOMPATIBLE_ROOM_VERSION",
                format!("The room's version {version} is not supported over federation here"),
            ));
        }
        let rules = version.rules().ok_or_else(|| Error::internal("rules of a federated version"))?;
        let (event, event_id) = self.complete_template(&made.event, room, user, content, &rules, "join")?;

        let path = format!("/_matrix/federation/v2/send_join/{}/{}", encode(room.as_str()), encode(event_id.as_str()));
        let body = serde_json::to_value(&event).map_err(|e| Error::internal(e.to_string()))?;
        let max_bytes = self.join_max_bytes();
        let req = ServerRequest { method: http::Method::PUT, ..ServerRequest::post(&path, &body) }
            .limits(SEND_JOIN_TIMEOUT, max_bytes);
        let invalid =
            |e: serde_json::Error| Error::unavailable(format!("{server} sent an invalid send_join answer: {e}"));
        let sent: SendJoinAnswer = match self.ask(server, req).await {
            Ok(answer) => serde_json::from_slice(&answer).map_err(invalid)?,
            // A server without v2 (older ones, sytest's): v1, whose answer is `[200, {…}]`.
            Err(e) if lacks_endpoint(&e) => {
                let path = path.replacen("/v2/send_join/", "/v1/send_join/", 1);
                let req = ServerRequest { method: http::Method::PUT, ..ServerRequest::post(&path, &body) }
                    .limits(SEND_JOIN_TIMEOUT, max_bytes);
                let answer = self.ask(server, req).await.map_err(|e| self.too_large_or(e))?;
                let (_, sent): (u16, SendJoinAnswer) = serde_json::from_slice(&answer).map_err(invalid)?;
                sent
            }
            Err(e) => return Err(self.too_large_or(e)),
        };
        if sent.state.len() + sent.auth_chain.len() > self.join_max_events {
            return Err(self.too_large());
        }
        // The resident server may have signed the join too (restricted rooms need it).
        let join_obj = match &sent.event {
            Some(raw) => parse_raw(raw).map_err(Error::unavailable)?,
            None => event,
        };
        let join = self
            .verify_pdu(&version, join_obj, Some(room), Some(&event_id))
            .await
            .map_err(|e| Error::unavailable(format!("{server} sent back a join that does not verify: {e}")))?;

        let state_ids: Vec<OwnedEventId> = sent
            .state
            .iter()
            .filter_map(|raw| parse_raw(raw).ok().and_then(|o| event_id_of(&o, &rules).ok()))
            .collect();
        let mut all = sent.auth_chain;
        all.extend(sent.state);
        self.store_outliers(&version, room, all).await;
        let mut state = StateEvents::new();
        for id in &state_ids {
            // Events the auth rules refused are no part of the state.
            if self.rooms.event_meta(id)?.is_some_and(|m| m.rejected) {
                continue;
            }
            let Some(p) = self.rooms.pdu_shared(id)? else { continue };
            if let Some(key) = &p.state_key {
                state.insert((StateEventType::from(p.kind.to_string()), key.clone()), p.event_id.clone());
            }
        }
        if !state.contains_key(&(StateEventType::RoomCreate, String::new())) {
            return Err(Error::unavailable(format!("{server} sent a room state without its create event")));
        }
        let _turn = self.room_turn(room).await;
        self.rooms
            .append_joined_room(&version, join, state)
            .map_err(|e| Error::forbidden(format!("The join does not pass the room's rules: {e}")))?;
        Ok(())
    }

    /// A template from `make_join`, `make_leave` or `make_knock` checked and completed
    /// into this server's signed `membership` event: (the event, its id).
    pub(crate) fn complete_template(
        &self,
        template: &RawJsonValue,
        room: &RoomId,
        user: &UserId,
        content: &Map<String, Value>,
        rules: &ruma::room_version_rules::RoomVersionRules,
        membership: &str,
    ) -> Result<(CanonicalJsonObject, OwnedEventId)> {
        let mut event = parse_raw(template).map_err(Error::unavailable)?;
        let text = |k: &str| match event.get(k) {
            Some(CanonicalJsonValue::String(s)) => Some(s.clone()),
            _ => None,
        };
        if text("type").as_deref() != Some("m.room.member")
            || text("sender").as_deref() != Some(user.as_str())
            || text("state_key").as_deref() != Some(user.as_str())
            || text("room_id").as_deref() != Some(room.as_str())
        {
            return Err(Error::unavailable(format!("The template is not this user's {membership} of this room")));
        }
        let mut full = content.clone();
        full.insert("membership".into(), Value::String(membership.into()));
        // A restricted room's resident names who vouches for the join; it signs the join
        // for that user in `send_join`.
        if membership == "join" {
            if let Some(CanonicalJsonValue::Object(given)) = event.get("content") {
                if let Some(CanonicalJsonValue::String(authoriser)) = given.get("join_authorised_via_users_server") {
                    full.insert("join_authorised_via_users_server".into(), Value::String(authoriser.clone()));
                }
            }
        }
        event.insert("content".into(), to_canonical(Value::Object(full))?);
        event.insert("origin_server_ts".into(), to_canonical(Value::from(now_millis()))?);
        if rules.event_format.require_event_id {
            // Versions 1 and 2 name events `$id:server`: the event is this server's, so it
            // gets an id of this server, whatever the template carried (the resident's,
            // whose signature it will never have).
            let local: String = crate::random::alphanumeric(18);
            event.insert("event_id".into(), CanonicalJsonValue::String(format!("${local}:{}", self.own)));
            if event.contains_key("origin") {
                event.insert("origin".into(), CanonicalJsonValue::String(self.own.to_string()));
            }
        } else {
            event.remove("event_id");
        }
        event.remove("hashes");
        event.remove("signatures");
        event.remove("unsigned");
        hash_and_sign_event(self.own.as_str(), self.server_key.key_pair(), &mut event, &rules.redaction)
            .map_err(|e| Error::internal(format!("cannot sign the {membership}: {e}")))?;
        let id = event_id_of(&event, rules).map_err(Error::internal)?;
        Ok((event, id))
    }

    /// The largest `send_join` answer read: room for `join_max_state_events` events.
    fn join_max_bytes(&self) -> usize {
        MAX_STATE_BYTES.max(self.join_max_events.saturating_mul(JOIN_BYTES_PER_EVENT))
    }

    /// The refusal of a room too large to join here.
    fn too_large(&self) -> Error {
        Error::matrix(
            StatusCode::PAYLOAD_TOO_LARGE,
            "M_TOO_LARGE",
            format!(
                "This room is too large for this server: its state has more than {} events \
                 (join_max_state_events)",
                self.join_max_events
            ),
        )
    }

    /// `e`, unless it says the answer was larger than allowed: then [`Federation::too_large`].
    fn too_large_or(&self, e: Error) -> Error {
        match e {
            Error::Matrix { errcode: "M_TOO_LARGE", .. } => self.too_large(),
            e => e,
        }
    }

    /// Sends a request and returns the body of a success; any other answer is an error
    /// that says which server said what.
    pub(crate) async fn ask(&self, server: &ServerName, req: ServerRequest<'_>) -> Result<Vec<u8>> {
        let path = req.path_and_query.to_owned();
        let answer = self.servers.request(server, req).await.map_err(|e| match e {
            ServerRequestError::Outbound { error: OutboundError::TooLarge(n), .. } => Error::matrix(
                StatusCode::PAYLOAD_TOO_LARGE,
                "M_TOO_LARGE",
                format!("{server} answered more than {n} bytes"),
            ),
            e => Error::unavailable(format!("Cannot reach {server}: {e}")),
        })?;
        if answer.status.is_success() {
            return Ok(answer.body.to_vec());
        }
        let body: Value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
        let errcode = body.get("errcode").and_then(Value::as_str).unwrap_or("M_UNKNOWN");
        let message = body.get("error").and_then(Value::as_str).unwrap_or("");
        let text = format!(
            "{server} answered {} ({errcode}: {message}) to {}",
            answer.status,
            path.split('?').next().unwrap_or("")
        );
        // The other server's refusals reach the client as it gave them; its own failures
        // (5xx), and answers about this server's credentials or rate, are a bad gateway.
        let status = answer.status;
        if status.is_client_error() && status != StatusCode::UNAUTHORIZED && status != StatusCode::TOO_MANY_REQUESTS {
            let mut e = Error::passed_through(status, errcode, text);
            if let Some(version) = body.get("room_version").and_then(Value::as_str).filter(|v| v.len() <= 64) {
                e = e.with_field("room_version", Value::String(version.to_owned()));
            }
            return Err(e);
        }
        Err(Error::unavailable(text))
    }
}

/// Whether another server's refusal says it lacks the endpoint asked (404, or 400/405
/// `M_UNRECOGNIZED`), so that an older version of it is worth trying.
pub(crate) fn lacks_endpoint(e: &Error) -> bool {
    match e.status() {
        StatusCode::NOT_FOUND => true,
        StatusCode::BAD_REQUEST | StatusCode::METHOD_NOT_ALLOWED => e.remote_errcode() == Some("M_UNRECOGNIZED"),
        _ => false,
    }
}
