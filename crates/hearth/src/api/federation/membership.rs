//! Server-server API: joining and leaving through this server (`make_join`, `send_join`
//! v2, `make_leave`, `send_leave` v2).

use std::sync::Arc;

use ruma::api::federation::membership::{
    create_invite, create_join_event, create_knock_event, create_leave_event, prepare_join_event, prepare_knock_event,
    prepare_leave_event, RawStrippedState,
};

use crate::{
    api::Ruma,
    error::{Error, Result},
    Services,
};

fn raw(obj: &ruma::CanonicalJsonObject) -> Result<Box<serde_json::value::RawValue>> {
    serde_json::value::to_raw_value(obj).map_err(|e| Error::internal(e.to_string()))
}

/// `GET /_matrix/federation/v1/make_join/{roomId}/{userId}`
pub async fn make_join(
    s: Arc<Services>,
    req: Ruma<prepare_join_event::v1::Request>,
) -> Result<prepare_join_event::v1::Response> {
    let origin = req.origin()?;
    let b = &req.body;
    let (version, template) = s.federation.make_join(origin, &b.room_id, &b.user_id, &b.ver)?;
    let mut res = prepare_join_event::v1::Response::new(raw(&template)?);
    res.room_version = Some(version);
    Ok(res)
}

/// `PUT /_matrix/federation/v2/send_join/{roomId}/{eventId}`
pub async fn send_join(
    s: Arc<Services>,
    req: Ruma<create_join_event::v2::Request>,
) -> Result<create_join_event::v2::Response> {
    let origin = req.origin()?;
    let b = &req.body;
    let answer = s.federation.send_join(origin, &b.room_id, &b.event_id, &b.pdu, b.omit_members).await?;
    let mut state = create_join_event::v2::RoomState::new();
    state.members_omitted = answer.members_omitted;
    state.state = answer.state;
    state.auth_chain = answer.auth_chain;
    state.event = Some(answer.event);
    state.servers_in_room = Some(answer.servers_in_room);
    Ok(create_join_event::v2::Response::new(state))
}

/// `GET /_matrix/federation/v1/make_leave/{roomId}/{userId}`
pub async fn make_leave(
    s: Arc<Services>,
    req: Ruma<prepare_leave_event::v1::Request>,
) -> Result<prepare_leave_event::v1::Response> {
    let origin = req.origin()?;
    let (version, template) = s.federation.make_leave(origin, &req.body.room_id, &req.body.user_id)?;
    Ok(prepare_leave_event::v1::Response::new(Some(version), raw(&template)?))
}

/// `PUT /_matrix/federation/v2/send_leave/{roomId}/{eventId}`
pub async fn send_leave(
    s: Arc<Services>,
    req: Ruma<create_leave_event::v2::Request>,
) -> Result<create_leave_event::v2::Response> {
    let origin = req.origin()?;
    let b = &req.body;
    s.federation.send_leave(origin, &b.room_id, &b.event_id, &b.pdu).await?;
    Ok(create_leave_event::v2::Response::new())
}

/// `PUT /_matrix/federation/v2/invite/{roomId}/{eventId}`: an invite of a local user,
/// signed and kept (see `federation::invite`).
pub async fn create_invite(
    s: Arc<Services>,
    req: Ruma<create_invite::v2::Request>,
) -> Result<create_invite::v2::Response> {
    let origin = req.origin()?;
    let b = &req.body;
    // Stripped events, or (since Matrix 1.16) full PDUs: cut down to what a client sees.
    #[allow(deprecated)]
    let raws: Vec<Box<serde_json::value::RawValue>> = b
        .invite_room_state
        .iter()
        .filter_map(|state| match state {
            RawStrippedState::Stripped(raw) => Some(raw.json().to_owned()),
            RawStrippedState::Pdu(raw) => Some(raw.clone()),
            _ => None,
        })
        .collect();
    let stripped = crate::federation::pdu::stripped(&raws, usize::MAX);
    // An invitee of an application service's namespace may be made on demand: asked first.
    if !s.appservices.is_empty() {
        let target = serde_json::from_str::<serde_json::Value>(b.event.get())
            .ok()
            .and_then(|e| e["state_key"].as_str().and_then(|k| ruma::UserId::parse(k).ok()));
        if let Some(target) = target.filter(|t| t.server_name() == s.config.server_name) {
            if !s.users.is_active(&target)? {
                s.appservices.query_user(&target).await;
            }
        }
    }
    let event =
        s.federation.receive_invite(origin, &b.room_id, &b.event_id, &b.room_version, &b.event, stripped).await?;
    Ok(create_invite::v2::Response::new(event))
}

/// `GET /_matrix/federation/v1/make_knock/{roomId}/{userId}`
pub async fn make_knock(
    s: Arc<Services>,
    req: Ruma<prepare_knock_event::v1::Request>,
) -> Result<prepare_knock_event::v1::Response> {
    let origin = req.origin()?;
    let b = &req.body;
    let (version, template) = s.federation.make_knock(origin, &b.room_id, &b.user_id, &b.ver)?;
    Ok(prepare_knock_event::v1::Response::new(version, raw(&template)?))
}

