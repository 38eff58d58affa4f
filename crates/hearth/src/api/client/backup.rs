//! Client-server API: server-side key backup (`/room_keys/version…`, `/room_keys/keys…`).

use std::{collections::BTreeMap, sync::Arc};

use ruma::{
    api::client::backup::{
        add_backup_keys, add_backup_keys_for_room, add_backup_keys_for_session, create_backup_version,
        delete_backup_keys, delete_backup_keys_for_room, delete_backup_keys_for_session, delete_backup_version,
        get_backup_info, get_backup_keys, get_backup_keys_for_room, get_backup_keys_for_session,
        get_latest_backup_info, update_backup_version,
    },
    OwnedRoomId, UInt,
};
use serde_json::Value;

use crate::{
    api::Ruma,
    error::{Error, Result},
    Services,
};

fn value<T: serde::Serialize>(v: &T) -> Result<Value> {
    serde_json::to_value(v).map_err(|e| Error::bad_json(e.to_string()))
}

fn ruma_of<T: serde::de::DeserializeOwned>(v: Value) -> Result<T> {
    serde_json::from_value(v).map_err(|e| Error::internal(format!("cannot build response: {e}")))
}

fn count(n: u64) -> UInt {
    UInt::new(n).unwrap_or_default()
}

/// `POST /_matrix/client/v3/room_keys/version`
pub async fn create_backup_version(
    s: Arc<Services>,
    req: Ruma<create_backup_version::v3::Request>,
) -> Result<create_backup_version::v3::Response> {
    let caller = req.caller()?;
    let algorithm: Value =
        serde_json::from_str(req.body.algorithm.json().get()).map_err(|e| Error::bad_json(e.to_string()))?;
    let v = s.backup.create(&caller.user_id, algorithm)?;
    Ok(create_backup_version::v3::Response::new(v.to_string()))
}

fn info_parts(s: &Services, user: &ruma::UserId, version: &str) -> Result<(Value, String, UInt)> {
    let mut record = s.backup.get(user, version)?;
    let (etag, n) = s.backup.etag_count(user, version)?;
    if let Some(o) = record.as_object_mut() {
        o.remove("etag");
    }
    Ok((record, etag, count(n)))
}

/// `GET /_matrix/client/v3/room_keys/version`
pub async fn get_latest_backup_info(
    s: Arc<Services>,
    req: Ruma<get_latest_backup_info::v3::Request>,
) -> Result<get_latest_backup_info::v3::Response> {
    let caller = req.caller()?;
    let (v, _) = s.backup.latest(&caller.user_id)?.ok_or_else(|| Error::not_found("No backup"))?;
    let (algorithm, etag, n) = info_parts(&s, &caller.user_id, &v.to_string())?;
    Ok(get_latest_backup_info::v3::Response::new(ruma_of(algorithm)?, n, etag, v.to_string()))
}

/// `GET /_matrix/client/v3/room_keys/version/{version}`
pub async fn get_backup_info(
    s: Arc<Services>,
    req: Ruma<get_backup_info::v3::Request>,
) -> Result<get_backup_info::v3::Response> {
    let caller = req.caller()?;
    let (algorithm, etag, n) = info_parts(&s, &caller.user_id, &req.body.version)?;
    Ok(get_backup_info::v3::Response::new(ruma_of(algorithm)?, n, etag, req.body.version.clone()))
}

/// `PUT /_matrix/client/v3/room_keys/version/{version}`
pub async fn update_backup_version(
    s: Arc<Services>,
    req: Ruma<update_backup_version::v3::Request>,
) -> Result<update_backup_version::v3::Response> {
    let caller = req.caller()?;
    let algorithm: Value =
        serde_json::from_str(req.body.algorithm.json().get()).map_err(|e| Error::bad_json(e.to_string()))?;
    s.backup.update(&caller.user_id, &req.body.version, algorithm)?;
    Ok(update_backup_version::v3::Response::new())
}

/// `DELETE /_matrix/client/v3/room_keys/version/{version}`
pub async fn delete_backup_version(
    s: Arc<Services>,
    req: Ruma<delete_backup_version::v3::Request>,
) -> Result<delete_backup_version::v3::Response> {
    let caller = req.caller()?;
    s.backup.delete(&caller.user_id, &req.body.version)?;
    Ok(delete_backup_version::v3::Response::new())
}

/// `PUT /_matrix/client/v3/room_keys/keys`
pub async fn add_backup_keys(
    s: Arc<Services>,
    req: Ruma<add_backup_keys::v3::Request>,
) -> Result<add_backup_keys::v3::Response> {
    let caller = req.caller()?;
    let rooms: BTreeMap<OwnedRoomId, Value> = ruma_of(value(&req.body.rooms)?)?;
    let rooms = rooms
        .into_iter()
        .map(|(r, v)| (r, v.get("sessions").cloned().and_then(|x| serde_json::from_value(x).ok()).unwrap_or_default()))
        .collect();
    let (etag, n) = s.backup.put_keys(&caller.user_id, &req.body.version, &rooms)?;
    Ok(add_backup_keys::v3::Response::new(etag, count(n)))
}

