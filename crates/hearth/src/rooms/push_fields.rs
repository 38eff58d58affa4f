//! The parts of an event a user's push rules can read, and the event cut down to them.
//!
//! ruma's evaluator reads an event as [`FlattenedJson`]: every leaf under its dotted path.
//! Flattening a whole event (each key escaped, each path a new string, the whole tree
//! parsed twice) was most of the cost of counting unread events, and most of what it
//! produced was never read: rules name a handful of paths (`type`, `content.msgtype`,
//! `content.body`, `content.m\.mentions.user_ids`...). [`PushFields`] collects the paths a
//! ruleset names, and [`view`] flattens only those parts of a stored event, so the
//! evaluator sees exactly what it would have seen in the whole event at every path it
//! reads.
//!
//! Paths are kept to two levels (`content.body`, `content.m\.relates_to`): a value under a
//! kept key is kept whole, so a deeper path (`content.m\.relates_to.rel_type`) reads the
//! same as in the whole event.

use std::{
    borrow::Cow,
    collections::{BTreeMap, BTreeSet},
};

use ruma::{
    push::{AnyPushRuleRef, FlattenedJson, PushCondition, Ruleset},
    serde::Raw,
};
use serde::{
    de::{MapAccess, Visitor},
    Deserialize, Deserializer,
};
use serde_json::value::RawValue;

/// PDU fields that are not part of the event a client (or a push rule) sees.
const PDU_ONLY_FIELDS: [&str; 8] =
    ["auth_events", "prev_events", "hashes", "signatures", "depth", "origin", "prev_state", "membership"];

/// What is read whatever the rules: `sender` (ruma skips the user's own events, and
/// `sender_notification_permission` reads it), `content.body` (content rules and the
/// display-name condition), `content.m\.mentions` (its presence turns the legacy mention
/// rules off) and `content.m\.relates_to` (the thread an event counts in).
const ALWAYS: [&[&str]; 4] =
    [&["sender"], &["content", "body"], &["content", "m.mentions"], &["content", "m.relates_to"]];

/// The top-level keys and the keys under them that a ruleset can read. `None` under a
/// key: keep its whole value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushFields {
    keep: BTreeMap<String, Option<BTreeSet<String>>>,
}

impl PushFields {
    /// The paths the enabled rules of `rules` read.
    pub fn of(rules: &Ruleset) -> PushFields {
        let mut fields = PushFields::of_nothing();
        for rule in rules {
            let conditions = match rule {
                AnyPushRuleRef::Override(r) | AnyPushRuleRef::Underride(r) if r.enabled => &r.conditions,
                // Content rules read `content.body`, room rules the context's room id,
                // sender rules `sender`: all kept above.
                _ => continue,
            };
            for condition in conditions {
                match condition {
                    PushCondition::EventMatch(c) => fields.add(split_path(&c.key)),
                    PushCondition::EventPropertyIs(c) => fields.add(split_path(&c.key)),
                    PushCondition::EventPropertyContains(c) => fields.add(split_path(&c.key)),
                    _ => {}
                }
            }
        }
        fields
    }

    fn add(&mut self, path: Vec<String>) {
        let mut parts = path.into_iter();
        let Some(top) = parts.next() else { return };
        match parts.next() {
            None => {
                self.keep.insert(top, None);
            }
            Some(second) => {
                if let Some(under) = self.keep.entry(top).or_insert_with(|| Some(BTreeSet::new())) {
                    under.insert(second);
                }
            }
        }
    }
}

/// A dotted path split into keys: `\.` is a dot inside a key, `\\` a backslash (the
/// spec's escaping, as ruma flattens keys).
fn split_path(path: &str) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut chars = path.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(next @ ('.' | '\\')) => parts.last_mut().map_or((), |p| p.push(next)),
                Some(other) => parts.last_mut().map_or((), |p| {
                    p.push('\\');
                    p.push(other)
                }),
                None => parts.last_mut().map_or((), |p| p.push('\\')),
            },
            '.' => parts.push(String::new()),
            c => parts.last_mut().map_or((), |p| p.push(c)),
        }
    }
    parts
}

