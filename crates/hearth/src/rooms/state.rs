//! Room state: interned short ids and state snapshots stored as diffs.
//!
//! Event ids and (event type, state key) pairs are interned to `u64` short ids, so a state
//! map is `state key short id → event short id`. Each state event creates a snapshot that
//! records only what it changed relative to its parent; every [`MAX_DIFF_DEPTH`] steps a
//! full snapshot is written so materialising one never walks far. Materialised snapshots
//! are kept in a small cache: sync and auth ask for the same few current states all day.

use std::{collections::BTreeMap, sync::Arc};

use parking_lot::Mutex;
use ruma::{events::StateEventType, EventId, OwnedEventId};
use serde::{Deserialize, Serialize};

use crate::{
    error::{Error, Result},
    store::codec::json_value,
    store::{tables, Batch, KeyRange, Order, Store, Table},
};

pub type ShortId = u64;
/// A room state: short state key → short event id.
pub type StateMap = BTreeMap<ShortId, ShortId>;

/// Diff steps between full snapshots.
pub const MAX_DIFF_DEPTH: u32 = 32;
const CACHE_ENTRIES: usize = 1024;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Snapshot {
    pub parent: Option<ShortId>,
    pub depth: u32,
    /// Entries set (added or replaced) relative to the parent.
    pub set: Vec<(ShortId, ShortId)>,
    /// Entries removed relative to the parent.
    pub removed: Vec<ShortId>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StateKeyPair {
    pub event_type: String,
    pub state_key: String,
}

json_value!(Snapshot, StateKeyPair);

pub const SHORT_EVENT_IDS: Table<String, u64> = Table::new(tables::SHORT_EVENT_IDS);
pub const EVENT_IDS_BY_SHORT: Table<u64, String> = Table::new(tables::EVENT_IDS_BY_SHORT);
pub const SHORT_STATE_KEYS: Table<(String, String), u64> = Table::new(tables::SHORT_STATE_KEYS);
pub const STATE_KEYS_BY_SHORT: Table<u64, StateKeyPair> = Table::new(tables::STATE_KEYS_BY_SHORT);
pub const STATE_SNAPSHOTS: Table<u64, Snapshot> = Table::new(tables::STATE_SNAPSHOTS);
pub const STATE_BEFORE_EVENT: Table<u64, u64> = Table::new(tables::STATE_BEFORE_EVENT);

/// Allocation of short ids within one write; callers hold the append lock.
pub struct Interner<'a> {
    pub next_short: &'a mut u64,
    pending_events: BTreeMap<String, u64>,
    pending_keys: BTreeMap<(String, String), u64>,
}

impl<'a> Interner<'a> {
    pub fn new(next_short: &'a mut u64) -> Self {
        Interner { next_short, pending_events: BTreeMap::new(), pending_keys: BTreeMap::new() }
    }

    fn alloc(&mut self) -> u64 {
        let id = *self.next_short;
        *self.next_short += 1;
        id
    }

    pub fn event(&mut self, store: &Store, batch: &mut Batch, event_id: &EventId) -> Result<u64> {
        if let Some(id) = self.pending_events.get(event_id.as_str()) {
            return Ok(*id);
        }
        if let Some(id) = SHORT_EVENT_IDS.get(store, event_id.as_str())? {
            return Ok(id);
        }
        let id = self.alloc();
        SHORT_EVENT_IDS.put(batch, event_id.as_str(), &id);
        EVENT_IDS_BY_SHORT.put(batch, id, &event_id.to_string());
        self.pending_events.insert(event_id.to_string(), id);
        Ok(id)
    }

    pub fn state_key(&mut self, store: &Store, batch: &mut Batch, event_type: &str, state_key: &str) -> Result<u64> {
        let key = (event_type.to_owned(), state_key.to_owned());
        if let Some(id) = self.pending_keys.get(&key) {
            return Ok(*id);
        }
        if let Some(id) = SHORT_STATE_KEYS.get(store, (event_type, state_key))? {
            return Ok(id);
        }
        let id = self.alloc();
        SHORT_STATE_KEYS.put(batch, (event_type, state_key), &id);
        STATE_KEYS_BY_SHORT.put(
            batch,
            id,
            &StateKeyPair { event_type: event_type.to_owned(), state_key: state_key.to_owned() },
        );
        self.pending_keys.insert(key, id);
        Ok(id)
    }
}

