//! A received PDU into its room: after [`super::pdu`]'s checks, what the event refers to
//! and this server lacks is fetched from the server that sent it, within limits, and the
//! event goes through `rooms`' "check and append" ([`crate::rooms::remote`]).
//!
//! 1. **Prev events** missing here: `get_missing_events` between the room's forward
//!    extremities and the event (at most [`MAX_MISSING_EVENTS`]), appended oldest first.
//! 2. A pushed event (from `/send`) whose prev events are still missing is refused, as
//!    Synapse refuses it: its state would be taken on trust. For an event pulled in by
//!    step 1 whose own prev events are missing, the **state before** each missing prev
//!    event is asked for (`state_ids`, then the events lacking here one by one; or
//!    `state`, which brings them all with their auth chain), with the prev event itself:
//!    the event's state before is resolved from those states. The missing events stay
//!    unfetched (a gap in history, filled later by backfill).
//! 3. **Auth events** still missing here: the event's auth chain (`event_auth`), each
//!    event verified and stored as an outlier once its own auth events are here.
//!
//! Every request has a time-out and a size cap; how many events one PDU may pull in is
//! bounded. A PDU whose room this server is not in is dropped.

use std::{collections::HashSet, time::Duration};

use futures_util::StreamExt;
use ruma::{events::StateEventType, CanonicalJsonObject, EventId, OwnedEventId, RoomId, RoomVersionId, ServerName};
use serde::Deserialize;
use serde_json::value::RawValue as RawJsonValue;

use super::{
    pdu::{parse_raw, Dropped},
    Federation,
};
use crate::{
    rooms::{
        commit::StateBefore,
        pdu::Pdu,
        remote::{Appended, Refusal},
        resolve::StateEvents,
    },
    transport::server_client::ServerRequest,
};

/// Most events asked for with `get_missing_events` for one received event.
pub const MAX_MISSING_EVENTS: u64 = 20;
/// Most events of a `state_ids` answer fetched one by one; past it the whole `state`.
const MAX_EVENTS_BY_ID: usize = 200;
/// Events fetched side by side.
const FETCHES_AT_ONCE: usize = 8;
/// Most missing prev events whose state is fetched for one received event.
const MAX_STATE_FETCHES: usize = 5;
/// Events parsed and checked at a time when many are stored (a big room's join): only
/// these are held parsed, never the whole answer.
const OUTLIER_CHUNK: usize = 256;
/// Checks of one chunk under way at once.
const VERIFY_AT_ONCE: usize = 16;
/// Most events (state plus auth chain) taken from one `state` or `event_auth` answer.
pub const MAX_STATE_EVENTS: usize = 50_000;
const FETCH_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest `state` / `event_auth` answer read.
pub const MAX_STATE_BYTES: usize = 64 * 1024 * 1024;
const MAX_EVENTS_BYTES: usize = 4 * 1024 * 1024;

#[derive(Deserialize)]
struct EventsAnswer {
    #[serde(default)]
    pdus: Vec<Box<RawJsonValue>>,
    #[serde(default)]
    events: Vec<Box<RawJsonValue>>,
    #[serde(default)]
    auth_chain: Vec<Box<RawJsonValue>>,
}

/// Whether `raws` hold the event `event_id`.
fn sent_among(raws: &[Box<RawJsonValue>], version: &RoomVersionId, event_id: &EventId) -> bool {
    let Some(rules) = version.rules() else { return false };
    raws.iter().any(|raw| {
        parse_raw(raw).ok().and_then(|o| super::pdu::event_id_of(&o, &rules).ok()).is_some_and(|id| id == event_id)
    })
}

/// The path of `/state` or `/state_ids` at an event.
fn at_event(endpoint: &str, room_id: &RoomId, event_id: &EventId) -> String {
    format!("/_matrix/federation/v1/{endpoint}/{}?event_id={}", encode(room_id.as_str()), encode(event_id.as_str()))
}

