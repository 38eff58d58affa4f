//! History from before this server joined a room: events another server sent in answer to
//! `backfill`, kept behind the room's timeline.
//!
//! The timeline is ordered by stream position, which only grows: history older than the
//! room's first event here cannot take a place in it. Backfilled events get a place of their
//! own instead, in `BACKFILL`: (room, n) where n counts *backwards* from the oldest event
//! the timeline holds, so a backward page that runs off the start of the timeline goes on
//! into the backfilled rows in ascending n. Pagination tokens there are `b<n>` (see
//! [`backfill_token`]). Backfilled events are stored as outliers: never in `/sync`, never
//! a forward extremity, their auth checked against their own auth events.
//!
//! Whether a room has history before what is held: its oldest held event (the oldest
//! backfilled one, else the first in the timeline) names prev events this server lacks
//! ([`Rooms::backfill_frontier`]). A room created here never does.

use std::sync::Arc;

use ruma::{OwnedEventId, RoomId, RoomVersionId};

use super::{pdu::Pdu, remote::Refusal, Rooms, TIMELINE};
use crate::{
    error::{Error, Result},
    store::{codec::encode_key, tables, Batch, KeyRange, Order, Table},
};

/// (room id, n) → event id; n grows going back in time.
pub const BACKFILL: Table<(String, u64), String> = Table::new(tables::BACKFILL);
/// Event id → its row.
pub const BACKFILL_ROWS: Table<String, u64> = Table::new(tables::BACKFILL_ROWS);

/// A token for a place among the backfilled events: just before row `n`.
pub fn backfill_token(n: u64) -> String {
    format!("b{n}")
}

/// The row a backfill token stands before, if `t` is one.
pub fn parse_backfill_token(t: &str) -> Option<u64> {
    t.strip_prefix('b').and_then(|n| n.parse().ok())
}

impl Rooms {
    /// Up to `limit` backfilled events from row `from` on, going back in time: (row, PDU).
    pub fn backfilled_page(&self, room_id: &RoomId, from: u64, limit: usize) -> Result<Vec<(u64, Arc<Pdu>)>> {
        let range = KeyRange {
            lower: Some(encode_key::<(String, u64)>((room_id.as_str(), from))),
            upper: Some(encode_key::<(String, u64)>((room_id.as_str(), u64::MAX))),
        };
        let mut rows = Vec::new();
        BACKFILL.scan_range(&self.store, &range, Order::Ascending, |(_, n), id| {
            rows.push((n, id));
            rows.len() < limit
        })?;
        let ids = rows
            .iter()
            .map(|(_, id)| OwnedEventId::try_from(id.as_str()).map_err(|e| Error::internal(e.to_string())))
            .collect::<Result<Vec<_>>>()?;
        Ok(rows.into_iter().map(|(n, _)| n).zip(self.pdus_shared(&ids)?).filter_map(|(n, p)| Some((n, p?))).collect())
    }

    /// The oldest event held of a room's history and its prev events this server lacks:
    /// where backfill would go on from (`None`: nothing is missing).
    pub fn backfill_frontier(&self, room_id: &RoomId) -> Result<Option<(u64, Vec<OwnedEventId>)>> {
        let mut last: Option<(u64, String)> = None;
        let range = KeyRange {
            lower: Some(encode_key::<(String, u64)>((room_id.as_str(), 0))),
            upper: Some(encode_key::<(String, u64)>((room_id.as_str(), u64::MAX))),
        };
        BACKFILL.scan_range(&self.store, &range, Order::Descending, |(_, n), id| {
            last = Some((n, id));
            false
        })?;
        let (next_row, oldest) = match last {
            Some((n, id)) => (n + 1, id),
            None => {
                let mut first = None;
                TIMELINE.scan_prefix(&self.store, room_id.as_str(), Order::Ascending, |_, row| {
                    first = Some(row.event_id);
                    false
                })?;
                match first {
                    Some(id) => (0, id),
                    None => return Ok(None),
                }
            }
        };
        let oldest = OwnedEventId::try_from(oldest).map_err(|e| Error::internal(e.to_string()))?;
        let Some(pdu) = self.pdu_shared(&oldest)? else { return Ok(None) };
        let mut missing = Vec::new();
        for prev in &pdu.prev_events {
            // Held as an outlier (a join brought the state) is not held as history.
            if !self.in_graph(prev)? && !self.is_backfilled(prev)? {
                missing.push(prev.clone());
            }
        }
        Ok((!missing.is_empty()).then_some((next_row, missing)))
    }

    fn is_backfilled(&self, event_id: &ruma::EventId) -> Result<bool> {
        Ok(BACKFILL_ROWS.get(&self.store, event_id.as_str())?.is_some())
    }

    /// Stores backfilled events (newest first, as a page going back reads them) behind
    /// the room's history from row `next_row` on; each is checked against its own auth
    /// events, which must be here. Returns how many were stored.
    pub fn append_backfilled(&self, version: &RoomVersionId, next_row: u64, events: Vec<Pdu>) -> Result<usize> {
        let mut batch = Batch::new();
        let mut row = next_row;
        for pdu in events {
            let id = pdu.event_id.clone();
            let room = pdu.room_id.clone();
            if self.in_graph(&id)? || self.is_backfilled(&id)? {
                continue;
            }
            // An event already held as an outlier (a state event a join brought) takes its
            // place in history as it is; `append_outlier` skips it.
            match self.append_outlier(version, pdu) {
                Ok(()) => {}
                Err(Refusal::Error(e)) => return Err(e),
                Err(e) => {
                    tracing::info!(event = %id, error = %e, "a backfilled event was not stored");
                    continue;
                }
            }
            BACKFILL.put(&mut batch, (room.as_str(), row), &id.to_string());
            BACKFILL_ROWS.put(&mut batch, id.as_str(), &row);
            row += 1;
        }
        self.store.write(batch)?;
        Ok(usize::try_from(row - next_row).unwrap_or(usize::MAX))
    }
}
