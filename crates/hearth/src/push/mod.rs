//! Push rules: each user's ruleset (stored as `m.push_rules` account data, the spec's
//! default ruleset until they change it), and the [`Push`] service that keeps parsed
//! rulesets and running unread counts (see [`unread`]) in memory for sync. The parts of an
//! event that rules read live with the timeline rows that store them
//! ([`crate::rooms::push_fields`]), so `push` reads `rooms` and never the other way.

pub mod marks;
pub mod notifications;
pub mod rules;
pub mod sender;
pub mod unread;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
};

use ruma::{
    events::room::member::MembershipState,
    events::StateEventType,
    power_levels::NotificationPowerLevels,
    push::{PushConditionPowerLevelsCtx, PushConditionRoomCtx, Ruleset},
    room_version_rules::RoomPowerLevelsRules,
    Int, OwnedUserId, RoomId, UInt, UserId,
};
use serde_json::{Map, Value};

use crate::rooms::push_fields::PushFields;
use crate::{
    error::{Error, Result},
    rooms::Rooms,
    users::account_data::AccountData,
};

/// The user's rules as stored (the `global` scope of `m.push_rules`; the spec's defaults
/// until they change them), every kind present (see [`rules`]).
pub fn stored_rules(account_data: &AccountData, user: &UserId) -> Result<Map<String, Value>> {
    Ok(rules::normalized(own_rules(account_data, user)?.unwrap_or_else(|| rules::server_default(user))))
}

/// The rules the user stored (the `global` scope of `m.push_rules`), if they changed any.
fn own_rules(account_data: &AccountData, user: &UserId) -> Result<Option<Map<String, Value>>> {
    Ok(account_data.get(user, None, "m.push_rules")?.and_then(|c| match c.get("global") {
        Some(Value::Object(g)) => Some(g.clone()),
        _ => None,
    }))
}

/// The class and the fields read of the default rules (of every user who has not changed
/// theirs), worked out once.
fn default_class() -> (ClassKey, PushFields) {
    static DEFAULT: std::sync::OnceLock<(ClassKey, PushFields)> = std::sync::OnceLock::new();
    DEFAULT
        .get_or_init(|| {
            let user = ruma::user_id!("@hearth-default-rules-class:hearth.invalid");
            let stored = rules::normalized(rules::server_default(user));
            (class_key(&stored, user), PushFields::of(&rules::default_ruleset(user)))
        })
        .clone()
}

/// The user's ruleset as ruma evaluates it.
pub fn ruleset(account_data: &AccountData, user: &UserId) -> Result<Ruleset> {
    Ok(rules::to_ruleset(&stored_rules(account_data, user)?))
}

pub fn save_rules(account_data: &AccountData, user: &UserId, rules: Map<String, Value>) -> Result<()> {
    let mut content = Map::new();
    content.insert("global".into(), Value::Object(rules));
    account_data.set(user, None, "m.push_rules", content)
}

pub(crate) fn int(v: &Value) -> Option<i64> {
    v.as_i64().or_else(|| v.as_str().and_then(|s| s.parse().ok()))
}

