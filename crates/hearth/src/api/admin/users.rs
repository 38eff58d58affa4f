//! Synapse's user admin API, in its paths and shapes, for server admins:
//!
//! - `GET /_synapse/admin/v2/users` and `/v3/users`: accounts, paged (`from`, `limit`),
//!   searched (`name` in the localpart or display name, `user_id` in the id), filtered
//!   (`guests`, `deactivated`, `admins`) and sorted (`order_by`, `dir`). They differ in
//!   `deactivated`: v2 leaves deactivated accounts out unless it is `true`; v3 filters by
//!   it only when given;
//! - `GET`/`PUT /_synapse/admin/v2/users/{userId}`: one account; `PUT` creates (201) or
//!   changes (200) it: password (logging out its devices unless `logout_devices` is
//!   false), display name, avatar, admin flag, deactivation and reactivation. Keys Hearth
//!   has nothing for are ignored, as Synapse ignores unknown ones (admin tools send the
//!   whole record back); asking for something Hearth does not have (third-party ids,
//!   user types, locking) is refused with 400;
//! - `POST /_synapse/admin/v1/reset_password/{userId}`, `POST /_synapse/admin/v1/deactivate/{userId}`,
//!   `GET`/`PUT /_synapse/admin/v1/users/{userId}/admin`;
//! - devices: `GET /_synapse/admin/v2/users/{userId}/devices`, `GET`/`PUT`/`DELETE` one,
//!   `POST …/delete_devices`;
//! - `GET /_synapse/admin/v1/users/{userId}/joined_rooms` and `…/pushers`.
//!
//! Remote users are refused with 400, unknown local ones with 404, as on Synapse. The work
//! is in [`crate::admin`] and the services.

use std::{collections::HashMap, sync::Arc};

use axum::{
    body::Bytes,
    extract::{Path, Query, State},
    http::StatusCode,
    routing::{get, post},
    Json, Router,
};
use ruma::{OwnedDeviceId, OwnedUserId, UserId};
use serde_json::{json, Map, Value};

use super::{blocking, bool_field, local_user_id, object, Params, ServerAdmin};
use crate::{
    error::{Error, Result},
    users::Account,
    Services,
};

/// Longest device display name (Synapse's limit).
const MAX_DEVICE_NAME: usize = 100;
/// Longest password accepted (Synapse's limit).
const MAX_PASSWORD: usize = 512;

pub fn routes() -> Router<Arc<Services>> {
    Router::new()
        .route("/_synapse/admin/v2/users", get(list_v2))
        .route("/_synapse/admin/v3/users", get(list_v3))
        .route("/_synapse/admin/v2/users/{user_id}", get(get_user).put(put_user))
        .route("/_synapse/admin/v1/reset_password/{user_id}", post(reset_password))
        .route("/_synapse/admin/v1/deactivate/{user_id}", post(deactivate))
        .route("/_synapse/admin/v1/users/{user_id}/admin", get(get_admin).put(put_admin))
        .route("/_synapse/admin/v2/users/{user_id}/devices", get(list_devices))
        .route(
            "/_synapse/admin/v2/users/{user_id}/devices/{device_id}",
            get(get_device).put(put_device).delete(delete_device),
        )
        .route("/_synapse/admin/v2/users/{user_id}/delete_devices", post(delete_devices))
        .route("/_synapse/admin/v1/users/{user_id}/joined_rooms", get(joined_rooms))
        .route("/_synapse/admin/v1/users/{user_id}/pushers", get(pushers))
}

/// An account as the lists show it (`creation_ts` in milliseconds).
fn listed(s: &Services, user: &UserId, account: &Account) -> Result<Value> {
    let profile = s.users.profile(user)?;
    let last_seen = s.users.devices(user)?.into_iter().filter_map(|(_, d)| d.last_seen_ts).max();
    Ok(json!({
        "name": user,
        "user_type": null,
        "is_guest": account.guest,
        "admin": account.admin,
        "deactivated": account.deactivated,
        "shadow_banned": false,
        "displayname": profile.get("displayname"),
        "avatar_url": profile.get("avatar_url"),
        "creation_ts": account.created_ts,
        "approved": true,
        "erased": s.rooms.is_erased(user),
        "last_seen_ts": last_seen,
        "locked": false,
    }))
}

