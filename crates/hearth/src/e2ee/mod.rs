//! End-to-end encryption support: the server stores and hands out public keys and relays
//! encrypted to-device messages; it never sees plaintext.
//!
//! - device keys, one-time keys and fallback keys per device (`keys/upload`, `query`, `claim`);
//! - cross-signing keys and signatures on them;
//! - device-list changes on the stream, so contacts re-query keys (`device_lists` in sync;
//!   who hears of them: [`device_lists`]);
//! - to-device messages ([`to_device`]) and server-side key backup ([`backup`]).
//!
//! Every sync reports the device's one-time key counts and unused fallback key types, so
//! they are kept in memory per device, dropped whenever the device's keys change (an
//! epoch counter keeps a reader that raced with a change from storing what it read).

pub mod backup;
pub mod device_lists;
pub mod remote;
pub mod to_device;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use parking_lot::Mutex;
use ruma::{OwnedUserId, UserId};
use serde_json::{Map, Value};

use crate::{
    error::{Error, Result},
    store::{tables, Batch, Store, Table},
    stream::{Stream, StreamItem, STREAM_LOG},
};

pub const DEVICE_KEYS: Table<(String, String), Value> = Table::new(tables::DEVICE_KEYS);
pub const ONE_TIME_KEYS: Table<(String, String, String), Value> = Table::new(tables::ONE_TIME_KEYS);
pub const FALLBACK_KEYS: Table<(String, String, String), Value> = Table::new(tables::FALLBACK_KEYS);
pub const CROSS_SIGNING_KEYS: Table<(String, String), Value> = Table::new(tables::CROSS_SIGNING_KEYS);

/// Most one-time keys kept per device, and most accepted in one upload.
pub const MAX_ONE_TIME_KEYS: usize = 1000;
pub const MAX_KEYS_PER_UPLOAD: usize = 200;
/// Largest single key object, in bytes of JSON.
pub const MAX_KEY_BYTES: usize = 8 * 1024;

pub struct Keys {
    store: Arc<Store>,
    stream: Arc<Stream>,
    counts: CountCache,
    /// Held across a claim's read and delete, so two claims never get the same key.
    claims: Mutex<()>,
}

/// What a sync reports about a device's keys.
struct DeviceCounts {
    one_time: BTreeMap<String, u64>,
    unused_fallback: Vec<String>,
}

#[derive(Default)]
struct CountCache {
    /// Advanced after every change to one-time or fallback keys.
    epoch: AtomicU64,
    devices: Mutex<HashMap<OwnedUserId, HashMap<String, Arc<DeviceCounts>>>>,
}

fn check_size(v: &Value) -> Result<()> {
    if serde_json::to_vec(v).map(|b| b.len()).unwrap_or(usize::MAX) > MAX_KEY_BYTES {
        return Err(Error::too_large("Key object too large"));
    }
    Ok(())
}

impl Keys {
    pub fn new(store: Arc<Store>, stream: Arc<Stream>) -> Self {
        Keys { store, stream, counts: CountCache::default(), claims: Mutex::new(()) }
    }

    /// Called after the device's one-time or fallback keys changed on disk.
    fn counts_changed(&self, user: &UserId, device: &str) {
        self.counts.epoch.fetch_add(1, Ordering::SeqCst);
        if let Some(devices) = self.counts.devices.lock().get_mut(user) {
            devices.remove(device);
        }
    }

    fn counts(&self, user: &UserId, device: &str) -> Result<Arc<DeviceCounts>> {
        if let Some(c) = self.counts.devices.lock().get(user).and_then(|d| d.get(device)) {
            return Ok(c.clone());
        }
        let epoch = self.counts.epoch.load(Ordering::SeqCst);
        let mut one_time = BTreeMap::new();
        for ((d, id), _) in ONE_TIME_KEYS.collect_prefix(&self.store, user.as_str())? {
            if d == device {
                if let Some((algorithm, _)) = id.split_once(':') {
                    *one_time.entry(algorithm.to_owned()).or_insert(0) += 1;
                }
            }
        }
        let unused_fallback = FALLBACK_KEYS
            .collect_prefix(&self.store, user.as_str())?
            .into_iter()
            .filter(|((d, _), v)| d == device && v["used"] == false)
            .map(|((_, algorithm), _)| algorithm)
            .collect();
        let counts = Arc::new(DeviceCounts { one_time, unused_fallback });
        let mut devices = self.counts.devices.lock();
        if self.counts.epoch.load(Ordering::SeqCst) == epoch {
            devices.entry(user.to_owned()).or_default().insert(device.to_owned(), counts.clone());
        }
        Ok(counts)
    }

