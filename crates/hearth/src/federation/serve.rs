//! What other servers read of a room: one event, the state before an event (whole or as
//! ids), an event's auth chain, the events between two points (`get_missing_events`) and
//! history (`backfill`). Only a server with a member in the room (joined or invited) whom
//! the room's server ACL admits may read; a soft-failed event is never served.
//!
//! "The state at an event" here is the state *before* it, as Synapse serves it: a server
//! that lacks a prev event asks for the state at it and applies the event itself.
//!
//! History visibility applies to servers as to their users: an event the requesting
//! server may not see (`joined` history while none of its users was joined, `invited`
//! while none was invited or joined) is served redacted, so its graph stays whole
//! without its content. A missing `m.room.history_visibility` means `shared`.

use std::collections::{BTreeSet, HashSet, VecDeque};

use ruma::{EventId, OwnedEventId, RoomId, ServerName};
use serde_json::value::RawValue as RawJsonValue;

use super::{pdu::own_json, Federation};
use crate::{
    error::{Error, Result},
    rooms::pdu::Pdu,
};

/// PDUs as sent over federation.
pub type Jsons = Vec<Box<RawJsonValue>>;

/// Most events `get_missing_events` and `backfill` return at once.
pub const MAX_EVENTS_PER_ANSWER: usize = 100;

impl Federation {
    /// A held event of a room `origin` may read, never a soft-failed one.
    fn served_event(&self, origin: &ServerName, event_id: &EventId) -> Result<Pdu> {
        let meta = self.rooms.event_meta(event_id)?.ok_or_else(|| Error::not_found("Unknown event"))?;
        if meta.soft_failed {
            return Err(Error::not_found("Unknown event"));
        }
        self.require_member_server(&meta.room_id, origin)?;
        self.rooms.pdu(event_id)?.ok_or_else(|| Error::not_found("Unknown event"))
    }

    /// `GET /event/{eventId}`
    pub fn event(&self, origin: &ServerName, event_id: &EventId) -> Result<Box<RawJsonValue>> {
        let pdu = self.served_event(origin, event_id)?;
        self.json_for(origin, &pdu)
    }

    /// What `origin` is sent of an event: the event, or its redacted form when the room's
    /// history visibility hides it from every user of `origin` (see the module doc).
    fn json_for(&self, origin: &ServerName, pdu: &Pdu) -> Result<Box<RawJsonValue>> {
        // An erased user's events go to other servers redacted, whoever asks (as Synapse):
        // a server cannot say which of its users were in the room when they were sent.
        if !self.rooms.is_erased(&pdu.sender) && self.visible_to_server(origin, pdu)? {
            return Ok(own_json(pdu));
        }
        let version = self.rooms.known_room(&pdu.room_id)?.version;
        let rules = version.rules().ok_or_else(|| Error::internal("rules of a known room version"))?;
        let redacted = ruma::canonical_json::redact(pdu.json.clone(), &rules.redaction, None)
            .map_err(|e| Error::internal(e.to_string()))?;
        serde_json::value::to_raw_value(&redacted).map_err(|e| Error::internal(e.to_string()))
    }

