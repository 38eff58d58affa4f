//! Presence fan-out: telling the users who share a room with someone that their presence
//! changed, and the worker that turns silent users offline.
//!
//! The records themselves live in [`crate::users::presence`]; who shares a room with whom
//! is [`Rooms::users_sharing_a_room`]. This module sits above both, so that `users` needs
//! no knowledge of rooms. A change's stream position comes from the presence service; the
//! wake-up here only makes the waiting syncs of its audience look at the stream.

use std::{
    sync::{Arc, Weak},
    time::Duration,
};

use ruma::UserId;

use crate::{error::Result, rooms::Rooms, sync::notifier::Notifier, users::presence::Presence, Services};

/// Wakes the syncs of everyone who shares a room with `user` (and their own) for the
/// presence change at stream position `pos`.
pub fn notify_contacts(rooms: &Rooms, notifier: &Notifier, user: &UserId, pos: u64) -> Result<()> {
    let wake = rooms.users_sharing_a_room(user)?;
    notifier.notify(wake.iter().map(|u| &**u), pos);
    Ok(())
}

/// Sets `user`'s presence (`status_msg: None` keeps the current message) and tells their
/// contacts if anything they see changed.
pub fn set(
    presence: &Presence,
    rooms: &Rooms,
    notifier: &Notifier,
    user: &UserId,
    state: &str,
    status_msg: Option<Option<String>>,
) -> Result<()> {
    if let Some(pos) = presence.set(user, state, status_msg)? {
        notify_contacts(rooms, notifier, user, pos)?;
    }
    Ok(())
}

/// [`set`] for a syncing client (`/sync`'s `set_presence`): the change is written at once
/// and its wait for the disk starts on the blocking pool, so that it overlaps the building
/// of the sync instead of coming before it (a user's first sync, or their first after time
/// away, changes their presence). The sync may read up to the returned position (every
/// earlier one is written too) and must wait for [`PendingPresence::durable`] before
/// answering: nothing is shown as done before it is on disk. Contacts are told once it is.
/// Must be called within the runtime.
pub fn set_while_syncing(s: &Arc<Services>, user: &UserId, state: &str) -> Result<Option<PendingPresence>> {
    let Some(pos) = s.presence.set_deferred(user, state, None)? else { return Ok(None) };
    let (s, user) = (s.clone(), user.to_owned());
    let task = tokio::task::spawn_blocking(move || {
        s.rooms.stream.make_durable(pos)?;
        notify_contacts(&s.rooms, &s.notifier, &user, pos)
    });
    Ok(Some(PendingPresence { pos, task }))
}

/// A presence change written and being made durable (see [`set_while_syncing`]).
pub struct PendingPresence {
    pos: u64,
    task: tokio::task::JoinHandle<Result<()>>,
}

impl PendingPresence {
    /// The change's stream position.
    pub fn pos(&self) -> u64 {
        self.pos
    }

    /// Returns once the change is durable and contacts are told.
    pub async fn durable(self) -> Result<()> {
        self.task.await.map_err(|_| crate::error::Error::internal("presence write panicked"))?
    }
}

/// One sweep of the time-out: turns offline the users whose clients stopped syncing
/// `timeout_ms` ago, and tells their contacts. Failures are logged, not returned: the
/// next sweep tries again.
pub fn time_out(presence: &Presence, rooms: &Rooms, notifier: &Notifier, timeout_ms: u64) {
    match presence.time_out(timeout_ms) {
        Ok(told) => {
            for (user, pos) in told {
                if let Err(e) = notify_contacts(rooms, notifier, &user, pos) {
                    tracing::warn!(error = %e, %user, "cannot tell contacts of a presence time-out");
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "presence time-out failed"),
    }
}

/// Turns offline the users whose clients stopped syncing `presence_offline_timeout_s`
/// ago, and tells their contacts; runs until the server is gone (the last strong
/// reference to its [`Services`] dropped). The server spawns it.
pub async fn time_out_presence(services: Weak<Services>, timeout: Duration) {
    let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
    let every = (timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(5));
    // Reads and writes here wait on the disk (a time-out's write waits for its fsync), so
    // they run on the blocking pool, not on a runtime worker.
    let first = services.clone();
    let loaded = tokio::task::spawn_blocking(move || first.upgrade().map(|s| s.presence.load_present()));
    if let Ok(Some(Err(e))) = loaded.await {
        tracing::warn!(error = %e, "cannot read presence at start; nobody will time out until they sync");
    }
    loop {
        tokio::time::sleep(every).await;
        let services = services.clone();
        let sweep = tokio::task::spawn_blocking(move || {
            let Some(s) = services.upgrade() else { return false };
            time_out(&s.presence, &s.rooms, &s.notifier, timeout_ms);
            true
        });
        if !matches!(sweep.await, Ok(true)) {
            return;
        }
    }
}
