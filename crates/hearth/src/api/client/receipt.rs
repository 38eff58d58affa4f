//! Client-server API: receipts and read markers.

use std::sync::Arc;

use ruma::{
    api::client::{read_marker::set_read_marker, receipt::create_receipt},
    events::receipt::ReceiptThread,
};
use serde_json::json;

use crate::{
    api::Ruma,
    error::{Error, Result},
    Services,
};

/// `POST /_matrix/client/v3/rooms/{roomId}/receipt/{receiptType}/{eventId}`
///
/// `m.read` and `m.read.private` (threaded or not) are receipts; `m.fully_read` is stored
/// as the room's `m.fully_read` account data, as the spec says.
pub async fn create_receipt(
    s: Arc<Services>,
    req: Ruma<create_receipt::v3::Request>,
) -> Result<create_receipt::v3::Response> {
    let caller = req.caller()?;
    let b = &req.body;
    s.rooms.require_joined(&b.room_id, &caller.user_id)?;
    let kind = b.receipt_type.as_str();
    check_thread(kind, &b.thread)?;
    if kind == "m.fully_read" {
        set_fully_read(&s, &caller.user_id, &b.room_id, &b.event_id)?;
    } else {
        s.rooms.set_receipt(&b.room_id, &caller.user_id, kind, b.thread.as_str(), &b.event_id)?;
        if kind == "m.read" && s.config.allow_federation {
            s.federation.send_receipt(&b.room_id, &caller.user_id, &b.event_id, b.thread.as_str());
        }
    }
    Ok(create_receipt::v3::Response::new())
}

/// The spec's 400 for a `thread_id` that is neither `main` nor an event id, or that is given
/// with `m.fully_read`, which has no threads.
fn check_thread(kind: &str, thread: &ReceiptThread) -> Result<()> {
    match thread {
        ReceiptThread::Unthreaded => Ok(()),
        _ if kind == "m.fully_read" => Err(Error::invalid_param("thread_id is not allowed with m.fully_read")),
        ReceiptThread::Main | ReceiptThread::Thread(_) => Ok(()),
        _ => Err(Error::invalid_param("thread_id must be \"main\" or a thread root's event id")),
    }
}

/// `POST /_matrix/client/v3/rooms/{roomId}/read_markers`
pub async fn set_read_marker(
    s: Arc<Services>,
    req: Ruma<set_read_marker::v3::Request>,
) -> Result<set_read_marker::v3::Response> {
    let caller = req.caller()?;
    let b = &req.body;
    s.rooms.require_joined(&b.room_id, &caller.user_id)?;
    if let Some(id) = &b.fully_read {
        set_fully_read(&s, &caller.user_id, &b.room_id, id)?;
    }
    if let Some(id) = &b.read_receipt {
        s.rooms.set_receipt(&b.room_id, &caller.user_id, "m.read", None, id)?;
        if s.config.allow_federation {
            s.federation.send_receipt(&b.room_id, &caller.user_id, id, None);
        }
    }
    if let Some(id) = &b.private_read_receipt {
        s.rooms.set_receipt(&b.room_id, &caller.user_id, "m.read.private", None, id)?;
    }
    Ok(set_read_marker::v3::Response::new())
}

/// Moves the user's `m.fully_read` marker (room account data) to an event of the room.
fn set_fully_read(s: &Services, user: &ruma::UserId, room: &ruma::RoomId, event: &ruma::EventId) -> Result<()> {
    s.rooms.event_meta(event)?.filter(|m| m.room_id == room).ok_or_else(|| Error::not_found("Unknown event"))?;
    let content = json!({"event_id": event});
    s.account_data.set(user, Some(room), "m.fully_read", content.as_object().cloned().unwrap_or_default())
}
