//! Power levels as the room's current state says, including v12's room creators, whose
//! power is above any number.

use ruma::{events::StateEventType, RoomId, UserId};
use serde_json::Value;

use super::Rooms;
use crate::error::Result;

/// Power of a room creator in rooms that privilege creators (v12): above everyone.
pub const CREATOR_POWER: i64 = i64::MAX;

fn int(v: Option<&Value>) -> Option<i64> {
    match v? {
        Value::Number(n) => n.as_i64(),
        // Old rooms may carry power levels as strings.
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

impl Rooms {
    /// The power level content of the room (empty object if none).
    pub fn power_levels(&self, room_id: &RoomId) -> Result<Value> {
        Ok(self
            .state_event(room_id, &StateEventType::RoomPowerLevels, "")?
            .map(|p| p.content_value())
            .unwrap_or_else(|| serde_json::json!({})))
    }

    /// Whether `user` is a creator of a room that privileges creators.
    pub fn is_privileged_creator(&self, room_id: &RoomId, user: &UserId) -> Result<bool> {
        let Some(record) = self.room(room_id)? else { return Ok(false) };
        let Some(rules) = record.version.rules() else { return Ok(false) };
        if !rules.authorization.explicitly_privilege_room_creators {
            return Ok(false);
        }
        let Some(create) = self.state_event(room_id, &StateEventType::RoomCreate, "")? else { return Ok(false) };
        if create.sender == user {
            return Ok(true);
        }
        let extra = create.content_value();
        Ok(extra
            .get("additional_creators")
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(|c| c.as_str() == Some(user.as_str()))))
    }

    /// A user's power level in a room.
    pub fn user_power(&self, room_id: &RoomId, user: &UserId) -> Result<i64> {
        if self.is_privileged_creator(room_id, user)? {
            return Ok(CREATOR_POWER);
        }
        let pl = self.power_levels(room_id)?;
        if pl.as_object().is_none_or(|o| o.is_empty()) {
            // No power levels yet: the creator has 100, everyone else 0.
            let creator = self.state_event(room_id, &StateEventType::RoomCreate, "")?.map(|c| c.sender);
            return Ok(if creator.as_deref() == Some(user) { 100 } else { 0 });
        }
        Ok(int(pl["users"].get(user.as_str())).or_else(|| int(pl.get("users_default"))).unwrap_or(0))
    }

    /// A named power threshold (`redact`, `kick`, …) or the level for an event type.
    pub fn required_power(&self, room_id: &RoomId, name: &str, default: i64) -> Result<i64> {
        let pl = self.power_levels(room_id)?;
        Ok(int(pl.get(name)).unwrap_or(default))
    }

    /// The level needed to send an event of `kind` (state or not).
    pub fn event_power(&self, room_id: &RoomId, kind: &str, state: bool) -> Result<i64> {
        let pl = self.power_levels(room_id)?;
        if let Some(level) = int(pl["events"].get(kind)) {
            return Ok(level);
        }
        Ok(if state { int(pl.get("state_default")).unwrap_or(50) } else { int(pl.get("events_default")).unwrap_or(0) })
    }
}
