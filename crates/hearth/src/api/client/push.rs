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
