//! Unread marks: what each event means to each local member's unread counts, decided once
//! when the push follower evaluates the event (see [`super::notifications`]), so that a
//! sync adds up marks instead of evaluating every unread event against the user's rules.
//!
//! One row per event and room, not per member: the verdict most of the room's local
//! members got (notify, highlight, or nothing), and the members whose verdict differs (a
//! mention, a muted room, the sender's own event, which counts as having read what came
//! before it in that timeline). A room of a hundred members writes one small row per
//! message rather than a hundred. Events that mean nothing to anyone leave no row. The
//! verdict is the rules' at the time the event was evaluated, as Synapse's push actions
//! are: a rule changed later applies to later events. A redaction evaluates its target
//! again, cut down, so a mention that is redacted stops highlighting.
//!
//! The marks cover the stream from the position the follower stood at when this Hearth
//! first wrote them ([`MARKS_FROM`]) to the position it has reached ([`Coverage`]); counts
//! outside that span are made by evaluating the events, as before. Rows that can count for
//! no local member any more (each is joined after it, or has read past it in its
//! timeline) are deleted after receipts in the room (in rooms of many local members at
//! most once per [`TRIM_EVERY`]), and all of them once no local member is left.

use std::{
    collections::HashMap,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use ruma::{OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, UserId};

use crate::{
    error::Result,
    store::codec::{encode_key, CodecError, ValueCodec},
    store::{tables, Batch, KeyRange, Order, Store, Table},
};

/// (room, stream position) → the event's marks.
pub const UNREAD_MARKS: Table<(String, u64), Marks> = Table::new(tables::UNREAD_MARKS);
/// The key in the push state table of the position marks were first written after.
pub const MARKS_FROM: &str = "marks_from";
/// Least time between two trims of the rows of a room with many local members.
pub const TRIM_EVERY: Duration = Duration::from_secs(60);
/// Rooms with at most this many local members are trimmed after every receipt.
pub const TRIM_ALWAYS_UP_TO: usize = 16;

pub const OWN: u8 = 1;
pub const NOTIFY: u8 = 2;
pub const HIGHLIGHT: u8 = 4;

/// What one event means to the room's local members' unread counts.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Marks {
    /// The verdict of every member not listed ([`NOTIFY`], [`HIGHLIGHT`]).
    pub default: u8,
    /// The thread the event is in (`m.thread` relation), if any.
    pub thread: Option<OwnedEventId>,
    /// Members whose verdict differs from `default` (the sender with [`OWN`]).
    pub users: Vec<(OwnedUserId, u8)>,
}

impl Marks {
    /// From each member's verdict: the most common one becomes the default.
    pub fn from_verdicts(verdicts: Vec<(OwnedUserId, u8)>, thread: Option<OwnedEventId>) -> Self {
        let mut tally: [usize; 8] = [0; 8];
        for (_, flags) in &verdicts {
            tally[usize::from(*flags & 7)] += 1;
        }
        let default = (0..8u8)
            .filter(|f| f & OWN == 0)
            .max_by_key(|&f| (tally[usize::from(f)], std::cmp::Reverse(f)))
            .unwrap_or(0);
        let users = verdicts.into_iter().filter(|(_, flags)| *flags != default).collect();
        Marks { default, thread, users }
    }

    /// Whether the row says anything to anyone.
    pub fn is_empty(&self) -> bool {
        self.default == 0 && self.users.is_empty()
    }

    /// The verdict for `user`: ([`OWN`] | [`NOTIFY`] | [`HIGHLIGHT`]) bits.
    pub fn of(&self, user: &UserId) -> u8 {
        self.users.iter().find(|(u, _)| u == user).map_or(self.default, |(_, flags)| *flags)
    }
}

/// Flags byte, the thread root's id and each listed member, each string after its length
/// byte (event and user ids are at most 255 bytes).
impl ValueCodec for Marks {
    fn encode_value(&self) -> Vec<u8> {
        let root = self.thread.as_ref().map_or("", |t| t.as_str());
        let mut out = Vec::with_capacity(2 + root.len() + self.users.len() * 24);
        out.push(self.default);
        push_str(&mut out, root);
        for (user, flags) in &self.users {
            out.push(*flags);
            push_str(&mut out, user.as_str());
        }
        out
    }

