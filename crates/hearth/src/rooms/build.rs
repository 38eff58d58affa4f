//! Build: a local user's intent ([`NewEvent`]) turned into a full, signed PDU of the room's
//! version — prev events (the forward extremities), auth events (chosen from the current
//! state by the auth rules), depth, content hash, event id, signature — with the limits on
//! what a client may put into one. Building reads state but writes nothing, and decides
//! nothing about whether the event is allowed: that is [`super::authorize`]; the write is
//! [`super::commit`].

use std::sync::Arc;

use ruma::{
    events::{StateEventType, TimelineEventType},
    room_version_rules::RoomVersionRules,
    signatures::{hash_and_sign_event, reference_hash},
    state_res, CanonicalJsonObject, CanonicalJsonValue, OwnedEventId, OwnedRoomId, RoomId, RoomVersionId, UserId,
};
use serde_json::{value::to_raw_value, Map, Value};

use super::{
    pdu::{canonical_len, to_canonical, to_canonical_object, Pdu, MAX_PDU_BYTES},
    state::StateMap,
    RoomHeads, Rooms,
};
use crate::{
    error::{Error, Result},
    time::now_millis,
};

/// What a local user wants to put into a room.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub kind: TimelineEventType,
    pub content: Map<String, Value>,
    pub state_key: Option<String>,
    pub redacts: Option<OwnedEventId>,
}

impl NewEvent {
    pub fn state(kind: impl Into<String>, state_key: impl Into<String>, content: Value) -> Self {
        NewEvent {
            kind: TimelineEventType::from(kind.into()),
            content: match content {
                Value::Object(m) => m,
                _ => Map::new(),
            },
            state_key: Some(state_key.into()),
            redacts: None,
        }
    }

    pub fn message(kind: impl Into<String>, content: Map<String, Value>) -> Self {
        NewEvent { kind: TimelineEventType::from(kind.into()), content, state_key: None, redacts: None }
    }
}

/// The sending device's transaction, for idempotent sends and `unsigned.transaction_id`.
#[derive(Debug, Clone, Copy)]
pub struct TxnRef<'a> {
    pub device_id: &'a str,
    pub txn_id: &'a str,
}

/// Longest state key, and longest event type, accepted from clients.
pub const MAX_STATE_KEY_BYTES: usize = 255;
pub const MAX_EVENT_TYPE_BYTES: usize = 255;
/// Deepest nesting of objects and arrays allowed in an event's content (the content
/// object itself is level 1). JSON parsers stop at 128 levels (serde_json, and so ruma's
/// push-rule evaluator and every reader of the stored PDU); an event at that depth would
/// be stored but could not be read back, breaking `/sync` and `/messages` for the whole
/// room. No real event comes anywhere near this.
pub const MAX_CONTENT_DEPTH: usize = 100;
/// Most forward extremities referenced by one event.
pub const MAX_PREV_EVENTS: usize = 20;

/// A built PDU with what building it read, which authorizing it reads again.
pub(super) struct Built {
    pub pdu: Pdu,
    pub rules: RoomVersionRules,
    /// The state it was built on (the state before the event).
    pub state: Arc<StateMap>,
    pub auth_events: Vec<Arc<Pdu>>,
    pub prev_events: Vec<Arc<Pdu>>,
}

pub(super) fn rules_for(version: &RoomVersionId) -> Result<ruma::room_version_rules::RoomVersionRules> {
    version.rules().ok_or_else(|| {
        Error::matrix(
            http::StatusCode::BAD_REQUEST,
            "M_UNSUPPORTED_ROOM_VERSION",
            format!("Room version {version} is not supported"),
        )
    })
}

impl Rooms {
    /// Builds the signed PDU of a local event on `heads` (its prev events are the forward
    /// extremities, at most [`MAX_PREV_EVENTS`]; its auth events come from the state the
    /// heads' snapshot holds). Not yet authorized: see [`super::authorize`].
    pub(super) fn build(
        &self,
        version: &RoomVersionId,
        room_id: Option<&RoomId>,
        heads: &RoomHeads,
        sender: &UserId,
        new: &NewEvent,
    ) -> Result<Built> {
        self.build_at(version, room_id, heads, sender, new, now_millis())
    }

