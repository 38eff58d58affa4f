//! Reading timelines: pages in either direction, history visibility, client format.
//!
//! Positions are stream positions: a token `p` stands just after the event at `p`. Going
//! backwards from `p` returns events at `p` and before; forwards, events after `p`.

use std::sync::Arc;

use ruma::{api::Direction, events::room::member::MembershipState, push::FlattenedJson, EventId, RoomId, UserId};
use serde_json::{json, Map, Value};

use super::{
    pdu::{EventJson, Pdu},
    EventMeta, Rooms, TimelineEntry, TIMELINE,
};
use crate::{
    error::{Error, Result},
    rooms::push_fields::PushFields,
    store::{codec::encode_key, KeyRange, Order},
};

/// Most events one page may hold.
pub const MAX_PAGE: usize = 1000;

/// A pagination token: `s<position>`.
pub fn token(pos: u64) -> String {
    format!("s{pos}")
}

/// Parses a pagination token; sync tokens (`s<pos>_<typing>`) are accepted too.
pub fn parse_token(t: &str) -> Result<u64> {
    t.strip_prefix('s')
        .map(|rest| rest.split('_').next().unwrap_or_default())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| Error::invalid_param("Invalid pagination token"))
}

impl Rooms {
    /// The last stream position of this room a user may see, or `None` if they may see
    /// nothing (never joined). Joined members see everything ("shared" history); former
    /// members see up to the moment they left.
    pub fn visible_until(&self, room_id: &RoomId, user: &UserId) -> Result<Option<u64>> {
        Ok(match self.membership(room_id, user)? {
            Some(m) if m.membership == MembershipState::Join => Some(u64::MAX),
            Some(m) if m.membership == MembershipState::Leave || m.membership == MembershipState::Ban => Some(m.stream),
            // Anyone may read (peek into) a world-readable room; which events they see is
            // then decided per event by `event_visible_to`.
            _ if self.is_world_readable(room_id)? => Some(u64::MAX),
            _ => None,
        })
    }

    /// Whether the room's current history visibility is `world_readable`.
    pub fn is_world_readable(&self, room_id: &RoomId) -> Result<bool> {
        Ok(self.state_event(room_id, &ruma::events::StateEventType::RoomHistoryVisibility, "")?.is_some_and(|p| {
            p.content_value().get("history_visibility").and_then(Value::as_str) == Some("world_readable")
        }))
    }

    /// Whether `user` may see `pdu` under the room's history visibility at that event:
    /// `world_readable` and `shared` (within [`Rooms::visible_until`]) let them, `invited`
    /// needs them invited or joined at the event, `joined` needs them joined at the event.
    ///
    /// A backfilled event has no state here: it is judged by the state where its history
    /// joins the timeline (see [`Rooms::backfill_boundary_state`]).
    pub fn event_visible_to(&self, pdu: &Pdu, user: &UserId) -> Result<bool> {
        let state = match self.backfill_boundary_state(&pdu.room_id, &pdu.event_id)? {
            Some(state) => state,
            None => self.state_before(&pdu.event_id)?,
        };
        self.visible_in(pdu, user, &state, &mut || self.membership(&pdu.room_id, user))
    }

    /// Whether an event needs judging on its own: a user's own member events, and changes of
    /// history visibility. Any other event is judged by the state before it alone, the same
    /// for every event sharing that state.
    fn judged_alone(pdu: &Pdu, user: &UserId) -> bool {
        match pdu.state_key.as_deref() {
            Some("") => pdu.kind == ruma::events::TimelineEventType::RoomHistoryVisibility,
            Some(key) => key == user.as_str() && pdu.kind == ruma::events::TimelineEventType::RoomMember,
            None => false,
        }
    }

