//! "Check and append" for remote events: steps 3 to 5 of the checks on receipt of a PDU
//! (see [`super::authorize`]) and the one commit, for an event whose format, signatures
//! and hashes federation has already verified, and whose auth events (and, for the
//! timeline, prev events) this server already holds: fetching what is missing is a
//! network wait, done by `federation/` before anything here.
//!
//! - [`Rooms::append_outlier`]: an auth or state event of another event, checked against
//!   its own auth events and stored outside the room's graph.
//! - [`Rooms::append_remote`]: a new event of a room this server is in: rejected if its
//!   auth events or the state before it refuse it, soft-failed if the room's current state
//!   does, else a new head of the room. Where it forks the room, the current state is
//!   resolved ([`super::resolve`]).
//! - [`Rooms::append_joined_room`]: this server's own join to a room on another server,
//!   with the state the resident server sent: the room becomes known here.
//!
//! Lock order as in [`super::commit`]: only the soft-fail check and the commit run under
//! the append lock.

use std::{collections::HashMap, sync::Arc};

use ruma::{events::StateEventType, CanonicalJsonObject, EventId, RoomId, RoomVersionId, UserId};

use ruma::events::room::member::MembershipState;
use serde_json::Value;

use super::{
    authorize::{check_auth_events, check_state},
    build::{check_limits, rules_for, NewEvent},
    commit::{Append, Placement, StateBefore},
    pdu::Pdu,
    resolve::StateEvents,
    state::Interner,
    state::StateMap,
    EventMeta, MembershipRecord, RoomRecord, Rooms, EVENT_META, PDUS, USER_ROOMS,
};
use crate::{
    error::{Error, Result},
    store::{codec::encode_key, tables, KeyRange, Order, Table},
    time::now_millis,
};

/// (user id, room id) → the stripped state of an invite to a room on another server.
pub const REMOTE_INVITE_STATE: Table<(String, String), Value> = Table::new(tables::REMOTE_INVITE_STATE);
/// Invites of local users to rooms elsewhere, by stream position: what the push follower
/// reads besides the event stream.
pub const REMOTE_INVITES_BY_POS: Table<u64, crate::stream::StreamEntry> = Table::new(tables::REMOTE_INVITES_BY_POS);

/// Why a remote event was not appended.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// The auth rules refuse it (against its auth events or the state before it).
    #[error("rejected: {0}")]
    Rejected(String),
    /// Something it needs is not here: the caller fetches it first.
    #[error("missing: {0}")]
    Missing(String),
    #[error(transparent)]
    Error(#[from] Error),
}

/// What happened to an appended remote event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    Timeline,
    SoftFailed,
    /// It was already here (in the timeline or soft-failed).
    Known,
}

impl Rooms {
    /// The template of an event a remote user asks to send through this server
    /// (`make_join`, `make_leave`, `make_knock`): built on the room's current heads and
    /// allowed by its current state (else 403 naming the rule), without hashes and
    /// signatures, which the user's server adds.
    pub fn template(&self, room_id: &RoomId, sender: &UserId, new: NewEvent) -> Result<CanonicalJsonObject> {
        check_limits(&new)?;
        let record = self.known_room(room_id)?;
        let heads = self.heads(room_id)?;
        let built = self.build(&record.version, Some(room_id), &heads, sender, &new)?;
        self.authorize_local(&built)?;
        let mut json = built.pdu.json;
        json.remove("hashes");
        json.remove("signatures");
        Ok(json)
    }

    /// Builds and authorizes a local event without appending it: for an event another
    /// server must sign first (an invite of its user). Returns the event and the snapshot
    /// of the state it was built on, for [`Rooms::append_remote`] once it comes back.
    pub fn prepare_local(&self, room_id: &RoomId, sender: &UserId, new: NewEvent) -> Result<(Pdu, Option<u64>)> {
        check_limits(&new)?;
        let record = self.known_room(room_id)?;
        let heads = self.heads(room_id)?;
        let built = self.build(&record.version, Some(room_id), &heads, sender, &new)?;
        self.authorize_local(&built)?;
        Ok((built.pdu, heads.snapshot))
    }

