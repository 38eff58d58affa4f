//! What a server admin sees of rooms and may do to them: every room this server knows with
//! a summary of its current state (the shape Synapse's admin API lists), and blocked rooms
//! — rooms no local user may join, knock on or be invited to, and that other servers may
//! not join through this one.

use ruma::{
    events::{room::member::MembershipState, StateEventType},
    OwnedRoomId, OwnedUserId, RoomId, UserId,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Rooms, ROOMS};
use crate::{
    error::{Error, Result},
    store::codec::json_value,
    store::{tables, Batch, Table},
    time::now_millis,
};

/// Who blocked a room, and when.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BlockRecord {
    pub by: Option<OwnedUserId>,
    pub ts: u64,
}

json_value!(BlockRecord);

pub const BLOCKED_ROOMS: Table<String, BlockRecord> = Table::new(tables::BLOCKED_ROOMS);

/// A room as an admin list shows it, from its current state. Field names are Synapse's.
#[derive(Debug, Clone, Serialize)]
pub struct RoomSummary {
    pub room_id: OwnedRoomId,
    pub name: Option<String>,
    pub topic: Option<String>,
    pub avatar: Option<String>,
    pub canonical_alias: Option<String>,
    pub joined_members: u64,
    pub joined_local_members: u64,
    pub version: String,
    pub creator: Option<String>,
    pub encryption: Option<String>,
    pub federatable: bool,
    pub public: bool,
    pub join_rules: Option<String>,
    pub guest_access: Option<String>,
    pub history_visibility: Option<String>,
    pub state_events: u64,
    pub room_type: Option<String>,
    pub created_ts: u64,
}

impl Rooms {
    /// Every room this server has a record of (created here or joined), by room id.
    pub fn all_rooms(&self) -> Result<Vec<OwnedRoomId>> {
        let mut out = Vec::new();
        ROOMS.scan_all(&self.store, |id, _| {
            if let Ok(id) = OwnedRoomId::try_from(id) {
                out.push(id);
            }
            true
        })?;
        Ok(out)
    }

    /// A room's summary; `None` for a room this server does not know.
    pub fn summary(&self, room_id: &RoomId) -> Result<Option<RoomSummary>> {
        let Some(record) = self.room(room_id)? else {
            return Ok(None);
        };
        let joined = self.members_shared(room_id, &MembershipState::Join)?;
        let joined_local = joined.iter().filter(|u| u.server_name() == self.server_name).count() as u64;
        let state = self.current_state_map(room_id)?;
        let create = self.state_event(room_id, &StateEventType::RoomCreate, "")?;
        let create_content = create.as_ref().map(|p| p.content_value()).unwrap_or(Value::Null);
        // Before version 11 the creator is a field of the content; from 11 on, the sender.
        let creator = create_content
            .get("creator")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .or_else(|| create.as_ref().map(|p| p.sender.to_string()));
        let field = |kind: StateEventType, name: &str| self.state_str(room_id, kind, name);
        Ok(Some(RoomSummary {
            room_id: room_id.to_owned(),
            name: field(StateEventType::RoomName, "name")?,
            topic: field(StateEventType::RoomTopic, "topic")?,
            avatar: field(StateEventType::RoomAvatar, "url")?,
            canonical_alias: field(StateEventType::RoomCanonicalAlias, "alias")?,
            joined_members: joined.len() as u64,
            joined_local_members: joined_local,
            version: record.version.to_string(),
            creator,
            encryption: field(StateEventType::RoomEncryption, "algorithm")?,
            federatable: create_content.get("m.federate").and_then(Value::as_bool).unwrap_or(true),
            public: self.is_published(room_id)?,
            join_rules: field(StateEventType::RoomJoinRules, "join_rule")?,
            guest_access: field(StateEventType::RoomGuestAccess, "guest_access")?,
            history_visibility: field(StateEventType::RoomHistoryVisibility, "history_visibility")?,
            state_events: state.len() as u64,
            room_type: create_content.get("type").and_then(Value::as_str).map(str::to_owned),
            created_ts: record.created_ts,
        }))
    }

    /// Whether an admin blocked the room, and who.
    pub fn blocked(&self, room_id: &RoomId) -> Result<Option<BlockRecord>> {
        Ok(BLOCKED_ROOMS.get(&self.store, room_id.as_str())?)
    }

    /// Refuses anything that would bring someone into a blocked room.
    pub fn check_not_blocked(&self, room_id: &RoomId) -> Result<()> {
        if BLOCKED_ROOMS.contains(&self.store, room_id.as_str())? {
            return Err(Error::forbidden("This room has been blocked on this server"));
        }
        Ok(())
    }

    /// Blocks or unblocks a room (it need not be known here: a room can be blocked before
    /// anyone tries to join it).
    pub fn set_blocked(&self, room_id: &RoomId, by: Option<&UserId>, blocked: bool) -> Result<()> {
        let mut batch = Batch::new();
        if blocked {
            BLOCKED_ROOMS.put(
                &mut batch,
                room_id.as_str(),
                &BlockRecord { by: by.map(ToOwned::to_owned), ts: now_millis() },
            );
        } else {
            BLOCKED_ROOMS.delete(&mut batch, room_id.as_str());
        }
        Ok(self.store.write(batch)?)
    }
}
