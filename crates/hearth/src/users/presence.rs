//! Presence: online / unavailable / offline with an optional status message.
//!
//! A change takes a stream position, so syncs of the users who share a room with the
//! changer get it. Setting the same state again writes nothing: clients send
//! `set_presence` with every sync, and a write per sync would be a write per second.
//! Records are kept in memory once read (every sync compares against the caller's), and
//! replaced when written, before the change's position can become durable.

use std::{collections::HashMap, sync::Arc};

use parking_lot::Mutex;
use ruma::{OwnedUserId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::{
    error::{Error, Result},
    json_value,
    store::{tables, Store, Table},
    stream::{Stream, StreamItem, STREAM_LOG},
    time::now_millis,
};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PresenceRecord {
    pub presence: String,
    pub status_msg: Option<String>,
    pub last_active_ts: u64,
    pub stream: u64,
}

json_value!(PresenceRecord);

pub const PRESENCE: Table<String, PresenceRecord> = Table::new(tables::PRESENCE);

pub const STATES: &[&str] = &["online", "unavailable", "offline"];
/// Longest status message kept.
pub const MAX_STATUS_BYTES: usize = 1024;
/// Activity this recent counts as "currently active".
const ACTIVE_MS: u64 = 5 * 60 * 1000;

pub struct Presence {
    store: Arc<Store>,
    stream: Arc<Stream>,
    /// Records read or written so far (`None`: the user has none).
    known: Mutex<HashMap<OwnedUserId, Option<PresenceRecord>>>,
}

impl Presence {
    pub fn new(store: Arc<Store>, stream: Arc<Stream>) -> Self {
        Presence { store, stream, known: Mutex::default() }
    }

    pub fn get(&self, user: &UserId) -> Result<Option<PresenceRecord>> {
        if let Some(known) = self.known.lock().get(user) {
            return Ok(known.clone());
        }
        let record = PRESENCE.get(&self.store, user.as_str())?;
        // A write in between has put its own record first: keep that one.
        self.known.lock().entry(user.to_owned()).or_insert_with(|| record.clone());
        Ok(record)
    }

    /// Sets a user's presence; `status_msg: None` keeps the current message. Returns the
    /// stream position if anything changed.
    pub fn set(&self, user: &UserId, presence: &str, status_msg: Option<Option<String>>) -> Result<Option<u64>> {
        if !STATES.contains(&presence) {
            return Err(Error::invalid_param(format!("Unknown presence state {presence}")));
        }
        if status_msg.as_ref().is_some_and(|m| m.as_ref().is_some_and(|m| m.len() > MAX_STATUS_BYTES)) {
            return Err(Error::too_large("Status message too long"));
        }
        let current = self.get(user)?;
        let msg = match status_msg {
            Some(m) => m,
            None => current.as_ref().and_then(|c| c.status_msg.clone()),
        };
        if let Some(c) = &current {
            if c.presence == presence && c.status_msg == msg {
                return Ok(None);
            }
        }
        let fill = |pos, batch: &mut crate::store::Batch| {
            let rec = PresenceRecord {
                presence: presence.to_owned(),
                status_msg: msg.clone(),
                last_active_ts: now_millis(),
                stream: pos,
            };
            PRESENCE.put(batch, user.as_str(), &rec);
            STREAM_LOG.put(batch, pos, &StreamItem::Presence { user_id: user.to_owned() });
            Ok(rec)
        };
        let written = |_, rec: &PresenceRecord| {
            self.known.lock().insert(user.to_owned(), Some(rec.clone()));
        };
        let (pos, _) = self.stream.commit_deferred_then(fill, written)?;
        self.stream.make_durable(pos)?;
        Ok(Some(pos))
    }

    /// The `m.presence` event for a user, as sync carries it.
    pub fn event(&self, user: &UserId) -> Result<Option<Value>> {
        let Some(r) = self.get(user)? else { return Ok(None) };
        let ago = now_millis().saturating_sub(r.last_active_ts);
        let mut content = json!({
            "presence": r.presence,
            "last_active_ago": ago,
            "currently_active": r.presence == "online" && ago < ACTIVE_MS,
        });
        if let Some(m) = &r.status_msg {
            content["status_msg"] = json!(m);
        }
        Ok(Some(json!({"type": "m.presence", "sender": user, "content": content})))
    }
}
