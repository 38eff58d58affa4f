//! Rooms: PDUs, state, timelines and memberships, on one "build and append" path.
//!
//! Every local event is built as a full, signed PDU of its room's version, checked against
//! the room's authorization rules (ruma's state-res), and appended in one atomic batch:
//! the PDU, its short id, the new state snapshot if it is a state event, the room's forward
//! extremities, the timeline and global stream indexes, membership indexes and the
//! sender's transaction id. Appends are serialised by one lock, which also guards the
//! stream and short-id counters; a small server signs and fsyncs far slower than it locks.

pub mod admin;
pub mod aliases;
pub mod append;
pub mod authorize;
pub mod backfill;
mod build;
pub mod commit;
pub mod create;
pub mod directory;
pub mod erasure;
pub mod expiry;
pub mod hierarchy;
pub mod members;
pub mod membership;
pub mod pdu;
mod pdu_cache;
pub mod peek;
pub mod power;
pub mod purge;
pub mod push_fields;
pub mod receipts;
pub mod redaction;
pub mod relations;
pub mod remote;
pub mod reports;
pub mod resolve;
pub mod resolve_v1;
pub mod state;
pub mod threads;
pub mod timeline;
pub mod typing;
pub mod upgrade;

use std::{collections::HashMap, sync::Arc};

use parking_lot::Mutex;
use ruma::{
    events::room::member::MembershipState, events::StateEventType, EventId, OwnedEventId, OwnedRoomId, OwnedServerName,
    RoomId, RoomVersionId, UserId,
};
use serde::{Deserialize, Serialize};

use self::{
    pdu::Pdu,
    state::{StateMap, StateReader},
};
pub use crate::stream::{StreamEntry, EVENT_STREAM};
use crate::{
    error::{Error, Result},
    rooms::push_fields::PushFields,
    server_key::ServerKey,
    store::codec::json_value,
    store::{
        codec::{CodecError, ValueCodec},
        tables, Store, Table,
    },
    stream::Stream,
    sync::notifier::Notifier,
};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoomRecord {
    pub version: RoomVersionId,
    pub created_ts: u64,
}

/// The head of a room: what the next local event builds on.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RoomHeads {
    /// Current state snapshot.
    pub snapshot: Option<u64>,
    pub forward_extremities: Vec<OwnedEventId>,
    pub depth: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventMeta {
    pub room_id: OwnedRoomId,
    pub stream: u64,
    pub short: u64,
    /// (device id, transaction id) of the local device that sent it.
    pub txn: Option<(String, String)>,
    /// The redaction that redacted this event, if any.
    #[serde(default)]
    pub redacted_by: Option<OwnedEventId>,
    /// Known only as another event's auth or state event: outside the room's graph.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub outlier: bool,
    /// Kept for state resolution but refused by the room's current state: never shown.
    /// Also set for a rejected event.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub soft_failed: bool,
    /// Refused by the auth rules (against its auth events or the state before it): kept
    /// so that events naming it as a prev event can be placed, but it changes no state,
    /// is never a forward extremity, and is never shown or served.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rejected: bool,
    /// A timeline event with history missing behind it (prev events this server never
    /// had): a rejoin, or events received after a gap. Paging back past it goes through
    /// the history fetched for that gap ([`backfill`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub gap_behind: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MembershipRecord {
    pub membership: MembershipState,
    /// Stream position of the event that set it (for a join, the one that began it: a
    /// later join → join update keeps it).
    pub stream: u64,
    pub event_id: OwnedEventId,
}

/// An event that relates to another (`m.relates_to`): reply threads, edits, reactions.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RelationEntry {
    pub rel_type: String,
    pub event_type: String,
    pub event_id: OwnedEventId,
    /// Who sent the relating event (absent in rows written before it was kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender: Option<ruma::OwnedUserId>,
}

json_value!(RoomRecord, RoomHeads, EventMeta, MembershipRecord, RelationEntry);

/// A membership in the `ROOM_MEMBERS` index: its name (`join`, `invite`, …), the same bytes
/// the index held when it stored strings.
impl ValueCodec for MembershipState {
    fn encode_value(&self) -> Vec<u8> {
        self.as_str().as_bytes().to_vec()
    }

