//! PDUs: the signed, hashed events every room is made of, local and remote alike.
//!
//! A [`Pdu`] keeps the event exactly as signed (its canonical JSON) plus the fields the
//! server reads often, parsed once. Room versions differ in how events name each other —
//! v1/v2 carry an `event_id` and reference events as `[id, {hashes}]` pairs, v3+ derive ids
//! from the reference hash — and v12 create events carry no `room_id` (the room id is
//! derived from the create event's id). Everything else treats all versions alike.

use std::collections::BTreeMap;

use ruma::{
    events::{room::member::MembershipState, TimelineEventType},
    CanonicalJsonObject, CanonicalJsonValue, MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomId, OwnedUserId,
    RoomId, UInt, UserId,
};
use serde::Deserialize;
use serde_json::{value::RawValue as RawJsonValue, Map, Value};

use crate::error::{Error, Result};

/// The largest PDU the spec allows, in bytes of canonical JSON.
pub const MAX_PDU_BYTES: usize = 65_536;

/// An event reference in `prev_events` / `auth_events`: a bare id (v3+) or `[id, hashes]`.
#[derive(Deserialize)]
#[serde(untagged)]
enum EventRef {
    Id(OwnedEventId),
    WithHashes(OwnedEventId, serde::de::IgnoredAny),
}

impl EventRef {
    fn into_id(self) -> OwnedEventId {
        match self {
            EventRef::Id(id) | EventRef::WithHashes(id, _) => id,
        }
    }
}

#[derive(Deserialize)]
struct Fields {
    room_id: Option<OwnedRoomId>,
    sender: OwnedUserId,
    origin_server_ts: MilliSecondsSinceUnixEpoch,
    #[serde(rename = "type")]
    kind: TimelineEventType,
    content: Box<RawJsonValue>,
    state_key: Option<String>,
    #[serde(default)]
    prev_events: Vec<EventRef>,
    #[serde(default)]
    auth_events: Vec<EventRef>,
    redacts: Option<OwnedEventId>,
    depth: UInt,
}