/// The largest short id in use, to resume allocation after a restart.
pub fn max_short_id(store: &Store) -> Result<u64> {
    let mut max = 0;
    for table in [&EVENT_IDS_BY_SHORT.name, &STATE_KEYS_BY_SHORT.name, &STATE_SNAPSHOTS.name] {
        let t: Table<u64, Vec<u8>> = Table::new(table);
        t.scan_range(store, &KeyRange::default(), Order::Descending, |k, _| {
            max = max.max(k);
            false
        })?;
    }
    Ok(max)
}

/// Reads and caches state snapshots.
pub struct StateReader {
    store: Arc<Store>,
    cache: Mutex<BTreeMap<u64, Arc<StateMap>>>,
    /// Short ids of (event type, state key) pairs already looked up: an id, once given,
    /// never changes (only found ids are kept; at most [`STATE_KEY_CACHE`]).
    state_keys: Mutex<(usize, StateKeyIds)>,
    /// Depths of snapshots written lately: a snapshot written earlier in the same batch is
    /// not in the store yet when a child of it is written (a remote event's resolved state
    /// before, then the state after it).
    depths: Mutex<BTreeMap<u64, u32>>,
}

/// Event type → state key → short id.
type StateKeyIds = std::collections::HashMap<String, std::collections::HashMap<String, u64>>;

/// Most (event type, state key) ids kept; past it the cache starts over.
const STATE_KEY_CACHE: usize = 65_536;

impl StateReader {
    pub fn new(store: Arc<Store>) -> Self {
        StateReader {
            store,
            cache: Mutex::new(BTreeMap::new()),
            state_keys: Mutex::default(),
            depths: Mutex::default(),
        }
    }

    /// The full state of a snapshot.
    pub fn materialise(&self, snapshot: u64) -> Result<Arc<StateMap>> {
        if let Some(map) = self.cache.lock().get(&snapshot) {
            return Ok(map.clone());
        }
        // Walk up to the nearest full (or cached) snapshot, then apply diffs downwards.
        let mut chain = Vec::new();
        let mut cursor = Some(snapshot);
        let mut base: Option<Arc<StateMap>> = None;
        while let Some(id) = cursor {
            if let Some(map) = self.cache.lock().get(&id) {
                base = Some(map.clone());
                break;
            }
            let snap = STATE_SNAPSHOTS
                .get(&self.store, id)?
                .ok_or_else(|| Error::internal(format!("state snapshot {id} missing")))?;
            cursor = snap.parent;
            chain.push(snap);
        }
        let mut map: StateMap = base.map(|b| (*b).clone()).unwrap_or_default();
        for snap in chain.iter().rev() {
            for k in &snap.removed {
                map.remove(k);
            }
            map.extend(snap.set.iter().copied());
        }
        let map = Arc::new(map);
        let mut cache = self.cache.lock();
        if cache.len() >= CACHE_ENTRIES {
            if let Some(first) = cache.keys().next().copied() {
                cache.remove(&first);
            }
        }
        cache.insert(snapshot, map.clone());
        Ok(map)
    }

    /// Writes a snapshot that is `parent` with `set` applied; returns its id.
    pub fn write_child(
        &self,
        batch: &mut Batch,
        interner: &mut Interner<'_>,
        parent: Option<u64>,
        set: Vec<(ShortId, ShortId)>,
    ) -> Result<u64> {
        let id = interner.next_short_alloc();
        let (snapshot, full) = match parent {
            Some(p) => {
                let parent_depth = self.depth(p)?;
                let parent_map = self.materialise(p)?;
                if parent_depth + 1 >= MAX_DIFF_DEPTH {
                    let mut full = (*parent_map).clone();
                    full.extend(set.iter().copied());
                    (
                        Snapshot {
                            parent: None,
                            depth: 0,
                            set: full.iter().map(|(k, v)| (*k, *v)).collect(),
                            removed: vec![],
                        },
                        full,
                    )
                } else {
                    let mut full = (*parent_map).clone();
                    full.extend(set.iter().copied());
                    (Snapshot { parent: Some(p), depth: parent_depth + 1, set, removed: vec![] }, full)
                }
            }
            None => {
                let full: StateMap = set.iter().copied().collect();
                (Snapshot { parent: None, depth: 0, set, removed: vec![] }, full)
            }
        };
        STATE_SNAPSHOTS.put(batch, id, &snapshot);
        self.note_written(id, snapshot.depth, full);
        Ok(id)
    }

