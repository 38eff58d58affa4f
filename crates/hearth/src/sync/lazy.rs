//! Lazy-loaded members: which member events each device has been sent, so an incremental
//! sync with `lazy_load_members` sends a timeline sender's member event once, not with
//! every message (unless the filter asks for `include_redundant_members`).
//!
//! Kept in memory per (user, device), as Synapse keeps it: after a restart a device may
//! be sent a member event again, which clients take as it is. An initial sync starts the
//! device's record afresh. At most [`MAX_DEVICES`] devices are remembered; past that the
//! record of an arbitrary one is dropped (it is sent some members again).

use std::collections::HashMap;

use parking_lot::Mutex;
use ruma::{OwnedRoomId, OwnedUserId, RoomId};

/// Devices whose sent members are remembered.
pub const MAX_DEVICES: usize = 10_000;

/// Room → member user id → the member event id last sent.
type DeviceRecord = HashMap<OwnedRoomId, HashMap<String, String>>;

#[derive(Default)]
pub struct SentMembers {
    devices: Mutex<HashMap<(OwnedUserId, String), DeviceRecord>>,
}

impl SentMembers {
    /// Forgets what a device was sent (its client starts from an initial sync).
    pub fn reset(&self, user: &ruma::UserId, device: &str) {
        self.devices.lock().remove(&(user.to_owned(), device.to_owned()));
    }

    /// Whether the device was sent this member event (by id) for `member` in `room`.
    pub fn was_sent(&self, user: &ruma::UserId, device: &str, room: &RoomId, member: &str, event_id: &str) -> bool {
        let devices = self.devices.lock();
        let Some(record) = devices.get(&(user.to_owned(), device.to_owned())) else { return false };
        record.get(room).and_then(|m| m.get(member)).is_some_and(|e| e == event_id)
    }

    /// Records member events sent to the device in `room`: (member user id, event id).
    pub fn mark<'a>(
        &self,
        user: &ruma::UserId,
        device: &str,
        room: &RoomId,
        sent: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) {
        let mut devices = self.devices.lock();
        let key = (user.to_owned(), device.to_owned());
        if !devices.contains_key(&key) && devices.len() >= MAX_DEVICES {
            if let Some(victim) = devices.keys().next().cloned() {
                devices.remove(&victim);
            }
        }
        let members = devices.entry(key).or_default().entry(room.to_owned()).or_default();
        for (member, event_id) in sent {
            members.insert(member.to_owned(), event_id.to_owned());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_per_device_until_reset() {
        let sent = SentMembers::default();
        let user = ruma::user_id!("@a:x");
        let room = ruma::room_id!("!r:x");
        assert!(!sent.was_sent(user, "D", room, "@b:x", "$1"));
        sent.mark(user, "D", room, [("@b:x", "$1")]);
        assert!(sent.was_sent(user, "D", room, "@b:x", "$1"));
        assert!(!sent.was_sent(user, "D", room, "@b:x", "$2"), "a newer member event is news");
        assert!(!sent.was_sent(user, "E", room, "@b:x", "$1"), "another device was not sent it");
        sent.reset(user, "D");
        assert!(!sent.was_sent(user, "D", room, "@b:x", "$1"));
    }
}
