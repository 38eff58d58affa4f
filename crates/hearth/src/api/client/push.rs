//! Client-server API: push rules (`/pushrules/…`) and pushers.
//!
//! The rules are read and edited as the spec's JSON ([`crate::push::rules`]): handlers
//! outside ruma's types, since ruma's refuse rule ids that clients use (a `room` rule named
//! `#spam:example.com`).
//!
//! Pushers (`/pushers`, `/pushers/set`) are what `push::sender` delivers to, and
//! `/notifications` reads the same log it delivers from.

use std::{collections::HashMap, sync::Arc};

use axum::{
    extract::{Path, Query, State},
    http::request::Parts,
    Json,
};
use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::{json, Map, Value};

use crate::{
    api::caller_of,
    error::{Error, Result},
    push::{rules, save_rules, stored_rules},
    users::pushers::Pusher,
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
async fn get_pushers(State(s): State<Arc<Services>>, parts: Parts) -> Result<Json<Value>> {
    let caller = caller_of(&s, &parts)?;
    let pushers: Vec<Value> = s
        .users
        .pushers(&caller.user_id)?
        .into_iter()
        .map(|p| {
            let mut out = json!({
                "app_id": p.app_id, "pushkey": p.pushkey, "kind": p.kind,
                "app_display_name": p.app_display_name, "device_display_name": p.device_display_name,
                "lang": p.lang, "data": p.data,
            });
            if let Some(tag) = p.profile_tag {
                out["profile_tag"] = json!(tag);
            }
            out
        })
        .collect();
    Ok(Json(json!({"pushers": pushers})))
}

/// `POST /_matrix/client/v3/pushers/set`: registers (or with `kind: null` removes) a
/// pusher for the caller's device; see `users::pushers` for what is checked.
async fn set_pusher(State(s): State<Arc<Services>>, parts: Parts, body: Bytes) -> Result<Json<Value>> {
    let caller = caller_of(&s, &parts)?;
    let body = object(&body)?;
    let text = |key: &str| -> Result<String> {
        body.get(key)
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| Error::missing_param(format!("Missing {key}")))
    };
    let (app_id, pushkey) = (text("app_id")?, text("pushkey")?);
    match body.get("kind") {
        None => return Err(Error::missing_param("Missing kind")),
        Some(Value::Null) => {
            s.users.delete_pusher(&caller.user_id, &app_id, &pushkey)?;
            s.push_sender.pusher_changed(&caller.user_id, &app_id, &pushkey);
            return Ok(Json(json!({})));
        }
        Some(_) => {}
    }
    let data = match body.get("data") {
        Some(Value::Object(d)) => d.clone(),
        _ => return Err(Error::missing_param("Missing data")),
    };
    let pusher = Pusher {
        kind: text("kind")?,
        app_display_name: text("app_display_name")?,
        device_display_name: text("device_display_name")?,
        profile_tag: body.get("profile_tag").and_then(Value::as_str).map(str::to_owned),
        lang: text("lang")?,
        data,
        device_id: caller.device_id.to_string(),
        pushkey_ts: crate::time::now_millis(),
        // Only what happens from now on is pushed.
        delivered: s.stream.now(),
        app_id,
        pushkey,
    };
    let append = body.get("append").and_then(Value::as_bool).unwrap_or(false);
    let (app_id, pushkey) = (pusher.app_id.clone(), pusher.pushkey.clone());
    s.users.set_pusher(&caller.user_id, pusher, append)?;
    s.push_sender.pusher_changed(&caller.user_id, &app_id, &pushkey);
    Ok(Json(json!({})))
}

/// Most notifications one `GET /notifications` returns.
const MAX_NOTIFICATIONS_PAGE: usize = 100;

/// `GET /_matrix/client/v3/notifications` (`from`, `limit`, `only=highlight`): the
/// caller's notifications, newest first, each with the event and whether it was read.
async fn notifications(
    State(s): State<Arc<Services>>,
    Query(query): Query<HashMap<String, String>>,
    parts: Parts,
) -> Result<Json<Value>> {
    let caller = caller_of(&s, &parts)?;
    let user = &caller.user_id;
    let from = match query.get("from") {
        Some(f) => Some(f.parse::<u64>().map_err(|_| Error::invalid_param("Invalid from"))?),
        None => None,
    };
    let limit = match query.get("limit") {
        Some(l) => l.parse::<usize>().map_err(|_| Error::invalid_param("Invalid limit"))?,
        None => 20,
    }
    .clamp(1, MAX_NOTIFICATIONS_PAGE);
    let only_highlight = query.get("only").is_some_and(|o| o == "highlight");
    let log = s.push_sender.notifications();
    let page = log.page(user, from, limit + 1, only_highlight)?;
    let more = page.len() > limit;
    let mut out = Vec::new();
    let mut last = None;
    for (pos, n) in page.into_iter().take(limit) {
        last = Some(pos);
        let Some(pdu) = s.rooms.pdu(&n.event_id)? else { continue };
        let event = s.rooms.client_event(&pdu, None, None);
        out.push(json!({
            "actions": n.actions,
            "event": event,
            "profile_tag": null,
            "read": log.is_read(user, &n.room_id, pos)?,
            "room_id": n.room_id,
            "ts": n.ts,
        }));
    }
    let mut res = json!({"notifications": out});
    if let (true, Some(last)) = (more, last) {
        res["next_token"] = json!(last.to_string());
    }
    Ok(Json(res))
}

/// Every push rule path, answered as Synapse answers them: the endpoints above, and 400
/// for a missing or unknown scope, kind, rule id or attribute, rather than 404 or 405.
pub fn routes() -> axum::Router<Arc<Services>> {
    use axum::routing::any;
    let mut router = axum::Router::new();
    for version in ["r0", "v3"] {
        router = router
            .route(&format!("/_matrix/client/{version}/pushers"), axum::routing::get(get_pushers))
            .route(&format!("/_matrix/client/{version}/pushers/set"), axum::routing::post(set_pusher))
            .route(&format!("/_matrix/client/{version}/notifications"), axum::routing::get(notifications));
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