    /// Records that a user's keys changed: contacts will re-query them.
    pub(super) fn mark_changed(&self, batch: &mut Batch, pos: u64, user: &UserId, device: Option<&str>, deleted: bool) {
        let item = StreamItem::DeviceList {
            user_id: user.to_owned(),
            device_id: device.map(str::to_owned),
            deleted,
            private: false,
        };
        STREAM_LOG.put(batch, pos, &item);
    }

    /// Records that a remote user's devices or cross-signing keys changed (their server
    /// said so): contacts will re-query them. Returns the position.
    pub fn note_remote_change(&self, user: &UserId) -> Result<u64> {
        let (pos, _) = self.stream.commit(|pos, batch| {
            self.mark_changed(batch, pos, user, None, false);
            Ok(())
        })?;
        Ok(pos)
    }

    /// Stores a device's identity keys; refuses keys naming another user or device.
    pub fn upload_device_keys(&self, user: &UserId, device: &str, keys: Value) -> Result<Option<u64>> {
        check_size(&keys)?;
        if keys.get("user_id").and_then(Value::as_str) != Some(user.as_str())
            || keys.get("device_id").and_then(Value::as_str) != Some(device)
        {
            return Err(Error::invalid_param("device_keys must name the uploading user and device"));
        }
        if DEVICE_KEYS.get(&self.store, (user.as_str(), device))?.as_ref() == Some(&keys) {
            return Ok(None);
        }
        let (pos, _) = self.stream.commit(|pos, batch| {
            DEVICE_KEYS.put(batch, (user.as_str(), device), &keys);
            self.mark_changed(batch, pos, user, Some(device), false);
            Ok(())
        })?;
        Ok(Some(pos))
    }

    /// Adds one-time keys (`algorithm:key_id` → key); existing ids are kept as they are.
    pub fn upload_one_time_keys(&self, user: &UserId, device: &str, keys: &BTreeMap<String, Value>) -> Result<()> {
        if keys.len() > MAX_KEYS_PER_UPLOAD {
            return Err(Error::too_large(format!("At most {MAX_KEYS_PER_UPLOAD} one-time keys per upload")));
        }
        let have = ONE_TIME_KEYS
            .collect_prefix(&self.store, user.as_str())?
            .into_iter()
            .filter(|((d, _), _)| d == device)
            .count();
        if have + keys.len() > MAX_ONE_TIME_KEYS {
            return Err(Error::too_large(format!("At most {MAX_ONE_TIME_KEYS} one-time keys per device")));
        }
        let mut batch = Batch::new();
        for (id, key) in keys {
            check_size(key)?;
            if !id.contains(':') {
                return Err(Error::invalid_param("One-time key ids are algorithm:key_id"));
            }
            ONE_TIME_KEYS.put(&mut batch, (user.as_str(), device, id), key);
        }
        self.store.write(batch)?;
        self.counts_changed(user, device);
        Ok(())
    }

    /// Replaces the device's fallback key for each algorithm given.
    pub fn upload_fallback_keys(&self, user: &UserId, device: &str, keys: &BTreeMap<String, Value>) -> Result<()> {
        let mut batch = Batch::new();
        for (id, key) in keys {
            check_size(key)?;
            let (algorithm, _) =
                id.split_once(':').ok_or_else(|| Error::invalid_param("Fallback key ids are algorithm:key_id"))?;
            let record = serde_json::json!({"key_id": id, "key": key, "used": false});
            FALLBACK_KEYS.put(&mut batch, (user.as_str(), device, algorithm), &record);
        }
        self.store.write(batch)?;
        self.counts_changed(user, device);
        Ok(())
    }

    /// Unclaimed one-time keys per algorithm.
    pub fn one_time_key_counts(&self, user: &UserId, device: &str) -> Result<BTreeMap<String, u64>> {
        Ok(self.counts(user, device)?.one_time.clone())
    }

    /// Algorithms whose fallback key has not been used yet.
    pub fn unused_fallback_types(&self, user: &UserId, device: &str) -> Result<Vec<String>> {
        Ok(self.counts(user, device)?.unused_fallback.clone())
    }

