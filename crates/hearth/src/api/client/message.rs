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
        backfill::{anchor_of, backfill_token, index_of, parse_backfill_token, row_of},
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

/// Where `/messages` reads: the timeline at a stream position, or the history fetched
/// from other servers at a row behind one of its anchors (see [`crate::rooms::backfill`]).
#[derive(Debug, Clone, Copy)]
enum Place {
    Timeline(u64),
    Backfilled(u64),
}

impl Place {
    fn token(self) -> String {
        match self {
            Place::Timeline(pos) => token(pos),
            Place::Backfilled(row) => backfill_token(row),
        }
    }
}

/// Where a page goes on after reading one place: `Go` reads on there if the page has
/// room; `Stop` ends the page (it is where a next request would find nothing new).
enum Next {
    Go(Place),
    Stop(Place),
}

/// Most places one page reads across (timeline, a gap's history, the timeline before it…).
const MAX_PLACES: usize = 6;

/// `GET /_matrix/client/v3/rooms/{roomId}/messages`
///
/// Backwards, a page that reaches an event with a gap behind it (a rejoin) goes on into
/// the history fetched for that gap, and then into the timeline before it; one that
/// reaches the start of the timeline goes on into the history from before this server
/// joined. Forwards, the history behind an anchor leads back into the timeline; the
/// timeline read forwards does not stop at gaps.
pub async fn get_message_events(
    s: Arc<Services>,
    req: Ruma<get_message_events::v3::Request>,
) -> Result<get_message_events::v3::Response> {
    let caller = req.caller()?;
    let body = &req.body;
    let until = s.rooms.require_visible(&body.room_id, &caller.user_id)?;
    let limit = usize::try_from(u64::from(body.limit)).unwrap_or(MAX_MESSAGES_LIMIT).clamp(1, MAX_MESSAGES_LIMIT);
    let start = match &body.from {
        Some(t) => match parse_backfill_token(t) {
            Some(row) => Place::Backfilled(row),
            None => Place::Timeline(parse_token(t)?),
        },
        None => Place::Timeline(match body.dir {
            Direction::Backward => s.rooms.stream_now(),
            Direction::Forward => 0,
        }),
    };
    let to = body.to.as_deref().filter(|t| parse_backfill_token(t).is_none()).map(parse_token).transpose()?;
    let mut page = Page {
        s: &s,
        room: &body.room_id,
        user: &caller.user_id,
        viewer: Some((&*caller.user_id, caller.device_id.as_str())),
        filter: &body.filter,
        dir: body.dir,
        limit,
        until,
        to,
        chunk: Vec::new(),
    };
    let mut place = start;
    let mut end = None;
    for _ in 0..MAX_PLACES {
        let next = match place {
            Place::Timeline(pos) => page.timeline(pos)?,
            Place::Backfilled(row) => page.backfilled(row).await?,
        };
        match next {
            // A page with events has an `end`, as on Synapse (clients and sytest read it);
            // the page after the last one is empty and has none.
            Next::Stop(at) => {
                end = (!page.chunk.is_empty()).then_some(at);
                break;
            }
            Next::Go(at) => {
                end = Some(at);
                if page.chunk.len() >= limit {
                    break;
                }
                place = at;
            }
        }
    }
    let chunk = page.chunk;

    // Lazy-loading members: the member events of the chunk's senders.
    let filter = &body.filter;
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
    res.start = start.token();
    res.end = end.map(Place::token);
    res.chunk = chunk;
    res.state = state;
    Ok(res)
}

/// One `/messages` page being filled.
struct Page<'a> {
    s: &'a Services,
    room: &'a ruma::RoomId,
    user: &'a ruma::UserId,
    viewer: Option<(&'a ruma::UserId, &'a str)>,
    filter: &'a ruma::api::client::filter::RoomEventFilter,
    dir: Direction,
    limit: usize,
    until: u64,
    to: Option<u64>,
    chunk: Vec<ruma::serde::Raw<ruma::events::AnyTimelineEvent>>,
}

