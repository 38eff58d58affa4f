//! State resolution v1, the algorithm of room version 1 (ruma implements only v2). From
//! the spec ("Room version 1", state resolution):
//!
//! 1. R starts as the union of the states, less every (type, state key) they disagree on.
//! 2. Conflicting `m.room.power_levels` events, sorted by ascending depth then descending
//!    SHA-1 of the event id: the first goes into R, then each next one that the auth rules
//!    allow in R replaces it, until one is not allowed.
//! 3. The same for `m.room.join_rules`, then for each conflicted `m.room.member` key.
//! 4. Every other conflict: the event of highest depth (then lowest SHA-1 of its id) that
//!    the auth rules allow in R.
//!
//! "Allowed in R" is the state-dependent auth check against R ([`super::authorize`]).

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use ruma::{events::StateEventType, room_version_rules::RoomVersionRules, EventId, OwnedEventId};
use sha1::{Digest, Sha1};

use super::{authorize::check_state, pdu::Pdu, resolve::StateEvents};
use crate::error::{Error, Result};

type Key = (StateEventType, String);

/// Resolves `states` (at least two, distinct) with v1; `fetch` finds an event by id.
pub fn resolve(
    rules: &RoomVersionRules,
    states: &[StateEvents],
    fetch: impl Fn(&EventId) -> Option<Arc<Pdu>>,
) -> Result<StateEvents> {
    let mut all: BTreeMap<Key, BTreeSet<OwnedEventId>> = BTreeMap::new();
    for state in states {
        for (key, id) in state {
            all.entry(key.clone()).or_default().insert(id.clone());
        }
    }
    let mut resolved = StateEvents::new();
    let mut conflicted: BTreeMap<Key, Vec<Arc<Pdu>>> = BTreeMap::new();
    for (key, ids) in all {
        if ids.len() == 1 {
            resolved.extend(ids.into_iter().map(|id| (key.clone(), id)));
            continue;
        }
        let mut events = Vec::with_capacity(ids.len());
        for id in &ids {
            events.push(fetch(id).ok_or_else(|| Error::internal(format!("state event {id} is not here")))?);
        }
        conflicted.insert(key, events);
    }
    let of = |kind: StateEventType| -> Vec<Key> { conflicted.keys().filter(|k| k.0 == kind).cloned().collect() };
    let (pl, jr, members) =
        (of(StateEventType::RoomPowerLevels), of(StateEventType::RoomJoinRules), of(StateEventType::RoomMember));
    for key in pl.iter().chain(&jr).chain(&members) {
        if let Some(events) = conflicted.remove(key) {
            let chosen = iterative(rules, &resolved, events, &fetch);
            resolved.insert(key.clone(), chosen);
        }
    }
    for (key, events) in conflicted {
        resolved.insert(key, first_allowed(rules, &resolved, events, &fetch));
    }
    Ok(resolved)
}

