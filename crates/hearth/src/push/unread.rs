//! Unread notification counts per room, as sync reports them.
//!
//! The events after the user's read receipt (`m.read` or `m.read.private`) are counted
//! from the unread marks the push follower wrote when it evaluated them (see
//! [`super::marks`]). Where no marks cover the span (history from before this Hearth wrote
//! them, or events the follower has not reached yet), the events are evaluated here
//! against the user's push rules with ruma's evaluator, in the room's context (member
//! count, display name, power levels). The tally is kept in memory per (user, room) and carried
//! forward: a sync evaluates only the events that arrived since the last one, so a wake-up
//! costs what happened, not how much is unread. A tally starts over when the user's receipts
//! in the room or their push rules change. One sync evaluates at most [`MAX_COUNTED`]
//! events per room; a longer backlog is caught up over the following syncs.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
};

use futures_util::FutureExt;
use ruma::{
    events::room::member::MembershipState,
    push::{FlattenedJson, PushConditionRoomCtx, Ruleset},
    OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, UserId,
};

use crate::rooms::push_fields::PushFields;
use crate::{
    error::Result,
    rooms::{receipts::RECEIPTS, Rooms},
    store::{codec::encode_key, KeyRange, Order},
};

/// Most events evaluated for one room in one sync.
pub const MAX_COUNTED: usize = 1000;
/// A span of at most this many stream positions that the marks do not cover to its end
/// is evaluated whole (see [`Tally::advance`]).
const SHORT_SPAN: u64 = 64;

/// Unread counts of a room: the main timeline, and per thread root when asked to split.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct UnreadCounts {
    pub notifications: u64,
    pub highlights: u64,
    pub threads: BTreeMap<ruma::OwnedEventId, (u64, u64)>,
}

/// The thread an event belongs to (`m.relates_to` with `rel_type: m.thread`). Flattened
/// paths escape the dots inside keys.
pub(super) fn thread_root(event: &FlattenedJson) -> Option<ruma::OwnedEventId> {
    if event.get_str(r"content.m\.relates_to.rel_type")? != "m.thread" {
        return None;
    }
    ruma::OwnedEventId::try_from(event.get_str(r"content.m\.relates_to.event_id")?).ok()
}

/// The user's read positions in a room: stream positions of the events their receipts
/// point at, by thread ("" unthreaded, "main", or a thread root), public and private alike.
pub(super) struct ReadPositions {
    by_thread: BTreeMap<String, u64>,
    /// Highest stream position of any of these receipts' own changes: the tally's key.
    pub(super) changed_at: u64,
}

impl ReadPositions {
    pub(super) fn load(rooms: &Rooms, room_id: &RoomId, user: &UserId) -> Result<Self> {
        let mut out = ReadPositions { by_thread: BTreeMap::new(), changed_at: 0 };
        let range = KeyRange::prefix(&encode_key::<(String, String)>((room_id.as_str(), user.as_str())));
        let mut receipts = Vec::new();
        RECEIPTS.scan_range(&rooms.store, &range, Order::Ascending, |(_, _, kind, thread), r| {
            receipts.push((kind, thread, r));
            true
        })?;
        for (kind, thread, r) in receipts {
            let (kind, thread) = (kind.as_str(), thread.as_str());
            if kind != "m.read" && kind != "m.read.private" {
                continue;
            }
            out.changed_at = out.changed_at.max(r.stream);
            let pos = rooms.event_meta(&r.event_id)?.map_or(0, |m| m.stream);
            let slot = out.by_thread.entry(thread.to_owned()).or_default();
            *slot = (*slot).max(pos);
        }
        Ok(out)
    }

    fn unthreaded(&self) -> u64 {
        self.by_thread.get("").copied().unwrap_or(0)
    }

    /// Where reading stopped in a timeline (`None` = main).
    pub(super) fn read_up_to(&self, bucket: Option<&OwnedEventId>) -> u64 {
        let key = bucket.map_or("main", |root| root.as_str());
        self.unthreaded().max(self.by_thread.get(key).copied().unwrap_or(0))
    }
}

/// A running count for one (user, room), valid while its key matches.
#[derive(Clone)]
struct Tally {
    /// (push rules version, receipts changed at, counting threads apart).
    key: (u64, u64, bool),
    /// Events up to this stream position are counted.
    counted_to: u64,
    /// Last position read per timeline (None = main): a receipt, or the user's own event.
    read: BTreeMap<Option<OwnedEventId>, u64>,
    counts: UnreadCounts,
    /// The user's receipts in the room, as read when no receipt was newer than `receipts_at`.
    receipts: Arc<ReadPositions>,
    receipts_at: u64,
}

