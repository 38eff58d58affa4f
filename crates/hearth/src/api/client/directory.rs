//! Client-server API: the public room directory (`/publicRooms`, `/directory/list/room`).

use std::sync::Arc;

use ruma::{
    api::client::{
        directory::{get_public_rooms, get_public_rooms_filtered, get_room_visibility, set_room_visibility},
        room::Visibility,
    },
    directory::RoomNetwork,
    UInt,
};

use crate::{
    api::Ruma,
    error::{Error, Result},
    Services,
};

/// A page of this server's directory, or of `server`'s (`?server=`), asked over federation.
async fn page(
    s: &Services,
    server: Option<&ruma::ServerName>,
    term: Option<&str>,
    since: Option<&str>,
    limit: Option<UInt>,
) -> Result<crate::rooms::directory::Listing> {
    let servers = s.config.allow_federation.then_some(&*s.transport.servers);
    crate::federation::query::public_rooms(&s.rooms, servers, &s.config.server_name, server, term, since, limit).await
}

/// `GET /_matrix/client/v3/publicRooms`
pub async fn get_public_rooms(
    s: Arc<Services>,
    req: Ruma<get_public_rooms::v3::Request>,
) -> Result<get_public_rooms::v3::Response> {
    let page = page(&s, req.body.server.as_deref(), None, req.body.since.as_deref(), req.body.limit).await?;
    let mut res = get_public_rooms::v3::Response::new(page.chunk);
    res.next_batch = page.next;
    res.prev_batch = page.prev;
    res.total_room_count_estimate = UInt::new(page.total);
    Ok(res)
}

/// `POST /_matrix/client/v3/publicRooms`
pub async fn get_public_rooms_filtered(
    s: Arc<Services>,
    req: Ruma<get_public_rooms_filtered::v3::Request>,
) -> Result<get_public_rooms_filtered::v3::Response> {
    req.caller()?;
    let term = req.body.filter.generic_search_term.as_deref();
    let (since, limit) = (req.body.since.as_deref(), req.body.limit);
    let own = req.body.server.as_deref().is_none_or(|server| server == s.config.server_name);
    let page = match &req.body.room_network {
        // The application services' lists (`<service id>|<network id>`), alone or with
        // the server's own directory.
        RoomNetwork::ThirdParty(instance) if own => {
            s.rooms.listing(s.appservices.listed_rooms(Some(instance))?, term, since, limit)?
        }
        RoomNetwork::All if own => {
            let mut rooms = s.rooms.published_rooms()?;
            rooms.extend(s.appservices.listed_rooms(None)?);
            rooms.sort();
            rooms.dedup();
            s.rooms.listing(rooms, term, since, limit)?
        }
        _ => page(&s, req.body.server.as_deref(), term, since, limit).await?,
    };
    let mut res = get_public_rooms_filtered::v3::Response::new();
    res.chunk = page.chunk;
    res.next_batch = page.next;
    res.prev_batch = page.prev;
    res.total_room_count_estimate = UInt::new(page.total);
    Ok(res)
}

/// `GET /_matrix/client/v3/directory/list/room/{roomId}`
pub async fn get_room_visibility(
    s: Arc<Services>,
    req: Ruma<get_room_visibility::v3::Request>,
) -> Result<get_room_visibility::v3::Response> {
    s.rooms.known_room(&req.body.room_id)?;
    let public = s.rooms.is_published(&req.body.room_id)?;
    Ok(get_room_visibility::v3::Response::new(if public { Visibility::Public } else { Visibility::Private }))
}

/// `PUT /_matrix/client/v3/directory/list/room/{roomId}`
///
/// Room admins (who may change the canonical alias) and server admins may publish.
pub async fn set_room_visibility(
    s: Arc<Services>,
    req: Ruma<set_room_visibility::v3::Request>,
) -> Result<set_room_visibility::v3::Response> {
    let caller = req.caller()?;
    let room = &req.body.room_id;
    s.rooms.known_room(room)?;
    let admin = s.users.account(&caller.user_id)?.is_some_and(|a| a.admin);
    let power = s.rooms.user_power(room, &caller.user_id)?;
    if !admin
        && (!s.rooms.is_joined(room, &caller.user_id)?
            || power < s.rooms.event_power(room, "m.room.canonical_alias", true)?)
    {
        return Err(Error::forbidden("You may not change this room's directory visibility"));
    }
    s.rooms.set_published(room, req.body.visibility == Visibility::Public)?;
    Ok(set_room_visibility::v3::Response::new())
}
