//! Devices and their access tokens.
//!
//! A device is what a login creates; its access token is the only credential a client
//! holds. `ACCESS_TOKENS` maps SHA-256(token) to its (user, device), and the device record
//! keeps the same hash so deleting a device revokes its token in the same batch.
//!
//! Every authenticated request resolves its token, so resolved tokens are kept in memory
//! ([`TokenCache`]); every write that deletes tokens empties it.

use std::sync::atomic::{AtomicU64, Ordering};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use hashlink::LruCache;
use parking_lot::Mutex;
use rand::{Rng, RngCore};
use ruma::{DeviceId, OwnedDeviceId, OwnedUserId, UserId};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::Users;
use crate::{
    error::{Error, Result},
    store::codec::json_value,
    store::{tables, Batch, Table},
    time::now_millis,
};

/// The authenticated caller of a request: the user and the device whose access token it
/// carried.
#[derive(Debug, Clone)]
pub struct Caller {
    pub user_id: OwnedUserId,
    pub device_id: OwnedDeviceId,
    /// A guest account (see `api::guest` for what it may call).
    pub guest: bool,
    /// The application service whose token this is (the caller is its sender or a user it
    /// masquerades as; `device_id` is then the one the service named, or a placeholder).
    pub appservice: Option<std::sync::Arc<str>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Device {
    pub display_name: Option<String>,
    /// SHA-256 of the current access token.
    pub token_hash: Vec<u8>,
    pub created_ts: u64,
    pub last_seen_ts: Option<u64>,
    pub last_seen_ip: Option<String>,
    /// The `User-Agent` of the device's latest request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen_user_agent: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenOwner {
    pub user_id: OwnedUserId,
    pub device_id: OwnedDeviceId,
    /// The token of a guest account; rewritten when the guest upgrades.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub guest: bool,
}

json_value!(Device, TokenOwner);

pub const DEVICES: Table<(String, String), Device> = Table::new(tables::DEVICES);
pub const ACCESS_TOKENS: Table<Vec<u8>, TokenOwner> = Table::new(tables::ACCESS_TOKENS);

/// Longest device display name kept.
pub const MAX_DISPLAY_NAME: usize = 256;
/// Longest client-chosen device id accepted.
pub const MAX_DEVICE_ID: usize = 255;

pub(crate) fn token_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// 32 random bytes, URL-safe base64.
pub(crate) fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

fn new_device_id() -> OwnedDeviceId {
    let mut rng = rand::thread_rng();
    let id: String = (0..10).map(|_| rng.gen_range(b'A'..=b'Z') as char).collect();
    id.into()
}

fn clamp_display_name(name: Option<String>) -> Option<String> {
    name.map(|mut n| {
        if n.len() > MAX_DISPLAY_NAME {
            let mut cut = MAX_DISPLAY_NAME;
            while !n.is_char_boundary(cut) {
                cut -= 1;
            }
            n.truncate(cut);
        }
        n
    })
}

/// Most resolved tokens kept: far more than a home server has devices.
const TOKEN_CACHE_CAPACITY: usize = 8192;

/// Token hashes resolved from the database, by hash. A token reaches the cache only from
/// the database, and only if no token was deleted while it was being read (the epoch is
/// unchanged), so a revoked token can never be put back after its revocation emptied the
/// cache. Measured: in the benchmark's fan-out (one message, 99 waiting syncs), the token
/// lookups were a third of the reads on SQLite, where each read is its own transaction.
pub struct TokenCache {
    epoch: AtomicU64,
    owners: Mutex<LruCache<Vec<u8>, TokenOwner>>,
}

impl Default for TokenCache {
    fn default() -> Self {
        TokenCache { epoch: AtomicU64::new(0), owners: Mutex::new(LruCache::new(TOKEN_CACHE_CAPACITY)) }
    }
}

impl TokenCache {
    /// Forgets every token: called after every write that deletes one (whether or not the
    /// write succeeded).
    fn forget_all(&self) {
        let mut owners = self.owners.lock();
        self.epoch.fetch_add(1, Ordering::SeqCst);
        owners.clear();
    }
}

impl Users {
    /// Resolves an access token to its caller.
    pub fn authenticate(&self, token: &str) -> Result<Caller> {
        let hash = token_hash(token);
        if let Some(owner) = self.tokens.owners.lock().get(&hash) {
            return Ok(Caller {
                user_id: owner.user_id.clone(),
                device_id: owner.device_id.clone(),
                guest: owner.guest,
                appservice: None,
            });
        }
        let epoch = self.tokens.epoch.load(Ordering::SeqCst);
        let owner = ACCESS_TOKENS.get(self.store(), &hash)?.ok_or_else(Error::unknown_token)?;
        let mut owners = self.tokens.owners.lock();
        if self.tokens.epoch.load(Ordering::SeqCst) == epoch {
            owners.insert(hash, owner.clone());
        }
        Ok(Caller { user_id: owner.user_id, device_id: owner.device_id, guest: owner.guest, appservice: None })
    }

