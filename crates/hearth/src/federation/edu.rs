//! Outbound EDUs for a room's other servers: typing notices and read receipts, queued in
//! the sender's per-destination EDU buffers and sent promptly (see [`super::sender`]).

use ruma::{EventId, RoomId, UserId};
use serde_json::json;

use super::Federation;
use crate::time::now_millis;

impl Federation {
    /// A local user started or stopped typing.
    pub fn send_typing(&self, room: &RoomId, user: &UserId, typing: bool) {
        let edu = json!({
            "edu_type": "m.typing",
            "content": {"room_id": room, "user_id": user, "typing": typing},
        });
        self.to_room_servers(room, edu);
    }

    /// A local user's public read receipt.
    pub fn send_receipt(&self, room: &RoomId, user: &UserId, event: &EventId, thread: Option<&str>) {
        let mut data = json!({"ts": now_millis()});
        if let Some(t) = thread {
            data["thread_id"] = json!(t);
        }
        let edu = json!({
            "edu_type": "m.receipt",
            "content": {room.as_str(): {"m.read": {user.as_str(): {"event_ids": [event], "data": data}}}},
        });
        self.to_room_servers(room, edu);
    }

    fn to_room_servers(&self, room: &RoomId, edu: serde_json::Value) {
        match self.servers_in_room(room) {
            Ok(servers) => {
                for server in servers {
                    self.sender.queue_edu(&server, edu.clone());
                }
            }
            Err(e) => tracing::warn!(%room, error = %e, "cannot list the room's servers for an EDU"),
        }
    }
}
