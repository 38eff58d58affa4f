//! Commit: the one write that puts an event into a room, for local and remote events alike.
//!
//! The caller describes the append ([`Append`]): the event, the state before it as the
//! caller established it, and where the event goes ([`Placement`]) — into the timeline as
//! a new head of the room, soft-failed, or as an outlier. [`Rooms::commit`] writes the PDU
//! and every index that placement calls for in one atomic batch at the next stream
//! position, and updates what memory keeps before that position can become durable. Local
//! events come here from [`super::append`]; remote ones will come from federation's "check
//! and append" path, after [`super::authorize`].
//!
//! The caller holds the room's append lock and proves it by passing its [`Counters`]. Lock
//! order: the append lock, then the stream's commit (inside [`crate::stream::Stream`]);
//! nothing that waits on the network or the disk's fsync runs under the append lock.

use std::sync::Arc;

use ruma::{events::room::member::MembershipState, events::TimelineEventType, OwnedUserId};
use serde_json::Value;

use super::{
    build::TxnRef,
    pdu::Pdu,
    resolve::StateEvents,
    state::{Interner, StateMap, STATE_BEFORE_EVENT},
    Counters, EventMeta, MembershipRecord, RelationEntry, RoomHeads, RoomRecord, Rooms, StreamEntry, TimelineEntry,
    EVENT_META, EVENT_STREAM, PDUS, RELATIONS, ROOMS, ROOM_HEADS, ROOM_MEMBERS, TIMELINE, TRANSACTIONS, USER_ROOMS,
};
use crate::{
    error::{Error, Result},
    store::Batch,
};

/// Where an event goes once it is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// A new head of the room: in the timeline and the stream clients sync; its prev events
    /// stop being forward extremities and it becomes one; the room's current state becomes
    /// the state after it; membership, relation and redaction indexes follow it.
    Timeline,
    /// Allowed by the state before it but not by the room's current state: kept, with the
    /// state before it, for state resolution. Never shown to clients, never a prev event,
    /// and its prev events stay forward extremities (as Synapse keeps them): the room's
    /// heads do not move.
    SoftFailed,
    /// Known only as the auth or state event of another event: the PDU alone, outside the
    /// room's graph (no timeline, no extremities, no state before it).
    Outlier,
    /// An outlier the auth rules refused (against its own auth events): kept, marked, so
    /// that the events naming it as an auth event are rejected in turn rather than
    /// fetching it again.
    RejectedOutlier,
    /// Refused by the auth rules: kept with the state before it, so that events naming it
    /// as a prev event can be placed (the state after it is the state before it), but it
    /// changes nothing of the room: not its state, not its extremities.
    Rejected,
}

/// The state before an event, as the caller established it.
#[derive(Debug, Clone)]
pub enum StateBefore {
    /// A stored snapshot (`None` before the create event): for a local event the current
    /// state it was built on, for a remote one the state after its one prev event.
    Snapshot(Option<u64>),
    /// A state by event ids, written as a new snapshot (a diff from `parent`): the
    /// resolved state of a remote event's prev events, or the state a join brought.
    Events { parent: Option<u64>, state: StateEvents },
    /// A state by short ids (the state after a remote event's one prev event), written as
    /// a new snapshot (a diff from `parent`).
    Map { parent: Option<u64>, map: Arc<StateMap> },
}

/// One append, described.
pub struct Append<'a> {
    pub pdu: Pdu,
    pub state_before: StateBefore,
    pub placement: Placement,
    /// The local device's transaction, for idempotent sends.
    pub txn: Option<TxnRef<'a>>,
    /// The record of the room this event creates (the `m.room.create` event), or of a
    /// remote room this server joins.
    pub new_room: Option<RoomRecord>,
    /// For a timeline event on a fork of the room (its prev events were not all the forward
    /// extremities): the room's current state after it, resolved by the caller. `None`: the
    /// state before the event with the event applied.
    pub resolved_current: Option<StateEvents>,
}

