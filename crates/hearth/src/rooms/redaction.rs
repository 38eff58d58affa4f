//! Redactions: who may redact what, and applying a redaction to the stored event.
//!
//! From room version 3 the auth rules accept every redaction event and leave the check
//! to the server that applies it: the redaction is applied only if its sender sent the
//! target or has the room's `redact` power. Hearth refuses a local redaction that would not
//! apply (403) rather than sending a useless event. The redacted event's content is
//! dropped from the database at once: a redaction is a request to forget.

use ruma::{canonical_json::redact, events::TimelineEventType, EventId, OwnedEventId, RoomId, UserId};
use serde_json::{json, Map, Value};

use super::{
    append::{NewEvent, TxnRef},
    pdu::Pdu,
    Rooms, TimelineEntry, EVENT_META, PDUS, TIMELINE,
};
use crate::{
    error::{Error, Result},
    store::Batch,
};

impl Pdu {
    /// The event a redaction redacts: top level (v1–v10) or in the content (v11+).
    pub fn redaction_target(&self) -> Option<OwnedEventId> {
        if self.kind != TimelineEventType::RoomRedaction {
            return None;
        }
        self.redacts.clone().or_else(|| {
            self.content_value().get("redacts").and_then(Value::as_str).and_then(|s| OwnedEventId::try_from(s).ok())
        })
    }
}

impl Rooms {
    /// Whether `sender` may redact `target`: their own event, or enough power.
    pub fn may_redact(&self, room_id: &RoomId, sender: &UserId, target: &Pdu) -> Result<bool> {
        if target.sender == sender {
            return Ok(true);
        }
        Ok(self.user_power(room_id, sender)? >= self.required_power(room_id, "redact", 50)?)
    }

    /// Sends a redaction of `target` in `room_id`.
    pub fn redact_event(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        target: &EventId,
        reason: Option<String>,
        txn: TxnRef<'_>,
    ) -> Result<Pdu> {
        let record = self.known_room(room_id)?;
        match self.event_meta(target)? {
            Some(m) if m.room_id == room_id => {}
            // As Synapse: an event of another room is a bad request, not a missing one.
            Some(_) => return Err(Error::invalid_param("That event is in another room")),
            None => return Err(Error::not_found("Event not found")),
        }
        let target_pdu = self.pdu(target)?.ok_or_else(|| Error::not_found("Event not found"))?;
        if !self.may_redact(room_id, sender, &target_pdu)? {
            return Err(Error::forbidden("You may not redact this event"));
        }
        let rules = record.version.rules().ok_or_else(|| Error::internal("unsupported room version"))?;
        let mut content = Map::new();
        if let Some(r) = reason {
            content.insert("reason".into(), json!(r));
        }
        let mut new = NewEvent::message("m.room.redaction", content);
        if rules.redaction.keep_room_redaction_redacts {
            new.content.insert("redacts".into(), json!(target));
        } else {
            new.redacts = Some(target.to_owned());
        }
        self.append_local(room_id, sender, new, Some(txn))
    }

    /// Adds the redaction of the target of `redaction` to `batch`, if it applies.
    pub(super) fn apply_redaction(&self, batch: &mut Batch, redaction: &Pdu) -> Result<()> {
        let Some(target_id) = redaction.redaction_target() else { return Ok(()) };
        let Some(mut meta) = self.event_meta(&target_id)? else { return Ok(()) };
        if meta.room_id != redaction.room_id || meta.redacted_by.is_some() {
            return Ok(());
        }
        let Some(target) = self.pdu(&target_id)? else { return Ok(()) };
        if !self.may_redact(&redaction.room_id, &redaction.sender, &target)? {
            return Ok(());
        }
        let rules = self
            .known_room(&redaction.room_id)?
            .version
            .rules()
            .ok_or_else(|| Error::internal("unsupported room version"))?;
        let redacted = redact(target.json.clone(), &rules.redaction, None)
            .map_err(|e| Error::internal(format!("redaction failed: {e}")))?;
        let json = serde_json::to_vec(&redacted).map_err(|e| Error::internal(e.to_string()))?;
        PDUS.put(batch, target_id.as_str(), &json);
        // The timeline row's push view is cut from the PDU: cut it again from what is left.
        TIMELINE.put(batch, (meta.room_id.as_str(), meta.stream), &TimelineEntry::new(target_id.as_str(), &json));
        meta.redacted_by = Some(redaction.event_id.clone());
        EVENT_META.put(batch, target_id.as_str(), &meta);
        Ok(())
    }
}
