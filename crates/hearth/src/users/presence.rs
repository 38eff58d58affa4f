//! Presence: online / unavailable / offline with an optional status message.
//!
//! A change takes a stream position, so syncs of the users who share a room with the
//! changer get it. Setting the same state again writes nothing, except that an active
//! user's `last_active_ts` is stored again once a minute, without a stream position:
//! clients send `set_presence` with every sync, and a write per sync would be a write per
//! second, and a wake-up of every contact's sync with it.
//! Records are kept in memory once read (every sync compares against the caller's), and
//! replaced when written, before the change's position can become durable.

use std::{collections::HashMap, sync::Arc};

use parking_lot::Mutex;
use ruma::{OwnedUserId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::{
    error::{Error, Result},
    store::codec::json_value,
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
pub const ACTIVE_MS: u64 = 5 * 60 * 1000;
/// How stale a stored `last_active_ts` may be while its user is active.
pub const LAST_ACTIVE_GRANULARITY_MS: u64 = 60 * 1000;

/// What a presence update changes.
#[derive(Debug, PartialEq)]
enum Change {
    /// Nothing worth a write.
    None,
    /// Only `last_active_ts`, while the user stays currently active: stored, not told.
    Quiet,
    /// Something others see: stored with a stream position, and told.
    Told,
}

pub struct Presence {
    store: Arc<Store>,
    stream: Arc<Stream>,
    /// Records read or written so far (`None`: the user has none).
    known: Mutex<HashMap<OwnedUserId, Option<PresenceRecord>>>,
    /// Held from deciding a write to making it.
    writing: Mutex<()>,
    /// Users kept online by their clients: syncs open, and when the last one ended.
    seen: Mutex<HashMap<OwnedUserId, Seen>>,
}

/// A user's syncs, as far as presence is concerned.
#[derive(Debug, Clone, Copy)]
struct Seen {
    open: u32,
    /// When a sync last started or ended, or presence was set (ms).
    at: u64,
}

/// Held for the length of a sync that keeps its user online; see [`Presence::syncing`].
pub struct Syncing<'a> {
    presence: &'a Presence,
    user: OwnedUserId,
}

impl Drop for Syncing<'_> {
    fn drop(&mut self) {
        let mut seen = self.presence.seen.lock();
        if let Some(s) = seen.get_mut(&self.user) {
            s.open = s.open.saturating_sub(1);
            s.at = now_millis();
        }
    }
}

