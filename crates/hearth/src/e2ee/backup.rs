//! Server-side key backup (`/room_keys/…`): encrypted megolm session keys, opaque to the
//! server, stored per backup version. Every change bumps the version's `etag`; keys can
//! only be written to the current (newest) version.

use std::{collections::BTreeMap, sync::Arc};

use ruma::{OwnedRoomId, UserId};
use serde_json::{json, Value};

use crate::{
    error::{Error, Result},
    store::{tables, Batch, Store, Table},
};

/// (user, version) → {"algorithm", "auth_data", "etag"}.
pub const BACKUP_VERSIONS: Table<(String, u64), Value> = Table::new(tables::BACKUP_VERSIONS);
/// (user, "version/room id", session id) → key data.
pub const BACKUP_KEYS: Table<(String, String, String), Value> = Table::new(tables::BACKUP_KEYS);

/// Largest backed-up session and largest algorithm description.
pub const MAX_ENTRY_BYTES: usize = 64 * 1024;

pub struct Backup {
    store: Arc<Store>,
}

fn parse_version(v: &str) -> Result<u64> {
    v.parse().map_err(|_| Error::not_found("Unknown backup version"))
}

fn too_big(v: &Value) -> bool {
    serde_json::to_vec(v).map(|b| b.len()).unwrap_or(usize::MAX) > MAX_ENTRY_BYTES
}

/// Whether `new` should replace `old` (spec: verified beats unverified, then lower first
/// message index, then lower forwarded count).
fn better(new: &Value, old: &Value) -> bool {
    let verified = |v: &Value| v["is_verified"].as_bool().unwrap_or(false);
    let index = |v: &Value| v["first_message_index"].as_u64().unwrap_or(u64::MAX);
    let forwarded = |v: &Value| v["forwarded_count"].as_u64().unwrap_or(u64::MAX);
    if verified(new) != verified(old) {
        return verified(new);
    }
    if index(new) != index(old) {
        return index(new) < index(old);
    }
    forwarded(new) < forwarded(old)
}

impl Backup {
    pub fn new(store: Arc<Store>) -> Self {
        Backup { store }
    }

    fn versions(&self, user: &UserId) -> Result<Vec<(u64, Value)>> {
        Ok(BACKUP_VERSIONS.collect_prefix(&self.store, user.as_str())?)
    }

    pub fn latest(&self, user: &UserId) -> Result<Option<(u64, Value)>> {
        Ok(self.versions(user)?.into_iter().last())
    }

    pub fn create(&self, user: &UserId, algorithm: Value) -> Result<u64> {
        if too_big(&algorithm) {
            return Err(Error::too_large("Backup description too large"));
        }
        let next = self.latest(user)?.map_or(1, |(v, _)| v + 1);
        let mut record = algorithm;
        record["etag"] = json!(0);
        let mut batch = Batch::new();
        BACKUP_VERSIONS.put(&mut batch, (user.as_str(), next), &record);
        self.store.write(batch)?;
        Ok(next)
    }

    pub fn get(&self, user: &UserId, version: &str) -> Result<Value> {
        BACKUP_VERSIONS
            .get(&self.store, (user.as_str(), parse_version(version)?))?
            .ok_or_else(|| Error::not_found("Unknown backup version"))
    }

    pub fn update(&self, user: &UserId, version: &str, algorithm: Value) -> Result<()> {
        let v = parse_version(version)?;
        let current = self.get(user, version)?;
        if current["algorithm"] != algorithm["algorithm"] {
            return Err(Error::invalid_param("The algorithm of a backup version cannot change"));
        }
        let mut record = algorithm;
        record["etag"] = current["etag"].clone();
        let mut batch = Batch::new();
        BACKUP_VERSIONS.put(&mut batch, (user.as_str(), v), &record);
        Ok(self.store.write(batch)?)
    }

    pub fn delete(&self, user: &UserId, version: &str) -> Result<()> {
        let v = parse_version(version)?;
        self.get(user, version)?;
        let mut batch = Batch::new();
        BACKUP_VERSIONS.delete(&mut batch, (user.as_str(), v));
        for ((room_key, session), _) in self.keys_of(user, v)? {
            BACKUP_KEYS.delete(&mut batch, (user.as_str(), &room_key, &session));
        }
        Ok(self.store.write(batch)?)
    }