/// One account in detail (`creation_ts` in seconds, as Synapse answers here).
fn detailed(s: &Services, user: &UserId) -> Result<Value> {
    let account = s.users.account(user)?.ok_or_else(|| Error::not_found("User not found"))?;
    let mut v = listed(s, user, &account)?;
    v["creation_ts"] = json!(account.created_ts / 1000);
    let service = s.appservices.all().iter().find(|a| account.appservice && a.is_user_in_namespace(user));
    v["appservice_id"] = json!(service.map(|a| a.id()));
    v["consent_server_notice_sent"] = Value::Null;
    v["consent_version"] = Value::Null;
    v["consent_ts"] = Value::Null;
    v["suspended"] = json!(false);
    v["threepids"] = json!([]);
    v["external_ids"] = json!([]);
    Ok(v)
}

async fn list_v2(s: State<Arc<Services>>, _: ServerAdmin, q: Query<HashMap<String, String>>) -> Result<Json<Value>> {
    list(s, q, false)
}

async fn list_v3(s: State<Arc<Services>>, _: ServerAdmin, q: Query<HashMap<String, String>>) -> Result<Json<Value>> {
    list(s, q, true)
}

const USER_ORDER: &[&str] = &[
    "name",
    "displayname",
    "is_guest",
    "admin",
    "deactivated",
    "user_type",
    "avatar_url",
    "shadow_banned",
    "creation_ts",
    "last_seen_ts",
    "locked",
];

/// Both versions' list (they differ only in `deactivated`); the caller is a server admin.
fn list(State(s): State<Arc<Services>>, Query(query): Query<HashMap<String, String>>, v3: bool) -> Result<Json<Value>> {
    let q = Params(query);
    let from = q.int("from", 0)?;
    let limit = q.int("limit", 100)?;
    let guests = q.flag("guests")?.unwrap_or(true);
    let deactivated = q.flag("deactivated")?;
    let admins = q.flag("admins")?;
    let order = q.one_of("order_by", USER_ORDER, "name")?.to_owned();
    let backwards = q.one_of("dir", &["f", "b"], "f")? == "b";
    let name = q.text("name").map(str::to_lowercase);
    let id_part = q.text("user_id").map(str::to_lowercase);
    let mut users = Vec::new();
    for (id, account) in s.users.list_accounts()? {
        let Ok(user) = OwnedUserId::try_from(id) else { continue };
        let keep_deactivated = match (v3, deactivated) {
            (false, d) => !account.deactivated || d == Some(true),
            (true, None) => true,
            (true, Some(d)) => account.deactivated == d,
        };
        if !keep_deactivated || (!guests && account.guest) || admins.is_some_and(|a| account.admin != a) {
            continue;
        }
        let entry = listed(&s, &user, &account)?;
        let matches = match (&name, &id_part) {
            (Some(n), _) => {
                user.localpart().to_lowercase().contains(n.as_str())
                    || entry["displayname"].as_str().is_some_and(|d| d.to_lowercase().contains(n.as_str()))
            }
            (None, Some(part)) => user.as_str().to_lowercase().contains(part.as_str()),
            (None, None) => true,
        };
        if matches {
            users.push(entry);
        }
    }
    users.sort_by(|a, b| compare(&a[&order], &b[&order]).then_with(|| compare(&a["name"], &b["name"])));
    if backwards {
        users.reverse();
    }
    let total = users.len();
    let page: Vec<Value> = users.into_iter().skip(from).take(limit).collect();
    let mut body = json!({"users": page, "total": total});
    if from + limit < total {
        body["next_token"] = json!((from + limit).to_string());
    }
    Ok(Json(body))
}