    /// An invite of a local user to a room on another server, signed by both servers:
    /// stored outside any room graph, with the stripped state it came with, and shown to
    /// the user as an invite.
    pub fn append_remote_invite(&self, invite: Pdu, stripped: Vec<Value>) -> Result<()> {
        self.record_remote_membership(invite, MembershipState::Invite, Some(stripped))
    }

    /// A local user's knock on a room on another server, sent through that server, with
    /// the stripped state that came back: shown to the user under `knock`.
    pub fn append_remote_knock(&self, knock: Pdu, stripped: Vec<Value>) -> Result<()> {
        self.record_remote_membership(knock, MembershipState::Knock, Some(stripped))
    }

    /// A local user's leave (an invite rejected) of a room on another server, sent
    /// through that server: the user's membership becomes `leave`.
    pub fn append_remote_leave(&self, leave: Pdu) -> Result<()> {
        self.record_remote_membership(leave, MembershipState::Leave, None)
    }

    fn record_remote_membership(
        &self,
        pdu: Pdu,
        membership: MembershipState,
        stripped: Option<Vec<Value>>,
    ) -> Result<()> {
        let user = pdu
            .state_key
            .as_deref()
            .and_then(|k| ruma::OwnedUserId::try_from(k).ok())
            .ok_or_else(|| Error::bad_json("A member event without a user"))?;
        let json = serde_json::to_vec(&pdu.json).map_err(|e| Error::internal(e.to_string()))?;
        let invite = membership == MembershipState::Invite;
        let mut counters = self.append_lock.lock();
        let (pos, ()) = self.stream.commit_deferred_then(
            |stream, batch| {
                let mut interner = Interner::new(&mut counters.next_short);
                let short = interner.event(&self.store, batch, &pdu.event_id)?;
                if self.event_meta(&pdu.event_id)?.is_none() {
                    PDUS.put(batch, pdu.event_id.as_str(), &json);
                    let meta = EventMeta {
                        room_id: pdu.room_id.clone(),
                        stream,
                        short,
                        txn: None,
                        redacted_by: None,
                        outlier: true,
                        soft_failed: false,
                        rejected: false,
                        gap_behind: false,
                    };
                    EVENT_META.put(batch, pdu.event_id.as_str(), &meta);
                }
                let record = MembershipRecord { membership, stream, event_id: pdu.event_id.clone() };
                USER_ROOMS.put(batch, (user.as_str(), pdu.room_id.as_str()), &record);
                let key = (user.as_str(), pdu.room_id.as_str());
                match &stripped {
                    Some(state) => REMOTE_INVITE_STATE.put(batch, key, &Value::Array(state.clone())),
                    None => REMOTE_INVITE_STATE.delete(batch, key),
                }
                if invite {
                    let entry =
                        crate::stream::StreamEntry { room_id: pdu.room_id.clone(), event_id: pdu.event_id.clone() };
                    REMOTE_INVITES_BY_POS.put(batch, stream, &entry);
                }
                Ok(())
            },
            |pos, _| {
                self.members.invalidate_user(&user);
                if invite {
                    // Before the position can become durable, so before any follower reads it.
                    if let Some(newest) = self.remote_invites_newest.lock().as_mut() {
                        *newest = (*newest).max(pos);
                    }
                }
            },
        )?;
        drop(counters);
        let notifier = self.notifier.clone();
        self.stream.after_durable(pos, move || notifier.notify([&*user], pos))
    }

