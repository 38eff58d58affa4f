//! Client-server API: sending events and paginating history.

use std::sync::Arc;

use ruma::{
    api::{
        client::message::{get_message_events, send_message_event},
        Direction,
    },
    events::TimelineEventType,
};
use serde_json::{Map, Value};

use super::raw;
use crate::{
    api::Ruma,
    error::{Error, Result},
    rooms::{
        append::{NewEvent, TxnRef},
        backfill::{backfill_token, parse_backfill_token},
        timeline::{parse_token, token},
    },
    Services,
};

/// `PUT /_matrix/client/v3/rooms/{roomId}/send/{eventType}/{txnId}`
///
/// Idempotent per device and transaction id: a retry returns the first event's id.
pub async fn send_message_event(
    s: Arc<Services>,
    req: Ruma<send_message_event::v3::Request>,
) -> Result<send_message_event::v3::Response> {
    let caller = req.caller()?.clone();
    let body = req.body;
    let content: Map<String, Value> = match serde_json::from_str(body.body.json().get()) {
        Ok(Value::Object(m)) => m,
        _ => return Err(Error::bad_json("Event content must be an object")),
    };
    let kind = TimelineEventType::from(body.event_type.to_string());
    if kind == TimelineEventType::RoomEncrypted && !s.config.allow_encryption {
        return Err(Error::forbidden("Encryption is disabled on this server"));
    }
    s.rooms.require_joined(&body.room_id, &caller.user_id)?;
    let new = NewEvent::message(body.event_type.to_string(), content);
    let txn = TxnRef { device_id: caller.device_id.as_str(), txn_id: body.txn_id.as_str() };
    let pdu = s.rooms.append_local(&body.room_id, &caller.user_id, new, Some(txn))?;
    Ok(send_message_event::v3::Response::new(pdu.event_id))
}

/// Largest `/messages` page.
pub const MAX_MESSAGES_LIMIT: usize = 1000;

/// `GET /_matrix/client/v3/rooms/{roomId}/messages`
pub async fn get_message_events(
    s: Arc<Services>,
    req: Ruma<get_message_events::v3::Request>,
) -> Result<get_message_events::v3::Response> {
    let caller = req.caller()?;
    let body = &req.body;
    let until = s.rooms.require_visible(&body.room_id, &caller.user_id)?;
    let limit = usize::try_from(u64::from(body.limit)).unwrap_or(MAX_MESSAGES_LIMIT).clamp(1, MAX_MESSAGES_LIMIT);
    let viewer = Some((&*caller.user_id, caller.device_id.as_str()));
    // A place among the history fetched from other servers (behind the timeline).
    if let Some(row) = body.from.as_deref().and_then(parse_backfill_token) {
        let mut chunk = Vec::new();
        let end = match body.dir {
            Direction::Backward => {
                backfilled_history(&s, &body.room_id, &caller.user_id, viewer, row, limit, &mut chunk).await?
            }
            // Towards the present: the rows before `row`, newest last, then the timeline.
            Direction::Forward => {
                let start = row.saturating_sub(u64::try_from(limit).unwrap_or(u64::MAX));
                let mut rows = s.rooms.backfilled_page(&body.room_id, start, limit)?;
                rows.retain(|(n, _)| *n < row);
                rows.reverse();
                for (_, pdu) in &rows {
                    if let Some(pdu) = s.rooms.visible_as(pdu.clone(), &caller.user_id)? {
                        let meta = s.rooms.event_meta(&pdu.event_id)?;
                        chunk.push(raw(&s.rooms.client_event(&pdu, meta.as_ref(), viewer))?);
                    }
                }
                Some(if start == 0 { token(0) } else { backfill_token(start) })
            }
        };
        let mut res = get_message_events::v3::Response::new();
        res.start = backfill_token(row);
        res.end = end;
        res.chunk = chunk;
        return Ok(res);
    }
    let from = match &body.from {
        Some(t) => parse_token(t)?,
        None => match body.dir {
            Direction::Backward => s.rooms.stream_now(),
            Direction::Forward => 0,
        },
    };
    let to = body.to.as_deref().filter(|t| parse_backfill_token(t).is_none()).map(parse_token).transpose()?;
    let filter = &body.filter;

    // Events filtered out or hidden by history visibility still advance the cursor; a
    // bounded number of extra pages is read to fill the chunk. The cursor never moves past
    // an event that was neither returned nor skipped, so the next page starts right there.
    let mut chunk = Vec::new();
    let mut cursor = from;
    let mut exhausted = false;
    'pages: for _ in 0..10 {
        let page = s.rooms.page(&body.room_id, cursor, body.dir, limit, until, to)?;
        exhausted = page.len() < limit;
        for (pos, pdu) in page {
            if chunk.len() >= limit {
                exhausted = false;
                break 'pages;
            }
            cursor = match body.dir {
                Direction::Backward => pos.saturating_sub(1),
                Direction::Forward => pos,
            };
            let kind = pdu.kind.to_string();
            if filter.types.as_ref().is_some_and(|t| !t.iter().any(|x| type_matches(x, &kind)))
                || filter.not_types.iter().any(|x| type_matches(x, &kind))
            {
                continue;
            }
            let Some(pdu) = s.rooms.visible_as(pdu, &caller.user_id)? else { continue };
            let meta = s.rooms.event_meta(&pdu.event_id)?;
            chunk.push(raw(&s.rooms.client_event(&pdu, meta.as_ref(), viewer))?);
        }
        if exhausted || chunk.len() >= limit {
            break;
        }
    }
    let mut end = if exhausted { None } else { Some(token(cursor)) };
    // Past the start of the timeline: the history fetched from other servers, fetched now
    // if need be.
    if exhausted && body.dir == Direction::Backward && to.is_none() && chunk.len() < limit {
        let need = limit - chunk.len();
        end = backfilled_history(&s, &body.room_id, &caller.user_id, viewer, 0, need, &mut chunk).await?;
    }
    // A page with events has an `end`, as on Synapse (clients and sytest read it); the page
    // after the last one is empty and has none.
    if end.is_none() && !chunk.is_empty() {
        end = Some(token(cursor));
    }

    // Lazy-loading members: the member events of the chunk's senders.
    let mut state = Vec::new();
    if !matches!(filter.lazy_load_options, ruma::api::client::filter::LazyLoadOptions::Disabled) {
        let mut senders: Vec<String> = chunk
            .iter()
            .filter_map(|e| serde_json::from_str::<Value>(e.json().get()).ok())
            .filter_map(|v| v["sender"].as_str().map(str::to_owned))
            .collect();
        senders.sort();
        senders.dedup();
        let current = s.rooms.current_state_map(&body.room_id)?;
        for sender in senders {
            if let Some(member) =
                s.rooms.state_event_in(&current, &ruma::events::StateEventType::RoomMember, &sender)?
            {
                state.push(raw(&s.rooms.client_event(&member, None, None))?);
            }
        }
    }
    let mut res = get_message_events::v3::Response::new();
    res.start = token(from);
    res.end = end;
    res.chunk = chunk;
    res.state = state;
    Ok(res)
}

