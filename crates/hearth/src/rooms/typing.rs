//! Typing notifications: in memory only, with their own version counter.
//!
//! A typing notice expires after its timeout (at most [`MAX_TIMEOUT`]); a timer then clears
//! it and wakes the room's syncs. The version is part of the sync token (`s<pos>_<typing>`);
//! after a restart it starts again at zero, which at worst re-sends an empty typing list.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::{Duration, Instant},
};

use parking_lot::Mutex;
use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};

use crate::sync::notifier::Notifier;

pub const MAX_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Default)]
struct RoomTyping {
    users: BTreeMap<OwnedUserId, Instant>,
    changed_at: u64,
}

#[derive(Default)]
struct State {
    version: u64,
    rooms: HashMap<OwnedRoomId, RoomTyping>,
}

pub struct Typing {
    state: Mutex<State>,
    notifier: Arc<Notifier>,
}

impl Typing {
    pub fn new(notifier: Arc<Notifier>) -> Arc<Self> {
        Arc::new(Typing { state: Mutex::new(State::default()), notifier })
    }

    pub fn version(&self) -> u64 {
        self.state.lock().version
    }

    /// Starts (with a timeout) or stops a user's typing notice; wakes `members`.
    pub fn set(self: &Arc<Self>, room: &RoomId, user: &UserId, timeout: Option<Duration>, members: Vec<OwnedUserId>) {
        let version = {
            let mut st = self.state.lock();
            st.version += 1;
            let v = st.version;
            let r = st.rooms.entry(room.to_owned()).or_default();
            match timeout {
                Some(t) => {
                    r.users.insert(user.to_owned(), Instant::now() + t.min(MAX_TIMEOUT));
                }
                None => {
                    r.users.remove(user);
                }
            }
            r.changed_at = v;
            v
        };
        self.notifier.notify(members.iter().map(|u| &**u), version);
        if let Some(t) = timeout {
            let this = self.clone();
            let room = room.to_owned();
            // A runtime is always present when a request sets typing; without one
            // (unit code paths) expiry still happens lazily on the next read.
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(async move {
                    tokio::time::sleep(t.min(MAX_TIMEOUT) + Duration::from_millis(10)).await;
                    if this.expire(&room) {
                        let v = this.version();
                        this.notifier.notify(members.iter().map(|u| &**u), v);
                    }
                });
            }
        }
    }

    /// Drops expired notices in a room; true if any was dropped.
    fn expire(&self, room: &RoomId) -> bool {
        let mut st = self.state.lock();
        let now = Instant::now();
        let next = st.version + 1;
        let Some(r) = st.rooms.get_mut(room) else { return false };
        let before = r.users.len();
        r.users.retain(|_, until| *until > now);
        if r.users.len() == before {
            return false;
        }
        r.changed_at = next;
        st.version = next;
        true
    }

    /// Who is typing in `room`, if that changed after `since`. With no `since` (an initial
    /// sync, or a room new to the sync), any room where typing happened since the start
    /// says so, an empty list included, as Synapse does: a client that joined after
    /// someone stopped typing, or whose first sync of the room came between the start and
    /// the stop, learns that nobody types now (sytest: "Typing can be explicitly stopped").
    pub fn typing_since(&self, room: &RoomId, since: Option<u64>) -> Option<Vec<OwnedUserId>> {
        self.expire(room);
        let st = self.state.lock();
        let r = st.rooms.get(room)?;
        if since.is_some_and(|s| r.changed_at <= s) {
            return None;
        }
        Some(r.users.keys().cloned().collect())
    }

    /// Rooms whose typing changed after `since`.
    pub fn rooms_changed_since(&self, since: u64) -> Vec<OwnedRoomId> {
        self.state.lock().rooms.iter().filter(|(_, r)| r.changed_at > since).map(|(id, _)| id.clone()).collect()
    }
}
