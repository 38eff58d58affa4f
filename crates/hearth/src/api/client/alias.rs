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

/// The room an alias names, with servers to join it through: a remote alias is asked of
/// its server; a local one that is not there, of the application services whose namespace
/// holds it (which create it before answering).
pub(crate) async fn room_alias(
    s: &Services,
    alias: &ruma::RoomAliasId,
) -> Result<(ruma::OwnedRoomId, Vec<ruma::OwnedServerName>)> {
    let servers = s.config.allow_federation.then_some(&*s.transport.servers);
    let own = &s.config.server_name;
    let found = crate::federation::query::room_alias(&s.rooms, servers, own, alias).await;
    match found {
        Err(e)
            if alias.server_name() == own && !s.appservices.is_empty() && e.status() == http::StatusCode::NOT_FOUND =>
        {
            if s.appservices.query_alias(alias).await {
                return crate::federation::query::room_alias(&s.rooms, servers, own, alias).await;
            }
            Err(e)
        }
        other => other,
    }
}

/// `GET /_matrix/client/v3/directory/room/{roomAlias}`
///
/// A remote alias is asked of its server.
pub async fn get_alias(s: Arc<Services>, req: Ruma<get_alias::v3::Request>) -> Result<get_alias::v3::Response> {
    let (room_id, via) = room_alias(&s, &req.body.room_alias).await?;
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
    s.appservices.check_alias_free(alias, caller.appservice.as_deref())?;
    // An application service manages the aliases of its namespace, joined or not.
    match caller.appservice {
        Some(_) => s.rooms.known_room(&req.body.room_id).map(drop)?,
        None => s.rooms.require_joined(&req.body.room_id, &caller.user_id)?,
    }
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
    let service = caller.appservice.as_deref().and_then(|id| s.appservices.by_id(id));
    let own_namespace = service.is_some_and(|a| a.is_alias_in_namespace(req.body.room_alias.as_str()));
    if !admin && !own_namespace && !s.rooms.is_joined(&room_id, &caller.user_id)? {
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