/// Orders JSON values as a database would order the column: nulls first, then by value.
pub(super) fn compare(a: &Value, b: &Value) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    match (a, b) {
        (Value::Null, Value::Null) => Ordering::Equal,
        (Value::Null, _) => Ordering::Less,
        (_, Value::Null) => Ordering::Greater,
        (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
        (Value::Number(x), Value::Number(y)) => {
            x.as_f64().unwrap_or_default().partial_cmp(&y.as_f64().unwrap_or_default()).unwrap_or(Ordering::Equal)
        }
        (Value::String(x), Value::String(y)) => x.cmp(y),
        _ => a.to_string().cmp(&b.to_string()),
    }
}

/// A local user that has an account here.
fn known_local(s: &Services, raw: &str) -> Result<OwnedUserId> {
    let user = local_user_id(s, raw)?;
    if s.users.account(&user)?.is_none() {
        return Err(Error::not_found("User not found"));
    }
    Ok(user)
}

async fn get_user(State(s): State<Arc<Services>>, _: ServerAdmin, Path(user): Path<String>) -> Result<Json<Value>> {
    let user = known_local(&s, &user)?;
    Ok(Json(detailed(&s, &user)?))
}

/// A string field that may be absent, `null` or a string; anything else is refused.
fn text_field<'a>(body: &'a Map<String, Value>, name: &str) -> Result<Option<Option<&'a str>>> {
    match body.get(name) {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(None)),
        Some(Value::String(t)) => Ok(Some(Some(t))),
        Some(_) => Err(Error::bad_json(format!("Param '{name}' must be a string, if given"))),
    }
}

fn password_field(body: &Map<String, Value>, name: &str) -> Result<Option<String>> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(p)) if !p.is_empty() && p.len() <= MAX_PASSWORD => Ok(Some(p.clone())),
        Some(_) => Err(Error::invalid_param(format!("Invalid password: a string of 1 to {MAX_PASSWORD} bytes"))),
    }
}

/// Refuses what Hearth has no notion of, when a request asks for it (the empty or false
/// value that tools send back unchanged is fine).
fn refuse_unsupported(body: &Map<String, Value>) -> Result<()> {
    for list in ["threepids", "external_ids"] {
        if body.get(list).is_some_and(|v| v.as_array().is_none_or(|a| !a.is_empty())) {
            return Err(Error::invalid_param(format!("Hearth keeps no {list} for accounts")));
        }
    }
    if body.get("user_type").is_some_and(|t| !t.is_null()) {
        return Err(Error::invalid_param("Invalid user type: Hearth has no user types"));
    }
    if bool_field(body, "locked")? == Some(true) {
        return Err(Error::invalid_param("Hearth cannot lock accounts; deactivate it instead"));
    }
    Ok(())
}

async fn put_user(
    State(s): State<Arc<Services>>,
    ServerAdmin(admin): ServerAdmin,
    Path(user): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>)> {
    let user = local_user_id(&s, &user)?;
    let body = object(&body)?;
    refuse_unsupported(&body)?;
    let password = password_field(&body, "password")?;
    let logout_devices = bool_field(&body, "logout_devices")?.unwrap_or(true);
    let make_admin = bool_field(&body, "admin")?;
    let deactivated = bool_field(&body, "deactivated")?;
    let displayname = text_field(&body, "displayname")?;
    let avatar_url = text_field(&body, "avatar_url")?;
    let existing = s.users.account(&user)?;
    let services = s.clone();
    let created = existing.is_none();
    let target = user.clone();
    let caller = admin.clone();
    let name = displayname.map(|d| d.filter(|d| !d.is_empty()).map(str::to_owned));
    let avatar = avatar_url.map(|a| a.filter(|a| !a.is_empty()).map(str::to_owned));
    blocking(move || -> Result<()> {
        let s = services;
        match existing {
            None => {
                let id =
                    s.admin.create_user(target.localpart(), password.as_deref(), Some(make_admin.unwrap_or(false)))?;
                if deactivated == Some(true) {
                    s.admin.deactivate(&id, false)?;
                }
            }
            Some(account) => {
                if make_admin == Some(false) && target == caller {
                    return Err(Error::invalid_param("You may not demote yourself."));
                }
                if deactivated == Some(false) && account.deactivated {
                    let p = password
                        .as_deref()
                        .ok_or_else(|| Error::invalid_param("Must provide a password to re-activate an account."))?;
                    s.users.reactivate(&target, p)?;
                } else if let Some(p) = &password {
                    s.admin.reset_password(&target, p, logout_devices)?;
                }
                if let Some(a) = make_admin.filter(|a| *a != account.admin) {
                    s.users.set_admin(&target, a)?;
                }
                if deactivated == Some(true) && !account.deactivated {
                    s.admin.deactivate(&target, false)?;
                }
            }
        }
        if !s.users.account(&target)?.is_some_and(|a| a.deactivated) {
            if let Some(n) = name {
                s.admin.set_profile(&target, "displayname", n)?;
            }
            if let Some(a) = avatar {
                s.admin.set_profile(&target, "avatar_url", a)?;
            }
        }
        Ok(())
    })
    .await?;
    tracing::info!(%admin, %user, created, "admin created or changed a user");
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(detailed(&s, &user)?)))
}