/// A push context and the room state snapshot it was read at.
type KeptContext = (Option<u64>, Arc<PushConditionRoomCtx>);

#[derive(Default)]
pub(super) struct UnreadCache {
    tallies: Mutex<HashMap<(OwnedUserId, OwnedRoomId), Tally>>,
    /// The push context of (user, room), with the room state snapshot it was read at.
    /// Room → member → context: nested, so that a lookup copies no id.
    contexts: Mutex<HashMap<OwnedRoomId, HashMap<OwnedUserId, KeptContext>>>,
}

impl UnreadCache {
    /// Unread notification and highlight counts of a room for a user up to `until`. With
    /// `split_threads`, events in threads are counted per thread against that thread's
    /// receipt (MSC3773).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn counts(
        &self,
        rooms: &Rooms,
        rules: (&Ruleset, &Arc<PushFields>),
        rules_version: u64,
        room_id: &RoomId,
        user: &UserId,
        until: u64,
        split_threads: bool,
        marks: Option<super::marks::Span>,
    ) -> Result<UnreadCounts> {
        let cache_key = (user.to_owned(), room_id.to_owned());
        let cached = {
            let tallies = self.tallies.lock().unwrap_or_else(|e| e.into_inner());
            tallies.get(&cache_key).cloned()
        };
        // The receipts read for the tally hold while none was written in the room since.
        let receipts = match &cached {
            Some(t) if !rooms.receipts_changed_after(room_id, t.receipts_at) => t.receipts.clone(),
            _ => Arc::new(ReadPositions::load(rooms, room_id, user)?),
        };
        let key = (rules_version, receipts.changed_at, split_threads);
        let mut tally = match cached.filter(|t| t.key == key) {
            Some(t) if t.counted_to >= until => {
                if t.counted_to == until {
                    return Ok(t.counts);
                }
                // A sync behind the tally (a concurrent request with an older snapshot):
                // count afresh without disturbing the cache.
                let context = || self.context(rooms, room_id, user);
                let tally = fresh(receipts, joined_at(rooms, room_id, user)?, until, key);
                return Ok(tally.advance(rooms, rules, room_id, user, until, marks, &context)?.counts);
            }
            Some(t) => t,
            None => fresh(receipts, joined_at(rooms, room_id, user)?, until, key),
        };
        tally.receipts_at = tally.receipts_at.max(until);
        tally = tally.advance(rooms, rules, room_id, user, until, marks, &|| self.context(rooms, room_id, user))?;
        let counts = tally.counts.clone();
        let mut tallies = self.tallies.lock().unwrap_or_else(|e| e.into_inner());
        // Keep the furthest tally if two syncs raced.
        if tallies.get(&cache_key).is_none_or(|t| t.key != key || t.counted_to <= tally.counted_to) {
            tallies.insert(cache_key, tally);
        }
        Ok(counts)
    }
}

impl UnreadCache {
    /// The room's push context for the user (member count, display name, power levels),
    /// read again only when the room's state has changed.
    pub(super) fn context(&self, rooms: &Rooms, room_id: &RoomId, user: &UserId) -> Result<Arc<PushConditionRoomCtx>> {
        let snapshot = rooms.snapshot(room_id)?;
        let contexts = self.contexts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, ctx)) = contexts.get(room_id).and_then(|members| members.get(user)) {
            if *at == snapshot {
                return Ok(ctx.clone());
            }
        }
        drop(contexts);
        let ctx = Arc::new(super::room_context(rooms, room_id, user)?);
        let mut contexts = self.contexts.lock().unwrap_or_else(|e| e.into_inner());
        contexts.entry(room_id.to_owned()).or_default().insert(user.to_owned(), (snapshot, ctx.clone()));
        Ok(ctx)
    }
}

/// The stream position up to which `user` has read the room's main timeline (their
/// receipts, public or private, unthreaded or `main`).
pub(super) fn read_up_to(rooms: &Rooms, room_id: &RoomId, user: &UserId) -> Result<u64> {
    Ok(ReadPositions::load(rooms, room_id, user)?.read_up_to(None))
}

