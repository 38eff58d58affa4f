//! A user's push rules as the spec's JSON (`m.push_rules` account data, `global` scope),
//! and the edits `/pushrules/global/{kind}/{ruleId}` makes to them.
//!
//! The rules are kept and edited as JSON, not as ruma's `Ruleset`, because clients name
//! rules freely: Synapse accepts a `room` rule whose id is no room id (`#spam:example.com`,
//! sytest's) or a `sender` rule whose id is no user id, and so must Hearth. Such a rule is
//! stored and listed, and it never matches (its condition compares the room or sender id
//! with its id). Evaluation reads [`to_ruleset`], which leaves out what ruma cannot hold.
//!
//! Ordering follows the spec: within a kind, rules apply in their order; a new rule goes
//! before the user's other rules of its kind (after `.m.rule.master` in `override`), or
//! where `before` / `after` put it; server-default rules (ids starting with `.`) cannot be
//! added, moved or deleted, only enabled, disabled and given other actions.

use ruma::{
    push::{Action, ConditionalPushRule, PatternedPushRule, PushCondition, Ruleset},
    UserId,
};
use serde_json::{json, Map, Value};

use crate::{
    error::{Error, Result},
    rooms::pdu::EventJson,
};

/// The push rule kinds (the spec's "templates"), in the order they apply.
pub const KINDS: &[&str] = &["override", "content", "room", "sender", "underride"];

/// Most rules of one kind a user may have.
pub const MAX_RULES_PER_KIND: usize = 500;

/// Longest rule id accepted.
pub const MAX_RULE_ID: usize = 255;

/// Most conditions in one rule.
pub const MAX_CONDITIONS: usize = 32;

fn not_found() -> Error {
    Error::not_found("No such push rule")
}

/// The default rules for `user`, as JSON: the spec's, plus the legacy mention rules
/// Synapse still has (`.m.rule.contains_display_name`, `.m.rule.roomnotif`,
/// `.m.rule.contains_user_name`). Clients that send no `m.mentions` (Nheko 0.11, bots,
/// bridges) mention people by name in the body, and Synapse users expect those to ring;
/// ruma's evaluator skips these rules for events that carry `m.mentions`, as the spec
/// asks.
pub fn server_default(user: &UserId) -> Map<String, Value> {
    // Built once, for a user no one is, and filled in for each user: every first sync of a
    // user without rules of their own carries these, and building them through ruma's
    // ruleset was a twentieth of such a sync.
    static TEMPLATE: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();
    let template = TEMPLATE.get_or_init(|| match UserId::parse(PLACEHOLDER) {
        Ok(placeholder) => build_server_default(&placeholder),
        Err(_) => Map::new(),
    });
    if template.is_empty() {
        return build_server_default(user);
    }
    let placeholder_localpart = placeholder_localpart();
    let mut rules = template.clone();
    for value in rules.values_mut() {
        fill_in(value, &[(PLACEHOLDER, user.as_str()), (placeholder_localpart, user.localpart())]);
    }
    rules
}

/// The `m.push_rules` account data event of a user who has not changed their rules,
/// written: the template written once, with the placeholder's identity (whole JSON strings
/// only, as [`server_default`] fills it in) swapped for the user's. Building it as a JSON
/// tree for every first sync was a twenty-fifth of the sync.
pub fn default_rules_event(user: &UserId) -> EventJson {
    static TEMPLATE: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let template = TEMPLATE.get_or_init(|| {
        let placeholder = UserId::parse(PLACEHOLDER).ok()?;
        let event = json!({"type": "m.push_rules", "content": {"global": server_default(&placeholder)}});
        serde_json::to_string(&event).ok()
    });
    let written = |rules: Map<String, Value>| {
        EventJson::from_value(&json!({"type": "m.push_rules", "content": {"global": rules}}))
    };
    let Some(template) = template else { return written(server_default(user)) };
    let placeholder_localpart = placeholder_localpart();
    let quoted = |s: &str| serde_json::to_string(s).unwrap_or_default();
    let text = template
        .replace(&quoted(PLACEHOLDER), &quoted(user.as_str()))
        .replace(&quoted(placeholder_localpart), &quoted(user.localpart()));
    EventJson::from_text(text.into_bytes())
}

