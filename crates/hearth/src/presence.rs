//! Presence fan-out: telling the users who share a room with someone that their presence
//! changed, and the worker that turns silent users offline.
//!
//! The records themselves live in [`crate::users::presence`]; who shares a room with whom
//! is [`Rooms::users_sharing_a_room`]. This module sits above both, so that `users` needs
//! no knowledge of rooms. A change's stream position comes from the presence service; the
//! wake-up here only makes the waiting syncs of its audience look at the stream.

use std::{sync::Weak, time::Duration};

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
