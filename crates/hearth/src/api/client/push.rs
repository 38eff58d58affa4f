//! Client-server API: push rules (`/pushrules/…`) and pushers.
//!
//! Pushers (push gateways) are accepted as an empty list: push notifications to phones
//! need the push gateway client, which is not built yet.

use std::sync::Arc;

use ruma::{
    api::client::push::{
        delete_pushrule, get_pushers, get_pushrule, get_pushrule_actions, get_pushrule_enabled, get_pushrules_all,
        get_pushrules_global_scope, set_pushrule, set_pushrule_actions, set_pushrule_enabled,
    },
    push::{InsertPushRuleError, RemovePushRuleError},
};

use crate::{
    api::Ruma,
    error::{Error, Result},
    push::{ruleset, save_ruleset},
    Services,
};

fn no_rule() -> Error {
    Error::not_found("No such push rule")
}

/// `GET /_matrix/client/v3/pushrules/`
pub async fn get_pushrules_all(
    s: Arc<Services>,
    req: Ruma<get_pushrules_all::v3::Request>,
) -> Result<get_pushrules_all::v3::Response> {
    let caller = req.caller()?;
    Ok(get_pushrules_all::v3::Response::new(ruleset(&s.account_data, &caller.user_id)?))
}

/// `GET /_matrix/client/v3/pushrules/global/`
pub async fn get_pushrules_global_scope(
    s: Arc<Services>,
    req: Ruma<get_pushrules_global_scope::v3::Request>,
) -> Result<get_pushrules_global_scope::v3::Response> {
    let caller = req.caller()?;
    Ok(get_pushrules_global_scope::v3::Response::new(ruleset(&s.account_data, &caller.user_id)?))
}

/// `GET /_matrix/client/v3/pushrules/global/{kind}/{ruleId}`
pub async fn get_pushrule(
    s: Arc<Services>,
    req: Ruma<get_pushrule::v3::Request>,
) -> Result<get_pushrule::v3::Response> {
    let caller = req.caller()?;
    let rules = ruleset(&s.account_data, &caller.user_id)?;
    let rule = rules.get(req.body.kind.clone(), &req.body.rule_id).ok_or_else(no_rule)?;
    Ok(get_pushrule::v3::Response::new(rule.to_owned().into()))
}

/// `PUT /_matrix/client/v3/pushrules/global/{kind}/{ruleId}`
pub async fn set_pushrule(
    s: Arc<Services>,
    req: Ruma<set_pushrule::v3::Request>,
) -> Result<set_pushrule::v3::Response> {
    let caller = req.caller()?;
    let mut rules = ruleset(&s.account_data, &caller.user_id)?;
    rules.insert(req.body.rule.clone(), req.body.after.as_deref(), req.body.before.as_deref()).map_err(
        |e| match e {
            InsertPushRuleError::UnknownRuleId => no_rule(),
            other => Error::invalid_param(other.to_string()),
        },
    )?;
    save_ruleset(&s.account_data, &caller.user_id, &rules)?;
    Ok(set_pushrule::v3::Response::new())
}

/// `DELETE /_matrix/client/v3/pushrules/global/{kind}/{ruleId}`
pub async fn delete_pushrule(
    s: Arc<Services>,
    req: Ruma<delete_pushrule::v3::Request>,
) -> Result<delete_pushrule::v3::Response> {
    let caller = req.caller()?;
    let mut rules = ruleset(&s.account_data, &caller.user_id)?;
    rules.remove(req.body.kind.clone(), &req.body.rule_id).map_err(|e| match e {
        RemovePushRuleError::NotFound => no_rule(),
        other => Error::invalid_param(other.to_string()),
    })?;
    save_ruleset(&s.account_data, &caller.user_id, &rules)?;
    Ok(delete_pushrule::v3::Response::new())
}

/// `GET /_matrix/client/v3/pushrules/global/{kind}/{ruleId}/enabled`
pub async fn get_pushrule_enabled(
    s: Arc<Services>,
    req: Ruma<get_pushrule_enabled::v3::Request>,
) -> Result<get_pushrule_enabled::v3::Response> {
    let caller = req.caller()?;
    let rules = ruleset(&s.account_data, &caller.user_id)?;
    let rule = rules.get(req.body.kind.clone(), &req.body.rule_id).ok_or_else(no_rule)?;
    Ok(get_pushrule_enabled::v3::Response::new(rule.enabled()))
}

