//! Peeking (MSC2753): a device follows a world-readable room it has not joined, and its
//! `/sync` carries the room under `rooms.peek` — the room's recent timeline and state the
//! first time, its new events after that — as a member's would, under the same history
//! visibility (a peeker sees only what `world_readable` lets anyone see).
//!
//! Peeks are per device, kept in `peeks` ((user, device, room) → the stream position the
//! peek began at), so that one acknowledged survives a restart, and indexed by room in
//! memory so that a new event wakes the peeking users' syncs. A peek ends with
//! `/unpeek`, when the user joins the room, or when the room stops being world-readable
//! (its sync section then stays out). Rooms of other servers cannot be peeked into here
//! (that needs the federation side, MSC2444).

use std::collections::{BTreeSet, HashMap};

use parking_lot::RwLock;
use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};

use super::Rooms;
use crate::{
    error::{Error, Result},
    store::{tables, Batch, Order, Store, Table},
};

/// (user, device, room) → the stream position the peek began at.
pub const PEEKS: Table<(String, String, String), u64> = Table::new(tables::PEEKS);

/// Who peeks into which room, in memory.
#[derive(Default)]
pub struct Peeks {
    by_room: RwLock<HashMap<OwnedRoomId, BTreeSet<(OwnedUserId, String)>>>,
}

impl Peeks {
    pub fn load(store: &Store) -> Result<Self> {
        let mut by_room: HashMap<OwnedRoomId, BTreeSet<(OwnedUserId, String)>> = HashMap::new();
        PEEKS.scan_all(store, |(user, device, room), _| {
            if let (Ok(user), Ok(room)) = (OwnedUserId::try_from(user), OwnedRoomId::try_from(room)) {
                by_room.entry(room).or_default().insert((user, device));
            }
            true
        })?;
        Ok(Peeks { by_room: RwLock::new(by_room) })
    }

    /// The users with a device peeking into `room` (most rooms: none).
    pub fn users_in(&self, room: &RoomId) -> Vec<OwnedUserId> {
        let by_room = self.by_room.read();
        let mut users: Vec<OwnedUserId> =
            by_room.get(room).map(|s| s.iter().map(|(u, _)| u.clone()).collect()).unwrap_or_default();
        users.dedup();
        users
    }
}

impl Rooms {
    /// `user`'s `device` starts peeking into `room`: 403 unless the room is world-readable;
    /// nothing to do for a member.
    pub fn peek(&self, user: &UserId, device: &str, room: &RoomId) -> Result<()> {
        if self.room(room)?.is_none() {
            return Err(Error::not_found("Unknown room (peeking into rooms on other servers is not supported)"));
        }
        if self.is_joined(room, user)? {
            return Ok(());
        }
        if !self.is_world_readable(room)? {
            return Err(Error::forbidden("Only world-readable rooms can be peeked into"));
        }
        // The peek takes a stream position of its own: a sync from before it shows the whole
        // room, one from after it only what is new, and a waiting sync wakes for it.
        let (pos, ()) = self.stream.commit(|pos, batch| {
            PEEKS.put(batch, (user.as_str(), device, room.as_str()), &pos);
            Ok(())
        })?;
        self.peeks.by_room.write().entry(room.to_owned()).or_default().insert((user.to_owned(), device.to_owned()));
        let (notifier, user) = (self.notifier.clone(), user.to_owned());
        self.stream.after_durable(pos, move || notifier.notify([&*user], pos))?;
        Ok(())
    }

    /// Ends peeks into `room`: the device's, or (`device` `None`, on a join) all the user's.
    pub fn unpeek(&self, user: &UserId, device: Option<&str>, room: &RoomId) -> Result<()> {
        let mut by_room = self.peeks.by_room.write();
        let Some(peekers) = by_room.get_mut(room) else { return Ok(()) };
        let ended: Vec<String> = peekers
            .iter()
            .filter(|(u, d)| u == user && device.is_none_or(|want| want == d))
            .map(|(_, d)| d.clone())
            .collect();
        if ended.is_empty() {
            return Ok(());
        }
        let mut batch = Batch::new();
        for d in &ended {
            PEEKS.delete(&mut batch, (user.as_str(), d, room.as_str()));
            peekers.remove(&(user.to_owned(), d.clone()));
        }
        if peekers.is_empty() {
            by_room.remove(room);
        }
        Ok(self.store.write(batch)?)
    }

    /// The rooms `user`'s `device` peeks into, each with the stream position its peek began at.
    pub fn peeks_of(&self, user: &UserId, device: &str) -> Result<Vec<(OwnedRoomId, u64)>> {
        let mut out = Vec::new();
        // Nobody peeks (nearly always): no read on a sync's path.
        if self.peeks.by_room.read().is_empty() {
            return Ok(out);
        }
        let prefix = crate::store::codec::encode_key::<(String, String)>((user.as_str(), device));
        PEEKS.scan_range(
            &self.store,
            &crate::store::KeyRange::prefix(&prefix),
            Order::Ascending,
            |(_, _, room), start| {
                if let Ok(room) = OwnedRoomId::try_from(room) {
                    out.push((room, start));
                }
                true
            },
        )?;
        Ok(out)
    }
}