/// A tally with nothing counted yet, from receipts read at stream position `at`. Counting
/// starts after the unthreaded receipt, and never before the user's join: what was said
/// before it was never theirs to be notified of (Synapse evaluates an event for the room's
/// members of its time), and a first sync in a room with a long history would otherwise
/// evaluate up to [`MAX_COUNTED`] events only for the join to reset the count.
fn fresh(receipts: Arc<ReadPositions>, joined_at: u64, at: u64, key: (u64, u64, bool)) -> Tally {
    let mut read = BTreeMap::new();
    read.insert(None, receipts.read_up_to(None));
    let counted_to = receipts.unthreaded().max(joined_at);
    Tally { key, counted_to, read, counts: UnreadCounts::default(), receipts, receipts_at: at }
}

/// Where the user's current join to the room is in the stream (0 if not joined).
pub(super) fn joined_at(rooms: &Rooms, room_id: &RoomId, user: &UserId) -> Result<u64> {
    let record = rooms.membership(room_id, user)?;
    Ok(record.filter(|r| r.membership == MembershipState::Join).map_or(0, |r| r.stream))
}

/// What one event does to a tally: the user's own, or the actions their rules gave it.
struct Verdict {
    own: bool,
    notify: bool,
    highlight: bool,
}

/// Whether the events in (`counted_to`, `until`] are evaluated whole rather than counted
/// from the marks and the rest evaluated: when the follower has not reached `until` and
/// little is to be counted (a wake-up), evaluating those few events reads one range where
/// marks and then the rest would read two. Only where evaluating again gives what the
/// marks say: every event in the span was marked by this process (which read the rules
/// each user had then) after the user's rules last changed (`rules_version`, 0 if not
/// since start). Marks keep the verdict of the rules of their time: a room muted after a
/// message and unmuted later must not make that message count.
fn evaluated_whole(counted_to: u64, until: u64, rules_version: u64, span: super::marks::Span) -> bool {
    until.saturating_sub(counted_to) <= SHORT_SPAN
        && span.to < until
        && counted_to >= rules_version.max(span.marked_since_start_from)
}

impl Tally {
    /// Counts the events after `counted_to` up to `until`: from the unread marks where they
    /// cover the span (`marks`, see [`super::marks`]), by evaluating the events elsewhere
    /// (at most [`MAX_COUNTED`] of them per call).
    #[allow(clippy::too_many_arguments)]
    fn advance(
        mut self,
        rooms: &Rooms,
        rules: (&Ruleset, &Arc<PushFields>),
        room_id: &RoomId,
        user: &UserId,
        until: u64,
        marks: Option<super::marks::Span>,
        context: &dyn Fn() -> Result<Arc<PushConditionRoomCtx>>,
    ) -> Result<Self> {
        // An empty span when the marks are not known yet, or when a short span is
        // evaluated whole (see `evaluated_whole`).
        let (marks_from, marks_to) = match marks {
            Some(span) if evaluated_whole(self.counted_to, until, self.key.0, span) => (u64::MAX, 0),
            Some(span) => (span.from, span.to),
            None => (u64::MAX, 0),
        };
        while self.counted_to < until {
            if self.counted_to >= marks_from && self.counted_to < marks_to {
                let end = until.min(marks_to);
                // All in one timeline (threads not split), the user's own event resets
                // the count, so what came before their last one in the span counts for
                // nothing: read back from the end to it (a first sync in a room where the
                // user talks reads a few rows, not every row since their join), then note
                // in order. Split, every thread has its own count: read forward.
                let split = self.key.2;
                let order = if split { Order::Ascending } else { Order::Descending };
                let mut seen = Vec::new();
                super::marks::scan_for(
                    &rooms.store,
                    room_id,
                    user,
                    self.counted_to,
                    end,
                    order,
                    |pos, flags, thread| {
                        if flags != 0 {
                            let thread = thread.filter(|_| split).and_then(|t| OwnedEventId::try_from(t).ok());
                            seen.push((pos, flags, thread));
                        }
                        split || flags & super::marks::OWN == 0
                    },
                )?;
                if !split {
                    seen.reverse();
                }
                for (pos, flags, bucket) in seen {
                    let verdict = Verdict {
                        own: flags & super::marks::OWN != 0,
                        notify: flags & super::marks::NOTIFY != 0,
                        highlight: flags & super::marks::HIGHLIGHT != 0,
                    };
                    self.note(pos, bucket, verdict);
                }
                self.counted_to = end;
            } else {
                let end = if self.counted_to < marks_from { until.min(marks_from) } else { until };
                let capped = self.evaluate(rooms, rules, room_id, user, end, context)?;
                if capped {
                    break;
                }
            }
        }
        Ok(self)
    }

