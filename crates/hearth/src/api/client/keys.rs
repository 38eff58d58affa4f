//! Client-server API: end-to-end encryption keys (`/keys/…`) and to-device messages.

use std::{collections::BTreeMap, sync::Arc};

use ruma::{
    api::client::{
        keys::{claim_keys, get_key_changes, get_keys, upload_keys, upload_signatures, upload_signing_keys},
        to_device::send_event_to_device,
        uiaa::AuthType,
    },
    OwnedUserId, UInt, UserId,
};
use serde_json::{json, Map, Value};

use crate::{
    api::Ruma,
    error::{Error, Result},
    rooms::timeline::parse_token,
    users::uiaa::Purpose,
    Services,
};

fn json_of<T: serde::Serialize>(v: &T) -> Result<Value> {
    serde_json::to_value(v).map_err(|e| Error::bad_json(e.to_string()))
}

fn ruma_of<T: serde::de::DeserializeOwned>(v: Value) -> Result<T> {
    serde_json::from_value(v).map_err(|e| Error::internal(format!("cannot build response: {e}")))
}

fn counts(s: &Services, user: &UserId, device: &str) -> Result<BTreeMap<ruma::OneTimeKeyAlgorithm, UInt>> {
    Ok(s.keys
        .one_time_key_counts(user, device)?
        .into_iter()
        .map(|(a, n)| (ruma::OneTimeKeyAlgorithm::from(a.as_str()), UInt::new(n).unwrap_or_default()))
        .collect())
}

/// `POST /_matrix/client/v3/keys/upload`
pub async fn upload_keys(s: Arc<Services>, req: Ruma<upload_keys::v3::Request>) -> Result<upload_keys::v3::Response> {
    let caller = req.caller()?;
    let (user, device) = (&caller.user_id, caller.device_id.as_str());
    let b = &req.body;
    if let Some(keys) = &b.device_keys {
        let keys: Value = serde_json::from_str(keys.json().get()).map_err(|e| Error::bad_json(e.to_string()))?;
        // The fields the spec requires, of their types (Synapse refuses them missing too).
        let shaped = keys["algorithms"].is_array()
            && keys["keys"].is_object()
            && keys["signatures"].is_object()
            && keys["user_id"].is_string()
            && keys["device_id"].is_string();
        if !shaped {
            return Err(Error::bad_json("device_keys needs user_id, device_id, algorithms, keys and signatures"));
        }
        if let Some(pos) = s.keys.upload_device_keys(user, device, keys)? {
            s.keys.announce(&s.rooms, user, pos)?;
        }
    }
    let otks: BTreeMap<String, Value> =
        ruma_of(json_of(&b.one_time_keys)?).map_err(|_| Error::bad_json("Invalid one_time_keys"))?;
    s.keys.upload_one_time_keys(user, device, &otks)?;
    let fallbacks: BTreeMap<String, Value> =
        ruma_of(json_of(&b.fallback_keys)?).map_err(|_| Error::bad_json("Invalid fallback_keys"))?;
    s.keys.upload_fallback_keys(user, device, &fallbacks)?;
    Ok(upload_keys::v3::Response::new(counts(&s, user, device)?))
}

