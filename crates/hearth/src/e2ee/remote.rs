//! Other servers' users' device lists, as this server keeps them: each user's devices with
//! their keys, the public cross-signing keys, and the `stream_id` of the user's server's
//! last update applied. Federation fills and updates them (`federation::device_lists`);
//! a client's `keys/query` reads them while a local user shares a room with the user.

use std::collections::BTreeMap;

use ruma::UserId;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Keys;
use crate::{
    error::Result,
    store::{codec::json_value, tables, Batch, Table},
};

/// User id → their device list.
pub const REMOTE_DEVICE_LISTS: Table<String, RemoteDevices> = Table::new(tables::REMOTE_DEVICE_LISTS);

/// Most devices kept of one remote user.
pub const MAX_REMOTE_DEVICES: usize = 1000;

/// One remote user's device list.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RemoteDevices {
    /// The user's server's `stream_id` of the last update applied.
    pub stream_id: u64,
    /// This server's stream position when the list was last synced or updated: a join
    /// after it forgets the list ([`Keys::forget_remote_devices`]).
    #[serde(default)]
    pub kept_at: u64,
    /// Device id → its device keys (with `unsigned.device_display_name` when known).
    pub devices: BTreeMap<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master_key: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub self_signing_key: Option<Value>,
}

json_value!(RemoteDevices);

impl Keys {
    /// The device list kept of a remote user, if any.
    pub fn remote_devices(&self, user: &UserId) -> Result<Option<RemoteDevices>> {
        Ok(REMOTE_DEVICE_LISTS.get(&self.store, user.as_str())?)
    }

    /// Keeps a remote user's device list.
    pub fn keep_remote_devices(&self, user: &UserId, devices: &RemoteDevices) -> Result<()> {
        let mut batch = Batch::new();
        REMOTE_DEVICE_LISTS.put(&mut batch, user.as_str(), devices);
        Ok(self.store.write(batch)?)
    }

    /// Forgets the device lists of remote users kept before stream position `before`, so
    /// that they are synced afresh when next needed (their servers may not have told this
    /// one of changes while no room was shared).
    pub fn forget_remote_devices<'a>(&self, users: impl IntoIterator<Item = &'a UserId>, before: u64) -> Result<()> {
        let mut batch = Batch::new();
        for user in users {
            if REMOTE_DEVICE_LISTS.get(&self.store, user.as_str())?.is_some_and(|kept| kept.kept_at < before) {
                REMOTE_DEVICE_LISTS.delete(&mut batch, user.as_str());
            }
        }
        Ok(self.store.write(batch)?)
    }
}
