//! Presence across servers (`federate_presence`, on by default): a local user's presence
//! changes go out as `m.presence` EDUs to the servers sharing a room with them (the sender
//! follows the stream's presence items); an `m.presence` EDU from a server sets the
//! presence of its own users who share a room with a local user, and wakes the local users
//! who share a room with them. Off, neither happens: presence stays among local users.

use ruma::{ServerName, UserId};
use serde_json::Value;

use super::Federation;

/// Most presence updates taken from one EDU.
const MAX_PUSHES: usize = 500;

impl Federation {
    pub(crate) fn receive_presence(&self, origin: &ServerName, content: &Value) {
        let Some(presence) = &self.presence else { return };
        let Some(pushes) = content.get("push").and_then(Value::as_array) else { return };
        for push in pushes.iter().take(MAX_PUSHES) {
            let (Some(user), Some(state)) = (
                push.get("user_id").and_then(Value::as_str).and_then(|u| UserId::parse(u).ok()),
                push.get("presence").and_then(Value::as_str),
            ) else {
                continue;
            };
            if user.server_name() != origin {
                continue;
            }
            // Only for users someone here can see: no records for strangers.
            let contacts = self.rooms.users_sharing_a_room(&user).unwrap_or_default();
            if !contacts.iter().any(|u| u.server_name() == self.own) {
                continue;
            }
            let msg = push.get("status_msg").and_then(Value::as_str).map(str::to_owned);
            match presence.set(&user, state, Some(msg)) {
                Ok(Some(pos)) => self.rooms.notifier.notify(contacts.iter().map(|u| &**u), pos),
                Ok(None) => {}
                Err(e) => tracing::debug!(%origin, %user, error = %e, "ignoring a presence update"),
            }
        }
    }
}