/// `POST /_matrix/client/v3/keys/query`
///
/// Written out by hand rather than through ruma's response, which leaves out empty maps:
/// `failures` is always there, as Synapse sends it (sytest reads it without a default).
pub async fn get_keys(
    axum::extract::State(s): axum::extract::State<Arc<Services>>,
    req: Ruma<get_keys::v3::Request>,
) -> Result<axum::Json<Value>> {
    let caller = req.caller()?;
    let mut device_keys = Map::new();
    let (mut masters, mut self_signing, mut user_signing) = (Map::new(), Map::new(), Map::new());
    let mut failures = Map::new();
    if req.body.device_keys.len() > 1000 {
        return Err(Error::too_large("Too many users in one query"));
    }
    let mut remote: crate::federation::keys::ByServer<Vec<String>> = BTreeMap::new();
    for (user, wanted) in &req.body.device_keys {
        if user.server_name() != s.config.server_name {
            if s.config.allow_federation {
                let devices = wanted.iter().map(|d| d.to_string()).collect();
                remote.entry(user.server_name().to_owned()).or_default().insert(user.clone(), devices);
            } else {
                failures.insert(user.server_name().to_string(), json!({}));
            }
            continue;
        }
        let mut devices = Map::new();
        for (device, mut keys) in s.keys.device_keys(user)? {
            if !wanted.is_empty() && !wanted.iter().any(|d| d.as_str() == device) {
                continue;
            }
            keys["unsigned"] = match s.users.device(user, device.as_str().into())?.and_then(|d| d.display_name) {
                Some(name) => json!({"device_display_name": name}),
                None => json!({}),
            };
            devices.insert(device, keys);
        }
        device_keys.insert(user.to_string(), Value::Object(devices));
        if let Some(mut k) = s.keys.cross_signing_key(user, "master")? {
            // Signatures by third parties' user-signing keys are for their makers only.
            if let Some(sigs) = k.get_mut("signatures").and_then(Value::as_object_mut) {
                sigs.retain(|signer, _| signer == user.as_str() || signer == caller.user_id.as_str());
            }
            masters.insert(user.to_string(), k);
        }
        if let Some(k) = s.keys.cross_signing_key(user, "self_signing")? {
            self_signing.insert(user.to_string(), k);
        }
        // The user-signing key is only for its owner.
        if *user == caller.user_id {
            if let Some(k) = s.keys.cross_signing_key(user, "user_signing")? {
                user_signing.insert(user.to_string(), k);
            }
        }
    }
    if !remote.is_empty() {
        // What this server keeps of other servers' users first; the rest asked for.
        let kept = s.federation.query_kept_keys(&mut remote).await;
        let (found, failed) = s.federation.query_remote_keys(&remote).await;
        for (field, out) in
            [("device_keys", &mut device_keys), ("master_keys", &mut masters), ("self_signing_keys", &mut self_signing)]
        {
            for answer in [&kept, &found] {
                for (user, keys) in answer.get(field).and_then(Value::as_object).into_iter().flatten() {
                    out.insert(user.clone(), keys.clone());
                }
            }
        }
        for server in failed {
            failures.insert(server.to_string(), json!({}));
        }
    }
    Ok(axum::Json(json!({
        "device_keys": device_keys,
        "master_keys": masters,
        "self_signing_keys": self_signing,
        "user_signing_keys": user_signing,
        "failures": failures,
    })))
}

/// `POST /_matrix/client/v3/keys/claim`
pub async fn claim_keys(s: Arc<Services>, req: Ruma<claim_keys::v3::Request>) -> Result<claim_keys::v3::Response> {
    req.caller()?;
    let mut claimed = Map::new();
    let mut failures = BTreeMap::new();
    let mut remote: crate::federation::keys::ByServer<BTreeMap<String, String>> = BTreeMap::new();
    for (user, devices) in &req.body.one_time_keys {
        if user.server_name() != s.config.server_name {
            if s.config.allow_federation {
                let wanted = devices.iter().map(|(d, a)| (d.to_string(), a.to_string())).collect();
                remote.entry(user.server_name().to_owned()).or_default().insert(user.clone(), wanted);
            } else {
                failures.insert(user.server_name().to_string(), json!({}));
            }
            continue;
        }
        let mut per_device = Map::new();
        for (device, algorithm) in devices {
            if let Some((id, key)) = s.keys.claim(user, device.as_str(), algorithm.as_str())? {
                per_device.insert(device.to_string(), json!({ id: key }));
            }
        }
        if !per_device.is_empty() {
            claimed.insert(user.to_string(), Value::Object(per_device));
        }
    }
    if !remote.is_empty() {
        let (found, failed) = s.federation.claim_remote_keys(&remote).await;
        claimed.extend(found);
        for server in failed {
            failures.insert(server.to_string(), json!({}));
        }
    }
    let mut res = claim_keys::v3::Response::new(ruma_of(Value::Object(claimed))?);
    res.failures = failures;
    Ok(res)
}

/// `GET /_matrix/client/v3/keys/changes`
pub async fn get_key_changes(
    s: Arc<Services>,
    req: Ruma<get_key_changes::v3::Request>,
) -> Result<get_key_changes::v3::Response> {
    let caller = req.caller()?;
    let (from, to) = (parse_token(&req.body.from)?, parse_token(&req.body.to)?);
    let delta = s.keys.changes_between(&s.rooms, &caller.user_id, from, to)?;
    Ok(get_key_changes::v3::Response::new(delta.changed, delta.left))
}

