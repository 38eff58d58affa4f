//! Client-server API, "Server Side Search": `POST /_matrix/client/v3/search` over
//! `room_events` — `search_term` in message bodies, room names and topics (`keys`), the
//! room event `filter`, `order_by` rank or recent, `event_context`, `include_state`,
//! `groupings` by room or sender, `highlights`, and `next_batch` paging. Only the rooms
//! the caller is joined to are searched, and each match is shown only as the caller may
//! see it (history visibility, redaction, erasure). The index is `search`.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use axum::{
    body::Bytes,
    extract::{Query, State},
    http::request::Parts,
    routing::post,
    Json, Router,
};
use ruma::{api::Direction, events::StateEventType, OwnedRoomId};
use serde_json::{json, Map, Value};

use super::message::type_matches;
use crate::{
    api::caller_of,
    error::{Error, Result},
    rooms::pdu::Pdu,
    search::{self, Search},
    Services,
};

/// Results per page when the filter names no limit, and the most one page holds.
const DEFAULT_LIMIT: usize = 10;
const MAX_LIMIT: usize = 50;
/// Most events of context on either side.
const MAX_CONTEXT: usize = 20;

pub fn routes() -> Router<Arc<Services>> {
    Router::new().route("/_matrix/client/v3/search", post(search)).route("/_matrix/client/r0/search", post(search))
}

/// A list of strings in a filter, if given.
fn strings(filter: &Value, key: &str) -> Result<Option<Vec<String>>> {
    match filter.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| {
                i.as_str().map(str::to_owned).ok_or_else(|| Error::bad_json(format!("filter.{key} holds strings")))
            })
            .collect::<Result<Vec<_>>>()
            .map(Some),
        Some(_) => Err(Error::bad_json(format!("filter.{key} must be a list"))),
    }
}

/// The filter's rules besides rooms and limit, checked per event.
struct EventFilter {
    senders: Option<Vec<String>>,
    not_senders: Vec<String>,
    types: Option<Vec<String>>,
    not_types: Vec<String>,
    contains_url: Option<bool>,
}

impl EventFilter {
    fn parse(filter: &Value) -> Result<Self> {
        Ok(EventFilter {
            senders: strings(filter, "senders")?,
            not_senders: strings(filter, "not_senders")?.unwrap_or_default(),
            types: strings(filter, "types")?,
            not_types: strings(filter, "not_types")?.unwrap_or_default(),
            contains_url: filter.get("contains_url").and_then(Value::as_bool),
        })
    }

    fn allows(&self, pdu: &Pdu) -> bool {
        let sender = pdu.sender.as_str();
        let kind = pdu.kind.to_string();
        if self.senders.as_ref().is_some_and(|s| !s.iter().any(|x| x == sender))
            || self.not_senders.iter().any(|x| x == sender)
            || self.types.as_ref().is_some_and(|t| !t.iter().any(|p| type_matches(p, &kind)))
            || self.not_types.iter().any(|p| type_matches(p, &kind))
        {
            return false;
        }
        match self.contains_url {
            Some(wanted) => pdu.content_value().get("url").is_some() == wanted,
            None => true,
        }
    }
}

