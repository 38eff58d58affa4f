//! Client-server API: client config (account data, global and per room) and room tags.

use std::sync::Arc;

use ruma::{
    api::client::{
        config::{get_global_account_data, get_room_account_data, set_global_account_data, set_room_account_data},
        tag::{create_tag, delete_tag, get_tags},
    },
    events::tag::Tags,
    UserId,
};
use serde_json::{json, Map, Value};

use super::raw;
use crate::{
    api::{Caller, Ruma},
    error::{Error, Result},
    Services,
};

fn ensure_self(caller: &Caller, user: &UserId) -> Result<()> {
    if caller.user_id != user {
        return Err(Error::forbidden("You can only access your own account data"));
    }
    Ok(())
}

fn object<T>(raw: &ruma::serde::Raw<T>) -> Result<Map<String, Value>> {
    match serde_json::from_str(raw.json().get()) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(Error::bad_json("Account data must be a JSON object")),
    }
}

/// Types the server manages itself and clients may not set directly.
fn refuse_server_managed(kind: &str) -> Result<()> {
    if kind == "m.fully_read" || kind == "m.push_rules" {
        return Err(Error::matrix(
            http::StatusCode::METHOD_NOT_ALLOWED,
            "M_BAD_JSON",
            format!("{kind} cannot be set through this endpoint"),
        ));
    }
    Ok(())
}

/// `PUT /_matrix/client/v3/user/{userId}/account_data/{type}`
pub async fn set_global_account_data(
    s: Arc<Services>,
    req: Ruma<set_global_account_data::v3::Request>,
) -> Result<set_global_account_data::v3::Response> {
    let caller = req.caller()?;
    ensure_self(caller, &req.body.user_id)?;
    let kind = req.body.event_type.to_string();
    refuse_server_managed(&kind)?;
    s.account_data.set(&caller.user_id, None, &kind, object(&req.body.data)?)?;
    Ok(set_global_account_data::v3::Response::new())
}

/// `GET /_matrix/client/v3/user/{userId}/account_data/{type}`
pub async fn get_global_account_data(
    s: Arc<Services>,
    req: Ruma<get_global_account_data::v3::Request>,
) -> Result<get_global_account_data::v3::Response> {
    let caller = req.caller()?;
    ensure_self(caller, &req.body.user_id)?;
    let content = s
        .account_data
        .get(&caller.user_id, None, &req.body.event_type.to_string())?
        .ok_or_else(|| Error::not_found("No account data of that type"))?;
    Ok(get_global_account_data::v3::Response::new(raw(&content)?))
}

/// `PUT /_matrix/client/v3/user/{userId}/rooms/{roomId}/account_data/{type}`
pub async fn set_room_account_data(
    s: Arc<Services>,
    req: Ruma<set_room_account_data::v3::Request>,
) -> Result<set_room_account_data::v3::Response> {
    let caller = req.caller()?;
    ensure_self(caller, &req.body.user_id)?;
    let kind = req.body.event_type.to_string();
    refuse_server_managed(&kind)?;
    s.rooms.known_room(&req.body.room_id)?;
    s.account_data.set(&caller.user_id, Some(&req.body.room_id), &kind, object(&req.body.data)?)?;
    Ok(set_room_account_data::v3::Response::new())
}

/// `GET /_matrix/client/v3/user/{userId}/rooms/{roomId}/account_data/{type}`
pub async fn get_room_account_data(
    s: Arc<Services>,
    req: Ruma<get_room_account_data::v3::Request>,
) -> Result<get_room_account_data::v3::Response> {
    let caller = req.caller()?;
    ensure_self(caller, &req.body.user_id)?;
    let content = s
        .account_data
        .get(&caller.user_id, Some(&req.body.room_id), &req.body.event_type.to_string())?
        .ok_or_else(|| Error::not_found("No account data of that type"))?;
    Ok(get_room_account_data::v3::Response::new(raw(&content)?))
}

fn tags_of(s: &Services, user: &UserId, room: &ruma::RoomId) -> Result<Map<String, Value>> {
    Ok(s.account_data
        .get(user, Some(room), "m.tag")?
        .and_then(|c| c.get("tags").and_then(Value::as_object).cloned())
        .unwrap_or_default())
}

/// `GET /_matrix/client/v3/user/{userId}/rooms/{roomId}/tags`
pub async fn get_tags(s: Arc<Services>, req: Ruma<get_tags::v3::Request>) -> Result<get_tags::v3::Response> {
    let caller = req.caller()?;
    ensure_self(caller, &req.body.user_id)?;
    let tags: Tags =
        serde_json::from_value(Value::Object(tags_of(&s, &caller.user_id, &req.body.room_id)?)).unwrap_or_default();
    Ok(get_tags::v3::Response::new(tags))
}

/// `PUT /_matrix/client/v3/user/{userId}/rooms/{roomId}/tags/{tag}`
pub async fn create_tag(s: Arc<Services>, req: Ruma<create_tag::v3::Request>) -> Result<create_tag::v3::Response> {
    let caller = req.caller()?;
    ensure_self(caller, &req.body.user_id)?;
    if req.body.tag.len() > 255 {
        return Err(Error::invalid_param("Tag too long"));
    }
    let mut tags = tags_of(&s, &caller.user_id, &req.body.room_id)?;
    let info = serde_json::to_value(&req.body.tag_info).map_err(|e| Error::internal(e.to_string()))?;
    tags.insert(req.body.tag.clone(), info);
    let content = json!({"tags": tags});
    s.account_data.set(
        &caller.user_id,
        Some(&req.body.room_id),
        "m.tag",
        content.as_object().cloned().unwrap_or_default(),
    )?;
    Ok(create_tag::v3::Response::new())
}

/// `DELETE /_matrix/client/v3/user/{userId}/rooms/{roomId}/tags/{tag}`
pub async fn delete_tag(s: Arc<Services>, req: Ruma<delete_tag::v3::Request>) -> Result<delete_tag::v3::Response> {
    let caller = req.caller()?;
    ensure_self(caller, &req.body.user_id)?;
    let mut tags = tags_of(&s, &caller.user_id, &req.body.room_id)?;
    tags.remove(&req.body.tag);
    let content = json!({"tags": tags});
    s.account_data.set(
        &caller.user_id,
        Some(&req.body.room_id),
        "m.tag",
        content.as_object().cloned().unwrap_or_default(),
    )?;
    Ok(delete_tag::v3::Response::new())
}
