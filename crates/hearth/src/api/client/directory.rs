//! Client-server API: the public room directory (`/publicRooms`, `/directory/list/room`).

use std::sync::Arc;

use ruma::{
    api::client::{
        directory::{get_public_rooms, get_public_rooms_filtered, get_room_visibility, set_room_visibility},
        room::Visibility,
    },
    directory::{PublicRoomsChunk, PublicRoomsChunkInit},
    events::StateEventType,
    OwnedRoomId, RoomId, UInt,
};
use serde_json::Value;

use crate::{
    api::Ruma,
    error::{Error, Result},
    rooms::PUBLISHED_ROOMS,
    store::Batch,
    Services,
};

/// Largest page of the directory.
pub const MAX_LIMIT: usize = 500;

fn state_str(s: &Services, room: &RoomId, kind: StateEventType, field: &str) -> Result<Option<String>> {
    Ok(s.rooms
        .state_event(room, &kind, "")?
        .and_then(|p| p.content_value().get(field).and_then(Value::as_str).map(str::to_owned)))
}

fn chunk(s: &Services, room_id: &RoomId) -> Result<PublicRoomsChunk> {
    let joined = s.rooms.members(room_id, "join")?.len() as u64;
    let world_readable = state_str(s, room_id, StateEventType::RoomHistoryVisibility, "history_visibility")?.as_deref()
        == Some("world_readable");
    let guest_can_join =
        state_str(s, room_id, StateEventType::RoomGuestAccess, "guest_access")?.as_deref() == Some("can_join");
    let mut c: PublicRoomsChunk = PublicRoomsChunkInit {
        num_joined_members: UInt::new(joined).unwrap_or_default(),
        room_id: room_id.to_owned(),
        world_readable,
        guest_can_join,
    }
    .into();
    c.name = state_str(s, room_id, StateEventType::RoomName, "name")?;
    c.topic = state_str(s, room_id, StateEventType::RoomTopic, "topic")?;
    c.canonical_alias =
        state_str(s, room_id, StateEventType::RoomCanonicalAlias, "alias")?.and_then(|a| a.try_into().ok());
    c.avatar_url = state_str(s, room_id, StateEventType::RoomAvatar, "url")?.map(Into::into);
    Ok(c)
}

/// One page of the directory.
struct Listing {
    chunk: Vec<PublicRoomsChunk>,
    next: Option<String>,
    prev: Option<String>,
    total: u64,
}

/// Published rooms matching `term`, paged by offset (`since` is `o<offset>`).
fn listing(s: &Services, term: Option<&str>, since: Option<&str>, limit: Option<UInt>) -> Result<Listing> {
    let offset: usize = match since {
        Some(t) => t
            .strip_prefix('o')
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| Error::invalid_param("Invalid since token"))?,
        None => 0,
    };
    let limit = limit.map_or(MAX_LIMIT, |l| (u64::from(l) as usize).clamp(1, MAX_LIMIT));
    let mut rooms = Vec::new();
    PUBLISHED_ROOMS.scan_all(&s.store, |room, ()| {
        rooms.push(room);
        true
    })?;
    let term = term.map(str::to_lowercase).filter(|t| !t.is_empty());
    let mut all = Vec::new();
    for room in rooms {
        let Ok(room_id) = OwnedRoomId::try_from(room) else { continue };
        let c = chunk(s, &room_id)?;
        if let Some(t) = &term {
            let hay = format!(
                "{} {} {}",
                c.name.as_deref().unwrap_or_default(),
                c.topic.as_deref().unwrap_or_default(),
                c.canonical_alias.as_ref().map(|a| a.as_str()).unwrap_or_default()
            )
            .to_lowercase();
            if !hay.contains(t) {
                continue;
            }
        }
        all.push(c);
    }
    // Biggest rooms first, as Synapse lists them.
    all.sort_by(|a, b| b.num_joined_members.cmp(&a.num_joined_members).then(a.room_id.cmp(&b.room_id)));
    let total = all.len() as u64;
    let next = (offset + limit < all.len()).then(|| format!("o{}", offset + limit));
    let prev = (offset > 0).then(|| format!("o{}", offset.saturating_sub(limit)));
    let chunk = all.into_iter().skip(offset).take(limit).collect();
    Ok(Listing { chunk, next, prev, total })
}

/// `GET /_matrix/client/v3/publicRooms`
pub async fn get_public_rooms(
    s: Arc<Services>,
    req: Ruma<get_public_rooms::v3::Request>,
) -> Result<get_public_rooms::v3::Response> {
    let page = listing(&s, None, req.body.since.as_deref(), req.body.limit)?;
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
    let page = listing(&s, term, req.body.since.as_deref(), req.body.limit)?;
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
    let public = PUBLISHED_ROOMS.contains(&s.store, req.body.room_id.as_str())?;
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
    set_published(&s, room, req.body.visibility == Visibility::Public)?;
    Ok(set_room_visibility::v3::Response::new())
}

pub fn set_published(s: &Services, room: &RoomId, public: bool) -> Result<()> {
    let mut batch = Batch::new();
    if public {
        PUBLISHED_ROOMS.put(&mut batch, room.as_str(), &());
    } else {
        PUBLISHED_ROOMS.delete(&mut batch, room.as_str());
    }
    Ok(s.store.write(batch)?)
}