    /// [`Rooms::event_visible_to`] with the state the event is judged by (`state`) and the
    /// user's membership now (`current`, asked only under `shared` visibility).
    fn visible_in(
        &self,
        pdu: &Pdu,
        user: &UserId,
        state: &super::state::StateMap,
        current: &mut dyn FnMut() -> Result<Option<super::MembershipRecord>>,
    ) -> Result<bool> {
        let visibility = self
            .state_event_shared(state, &ruma::events::StateEventType::RoomHistoryVisibility, "")?
            .and_then(|p| p.content_value().get("history_visibility").and_then(Value::as_str).map(str::to_owned))
            .unwrap_or_else(|| "shared".to_owned());
        // A user's own membership events are always theirs to see.
        if pdu.state_key.as_deref() == Some(user.as_str()) && pdu.kind.to_string() == "m.room.member" {
            return Ok(true);
        }
        let membership = || -> Result<Option<String>> {
            Ok(self
                .state_event_shared(state, &ruma::events::StateEventType::RoomMember, user.as_str())?
                .and_then(|p| p.content_value().get("membership").and_then(Value::as_str).map(str::to_owned)))
        };
        let mut allows = |visibility: &str| -> Result<bool> {
            Ok(match visibility {
                "world_readable" => true,
                // Shared history is for members (current, or former up to their leave).
                "shared" => current()?
                    .is_some_and(|m| m.membership != MembershipState::Invite && m.membership != MembershipState::Knock),
                "invited" => matches!(membership()?.as_deref(), Some("invite" | "join")),
                _ => membership()?.as_deref() == Some("join"),
            })
        };
        if allows(&visibility)? {
            return Ok(true);
        }
        // A change of history visibility is seen by whoever either setting lets see it: the
        // boundaries of what one may read are shown (as the spec's algorithm and Synapse).
        if pdu.kind.to_string() == "m.room.history_visibility" && pdu.state_key.as_deref() == Some("") {
            if let Some(new) = pdu.content_value().get("history_visibility").and_then(Value::as_str) {
                return allows(new);
            }
        }
        Ok(false)
    }

    /// For a backfilled event (history fetched from another server, kept without state of
    /// its own): the state before the event its history leads up to, that is the room's
    /// first event here (the history from before this server joined) or the event after
    /// a gap. The history visibility and the reader's membership there stand for those at
    /// the event: a reader who was not in the room then (no user of this server was, before
    /// it joined) sees no history the room kept to its members (`joined`, `invited`), which
    /// the other server sent redacted. `None` for any other event.
    pub fn backfill_boundary_state(
        &self,
        room_id: &RoomId,
        event_id: &ruma::EventId,
    ) -> Result<Option<Arc<super::state::StateMap>>> {
        let Some(row) = super::backfill::BACKFILL_ROWS.get(&self.store, event_id.as_str())? else { return Ok(None) };
        let anchor = super::backfill::anchor_of(row);
        let boundary = match anchor {
            0 => {
                let mut first = None;
                super::TIMELINE.scan_prefix(&self.store, room_id.as_str(), Order::Ascending, |_, entry| {
                    first = Some(entry.event_id);
                    false
                })?;
                first
            }
            pos => crate::stream::EVENT_STREAM.get(&self.store, pos)?.map(|e| e.event_id.to_string()),
        };
        let Some(boundary) = boundary.and_then(|id| ruma::OwnedEventId::try_from(id).ok()) else { return Ok(None) };
        Ok(Some(self.state_before(&boundary)?))
    }

    /// `pdu` as `user` may see it ([`Rooms::filter_visible`] for one event), or `None`.
    pub fn visible_as(&self, pdu: Arc<Pdu>, user: &UserId) -> Result<Option<Arc<Pdu>>> {
        if !self.event_visible_to(&pdu, user)? {
            return Ok(None);
        }
        self.as_seen_by(pdu, user).map(Some)
    }

    /// Drops the events of a page that `user` may not see, and redacts those of erased
    /// senders that the user was not there for ([`super::erasure`]).
    pub fn filter_visible(&self, page: Vec<(u64, Arc<Pdu>)>, user: &UserId) -> Result<Vec<(u64, Arc<Pdu>)>> {
        // The same as `event_visible_to` for each event, read once per page: which events
        // were backfilled (one batch), the user's membership now (once), and the verdict for
        // events that share a state (a page of messages mostly shares one).
        let backfilled =
            super::backfill::BACKFILL_ROWS.get_many(&self.store, page.iter().map(|(_, p)| p.event_id.as_str()))?;
        let mut memberships: Vec<(ruma::OwnedRoomId, Option<super::MembershipRecord>)> = Vec::new();
        let mut membership_now = |room: &RoomId| -> Result<Option<super::MembershipRecord>> {
            if let Some((_, m)) = memberships.iter().find(|(r, _)| r == room) {
                return Ok(m.clone());
            }
            let m = self.membership(room, user)?;
            memberships.push((room.to_owned(), m.clone()));
            Ok(m)
        };
        let mut verdicts: Vec<(Arc<super::state::StateMap>, bool)> = Vec::new();
        let mut out = Vec::with_capacity(page.len());
        for ((pos, pdu), row) in page.into_iter().zip(backfilled) {
            let state = match row {
                Some(_) => self.backfill_boundary_state(&pdu.room_id, &pdu.event_id)?,
                None => None,
            };
            let state = match state {
                Some(state) => state,
                None => self.state_before(&pdu.event_id)?,
            };
            let room = pdu.room_id.clone();
            let mut current = || membership_now(&room);
            let visible = if Self::judged_alone(&pdu, user) {
                self.visible_in(&pdu, user, &state, &mut current)?
            } else if let Some((_, v)) = verdicts.iter().find(|(s, _)| Arc::ptr_eq(s, &state)) {
                *v
            } else {
                let v = self.visible_in(&pdu, user, &state, &mut current)?;
                verdicts.push((state, v));
                v
            };
            if visible {
                out.push((pos, self.as_seen_by(pdu, user)?));
            }
        }
        Ok(out)
    }

