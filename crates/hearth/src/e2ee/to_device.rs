//! To-device messages: queued per device at a stream position, delivered by `/sync`, and
//! deleted only once the device acknowledges them by syncing with a later `since`. They
//! survive restarts and are never delivered twice to a device that acknowledged them.
//!
//! Most syncs find nothing queued, so what is known in memory spares them both reads: where
//! each user's newest message was queued since start, and up to where each device's queue
//! is known empty.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use parking_lot::Mutex;
use ruma::{OwnedUserId, UserId};
use serde_json::{json, Value};

use crate::{
    error::{Error, Result},
    store::{codec::encode_key, tables, Batch, KeyRange, Order, Store, Table},
    stream::{Marks, Stream, StreamItem, STREAM_LOG},
};

pub const TO_DEVICE: Table<(String, String, u64), Value> = Table::new(tables::TO_DEVICE);
pub const TO_DEVICE_TXNS: Table<(String, String, String), ()> = Table::new(tables::TO_DEVICE_TXNS);

/// Most messages in one `sendToDevice` call.
pub const MAX_MESSAGES: usize = 1000;
/// Largest message content.
pub const MAX_CONTENT_BYTES: usize = 64 * 1024;

pub struct ToDevice {
    store: Arc<Store>,
    stream: Arc<Stream>,
    /// Where each user's newest message was queued.
    queued: Marks<OwnedUserId>,
    /// For each user's devices, a position at or below which the device's queue is empty.
    empty_through: Mutex<HashMap<OwnedUserId, HashMap<String, u64>>>,
}

fn device_range(user: &UserId, device: &str, from: u64, to_inclusive: u64) -> KeyRange {
    KeyRange {
        lower: Some(encode_key::<(String, String, u64)>((user.as_str(), device, from))),
        upper: Some(encode_key::<(String, String, u64)>((user.as_str(), device, to_inclusive.saturating_add(1)))),
    }
}

/// Deletes everything queued for a device (it was deleted).
pub fn clear_device(store: &Store, user: &UserId, device: &str) -> Result<()> {
    let mut keys = Vec::new();
    TO_DEVICE.scan_range(store, &device_range(user, device, 0, u64::MAX - 1), Order::Ascending, |(_, _, pos), _| {
        keys.push(pos);
        true
    })?;
    let mut batch = Batch::new();
    for pos in keys {
        TO_DEVICE.delete(&mut batch, (user.as_str(), device, pos));
    }
    Ok(store.write(batch)?)
}

impl ToDevice {
    pub fn new(store: Arc<Store>, stream: Arc<Stream>) -> Self {
        let queued = Marks::new(stream.written());
        ToDevice { store, stream, queued, empty_through: Mutex::default() }
    }

    /// Whether the device's queue is known to hold nothing at all.
    fn known_empty(&self, user: &UserId, device: &str) -> bool {
        let Some(&through) = self.empty_through.lock().get(user).and_then(|d| d.get(device)) else { return false };
        !self.queued.changed_after(user, through)
    }

    /// Queues messages (`user → device or "*" → content`) from `sender`; a retried
    /// transaction is accepted and ignored. Returns the users to wake.
    pub fn send(
        &self,
        sender: &UserId,
        sender_device: &str,
        txn: &str,
        kind: &str,
        messages: &BTreeMap<ruma::OwnedUserId, BTreeMap<String, Value>>,
        devices_of: impl Fn(&UserId) -> Result<Vec<String>>,
    ) -> Result<Option<(u64, Vec<ruma::OwnedUserId>)>> {
        let total: usize = messages.values().map(BTreeMap::len).sum();
        if total > MAX_MESSAGES {
            return Err(Error::too_large(format!("At most {MAX_MESSAGES} messages per request")));
        }
        if TO_DEVICE_TXNS.contains(&self.store, (sender.as_str(), sender_device, txn))? {
            return Ok(None);
        }
        let mut deliveries = Vec::new();
        for (user, per_device) in messages {
            for (device, content) in per_device {
                if serde_json::to_vec(content).map(|b| b.len()).unwrap_or(usize::MAX) > MAX_CONTENT_BYTES {
                    return Err(Error::too_large("To-device message too large"));
                }
                let targets = if device == "*" { devices_of(user)? } else { vec![device.clone()] };
                for d in targets {
                    deliveries.push((user.clone(), d, content.clone()));
                }
            }
        }
        let (pos, _) = self.stream.commit(|pos, batch| {
            for user in messages.keys() {
                self.queued.note(user, pos);
            }
            for (user, device, content) in &deliveries {
                let event = json!({"sender": sender, "type": kind, "content": content});
                TO_DEVICE.put(batch, (user.as_str(), device, pos), &event);
            }
            // One item holds the position (the stream's newest position is read back from
            // the log at start); the queue itself is in TO_DEVICE.
            if let Some(user) = messages.keys().next() {
                STREAM_LOG.put(batch, pos, &StreamItem::ToDevice { user_id: user.clone() });
            }
            TO_DEVICE_TXNS.put(batch, (sender.as_str(), sender_device, txn), &());
            Ok(())
        })?;
        Ok(Some((pos, messages.keys().cloned().collect())))
    }

    /// Deletes what the device acknowledged (queued at or before `since`).
    pub fn acknowledge(&self, user: &UserId, device: &str, since: u64) -> Result<()> {
        if self.known_empty(user, device) {
            return Ok(());
        }
        let mut keys = Vec::new();
        TO_DEVICE.scan_range(
            &self.store,
            &device_range(user, device, 0, since),
            Order::Ascending,
            |(_, _, pos), _| {
                keys.push(pos);
                true
            },
        )?;
        if !keys.is_empty() {
            let mut batch = Batch::new();
            for pos in keys {
                TO_DEVICE.delete(&mut batch, (user.as_str(), device, pos));
            }
            self.store.write(batch)?;
        }
        // Everything queued at or below `since` is gone now, if `since` is a position that
        // exists (a made-up token from the future says nothing about later messages).
        if since <= self.stream.now() {
            let mut empty = self.empty_through.lock();
            let through = empty.entry(user.to_owned()).or_default().entry(device.to_owned()).or_insert(0);
            *through = (*through).max(since);
        }
        Ok(())
    }

    /// Everything queued for the device up to `until`, oldest first.
    pub fn pending(&self, user: &UserId, device: &str, until: u64) -> Result<Vec<Value>> {
        if self.known_empty(user, device) {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        TO_DEVICE.scan_range(&self.store, &device_range(user, device, 0, until), Order::Ascending, |_, v| {
            out.push(v);
            true
        })?;
        Ok(out)
    }
}