/// Writes `s` as a JSON string.
fn write_json_str(out: &mut Vec<u8>, s: &str) {
    // Writing a string into memory cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// An event already written as JSON (see [`Pdu::client_json`]), to be copied into an
/// answer as it is. Only this module and [`EventJson::from_value`] make one, so it always
/// holds one valid JSON object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventJson(Vec<u8>);

impl EventJson {
    /// A JSON value, written.
    pub fn from_value(value: &Value) -> Self {
        EventJson(serde_json::to_vec(value).unwrap_or_else(|_| b"null".to_vec()))
    }

    /// JSON text written elsewhere; the caller vouches that it is one JSON value.
    pub fn from_text(text: Vec<u8>) -> Self {
        EventJson(text)
    }

    /// The JSON text.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The event parsed back (for the deprecated endpoints that reshape events).
    pub fn to_value(&self) -> Value {
        serde_json::from_slice(&self.0).unwrap_or(Value::Null)
    }
}

/// A parsed PDU with its signed JSON.
#[derive(Debug, Clone)]
pub struct Pdu {
    pub event_id: OwnedEventId,
    /// The room the event belongs to (derived for v12 create events).
    pub room_id: OwnedRoomId,
    /// Whether `room_id` is in the JSON (false only for v12 create events).
    has_room_id_field: bool,
    pub sender: OwnedUserId,
    pub origin_server_ts: MilliSecondsSinceUnixEpoch,
    pub kind: TimelineEventType,
    pub content: Box<RawJsonValue>,
    pub state_key: Option<String>,
    pub prev_events: Vec<OwnedEventId>,
    pub auth_events: Vec<OwnedEventId>,
    pub redacts: Option<OwnedEventId>,
    pub depth: u64,
    /// The event as signed, without `event_id` for v3+ (it is not part of their PDUs).
    pub json: CanonicalJsonObject,
    /// The client format without `room_id` and `unsigned`, written once and open at its
    /// end (no closing brace): a PDU kept in memory is served to many syncs, and writing it
    /// (escaping every string) was the largest part of serving it. A parsed PDU is never
    /// changed (a redaction parses a new one), so this never goes stale.
    client_base: std::sync::OnceLock<Box<[u8]>>,
}

impl Pdu {
    /// Parses a PDU whose id is known. `room_id` is required for events that do not carry
    /// one (v12 create events).
    pub fn from_json(event_id: OwnedEventId, json: CanonicalJsonObject, room_id: Option<&RoomId>) -> Result<Self> {
        let value = serde_json::to_value(&json).map_err(|e| Error::bad_json(e.to_string()))?;
        let f: Fields = serde_json::from_value(value).map_err(|e| Error::bad_json(format!("invalid PDU: {e}")))?;
        let has_room_id_field = f.room_id.is_some();
        let room_id = match (f.room_id, room_id) {
            (Some(r), _) => r,
            (None, Some(r)) => r.to_owned(),
            (None, None) => return Err(Error::bad_json("PDU without room_id")),
        };
        Ok(Pdu {
            event_id,
            room_id,
            has_room_id_field,
            sender: f.sender,
            origin_server_ts: f.origin_server_ts,
            kind: f.kind,
            content: f.content,
            state_key: f.state_key,
            prev_events: f.prev_events.into_iter().map(EventRef::into_id).collect(),
            auth_events: f.auth_events.into_iter().map(EventRef::into_id).collect(),
            redacts: f.redacts,
            depth: f.depth.into(),
            json,
            client_base: std::sync::OnceLock::new(),
        })
    }

    /// The content as a JSON value.
    pub fn content_value(&self) -> Value {
        serde_json::from_str(self.content.get()).unwrap_or(Value::Null)
    }

    /// A member event's `membership`; `None` for other events.
    pub fn membership(&self) -> Option<MembershipState> {
        if self.kind != TimelineEventType::RoomMember {
            return None;
        }
        #[derive(Deserialize)]
        struct Membership<'a> {
            #[serde(borrow)]
            membership: Option<std::borrow::Cow<'a, str>>,
        }
        let m: Membership<'_> = serde_json::from_str(self.content.get()).ok()?;
        m.membership.map(|m| MembershipState::from(m.as_ref()))
    }

    /// The `sha256` content hash, used by v1/v2 event references.
    pub fn sha256_hash(&self) -> Option<&str> {
        match self.json.get("hashes") {
            Some(CanonicalJsonValue::Object(h)) => match h.get("sha256") {
                Some(CanonicalJsonValue::String(s)) => Some(s),
                _ => None,
            },
            _ => None,
        }
    }

    pub fn is_state(&self) -> bool {
        self.state_key.is_some()
    }

    /// The event in the client-server format, with `unsigned` as given.
    pub fn to_client_json(&self, unsigned: Map<String, Value>) -> Value {
        let mut out = Map::new();
        out.insert("event_id".into(), Value::String(self.event_id.to_string()));
        out.insert("room_id".into(), Value::String(self.room_id.to_string()));
        out.insert("sender".into(), Value::String(self.sender.to_string()));
        out.insert("type".into(), Value::String(self.kind.to_string()));
        out.insert("origin_server_ts".into(), Value::from(u64::from(self.origin_server_ts.0)));
        out.insert("content".into(), self.content_value());
        if let Some(k) = &self.state_key {
            out.insert("state_key".into(), Value::String(k.clone()));
        }
        if let Some(r) = &self.redacts {
            out.insert("redacts".into(), Value::String(r.to_string()));
        } else if self.kind == ruma::events::TimelineEventType::RoomRedaction {
            // From version 11 `redacts` is in the content; the spec asks servers to copy it
            // to the top level for older clients.
            if let Some(Value::String(r)) = out["content"].get("redacts").cloned() {
                out.insert("redacts".into(), Value::String(r));
            }
        }
        if !unsigned.is_empty() {
            out.insert("unsigned".into(), Value::Object(unsigned));
        }
        Value::Object(out)
    }

    /// [`Pdu::to_client_json`] without `room_id` (sync lists events under their room),
    /// written straight as JSON: the content is copied as stored, not parsed and written
    /// again, and the part before `unsigned` is written once per parsed PDU. Keys come in
    /// the order `to_client_json`'s map gives them.
    pub fn client_json(&self, unsigned: &Map<String, Value>) -> EventJson {
        let base = self.client_base.get_or_init(|| self.write_client_base().into_boxed_slice());
        let mut out = Vec::with_capacity(base.len() + 64);
        out.extend_from_slice(base);
        if !unsigned.is_empty() {
            out.extend_from_slice(b",\"unsigned\":");
            // A map of JSON values always serialises.
            let _ = serde_json::to_writer(&mut out, unsigned);
        }
        out.push(b'}');
        EventJson(out)
    }

    /// The client format without `room_id`, up to `unsigned` (which sorts last), without
    /// the closing brace.
    fn write_client_base(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.content.get().len() + 256);
        let field = |out: &mut Vec<u8>, first: bool, key: &str| {
            if !first {
                out.push(b',');
            }
            write_json_str(out, key);
            out.push(b':');
        };
        out.push(b'{');
        field(&mut out, true, "content");
        out.extend_from_slice(self.content.get().as_bytes());
        field(&mut out, false, "event_id");
        write_json_str(&mut out, self.event_id.as_str());
        field(&mut out, false, "origin_server_ts");
        out.extend_from_slice(u64::from(self.origin_server_ts.0).to_string().as_bytes());
        let redacts = match &self.redacts {
            Some(r) => Some(r.to_string()),
            // From version 11 `redacts` is in the content (see `to_client_json`).
            None if self.kind == TimelineEventType::RoomRedaction => {
                self.content_value().get("redacts").and_then(Value::as_str).map(str::to_owned)
            }
            None => None,
        };
        if let Some(r) = redacts {
            field(&mut out, false, "redacts");
            write_json_str(&mut out, &r);
        }
        field(&mut out, false, "sender");
        write_json_str(&mut out, self.sender.as_str());
        if let Some(k) = &self.state_key {
            field(&mut out, false, "state_key");
            write_json_str(&mut out, k);
        }
        field(&mut out, false, "type");
        write_json_str(&mut out, &self.kind.to_string());
        out
    }

    /// The stripped form used for invite and knock room state.
    pub fn to_stripped_json(&self) -> Value {
        serde_json::json!({
            "type": self.kind.to_string(),
            "state_key": self.state_key.clone().unwrap_or_default(),
            "sender": self.sender.to_string(),
            "content": self.content_value(),
        })
    }
}