/// An object's members in document order, the values left unparsed: a few allocations
/// where a map would take one per key. Keys are borrowed unless they hold escapes.
struct Members<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'a> Members<'a> {
    fn parse(json: &'a str) -> Option<Members<'a>> {
        serde_json::from_str(json).ok()
    }

    fn get(&self, key: &str) -> Option<&'a RawValue> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
    }
}

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> Visitor<'de> for Visit {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut members = Vec::with_capacity(map.size_hint().unwrap_or(16));
                while let Some((Key(k), v)) = map.next_entry::<Key<'de>, &'de RawValue>()? {
                    members.push((k, v));
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(Visit)
    }
}

/// An object key, borrowed from the document unless it holds escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> Visitor<'de> for Visit {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
        }
        deserializer.deserialize_str(Visit)
    }
}

/// Writes `"key":` into an object being built (after a comma unless it is the first).
fn key(out: &mut String, key: &str) -> Option<()> {
    if !out.ends_with('{') {
        out.push(',');
    }
    if key.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push('"');
        out.push_str(key);
        out.push('"');
    } else {
        out.push_str(&serde_json::to_string(key).ok()?);
    }
    out.push(':');
    Some(())
}

/// Writes `"key":value` into an object being built.
fn member(out: &mut String, name: &str, value: &RawValue) -> Option<()> {
    key(out, name)?;
    out.push_str(value.get());
    Some(())
}

impl PushFields {
    /// The fields the server's default rules read. Each timeline row keeps the event cut
    /// down to these (see [`crate::rooms::TimelineEntry`]), so counting unread events for
    /// a user whose rules read no more than these needs neither the stored PDU nor a
    /// parse of it. The paths do not depend on the user: their id is in the values only.
    pub fn stored() -> &'static PushFields {
        &Self::stored_and_fingerprint().0
    }

    /// The [`PushFields::fingerprint`] of [`PushFields::stored`].
    pub fn stored_fingerprint() -> u32 {
        Self::stored_and_fingerprint().1
    }

    fn stored_and_fingerprint() -> &'static (PushFields, u32) {
        static STORED: std::sync::OnceLock<(PushFields, u32)> = std::sync::OnceLock::new();
        STORED.get_or_init(|| {
            let anyone = ruma::OwnedUserId::try_from("@anyone:localhost").ok();
            let fields = anyone.map_or_else(PushFields::of_nothing, |u| PushFields::of(&Ruleset::server_default(&u)));
            let fingerprint = fields.fingerprint();
            (fields, fingerprint)
        })
    }

    /// The paths read whatever the rules ([`ALWAYS`]) alone.
    fn of_nothing() -> PushFields {
        let mut fields = PushFields { keep: BTreeMap::new() };
        for path in ALWAYS {
            fields.add(path.iter().map(|s| (*s).to_owned()).collect());
        }
        fields
    }

    /// A fingerprint of the field set (FNV-1a over the paths), stored beside a view so one
    /// cut to another set (a ruma whose default rules read more) is never taken for it.
    pub fn fingerprint(&self) -> u32 {
        let mut hash: u32 = 0x811c_9dc5;
        let mut eat = |bytes: &[u8]| {
            for b in bytes {
                hash ^= u32::from(*b);
                hash = hash.wrapping_mul(0x0100_0193);
            }
        };
        for (key, under) in &self.keep {
            eat(key.as_bytes());
            eat(b"\0");
            for k in under.iter().flatten() {
                eat(k.as_bytes());
                eat(b"\x01");
            }
            eat(b"\x02");
        }
        hash
    }

    /// Whether every path these fields keep is kept by `other` too: a view cut to `other`
    /// then reads the same as one cut to these, wherever these rules look.
    pub fn within(&self, other: &PushFields) -> bool {
        self.keep.iter().all(|(key, under)| match (under, other.keep.get(key)) {
            (_, None) => false,
            (_, Some(None)) => true,
            (None, Some(Some(_))) => false,
            (Some(mine), Some(Some(theirs))) => mine.is_subset(theirs),
        })
    }
}

