//! Room upgrades: a new room of a newer version that continues the old one.
//!
//! The new room's create event names its predecessor; the old room's important state is
//! copied over (name, topic, avatar, rules, encryption, power levels); the old room gets an
//! `m.room.tombstone` pointing at the new one, and its power levels are tightened so only
//! moderators can still speak there; local aliases move to the new room.

use ruma::{events::StateEventType, OwnedRoomId, RoomId, RoomVersionId, UserId};
use serde_json::{json, Map, Value};

use super::{
    append::NewEvent,
    create::{CreateRoom, Preset},
    Rooms, ALIASES,
};
use crate::{
    error::{Error, Result},
    store::Batch,
};

/// State copied to the new room.
const COPIED_STATE: &[&str] = &[
    "m.room.name",
    "m.room.topic",
    "m.room.avatar",
    "m.room.join_rules",
    "m.room.history_visibility",
    "m.room.guest_access",
    "m.room.encryption",
    "m.room.server_acl",
];

impl Rooms {
    /// Upgrades `room_id` to `version` for `user`; returns the replacement room's id.
    pub fn upgrade_room(
        &self,
        room_id: &RoomId,
        user: &UserId,
        version: RoomVersionId,
        member_content: Map<String, Value>,
    ) -> Result<OwnedRoomId> {
        self.require_joined(room_id, user)?;
        if self.user_power(room_id, user)? < self.event_power(room_id, "m.room.tombstone", true)? {
            return Err(Error::forbidden("You may not upgrade this room"));
        }
        let new_rules = version.rules().ok_or_else(|| {
            Error::matrix(http::StatusCode::BAD_REQUEST, "M_UNSUPPORTED_ROOM_VERSION", "Unsupported room version")
        })?;
        let old_create =
            self.state_event(room_id, &StateEventType::RoomCreate, "")?.map(|p| p.content_value()).unwrap_or_default();

        let mut creation = Map::new();
        // The old room's latest event, as Synapse names it (`event_id` is optional since
        // room version 11 made the tombstone the link, but clients still read it).
        let now = self.stream_now();
        let latest = self.page(room_id, now, ruma::api::Direction::Backward, 1, now, None)?;
        let mut predecessor = json!({"room_id": room_id});
        if let Some((_, last)) = latest.first() {
            predecessor["event_id"] = json!(last.event_id);
        }
        creation.insert("predecessor".into(), predecessor);
        for key in ["type", "m.federate"] {
            if let Some(v) = old_create.get(key) {
                creation.insert(key.into(), v.clone());
            }
        }
        let mut initial_state = Vec::new();
        for kind in COPIED_STATE {
            if let Some(p) = self.state_event(room_id, &StateEventType::from(*kind), "")? {
                if let Value::Object(c) = p.content_value() {
                    if !c.is_empty() {
                        initial_state.push(((*kind).to_owned(), String::new(), c));
                    }
                }
            }
        }
        let mut power = match self.power_levels(room_id)? {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        if let Some(Value::Object(users)) = power.get_mut("users") {
            if new_rules.authorization.explicitly_privilege_room_creators {
                // Creators of v12 rooms are above power levels and may not be listed.
                users.remove(user.as_str());
            } else {
                users.insert(user.to_string(), json!(100));
            }
        }
        let alias = self
            .state_event(room_id, &StateEventType::RoomCanonicalAlias, "")?
            .and_then(|p| p.content_value().get("alias").and_then(Value::as_str).map(str::to_owned));

        let new_room = self.create_room(
            user,
            CreateRoom {
                version,
                creation_content: creation,
                preset: Preset::PrivateChat,
                name: None,
                topic: None,
                alias_localpart: None,
                invite: Vec::new(),
                is_direct: false,
                initial_state,
                power_level_override: Some(power.clone()),
                creator_member_content: member_content,
            },
        )?;

        // Aliases of this server follow the room.
        if let Some(alias) = &alias {
            if self.resolve_alias(alias)?.as_deref() == Some(room_id) {
                let mut batch = Batch::new();
                ALIASES.put(&mut batch, alias, &new_room.to_string());
                self.store.write(batch)?;
                self.append_local(
                    &new_room,
                    user,
                    NewEvent::state("m.room.canonical_alias", "", json!({"alias": alias})),
                    None,
                )?;
                self.append_local(room_id, user, NewEvent::state("m.room.canonical_alias", "", json!({})), None)?;
            }
        }

        self.append_local(
            room_id,
            user,
            NewEvent::state(
                "m.room.tombstone",
                "",
                json!({"body": "This room has been replaced", "replacement_room": new_room}),
            ),
            None,
        )?;
        // Only moderators keep speaking (and inviting) in the old room.
        let restricted = |v: Option<&Value>| json!(v.and_then(Value::as_i64).unwrap_or(0).max(50));
        let mut old_power = match self.power_levels(room_id)? {
            Value::Object(m) => m,
            _ => power,
        };
        let (events_default, invite) =
            (restricted(old_power.get("events_default")), restricted(old_power.get("invite")));
        old_power.insert("events_default".into(), events_default);
        old_power.insert("invite".into(), invite);
        self.append_local(room_id, user, NewEvent::state("m.room.power_levels", "", Value::Object(old_power)), None)?;
        Ok(new_room)
    }
}
