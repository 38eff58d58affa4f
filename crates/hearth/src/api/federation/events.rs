//! Server-server API: reading a room's events and state (`event`, `state`, `state_ids`,
//! `event_auth`, `get_missing_events`, `backfill`), for servers with a member in the room.

use std::sync::Arc;

use ruma::{
    api::federation::{
        authorization::get_event_authorization,
        backfill::get_backfill,
        event::{get_event, get_room_state, get_room_state_ids},
    },
    MilliSecondsSinceUnixEpoch,
};

use crate::{
    api::Ruma,
    error::{Error, Result},
    Services,
};

/// `GET /_matrix/federation/v1/event/{eventId}`
pub async fn get_event(s: Arc<Services>, req: Ruma<get_event::v1::Request>) -> Result<get_event::v1::Response> {
    let origin = req.origin()?;
    let pdu = s.federation.event(origin, &req.body.event_id)?;
    Ok(get_event::v1::Response::new(s.config.server_name.clone(), MilliSecondsSinceUnixEpoch::now(), pdu))
}

/// `GET /_matrix/federation/v1/state/{roomId}`: the state before an event.
pub async fn get_room_state(
    s: Arc<Services>,
    req: Ruma<get_room_state::v1::Request>,
) -> Result<get_room_state::v1::Response> {
    let origin = req.origin()?;
    let (pdus, auth_chain) = s.federation.state(origin, &req.body.room_id, &req.body.event_id)?;
    Ok(get_room_state::v1::Response::new(auth_chain, pdus))
}

/// `GET /_matrix/federation/v1/state_ids/{roomId}`: the state before an event, as ids.
pub async fn get_room_state_ids(
    s: Arc<Services>,
    req: Ruma<get_room_state_ids::v1::Request>,
) -> Result<get_room_state_ids::v1::Response> {
    let origin = req.origin()?;
    let (pdu_ids, auth_chain_ids) = s.federation.state_ids(origin, &req.body.room_id, &req.body.event_id)?;
    Ok(get_room_state_ids::v1::Response::new(auth_chain_ids, pdu_ids))
}

/// `GET /_matrix/federation/v1/event_auth/{roomId}/{eventId}`
pub async fn get_event_authorization(
    s: Arc<Services>,
    req: Ruma<get_event_authorization::v1::Request>,
) -> Result<get_event_authorization::v1::Response> {
    let origin = req.origin()?;
    let chain = s.federation.event_auth(origin, &req.body.room_id, &req.body.event_id)?;
    Ok(get_event_authorization::v1::Response::new(chain))
}

/// The body of `get_missing_events`, every field defaulted as Synapse does (sytest's ACL
/// check sends `{}` and expects the 403 of a banned server, not a 400).
#[derive(serde::Deserialize)]
struct MissingEventsBody {
    #[serde(default)]
    earliest_events: Vec<ruma::OwnedEventId>,
    #[serde(default)]
    latest_events: Vec<ruma::OwnedEventId>,
    #[serde(default = "default_missing_limit")]
    limit: u64,
    #[serde(default)]
    min_depth: u64,
}

fn default_missing_limit() -> u64 {
    10
}

/// `POST /_matrix/federation/v1/get_missing_events/{roomId}`
pub async fn get_missing_events(
    axum::extract::State(s): axum::extract::State<Arc<Services>>,
    req: axum::extract::Request,
) -> Result<axum::Json<serde_json::Value>> {
    use axum::extract::FromRequestParts;
    let (mut parts, body) = req.into_parts();
    let axum::extract::Path(room_id) = axum::extract::Path::<String>::from_request_parts(&mut parts, &s)
        .await
        .map_err(|_| Error::invalid_param("Invalid path"))?;
    let body = crate::api::read_body(body, s.config.max_request_size as usize).await?;
    let origin = crate::api::verify_server_request(&s, &parts, &body).await?;
    let room_id = ruma::OwnedRoomId::try_from(room_id).map_err(|_| Error::invalid_param("Invalid room id"))?;
    let b: MissingEventsBody = serde_json::from_slice(&body).map_err(|e| Error::bad_json(e.to_string()))?;
    let limit = usize::try_from(b.limit).unwrap_or(usize::MAX);
    let events =
        s.federation.missing_events(&origin, &room_id, &b.earliest_events, &b.latest_events, limit, b.min_depth)?;
    Ok(axum::Json(serde_json::json!({ "events": events })))
}

/// `GET /_matrix/federation/v1/backfill/{roomId}`
pub async fn get_backfill(
    s: Arc<Services>,
    req: Ruma<get_backfill::v1::Request>,
) -> Result<get_backfill::v1::Response> {
    let origin = req.origin()?;
    let b = &req.body;
    let limit = usize::try_from(u64::from(b.limit)).unwrap_or(usize::MAX);
    let pdus = s.federation.backfill(origin, &b.room_id, &b.v, limit)?;
    Ok(get_backfill::v1::Response::new(s.config.server_name.clone(), MilliSecondsSinceUnixEpoch::now(), pdus))
}
