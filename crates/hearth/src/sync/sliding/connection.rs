//! Sliding-sync connections: what each (user, device, `conn_id`) was sent, kept in memory.
//!
//! A response's `pos` names the record of what the connection had been sent once that
//! response was delivered. The last few records are kept, so a request retried with the
//! same `pos` (the client never got the answer) starts from the same point and loses
//! nothing. Records are bounded: a few per connection, a few connections per device, a
//! global cap, and an idle time after which a connection is forgotten. A `pos` that is not
//! kept (expired, evicted, or from before a restart: `pos` carries the server's boot id)
//! gets `M_UNKNOWN_POS`, and the client starts a new connection.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, VecDeque},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use http::StatusCode;
use parking_lot::Mutex;
use ruma::{events::room::member::MembershipState, OwnedRoomId, OwnedUserId, UserId};

use crate::error::{Error, Result};

/// Records kept per connection: the newest, and those a retried request may name.
const KEPT_POSITIONS: usize = 3;
/// Connections one device may hold at once (Element X uses one or two).
const MAX_PER_DEVICE: usize = 8;
/// Connections held in all.
const MAX_CONNECTIONS: usize = 10_000;
/// A connection unused this long is forgotten.
const IDLE_EXPIRY: Duration = Duration::from_secs(30 * 60);

/// What a connection was sent of one room.
#[derive(Debug, Clone)]
pub struct RoomSent {
    pub membership: MembershipState,
    /// The stream position the room's timeline was sent up to.
    pub through: u64,
    pub timeline_limit: usize,
    /// The `required_state` asked for when it was last sent.
    pub required: BTreeSet<(String, String)>,
    /// State sent: (type, state key) → event id.
    pub state: HashMap<(String, String), String>,
    /// (notifications, highlights) as last sent.
    pub counts: (u64, u64),
}

/// The latest activity of a room: its last event's position, and its `bump_stamp` (the
/// last event that moves a room up the list).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Activity {
    pub latest: u64,
    pub bump: u64,
}

/// Everything a connection had been sent as of one `pos`.
#[derive(Debug, Clone, Default)]
pub struct ConnState {
    /// The stream position and typing version the record was taken at.
    pub pos: u64,
    pub typing: u64,
    pub rooms: HashMap<OwnedRoomId, RoomSent>,
    /// Activity of the rooms the user is in, as of `pos` (refreshed for rooms with events
    /// since, so that a request costs what changed, not every room).
    pub activity: HashMap<OwnedRoomId, Activity>,
    pub list_counts: BTreeMap<String, usize>,
}

/// One connection: its records, and one request at a time.
pub struct Connection {
    inner: tokio::sync::Mutex<Records>,
    /// Woken when a newer request arrives on the connection: a long-poll in progress
    /// answers at once (the client has given up on it).
    superseded: tokio::sync::Notify,
    /// Requests that arrived on the connection (each one's ticket).
    arrivals: AtomicU64,
    last_used: Mutex<Instant>,
}

/// The kept records of a connection, newest last.
pub struct Records {
    boot: u64,
    next: u64,
    kept: VecDeque<(u64, Arc<ConnState>)>,
}

impl Records {
    /// The record a request's `pos` names; `None` (a new session) when it gives none.
    pub fn at(&mut self, pos: Option<&str>) -> Result<Option<Arc<ConnState>>> {
        let Some(pos) = pos else {
            self.kept.clear();
            return Ok(None);
        };
        let unknown = || Error::matrix(StatusCode::BAD_REQUEST, "M_UNKNOWN_POS", "Unknown or expired pos");
        let (boot, generation) = pos.split_once('_').ok_or_else(unknown)?;
        if boot.parse::<u64>().ok() != Some(self.boot) {
            return Err(unknown());
        }
        let generation: u64 = generation.parse().map_err(|_| unknown())?;
        self.kept.iter().find(|(g, _)| *g == generation).map(|(_, s)| Some(s.clone())).ok_or_else(unknown)
    }

    /// Keeps `state` as the newest record; returns the `pos` that names it.
    pub fn keep(&mut self, state: ConnState) -> String {
        let generation = self.next;
        self.next += 1;
        self.kept.push_back((generation, Arc::new(state)));
        while self.kept.len() > KEPT_POSITIONS {
            self.kept.pop_front();
        }
        format!("{}_{generation}", self.boot)
    }
}

impl Connection {
    /// Registers a request's arrival: one waiting on the connection answers now. Returns
    /// the request's ticket.
    pub fn arrive(&self) -> u64 {
        let ticket = self.arrivals.fetch_add(1, Ordering::SeqCst);
        self.superseded.notify_waiters();
        ticket
    }

