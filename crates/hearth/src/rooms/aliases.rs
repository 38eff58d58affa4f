//! Room aliases (`#name:server`): the local alias table, written by `PUT` and `DELETE`
//! `/directory/room/{roomAlias}` and read by alias resolution, joins by alias and
//! `/rooms/{roomId}/aliases`.
//!
//! Only aliases on this server live here. Who may create or delete one is the caller's
//! business (a handler's authorization); these functions keep the table consistent and
//! say "already exists" (409) or "not found" (404). The federation alias query answers
//! from [`Rooms::known_alias`] too.

use ruma::{OwnedRoomAliasId, OwnedRoomId, RoomAliasId, RoomId};

use super::{Rooms, ALIASES};
use crate::{
    error::{Error, Result},
    store::Batch,
};

impl Rooms {
    /// The room an alias points at, if it is known.
    pub fn resolve_alias(&self, alias: &str) -> Result<Option<OwnedRoomId>> {
        Ok(ALIASES.get(&self.store, alias)?.and_then(|id| OwnedRoomId::try_from(id).ok()))
    }

    /// The room an alias points at, or 404 for an unknown alias.
    pub fn known_alias(&self, alias: &RoomAliasId) -> Result<OwnedRoomId> {
        self.resolve_alias(alias.as_str())?.ok_or_else(|| Error::not_found("Room alias not found"))
    }

    /// Points a new alias at a room; 409 if the alias is taken.
    pub fn create_alias(&self, alias: &RoomAliasId, room_id: &RoomId) -> Result<()> {
        if self.resolve_alias(alias.as_str())?.is_some() {
            return Err(Error::matrix(http::StatusCode::CONFLICT, "M_UNKNOWN", "Room alias already exists"));
        }
        let mut batch = Batch::new();
        ALIASES.put(&mut batch, alias.as_str(), &room_id.to_string());
        Ok(self.store.write(batch)?)
    }

    /// Removes an alias (nothing happens if it is already gone).
    pub fn delete_alias(&self, alias: &RoomAliasId) -> Result<()> {
        let mut batch = Batch::new();
        ALIASES.delete(&mut batch, alias.as_str());
        Ok(self.store.write(batch)?)
    }

    /// The local aliases pointing at a room (a scan of the whole alias table).
    pub fn local_aliases(&self, room_id: &RoomId) -> Result<Vec<OwnedRoomAliasId>> {
        let mut found = Vec::new();
        ALIASES.scan_all(&self.store, |alias, room| {
            if room == room_id.as_str() {
                if let Ok(a) = OwnedRoomAliasId::try_from(alias) {
                    found.push(a);
                }
            }
            true
        })?;
        Ok(found)
    }
}
