//! Pushers: the push gateways a user's devices registered (`POST /pushers/set`), each
//! with how far its notifications have been delivered.
//!
//! A pusher belongs to the device whose access token made it: it goes when that device is
//! deleted or logs out (in the same write, see [`Users::delete_device_into`]). Without
//! `append`, registering an app id and pushkey removes the same pair from other users, as
//! the spec asks (a phone that changed hands).

use ruma::{OwnedUserId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::Users;
use crate::{
    error::{Error, Result},
    store::codec::json_value,
    store::{tables, Batch, Table},
};

/// A pusher as stored and as `GET /pushers` shows it (plus the delivery fields).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Pusher {
    pub app_id: String,
    pub pushkey: String,
    pub kind: String,
    pub app_display_name: String,
    pub device_display_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile_tag: Option<String>,
    pub lang: String,
    /// `url` (the gateway), `format`, and whatever else the client keeps there.
    pub data: Map<String, Value>,
    /// The device whose access token registered it.
    pub device_id: String,
    /// When it was (last) registered, in ms: the gateway's `pushkey_ts`.
    pub pushkey_ts: u64,
    /// The stream position of the last notification delivered (or given up on).
    #[serde(default)]
    pub delivered: u64,
}

json_value!(Pusher);

/// (user id, app id, pushkey) → pusher.
pub const PUSHERS: Table<(String, String, String), Pusher> = Table::new(tables::PUSHERS);

/// Bounds on what a client registers (the spec's, where it gives one).
pub const MAX_APP_ID: usize = 64;
pub const MAX_PUSHKEY: usize = 512;
pub const MAX_TEXT: usize = 256;
pub const MAX_DATA_BYTES: usize = 4096;
/// Most pushers one user may have.
pub const MAX_PUSHERS_PER_USER: usize = 50;

/// The path every HTTP pusher's `data.url` must end in (push gateway API).
pub const NOTIFY_PATH: &str = "/_matrix/push/v1/notify";

/// Checks a pusher a client registers: field sizes, and for `http` a `data.url` that is
/// an `http`/`https` URL of the notify endpoint (plain `http` is allowed, as on Synapse,
/// for a gateway on the cluster's own network).
pub fn validate(p: &Pusher) -> Result<()> {
    let too_long = |what: &str, max: usize| Error::invalid_param(format!("{what} is longer than {max} bytes"));
    if p.app_id.is_empty() || p.app_id.len() > MAX_APP_ID {
        return Err(Error::invalid_param(format!("app_id must be 1 to {MAX_APP_ID} bytes")));
    }
    if p.pushkey.is_empty() || p.pushkey.len() > MAX_PUSHKEY {
        return Err(Error::invalid_param(format!("pushkey must be 1 to {MAX_PUSHKEY} bytes")));
    }
    for (what, text) in
        [("app_display_name", &p.app_display_name), ("device_display_name", &p.device_display_name), ("lang", &p.lang)]
    {
        if text.len() > MAX_TEXT {
            return Err(too_long(what, MAX_TEXT));
        }
    }
    if p.profile_tag.as_ref().is_some_and(|t| t.len() > MAX_TEXT) {
        return Err(too_long("profile_tag", MAX_TEXT));
    }
    if serde_json::to_vec(&p.data).map_or(usize::MAX, |d| d.len()) > MAX_DATA_BYTES {
        return Err(too_long("data", MAX_DATA_BYTES));
    }
    match p.kind.as_str() {
        "http" => {
            let url = p.data.get("url").and_then(Value::as_str);
            let url = url.ok_or_else(|| Error::missing_param("An http pusher needs data.url"))?;
            let parsed = url::Url::parse(url).map_err(|_| Error::invalid_param("data.url is not a URL"))?;
            if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
                return Err(Error::invalid_param("data.url must be an http or https URL"));
            }
            if parsed.path() != NOTIFY_PATH {
                return Err(Error::invalid_param(format!("data.url must be the gateway's {NOTIFY_PATH}")));
            }
            Ok(())
        }
        "email" => Err(Error::invalid_param("Hearth sends no e-mail: email pushers are not supported")),
        other => Err(Error::invalid_param(format!("Unknown pusher kind {other}"))),
    }
}

