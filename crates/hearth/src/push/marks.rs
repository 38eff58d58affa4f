//! Unread marks: what each event means to each local member's unread counts, decided once
//! when the push follower evaluates the event (see [`super::notifications`]), so that a
//! sync adds up marks instead of evaluating every unread event against the user's rules.
//!
//! A mark is written for a local member who was joined when the follower reached the
//! event: their own event (which counts as having read what came before it in that
//! timeline), or one their rules made notify or highlight. Events that do neither leave no
//! mark. The verdict is the rules' at the time the event was evaluated, as Synapse's push
//! actions are: a rule changed later applies to later events. A redaction evaluates its
//! target again, cut down, so a mention that is redacted stops highlighting.
//!
//! The marks cover the stream from the position the follower stood at when this Hearth
//! first wrote them ([`MARKS_FROM`]) to the position it has reached ([`Coverage`]); counts
//! outside that span are made by evaluating the events, as before. Marks that no receipt
//! can make count again (at or before the user's read position in their timeline, or
//! before their join) are deleted after their receipts move, and all of a user's marks in
//! a room when they leave it.

use std::{
    collections::HashMap,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
};

use ruma::{OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, UserId};

use crate::{
    error::Result,
    store::codec::{encode_key, CodecError, ValueCodec},
    store::{tables, Batch, KeyRange, Order, Store, Table},
};

/// (user, room, stream position) → the event's mark.
pub const UNREAD_MARKS: Table<(String, String, u64), Mark> = Table::new(tables::UNREAD_MARKS);
/// The key in the push state table of the position marks were first written after.
pub const MARKS_FROM: &str = "marks_from";

/// What one event means to one user's unread counts.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Mark {
    /// The user sent it.
    pub own: bool,
    pub notify: bool,
    pub highlight: bool,
    /// The thread it is in (`m.thread` relation), if any.
    pub thread: Option<OwnedEventId>,
}

const OWN: u8 = 1;
const NOTIFY: u8 = 2;
const HIGHLIGHT: u8 = 4;

/// One flags byte, then the thread root's id (if any): marks are many and small.
impl ValueCodec for Mark {
    fn encode_value(&self) -> Vec<u8> {
        let flags =
            (u8::from(self.own) * OWN) | (u8::from(self.notify) * NOTIFY) | (u8::from(self.highlight) * HIGHLIGHT);
        let root = self.thread.as_ref().map_or("", |t| t.as_str());
        let mut out = Vec::with_capacity(1 + root.len());
        out.push(flags);
        out.extend_from_slice(root.as_bytes());
        out
    }

    fn decode_value(bytes: &[u8]) -> Result<Self, CodecError> {
        let (&flags, root) = bytes.split_first().ok_or_else(|| CodecError("empty unread mark".into()))?;
        let thread = match root {
            [] => None,
            root => Some(
                std::str::from_utf8(root)
                    .ok()
                    .and_then(|r| OwnedEventId::try_from(r).ok())
                    .ok_or_else(|| CodecError("unread mark with a bad thread id".into()))?,
            ),
        };
        Ok(Mark { own: flags & OWN != 0, notify: flags & NOTIFY != 0, highlight: flags & HIGHLIGHT != 0, thread })
    }
}

/// The span of the stream the marks cover, (from, to], once the follower has started.
#[derive(Default)]
pub struct Coverage {
    started: AtomicBool,
    from: AtomicU64,
    to: AtomicU64,
}

impl Coverage {
    /// `(from, to)`, or `None` before the follower has said where it stands.
    pub fn span(&self) -> Option<(u64, u64)> {
        if !self.started.load(Ordering::Acquire) {
            return None;
        }
        Some((self.from.load(Ordering::Acquire), self.to.load(Ordering::Acquire)))
    }

    pub(super) fn start(&self, from: u64, to: u64) {
        self.from.store(from, Ordering::Release);
        self.to.store(to, Ordering::Release);
        self.started.store(true, Ordering::Release);
    }

    /// Marks up to `to` are written (call after the write).
    pub(super) fn reached(&self, to: u64) {
        self.to.fetch_max(to, Ordering::AcqRel);
    }
}

