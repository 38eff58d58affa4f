//! Read receipts (`m.read`, `m.read.private`, threaded), stored per (room, user, type+thread).
//!
//! Each receipt change takes a stream position, so a sync sends only receipts changed since
//! its token. Private receipts are shown to their owner only.

use ruma::{events::room::member::MembershipState, OwnedEventId, RoomId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::Rooms;
use crate::{
    error::{Error, Result},
    store::codec::json_value,
    store::{codec::encode_key, tables, KeyRange, Order, Table},
    stream::{StreamItem, STREAM_LOG},
};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Receipt {
    pub event_id: OwnedEventId,
    pub ts: u64,
    pub stream: u64,
}

json_value!(Receipt);

/// (room, user, "<type>|<thread>") → receipt. The thread part is empty for unthreaded ones.
/// (room id, user id, receipt type, thread id or "") → the receipt.
pub const RECEIPTS: Table<(String, String, String, String), Receipt> = Table::new(tables::RECEIPTS);

pub const RECEIPT_TYPES: &[&str] = &["m.read", "m.read.private"];

impl Rooms {
    /// Records a receipt; `thread` is `None` (unthreaded), `Some("main")` or a thread root id.
    /// A receipt never moves back to an earlier event.
    pub fn set_receipt(
        &self,
        room_id: &RoomId,
        user: &UserId,
        receipt_type: &str,
        thread: Option<&str>,
        event_id: &ruma::EventId,
    ) -> Result<()> {
        if !RECEIPT_TYPES.contains(&receipt_type) {
            return Err(Error::invalid_param(format!("Unknown receipt type {receipt_type}")));
        }
        let meta = self.event_meta(event_id)?.ok_or_else(|| Error::not_found("Unknown event"))?;
        if meta.room_id != room_id {
            return Err(Error::not_found("Event not in this room"));
        }
        // Receipts only move forward, as on Synapse: one for an event older than the
        // current one's is accepted and ignored (a client that saw events out of order).
        let key = (room_id.as_str(), user.as_str(), receipt_type, thread.unwrap_or_default());
        if let Some(current) = RECEIPTS.get(&self.store, key)? {
            if self.event_meta(&current.event_id)?.is_some_and(|m| m.stream > meta.stream) {
                return Ok(());
            }
        }
        let (pos, _) = self.stream.commit(|pos, batch| {
            self.receipt_marks.note(room_id, pos);
            RECEIPTS.put(
                batch,
                (room_id.as_str(), user.as_str(), receipt_type, thread.unwrap_or_default()),
                &Receipt { event_id: event_id.to_owned(), ts: crate::time::now_millis(), stream: pos },
            );
            STREAM_LOG.put(batch, pos, &StreamItem::Receipt { room_id: room_id.to_owned() });
            Ok(())
        })?;
        if receipt_type == "m.read.private" {
            self.notifier.notify([user], pos);
        } else {
            let members = self.members(room_id, &MembershipState::Join)?;
            self.notifier.notify(members.iter().map(|u| &**u), pos);
        }
        Ok(())
    }

    /// Whether a receipt in the room may have been written after stream position `since`.
    pub fn receipts_changed_after(&self, room_id: &RoomId, since: u64) -> bool {
        self.receipt_marks.changed_after(room_id, since)
    }

    /// The room's `m.receipt` ephemeral event with receipts changed after `since` (all if
    /// `None`) that `viewer` may see; `None` if there are none.
    pub fn receipt_event(&self, room_id: &RoomId, since: Option<u64>, viewer: &UserId) -> Result<Option<Value>> {
        let mut content: Map<String, Value> = Map::new();
        let range = KeyRange::prefix(&encode_key::<String>(room_id.as_str()));
        let mut rows = Vec::new();
        RECEIPTS.scan_range(&self.store, &range, Order::Ascending, |(_, user, kind, thread), r| {
            rows.push((user, kind, thread, r));
            true
        })?;
        for (user, kind, thread, r) in rows {
            if since.is_some_and(|s| r.stream <= s) {
                continue;
            }
            let (kind, thread) = (kind.as_str(), thread.as_str());
            if kind == "m.read.private" && user != viewer.as_str() {
                continue;
            }
            let mut info = json!({"ts": r.ts});
            if !thread.is_empty() {
                info["thread_id"] = json!(thread);
            }
            let by_type = content.entry(r.event_id.to_string()).or_insert_with(|| json!({}));
            by_type[kind][&user] = info;
        }
        if content.is_empty() {
            return Ok(None);
        }
        Ok(Some(json!({"type": "m.receipt", "content": content})))
    }
}
