//! Deprecated client-server endpoints that clients, bots and test suites still call, served
//! as Synapse serves them (the spec dropped them in v1.0's successors, Synapse never did):
//!
//! - `GET /events` (`from`, `timeout`, `room_id`): the event stream, long-polling like
//!   `/sync`, as one flat `chunk` of events that carry their `room_id`;
//! - `GET /events/{eventId}`: one event the caller may see;
//! - `GET /initialSync` (`limit`, `archived`): every room as a list, with its current state,
//!   latest messages, account data and receipts;
//! - `GET /rooms/{roomId}/initialSync`: the same for one room, for members, past members
//!   (up to their leave) and anyone when the room is world-readable;
//! - `POST /rooms/{roomId}/send/{eventType}`: a send without a transaction id.
//!
//! All of it is built from the same assembly as `/sync` ([`crate::sync::assemble`]) and the
//! same room reads, so what they show is what `/sync` shows; none of it touches a device's
//! to-device queue.

use std::{
    collections::{BTreeSet, HashMap},
    sync::Arc,
    time::Duration,
};

use axum::{
    extract::{Path, Query, State},
    http::request::Parts,
    routing::{get, post},
    Json, Router,
};
use ruma::{api::Direction, events::room::member::MembershipState, OwnedEventId, OwnedRoomId, RoomId, UserId};
use serde_json::{json, Map, Value};

use crate::{
    api::{caller_of, Caller},
    error::{Error, Result},
    rooms::{append::NewEvent, pdu::EventJson},
    stream::StreamItem,
    sync::{assemble, SyncOptions, SyncResult, SyncToken},
    Services,
};

/// Longest wait of `/events`.
const MAX_TIMEOUT: Duration = Duration::from_secs(120);
/// Most messages per room in an initial sync.
const MAX_LIMIT: usize = 100;

pub fn routes() -> Router<Arc<Services>> {
    let mut router = Router::new();
    for version in ["r0", "v3"] {
        router = router
            .route(&format!("/_matrix/client/{version}/events"), get(events))
            .route(&format!("/_matrix/client/{version}/events/{{eventId}}"), get(event))
            .route(&format!("/_matrix/client/{version}/initialSync"), get(initial_sync))
            // Parameter names as ruma's routes name them: the router refuses two names for
            // one path segment.
            .route(&format!("/_matrix/client/{version}/rooms/{{roomId}}/initialSync"), get(room_initial_sync))
            .route(&format!("/_matrix/client/{version}/rooms/{{roomId}}/send/{{eventType}}"), post(send_without_txn));
    }
    router
}

fn now_token(s: &Services) -> SyncToken {
    SyncToken { pos: s.rooms.stream_now(), typing: s.typing.version() }
}

/// An event of a sync section with its `room_id` back (sync leaves it out), in the old
/// format ([`v1`]).
fn in_room(mut event: Value, room_id: &RoomId) -> Value {
    if let Some(map) = event.as_object_mut() {
        map.insert("room_id".into(), json!(room_id));
    }
    v1(event)
}

/// An event as these endpoints have always shaped it (Synapse's "v1" format): `user_id`
/// beside `sender`; a presence event's content names its user and carries `status_msg`
/// and `last_active_ago` (null when unknown).
fn v1(mut event: Value) -> Value {
    let Some(map) = event.as_object_mut() else { return event };
    if let Some(sender) = map.get("sender").cloned() {
        map.entry("user_id").or_insert(sender.clone());
        if map.get("type").and_then(Value::as_str) == Some("m.presence") {
            if let Some(Value::Object(content)) = map.get_mut("content") {
                content.entry("user_id").or_insert(sender);
                content.entry("status_msg").or_insert(Value::Null);
                content.entry("last_active_ago").or_insert(Value::Null);
            }
        }
    }
    event
}

fn legacy_options(limit: usize, archived: bool) -> SyncOptions {
    SyncOptions { timeline_limit: limit, include_leave: archived, acknowledge: false, ..SyncOptions::default() }
}

/// Everything of a sync result as the flat list `/events` returns.
fn flatten(s: &Services, user: &UserId, result: SyncResult) -> Result<Vec<Value>> {
    let mut chunk: Vec<Value> = result.presence.into_iter().map(v1).collect();
    chunk.extend(result.account_data);
    chunk.extend(result.push_rules.map(|e| e.to_value()));
    for (room_id, room) in result.join {
        chunk.extend(values(&room.timeline).into_iter().map(|e| in_room(e, &room_id)));
        chunk.extend(room.ephemeral.into_iter().map(|e| in_room(e, &room_id)));
        chunk.extend(room.account_data.into_iter().map(|e| in_room(e, &room_id)));
    }
    for room_id in result.invite.keys() {
        if let Some(invite) = membership_event(s, room_id, user)? {
            chunk.push(invite);
        }
    }
    for (room_id, room) in result.leave {
        chunk.extend(values(&room.timeline).into_iter().map(|e| in_room(e, &room_id)));
    }
    Ok(chunk)
}