    /// Keeps what was just written of a snapshot, for readers and for children written
    /// before the batch is in the store.
    fn note_written(&self, id: u64, depth: u32, full: StateMap) {
        self.cache.lock().insert(id, Arc::new(full));
        let mut depths = self.depths.lock();
        if depths.len() >= CACHE_ENTRIES {
            depths.clear();
        }
        depths.insert(id, depth);
    }

    /// A snapshot's depth (diff steps from a full snapshot).
    fn depth(&self, id: u64) -> Result<u32> {
        if let Some(d) = self.depths.lock().get(&id) {
            return Ok(*d);
        }
        Ok(STATE_SNAPSHOTS
            .get(&self.store, id)?
            .ok_or_else(|| Error::internal(format!("state snapshot {id} missing")))?
            .depth)
    }

    /// Writes a snapshot holding exactly `full`, as a diff from `parent` when there is one
    /// (a resolved state, or the state a join brought, differs from its parent in a few
    /// entries or in all); returns its id.
    pub fn write_map(
        &self,
        batch: &mut Batch,
        interner: &mut Interner<'_>,
        parent: Option<u64>,
        full: StateMap,
    ) -> Result<u64> {
        let (parent, depth, set, removed) = match parent {
            Some(p) => {
                let parent_depth = self.depth(p)?;
                let parent_map = self.materialise(p)?;
                let set: Vec<(ShortId, ShortId)> =
                    full.iter().filter(|(k, v)| parent_map.get(k) != Some(v)).map(|(k, v)| (*k, *v)).collect();
                let removed: Vec<ShortId> = parent_map.keys().filter(|k| !full.contains_key(k)).copied().collect();
                if parent_depth + 1 >= MAX_DIFF_DEPTH || set.len() + removed.len() > full.len() / 2 + 16 {
                    (None, 0, full.iter().map(|(k, v)| (*k, *v)).collect(), vec![])
                } else {
                    (Some(p), parent_depth + 1, set, removed)
                }
            }
            None => (None, 0, full.iter().map(|(k, v)| (*k, *v)).collect(), vec![]),
        };
        let id = interner.next_short_alloc();
        STATE_SNAPSHOTS.put(batch, id, &Snapshot { parent, depth, set, removed });
        self.note_written(id, depth, full);
        Ok(id)
    }

    pub fn event_id(&self, short: u64) -> Result<OwnedEventId> {
        let id = EVENT_IDS_BY_SHORT
            .get(&self.store, short)?
            .ok_or_else(|| Error::internal(format!("short event id {short} unknown")))?;
        OwnedEventId::try_from(id).map_err(|e| Error::internal(e.to_string()))
    }

    pub fn state_key_pair(&self, short: u64) -> Result<(StateEventType, String)> {
        let pair = STATE_KEYS_BY_SHORT
            .get(&self.store, short)?
            .ok_or_else(|| Error::internal(format!("short state key {short} unknown")))?;
        Ok((StateEventType::from(pair.event_type), pair.state_key))
    }

    /// The short id of a state key pair, if it was ever used.
    pub fn lookup_state_key(&self, event_type: &str, state_key: &str) -> Result<Option<u64>> {
        if let Some(&id) = self.state_keys.lock().1.get(event_type).and_then(|keys| keys.get(state_key)) {
            return Ok(Some(id));
        }
        let found = SHORT_STATE_KEYS.get(&self.store, (event_type, state_key))?;
        if let Some(id) = found {
            let mut cache = self.state_keys.lock();
            if cache.0 >= STATE_KEY_CACHE {
                *cache = Default::default();
            }
            cache.0 += 1;
            cache.1.entry(event_type.to_owned()).or_default().insert(state_key.to_owned(), id);
        }
        Ok(found)
    }

    pub fn short_event(&self, event_id: &EventId) -> Result<Option<u64>> {
        Ok(SHORT_EVENT_IDS.get(&self.store, event_id.as_str())?)
    }
}

impl Interner<'_> {
    fn next_short_alloc(&mut self) -> u64 {
        self.alloc()
    }
}
