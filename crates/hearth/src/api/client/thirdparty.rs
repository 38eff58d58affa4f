//! Client-server API, "Third-party networks": the protocols the registered application
//! services (bridges) reach, as they describe them, and lookups passed on to them. With no
//! bridge, `/thirdparty/protocols` is `{}` (Element's room directory asks for it), an
//! unknown protocol is 404 and a search by alias or user id an empty list.

use std::sync::Arc;

use axum::{
    extract::{Path, State},
    http::request::Parts,
    routing::get,
    Json, Router,
};
use serde_json::Value;

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
            .route(&format!("/_matrix/client/{v}/thirdparty/protocol/{{protocol}}"), get(protocol))
            .route(&format!("/_matrix/client/{v}/thirdparty/location/{{protocol}}"), get(location_by_protocol))
            .route(&format!("/_matrix/client/{v}/thirdparty/user/{{protocol}}"), get(user_by_protocol))
            .route(&format!("/_matrix/client/{v}/thirdparty/location"), get(location))
            .route(&format!("/_matrix/client/{v}/thirdparty/user"), get(user));
    }
    router
}

async fn protocols(State(s): State<Arc<Services>>, parts: Parts) -> Result<Json<Value>> {
    caller_of(&s, &parts)?;
    Ok(Json(Value::Object(s.appservices.protocols().await)))
}

fn unknown() -> Error {
    Error::not_found("No bridge on this server reaches that protocol")
}

async fn protocol(State(s): State<Arc<Services>>, Path(name): Path<String>, parts: Parts) -> Result<Json<Value>> {
    caller_of(&s, &parts)?;
    s.appservices.protocol(&name).await.map(Json).ok_or_else(unknown)
}

/// The request's query, passed on as it came (the fields are the protocol's own), less
/// an `access_token`: the caller's token is not the bridge's business.
fn query(parts: &Parts) -> String {
    let query = parts.uri.query().unwrap_or("");
    query.split('&').filter(|p| !p.is_empty() && !p.starts_with("access_token=")).collect::<Vec<_>>().join("&")
}

async fn lookup(s: &Services, parts: &Parts, kind: &str, protocol: Option<&str>) -> Result<Json<Value>> {
    caller_of(s, parts)?;
    let found = s.appservices.lookup(kind, protocol, &query(parts)).await.ok_or_else(unknown)?;
    Ok(Json(Value::Array(found)))
}

async fn location_by_protocol(
    State(s): State<Arc<Services>>,
    Path(name): Path<String>,
    parts: Parts,
) -> Result<Json<Value>> {
    lookup(&s, &parts, "location", Some(&name)).await
}

async fn user_by_protocol(
    State(s): State<Arc<Services>>,
    Path(name): Path<String>,
    parts: Parts,
) -> Result<Json<Value>> {
    lookup(&s, &parts, "user", Some(&name)).await
}

async fn location(State(s): State<Arc<Services>>, parts: Parts) -> Result<Json<Value>> {
    lookup(&s, &parts, "location", None).await
}

async fn user(State(s): State<Arc<Services>>, parts: Parts) -> Result<Json<Value>> {
    lookup(&s, &parts, "user", None).await
}