/// `to_ruleset(&server_default(user))`, the ruleset of a user who has not changed their
/// rules, made from one parsed template: parsing each user's rules from JSON was a twelfth
/// of a user's first sync.
pub fn default_ruleset(user: &UserId) -> Ruleset {
    static TEMPLATE: std::sync::OnceLock<Option<Ruleset>> = std::sync::OnceLock::new();
    let template = TEMPLATE.get_or_init(|| UserId::parse(PLACEHOLDER).ok().map(|p| to_ruleset(&server_default(&p))));
    let Some(template) = template else { return to_ruleset(&server_default(user)) };
    let placeholder_localpart = placeholder_localpart();
    let swap = |s: &mut String| {
        if s == PLACEHOLDER {
            *s = user.as_str().to_owned();
        } else if s == placeholder_localpart {
            *s = user.localpart().to_owned();
        }
    };
    let fill = |mut rule: ConditionalPushRule| {
        for condition in &mut rule.conditions {
            match condition {
                PushCondition::EventMatch(c) => swap(&mut c.pattern),
                PushCondition::EventPropertyIs(c) => swap_scalar(&mut c.value, &swap),
                PushCondition::EventPropertyContains(c) => swap_scalar(&mut c.value, &swap),
                _ => {}
            }
        }
        rule
    };
    let mut rules = template.clone();
    rules.override_ = std::mem::take(&mut rules.override_).into_iter().map(fill).collect();
    rules.underride = std::mem::take(&mut rules.underride).into_iter().map(fill).collect();
    rules.content = std::mem::take(&mut rules.content)
        .into_iter()
        .map(|mut rule| {
            swap(&mut rule.pattern);
            rule
        })
        .collect();
    rules
}

fn swap_scalar(value: &mut ruma::push::ScalarJsonValue, swap: &impl Fn(&mut String)) {
    if let ruma::push::ScalarJsonValue::String(s) = value {
        swap(s);
    }
}

/// The user [`server_default`]'s template is built for.
const PLACEHOLDER: &str = "@hearth-default-rules-placeholder:placeholder.invalid";

/// [`PLACEHOLDER`]'s localpart.
fn placeholder_localpart() -> &'static str {
    PLACEHOLDER[1..].split(':').next().unwrap_or_default()
}

/// Replaces every string equal to a `from` with its `to`.
fn fill_in(value: &mut Value, pairs: &[(&str, &str)]) {
    match value {
        Value::String(s) => {
            if let Some((_, to)) = pairs.iter().find(|(from, _)| s == from) {
                *s = (*to).to_owned();
            }
        }
        Value::Array(list) => list.iter_mut().for_each(|v| fill_in(v, pairs)),
        Value::Object(map) => map.values_mut().for_each(|v| fill_in(v, pairs)),
        _ => {}
    }
}

/// [`server_default`], built from ruma's ruleset.
fn build_server_default(user: &UserId) -> Map<String, Value> {
    let mut rules = match serde_json::to_value(Ruleset::server_default(user)) {
        Ok(Value::Object(m)) => normalized(m),
        _ => return Map::new(),
    };
    let loud = json!(["notify", {"set_tweak": "sound", "value": "default"}, {"set_tweak": "highlight"}]);
    let legacy = |id: &str, conditions: Value, actions: &Value| json!({"rule_id": id, "default": true, "enabled": true, "conditions": conditions, "actions": actions});
    if let Some(Value::Array(list)) = rules.get_mut("override") {
        let after =
            |list: &Vec<Value>, id: &str| list.iter().position(|r| r["rule_id"] == id).map_or(list.len(), |i| i + 1);
        let at = after(list, ".m.rule.is_user_mention");
        list.insert(at, legacy(".m.rule.contains_display_name", json!([{"kind": "contains_display_name"}]), &loud));
        let at = after(list, ".m.rule.is_room_mention");
        let room = json!([
            {"kind": "event_match", "key": "content.body", "pattern": "@room"},
            {"kind": "sender_notification_permission", "key": "room"},
        ]);
        list.insert(at, legacy(".m.rule.roomnotif", room, &json!(["notify", {"set_tweak": "highlight"}])));
    }
    if let Some(Value::Array(list)) = rules.get_mut("content") {
        list.push(json!({
            "rule_id": ".m.rule.contains_user_name", "default": true, "enabled": true,
            "pattern": user.localpart(), "actions": loud,
        }));
    }
    rules
}