/// Whether a received event may pull in others (its prev events) from its origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fill {
    Gaps,
    NoGaps,
}

impl Federation {
    /// Handles one PDU of an inbound transaction from `origin`. Returns its id when it
    /// could be computed, and the outcome.
    pub async fn receive_pdu(
        &self,
        origin: &ServerName,
        raw: &RawJsonValue,
    ) -> (Option<OwnedEventId>, Result<(), Dropped>) {
        let obj = match parse_raw(raw) {
            Ok(o) => o,
            Err(e) => return (None, Err(e)),
        };
        let Some(room_id) = super::pdu::room_id_of(&obj) else { return (None, Err("PDU without room_id".into())) };
        let version = match self.rooms.room(&room_id) {
            Ok(Some(r)) => r.version,
            Ok(None) => return (None, Err(format!("this server is not in {room_id}"))),
            Err(e) => return (None, Err(e.to_string())),
        };
        let id = version.rules().and_then(|r| super::pdu::event_id_of(&obj, &r).ok());
        let result = self.receive_checked(origin, &room_id, &version, obj).await;
        (id, result)
    }

    async fn receive_checked(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        version: &RoomVersionId,
        obj: CanonicalJsonObject,
    ) -> Result<(), Dropped> {
        if !self.acl_allows(room_id, origin).map_err(|e| e.to_string())? {
            return Err(format!("{origin} is denied by the room's server ACL"));
        }
        let pdu = self.verify_pdu(version, obj, Some(room_id), None).await?;
        if pdu.sender.server_name() != origin {
            return Err(format!("sent by {origin} but its sender is {}", pdu.sender));
        }
        if !self.acl_allows(room_id, pdu.sender.server_name()).map_err(|e| e.to_string())? {
            return Err("the sender's server is denied by the room's server ACL".into());
        }
        let _turn = self.room_turn(room_id).await;
        self.handle_pdu(origin, version, pdu, Fill::Gaps).await.map(|_| ())
    }

    /// Appends a verified event that `origin` sent on behalf of one of its users (a join,
    /// leave or knock through this server), fetching what it misses first. The caller
    /// holds the room's turn.
    pub(crate) async fn append_received(
        &self,
        origin: &ServerName,
        version: &RoomVersionId,
        pdu: Pdu,
    ) -> Result<Appended, Dropped> {
        self.handle_pdu(origin, version, pdu, Fill::Gaps).await
    }