/// What a commit's batch decided: the user a member event is about, the room's new heads,
/// the event's metadata and the snapshot of the state before it.
type Committed = (Option<OwnedUserId>, RoomHeads, EventMeta, Option<u64>);

/// An event written at a stream position, not yet known durable.
pub(super) struct Written {
    pub pdu: Pdu,
    pub stream: u64,
    pub placement: Placement,
    /// The user a member event is about.
    pub target: Option<OwnedUserId>,
}

impl Rooms {
    /// Writes an append and every index its placement calls for in one batch at the next
    /// stream position (not yet durable: see [`Rooms::finish`], called once the append
    /// lock is released).
    pub(super) fn commit(&self, counters: &mut Counters, append: Append<'_>) -> Result<Written> {
        let Append { pdu, state_before, placement, txn, new_room, resolved_current } = append;
        let heads = self.heads(&pdu.room_id)?;
        let shared = Arc::new(pdu.clone());
        let mut reindexed: Vec<OwnedUserId> = Vec::new();
        let written = |_: u64, (target, heads, meta, before): &Committed| {
            self.written(shared, placement, target, *before, heads, meta)
        };
        let (stream, (target, _, _, _)) = self.stream.commit_deferred_then(
            |stream, batch| {
                let reindexed = &mut reindexed;
                let mut interner = Interner::new(&mut counters.next_short);
                let short = interner.event(&self.store, batch, &pdu.event_id)?;
                let json = serde_json::to_vec(&pdu.json).map_err(|e| Error::internal(e.to_string()))?;
                PDUS.put(batch, pdu.event_id.as_str(), &json);
                let meta = EventMeta {
                    room_id: pdu.room_id.clone(),
                    stream,
                    short,
                    txn: txn.map(|t| (t.device_id.to_owned(), t.txn_id.to_owned())),
                    redacted_by: None,
                    outlier: matches!(placement, Placement::Outlier | Placement::RejectedOutlier),
                    soft_failed: matches!(
                        placement,
                        Placement::SoftFailed | Placement::Rejected | Placement::RejectedOutlier
                    ),
                    rejected: matches!(placement, Placement::Rejected | Placement::RejectedOutlier),
                    gap_behind: placement == Placement::Timeline && self.opens_a_gap(&heads, &pdu)?,
                };
                EVENT_META.put(batch, pdu.event_id.as_str(), &meta);
                if matches!(placement, Placement::Outlier | Placement::RejectedOutlier) {
                    return Ok((None, heads.clone(), meta, None));
                }
                let state_before = match &state_before {
                    StateBefore::Snapshot(s) => *s,
                    StateBefore::Events { parent, state } => {
                        let s = self.write_state_events(batch, &mut interner, *parent, state)?;
                        if new_room.is_some() {
                            // A joined remote room: its members as the state names them.
                            reindexed.extend(self.index_members(batch, &pdu.room_id, state, stream)?);
                        }
                        Some(s)
                    }
                    StateBefore::Map { parent, map } => {
                        Some(self.state.write_map(batch, &mut interner, *parent, (**map).clone())?)
                    }
                };
                if let Some(s) = state_before {
                    STATE_BEFORE_EVENT.put(batch, short, &s);
                }
                if matches!(placement, Placement::Rejected | Placement::SoftFailed) {
                    return Ok((None, heads.clone(), meta, state_before));
                }
                let mut new_heads = RoomHeads {
                    snapshot: heads.snapshot,
                    forward_extremities: heads
                        .forward_extremities
                        .iter()
                        .filter(|id| !pdu.prev_events.contains(id))
                        .cloned()
                        .collect(),
                    depth: heads.depth,
                };
                new_heads.forward_extremities.push(pdu.event_id.clone());
                new_heads.depth = new_heads.depth.max(pdu.depth);
                new_heads.snapshot = state_before;
                if let Some(key) = &pdu.state_key {
                    let sk = interner.state_key(&self.store, batch, &pdu.kind.to_string(), key)?;
                    new_heads.snapshot =
                        Some(self.state.write_child(batch, &mut interner, state_before, vec![(sk, short)])?);
                }
                if let Some(current) = &resolved_current {
                    new_heads.snapshot =
                        Some(self.write_state_events(batch, &mut interner, new_heads.snapshot, current)?);
                    // Resolution may have changed any membership.
                    reindexed.extend(self.index_members(batch, &pdu.room_id, current, stream)?);
                }
                ROOM_HEADS.put(batch, pdu.room_id.as_str(), &new_heads);
                let target = self.index_timeline_event(batch, &pdu, &json, stream)?;
                if let Some(t) = txn {
                    let kind = pdu.kind.to_string();
                    let key = (pdu.sender.as_str(), t.device_id, pdu.room_id.as_str(), kind.as_str(), t.txn_id);
                    TRANSACTIONS.put(batch, key, &pdu.event_id.to_string());
                }
                if let Some(record) = &new_room {
                    ROOMS.put(batch, pdu.room_id.as_str(), record);
                }
                Ok((target, new_heads, meta, state_before))
            },
            written,
        )?;
        if !reindexed.is_empty() {
            self.members.invalidate(&pdu.room_id);
            for user in &reindexed {
                self.members.invalidate_user(user);
            }
        }
        Ok(Written { pdu, stream, placement, target })
    }

