//! History another server sent in answer to `backfill`, kept beside the room's timeline:
//! the history from before this server joined a room, and the history missing behind a
//! gap (a rejoin after time away, or events received after an outage too long to fetch).
//!
//! The timeline is ordered by stream position, which only grows: history older than an
//! event already held cannot take a place in it. Backfilled events get a place of their
//! own instead, in `BACKFILL`: (room, row), where a row is an *anchor* and an index
//! ([`row_of`]). The anchor is 0 for the start of the room's timeline here, and the stream
//! position of the event with history missing behind it for a gap (that event's
//! `EventMeta::gap_behind`). The index counts *backwards* in time from the anchor, so a
//! backward page that reaches an anchor goes on into its rows in ascending order.
//! Pagination tokens there are `b<row>` (see [`backfill_token`]). Backfilled events are
//! stored as outliers: never in `/sync`, never a forward extremity, their auth checked
//! against their own auth events.
//!
//! Whether history is missing behind an anchor: the oldest event held behind it (its last
//! row, else the anchor's own event) names prev events this server lacks
//! ([`Rooms::backfill_frontier`]). A room created here never does, and a gap closes once
//! its rows reach events the timeline holds.

use std::sync::Arc;

use ruma::{OwnedEventId, RoomId, RoomVersionId};

use super::{pdu::Pdu, remote::Refusal, Rooms, TIMELINE};
use crate::{
    error::{Error, Result},
    store::{codec::encode_key, tables, Batch, KeyRange, Order, Table},
    stream::EVENT_STREAM,
};

/// (room id, row) → event id; see the module doc for rows.
pub const BACKFILL: Table<(String, u64), String> = Table::new(tables::BACKFILL);
/// Event id → its row.
pub const BACKFILL_ROWS: Table<String, u64> = Table::new(tables::BACKFILL_ROWS);

/// Bits of a row that count events back from its anchor.
const INDEX_BITS: u32 = 24;

/// The row of the `index`th event back from `anchor`.
pub fn row_of(anchor: u64, index: u64) -> u64 {
    (anchor << INDEX_BITS) | index
}

/// The anchor a row counts back from.
pub fn anchor_of(row: u64) -> u64 {
    row >> INDEX_BITS
}

/// A row's index: how many events back from its anchor.
pub fn index_of(row: u64) -> u64 {
    row & ((1 << INDEX_BITS) - 1)
}

/// A token for a place among the backfilled events: just before row `n`.
pub fn backfill_token(n: u64) -> String {
    format!("b{n}")
}

/// The row a backfill token stands before, if `t` is one.
pub fn parse_backfill_token(t: &str) -> Option<u64> {
    t.strip_prefix('b').and_then(|n| n.parse().ok())
}

/// The rows of an anchor from `from` on.
fn anchor_range(room_id: &RoomId, from: u64) -> KeyRange {
    KeyRange {
        lower: Some(encode_key::<(String, u64)>((room_id.as_str(), from))),
        upper: Some(encode_key::<(String, u64)>((room_id.as_str(), row_of(anchor_of(from) + 1, 0)))),
    }
}

impl Rooms {
    /// Up to `limit` backfilled events from row `from` on, going back in time from its
    /// anchor: (row, PDU).
    pub fn backfilled_page(&self, room_id: &RoomId, from: u64, limit: usize) -> Result<Vec<(u64, Arc<Pdu>)>> {
        let mut rows = Vec::new();
        BACKFILL.scan_range(&self.store, &anchor_range(room_id, from), Order::Ascending, |(_, n), id| {
            rows.push((n, id));
            rows.len() < limit
        })?;
        let ids = rows
            .iter()
            .map(|(_, id)| OwnedEventId::try_from(id.as_str()).map_err(|e| Error::internal(e.to_string())))
            .collect::<Result<Vec<_>>>()?;
        Ok(rows.into_iter().map(|(n, _)| n).zip(self.pdus_shared(&ids)?).filter_map(|(n, p)| Some((n, p?))).collect())
    }

    /// The oldest event held behind `anchor` and its prev events this server lacks: where
    /// backfill would go on from, as (the next row, the missing events); `None` when
    /// nothing is missing there.
    pub fn backfill_frontier(&self, room_id: &RoomId, anchor: u64) -> Result<Option<(u64, Vec<OwnedEventId>)>> {
        let mut last: Option<(u64, String)> = None;
        BACKFILL.scan_range(
            &self.store,
            &anchor_range(room_id, row_of(anchor, 0)),
            Order::Descending,
            |(_, n), id| {
                last = Some((n, id));
                false
            },
        )?;
        let (next_row, oldest) = match last {
            Some((n, id)) => (n + 1, id),
            None if anchor == 0 => {
                let mut first = None;
                TIMELINE.scan_prefix(&self.store, room_id.as_str(), Order::Ascending, |_, row| {
                    first = Some(row.event_id);
                    false
                })?;
                match first {
                    Some(id) => (row_of(0, 0), id),
                    None => return Ok(None),
                }
            }
            None => match EVENT_STREAM.get(&self.store, anchor)? {
                Some(entry) if entry.room_id == room_id => (row_of(anchor, 0), entry.event_id.to_string()),
                _ => return Ok(None),
            },
        };
        if index_of(next_row) == 0 && anchor_of(next_row) != anchor {
            return Ok(None); // The anchor's rows are full.
        }
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
    /// an anchor's history from row `next_row` on; each is checked against its own auth
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
            if anchor_of(row) != anchor_of(next_row) {
                break; // The anchor's rows are full.
            }
            BACKFILL.put(&mut batch, (room.as_str(), row), &id.to_string());
            BACKFILL_ROWS.put(&mut batch, id.as_str(), &row);
            row += 1;
        }
        self.store.write(batch)?;
        Ok(usize::try_from(row - next_row).unwrap_or(usize::MAX))
    }
}