/// The context push conditions are evaluated in.
pub(crate) fn room_context(rooms: &Rooms, room_id: &RoomId, user: &UserId) -> Result<PushConditionRoomCtx> {
    let members = rooms.members_shared(room_id, &MembershipState::Join)?.len() as u64;
    let display_name = rooms
        .state_event(room_id, &StateEventType::RoomMember, user.as_str())?
        .and_then(|m| m.content_value().get("displayname").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_else(|| user.localpart().to_owned());
    let mut ctx = PushConditionRoomCtx::new(
        room_id.to_owned(),
        UInt::new(members).unwrap_or_default(),
        user.to_owned(),
        display_name,
    );
    let pl = rooms.power_levels(room_id)?;
    let mut users = BTreeMap::new();
    if let Some(map) = pl.get("users").and_then(Value::as_object) {
        for (u, level) in map {
            if let (Ok(u), Some(l)) = (OwnedUserId::try_from(u.as_str()), int(level)) {
                users.insert(u, Int::new(l).unwrap_or_default());
            }
        }
    }
    let users_default = pl.get("users_default").and_then(int).and_then(Int::new).unwrap_or_default();
    let notifications: NotificationPowerLevels =
        pl.get("notifications").cloned().and_then(|n| serde_json::from_value(n).ok()).unwrap_or_default();
    let record = rooms.known_room(room_id)?;
    let rules = record.version.rules().ok_or_else(|| Error::internal("unsupported room version"))?;
    let creators: Vec<OwnedUserId> =
        rooms.state_event(room_id, &StateEventType::RoomCreate, "")?.map(|c| vec![c.sender]).unwrap_or_default();
    ctx.power_levels = Some(PushConditionPowerLevelsCtx::new(
        users,
        users_default,
        notifications,
        RoomPowerLevelsRules::new(&rules.authorization, creators),
    ));
    Ok(ctx)
}

/// (version, ruleset, the fields it reads, its class: see [`class_key`]).
type KeptRuleset = (u64, Arc<Ruleset>, Arc<PushFields>, ClassKey);

/// A rules class ([`rules_class`]) as 128 bits of the SHA-256 of its text: the push
/// follower looks a class up once per member and event, and the text is the whole ruleset
/// (kilobytes), whose hashing was 8 % of a message's CPU in rooms of 100 members.
pub type ClassKey = [u8; 16];

/// The [`ClassKey`] of a user's stored rules.
pub(crate) fn class_key(stored: &Map<String, Value>, user: &UserId) -> ClassKey {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(rules_class(stored, user).as_bytes());
    let mut key = [0u8; 16];
    key.copy_from_slice(&digest[..16]);
    key
}

/// The user's stored rules with every `pattern` or `value` that is exactly their own user
/// id or localpart replaced by a placeholder, as text. Users of one class have the same
/// rules but for their own identity, so for an event that names neither of them (see
/// [`notifications`]) their rules give the same actions.
pub(crate) fn rules_class(stored: &Map<String, Value>, user: &UserId) -> String {
    fn walk(v: &mut Value, user: &UserId) {
        match v {
            Value::Object(map) => {
                for (key, value) in map.iter_mut() {
                    let own = matches!(value.as_str(), Some(s) if s == user.as_str() || s == user.localpart());
                    if own && (key == "pattern" || key == "value") {
                        *value = Value::String("\u{0}".into());
                    } else {
                        walk(value, user);
                    }
                }
            }
            Value::Array(list) => list.iter_mut().for_each(|v| walk(v, user)),
            _ => {}
        }
    }
    let mut rules = Value::Object(stored.clone());
    walk(&mut rules, user);
    rules.to_string()
}

/// Parsed rulesets and running unread counts, cached per user (and room) for sync.
#[derive(Default)]
pub struct Push {
    /// User → (version of their `m.push_rules` as [`AccountData::changed_since_start`]
    /// counts it; the ruleset; the fields it reads, one shared value for equal sets).
    rulesets: Mutex<HashMap<OwnedUserId, KeptRuleset>>,
    unread: unread::UnreadCache,
    /// The span of the stream that unread marks cover (the follower moves it).
    pub(crate) marks: marks::Coverage,
    trimmed: marks::Trimmed,
}

impl Push {
    /// The user's ruleset and a version that changes whenever they change it.
    ///
    /// Parsed once and kept: every change goes through [`AccountData::set`], which records
    /// its stream position in memory, so a kept ruleset is known current without reading
    /// (and parsing) the stored rules on every sync.
    pub fn ruleset(&self, account_data: &AccountData, user: &UserId) -> Result<KeptRuleset> {
        let version = account_data.changed_since_start(user, "m.push_rules");
        if let Some(kept) = self.rulesets.lock().unwrap_or_else(|e| e.into_inner()).get(user) {
            if kept.0 == version {
                return Ok(kept.clone());
            }
        }
        let (rules, class, fields) = match own_rules(account_data, user)? {
            Some(own) => {
                let stored = rules::normalized(own);
                let rules = rules::to_ruleset(&stored);
                let fields = PushFields::of(&rules);
                (rules, class_key(&stored, user), fields)
            }
            // The spec's defaults: the same for every user but for their own identity, so
            // of one class, reading the same fields.
            None => {
                let (class, fields) = default_class();
                (rules::default_ruleset(user), class, fields)
            }
        };
        let rules = Arc::new(rules);
        let mut rulesets = self.rulesets.lock().unwrap_or_else(|e| e.into_inner());
        // Users with the same fields share one value: events flattened for one of them
        // are kept for all (see `Rooms::page_for_push`).
        let fields =
            rulesets.values().map(|k| &k.2).find(|f| ***f == fields).cloned().unwrap_or_else(|| Arc::new(fields));
        let kept = (version, rules, fields, class);
        rulesets.insert(user.to_owned(), kept.clone());
        Ok(kept)
    }

    /// The push condition context of a room for a user (cached per room state).
    pub fn context(&self, rooms: &Rooms, room_id: &RoomId, user: &UserId) -> Result<Arc<PushConditionRoomCtx>> {
        self.unread.context(rooms, room_id, user)
    }

    /// Unread counts of `room_id` for `user` up to stream position `until` (see [`unread`]).
    pub fn unread_counts(
        &self,
        rooms: &Rooms,
        account_data: &AccountData,
        room_id: &RoomId,
        user: &UserId,
        until: u64,
        split_threads: bool,
    ) -> Result<unread::UnreadCounts> {
        let (version, rules, fields, _) = self.ruleset(account_data, user)?;
        let marks = self.marks.span();
        self.unread.counts(rooms, (&rules, &fields), version, room_id, user, until, split_threads, marks)
    }

    /// Deletes the room's unread marks that can count for none of `members` (its local
    /// members) any more, if the room is due (see [`marks`]).
    pub(crate) fn trim_marks(&self, rooms: &Rooms, room_id: &RoomId, members: &[OwnedUserId]) -> Result<()> {
        if !self.trimmed.due(room_id, members.len()) {
            return Ok(());
        }
        let mut readers = Vec::with_capacity(members.len());
        for member in members {
            let receipts = unread::ReadPositions::load(rooms, room_id, member)?;
            let joined_at = unread::joined_at(rooms, room_id, member)?;
            readers.push(marks::Reader {
                joined_at,
                read_up_to: Box::new(move |thread: Option<&ruma::OwnedEventId>| receipts.read_up_to(thread)),
            });
        }
        self.trimmed.trim(&rooms.store, room_id, &readers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_rules_of_two_users_are_one_class() {
        let (bob, dan) = (ruma::user_id!("@bob:x.test"), ruma::user_id!("@dan:x.test"));
        let (mut b, d) = (rules::server_default(bob), rules::server_default(dan));
        assert_eq!(rules_class(&b, bob), rules_class(&d, dan));
        assert_ne!(rules_class(&b, bob), rules_class(&b, dan), "the identity replaced is the user's own");
        let body = match serde_json::json!({"pattern": "cheese", "actions": ["notify"]}) {
            Value::Object(m) => m,
            _ => unreachable!(),
        };
        let cheese = rules::NewRule { kind: "content", rule_id: "cheese", body: &body, before: None, after: None };
        rules::insert(&mut b, cheese).expect("a keyword rule");
        assert_ne!(rules_class(&b, bob), rules_class(&d, dan), "a keyword of one's own is another class");
    }
}