    /// Refuses users who may not read the room (404 for unknown rooms, 403 otherwise).
    pub fn require_visible(&self, room_id: &RoomId, user: &UserId) -> Result<u64> {
        self.known_room(room_id)?;
        self.visible_until(room_id, user)?.ok_or_else(|| Error::forbidden("You are not a member of this room"))
    }

    /// Up to `limit` events from `from` in `dir`, not past `until` (visibility) nor past
    /// `to` (if given). Returns (stream position, PDU) in the direction's order.
    pub fn page(
        &self,
        room_id: &RoomId,
        from: u64,
        dir: Direction,
        limit: usize,
        until: u64,
        to: Option<u64>,
    ) -> Result<Vec<(u64, Arc<Pdu>)>> {
        let load = |rows: Vec<TimelineEntry>| {
            let ids = rows
                .into_iter()
                .map(|row| ruma::OwnedEventId::try_from(row.event_id).map_err(|e| Error::internal(e.to_string())))
                .collect::<Result<Vec<_>>>()?;
            self.pdus_shared(&ids)
        };
        self.page_with(room_id, load, from, dir, limit, until, to)
    }

    /// [`Rooms::page`] forwards, each event as push rules reading `fields` read it
    /// ([`crate::rooms::push_fields::view`], shared between readers whose rules read the same
    /// fields): for unread counts. The view comes from the timeline row when the rules read
    /// no more than the default rules do (see [`TimelineEntry`]), else from the stored PDU.
    /// Events nested too deep for ruma's evaluator are left out (it would panic on them;
    /// sends refuse them now, one stored before is not counted rather than breaking every
    /// sync of the room).
    pub fn page_for_push(
        &self,
        room_id: &RoomId,
        from: u64,
        limit: usize,
        until: u64,
        fields: &Arc<PushFields>,
    ) -> Result<Vec<(u64, Arc<FlattenedJson>)>> {
        // Rules that read no more than the default rules can read the view in the row.
        let row_views = fields.within(PushFields::stored());
        let load = |rows: Vec<TimelineEntry>| -> Result<Vec<Option<Arc<FlattenedJson>>>> {
            let mut out: Vec<Option<Arc<FlattenedJson>>> = Vec::with_capacity(rows.len());
            let mut ids: Vec<Option<ruma::OwnedEventId>> = Vec::with_capacity(rows.len());
            for row in rows {
                let id = ruma::OwnedEventId::try_from(row.event_id.as_str()).ok();
                let event = match id.as_ref().and_then(|id| self.pdus.flattened(id, fields)) {
                    Some(kept) => Some(kept),
                    None if row_views => {
                        row.into_current_view().and_then(crate::rooms::push_fields::flatten).map(Arc::new)
                    }
                    None => None,
                };
                out.push(event);
                ids.push(id);
            }
            let missing: Vec<usize> = (0..ids.len()).filter(|&i| out[i].is_none() && ids[i].is_some()).collect();
            if missing.is_empty() {
                return Ok(out);
            }
            let epoch = self.pdus.epoch();
            let stored = super::PDUS
                .get_many(&self.store, missing.iter().filter_map(|&i| ids[i].as_ref().map(|id| id.as_str())))?;
            // Kept for other readers only when few: a wake-up's new events, not a backlog.
            let keep = missing.len() <= 16;
            for (&i, bytes) in missing.iter().zip(stored) {
                let (Some(id), Some(bytes)) = (&ids[i], bytes) else { continue };
                let Some(event) = crate::rooms::push_fields::view(&bytes, fields) else { continue };
                let event = Arc::new(event);
                if keep {
                    self.pdus.keep_flattened(id.clone(), fields.clone(), event.clone(), epoch);
                }
                out[i] = Some(event);
            }
            Ok(out)
        };
        self.page_with(room_id, load, from, Direction::Forward, limit, until, None)
    }