async fn search(
    State(s): State<Arc<Services>>,
    Query(query): Query<HashMap<String, String>>,
    parts: Parts,
    body: Bytes,
) -> Result<Json<Value>> {
    let caller = caller_of(&s, &parts)?;
    let body: Value = serde_json::from_slice(&body).map_err(|_| Error::not_json("Content not JSON."))?;
    let categories = body
        .get("search_categories")
        .filter(|c| c.is_object())
        .ok_or_else(|| Error::missing_param("Missing search_categories"))?;
    let Some(criteria) = categories.get("room_events") else {
        return Ok(Json(json!({"search_categories": {}})));
    };
    let term = criteria
        .get("search_term")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::missing_param("Missing room_events.search_term"))?;
    let kinds: Vec<&str> = match criteria.get("keys") {
        None | Some(Value::Null) => search::KEYS.iter().map(|(_, k)| *k).collect(),
        Some(Value::Array(keys)) => keys
            .iter()
            .map(|k| {
                k.as_str()
                    .and_then(|k| search::KEYS.iter().find(|(name, _)| *name == k))
                    .map(|(_, kind)| *kind)
                    .ok_or_else(|| Error::invalid_param("keys may be content.body, content.name and content.topic"))
            })
            .collect::<Result<_>>()?,
        Some(_) => return Err(Error::bad_json("keys must be a list")),
    };
    let recent_first = match criteria.get("order_by").and_then(Value::as_str) {
        None | Some("rank") => false,
        Some("recent") => true,
        Some(_) => return Err(Error::invalid_param("order_by must be rank or recent")),
    };
    let filter = criteria.get("filter").cloned().unwrap_or(Value::Null);
    let limit = filter.get("limit").and_then(Value::as_u64).map_or(DEFAULT_LIMIT, |l| (l as usize).clamp(1, MAX_LIMIT));
    let only_rooms = strings(&filter, "rooms")?;
    let not_rooms = strings(&filter, "not_rooms")?.unwrap_or_default();
    let event_filter = EventFilter::parse(&filter)?;
    let mut offset = match query.get("next_batch") {
        Some(t) => t
            .strip_prefix('o')
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| Error::invalid_param("Invalid next_batch"))?,
        None => 0,
    };
    let rooms: Vec<OwnedRoomId> = s
        .rooms
        .joined_rooms(&caller.user_id)?
        .into_iter()
        .filter(|r| only_rooms.as_ref().is_none_or(|only| only.iter().any(|o| o == r.as_str())))
        .filter(|r| !not_rooms.iter().any(|n| n == r.as_str()))
        .collect();

    // What was sent before the search is searched: the indexer gathers events for a
    // moment before it takes them in, and is hurried here.
    s.search.catch_up(s.stream.now()).await;
    // Read matches in batches until the page is full of what the caller may see.
    let viewer = Some((&*caller.user_id, caller.device_id.as_str()));
    let mut found: Vec<(search::Hit, Arc<Pdu>)> = Vec::new();
    let mut total;
    loop {
        let q = search::Query { term, rooms: &rooms, kinds: &kinds, recent_first, offset, limit: limit * 2 };
        let (hits, count) = s.search.find(&q)?;
        total = count;
        if hits.is_empty() {
            break;
        }
        for hit in hits {
            offset += 1;
            let Some(pdu) = s.rooms.pdu_shared(&hit.event_id)? else { continue };
            let Some(seen) = s.rooms.visible_as(pdu, &caller.user_id)? else { continue };
            let text = seen.content_value();
            if ["body", "name", "topic"].iter().all(|f| text.get(f).is_none()) || !event_filter.allows(&seen) {
                continue; // redacted or erased since, or filtered out
            }
            found.push((hit, seen));
            if found.len() == limit {
                break;
            }
        }
        if found.len() == limit || offset >= total {
            break;
        }
    }

    let context = criteria.get("event_context").filter(|c| c.is_object());
    let mut results = Vec::with_capacity(found.len());
    for (hit, pdu) in &found {
        let meta = s.rooms.event_meta(&pdu.event_id)?;
        let mut result = json!({"rank": hit.rank, "result": s.rooms.client_event(pdu, meta.as_ref(), viewer)});
        if let (Some(ctx), Some(meta)) = (context, meta.as_ref()) {
            result["context"] = event_context(&s, &caller.user_id, viewer, ctx, &hit.room_id, meta.stream, pdu)?;
        }
        results.push(result);
    }
    let mut out = json!({
        "results": results,
        "count": total,
        "highlights": Search::highlights(term),
    });
    if offset < total && !found.is_empty() {
        out["next_batch"] = json!(format!("o{offset}"));
    }
    if criteria.get("include_state").and_then(Value::as_bool) == Some(true) {
        let mut state = Map::new();
        for (hit, _) in &found {
            if state.contains_key(hit.room_id.as_str()) {
                continue;
            }
            let map = s.rooms.current_state_map(&hit.room_id)?;
            let events: Vec<Value> =
                s.rooms.state_events(&map)?.iter().map(|p| s.rooms.client_event(p, None, None)).collect();
            state.insert(hit.room_id.to_string(), Value::Array(events));
        }
        out["state"] = Value::Object(state);
    }
    if let Some(groupings) = criteria.get("groupings").and_then(|g| g.get("group_by")).and_then(Value::as_array) {
        let mut groups = Map::new();
        for grouping in groupings {
            let key = grouping.get("key").and_then(Value::as_str).unwrap_or_default();
            let by: BTreeMap<String, Vec<String>> = match key {
                "room_id" | "sender" => found.iter().fold(BTreeMap::new(), |mut acc, (hit, _)| {
                    let k = if key == "room_id" { hit.room_id.to_string() } else { hit.sender.to_string() };
                    acc.entry(k).or_default().push(hit.event_id.to_string());
                    acc
                }),
                _ => return Err(Error::invalid_param("groupings may group by room_id or sender")),
            };
            let entries: Map<String, Value> = by
                .into_iter()
                .enumerate()
                .map(|(order, (k, ids))| (k, json!({"results": ids, "order": order})))
                .collect();
            groups.insert(key.to_owned(), Value::Object(entries));
        }
        out["groups"] = Value::Object(groups);
    }
    Ok(Json(json!({"search_categories": {"room_events": out}})))
}

