//! Client-server API: `/context` around an event, and `/relations` of an event.

use std::sync::Arc;

use ruma::api::{
    client::{
        context::get_context,
        relations::{
            get_relating_events, get_relating_events_with_rel_type, get_relating_events_with_rel_type_and_event_type,
        },
    },
    Direction,
};
use serde_json::Value;

use super::raw;
use crate::{
    api::Ruma,
    error::{Error, Result},
    rooms::{relations::RelationQuery, timeline::token},
    Services,
};

/// `GET /_matrix/client/v3/rooms/{roomId}/context/{eventId}`
pub async fn get_context(s: Arc<Services>, req: Ruma<get_context::v3::Request>) -> Result<get_context::v3::Response> {
    let caller = req.caller()?;
    let b = &req.body;
    let until = s.rooms.require_visible(&b.room_id, &caller.user_id)?;
    let meta = s
        .rooms
        .event_meta(&b.event_id)?
        .filter(|m| m.room_id == b.room_id && m.stream <= until)
        .ok_or_else(|| Error::not_found("Event not found"))?;
    let limit = (u64::from(b.limit) as usize).min(100);
    let before_n = limit / 2;
    let after_n = limit - before_n;
    let viewer = Some((&*caller.user_id, caller.device_id.as_str()));
    let before =
        s.rooms.page(&b.room_id, meta.stream.saturating_sub(1), Direction::Backward, before_n.max(1), until, None)?;
    let after = s.rooms.page(&b.room_id, meta.stream, Direction::Forward, after_n.max(1), until, None)?;
    let before: Vec<_> = s.rooms.filter_visible(before.into_iter().take(before_n).collect(), &caller.user_id)?;
    let after: Vec<_> = s.rooms.filter_visible(after.into_iter().take(after_n).collect(), &caller.user_id)?;
    let client = |p: &crate::rooms::pdu::Pdu| -> Result<Value> {
        let m = s.rooms.event_meta(&p.event_id)?;
        Ok(s.rooms.client_event(p, m.as_ref(), viewer))
    };
    let mut res = get_context::v3::Response::new();
    res.event = Some(raw(&s
        .rooms
        .client_event_by_id(&b.event_id, viewer)?
        .ok_or_else(|| Error::not_found("Event not found"))?)?);
    res.events_before = before.iter().map(|(_, p)| client(p).and_then(|v| raw(&v))).collect::<Result<_>>()?;
    res.events_after = after.iter().map(|(_, p)| client(p).and_then(|v| raw(&v))).collect::<Result<_>>()?;
    res.start = Some(token(before.last().map_or(meta.stream.saturating_sub(1), |(pos, _)| pos.saturating_sub(1))));
    res.end = Some(token(after.last().map_or(meta.stream, |(pos, _)| *pos)));
    // The state at the last event returned.
    let last = after.last().map(|(_, p)| p.event_id.clone()).unwrap_or_else(|| b.event_id.clone());
    let state = s.rooms.state_after(&last)?;
    // With lazy_load_members, only the members who sent the events returned (and the
    // caller's own), as in /sync and /messages.
    let lazy = !b.filter.lazy_load_options.is_disabled();
    let mut senders: std::collections::BTreeSet<String> =
        before.iter().chain(after.iter()).map(|(_, p)| p.sender.to_string()).collect();
    if let Some(meta_pdu) = s.rooms.pdu(&b.event_id)? {
        senders.insert(meta_pdu.sender.to_string());
    }
    senders.insert(caller.user_id.to_string());
    res.state = s
        .rooms
        .state_events(&state)?
        .iter()
        .filter(|p| {
            !lazy
                || p.kind.to_string() != "m.room.member"
                || p.state_key.as_deref().is_some_and(|k| senders.contains(k))
        })
        .map(|p| raw(&s.rooms.client_event(p, None, None)))
        .collect::<Result<_>>()?;
    Ok(res)
}

/// `GET /_matrix/client/v1/rooms/{roomId}/relations/{eventId}`
pub async fn get_relating_events(
    s: Arc<Services>,
    req: Ruma<get_relating_events::v1::Request>,
) -> Result<get_relating_events::v1::Response> {
    let caller = req.caller()?;
    let b = &req.body;
    let q = RelationQuery {
        room_id: &b.room_id,
        event_id: &b.event_id,
        rel_type: None,
        event_type: None,
        from: b.from.as_deref(),
        dir: b.dir,
        limit: b.limit,
    };
    let page = s.rooms.relations(&caller.user_id, caller.device_id.as_str(), q)?;
    let mut res = get_relating_events::v1::Response::new(page.chunk.iter().map(raw).collect::<Result<_>>()?);
    res.next_batch = page.next_batch;
    Ok(res)
}

/// `GET /_matrix/client/v1/rooms/{roomId}/relations/{eventId}/{relType}`
pub async fn get_relating_events_with_rel_type(
    s: Arc<Services>,
    req: Ruma<get_relating_events_with_rel_type::v1::Request>,
) -> Result<get_relating_events_with_rel_type::v1::Response> {
    let caller = req.caller()?;
    let b = &req.body;
    let rel = b.rel_type.to_string();
    let q = RelationQuery {
        room_id: &b.room_id,
        event_id: &b.event_id,
        rel_type: Some(&rel),
        event_type: None,
        from: b.from.as_deref(),
        dir: b.dir,
        limit: b.limit,
    };
    let page = s.rooms.relations(&caller.user_id, caller.device_id.as_str(), q)?;
    let mut res =
        get_relating_events_with_rel_type::v1::Response::new(page.chunk.iter().map(raw).collect::<Result<_>>()?);
    res.next_batch = page.next_batch;
    Ok(res)
}

/// `GET /_matrix/client/v1/rooms/{roomId}/relations/{eventId}/{relType}/{eventType}`
pub async fn get_relating_events_with_rel_type_and_event_type(
    s: Arc<Services>,
    req: Ruma<get_relating_events_with_rel_type_and_event_type::v1::Request>,
) -> Result<get_relating_events_with_rel_type_and_event_type::v1::Response> {
    let caller = req.caller()?;
    let b = &req.body;
    let (rel, kind) = (b.rel_type.to_string(), b.event_type.to_string());
    let q = RelationQuery {
        room_id: &b.room_id,
        event_id: &b.event_id,
        rel_type: Some(&rel),
        event_type: Some(&kind),
        from: b.from.as_deref(),
        dir: b.dir,
        limit: b.limit,
    };
    let page = s.rooms.relations(&caller.user_id, caller.device_id.as_str(), q)?;
    let mut res = get_relating_events_with_rel_type_and_event_type::v1::Response::new(
        page.chunk.iter().map(raw).collect::<Result<_>>()?,
    );
    res.next_batch = page.next_batch;
    Ok(res)
}
