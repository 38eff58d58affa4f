//! Recently built initial syncs, answered again as long as nothing they show has changed.
//!
//! An initial sync is the most expensive request a client makes, and clients repeat it: a
//! reverse proxy or a phone's network times the first attempt out and the client asks
//! again, or a user signs in on a second client. Synapse keeps such responses for two
//! minutes; Hearth keeps them while they are exact. An entry is keyed by user, device and
//! the request's options, and is served only if the stream position and typing version
//! are unchanged (everything a sync shows moves one of them) and the device's one-time and
//! fallback key counts (which move neither) are the same. Forgetting a room drops the
//! user's entries. Entries expire after two minutes; at most [`MAX_ENTRIES`] bodies and
//! [`MAX_BYTES`] in all are kept.

use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, Instant},
};

use bytes::Bytes;
use parking_lot::Mutex;
use ruma::{OwnedUserId, UserId};

use super::SyncToken;

/// How long an unchanged response stays.
const TTL: Duration = Duration::from_secs(120);
const MAX_ENTRIES: usize = 64;
const MAX_BYTES: usize = 8 * 1024 * 1024;

/// What the response was built for: device and the request's options (filter, full_state,
/// set_presence), as the client wrote them.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    pub user: OwnedUserId,
    pub device: String,
    pub options: String,
}

/// What a response depends on besides the stream: the device's key counts.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyCounts {
    pub one_time: BTreeMap<String, u64>,
    pub unused_fallback: Vec<String>,
}

struct Entry {
    token: SyncToken,
    keys: KeyCounts,
    body: Bytes,
    at: Instant,
}

#[derive(Default)]
pub struct InitialSyncCache {
    entries: Mutex<HashMap<CacheKey, Entry>>,
}

impl InitialSyncCache {
    /// The stored body, if it was built at `token` with the same key counts (`keys`, read
    /// only when there is such an entry) and is fresh.
    pub fn get<E>(
        &self,
        key: &CacheKey,
        token: SyncToken,
        keys: impl FnOnce() -> Result<KeyCounts, E>,
    ) -> Result<Option<Bytes>, E> {
        let kept = {
            let mut entries = self.entries.lock();
            match entries.get(key) {
                Some(e) if e.token == token && e.at.elapsed() < TTL => (e.keys.clone(), e.body.clone()),
                Some(_) => {
                    entries.remove(key);
                    return Ok(None);
                }
                None => return Ok(None),
            }
        };
        // Read outside the lock: the counts come from the database.
        if kept.0 != keys()? {
            self.entries.lock().remove(key);
            return Ok(None);
        }
        Ok(Some(kept.1))
    }

    pub fn put(&self, key: CacheKey, token: SyncToken, keys: KeyCounts, body: Bytes) {
        if body.len() > MAX_BYTES / 2 {
            return;
        }
        let mut entries = self.entries.lock();
        entries.retain(|_, e| e.at.elapsed() < TTL);
        let mut total: usize = entries.values().map(|e| e.body.len()).sum::<usize>() + body.len();
        while entries.len() >= MAX_ENTRIES || total > MAX_BYTES {
            let Some(oldest) = entries.iter().min_by_key(|(_, e)| e.at).map(|(k, _)| k.clone()) else { break };
            if let Some(e) = entries.remove(&oldest) {
                total -= e.body.len();
            }
        }
        entries.insert(key, Entry { token, keys, body, at: Instant::now() });
    }

    /// Drops a user's entries (after a change the stream does not show, such as forgetting
    /// a room).
    pub fn forget_user(&self, user: &UserId) {
        self.entries.lock().retain(|k, _| k.user != user);
    }
}
