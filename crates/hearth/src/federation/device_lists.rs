//! Other servers' users' device lists (the spec's "Device management" chapter), kept here
//! ([`crate::e2ee::remote`]) while a local user shares a room with the user:
//!
//! - **Synced** through `user/devices` of the user's server: when a client asks for the
//!   keys of such a user this server has no list of, when an update arrives for a user it
//!   has no list of, and when an update's `prev_id` names one it never applied (one went
//!   missing).
//! - **Updated** by `m.device_list_update` (a device's keys, or its deletion) and
//!   `m.signing_key_update` (the cross-signing keys) from the user's own server. Every
//!   update becomes a device-list item on the stream, so local users sharing a room with
//!   the user see them in `device_lists.changed` and ask again.
//! - **Read** by a client's `keys/query` instead of asking the user's server, so that a
//!   server that is down does not take its users' keys away. Users no local user shares a
//!   room with are asked about with `user/keys/query` and not kept.
//! - **Forgotten** when a join starts a shared room with the user again (the sender's
//!   `introduce_devices`): while no room was shared their server told this one nothing.

use std::{collections::HashSet, sync::Arc};

use futures_util::{stream, StreamExt};
use parking_lot::Mutex;
use ruma::{OwnedUserId, UserId};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::{keys::KEYS_TIMEOUT, keys::MAX_KEYS_ANSWER_BYTES, receive::encode, Federation};
use crate::{
    e2ee::{
        remote::{RemoteDevices, MAX_REMOTE_DEVICES},
        Keys,
    },
    error::{Error, Result},
    rooms::Rooms,
    transport::server_client::{ServerClient, ServerRequest},
};

/// Most device lists synced at once for one query.
const RESYNCS_AT_ONCE: usize = 8;
/// Most users one query syncs; the rest are asked with `user/keys/query`.
const MAX_RESYNCS_PER_QUERY: usize = 100;

#[derive(Deserialize)]
struct UserDevices {
    user_id: OwnedUserId,
    #[serde(default)]
    stream_id: u64,
    #[serde(default)]
    devices: Vec<Value>,
    master_key: Option<Value>,
    self_signing_key: Option<Value>,
}

#[derive(Deserialize)]
struct DeviceListUpdate {
    device_id: String,
    stream_id: u64,
    #[serde(default)]
    prev_id: Vec<u64>,
    #[serde(default)]
    deleted: bool,
    keys: Option<Value>,
    device_display_name: Option<String>,
}

/// Most device-list syncs running in the background at once.
const MAX_BACKGROUND_RESYNCS: usize = 100;

/// Remote users whose device lists are being synced in the background.
#[derive(Default)]
pub(crate) struct Resyncing(Arc<Mutex<HashSet<OwnedUserId>>>);

/// What an update did.
enum Applied {
    /// Applied to the kept list (or nothing to apply): announce it.
    Kept,
    /// The list has to be synced afresh (none kept, or an update went missing).
    Resync,
}

/// Syncs `user`'s device list from their server's `user/devices`, keeps it, and announces
/// it to the local users sharing a room with them.
async fn resync(servers: &ServerClient, keys: &Keys, rooms: &Rooms, user: &UserId) -> Result<RemoteDevices> {
    let path = format!("/_matrix/federation/v1/user/devices/{}", encode(user.as_str()));
    let req = ServerRequest::get(&path).limits(KEYS_TIMEOUT, MAX_KEYS_ANSWER_BYTES);
    let answer = (servers.request(user.server_name(), req).await)
        .map_err(|e| Error::unavailable(format!("user/devices of {user}: {e}")))?;
    if !answer.status.is_success() {
        return Err(Error::unavailable(format!("the user's server answered {} to user/devices", answer.status)));
    }
    let got: UserDevices = serde_json::from_slice(&answer.body)
        .map_err(|e| Error::unavailable(format!("unreadable user/devices answer: {e}")))?;
    if got.user_id != user {
        return Err(Error::unavailable("user/devices answered about another user"));
    }
    let mut kept = RemoteDevices {
        stream_id: got.stream_id,
        kept_at: rooms.stream_now(),
        master_key: of_user(got.master_key, user),
        self_signing_key: of_user(got.self_signing_key, user),
        ..Default::default()
    };
    for device in got.devices.into_iter().take(MAX_REMOTE_DEVICES) {
        let Some(id) = device.get("device_id").and_then(Value::as_str) else { continue };
        let Some(device_keys) = of_user(device.get("keys").cloned(), user) else { continue };
        if device_keys.get("device_id").is_some_and(|d| d.as_str() != Some(id)) {
            continue;
        }
        let name = device.get("device_display_name").and_then(Value::as_str);
        kept.devices.insert(id.to_owned(), shown_keys(device_keys, name));
    }
    keys.keep_remote_devices(user, &kept)?;
    announce(keys, rooms, user);
    Ok(kept)
}

