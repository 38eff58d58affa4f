//! Client-server API: redacting events.

use std::sync::Arc;

use axum::{
    body::Bytes,
    extract::{Path, State},
    http::request::Parts,
    Json,
};
use ruma::{api::client::redact::redact_event, OwnedEventId, OwnedRoomId};
use serde_json::{json, Value};

use crate::{
    api::{caller_of, Ruma},
    error::{Error, Result},
    rooms::append::TxnRef,
    Services,
};

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

/// `POST /_matrix/client/{r0,v3}/rooms/{roomId}/redact/{eventId}`, with no transaction id:
/// not in the spec, but Synapse serves it and older clients and sytest send it. Each call
/// is a new redaction (there is no transaction id to make a retry idempotent).
async fn redact_without_txn(
    State(s): State<Arc<Services>>,
    Path((room_id, event_id)): Path<(String, String)>,
    parts: Parts,
    body: Bytes,
) -> Result<Json<Value>> {
    let caller = caller_of(&s, &parts)?;
    let room_id = OwnedRoomId::try_from(room_id).map_err(|_| Error::invalid_param("Invalid room id"))?;
    let event_id = OwnedEventId::try_from(event_id).map_err(|_| Error::invalid_param("Invalid event id"))?;
    let body: Value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        serde_json::from_slice(&body).map_err(|_| Error::not_json("Content not JSON."))?
    };
    if !body.is_object() {
        return Err(Error::not_json("Content must be a JSON object."));
    }
    let reason = match body.get("reason") {
        None | Some(Value::Null) => None,
        Some(Value::String(r)) => Some(r.clone()),
        Some(_) => return Err(Error::bad_json("reason must be a string")),
    };
    s.rooms.require_joined(&room_id, &caller.user_id)?;
    let unique: String = crate::random::alphanumeric(24);
    let txn_id = format!("hearth-post-redact-{unique}");
    let txn = TxnRef { device_id: caller.device_id.as_str(), txn_id: &txn_id };
    let pdu = s.rooms.redact_event(&room_id, &caller.user_id, &event_id, reason, txn)?;
    Ok(Json(json!({"event_id": pdu.event_id})))
}

pub fn routes() -> axum::Router<Arc<Services>> {
    let mut router = axum::Router::new();
    for version in ["r0", "v3"] {
        router = router.route(
            &format!("/_matrix/client/{version}/rooms/{{room_id}}/redact/{{event_id}}"),
            axum::routing::post(redact_without_txn),
        );
    }
    router
}