impl ruma::state_res::Event for Pdu {
    type Id = OwnedEventId;

    fn event_id(&self) -> &Self::Id {
        &self.event_id
    }

    fn room_id(&self) -> Option<&RoomId> {
        self.has_room_id_field.then_some(&*self.room_id)
    }

    fn sender(&self) -> &UserId {
        &self.sender
    }

    fn origin_server_ts(&self) -> MilliSecondsSinceUnixEpoch {
        self.origin_server_ts
    }

    fn event_type(&self) -> &TimelineEventType {
        &self.kind
    }

    fn content(&self) -> &RawJsonValue {
        &self.content
    }

    fn state_key(&self) -> Option<&str> {
        self.state_key.as_deref()
    }

    fn prev_events(&self) -> Box<dyn DoubleEndedIterator<Item = &Self::Id> + '_> {
        Box::new(self.prev_events.iter())
    }

    fn auth_events(&self) -> Box<dyn DoubleEndedIterator<Item = &Self::Id> + '_> {
        Box::new(self.auth_events.iter())
    }

    fn redacts(&self) -> Option<&Self::Id> {
        self.redacts.as_ref()
    }

    fn rejected(&self) -> bool {
        false
    }
}

/// Converts a JSON value into canonical JSON, refusing floats and out-of-range integers
/// (which canonical JSON cannot represent).
pub fn to_canonical(value: Value) -> Result<CanonicalJsonValue> {
    CanonicalJsonValue::try_from(value).map_err(|e| Error::bad_json(format!("content is not canonical JSON: {e}")))
}

/// Converts a JSON object into a canonical JSON object.
pub fn to_canonical_object(map: Map<String, Value>) -> Result<CanonicalJsonObject> {
    match to_canonical(Value::Object(map))? {
        CanonicalJsonValue::Object(o) => Ok(o),
        _ => Err(Error::bad_json("expected an object")),
    }
}

/// Bytes of canonical JSON of an object (for the size limit).
pub fn canonical_len(object: &CanonicalJsonObject) -> usize {
    serde_json::to_vec(object).map(|v| v.len()).unwrap_or(usize::MAX)
}

/// Sorted map helper for building JSON objects in one expression.
pub fn object<const N: usize>(pairs: [(&str, CanonicalJsonValue); N]) -> CanonicalJsonObject {
    pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect::<BTreeMap<_, _>>()
}