/// The rules of every kind, each as a list (an absent kind is empty).
pub fn normalized(mut rules: Map<String, Value>) -> Map<String, Value> {
    for kind in KINDS {
        if !rules.get(*kind).is_some_and(Value::is_array) {
            rules.insert((*kind).to_owned(), json!([]));
        }
    }
    rules
}

/// The ruleset ruma evaluates: every rule it can hold. A rule that does not parse (a
/// `room` rule whose id is no room id, say) is left out; it could never match anyway.
pub fn to_ruleset(rules: &Map<String, Value>) -> Ruleset {
    let mut clean = Map::new();
    for kind in KINDS {
        let list = rules.get(*kind).and_then(Value::as_array).cloned().unwrap_or_default();
        let kept: Vec<Value> = list.into_iter().filter(|rule| parses(kind, rule)).collect();
        clean.insert((*kind).to_owned(), Value::Array(kept));
    }
    serde_json::from_value(Value::Object(clean)).unwrap_or_default()
}

fn parses(kind: &str, rule: &Value) -> bool {
    let r = rule.clone();
    match kind {
        "content" => serde_json::from_value::<PatternedPushRule>(r).is_ok(),
        "room" => serde_json::from_value::<ruma::push::SimplePushRule<ruma::OwnedRoomId>>(r).is_ok(),
        "sender" => serde_json::from_value::<ruma::push::SimplePushRule<ruma::OwnedUserId>>(r).is_ok(),
        _ => serde_json::from_value::<ConditionalPushRule>(r).is_ok(),
    }
}

fn kind_list<'a>(rules: &'a mut Map<String, Value>, kind: &str) -> Result<&'a mut Vec<Value>> {
    if !KINDS.contains(&kind) {
        return Err(Error::invalid_param(format!("Unknown push rule kind {kind}")));
    }
    let entry = rules.entry(kind.to_owned()).or_insert_with(|| json!([]));
    if !entry.is_array() {
        *entry = json!([]);
    }
    match entry {
        Value::Array(list) => Ok(list),
        _ => Err(Error::internal("push rules kind is not a list")),
    }
}

fn position(list: &[Value], rule_id: &str) -> Option<usize> {
    list.iter().position(|r| r["rule_id"] == rule_id)
}

/// One rule, as stored.
pub fn get<'a>(rules: &'a Map<String, Value>, kind: &str, rule_id: &str) -> Result<&'a Value> {
    if !KINDS.contains(&kind) {
        return Err(Error::invalid_param(format!("Unknown push rule kind {kind}")));
    }
    rules
        .get(kind)
        .and_then(Value::as_array)
        .and_then(|l| l.iter().find(|r| r["rule_id"] == rule_id))
        .ok_or_else(not_found)
}

/// What a client sends to add or replace a rule (`PUT …/{kind}/{ruleId}`).
pub struct NewRule<'a> {
    pub kind: &'a str,
    pub rule_id: &'a str,
    pub body: &'a Map<String, Value>,
    pub before: Option<&'a str>,
    pub after: Option<&'a str>,
}

/// The actions a client gives a rule: the spec's (`notify`, `dont_notify`, `coalesce`,
/// `set_tweak` objects), anything else 400 as on Synapse (ruma would keep an unknown
/// string as a custom action).
fn parse_actions(actions: &Value) -> Result<Vec<Action>> {
    let list = actions.as_array().ok_or_else(|| Error::bad_json("actions must be a list"))?;
    for action in list {
        let known = match action {
            Value::String(s) => matches!(s.as_str(), "notify" | "dont_notify" | "coalesce"),
            Value::Object(o) => o.get("set_tweak").is_some_and(Value::is_string),
            _ => false,
        };
        if !known {
            return Err(Error::bad_json(format!("Unknown push rule action {action}")));
        }
    }
    serde_json::from_value(actions.clone()).map_err(|e| Error::bad_json(format!("Invalid actions: {e}")))
}

