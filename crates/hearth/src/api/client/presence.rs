//! Client-server API: presence (`/presence/{userId}/status`).

use std::{
    sync::{Arc, Weak},
    time::Duration,
};

use ruma::{
    api::client::presence::{get_presence, set_presence},
    UserId,
};

use crate::{
    api::Ruma,
    error::{Error, Result},
    Services,
};

pub use crate::users::presence::STATES;

/// Wakes the syncs of everyone who shares a room with `user` (and their own).
pub fn notify_contacts(s: &Services, user: &UserId, pos: u64) -> Result<()> {
    let mut wake = vec![user.to_owned()];
    for room in s.rooms.joined_rooms(user)? {
        wake.extend(s.rooms.members(&room, "join")?);
    }
    wake.sort();
    wake.dedup();
    s.notifier.notify(wake.iter().map(|u| &**u), pos);
    Ok(())
}

/// Turns offline the users whose clients stopped syncing `presence_offline_timeout_s`
/// ago, and tells their contacts; runs until the server is gone.
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
            match s.presence.time_out(timeout_ms) {
                Ok(told) => {
                    for (user, pos) in told {
                        if let Err(e) = notify_contacts(&s, &user, pos) {
                            tracing::warn!(error = %e, %user, "cannot tell contacts of a presence time-out");
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "presence time-out failed"),
            }
            true
        });
        if !matches!(sweep.await, Ok(true)) {
            return;
        }
    }
}

/// `PUT /_matrix/client/v3/presence/{userId}/status`
pub async fn set_presence(
    s: Arc<Services>,
    req: Ruma<set_presence::v3::Request>,
) -> Result<set_presence::v3::Response> {
    let caller = req.caller()?;
    if caller.user_id != req.body.user_id {
        return Err(Error::forbidden("You can only set your own presence"));
    }
    s.presence.seen(&caller.user_id);
    if let Some(pos) = s.presence.set(&caller.user_id, req.body.presence.as_str(), Some(req.body.status_msg.clone()))? {
        notify_contacts(&s, &caller.user_id, pos)?;
    }
    Ok(set_presence::v3::Response::new())
}

/// `GET /_matrix/client/v3/presence/{userId}/status`
///
/// Visible to the user themself and to those who share a room with them.
pub async fn get_presence(
    s: Arc<Services>,
    req: Ruma<get_presence::v3::Request>,
) -> Result<get_presence::v3::Response> {
    let caller = req.caller()?;
    let target = &req.body.user_id;
    if caller.user_id != *target {
        let mine = s.rooms.joined_rooms(&caller.user_id)?;
        let shared = mine.iter().any(|r| s.rooms.is_joined(r, target).unwrap_or(false));
        if !shared {
            return Err(Error::forbidden("You do not share a room with this user"));
        }
    }
    let rec = s.presence.get(target)?.ok_or_else(|| Error::not_found("No presence for this user"))?;
    let mut res = get_presence::v3::Response::new(rec.presence.as_str().into());
    res.status_msg = rec.status_msg;
    let ago = crate::time::now_millis().saturating_sub(rec.last_active_ts);
    res.last_active_ago = Some(std::time::Duration::from_millis(ago));
    res.currently_active = Some(rec.presence == "online" && ago < 5 * 60 * 1000);
    Ok(res)
}
