//! Device-list changes and who hears of them: a user's device or cross-signing keys
//! changed, so everyone sharing a room with them (and the user's own other devices) must
//! re-query their keys (`device_lists.changed` in sync, `/keys/changes`).
//!
//! The change itself is a stream item written by the key functions in [`super`]; this
//! module wakes its audience, which [`Rooms::users_sharing_a_room`] names, and answers
//! `/keys/changes` from the same audience.

use ruma::{OwnedUserId, UserId};

use super::Keys;
use crate::{error::Result, rooms::Rooms};

impl Keys {
    /// Announces the key change of `user` at stream position `pos` to everyone who shares
    /// a room with them.
    pub fn announce(&self, rooms: &Rooms, user: &UserId, pos: u64) -> Result<()> {
        let wake = rooms.users_sharing_a_room(user)?;
        self.stream.notifier.notify(wake.iter().map(|u| &**u), pos);
        Ok(())
    }

    /// Forgets the keys and to-device queues of devices that were deleted, and announces
    /// each removal.
    pub fn forget_devices(&self, rooms: &Rooms, user: &UserId, devices: &[String]) -> Result<()> {
        for d in devices {
            let pos = self.remove_device(user, d)?;
            self.announce(rooms, user, pos)?;
        }
        Ok(())
    }

    /// The users sharing a room with `user` (or `user`) whose keys changed between the
    /// stream positions `from` and `to`. Sorted, without duplicates.
    pub fn changed_contacts(&self, rooms: &Rooms, user: &UserId, from: u64, to: u64) -> Result<Vec<OwnedUserId>> {
        let contacts = rooms.users_sharing_a_room(user)?;
        let mut changed: Vec<OwnedUserId> =
            self.changed_users(from, to)?.into_iter().filter(|u| contacts.contains(u)).collect();
        changed.sort();
        changed.dedup();
        Ok(changed)
    }
}