    /// The invites of local users to rooms on other servers at stream positions in
    /// (since, until], oldest first: they are not in the event stream, and the followers
    /// of the stream (push, application services) read them beside it. The newest one's
    /// position is kept, so that the followers' every step does not open an iterator on a
    /// table that is empty on most servers.
    pub fn remote_invites_between(&self, since: u64, until: u64) -> Result<Vec<(u64, crate::stream::StreamEntry)>> {
        let newest = {
            let mut newest = self.remote_invites_newest.lock();
            match *newest {
                Some(n) => n,
                None => {
                    let mut last = 0;
                    REMOTE_INVITES_BY_POS.scan_range(
                        &self.store,
                        &KeyRange::default(),
                        Order::Descending,
                        |pos, _| {
                            last = pos;
                            false
                        },
                    )?;
                    *newest = Some(last);
                    last
                }
            }
        };
        let mut out = Vec::new();
        if newest <= since {
            return Ok(out);
        }
        let range = KeyRange {
            lower: Some(encode_key::<u64>(since.saturating_add(1))),
            upper: Some(encode_key::<u64>(until.saturating_add(1))),
        };
        REMOTE_INVITES_BY_POS.scan_range(&self.store, &range, Order::Ascending, |pos, entry| {
            out.push((pos, entry));
            true
        })?;
        Ok(out)
    }

    /// The stripped state an invite to a room on another server came with.
    pub fn remote_invite_state(&self, user: &UserId, room_id: &RoomId) -> Result<Vec<Value>> {
        Ok(match REMOTE_INVITE_STATE.get(&self.store, (user.as_str(), room_id.as_str()))? {
            Some(Value::Array(state)) => state,
            _ => Vec::new(),
        })
    }

    /// Whether an event is held in the room's graph (not only as an outlier).
    pub fn in_graph(&self, event_id: &EventId) -> Result<bool> {
        Ok(self.event_meta(event_id)?.is_some_and(|m| !m.outlier))
    }

    /// Step 3 for a remote event: the auth rules against its own auth events, which must
    /// all be here.
    fn check_against_auth_events(
        &self,
        rules: &ruma::room_version_rules::RoomVersionRules,
        pdu: &Pdu,
    ) -> Result<(), Refusal> {
        let mut auth: HashMap<(StateEventType, String), Arc<Pdu>> = HashMap::new();
        for id in &pdu.auth_events {
            let event = self.pdu_shared(id)?.ok_or_else(|| Refusal::Missing(format!("auth event {id}")))?;
            if self.event_meta(id)?.is_some_and(|m| m.rejected) {
                return Err(Refusal::Rejected(format!("auth event {id} was rejected")));
            }
            if event.room_id != pdu.room_id {
                return Err(Refusal::Rejected(format!("auth event {id} is in another room")));
            }
            let Some(key) = &event.state_key else {
                return Err(Refusal::Rejected(format!("auth event {id} is not a state event")));
            };
            auth.insert((StateEventType::from(event.kind.to_string()), key.clone()), event);
        }
        // From version 12 the create event is not among the auth events: its id is the room's.
        if !rules.event_format.allow_room_create_in_auth_events {
            let create_id = ruma::OwnedEventId::try_from(format!("${}", &pdu.room_id.as_str()[1..]))
                .map_err(|e| Refusal::Rejected(format!("room id names no create event: {e}")))?;
            if create_id != pdu.event_id {
                let create = self
                    .pdu_shared(&create_id)?
                    .ok_or_else(|| Refusal::Missing(format!("create event {create_id}")))?;
                auth.insert((StateEventType::RoomCreate, String::new()), create);
            }
        }
        let fetch = |id: &EventId| self.pdu_shared(id).ok().flatten();
        check_auth_events(rules, pdu, fetch).map_err(Refusal::Rejected)?;
        check_state(rules, pdu, |ty, key| auth.get(&(ty.clone(), key.to_owned())).cloned()).map_err(Refusal::Rejected)
    }

    /// Stores an auth or state event of another event, outside the room's graph, once its
    /// own auth events allow it.
    /// One the rules refuse is kept as a rejected outlier, and the refusal returned.
    pub fn append_outlier(&self, version: &RoomVersionId, pdu: Pdu) -> Result<(), Refusal> {
        if let Some(meta) = self.event_meta(&pdu.event_id)? {
            if meta.rejected {
                return Err(Refusal::Rejected("it was rejected before".into()));
            }
            return Ok(());
        }
        let rules = rules_for(version)?;
        let checked = self.check_against_auth_events(&rules, &pdu);
        if let Err(e @ Refusal::Error(_)) | Err(e @ Refusal::Missing(_)) = checked {
            return Err(e);
        }
        let mut counters = self.append_lock.lock();
        let append = Append {
            pdu,
            state_before: StateBefore::Snapshot(None),
            placement: if checked.is_ok() { Placement::Outlier } else { Placement::RejectedOutlier },
            txn: None,
            new_room: None,
            resolved_current: None,
        };
        let written = self.commit(&mut counters, append)?;
        drop(counters);
        // Acknowledged with whatever the request acknowledges (one fsync covers all).
        self.stream.require_durable(written.stream)?;
        checked
    }

