//! Client-server API, "Third-party networks": Hearth bridges to no other network, so it
//! knows no protocols (`/thirdparty/protocols` is `{}`, which Element's room directory
//! asks for), and every lookup finds nothing: an unknown protocol is 404, a search by
//! alias or user id an empty list.

use std::sync::Arc;

use axum::{extract::State, http::request::Parts, routing::get, Json, Router};
use serde_json::{json, Value};

use crate::{
    api::caller_of,
    error::{Error, Result},
    Services,
};

pub fn routes() -> Router<Arc<Services>> {
    let mut router = Router::new();
    for v in ["r0", "v3"] {
        router = router
            .route(&format!("/_matrix/client/{v}/thirdparty/protocols"), get(protocols))
            .route(&format!("/_matrix/client/{v}/thirdparty/protocol/{{protocol}}"), get(unknown_protocol))
            .route(&format!("/_matrix/client/{v}/thirdparty/location/{{protocol}}"), get(unknown_protocol))
            .route(&format!("/_matrix/client/{v}/thirdparty/user/{{protocol}}"), get(unknown_protocol))
            .route(&format!("/_matrix/client/{v}/thirdparty/location"), get(nothing))
            .route(&format!("/_matrix/client/{v}/thirdparty/user"), get(nothing));
    }
    router
}

async fn protocols(State(s): State<Arc<Services>>, parts: Parts) -> Result<Json<Value>> {
    caller_of(&s, &parts)?;
    Ok(Json(json!({})))
}

async fn unknown_protocol(State(s): State<Arc<Services>>, parts: Parts) -> Result<Json<Value>> {
    caller_of(&s, &parts)?;
    Err(Error::not_found("This server bridges to no third-party networks"))
}

async fn nothing(State(s): State<Arc<Services>>, parts: Parts) -> Result<Json<Value>> {
    caller_of(&s, &parts)?;
    Ok(Json(json!([])))
}
