//! Client-server API: profiles (`/profile/{userId}` and its `displayname` / `avatar_url`).

use std::sync::Arc;

use ruma::{
    api::client::profile::{get_avatar_url, get_display_name, get_profile, set_avatar_url, set_display_name},
    OwnedMxcUri, UserId,
};
use serde_json::Value;

use crate::{
    api::{Caller, Ruma},
    error::{Error, Result},
    Services,
};

/// Profiles of unknown (or deactivated-and-emptied) users are 404, as the spec asks.
fn ensure_known(s: &Services, user_id: &UserId) -> Result<()> {
    if user_id.server_name() != s.config.server_name || !s.users.is_active(user_id)? {
        return Err(Error::not_found("Profile not found"));
    }
    Ok(())
}

fn ensure_self(caller: &Caller, user_id: &UserId) -> Result<()> {
    if caller.user_id != user_id {
        return Err(Error::forbidden("You cannot change another user's profile"));
    }
    Ok(())
}

fn string_field(s: &Services, user_id: &UserId, field: &str) -> Result<Option<String>> {
    Ok(s.users.profile_field(user_id, field)?.and_then(|v| match v {
        Value::String(s) => Some(s),
        _ => None,
    }))
}

/// `GET /_matrix/client/v3/profile/{userId}`
pub async fn get_profile(s: Arc<Services>, req: Ruma<get_profile::v3::Request>) -> Result<get_profile::v3::Response> {
    ensure_known(&s, &req.body.user_id)?;
    let fields = s.users.profile(&req.body.user_id)?;
    let mut res = get_profile::v3::Response::new();
    for (field, value) in fields {
        res.set(field, value);
    }
    Ok(res)
}

/// `GET /_matrix/client/v3/profile/{userId}/displayname`
pub async fn get_display_name(
    s: Arc<Services>,
    req: Ruma<get_display_name::v3::Request>,
) -> Result<get_display_name::v3::Response> {
    ensure_known(&s, &req.body.user_id)?;
    let name = string_field(&s, &req.body.user_id, "displayname")?;
    Ok(get_display_name::v3::Response::new(name))
}

/// `PUT /_matrix/client/v3/profile/{userId}/displayname`
pub async fn set_display_name(
    s: Arc<Services>,
    req: Ruma<set_display_name::v3::Request>,
) -> Result<set_display_name::v3::Response> {
    ensure_self(req.caller()?, &req.body.user_id)?;
    s.users.set_profile_string(&req.body.user_id, "displayname", req.body.displayname.clone())?;
    Ok(set_display_name::v3::Response::new())
}

/// `GET /_matrix/client/v3/profile/{userId}/avatar_url`
pub async fn get_avatar_url(
    s: Arc<Services>,
    req: Ruma<get_avatar_url::v3::Request>,
) -> Result<get_avatar_url::v3::Response> {
    ensure_known(&s, &req.body.user_id)?;
    let url = string_field(&s, &req.body.user_id, "avatar_url")?.map(OwnedMxcUri::from);
    Ok(get_avatar_url::v3::Response::new(url))
}

/// `PUT /_matrix/client/v3/profile/{userId}/avatar_url`
pub async fn set_avatar_url(
    s: Arc<Services>,
    req: Ruma<set_avatar_url::v3::Request>,
) -> Result<set_avatar_url::v3::Response> {
    ensure_self(req.caller()?, &req.body.user_id)?;
    let url = req.body.avatar_url.as_ref().map(|u| u.to_string());
    s.users.set_profile_string(&req.body.user_id, "avatar_url", url)?;
    Ok(set_avatar_url::v3::Response::new())
}
