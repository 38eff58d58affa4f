//! Asking other servers for a room's history (`backfill`) when a client pages past what
//! this server holds, before the start of the room's timeline here or into a gap in it
//! (see [`crate::rooms::backfill`]): the servers in the room are asked in
//! turn, each with a time-out and a size cap, for up to [`MAX_BACKFILL`] events before the
//! oldest one held; each event is verified (signatures, hashes), its auth events fetched if
//! missing, checked against them, and stored behind the room's history.

use std::time::Duration;

use ruma::RoomId;
use serde::Deserialize;
use serde_json::value::RawValue as RawJsonValue;

use super::{pdu::parse_raw, receive::encode, Federation};
use crate::{error::Result, transport::server_client::ServerRequest};

/// Most events asked for at once.
pub const MAX_BACKFILL: usize = 100;
/// Most servers asked for one page.
const MAX_SERVERS_ASKED: usize = 5;
const BACKFILL_TIMEOUT: Duration = Duration::from_secs(20);
const MAX_BACKFILL_BYTES: usize = 16 * 1024 * 1024;

#[derive(Deserialize)]
struct Answer {
    #[serde(default)]
    pdus: Vec<Box<RawJsonValue>>,
}

impl Federation {
    /// Fetches up to `limit` events of the history missing behind `anchor` of `room` (0:
    /// before the start of its timeline here; else the stream position of an event with a
    /// gap behind it, see [`crate::rooms::backfill`]), from the servers in the room;
    /// returns how many were stored (0: nothing more, or nobody answered).
    pub async fn backfill_room(&self, room: &RoomId, anchor: u64, limit: usize) -> Result<usize> {
        let Some((next_row, from)) = self.rooms.backfill_frontier(room, anchor)? else { return Ok(0) };
        let version = self.rooms.known_room(room)?.version;
        let limit = limit.clamp(1, MAX_BACKFILL);
        let mut path = format!("/_matrix/federation/v1/backfill/{}?limit={limit}", encode(room.as_str()));
        for id in from.iter().take(20) {
            path.push_str(&format!("&v={}", encode(id.as_str())));
        }
        for server in self.servers_in_room(room)?.into_iter().take(MAX_SERVERS_ASKED) {
            let req = ServerRequest::get(&path).limits(BACKFILL_TIMEOUT, MAX_BACKFILL_BYTES);
            let answer = match self.servers.request(&server, req).await {
                Ok(a) if a.status.is_success() => a,
                Ok(a) => {
                    tracing::info!(%server, status = %a.status, "backfill refused");
                    continue;
                }
                Err(e) => {
                    tracing::info!(%server, error = %e, "backfill failed");
                    continue;
                }
            };
            let Ok(answer) = serde_json::from_slice::<Answer>(&answer.body) else { continue };
            let mut events = Vec::new();
            for raw in answer.pdus.iter().take(MAX_BACKFILL) {
                let Ok(obj) = parse_raw(raw) else { continue };
                match self.verify_pdu(&version, obj, Some(room), None).await {
                    Ok(pdu) if pdu.room_id == room => events.push(pdu),
                    Ok(_) => {}
                    Err(e) => tracing::info!(%server, error = %e, "dropping a backfilled event"),
                }
            }
            if events.is_empty() {
                continue;
            }
            let _turn = self.room_turn(room).await;
            // Oldest first, so each event's auth events (older) are stored before it.
            events.sort_by_key(|p| p.depth);
            for pdu in &events {
                if let Err(e) = self.fetch_auth_events_of(&server, &version, pdu).await {
                    tracing::info!(event = %pdu.event_id, error = %e, "cannot fetch a backfilled event's auth events");
                }
            }
            // Stored newest first: rows count back in time.
            events.reverse();
            return self.rooms.append_backfilled(&version, next_row, events);
        }
        Ok(0)
    }
}
