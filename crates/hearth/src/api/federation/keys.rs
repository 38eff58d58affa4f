//! Server-server API: end-to-end encryption (`user/keys/query`, `user/keys/claim`,
//! `user/devices/{userId}`) for local users.

use std::{collections::BTreeMap, sync::Arc};

use ruma::api::federation::{
    device::get_devices,
    keys::{claim_keys, get_keys},
};
use serde_json::Value;

use crate::{
    api::Ruma,
    error::{Error, Result},
    Services,
};

fn typed<T: serde::de::DeserializeOwned>(v: Option<&Value>) -> Result<T> {
    serde_json::from_value(v.cloned().unwrap_or(Value::Object(Default::default())))
        .map_err(|e| Error::internal(format!("cannot build response: {e}")))
}

/// `POST /_matrix/federation/v1/user/keys/query`
pub async fn get_keys(s: Arc<Services>, req: Ruma<get_keys::v1::Request>) -> Result<get_keys::v1::Response> {
    req.origin()?;
    let wanted: BTreeMap<_, Vec<String>> = req
        .body
        .device_keys
        .iter()
        .map(|(u, devices)| (u.clone(), devices.iter().map(|d| d.to_string()).collect()))
        .collect();
    let answer = s.federation.query_local_keys(&wanted)?;
    let mut res = get_keys::v1::Response::new(typed(answer.get("device_keys"))?);
    res.master_keys = typed(answer.get("master_keys"))?;
    res.self_signing_keys = typed(answer.get("self_signing_keys"))?;
    Ok(res)
}

/// `POST /_matrix/federation/v1/user/keys/claim`
pub async fn claim_keys(s: Arc<Services>, req: Ruma<claim_keys::v1::Request>) -> Result<claim_keys::v1::Response> {
    req.origin()?;
    let wanted: BTreeMap<_, BTreeMap<String, String>> = req
        .body
        .one_time_keys
        .iter()
        .map(|(u, devices)| (u.clone(), devices.iter().map(|(d, a)| (d.to_string(), a.to_string())).collect()))
        .collect();
    let answer = s.federation.claim_local_keys(&wanted)?;
    Ok(claim_keys::v1::Response::new(typed(answer.get("one_time_keys"))?))
}

/// `GET /_matrix/federation/v1/user/devices/{userId}`
pub async fn get_devices(s: Arc<Services>, req: Ruma<get_devices::v1::Request>) -> Result<get_devices::v1::Response> {
    req.origin()?;
    let answer = s.federation.user_devices(&req.body.user_id)?;
    let mut res = get_devices::v1::Response::new(req.body.user_id.clone(), typed(answer.get("stream_id"))?);
    res.devices = typed(answer.get("devices"))?;
    res.master_key = typed(answer.get("master_key").filter(|v| !v.is_null()).or(Some(&Value::Null)))?;
    res.self_signing_key = typed(answer.get("self_signing_key").filter(|v| !v.is_null()).or(Some(&Value::Null)))?;
    Ok(res)
}