impl Page<'_> {
    fn room_left(&self) -> usize {
        self.limit.saturating_sub(self.chunk.len())
    }

    /// Adds an event if the filter passes it and the user may see it.
    fn push(&mut self, pdu: Arc<crate::rooms::pdu::Pdu>, meta: Option<&crate::rooms::EventMeta>) -> Result<()> {
        let kind = pdu.kind.to_string();
        if self.filter.types.as_ref().is_some_and(|t| !t.iter().any(|x| type_matches(x, &kind)))
            || self.filter.not_types.iter().any(|x| type_matches(x, &kind))
        {
            return Ok(());
        }
        if let Some(pdu) = self.s.rooms.visible_as(pdu, self.user)? {
            self.chunk.push(raw(&self.s.rooms.client_event(&pdu, meta, self.viewer))?);
        }
        Ok(())
    }

    /// Timeline events from stream position `from` on. Events filtered out or hidden by
    /// history visibility still advance the cursor; a bounded number of extra pages is read
    /// to fill the chunk. The cursor never moves past an event that was neither returned
    /// nor skipped, so the next page starts right there.
    fn timeline(&mut self, from: u64) -> Result<Next> {
        let need = self.room_left().max(1);
        let mut cursor = from;
        let mut exhausted = false;
        'pages: for _ in 0..10 {
            let page = self.s.rooms.page(self.room, cursor, self.dir, need, self.until, self.to)?;
            exhausted = page.len() < need;
            for (pos, pdu) in page {
                if self.chunk.len() >= self.limit {
                    exhausted = false;
                    break 'pages;
                }
                cursor = match self.dir {
                    Direction::Backward => pos.saturating_sub(1),
                    Direction::Forward => pos,
                };
                let meta = self.s.rooms.event_meta(&pdu.event_id)?;
                let gap_behind = meta.as_ref().is_some_and(|m| m.gap_behind);
                self.push(pdu, meta.as_ref())?;
                if gap_behind && self.dir == Direction::Backward && self.to.is_none() {
                    return Ok(Next::Go(Place::Backfilled(row_of(pos, 0))));
                }
            }
            if exhausted || self.chunk.len() >= self.limit {
                break;
            }
        }
        if !exhausted {
            return Ok(Next::Go(Place::Timeline(cursor)));
        }
        // Past the start of the timeline: the history from before this server joined.
        if self.dir == Direction::Backward && self.to.is_none() {
            return Ok(Next::Go(Place::Backfilled(row_of(0, 0))));
        }
        Ok(Next::Stop(Place::Timeline(cursor)))
    }

    /// Backfilled events from `row` on. Backwards: what is stored, then (when federation
    /// is on and more history exists elsewhere) what the servers in the room send; once a
    /// gap's history runs out (or cannot be fetched now) the timeline before it follows.
    /// Forwards: the rows nearer the anchor, then the timeline from the anchor on.
    async fn backfilled(&mut self, row: u64) -> Result<Next> {
        let (s, room) = (self.s, self.room);
        let need = self.room_left().max(1);
        let anchor = anchor_of(row);
        // The timeline from the anchor's event on (from the start for anchor 0).
        let after_anchor = Place::Timeline(anchor.saturating_sub(1));
        if self.dir == Direction::Forward {
            let first = row_of(anchor, index_of(row).saturating_sub(u64::try_from(need).unwrap_or(u64::MAX)));
            let mut rows = s.rooms.backfilled_page(room, first, need)?;
            rows.retain(|(n, _)| *n < row);
            for (_, pdu) in rows.into_iter().rev() {
                let meta = s.rooms.event_meta(&pdu.event_id)?;
                self.push(pdu, meta.as_ref())?;
            }
            return Ok(Next::Go(if index_of(first) == 0 { after_anchor } else { Place::Backfilled(first) }));
        }
        let mut rows = s.rooms.backfilled_page(room, row, need)?;
        if rows.len() < need && s.config.allow_federation {
            let fetched = s.federation.backfill_room(room, anchor, need - rows.len()).await?;
            if fetched > 0 {
                rows = s.rooms.backfilled_page(room, row, need)?;
            }
        }
        let full = rows.len() >= need;
        let next_row = rows.last().map_or(row, |(n, _)| n + 1);
        for (_, pdu) in rows {
            let meta = s.rooms.event_meta(&pdu.event_id)?;
            self.push(pdu, meta.as_ref())?;
        }
        Ok(match (full, anchor) {
            (true, _) => Next::Go(Place::Backfilled(next_row)),
            // Nothing older than the room's first event here, or not now.
            (false, 0) => Next::Stop(Place::Backfilled(next_row)),
            (false, _) => Next::Go(Place::Timeline(anchor - 1)),
        })
    }
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
