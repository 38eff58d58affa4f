//! Client-server API: push rules (`/pushrules/…`) and pushers.
//!
//! The rules are read and edited as the spec's JSON ([`crate::push::rules`]): handlers
//! outside ruma's types, since ruma's refuse rule ids that clients use (a `room` rule named
//! `#spam:example.com`).
//!
//! Pushers (push gateways) are accepted as an empty list: push notifications to phones
//! need the push gateway client, which is not built yet.

use std::{collections::HashMap, sync::Arc};

use axum::{
    extract::{Path, Query, State},
    http::request::Parts,
    Json,
};
use bytes::Bytes;
use http::{Method, StatusCode};
use ruma::api::client::push::get_pushers;
use serde_json::{json, Map, Value};

use crate::{
    api::{caller_of, Ruma},
    error::{Error, Result},
    push::{rules, save_rules, stored_rules},
    Services,
};

/// `GET /pushrules/`: every scope (there is one, `global`).
async fn all_rules(State(s): State<Arc<Services>>, parts: Parts) -> Result<Json<Value>> {
    let caller = caller_of(&s, &parts)?;
    match parts.method {
        Method::GET | Method::HEAD => Ok(Json(json!({"global": stored_rules(&s.account_data, &caller.user_id)?}))),
        _ => Err(Error::invalid_param("Push rules are changed at /pushrules/global/{kind}/{ruleId}")),
    }
}

/// `GET /pushrules/global/`: the global rules, every kind.
async fn global_rules(State(s): State<Arc<Services>>, parts: Parts) -> Result<Json<Value>> {
    let caller = caller_of(&s, &parts)?;
    match parts.method {
        Method::GET | Method::HEAD => Ok(Json(Value::Object(stored_rules(&s.account_data, &caller.user_id)?))),
        _ => Err(Error::invalid_param("Push rules are changed at /pushrules/global/{kind}/{ruleId}")),
    }
}

/// `GET /pushrules/global/{kind}/`: the rules of one kind, as a list (Synapse's form).
async fn kind_rules(State(s): State<Arc<Services>>, Path(kind): Path<String>, parts: Parts) -> Result<Json<Value>> {
    let caller = caller_of(&s, &parts)?;
    if !matches!(parts.method, Method::GET | Method::HEAD) || !rules::KINDS.contains(&kind.as_str()) {
        return Err(Error::invalid_param("Unknown push rule kind, or a rule id is missing"));
    }
    let stored = stored_rules(&s.account_data, &caller.user_id)?;
    Ok(Json(stored.get(&kind).cloned().unwrap_or_else(|| json!([]))))
}