    fn decode_value(bytes: &[u8]) -> std::result::Result<Self, CodecError> {
        std::str::from_utf8(bytes).map(MembershipState::from).map_err(|e| CodecError(e.to_string()))
    }
}

/// A row of a room's timeline: the event's id and the event cut down to the fields the
/// default push rules read ([`PushFields::stored`]), tagged with that field set's
/// fingerprint. Counting a backlog of unread events then reads one range of rows in
/// room order, where it read each PDU by id: in the benchmark's first sync that was a
/// B-tree descent and a 640-byte parse per event, spread over the whole PDU table.
///
/// Stored as the id, then (if there is a view) a NUL, the fingerprint (4 bytes, big
/// endian) and the view's JSON. Event ids hold no NUL, so rows written by versions before
/// the view existed read as an id with no view, and are counted from their PDU as before.
/// (The other way round does not work: an older Hearth cannot read these rows.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimelineEntry {
    pub event_id: String,
    /// (fingerprint of the fields it was cut to, the cut-down event as JSON).
    pub push_view: Option<(u32, String)>,
}

impl TimelineEntry {
    /// The row for an event whose stored PDU is `pdu` (no view if it cannot be cut: the
    /// same events that [`crate::rooms::push_fields::view`] leaves out).
    pub fn new(event_id: &str, pdu: &[u8]) -> TimelineEntry {
        let fields = PushFields::stored();
        let push_view = crate::rooms::push_fields::slim(pdu, fields).map(|v| (PushFields::stored_fingerprint(), v));
        TimelineEntry { event_id: event_id.to_owned(), push_view }
    }

    /// The view, if it was cut to the fields the server's default rules read today.
    pub fn into_current_view(self) -> Option<String> {
        let (fingerprint, view) = self.push_view?;
        (fingerprint == PushFields::stored_fingerprint()).then_some(view)
    }
}

impl ValueCodec for TimelineEntry {
    fn encode_value(&self) -> Vec<u8> {
        let mut out = self.event_id.as_bytes().to_vec();
        if let Some((fingerprint, view)) = &self.push_view {
            out.push(0);
            out.extend_from_slice(&fingerprint.to_be_bytes());
            out.extend_from_slice(view.as_bytes());
        }
        out
    }

    fn decode_value(bytes: &[u8]) -> std::result::Result<Self, CodecError> {
        let text = |b: &[u8]| String::from_utf8(b.to_vec()).map_err(|e| CodecError(e.to_string()));
        let Some(nul) = bytes.iter().position(|b| *b == 0) else {
            return Ok(TimelineEntry { event_id: text(bytes)?, push_view: None });
        };
        let (id, rest) = (&bytes[..nul], &bytes[nul + 1..]);
        let (fingerprint, view) = match rest.split_first_chunk::<4>() {
            Some((fp, view)) => (u32::from_be_bytes(*fp), view),
            None => return Err(CodecError("timeline row: short view tag".into())),
        };
        Ok(TimelineEntry { event_id: text(id)?, push_view: Some((fingerprint, text(view)?)) })
    }
}

pub const ROOMS: Table<String, RoomRecord> = Table::new(tables::ROOMS);
pub const PDUS: Table<String, Vec<u8>> = Table::new(tables::PDUS);
pub const EVENT_META: Table<String, EventMeta> = Table::new(tables::EVENT_META);
pub const ROOM_HEADS: Table<String, RoomHeads> = Table::new(tables::ROOM_HEADS);
pub const TIMELINE: Table<(String, u64), TimelineEntry> = Table::new(tables::TIMELINE);
pub const USER_ROOMS: Table<(String, String), MembershipRecord> = Table::new(tables::USER_ROOMS);
pub const ROOM_MEMBERS: Table<(String, String), MembershipState> = Table::new(tables::ROOM_MEMBERS);
/// (sender, device id, room id, event type, transaction id) → event id. Like Synapse, a
/// transaction id is unique within its request (room and type), so the same id in another
/// room is a new send.
pub const TRANSACTIONS: Table<(String, String, String, String, String), String> = Table::new(tables::TRANSACTIONS);
pub const ALIASES: Table<String, String> = Table::new(tables::ALIASES);
pub const PUBLISHED_ROOMS: Table<String, ()> = Table::new(tables::PUBLISHED_ROOMS);
pub const RELATIONS: Table<(String, u64), RelationEntry> = Table::new(tables::RELATIONS);

