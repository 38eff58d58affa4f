//! Client-server API: device management (`/devices`, `/delete_devices`).

use std::sync::Arc;

use ruma::{
    api::client::{
        device::{delete_device, delete_devices, get_device, get_devices, update_device},
        uiaa::AuthType,
    },
    DeviceId,
};
use serde_json::{json, Value};

use crate::{
    api::Ruma,
    error::{Error, Result},
    users::{
        devices::Device,
        uiaa::{Operation, Purpose},
    },
    Services,
};

/// A device as the spec shapes it, every key present: what is unknown is `null`, as
/// Synapse sends it. (ruma leaves such keys out, and matrix-nio — so matrix-commander —
/// refuses a device list whose entries lack `display_name`, `last_seen_ip` or
/// `last_seen_ts`.)
fn device_json(id: &DeviceId, d: &Device) -> Value {
    json!({
        "device_id": id,
        "display_name": d.display_name,
        "last_seen_ip": d.last_seen_ip,
        "last_seen_ts": d.last_seen_ts,
    })
}

/// `GET /_matrix/client/v3/devices`
pub async fn get_devices(
    axum::extract::State(s): axum::extract::State<Arc<Services>>,
    req: Ruma<get_devices::v3::Request>,
) -> Result<axum::Json<Value>> {
    let caller = req.caller()?;
    let devices: Vec<Value> = s.users.devices(&caller.user_id)?.iter().map(|(id, d)| device_json(id, d)).collect();
    Ok(axum::Json(json!({"devices": devices})))
}

/// `GET /_matrix/client/v3/devices/{deviceId}`
pub async fn get_device(
    axum::extract::State(s): axum::extract::State<Arc<Services>>,
    req: Ruma<get_device::v3::Request>,
) -> Result<axum::Json<Value>> {
    let caller = req.caller()?;
    let device =
        s.users.device(&caller.user_id, &req.body.device_id)?.ok_or_else(|| Error::not_found("No such device"))?;
    Ok(axum::Json(device_json(&req.body.device_id, &device)))
}

/// `PUT /_matrix/client/v3/devices/{deviceId}`
pub async fn update_device(
    s: Arc<Services>,
    req: Ruma<update_device::v3::Request>,
) -> Result<update_device::v3::Response> {
    let caller = req.caller()?;
    s.users.set_device_display_name(&caller.user_id, &req.body.device_id, req.body.display_name.clone())?;
    s.keys.note_local_device_change(&s.rooms, &caller.user_id, req.body.device_id.as_str())?;
    Ok(update_device::v3::Response::new())
}

/// `DELETE /_matrix/client/v3/devices/{deviceId}`
///
/// Behind a password UIA stage; revokes the device's token.
pub async fn delete_device(
    s: Arc<Services>,
    req: Ruma<delete_device::v3::Request>,
) -> Result<delete_device::v3::Response> {
    let caller = req.caller()?;
    if s.users.device(&caller.user_id, &req.body.device_id)?.is_none() {
        return Err(Error::not_found("No such device"));
    }
    let flows = vec![vec![AuthType::Password]];
    let op = Operation {
        purpose: Purpose::DeleteDevices,
        subject: req.body.device_id.to_string(),
        user: Some(&caller.user_id),
        params: Default::default(),
    };
    s.uiaa.check_bound(op, &flows, req.body.auth.as_ref()).await?;
    s.users.delete_devices(&caller.user_id, std::slice::from_ref(&req.body.device_id))?;
    s.keys.forget_devices(&s.rooms, &caller.user_id, &[req.body.device_id.to_string()])?;
    Ok(delete_device::v3::Response::new())
}

/// Most devices one `delete_devices` call may name.
pub const MAX_DELETE_DEVICES: usize = 1000;

/// `POST /_matrix/client/v3/delete_devices`
///
/// Behind a password UIA stage; unknown device ids are ignored.
pub async fn delete_devices(
    s: Arc<Services>,
    req: Ruma<delete_devices::v3::Request>,
) -> Result<delete_devices::v3::Response> {
    let caller = req.caller()?;
    if req.body.devices.len() > MAX_DELETE_DEVICES {
        return Err(Error::too_large(format!("At most {MAX_DELETE_DEVICES} devices per request")));
    }
    let flows = vec![vec![AuthType::Password]];
    let mut subject: Vec<&str> = req.body.devices.iter().map(|d| d.as_str()).collect();
    subject.sort_unstable();
    let op = Operation {
        purpose: Purpose::DeleteDevices,
        subject: subject.join("\n"),
        user: Some(&caller.user_id),
        params: Default::default(),
    };
    s.uiaa.check_bound(op, &flows, req.body.auth.as_ref()).await?;
    let known: Vec<String> = s
        .users
        .devices(&caller.user_id)?
        .into_iter()
        .map(|(d, _)| d.to_string())
        .filter(|d| req.body.devices.iter().any(|x| x.as_str() == d))
        .collect();
    s.users.delete_devices(&caller.user_id, &req.body.devices)?;
    s.keys.forget_devices(&s.rooms, &caller.user_id, &known)?;
    Ok(delete_devices::v3::Response::new())
}