    fn decode_value(bytes: &[u8]) -> Result<Self, CodecError> {
        let bad = || CodecError("undecodable unread marks".into());
        let (&default, mut rest) = bytes.split_first().ok_or_else(bad)?;
        let root = take_str(&mut rest).ok_or_else(bad)?;
        let thread = match root {
            "" => None,
            root => Some(OwnedEventId::try_from(root).map_err(|_| bad())?),
        };
        let mut users = Vec::new();
        while let Some((&flags, tail)) = rest.split_first() {
            rest = tail;
            let user = take_str(&mut rest).and_then(|u| OwnedUserId::try_from(u).ok()).ok_or_else(bad)?;
            users.push((user, flags));
        }
        Ok(Marks { default, thread, users })
    }
}

fn push_str(out: &mut Vec<u8>, s: &str) {
    // Ids are at most 255 bytes (checked where they are parsed); a longer one is cut to
    // nothing rather than written unreadably.
    let s = if s.len() > 255 { "" } else { s };
    out.push(s.len() as u8);
    out.extend_from_slice(s.as_bytes());
}

fn take_str<'a>(input: &mut &'a [u8]) -> Option<&'a str> {
    let (&len, rest) = input.split_first()?;
    let (s, rest) = rest.split_at_checked(usize::from(len))?;
    *input = rest;
    std::str::from_utf8(s).ok()
}

/// The span of the stream the marks cover, (from, to], once the follower has started.
#[derive(Default)]
pub struct Coverage {
    started: AtomicBool,
    from: AtomicU64,
    to: AtomicU64,
    /// Where this process's follower started: marks after it were made by this process.
    started_at: AtomicU64,
}

/// What [`Coverage`] says at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// Marks cover the stream after this position…
    pub from: u64,
    /// …up to this one.
    pub to: u64,
    /// The marks after this position were made by this process, with the push rules each
    /// user had then; a user's rules unchanged since this process started and since an
    /// event was marked give the same verdict when evaluated again.
    pub marked_since_start_from: u64,
}

impl Coverage {
    /// The span, or `None` before the follower has said where it stands.
    pub fn span(&self) -> Option<Span> {
        if !self.started.load(Ordering::Acquire) {
            return None;
        }
        Some(Span {
            from: self.from.load(Ordering::Acquire),
            to: self.to.load(Ordering::Acquire),
            marked_since_start_from: self.started_at.load(Ordering::Acquire),
        })
    }

    pub(super) fn start(&self, from: u64, to: u64) {
        self.from.store(from, Ordering::Release);
        self.to.store(to, Ordering::Release);
        self.started_at.store(to, Ordering::Release);
        self.started.store(true, Ordering::Release);
    }

    /// Marks up to `to` are written (call after the write).
    pub(super) fn reached(&self, to: u64) {
        self.to.fetch_max(to, Ordering::AcqRel);
    }
}

/// Visits the room's marks in (after, up_to] in `order`, as they concern `user`, until
/// `visit` returns `false`: the position, the user's verdict ([`Marks::of`]) and the
/// event's thread root, if any. Read
/// from the stored bytes without decoding the rows: a first sync counts every row since the
/// user's join in each of their rooms, and most rows name only their sender.
pub fn scan_for(
    store: &Store,
    room: &RoomId,
    user: &UserId,
    after: u64,
    up_to: u64,
    order: Order,
    mut visit: impl FnMut(u64, u8, Option<&str>) -> bool,
) -> Result<()> {
    if up_to <= after {
        return Ok(());
    }
    let key = |pos: u64| encode_key::<(String, u64)>((room.as_str(), pos));
    let range = KeyRange { lower: Some(key(after.saturating_add(1))), upper: Some(key(up_to.saturating_add(1))) };
    let mut bad = false;
    UNREAD_MARKS.scan_bytes(store, &range, order, |k, v| {
        let pos = k.last_chunk::<8>().map(|b| u64::from_be_bytes(*b));
        match (pos, verdict_of(v, user.as_str())) {
            (Some(pos), Some((flags, thread))) => visit(pos, flags, thread),
            _ => {
                bad = true;
                false
            }
        }
    })?;
    if bad {
        return Err(crate::error::Error::internal("undecodable unread marks"));
    }
    Ok(())
}