    /// Whether a request arrived after the one holding `ticket` (it answers at once,
    /// whichever got the connection first).
    pub fn superseded(&self, ticket: u64) -> bool {
        self.arrivals.load(Ordering::SeqCst) > ticket + 1
    }

    /// Resolves when a request arrives after the one holding `ticket`.
    pub async fn newer_request(&self, ticket: u64) {
        loop {
            let notified = self.superseded.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.superseded(ticket) {
                return;
            }
            notified.await;
        }
    }

    /// Waits for the connection's other request (if any) to finish, then holds it.
    pub async fn lock(&self) -> tokio::sync::MutexGuard<'_, Records> {
        *self.last_used.lock() = Instant::now();
        self.inner.lock().await
    }
}

type Key = (OwnedUserId, String, String);

/// Every live connection.
pub struct Connections {
    boot: u64,
    map: Mutex<HashMap<Key, Arc<Connection>>>,
}

impl Default for Connections {
    fn default() -> Self {
        let boot = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
        Connections { boot: boot as u64, map: Mutex::new(HashMap::new()) }
    }
}

static SERIAL: AtomicU64 = AtomicU64::new(0);

impl Connections {
    /// The connection `conn_id` of the device, made if new (forgetting idle ones, and the
    /// device's least recently used beyond its share).
    pub fn get(&self, user: &UserId, device: &str, conn_id: &str) -> Arc<Connection> {
        let mut map = self.map.lock();
        let key = (user.to_owned(), device.to_owned(), conn_id.to_owned());
        if let Some(c) = map.get(&key) {
            return c.clone();
        }
        let now = Instant::now();
        map.retain(|_, c| Arc::strong_count(c) > 1 || now.duration_since(*c.last_used.lock()) < IDLE_EXPIRY);
        let mut mine: Vec<(Instant, Key)> = map
            .iter()
            .filter(|((u, d, _), _)| u == user && d == device)
            .map(|(k, c)| (*c.last_used.lock(), k.clone()))
            .collect();
        mine.sort();
        for (_, k) in mine.iter().take((mine.len() + 1).saturating_sub(MAX_PER_DEVICE)) {
            map.remove(k);
        }
        if map.len() >= MAX_CONNECTIONS {
            if let Some(oldest) = map.iter().min_by_key(|(_, c)| *c.last_used.lock()).map(|(k, _)| k.clone()) {
                map.remove(&oldest);
            }
        }
        // A fresh generation range per connection object, so that a `pos` of an evicted
        // connection never names a record of its successor.
        let first = SERIAL.fetch_add(1 << 20, Ordering::Relaxed);
        let conn = Arc::new(Connection {
            inner: tokio::sync::Mutex::new(Records { boot: self.boot, next: first, kept: VecDeque::new() }),
            superseded: tokio::sync::Notify::new(),
            arrivals: AtomicU64::new(0),
            last_used: Mutex::new(now),
        });
        map.insert(key, conn.clone());
        conn
    }

    /// Connections held.
    pub fn count(&self) -> usize {
        self.map.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_pos_names_one_of_the_last_records_and_nothing_else() {
        let conns = Connections::default();
        let user = ruma::user_id!("@a:example.org");
        let conn = conns.get(user, "DEV", "main");
        let mut records = conn.lock().await;
        assert!(records.at(None).unwrap().is_none());
        let first = records.keep(ConnState { pos: 1, ..Default::default() });
        let second = records.keep(ConnState { pos: 2, ..Default::default() });
        assert_eq!(records.at(Some(&first)).unwrap().unwrap().pos, 1);
        assert_eq!(records.at(Some(&second)).unwrap().unwrap().pos, 2);
        for _ in 0..KEPT_POSITIONS {
            records.keep(ConnState::default());
        }
        for bad in [first.as_str(), "nonsense", "1_2", "", "_"] {
            let err = records.at(Some(bad)).unwrap_err();
            assert_eq!(err.errcode(), "M_UNKNOWN_POS", "{bad}");
        }
        // Another connection's pos is not this one's.
        drop(records);
        let other = conns.get(user, "DEV", "other");
        let mut other_records = other.lock().await;
        let theirs = other_records.keep(ConnState::default());
        assert_eq!(conn.lock().await.at(Some(&theirs)).unwrap_err().errcode(), "M_UNKNOWN_POS");
    }

    #[test]
    fn a_device_holds_a_bounded_number_of_connections() {
        let conns = Connections::default();
        let user = ruma::user_id!("@a:example.org");
        for i in 0..(MAX_PER_DEVICE * 3) {
            conns.get(user, "DEV", &format!("c{i}"));
        }
        assert_eq!(conns.count(), MAX_PER_DEVICE);
        // Another device's are its own.
        conns.get(user, "OTHER", "c0");
        assert_eq!(conns.count(), MAX_PER_DEVICE + 1);
    }
}
