//! Spaces (spec: "Spaces", `/hierarchy`): the rooms a space holds, breadth-first over its
//! `m.space.child` state events (those with a non-empty `via`), each shown only to those
//! who may preview it: members and invitees, anyone for a public, knockable or
//! world-readable room, and for a restricted room those joined to a room it allows.
//!
//! The walk itself, which also asks other servers about rooms this one does not know, is
//! `federation::hierarchy`; here are its local pieces.

use ruma::{
    events::{room::member::MembershipState, StateEventType},
    OwnedRoomId, RoomId, UserId,
};
use serde_json::{json, Map, Value};

use super::Rooms;
use crate::error::Result;

/// Most rooms one walk visits, whatever `max_depth` says.
pub const MAX_HIERARCHY_ROOMS: usize = 1000;

impl Rooms {
    /// Whether `user` may see `room` in a space's hierarchy (see the module doc).
    pub fn may_preview(&self, room: &RoomId, user: &UserId) -> Result<bool> {
        let membership = self.membership(room, user)?.map(|m| m.membership);
        if matches!(membership, Some(MembershipState::Join) | Some(MembershipState::Invite)) {
            return Ok(true);
        }
        let rules = self.state_event(room, &StateEventType::RoomJoinRules, "")?.map(|p| p.content_value());
        let rule = rules.as_ref().and_then(|r| r.get("join_rule")).and_then(Value::as_str).unwrap_or("invite");
        match rule {
            "public" | "knock" | "knock_restricted" => return Ok(true),
            "restricted" if self.allowed_by(rules.as_ref(), user)? => return Ok(true),
            _ => {}
        }
        Ok(self.state_str(room, StateEventType::RoomHistoryVisibility, "history_visibility")?.as_deref()
            == Some("world_readable"))
    }

    /// A room as a hierarchy shows it: its summary and its children's events.
    pub fn space_entry(&self, room: &RoomId, children: &[(OwnedRoomId, Value)]) -> Result<Map<String, Value>> {
        let mut entry = self.room_preview(room)?;
        entry.insert("children_state".into(), Value::Array(children.iter().map(|(_, e)| e.clone()).collect()));
        Ok(entry)
    }

    /// Whether a server may be shown `room` in a hierarchy it asks for: public, knockable
    /// and world-readable rooms, and restricted ones (its server decides for its users
    /// from `allowed_room_ids`).
    pub fn may_preview_remotely(&self, room: &RoomId) -> Result<bool> {
        let rules = self.state_event(room, &StateEventType::RoomJoinRules, "")?.map(|p| p.content_value());
        let rule = rules.as_ref().and_then(|r| r.get("join_rule")).and_then(Value::as_str).unwrap_or("invite");
        if matches!(rule, "public" | "knock" | "knock_restricted" | "restricted") {
            return Ok(true);
        }
        Ok(self.state_str(room, StateEventType::RoomHistoryVisibility, "history_visibility")?.as_deref()
            == Some("world_readable"))
    }

    /// Whether `user` is joined to one of `rooms` (a restricted room's allowed rooms).
    pub fn joined_any(&self, rooms: &[OwnedRoomId], user: &UserId) -> Result<bool> {
        for room in rooms {
            if self.is_joined(room, user)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Whether `user` is joined to one of the rooms a restricted join rule allows.
    fn allowed_by(&self, rules: Option<&Value>, user: &UserId) -> Result<bool> {
        for room in allowed_rooms(rules) {
            if self.is_joined(&room, user)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The space's children: (room id, the stripped `m.space.child` event), in the spec's
    /// order (`order` strings first, then by when they were added, then by room id).
    pub fn space_children(&self, space: &RoomId, suggested_only: bool) -> Result<Vec<(OwnedRoomId, Value)>> {
        let state = self.current_state_map(space)?;
        let mut children = Vec::new();
        for pdu in self.state_events(&state)? {
            if pdu.kind.to_string() != "m.space.child" {
                continue;
            }
            let Some(child) = pdu.state_key.as_deref().and_then(|k| OwnedRoomId::try_from(k).ok()) else { continue };
            let content = pdu.content_value();
            if content.get("via").and_then(Value::as_array).is_none_or(|v| v.is_empty()) {
                continue; // a removed child
            }
            if suggested_only && content.get("suggested").and_then(Value::as_bool) != Some(true) {
                continue;
            }
            // `order` counts only when it is 1-50 printable ASCII characters.
            let order = content
                .get("order")
                .and_then(Value::as_str)
                .filter(|o| !o.is_empty() && o.len() <= 50 && o.bytes().all(|b| (0x20..=0x7e).contains(&b)))
                .map(str::to_owned);
            let ts = u64::from(pdu.origin_server_ts.0);
            let stripped = json!({
                "type": "m.space.child",
                "state_key": child,
                "content": content,
                "sender": pdu.sender,
                "origin_server_ts": ts,
            });
            children.push(((order.is_none(), order, ts, child.clone()), child, stripped));
        }
        children.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(children.into_iter().map(|(_, child, event)| (child, event)).collect())
    }

    /// A room's summary for the hierarchy (the spec's `PublishedRoomsChunk`, plus
    /// `join_rule`, `room_type` and, for restricted rooms, `allowed_room_ids`).
    pub fn room_preview(&self, room: &RoomId) -> Result<Map<String, Value>> {
        let chunk = self.public_rooms_chunk(room)?;
        let mut entry = match serde_json::to_value(&chunk) {
            Ok(Value::Object(map)) => map,
            _ => Map::new(),
        };
        let rules = self.state_event(room, &StateEventType::RoomJoinRules, "")?.map(|p| p.content_value());
        let rule = rules.as_ref().and_then(|r| r.get("join_rule")).and_then(Value::as_str).unwrap_or("invite");
        entry.insert("join_rule".into(), json!(rule));
        if rule == "restricted" || rule == "knock_restricted" {
            entry.insert("allowed_room_ids".into(), json!(allowed_rooms(rules.as_ref())));
        }
        let create = self.state_event(room, &StateEventType::RoomCreate, "")?.map(|p| p.content_value());
        match create.as_ref().and_then(|c| c.get("type")).and_then(Value::as_str) {
            Some(kind) => entry.insert("room_type".into(), json!(kind)),
            None => entry.remove("room_type"),
        };
        Ok(entry)
    }
}

/// The rooms a restricted join rule's `allow` list names.
fn allowed_rooms(rules: Option<&Value>) -> Vec<OwnedRoomId> {
    rules
        .and_then(|r| r.get("allow"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|a| a.get("type").and_then(Value::as_str) == Some("m.room_membership"))
        .filter_map(|a| a.get("room_id").and_then(Value::as_str).and_then(|r| OwnedRoomId::try_from(r).ok()))
        .collect()
}