/// `PUT /_matrix/client/v3/room_keys/keys/{roomId}`
pub async fn add_backup_keys_for_room(
    s: Arc<Services>,
    req: Ruma<add_backup_keys_for_room::v3::Request>,
) -> Result<add_backup_keys_for_room::v3::Response> {
    let caller = req.caller()?;
    let sessions: BTreeMap<String, Value> = ruma_of(value(&req.body.sessions)?)?;
    let rooms = BTreeMap::from([(req.body.room_id.clone(), sessions)]);
    let (etag, n) = s.backup.put_keys(&caller.user_id, &req.body.version, &rooms)?;
    Ok(add_backup_keys_for_room::v3::Response::new(etag, count(n)))
}

/// `PUT /_matrix/client/v3/room_keys/keys/{roomId}/{sessionId}`
pub async fn add_backup_keys_for_session(
    s: Arc<Services>,
    req: Ruma<add_backup_keys_for_session::v3::Request>,
) -> Result<add_backup_keys_for_session::v3::Response> {
    let caller = req.caller()?;
    let data: Value =
        serde_json::from_str(req.body.session_data.json().get()).map_err(|e| Error::bad_json(e.to_string()))?;
    let rooms = BTreeMap::from([(req.body.room_id.clone(), BTreeMap::from([(req.body.session_id.clone(), data)]))]);
    let (etag, n) = s.backup.put_keys(&caller.user_id, &req.body.version, &rooms)?;
    Ok(add_backup_keys_for_session::v3::Response::new(etag, count(n)))
}

/// `GET /_matrix/client/v3/room_keys/keys`
pub async fn get_backup_keys(
    s: Arc<Services>,
    req: Ruma<get_backup_keys::v3::Request>,
) -> Result<get_backup_keys::v3::Response> {
    let caller = req.caller()?;
    let keys = s.backup.get_keys(&caller.user_id, &req.body.version, None, None)?;
    let rooms: serde_json::Map<String, Value> =
        keys.into_iter().map(|(r, sessions)| (r.to_string(), serde_json::json!({"sessions": sessions}))).collect();
    Ok(get_backup_keys::v3::Response::new(ruma_of(Value::Object(rooms))?))
}

/// `GET /_matrix/client/v3/room_keys/keys/{roomId}`
pub async fn get_backup_keys_for_room(
    s: Arc<Services>,
    req: Ruma<get_backup_keys_for_room::v3::Request>,
) -> Result<get_backup_keys_for_room::v3::Response> {
    let caller = req.caller()?;
    let keys = s.backup.get_keys(&caller.user_id, &req.body.version, Some(req.body.room_id.as_str()), None)?;
    let sessions = keys.into_values().next().unwrap_or_default();
    Ok(get_backup_keys_for_room::v3::Response::new(ruma_of(value(&sessions)?)?))
}

/// `GET /_matrix/client/v3/room_keys/keys/{roomId}/{sessionId}`
pub async fn get_backup_keys_for_session(
    s: Arc<Services>,
    req: Ruma<get_backup_keys_for_session::v3::Request>,
) -> Result<get_backup_keys_for_session::v3::Response> {
    let caller = req.caller()?;
    let keys = s.backup.get_keys(
        &caller.user_id,
        &req.body.version,
        Some(req.body.room_id.as_str()),
        Some(&req.body.session_id),
    )?;
    let data = keys
        .into_values()
        .next()
        .and_then(|m| m.into_values().next())
        .ok_or_else(|| Error::not_found("No such session"))?;
    Ok(get_backup_keys_for_session::v3::Response::new(ruma_of(data)?))
}

/// `DELETE /_matrix/client/v3/room_keys/keys`
pub async fn delete_backup_keys(
    s: Arc<Services>,
    req: Ruma<delete_backup_keys::v3::Request>,
) -> Result<delete_backup_keys::v3::Response> {
    let caller = req.caller()?;
    let (etag, n) = s.backup.delete_keys(&caller.user_id, &req.body.version, None, None)?;
    Ok(delete_backup_keys::v3::Response::new(etag, count(n)))
}

/// `DELETE /_matrix/client/v3/room_keys/keys/{roomId}`
pub async fn delete_backup_keys_for_room(
    s: Arc<Services>,
    req: Ruma<delete_backup_keys_for_room::v3::Request>,
) -> Result<delete_backup_keys_for_room::v3::Response> {
    let caller = req.caller()?;
    let (etag, n) = s.backup.delete_keys(&caller.user_id, &req.body.version, Some(req.body.room_id.as_str()), None)?;
    Ok(delete_backup_keys_for_room::v3::Response::new(etag, count(n)))
}

/// `DELETE /_matrix/client/v3/room_keys/keys/{roomId}/{sessionId}`
pub async fn delete_backup_keys_for_session(
    s: Arc<Services>,
    req: Ruma<delete_backup_keys_for_session::v3::Request>,
) -> Result<delete_backup_keys_for_session::v3::Response> {
    let caller = req.caller()?;
    let (etag, n) = s.backup.delete_keys(
        &caller.user_id,
        &req.body.version,
        Some(req.body.room_id.as_str()),
        Some(&req.body.session_id),
    )?;
    Ok(delete_backup_keys_for_session::v3::Response::new(etag, count(n)))
}
