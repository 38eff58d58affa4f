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

/// Unread counts of a room: the main timeline, and per thread root when asked to split.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct UnreadCounts {
    pub notifications: u64,
    pub highlights: u64,
    pub threads: BTreeMap<ruma::OwnedEventId, (u64, u64)>,
}

fn receipt_pos(rooms: &Rooms, room_id: &RoomId, user: &UserId, key: &str) -> Result<u64> {
    Ok(match RECEIPTS.get(&rooms.store, (room_id.as_str(), user.as_str(), key))? {
        Some(r) => rooms.event_meta(&r.event_id)?.map_or(0, |m| m.stream),
        None => 0,
    })
}

/// The thread an event belongs to (`m.relates_to` with `rel_type: m.thread`).
fn thread_root(event: &Value) -> Option<ruma::OwnedEventId> {
    let rel = event.get("content")?.get("m.relates_to")?;
    if rel.get("rel_type")?.as_str()? != "m.thread" {
        return None;
    }
    ruma::OwnedEventId::try_from(rel.get("event_id")?.as_str()?).ok()
}

/// Unread notification and highlight counts of a room for a user, evaluated with their
/// push rules over the events after their read receipts. With `split_threads`, events in
/// threads are counted per thread against that thread's receipt (MSC3773).
pub fn unread_counts(
    rooms: &Rooms,
    rules: &Ruleset,
    room_id: &RoomId,
    user: &UserId,
    until: u64,
    split_threads: bool,
) -> Result<UnreadCounts> {
    let unthreaded = receipt_pos(rooms, room_id, user, "m.read|")?;
    let main_read = unthreaded.max(receipt_pos(rooms, room_id, user, "m.read|main")?);
    let page = rooms.page(room_id, unthreaded, Direction::Forward, MAX_COUNTED, until, None)?;
    let ctx = room_context(rooms, room_id, user)?;
    let mut counts = UnreadCounts::default();
    // Last position read per bucket (None = main timeline).
    let mut read: BTreeMap<Option<ruma::OwnedEventId>, u64> = BTreeMap::new();
    read.insert(None, main_read);
    for (pos, pdu) in &page {
        let event = pdu.to_client_json(Default::default());
        let bucket = if split_threads { thread_root(&event) } else { None };
        if !read.contains_key(&bucket) {
            let thread_read = match &bucket {
                Some(root) => unthreaded.max(receipt_pos(rooms, room_id, user, &format!("m.read|{root}"))?),
                None => main_read,
            };
            read.insert(bucket.clone(), thread_read);
        }
        if pdu.sender == user {
            // Sending counts as having read everything before it in that timeline.
            match &bucket {
                None => (counts.notifications, counts.highlights) = (0, 0),
                Some(root) => {
                    counts.threads.remove(root);
                }
            }
            read.insert(bucket, *pos);
            continue;
        }
        if *pos <= read[&bucket] {
            continue;
        }
        let raw: Raw<Value> = match serde_json::value::to_raw_value(&event) {
            Ok(r) => Raw::from_json(r),
            Err(_) => continue,
        };
        // ruma's evaluator is async only for an optional feature; it is ready at once.
        let Some(actions) = rules.get_actions(&raw, &ctx).now_or_never() else { continue };
        let notify = u64::from(actions.iter().any(|a| a.should_notify()));
        let highlight = u64::from(actions.iter().any(|a| a.is_highlight()));
        match bucket {
            None => {
                counts.notifications += notify;
                counts.highlights += highlight;
            }
            Some(root) => {
                let entry = counts.threads.entry(root).or_default();
                entry.0 += notify;
                entry.1 += highlight;
            }
        }
    }
    Ok(counts)
}
