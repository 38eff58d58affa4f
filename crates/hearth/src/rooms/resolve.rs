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

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};

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
        let mut seen: HashSet<OwnedEventId> = HashSet::new();
        let mut todo: VecDeque<OwnedEventId> = VecDeque::new();
        for id in events {
            if let Some(pdu) = self.pdu_shared(&id)? {
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
            return super::resolve_v1::resolve(&rules, &distinct, |id| self.pdu_shared(id).ok().flatten());
        };
        let mut chains = Vec::with_capacity(distinct.len());
        for s in &distinct {
            let chain = self.auth_chain(s.values().cloned())?;
            chains.push(chain.into_iter().collect::<EventIdSet<OwnedEventId>>());
        }
        let fetch = |id: &EventId| -> Option<Pdu> { self.pdu_shared(id).ok().flatten().map(|p| (*p).clone()) };
        let subgraph = |conflicted: &state_res::StateMap<Vec<OwnedEventId>>| -> Option<EventIdSet<OwnedEventId>> {
            self.conflicted_subgraph(conflicted.values().flatten().cloned().collect()).ok()
        };
        state_res::resolve(&rules.authorization, v2, distinct.iter(), chains, fetch, subgraph)
            .map_err(|e| Error::internal(format!("state resolution failed: {e}")))
    }

    /// The conflicted state subgraph (room version 12): the events on some `auth_events`
    /// path from one conflicted event to another, the conflicted events included.
    fn conflicted_subgraph(&self, conflicted: BTreeSet<OwnedEventId>) -> Result<EventIdSet<OwnedEventId>> {
        // Every event reachable from a conflicted event, with its auth events.
        let mut edges: HashMap<OwnedEventId, Vec<OwnedEventId>> = HashMap::new();
        let mut todo: Vec<OwnedEventId> = conflicted.iter().cloned().collect();
        while let Some(id) = todo.pop() {
            if edges.contains_key(&id) {
                continue;
            }
            let auth = self.pdu_shared(&id)?.map(|p| p.auth_events.clone()).unwrap_or_default();
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