/// `PUT /_matrix/federation/v1/send_knock/{roomId}/{eventId}`
pub async fn send_knock(
    s: Arc<Services>,
    req: Ruma<create_knock_event::v1::Request>,
) -> Result<create_knock_event::v1::Response> {
    let origin = req.origin()?;
    let b = &req.body;
    let state = s.federation.send_knock(origin, &b.room_id, &b.event_id, &b.pdu).await?;
    Ok(create_knock_event::v1::Response::new(state.into_iter().map(RawStrippedState::Pdu).collect()))
}

/// `PUT /_matrix/federation/v1/send_join/{roomId}/{eventId}`: v2's join with v1's answer,
/// `[200, {state, auth_chain, origin}]`. Deprecated, but Synapse still serves it and older
/// servers (and sytest) still send it; ruma has no types for it.
pub async fn send_join_v1(
    axum::extract::State(s): axum::extract::State<Arc<Services>>,
    SignedV1 { origin, room_id, event_id, body }: SignedV1,
) -> Result<axum::Json<serde_json::Value>> {
    let pdu = raw_pdu(&body)?;
    let answer = s.federation.send_join(&origin, &room_id, &event_id, &pdu, false).await?;
    Ok(axum::Json(serde_json::json!([200, {
        "origin": s.config.server_name,
        "state": answer.state,
        "auth_chain": answer.auth_chain,
    }])))
}

/// `PUT /_matrix/federation/v1/invite/{roomId}/{eventId}`: the invite event alone, the
/// room's preview in its `unsigned.invite_room_state`, for rooms of version 1 or 2 (the
/// only ones v1 can carry, as it names no version); the answer is `[200, {"event": …}]`.
pub async fn create_invite_v1(
    axum::extract::State(s): axum::extract::State<Arc<Services>>,
    SignedV1 { origin, room_id, event_id, body }: SignedV1,
) -> Result<axum::Json<serde_json::Value>> {
    let event: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&body).map_err(|_| Error::not_json("The invite must be a JSON object."))?;
    let raws: Vec<Box<serde_json::value::RawValue>> = event
        .get("unsigned")
        .and_then(|u| u.get("invite_room_state"))
        .and_then(serde_json::Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|e| serde_json::value::to_raw_value(e).ok())
        .collect();
    let stripped = crate::federation::pdu::stripped(&raws, usize::MAX);
    let raw = serde_json::value::to_raw_value(&event).map_err(|e| Error::internal(e.to_string()))?;
    let version = ruma::RoomVersionId::V1;
    let signed = s.federation.receive_invite(&origin, &room_id, &event_id, &version, &raw, stripped).await?;
    Ok(axum::Json(serde_json::json!([200, { "event": signed }])))
}

/// A v1 membership request handled outside ruma's types (`…/{roomId}/{eventId}`): its
/// verified origin, the ids of its path, and its body as sent.
pub struct SignedV1 {
    origin: ruma::OwnedServerName,
    room_id: ruma::OwnedRoomId,
    event_id: ruma::OwnedEventId,
    body: axum::body::Bytes,
}

impl axum::extract::FromRequest<Arc<Services>> for SignedV1 {
    type Rejection = Error;

    async fn from_request(req: axum::extract::Request, s: &Arc<Services>) -> Result<Self> {
        let (mut parts, body) = req.into_parts();
        use axum::extract::FromRequestParts;
        let axum::extract::Path((room_id, event_id)) =
            axum::extract::Path::<(String, String)>::from_request_parts(&mut parts, s)
                .await
                .map_err(|_| Error::invalid_param("Invalid path"))?;
        let body = crate::api::read_body(body, s.config.max_request_size as usize).await?;
        let origin = crate::api::verify_server_request(s, &parts, &body).await?;
        let room_id = ruma::OwnedRoomId::try_from(room_id).map_err(|_| Error::invalid_param("Invalid room id"))?;
        let event_id = ruma::OwnedEventId::try_from(event_id).map_err(|_| Error::invalid_param("Invalid event id"))?;
        Ok(SignedV1 { origin, room_id, event_id, body })
    }
}

fn raw_pdu(body: &[u8]) -> Result<Box<serde_json::value::RawValue>> {
    serde_json::from_slice(body).map_err(|_| Error::not_json("Content not JSON."))
}

/// `PUT /_matrix/federation/v1/send_leave/{roomId}/{eventId}`: v2's leave with v1's
/// answer, `[200, {}]`.
pub async fn send_leave_v1(
    axum::extract::State(s): axum::extract::State<Arc<Services>>,
    SignedV1 { origin, room_id, event_id, body }: SignedV1,
) -> Result<axum::Json<serde_json::Value>> {
    let pdu = raw_pdu(&body)?;
    s.federation.send_leave(&origin, &room_id, &event_id, &pdu).await?;
    Ok(axum::Json(serde_json::json!([200, {}])))
}