/// Backfilled events from `row` on, going back: what is stored, then (when federation is
/// on and more history exists elsewhere) what the servers in the room send. Appends the
/// ones `user` may see to `chunk`; returns the token after the last row read, or `None`
/// when nothing older exists.
async fn backfilled_history(
    s: &Services,
    room: &ruma::RoomId,
    user: &ruma::UserId,
    viewer: Option<(&ruma::UserId, &str)>,
    row: u64,
    limit: usize,
    chunk: &mut Vec<ruma::serde::Raw<ruma::events::AnyTimelineEvent>>,
) -> Result<Option<String>> {
    let mut rows = s.rooms.backfilled_page(room, row, limit)?;
    if rows.len() < limit && s.config.allow_federation {
        let fetched = s.federation.backfill_room(room, limit - rows.len()).await?;
        if fetched > 0 {
            rows = s.rooms.backfilled_page(room, row, limit)?;
        }
    }
    let mut next = row;
    for (n, pdu) in &rows {
        next = n + 1;
        if let Some(pdu) = s.rooms.visible_as(pdu.clone(), user)? {
            let meta = s.rooms.event_meta(&pdu.event_id)?;
            chunk.push(raw(&s.rooms.client_event(&pdu, meta.as_ref(), viewer))?);
        }
    }
    let more = rows.len() >= limit || s.rooms.backfill_frontier(room)?.is_some();
    Ok((more && !rows.is_empty()).then(|| backfill_token(next)))
}

/// Event type filters may end in `*`.
pub fn type_matches(pattern: &str, kind: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => kind.starts_with(prefix),
        None => pattern == kind,
    }
}

/// `GET /_matrix/client/v1/rooms/{roomId}/timestamp_to_event?ts=&dir=f|b` ("jump to
/// date"): the first event at or after `ts` (`f`), or the last at or before it (`b`),
/// among those the caller may see; 404 when there is none.
async fn timestamp_to_event(
    axum::extract::State(s): axum::extract::State<Arc<Services>>,
    axum::extract::Path(room): axum::extract::Path<String>,
    axum::extract::Query(query): axum::extract::Query<std::collections::HashMap<String, String>>,
    parts: http::request::Parts,
) -> Result<axum::Json<serde_json::Value>> {
    let caller = crate::api::caller_of(&s, &parts)?;
    let room = ruma::OwnedRoomId::try_from(room).map_err(|_| Error::invalid_param("Invalid room id"))?;
    let ts = query
        .get("ts")
        .ok_or_else(|| Error::missing_param("Missing ts"))?
        .parse::<u64>()
        .map_err(|_| Error::invalid_param("ts must be a timestamp in milliseconds"))?;
    let forward = match query.get("dir").map(String::as_str) {
        Some("f") => true,
        Some("b") => false,
        Some(_) => return Err(Error::invalid_param("dir must be f or b")),
        None => return Err(Error::missing_param("Missing dir")),
    };
    let (event_id, at) = s
        .rooms
        .event_at_time(&room, &caller.user_id, ts, forward)?
        .ok_or_else(|| Error::not_found("No event found in that direction"))?;
    Ok(axum::Json(serde_json::json!({"event_id": event_id, "origin_server_ts": at})))
}

/// The event endpoints written as plain routes.
pub fn routes() -> axum::Router<Arc<Services>> {
    axum::Router::new()
        .route("/_matrix/client/v1/rooms/{room_id}/timestamp_to_event", axum::routing::get(timestamp_to_event))
}
