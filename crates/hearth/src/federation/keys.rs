//! End-to-end encryption across servers: device keys, one-time keys, device-list changes
//! and to-device messages.
//!
//! - **Served**: `user/keys/query`, `user/keys/claim` and `user/devices` for local users.
//! - **Asked**: a client's `keys/query` and `keys/claim` for remote users go to their
//!   servers, all at once, each with a time-out; a server that fails is named in
//!   `failures`, and the others' answers are used. Remote device lists are not cached:
//!   every query asks (the receiving server tells us when to re-ask, see below).
//! - **Device-list changes out**: the sender follows the stream's device-list items of
//!   local users and sends `m.device_list_update` (with the device's keys, or `deleted`)
//!   and `m.signing_key_update` to every server sharing a room with the user; `prev_id`
//!   names the previous update this process sent for the user, so a server that missed
//!   one resyncs through `user/devices`. A join that brings servers together in a room
//!   introduces the device lists of the users it brings together (the sender's
//!   `introduce_devices`), once the join itself has reached the other server.
//! - **Device-list changes in**: an update about a user of its origin becomes a
//!   device-list item on the stream, so local users sharing a room with them see the user
//!   in `device_lists.changed` and re-query.
//! - **To-device**: messages for remote users go out as `m.direct_to_device`, one EDU per
//!   destination; received ones from a user of the origin are queued for local devices,
//!   once per `message_id`.

use std::{collections::BTreeMap, time::Duration};

use futures_util::future::join_all;
use ruma::{OwnedServerName, OwnedUserId, ServerName, UserId};
use serde_json::{json, Map, Value};

use super::Federation;
use crate::{
    error::{Error, Result},
    transport::server_client::ServerRequest,
};

pub(crate) const KEYS_TIMEOUT: Duration = Duration::from_secs(10);
pub(crate) const MAX_KEYS_ANSWER_BYTES: usize = 8 * 1024 * 1024;
/// Most users asked about in one query, and most devices claimed at once.
pub const MAX_KEY_USERS: usize = 1000;

/// Users of one server and what is asked about each.
pub type ByServer<T> = BTreeMap<OwnedServerName, BTreeMap<OwnedUserId, T>>;

impl Federation {
    /// `user/keys/query`: the device keys (of `wanted` devices; all when empty) and the
    /// public cross-signing keys of local users.
    pub fn query_local_keys(&self, wanted: &BTreeMap<OwnedUserId, Vec<String>>) -> Result<Value> {
        if wanted.len() > MAX_KEY_USERS {
            return Err(Error::too_large("Too many users in one query"));
        }
        let (mut device_keys, mut masters, mut self_signing) = (Map::new(), Map::new(), Map::new());
        for (user, devices) in wanted {
            if user.server_name() != self.own {
                continue;
            }
            let mut found = Map::new();
            for (device, mut keys) in self.keys_e2ee.device_keys(user)? {
                if !devices.is_empty() && !devices.contains(&device) {
                    continue;
                }
                if let Some(name) = self.users.device(user, device.as_str().into())?.and_then(|d| d.display_name) {
                    keys["unsigned"] = json!({"device_display_name": name});
                }
                found.insert(device, keys);
            }
            device_keys.insert(user.to_string(), Value::Object(found));
            if let Some(mut k) = self.keys_e2ee.cross_signing_key(user, "master")? {
                // Signatures by other users' user-signing keys are for those users only.
                if let Some(sigs) = k.get_mut("signatures").and_then(Value::as_object_mut) {
                    sigs.retain(|signer, _| signer == user.as_str());
                }
                masters.insert(user.to_string(), k);
            }
            if let Some(k) = self.keys_e2ee.cross_signing_key(user, "self_signing")? {
                self_signing.insert(user.to_string(), k);
            }
        }
        Ok(json!({"device_keys": device_keys, "master_keys": masters, "self_signing_keys": self_signing}))
    }

