//! Resolve: the state of a room where its graph forks. Two servers that sent at the same
//! time leave two branches; the state after both is what ruma's state resolution v2 (and
//! v2.1 for room version 12, which also considers the conflicted state subgraph) makes of
//! the states of the branches, given the full auth chain of every event in them, which
//! this file computes from what the room holds.
//!
//! Room version 1 uses state resolution v1, which ruma does not implement: Hearth's own is
//! [`super::resolve_v1`].
//!
//! States here are maps of (event type, state key) → event id ([`StateEvents`]), the form
//! state resolution and federation speak; [`Rooms::state_events_of`] turns a stored state
//! (short ids) into one.

use std::{
    collections::{BTreeSet, HashMap, HashSet, VecDeque},
    sync::Arc,
};

use ruma::{
    events::StateEventType,
    state_res::{self, utils::event_id_set::EventIdSet},
    EventId, OwnedEventId, RoomVersionId,
};

use super::{build::rules_for, pdu::Pdu, state::StateMap, Rooms};
use crate::error::{Error, Result};

/// A room state by event ids.
pub type StateEvents = HashMap<(StateEventType, String), OwnedEventId>;

/// Most events an auth chain walk visits. A real room's auth chain holds its create event,
/// its power levels and join rules history, and one membership history per member: far
/// below this. A walk that reaches it stops with an error rather than reading without end.
pub const MAX_AUTH_CHAIN: usize = 200_000;

/// Whether Hearth joins and serves rooms of `version` over federation: every version it
/// implements (1 to 12; version 1 with [`super::resolve_v1`]).
pub fn federates(version: &RoomVersionId) -> bool {
    version.rules().is_some()
}

impl Rooms {
    /// A stored state as event ids.
    pub fn state_events_of(&self, map: &StateMap) -> Result<StateEvents> {
        let mut out = HashMap::with_capacity(map.len());
        for (&key, &event) in map {
            out.insert(self.state.state_key_pair(key)?, self.state.event_id(event)?);
        }
        Ok(out)
    }

    /// The full auth chain of `events`: every event reachable through `auth_events`, the
    /// events themselves excluded. Events this server does not hold are left out (state
    /// resolution does not honour events it cannot read).
    pub fn auth_chain(&self, events: impl IntoIterator<Item = OwnedEventId>) -> Result<HashSet<OwnedEventId>> {
        self.auth_chain_with(events, None)
    }

    /// The event `id`: `pending` when it is that one (an event being appended, not yet
    /// stored), else as stored.
    fn lookup(&self, id: &EventId, pending: Option<&Arc<Pdu>>) -> Result<Option<Arc<Pdu>>> {
        match pending {
            Some(p) if p.event_id == id => Ok(Some(p.clone())),
            _ => self.pdu_shared(id),
        }
    }

    /// [`Rooms::auth_chain`], where `events` may name `pending`.
    fn auth_chain_with(
        &self,
        events: impl IntoIterator<Item = OwnedEventId>,
        pending: Option<&Arc<Pdu>>,
    ) -> Result<HashSet<OwnedEventId>> {
        let mut seen: HashSet<OwnedEventId> = HashSet::new();
        let mut todo: VecDeque<OwnedEventId> = VecDeque::new();
        for id in events {
            if let Some(pdu) = self.lookup(&id, pending)? {
                todo.extend(pdu.auth_events.iter().cloned());
            }
        }
        while let Some(id) = todo.pop_front() {
            if seen.contains(&id) {
                continue;
            }
            let Some(pdu) = self.pdu_shared(&id)? else { continue };
            seen.insert(id);
            if seen.len() > MAX_AUTH_CHAIN {
                return Err(Error::internal(format!("auth chain longer than {MAX_AUTH_CHAIN} events")));
            }
            todo.extend(pdu.auth_events.iter().filter(|a| !seen.contains(*a)).cloned());
        }
        Ok(seen)
    }

    /// The state after several branches of a room: the one state if they agree, else the
    /// state resolution of the room's version.
    pub fn resolve_states(&self, version: &RoomVersionId, states: Vec<StateEvents>) -> Result<StateEvents> {
        self.resolve_states_with(version, states, None)
    }

    /// [`Rooms::resolve_states`] where a state may name `pending`, the event being
    /// appended (not yet stored): it takes part as any stored event would. Without it, a
    /// received power event that forks the room would be left out of its own resolution.
    pub fn resolve_states_with(
        &self,
        version: &RoomVersionId,
        states: Vec<StateEvents>,
        pending: Option<&Pdu>,
    ) -> Result<StateEvents> {
        let pending = pending.map(|p| Arc::new(p.clone()));
        let pending = pending.as_ref();
        let mut distinct: Vec<StateEvents> = Vec::with_capacity(states.len());
        for s in states {
            if !distinct.contains(&s) {
                distinct.push(s);
            }
        }
        if distinct.len() <= 1 {
            return Ok(distinct.pop().unwrap_or_default());
        }
        let rules = rules_for(version)?;
        let Some(v2) = rules.state_res.v2_rules() else {
            return super::resolve_v1::resolve(&rules, &distinct, |id| self.lookup(id, pending).ok().flatten());
        };
        let mut chains = Vec::with_capacity(distinct.len());
        for s in &distinct {
            let chain = self.auth_chain_with(s.values().cloned(), pending)?;
            chains.push(chain.into_iter().collect::<EventIdSet<OwnedEventId>>());
        }
        let fetch = |id: &EventId| -> Option<Pdu> { self.lookup(id, pending).ok().flatten().map(|p| (*p).clone()) };
        let subgraph = |conflicted: &state_res::StateMap<Vec<OwnedEventId>>| -> Option<EventIdSet<OwnedEventId>> {
            self.conflicted_subgraph(conflicted.values().flatten().cloned().collect(), pending).ok()
        };
        state_res::resolve(&rules.authorization, v2, distinct.iter(), chains, fetch, subgraph)
            .map_err(|e| Error::internal(format!("state resolution failed: {e}")))
    }

