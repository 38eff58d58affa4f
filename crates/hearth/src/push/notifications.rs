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
use serde::Deserialize;
use serde_json::{json, Value};

use super::{marks, Push};
use crate::{
    error::{Error, Result},
    rooms::{remote::REMOTE_INVITES_BY_POS, Rooms},
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

/// The event as rules that read no more than the default rules' fields read it
/// ([`crate::rooms::push_fields::view`]); the whole event if it cannot be cut.
fn flatten_cut(pdu: &crate::rooms::pdu::Pdu) -> Result<FlattenedJson> {
    match crate::rooms::push_fields::view_of(&pdu.json, crate::rooms::push_fields::PushFields::stored()) {
        Some(flat) => Ok(flat),
        None => flatten(pdu),
    }
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
#[derive(Debug, Clone)]
pub struct Notification {
    pub room_id: OwnedRoomId,
    pub event_id: OwnedEventId,
    pub actions: Vec<Action>,
    /// When it was logged, in ms.
    pub ts: u64,
    /// Whether the event is an `m.call.invite` (for `missed_calls`, without reading it).
    pub call_invite: bool,
}

/// A notification as the log stores it. Every local member a message notifies gets a row,
/// so rows are kept small: written as JSON with their event and room, the rows were most
/// of the bytes a sent message wrote, and most of its CPU with the flushes and compactions
/// they caused.
#[derive(Debug, Clone)]
pub enum Row {
    /// The time, whether the event is a call invite, and the actions. The event and its
    /// room are those at the row's stream position (the event stream's, or an invite from
    /// another server's).
    Compact { ts: u64, call_invite: bool, actions: Vec<Action> },
    /// A row written before rows were compact: the whole notification as JSON.
    Whole(Notification),
}

/// A member's actions for an event, and the part of a compact row that names them
/// ([`encode_actions`]): shared by the members of one rules class.
type Evaluated = (Arc<[Action]>, Arc<[u8]>);

/// The first byte of a compact row; a row written as JSON starts with `{`.
const COMPACT: u8 = 1;
/// Flag of a compact row: the event is an `m.call.invite`.
const CALL_INVITE: u8 = 1;
/// The action lists of the default push rules, as compact rows name them: code `k` is
/// `COMMON_ACTIONS[k - 1]`, code 0 means the actions follow as JSON.
const COMMON_ACTIONS: &[&str] = &[
    r#"["notify"]"#,
    r#"["notify",{"set_tweak":"sound","value":"default"}]"#,
    r#"["notify",{"set_tweak":"highlight"}]"#,
    r#"["notify",{"set_tweak":"sound","value":"default"},{"set_tweak":"highlight"}]"#,
    r#"["notify",{"set_tweak":"sound","value":"ring"}]"#,
    r#"["notify",{"set_tweak":"sound","value":"default"},{"set_tweak":"highlight","value":false}]"#,
];

/// The part of a compact row that names its actions: a code of [`COMMON_ACTIONS`], or 0
/// and the actions as JSON. Written once per distinct action list of an event.
fn encode_actions(actions: &[Action]) -> Vec<u8> {
    let json = serde_json::to_vec(actions).unwrap_or_default();
    match COMMON_ACTIONS.iter().position(|c| c.as_bytes() == json.as_slice()) {
        Some(k) => vec![k as u8 + 1],
        None => [&[0u8][..], &json].concat(),
    }
}

/// A compact row: its header, then the actions as [`encode_actions`] wrote them.
fn encode_compact(ts: u64, call_invite: bool, actions: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(10 + actions.len());
    out.push(COMPACT);
    out.extend_from_slice(&ts.to_be_bytes());
    out.push(if call_invite { CALL_INVITE } else { 0 });
    out.extend_from_slice(actions);
    out
}

/// A row written as JSON, before rows were compact.
#[derive(Deserialize)]
struct WholeRow {
    room_id: OwnedRoomId,
    event_id: OwnedEventId,
    actions: Vec<Action>,
    ts: u64,
    #[serde(default)]
    kind: Option<String>,
}

impl crate::store::codec::ValueCodec for Row {
    fn encode_value(&self) -> Vec<u8> {
        match self {
            Row::Compact { ts, call_invite, actions } => encode_compact(*ts, *call_invite, &encode_actions(actions)),
            Row::Whole(n) => serde_json::to_vec(&json!({
                "room_id": n.room_id, "event_id": n.event_id, "actions": n.actions, "ts": n.ts,
                "kind": n.call_invite.then_some("m.call.invite"),
            }))
            .unwrap_or_default(),
        }
    }

    fn decode_value(bytes: &[u8]) -> std::result::Result<Self, crate::store::codec::CodecError> {
        let bad = |e: &dyn std::fmt::Display| crate::store::codec::CodecError(format!("notification row: {e}"));
        match bytes.first() {
            Some(&COMPACT) if bytes.len() >= 11 => {
                let ts = u64::from_be_bytes(bytes[1..9].try_into().map_err(|e| bad(&e))?);
                let call_invite = bytes[9] & CALL_INVITE != 0;
                let actions = match bytes[10] {
                    0 => serde_json::from_slice(&bytes[11..]).map_err(|e| bad(&e))?,
                    k => {
                        let common = COMMON_ACTIONS.get(usize::from(k) - 1).ok_or_else(|| bad(&"unknown actions"))?;
                        serde_json::from_str(common).map_err(|e| bad(&e))?
                    }
                };
                Ok(Row::Compact { ts, call_invite, actions })
            }
            _ => {
                let w: WholeRow = serde_json::from_slice(bytes).map_err(|e| bad(&e))?;
                let call_invite = w.kind.as_deref() == Some("m.call.invite");
                Ok(Row::Whole(Notification {
                    room_id: w.room_id,
                    event_id: w.event_id,
                    actions: w.actions,
                    ts: w.ts,
                    call_invite,
                }))
            }
        }
    }
}

impl Row {
    fn highlight(&self) -> bool {
        match self {
            Row::Compact { actions, .. } | Row::Whole(Notification { actions, .. }) => {
                actions.iter().any(Action::is_highlight)
            }
        }
    }

    fn call_invite(&self) -> bool {
        match self {
            Row::Compact { call_invite, .. } | Row::Whole(Notification { call_invite, .. }) => *call_invite,
        }
    }
}

/// (user, stream position of the event) → notification.
pub const NOTIFICATIONS: Table<(String, u64), Row> = Table::new(tables::NOTIFICATIONS);
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
        events.extend(self.rooms.remote_invites_between(since, reached)?.into_iter().map(|(p, e)| (p, e, true)));
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
            // Cut down to what the default rules read when no recipient's rules read more
            // (most users keep the defaults): flattening the whole event, signatures and
            // all, was a twentieth of a message's CPU.
            // Each recipient's ruleset, looked up once for this and for the evaluation below.
            let rulesets = (recipients.iter())
                .map(|(user, _)| self.push.ruleset(&self.account_data, user))
                .collect::<Result<Vec<_>>>()?;
            let mut cut = true;
            let mut judged: Vec<(&Arc<crate::rooms::push_fields::PushFields>, bool)> = Vec::new();
            for (_, _, fields, _) in &rulesets {
                let within = match judged.iter().find(|(f, _)| Arc::ptr_eq(f, fields)) {
                    Some((_, within)) => *within,
                    None => {
                        let within = fields.within(crate::rooms::push_fields::PushFields::stored());
                        judged.push((fields, within));
                        within
                    }
                };
                if !within {
                    cut = false;
                    break;
                }
            }
            let flat = match cut {
                true => flatten_cut(&pdu)?,
                false => flatten(&pdu)?,
            };
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
            let mut by_class: HashMap<super::ClassKey, Evaluated> = HashMap::new();
            let call_invite = pdu.kind == TimelineEventType::CallInvite;
            for ((user, member), (_, rules, _, class)) in recipients.into_iter().zip(rulesets) {
                let ctx = match remote_invite {
                    true => Arc::new(invite_context(&entry.room_id, &user)),
                    false => self.push.context(&self.rooms, &entry.room_id, &user)?,
                };
                // The actions, and the part of a compact row that names them.
                let evaluate = || -> Evaluated {
                    let actions: Arc<[Action]> =
                        Arc::from(super::unread::first_match(&rules, &flat, &ctx).unwrap_or_default());
                    let encoded = Arc::from(encode_actions(&actions));
                    (actions, encoded)
                };
                // Members whose rules differ only in their own identity get the same
                // actions from an event that names none of them: evaluated once per class.
                let shared = !*remote_invite && !names(text.get_or_init(|| lowercase_strings(&pdu.json)), &user, &ctx);
                let (actions, encoded) = match shared {
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
                NOTIFICATIONS.put_encoded(
                    &mut batch,
                    (user.as_str(), *pos),
                    encode_compact(now, call_invite, &encoded),
                );
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
        // Not waited for on disk: rows a crash leaves past the cap are counted after the
        // start and trimmed with the next.
        self.store.write_deferred(batch)?;
        Ok(Kept { rows: kept.rows - old.len(), from: last + 1 })
    }

    /// The notification a row at stream position `pos` stands for; `None` if its event
    /// is no longer in the stream (a purged room).
    fn resolve(&self, pos: u64, row: Row) -> Result<Option<Notification>> {
        let (ts, call_invite, actions) = match row {
            Row::Whole(n) => return Ok(Some(n)),
            Row::Compact { ts, call_invite, actions } => (ts, call_invite, actions),
        };
        let entry = match crate::stream::EVENT_STREAM.get(&self.store, pos)? {
            Some(e) => Some(e),
            None => REMOTE_INVITES_BY_POS.get(&self.store, pos)?,
        };
        Ok(entry.map(|e| Notification { room_id: e.room_id, event_id: e.event_id, actions, ts, call_invite }))
    }

    /// A user's rows in `order` (oldest or newest first), until `visit` returns `false`.
    fn rows(&self, user: &UserId, order: Order, mut visit: impl FnMut(u64, Row) -> bool) -> Result<()> {
        let range = KeyRange::prefix(&crate::store::codec::encode_key::<String>(user.as_str()));
        Ok(NOTIFICATIONS.scan_range(&self.store, &range, order, |(_, pos), row| visit(pos, row))?)
    }

    /// A user's notifications after stream position `after`, oldest first, at most `limit`.
    pub fn after(&self, user: &UserId, after: u64, limit: usize) -> Result<Vec<(u64, Notification)>> {
        let mut rows = Vec::new();
        self.rows(user, Order::Ascending, |pos, row| {
            if pos > after {
                rows.push((pos, row));
            }
            rows.len() < limit
        })?;
        self.resolve_all(rows)
    }

    fn resolve_all(&self, rows: Vec<(u64, Row)>) -> Result<Vec<(u64, Notification)>> {
        let mut out = Vec::with_capacity(rows.len());
        for (pos, row) in rows {
            if let Some(n) = self.resolve(pos, row)? {
                out.push((pos, n));
            }
        }
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
        let mut rows = Vec::new();
        self.rows(user, Order::Descending, |pos, row| {
            if before.is_none_or(|b| pos < b) && (!only_highlight || row.highlight()) {
                rows.push((pos, row));
            }
            rows.len() < limit
        })?;
        self.resolve_all(rows)
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
        let mut calls = Vec::new();
        let mut seen = 0;
        self.rows(user, Order::Descending, |pos, row| {
            if row.call_invite() {
                calls.push((pos, row));
            }
            seen += 1;
            seen < MAX_KEPT_PER_USER
        })?;
        let mut missed = 0;
        for (pos, n) in self.resolve_all(calls)? {
            if !self.is_read(user, &n.room_id, pos)? {
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

#[cfg(test)]
mod tests {
    use ruma::push::{Action, Tweak};
    use serde_json::json;

    use super::{Row, COMMON_ACTIONS};
    use crate::store::codec::ValueCodec;

    fn actions(v: serde_json::Value) -> Vec<Action> {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn compact_rows_read_back_as_written() {
        let unusual = actions(json!(["notify", {"set_tweak": "sound", "value": "bell"}, {"set_tweak": "x-custom"}]));
        let cases = COMMON_ACTIONS.iter().map(|c| serde_json::from_str::<Vec<Action>>(c).unwrap()).chain([
            unusual,
            vec![Action::Notify, Action::SetTweak(Tweak::Highlight(true.into()))],
            Vec::new(),
        ]);
        for (k, list) in cases.enumerate() {
            let row = Row::Compact { ts: 1_700_000_000_000 + k as u64, call_invite: k % 2 == 0, actions: list.clone() };
            let bytes = row.encode_value();
            let Row::Compact { ts, call_invite, actions: back } = Row::decode_value(&bytes).unwrap() else {
                panic!("read back as a whole row");
            };
            assert_eq!((ts, call_invite), (1_700_000_000_000 + k as u64, k % 2 == 0));
            assert_eq!(serde_json::to_value(&back).unwrap(), serde_json::to_value(&list).unwrap());
        }
        // The common lists take one byte: the row is its header and the code.
        let common: Vec<Action> = serde_json::from_str(COMMON_ACTIONS[1]).unwrap();
        assert_eq!(Row::Compact { ts: 0, call_invite: false, actions: common }.encode_value().len(), 11);
        // Every list of the default rules that notifies is a common one.
        let user = ruma::user_id!("@alice:example.org");
        let rules = ruma::push::Ruleset::server_default(user);
        for rule in rules.iter() {
            let list = rule.actions();
            if list.iter().any(Action::should_notify) {
                assert_eq!(super::encode_actions(list).len(), 1, "{}: {list:?}", rule.rule_id());
            }
        }
    }

    #[test]
    fn rows_written_as_json_before_are_read() {
        let old = json!({
            "room_id": "!r:example.org", "event_id": "$e", "ts": 5,
            "actions": ["notify", {"set_tweak": "sound", "value": "ring"}], "kind": "m.call.invite",
        });
        let Row::Whole(n) = Row::decode_value(&serde_json::to_vec(&old).unwrap()).unwrap() else {
            panic!("a JSON row read as compact");
        };
        assert_eq!((n.room_id.as_str(), n.event_id.as_str(), n.ts, n.call_invite), ("!r:example.org", "$e", 5, true));
        assert_eq!(serde_json::to_value(&n.actions).unwrap(), old["actions"]);
        let Row::Whole(back) = Row::decode_value(&Row::Whole(n.clone()).encode_value()).unwrap() else {
            panic!("a JSON row read as compact");
        };
        assert_eq!((back.event_id, back.ts, back.call_invite), (n.event_id, 5, true));
        // A row without a kind is not a call; cut-off and unknown rows are errors, not panics.
        let plain = json!({"room_id": "!r:example.org", "event_id": "$e", "ts": 5, "actions": ["notify"]});
        assert!(matches!(Row::decode_value(&serde_json::to_vec(&plain).unwrap()), Ok(Row::Whole(n)) if !n.call_invite));
        assert!(Row::decode_value(&[1, 0, 0]).is_err());
        assert!(Row::decode_value(&[1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 200]).is_err());
        assert!(Row::decode_value(b"").is_err());
    }
}
