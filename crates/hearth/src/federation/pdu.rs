//! Steps 1 and 2 of the checks on receipt of a PDU, the ones that come before the room:
//! the event is a well-formed PDU of its room version no larger than the spec allows, and
//! every server that must have signed it did (keys fetched through `transport`, each
//! checked valid at the event's `origin_server_ts`). A content hash that does not match
//! keeps the event in its redacted form, as the spec says. Both steps wait on the network
//! (for keys), so they run before any room lock is taken.
//!
//! Also here: [`own_json`], what Hearth sends of one of its stored PDUs.

use std::collections::BTreeMap;

use ruma::{
    canonical_json::redact,
    room_version_rules::RoomVersionRules,
    signatures::{required_server_signatures_to_verify_event, verify_event, Verified},
    state_res::check_pdu_format,
    CanonicalJsonObject, CanonicalJsonValue, EventId, OwnedEventId, RoomId, RoomVersionId,
};
use serde_json::value::RawValue as RawJsonValue;

use super::Federation;
use crate::rooms::pdu::{canonical_len, Pdu, MAX_PDU_BYTES};

/// Most signing keys of one server looked up for one event.
const MAX_KEY_IDS_PER_SERVER: usize = 8;

/// Why a remote PDU was dropped before its room was looked at.
pub type Dropped = String;

/// How every [`Dropped`] reason about signatures begins (a server that did not sign, keys
/// that could not be had, a signature that does not verify): see [`refusal`].
const SIGNATURE_PROBLEM: &str = "signature: ";

/// The error a server gets for a PDU it sent directly (a join, a leave, an invite) that
/// was dropped: 403 when its signatures are wanting, as Synapse answers, else 400.
pub fn refusal(dropped: Dropped) -> crate::error::Error {
    if dropped.starts_with(SIGNATURE_PROBLEM) {
        crate::error::Error::forbidden(dropped)
    } else {
        crate::error::Error::bad_json(dropped)
    }
}

/// A PDU as received, parsed into canonical JSON (refusing floats, huge integers and
/// duplicate keys) and held to the size limit.
pub fn parse_raw(raw: &RawJsonValue) -> Result<CanonicalJsonObject, Dropped> {
    if raw.get().len() > MAX_PDU_BYTES * 2 {
        return Err(format!("PDU larger than {MAX_PDU_BYTES} bytes"));
    }
    let obj: CanonicalJsonObject =
        serde_json::from_str(raw.get()).map_err(|e| format!("PDU is not canonical JSON: {e}"))?;
    Ok(obj)
}

/// The room id a PDU names, if any (v12 create events name none).
pub fn room_id_of(obj: &CanonicalJsonObject) -> Option<ruma::OwnedRoomId> {
    match obj.get("room_id") {
        Some(CanonicalJsonValue::String(s)) => ruma::OwnedRoomId::try_from(s.as_str()).ok(),
        _ => None,
    }
}

/// The id of a PDU: its `event_id` in room versions 1 and 2, its reference hash after.
pub fn event_id_of(obj: &CanonicalJsonObject, rules: &RoomVersionRules) -> Result<OwnedEventId, Dropped> {
    if rules.event_format.require_event_id {
        return match obj.get("event_id") {
            Some(CanonicalJsonValue::String(s)) => OwnedEventId::try_from(s.as_str()).map_err(|e| e.to_string()),
            _ => Err("PDU without event_id".into()),
        };
    }
    let hash = ruma::signatures::reference_hash(obj, rules).map_err(|e| format!("cannot hash PDU: {e}"))?;
    OwnedEventId::try_from(format!("${hash}")).map_err(|e| e.to_string())
}

/// What Hearth sends of one of its stored PDUs: the JSON as signed (stored PDUs carry no
/// `unsigned`, and no `event_id` from room version 3 on).
pub fn own_json(pdu: &Pdu) -> Box<RawJsonValue> {
    serde_json::value::to_raw_value(&pdu.json).unwrap_or_else(|_| RawJsonValue::from_string("{}".into()).expect("{}"))
}