impl Users {
    /// Registers (or replaces) a pusher for `user`; see the module doc for `append`.
    pub fn set_pusher(&self, user: &UserId, pusher: Pusher, append: bool) -> Result<()> {
        validate(&pusher)?;
        let _guard = self.write_lock.lock();
        let mut batch = Batch::new();
        let mine = PUSHERS.collect_prefix(self.store(), user.as_str())?;
        let key = (user.as_str(), pusher.app_id.as_str(), pusher.pushkey.as_str());
        let exists = mine.iter().any(|((app, key), _)| *app == pusher.app_id && *key == pusher.pushkey);
        if !exists && mine.len() >= MAX_PUSHERS_PER_USER {
            return Err(Error::matrix(
                http::StatusCode::BAD_REQUEST,
                "M_RESOURCE_LIMIT_EXCEEDED",
                format!("At most {MAX_PUSHERS_PER_USER} pushers per user"),
            ));
        }
        if !append {
            PUSHERS.scan_all(self.store(), |(other, app, key), _| {
                if other != user.as_str() && app == pusher.app_id && key == pusher.pushkey {
                    PUSHERS.delete(&mut batch, (other.as_str(), app.as_str(), key.as_str()));
                }
                true
            })?;
        }
        PUSHERS.put(&mut batch, key, &pusher);
        Ok(self.store().write(batch)?)
    }

    /// Removes a pusher; `false` if there was none.
    pub fn delete_pusher(&self, user: &UserId, app_id: &str, pushkey: &str) -> Result<bool> {
        let _guard = self.write_lock.lock();
        let key = (user.as_str(), app_id, pushkey);
        if PUSHERS.get(self.store(), key)?.is_none() {
            return Ok(false);
        }
        let mut batch = Batch::new();
        PUSHERS.delete(&mut batch, key);
        self.store().write(batch)?;
        Ok(true)
    }

    pub fn pusher(&self, user: &UserId, app_id: &str, pushkey: &str) -> Result<Option<Pusher>> {
        Ok(PUSHERS.get(self.store(), (user.as_str(), app_id, pushkey))?)
    }

    pub fn pushers(&self, user: &UserId) -> Result<Vec<Pusher>> {
        Ok(PUSHERS.collect_prefix(self.store(), user.as_str())?.into_iter().map(|(_, p)| p).collect())
    }

    /// Every pusher of every user (for the push sender at start).
    pub fn all_pushers(&self) -> Result<Vec<(OwnedUserId, Pusher)>> {
        let mut out = Vec::new();
        PUSHERS.scan_all(self.store(), |(user, _, _), pusher| {
            if let Ok(user) = OwnedUserId::try_from(user) {
                out.push((user, pusher));
            }
            true
        })?;
        Ok(out)
    }

    /// Records how far a pusher's notifications went (if it still exists).
    pub fn set_pusher_delivered(&self, user: &UserId, app_id: &str, pushkey: &str, upto: u64) -> Result<()> {
        let _guard = self.write_lock.lock();
        let key = (user.as_str(), app_id, pushkey);
        let Some(mut pusher) = PUSHERS.get(self.store(), key)? else { return Ok(()) };
        if pusher.delivered >= upto {
            return Ok(());
        }
        pusher.delivered = upto;
        let mut batch = Batch::new();
        PUSHERS.put(&mut batch, key, &pusher);
        Ok(self.store().write(batch)?)
    }

    /// Adds the deletion of a device's pushers to `batch` (with the device itself).
    pub(super) fn delete_pushers_of_device(&self, batch: &mut Batch, user: &UserId, device_id: &str) -> Result<()> {
        for ((app, key), pusher) in PUSHERS.collect_prefix(self.store(), user.as_str())? {
            if pusher.device_id == device_id {
                PUSHERS.delete(batch, (user.as_str(), app.as_str(), key.as_str()));
            }
        }
        Ok(())
    }
}
