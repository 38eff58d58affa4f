//! Relations (`/rooms/{roomId}/relations/{eventId}[/{relType}[/{eventType}]]`): the events
//! that point at an event through `m.relates_to` (replies in threads, edits, reactions).
//!
//! The append path indexes each relating event under its target as (target, stream
//! position); a page here is a range of that index, read newest first by default, cut at
//! what the viewer may see. Tokens are stream positions, as in `/messages`.

use ruma::{api::Direction, EventId, RoomId, UInt, UserId};
use serde_json::Value;

use super::{
    timeline::{parse_token, token},
    Rooms, RELATIONS,
};
use crate::{
    error::{Error, Result},
    store::{codec::encode_key, KeyRange, Order},
};

/// Most related events per page.
pub const MAX_RELATIONS: usize = 100;
/// Related events per page when the client names no limit.
pub const DEFAULT_RELATIONS: usize = 50;

/// Which relations of which event a client asks for.
pub struct RelationQuery<'a> {
    pub room_id: &'a RoomId,
    pub event_id: &'a EventId,
    /// Only relations of this `rel_type`.
    pub rel_type: Option<&'a str>,
    /// Only relating events of this type.
    pub event_type: Option<&'a str>,
    /// Token to continue from.
    pub from: Option<&'a str>,
    pub dir: Direction,
    pub limit: Option<UInt>,
}

/// A page of relating events, in client format.
pub struct RelationsPage {
    pub chunk: Vec<Value>,
    pub next_batch: Option<String>,
}

impl Rooms {
    /// Events relating to an event, as `viewer` (on `device`) may see them.
    pub fn relations(&self, viewer: &UserId, device: &str, q: RelationQuery<'_>) -> Result<RelationsPage> {
        let until = self.require_visible(q.room_id, viewer)?;
        self.event_meta(q.event_id)?
            .filter(|m| m.room_id == q.room_id)
            .ok_or_else(|| Error::not_found("Event not found"))?;
        let limit = q.limit.map_or(DEFAULT_RELATIONS, |l| (u64::from(l) as usize).clamp(1, MAX_RELATIONS));
        let target = q.event_id.as_str();
        let from = q.from.map(parse_token).transpose()?;
        let (lo, hi, order) = match q.dir {
            Direction::Backward => (0, from.unwrap_or(u64::MAX - 1).min(until).saturating_add(1), Order::Descending),
            Direction::Forward => {
                let lo = from.map_or(0, |f| f.saturating_add(1));
                (lo, until.saturating_add(1).max(lo), Order::Ascending)
            }
        };
        let range = KeyRange {
            lower: Some(encode_key::<(String, u64)>((target, lo))),
            upper: Some(encode_key::<(String, u64)>((target, hi))),
        };
        let mut found = Vec::new();
        let mut more = false;
        RELATIONS.scan_range(&self.store, &range, order, |(_, pos), rel| {
            if q.rel_type.is_some_and(|t| t != rel.rel_type) || q.event_type.is_some_and(|t| t != rel.event_type) {
                return true;
            }
            if found.len() == limit {
                more = true;
                return false;
            }
            found.push((pos, rel.event_id));
            true
        })?;
        let mut chunk = Vec::new();
        for (_, id) in &found {
            if let Some(v) = self.client_event_by_id(id, Some((viewer, device)))? {
                chunk.push(v);
            }
        }
        let next_batch = match more {
            true => found.last().map(|(pos, _)| match q.dir {
                Direction::Backward => token(pos.saturating_sub(1)),
                Direction::Forward => token(*pos),
            }),
            false => None,
        };
        Ok(RelationsPage { chunk, next_batch })
    }
}
