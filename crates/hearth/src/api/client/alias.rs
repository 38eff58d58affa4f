//! Client-server API: room aliases (`/directory/room/{roomAlias}`).

use std::sync::Arc;

use ruma::api::client::{
    alias::{create_alias, delete_alias, get_alias},
    room::aliases,
};

use crate::{
    api::Ruma,
    error::{Error, Result},
    Services,
};

/// `GET /_matrix/client/v3/directory/room/{roomAlias}`
///
/// A remote alias is asked of its server.
pub async fn get_alias(s: Arc<Services>, req: Ruma<get_alias::v3::Request>) -> Result<get_alias::v3::Response> {
    let servers = s.config.allow_federation.then_some(&*s.transport.servers);
    let (room_id, via) =
        crate::federation::query::room_alias(&s.rooms, servers, &s.config.server_name, &req.body.room_alias).await?;
    Ok(get_alias::v3::Response::new(room_id, via))
}

/// `PUT /_matrix/client/v3/directory/room/{roomAlias}`
pub async fn create_alias(
    s: Arc<Services>,
    req: Ruma<create_alias::v3::Request>,
) -> Result<create_alias::v3::Response> {
    let caller = req.caller()?;
    let alias = &req.body.room_alias;
    if alias.server_name() != s.config.server_name {
        return Err(Error::invalid_param("Aliases can only be created on this server"));
    }
    s.rooms.require_joined(&req.body.room_id, &caller.user_id)?;
    s.rooms.create_alias(alias, &req.body.room_id)?;
    Ok(create_alias::v3::Response::new())
}

/// `DELETE /_matrix/client/v3/directory/room/{roomAlias}`
///
/// Allowed to server admins and to members of the room with power to change its
/// canonical alias.
pub async fn delete_alias(
    s: Arc<Services>,
    req: Ruma<delete_alias::v3::Request>,
) -> Result<delete_alias::v3::Response> {
    let caller = req.caller()?;
    let room_id = s.rooms.known_alias(&req.body.room_alias)?;
    let admin = s.users.account(&caller.user_id)?.is_some_and(|a| a.admin);
    if !admin && !s.rooms.is_joined(&room_id, &caller.user_id)? {
        return Err(Error::forbidden("You may not remove this alias"));
    }
    s.rooms.delete_alias(&req.body.room_alias)?;
    s.rooms.drop_from_canonical_alias(&room_id, &req.body.room_alias, &caller.user_id)?;
    Ok(delete_alias::v3::Response::new())
}

/// `GET /_matrix/client/v3/rooms/{roomId}/aliases`
///
/// The local aliases pointing at a room, for members (or anyone, if it is world readable).
pub async fn get_room_aliases(s: Arc<Services>, req: Ruma<aliases::v3::Request>) -> Result<aliases::v3::Response> {
    let caller = req.caller()?;
    s.rooms.require_visible(&req.body.room_id, &caller.user_id)?;
    Ok(aliases::v3::Response::new(s.rooms.local_aliases(&req.body.room_id)?))
}