    /// `user/keys/claim`: one one-time (or fallback) key per asked device of local users.
    pub fn claim_local_keys(&self, wanted: &BTreeMap<OwnedUserId, BTreeMap<String, String>>) -> Result<Value> {
        if wanted.values().map(BTreeMap::len).sum::<usize>() > MAX_KEY_USERS {
            return Err(Error::too_large("Too many devices in one claim"));
        }
        let mut claimed = Map::new();
        for (user, devices) in wanted {
            if user.server_name() != self.own {
                continue;
            }
            let mut per_device = Map::new();
            for (device, algorithm) in devices {
                if let Some((id, key)) = self.keys_e2ee.claim(user, device, algorithm)? {
                    per_device.insert(device.clone(), json!({ id: key }));
                }
            }
            if !per_device.is_empty() {
                claimed.insert(user.to_string(), Value::Object(per_device));
            }
        }
        Ok(json!({"one_time_keys": claimed}))
    }

    /// `user/devices/{userId}`: a local user's devices with their keys, and the public
    /// cross-signing keys.
    pub fn user_devices(&self, user: &UserId) -> Result<Value> {
        if user.server_name() != self.own {
            return Err(Error::not_found("Not a user of this server"));
        }
        let keys = self.keys_e2ee.device_keys(user)?;
        let mut devices = Vec::new();
        for (device_id, device) in self.users.devices(user)? {
            // A device that never uploaded keys cannot take part in encryption.
            let Some(k) = keys.get(device_id.as_str()) else { continue };
            let mut entry = json!({"device_id": device_id, "keys": k});
            if let Some(name) = device.display_name {
                entry["device_display_name"] = json!(name);
            }
            devices.push(entry);
        }
        // The id the next update's `prev_id` names, so that the asking server can apply it.
        let stream_id =
            self.sender.last_device_update(user).unwrap_or_else(|| super::sender::stream_id(self.rooms.stream_now()));
        let mut answer = json!({"user_id": user, "stream_id": stream_id, "devices": devices});
        if let Some(k) = self.keys_e2ee.cross_signing_key(user, "master")? {
            answer["master_key"] = k;
        }
        if let Some(k) = self.keys_e2ee.cross_signing_key(user, "self_signing")? {
            answer["self_signing_key"] = k;
        }
        Ok(answer)
    }

    /// Asks each server the same question at once: (answers by server, servers that
    /// failed).
    async fn ask_each<T: serde::Serialize>(
        &self,
        by_server: &ByServer<T>,
        path: &str,
        field: &str,
    ) -> (Vec<(OwnedServerName, Value)>, Vec<OwnedServerName>) {
        let asks = by_server.iter().filter(|(server, _)| **server != self.own).map(|(server, users)| async move {
            let body = json!({ field: users });
            let req = ServerRequest::post(path, &body).limits(KEYS_TIMEOUT, MAX_KEYS_ANSWER_BYTES);
            let answer = self.servers.request(server, req).await;
            let parsed = match answer {
                Ok(a) if a.status.is_success() => serde_json::from_slice::<Value>(&a.body).ok(),
                Ok(a) => {
                    tracing::info!(%server, status = %a.status, "{path} refused");
                    None
                }
                Err(e) => {
                    tracing::info!(%server, error = %e, "{path} failed");
                    None
                }
            };
            (server.clone(), parsed)
        });
        let mut answers = Vec::new();
        let mut failures = Vec::new();
        for (server, parsed) in join_all(asks).await {
            match parsed {
                Some(v) => answers.push((server, v)),
                None => failures.push(server),
            }
        }
        (answers, failures)
    }

    /// A client's `keys/query` for remote users: the merged answers (`device_keys`,
    /// `master_keys`, `self_signing_keys`, each only for users of the server that sent
    /// them) and the servers that failed.
    pub async fn query_remote_keys(
        &self,
        by_server: &ByServer<Vec<String>>,
    ) -> (Map<String, Value>, Vec<OwnedServerName>) {
        let (answers, failures) =
            self.ask_each(by_server, "/_matrix/federation/v1/user/keys/query", "device_keys").await;
        let mut merged = Map::new();
        for (server, answer) in answers {
            for field in ["device_keys", "master_keys", "self_signing_keys"] {
                let out = merged.entry(field).or_insert_with(|| Value::Object(Map::new()));
                for (user, keys) in answer.get(field).and_then(Value::as_object).into_iter().flatten() {
                    if owned_by(user, &server) {
                        out[user] = keys.clone();
                    }
                }
            }
        }
        (merged, failures)
    }