fn sha1_hex(id: &EventId) -> String {
    Sha1::digest(id.as_str().as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether the auth rules allow `pdu` in the state `r`.
fn allowed(
    rules: &RoomVersionRules,
    r: &StateEvents,
    pdu: &Pdu,
    fetch: &impl Fn(&EventId) -> Option<Arc<Pdu>>,
) -> bool {
    let lookup = |kind: &StateEventType, key: &str| r.get(&(kind.clone(), key.to_owned())).and_then(|id| fetch(id));
    check_state(rules, pdu, lookup).is_ok()
}

/// Steps 2 and 3: ascending depth, then descending SHA-1; the first, then each next one
/// allowed in R (with the one before in place), until one is not.
fn iterative(
    rules: &RoomVersionRules,
    r: &StateEvents,
    mut events: Vec<Arc<Pdu>>,
    fetch: &impl Fn(&EventId) -> Option<Arc<Pdu>>,
) -> OwnedEventId {
    events.sort_by_cached_key(|e| (e.depth, std::cmp::Reverse(sha1_hex(&e.event_id))));
    let mut r = r.clone();
    let mut chosen = events[0].event_id.clone();
    if let Some(key) = state_key_of(&events[0]) {
        r.insert(key, chosen.clone());
    }
    for event in &events[1..] {
        if !allowed(rules, &r, event, fetch) {
            break;
        }
        chosen = event.event_id.clone();
        if let Some(key) = state_key_of(event) {
            r.insert(key, chosen.clone());
        }
    }
    chosen
}

/// Step 4: highest depth, then lowest SHA-1, allowed in R; the first in that order when
/// none is.
fn first_allowed(
    rules: &RoomVersionRules,
    r: &StateEvents,
    mut events: Vec<Arc<Pdu>>,
    fetch: &impl Fn(&EventId) -> Option<Arc<Pdu>>,
) -> OwnedEventId {
    events.sort_by_cached_key(|e| (std::cmp::Reverse(e.depth), sha1_hex(&e.event_id)));
    events.iter().find(|e| allowed(rules, r, e, fetch)).unwrap_or(&events[0]).event_id.clone()
}

fn state_key_of(pdu: &Pdu) -> Option<Key> {
    Some((StateEventType::from(pdu.kind.to_string()), pdu.state_key.clone()?))
}

#[cfg(test)]
mod tests {
    use ruma::{owned_user_id, RoomVersionId};
    use serde_json::json;

    use crate::{rooms::build::NewEvent, store::Backend, Config, Services};

    /// States of one room at different points stand in for branches: what v1 keeps of
    /// each conflict follows the spec's order (power levels and members iteratively from
    /// the lowest depth, other events the highest allowed).
    #[test]
    fn conflicts_resolve_as_the_spec_orders_them() {
        let dir = tempfile::tempdir().expect("dir");
        let config = Config {
            server_name: "v1.test".try_into().expect("name"),
            database_path: dir.path().join("data"),
            database_backend: Backend::Sqlite,
            database_fsync: false,
            ..Config::default()
        };
        let s = Services::open(config).expect("open");
        let alice = owned_user_id!("@alice:v1.test");
        let bob = owned_user_id!("@bob:v1.test");
        let content = json!({"creator": alice}).as_object().cloned().expect("object");
        let room = s.rooms.append_create(&RoomVersionId::V1, &alice, content, None).expect("create").room_id;
        let send = |sender: &ruma::UserId, kind: &str, key: &str, content: serde_json::Value| {
            s.rooms.append_local(&room, sender, NewEvent::state(kind, key, content), None).expect("append").event_id
        };
        send(&alice, "m.room.member", alice.as_str(), json!({"membership": "join"}));
        let pl = |level: i64| json!({"users": {alice.as_str(): 100, bob.as_str(): level}});
        let pl_a = send(&alice, "m.room.power_levels", "", pl(0));
        send(&alice, "m.room.join_rules", "", json!({"join_rule": "public"}));
        let name_a = send(&alice, "m.room.name", "", json!({"name": "one"}));
        let join_b = send(&bob, "m.room.member", bob.as_str(), json!({"membership": "join"}));
        let state_a = s.rooms.state_events_of(&s.rooms.state_after(&join_b).expect("state")).expect("ids");
        let pl_b = send(&alice, "m.room.power_levels", "", pl(50));
        let name_b = send(&alice, "m.room.name", "", json!({"name": "two"}));
        let leave_b = send(&bob, "m.room.member", bob.as_str(), json!({"membership": "leave"}));
        let state_b = s.rooms.state_events_of(&s.rooms.state_after(&leave_b).expect("state")).expect("ids");

        let resolved = s.rooms.resolve_states(&RoomVersionId::V1, vec![state_a, state_b]).expect("resolve");
        let get = |kind: ruma::events::StateEventType, key: &str| resolved[&(kind, key.to_owned())].clone();
        use ruma::events::StateEventType as T;
        assert_eq!(get(T::RoomPowerLevels, ""), pl_b, "the later power levels are allowed after the earlier");
        assert_eq!(get(T::RoomName, ""), name_b, "the deepest allowed name");
        assert_eq!(get(T::RoomMember, bob.as_str()), leave_b, "bob's leave follows his join");
        assert_ne!((pl_a, name_a), (pl_b.clone(), name_b.clone()));
    }
}