/// `POST /_matrix/client/v3/keys/device_signing/upload`
///
/// Behind a password UIA stage, except for a user's very first cross-signing keys (as
/// Synapse does; Element bootstraps that way right after registering).
pub async fn upload_signing_keys(
    s: Arc<Services>,
    req: Ruma<upload_signing_keys::v3::Request>,
) -> Result<upload_signing_keys::v3::Response> {
    let caller = req.caller()?.clone();
    let b = req.body;
    if s.keys.cross_signing_key(&caller.user_id, "master")?.is_some() {
        let flows = vec![vec![AuthType::Password]];
        s.uiaa.check(Purpose::SigningKeys, Some(&caller.user_id), &flows, b.auth.as_ref()).await?;
    }
    let mut keys = Vec::new();
    for (kind, raw) in
        [("master", &b.master_key), ("self_signing", &b.self_signing_key), ("user_signing", &b.user_signing_key)]
    {
        if let Some(raw) = raw {
            let v: Value = serde_json::from_str(raw.json().get()).map_err(|e| Error::bad_json(e.to_string()))?;
            keys.push((kind, v));
        }
    }
    if keys.is_empty() {
        return Ok(upload_signing_keys::v3::Response::new());
    }
    // The other keys are signed by the master key: without one (uploaded now or before)
    // they cannot be checked, and Synapse refuses them.
    let has_master =
        keys.iter().any(|(k, _)| *k == "master") || s.keys.cross_signing_key(&caller.user_id, "master")?.is_some();
    if !has_master {
        return Err(Error::invalid_param("Upload a master key first: the other cross-signing keys are signed by it"));
    }
    let pos = s.keys.upload_cross_signing(&caller.user_id, &keys)?;
    s.keys.announce(&s.rooms, &caller.user_id, pos)?;
    Ok(upload_signing_keys::v3::Response::new())
}

/// `POST /_matrix/client/v3/keys/signatures/upload`
pub async fn upload_signatures(
    s: Arc<Services>,
    req: Ruma<upload_signatures::v3::Request>,
) -> Result<upload_signatures::v3::Response> {
    let caller = req.caller()?;
    let signed: BTreeMap<OwnedUserId, BTreeMap<String, Value>> =
        ruma_of(json_of(&req.body.signed_keys)?).map_err(|_| Error::bad_json("Invalid signed_keys"))?;
    let mut failures: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    for (user, keys) in &signed {
        for (key_id, object) in keys {
            match s.keys.add_signatures(&caller.user_id, user, key_id, object) {
                Ok(Some(pos)) => s.keys.announce(&s.rooms, user, pos)?,
                Ok(None) => {}
                Err(e) => {
                    failures
                        .entry(user.to_string())
                        .or_default()
                        .insert(key_id.clone(), json!({"errcode": e.errcode(), "error": e.to_string()}));
                }
            }
        }
    }
    let mut res = upload_signatures::v3::Response::new();
    res.failures = ruma_of(json_of(&failures)?)?;
    Ok(res)
}

/// `PUT /_matrix/client/v3/sendToDevice/{eventType}/{txnId}`
pub async fn send_event_to_device(
    s: Arc<Services>,
    req: Ruma<send_event_to_device::v3::Request>,
) -> Result<send_event_to_device::v3::Response> {
    let caller = req.caller()?;
    let messages: BTreeMap<OwnedUserId, BTreeMap<String, Value>> =
        ruma_of(json_of(&req.body.messages)?).map_err(|_| Error::bad_json("Invalid messages"))?;
    if s.config.allow_federation {
        let kind = req.body.event_type.to_string();
        // The transaction id is unique per device: with the device, it is one per message.
        let message_id = format!("{}-{}", caller.device_id, req.body.txn_id);
        s.federation.send_to_device(&caller.user_id, &kind, &message_id, &messages)?;
    }
    let local: BTreeMap<OwnedUserId, BTreeMap<String, Value>> =
        messages.into_iter().filter(|(u, _)| u.server_name() == s.config.server_name).collect();
    let devices_of = |u: &UserId| -> Result<Vec<String>> {
        Ok(s.users.devices(u)?.into_iter().map(|(d, _)| d.to_string()).collect())
    };
    let sent = s.to_device.send(
        &caller.user_id,
        caller.device_id.as_str(),
        req.body.txn_id.as_str(),
        &req.body.event_type.to_string(),
        &local,
        devices_of,
    )?;
    if let Some((pos, users)) = sent {
        s.notifier.notify(users.iter().map(|u| &**u), pos);
    }
    Ok(send_event_to_device::v3::Response::new())
}