    /// The conflicted state subgraph (room version 12): the events on some `auth_events`
    /// path from one conflicted event to another, the conflicted events included.
    fn conflicted_subgraph(
        &self,
        conflicted: BTreeSet<OwnedEventId>,
        pending: Option<&Arc<Pdu>>,
    ) -> Result<EventIdSet<OwnedEventId>> {
        // Every event reachable from a conflicted event, with its auth events.
        let mut edges: HashMap<OwnedEventId, Vec<OwnedEventId>> = HashMap::new();
        let mut todo: Vec<OwnedEventId> = conflicted.iter().cloned().collect();
        while let Some(id) = todo.pop() {
            if edges.contains_key(&id) {
                continue;
            }
            let auth = self.lookup(&id, pending)?.map(|p| p.auth_events.clone()).unwrap_or_default();
            todo.extend(auth.iter().filter(|a| !edges.contains_key(*a)).cloned());
            edges.insert(id, auth);
            if edges.len() > MAX_AUTH_CHAIN {
                return Err(Error::internal("conflicted state subgraph too large"));
            }
        }
        // Of those, the ones from which a conflicted event is reachable: walk the edges
        // backwards from the conflicted events.
        let mut reverse: HashMap<&EventId, Vec<&EventId>> = HashMap::new();
        for (from, tos) in &edges {
            for to in tos {
                reverse.entry(to.as_ref()).or_default().push(from.as_ref());
            }
        }
        let mut reaching: HashSet<&EventId> = HashSet::new();
        let mut todo: Vec<&EventId> = conflicted.iter().map(|e| e.as_ref()).collect();
        while let Some(id) = todo.pop() {
            if !reaching.insert(id) {
                continue;
            }
            todo.extend(reverse.get(id).into_iter().flatten().copied());
        }
        Ok(reaching.into_iter().map(ToOwned::to_owned).collect())
    }
}

#[cfg(test)]
mod tests {
    use ruma::{events::StateEventType as T, owned_user_id, RoomVersionId};
    use serde_json::json;

    use crate::{rooms::build::NewEvent, store::Backend, Config, Services};

    /// A received power event that forks the room takes part in the resolution of its own
    /// arrival, though it is not stored yet: alice (100) demotes bob (90) on one branch
    /// while bob changes the power levels on the other. Alice's change comes first by the
    /// senders' power, and bob's then fails the auth checks.
    #[test]
    fn the_pending_event_takes_part_in_its_own_resolution() {
        let dir = tempfile::tempdir().expect("dir");
        let config = Config {
            server_name: "fork.test".try_into().expect("name"),
            database_path: dir.path().join("data"),
            database_backend: Backend::Rocksdb,
            database_fsync: false,
            ..Config::default()
        };
        let s = Services::open(config).expect("open");
        let (alice, bob, carol) =
            (owned_user_id!("@alice:fork.test"), owned_user_id!("@bob:fork.test"), owned_user_id!("@carol:fork.test"));
        let version = RoomVersionId::V11;
        let content = json!({"creator": alice}).as_object().cloned().expect("object");
        let room = s.rooms.append_create(&version, &alice, content, None).expect("create").room_id;
        let send = |sender: &ruma::UserId, kind: &str, key: &str, content: serde_json::Value| {
            s.rooms.append_local(&room, sender, NewEvent::state(kind, key, content), None).expect("append").event_id
        };
        send(&alice, "m.room.member", alice.as_str(), json!({"membership": "join"}));
        let levels = |bob_level: i64, carol_level: i64| {
            json!({"users": {alice.as_str(): 100, bob.as_str(): bob_level, carol.as_str(): carol_level},
                   "events": {"m.room.power_levels": 50}})
        };
        send(&alice, "m.room.power_levels", "", levels(90, 0));
        send(&alice, "m.room.join_rules", "", json!({"join_rule": "public"}));
        let join_bob = send(&bob, "m.room.member", bob.as_str(), json!({"membership": "join"}));
        let fork_point = s.rooms.heads(&room).expect("heads");
        let before_fork = s.rooms.state_events_of(&s.rooms.state_after(&join_bob).expect("state")).expect("ids");

        // Bob's branch, stored: he raises carol.
        send(&bob, "m.room.power_levels", "", levels(90, 50));
        let current = s.rooms.current_state_map(&room).expect("current");
        let current = s.rooms.state_events_of(&current).expect("ids");
        // Alice's branch, built on the fork point and not stored: she demotes bob.
        let new = NewEvent::state("m.room.power_levels", "", levels(0, 0));
        let demotion = s.rooms.build(&version, Some(&room), &fork_point, &alice, &new).expect("build").pdu;
        let mut after = before_fork;
        after.insert((T::RoomPowerLevels, String::new()), demotion.event_id.clone());

        let resolved = s.rooms.resolve_states_with(&version, vec![after, current], Some(&demotion)).expect("resolve");
        assert_eq!(resolved[&(T::RoomPowerLevels, String::new())], demotion.event_id);
    }
}