    /// [`Rooms::build`] with the event's `origin_server_ts` given.
    pub(super) fn build_at(
        &self,
        version: &RoomVersionId,
        room_id: Option<&RoomId>,
        heads: &RoomHeads,
        sender: &UserId,
        new: &NewEvent,
        ts: u64,
    ) -> Result<Built> {
        let rules = rules_for(version)?;
        let map: Arc<StateMap> = match heads.snapshot {
            Some(s) => self.state.materialise(s)?,
            None => Default::default(),
        };
        let raw_content = to_raw_value(&new.content).map_err(|e| Error::bad_json(e.to_string()))?;

        // Auth events: the state the auth rules look at for this kind of event.
        let auth_types = state_res::auth_types_for_event(
            &new.kind,
            sender,
            new.state_key.as_deref(),
            &raw_content,
            &rules.authorization,
        )
        .map_err(|e| Error::bad_json(format!("invalid event: {e}")))?;
        let mut auth_events = Vec::new();
        for (ty, key) in auth_types {
            if ty == StateEventType::RoomCreate && !rules.event_format.allow_room_create_in_auth_events {
                continue;
            }
            if let Some(pdu) = self.state_event_shared(&map, &ty, &key)? {
                auth_events.push(pdu);
            }
        }
        // The room's newest events: from memory, as a rule.
        let mut prev_events = Vec::new();
        for id in heads.forward_extremities.iter().take(MAX_PREV_EVENTS) {
            if let Some(p) = self.pdu_shared(id)? {
                prev_events.push(p);
            }
        }
        let depth = prev_events.iter().map(|p| p.depth).max().map_or(1, |d| d + 1);

        let refs = |events: &[Arc<Pdu>]| -> CanonicalJsonValue {
            CanonicalJsonValue::Array(
                events
                    .iter()
                    .map(|p| {
                        if rules.event_format.require_event_id {
                            let mut hashes = CanonicalJsonObject::new();
                            hashes.insert(
                                "sha256".into(),
                                CanonicalJsonValue::String(p.sha256_hash().unwrap_or_default().to_owned()),
                            );
                            CanonicalJsonValue::Array(vec![
                                CanonicalJsonValue::String(p.event_id.to_string()),
                                CanonicalJsonValue::Object(hashes),
                            ])
                        } else {
                            CanonicalJsonValue::String(p.event_id.to_string())
                        }
                    })
                    .collect(),
            )
        };

        let mut obj = CanonicalJsonObject::new();
        obj.insert("type".into(), CanonicalJsonValue::String(new.kind.to_string()));
        obj.insert("sender".into(), CanonicalJsonValue::String(sender.to_string()));
        obj.insert("content".into(), to_canonical(Value::Object(new.content.clone()))?);
        obj.insert("origin_server_ts".into(), to_canonical(Value::from(ts))?);
        obj.insert("depth".into(), to_canonical(Value::from(depth))?);
        obj.insert("prev_events".into(), refs(&prev_events));
        obj.insert("auth_events".into(), refs(&auth_events));
        if let Some(r) = room_id {
            obj.insert("room_id".into(), CanonicalJsonValue::String(r.to_string()));
        }
        if let Some(k) = &new.state_key {
            obj.insert("state_key".into(), CanonicalJsonValue::String(k.clone()));
        }
        if let Some(r) = &new.redacts {
            // Up to v10 `redacts` is a top-level key; from v11 it lives in the content.
            obj.insert("redacts".into(), CanonicalJsonValue::String(r.to_string()));
        }
        let v1_event_id = if rules.event_format.require_event_id {
            let id = format!("${}:{}", crate::random::alphanumeric(18), self.server_name);
            obj.insert("event_id".into(), CanonicalJsonValue::String(id.clone()));
            Some(id)
        } else {
            None
        };

        hash_and_sign_event(self.server_name.as_str(), self.server_key.key_pair(), &mut obj, &rules.redaction)
            .map_err(|e| Error::internal(format!("cannot sign event: {e}")))?;
        if canonical_len(&obj) > MAX_PDU_BYTES {
            return Err(Error::too_large(format!("Event is larger than {MAX_PDU_BYTES} bytes")));
        }
        let event_id = match v1_event_id {
            Some(id) => id,
            None => format!("${}", reference_hash(&obj, &rules).map_err(|e| Error::too_large(e.to_string()))?),
        };
        let event_id = OwnedEventId::try_from(event_id).map_err(|e| Error::internal(e.to_string()))?;
        let room_id = match room_id {
            Some(r) => r.to_owned(),
            // v12: the room id is the create event's reference hash.
            None => OwnedRoomId::try_from(format!("!{}", &event_id.as_str()[1..]))
                .map_err(|e| Error::internal(e.to_string()))?,
        };
        let pdu = Pdu::from_json(event_id, obj, Some(&room_id))?;

        Ok(Built { pdu, rules, state: map, auth_events, prev_events })
    }
}

pub(super) fn check_limits(new: &NewEvent) -> Result<()> {
    if new.kind.to_string().len() > MAX_EVENT_TYPE_BYTES {
        return Err(Error::too_large("Event type too long"));
    }
    if json_depth(&new.content) > MAX_CONTENT_DEPTH {
        return Err(Error::bad_json(format!("Event content is nested deeper than {MAX_CONTENT_DEPTH} levels")));
    }
    if new.state_key.as_ref().is_some_and(|k| k.len() > MAX_STATE_KEY_BYTES) {
        return Err(Error::too_large("State key too long"));
    }
    // A cheap early refusal; the exact PDU size is checked after signing.
    let approx = serde_json::to_vec(&new.content).map(|v| v.len()).unwrap_or(usize::MAX);
    if approx > MAX_PDU_BYTES {
        return Err(Error::too_large(format!("Event is larger than {MAX_PDU_BYTES} bytes")));
    }
    let _ = to_canonical_object(new.content.clone())?;
    Ok(())
}

/// Nesting depth of a JSON object (itself level 1), counted without recursion.
fn json_depth(content: &Map<String, Value>) -> usize {
    let mut deepest = 1;
    let mut stack: Vec<(&Value, usize)> = content.values().map(|v| (v, 2)).collect();
    while let Some((value, depth)) = stack.pop() {
        match value {
            Value::Object(m) => {
                deepest = deepest.max(depth);
                stack.extend(m.values().map(|v| (v, depth + 1)));
            }
            Value::Array(a) => {
                deepest = deepest.max(depth);
                stack.extend(a.iter().map(|v| (v, depth + 1)));
            }
            _ => {}
        }
    }
    deepest
}