/// Events of a sync result as values, to be reshaped.
fn values(events: &[EventJson]) -> Vec<Value> {
    events.iter().map(EventJson::to_value).collect()
}

/// The user's member event in a room, as a client event.
fn membership_event(s: &Services, room_id: &RoomId, user: &UserId) -> Result<Option<Value>> {
    let Some(record) = s.rooms.membership(room_id, user)? else { return Ok(None) };
    Ok(s.rooms.pdu(&record.event_id)?.map(|pdu| v1(s.rooms.client_event(&pdu, None, None))))
}

/// A client of these endpoints is online, as one calling `/sync` is.
fn came_online(s: &Services, user: &UserId) -> Result<()> {
    crate::presence::set(&s.presence, &s.rooms, &s.notifier, user, "online", None)
}

fn number(query: &HashMap<String, String>, name: &str) -> Result<Option<u64>> {
    query.get(name).map(|v| v.parse::<u64>().map_err(|_| Error::invalid_param(format!("Invalid {name}")))).transpose()
}

/// `GET /events`: what happened since `from` (now, without it), waiting up to `timeout`
/// ms for something; with `room_id`, that room's events only, which a non-member may
/// read when the room is world-readable. A guest must name a room.
async fn events(
    State(s): State<Arc<Services>>,
    Query(query): Query<HashMap<String, String>>,
    parts: Parts,
) -> Result<Json<Value>> {
    let caller = caller_of(&s, &parts)?;
    let timeout = Duration::from_millis(number(&query, "timeout")?.unwrap_or(30_000)).min(MAX_TIMEOUT);
    // A limit that is no count is refused, as Synapse does (the stream sends what happened).
    number(&query, "limit")?;
    // An empty `from` is "now", as Synapse reads it (sytest sends one for users who never
    // took an initial sync).
    let from = match query.get("from").filter(|t| !t.is_empty()) {
        Some(token) => SyncToken::parse(token)?,
        None => now_token(&s),
    };
    let room: Option<OwnedRoomId> = match query.get("room_id") {
        Some(r) => Some(OwnedRoomId::try_from(r.as_str()).map_err(|_| Error::invalid_param("Invalid room_id"))?),
        None => None,
    };
    // A guest reads one room at a time (the spec's "as used for room previews").
    if caller.guest && room.is_none() {
        return Err(crate::api::guest::forbidden());
    }
    let peeking = match &room {
        Some(r) => !s.rooms.is_joined(r, &caller.user_id)?,
        None => false,
    };
    if let (Some(r), true) = (&room, peeking) {
        if !s.rooms.is_world_readable(r)? {
            return Err(Error::forbidden("You are not a member of this room"));
        }
    }
    let deadline = tokio::time::Instant::now() + timeout;
    let mut rx = s.notifier.subscribe(&caller.user_id);
    // Polling the stream is being online, as a sync is (and as on Synapse).
    let _syncing = s.presence.syncing(&caller.user_id);
    came_online(&s, &caller.user_id)?;
    loop {
        let now = now_token(&s);
        let chunk = match (&room, peeking) {
            (Some(r), true) => peek_between(&s, r, &caller.user_id, from, now)?,
            _ => {
                let opts = legacy_options(MAX_LIMIT, false);
                let result =
                    assemble(&s.sync_sources(), &caller.user_id, caller.device_id.as_str(), Some(from), now, &opts)?;
                let mut chunk = flatten(&s, &caller.user_id, result)?;
                if let Some(r) = &room {
                    chunk.retain(|e| e["room_id"] == r.as_str());
                }
                chunk
            }
        };
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if !chunk.is_empty() || left.is_zero() {
            return Ok(Json(json!({"start": from.encode(), "end": now.encode(), "chunk": chunk})));
        }
        // A room one only reads is not on one's notifier: look again now and then.
        let wait = if peeking { left.min(Duration::from_millis(250)) } else { left };
        let _ = tokio::time::timeout(wait, rx.changed()).await;
    }
}