    /// Whether some user of `origin` may see `pdu` (see the module doc).
    fn visible_to_server(&self, origin: &ServerName, pdu: &Pdu) -> Result<bool> {
        use ruma::events::StateEventType;
        if pdu.kind.to_string() == "m.room.member"
            && pdu
                .state_key
                .as_deref()
                .and_then(|k| ruma::UserId::parse(k).ok())
                .is_some_and(|u| u.server_name() == origin)
        {
            return Ok(true);
        }
        let state = self.rooms.state_before(&pdu.event_id)?;
        let visibility = self
            .rooms
            .state_event_shared(&state, &StateEventType::RoomHistoryVisibility, "")?
            .and_then(|p| {
                p.content_value().get("history_visibility").and_then(serde_json::Value::as_str).map(str::to_owned)
            })
            .unwrap_or_else(|| "shared".to_owned());
        let allowed: &[&str] = match visibility.as_str() {
            "world_readable" | "shared" => return Ok(true),
            "invited" => &["invite", "join"],
            _ => &["join"],
        };
        for ((ty, key), id) in self.rooms.state_events_of(&state)? {
            if ty != StateEventType::RoomMember || ruma::UserId::parse(&key).map_or(true, |u| u.server_name() != origin)
            {
                continue;
            }
            let Some(member) = self.rooms.pdu_shared(&id)? else { continue };
            let membership =
                member.content_value().get("membership").and_then(serde_json::Value::as_str).map(str::to_owned);
            if membership.is_some_and(|m| allowed.contains(&m.as_str())) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The state before an event of `room` (ids), for `state` and `state_ids`.
    fn state_ids_before(&self, origin: &ServerName, room: &RoomId, event_id: &EventId) -> Result<Vec<OwnedEventId>> {
        // An event of another room is unknown here, whether or not the asker is in that room.
        if self.rooms.event_meta(event_id)?.is_none_or(|m| m.room_id != room) {
            return Err(Error::not_found("Unknown event in this room"));
        }
        self.served_event(origin, event_id)?;
        if !self.rooms.in_graph(event_id)? {
            return Err(Error::not_found("This server does not hold the state at that event"));
        }
        let map = self.rooms.state_before(event_id)?;
        Ok(self.rooms.state_events_of(&map)?.into_values().collect())
    }

    /// `GET /state_ids/{roomId}`: (state ids, auth chain ids).
    pub fn state_ids(
        &self,
        origin: &ServerName,
        room: &RoomId,
        event_id: &EventId,
    ) -> Result<(Vec<OwnedEventId>, Vec<OwnedEventId>)> {
        let state = self.state_ids_before(origin, room, event_id)?;
        let chain = self.rooms.auth_chain(state.iter().cloned())?;
        Ok((state, chain.into_iter().collect()))
    }

    /// `GET /state/{roomId}`: (state events, auth chain events).
    pub fn state(&self, origin: &ServerName, room: &RoomId, event_id: &EventId) -> Result<(Jsons, Jsons)> {
        let (state, chain) = self.state_ids(origin, room, event_id)?;
        Ok((self.jsons(&state)?, self.jsons(&chain)?))
    }

    /// The PDUs of `ids`, as sent: oldest first (by depth, then id), so that a receiver
    /// meets each event's auth events before it, and the answer is the same every time
    /// (sytest's server, for one, takes the last power levels of an auth chain it reads).
    pub(crate) fn jsons(&self, ids: &[OwnedEventId]) -> Result<Vec<Box<RawJsonValue>>> {
        let mut pdus: Vec<_> = self.rooms.pdus_shared(ids)?.into_iter().flatten().collect();
        pdus.sort_by(|a, b| (a.depth, &a.event_id).cmp(&(b.depth, &b.event_id)));
        Ok(pdus.iter().map(|pdu| own_json(pdu)).collect())
    }

    /// `GET /event_auth/{roomId}/{eventId}`: the event's full auth chain.
    pub fn event_auth(&self, origin: &ServerName, room: &RoomId, event_id: &EventId) -> Result<Vec<Box<RawJsonValue>>> {
        let pdu = self.served_event(origin, event_id)?;
        if pdu.room_id != room {
            return Err(Error::not_found("Unknown event in this room"));
        }
        let chain: Vec<OwnedEventId> = self.rooms.auth_chain([pdu.event_id.clone()])?.into_iter().collect();
        self.jsons(&chain)
    }

    /// `POST /get_missing_events/{roomId}`: events reachable backwards from `latest`
    /// through prev events, not reaching into `earliest`, at or above `min_depth`, oldest
    /// first, at most `limit`.
    pub fn missing_events(
        &self,
        origin: &ServerName,
        room: &RoomId,
        earliest: &[OwnedEventId],
        latest: &[OwnedEventId],
        limit: usize,
        min_depth: u64,
    ) -> Result<Vec<Box<RawJsonValue>>> {
        self.require_member_server(room, origin)?;
        let limit = limit.min(MAX_EVENTS_PER_ANSWER);
        let stop: HashSet<&EventId> = earliest.iter().map(|e| &**e).collect();
        let mut seen: HashSet<OwnedEventId> = latest.iter().cloned().collect();
        let mut todo: VecDeque<OwnedEventId> = VecDeque::new();
        for id in latest.iter().take(MAX_EVENTS_PER_ANSWER) {
            if let Some(p) = self.rooms.pdu_shared(id)? {
                if p.room_id == room {
                    todo.extend(p.prev_events.iter().cloned());
                }
            }
        }
        let mut found: Vec<std::sync::Arc<Pdu>> = Vec::new();
        while let Some(id) = todo.pop_front() {
            if found.len() >= limit {
                break;
            }
            if stop.contains(&*id) || !seen.insert(id.clone()) {
                continue;
            }
            let Some(meta) = self.rooms.event_meta(&id)? else { continue };
            if meta.outlier || meta.soft_failed || meta.room_id != room {
                continue;
            }
            let Some(p) = self.rooms.pdu_shared(&id)? else { continue };
            if p.depth < min_depth {
                continue;
            }
            todo.extend(p.prev_events.iter().cloned());
            found.push(p);
        }
        found.sort_by_key(|p| p.depth);
        found.iter().map(|p| self.json_for(origin, p)).collect()
    }

    /// `GET /backfill/{roomId}`: up to `limit` events from `from` backwards through prev
    /// events (the `from` events included), newest first.
    pub fn backfill(
        &self,
        origin: &ServerName,
        room: &RoomId,
        from: &[OwnedEventId],
        limit: usize,
    ) -> Result<Vec<Box<RawJsonValue>>> {
        self.require_member_server(room, origin)?;
        let limit = limit.min(MAX_EVENTS_PER_ANSWER);
        let mut seen: BTreeSet<OwnedEventId> = BTreeSet::new();
        let mut todo: VecDeque<OwnedEventId> = from.iter().take(MAX_EVENTS_PER_ANSWER).cloned().collect();
        let mut found: Vec<std::sync::Arc<Pdu>> = Vec::new();
        while let Some(id) = todo.pop_front() {
            if found.len() >= limit {
                break;
            }
            if !seen.insert(id.clone()) {
                continue;
            }
            let Some(meta) = self.rooms.event_meta(&id)? else { continue };
            if meta.outlier || meta.soft_failed || meta.room_id != room {
                continue;
            }
            let Some(p) = self.rooms.pdu_shared(&id)? else { continue };
            todo.extend(p.prev_events.iter().cloned());
            found.push(p);
        }
        found.sort_by_key(|p| std::cmp::Reverse(p.depth));
        found.iter().map(|p| self.json_for(origin, p)).collect()
    }
}