fn room_prefix(user: &UserId, room: &RoomId) -> KeyRange {
    KeyRange::prefix(&encode_key::<(String, String)>((user.as_str(), room.as_str())))
}

/// Visits the user's marks in the room in (after, up_to], oldest first.
pub fn scan(
    store: &Store,
    user: &UserId,
    room: &RoomId,
    after: u64,
    up_to: u64,
    mut visit: impl FnMut(u64, Mark),
) -> Result<()> {
    if up_to <= after {
        return Ok(());
    }
    let key = |pos: u64| encode_key::<(String, String, u64)>((user.as_str(), room.as_str(), pos));
    let range = KeyRange { lower: Some(key(after.saturating_add(1))), upper: Some(key(up_to.saturating_add(1))) };
    UNREAD_MARKS.scan_range(store, &range, Order::Ascending, |(_, _, pos), mark| {
        visit(pos, mark);
        true
    })?;
    Ok(())
}

pub(super) fn put(batch: &mut Batch, user: &UserId, room: &RoomId, pos: u64, mark: &Mark) {
    UNREAD_MARKS.put(batch, (user.as_str(), room.as_str(), pos), mark);
}

pub(super) fn delete(batch: &mut Batch, user: &UserId, room: &RoomId, pos: u64) {
    UNREAD_MARKS.delete(batch, (user.as_str(), room.as_str(), pos));
}

/// Deletes every mark of the user in the room (they left it).
pub(super) fn forget_room(store: &Store, batch: &mut Batch, user: &UserId, room: &RoomId) -> Result<()> {
    UNREAD_MARKS.scan_keys(store, &room_prefix(user, room), Order::Ascending, |(_, _, pos)| {
        delete(batch, user, room, pos);
        true
    })?;
    Ok(())
}

/// How far the marks of each (user, room) were last trimmed: the receipts' version it was
/// done for, and the lowest position a mark may still be at. Scans start there, so they
/// do not walk again over the deleted rows.
#[derive(Default)]
pub(super) struct Trimmed(parking_lot::Mutex<HashMap<(OwnedUserId, OwnedRoomId), (u64, u64)>>);

impl Trimmed {
    /// Deletes the user's marks in the room that can no longer count: `read_up_to(thread)`
    /// gives the read position of a timeline (`None` = main), `changed_at` the version of
    /// the receipts it comes from, `joined_at` where the user's join is.
    pub(super) fn trim(
        &self,
        store: &Store,
        (user, room): (&UserId, &RoomId),
        changed_at: u64,
        joined_at: u64,
        read_up_to: impl Fn(Option<&OwnedEventId>) -> u64,
    ) -> Result<()> {
        let key = (user.to_owned(), room.to_owned());
        let floor = match self.0.lock().get(&key) {
            Some(&(done, _)) if done >= changed_at => return Ok(()),
            Some(&(_, floor)) => floor,
            None => 0,
        };
        // Nothing after the main read position can be irrelevant in both views (thread
        // marks count in the main timeline for clients that do not split threads).
        let bound = read_up_to(None).max(joined_at);
        let mut batch = Batch::new();
        let mut lowest_kept = None;
        scan(store, user, room, floor.saturating_sub(1), bound, |pos, mark| {
            let dead = pos <= joined_at || mark.thread.as_ref().is_none_or(|t| pos <= read_up_to(Some(t)));
            if dead {
                delete(&mut batch, user, room, pos);
            } else {
                lowest_kept.get_or_insert(pos);
            }
        })?;
        if !batch.is_empty() {
            store.write(batch)?;
        }
        let floor = lowest_kept.unwrap_or(bound.saturating_add(1)).max(floor);
        self.0.lock().insert(key, (changed_at, floor));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_round_trip() {
        let marks = [
            Mark { own: true, ..Default::default() },
            Mark { notify: true, highlight: true, ..Default::default() },
            Mark { notify: true, thread: Some(ruma::owned_event_id!("$root:example.org")), ..Default::default() },
        ];
        for mark in marks {
            assert_eq!(Mark::decode_value(&mark.encode_value()).expect("decodes"), mark);
        }
        assert!(Mark::decode_value(&[]).is_err());
        assert!(Mark::decode_value(&[NOTIFY, b'x']).is_err(), "not an event id");
    }
}
