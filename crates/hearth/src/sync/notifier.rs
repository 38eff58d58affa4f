//! Wakes long-polling `/sync` requests of exactly the users a write concerns.
//!
//! One `watch` channel per user with a waiting sync, created on demand. A sync subscribes
//! *before* it reads the database, so a write that lands between its read and its wait
//! still wakes it (the watch remembers the change). Waiting costs nothing per joined room
//! and nothing at idle; a write costs one send per local member of the room.

use std::collections::HashMap;

use parking_lot::Mutex;
use ruma::{OwnedUserId, UserId};
use tokio::sync::watch;

#[derive(Default)]
pub struct Notifier {
    users: Mutex<HashMap<OwnedUserId, watch::Sender<u64>>>,
}

impl Notifier {
    pub fn subscribe(&self, user: &UserId) -> watch::Receiver<u64> {
        let mut users = self.users.lock();
        users.entry(user.to_owned()).or_insert_with(|| watch::channel(0).0).subscribe()
    }

    /// Tells these users that something for them changed at stream position `pos`.
    pub fn notify<'a>(&self, users: impl IntoIterator<Item = &'a UserId>, pos: u64) {
        let mut map = self.users.lock();
        for user in users {
            if let Some(tx) = map.get(user) {
                if tx.receiver_count() == 0 {
                    map.remove(user);
                } else {
                    tx.send_replace(pos);
                }
            }
        }
    }

    /// Number of users with a waiting sync (for metrics).
    pub fn waiting_users(&self) -> usize {
        self.users.lock().values().filter(|tx| tx.receiver_count() > 0).count()
    }
}
