//! Server-server API, "Spaces": `GET /_matrix/federation/v1/hierarchy/{roomId}`, a room
//! of a space and its children as another server may see them (`federation::hierarchy`).

use std::sync::Arc;

use axum::{extract::State, Json};
use ruma::api::federation::space::get_hierarchy;
use serde_json::Value;

use crate::{api::Ruma, error::Result, Services};

/// `GET /_matrix/federation/v1/hierarchy/{roomId}`
pub async fn get_hierarchy(
    State(s): State<Arc<Services>>,
    req: Ruma<get_hierarchy::v1::Request>,
) -> Result<Json<Value>> {
    let origin = req.origin()?;
    Ok(Json(crate::federation::hierarchy::serve(&s.rooms, origin, &req.body.room_id, req.body.suggested_only)?))
}
