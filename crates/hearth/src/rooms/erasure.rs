//! Erased users (account deactivation with `erase: true`, the spec's GDPR erasure): their
//! events are shown in redacted form to everyone who was not joined to the room when the
//! event was sent. Those who were there keep what they saw, as on Synapse.
//!
//! The set of erased users is small and read for every event a client is sent, so it is
//! kept in memory, loaded at start.

use std::collections::HashSet;

use parking_lot::RwLock;
use ruma::{OwnedUserId, UserId};
use serde_json::Value;

use super::{pdu::Pdu, Rooms};
use crate::{
    error::{Error, Result},
    store::{tables, Batch, Store, Table},
    time::now_millis,
};

/// Erased user → when the erasure was asked for (ms).
pub const ERASED_USERS: Table<String, u64> = Table::new(tables::ERASED_USERS);

/// The erased users, in memory.
#[derive(Default)]
pub struct Erased {
    users: RwLock<HashSet<OwnedUserId>>,
}

impl Erased {
    pub fn load(store: &Store) -> Result<Self> {
        let mut users = HashSet::new();
        ERASED_USERS.scan_all(store, |user, _| {
            if let Ok(u) = OwnedUserId::try_from(user) {
                users.insert(u);
            }
            true
        })?;
        Ok(Erased { users: RwLock::new(users) })
    }
}

impl Rooms {
    /// Marks a user as erased (for good: an erased account never comes back).
    pub fn set_erased(&self, user: &UserId) -> Result<()> {
        let mut batch = Batch::new();
        ERASED_USERS.put(&mut batch, user.as_str(), &now_millis());
        self.store.write(batch)?;
        self.erased.users.write().insert(user.to_owned());
        Ok(())
    }

    pub fn is_erased(&self, user: &UserId) -> bool {
        let users = self.erased.users.read();
        !users.is_empty() && users.contains(user)
    }

    /// The event as `viewer` may see it: redacted when its sender was erased and the viewer
    /// was not joined when it was sent; else as it is.
    pub(super) fn as_seen_by(&self, pdu: std::sync::Arc<Pdu>, viewer: &UserId) -> Result<std::sync::Arc<Pdu>> {
        if !self.is_erased(&pdu.sender) || pdu.sender == viewer {
            return Ok(pdu);
        }
        let state = self.state_before(&pdu.event_id)?;
        let was_joined = self
            .state_event_shared(&state, &ruma::events::StateEventType::RoomMember, viewer.as_str())?
            .is_some_and(|m| m.content_value().get("membership").and_then(Value::as_str) == Some("join"));
        if was_joined {
            return Ok(pdu);
        }
        let rules = self
            .known_room(&pdu.room_id)?
            .version
            .rules()
            .ok_or_else(|| Error::internal("unsupported room version"))?;
        let redacted = ruma::canonical_json::redact(pdu.json.clone(), &rules.redaction, None)
            .map_err(|e| Error::internal(format!("redaction failed: {e}")))?;
        Ok(std::sync::Arc::new(Pdu::from_json(pdu.event_id.clone(), redacted, Some(&pdu.room_id))?))
    }
}
