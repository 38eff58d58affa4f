//! The public room directory: which rooms are published, and the listing
//! (`/publicRooms` for clients, and federation's `publicRooms` later) built from their
//! current state.
//!
//! A listing is computed from scratch per request: every published room's chunk is built,
//! filtered by the search term, sorted biggest first (as Synapse lists them) and cut to a
//! page. Paging tokens are offsets into that order (`o<offset>`), so a room that gains or
//! loses members between pages can move across a page boundary; a small server's
//! directory is short enough for that to be acceptable.
//!
//! Who may publish a room is the caller's business (a handler's authorization).
//!
//! The user directory's candidates (members of published rooms, and of the searcher's
//! rooms) are listed here too: the search itself is `users::user_directory`.

use std::collections::BTreeSet;

use ruma::{
    directory::{PublicRoomsChunk, PublicRoomsChunkInit},
    events::room::member::MembershipState,
    events::StateEventType,
    OwnedRoomId, OwnedUserId, RoomId, UInt, UserId,
};
use serde_json::Value;

use super::{Rooms, PUBLISHED_ROOMS};
use crate::{
    error::{Error, Result},
    store::Batch,
};

/// Largest page of the directory.
pub const MAX_LIMIT: usize = 500;

/// One page of the directory.
pub struct Listing {
    pub chunk: Vec<PublicRoomsChunk>,
    /// Token of the next page, if there is one.
    pub next: Option<String>,
    /// Token of the previous page, if this is not the first.
    pub prev: Option<String>,
    /// How many published rooms match, over all pages.
    pub total: u64,
}

impl Rooms {
    /// Whether a room is published in the directory.
    pub fn is_published(&self, room: &RoomId) -> Result<bool> {
        Ok(PUBLISHED_ROOMS.contains(&self.store, room.as_str())?)
    }

    /// Publishes a room in the directory (`Visibility::Public`), or takes it out.
    pub fn set_published(&self, room: &RoomId, public: bool) -> Result<()> {
        let mut batch = Batch::new();
        if public {
            PUBLISHED_ROOMS.put(&mut batch, room.as_str(), &());
        } else {
            PUBLISHED_ROOMS.delete(&mut batch, room.as_str());
        }
        Ok(self.store.write(batch)?)
    }

    /// Every published room.
    pub fn published_rooms(&self) -> Result<Vec<OwnedRoomId>> {
        let mut rooms = Vec::new();
        PUBLISHED_ROOMS.scan_all(&self.store, |room, ()| {
            if let Ok(room) = OwnedRoomId::try_from(room) {
                rooms.push(room);
            }
            true
        })?;
        Ok(rooms)
    }

    /// The users `searcher` may find in the user directory: everyone sharing a room with
    /// them, and the members of public rooms this server is in. Sorted, without duplicates.
    pub fn user_directory_candidates(&self, searcher: &UserId) -> Result<BTreeSet<OwnedUserId>> {
        // Those sharing a room with the searcher (the searcher is not their own match)…
        let mut visible = self.members_of_joined_rooms(searcher)?;
        visible.remove(searcher);
        // …and everyone in a public room: published, open to join, or world-readable (as
        // Synapse counts it; a room turning private takes its members out again).
        let mut public: BTreeSet<OwnedRoomId> = self.published_rooms()?.into_iter().collect();
        let mut all = Vec::new();
        super::ROOMS.scan_all(&self.store, |room, _| {
            all.push(room);
            true
        })?;
        for room in all {
            let Ok(room) = OwnedRoomId::try_from(room) else { continue };
            let field = |kind: &str, key: &str| -> Result<Option<String>> {
                Ok(self
                    .state_event(&room, &kind.into(), "")?
                    .and_then(|p| p.content_value().get(key).and_then(|v| v.as_str()).map(str::to_owned)))
            };
            if field("m.room.join_rules", "join_rule")?.as_deref() == Some("public")
                || field("m.room.history_visibility", "history_visibility")?.as_deref() == Some("world_readable")
            {
                public.insert(room);
            }
        }
        for room in public {
            let members = self.members_shared(&room, &MembershipState::Join)?;
            // A room this server has left is no longer known here: its members as last seen
            // are not listed (as Synapse drops them when its last user leaves).
            if members.iter().any(|m| m.server_name() == self.server_name) {
                visible.extend(members.iter().cloned());
            }
        }
        Ok(visible)
    }

