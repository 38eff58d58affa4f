//! Room upgrades: a new room of a newer version that continues the old one.
//!
//! The new room's create event names its predecessor; the old room's important state is
//! copied over (name, topic, avatar, rules, encryption, power levels); the old room gets an
//! `m.room.tombstone` pointing at the new one, and its power levels are tightened so only
//! moderators can still speak there; local aliases, the canonical alias event, bans and
//! the directory listing move to the new room.

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
        // Where the new room's id is chosen (versions before 12), the tombstone comes first
        // and the new create event names it as `predecessor.event_id`, as Synapse links
        // them. A version 12 id is the create event's own hash, so the tombstone can only
        // follow; the predecessor then names the old room's latest event (`event_id` is
        // optional, but clients jump to it).
        let chosen_id = match new_rules.event_format.require_room_create_room_id {
            true => Some(self.new_room_id()?),
            false => None,
        };
        let tombstone = |replacement: &RoomId| {
            self.append_local(
                room_id,
                user,
                NewEvent::state(
                    "m.room.tombstone",
                    "",
                    json!({"body": "This room has been replaced", "replacement_room": replacement}),
                ),
                None,
            )
        };
        let mut predecessor = json!({"room_id": room_id});
        if let Some(new_id) = &chosen_id {
            predecessor["event_id"] = json!(tombstone(new_id)?.event_id);
        } else {
            let now = self.stream_now();
            let latest = self.page(room_id, now, ruma::api::Direction::Backward, 1, now, None)?;
            if let Some((_, last)) = latest.first() {
                predecessor["event_id"] = json!(last.event_id);
            }
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
                // Enough to set the new room up; a higher level (500, say) is kept.
                let level = users.get(user.as_str()).and_then(Value::as_i64).unwrap_or(0).max(100);
                users.insert(user.to_string(), json!(level));
            }
        }
        let canonical = self
            .state_event(room_id, &StateEventType::RoomCanonicalAlias, "")?
            .map(|p| p.content_value())
            .filter(|c| c.as_object().is_some_and(|m| !m.is_empty()));
        let bans: Vec<(String, Value)> = self
            .state_events(&*self.current_state_map(room_id)?)?
            .into_iter()
            .filter(|p| p.kind.to_string() == "m.room.member")
            .filter(|p| p.content_value().get("membership").and_then(Value::as_str) == Some("ban"))
            .filter_map(|p| Some((p.state_key.clone()?, p.content_value())))
            .collect();

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
                room_id: chosen_id.clone(),
            },
        )?;

        // Bans carry over (as on Synapse): whoever was banned stays out.
        for (target, content) in bans {
            if let Err(e) = self.append_local(&new_room, user, NewEvent::state("m.room.member", target, content), None)
            {
                tracing::info!(%new_room, error = %e, "a ban could not be copied to the upgraded room");
            }
        }
        // Every alias of this server follows the room, and so does the canonical alias
        // event (its alternatives included); the old room's is emptied. A room listed in
        // the directory is replaced there by its successor.
        self.move_aliases_and_listing(room_id, &new_room)?;
        if let Some(content) = canonical {
            self.append_local(&new_room, user, NewEvent::state("m.room.canonical_alias", "", content), None)?;
            self.append_local(room_id, user, NewEvent::state("m.room.canonical_alias", "", json!({})), None)?;
        }

        if chosen_id.is_none() {
            tombstone(&new_room)?;
        }
        // Only moderators keep speaking (and inviting) in the old room: at least 50, and
        // above what everyone has (as Synapse).
        let mut old_power = match self.power_levels(room_id)? {
            Value::Object(m) => m,
            _ => power,
        };
        let floor = old_power.get("users_default").and_then(Value::as_i64).unwrap_or(0).saturating_add(1).max(50);
        let restricted = |v: Option<&Value>| json!(v.and_then(Value::as_i64).unwrap_or(0).max(floor));
        let (events_default, invite) =
            (restricted(old_power.get("events_default")), restricted(old_power.get("invite")));
        old_power.insert("events_default".into(), events_default);
        old_power.insert("invite".into(), invite);
        self.append_local(room_id, user, NewEvent::state("m.room.power_levels", "", Value::Object(old_power)), None)?;
        Ok(new_room)
    }

    /// A local user joined `new`, which continues `old` (its create event names `old` as
    /// predecessor, and `old`'s tombstone names `new`): when the upgrade was made on
    /// another server, this server's aliases of `old` move to `new`, and so does its entry
    /// in this server's directory (as Synapse does on the first join). Nothing moves for a
    /// room whose predecessor does not name it in return: a room cannot take another's
    /// aliases by claiming to continue it.
    pub fn follow_remote_upgrade(&self, old: &RoomId, new: &RoomId) -> Result<()> {
        let replacement = self
            .state_event(old, &StateEventType::RoomTombstone, "")?
            .and_then(|t| t.content_value()["replacement_room"].as_str().map(str::to_owned));
        if replacement.as_deref() != Some(new.as_str()) {
            return Ok(());
        }
        self.move_aliases_and_listing(old, new)
    }

    /// Points this server's aliases of `old` at `new`, and lists `new` in the directory in
    /// `old`'s place if `old` was listed.
    fn move_aliases_and_listing(&self, old: &RoomId, new: &RoomId) -> Result<()> {
        let moved = self.local_aliases(old)?;
        if !moved.is_empty() {
            let mut batch = Batch::new();
            for alias in &moved {
                ALIASES.put(&mut batch, alias.as_str(), &new.to_string());
            }
            self.store.write(batch)?;
        }
        if self.is_published(old)? {
            self.set_published(new, true)?;
            self.set_published(old, false)?;
        }
        Ok(())
    }
}
