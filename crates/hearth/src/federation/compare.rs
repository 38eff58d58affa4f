//! An operator's check of a room's state against another server's view of it
//! (`hearth admin compare-state`): the state before one event as this server holds it,
//! beside the `state_ids` the other server answers for the same event.
//!
//! Both sides are "the state before the event", so the answer here is what this server
//! would itself serve for `state_ids`. By default the event is this server's newest
//! forward extremity; an operator names another when the remote does not know that one
//! (during a partition, for example).

use std::collections::{BTreeMap, BTreeSet};

use ruma::{EventId, OwnedEventId, RoomId, ServerName};
use serde::Deserialize;

use super::{
    receive::{encode, MAX_STATE_BYTES, MAX_STATE_EVENTS},
    Federation,
};
use crate::{
    error::{Error, Result},
    rooms::resolve::StateEvents,
    transport::server_client::ServerRequest,
};

const COMPARE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// A state entry's key, as an operator reads it: (event type, state key).
pub type Key = (String, String);

/// What differs between the two servers' state before one event.
#[derive(Debug, PartialEq, Eq)]
pub struct StateComparison {
    /// The event both states are before.
    pub at: OwnedEventId,
    /// Entries with the same event on both sides.
    pub same: usize,
    /// Entries whose events differ: (key, here, there).
    pub differ: Vec<(Key, OwnedEventId, OwnedEventId)>,
    /// Entries only this server has.
    pub only_here: Vec<(Key, OwnedEventId)>,
    /// Entries only the other server has, among the events held here.
    pub only_there: Vec<(Key, OwnedEventId)>,
    /// Events the other server names that this server does not hold (so their keys are
    /// not known here).
    pub unknown_here: Vec<OwnedEventId>,
}

impl StateComparison {
    pub fn identical(&self) -> bool {
        self.differ.is_empty()
            && self.only_here.is_empty()
            && self.only_there.is_empty()
            && self.unknown_here.is_empty()
    }
}

/// Compares `here` with `there` (the other server's events, each with its key when this
/// server holds the event, `None` when it does not).
pub fn compare(
    at: OwnedEventId,
    here: &StateEvents,
    there: impl IntoIterator<Item = (OwnedEventId, Option<Key>)>,
) -> StateComparison {
    let ours: BTreeMap<Key, &OwnedEventId> = here.iter().map(|((t, k), id)| ((t.to_string(), k.clone()), id)).collect();
    let mut theirs: BTreeMap<Key, OwnedEventId> = BTreeMap::new();
    let mut unknown = BTreeSet::new();
    for (id, key) in there {
        match key {
            Some(key) => {
                theirs.insert(key, id);
            }
            None => {
                unknown.insert(id);
            }
        }
    }
    let mut out = StateComparison {
        at,
        same: 0,
        differ: Vec::new(),
        only_here: Vec::new(),
        only_there: Vec::new(),
        unknown_here: unknown.into_iter().collect(),
    };
    for (key, ours) in &ours {
        match theirs.get(key) {
            Some(t) if t == *ours => out.same += 1,
            Some(t) => out.differ.push((key.clone(), (*ours).clone(), t.clone())),
            None => out.only_here.push((key.clone(), (*ours).clone())),
        }
    }
    for (key, t) in theirs {
        if !ours.contains_key(&key) {
            out.only_there.push((key, t));
        }
    }
    out
}

