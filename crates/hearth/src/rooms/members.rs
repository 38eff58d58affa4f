//! Who is in a room: member lists by membership, read from the `ROOM_MEMBERS` index and
//! kept in memory, since sync, push and every append ask for them.
//!
//! The cache is dropped for a room when one of its member events is appended. A reader
//! that raced with such an append does not store what it read (an epoch counter tells),
//! so a stale list is never kept.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use parking_lot::Mutex;
use ruma::{OwnedRoomId, OwnedUserId, RoomId};

use super::{Rooms, ROOM_MEMBERS};
use crate::error::Result;

/// Members of one room: membership → users, in user id order.
type RoomMembers = BTreeMap<String, Arc<[OwnedUserId]>>;

#[derive(Default)]
pub(super) struct MemberCache {
    /// Advanced after every committed membership change.
    epoch: AtomicU64,
    rooms: Mutex<HashMap<OwnedRoomId, Arc<RoomMembers>>>,
}

impl MemberCache {
    /// Called after a member event of `room_id` is committed.
    pub(super) fn invalidate(&self, room_id: &RoomId) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.rooms.lock().remove(room_id);
    }
}

impl Rooms {
    fn room_members(&self, room_id: &RoomId) -> Result<Arc<RoomMembers>> {
        if let Some(m) = self.members.rooms.lock().get(room_id) {
            return Ok(m.clone());
        }
        let epoch = self.members.epoch.load(Ordering::SeqCst);
        let mut lists: BTreeMap<String, Vec<OwnedUserId>> = BTreeMap::new();
        for (user, membership) in ROOM_MEMBERS.collect_prefix(&self.store, room_id.as_str())? {
            if let Ok(user) = OwnedUserId::try_from(user) {
                lists.entry(membership).or_default().push(user);
            }
        }
        // Sorted, so callers may binary-search (the index is in key order already).
        let members: Arc<RoomMembers> = Arc::new(
            lists
                .into_iter()
                .map(|(m, mut users)| {
                    users.sort_unstable();
                    (m, users.into())
                })
                .collect(),
        );
        let mut rooms = self.members.rooms.lock();
        if self.members.epoch.load(Ordering::SeqCst) == epoch {
            rooms.insert(room_id.to_owned(), members.clone());
        }
        Ok(members)
    }

    /// Members of a room with a given membership, shared (no copy), sorted by user id.
    pub fn members_shared(&self, room_id: &RoomId, membership: &str) -> Result<Arc<[OwnedUserId]>> {
        Ok(self.room_members(room_id)?.get(membership).cloned().unwrap_or_else(|| Arc::from(Vec::new())))
    }

    /// Members of a room with a given membership.
    pub fn members(&self, room_id: &RoomId, membership: &str) -> Result<Vec<OwnedUserId>> {
        Ok(self.members_shared(room_id, membership)?.to_vec())
    }
}
