//! Parsed PDUs kept in memory, shared by every reader.
//!
//! Two kinds of events are read over and over, by everybody:
//!
//! - state events: every initial sync, `/members`, `/state` and `/context` reads whole room
//!   states (in a room of a hundred members, a hundred PDUs per request, the same ones for
//!   everybody). They are few next to messages and long-lived, so their parsed form is
//!   kept by short event id, up to [`STATE_CAPACITY`];
//! - the newest events: when a message arrives, every member's waiting sync reads it (a
//!   hundred parses of one event in a room of a hundred). The last [`RECENT_CAPACITY`]
//!   appended are kept by event id;
//! - events read back: every member's first sync reads the last events of the same rooms,
//!   and `/messages` and `/context` the same pages. The last [`READ_CAPACITY`] read from
//!   the database are kept by event id, apart from the newest, so that reading old history
//!   does not push the newest out.
//!
//! The metadata of the newest events (stream position, the sending device's transaction
//! id, the redaction) is kept with them: every member's sync reads it for the new event.
//!
//! The state snapshot before each of the newest events is kept too ([`RECENT_CAPACITY`]
//! of them): every member's sync checks the new event's visibility against it. It never
//! changes once written.
//!
//! The newest events are also kept as push rules read them ([`FlattenedJson`] of the stored
//! PDU), [`RECENT_CAPACITY`] of them, filled by the first reader: every member's unread
//! count evaluates the same new event.
//!
//! Least recently used go first. New events go in as they are appended.
//!
//! A stored PDU only ever changes when it is redacted. The redaction drops the entry
//! once written, before its position can be read by a sync, and advances an epoch; a
//! reader keeps what it read only if no redaction happened since it started reading, so
//! redacted content is never served from here once the redaction is written.

