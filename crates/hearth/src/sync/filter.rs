//! What a sync filter asks for, in the shape `/sync` applies it: one [`EventFilter`] per
//! section (timeline, state, ephemeral, room account data, presence, global account
//! data), the rooms asked for, and lazy loading of members.
//!
//! Built from ruma's `FilterDefinition` by the API layer; read here without ruma's types
//! so the sync code compares plain strings.

use std::collections::BTreeSet;

/// A section's `types` / `not_types` / `senders` / `not_senders` / `rooms` / `not_rooms`
/// (`*` at the end of a type matches any rest, as the spec allows).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    pub types: Option<Vec<String>>,
    pub not_types: Vec<String>,
    pub senders: Option<BTreeSet<String>>,
    pub not_senders: BTreeSet<String>,
    pub rooms: Option<BTreeSet<String>>,
    pub not_rooms: BTreeSet<String>,
}

fn matches(pattern: &str, kind: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => kind.starts_with(prefix),
        None => pattern == kind,
    }
}

impl EventFilter {
    /// Whether an event of type `kind` passes.
    pub fn type_allowed(&self, kind: &str) -> bool {
        self.types.as_ref().is_none_or(|t| t.iter().any(|p| matches(p, kind)))
            && !self.not_types.iter().any(|p| matches(p, kind))
    }

    /// Whether an event of type `kind` by `sender` passes.
    pub fn allows(&self, kind: &str, sender: &str) -> bool {
        self.type_allowed(kind)
            && self.senders.as_ref().is_none_or(|s| s.contains(sender))
            && !self.not_senders.contains(sender)
    }

    /// Whether events of `room` are wanted at all.
    pub fn room_allowed(&self, room: &str) -> bool {
        self.rooms.as_ref().is_none_or(|r| r.contains(room)) && !self.not_rooms.contains(room)
    }

    /// Whether this section is switched off entirely (`types: []`).
    pub fn excludes_everything(&self) -> bool {
        self.types.as_ref().is_some_and(Vec::is_empty)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_senders_and_rooms() {
        let f = EventFilter {
            types: Some(vec!["m.room.*".into(), "a.made.up".into()]),
            not_types: vec!["m.room.member".into()],
            senders: None,
            not_senders: ["@spam:x".to_owned()].into(),
            rooms: Some(["!a:x".to_owned()].into()),
            not_rooms: BTreeSet::new(),
        };
        assert!(f.allows("m.room.message", "@a:x"));
        assert!(f.allows("a.made.up", "@a:x"));
        assert!(!f.allows("a.made.up.more", "@a:x"));
        assert!(!f.allows("m.room.member", "@a:x"));
        assert!(!f.allows("m.room.message", "@spam:x"));
        assert!(f.room_allowed("!a:x") && !f.room_allowed("!b:x"));
        assert!(!f.excludes_everything());
        assert!(EventFilter { types: Some(vec![]), ..Default::default() }.excludes_everything());
    }
}