/// Adds or replaces a user rule (see the module doc for where it goes).
pub fn insert(rules: &mut Map<String, Value>, new: NewRule<'_>) -> Result<()> {
    let NewRule { kind, rule_id, body, before, after } = new;
    if rule_id.is_empty() || rule_id.len() > MAX_RULE_ID {
        return Err(Error::invalid_param(format!("A rule id is 1 to {MAX_RULE_ID} bytes")));
    }
    if rule_id.starts_with('.') {
        return Err(Error::invalid_param("Rule ids starting with '.' are the server's"));
    }
    let actions = body.get("actions").ok_or_else(|| Error::missing_param("Missing actions"))?;
    let actions = parse_actions(actions)?;
    let mut rule = json!({"rule_id": rule_id, "default": false, "enabled": true, "actions": actions});
    match kind {
        "content" => {
            let pattern = body.get("pattern").and_then(Value::as_str);
            let pattern = pattern.ok_or_else(|| Error::missing_param("A content rule needs a pattern"))?;
            rule["pattern"] = json!(pattern);
        }
        "room" | "sender" => {
            let key = if kind == "room" { "room_id" } else { "user_id" };
            rule["conditions"] = json!([{"kind": "event_match", "key": key, "pattern": rule_id}]);
        }
        _ => {
            let conditions = body.get("conditions").cloned().unwrap_or_else(|| json!([]));
            let parsed: Vec<PushCondition> = serde_json::from_value(conditions.clone())
                .map_err(|e| Error::bad_json(format!("Invalid conditions: {e}")))?;
            if parsed.len() > MAX_CONDITIONS {
                return Err(Error::invalid_param(format!("At most {MAX_CONDITIONS} conditions")));
            }
            rule["conditions"] = conditions;
        }
    }
    let list = kind_list(rules, kind)?;
    let anchor = |list: &[Value], id: &str| -> Result<usize> {
        if id.starts_with('.') {
            return Err(Error::invalid_param("A rule cannot be placed relative to a server-default rule"));
        }
        position(list, id).ok_or_else(|| Error::not_found(format!("No push rule {id} to place this one by")))
    };
    // Check the anchors before changing anything.
    if let Some(id) = before.or(after) {
        if id == rule_id {
            return Err(Error::invalid_param("A rule cannot be placed relative to itself"));
        }
        anchor(list, id)?;
    }
    let existing = position(list, rule_id);
    if let Some(at) = existing {
        list.remove(at);
    } else if list.len() >= MAX_RULES_PER_KIND {
        return Err(Error::matrix(
            http::StatusCode::BAD_REQUEST,
            "M_RESOURCE_LIMIT_EXCEEDED",
            format!("At most {MAX_RULES_PER_KIND} rules of one kind"),
        ));
    }
    let at = match (before, after, existing) {
        (Some(id), _, _) => anchor(list, id)?,
        (None, Some(id), _) => anchor(list, id)? + 1,
        // A replaced rule keeps its place.
        (None, None, Some(at)) => at.min(list.len()),
        // New rules come first among the user's, after `.m.rule.master`.
        (None, None, None) => list.iter().position(|r| r["rule_id"] != ".m.rule.master").unwrap_or(list.len()),
    };
    list.insert(at, rule);
    Ok(())
}

/// Deletes a user rule; server-default rules cannot be deleted.
pub fn remove(rules: &mut Map<String, Value>, kind: &str, rule_id: &str) -> Result<()> {
    let list = kind_list(rules, kind)?;
    let at = position(list, rule_id).ok_or_else(not_found)?;
    if rule_id.starts_with('.') {
        return Err(Error::invalid_param("Server-default rules cannot be deleted"));
    }
    list.remove(at);
    Ok(())
}

/// Enables or disables a rule.
pub fn set_enabled(rules: &mut Map<String, Value>, kind: &str, rule_id: &str, enabled: bool) -> Result<()> {
    let list = kind_list(rules, kind)?;
    let at = position(list, rule_id).ok_or_else(not_found)?;
    list[at]["enabled"] = json!(enabled);
    Ok(())
}

