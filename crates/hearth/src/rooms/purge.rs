//! Purging a room: removing what this server stores of it — its events, state snapshots,
//! timeline, memberships, receipts, relations, reports, aliases, directory entry and
//! backfill marks — once an admin deleted it (`admin::Admin::purge_room`, which first makes
//! the local members leave and lets the stream's followers pass their leaves).
//!
//! Kept: the events still queued for another server (`keep`: the leaves an unreachable
//! server has yet to receive), the interned ids (a few bytes each, shared by nothing
//! else), and what belongs to users rather than to the room (their room account data and
//! notifications, which no longer show once the room is forgotten). Other servers keep
//! their copies of the room; if a local user joins it again (unless it is blocked), it is
//! fetched from them as any room elsewhere.

use std::collections::{BTreeSet, HashSet};

use ruma::{OwnedEventId, OwnedUserId, RoomId};

use super::{
    backfill::{BACKFILL, BACKFILL_ROWS},
    expiry::EXPIRING,
    receipts::RECEIPTS,
    remote::REMOTE_INVITE_STATE,
    reports::REPORTS,
    state::{STATE_BEFORE_EVENT, STATE_SNAPSHOTS},
    Rooms, ALIASES, EVENT_META, PDUS, PUBLISHED_ROOMS, RELATIONS, ROOMS, ROOM_HEADS, ROOM_MEMBERS, TIMELINE,
    TRANSACTIONS, USER_ROOMS,
};
use crate::{
    error::Result,
    store::{codec::encode_key, Batch, KeyRange, Order},
    stream::EVENT_STREAM,
};

/// What a purge removed.
#[derive(Debug, Clone, Default)]
pub struct Purged {
    pub events: usize,
    pub snapshots: usize,
    /// Everyone who had a membership in it (their membership caches are dropped here).
    pub members: Vec<OwnedUserId>,
}

impl Rooms {
    /// Removes the room from the database (see the module doc), except the events in
    /// `keep`. Appends wait meanwhile (the append lock is held), so no event of the room
    /// can land halfway through.
    pub fn purge(&self, room: &RoomId, keep: &HashSet<OwnedEventId>) -> Result<Purged> {
        let _appends = self.append_lock.lock();
        let mut batch = Batch::new();
        let mut purged = Purged::default();

        // The room's events: every one has its metadata, timeline or outlier alike.
        let mut events = Vec::new();
        EVENT_META.scan_all(&self.store, |id, meta| {
            if meta.room_id == room {
                events.push((id, meta));
            }
            true
        })?;
        let mut snapshots = BTreeSet::new();
        for (id, meta) in &events {
            if let Some(snapshot) = STATE_BEFORE_EVENT.get(&self.store, meta.short)? {
                snapshots.insert(snapshot);
            }
            STATE_BEFORE_EVENT.delete(&mut batch, meta.short);
            EVENT_STREAM.delete(&mut batch, meta.stream);
            BACKFILL_ROWS.delete(&mut batch, id);
            for (pos, _) in RELATIONS.collect_prefix(&self.store, id.as_str())? {
                RELATIONS.delete(&mut batch, (id.as_str(), pos));
            }
            super::threads::BUNDLED_TARGETS.delete(&mut batch, id);
            if !keep.iter().any(|k| k.as_str() == id) {
                PDUS.delete(&mut batch, id);
                EVENT_META.delete(&mut batch, id);
            }
        }
        purged.events = events.len();

        // State snapshots: those the events and the head name, and their parents (a
        // room's snapshots are diffs of its own earlier ones).
        if let Some(heads) = ROOM_HEADS.get(&self.store, room.as_str())? {
            snapshots.extend(heads.snapshot);
        }
        let mut seen = BTreeSet::new();
        let mut todo: Vec<u64> = snapshots.into_iter().collect();
        while let Some(id) = todo.pop() {
            if !seen.insert(id) {
                continue;
            }
            if let Some(snapshot) = STATE_SNAPSHOTS.get(&self.store, id)? {
                todo.extend(snapshot.parent);
                STATE_SNAPSHOTS.delete(&mut batch, id);
            }
        }
        purged.snapshots = seen.len();

        for (pos, _) in TIMELINE.collect_prefix(&self.store, room.as_str())? {
            TIMELINE.delete(&mut batch, (room.as_str(), pos));
        }
        for (user, _) in ROOM_MEMBERS.collect_prefix(&self.store, room.as_str())? {
            ROOM_MEMBERS.delete(&mut batch, (room.as_str(), user.as_str()));
            USER_ROOMS.delete(&mut batch, (user.as_str(), room.as_str()));
            REMOTE_INVITE_STATE.delete(&mut batch, (user.as_str(), room.as_str()));
            if let Ok(user) = OwnedUserId::try_from(user) {
                purged.members.push(user);
            }
        }
        let in_room = KeyRange::prefix(&encode_key::<String>(room.as_str()));
        RECEIPTS.scan_range(&self.store, &in_room, Order::Ascending, |(_, user, kind, thread), _| {
            RECEIPTS.delete(&mut batch, (room.as_str(), user.as_str(), kind.as_str(), thread.as_str()));
            true
        })?;
        for (pos, _) in REPORTS.collect_prefix(&self.store, room.as_str())? {
            REPORTS.delete(&mut batch, (room.as_str(), pos));
        }
        for (n, _) in BACKFILL.collect_prefix(&self.store, room.as_str())? {
            BACKFILL.delete(&mut batch, (room.as_str(), n));
        }
        ALIASES.scan_all(&self.store, |alias, target| {
            if target == room.as_str() {
                ALIASES.delete(&mut batch, &alias);
            }
            true
        })?;
        EXPIRING.scan_range(&self.store, &KeyRange::default(), Order::Ascending, |(at, event), target| {
            if target == room.as_str() {
                EXPIRING.delete(&mut batch, (at, event.as_str()));
            }
            true
        })?;
        TRANSACTIONS.scan_all(&self.store, |(sender, device, in_room, kind, txn), _| {
            if in_room == room.as_str() {
                let key = (sender.as_str(), device.as_str(), in_room.as_str(), kind.as_str(), txn.as_str());
                TRANSACTIONS.delete(&mut batch, key);
            }
            true
        })?;
        PUBLISHED_ROOMS.delete(&mut batch, room.as_str());
        ROOM_HEADS.delete(&mut batch, room.as_str());
        ROOMS.delete(&mut batch, room.as_str());
        self.store.write(batch)?;

        // What memory holds of it.
        self.records.lock().remove(room);
        self.heads.lock().remove(room);
        self.pdus.clear();
        self.members.invalidate(room);
        for user in &purged.members {
            self.members.invalidate_user(user);
        }
        tracing::info!(%room, events = purged.events, snapshots = purged.snapshots, "room purged");
        Ok(purged)
    }
}
