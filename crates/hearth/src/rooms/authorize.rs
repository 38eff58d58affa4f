//! Authorize: whether an event may enter its room. The spec's "checks performed on receipt
//! of a PDU", in the order ruma's state-res lists them, and what a failure means:
//!
//! 1. **Format**: a valid PDU of the room version ([`Pdu::from_json`](super::pdu::Pdu)).
//!    Failure: drop (nothing is stored).
//! 2. **Signatures and hashes**: the origin's signature verifies; a content hash that does
//!    not match stores the redacted form. Failure of the signature: drop. Remote events
//!    only — not built yet: it comes with inbound federation, in `federation/`, which runs
//!    it before anything here (it needs the origin's keys, a network wait that must happen
//!    before the room's write lock is taken).
//! 3. **Auth events**: the event passes the auth rules against its own auth events
//!    ([`check_auth_events`]). Failure: reject.
//! 4. **State before the event**: it passes the state-dependent rules against the state at
//!    its prev events ([`check_state`]). Failure: reject.
//! 5. **Current state**: it passes [`check_state`] against the room's current state too.
//!    Failure: soft fail — stored for state resolution, never shown to clients, never a prev
//!    event ([`super::commit::Placement::SoftFailed`]).
//!
//! A local event is built by Hearth on the room's current state: steps 1 and 2 hold by
//! construction, and the state before it *is* the current state, so steps 4 and 5 are one
//! check. [`Rooms::authorize_local`] runs 3 and 4, and a failure is 403 `M_FORBIDDEN`
//! naming the rule.

use std::sync::Arc;

use ruma::{events::StateEventType, room_version_rules::RoomVersionRules, state_res, EventId};

use super::{build::Built, pdu::Pdu, Rooms};
use crate::error::{Error, Result};

/// Step 3: the auth rules that read only the event and its auth events. `fetch` finds an
/// event by id (the auth events, and from version 12 the create event).
pub fn check_auth_events(
    rules: &RoomVersionRules,
    pdu: &Pdu,
    fetch: impl Fn(&EventId) -> Option<Arc<Pdu>>,
) -> std::result::Result<(), String> {
    state_res::check_state_independent_auth_rules(&rules.authorization, pdu, fetch).map_err(|e| e.to_string())
}

/// Steps 4 and 5: the auth rules that read the room's state, against the state `lookup`
/// reads (the state before the event, or the current state).
pub fn check_state(
    rules: &RoomVersionRules,
    pdu: &Pdu,
    lookup: impl Fn(&StateEventType, &str) -> Option<Arc<Pdu>>,
) -> std::result::Result<(), String> {
    state_res::check_state_dependent_auth_rules(&rules.authorization, pdu, lookup).map_err(|e| e.to_string())
}

impl Rooms {
    /// Steps 3 and 4 for an event Hearth just built (see the module doc).
    pub(super) fn authorize_local(&self, built: &Built) -> Result<()> {
        let refused = |e: String| Error::forbidden(format!("Refused by the room's rules: {e}"));
        // The rules fetch each auth event by id, and from v12 the create event: those were
        // just read from the state, so they are not read and parsed again.
        let create = self.state_event_shared(&built.state, &StateEventType::RoomCreate, "")?;
        let fetch = |id: &EventId| {
            built
                .auth_events
                .iter()
                .chain(&built.prev_events)
                .chain(&create)
                .find(|p| p.event_id == id)
                .cloned()
                .or_else(|| self.pdu_shared(id).ok().flatten())
        };
        check_auth_events(&built.rules, &built.pdu, fetch).map_err(refused)?;
        check_state(&built.rules, &built.pdu, |ty, key| self.state_event_shared(&built.state, ty, key).ok().flatten())
            .map_err(refused)
    }
}
