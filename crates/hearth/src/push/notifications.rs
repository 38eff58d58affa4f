//! The notification log: for each local user, the events their push rules said to notify
//! them of, with the actions (`GET /notifications` reads it; the push sender delivers
//! it to the user's pushers).
//!
//! [`Notifications::evaluate_between`] follows the event stream from a persisted position,
//! as the federation sender does: each new event is evaluated for the room's local
//! members (and a local invitee; an invite from another server, which is not in the event
//! stream, is read from [`REMOTE_INVITES_BY_POS`]), never for its sender, and the rows it
//! yields are written
//! in one batch with the new position. After `kill -9` evaluation resumes at the last
//! position written: no event is logged twice, none is skipped. On the first start the
//! position is "now": history is not pushed.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
};

use ruma::{
    events::{room::member::MembershipState, TimelineEventType},
    push::{Action, FlattenedJson},
    serde::Raw,
    OwnedEventId, OwnedRoomId, OwnedServerName, OwnedUserId, UserId,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{marks, Push};
use crate::{
    error::{Error, Result},
    rooms::{remote::REMOTE_INVITES_BY_POS, Rooms},
    store::codec::json_value,
    store::{tables, Batch, KeyRange, Order, Store, Table},
    stream::StreamEntry,
    time::now_millis,
    users::account_data::AccountData,
};

/// The push context of a room on another server that `user` is invited to and that this
/// server does not hold: no members here, the user's own name, default power levels
/// (what `.m.rule.invite_for_me` needs, it looks at the event alone).
fn invite_context(room: &ruma::RoomId, user: &UserId) -> ruma::push::PushConditionRoomCtx {
    ruma::push::PushConditionRoomCtx::new(
        room.to_owned(),
        ruma::UInt::default(),
        user.to_owned(),
        user.localpart().to_owned(),
    )
}

/// The event as push rules read it.
fn flatten(pdu: &crate::rooms::pdu::Pdu) -> Result<FlattenedJson> {
    let raw: Raw<Value> =
        Raw::from_json(serde_json::value::to_raw_value(&pdu.json).map_err(|e| Error::internal(e.to_string()))?);
    Ok(FlattenedJson::from_raw(&raw))
}

/// Every string value of an event, lower-cased, one per line: what push rules compare
/// with a user's identity.
fn lowercase_strings(json: &ruma::CanonicalJsonObject) -> String {
    fn walk(v: &ruma::CanonicalJsonValue, out: &mut String) {
        match v {
            ruma::CanonicalJsonValue::String(s) => {
                out.push_str(&s.to_lowercase());
                out.push('\n');
            }
            ruma::CanonicalJsonValue::Array(list) => list.iter().for_each(|v| walk(v, out)),
            ruma::CanonicalJsonValue::Object(map) => map.values().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = String::new();
    json.values().for_each(|v| walk(v, &mut out));
    out
}

/// Whether an event (its [`lowercase_strings`]) may name `user`: their localpart (which
/// their user id holds) or their display name in the room appears in one of its values.
/// Only rules of a user's own identity read these, so for events that name nobody the
/// rules of one class agree.
fn names(text: &str, user: &UserId, ctx: &ruma::push::PushConditionRoomCtx) -> bool {
    let display_name = ctx.user_display_name.to_lowercase();
    text.contains(&user.localpart().to_lowercase()) || (!display_name.is_empty() && text.contains(&display_name))
}

/// The unread-mark bits of a user's actions for an event.
fn verdict(actions: &[Action]) -> u8 {
    let notify = if actions.iter().any(Action::should_notify) { marks::NOTIFY } else { 0 };
    let highlight = if actions.iter().any(Action::is_highlight) { marks::HIGHLIGHT } else { 0 };
    notify | highlight
}

/// One notification: an event the user's rules said to notify them of.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Notification {
    pub room_id: OwnedRoomId,
    pub event_id: OwnedEventId,
    pub actions: Vec<Action>,
    /// When it was logged, in ms.
    pub ts: u64,
    /// The event's type (for `missed_calls`, without reading the event).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

json_value!(Notification);

impl Notification {
    pub fn highlight(&self) -> bool {
        self.actions.iter().any(Action::is_highlight)
    }
}

/// (user, stream position of the event) → notification.
pub const NOTIFICATIONS: Table<(String, u64), Notification> = Table::new(tables::NOTIFICATIONS);
/// `"position"` → the stream position evaluated up to.
pub const PUSH_STATE: Table<String, u64> = Table::new(tables::PUSH_STATE);

/// Most stream positions evaluated in one write.
const EVALUATE_CHUNK: usize = 500;
/// Most notifications kept per user; older ones are dropped as new ones come.
pub const MAX_KEPT_PER_USER: usize = 1000;
/// How far past [`MAX_KEPT_PER_USER`] a user's log may grow before it is trimmed: the
/// trim reads the user's whole log, so it runs once per this many notifications rather
/// than after each.
const TRIM_SLACK: usize = 100;

/// Reads and writes the log.
pub struct Notifications {
    store: Arc<Store>,
    rooms: Arc<Rooms>,
    account_data: Arc<AccountData>,
    push: Arc<Push>,
    own: OwnedServerName,
    /// Each user's log as far as this process knows (see [`Kept`]).
    kept: parking_lot::Mutex<HashMap<OwnedUserId, Kept>>,
    /// Where unread marks begin, until the first evaluation has written it.
    marks_from_unwritten: parking_lot::Mutex<Option<u64>>,
}

/// What is known of one user's log without reading it: counted when the user is first
/// notified, then kept up as rows are added and trimmed. The trim reads forward from
/// `from`, so it never walks again over the rows it deleted before (RocksDB keeps their
/// tombstones for a while, and a walk over them costs as much as over live rows).
#[derive(Clone, Copy)]
struct Kept {
    rows: usize,
    /// No row of the user's is below this position.
    from: u64,
}

impl Notifications {
    pub fn new(
        store: Arc<Store>,
        rooms: Arc<Rooms>,
        account_data: Arc<AccountData>,
        push: Arc<Push>,
        own: OwnedServerName,
    ) -> Self {
        Notifications {
            store,
            rooms,
            account_data,
            push,
            own,
            kept: Default::default(),
            marks_from_unwritten: Default::default(),
        }
    }

    /// Invites of local users to rooms on other servers in (since, until].
    fn remote_invites(&self, since: u64, until: u64) -> Result<Vec<(u64, StreamEntry)>> {
        let range = KeyRange {
            lower: Some(crate::store::codec::encode_key::<u64>(since.saturating_add(1))),
            upper: Some(crate::store::codec::encode_key::<u64>(until.saturating_add(1))),
        };
        let mut out = Vec::new();
        REMOTE_INVITES_BY_POS.scan_range(&self.store, &range, Order::Ascending, |pos, entry| {
            out.push((pos, entry));
            true
        })?;
        Ok(out)
    }

    /// The position evaluated up to; on the first start, now.
    pub fn position(&self) -> Result<u64> {
        Ok(PUSH_STATE.get(&self.store, "position")?.unwrap_or_else(|| self.rooms.stream_now()))
    }

    /// Where the follower starts: the position evaluated up to. Unread marks cover the
    /// stream from where the first follower that wrote them started; that start is written
    /// with the position, so that no span is claimed that no follower marked.
    ///
    /// A first start writes that position with the first evaluation, not at once: a
    /// start writes nothing (an idle Hearth on a new database has touched no memtable),
    /// and if it stops before, the next start begins again from where it stands.
    pub fn start(&self) -> Result<u64> {
        let position = self.position()?;
        let from = match PUSH_STATE.get(&self.store, marks::MARKS_FROM)? {
            Some(from) => from,
            None => {
                *self.marks_from_unwritten.lock() = Some(position);
                position
            }
        };
        self.push.marks.start(from, position);
        Ok(position)
    }

    /// A redaction's target was cut down: the joined local members' marks of it are made
    /// again from what is left of it (a redacted mention no longer highlights). Marks
    /// already trimmed stay gone, and the sender's own stays.
    fn mark_redacted(
        &self,
        batch: &mut Batch,
        room: &ruma::RoomId,
        target: &ruma::EventId,
        joined: &[OwnedUserId],
    ) -> Result<()> {
        let Some(meta) = self.rooms.event_meta(target)? else { return Ok(()) };
        if meta.room_id != room || meta.redacted_by.is_none() {
            return Ok(());
        }
        let Some(old) = marks::get(&self.store, room, meta.stream)? else { return Ok(()) };
        let Some(pdu) = self.rooms.pdu_shared(target)? else { return Ok(()) };
        let flat = flatten(&pdu)?;
        let mut verdicts: Vec<(OwnedUserId, u8)> = Vec::with_capacity(joined.len());
        if old.of(&pdu.sender) & marks::OWN != 0 {
            verdicts.push((pdu.sender.clone(), marks::OWN));
        }
        for user in joined.iter().filter(|u| **u != pdu.sender) {
            let (_, rules, _, _) = self.push.ruleset(&self.account_data, user)?;
            let ctx = self.push.context(&self.rooms, room, user)?;
            verdicts.push((user.clone(), verdict(super::unread::first_match(&rules, &flat, &ctx).unwrap_or_default())));
        }
        marks::put(batch, room, meta.stream, &marks::Marks::from_verdicts(verdicts, super::unread::thread_root(&flat)));
        Ok(())
    }

    /// Evaluates the events in (since, until] (at most [`EVALUATE_CHUNK`]); returns the
    /// position reached and the users who got a notification.
    pub fn evaluate_between(&self, since: u64, until: u64) -> Result<(u64, BTreeSet<OwnedUserId>)> {
        let events = self.rooms.stream.events_between(since, until)?;
        let (events, reached) = if events.len() > EVALUATE_CHUNK {
            (&events[..EVALUATE_CHUNK], events[EVALUATE_CHUNK - 1].0)
        } else {
            (&events[..], until)
        };
        // With the invites from other servers in the same span (`true`: such an invite).
        let mut events: Vec<(u64, StreamEntry, bool)> = events.iter().map(|(p, e)| (*p, e.clone(), false)).collect();
        events.extend(self.remote_invites(since, reached)?.into_iter().map(|(p, e)| (p, e, true)));
        events.sort_by_key(|(p, _, _)| *p);
        let mut batch = Batch::new();
        let mut notified: BTreeMap<OwnedUserId, usize> = BTreeMap::new();
        let mut left: BTreeSet<OwnedRoomId> = BTreeSet::new();
        let now = now_millis();
        for (pos, entry, remote_invite) in &events {
            let Some(pdu) = self.rooms.pdu_shared(&entry.event_id)? else { continue };
            // A room elsewhere that the invitee is invited to has no members here.
            let joined: Vec<OwnedUserId> = match remote_invite {
                true => Vec::new(),
                false => self
                    .rooms
                    .members_shared(&entry.room_id, &MembershipState::Join)?
                    .iter()
                    .filter(|u| u.server_name() == self.own)
                    .cloned()
                    .collect(),
            };
            // (user, whether joined): an invite notifies its (local) invitee, who is not.
            let mut recipients: Vec<(OwnedUserId, bool)> = joined.iter().map(|u| (u.clone(), true)).collect();
            if pdu.kind == TimelineEventType::RoomMember {
                let target = pdu.state_key.as_deref().and_then(|k| OwnedUserId::try_from(k).ok());
                let membership = pdu.content_value()["membership"].as_str().map(str::to_owned);
                if let Some(target) = target.filter(|t| t.server_name() == self.own) {
                    match membership.as_deref() {
                        Some("invite") if !joined.contains(&target) => recipients.push((target, false)),
                        // Gone from the room: the rows they held back may go.
                        Some("leave" | "ban") => {
                            left.insert(entry.room_id.clone());
                        }
                        _ => {}
                    }
                }
            }
            recipients.retain(|(u, _)| *u != pdu.sender);
            let flat = flatten(&pdu)?;
            // Each joined local member's verdict, for the event's unread marks.
            let mut verdicts: Vec<(OwnedUserId, u8)> = Vec::with_capacity(joined.len());
            if joined.contains(&pdu.sender) {
                verdicts.push((pdu.sender.clone(), marks::OWN));
            }
            if let Some(target) = pdu.redaction_target() {
                self.mark_redacted(&mut batch, &entry.room_id, &target, &joined)?;
            }
            // The event's string values, lower-cased, read once (see `names`), and the
            // actions found per rules class for members it does not name.
            let text = std::cell::OnceCell::new();
            let mut by_class: HashMap<super::ClassKey, Arc<[Action]>> = HashMap::new();
            for (user, member) in recipients {
                let (_, rules, _, class) = self.push.ruleset(&self.account_data, &user)?;
                let ctx = match remote_invite {
                    true => Arc::new(invite_context(&entry.room_id, &user)),
                    false => self.push.context(&self.rooms, &entry.room_id, &user)?,
                };
                let evaluate = || -> Arc<[Action]> {
                    Arc::from(super::unread::first_match(&rules, &flat, &ctx).unwrap_or_default())
                };
                // Members whose rules differ only in their own identity get the same
                // actions from an event that names none of them: evaluated once per class.
                let shared = !*remote_invite && !names(text.get_or_init(|| lowercase_strings(&pdu.json)), &user, &ctx);
                let actions = match shared {
                    true => by_class.entry(class).or_insert_with(evaluate).clone(),
                    false => evaluate(),
                };
                let actions = &actions[..];
                let notify = actions.iter().any(Action::should_notify);
                if member {
                    verdicts.push((user.clone(), verdict(actions)));
                }
                if !notify {
                    continue;
                }
                let row = Notification {
                    room_id: entry.room_id.clone(),
                    event_id: entry.event_id.clone(),
                    actions: actions.to_vec(),
                    ts: now,
                    kind: Some(pdu.kind.to_string()),
                };
                NOTIFICATIONS.put(&mut batch, (user.as_str(), *pos), &row);
                *notified.entry(user).or_default() += 1;
            }
            let event_marks = marks::Marks::from_verdicts(verdicts, super::unread::thread_root(&flat));
            if !event_marks.is_empty() {
                marks::put(&mut batch, &entry.room_id, *pos, &event_marks);
            }
        }
        PUSH_STATE.put(&mut batch, "position", &reached);
        let unwritten = *self.marks_from_unwritten.lock();
        if let Some(from) = unwritten {
            PUSH_STATE.put(&mut batch, marks::MARKS_FROM, &from);
        }
        // Not waited for on disk: nothing is acknowledged by it. After a crash the follower
        // starts again from the last position that reached the disk, and its rows and marks,
        // written in the same batch as the position, are written again alike.
        self.store.write_deferred(batch)?;
        if unwritten.is_some() {
            *self.marks_from_unwritten.lock() = None;
        }
        self.push.marks.reached(reached);
        for room in left {
            self.trim_marks(&room)?;
        }
        for (user, added) in &notified {
            let known = self.kept.lock().get(user).copied();
            let mut kept = match known {
                Some(k) => Kept { rows: k.rows + added, ..k },
                None => self.count(user)?,
            };
            if kept.rows > MAX_KEPT_PER_USER + TRIM_SLACK {
                kept = self.trim(user, kept)?;
            }
            self.kept.lock().insert(user.clone(), kept);
        }
        Ok((reached, notified.into_keys().collect()))
    }

    /// Reads how many rows a user has, and where they start.
    fn count(&self, user: &UserId) -> Result<Kept> {
        let range = KeyRange::prefix(&crate::store::codec::encode_key::<String>(user.as_str()));
        let mut kept = Kept { rows: 0, from: 0 };
        NOTIFICATIONS.scan_keys(&self.store, &range, Order::Ascending, |(_, pos)| {
            if kept.rows == 0 {
                kept.from = pos;
            }
            kept.rows += 1;
            true
        })?;
        Ok(kept)
    }

    /// Drops a user's oldest notifications past [`MAX_KEPT_PER_USER`].
    fn trim(&self, user: &UserId, kept: Kept) -> Result<Kept> {
        let excess = kept.rows.saturating_sub(MAX_KEPT_PER_USER);
        let user_range = KeyRange::prefix(&crate::store::codec::encode_key::<String>(user.as_str()));
        let range = KeyRange {
            lower: Some(crate::store::codec::encode_key::<(String, u64)>((user.as_str(), kept.from))),
            upper: user_range.upper,
        };
        let mut old = Vec::with_capacity(excess);
        NOTIFICATIONS.scan_keys(&self.store, &range, Order::Ascending, |(_, pos)| {
            old.push(pos);
            old.len() < excess
        })?;
        let Some(&last) = old.last() else { return Ok(Kept { rows: 0, from: kept.from }) };
        let mut batch = Batch::new();
        for pos in &old {
            NOTIFICATIONS.delete(&mut batch, (user.as_str(), *pos));
        }
        self.store.write(batch)?;
        Ok(Kept { rows: kept.rows - old.len(), from: last + 1 })
    }

    /// A user's notifications after stream position `after`, oldest first, at most `limit`.
    pub fn after(&self, user: &UserId, after: u64, limit: usize) -> Result<Vec<(u64, Notification)>> {
        let range = KeyRange::prefix(&crate::store::codec::encode_key::<String>(user.as_str()));
        let mut out = Vec::new();
        NOTIFICATIONS.scan_range(&self.store, &range, Order::Ascending, |(_, pos), n| {
            if pos > after {
                out.push((pos, n));
            }
            out.len() < limit
        })?;
        Ok(out)
    }

    /// A user's notifications before stream position `before` (all with `None`), newest
    /// first, at most `limit`, only highlights if asked: `GET /notifications`.
    pub fn page(
        &self,
        user: &UserId,
        before: Option<u64>,
        limit: usize,
        only_highlight: bool,
    ) -> Result<Vec<(u64, Notification)>> {
        let range = KeyRange::prefix(&crate::store::codec::encode_key::<String>(user.as_str()));
        let mut out = Vec::new();
        NOTIFICATIONS.scan_range(&self.store, &range, Order::Descending, |(_, pos), n| {
            if before.is_none_or(|b| pos < b) && (!only_highlight || n.highlight()) {
                out.push((pos, n));
            }
            out.len() < limit
        })?;
        Ok(out)
    }

    /// Whether the user has read the room past stream position `pos`.
    pub fn is_read(&self, user: &UserId, room_id: &ruma::RoomId, pos: u64) -> Result<bool> {
        Ok(super::unread::read_up_to(&self.rooms, room_id, user)? >= pos)
    }

    /// The badge a user's phone shows: the number of rooms with unread notifications (as
    /// Synapse counts by default).
    pub fn badge(&self, user: &UserId) -> Result<u64> {
        let until = self.rooms.stream_now();
        let mut rooms_with_unread = 0;
        for room in self.rooms.joined_rooms(user)? {
            let counts = self.push.unread_counts(&self.rooms, &self.account_data, &room, user, until, false)?;
            if counts.notifications > 0 {
                rooms_with_unread += 1;
            }
        }
        Ok(rooms_with_unread)
    }

    /// The calls that rang for the user (`m.call.invite` notifications) in rooms they have
    /// not read since: the gateway's `missed_calls`. Looks at the newest
    /// [`MAX_KEPT_PER_USER`] notifications, which is all that is kept.
    pub fn missed_calls(&self, user: &UserId) -> Result<u64> {
        let mut missed = 0;
        for (pos, n) in self.page(user, None, MAX_KEPT_PER_USER, false)? {
            if n.kind.as_deref() == Some("m.call.invite") && !self.is_read(user, &n.room_id, pos)? {
                missed += 1;
            }
        }
        Ok(missed)
    }

    /// The room's local members: after a receipt there, whose badge may have gone down.
    pub fn readers_in(&self, room_id: &ruma::RoomId) -> Result<Vec<OwnedUserId>> {
        Ok(self
            .rooms
            .members_shared(room_id, &MembershipState::Join)?
            .iter()
            .filter(|u| u.server_name() == self.own)
            .cloned()
            .collect())
    }

    /// Deletes the room's unread marks that can count for none of its local members any
    /// more (how often: see [`marks`]).
    pub fn trim_marks(&self, room_id: &ruma::RoomId) -> Result<()> {
        let members = self.readers_in(room_id)?;
        self.push.trim_marks(&self.rooms, room_id, &members)
    }

    /// The room a notification's event is in, and the event, for delivery and listing.
    pub fn event(&self, n: &Notification) -> Result<Option<Arc<crate::rooms::pdu::Pdu>>> {
        self.rooms.pdu_shared(&n.event_id)
    }
}
