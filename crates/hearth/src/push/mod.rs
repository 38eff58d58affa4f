//! Push rules: each user's ruleset (stored as `m.push_rules` account data, the spec's
//! default ruleset until they change it) and the unread counts sync reports per room.
//!
//! Unread counts are computed when a sync needs them: the events after the user's latest
//! `m.read` receipt (at most [`MAX_COUNTED`]) are evaluated against the user's rules, with
//! ruma's evaluator, in the room's context (member count, display name, power levels).

use std::collections::BTreeMap;

use futures_util::FutureExt;
use ruma::{
    api::Direction,
    events::StateEventType,
    power_levels::NotificationPowerLevels,
    push::{PushConditionPowerLevelsCtx, PushConditionRoomCtx, Ruleset},
    room_version_rules::RoomPowerLevelsRules,
    serde::Raw,
    Int, OwnedUserId, RoomId, UInt, UserId,
};
use serde_json::{json, Value};

use crate::{
    error::{Error, Result},
    rooms::{receipts::RECEIPTS, Rooms},
    users::account_data::AccountData,
};

/// Most events looked at to count a room's unread notifications.
pub const MAX_COUNTED: usize = 1000;

/// The user's ruleset.
pub fn ruleset(account_data: &AccountData, user: &UserId) -> Result<Ruleset> {
    Ok(account_data
        .get(user, None, "m.push_rules")?
        .and_then(|c| c.get("global").cloned())
        .and_then(|g| serde_json::from_value(g).ok())
        .unwrap_or_else(|| Ruleset::server_default(user)))
}

pub fn save_ruleset(account_data: &AccountData, user: &UserId, rules: &Ruleset) -> Result<()> {
    let content = json!({"global": rules});
    account_data.set(user, None, "m.push_rules", content.as_object().cloned().unwrap_or_default())
}

/// The `m.push_rules` account data event a first sync must carry.
pub fn rules_event(account_data: &AccountData, user: &UserId) -> Result<Value> {
    Ok(json!({"type": "m.push_rules", "content": {"global": ruleset(account_data, user)?}}))
}

fn int(v: &Value) -> Option<i64> {
    v.as_i64().or_else(|| v.as_str().and_then(|s| s.parse().ok()))
}

/// The context push conditions are evaluated in.
fn room_context(rooms: &Rooms, room_id: &RoomId, user: &UserId) -> Result<PushConditionRoomCtx> {
    let members = rooms.members(room_id, "join")?.len() as u64;
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

/// (notification count, highlight count) of a room for a user.
pub fn unread_counts(
    rooms: &Rooms,
    rules: &Ruleset,
    room_id: &RoomId,
    user: &UserId,
    until: u64,
) -> Result<(u64, u64)> {
    // The newest of the user's unthreaded or main-thread m.read receipts.
    let mut read_pos = 0;
    for key in ["m.read|", "m.read|main"] {
        if let Some(r) = RECEIPTS.get(&rooms.store, (room_id.as_str(), user.as_str(), key))? {
            if let Some(meta) = rooms.event_meta(&r.event_id)? {
                read_pos = read_pos.max(meta.stream);
            }
        }
    }
    // Own events count as read up to themselves.
    let page = rooms.page(room_id, read_pos, Direction::Forward, MAX_COUNTED, until, None)?;
    let start = page.iter().rposition(|(_, p)| p.sender == user).map_or(0, |i| i + 1);
    let ctx = room_context(rooms, room_id, user)?;
    let (mut notes, mut highlights) = (0, 0);
    for (_, pdu) in &page[start..] {
        let raw: Raw<Value> = match serde_json::value::to_raw_value(&pdu.to_client_json(Default::default())) {
            Ok(r) => Raw::from_json(r),
            Err(_) => continue,
        };
        // ruma's evaluator is async only for an optional feature; it is ready at once.
        let Some(actions) = rules.get_actions(&raw, &ctx).now_or_never() else { continue };
        if actions.iter().any(|a| a.should_notify()) {
            notes += 1;
        }
        if actions.iter().any(|a| a.is_highlight()) {
            highlights += 1;
        }
    }
    Ok((notes, highlights))
}
