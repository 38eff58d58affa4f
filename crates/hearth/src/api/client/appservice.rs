//! Client-server operations only an application service may call (its `as_token`):
//! `POST /_matrix/client/v1/appservice/{appserviceId}/ping`, and its own room directory
//! lists, `PUT` (and, as on Synapse, `DELETE`)
//! `/_matrix/client/v3/directory/list/appservice/{networkId}/{roomId}`. Any other token is
//! refused with 403 `M_FORBIDDEN`.

use std::sync::Arc;

use axum::{
    body::Bytes,
    extract::{Path, State},
    http::request::Parts,
    routing::{post, put},
    Json, Router,
};
use http::StatusCode;
use serde_json::{json, Value};

use crate::{
    api::caller_of,
    appservice::{query::PingError, AppService},
    error::{Error, Result},
    Services,
};

pub fn routes() -> Router<Arc<Services>> {
    let mut router = Router::new().route("/_matrix/client/v1/appservice/{appservice_id}/ping", post(ping));
    for v in ["r0", "v3"] {
        router = router.route(
            &format!("/_matrix/client/{v}/directory/list/appservice/{{network_id}}/{{room_id}}"),
            put(list_room).delete(unlist_room),
        );
    }
    router
}

/// The application service whose token the request carries.
fn service_of(s: &Services, parts: &Parts) -> Result<Arc<AppService>> {
    let caller = caller_of(s, parts)?;
    caller
        .appservice
        .as_deref()
        .and_then(|id| s.appservices.by_id(id))
        .cloned()
        .ok_or_else(|| Error::forbidden("This access token is not an application service's"))
}

fn json_body(body: &Bytes) -> Result<Value> {
    if body.is_empty() {
        return Ok(json!({}));
    }
    serde_json::from_slice(body).map_err(|_| Error::not_json("Request body is not valid JSON"))
}

async fn ping(
    State(s): State<Arc<Services>>,
    Path(id): Path<String>,
    parts: Parts,
    body: Bytes,
) -> Result<Json<Value>> {
    let service = service_of(&s, &parts)?;
    if service.id() != id {
        return Err(Error::forbidden("This access token belongs to another application service"));
    }
    let body = json_body(&body)?;
    let txn = match body.get("transaction_id") {
        None => None,
        Some(Value::String(t)) => Some(t.as_str()),
        Some(_) => return Err(Error::bad_json("transaction_id must be a string")),
    };
    match s.appservices.ping(&service, txn).await {
        Ok(took) => Ok(Json(json!({ "duration_ms": took.as_millis() as u64 }))),
        Err(PingError::NoUrl) => {
            Err(Error::matrix(StatusCode::BAD_REQUEST, "M_URL_NOT_SET", "The application service has no URL"))
        }
        Err(PingError::TimedOut) => Err(Error::matrix(
            StatusCode::GATEWAY_TIMEOUT,
            "M_CONNECTION_TIMEOUT",
            "The application service did not answer in time",
        )),
        Err(PingError::Unreachable(why)) => Err(Error::matrix(
            StatusCode::BAD_GATEWAY,
            "M_CONNECTION_FAILED",
            format!("Cannot reach the application service: {why}"),
        )),
        Err(PingError::Status(status, body)) => Err(Error::matrix(
            StatusCode::BAD_GATEWAY,
            "M_BAD_STATUS",
            format!("The application service answered {status}: {}", body.chars().take(200).collect::<String>()),
        )),
    }
}

async fn list_room(
    State(s): State<Arc<Services>>,
    Path((network, room)): Path<(String, String)>,
    parts: Parts,
    body: Bytes,
) -> Result<Json<Value>> {
    let service = service_of(&s, &parts)?;
    let room = parse_room(&s, &room)?;
    let public = match json_body(&body)?.get("visibility").and_then(Value::as_str) {
        Some("public") => true,
        Some("private") => false,
        _ => return Err(Error::invalid_param("visibility must be \"public\" or \"private\"")),
    };
    s.appservices.set_listed(&service, &network, &room, public)?;
    Ok(Json(json!({})))
}

async fn unlist_room(
    State(s): State<Arc<Services>>,
    Path((network, room)): Path<(String, String)>,
    parts: Parts,
) -> Result<Json<Value>> {
    let service = service_of(&s, &parts)?;
    let room = parse_room(&s, &room)?;
    s.appservices.set_listed(&service, &network, &room, false)?;
    Ok(Json(json!({})))
}

fn parse_room(s: &Services, room: &str) -> Result<ruma::OwnedRoomId> {
    let room = ruma::OwnedRoomId::try_from(room).map_err(|e| Error::invalid_param(format!("Invalid room id: {e}")))?;
    s.rooms.known_room(&room)?;
    Ok(room)
}