    /// A page of the room's timeline, the events read by `load` from their ids, all at once
    /// (events it does not find are left out).
    #[allow(clippy::too_many_arguments)]
    fn page_with<T>(
        &self,
        room_id: &RoomId,
        load: impl FnOnce(Vec<TimelineEntry>) -> Result<Vec<Option<T>>>,
        from: u64,
        dir: Direction,
        limit: usize,
        until: u64,
        to: Option<u64>,
    ) -> Result<Vec<(u64, T)>> {
        let room = room_id.as_str();
        let limit = limit.min(MAX_PAGE);
        let (range, order) = match dir {
            Direction::Backward => {
                let hi = from.min(until).saturating_add(1);
                let lo = to.map(|t| t.saturating_add(1)).unwrap_or(0);
                (
                    KeyRange {
                        lower: Some(encode_key::<(String, u64)>((room, lo))),
                        upper: Some(encode_key::<(String, u64)>((room, hi))),
                    },
                    Order::Descending,
                )
            }
            Direction::Forward => {
                let lo = from.saturating_add(1);
                let hi = to.unwrap_or(u64::MAX).min(until).saturating_add(1).max(lo);
                (
                    KeyRange {
                        lower: Some(encode_key::<(String, u64)>((room, lo))),
                        upper: Some(encode_key::<(String, u64)>((room, hi))),
                    },
                    Order::Ascending,
                )
            }
        };
        // A page that starts after a recent position (an incremental sync's, an unread
        // tally's) is read from the stream's memory.
        let after = match dir {
            Direction::Forward => Some(from),
            Direction::Backward => to,
        };
        // So is the newest page (an initial sync's) when memory holds that many of the
        // room's events.
        let recent = match (dir, after) {
            (Direction::Backward, None) => self.stream.room_newest(room_id, from.min(until), limit.max(1)),
            (_, None) => None,
            (_, Some(after)) => {
                let until = match dir {
                    Direction::Forward => to.unwrap_or(u64::MAX).min(until),
                    Direction::Backward => from.min(until),
                };
                self.stream.room_events(room_id, after, until)
            }
        };
        let rows: Vec<(u64, TimelineEntry)> = match recent {
            Some(mut list) => {
                if dir == Direction::Backward {
                    list.reverse();
                }
                // As the scan below: it stops after the entry that reaches the limit.
                list.truncate(limit.max(1));
                list.into_iter()
                    .map(|(pos, id)| (pos, TimelineEntry { event_id: id.to_string(), push_view: None }))
                    .collect()
            }
            None => {
                let mut rows = Vec::new();
                TIMELINE.scan_range(&self.store, &range, order, |(_, pos), row| {
                    rows.push((pos, row));
                    rows.len() < limit
                })?;
                rows
            }
        };
        let (positions, rows): (Vec<u64>, Vec<TimelineEntry>) = rows.into_iter().unzip();
        let events = load(rows)?;
        Ok(positions.into_iter().zip(events).filter_map(|(pos, event)| Some((pos, event?))).collect())
    }

    /// The event as a client sees it: `unsigned.transaction_id` for the device that sent
    /// it, `unsigned.age`.
    pub fn client_event(&self, pdu: &Pdu, meta: Option<&EventMeta>, viewer: Option<(&UserId, &str)>) -> Value {
        pdu.to_client_json(self.client_unsigned(pdu, meta, viewer))
    }

    /// [`Rooms::client_event`] written as JSON, without `room_id`: what `/sync` copies into
    /// its answer.
    pub fn client_event_json(&self, pdu: &Pdu, meta: Option<&EventMeta>, viewer: Option<(&UserId, &str)>) -> EventJson {
        pdu.client_json(&self.client_unsigned(pdu, meta, viewer))
    }

