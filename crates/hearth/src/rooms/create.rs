//! `createRoom`: the sequence of events that makes a room, as the spec orders it.
//!
//! create → creator's join → power levels (with the client's override) → canonical alias
//! → the preset's join rules, history visibility and guest access → `initial_state` →
//! name → topic → invites.

use ruma::{OwnedRoomId, OwnedUserId, RoomVersionId, UserId};
use serde_json::{json, Map, Value};

use super::{append::NewEvent, Rooms, ALIASES};
use crate::{
    error::{Error, Result},
    store::Batch,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    PrivateChat,
    TrustedPrivateChat,
    PublicChat,
}

/// A validated `createRoom` request.
#[derive(Debug, Clone)]
pub struct CreateRoom {
    pub version: RoomVersionId,
    pub creation_content: Map<String, Value>,
    pub preset: Preset,
    pub name: Option<String>,
    pub topic: Option<String>,
    pub alias_localpart: Option<String>,
    pub invite: Vec<OwnedUserId>,
    pub is_direct: bool,
    /// (type, state key, content)
    pub initial_state: Vec<(String, String, Map<String, Value>)>,
    pub power_level_override: Option<Map<String, Value>>,
    /// The creator's join event content (display name, avatar).
    pub creator_member_content: Map<String, Value>,
    /// The id to give the room (versions before 12 only; a fresh one when `None`).
    pub room_id: Option<OwnedRoomId>,
}

/// Event types whose state needs power 100 (or 50) by default, as Synapse and Conduit set.
fn default_power_levels(
    creator: &UserId,
    explicit_creator: bool,
    invite: &[OwnedUserId],
    preset: Preset,
) -> Map<String, Value> {
    let mut users = Map::new();
    if explicit_creator {
        users.insert(creator.to_string(), json!(100));
    }
    if preset == Preset::TrustedPrivateChat {
        for u in invite {
            users.insert(u.to_string(), json!(100));
        }
    }
    match json!({
        "users": users,
        "users_default": 0,
        "events": {
            "m.room.name": 50,
            "m.room.power_levels": 100,
            "m.room.history_visibility": 100,
            "m.room.canonical_alias": 50,
            "m.room.avatar": 50,
            "m.room.tombstone": 100,
            "m.room.server_acl": 100,
            "m.room.encryption": 100
        },
        "events_default": 0,
        "state_default": 50,
        "ban": 50,
        "kick": 50,
        "redact": 50,
        "invite": 0,
        "notifications": {"room": 50}
    }) {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

impl Rooms {
    /// Creates a room; returns its id.
    pub fn create_room(&self, creator: &UserId, req: CreateRoom) -> Result<OwnedRoomId> {
        let rules = req.version.rules().ok_or_else(|| {
            Error::matrix(http::StatusCode::BAD_REQUEST, "M_UNSUPPORTED_ROOM_VERSION", "Unsupported room version")
        })?;
        let alias = match &req.alias_localpart {
            Some(local) => {
                let alias = format!("#{local}:{}", self.server_name);
                ruma::RoomAliasId::parse(&alias).map_err(|_| Error::invalid_param("Invalid room alias"))?;
                if local.contains(':') || local.is_empty() {
                    return Err(Error::invalid_param("Invalid room alias"));
                }
                if self.resolve_alias(&alias)?.is_some() {
                    return Err(Error::matrix(
                        http::StatusCode::BAD_REQUEST,
                        "M_ROOM_IN_USE",
                        "Room alias already taken",
                    ));
                }
                Some(alias)
            }
            None => None,
        };

        let mut create = req.creation_content.clone();
        create.insert("room_version".into(), json!(req.version.as_str()));
        if !rules.authorization.use_room_create_sender {
            // Before v11 the creator is named in the content.
            create.insert("creator".into(), json!(creator));
        }
        let create_pdu = self.append_create(&req.version, creator, create, req.room_id.clone())?;
        let room_id = create_pdu.room_id.clone();

        let send = |new: NewEvent| self.append_local(&room_id, creator, new, None);
        send(NewEvent::state("m.room.member", creator.as_str(), {
            let mut c = req.creator_member_content.clone();
            c.insert("membership".into(), json!("join"));
            Value::Object(c)
        }))?;

        let mut power = default_power_levels(
            creator,
            !rules.authorization.explicitly_privilege_room_creators,
            &req.invite,
            req.preset,
        );
        if let Some(over) = &req.power_level_override {
            for (k, v) in over {
                power.insert(k.clone(), v.clone());
            }
        }
        send(NewEvent::state("m.room.power_levels", "", Value::Object(power)))?;

        if let Some(alias) = &alias {
            send(NewEvent::state("m.room.canonical_alias", "", json!({"alias": alias})))?;
            let mut batch = Batch::new();
            ALIASES.put(&mut batch, alias, &room_id.to_string());
            self.store.write(batch)?;
        }

        // As Synapse's presets: a public room has no guest access event (guests are
        // forbidden without one), private ones let guests join.
        let (join_rule, guest) = match req.preset {
            Preset::PublicChat => ("public", None),
            _ => ("invite", Some("can_join")),
        };
        // What `initial_state` sets replaces the preset's event (as Synapse), rather than
        // following it: clients reading the first event of a type see the chosen one.
        let preset_wanted =
            |kind: &str| !req.initial_state.iter().any(|(k, key, _)| k.as_str() == kind && key.is_empty());
        if preset_wanted("m.room.join_rules") {
            send(NewEvent::state("m.room.join_rules", "", json!({"join_rule": join_rule})))?;
        }
        if preset_wanted("m.room.history_visibility") {
            send(NewEvent::state("m.room.history_visibility", "", json!({"history_visibility": "shared"})))?;
        }
        if let Some(guest) = guest.filter(|_| preset_wanted("m.room.guest_access")) {
            send(NewEvent::state("m.room.guest_access", "", json!({"guest_access": guest})))?;
        }

        for (kind, key, content) in &req.initial_state {
            send(NewEvent::state(kind.clone(), key.clone(), Value::Object(content.clone())))?;
        }
        if let Some(name) = &req.name {
            send(NewEvent::state("m.room.name", "", json!({"name": name})))?;
        }
        if let Some(topic) = &req.topic {
            send(NewEvent::state("m.room.topic", "", json!({"topic": topic})))?;
        }
        // Users of other servers are invited through their server, by the caller.
        for user in req.invite.iter().filter(|u| u.server_name() == self.server_name) {
            let mut content = json!({"membership": "invite"});
            if req.is_direct {
                content["is_direct"] = json!(true);
            }
            send(NewEvent::state("m.room.member", user.as_str(), content))?;
        }
        Ok(room_id)
    }
}