/// A device-list item for `user` on the stream: local users sharing a room with them see
/// it in `device_lists.changed` and ask for their keys again.
fn announce(keys: &Keys, rooms: &Rooms, user: &UserId) {
    match keys.note_remote_change(user) {
        Ok(pos) => {
            if let Err(e) = keys.announce(rooms, user, pos) {
                tracing::warn!(error = %e, "cannot announce a remote device change");
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot record a remote device change"),
    }
}

/// A device's keys as `keys/query` shows them: the display name in `unsigned`.
fn shown_keys(mut keys: Value, display_name: Option<&str>) -> Value {
    if let (Some(name), Some(object)) = (display_name, keys.as_object_mut()) {
        let unsigned = object.entry("unsigned").or_insert_with(|| Value::Object(Map::new()));
        if let Some(unsigned) = unsigned.as_object_mut() {
            unsigned.insert("device_display_name".into(), Value::String(name.to_owned()));
        }
    }
    keys
}

/// A key object naming `user` (or no one), and so fit to keep for them.
fn of_user(key: Option<Value>, user: &UserId) -> Option<Value> {
    key.filter(|k| k.is_object() && k.get("user_id").is_none_or(|u| u.as_str() == Some(user.as_str())))
}

impl Federation {
    /// Whether a local user shares a room with `user`: only then is their list kept.
    pub(crate) fn tracks_devices_of(&self, user: &UserId) -> Result<bool> {
        for room in self.rooms.joined_rooms(user)? {
            let joined = self.rooms.members_shared(&room, &ruma::events::room::member::MembershipState::Join)?;
            if joined.iter().any(|u| u.server_name() == self.own) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Syncs a remote user's device list from their server's `user/devices`, keeps it,
    /// and tells the local users sharing a room with them.
    pub async fn resync_devices(&self, user: &UserId) -> Result<RemoteDevices> {
        resync(&self.servers, &self.keys_e2ee, &self.rooms, user).await
    }

    /// [`Federation::resync_devices`] in the background, as Synapse does it: an update
    /// that calls for a sync does not hold its transaction up. At most one sync per user,
    /// and [`MAX_BACKGROUND_RESYNCS`] in all, run at once; past that the next update or
    /// query syncs.
    fn resync_in_background(&self, user: &UserId) {
        {
            let mut running = self.resyncing.0.lock();
            if running.len() >= MAX_BACKGROUND_RESYNCS || !running.insert(user.to_owned()) {
                return;
            }
        }
        let (servers, keys, rooms) = (self.servers.clone(), self.keys_e2ee.clone(), self.rooms.clone());
        let running = self.resyncing.0.clone();
        let user = user.to_owned();
        tokio::spawn(async move {
            if let Err(e) = resync(&servers, &keys, &rooms, &user).await {
                tracing::info!(%user, error = %e, "cannot sync a device list");
            }
            running.lock().remove(&user);
        });
    }

    /// `m.device_list_update` / `m.signing_key_update` about a user of the origin (see the
    /// module doc).
    pub(crate) fn receive_device_change(&self, origin: &ruma::ServerName, edu_type: &str, content: &Value) {
        let Some(user) = content.get("user_id").and_then(Value::as_str).and_then(|s| UserId::parse(s).ok()) else {
            return;
        };
        if user.server_name() != origin {
            return tracing::debug!(%origin, %user, "ignoring a device change of another server's user");
        }
        if !self.tracks_devices_of(&user).unwrap_or(false) {
            return tracing::debug!(%user, "ignoring a device change of a user no one here shares a room with");
        }
        match self.apply_device_change(&user, edu_type, content) {
            Ok(Applied::Kept) => announce(&self.keys_e2ee, &self.rooms, &user),
            Ok(Applied::Resync) => self.resync_in_background(&user),
            Err(e) => tracing::info!(%user, error = %e, "cannot apply a device change"),
        }
    }

    fn apply_device_change(&self, user: &UserId, edu_type: &str, content: &Value) -> Result<Applied> {
        let kept = self.keys_e2ee.remote_devices(user)?;
        if edu_type == "m.signing_key_update" {
            // Kept only on top of a synced list; without one the next query syncs it all.
            let Some(mut kept) = kept else { return Ok(Applied::Kept) };
            if let Some(k) = of_user(content.get("master_key").cloned(), user) {
                kept.master_key = Some(k);
            }
            if let Some(k) = of_user(content.get("self_signing_key").cloned(), user) {
                kept.self_signing_key = Some(k);
            }
            self.keys_e2ee.keep_remote_devices(user, &kept)?;
            return Ok(Applied::Kept);
        }
        let update: DeviceListUpdate =
            serde_json::from_value(content.clone()).map_err(|e| Error::bad_json(e.to_string()))?;
        let Some(mut kept) = kept else { return Ok(Applied::Resync) };
        if update.stream_id <= kept.stream_id {
            return Ok(Applied::Kept); // Applied already.
        }
        if update.prev_id.iter().any(|p| *p != kept.stream_id) {
            // An update before this one never arrived: the whole list afresh.
            return Ok(Applied::Resync);
        }
        if update.deleted {
            kept.devices.remove(&update.device_id);
        } else if let Some(keys) = of_user(update.keys, user) {
            if kept.devices.len() < MAX_REMOTE_DEVICES || kept.devices.contains_key(&update.device_id) {
                kept.devices.insert(update.device_id, shown_keys(keys, update.device_display_name.as_deref()));
            }
        }
        kept.stream_id = update.stream_id;
        kept.kept_at = self.rooms.stream_now();
        self.keys_e2ee.keep_remote_devices(user, &kept)?;
        Ok(Applied::Kept)
    }

    /// The part of a client's `keys/query` this server answers from the device lists it
    /// keeps: for each remote user a local user shares a room with, their kept list, synced
    /// first when there is none and the client asks for all their devices (as Synapse).
    /// Answers `device_keys`, `master_keys` and `self_signing_keys`; the users it answered
    /// are removed from `wanted`.
    pub async fn query_kept_keys(&self, wanted: &mut super::keys::ByServer<Vec<String>>) -> Map<String, Value> {
        let mut lists: Vec<(OwnedUserId, Vec<String>, Option<RemoteDevices>)> = Vec::new();
        let mut to_sync = Vec::new();
        for users in wanted.values() {
            for (user, devices) in users {
                if !self.tracks_devices_of(user).unwrap_or(false) {
                    continue;
                }
                match self.keys_e2ee.remote_devices(user) {
                    Ok(Some(kept)) => lists.push((user.clone(), devices.clone(), Some(kept))),
                    Ok(None) if devices.is_empty() && to_sync.len() < MAX_RESYNCS_PER_QUERY => {
                        to_sync.push(user.clone());
                    }
                    _ => {}
                }
            }
        }
        let synced: Vec<(OwnedUserId, Option<RemoteDevices>)> = stream::iter(to_sync)
            .map(|user| async move {
                let got = self.resync_devices(&user).await;
                if let Err(e) = &got {
                    tracing::info!(%user, error = %e, "cannot sync a device list");
                }
                (user, got.ok())
            })
            .buffer_unordered(RESYNCS_AT_ONCE)
            .collect()
            .await;
        lists.extend(synced.into_iter().filter(|(_, got)| got.is_some()).map(|(u, got)| (u, Vec::new(), got)));

        let (mut device_keys, mut masters, mut self_signing) = (Map::new(), Map::new(), Map::new());
        for (user, devices, kept) in lists {
            let Some(kept) = kept else { continue };
            let shown: Map<String, Value> =
                (kept.devices.into_iter()).filter(|(id, _)| devices.is_empty() || devices.contains(id)).collect();
            device_keys.insert(user.to_string(), Value::Object(shown));
            if let Some(k) = kept.master_key {
                masters.insert(user.to_string(), k);
            }
            if let Some(k) = kept.self_signing_key {
                self_signing.insert(user.to_string(), k);
            }
            if let Some(users) = wanted.get_mut(user.server_name()) {
                users.remove(&user);
            }
        }
        wanted.retain(|_, users| !users.is_empty());
        let mut answer = Map::new();
        answer.insert("device_keys".into(), Value::Object(device_keys));
        answer.insert("master_keys".into(), Value::Object(masters));
        answer.insert("self_signing_keys".into(), Value::Object(self_signing));
        answer
    }
}