    /// Whether a timeline event leaves history missing behind it: the room has a timeline
    /// here already (the start of a newly joined room's history is not a gap; see
    /// [`super::backfill`]) and one of its prev events was never in the graph. A local
    /// event's prev events are the forward extremities, so it never does.
    fn opens_a_gap(&self, heads: &RoomHeads, pdu: &Pdu) -> Result<bool> {
        if heads.snapshot.is_none() {
            return Ok(false);
        }
        for prev in &pdu.prev_events {
            if !heads.forward_extremities.contains(prev) && !self.in_graph(prev)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Writes a state given by event ids as a snapshot (a diff from `parent`).
    fn write_state_events(
        &self,
        batch: &mut Batch,
        interner: &mut Interner<'_>,
        parent: Option<u64>,
        state: &StateEvents,
    ) -> Result<u64> {
        let mut map = StateMap::new();
        for ((ty, key), id) in state {
            let sk = interner.state_key(&self.store, batch, &ty.to_string(), key)?;
            map.insert(sk, interner.event(&self.store, batch, id)?);
        }
        self.state.write_map(batch, interner, parent, map)
    }

    /// Writes the membership indexes of every member a state names whose indexed
    /// membership differs; returns those members.
    fn index_members(
        &self,
        batch: &mut Batch,
        room_id: &ruma::RoomId,
        state: &StateEvents,
        stream: u64,
    ) -> Result<Vec<OwnedUserId>> {
        let mut changed = Vec::new();
        for ((ty, key), id) in state {
            if *ty != ruma::events::StateEventType::RoomMember {
                continue;
            }
            let Ok(user) = OwnedUserId::try_from(key.as_str()) else { continue };
            let Some(pdu) = self.pdu_shared(id)? else { continue };
            let Some(membership) =
                pdu.content_value().get("membership").and_then(Value::as_str).map(MembershipState::from)
            else {
                continue;
            };
            let key = (room_id.as_str(), user.as_str());
            if ROOM_MEMBERS.get(&self.store, key)?.as_ref() == Some(&membership) {
                continue;
            }
            ROOM_MEMBERS.put(batch, key, &membership);
            let record = MembershipRecord { membership, stream, event_id: id.clone() };
            USER_ROOMS.put(batch, (user.as_str(), room_id.as_str()), &record);
            changed.push(user);
        }
        Ok(changed)
    }

    /// The indexes of an event in the timeline: redaction, relations, the room's timeline
    /// and the global event stream, memberships. Returns the user a member event is about.
    fn index_timeline_event(
        &self,
        batch: &mut Batch,
        pdu: &Pdu,
        json: &[u8],
        stream: u64,
    ) -> Result<Option<OwnedUserId>> {
        let room = pdu.room_id.as_str();
        if pdu.kind == TimelineEventType::RoomRedaction {
            self.apply_redaction(batch, pdu)?;
        }
        let content = pdu.content_value();
        if let Some(rel) = content.get("m.relates_to") {
            if let (Some(rel_type), Some(target)) =
                (rel.get("rel_type").and_then(Value::as_str), rel.get("event_id").and_then(Value::as_str))
            {
                RELATIONS.put(
                    batch,
                    (target, stream),
                    &RelationEntry {
                        rel_type: rel_type.to_owned(),
                        event_type: pdu.kind.to_string(),
                        event_id: pdu.event_id.clone(),
                        sender: Some(pdu.sender.clone()),
                    },
                );
                if rel_type == "m.thread" {
                    super::threads::note_reply(batch, &pdu.room_id, target, stream);
                }
                if super::threads::is_bundled(rel_type) {
                    super::threads::note_bundled(batch, target);
                }
            }
        }
        TIMELINE.put(batch, (room, stream), &TimelineEntry::new(pdu.event_id.as_str(), json));
        if let Some(at) = super::expiry::expiry_of(pdu, &content) {
            super::expiry::EXPIRING.put(batch, (at, pdu.event_id.as_str()), &room.to_owned());
        }
        EVENT_STREAM.put(batch, stream, &StreamEntry { room_id: pdu.room_id.clone(), event_id: pdu.event_id.clone() });
        if pdu.kind != TimelineEventType::RoomMember {
            return Ok(None);
        }
        self.members.note_member_event(&pdu.room_id, stream);
        let (Some(user), Some(membership)) =
            (pdu.state_key.as_deref(), content.get("membership").and_then(Value::as_str).map(MembershipState::from))
        else {
            return Ok(None);
        };
        // A member event that leaves the membership as it was (a new display name) keeps
        // the position the membership began at: /sync treats a room as newly joined after
        // that position only, not after every profile change.
        let since = match USER_ROOMS.get(&self.store, (user, room))? {
            Some(old) if old.membership == membership && membership == MembershipState::Join => old.stream,
            _ => stream,
        };
        USER_ROOMS.put(
            batch,
            (user, room),
            &MembershipRecord { membership: membership.clone(), stream: since, event_id: pdu.event_id.clone() },
        );
        ROOM_MEMBERS.put(batch, (room, user), &membership);
        Ok(OwnedUserId::try_from(user).ok())
    }

    /// Updates what memory keeps once an event is in the database, before its position
    /// can become durable (so before any sync reads up to it): heads, member lists, parsed
    /// PDUs, and redacted content.
    fn written(
        &self,
        pdu: Arc<Pdu>,
        placement: Placement,
        member_target: &Option<OwnedUserId>,
        before: Option<u64>,
        heads: &RoomHeads,
        meta: &EventMeta,
    ) {
        if matches!(placement, Placement::Outlier | Placement::RejectedOutlier) {
            return;
        }
        // Always replace: a reader that read the old heads before this write may only add
        // them where nothing is (see `Rooms::heads`).
        self.heads.lock().insert(pdu.room_id.clone(), heads.clone());
        if placement != Placement::Timeline {
            return;
        }
        if let Some(user) = member_target {
            self.members.invalidate(&pdu.room_id);
            self.members.invalidate_user(user);
        }
        let redacted = pdu.redaction_target();
        self.pdus.keep_new(pdu, meta.clone(), before);
        if let Some(redacted) = redacted {
            // No reader may keep the unredacted copy from here on.
            match self.state.short_event(&redacted) {
                Ok(short) => self.pdus.forget(&redacted, short),
                Err(_) => self.pdus.clear(),
            }
        }
    }

    /// Wakes the syncs a written timeline event concerns once it is durable (one fsync may
    /// cover many appends; inside a request the HTTP layer waits for it, see `stream`).
    pub(super) fn finish(&self, written: Written) -> Result<Pdu> {
        let Written { pdu, stream, placement, target } = written;
        if placement != Placement::Timeline {
            return Ok(pdu);
        }
        let joined = self.members_shared(&pdu.room_id, &MembershipState::Join)?;
        let peekers = self.peeks.users_in(&pdu.room_id);
        let notifier = self.notifier.clone();
        self.stream.after_durable(stream, move || {
            notifier.notify(joined.iter().chain(target.as_ref()).chain(peekers.iter()).map(|u| &**u), stream);
        })?;
        Ok(pdu)
    }
}

#[cfg(test)]
mod tests {
    use ruma::{owned_user_id, EventId, OwnedEventId, RoomId, RoomVersionId, UserId};
    use serde_json::json;

    use super::*;
    use crate::{rooms::build::NewEvent, store::Backend, Config, Services};

    fn open(dir: &std::path::Path) -> Arc<Services> {
        let config = Config {
            server_name: "commit.test".try_into().expect("server name"),
            database_path: dir.join("data"),
            database_backend: Backend::Rocksdb,
            database_fsync: false,
            ..Config::default()
        };
        Services::open(config).expect("open")
    }

    /// A room with its creator joined; returns (services, room id, creator).
    fn room(dir: &std::path::Path) -> (Arc<Services>, ruma::OwnedRoomId, OwnedUserId) {
        let s = open(dir);
        let alice = owned_user_id!("@alice:commit.test");
        let create = s
            .rooms
            .append_create(
                &RoomVersionId::V11,
                &alice,
                json!({"creator": alice}).as_object().cloned().expect("object"),
                None,
            )
            .expect("create");
        let room = create.room_id.clone();
        let join = NewEvent::state("m.room.member", alice.as_str(), json!({"membership": "join"}));
        s.rooms.append_local(&room, &alice, join, None).expect("join");
        (s, room, alice)
    }

    /// Builds and authorizes a message on the room's current heads, and commits it as
    /// `placement`.
    /// Version 12 derives the room id from the create event: the same user creating the
    /// same room many times within a millisecond still gets as many rooms, each usable.
    #[test]
    fn identical_version_12_rooms_created_at_once_stay_apart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = open(dir.path());
        let alice = owned_user_id!("@alice:commit.test");
        let mut rooms = std::collections::BTreeSet::new();
        for _ in 0..20 {
            let create =
                s.rooms.append_create(&RoomVersionId::V12, &alice, serde_json::Map::new(), None).expect("create");
            let join = NewEvent::state("m.room.member", alice.as_str(), json!({"membership": "join"}));
            s.rooms.append_local(&create.room_id, &alice, join, None).expect("the creator joins its own room");
            assert!(rooms.insert(create.room_id.clone()), "room {} made twice", create.room_id);
        }
        assert_eq!(rooms.len(), 20);
    }

    fn commit_message(s: &Services, room: &RoomId, sender: &UserId, placement: Placement) -> OwnedEventId {
        let rooms = &s.rooms;
        let mut counters = rooms.append_lock.lock();
        let heads = rooms.heads(room).expect("heads");
        let record = rooms.known_room(room).expect("room");
        let new = NewEvent::message("m.room.message", json!({"body": "hi"}).as_object().cloned().expect("object"));
        let built = rooms.build(&record.version, Some(room), &heads, sender, &new).expect("build");
        rooms.authorize_local(&built).expect("allowed");
        let id = built.pdu.event_id.clone();
        let append = Append {
            pdu: built.pdu,
            state_before: StateBefore::Snapshot(heads.snapshot),
            placement,
            txn: None,
            new_room: None,
            resolved_current: None,
        };
        let written = rooms.commit(&mut counters, append).expect("commit");
        drop(counters);
        rooms.finish(written).expect("finish");
        id
    }

    fn in_timeline(s: &Services, id: &EventId) -> bool {
        let meta = EVENT_META.get(&s.store, id.as_str()).expect("get").expect("stored");
        EVENT_STREAM.get(&s.store, meta.stream).expect("get").is_some()
    }

    fn extremities(s: &Services, room: &RoomId) -> Vec<OwnedEventId> {
        let mut ids = s.rooms.heads(room).expect("heads").forward_extremities;
        ids.sort();
        ids
    }

    /// Two events built on the same heads (as two servers do at once) are both forward
    /// extremities afterwards; the next local event references both and is the only one.
    #[test]
    fn concurrent_events_are_both_forward_extremities_until_referenced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (s, room, alice) = room(dir.path());
        let before = s.rooms.heads(&room).expect("heads");
        let first = commit_message(&s, &room, &alice, Placement::Timeline);
        // A second event built on the heads from before the first: its prev events are the
        // old extremities, as when a remote server sent at the same time.
        let mut both = vec![first.clone(), {
            let rooms = &s.rooms;
            let mut counters = rooms.append_lock.lock();
            let record = rooms.known_room(&room).expect("room");
            let new = NewEvent::message("m.room.message", json!({"body": "fork"}).as_object().cloned().expect("o"));
            let built = rooms.build(&record.version, Some(&room), &before, &alice, &new).expect("build");
            let id = built.pdu.event_id.clone();
            let append = Append {
                pdu: built.pdu,
                state_before: StateBefore::Snapshot(before.snapshot),
                placement: Placement::Timeline,
                txn: None,
                new_room: None,
                resolved_current: None,
            };
            rooms.commit(&mut counters, append).expect("commit");
            id
        }];
        both.sort();
        assert_eq!(extremities(&s, &room), both, "both branches are extremities");

        let merge = commit_message(&s, &room, &alice, Placement::Timeline);
        let pdu = s.rooms.pdu(&merge).expect("read").expect("stored");
        let mut prev = pdu.prev_events.clone();
        prev.sort();
        assert_eq!(prev, both, "the next event references both");
        assert_eq!(extremities(&s, &room), vec![merge.clone()]);
        assert!(in_timeline(&s, &merge));
    }