/// Visits the room's marks in (after, up_to], oldest first.
pub fn scan(store: &Store, room: &RoomId, after: u64, up_to: u64, mut visit: impl FnMut(u64, Marks)) -> Result<()> {
    if up_to <= after {
        return Ok(());
    }
    let key = |pos: u64| encode_key::<(String, u64)>((room.as_str(), pos));
    let range = KeyRange { lower: Some(key(after.saturating_add(1))), upper: Some(key(up_to.saturating_add(1))) };
    UNREAD_MARKS.scan_range(store, &range, Order::Ascending, |(_, pos), marks| {
        visit(pos, marks);
        true
    })?;
    Ok(())
}

/// A user's verdict and the thread root in a stored row (see the codec below), or `None`
/// if the row cannot be read.
fn verdict_of<'a>(mut bytes: &'a [u8], user: &str) -> Option<(u8, Option<&'a str>)> {
    let (&default, rest) = bytes.split_first()?;
    bytes = rest;
    let root = take_str(&mut bytes)?;
    let thread = (!root.is_empty()).then_some(root);
    while let Some((&flags, rest)) = bytes.split_first() {
        bytes = rest;
        if take_str(&mut bytes)? == user {
            return Some((flags, thread));
        }
    }
    Some((default, thread))
}

pub(super) fn get(store: &Store, room: &RoomId, pos: u64) -> Result<Option<Marks>> {
    Ok(UNREAD_MARKS.get(store, (room.as_str(), pos))?)
}

/// Writes the event's marks, or deletes them when they say nothing.
pub(super) fn put(batch: &mut Batch, room: &RoomId, pos: u64, marks: &Marks) {
    match marks.is_empty() {
        true => UNREAD_MARKS.delete(batch, (room.as_str(), pos)),
        false => UNREAD_MARKS.put(batch, (room.as_str(), pos), marks),
    }
}

/// Where one local member stands in a room, for trimming: their join, and their read
/// position in a timeline (`None` = main).
pub(super) struct Reader<'a> {
    pub joined_at: u64,
    pub read_up_to: ReadUpTo<'a>,
}

/// A member's read position in a timeline (`None` = main).
pub(super) type ReadUpTo<'a> = Box<dyn Fn(Option<&OwnedEventId>) -> u64 + 'a>;

impl Reader<'_> {
    /// Whether a mark at `pos` can never count for this member again: clients that do not
    /// split threads count thread events in the main timeline, so both must be past it.
    fn is_past(&self, pos: u64, thread: Option<&OwnedEventId>) -> bool {
        let main = (self.read_up_to)(None).max(self.joined_at);
        pos <= main && thread.is_none_or(|t| pos <= (self.read_up_to)(Some(t)).max(self.joined_at))
    }
}

/// When each room's rows were last trimmed, and the lowest position a row may still be
/// at: scans start there, so they do not walk again over deleted rows.
#[derive(Default)]
pub(super) struct Trimmed(parking_lot::Mutex<HashMap<OwnedRoomId, (Instant, u64)>>);

impl Trimmed {
    /// Whether the rows of a room with `members` local members may be trimmed now: a
    /// trim reads each member's receipts, so rooms with more than [`TRIM_ALWAYS_UP_TO`]
    /// of them are trimmed at most once per [`TRIM_EVERY`].
    pub(super) fn due(&self, room: &RoomId, members: usize) -> bool {
        members <= TRIM_ALWAYS_UP_TO || self.0.lock().get(room).is_none_or(|(at, _)| at.elapsed() >= TRIM_EVERY)
    }