    /// Evaluates the events after `counted_to` up to `until`, at most [`MAX_COUNTED`];
    /// whether it stopped there.
    fn evaluate(
        &mut self,
        rooms: &Rooms,
        (rules, fields): (&Ruleset, &Arc<PushFields>),
        room_id: &RoomId,
        user: &UserId,
        until: u64,
        context: &dyn Fn() -> Result<Arc<PushConditionRoomCtx>>,
    ) -> Result<bool> {
        let page = rooms.page_for_push(room_id, self.counted_to, MAX_COUNTED, until, fields)?;
        let capped = page.len() == MAX_COUNTED;
        self.counted_to = match page.last() {
            Some((last, _)) if capped => *last,
            _ => until,
        };
        if page.is_empty() {
            return Ok(false);
        }
        let ctx = context()?;
        for (pos, event) in page {
            // The rules see the event as stored (as Synapse's evaluator does), with no
            // conversion to the client format, whose only extra field is `event_id`.
            let bucket = if self.key.2 { thread_root(&event) } else { None };
            let verdict = if event.get_str("sender") == Some(user.as_str()) {
                Verdict { own: true, notify: false, highlight: false }
            } else {
                let Some(actions) = first_match(rules, &event, &ctx) else { continue };
                Verdict {
                    own: false,
                    notify: actions.iter().any(|a| a.should_notify()),
                    highlight: actions.iter().any(|a| a.is_highlight()),
                }
            };
            self.note(pos, bucket, verdict);
        }
        Ok(capped)
    }

    /// Adds the event at `pos` in timeline `bucket` (None = main) to the counts.
    fn note(&mut self, pos: u64, bucket: Option<OwnedEventId>, verdict: Verdict) {
        let receipts = &self.receipts;
        let read_pos = *self.read.entry(bucket.clone()).or_insert_with(|| receipts.read_up_to(bucket.as_ref()));
        if verdict.own {
            // Sending counts as having read everything before it in that timeline. A
            // receipt further on (threaded receipts start the count before it) stays.
            match &bucket {
                None => (self.counts.notifications, self.counts.highlights) = (0, 0),
                Some(root) => {
                    self.counts.threads.remove(root);
                }
            }
            self.read.insert(bucket, read_pos.max(pos));
            return;
        }
        if pos <= read_pos {
            return;
        }
        let (notify, highlight) = (u64::from(verdict.notify), u64::from(verdict.highlight));
        match bucket {
            None => {
                self.counts.notifications += notify;
                self.counts.highlights += highlight;
            }
            Some(root) => {
                let entry = self.counts.threads.entry(root).or_default();
                entry.0 += notify;
                entry.1 += highlight;
            }
        }
    }
}

/// The actions of the first rule that applies, in the spec's order (override, content,
/// room, sender, underride), or `None`. Ruleset::get_actions does the same from a raw
/// event; this takes the event already flattened. ruma's evaluator is async only for an
/// optional feature, so it is ready at once.
pub(super) fn first_match<'a>(
    rules: &'a Ruleset,
    event: &FlattenedJson,
    ctx: &PushConditionRoomCtx,
) -> Option<&'a [ruma::push::Action]> {
    for rule in rules {
        if rule.applies(event, ctx).now_or_never()? {
            return Some(rule.actions());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::push::marks::Span;

    /// Marks cover (100, 150]; this process's follower started at 120.
    const SPAN: Span = Span { from: 100, to: 150, marked_since_start_from: 120 };

    #[test]
    fn a_wake_up_evaluates_its_few_events_where_the_marks_would_say_the_same() {
        assert!(evaluated_whole(140, 160, 0, SPAN), "rules unchanged since start, events marked since");
        assert!(evaluated_whole(140, 160, 130, SPAN), "rules changed before every event of the span");
    }

    #[test]
    fn marks_are_read_where_evaluating_again_could_differ() {
        assert!(!evaluated_whole(140, 160, 145, SPAN), "rules changed after an event the follower marked");
        assert!(!evaluated_whole(110, 160, 0, SPAN), "events marked before this process started");
        assert!(!evaluated_whole(140, 150, 0, SPAN), "the follower has reached the end: marks alone");
        assert!(!evaluated_whole(140, 140 + SHORT_SPAN + 1, 0, SPAN), "a long span");
    }
}
