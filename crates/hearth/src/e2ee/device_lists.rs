//! Device-list changes and who hears of them: a user's device or cross-signing keys
//! changed, so everyone sharing a room with them (and the user's own other devices) must
//! re-query their keys (`device_lists.changed` in sync, `/keys/changes`).
//!
//! The change itself is a stream item written by the key functions in [`super`]; this
//! module wakes its audience, which [`Rooms::users_sharing_a_room`] names, and answers
//! `/keys/changes` from the same audience.

use std::collections::BTreeSet;

use ruma::{api::Direction, OwnedRoomId, OwnedUserId, UserId};

use super::Keys;
use crate::{error::Result, rooms::Rooms, stream::StreamItem};

impl Keys {
    /// Announces the key change of `user` at stream position `pos` to everyone who shares
    /// a room with them.
    pub fn announce(&self, rooms: &Rooms, user: &UserId, pos: u64) -> Result<()> {
        let wake = rooms.users_sharing_a_room(user)?;
        self.stream.notifier.notify(wake.iter().map(|u| &**u), pos);
        Ok(())
    }

    /// Records and announces that a local user's device list changed without a key
    /// change: a new device (a login) or a renamed one. Their own other devices and their
    /// contacts see it in `device_lists.changed`, as on Synapse.
    pub fn note_local_device_change(&self, rooms: &Rooms, user: &UserId, device: &str) -> Result<()> {
        let (pos, _) = self.stream.commit(|pos, batch| {
            self.mark_changed(batch, pos, user, Some(device), false);
            Ok(())
        })?;
        self.announce(rooms, user, pos)
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

    /// Whose device lists `user` must look at again after what happened in (from, to]:
    /// `changed`, contacts (and the user) whose devices or keys changed, and members who
    /// joined, were invited to or knocked on a room the user is in (their devices are new
    /// to the user); `left`, members
    /// who left and no longer share any room with the user. Sorted, without duplicates.
    /// `items` and `rooms_with_events` are what the stream holds for (from, to].
    pub fn device_list_delta(
        &self,
        rooms: &Rooms,
        user: &UserId,
        from: u64,
        to: u64,
        items: &[(u64, StreamItem)],
        rooms_with_events: &BTreeSet<OwnedRoomId>,
    ) -> Result<DeviceListDelta> {
        // Read only when something asks (most syncs have nothing here).
        let contacts = std::cell::OnceCell::new();
        let is_contact = |other: &UserId| -> Result<bool> {
            if let Some(c) = contacts.get() {
                let c: &BTreeSet<OwnedUserId> = c;
                return Ok(c.contains(other));
            }
            let set: BTreeSet<OwnedUserId> = rooms.users_sharing_a_room(user)?.into_iter().collect();
            Ok(contacts.get_or_init(|| set).contains(other))
        };
        let mut delta = DeviceListDelta::default();
        for (_, item) in items {
            if let StreamItem::DeviceList { user_id, private, .. } = item {
                if *private && user_id != user {
                    continue;
                }
                if is_contact(user_id)? {
                    delta.changed.push(user_id.clone());
                }
            }
        }
        for room in rooms_with_events {
            if !rooms.member_event_after(room, from) || rooms.membership(room, user)?.is_none() {
                continue;
            }
            for (_, pdu) in rooms.page(room, to, Direction::Backward, MAX_MEMBER_SCAN, to, Some(from))? {
                if pdu.kind.to_string() != "m.room.member" {
                    continue;
                }
                let Some(target) = pdu.state_key.as_deref().and_then(|k| OwnedUserId::try_from(k).ok()) else {
                    continue;
                };
                let membership = pdu.content_value().get("membership").and_then(|m| m.as_str().map(str::to_owned));
                let gone = matches!(membership.as_deref(), Some("leave" | "ban"));
                if *target == *user {
                    // The user left: the room's members they share nothing else with are
                    // `left` for them.
                    if gone {
                        for member in
                            rooms.members_shared(room, &ruma::events::room::member::MembershipState::Join)?.iter()
                        {
                            if **member != *user && !is_contact(member)? {
                                delta.left.push(member.clone());
                            }
                        }
                    }
                    continue;
                }
                // An invited or knocking user is `changed` too, as Synapse counts them:
                // clients that encrypt for invited members need their devices.
                let arriving = matches!(membership.as_deref(), Some("invite" | "knock"));
                if arriving || is_contact(&target)? {
                    delta.changed.push(target);
                } else if gone {
                    // Only someone who left can be `left`: an invited or knocking user
                    // never shared the room.
                    delta.left.push(target);
                }
            }
        }
        for list in [&mut delta.changed, &mut delta.left] {
            list.sort();
            list.dedup();
        }
        Ok(delta)
    }

    /// [`Keys::device_list_delta`] for `/keys/changes`, reading the stream itself.
    pub fn changes_between(&self, rooms: &Rooms, user: &UserId, from: u64, to: u64) -> Result<DeviceListDelta> {
        let items = rooms.stream.items_between(from, to)?;
        let with_events = rooms.stream.events_between(from, to)?.into_iter().map(|(_, e)| e.room_id).collect();
        self.device_list_delta(rooms, user, from, to, &items, &with_events)
    }
}

/// Most events of a room looked at for membership changes in one delta.
const MAX_MEMBER_SCAN: usize = 1000;

/// See [`Keys::device_list_delta`].
#[derive(Debug, Default)]
pub struct DeviceListDelta {
    pub changed: Vec<OwnedUserId>,
    pub left: Vec<OwnedUserId>,
}