/// The events around a match, as `/context` gives them, with the senders' profiles when
/// asked for.
fn event_context(
    s: &Services,
    user: &ruma::UserId,
    viewer: Option<(&ruma::UserId, &str)>,
    ctx: &Value,
    room: &OwnedRoomId,
    pos: u64,
    pdu: &Pdu,
) -> Result<Value> {
    let count = |key: &str| ctx.get(key).and_then(Value::as_u64).map_or(5, |n| (n as usize).min(MAX_CONTEXT));
    let (before_n, after_n) = (count("before_limit"), count("after_limit"));
    let until = s.rooms.require_visible(room, user)?;
    let before = s.rooms.page(room, pos.saturating_sub(1), Direction::Backward, before_n.max(1), until, None)?;
    let after = s.rooms.page(room, pos, Direction::Forward, after_n.max(1), until, None)?;
    let before = s.rooms.filter_visible(before.into_iter().take(before_n).collect(), user)?;
    let after = s.rooms.filter_visible(after.into_iter().take(after_n).collect(), user)?;
    let client = |p: &Pdu| -> Result<Value> {
        let meta = s.rooms.event_meta(&p.event_id)?;
        Ok(s.rooms.client_event(p, meta.as_ref(), viewer))
    };
    let mut out = json!({
        "events_before": before.iter().map(|(_, p)| client(p)).collect::<Result<Vec<_>>>()?,
        "events_after": after.iter().map(|(_, p)| client(p)).collect::<Result<Vec<_>>>()?,
        "start": crate::rooms::timeline::token(before.last().map_or(pos.saturating_sub(1), |(p, _)| p.saturating_sub(1))),
        "end": crate::rooms::timeline::token(after.last().map_or(pos, |(p, _)| *p)),
    });
    if ctx.get("include_profile").and_then(Value::as_bool) == Some(true) {
        let mut profiles = Map::new();
        for sender in std::iter::once(&pdu.sender).chain(before.iter().chain(&after).map(|(_, p)| &p.sender)) {
            if profiles.contains_key(sender.as_str()) {
                continue;
            }
            let member = s.rooms.state_event(room, &StateEventType::RoomMember, sender.as_str())?;
            let content = member.map(|m| m.content_value()).unwrap_or(Value::Null);
            let mut profile = Map::new();
            for field in ["displayname", "avatar_url"] {
                if let Some(v) = content.get(field).filter(|v| v.is_string()) {
                    profile.insert(field.into(), v.clone());
                }
            }
            profiles.insert(sender.to_string(), Value::Object(profile));
        }
        out["profile_info"] = Value::Object(profiles);
    }
    Ok(out)
}
