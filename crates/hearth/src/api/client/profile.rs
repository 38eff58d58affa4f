//! Client-server API: profiles (`/profile/{userId}` and its `displayname` / `avatar_url`);
//! a remote user's profile is asked of their server (`federation::query`). A change is
//! copied into the member event of every room the user is in.

use std::{collections::BTreeMap, sync::Arc};

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

fn ensure_self(caller: &Caller, user_id: &UserId) -> Result<()> {
    if caller.user_id != user_id {
        return Err(Error::forbidden("You cannot change another user's profile"));
    }
    Ok(())
}

/// `user_id`'s profile (or one field of it): local, or asked of the user's server.
async fn profile(s: &Services, user_id: &UserId, field: Option<&str>) -> Result<BTreeMap<String, Value>> {
    let servers = s.config.allow_federation.then_some(&*s.transport.servers);
    crate::federation::query::profile(&s.users, servers, &s.config.server_name, user_id, field).await
}

fn string(fields: &mut BTreeMap<String, Value>, field: &str) -> Option<String> {
    match fields.remove(field) {
        Some(Value::String(s)) => Some(s),
        _ => None,
    }
}

/// `GET /_matrix/client/v3/profile/{userId}`
pub async fn get_profile(s: Arc<Services>, req: Ruma<get_profile::v3::Request>) -> Result<get_profile::v3::Response> {
    let fields = profile(&s, &req.body.user_id, None).await?;
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
    let mut fields = profile(&s, &req.body.user_id, Some("displayname")).await?;
    Ok(get_display_name::v3::Response::new(string(&mut fields, "displayname")))
}

/// `PUT /_matrix/client/v3/profile/{userId}/displayname`
pub async fn set_display_name(
    s: Arc<Services>,
    req: Ruma<set_display_name::v3::Request>,
) -> Result<set_display_name::v3::Response> {
    ensure_self(req.caller()?, &req.body.user_id)?;
    s.users.set_profile_string(&req.body.user_id, "displayname", req.body.displayname.clone())?;
    s.rooms.copy_profile_to_rooms(&req.body.user_id, "displayname", req.body.displayname.as_deref())?;
    Ok(set_display_name::v3::Response::new())
}

/// `GET /_matrix/client/v3/profile/{userId}/avatar_url`
pub async fn get_avatar_url(
    s: Arc<Services>,
    req: Ruma<get_avatar_url::v3::Request>,
) -> Result<get_avatar_url::v3::Response> {
    let mut fields = profile(&s, &req.body.user_id, Some("avatar_url")).await?;
    Ok(get_avatar_url::v3::Response::new(string(&mut fields, "avatar_url").map(OwnedMxcUri::from)))
}

/// `PUT /_matrix/client/v3/profile/{userId}/avatar_url`
pub async fn set_avatar_url(
    s: Arc<Services>,
    req: Ruma<set_avatar_url::v3::Request>,
) -> Result<set_avatar_url::v3::Response> {
    ensure_self(req.caller()?, &req.body.user_id)?;
    let url = req.body.avatar_url.as_ref().map(|u| u.to_string());
    s.users.set_profile_string(&req.body.user_id, "avatar_url", url.clone())?;
    s.rooms.copy_profile_to_rooms(&req.body.user_id, "avatar_url", url.as_deref())?;
    Ok(set_avatar_url::v3::Response::new())
}