/// State event types shown of a room to someone not in it yet (an invite's or a knock's
/// stripped state): what a client needs to show the room.
pub const PREVIEW_STATE_TYPES: &[&str] = &[
    "m.room.create",
    "m.room.join_rules",
    "m.room.name",
    "m.room.avatar",
    "m.room.canonical_alias",
    "m.room.encryption",
    "m.room.topic",
];

/// Room versions Hearth implements (offered in `/capabilities`, accepted by `createRoom`
/// and room upgrades).
pub const ROOM_VERSIONS: &[RoomVersionId] = &[
    RoomVersionId::V1,
    RoomVersionId::V2,
    RoomVersionId::V3,
    RoomVersionId::V4,
    RoomVersionId::V5,
    RoomVersionId::V6,
    RoomVersionId::V7,
    RoomVersionId::V8,
    RoomVersionId::V9,
    RoomVersionId::V10,
    RoomVersionId::V11,
    RoomVersionId::V12,
];

/// Counters advanced under the append lock.
pub struct Counters {
    pub next_short: u64,
}

pub struct Rooms {
    pub store: Arc<Store>,
    pub server_name: OwnedServerName,
    pub server_key: Arc<ServerKey>,
    pub state: StateReader,
    pub notifier: Arc<Notifier>,
    pub stream: Arc<Stream>,
    append_lock: Mutex<Counters>,
    members: members::MemberCache,
    pdus: pdu_cache::PduCache,
    /// Where each room's newest receipt is on the stream.
    receipt_marks: crate::stream::Marks<OwnedRoomId>,
    /// Room records read so far: written once, when the room is created.
    records: Mutex<HashMap<OwnedRoomId, RoomRecord>>,
    /// Each room's heads once read, replaced by every append after its write (before its
    /// position can become durable), so no reader finds older heads here than on disk.
    heads: Mutex<HashMap<OwnedRoomId, RoomHeads>>,
    /// Erased users, whose events those not there at the time see redacted.
    erased: erasure::Erased,
    /// Devices peeking into rooms (MSC2753).
    peeks: peek::Peeks,
    /// The stream position of the newest invite to a room elsewhere, once read (see
    /// [`Rooms::remote_invites_between`]).
    remote_invites_newest: Mutex<Option<u64>>,
}

impl Rooms {
    pub fn new(
        store: Arc<Store>,
        server_name: OwnedServerName,
        server_key: Arc<ServerKey>,
        stream: Arc<Stream>,
    ) -> Result<Self> {
        let max_short = state::max_short_id(&store)?;
        let members = members::MemberCache::new(stream.written());
        let receipt_marks = crate::stream::Marks::new(stream.written());
        let erased = erasure::Erased::load(&store)?;
        let peeks = peek::Peeks::load(&store)?;
        Self::index_threads(&store)?;
        Self::index_bundled_targets(&store)?;
        Ok(Rooms {
            state: StateReader::new(store.clone()),
            store,
            server_name,
            server_key,
            notifier: stream.notifier.clone(),
            stream,
            append_lock: Mutex::new(Counters { next_short: max_short + 1 }),
            members,
            pdus: Default::default(),
            receipt_marks,
            records: Mutex::default(),
            heads: Mutex::default(),
            peeks,
            erased,
            remote_invites_newest: Mutex::default(),
        })
    }

    /// The newest committed stream position.
    pub fn stream_now(&self) -> u64 {
        self.stream.now()
    }