    /// Writes a batch that may delete access tokens, then forgets the resolved ones.
    pub(super) fn write_revoking(&self, batch: Batch) -> Result<()> {
        let written = self.store().write(batch);
        self.tokens.forget_all();
        Ok(written?)
    }

    /// Logs a device in: creates it (or, for an existing device id of this user, replaces
    /// its token) and returns the device id and the new access token.
    pub fn login_device(
        &self,
        user_id: &UserId,
        device_id: Option<OwnedDeviceId>,
        display_name: Option<String>,
        ip: Option<String>,
    ) -> Result<(OwnedDeviceId, String)> {
        if let Some(d) = &device_id {
            if d.as_str().is_empty() || d.as_str().len() > MAX_DEVICE_ID {
                return Err(Error::invalid_param("device_id must be 1 to 255 bytes"));
            }
        }
        let device_id = device_id.unwrap_or_else(new_device_id);
        let guest = self.account(user_id)?.is_some_and(|a| a.guest);
        let token = new_token();
        let hash = token_hash(&token);
        let now = now_millis();

        let _guard = self.write_lock.lock();
        let mut batch = Batch::new();
        let mut revokes = false;
        let device = match DEVICES.get(self.store(), (user_id.as_str(), device_id.as_str()))? {
            Some(mut existing) => {
                revokes = true;
                ACCESS_TOKENS.delete(&mut batch, &existing.token_hash);
                existing.token_hash = hash.clone();
                existing.last_seen_ts = Some(now);
                existing.last_seen_ip = ip;
                existing
            }
            None => Device {
                display_name: clamp_display_name(display_name),
                token_hash: hash.clone(),
                created_ts: now,
                last_seen_ts: Some(now),
                last_seen_ip: ip,
                last_seen_user_agent: None,
            },
        };
        DEVICES.put(&mut batch, (user_id.as_str(), device_id.as_str()), &device);
        let owner = TokenOwner { user_id: user_id.to_owned(), device_id: device_id.clone(), guest };
        ACCESS_TOKENS.put(&mut batch, &hash, &owner);
        if revokes {
            self.write_revoking(batch)?;
        } else {
            self.store().write(batch)?;
        }
        Ok((device_id, token))
    }

    pub fn device(&self, user_id: &UserId, device_id: &DeviceId) -> Result<Option<Device>> {
        Ok(DEVICES.get(self.store(), (user_id.as_str(), device_id.as_str()))?)
    }

    pub fn devices(&self, user_id: &UserId) -> Result<Vec<(OwnedDeviceId, Device)>> {
        Ok(DEVICES
            .collect_prefix(self.store(), user_id.as_str())?
            .into_iter()
            .map(|(id, d)| (OwnedDeviceId::from(id), d))
            .collect())
    }

    pub fn set_device_display_name(&self, user_id: &UserId, device_id: &DeviceId, name: Option<String>) -> Result<()> {
        let _guard = self.write_lock.lock();
        let key = (user_id.as_str(), device_id.as_str());
        let mut device = DEVICES.get(self.store(), key)?.ok_or_else(|| Error::not_found("No such device"))?;
        device.display_name = clamp_display_name(name);
        let mut batch = Batch::new();
        DEVICES.put(&mut batch, key, &device);
        Ok(self.store().write(batch)?)
    }

    /// Deletes devices (and so their tokens). Unknown device ids are skipped, as the spec
    /// asks of `delete_devices`.
    pub fn delete_devices(&self, user_id: &UserId, device_ids: &[OwnedDeviceId]) -> Result<()> {
        let _guard = self.write_lock.lock();
        let mut batch = Batch::new();
        for d in device_ids {
            self.delete_device_into(&mut batch, user_id, d.as_str())?;
        }
        self.write_revoking(batch)
    }

    /// Deletes every device of the user except `keep`.
    pub fn delete_all_devices_except(&self, user_id: &UserId, keep: Option<&DeviceId>) -> Result<()> {
        let ids: Vec<OwnedDeviceId> =
            self.devices(user_id)?.into_iter().map(|(id, _)| id).filter(|id| Some(id.as_ref()) != keep).collect();
        self.delete_devices(user_id, &ids)
    }

    /// Adds the deletion of one device and its token to `batch`. Callers hold `write_lock`
    /// and write the batch with [`Users::write_revoking`].
    pub(super) fn delete_device_into(&self, batch: &mut Batch, user_id: &UserId, device_id: &str) -> Result<()> {
        let key = (user_id.as_str(), device_id);
        if let Some(device) = DEVICES.get(self.store(), key)? {
            ACCESS_TOKENS.delete(batch, &device.token_hash);
            DEVICES.delete(batch, key);
        }
        // The device's pushers go with it: a logged-out phone must not keep ringing.
        self.delete_pushers_of_device(batch, user_id, device_id)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn tokens_are_long_and_unique() {
        let a = super::new_token();
        let b = super::new_token();
        assert_ne!(a, b);
        assert!(a.len() >= 43);
    }
}