use std::{
    num::NonZeroUsize,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use hashlink::LruCache;
use parking_lot::Mutex;
use ruma::{push::FlattenedJson, EventId, OwnedEventId};

use super::{pdu::Pdu, EventMeta};
use crate::rooms::push_fields::PushFields;

/// Most state events kept (a member event parses to about 1–2 KiB).
pub const STATE_CAPACITY: usize = 4096;
/// Most of the newest events kept by id.
pub const RECENT_CAPACITY: usize = 256;
/// Most events read from the database kept by id (a message parses to about 1 KiB).
pub const READ_CAPACITY: usize = 1024;

/// An event flattened for push rules, and the fields it was cut down to.
type Flattened = (Arc<PushFields>, Arc<FlattenedJson>);

pub(super) struct PduCache {
    /// Advanced after every committed redaction.
    epoch: AtomicU64,
    state: Mutex<LruCache<u64, Arc<Pdu>>>,
    recent: Mutex<LruCache<OwnedEventId, Arc<Pdu>>>,
    read: Mutex<LruCache<OwnedEventId, Arc<Pdu>>>,
    flattened: Mutex<LruCache<OwnedEventId, Flattened>>,
    /// Event → the state snapshot before it (`None`: the room's first event, before any).
    before: Mutex<LruCache<OwnedEventId, Option<u64>>>,
    /// Event → its metadata (changed only by a redaction of the event).
    meta: Mutex<LruCache<OwnedEventId, EventMeta>>,
}

fn lru<K: std::hash::Hash + Eq, V>(capacity: usize) -> Mutex<LruCache<K, V>> {
    Mutex::new(LruCache::new(NonZeroUsize::new(capacity).map_or(1, NonZeroUsize::get)))
}

impl Default for PduCache {
    fn default() -> Self {
        PduCache {
            epoch: AtomicU64::new(0),
            state: lru(STATE_CAPACITY),
            recent: lru(RECENT_CAPACITY),
            read: lru(READ_CAPACITY),
            flattened: lru(RECENT_CAPACITY),
            before: lru(RECENT_CAPACITY),
            meta: lru(RECENT_CAPACITY),
        }
    }
}

impl PduCache {
    /// A state event by short id.
    pub(super) fn state(&self, short: u64) -> Option<Arc<Pdu>> {
        self.state.lock().get(&short).cloned()
    }

    /// One of the newest events or of those read last, by id.
    pub(super) fn recent(&self, event_id: &EventId) -> Option<Arc<Pdu>> {
        if let Some(pdu) = self.recent.lock().get(event_id) {
            return Some(pdu.clone());
        }
        self.read.lock().get(event_id).cloned()
    }

    /// Keeps an event read from the database, unless a redaction was written since `epoch`
    /// was taken.
    pub(super) fn keep_read(&self, pdu: Arc<Pdu>, epoch: u64) {
        let mut read = self.read.lock();
        if self.epoch.load(Ordering::SeqCst) == epoch {
            read.insert(pdu.event_id.clone(), pdu);
        }
    }

    /// An event as push rules reading `fields` read it, if kept.
    pub(super) fn flattened(&self, event_id: &EventId, fields: &Arc<PushFields>) -> Option<Arc<FlattenedJson>> {
        let mut flattened = self.flattened.lock();
        let (kept_for, event) = flattened.get(event_id)?;
        (Arc::ptr_eq(kept_for, fields) || **kept_for == **fields).then(|| event.clone())
    }

    /// Keeps an event's flattened form read from the database, unless a redaction was
    /// written since `epoch` was taken.
    pub(super) fn keep_flattened(
        &self,
        event_id: OwnedEventId,
        fields: Arc<PushFields>,
        event: Arc<FlattenedJson>,
        epoch: u64,
    ) {
        let mut flattened = self.flattened.lock();
        if self.epoch.load(Ordering::SeqCst) == epoch {
            flattened.insert(event_id, (fields, event));
        }
    }

    /// Taken before reading from the database, handed back to [`PduCache::keep_state`].
    pub(super) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// Keeps a state event read from the database, unless a redaction was written since
    /// `epoch` was taken (what was read may predate it).
    pub(super) fn keep_state(&self, short: u64, pdu: Arc<Pdu>, epoch: u64) {
        let mut state = self.state.lock();
        if self.epoch.load(Ordering::SeqCst) == epoch {
            state.insert(short, pdu);
        }
    }

    /// The state snapshot before an event, if kept (`Some(None)`: no state before it).
    pub(super) fn state_before(&self, event_id: &EventId) -> Option<Option<u64>> {
        self.before.lock().get(event_id).copied()
    }

    /// Keeps the state snapshot before an event (it never changes once written).
    pub(super) fn keep_state_before(&self, event_id: OwnedEventId, snapshot: Option<u64>) {
        self.before.lock().insert(event_id, snapshot);
    }

    /// An event's metadata, if kept.
    pub(super) fn meta(&self, event_id: &EventId) -> Option<EventMeta> {
        self.meta.lock().get(event_id).cloned()
    }

    /// Keeps an event's metadata read from the database, unless a redaction was written
    /// since `epoch` was taken.
    pub(super) fn keep_meta(&self, event_id: OwnedEventId, meta: EventMeta, epoch: u64) {
        let mut kept = self.meta.lock();
        if self.epoch.load(Ordering::SeqCst) == epoch {
            kept.insert(event_id, meta);
        }
    }

    /// Keeps an event just appended (nothing can have redacted it yet), its metadata and
    /// the state snapshot before it.
    pub(super) fn keep_new(&self, pdu: Arc<Pdu>, meta: EventMeta, before: Option<u64>) {
        self.keep_state_before(pdu.event_id.clone(), before);
        if pdu.is_state() {
            self.state.lock().insert(meta.short, pdu.clone());
        }
        self.meta.lock().insert(pdu.event_id.clone(), meta);
        self.recent.lock().insert(pdu.event_id.clone(), pdu);
    }

    /// Called once a redaction of `event_id` (short id `short`, if it has one) is written.
    pub(super) fn forget(&self, event_id: &EventId, short: Option<u64>) {
        let mut state = self.state.lock();
        let mut recent = self.recent.lock();
        let mut read = self.read.lock();
        let mut flattened = self.flattened.lock();
        let mut meta = self.meta.lock();
        self.epoch.fetch_add(1, Ordering::SeqCst);
        if let Some(short) = short {
            state.remove(&short);
        }
        recent.remove(event_id);
        read.remove(event_id);
        flattened.remove(event_id);
        meta.remove(event_id);
    }

    /// Drops everything (when what a redaction concerns cannot be told).
    pub(super) fn clear(&self) {
        let mut state = self.state.lock();
        let mut recent = self.recent.lock();
        let mut read = self.read.lock();
        let mut flattened = self.flattened.lock();
        let mut meta = self.meta.lock();
        self.epoch.fetch_add(1, Ordering::SeqCst);
        state.clear();
        recent.clear();
        read.clear();
        flattened.clear();
        meta.clear();
    }
}
