//! Where and when each device was last seen: the client address, user agent and time of
//! its latest authenticated request, kept on the device record (`last_seen_ip`,
//! `last_seen_ts` in `/devices`; the connections of `/admin/whois`).
//!
//! Every authenticated request reports in ([`Users::note_seen`]); the device record is
//! written only when the address or user agent changed or [`WRITE_EVERY_MS`] passed since
//! the last write, so a busy client costs one small write a minute, not one per request.
//! The time shown may therefore lag by up to that interval, as on Synapse (which batches
//! these writes too). The write does not wait for the disk: nothing is acknowledged by it,
//! and the next durable write carries it (a crash may lose the last minute of "last seen",
//! never another write). It used to cost the first request of every new device an fsync,
//! a first `/sync`'s included.

use std::collections::HashMap;

use parking_lot::Mutex;
use ruma::{DeviceId, OwnedDeviceId, OwnedUserId, UserId};

use super::{devices::DEVICES, Users};
use crate::{error::Result, store::Batch, time::now_millis};

/// How often at most one device's record is rewritten for the same address and agent.
pub const WRITE_EVERY_MS: u64 = 60_000;

/// Most devices whose last write is remembered.
const MAX_KEPT: usize = 100_000;

/// Longest user agent kept.
pub const MAX_USER_AGENT: usize = 512;

/// What a request tells of its client.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Seen {
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

/// The last write per device (in memory; forgotten at restart, which only means one
/// early write).
#[derive(Default)]
pub struct Activity {
    written: Mutex<HashMap<(OwnedUserId, OwnedDeviceId), (Seen, u64)>>,
}

impl Users {
    /// Records that a device made a request (see the module doc).
    pub fn note_seen(&self, user: &UserId, device: &DeviceId, mut seen: Seen) -> Result<()> {
        if let Some(agent) = &mut seen.user_agent {
            if agent.len() > MAX_USER_AGENT {
                let mut cut = MAX_USER_AGENT;
                while !agent.is_char_boundary(cut) {
                    cut -= 1;
                }
                agent.truncate(cut);
            }
        }
        let now = now_millis();
        let key = (user.to_owned(), device.to_owned());
        {
            let written = self.activity.written.lock();
            if let Some((last, at)) = written.get(&key) {
                if *last == seen && now.saturating_sub(*at) < WRITE_EVERY_MS {
                    return Ok(());
                }
            }
        }
        let _guard = self.write_lock.lock();
        let db_key = (user.as_str(), device.as_str());
        // A device deleted meanwhile stays deleted.
        let Some(mut record) = DEVICES.get(self.store(), db_key)? else { return Ok(()) };
        record.last_seen_ts = Some(now);
        if seen.ip.is_some() {
            record.last_seen_ip = seen.ip.clone();
        }
        if seen.user_agent.is_some() {
            record.last_seen_user_agent = seen.user_agent.clone();
        }
        let mut batch = Batch::new();
        DEVICES.put(&mut batch, db_key, &record);
        self.store().write_deferred(batch)?;
        let mut written = self.activity.written.lock();
        if written.len() >= MAX_KEPT {
            // Devices deleted long ago linger here; starting over costs one write each.
            written.clear();
        }
        written.insert(key, (seen, now));
        Ok(())
    }
}