    /// Appends a verified event, fetching what it misses first (see the module doc).
    fn handle_pdu<'a>(
        &'a self,
        origin: &'a ServerName,
        version: &'a RoomVersionId,
        pdu: Pdu,
        fill: Fill,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Appended, Dropped>> + Send + 'a>> {
        Box::pin(async move {
            if self.rooms.in_graph(&pdu.event_id).map_err(|e| e.to_string())? {
                return Ok(Appended::Known);
            }
            let mut missing = self.missing_prev_events(&pdu)?;
            if !missing.is_empty() && fill == Fill::Gaps {
                self.fetch_missing_events(origin, version, &pdu).await;
                missing = self.missing_prev_events(&pdu)?;
                // A pushed event could become the room's only head, its state taken on
                // trust from its sender; there is no excuse for its sender not to give its
                // prev events. Only events pulled in (step 2) take the state over a gap.
                if !missing.is_empty() {
                    return Err(refusal(Refusal::Rejected(format!(
                        "{} of its prev events could not be fetched",
                        missing.len()
                    ))));
                }
            }
            let before = if missing.is_empty() {
                self.rooms.state_at_prev_events(version, &pdu.prev_events).map_err(refusal)?
            } else {
                self.state_over_gap(origin, version, &pdu, &missing).await?
            };
            // After the prev events: what they brought in (a state over a gap) may hold
            // the auth events, as Synapse finds them.
            self.fetch_auth_events(origin, version, &pdu).await?;
            let guest_access = pdu.kind.to_string() == "m.room.guest_access" && pdu.state_key.as_deref() == Some("");
            let room = pdu.room_id.clone();
            let appended = self.rooms.append_remote(pdu, before).map_err(refusal)?;
            if guest_access && appended == Appended::Timeline {
                if let Err(e) = self.remove_barred_guests(&room) {
                    tracing::warn!(%room, error = %e, "could not apply a change of guest access");
                }
            }
            Ok(appended)
        })
    }

    fn missing_prev_events(&self, pdu: &Pdu) -> Result<Vec<OwnedEventId>, Dropped> {
        let mut missing = Vec::new();
        for id in &pdu.prev_events {
            if !self.rooms.in_graph(id).map_err(|e| e.to_string())? {
                missing.push(id.clone());
            }
        }
        Ok(missing)
    }

    /// Fetches an event's missing auth events from `origin` (for backfilled events).
    pub(crate) async fn fetch_auth_events_of(
        &self,
        origin: &ServerName,
        version: &RoomVersionId,
        pdu: &Pdu,
    ) -> Result<(), Dropped> {
        self.fetch_auth_events(origin, version, pdu).await
    }

    /// Step 3 of the module doc.
    async fn fetch_auth_events(&self, origin: &ServerName, version: &RoomVersionId, pdu: &Pdu) -> Result<(), Dropped> {
        let mut missing = Vec::new();
        for id in &pdu.auth_events {
            if self.rooms.event_meta(id).map_err(|e| e.to_string())?.is_none() {
                missing.push(id.as_str());
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        let missing = missing.join(", ");
        let path = format!(
            "/_matrix/federation/v1/event_auth/{}/{}",
            encode(pdu.room_id.as_str()),
            encode(pdu.event_id.as_str())
        );
        // Auth events that cannot be had make the event one that cannot be authorised: it is
        // rejected (as Synapse rejects it), not an error of the transaction.
        let answer = self.fetch_events(origin, &path).await.map_err(|e| {
            refusal(Refusal::Rejected(format!("its auth events ({missing}) could not be fetched: {e}")))
        })?;
        self.store_outliers(version, &pdu.room_id, answer.auth_chain).await;
        Ok(())
    }

    /// Step 1 of the module doc. Failures only log: step 2 follows.
    async fn fetch_missing_events(&self, origin: &ServerName, version: &RoomVersionId, pdu: &Pdu) {
        let heads = match self.rooms.heads(&pdu.room_id) {
            Ok(h) => h,
            Err(_) => return,
        };
        let body = serde_json::json!({
            "earliest_events": heads.forward_extremities,
            "latest_events": [pdu.event_id],
            "limit": MAX_MISSING_EVENTS,
            "min_depth": heads.depth.saturating_sub(MAX_MISSING_EVENTS * 10),
        });
        let path = format!("/_matrix/federation/v1/get_missing_events/{}", encode(pdu.room_id.as_str()));
        let req = ServerRequest::post(&path, &body).limits(FETCH_TIMEOUT, MAX_EVENTS_BYTES);
        let answer = match self.servers.request(origin, req).await {
            Ok(a) if a.status.is_success() => a,
            Ok(a) => return tracing::info!(%origin, status = %a.status, "get_missing_events refused"),
            Err(e) => return tracing::info!(%origin, error = %e, "get_missing_events failed"),
        };
        let Ok(answer) = serde_json::from_slice::<EventsAnswer>(&answer.body) else { return };
        let mut events = Vec::new();
        for raw in answer.events.iter().take(MAX_MISSING_EVENTS as usize) {
            let Ok(obj) = parse_raw(raw) else { continue };
            match self.verify_pdu(version, obj, Some(&pdu.room_id), None).await {
                Ok(p) => events.push(p),
                Err(e) => tracing::info!(%origin, error = %e, "dropping a fetched missing event"),
            }
        }
        events.sort_by_key(|p| p.depth);
        for event in events {
            let id = event.event_id.clone();
            if let Err(e) = self.handle_pdu(origin, version, event, Fill::NoGaps).await {
                tracing::info!(event = %id, error = %e, "a fetched missing event was not appended");
            }
        }
    }

    /// Step 2 of the module doc: the state before `pdu` from the states before and after its
    /// prev events, the missing ones fetched.
    async fn state_over_gap(
        &self,
        origin: &ServerName,
        version: &RoomVersionId,
        pdu: &Pdu,
        missing: &[OwnedEventId],
    ) -> Result<StateBefore, Dropped> {
        if missing.len() > MAX_STATE_FETCHES {
            return Err(format!("{} prev events missing; at most {MAX_STATE_FETCHES} are fetched", missing.len()));
        }
        let mut states: Vec<StateEvents> = Vec::new();
        for id in &pdu.prev_events {
            if missing.contains(id) {
                states.push(self.state_after_remote(origin, version, &pdu.room_id, id).await?);
            } else {
                let after = self.rooms.state_after(id).map_err(|e| e.to_string())?;
                states.push(self.rooms.state_events_of(&after).map_err(|e| e.to_string())?);
            }
        }
        let state = self.rooms.resolve_states(version, states).map_err(|e| e.to_string())?;
        let parent = self.rooms.heads(&pdu.room_id).map_err(|e| e.to_string())?.snapshot;
        Ok(StateBefore::Events { parent, state })
    }

    /// The state after a prev event this server lacks, as `origin` has it; the prev event
    /// and the state's events (with their auth chains) are stored as outliers. Asked with
    /// `state_ids` (only the events this server lacks are then fetched, one by one), as
    /// Synapse asks; with `state` when that fails or too many events are missing.
    async fn state_after_remote(
        &self,
        origin: &ServerName,
        version: &RoomVersionId,
        room_id: &RoomId,
        event_id: &EventId,
    ) -> Result<StateEvents, Dropped> {
        match self.state_after_remote_by_ids(origin, version, room_id, event_id).await {
            Ok(state) => return Ok(state),
            Err(e) => {
                tracing::debug!(%origin, %event_id, error = %e, "state by ids failed; asking for the whole state")
            }
        }
        let answer = self.fetch_events(origin, &at_event("state", room_id, event_id)).await?;
        let mut all = answer.auth_chain;
        let state_ids: Vec<OwnedEventId> = {
            let rules = version.rules().ok_or("unsupported room version")?;
            answer
                .pdus
                .iter()
                .filter_map(|raw| parse_raw(raw).ok().and_then(|o| super::pdu::event_id_of(&o, &rules).ok()))
                .collect()
        };
        all.extend(answer.pdus);
        // The prev event itself.
        let event_path = format!("/_matrix/federation/v1/event/{}", encode(event_id.as_str()));
        let prev = self.fetch_events(origin, &event_path).await?;
        all.extend(prev.pdus.into_iter().take(1));
        let sent = sent_among(&all, version, event_id);
        self.store_outliers(version, room_id, all).await;

        self.state_of(origin, &state_ids, event_id, sent)
    }

    /// [`Federation::state_after_remote`] through `state_ids` and `event`.
    async fn state_after_remote_by_ids(
        &self,
        origin: &ServerName,
        version: &RoomVersionId,
        room_id: &RoomId,
        event_id: &EventId,
    ) -> Result<StateEvents, Dropped> {
        #[derive(Deserialize)]
        struct Ids {
            pdu_ids: Vec<OwnedEventId>,
            #[serde(default)]
            auth_chain_ids: Vec<OwnedEventId>,
        }
        let path = at_event("state_ids", room_id, event_id);
        let req = ServerRequest::get(&path).limits(FETCH_TIMEOUT, MAX_STATE_BYTES);
        let answer = self.servers.request(origin, req).await.map_err(|e| format!("{path}: {e}"))?;
        if !answer.status.is_success() {
            return Err(format!("{origin} answered {} to {path}", answer.status));
        }
        let ids: Ids = serde_json::from_slice(&answer.body).map_err(|e| format!("{origin}: invalid state_ids: {e}"))?;
        if ids.pdu_ids.len() + ids.auth_chain_ids.len() > MAX_STATE_EVENTS {
            return Err(format!("{origin} named more than {MAX_STATE_EVENTS} events"));
        }
        let mut missing = Vec::new();
        let mut seen = HashSet::new();
        let event_id_owned = event_id.to_owned();
        let wanted = ids.pdu_ids.iter().chain(&ids.auth_chain_ids).chain(std::iter::once(&event_id_owned));
        for id in wanted {
            if seen.insert(id.clone()) && self.rooms.event_meta(id).map_err(|e| e.to_string())?.is_none() {
                missing.push(id.clone());
            }
        }
        if missing.len() > MAX_EVENTS_BY_ID {
            return Err(format!("{} events missing; the whole state is asked for instead", missing.len()));
        }
        let fetched: Vec<Option<Box<RawJsonValue>>> = futures_util::stream::iter(missing)
            .map(|id| async move {
                let path = format!("/_matrix/federation/v1/event/{}", encode(id.as_str()));
                self.fetch_events(origin, &path).await.ok().and_then(|a| a.pdus.into_iter().next())
            })
            .buffer_unordered(FETCHES_AT_ONCE)
            .collect()
            .await;
        let fetched: Vec<Box<RawJsonValue>> = fetched.into_iter().flatten().collect();
        let sent = sent_among(&fetched, version, event_id);
        self.store_outliers(version, room_id, fetched).await;
        self.state_of(origin, &ids.pdu_ids, event_id, sent)
    }

    /// The state after `event_id`: the state before it (`state_ids`, those held here) and
    /// the event itself, which must be held.
    ///
    /// When `origin` did send the event but it could not be kept (the auth rules refused
    /// it), it changes no state: the state after it is the state before it, as for any
    /// rejected event.
    fn state_of(
        &self,
        origin: &ServerName,
        state_ids: &[OwnedEventId],
        event_id: &EventId,
        sent: bool,
    ) -> Result<StateEvents, Dropped> {
        let mut state = StateEvents::new();
        for id in state_ids.iter().chain(std::iter::once(&event_id.to_owned())) {
            // A rejected event is no part of any state.
            if self.rooms.event_meta(id).map_err(|e| e.to_string())?.is_some_and(|m| m.rejected) {
                continue;
            }
            let Some(p) = self.rooms.pdu_shared(id).map_err(|e| e.to_string())? else {
                if id == event_id && !sent {
                    return Err(format!("{origin} did not send a usable {event_id}"));
                }
                if id == event_id {
                    tracing::info!(%event_id, "a prev event was refused; the state after it is the state before it");
                }
                continue;
            };
            if let Some(key) = &p.state_key {
                state.insert((StateEventType::from(p.kind.to_string()), key.clone()), p.event_id.clone());
            }
        }
        Ok(state)
    }

    /// A signed GET of events from `origin` (`pdus`, `auth_chain` or `events`), capped.
    async fn fetch_events(&self, origin: &ServerName, path: &str) -> Result<EventsAnswerOwned, Dropped> {
        let req = ServerRequest::get(path).limits(FETCH_TIMEOUT, MAX_STATE_BYTES);
        let answer = self.servers.request(origin, req).await.map_err(|e| format!("{path}: {e}"))?;
        if !answer.status.is_success() {
            return Err(format!("{origin} answered {} to {path}", answer.status));
        }
        let a: EventsAnswer =
            serde_json::from_slice(&answer.body).map_err(|e| format!("{origin} sent an invalid answer: {e}"))?;
        if a.pdus.len() + a.auth_chain.len() > MAX_STATE_EVENTS {
            return Err(format!("{origin} sent more than {MAX_STATE_EVENTS} events"));
        }
        Ok(EventsAnswerOwned { pdus: a.pdus, auth_chain: a.auth_chain })
    }

    /// Verifies events of one room and stores them as outliers, each once its auth events
    /// are here (in whatever order they came). Events that fail are left out, and so are
    /// events that depend on them.
    pub(crate) async fn store_outliers(&self, version: &RoomVersionId, room_id: &RoomId, raws: Vec<Box<RawJsonValue>>) {
        let Some(rules) = version.rules() else { return };
        // The order to store them in, by depth (auth events come before the events they
        // authorise), read from each event's depth alone.
        #[derive(Deserialize)]
        struct Depth {
            #[serde(default)]
            depth: i64,
        }
        let mut order: Vec<(i64, usize)> = raws
            .iter()
            .enumerate()
            .filter_map(|(i, raw)| serde_json::from_str::<Depth>(raw.get()).ok().map(|d| (d.depth, i)))
            .collect();
        order.sort_unstable();
        let mut raws: Vec<Option<Box<RawJsonValue>>> = raws.into_iter().map(Some).collect();
        let mut seen: HashSet<OwnedEventId> = HashSet::new();
        let mut waiting: Vec<Pdu> = Vec::new();
        for chunk in order.chunks(OUTLIER_CHUNK) {
            let mut fresh = Vec::with_capacity(chunk.len());
            for &(_, i) in chunk {
                // Each JSON text is let go once read: what is stored is not held twice.
                let Some(raw) = raws[i].take() else { continue };
                let Ok(obj) = parse_raw(&raw) else { continue };
                let Ok(id) = super::pdu::event_id_of(&obj, &rules) else { continue };
                if seen.insert(id.clone()) && self.rooms.event_meta(&id).ok().flatten().is_none() {
                    fresh.push(obj);
                }
            }
            // Checked a few at a time, so that key fetches from different servers overlap
            // (one server's keys are fetched once: `ServerKeys` queues the others).
            let checked: Vec<_> = futures_util::stream::iter(fresh)
                .map(|obj| self.verify_pdu(version, obj, Some(room_id), None))
                .buffered(VERIFY_AT_ONCE)
                .collect()
                .await;
            for c in checked {
                match c {
                    Ok(p) => waiting.push(p),
                    Err(e) => tracing::info!(error = %e, "dropping a fetched event"),
                }
            }
            waiting = self.append_outliers_ready(version, waiting);
        }
        // Events whose auth events came later in the answer than their depth says.
        loop {
            let before = waiting.len();
            waiting = self.append_outliers_ready(version, waiting);
            if waiting.is_empty() || waiting.len() == before {
                break;
            }
        }
        for p in &waiting {
            tracing::info!(event = %p.event_id, "a fetched event's auth events never arrived");
        }
    }

    /// Stores those of `pending` whose auth events are all here, in order; returns the rest.
    fn append_outliers_ready(&self, version: &RoomVersionId, pending: Vec<Pdu>) -> Vec<Pdu> {
        let mut rest = Vec::new();
        for pdu in pending {
            let ready = pdu.auth_events.iter().all(|a| self.rooms.event_meta(a).ok().flatten().is_some());
            if !ready {
                rest.push(pdu);
                continue;
            }
            let id = pdu.event_id.clone();
            if let Err(e) = self.rooms.append_outlier(version, pdu) {
                tracing::info!(event = %id, error = %e, "a fetched event was not stored");
            }
        }
        rest
    }
}

/// `state` and `event_auth` answers: events and their auth chain.
struct EventsAnswerOwned {
    pdus: Vec<Box<RawJsonValue>>,
    auth_chain: Vec<Box<RawJsonValue>>,
}

fn refusal(r: Refusal) -> Dropped {
    r.to_string()
}

/// Whether a dropped PDU was one the auth rules refused (`Refusal::Rejected`, whose text
/// starts so): such a PDU was handled, as the spec counts it, and `/send` reports no error
/// for it (as Synapse does; senders only care that it need not be retried).
pub(crate) fn is_rejection(dropped: &Dropped) -> bool {
    dropped.starts_with("rejected: ")
}

/// Percent-encodes a path segment or query value.
pub(crate) fn encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>().replace('+', "%20")
}
