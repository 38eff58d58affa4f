//! Parsed state events kept in memory, shared by every reader of room state.
//!
//! Every initial sync, `/members`, `/state` and `/context` reads whole room states: in a
//! room of a hundred members, a hundred PDUs fetched and parsed per request, the same ones
//! for everybody. State events are few next to messages, long-lived, and read by all, so
//! their parsed form is kept here by short event id, up to [`CAPACITY`] of them (least
//! recently used go first). New state events go in as they are appended.
//!
//! A stored PDU only ever changes when it is redacted. The redaction drops the entry
//! after its write and advances an epoch; a reader keeps what it read only if no
//! redaction happened since it started reading, so redacted content is never served
//! from here once the redaction is written.

use std::{
    num::NonZeroUsize,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use hashlink::LruCache;
use parking_lot::Mutex;

use super::pdu::Pdu;

/// Most state events kept (a member event parses to about 1–2 KiB).
pub const CAPACITY: usize = 4096;

pub(super) struct StatePduCache {
    /// Advanced after every committed redaction.
    epoch: AtomicU64,
    events: Mutex<LruCache<u64, Arc<Pdu>>>,
}

impl Default for StatePduCache {
    fn default() -> Self {
        let capacity = NonZeroUsize::new(CAPACITY).map_or(1, NonZeroUsize::get);
        StatePduCache { epoch: AtomicU64::new(0), events: Mutex::new(LruCache::new(capacity)) }
    }
}

impl StatePduCache {
    pub(super) fn get(&self, short: u64) -> Option<Arc<Pdu>> {
        self.events.lock().get(&short).cloned()
    }

    /// Taken before reading from the database, handed back to [`StatePduCache::keep`].
    pub(super) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// Keeps an event read from the database, unless a redaction was written since
    /// `epoch` was taken (what was read may predate it).
    pub(super) fn keep(&self, short: u64, pdu: Arc<Pdu>, epoch: u64) {
        let mut events = self.events.lock();
        if self.epoch.load(Ordering::SeqCst) == epoch {
            events.insert(short, pdu);
        }
    }

    /// Keeps an event just appended (nothing can have redacted it yet).
    pub(super) fn keep_new(&self, short: u64, pdu: Arc<Pdu>) {
        self.events.lock().insert(short, pdu);
    }

    /// Called after a redaction of the event `short` is written.
    pub(super) fn forget(&self, short: u64) {
        let mut events = self.events.lock();
        self.epoch.fetch_add(1, Ordering::SeqCst);
        events.remove(&short);
    }
}