/// `PUT /_matrix/client/v3/pushrules/global/{kind}/{ruleId}/enabled`
pub async fn set_pushrule_enabled(
    s: Arc<Services>,
    req: Ruma<set_pushrule_enabled::v3::Request>,
) -> Result<set_pushrule_enabled::v3::Response> {
    let caller = req.caller()?;
    let mut rules = ruleset(&s.account_data, &caller.user_id)?;
    rules.set_enabled(req.body.kind.clone(), &req.body.rule_id, req.body.enabled).map_err(|_| no_rule())?;
    save_ruleset(&s.account_data, &caller.user_id, &rules)?;
    Ok(set_pushrule_enabled::v3::Response::new())
}

/// `GET /_matrix/client/v3/pushrules/global/{kind}/{ruleId}/actions`
pub async fn get_pushrule_actions(
    s: Arc<Services>,
    req: Ruma<get_pushrule_actions::v3::Request>,
) -> Result<get_pushrule_actions::v3::Response> {
    let caller = req.caller()?;
    let rules = ruleset(&s.account_data, &caller.user_id)?;
    let rule = rules.get(req.body.kind.clone(), &req.body.rule_id).ok_or_else(no_rule)?;
    Ok(get_pushrule_actions::v3::Response::new(rule.actions().to_vec()))
}

/// `PUT /_matrix/client/v3/pushrules/global/{kind}/{ruleId}/actions`
pub async fn set_pushrule_actions(
    s: Arc<Services>,
    req: Ruma<set_pushrule_actions::v3::Request>,
) -> Result<set_pushrule_actions::v3::Response> {
    let caller = req.caller()?;
    let mut rules = ruleset(&s.account_data, &caller.user_id)?;
    rules.set_actions(req.body.kind.clone(), &req.body.rule_id, req.body.actions.clone()).map_err(|_| no_rule())?;
    save_ruleset(&s.account_data, &caller.user_id, &rules)?;
    Ok(set_pushrule_actions::v3::Response::new())
}

/// `GET /_matrix/client/v3/pushers`
pub async fn get_pushers(_s: Arc<Services>, req: Ruma<get_pushers::v3::Request>) -> Result<get_pushers::v3::Response> {
    req.caller()?;
    Ok(get_pushers::v3::Response::new(Vec::new()))
}

/// The push rule kinds (the spec's "templates").
const KINDS: &[&str] = &["override", "content", "room", "sender", "underride"];

/// The paths around `/pushrules/global/{kind}/{ruleId}` that ruma's routes do not take,
/// answered as Synapse answers them: a kind's rules as a list
/// (`GET /pushrules/global/{kind}/`), and 400 for a missing or unknown scope, kind, rule id
/// or attribute, rather than 404 or 405.
pub fn path_routes() -> axum::Router<Arc<Services>> {
    use axum::routing::any;
    let mut router = axum::Router::new();
    for version in ["r0", "v3"] {
        let base = format!("/_matrix/client/{version}/pushrules");
        router = router
            .route(&format!("{base}/global/{{kind}}/"), any(kind_rules))
            .route(&format!("{base}/global"), any(malformed))
            .route(&format!("{base}/global/{{kind}}"), any(malformed))
            .route(&format!("{base}/global/{{kind}}/{{ruleId}}/{{attr}}"), any(malformed))
            .route(&format!("{base}/{{scope}}"), any(malformed))
            .route(&format!("{base}/{{scope}}/"), any(malformed))
            .route(&format!("{base}/{{scope}}/{{kind}}"), any(malformed))
            .route(&format!("{base}/{{scope}}/{{kind}}/"), any(malformed))
            .route(&format!("{base}/{{scope}}/{{kind}}/{{ruleId}}"), any(malformed));
    }
    // `PUT /pushrules/` (no scope) stays 405: that path is ruma's GET route.
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

/// `GET /pushrules/global/{kind}/`: the rules of one kind, as a list (Synapse's form).
async fn kind_rules(
    axum::extract::State(s): axum::extract::State<Arc<Services>>,
    axum::extract::Path(kind): axum::extract::Path<String>,
    parts: axum::http::request::Parts,
) -> Result<axum::Json<serde_json::Value>> {
    let caller = crate::api::caller_of(&s, &parts)?;
    if parts.method != http::Method::GET || !KINDS.contains(&kind.as_str()) {
        return Err(Error::invalid_param("Unknown push rule kind, or a rule id is missing"));
    }
    let rules =
        serde_json::to_value(ruleset(&s.account_data, &caller.user_id)?).map_err(|e| Error::internal(e.to_string()))?;
    Ok(axum::Json(rules.get(&kind).cloned().unwrap_or_else(|| serde_json::json!([]))))
}
