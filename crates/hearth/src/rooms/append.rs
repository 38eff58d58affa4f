//! "Build and append" for local events: a local user's intent becomes a signed PDU
//! ([`super::build`]), is checked against the room's authorization rules
//! ([`super::authorize`]), and is written with every index in one batch
//! ([`super::commit`], the same commit remote events will use). A refusal by the auth
//! rules is 403 `M_FORBIDDEN` with the rule that failed.

use ruma::{OwnedRoomId, RoomId, RoomVersionId, UserId};
use serde_json::{Map, Value};

pub use super::build::{
    NewEvent, TxnRef, MAX_CONTENT_DEPTH, MAX_EVENT_TYPE_BYTES, MAX_PREV_EVENTS, MAX_STATE_KEY_BYTES,
};
use super::{
    build::{check_limits, rules_for},
    commit::{Append, Placement, StateBefore},
    pdu::Pdu,
    RoomHeads, RoomRecord, Rooms,
};
use crate::{
    error::{Error, Result},
    time::now_millis,
};

impl Rooms {
    /// Builds, authorises and appends a local event to an existing room.
    pub fn append_local(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        new: NewEvent,
        txn: Option<TxnRef<'_>>,
    ) -> Result<Pdu> {
        check_limits(&new)?;
        let record = self.known_room(room_id)?;
        let mut counters = self.append_lock.lock();
        if let Some(t) = txn {
            if let Some(existing) = self.transaction(sender, t.device_id, room_id, &new.kind, t.txn_id)? {
                drop(counters);
                // The first request may still be waiting for its write to be durable.
                self.stream.require_durable(self.stream.written())?;
                return self.pdu(&existing)?.ok_or_else(|| Error::internal("transaction points at a missing event"));
            }
        }
        if let Some(state_key) = &new.state_key {
            // The same state again from the same sender makes no new event (as on
            // Synapse): a client retrying a state change, or joining twice.
            let kind = ruma::events::StateEventType::from(new.kind.to_string());
            if let Some(current) = self.state_event(room_id, &kind, state_key)? {
                let same_content =
                    serde_json::from_str::<Map<String, Value>>(current.content.get()).is_ok_and(|c| c == new.content);
                if current.sender == sender && same_content {
                    return Ok(current);
                }
            }
        }
        let heads = self.heads(room_id)?;
        let built = self.build(&record.version, Some(room_id), &heads, sender, &new)?;
        self.authorize_local(&built)?;
        let append = Append {
            pdu: built.pdu,
            state_before: StateBefore::Snapshot(heads.snapshot),
            placement: Placement::Timeline,
            txn,
            new_room: None,
            resolved_current: None,
        };
        let written = self.commit(&mut counters, append)?;
        drop(counters);
        self.finish(written)
    }

    /// A fresh room id of this server, for room versions whose ids are chosen (before 12).
    pub fn new_room_id(&self) -> Result<OwnedRoomId> {
        OwnedRoomId::try_from(format!("!{}:{}", crate::random::alphanumeric(18), self.server_name))
            .map_err(|e| Error::internal(e.to_string()))
    }

    /// Builds and appends the `m.room.create` event of a new room; returns it (its
    /// `room_id` is the new room's id). `room_id` is the id to use for versions whose ids
    /// are chosen (a fresh one when `None`); from version 12 the create event names it.
    pub fn append_create(
        &self,
        version: &RoomVersionId,
        sender: &UserId,
        content: Map<String, Value>,
        room_id: Option<OwnedRoomId>,
    ) -> Result<Pdu> {
        let rules = rules_for(version)?;
        let room_id = match (rules.event_format.require_room_create_room_id, room_id) {
            (true, Some(id)) => Some(id),
            (true, None) => Some(self.new_room_id()?),
            (false, _) => None,
        };
        let new = NewEvent::state("m.room.create", "", Value::Object(content));
        check_limits(&new)?;
        let mut counters = self.append_lock.lock();
        // From version 12 the room id is the create event's hash: the same user creating
        // the same room within one millisecond (a client creating several at once) would
        // get the same id, and the two rooms would become one. A later timestamp makes it
        // another room; the append lock keeps the check and the write together.
        let mut ts = now_millis();
        let built = loop {
            let built = self.build_at(version, room_id.as_deref(), &RoomHeads::default(), sender, &new, ts)?;
            if room_id.is_some() || self.room(&built.pdu.room_id)?.is_none() {
                break built;
            }
            ts += 1;
        };
        self.authorize_local(&built)?;
        let record = RoomRecord { version: version.clone(), created_ts: now_millis() };
        let append = Append {
            pdu: built.pdu,
            state_before: StateBefore::Snapshot(None),
            placement: Placement::Timeline,
            txn: None,
            new_room: Some(record),
            resolved_current: None,
        };
        let written = self.commit(&mut counters, append)?;
        drop(counters);
        self.finish(written)
    }
}