    /// An event's `unsigned` for a client: timeline events (those served with their
    /// metadata) carry their aggregations.
    fn client_unsigned(
        &self,
        pdu: &Pdu,
        meta: Option<&EventMeta>,
        viewer: Option<(&UserId, &str)>,
    ) -> Map<String, Value> {
        let mut unsigned = self.unsigned_unbundled(pdu, meta, viewer);
        if meta.is_some_and(|m| m.redacted_by.is_none()) {
            let serve = |p: &Pdu| self.client_event_unbundled(p, None, viewer);
            match self.bundled_aggregations(pdu, viewer.map(|v| v.0), &serve) {
                Ok(Some(relations)) => {
                    unsigned.insert("m.relations".into(), Value::Object(relations));
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(event_id = %pdu.event_id, error = %e, "cannot read an event's aggregations"),
            }
        }
        unsigned
    }

    /// Client format of an event without its bundled aggregations.
    fn client_event_unbundled(&self, pdu: &Pdu, meta: Option<&EventMeta>, viewer: Option<(&UserId, &str)>) -> Value {
        pdu.to_client_json(self.unsigned_unbundled(pdu, meta, viewer))
    }

    /// An event's `unsigned` without its aggregations: the transaction id for the device
    /// that sent it, its age, and the redaction that redacted it.
    fn unsigned_unbundled(
        &self,
        pdu: &Pdu,
        meta: Option<&EventMeta>,
        viewer: Option<(&UserId, &str)>,
    ) -> Map<String, Value> {
        let mut unsigned = Map::new();
        if let (Some(meta), Some((user, device))) = (meta, viewer) {
            if let Some((d, txn)) = &meta.txn {
                if pdu.sender == user && d == device {
                    unsigned.insert("transaction_id".into(), json!(txn));
                }
            }
        }
        let now = crate::time::now_millis();
        unsigned.insert("age".into(), json!(now.saturating_sub(u64::from(pdu.origin_server_ts.0))));
        if let Some(by) = meta.and_then(|m| m.redacted_by.as_ref()) {
            if let Ok(Some(redaction)) = self.pdu(by) {
                unsigned.insert("redacted_because".into(), redaction.to_client_json(Map::new()));
                // Synapse's older name for the redaction's id, which it still sends and
                // some clients and sytest read.
                unsigned.insert("redacted_by".into(), json!(by));
            }
        }
        unsigned
    }

    /// Client format of an event by id, with its meta.
    pub fn client_event_by_id(&self, event_id: &EventId, viewer: Option<(&UserId, &str)>) -> Result<Option<Value>> {
        let Some(pdu) = self.pdu(event_id)? else { return Ok(None) };
        let meta = self.event_meta(event_id)?;
        Ok(Some(self.client_event(&pdu, meta.as_ref(), viewer)))
    }
}

/// Most timeline rows one `timestamp_to_event` reads before giving up.
pub const MAX_TIME_SCAN: usize = 200_000;

impl Rooms {
    /// The room's event closest to `ts` in direction `forward` (the first at or after it,
    /// or the last at or before it) among those `viewer` may see: (event id, its
    /// `origin_server_ts`). Timeline order is stream order, which follows time closely
    /// enough for "jump to date"; rows are read in batches until one fits.
    pub fn event_at_time(
        &self,
        room: &RoomId,
        viewer: &UserId,
        ts: u64,
        forward: bool,
    ) -> Result<Option<(ruma::OwnedEventId, u64)>> {
        let until = self.require_visible(room, viewer)?;
        let order = if forward { crate::store::Order::Ascending } else { crate::store::Order::Descending };
        let range = crate::store::KeyRange {
            lower: Some(crate::store::codec::encode_key::<(String, u64)>((room.as_str(), 0))),
            upper: Some(crate::store::codec::encode_key::<(String, u64)>((room.as_str(), until.saturating_add(1)))),
        };
        let mut found = None;
        let mut batch: Vec<ruma::OwnedEventId> = Vec::new();
        let mut read = 0usize;
        let check = |ids: &[ruma::OwnedEventId]| -> Result<Option<(ruma::OwnedEventId, u64)>> {
            for pdu in self.pdus_shared(ids)?.into_iter().flatten() {
                let at = u64::from(pdu.origin_server_ts.0);
                if (forward && at >= ts) || (!forward && at <= ts) {
                    return Ok(Some((pdu.event_id.clone(), at)));
                }
            }
            Ok(None)
        };
        let mut failed = None;
        super::TIMELINE.scan_range(&self.store, &range, order, |_, entry| {
            read += 1;
            if let Ok(id) = ruma::OwnedEventId::try_from(entry.event_id) {
                batch.push(id);
            }
            if batch.len() == 256 {
                match check(&batch) {
                    Ok(Some(hit)) => {
                        found = Some(hit);
                        return false;
                    }
                    Ok(None) => batch.clear(),
                    Err(e) => {
                        failed = Some(e);
                        return false;
                    }
                }
            }
            read < MAX_TIME_SCAN
        })?;
        if let Some(e) = failed {
            return Err(e);
        }
        if found.is_none() && !batch.is_empty() {
            found = check(&batch)?;
        }
        Ok(found)
    }
}
