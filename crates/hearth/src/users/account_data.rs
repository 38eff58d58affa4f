//! Account data: per-user JSON by event type, global or per room (tags and `m.fully_read`
//! are room account data). Each change takes a stream position so sync sends only what
//! changed since its token.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use parking_lot::Mutex;
use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{
    error::{Error, Result},
    store::codec::json_value,
    store::{tables, Store, Table},
    stream::{Stream, StreamItem, STREAM_LOG},
};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    pub content: Value,
    pub stream: u64,
}

json_value!(Entry);

/// (user, room id or "", type) → entry.
pub const ACCOUNT_DATA: Table<(String, String, String), Entry> = Table::new(tables::ACCOUNT_DATA);

/// Largest account data content, in bytes of JSON.
pub const MAX_CONTENT_BYTES: usize = 64 * 1024;

pub struct AccountData {
    store: Arc<Store>,
    stream: Arc<Stream>,
    /// (user, type) → stream position of its last change since this process started, so
    /// a cached reading (the push rules) can tell it is current without a database read.
    /// User → kind → position: nested, so that a lookup copies no id.
    changed_at: Mutex<HashMap<OwnedUserId, HashMap<String, u64>>>,
}

/// What changed for a user: global events and per-room events, as `{type, content}`.
#[derive(Default)]
pub struct Changes {
    pub global: Vec<Value>,
    pub rooms: BTreeMap<OwnedRoomId, Vec<Value>>,
}

impl AccountData {
    pub fn new(store: Arc<Store>, stream: Arc<Stream>) -> Self {
        AccountData { store, stream, changed_at: Mutex::new(HashMap::new()) }
    }

    pub fn set(&self, user: &UserId, room: Option<&RoomId>, kind: &str, content: Map<String, Value>) -> Result<()> {
        let bytes = serde_json::to_vec(&content).map(|v| v.len()).unwrap_or(usize::MAX);
        if bytes > MAX_CONTENT_BYTES {
            return Err(Error::too_large("Account data too large"));
        }
        if kind.is_empty() || kind.len() > 255 {
            return Err(Error::invalid_param("Invalid account data type"));
        }
        let room_key = room.map(|r| r.as_str()).unwrap_or_default();
        let (pos, _) = self.stream.commit(|pos, batch| {
            ACCOUNT_DATA.put(
                batch,
                (user.as_str(), room_key, kind),
                &Entry { content: Value::Object(content), stream: pos },
            );
            STREAM_LOG.put(
                batch,
                pos,
                &StreamItem::AccountData { user_id: user.to_owned(), room_id: room.map(ToOwned::to_owned) },
            );
            Ok(())
        })?;
        if room.is_none() {
            self.changed_at.lock().entry(user.to_owned()).or_default().insert(kind.to_owned(), pos);
        }
        self.stream.notifier.notify([user], pos);
        Ok(())
    }

    /// Stream position of the last change of a global type of the user's account data
    /// since start-up; 0 if it has not changed since.
    pub fn changed_since_start(&self, user: &UserId, kind: &str) -> u64 {
        self.changed_at.lock().get(user).and_then(|kinds| kinds.get(kind)).copied().unwrap_or(0)
    }

    pub fn get(&self, user: &UserId, room: Option<&RoomId>, kind: &str) -> Result<Option<Value>> {
        let room_key = room.map(|r| r.as_str()).unwrap_or_default();
        Ok(ACCOUNT_DATA.get(&self.store, (user.as_str(), room_key, kind))?.map(|e| e.content))
    }

    /// Account data of `user` changed after `since` (everything if `None`).
    pub fn changes(&self, user: &UserId, since: Option<u64>) -> Result<Changes> {
        let mut out = Changes::default();
        for ((room, kind), entry) in ACCOUNT_DATA.collect_prefix(&self.store, user.as_str())? {
            if since.is_some_and(|s| entry.stream <= s) {
                continue;
            }
            let event = serde_json::json!({"type": kind, "content": entry.content});
            if room.is_empty() {
                out.global.push(event);
            } else if let Ok(room) = OwnedRoomId::try_from(room) {
                out.rooms.entry(room).or_default().push(event);
            }
        }
        Ok(out)
    }
}