    /// The state before an event whose prev events are all in the room's graph: the state
    /// after the one prev event, or the resolution of the states after each.
    pub fn state_at_prev_events(
        &self,
        version: &RoomVersionId,
        prev: &[ruma::OwnedEventId],
    ) -> Result<StateBefore, Refusal> {
        let mut states = Vec::with_capacity(prev.len());
        for id in prev {
            if !self.in_graph(id)? {
                return Err(Refusal::Missing(format!("prev event {id}")));
            }
            states.push(self.state_after(id)?);
        }
        let parent = match prev.first() {
            Some(first) => self.state_snapshot_before(first)?,
            None => None,
        };
        if states.len() == 1 {
            return Ok(StateBefore::Map { parent, map: states.remove(0) });
        }
        let mut by_ids = Vec::with_capacity(states.len());
        for s in &states {
            by_ids.push(self.state_events_of(s)?);
        }
        Ok(StateBefore::Events { parent, state: self.resolve_states(version, by_ids)? })
    }

    /// The snapshot of the state before an event in the graph.
    fn state_snapshot_before(&self, event_id: &EventId) -> Result<Option<u64>> {
        let Some(short) = self.state.short_event(event_id)? else { return Ok(None) };
        Ok(super::state::STATE_BEFORE_EVENT.get(&self.store, short)?)
    }

    /// Steps 3 to 5 and the commit for a new remote event of a room this server is in (see
    /// the module doc). `state_before` comes from [`Rooms::state_at_prev_events`], or from
    /// the state another server sent when the prev events could not be fetched.
    pub fn append_remote(&self, pdu: Pdu, state_before: StateBefore) -> Result<Appended, Refusal> {
        if self.in_graph(&pdu.event_id)? {
            return Ok(Appended::Known);
        }
        let record = self.known_room(&pdu.room_id)?;
        let rules = rules_for(&record.version)?;
        let before_lookup = StateLookup::new(self, &state_before)?;
        // Step 3, and step 4: the state before the event.
        let checked = self
            .check_against_auth_events(&rules, &pdu)
            .and_then(|()| {
                check_state(&rules, &pdu, |ty, key| before_lookup.get(self, ty, key)).map_err(Refusal::Rejected)
            })
            .and_then(|()| self.check_redaction_room(&pdu));
        if let Err(Refusal::Rejected(why)) = checked {
            drop(before_lookup);
            self.keep_rejected(pdu, state_before)?;
            return Err(Refusal::Rejected(why));
        }
        checked?;

        let mut counters = self.append_lock.lock();
        let heads = self.heads(&pdu.room_id)?;
        let current = self.current_state_map(&pdu.room_id)?;
        // Step 5: the current state; a refusal soft-fails.
        let placement =
            match check_state(&rules, &pdu, |ty, key| self.state_event_shared(&current, ty, key).ok().flatten()) {
                Ok(()) => Placement::Timeline,
                Err(e) => {
                    tracing::info!(event = %pdu.event_id, error = %e, "soft-failing a remote event");
                    Placement::SoftFailed
                }
            };
        let forks = heads.forward_extremities.iter().any(|id| !pdu.prev_events.contains(id));
        let resolved_current = if placement == Placement::Timeline && forks {
            let mut after = before_lookup.events(self)?;
            if let Some(key) = &pdu.state_key {
                after.insert((StateEventType::from(pdu.kind.to_string()), key.clone()), pdu.event_id.clone());
            }
            let current = self.state_events_of(&current)?;
            Some(self.resolve_states_with(&record.version, vec![after, current], Some(&pdu))?)
        } else {
            None
        };
        let append = Append { pdu, state_before, placement, txn: None, new_room: None, resolved_current };
        let written = self.commit(&mut counters, append)?;
        drop(counters);
        self.finish(written)?;
        Ok(match placement {
            Placement::SoftFailed => Appended::SoftFailed,
            _ => Appended::Timeline,
        })
    }