/// A stored PDU as push rules see it: the client-visible fields `fields` names, flattened.
/// `None` if it is unreadable, or if what is kept nests too deep for ruma's evaluator (it
/// would panic on it).
pub fn view(pdu: &[u8], fields: &PushFields) -> Option<FlattenedJson> {
    flatten(slim(pdu, fields)?)
}

/// [`view`] of a parsed PDU: only the top-level members `fields` names are written out for
/// [`slim`] to cut, not the signatures, hashes and event references that make up most of
/// a PDU's text.
pub fn view_of(pdu: &ruma::CanonicalJsonObject, fields: &PushFields) -> Option<FlattenedJson> {
    let mut named = ruma::CanonicalJsonObject::new();
    for key in fields.keep.keys() {
        if let Some(value) = pdu.get(key).filter(|_| !PDU_ONLY_FIELDS.contains(&key.as_str())) {
            named.insert(key.clone(), value.clone());
        }
    }
    view(&serde_json::to_vec(&named).ok()?, fields)
}

/// A cut-down event from [`slim`], flattened.
pub fn flatten(slim: String) -> Option<FlattenedJson> {
    let raw = RawValue::from_string(slim).ok()?;
    Some(FlattenedJson::from_raw(&Raw::<serde_json::Value>::from_json(raw)))
}

/// A stored PDU cut down to the client-visible fields `fields` names, as JSON text; `None`
/// as for [`view`].
pub fn slim(pdu: &[u8], fields: &PushFields) -> Option<String> {
    let pdu = std::str::from_utf8(pdu).ok()?;
    let top = Members::parse(pdu)?;
    let mut slim = String::with_capacity(256);
    slim.push('{');
    for (key, under) in &fields.keep {
        if PDU_ONLY_FIELDS.contains(&key.as_str()) {
            continue;
        }
        let Some(value) = top.get(key) else { continue };
        match under {
            None => member(&mut slim, key, value)?,
            Some(under) => {
                let text = value.get();
                if !text.starts_with('{') {
                    // Not an object: no path under it can be read.
                    continue;
                }
                let inner = Members::parse(text)?;
                if inner.0.is_empty() {
                    member(&mut slim, key, value)?;
                    continue;
                }
                let mut kept = under.iter().filter_map(|k| Some((k, inner.get(k)?))).peekable();
                if kept.peek().is_none() {
                    continue;
                }
                self::key(&mut slim, key)?;
                slim.push('{');
                for (k, v) in kept {
                    member(&mut slim, k, v)?;
                }
                slim.push('}');
            }
        }
    }
    slim.push('}');
    if crate::json_depth::nested_deeper_than(&slim, crate::json_depth::READ_DEPTH) {
        return None;
    }
    Some(slim)
}

#[cfg(test)]
mod tests {
    use ruma::{push::Ruleset, user_id};
    use serde_json::json;

    use super::*;

    fn default_fields() -> PushFields {
        PushFields::of(&Ruleset::server_default(user_id!("@me:x")))
    }