    pub fn room(&self, room_id: &RoomId) -> Result<Option<RoomRecord>> {
        if let Some(record) = self.records.lock().get(room_id) {
            return Ok(Some(record.clone()));
        }
        let record = ROOMS.get(&self.store, room_id.as_str())?;
        if let Some(r) = &record {
            self.records.lock().insert(room_id.to_owned(), r.clone());
        }
        Ok(record)
    }

    /// The room's record, or 404 for a room this server does not know.
    pub fn known_room(&self, room_id: &RoomId) -> Result<RoomRecord> {
        self.room(room_id)?.ok_or_else(|| Error::not_found("Unknown room"))
    }

    pub fn heads(&self, room_id: &RoomId) -> Result<RoomHeads> {
        if let Some(heads) = self.heads.lock().get(room_id) {
            return Ok(heads.clone());
        }
        let Some(heads) = ROOM_HEADS.get(&self.store, room_id.as_str())? else { return Ok(RoomHeads::default()) };
        // An append that wrote after this read has put its own heads first: keep those.
        Ok(self.heads.lock().entry(room_id.to_owned()).or_insert(heads).clone())
    }

    /// The room's current state snapshot: [`Rooms::heads`] without copying its
    /// extremities (read for every member of every message by push evaluation).
    pub fn snapshot(&self, room_id: &RoomId) -> Result<Option<u64>> {
        if let Some(heads) = self.heads.lock().get(room_id) {
            return Ok(heads.snapshot);
        }
        Ok(self.heads(room_id)?.snapshot)
    }

    pub fn pdu(&self, event_id: &EventId) -> Result<Option<Pdu>> {
        let Some(bytes) = PDUS.get(&self.store, event_id.as_str())? else { return Ok(None) };
        self.parse_pdu(event_id, &bytes).map(Some)
    }

    /// A PDU as stored, parsed.
    fn parse_pdu(&self, event_id: &EventId, bytes: &[u8]) -> Result<Pdu> {
        let json: ruma::CanonicalJsonObject =
            serde_json::from_slice(bytes).map_err(|e| Error::internal(format!("stored PDU unreadable: {e}")))?;
        // Only a v12 create event lacks `room_id` (its room id derives from its own id);
        // every other PDU carries it, so the metadata lookup is skipped for them.
        let meta = match json.contains_key("room_id") {
            true => None,
            false => EVENT_META.get(&self.store, event_id.as_str())?,
        };
        let room = meta.as_ref().map(|m| m.room_id.as_ref());
        Pdu::from_json(event_id.to_owned(), json, room)
    }

    /// [`Rooms::pdu_shared`] for many events: those not in memory read in one batch (on
    /// SQLite one read transaction, not one per event). `None` where an event is unknown.
    pub fn pdus_shared(&self, ids: &[ruma::OwnedEventId]) -> Result<Vec<Option<Arc<Pdu>>>> {
        let mut out: Vec<Option<Arc<Pdu>>> = ids.iter().map(|id| self.pdus.recent(id)).collect();
        let missing: Vec<usize> = (0..ids.len()).filter(|&i| out[i].is_none()).collect();
        if missing.is_empty() {
            return Ok(out);
        }
        let epoch = self.pdus.epoch();
        let stored = PDUS.get_many(&self.store, missing.iter().map(|&i| ids[i].as_str()))?;
        for (&i, bytes) in missing.iter().zip(stored) {
            if let Some(bytes) = bytes {
                let pdu = Arc::new(self.parse_pdu(&ids[i], &bytes)?);
                self.pdus.keep_read(pdu.clone(), epoch);
                out[i] = Some(pdu);
            }
        }
        Ok(out)
    }

    /// [`Rooms::pdu`], shared: one of the newest events, or of those read last, comes from
    /// memory.
    pub fn pdu_shared(&self, event_id: &EventId) -> Result<Option<Arc<Pdu>>> {
        if let Some(pdu) = self.pdus.recent(event_id) {
            return Ok(Some(pdu));
        }
        let epoch = self.pdus.epoch();
        let pdu = self.pdu(event_id)?.map(Arc::new);
        if let Some(pdu) = &pdu {
            self.pdus.keep_read(pdu.clone(), epoch);
        }
        Ok(pdu)
    }

