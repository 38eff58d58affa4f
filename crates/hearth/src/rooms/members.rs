//! Who is in a room, and which rooms a user is in: member lists by membership (from the
//! `ROOM_MEMBERS` index) and each user's memberships (from `USER_ROOMS`), kept in memory,
//! since every sync, push and append asks for them.
//!
//! A room's lists are dropped when one of its member events is appended, a user's when a
//! member event about them is appended or they forget a room. A reader that raced with
//! such a change does not store what it read (an epoch counter tells), so a stale list is
//! never kept.
//!
//! It also remembers where each room's newest member event is on the stream, so a sync
//! can tell that nobody joined or left a room since its token without reading the room.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use parking_lot::Mutex;
use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};

use super::{MembershipRecord, Rooms, ROOM_MEMBERS, USER_ROOMS};
use ruma::events::room::member::MembershipState;

use crate::{error::Result, stream::Marks};

/// Every membership of one user, in room id order.
pub type UserMemberships = Arc<[(OwnedRoomId, MembershipRecord)]>;

/// Members of one room: membership → users, in user id order.
type RoomMembers = BTreeMap<String, Arc<[OwnedUserId]>>;

pub(super) struct MemberCache {
    /// Advanced after every committed membership change.
    epoch: AtomicU64,
    rooms: Mutex<HashMap<OwnedRoomId, Arc<RoomMembers>>>,
    /// Every membership of a user, in room id order.
    users: Mutex<HashMap<OwnedUserId, UserMemberships>>,
    /// Where each room's newest member event is on the stream.
    member_events: Marks<OwnedRoomId>,
}

impl MemberCache {
    pub(super) fn new(start: u64) -> Self {
        MemberCache {
            epoch: AtomicU64::new(0),
            rooms: Mutex::default(),
            users: Mutex::default(),
            member_events: Marks::new(start),
        }
    }

    /// Called while a member event of `room_id` is written at `pos`, before the position
    /// can become durable (so before any sync may read up to it).
    pub(super) fn note_member_event(&self, room_id: &RoomId, pos: u64) {
        self.member_events.note(room_id, pos);
    }

    /// Called after a member event of `room_id` is committed.
    pub(super) fn invalidate(&self, room_id: &RoomId) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.rooms.lock().remove(room_id);
    }

    /// Called after a change to `user`'s memberships is committed.
    pub(super) fn invalidate_user(&self, user: &UserId) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.users.lock().remove(user);
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
                lists.entry(membership.as_str().to_owned()).or_default().push(user);
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

    /// Every membership of `user` (any kind, forgotten rooms excepted), in room id order.
    pub fn user_memberships(&self, user: &UserId) -> Result<UserMemberships> {
        if let Some(m) = self.members.users.lock().get(user) {
            return Ok(m.clone());
        }
        let epoch = self.members.epoch.load(Ordering::SeqCst);
        let mut list = Vec::new();
        for (room, rec) in USER_ROOMS.collect_prefix(&self.store, user.as_str())? {
            if let Ok(room) = OwnedRoomId::try_from(room) {
                list.push((room, rec));
            }
        }
        let list: UserMemberships = list.into();
        let mut users = self.members.users.lock();
        if self.members.epoch.load(Ordering::SeqCst) == epoch {
            users.insert(user.to_owned(), list.clone());
        }
        Ok(list)
    }

    /// Whether a member event of `room_id` may have been appended after stream position
    /// `since` (always true for positions from before this process started).
    pub fn member_event_after(&self, room_id: &RoomId, since: u64) -> bool {
        self.members.member_events.changed_after(room_id, since)
    }

    /// Members of a room with a given membership, shared (no copy), sorted by user id.
    pub fn members_shared(&self, room_id: &RoomId, membership: &MembershipState) -> Result<Arc<[OwnedUserId]>> {
        Ok(self.room_members(room_id)?.get(membership.as_str()).cloned().unwrap_or_else(|| Arc::from(Vec::new())))
    }

    /// Members of a room with a given membership.
    pub fn members(&self, room_id: &RoomId, membership: &MembershipState) -> Result<Vec<OwnedUserId>> {
        Ok(self.members_shared(room_id, membership)?.to_vec())
    }
}