/// What a reader of a world-readable room who is not in it sees happen there in
/// (from, to], as a member would on the stream: the room's events, then its members'
/// presence changes, its new receipts and who types.
fn peek_between(s: &Services, room: &RoomId, user: &UserId, from: SyncToken, to: SyncToken) -> Result<Vec<Value>> {
    let mut chunk = room_events_between(s, room, user, from.pos, to.pos)?;
    let items = s.rooms.stream.items_between(from.pos, to.pos)?;
    let members = s.rooms.members_shared(room, &MembershipState::Join)?;
    let mut seen = BTreeSet::new();
    let mut receipts = false;
    for (_, item) in &items {
        match item {
            StreamItem::Presence { user_id } if members.contains(user_id) && seen.insert(user_id) => {
                if let Some(event) = s.presence.event(user_id)? {
                    chunk.push(v1(event));
                }
            }
            StreamItem::Receipt { room_id } if room_id == room => receipts = true,
            _ => {}
        }
    }
    if receipts {
        if let Some(event) = s.rooms.receipt_event(room, Some(from.pos), user)? {
            chunk.push(in_room(event, room));
        }
    }
    if let Some(users) = s.typing.typing_since(room, Some(from.typing)) {
        chunk.push(in_room(json!({"type": "m.typing", "content": {"user_ids": users}}), room));
    }
    Ok(chunk)
}

/// A room's events in (from, to] that `user` may see, oldest first (at most a page).
fn room_events_between(s: &Services, room_id: &RoomId, user: &UserId, from: u64, to: u64) -> Result<Vec<Value>> {
    let page = s.rooms.page(room_id, to, Direction::Backward, MAX_LIMIT, to, Some(from))?;
    let mut visible = s.rooms.filter_visible(page, user)?;
    visible.reverse();
    Ok(visible.iter().map(|(_, pdu)| v1(s.rooms.client_event(pdu, None, None))).collect())
}

/// `GET /events/{eventId}`
async fn event(State(s): State<Arc<Services>>, Path(event_id): Path<String>, parts: Parts) -> Result<Json<Value>> {
    let caller = caller_of(&s, &parts)?;
    let id = OwnedEventId::try_from(event_id).map_err(|_| Error::invalid_param("Invalid event id"))?;
    let pdu = s.rooms.pdu(&id)?.ok_or_else(|| Error::not_found("Event not found"))?;
    let pdu = s.rooms.visible_as(pdu.into(), &caller.user_id)?.ok_or_else(|| Error::not_found("Event not found"))?;
    Ok(Json(v1(s.rooms.client_event(&pdu, None, None))))
}

/// One room of an initial sync, as the deprecated endpoints shape it.
fn room_entry(
    s: &Services,
    user: &UserId,
    room_id: &RoomId,
    membership: &str,
    (timeline, start): (Vec<Value>, Option<String>),
    end: &str,
    account_data: Vec<Value>,
) -> Result<Value> {
    // The state now, or for a past member, as they left it.
    let state_map = match membership {
        "join" | "invite" | "knock" => s.rooms.current_state_map(room_id)?,
        _ => match s.rooms.membership(room_id, user)? {
            Some(rec) => s.rooms.state_after(&rec.event_id)?,
            None => s.rooms.current_state_map(room_id)?,
        },
    };
    let state: Vec<Value> =
        s.rooms.state_events(&state_map)?.iter().map(|pdu| v1(s.rooms.client_event(pdu, None, None))).collect();
    let visibility = if s.rooms.is_published(room_id)? { "public" } else { "private" };
    let chunk: Vec<Value> = timeline.into_iter().map(|e| in_room(e, room_id)).collect();
    let start = start.unwrap_or_else(|| end.to_owned());
    Ok(json!({
        "room_id": room_id,
        "membership": membership,
        "messages": {"chunk": chunk, "start": start, "end": end},
        "state": state,
        "account_data": account_data,
        "visibility": visibility,
    }))
}

/// `GET /initialSync`
async fn initial_sync(
    State(s): State<Arc<Services>>,
    Query(query): Query<HashMap<String, String>>,
    parts: Parts,
) -> Result<Json<Value>> {
    let caller: Caller = caller_of(&s, &parts)?;
    came_online(&s, &caller.user_id)?;
    let limit = number(&query, "limit")?.unwrap_or(10).min(MAX_LIMIT as u64) as usize;
    let archived = query.get("archived").is_some_and(|a| a == "true");
    let now = now_token(&s);
    let opts = legacy_options(limit.max(1), archived);
    let result = assemble(&s.sync_sources(), &caller.user_id, caller.device_id.as_str(), None, now, &opts)?;
    let end = now.encode();
    let mut rooms = Vec::new();
    let mut receipts = Vec::new();
    for (room_id, room) in result.join {
        for e in &room.ephemeral {
            if e["type"] == "m.receipt" {
                receipts.push(in_room(e.clone(), &room_id));
            }
        }
        let timeline = if limit == 0 { Vec::new() } else { values(&room.timeline) };
        rooms.push(room_entry(
            &s,
            &caller.user_id,
            &room_id,
            "join",
            (timeline, room.prev_batch),
            &end,
            room.account_data,
        )?);
    }
    for (room_id, room) in result.leave {
        let membership = s.rooms.membership(&room_id, &caller.user_id)?.map(|m| m.membership.to_string());
        let membership = membership.unwrap_or_else(|| "leave".to_owned());
        rooms.push(room_entry(
            &s,
            &caller.user_id,
            &room_id,
            &membership,
            (values(&room.timeline), room.prev_batch),
            &end,
            vec![],
        )?);
    }
    for room_id in result.invite.keys() {
        let mut entry = json!({"room_id": room_id, "membership": "invite", "visibility": "private"});
        if let Some(invite) = membership_event(&s, room_id, &caller.user_id)? {
            entry["invite"] = invite;
        }
        rooms.push(entry);
    }
    Ok(Json(json!({
        "end": end,
        "rooms": rooms,
        "presence": result.presence.into_iter().map(v1).collect::<Vec<_>>(),
        // The account data the user stored. /sync's default push rules come apart
        // (`SyncResult::push_rules`) and are left out, as on Synapse, whose /initialSync
        // lists only what was stored.
        "account_data": result.account_data,
        "receipts": receipts,
    })))
}