    /// Deletes the room's rows that can count for none of `readers` (its local members).
    pub(super) fn trim(&self, store: &Store, room: &RoomId, readers: &[Reader<'_>]) -> Result<()> {
        let floor = self.0.lock().get(room).map_or(0, |(_, floor)| *floor);
        // No row after the lowest main read position can be past for everyone.
        let bound = readers.iter().map(|r| (r.read_up_to)(None).max(r.joined_at)).min().unwrap_or(u64::MAX - 1);
        let mut batch = Batch::new();
        let mut lowest_kept = None;
        scan(store, room, floor.saturating_sub(1), bound, |pos, marks| {
            if readers.iter().all(|r| r.is_past(pos, marks.thread.as_ref())) {
                UNREAD_MARKS.delete(&mut batch, (room.as_str(), pos));
            } else {
                lowest_kept.get_or_insert(pos);
            }
        })?;
        if !batch.is_empty() {
            store.write(batch)?;
        }
        let floor = lowest_kept.unwrap_or(bound.saturating_add(1)).max(floor);
        self.0.lock().insert(room.to_owned(), (Instant::now(), floor));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_round_trip() {
        let alice = ruma::owned_user_id!("@alice:example.org");
        let bob = ruma::owned_user_id!("@bob:example.org");
        let carol = ruma::owned_user_id!("@carol:example.org");
        let root = ruma::owned_event_id!("$root:example.org");
        let verdicts = vec![
            (alice.clone(), OWN),
            (bob.clone(), NOTIFY | HIGHLIGHT),
            (carol.clone(), NOTIFY),
            (carol.clone(), NOTIFY),
        ];
        let marks = Marks::from_verdicts(verdicts, Some(root));
        assert_eq!(marks.default, NOTIFY, "the most common verdict");
        assert_eq!((marks.of(&alice), marks.of(&bob), marks.of(&carol)), (OWN, NOTIFY | HIGHLIGHT, NOTIFY));
        assert_eq!(marks.of(&ruma::owned_user_id!("@dan:example.org")), NOTIFY);
        for marks in [marks, Marks::default(), Marks { default: OWN, ..Default::default() }] {
            assert_eq!(Marks::decode_value(&marks.encode_value()).expect("decodes"), marks);
        }
        assert!(Marks::decode_value(&[]).is_err());
        assert!(Marks::decode_value(&[NOTIFY, 1, b'x']).is_err(), "not an event id");
        assert!(Marks::decode_value(&[NOTIFY, 0, NOTIFY, 9, b'@']).is_err(), "cut short");
        assert!(Marks::from_verdicts(vec![(alice, 0)], None).is_empty());
    }

    #[test]
    fn verdicts_read_from_stored_rows_agree_with_decoded_ones() {
        let alice = ruma::owned_user_id!("@alice:example.org");
        let bob = ruma::owned_user_id!("@bob:example.org");
        let others = ["@carol:example.org", "@al:example.org", "@alice:example.org.evil"];
        let root = ruma::owned_event_id!("$root:example.org");
        let rows = [
            Marks::from_verdicts(vec![(alice.clone(), OWN), (bob.clone(), NOTIFY)], None),
            Marks::from_verdicts(vec![(alice.clone(), NOTIFY | HIGHLIGHT), (bob.clone(), 0)], Some(root)),
            Marks { default: NOTIFY, thread: None, users: Vec::new() },
        ];
        for marks in rows {
            let bytes = marks.encode_value();
            for user in [alice.as_str(), bob.as_str()].into_iter().chain(others) {
                let (flags, thread) = verdict_of(&bytes, user).expect("readable");
                let id = ruma::UserId::parse(user).unwrap();
                assert_eq!(flags, marks.of(&id), "{user}");
                assert_eq!(thread, marks.thread.as_ref().map(|t| t.as_str()));
            }
        }
        assert_eq!(verdict_of(&[], "@a:b"), None);
        assert_eq!(verdict_of(&[NOTIFY, 0, NOTIFY, 9, b'@'], "@a:b"), None, "cut short");
    }
}