    pub fn event_meta(&self, event_id: &EventId) -> Result<Option<EventMeta>> {
        if let Some(meta) = self.pdus.meta(event_id) {
            return Ok(Some(meta));
        }
        let epoch = self.pdus.epoch();
        let meta = EVENT_META.get(&self.store, event_id.as_str())?;
        if let Some(meta) = &meta {
            self.pdus.keep_meta(event_id.to_owned(), meta.clone(), epoch);
        }
        Ok(meta)
    }

    pub fn current_state_map(&self, room_id: &RoomId) -> Result<Arc<StateMap>> {
        match self.heads(room_id)?.snapshot {
            Some(s) => self.state.materialise(s),
            None => Ok(Arc::new(StateMap::new())),
        }
    }

    /// A state event from a state map.
    pub fn state_event_in(&self, map: &StateMap, event_type: &StateEventType, state_key: &str) -> Result<Option<Pdu>> {
        Ok(self.state_event_shared(map, event_type, state_key)?.map(Arc::unwrap_or_clone))
    }

    /// [`Rooms::state_event_in`], shared with other readers (no copy).
    pub fn state_event_shared(
        &self,
        map: &StateMap,
        event_type: &StateEventType,
        state_key: &str,
    ) -> Result<Option<Arc<Pdu>>> {
        let Some(sk) = self.state.lookup_state_key(&event_type.to_string(), state_key)? else { return Ok(None) };
        let Some(&short) = map.get(&sk) else { return Ok(None) };
        self.state_pdu(short)
    }

    /// A state event by short id, parsed once for everybody.
    fn state_pdu(&self, short: u64) -> Result<Option<Arc<Pdu>>> {
        if let Some(pdu) = self.pdus.state(short) {
            return Ok(Some(pdu));
        }
        let epoch = self.pdus.epoch();
        let Some(pdu) = self.pdu(&self.state.event_id(short)?)? else { return Ok(None) };
        let pdu = Arc::new(pdu);
        self.pdus.keep_state(short, pdu.clone(), epoch);
        Ok(Some(pdu))
    }

    /// A current state event.
    pub fn state_event(&self, room_id: &RoomId, event_type: &StateEventType, state_key: &str) -> Result<Option<Pdu>> {
        let map = self.current_state_map(room_id)?;
        self.state_event_in(&map, event_type, state_key)
    }

    /// Every event of a state map.
    pub fn state_events(&self, map: &StateMap) -> Result<Vec<Arc<Pdu>>> {
        let mut out = Vec::with_capacity(map.len());
        for &short in map.values() {
            if let Some(pdu) = self.state_pdu(short)? {
                out.push(pdu);
            }
        }
        Ok(out)
    }

    /// The users a state map has joined.
    pub fn joined_in(&self, map: &StateMap) -> Result<Vec<ruma::OwnedUserId>> {
        let mut joined = Vec::new();
        for (&key, &short) in map {
            let (kind, state_key) = self.state.state_key_pair(key)?;
            if kind != StateEventType::RoomMember {
                continue;
            }
            let Some(pdu) = self.state_pdu(short)? else { continue };
            if pdu.membership() == Some(MembershipState::Join) {
                if let Ok(user) = UserId::parse(state_key) {
                    joined.push(user);
                }
            }
        }
        Ok(joined)
    }

    /// The state before an event (for `/members?at=` and `/context`).
    pub fn state_before(&self, event_id: &EventId) -> Result<Arc<StateMap>> {
        let snapshot = match self.pdus.state_before(event_id) {
            Some(kept) => kept,
            None => {
                let short = self.state.short_event(event_id)?.ok_or_else(|| Error::not_found("Unknown event"))?;
                let snapshot = state::STATE_BEFORE_EVENT.get(&self.store, short)?;
                self.pdus.keep_state_before(event_id.to_owned(), snapshot);
                snapshot
            }
        };
        match snapshot {
            Some(s) => self.state.materialise(s),
            None => Ok(Arc::new(StateMap::new())),
        }
    }

