//! Client-server API: presence (`/presence/{userId}/status`).

use std::sync::Arc;

use ruma::api::client::presence::{get_presence, set_presence};

use crate::{
    api::Ruma,
    error::{Error, Result},
    presence, Services,
};

/// `PUT /_matrix/client/v3/presence/{userId}/status`
pub async fn set_presence(
    s: Arc<Services>,
    req: Ruma<set_presence::v3::Request>,
) -> Result<set_presence::v3::Response> {
    let caller = req.caller()?;
    if caller.user_id != req.body.user_id {
        return Err(Error::forbidden("You can only set your own presence"));
    }
    s.presence.seen(&caller.user_id);
    let (state, msg) = (req.body.presence.as_str(), Some(req.body.status_msg.clone()));
    presence::set(&s.presence, &s.rooms, &s.notifier, &caller.user_id, state, msg)?;
    Ok(set_presence::v3::Response::new())
}

/// `GET /_matrix/client/v3/presence/{userId}/status`
///
/// Visible to the user themself and to those who share a room with them.
pub async fn get_presence(
    s: Arc<Services>,
    req: Ruma<get_presence::v3::Request>,
) -> Result<get_presence::v3::Response> {
    let caller = req.caller()?;
    let target = &req.body.user_id;
    if caller.user_id != *target && !s.rooms.share_a_room(&caller.user_id, target)? {
        return Err(Error::forbidden("You do not share a room with this user"));
    }
    // A user who never set any presence is offline, as on Synapse; an unknown user is 404.
    let Some(rec) = s.presence.get(target)? else {
        if target.server_name() == s.config.server_name && !s.users.is_active(target)? {
            return Err(Error::not_found("No such user"));
        }
        return Ok(get_presence::v3::Response::new(ruma::presence::PresenceState::Offline));
    };
    let mut res = get_presence::v3::Response::new(rec.presence.as_str().into());
    res.status_msg = rec.status_msg;
    let ago = crate::time::now_millis().saturating_sub(rec.last_active_ts);
    res.last_active_ago = Some(std::time::Duration::from_millis(ago));
    res.currently_active = Some(rec.presence == "online" && ago < 5 * 60 * 1000);
    Ok(res)
}