    /// Claims a one-time key of `algorithm`, else the fallback key; `(key id, key)`.
    pub fn claim(&self, user: &UserId, device: &str, algorithm: &str) -> Result<Option<(String, Value)>> {
        let _claiming = self.claims.lock();
        let prefix = format!("{algorithm}:");
        let found = ONE_TIME_KEYS
            .collect_prefix(&self.store, user.as_str())?
            .into_iter()
            .find(|((d, id), _)| d == device && id.starts_with(&prefix));
        if let Some(((_, id), key)) = found {
            let mut batch = Batch::new();
            ONE_TIME_KEYS.delete(&mut batch, (user.as_str(), device, &id));
            self.store.write(batch)?;
            self.counts_changed(user, device);
            return Ok(Some((id, key)));
        }
        let Some(mut fallback) = FALLBACK_KEYS.get(&self.store, (user.as_str(), device, algorithm))? else {
            return Ok(None);
        };
        let id = fallback["key_id"].as_str().unwrap_or_default().to_owned();
        let key = fallback["key"].clone();
        if fallback["used"] != true {
            fallback["used"] = Value::Bool(true);
            let mut batch = Batch::new();
            FALLBACK_KEYS.put(&mut batch, (user.as_str(), device, algorithm), &fallback);
            self.store.write(batch)?;
            self.counts_changed(user, device);
        }
        Ok(Some((id, key)))
    }

    pub fn device_keys(&self, user: &UserId) -> Result<BTreeMap<String, Value>> {
        Ok(DEVICE_KEYS.collect_prefix(&self.store, user.as_str())?.into_iter().collect())
    }

    pub fn cross_signing_key(&self, user: &UserId, kind: &str) -> Result<Option<Value>> {
        Ok(CROSS_SIGNING_KEYS.get(&self.store, (user.as_str(), kind))?)
    }

    /// Stores cross-signing keys (`master`, `self_signing`, `user_signing`).
    pub fn upload_cross_signing(&self, user: &UserId, keys: &[(&str, Value)]) -> Result<u64> {
        for (_, k) in keys {
            check_size(k)?;
            if k.get("user_id").and_then(Value::as_str) != Some(user.as_str()) {
                return Err(Error::invalid_param("Cross-signing keys must belong to the uploading user"));
            }
        }
        // A user-signing key alone concerns only its owner (as on Synapse).
        let private = keys.iter().all(|(kind, _)| *kind == "user_signing");
        let (pos, _) = self.stream.commit(|pos, batch| {
            for (kind, k) in keys {
                CROSS_SIGNING_KEYS.put(batch, (user.as_str(), *kind), k);
            }
            let item = StreamItem::DeviceList { user_id: user.to_owned(), device_id: None, deleted: false, private };
            STREAM_LOG.put(batch, pos, &item);
            Ok(())
        })?;
        Ok(pos)
    }

    /// Adds `signer`'s signatures to a key of `user` identified by `key_id` (a device id
    /// or a cross-signing public key). Only the signatures object is taken from `signed`.
    pub fn add_signatures(&self, signer: &UserId, user: &UserId, key_id: &str, signed: &Value) -> Result<Option<u64>> {
        let Some(new_sigs) = signed.get("signatures").and_then(|s| s.get(signer.as_str())).and_then(Value::as_object)
        else {
            return Err(Error::invalid_param("No signatures by the uploader"));
        };
        // The key being signed: a device of the user, or one of their cross-signing keys.
        let mut target: Option<(Option<&str>, Value)> =
            DEVICE_KEYS.get(&self.store, (user.as_str(), key_id))?.map(|v| (None, v));
        if target.is_none() {
            for kind in ["master", "self_signing", "user_signing"] {
                if let Some(v) = self.cross_signing_key(user, kind)? {
                    let matches = v
                        .get("keys")
                        .and_then(Value::as_object)
                        .is_some_and(|keys| keys.values().any(|k| k.as_str() == Some(key_id)));
                    if matches {
                        target = Some((Some(kind), v));
                        break;
                    }
                }
            }
        }
        let Some((kind, mut key)) = target else { return Err(Error::not_found("No such key")) };
        // Every new signature must verify with the signer's key over the signed object.
        for (sig_key_id, sig) in new_sigs {
            self.verify_signature(signer, sig_key_id, sig, &key)?;
        }
        let sigs = key
            .as_object_mut()
            .and_then(|o| o.entry("signatures").or_insert_with(|| Value::Object(Map::new())).as_object_mut());
        let Some(sigs) = sigs else { return Err(Error::invalid_param("Malformed stored key")) };
        let mine = sigs.entry(signer.to_string()).or_insert_with(|| Value::Object(Map::new()));
        if let Some(m) = mine.as_object_mut() {
            for (k, v) in new_sigs {
                m.insert(k.clone(), v.clone());
            }
        }
        check_size(&key)?;
        let (pos, _) = self.stream.commit(|pos, batch| {
            match kind {
                None => DEVICE_KEYS.put(batch, (user.as_str(), key_id), &key),
                Some(kind) => CROSS_SIGNING_KEYS.put(batch, (user.as_str(), kind), &key),
            }
            self.mark_changed(batch, pos, user, kind.is_none().then_some(key_id), false);
            Ok(())
        })?;
        Ok(Some(pos))
    }