impl Federation {
    /// The room's state before `at` (default: the newest forward extremity here) as this
    /// server holds it, compared with what `server` answers to `state_ids` for it.
    pub async fn compare_state(
        &self,
        room: &RoomId,
        server: &ServerName,
        at: Option<&EventId>,
    ) -> Result<StateComparison> {
        self.rooms.known_room(room)?;
        let at = match at {
            Some(e) => e.to_owned(),
            None => self.newest_extremity(room)?,
        };
        if self.rooms.event_meta(&at)?.is_none_or(|m| m.room_id != room) {
            return Err(Error::not_found(format!("{at} is not an event of {room} held here")));
        }
        if !self.rooms.in_graph(&at)? {
            return Err(Error::not_found(format!("this server does not hold the state at {at}")));
        }
        let here = self.rooms.state_events_of(self.rooms.state_before(&at)?.as_ref())?;

        #[derive(Deserialize)]
        struct Ids {
            pdu_ids: Vec<OwnedEventId>,
        }
        let path =
            format!("/_matrix/federation/v1/state_ids/{}?event_id={}", encode(room.as_str()), encode(at.as_str()));
        let body = self.ask(server, ServerRequest::get(&path).limits(COMPARE_TIMEOUT, MAX_STATE_BYTES)).await?;
        let ids: Ids = serde_json::from_slice(&body)
            .map_err(|e| Error::unavailable(format!("{server} sent an invalid state_ids answer: {e}")))?;
        if ids.pdu_ids.len() > MAX_STATE_EVENTS {
            return Err(Error::unavailable(format!("{server} named more than {MAX_STATE_EVENTS} state events")));
        }
        let pdus = self.rooms.pdus_shared(&ids.pdu_ids)?;
        let there = ids.pdu_ids.into_iter().zip(pdus).map(|(id, pdu)| {
            let key = pdu.and_then(|p| p.state_key.clone().map(|k| (p.kind.to_string(), k)));
            (id, key)
        });
        Ok(compare(at, &here, there))
    }

    /// The forward extremity of `room` committed last here.
    fn newest_extremity(&self, room: &RoomId) -> Result<OwnedEventId> {
        let mut newest: Option<(u64, OwnedEventId)> = None;
        for id in self.rooms.heads(room)?.forward_extremities {
            let stream = self.rooms.event_meta(&id)?.map_or(0, |m| m.stream);
            if newest.as_ref().is_none_or(|(s, _)| stream > *s) {
                newest = Some((stream, id));
            }
        }
        newest.map(|(_, id)| id).ok_or_else(|| Error::not_found("The room has no events here"))
    }
}

#[cfg(test)]
mod tests {
    use ruma::{events::StateEventType, owned_event_id};

    use super::*;

    fn key(t: &str, k: &str) -> Key {
        (t.to_owned(), k.to_owned())
    }

    #[test]
    fn sorts_each_entry_into_same_differ_only_here_only_there_or_unknown() {
        let mut here = StateEvents::new();
        here.insert((StateEventType::RoomCreate, String::new()), owned_event_id!("$create"));
        here.insert((StateEventType::RoomPowerLevels, String::new()), owned_event_id!("$pl_here"));
        here.insert((StateEventType::RoomMember, "@a:x".into()), owned_event_id!("$a"));
        let there = vec![
            (owned_event_id!("$create"), Some(key("m.room.create", ""))),
            (owned_event_id!("$pl_there"), Some(key("m.room.power_levels", ""))),
            (owned_event_id!("$topic"), Some(key("m.room.topic", ""))),
            (owned_event_id!("$never_seen"), None),
        ];
        let c = compare(owned_event_id!("$at"), &here, there);
        assert_eq!(c.same, 1);
        assert_eq!(
            c.differ,
            vec![(key("m.room.power_levels", ""), owned_event_id!("$pl_here"), owned_event_id!("$pl_there"))]
        );
        assert_eq!(c.only_here, vec![(key("m.room.member", "@a:x"), owned_event_id!("$a"))]);
        assert_eq!(c.only_there, vec![(key("m.room.topic", ""), owned_event_id!("$topic"))]);
        assert_eq!(c.unknown_here, vec![owned_event_id!("$never_seen")]);
        assert!(!c.identical());
    }

    #[test]
    fn the_same_state_is_identical() {
        let mut here = StateEvents::new();
        here.insert((StateEventType::RoomCreate, String::new()), owned_event_id!("$create"));
        let c =
            compare(owned_event_id!("$at"), &here, vec![(owned_event_id!("$create"), Some(key("m.room.create", "")))]);
        assert!(c.identical() && c.same == 1, "{c:?}");
    }
}