/// Replaces a rule's actions.
pub fn set_actions(rules: &mut Map<String, Value>, kind: &str, rule_id: &str, actions: &Value) -> Result<()> {
    let parsed = parse_actions(actions)?;
    let list = kind_list(rules, kind)?;
    let at = position(list, rule_id).ok_or_else(not_found)?;
    list[at]["actions"] = serde_json::to_value(parsed).map_err(|e| Error::internal(e.to_string()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(rules: &Map<String, Value>, kind: &str) -> Vec<String> {
        rules[kind].as_array().unwrap().iter().map(|r| r["rule_id"].as_str().unwrap().to_owned()).collect()
    }

    #[test]
    fn default_rules_from_the_template_are_those_built_for_the_user() {
        for user in ["@a:x.test", "@hearth-default-rules-placeholder:elsewhere.test", "@user.name=1_-/:[::1]:8448"] {
            let Ok(user) = UserId::parse(user) else { continue };
            let built = build_server_default(&user);
            assert!(built["content"].to_string().contains(user.localpart()));
            assert_eq!(server_default(&user), built, "{user}");
        }
        let user = ruma::user_id!("@bob:x.test");
        assert_eq!(server_default(user), build_server_default(user));
    }

    #[test]
    fn default_ruleset_from_the_template_is_the_one_parsed_for_the_user() {
        for user in [
            "@a:x.test",
            "@hearth-default-rules-placeholder:elsewhere.test",
            "@user.name=1_-/:[::1]:8448",
            "@notify:x.test",
        ] {
            let Ok(user) = UserId::parse(user) else { continue };
            let parsed = serde_json::to_value(to_ruleset(&server_default(&user))).unwrap();
            let made = serde_json::to_value(default_ruleset(&user)).unwrap();
            assert!(made.to_string().contains(user.as_str()), "{made}");
            assert_eq!(made, parsed, "{user}");
        }
    }

    /// The push follower cuts events down to the stored fields for users whose rules read
    /// no more (`notifications::flatten_cut`): Hearth's defaults, legacy rules included,
    /// are such rules.
    #[test]
    fn hearth_default_rules_read_within_the_stored_fields() {
        let user = ruma::user_id!("@a:x.test");
        let fields = crate::rooms::push_fields::PushFields::of(&default_ruleset(user));
        assert!(fields.within(crate::rooms::push_fields::PushFields::stored()), "{fields:?}");
    }

    #[test]
    fn default_rules_event_written_from_the_template_is_the_one_built_for_the_user() {
        for user in ["@a:x.test", "@hearth-default-rules-placeholder:elsewhere.test", "@user.name=1_-/:[::1]:8448"] {
            let Ok(user) = UserId::parse(user) else { continue };
            let built = json!({"type": "m.push_rules", "content": {"global": server_default(&user)}});
            let written = default_rules_event(&user).to_value();
            assert!(written.to_string().contains(user.as_str()), "{written}");
            assert_eq!(written, built, "{user}");
        }
    }

    #[test]
    fn order_ids_and_leniency() {
        let user = ruma::user_id!("@a:x.test");
        let mut rules = normalized(server_default(user));
        let body = json!({"actions": ["notify"]});
        let body = body.as_object().unwrap();
        let add = |rules: &mut Map<String, Value>, id: &str, before: Option<&str>, after: Option<&str>| {
            insert(rules, NewRule { kind: "room", rule_id: id, body, before, after })
        };
        add(&mut rules, "#a:x.test", None, None).unwrap();
        add(&mut rules, "#b:x.test", None, None).unwrap();
        assert_eq!(ids(&rules, "room"), ["#b:x.test", "#a:x.test"]);
        add(&mut rules, "!c:x.test", None, Some("#a:x.test")).unwrap();
        add(&mut rules, "!d:x.test", Some("#b:x.test"), None).unwrap();
        assert_eq!(ids(&rules, "room"), ["!d:x.test", "#b:x.test", "#a:x.test", "!c:x.test"]);
        assert!(add(&mut rules, "#e:x.test", Some("#nope:x.test"), None).is_err());
        assert!(add(&mut rules, ".m.mine", None, None).is_err());
        // Only the rules with room ids reach evaluation.
        let parsed = to_ruleset(&rules);
        assert_eq!(parsed.room.len(), 2);
        // Overrides go after the master rule.
        let over = json!({"actions": [], "conditions": []});
        insert(
            &mut rules,
            NewRule { kind: "override", rule_id: "o", body: over.as_object().unwrap(), before: None, after: None },
        )
        .unwrap();
        assert_eq!(ids(&rules, "override")[..2], [".m.rule.master".to_owned(), "o".to_owned()]);
        assert!(remove(&mut rules, "override", ".m.rule.master").is_err());
        remove(&mut rules, "room", "#a:x.test").unwrap();
        assert!(remove(&mut rules, "room", "#a:x.test").is_err());
    }
}