    /// A remote user's display name and avatar as a room this server shares with them
    /// shows them (their member event): what the user directory lists for them.
    pub fn remote_profile(&self, user: &UserId) -> Result<Option<(Option<String>, Option<String>)>> {
        for (room, _) in self.rooms_of(user, &[MembershipState::Join])? {
            let Some(member) = self.state_event(&room, &StateEventType::RoomMember, user.as_str())? else { continue };
            let content = member.content_value();
            let field = |k: &str| content.get(k).and_then(|v| v.as_str()).map(str::to_owned);
            return Ok(Some((field("displayname"), field("avatar_url"))));
        }
        Ok(None)
    }

    /// Published rooms whose name, topic or canonical alias contains `term` (any case),
    /// paged by offset (`since` is `o<offset>`, `limit` at most [`MAX_LIMIT`]).
    pub fn public_rooms(&self, term: Option<&str>, since: Option<&str>, limit: Option<UInt>) -> Result<Listing> {
        self.listing(self.published_rooms()?, term, since, limit)
    }

    /// As [`Rooms::public_rooms`], over `rooms` (an application service's lists, say)
    /// instead of the published ones; rooms this server does not hold are left out.
    pub fn listing(
        &self,
        rooms: Vec<OwnedRoomId>,
        term: Option<&str>,
        since: Option<&str>,
        limit: Option<UInt>,
    ) -> Result<Listing> {
        let offset: usize = match since {
            Some(t) => t
                .strip_prefix('o')
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| Error::invalid_param("Invalid since token"))?,
            None => 0,
        };
        let limit = limit.map_or(MAX_LIMIT, |l| (u64::from(l) as usize).clamp(1, MAX_LIMIT));
        let term = term.map(str::to_lowercase).filter(|t| !t.is_empty());
        let mut all = Vec::new();
        for room_id in rooms {
            if self.room(&room_id)?.is_none() {
                continue;
            }
            let c = self.public_rooms_chunk(&room_id)?;
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

    /// A room's directory entry, from its current state.
    pub fn public_rooms_chunk(&self, room_id: &RoomId) -> Result<PublicRoomsChunk> {
        let joined = self.members_shared(room_id, &MembershipState::Join)?.len() as u64;
        let world_readable =
            self.state_str(room_id, StateEventType::RoomHistoryVisibility, "history_visibility")?.as_deref()
                == Some("world_readable");
        let guest_can_join =
            self.state_str(room_id, StateEventType::RoomGuestAccess, "guest_access")?.as_deref() == Some("can_join");
        let mut c: PublicRoomsChunk = PublicRoomsChunkInit {
            num_joined_members: UInt::new(joined).unwrap_or_default(),
            room_id: room_id.to_owned(),
            world_readable,
            guest_can_join,
        }
        .into();
        c.name = self.state_str(room_id, StateEventType::RoomName, "name")?;
        c.topic = self.state_str(room_id, StateEventType::RoomTopic, "topic")?;
        c.canonical_alias =
            self.state_str(room_id, StateEventType::RoomCanonicalAlias, "alias")?.and_then(|a| a.try_into().ok());
        c.avatar_url = self.state_str(room_id, StateEventType::RoomAvatar, "url")?.map(Into::into);
        Ok(c)
    }

    /// A string field of a current state event (state key "").
    pub(crate) fn state_str(&self, room: &RoomId, kind: StateEventType, field: &str) -> Result<Option<String>> {
        Ok(self
            .state_event(room, &kind, "")?
            .and_then(|p| p.content_value().get(field).and_then(Value::as_str).map(str::to_owned)))
    }
}