impl Federation {
    /// Steps 1 and 2 for a PDU of a room of `version` (see the module doc). `room_id`
    /// names the room for a v12 create event, which carries none. `expected` is the id the
    /// caller asked for, when it asked for one.
    pub async fn verify_pdu(
        &self,
        version: &RoomVersionId,
        mut obj: CanonicalJsonObject,
        room_id: Option<&RoomId>,
        expected: Option<&EventId>,
    ) -> Result<Pdu, Dropped> {
        let rules = version.rules().ok_or_else(|| format!("unsupported room version {version}"))?;
        // Not part of what was signed; what a client needs of it Hearth computes itself.
        obj.remove("unsigned");
        if canonical_len(&obj) > MAX_PDU_BYTES {
            return Err(format!("PDU larger than {MAX_PDU_BYTES} bytes"));
        }
        check_pdu_format(&obj, &rules.event_format).map_err(|e| format!("malformed PDU: {e}"))?;
        let event_id = event_id_of(&obj, &rules)?;
        if expected.is_some_and(|e| e != event_id) {
            return Err(format!("asked for {}, got {event_id}", expected.map(|e| e.as_str()).unwrap_or_default()));
        }
        let ts = match obj.get("origin_server_ts") {
            Some(CanonicalJsonValue::Integer(i)) => u64::try_from(i64::from(*i)).unwrap_or(0),
            _ => return Err("PDU without origin_server_ts".into()),
        };
        let servers = required_server_signatures_to_verify_event(&obj, &rules.signatures).map_err(|e| e.to_string())?;
        let mut keys = BTreeMap::new();
        for server in servers {
            let ids: Vec<String> = match obj.get("signatures") {
                Some(CanonicalJsonValue::Object(sigs)) => match sigs.get(server.as_str()) {
                    Some(CanonicalJsonValue::Object(by_key)) => by_key
                        .keys()
                        .filter(|k| k.starts_with("ed25519:"))
                        .take(MAX_KEY_IDS_PER_SERVER)
                        .cloned()
                        .collect(),
                    _ => vec![],
                },
                _ => vec![],
            };
            if ids.is_empty() {
                return Err(format!("{SIGNATURE_PROBLEM}not signed by {server}"));
            }
            let found = self
                .keys
                .keys_for(&server, &ids, ts)
                .await
                .map_err(|e| format!("{SIGNATURE_PROBLEM}keys of {server}: {e}"))?;
            keys.extend(found);
        }
        let verified =
            verify_event(&keys, &obj, &rules).map_err(|e| format!("{SIGNATURE_PROBLEM}bad signature: {e}"))?;
        if verified == Verified::Signatures {
            tracing::info!(event = %event_id, "content hash mismatch: keeping the redacted event");
            obj = redact(obj, &rules.redaction, None).map_err(|e| format!("cannot redact: {e}"))?;
        }
        // A v12 create event names no room: its room id derives from its own id.
        let room = room_id_of(&obj).or_else(|| {
            let derived = !rules.event_format.require_room_create_room_id;
            derived.then(|| ruma::OwnedRoomId::try_from(format!("!{}", &event_id.as_str()[1..])).ok()).flatten()
        });
        if let (Some(expected_room), Some(room)) = (room_id, &room) {
            if expected_room != room {
                return Err(format!("event of room {room}, expected {expected_room}"));
            }
        }
        Pdu::from_json(event_id, obj, room.as_deref()).map_err(|e| e.to_string())
    }
}

/// Stripped state events from either form another server sends (stripped events, or full
/// PDUs since Matrix 1.16), at most `max`: what a client is shown of a room it is not in.
pub fn stripped(events: &[Box<RawJsonValue>], max: usize) -> Vec<serde_json::Value> {
    events
        .iter()
        .take(max)
        .filter_map(|raw| {
            let v: serde_json::Value = serde_json::from_str(raw.get()).ok()?;
            Some(serde_json::json!({
                "type": v.get("type")?, "state_key": v.get("state_key")?,
                "sender": v.get("sender")?, "content": v.get("content")?,
            }))
        })
        .collect()
}