    /// The state right after an event: the state before it, plus the event if it is state
    /// (and was not rejected).
    pub fn state_after(&self, event_id: &EventId) -> Result<Arc<StateMap>> {
        let before = self.state_before(event_id)?;
        if self.event_meta(event_id)?.is_some_and(|m| m.rejected) {
            return Ok(before);
        }
        let Some(pdu) = self.pdu(event_id)? else { return Ok(before) };
        let Some(key) = &pdu.state_key else { return Ok(before) };
        let (Some(sk), Some(short)) =
            (self.state.lookup_state_key(&pdu.kind.to_string(), key)?, self.state.short_event(event_id)?)
        else {
            return Ok(before);
        };
        let mut map = (*before).clone();
        map.insert(sk, short);
        Ok(Arc::new(map))
    }

    /// Refuses callers not joined to the room: 404 for an unknown room, 403 otherwise.
    pub fn require_joined(&self, room_id: &RoomId, user_id: &UserId) -> Result<()> {
        if self.is_joined(room_id, user_id)? {
            return Ok(());
        }
        self.known_room(room_id)?;
        Err(Error::forbidden("You are not joined to this room"))
    }

    /// A user's membership in a room.
    pub fn membership(&self, room_id: &RoomId, user_id: &UserId) -> Result<Option<MembershipRecord>> {
        let all = self.user_memberships(user_id)?;
        Ok(all.binary_search_by(|(r, _)| r.as_str().cmp(room_id.as_str())).ok().map(|i| all[i].1.clone()))
    }

    pub fn is_joined(&self, room_id: &RoomId, user_id: &UserId) -> Result<bool> {
        Ok(self.membership(room_id, user_id)?.is_some_and(|m| m.membership == MembershipState::Join))
    }

    /// Rooms where the user's membership is one of `memberships`.
    pub fn rooms_of(
        &self,
        user_id: &UserId,
        memberships: &[MembershipState],
    ) -> Result<Vec<(OwnedRoomId, MembershipRecord)>> {
        let all = self.user_memberships(user_id)?;
        Ok(all.iter().filter(|(_, rec)| memberships.contains(&rec.membership)).cloned().collect())
    }

    /// The event a device already sent with this transaction id.
    pub fn transaction(
        &self,
        user: &UserId,
        device: &str,
        room_id: &RoomId,
        kind: &ruma::events::TimelineEventType,
        txn: &str,
    ) -> Result<Option<OwnedEventId>> {
        let kind = kind.to_string();
        Ok(TRANSACTIONS
            .get(&self.store, (user.as_str(), device, room_id.as_str(), &kind, txn))?
            .and_then(|id| OwnedEventId::try_from(id).ok()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeline_rows_carry_a_view_and_read_old_rows() {
        let pdu = br#"{"type":"m.room.message","sender":"@a:x","content":{"body":"hi","msgtype":"m.text"},"depth":4}"#;
        let row = TimelineEntry::new("$ev", pdu);
        let (fingerprint, view) = row.push_view.clone().expect("a view");
        assert_eq!(fingerprint, PushFields::stored_fingerprint());
        assert!(view.contains(r#""body":"hi""#) && !view.contains("depth"), "{view}");
        assert_eq!(TimelineEntry::decode_value(&row.encode_value()).expect("decodes"), row);
        assert_eq!(row.clone().into_current_view().as_deref(), Some(view.as_str()));

        // A row written before views: the id alone.
        let old = TimelineEntry::decode_value(b"$ev").expect("decodes");
        assert_eq!(old, TimelineEntry { event_id: "$ev".into(), push_view: None });
        assert_eq!(old.into_current_view(), None);
        // A view cut to another field set is not used.
        let other = TimelineEntry { event_id: "$ev".into(), push_view: Some((fingerprint ^ 1, view)) };
        let decoded = TimelineEntry::decode_value(&other.encode_value()).expect("decodes");
        assert_eq!(decoded.into_current_view(), None);
        // A PDU that cannot be cut (not JSON) gets a row without a view.
        assert_eq!(TimelineEntry::new("$ev", b"not json").push_view, None);
        assert!(TimelineEntry::decode_value(b"$ev\0ab").is_err());
    }
}
