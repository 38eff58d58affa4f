//! Message search (spec: "Server Side Search"): a full-text index of the rooms' text —
//! message bodies, room names and topics — in SQLite's FTS5, in `search.sqlite3` in the
//! data directory, whichever engine holds the rest.
//!
//! The index follows the stream as the push and federation followers do: a worker reads
//! the events after the position the index last took in, adds what has text, drops what
//! a redaction removed, and stores the new position in the same transaction as the rows.
//! A missing or older index is therefore rebuilt from the stream by itself, in the
//! background, after a crash or the first start. Encrypted events have no text here and
//! are never indexed.
//!
//! Searching reads the index, then keeps only what the searcher may see: rooms they are
//! in, events their history visibility shows them, nothing redacted or erased.

use std::{path::Path, sync::Arc, time::Duration};

use parking_lot::Mutex;
use ruma::{events::TimelineEventType, OwnedEventId, OwnedRoomId, OwnedUserId};
use rusqlite::{params, Connection, OptionalExtension};
use serde_json::Value;
use tokio::sync::oneshot;

use crate::{
    error::{Error, Result},
    rooms::Rooms,
    stream::Stream,
};

/// Stream positions read per step of the follower.
const STEP: u64 = 2_000;
/// How long the follower lets new events gather after a wake-up before it takes them in,
/// unless a search is waiting: each step is one SQLite transaction, whose begin, commit
/// and FTS5 flush cost more than the rows of a few messages.
const GATHER: Duration = Duration::from_millis(100);
/// Longest a search waits for the index to take in what was written before it.
const CATCH_UP: Duration = Duration::from_secs(2);
/// Longest text indexed of one event, in bytes.
const MAX_TEXT: usize = 64 * 1024;
/// Most words of a search term used.
const MAX_TERMS: usize = 16;
/// The index's layout (SQLite's `user_version`). 1: a row's rowid is its event's stream
/// position, so FTS5 walks matches newest first without sorting them, and a redaction
/// deletes its target's row by rowid instead of scanning for its event id.
const SCHEMA: i64 = 1;

/// Which text an indexed row holds: the key a search names it by.
pub const KEYS: &[(&str, &str)] =
    &[("content.body", "m.room.message"), ("content.name", "m.room.name"), ("content.topic", "m.room.topic")];

/// One match: the event, its room, and its rank (higher is better).
#[derive(Debug, Clone)]
pub struct Hit {
    pub event_id: OwnedEventId,
    pub room_id: OwnedRoomId,
    pub sender: OwnedUserId,
    pub pos: u64,
    pub rank: f64,
}

/// What to search for.
pub struct Query<'a> {
    pub term: &'a str,
    pub rooms: &'a [OwnedRoomId],
    /// Event types of the `keys` asked for.
    pub kinds: &'a [&'a str],
    pub recent_first: bool,
    pub offset: usize,
    pub limit: usize,
}

pub struct Search {
    db: Mutex<Connection>,
    rooms: Arc<Rooms>,
    /// The stream position the index has taken in: the one stored with the rows.
    reached: tokio::sync::watch::Sender<u64>,
    /// Wakes the follower from its gathering wait: a search is waiting for it.
    hurry: tokio::sync::Notify,
}