async fn reset_password(
    State(s): State<Arc<Services>>,
    ServerAdmin(admin): ServerAdmin,
    Path(user): Path<String>,
    body: Bytes,
) -> Result<Json<Value>> {
    let user = known_local(&s, &user)?;
    let body = object(&body)?;
    let password =
        password_field(&body, "new_password")?.ok_or_else(|| Error::missing_param("Missing new_password"))?;
    let logout_devices = bool_field(&body, "logout_devices")?.unwrap_or(true);
    let target = user.clone();
    let services = s.clone();
    blocking(move || services.admin.reset_password(&target, &password, logout_devices)).await?;
    tracing::info!(%admin, %user, logout_devices, "admin reset a password");
    Ok(Json(json!({})))
}

async fn deactivate(
    State(s): State<Arc<Services>>,
    ServerAdmin(admin): ServerAdmin,
    Path(user): Path<String>,
    body: Bytes,
) -> Result<Json<Value>> {
    let user = known_local(&s, &user)?;
    let body = if body.is_empty() { Map::new() } else { object(&body)? };
    let erase = bool_field(&body, "erase")?.unwrap_or(false);
    s.admin.deactivate(&user, erase)?;
    tracing::info!(%admin, %user, erase, "admin deactivated a user");
    Ok(Json(json!({"id_server_unbind_result": "success"})))
}

async fn get_admin(State(s): State<Arc<Services>>, _: ServerAdmin, Path(user): Path<String>) -> Result<Json<Value>> {
    let user = local_user_id(&s, &user)?;
    Ok(Json(json!({"admin": s.users.account(&user)?.is_some_and(|a| a.admin)})))
}

async fn put_admin(
    State(s): State<Arc<Services>>,
    ServerAdmin(admin): ServerAdmin,
    Path(user): Path<String>,
    body: Bytes,
) -> Result<Json<Value>> {
    let user = known_local(&s, &user)?;
    let body = object(&body)?;
    let make = bool_field(&body, "admin")?.ok_or_else(|| Error::missing_param("Missing params: ['admin']"))?;
    if !make && user == admin {
        return Err(Error::invalid_param("You may not demote yourself."));
    }
    s.users.set_admin(&user, make)?;
    tracing::info!(%admin, %user, make, "admin changed a user's admin flag");
    Ok(Json(json!({})))
}

fn device_json(user: &UserId, id: &str, d: &crate::users::devices::Device) -> Value {
    json!({
        "device_id": id,
        "display_name": d.display_name,
        "last_seen_ip": d.last_seen_ip,
        "last_seen_ts": d.last_seen_ts,
        "last_seen_user_agent": d.last_seen_user_agent,
        "user_id": user,
    })
}

async fn list_devices(State(s): State<Arc<Services>>, _: ServerAdmin, Path(user): Path<String>) -> Result<Json<Value>> {
    let user = known_local(&s, &user)?;
    let devices: Vec<Value> =
        s.users.devices(&user)?.iter().map(|(id, d)| device_json(&user, id.as_str(), d)).collect();
    Ok(Json(json!({"total": devices.len(), "devices": devices})))
}