/// `GET /rooms/{roomId}/initialSync`
async fn room_initial_sync(
    State(s): State<Arc<Services>>,
    Path(room_id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    parts: Parts,
) -> Result<Json<Value>> {
    let caller = caller_of(&s, &parts)?;
    let room_id = OwnedRoomId::try_from(room_id).map_err(|_| Error::invalid_param("Invalid room id"))?;
    let limit = number(&query, "limit")?.unwrap_or(10).min(MAX_LIMIT as u64) as usize;
    // Members see up to now, past members up to their leave, others a world-readable room.
    // (Members and readers of a world-readable room see "up to now".)
    let until = s.rooms.require_visible(&room_id, &caller.user_id)?.min(s.rooms.stream_now());
    let membership = s.rooms.membership(&room_id, &caller.user_id)?.map(|m| m.membership.to_string());
    let page = match limit {
        0 => Vec::new(),
        _ => s.rooms.page(&room_id, until, Direction::Backward, limit, until, None)?,
    };
    let mut page = s.rooms.filter_visible(page, &caller.user_id)?;
    page.reverse();
    let start = page.first().map(|(pos, _)| crate::rooms::timeline::token(pos.saturating_sub(1)));
    let timeline: Vec<Value> = page.iter().map(|(_, pdu)| s.rooms.client_event(pdu, None, None)).collect();
    let end = crate::rooms::timeline::token(until);
    let account_data = s.account_data.changes(&caller.user_id, None)?.rooms.remove(&room_id).unwrap_or_default();
    let shown = membership.clone().unwrap_or_else(|| "leave".to_owned());
    let mut entry = room_entry(&s, &caller.user_id, &room_id, &shown, (timeline, start), &end, account_data)?;
    if membership.is_none() {
        // Not a member: as Synapse, no membership at all.
        if let Some(map) = entry.as_object_mut() {
            map.remove("membership");
        }
    }
    // Presence and receipts are live: for members and readers of a world-readable room,
    // not for those who left (who see the room as they left it), as Synapse.
    let live = matches!(membership.as_deref(), Some("join") | None);
    let mut presence = Vec::new();
    let mut receipts = Vec::new();
    if live {
        for member in s.rooms.members(&room_id, &MembershipState::Join)? {
            if let Some(p) = s.presence.event(&member)? {
                presence.push(v1(p));
            }
        }
        receipts.extend(s.rooms.receipt_event(&room_id, None, &caller.user_id)?.map(|r| in_room(r, &room_id)));
    }
    entry["presence"] = json!(presence);
    entry["receipts"] = json!(receipts);
    Ok(Json(entry))
}

/// `POST /rooms/{roomId}/send/{eventType}`: a send without a transaction id (each call
/// is a new event).
async fn send_without_txn(
    State(s): State<Arc<Services>>,
    Path((room_id, event_type)): Path<(String, String)>,
    parts: Parts,
    body: axum::body::Bytes,
) -> Result<Json<Value>> {
    let caller = caller_of(&s, &parts)?;
    let room_id = OwnedRoomId::try_from(room_id).map_err(|_| Error::invalid_param("Invalid room id"))?;
    let content: Map<String, Value> = match serde_json::from_slice(&body) {
        Ok(Value::Object(m)) => m,
        Ok(_) => return Err(Error::bad_json("The event content must be an object")),
        Err(_) => return Err(Error::not_json("The body is not JSON")),
    };
    if event_type == "m.room.encrypted" && !s.config.allow_encryption {
        return Err(Error::forbidden("Encryption is disabled on this server"));
    }
    s.rooms.require_joined(&room_id, &caller.user_id)?;
    let new = NewEvent::message(event_type, content);
    let pdu = s.rooms.append_local(&room_id, &caller.user_id, new, None)?;
    Ok(Json(json!({"event_id": pdu.event_id})))
}