    /// The signer's public key named by `key_id` (`ed25519:<device id or cross-signing key>`).
    fn signer_public_key(&self, signer: &UserId, key_id: &str) -> Result<Option<String>> {
        let Some(id) = key_id.strip_prefix("ed25519:") else { return Ok(None) };
        if let Some(device) = DEVICE_KEYS.get(&self.store, (signer.as_str(), id))? {
            if let Some(k) = device["keys"][key_id].as_str() {
                return Ok(Some(k.to_owned()));
            }
        }
        for kind in ["master", "self_signing", "user_signing"] {
            if let Some(k) = self.cross_signing_key(signer, kind)? {
                if let Some(public) = k["keys"][key_id].as_str() {
                    return Ok(Some(public.to_owned()));
                }
            }
        }
        Ok(None)
    }

    /// Checks one signature by `signer` over `key` (signatures and unsigned excluded).
    fn verify_signature(&self, signer: &UserId, key_id: &str, sig: &Value, key: &Value) -> Result<()> {
        let invalid = |why: &str| Error::matrix(http::StatusCode::BAD_REQUEST, "M_INVALID_SIGNATURE", why.to_owned());
        let public = self.signer_public_key(signer, key_id)?.ok_or_else(|| invalid("Unknown signing key"))?;
        let public =
            ruma::serde::Base64::parse(public.trim_end_matches('=')).map_err(|_| invalid("Malformed signing key"))?;
        let mut object = key.clone();
        if let Some(o) = object.as_object_mut() {
            o.remove("unsigned");
            o.insert("signatures".into(), serde_json::json!({ signer.as_str(): { key_id: sig } }));
        }
        let object: ruma::CanonicalJsonObject =
            serde_json::from_value(object).map_err(|_| invalid("Key is not canonical JSON"))?;
        let mut set = ruma::signatures::PublicKeySet::new();
        set.insert(key_id.to_owned(), public);
        let mut map = ruma::signatures::PublicKeyMap::new();
        map.insert(signer.to_string(), set);
        ruma::signatures::verify_json(&map, &object).map_err(|_| invalid("Signature does not verify"))
    }

    /// Forgets a deleted device's keys and announces the change.
    pub fn remove_device(&self, user: &UserId, device: &str) -> Result<u64> {
        let otks: Vec<String> = ONE_TIME_KEYS
            .collect_prefix(&self.store, user.as_str())?
            .into_iter()
            .filter(|((d, _), _)| d == device)
            .map(|((_, id), _)| id)
            .collect();
        let fallbacks: Vec<String> = FALLBACK_KEYS
            .collect_prefix(&self.store, user.as_str())?
            .into_iter()
            .filter(|((d, _), _)| d == device)
            .map(|((_, a), _)| a)
            .collect();
        let (pos, _) = self.stream.commit(|pos, batch| {
            DEVICE_KEYS.delete(batch, (user.as_str(), device));
            for id in &otks {
                ONE_TIME_KEYS.delete(batch, (user.as_str(), device, id));
            }
            for a in &fallbacks {
                FALLBACK_KEYS.delete(batch, (user.as_str(), device, a));
            }
            self.mark_changed(batch, pos, user, Some(device), true);
            Ok(())
        })?;
        self.counts_changed(user, device);
        to_device::clear_device(&self.store, user, device)?;
        Ok(pos)
    }

    /// Users whose device lists changed in (since, until].
    pub fn changed_users(&self, since: u64, until: u64) -> Result<Vec<OwnedUserId>> {
        Ok(self
            .stream
            .items_between(since, until)?
            .into_iter()
            .filter_map(|(_, item)| match item {
                StreamItem::DeviceList { user_id, .. } => Some(user_id),
                _ => None,
            })
            .collect())
    }
}