    /// A redaction of an event of another room is refused, as Synapse refuses it.
    fn check_redaction_room(&self, pdu: &Pdu) -> Result<(), Refusal> {
        let Some(target) = pdu.redaction_target() else { return Ok(()) };
        match self.event_meta(&target)? {
            Some(meta) if meta.room_id != pdu.room_id => {
                Err(Refusal::Rejected(format!("it redacts {target}, an event of another room")))
            }
            _ => Ok(()),
        }
    }

    /// Keeps an event the auth rules refused (see `EventMeta::rejected`), so that the
    /// events after it, which name it as a prev event, need not fetch it again.
    fn keep_rejected(&self, pdu: Pdu, state_before: StateBefore) -> Result<(), Refusal> {
        let mut counters = self.append_lock.lock();
        let append = Append {
            pdu,
            state_before,
            placement: Placement::Rejected,
            txn: None,
            new_room: None,
            resolved_current: None,
        };
        let written = self.commit(&mut counters, append)?;
        drop(counters);
        self.finish(written)?;
        Ok(())
    }

    /// This server's join to a room on another server: `join` (signed by the resident
    /// server too) becomes the room's first event here, on `state` (the state before it,
    /// whose events and their auth chains are stored as outliers already).
    pub fn append_joined_room(&self, version: &RoomVersionId, join: Pdu, state: StateEvents) -> Result<Pdu, Refusal> {
        let rules = rules_for(version)?;
        self.check_against_auth_events(&rules, &join)?;
        let lookup = |ty: &StateEventType, key: &str| {
            state.get(&(ty.clone(), key.to_owned())).and_then(|id| self.pdu_shared(id).ok().flatten())
        };
        check_state(&rules, &join, lookup).map_err(Refusal::Rejected)?;
        let mut counters = self.append_lock.lock();
        // A room this server left and joins again keeps its record.
        let new_room = match self.room(&join.room_id)? {
            Some(r) => r,
            None => RoomRecord { version: version.clone(), created_ts: now_millis() },
        };
        let parent = self.heads(&join.room_id)?.snapshot;
        let append = Append {
            pdu: join,
            state_before: StateBefore::Events { parent, state },
            placement: Placement::Timeline,
            txn: None,
            new_room: Some(new_room),
            resolved_current: None,
        };
        let written = self.commit(&mut counters, append)?;
        drop(counters);
        Ok(self.finish(written)?)
    }
}

/// Reads a state however the caller described it.
enum StateLookup<'a> {
    Map(Arc<StateMap>),
    Events(&'a StateEvents),
}

impl<'a> StateLookup<'a> {
    fn new(rooms: &Rooms, before: &'a StateBefore) -> Result<Self> {
        Ok(match before {
            StateBefore::Map { map, .. } => StateLookup::Map(map.clone()),
            StateBefore::Events { state, .. } => StateLookup::Events(state),
            StateBefore::Snapshot(Some(s)) => StateLookup::Map(rooms.state.materialise(*s)?),
            StateBefore::Snapshot(None) => StateLookup::Map(Default::default()),
        })
    }

    fn get(&self, rooms: &Rooms, ty: &StateEventType, key: &str) -> Option<Arc<Pdu>> {
        match self {
            StateLookup::Map(map) => rooms.state_event_shared(map, ty, key).ok().flatten(),
            StateLookup::Events(state) => {
                state.get(&(ty.clone(), key.to_owned())).and_then(|id| rooms.pdu_shared(id).ok().flatten())
            }
        }
    }

    fn events(&self, rooms: &Rooms) -> Result<StateEvents> {
        match self {
            StateLookup::Map(map) => rooms.state_events_of(map),
            StateLookup::Events(state) => Ok((*state).clone()),
        }
    }
}
