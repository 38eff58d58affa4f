//! Self-destructing messages (MSC2228, as Synapse serves it): an event whose content has
//! `org.matrix.self_destruct_after` (a time in ms) loses its content at that time, for
//! everyone, as a redaction would take it (without a redaction event).
//!
//! The commit that stores such an event also stores its expiry in [`EXPIRING`], ordered by
//! time, so expiry survives restarts; [`run`] looks at the earliest once a second and prunes
//! what is due, each in one write with the removal of its row.

use std::{sync::Arc, time::Duration};

use ruma::{OwnedEventId, OwnedRoomId};
use serde_json::Value;

use super::{pdu::Pdu, Rooms, TimelineEntry, EVENT_META, PDUS, TIMELINE};
use crate::{
    error::{Error, Result},
    store::{codec::encode_key, tables, Batch, KeyRange, Order, Table},
    time::now_millis,
};

/// (expiry time in ms, event id) → room id.
pub const EXPIRING: Table<(u64, String), String> = Table::new(tables::EXPIRING_EVENTS);

/// The content key that asks for expiry.
pub const SELF_DESTRUCT_AFTER: &str = "org.matrix.self_destruct_after";

/// Most events pruned in one pass.
const PASS: usize = 100;

/// When `pdu` asks to expire (a state event never does).
pub fn expiry_of(pdu: &Pdu, content: &Value) -> Option<u64> {
    if pdu.state_key.is_some() {
        return None;
    }
    content.get(SELF_DESTRUCT_AFTER).and_then(Value::as_u64)
}

impl Rooms {
    /// Prunes the events due by `now`; returns their rooms (whose readers' caches are
    /// stale now).
    pub fn expire_due(&self, now: u64) -> Result<Vec<OwnedRoomId>> {
        let range = KeyRange { lower: None, upper: Some(encode_key::<(u64, String)>((now, "\u{10FFFF}"))) };
        let mut due: Vec<(u64, String, String)> = Vec::new();
        EXPIRING.scan_range(&self.store, &range, Order::Ascending, |(at, event), room| {
            due.push((at, event, room));
            due.len() < PASS
        })?;
        let mut rooms = Vec::new();
        for (at, event, room) in due {
            let mut batch = Batch::new();
            EXPIRING.delete(&mut batch, (at, event.as_str()));
            let Ok(event_id) = OwnedEventId::try_from(event.as_str()) else {
                self.store.write(batch)?;
                continue;
            };
            // Under the append lock: no append may write this event's rows meanwhile.
            let _guard = self.append_lock.lock();
            if let (Some(meta), Some(pdu)) = (self.event_meta(&event_id)?, self.pdu(&event_id)?) {
                let rules = self.known_room(&meta.room_id)?.version.rules();
                let rules = rules.ok_or_else(|| Error::internal("unsupported room version"))?;
                let pruned = ruma::canonical_json::redact(pdu.json.clone(), &rules.redaction, None)
                    .map_err(|e| Error::internal(format!("expiry failed: {e}")))?;
                let json = serde_json::to_vec(&pruned).map_err(|e| Error::internal(e.to_string()))?;
                PDUS.put(&mut batch, event_id.as_str(), &json);
                if !meta.outlier && !meta.soft_failed {
                    TIMELINE.put(
                        &mut batch,
                        (meta.room_id.as_str(), meta.stream),
                        &TimelineEntry::new(event_id.as_str(), &json),
                    );
                }
                EVENT_META.put(&mut batch, event_id.as_str(), &meta);
                self.store.write(batch)?;
                // No reader may keep the full copy from here on.
                match self.state.short_event(&event_id) {
                    Ok(short) => self.pdus.forget(&event_id, short),
                    Err(_) => self.pdus.clear(),
                }
                if let Ok(room) = OwnedRoomId::try_from(room) {
                    rooms.push(room);
                }
            } else {
                self.store.write(batch)?;
            }
        }
        Ok(rooms)
    }
}

/// Prunes due events once a second until `stop` fires; `expired` is told each room that
/// had one (to drop cached responses).
pub async fn run(
    rooms: Arc<Rooms>,
    expired: impl Fn(&[OwnedRoomId]) + Send + Sync + 'static,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let expired = Arc::new(expired);
    let mut every = tokio::time::interval(Duration::from_secs(1));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = every.tick() => {
                let (rooms, expired) = (rooms.clone(), expired.clone());
                let pass = tokio::task::spawn_blocking(move || {
                    let done = rooms.expire_due(now_millis())?;
                    if !done.is_empty() {
                        expired(&done);
                    }
                    Ok::<_, Error>(())
                });
                match pass.await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::warn!(error = %e, "expiring messages failed; trying again"),
                    Err(e) => tracing::warn!(error = %e, "the expiry task failed"),
                }
            }
        }
    }
}
