//! Client-server operations only an application service may call: Hearth has no
//! application service registrations, so no access token is an application service's,
//! and both answer 403 `M_FORBIDDEN` (the spec's refusal for a token that is not the
//! service's): `POST /_matrix/client/v1/appservice/{appserviceId}/ping` and
//! `PUT /_matrix/client/v3/directory/list/appservice/{networkId}/{roomId}`.

use std::sync::Arc;

use axum::{
    extract::State,
    http::request::Parts,
    routing::{post, put},
    Json, Router,
};
use serde_json::Value;

use crate::{
    api::caller_of,
    error::{Error, Result},
    Services,
};

pub fn routes() -> Router<Arc<Services>> {
    Router::new()
        .route("/_matrix/client/v1/appservice/{appservice_id}/ping", post(refuse))
        .route("/_matrix/client/v3/directory/list/appservice/{network_id}/{room_id}", put(refuse))
        .route("/_matrix/client/r0/directory/list/appservice/{network_id}/{room_id}", put(refuse))
}

async fn refuse(State(s): State<Arc<Services>>, parts: Parts) -> Result<Json<Value>> {
    caller_of(&s, &parts)?;
    Err(Error::forbidden("This access token is not an application service's: this server has none"))
}
