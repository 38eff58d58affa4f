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

    /// Removes a deleted alias from the room's `m.room.canonical_alias` (its `alias` or
    /// `alt_aliases`), as Synapse does, sent by `sender`; a sender without the power to
    /// change it leaves it as it is (logged).
    pub fn drop_from_canonical_alias(
        &self,
        room_id: &RoomId,
        alias: &RoomAliasId,
        sender: &ruma::UserId,
    ) -> Result<()> {
        let Some(event) = self.state_event(room_id, &"m.room.canonical_alias".into(), "")? else { return Ok(()) };
        let serde_json::Value::Object(mut content) = event.content_value() else { return Ok(()) };
        let mut changed = false;
        if content.get("alias").and_then(|a| a.as_str()) == Some(alias.as_str()) {
            content.remove("alias");
            changed = true;
        }
        if let Some(serde_json::Value::Array(alts)) = content.get_mut("alt_aliases") {
            let before = alts.len();
            alts.retain(|a| a.as_str() != Some(alias.as_str()));
            changed |= alts.len() != before;
        }
        if changed {
            let new = super::append::NewEvent::state("m.room.canonical_alias", "", serde_json::Value::Object(content));
            if let Err(e) = self.append_local(room_id, sender, new, None) {
                tracing::info!(%room_id, %alias, error = %e, "a deleted alias stays in the canonical alias event");
            }
        }
        Ok(())
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
