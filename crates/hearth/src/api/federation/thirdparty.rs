//! Third-party invites (spec: server-server API, "Third-party invites"): an identity server
//! hands a bound address's invites to the owner's server (`3pid/onbind`), and that server
//! asks the inviter's to turn one into the invite (`exchange_third_party_invite`). The work
//! is in `identity::invite`.

use std::sync::Arc;

use axum::{body::Bytes, extract::State};
use ruma::api::federation::thirdparty::exchange_invite;
use serde_json::{json, Value};

use crate::{
    api::Ruma,
    error::{Error, Result},
    Services,
};

/// `PUT /_matrix/federation/v1/exchange_third_party_invite/{roomId}`
pub async fn exchange_third_party_invite(
    s: Arc<Services>,
    req: Ruma<exchange_invite::v1::Request>,
) -> Result<exchange_invite::v1::Response> {
    let origin = req.origin()?;
    let b = &req.body;
    s.federation.require_acl(&b.room_id, origin)?;
    let content: Value = serde_json::from_str(b.content.json().get())
        .map_err(|e| Error::bad_json(format!("The member event's content is not JSON: {e}")))?;
    let event = json!({
        "type": b.kind.to_string(),
        "room_id": b.room_id,
        "sender": b.sender,
        "state_key": b.state_key,
        "content": content,
    });
    s.identity.exchange(&b.room_id, &event).await?;
    Ok(exchange_invite::v1::Response::new())
}

/// `POST /_matrix/federation/v1/3pid/onbind`: called by identity servers, which sign the
/// invites inside rather than the request.
pub async fn on_bind(State(s): State<Arc<Services>>, body: Bytes) -> Result<axum::Json<Value>> {
    let body: Value =
        serde_json::from_slice(&body).map_err(|e| Error::bad_json(format!("The body is not JSON: {e}")))?;
    s.identity.on_bind(&body).await?;
    Ok(axum::Json(json!({})))
}