    /// A client's `keys/claim` for remote users: claimed keys by user, and the servers
    /// that failed.
    pub async fn claim_remote_keys(
        &self,
        by_server: &ByServer<BTreeMap<String, String>>,
    ) -> (Map<String, Value>, Vec<OwnedServerName>) {
        let (answers, failures) =
            self.ask_each(by_server, "/_matrix/federation/v1/user/keys/claim", "one_time_keys").await;
        let mut claimed = Map::new();
        for (server, answer) in answers {
            for (user, keys) in answer.get("one_time_keys").and_then(Value::as_object).into_iter().flatten() {
                if owned_by(user, &server) {
                    claimed.insert(user.clone(), keys.clone());
                }
            }
        }
        (claimed, failures)
    }

    /// Sends to-device messages for remote users: one `m.direct_to_device` EDU per server,
    /// queued durably (they may carry room keys: a 200 to the client means they go out).
    pub fn send_to_device(
        &self,
        sender: &UserId,
        kind: &str,
        message_id: &str,
        messages: &BTreeMap<OwnedUserId, BTreeMap<String, Value>>,
    ) -> Result<()> {
        let mut by_server: BTreeMap<&ServerName, Map<String, Value>> = BTreeMap::new();
        for (user, devices) in messages {
            if user.server_name() == self.own {
                continue;
            }
            let per_device: Map<String, Value> = devices.iter().map(|(d, c)| (d.clone(), c.clone())).collect();
            by_server.entry(user.server_name()).or_default().insert(user.to_string(), Value::Object(per_device));
        }
        for (server, msgs) in by_server {
            let edu = json!({
                "edu_type": "m.direct_to_device",
                "content": {"sender": sender, "type": kind, "message_id": message_id, "messages": msgs},
            });
            self.sender.queue_durable_edu(server, edu)?;
        }
        Ok(())
    }

    /// An `m.direct_to_device` EDU (see the module doc).
    pub(crate) fn receive_to_device(&self, origin: &ServerName, content: &Value) {
        let (Some(sender), Some(kind), Some(message_id), Some(messages)) = (
            content.get("sender").and_then(Value::as_str).and_then(|s| UserId::parse(s).ok()),
            content.get("type").and_then(Value::as_str),
            content.get("message_id").and_then(Value::as_str),
            content.get("messages").and_then(Value::as_object),
        ) else {
            return;
        };
        if sender.server_name() != origin {
            return tracing::debug!(%origin, %sender, "ignoring to-device messages from another server's user");
        }
        let mut local: BTreeMap<OwnedUserId, BTreeMap<String, Value>> = BTreeMap::new();
        for (user, devices) in messages {
            let Ok(user) = UserId::parse(user.as_str()) else { continue };
            if user.server_name() != self.own {
                continue;
            }
            let Some(devices) = devices.as_object() else { continue };
            local.insert(user, devices.iter().map(|(d, c)| (d.clone(), c.clone())).collect());
        }
        let devices_of = |u: &UserId| -> Result<Vec<String>> {
            Ok(self.users.devices(u)?.into_iter().map(|(d, _)| d.to_string()).collect())
        };
        // The remote sender's device is unknown here: its server's message id is the
        // transaction (the sender is remote, so no local device shares these keys).
        match self.to_device.send(&sender, "federation", message_id, kind, &local, devices_of) {
            Ok(Some((pos, users))) => self.rooms.notifier.notify(users.iter().map(|u| &**u), pos),
            Ok(None) => {}
            Err(e) => tracing::info!(%origin, error = %e, "dropping to-device messages"),
        }
    }
}

/// Whether `user` (a user id as text) is of `server`: a server answers only for its own.
fn owned_by(user: &str, server: &ServerName) -> bool {
    UserId::parse(user).is_ok_and(|u| u.server_name() == server)
}