/// `GET`, `PUT` and `DELETE /pushrules/global/{kind}/{ruleId}` (`before` / `after` in
/// the query of a `PUT`).
async fn rule(
    State(s): State<Arc<Services>>,
    Path((kind, rule_id)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    parts: Parts,
    body: Bytes,
) -> Result<Json<Value>> {
    let caller = caller_of(&s, &parts)?;
    let user = &caller.user_id;
    let mut stored = stored_rules(&s.account_data, user)?;
    match parts.method {
        Method::GET | Method::HEAD => Ok(Json(rules::get(&stored, &kind, &rule_id)?.clone())),
        Method::PUT => {
            let body = object(&body)?;
            let new = rules::NewRule {
                kind: &kind,
                rule_id: &rule_id,
                body: &body,
                before: query.get("before").map(String::as_str),
                after: query.get("after").map(String::as_str),
            };
            rules::insert(&mut stored, new)?;
            save_rules(&s.account_data, user, stored)?;
            Ok(Json(json!({})))
        }
        Method::DELETE => {
            rules::remove(&mut stored, &kind, &rule_id)?;
            save_rules(&s.account_data, user, stored)?;
            Ok(Json(json!({})))
        }
        _ => Err(Error::unrecognized(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed for this endpoint")),
    }
}

/// `GET` and `PUT /pushrules/global/{kind}/{ruleId}/enabled` and `…/actions`; any other
/// attribute is 400.
async fn rule_attr(
    State(s): State<Arc<Services>>,
    Path((kind, rule_id, attr)): Path<(String, String, String)>,
    parts: Parts,
    body: Bytes,
) -> Result<Json<Value>> {
    let caller = caller_of(&s, &parts)?;
    let user = &caller.user_id;
    if attr != "enabled" && attr != "actions" {
        return Err(Error::invalid_param(format!("Unknown push rule attribute {attr}")));
    }
    let mut stored = stored_rules(&s.account_data, user)?;
    match parts.method {
        Method::GET | Method::HEAD => {
            let rule = rules::get(&stored, &kind, &rule_id)?;
            Ok(Json(json!({attr.clone(): rule.get(&attr).cloned().unwrap_or(Value::Null)})))
        }
        Method::PUT => {
            let body = object(&body)?;
            let value = body.get(&attr).ok_or_else(|| Error::missing_param(format!("Missing {attr}")))?;
            if attr == "enabled" {
                let enabled = value.as_bool().ok_or_else(|| Error::bad_json("enabled must be true or false"))?;
                rules::set_enabled(&mut stored, &kind, &rule_id, enabled)?;
            } else {
                rules::set_actions(&mut stored, &kind, &rule_id, value)?;
            }
            save_rules(&s.account_data, user, stored)?;
            Ok(Json(json!({})))
        }
        _ => Err(Error::unrecognized(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed for this endpoint")),
    }
}

fn object(body: &[u8]) -> Result<Map<String, Value>> {
    match serde_json::from_slice(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(Error::bad_json("The body must be an object")),
        Err(_) => Err(Error::not_json("The body is not JSON")),
    }
}

/// `GET /_matrix/client/v3/pushers`
pub async fn get_pushers(_s: Arc<Services>, req: Ruma<get_pushers::v3::Request>) -> Result<get_pushers::v3::Response> {
    req.caller()?;
    Ok(get_pushers::v3::Response::new(Vec::new()))
}

/// Every push rule path, answered as Synapse answers them: the endpoints above, and 400
/// for a missing or unknown scope, kind, rule id or attribute, rather than 404 or 405.
pub fn routes() -> axum::Router<Arc<Services>> {
    use axum::routing::any;
    let mut router = axum::Router::new();
    for version in ["r0", "v3"] {
        let base = format!("/_matrix/client/{version}/pushrules");
        router = router
            .route(&format!("{base}/"), any(all_rules))
            .route(&format!("{base}/global/"), any(global_rules))
            .route(&format!("{base}/global/{{kind}}/"), any(kind_rules))
            .route(&format!("{base}/global/{{kind}}/{{ruleId}}"), any(rule))
            .route(&format!("{base}/global/{{kind}}/{{ruleId}}/{{attr}}"), any(rule_attr))
            .route(&format!("{base}/global"), any(malformed))
            .route(&format!("{base}/global/{{kind}}"), any(malformed))
            .route(&format!("{base}/{{scope}}"), any(malformed))
            .route(&format!("{base}/{{scope}}/"), any(malformed))
            .route(&format!("{base}/{{scope}}/{{kind}}"), any(malformed))
            .route(&format!("{base}/{{scope}}/{{kind}}/"), any(malformed))
            .route(&format!("{base}/{{scope}}/{{kind}}/{{ruleId}}"), any(malformed));
    }
    router
}

async fn malformed(
    axum::extract::State(s): axum::extract::State<Arc<Services>>,
    parts: axum::http::request::Parts,
) -> Result<axum::Json<serde_json::Value>> {
    crate::api::caller_of(&s, &parts)?;
    Err(Error::invalid_param(
        "Unknown push rule scope, kind, rule or attribute (the path is /pushrules/global/{kind}/{ruleId})",
    ))
}
