//! Client-server API: redacting events.

use std::sync::Arc;

use ruma::api::client::redact::redact_event;

use crate::{api::Ruma, error::Result, rooms::append::TxnRef, Services};

/// `PUT /_matrix/client/v3/rooms/{roomId}/redact/{eventId}/{txnId}`
pub async fn redact_event(
    s: Arc<Services>,
    req: Ruma<redact_event::v3::Request>,
) -> Result<redact_event::v3::Response> {
    let caller = req.caller()?;
    let b = &req.body;
    s.rooms.require_joined(&b.room_id, &caller.user_id)?;
    let txn = TxnRef { device_id: caller.device_id.as_str(), txn_id: b.txn_id.as_str() };
    let pdu = s.rooms.redact_event(&b.room_id, &caller.user_id, &b.event_id, b.reason.clone(), txn)?;
    Ok(redact_event::v3::Response::new(pdu.event_id))
}
