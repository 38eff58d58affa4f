//! Client-server API: typing notifications.

use std::sync::Arc;

use ruma::api::client::typing::create_typing_event::v3::{self as create_typing_event, Typing};
use ruma::events::room::member::MembershipState;

use crate::{
    api::Ruma,
    error::{Error, Result},
    Services,
};

/// `PUT /_matrix/client/v3/rooms/{roomId}/typing/{userId}`
pub async fn create_typing_event(
    s: Arc<Services>,
    req: Ruma<create_typing_event::Request>,
) -> Result<create_typing_event::Response> {
    let caller = req.caller()?;
    if caller.user_id != req.body.user_id {
        return Err(Error::forbidden("You can only set your own typing state"));
    }
    s.rooms.require_joined(&req.body.room_id, &caller.user_id)?;
    let timeout = match &req.body.state {
        Typing::Yes(info) => Some(info.timeout),
        _ => None,
    };
    let members = s.rooms.members(&req.body.room_id, &MembershipState::Join)?;
    s.typing.set(&req.body.room_id, &caller.user_id, timeout, members);
    if s.config.allow_federation {
        s.federation.send_typing(&req.body.room_id, &caller.user_id, timeout.is_some());
    }
    Ok(create_typing_event::Response::new())
}