    #[test]
    fn paths_split_on_unescaped_dots() {
        assert_eq!(split_path(r"content.m\.relates_to.rel_type"), ["content", "m.relates_to", "rel_type"]);
        assert_eq!(split_path(r"a\\.b"), [r"a\", "b"]);
        assert_eq!(split_path("type"), ["type"]);
    }

    #[test]
    fn the_default_rules_read_a_few_fields() {
        let fields = default_fields();
        let top: Vec<&str> = fields.keep.keys().map(String::as_str).collect();
        assert!(top.contains(&"type") && top.contains(&"sender") && top.contains(&"content"), "{top:?}");
        assert!(!top.contains(&"origin_server_ts") && !top.contains(&"unsigned"), "{top:?}");
        let content = fields.keep["content"].as_ref().expect("content is cut down");
        for key in ["body", "msgtype", "m.mentions", "m.relates_to", "membership"] {
            assert!(content.contains(key), "{key} in {content:?}");
        }
        assert!(!content.contains("formatted_body"));
    }

    #[test]
    fn a_rule_naming_a_path_keeps_it() {
        let mut rules = Ruleset::server_default(user_id!("@me:x"));
        let rule = ruma::push::NewConditionalPushRule::new(
            "by_format".into(),
            vec![
                ruma::push::PushCondition::EventMatch(ruma::push::EventMatchConditionData::new(
                    "content.format".into(),
                    "org.*".into(),
                )),
                ruma::push::PushCondition::EventMatch(ruma::push::EventMatchConditionData::new(
                    r"zeta.in\.ner".into(),
                    "z".into(),
                )),
            ],
            vec![ruma::push::Action::Notify],
        );
        rules.insert(ruma::push::NewPushRule::Override(rule), None, None).expect("inserted");
        let fields = PushFields::of(&rules);
        assert_ne!(fields, default_fields());
        let pdu = json!({"type": "m.room.message", "sender": "@a:x", "zeta": {"in.ner": "z", "other": 1},
                         "content": {"body": "b", "format": "org.matrix.custom.html"}});
        let view = view(pdu.to_string().as_bytes(), &fields).expect("readable");
        assert_eq!(view.get_str("content.format"), Some("org.matrix.custom.html"));
        assert_eq!(view.get_str(r"zeta.in\.ner"), Some("z"));
        assert_eq!(view.get("zeta.other"), None);
    }

    #[test]
    fn push_rules_see_the_client_fields_of_a_pdu() {
        let fields = default_fields();
        let pdu = json!({
            "type": "m.room.message", "sender": "@a:x", "room_id": "!r:x", "origin_server_ts": 1,
            "content": {"body": "hi", "formatted_body": "<b>hi</b>", "m.mentions": {},
                        "m.relates_to": {"rel_type": "m.thread", "event_id": "$root"}},
            "auth_events": ["$a"], "prev_events": ["$p"], "depth": 3,
            "hashes": {"sha256": "h"}, "signatures": {"x": {"ed25519:k": "s"}},
        });
        let view = view(pdu.to_string().as_bytes(), &fields).expect("readable");
        assert_eq!(view.get_str("content.body"), Some("hi"));
        assert_eq!(view.get_str(r"content.m\.relates_to.rel_type"), Some("m.thread"));
        assert_eq!(view.get_str(r"content.m\.relates_to.event_id"), Some("$root"));
        assert_eq!(view.get_str("sender"), Some("@a:x"));
        assert_eq!(view.get_str("type"), Some("m.room.message"));
        // An empty `m.mentions` still turns the legacy mention rules off.
        assert!(view.contains_mentions());
        assert_eq!(view.get_str("content.formatted_body"), None);
        assert_eq!(view.get_str("hashes.sha256"), None);
        assert_eq!(view.get("depth"), None);

        // Too deep for ruma's evaluator (it panics past 128 levels): left out, no panic.
        let deep =
            format!(r#"{{"type":"m.room.message","content":{{"body":{}1{}}}}}"#, "[".repeat(126), "]".repeat(126));
        assert!(super::view(deep.as_bytes(), &fields).is_none());
        let deeper =
            format!(r#"{{"type":"m.room.message","content":{{"body":{}1{}}}}}"#, "[".repeat(140), "]".repeat(140));
        assert!(super::view(deeper.as_bytes(), &fields).is_none());
        // Deep where no rule looks: read without it.
        let aside = format!(r#"{{"type":"m.room.message","content":{{"x":{}1{}}}}}"#, "[".repeat(140), "]".repeat(140));
        assert_eq!(super::view(aside.as_bytes(), &fields).expect("readable").get_str("type"), Some("m.room.message"));
        assert!(super::view(b"not json", &fields).is_none());
        // Keys with escapes in them are read too.
        let escaped = r#"{"type":"m.room.message","sender":"@a:x","content":{"b\u006fdy":"esc"}}"#;
        assert_eq!(super::view(escaped.as_bytes(), &fields).expect("readable").get_str("content.body"), Some("esc"));
    }

    #[test]
    fn default_rules_read_within_the_stored_fields() {
        let stored = PushFields::stored();
        assert!(default_fields().within(stored));
        assert!(stored.within(stored));
        assert_eq!(stored.fingerprint(), PushFields::stored_fingerprint());
        // A keyword rule reads `content.body`: still within.
        let mut rules = Ruleset::server_default(user_id!("@me:x"));
        let keyword = ruma::push::NewPatternedPushRule::new("cheese".into(), "cheese".into(), vec![]);
        rules.insert(ruma::push::NewPushRule::Content(keyword), None, None).expect("inserted");
        assert!(PushFields::of(&rules).within(stored));
        // A rule reading another path is not, and its set has another fingerprint.
        let rule = ruma::push::NewConditionalPushRule::new(
            "html".into(),
            vec![ruma::push::PushCondition::EventMatch(ruma::push::EventMatchConditionData::new(
                "content.format".into(),
                "org.*".into(),
            ))],
            vec![],
        );
        rules.insert(ruma::push::NewPushRule::Override(rule), None, None).expect("inserted");
        let wider = PushFields::of(&rules);
        assert!(!wider.within(stored));
        assert!(stored.within(&wider));
        assert_ne!(wider.fingerprint(), stored.fingerprint());
        // A key kept whole is not within one kept in part.
        let whole = PushFields { keep: BTreeMap::from([("content".to_owned(), None)]) };
        assert!(!whole.within(stored));
        assert!(stored.within(&PushFields { keep: stored.keep.keys().map(|k| (k.clone(), None)).collect() }));
    }

    /// For every path the default rules read, the cut-down view reads as the whole event.
    #[test]
    fn the_view_of_a_parsed_pdu_is_the_view_of_its_text() {
        let fields = default_fields();
        let pdu = json!({
            "type": "m.room.message", "sender": "@a:x", "room_id": "!r:x", "origin_server_ts": 1, "depth": 3,
            "content": {"msgtype": "m.notice", "body": "hi @room", "m.mentions": {"user_ids": ["@b:x"]}, "extra": [1]},
            "auth_events": ["$a"], "prev_events": ["$b"], "hashes": {"sha256": "x"}, "signatures": {"x": {}},
            "unsigned": {"age": 1},
        });
        let parsed: ruma::CanonicalJsonObject = serde_json::from_value(pdu.clone()).unwrap();
        let text = serde_json::to_vec(&pdu).unwrap();
        let (a, b) = (view_of(&parsed, &fields).unwrap(), view(&text, &fields).unwrap());
        for path in ["type", "sender", "content.body", "content.msgtype", r"content.m\.mentions.user_ids", "depth"] {
            assert_eq!(format!("{:?}", a.get(path)), format!("{:?}", b.get(path)), "{path}");
        }
        assert!(a.get("content.body").is_some() && a.get("depth").is_none());
    }

    #[test]
    fn the_view_reads_as_the_whole_event_where_rules_look() {
        let fields = default_fields();
        let pdu = json!({
            "type": "m.room.member", "sender": "@a:x", "state_key": "@me:x", "room_id": "!r:x",
            "content": {"membership": "invite", "displayname": "Me", "body": "x", "msgtype": "m.notice",
                        "m.mentions": {"user_ids": ["@me:x"], "room": true}},
            "unsigned": {"age": 3},
        });
        let text = pdu.to_string();
        let whole = FlattenedJson::from_raw(&Raw::<serde_json::Value>::from_json(
            RawValue::from_string(text.clone()).expect("json"),
        ));
        let cut = view(text.as_bytes(), &fields).expect("readable");
        // The view a timeline row keeps reads the same too.
        let row = flatten(slim(text.as_bytes(), PushFields::stored()).expect("cut")).expect("readable");
        for path in [
            "type",
            "sender",
            "state_key",
            "content.membership",
            "content.body",
            "content.msgtype",
            r"content.m\.mentions.user_ids",
            r"content.m\.mentions.room",
        ] {
            assert_eq!(cut.get(path), whole.get(path), "{path}");
            assert_eq!(row.get(path), whole.get(path), "{path}");
            assert!(cut.get(path).is_some(), "{path}");
        }
        assert_eq!(cut.contains_mentions(), whole.contains_mentions());
        assert_eq!(row.contains_mentions(), whole.contains_mentions());
    }
}