impl Presence {
    pub fn new(store: Arc<Store>, stream: Arc<Stream>) -> Self {
        Presence { store, stream, known: Mutex::default(), writing: Mutex::default(), seen: Mutex::default() }
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
    /// stream position if others are to be told.
    ///
    /// Being set `online` (explicitly or by syncing) is activity: `last_active_ts` moves
    /// to now. Activity while still "currently active" is stored without a stream position,
    /// at most once per [`LAST_ACTIVE_GRANULARITY_MS`], so nobody's sync wakes for it; the
    /// `last_active_ago` others read is then at most that stale. Activity after a quiet
    /// spell ([`ACTIVE_MS`]) turns `currently_active` back on, and is told.
    pub fn set(&self, user: &UserId, presence: &str, status_msg: Option<Option<String>>) -> Result<Option<u64>> {
        let pos = self.set_deferred(user, presence, status_msg)?;
        if let Some(pos) = pos {
            self.stream.make_durable(pos)?;
        }
        Ok(pos)
    }

    /// [`Presence::set`] without the wait for the disk: the change is in memory and in the
    /// database, and the caller must make the returned position durable
    /// ([`crate::stream::Stream::make_durable`]) before telling anyone of it.
    pub fn set_deferred(
        &self,
        user: &UserId,
        presence: &str,
        status_msg: Option<Option<String>>,
    ) -> Result<Option<u64>> {
        if !STATES.contains(&presence) {
            return Err(Error::invalid_param(format!("Unknown presence state {presence}")));
        }
        if status_msg.as_ref().is_some_and(|m| m.as_ref().is_some_and(|m| m.len() > MAX_STATUS_BYTES)) {
            return Err(Error::too_large("Status message too long"));
        }
        let now = now_millis();
        if self.change(&self.get(user)?, presence, status_msg.as_ref(), now) == Change::None {
            return Ok(None);
        }
        // Decide again under the lock: a concurrent write must not be undone by a record
        // built from what was read before it.
        let writing = self.writing.lock();
        let current = self.get(user)?;
        let msg = match status_msg {
            Some(m) => m,
            None => current.as_ref().and_then(|c| c.status_msg.clone()),
        };
        match self.change(&current, presence, Some(&msg), now) {
            Change::None => Ok(None),
            Change::Quiet => {
                let Some(current) = current else { return Ok(None) };
                let rec = PresenceRecord { last_active_ts: now, ..current };
                let mut batch = crate::store::Batch::new();
                PRESENCE.put(&mut batch, user.as_str(), &rec);
                // Not worth an fsync of its own: the next acknowledged write carries it.
                self.store.write_deferred(batch)?;
                self.known.lock().insert(user.to_owned(), Some(rec));
                Ok(None)
            }
            Change::Told => {
                let last_active_ts = match &current {
                    Some(c) if presence != "online" => c.last_active_ts,
                    _ => now,
                };
                let fill = |pos, batch: &mut crate::store::Batch| {
                    let rec = PresenceRecord {
                        presence: presence.to_owned(),
                        status_msg: msg.clone(),
                        last_active_ts,
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
                // The wait for the disk happens after the lock: writers of other users'
                // presence share the fsync instead of queueing behind it.
                drop(writing);
                Ok(Some(pos))
            }
        }
    }

    /// What setting `presence` (and `msg`, `None`: unchanged) at `now` changes.
    fn change(
        &self,
        current: &Option<PresenceRecord>,
        presence: &str,
        msg: Option<&Option<String>>,
        now: u64,
    ) -> Change {
        let Some(c) = current else { return Change::Told };
        if c.presence != presence || msg.is_some_and(|m| *m != c.status_msg) {
            return Change::Told;
        }
        let since = now.saturating_sub(c.last_active_ts);
        match presence {
            "online" if since >= ACTIVE_MS => Change::Told,
            "online" if since >= LAST_ACTIVE_GRANULARITY_MS => Change::Quiet,
            _ => Change::None,
        }
    }

    /// Marks `user` as syncing until the guard drops: their presence does not time out
    /// meanwhile. Call before [`Presence::set`] from the same sync.
    pub fn syncing(&self, user: &UserId) -> Syncing<'_> {
        let mut seen = self.seen.lock();
        let s = seen.entry(user.to_owned()).or_insert(Seen { open: 0, at: 0 });
        s.open += 1;
        s.at = now_millis();
        Syncing { presence: self, user: user.to_owned() }
    }

    /// Counts as a sign of life for the timeout (presence set explicitly).
    pub fn seen(&self, user: &UserId) {
        let mut seen = self.seen.lock();
        seen.entry(user.to_owned()).or_insert(Seen { open: 0, at: 0 }).at = now_millis();
    }

    /// Users present at start-up (anything but offline) get `timeout_ms` from now to come
    /// back, as if they had just synced.
    pub fn load_present(&self) -> Result<()> {
        let mut present = Vec::new();
        PRESENCE.scan_all(&self.store, |user, rec| {
            if rec.presence != "offline" {
                present.push(user);
            }
            true
        })?;
        let now = now_millis();
        let mut seen = self.seen.lock();
        for user in present {
            if let Ok(user) = OwnedUserId::try_from(user) {
                seen.entry(user).or_insert(Seen { open: 0, at: now });
            }
        }
        Ok(())
    }

    /// Turns offline every user with no sync open for `timeout_ms`; returns them with the
    /// stream position of each change, to tell their contacts.
    pub fn time_out(&self, timeout_ms: u64) -> Result<Vec<(OwnedUserId, u64)>> {
        let now = now_millis();
        let gone: Vec<OwnedUserId> = {
            let mut seen = self.seen.lock();
            let gone: Vec<_> = seen
                .iter()
                .filter(|(_, s)| s.open == 0 && now.saturating_sub(s.at) >= timeout_ms)
                .map(|(u, _)| u.clone())
                .collect();
            for u in &gone {
                seen.remove(u);
            }
            gone
        };
        let mut told = Vec::new();
        for user in gone {
            if self.get(&user)?.is_some_and(|r| r.presence != "offline") {
                if let Some(pos) = self.set(&user, "offline", None)? {
                    told.push((user.clone(), pos));
                }
            }
            // A sync that started after the look above set its user online before this
            // write could land: put them back.
            if self.seen.lock().get(&user).is_some_and(|s| s.open > 0) {
                if let Some(pos) = self.set(&user, "online", None)? {
                    told.push((user, pos));
                }
            }
        }
        Ok(told)
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

#[cfg(test)]
mod tests {
    use ruma::owned_user_id;

    use super::*;
    use crate::{
        store::{Backend, Durability},
        sync::notifier::Notifier,
    };

    fn open(dir: &std::path::Path) -> (Arc<Store>, Presence) {
        let store = Arc::new(Store::open(dir, Backend::Rocksdb, Durability::Process, 8).expect("open"));
        let stream = Arc::new(Stream::open(store.clone(), Arc::new(Notifier::default())).expect("stream"));
        (store.clone(), Presence::new(store, stream))
    }

    /// Moves the stored activity of `user` back by `ms`, as if that much time had passed.
    fn age(store: &Store, user: &UserId, ms: u64) {
        let mut rec = PRESENCE.get(store, user.as_str()).expect("get").expect("record");
        rec.last_active_ts -= ms;
        let mut batch = crate::store::Batch::new();
        PRESENCE.put(&mut batch, user.as_str(), &rec);
        store.write(batch).expect("write");
    }

    fn content(p: &Presence, user: &UserId) -> Value {
        p.event(user).expect("event").expect("has presence")["content"].clone()
    }

    /// A user who keeps syncing stays currently active: their activity is stored again
    /// after a minute, without waking anyone; after a quiet spell it is told again.
    #[test]
    fn activity_refreshes_last_active() {
        let dir = tempfile::tempdir().expect("tempdir");
        let user = owned_user_id!("@u:example.org");
        let (store, p) = open(dir.path());
        assert!(p.set(&user, "online", None).expect("set").is_some(), "first presence is told");
        assert_eq!(p.set(&user, "online", None).expect("set"), None, "nothing new");

        // Four minutes on: still currently active, stored quietly.
        age(&store, &user, 4 * 60 * 1000);
        let (store, p) = open_again(store, dir.path());
        assert!(content(&p, &user)["last_active_ago"].as_u64().expect("ago") >= 4 * 60 * 1000);
        assert_eq!(p.set(&user, "online", None).expect("set"), None, "an active user's refresh is not told");
        let c = content(&p, &user);
        assert!(c["last_active_ago"].as_u64().expect("ago") < 60 * 1000, "refreshed: {c}");
        assert_eq!(c["currently_active"], true);
        let stored = PRESENCE.get(&store, user.as_str()).expect("get").expect("record");
        assert!(now_millis() - stored.last_active_ts < 60 * 1000, "the refresh is stored");

        // Six minutes quiet: no longer currently active; the next sync tells everyone.
        age(&store, &user, 6 * 60 * 1000);
        let (_store, p) = open_again(store, dir.path());
        assert_eq!(content(&p, &user)["currently_active"], false);
        let before = PRESENCE.get(&p.store, user.as_str()).expect("get").expect("record").stream;
        let told = p.set(&user, "online", None).expect("set").expect("coming back is told");
        assert!(told > before);
        assert_eq!(content(&p, &user)["currently_active"], true);

        // Going unavailable keeps the time of the last activity.
        age(&p.store, &user, 2 * 60 * 1000);
        let (_store, p) = open_again(p.store.clone(), dir.path());
        assert!(p.set(&user, "unavailable", None).expect("set").is_some());
        let c = content(&p, &user);
        assert!(c["last_active_ago"].as_u64().expect("ago") >= 2 * 60 * 1000, "{c}");
        assert_eq!(p.set(&user, "unavailable", None).expect("set"), None);
    }

    /// A fresh `Presence` over the same database (its memory of records starts empty).
    fn open_again(store: Arc<Store>, _dir: &std::path::Path) -> (Arc<Store>, Presence) {
        let stream = Arc::new(Stream::open(store.clone(), Arc::new(Notifier::default())).expect("stream"));
        (store.clone(), Presence::new(store, stream))
    }
}