impl Search {
    /// Opens (or makes) the index in `data_dir`.
    pub fn open(data_dir: &Path, rooms: Arc<Rooms>) -> Result<Self> {
        let path = data_dir.join("search.sqlite3");
        let db = Connection::open(&path).map_err(|e| Error::internal(format!("opening {}: {e}", path.display())))?;
        db.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;").map_err(sql)?;
        let version: i64 = db.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(sql)?;
        if version < SCHEMA {
            // An index from before rows were keyed by stream position: dropped, and taken
            // in again from the stream by the follower, in the background.
            db.execute_batch("DROP TABLE IF EXISTS texts; DROP TABLE IF EXISTS position;").map_err(sql)?;
        }
        db.execute_batch(
            "CREATE VIRTUAL TABLE IF NOT EXISTS texts USING fts5(
                 text, event_id UNINDEXED, room_id UNINDEXED, sender UNINDEXED, kind UNINDEXED, pos UNINDEXED,
                 tokenize = 'unicode61 remove_diacritics 2');
             CREATE TABLE IF NOT EXISTS position (id INTEGER PRIMARY KEY CHECK (id = 0), pos INTEGER NOT NULL);",
        )
        .map_err(sql)?;
        db.execute_batch(&format!("PRAGMA user_version = {SCHEMA};")).map_err(sql)?;
        let pos: Option<i64> =
            db.query_row("SELECT pos FROM position WHERE id = 0", [], |r| r.get(0)).optional().map_err(sql)?;
        let (reached, _) = tokio::sync::watch::channel(pos.unwrap_or(0) as u64);
        Ok(Search { db: Mutex::new(db), rooms, reached, hurry: tokio::sync::Notify::new() })
    }

    /// The stream position the index has taken in.
    pub fn position(&self) -> u64 {
        *self.reached.borrow()
    }

    /// Waits until the index has taken in stream position `pos`, or [`CATCH_UP`] has
    /// passed (a search then answers from what the index has), waking the follower from
    /// its gathering wait.
    pub async fn catch_up(&self, pos: u64) {
        if *self.reached.borrow() >= pos {
            return;
        }
        self.hurry.notify_one();
        let mut reached = self.reached.subscribe();
        let _ = tokio::time::timeout(CATCH_UP, reached.wait_for(|r| *r >= pos)).await;
    }

    /// Takes in the events in (since, until]: their text, and the redactions among them.
    pub fn index_between(&self, since: u64, until: u64) -> Result<()> {
        let events = self.rooms.stream.events_between(since, until)?;
        let mut rows = Vec::new();
        let mut gone = Vec::new();
        for (pos, entry) in &events {
            let Some(pdu) = self.rooms.pdu_shared(&entry.event_id)? else { continue };
            if pdu.kind == TimelineEventType::RoomRedaction {
                let content = pdu.content_value();
                let target = pdu
                    .redacts
                    .clone()
                    .or_else(|| content.get("redacts").and_then(Value::as_str).and_then(|t| t.try_into().ok()));
                if let Some(meta) = target.map(|t| self.rooms.event_meta(&t)).transpose()?.flatten() {
                    gone.push(meta.stream);
                }
                continue;
            }
            if self.rooms.event_meta(&pdu.event_id)?.is_some_and(|m| m.soft_failed || m.outlier) {
                continue;
            }
            let field = match pdu.kind.to_string().as_str() {
                "m.room.message" => "body",
                "m.room.name" => "name",
                "m.room.topic" => "topic",
                _ => continue,
            };
            let content = pdu.content_value();
            let Some(text) = content.get(field).and_then(Value::as_str).filter(|t| !t.is_empty()) else { continue };
            let mut text = text.to_owned();
            if text.len() > MAX_TEXT {
                let mut cut = MAX_TEXT;
                while !text.is_char_boundary(cut) {
                    cut -= 1;
                }
                text.truncate(cut);
            }
            rows.push((
                text,
                pdu.event_id.to_string(),
                pdu.room_id.to_string(),
                pdu.sender.to_string(),
                pdu.kind.to_string(),
                *pos,
            ));
        }
        let mut db = self.db.lock();
        let tx = db.transaction().map_err(sql)?;
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO texts (rowid, text, event_id, room_id, sender, kind, pos) \
                     VALUES (?6, ?1, ?2, ?3, ?4, ?5, ?6)",
                )
                .map_err(sql)?;
            for (text, event, room, sender, kind, pos) in &rows {
                insert.execute(params![text, event, room, sender, kind, *pos as i64]).map_err(sql)?;
            }
            let mut delete = tx.prepare_cached("DELETE FROM texts WHERE rowid = ?1").map_err(sql)?;
            for pos in &gone {
                delete.execute(params![*pos as i64]).map_err(sql)?;
            }
            tx.execute(
                "INSERT INTO position (id, pos) VALUES (0, ?1) ON CONFLICT(id) DO UPDATE SET pos = ?1",
                params![until as i64],
            )
            .map_err(sql)?;
        }
        tx.commit().map_err(sql)?;
        self.reached.send_replace(until);
        Ok(())
    }

    /// Follows the stream until `stop` (see the module doc).
    pub async fn run(self: Arc<Self>, stream: Arc<Stream>, mut stop: oneshot::Receiver<()>) {
        let mut durable = stream.watch_durable();
        loop {
            let from = *self.reached.borrow();
            let now = stream.now();
            if now > from {
                let until = now.min(from.saturating_add(STEP));
                let this = self.clone();
                match tokio::task::spawn_blocking(move || this.index_between(from, until)).await {
                    Ok(Ok(())) => continue,
                    Ok(Err(e)) => tracing::error!(error = %e, "indexing messages for search failed; retrying"),
                    Err(e) => tracing::error!(error = %e, "the search indexer stopped; retrying"),
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = &mut stop => return,
                }
            }
            tokio::select! {
                changed = durable.changed() => if changed.is_err() { return },
                _ = &mut stop => return,
            }
            tokio::select! {
                _ = tokio::time::sleep(GATHER) => {}
                _ = self.hurry.notified() => {}
                _ = &mut stop => return,
            }
        }
    }

    /// The words of a search term as an FTS5 query: each a quoted prefix, all required.
    /// `None` when the term has no words.
    fn fts_query(term: &str) -> Option<String> {
        let words: Vec<String> = term
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .take(MAX_TERMS)
            .map(|w| format!("\"{}\"*", w.to_lowercase()))
            .collect();
        (!words.is_empty()).then(|| words.join(" "))
    }

    /// The words a client highlights for a term.
    pub fn highlights(term: &str) -> Vec<String> {
        let mut words: Vec<String> = term
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .take(MAX_TERMS)
            .map(str::to_lowercase)
            .collect();
        words.sort();
        words.dedup();
        words
    }

    /// Matches in the given rooms (not yet checked against the searcher's visibility),
    /// best or newest first, and how many there are in all.
    pub fn find(&self, q: &Query<'_>) -> Result<(Vec<Hit>, usize)> {
        let Some(fts) = Self::fts_query(q.term) else { return Ok((Vec::new(), 0)) };
        if q.rooms.is_empty() || q.kinds.is_empty() {
            return Ok((Vec::new(), 0));
        }
        let rooms = serde_json::to_string(&q.rooms.iter().map(|r| r.as_str()).collect::<Vec<_>>())
            .map_err(|e| Error::internal(e.to_string()))?;
        let kinds = serde_json::to_string(q.kinds).map_err(|e| Error::internal(e.to_string()))?;
        let scope = "texts MATCH ?1 AND room_id IN (SELECT value FROM json_each(?2)) \
                     AND kind IN (SELECT value FROM json_each(?3))";
        let order = if q.recent_first { "rowid DESC" } else { "bm25(texts), rowid DESC" };
        let db = self.db.lock();
        let total: i64 = db
            .query_row(&format!("SELECT count(*) FROM texts WHERE {scope}"), params![fts, rooms, kinds], |r| r.get(0))
            .map_err(sql)?;
        let mut stmt = db
            .prepare(&format!(
                "SELECT event_id, room_id, sender, pos, -bm25(texts) FROM texts WHERE {scope} ORDER BY {order} \
                 LIMIT ?4 OFFSET ?5"
            ))
            .map_err(sql)?;
        let rows = stmt
            .query_map(params![fts, rooms, kinds, q.limit as i64, q.offset as i64], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, f64>(4)?,
                ))
            })
            .map_err(sql)?;
        let mut hits = Vec::new();
        for row in rows {
            let (event, room, sender, pos, rank) = row.map_err(sql)?;
            let (Ok(event_id), Ok(room_id), Ok(sender)) =
                (OwnedEventId::try_from(event), OwnedRoomId::try_from(room), OwnedUserId::try_from(sender))
            else {
                continue;
            };
            hits.push(Hit { event_id, room_id, sender, pos: pos as u64, rank });
        }
        Ok((hits, total as usize))
    }
}

fn sql(e: rusqlite::Error) -> Error {
    Error::internal(format!("search index: {e}"))
}