    /// A soft-failed event is stored with the state before it, is never in the timeline
    /// and never becomes a forward extremity; its prev events stay extremities.
    #[test]
    fn soft_failed_event_leaves_the_heads_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (s, room, alice) = room(dir.path());
        let heads = s.rooms.heads(&room).expect("heads");
        let soft = commit_message(&s, &room, &alice, Placement::SoftFailed);

        assert!(s.rooms.pdu(&soft).expect("read").is_some(), "kept for state resolution");
        assert!(!in_timeline(&s, &soft), "never shown to clients");
        let after = s.rooms.heads(&room).expect("heads");
        assert!(!after.forward_extremities.contains(&soft), "never a prev event");
        assert_eq!(after.forward_extremities, heads.forward_extremities, "its prev events stay extremities");
        assert_eq!(after.snapshot, heads.snapshot, "the current state does not change");
        let meta = EVENT_META.get(&s.store, soft.as_str()).expect("get").expect("meta");
        assert_eq!(STATE_BEFORE_EVENT.get(&s.store, meta.short).expect("get"), heads.snapshot);
        // What memory keeps matches what was written.
        let reopened = {
            drop(s);
            open(dir.path())
        };
        assert_eq!(reopened.rooms.heads(&room).expect("heads").forward_extremities, after.forward_extremities);
    }

    /// An outlier is the PDU alone: no timeline, no change to the room's heads.
    #[test]
    fn outlier_is_stored_outside_the_room_graph() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (s, room, alice) = room(dir.path());
        let heads = s.rooms.heads(&room).expect("heads");
        let outlier = commit_message(&s, &room, &alice, Placement::Outlier);

        assert!(s.rooms.pdu(&outlier).expect("read").is_some());
        assert!(!in_timeline(&s, &outlier));
        let after = s.rooms.heads(&room).expect("heads");
        assert_eq!(after.forward_extremities, heads.forward_extremities);
        assert_eq!(after.snapshot, heads.snapshot);
        let meta = EVENT_META.get(&s.store, outlier.as_str()).expect("get").expect("meta");
        assert_eq!(STATE_BEFORE_EVENT.get(&s.store, meta.short).expect("get"), None);
    }
}