async fn get_device(
    State(s): State<Arc<Services>>,
    _: ServerAdmin,
    Path((user, device)): Path<(String, String)>,
) -> Result<Json<Value>> {
    let user = known_local(&s, &user)?;
    let id = OwnedDeviceId::from(device);
    let d = s.users.device(&user, &id)?.ok_or_else(|| Error::not_found("No device found"))?;
    Ok(Json(device_json(&user, id.as_str(), &d)))
}

async fn put_device(
    State(s): State<Arc<Services>>,
    _: ServerAdmin,
    Path((user, device)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<Value>> {
    let user = known_local(&s, &user)?;
    let body = if body.is_empty() { Map::new() } else { object(&body)? };
    let Some(name) = text_field(&body, "display_name")? else { return Ok(Json(json!({}))) };
    if name.is_some_and(|n| n.len() > MAX_DEVICE_NAME) {
        return Err(Error::too_large(format!("Device display name is too long (max {MAX_DEVICE_NAME})")));
    }
    let id = OwnedDeviceId::from(device);
    if s.users.device(&user, &id)?.is_none() {
        return Err(Error::not_found("No device found"));
    }
    s.users.set_device_display_name(&user, &id, name.map(str::to_owned))?;
    Ok(Json(json!({})))
}

async fn delete_device(
    State(s): State<Arc<Services>>,
    ServerAdmin(admin): ServerAdmin,
    Path((user, device)): Path<(String, String)>,
) -> Result<Json<Value>> {
    let user = known_local(&s, &user)?;
    s.admin.delete_devices(&user, &[OwnedDeviceId::from(device.as_str())])?;
    tracing::info!(%admin, %user, %device, "admin deleted a device");
    Ok(Json(json!({})))
}

async fn delete_devices(
    State(s): State<Arc<Services>>,
    ServerAdmin(admin): ServerAdmin,
    Path(user): Path<String>,
    body: Bytes,
) -> Result<Json<Value>> {
    let user = known_local(&s, &user)?;
    let body = object(&body)?;
    let ids: Vec<OwnedDeviceId> = match body.get("devices") {
        Some(Value::Array(list)) => list
            .iter()
            .map(|d| d.as_str().map(OwnedDeviceId::from))
            .collect::<Option<_>>()
            .ok_or_else(|| Error::bad_json("devices must be a list of device ids"))?,
        Some(_) => return Err(Error::bad_json("devices must be a list of device ids")),
        None => return Err(Error::missing_param("Missing params: ['devices']")),
    };
    s.admin.delete_devices(&user, &ids)?;
    tracing::info!(%admin, %user, count = ids.len(), "admin deleted devices");
    Ok(Json(json!({})))
}

async fn joined_rooms(State(s): State<Arc<Services>>, _: ServerAdmin, Path(user): Path<String>) -> Result<Json<Value>> {
    let user = OwnedUserId::try_from(user).map_err(|_| Error::invalid_param("Invalid user id"))?;
    let rooms = s.rooms.joined_rooms(&user)?;
    Ok(Json(json!({"total": rooms.len(), "joined_rooms": rooms})))
}

async fn pushers(State(s): State<Arc<Services>>, _: ServerAdmin, Path(user): Path<String>) -> Result<Json<Value>> {
    let user = known_local(&s, &user)?;
    let pushers: Vec<Value> = s
        .users
        .pushers(&user)?
        .into_iter()
        .map(|p| {
            json!({
                "app_display_name": p.app_display_name,
                "app_id": p.app_id,
                "data": p.data,
                "device_display_name": p.device_display_name,
                "kind": p.kind,
                "lang": p.lang,
                "profile_tag": p.profile_tag.unwrap_or_default(),
                "pushkey": p.pushkey,
            })
        })
        .collect();
    Ok(Json(json!({"total": pushers.len(), "pushers": pushers})))
}