    fn keys_of(&self, user: &UserId, version: u64) -> Result<Vec<((String, String), Value)>> {
        let prefix = format!("{version}/");
        Ok(BACKUP_KEYS
            .collect_prefix(&self.store, user.as_str())?
            .into_iter()
            .filter(|((rk, _), _)| rk.starts_with(&prefix))
            .collect())
    }

    /// (etag, count) of a version.
    pub fn etag_count(&self, user: &UserId, version: &str) -> Result<(String, u64)> {
        let v = parse_version(version)?;
        let record = self.get(user, version)?;
        Ok((record["etag"].as_u64().unwrap_or(0).to_string(), self.keys_of(user, v)?.len() as u64))
    }

    /// Stores keys (room → session → data) in the current version; returns (etag, count).
    pub fn put_keys(
        &self,
        user: &UserId,
        version: &str,
        rooms: &BTreeMap<OwnedRoomId, BTreeMap<String, Value>>,
    ) -> Result<(String, u64)> {
        let v = parse_version(version)?;
        let mut record = self.get(user, version)?;
        let latest = self.latest(user)?.map(|(l, _)| l);
        if latest != Some(v) {
            let mut extra = serde_json::Map::new();
            extra.insert("current_version".into(), json!(latest.map(|l| l.to_string())));
            return Err(Error::Matrix {
                status: http::StatusCode::FORBIDDEN,
                errcode: "M_WRONG_ROOM_KEYS_VERSION",
                message: "Keys can only be added to the current backup version".into(),
                extra,
            });
        }
        let mut batch = Batch::new();
        let mut changed = false;
        for (room, sessions) in rooms {
            let room_key = format!("{v}/{room}");
            for (session, data) in sessions {
                if too_big(data) {
                    return Err(Error::too_large("Backed-up key too large"));
                }
                let keep_old = BACKUP_KEYS
                    .get(&self.store, (user.as_str(), &room_key, session))?
                    .is_some_and(|old| !better(data, &old));
                if !keep_old {
                    BACKUP_KEYS.put(&mut batch, (user.as_str(), &room_key, session), data);
                    changed = true;
                }
            }
        }
        if changed {
            record["etag"] = json!(record["etag"].as_u64().unwrap_or(0) + 1);
            BACKUP_VERSIONS.put(&mut batch, (user.as_str(), v), &record);
        }
        self.store.write(batch)?;
        self.etag_count(user, version)
    }

    /// Keys of a version, optionally of one room / one session: room → session → data.
    pub fn get_keys(
        &self,
        user: &UserId,
        version: &str,
        room: Option<&str>,
        session: Option<&str>,
    ) -> Result<BTreeMap<OwnedRoomId, BTreeMap<String, Value>>> {
        let v = parse_version(version)?;
        self.get(user, version)?;
        let mut out: BTreeMap<OwnedRoomId, BTreeMap<String, Value>> = BTreeMap::new();
        for ((room_key, sess), data) in self.keys_of(user, v)? {
            let Some((_, room_id)) = room_key.split_once('/') else { continue };
            if room.is_some_and(|r| r != room_id) || session.is_some_and(|s| s != sess) {
                continue;
            }
            if let Ok(room_id) = OwnedRoomId::try_from(room_id) {
                out.entry(room_id).or_default().insert(sess, data);
            }
        }
        Ok(out)
    }

    /// Deletes keys of a version (all, a room's, or one session); returns (etag, count).
    pub fn delete_keys(
        &self,
        user: &UserId,
        version: &str,
        room: Option<&str>,
        session: Option<&str>,
    ) -> Result<(String, u64)> {
        let v = parse_version(version)?;
        let mut record = self.get(user, version)?;
        let doomed = self.get_keys(user, version, room, session)?;
        let mut batch = Batch::new();
        for (room_id, sessions) in &doomed {
            for s in sessions.keys() {
                BACKUP_KEYS.delete(&mut batch, (user.as_str(), &format!("{v}/{room_id}"), s));
            }
        }
        record["etag"] = json!(record["etag"].as_u64().unwrap_or(0) + 1);
        BACKUP_VERSIONS.put(&mut batch, (user.as_str(), v), &record);
        self.store.write(batch)?;
        self.etag_count(user, version)
    }
}
