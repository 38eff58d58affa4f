//! "Build and append": turning a local intent into a signed PDU and committing it.
//!
//! [`Rooms::append_local`] builds the PDU for the room's version (prev events = forward
//! extremities, auth events chosen from the current state by the auth rules, content hash,
//! event id, signature), checks it with the room version's authorization rules, and writes
//! it with every index in one batch. A refusal by the auth rules is 403 `M_FORBIDDEN` with
//! the rule that failed.

use std::sync::Arc;

use rand::{distributions::Alphanumeric, Rng};
use ruma::{
    events::{StateEventType, TimelineEventType},
    signatures::{hash_and_sign_event, reference_hash},
    state_res, CanonicalJsonObject, CanonicalJsonValue, EventId, OwnedEventId, OwnedRoomId, RoomId, RoomVersionId,
    UserId,
};
use serde_json::{value::to_raw_value, Map, Value};

use super::{
    pdu::{canonical_len, to_canonical, to_canonical_object, Pdu, MAX_PDU_BYTES},
    state::{Interner, StateMap, STATE_BEFORE_EVENT},
    Counters, EventMeta, MembershipRecord, RelationEntry, RoomHeads, RoomRecord, Rooms, StreamEntry, TimelineEntry,
    EVENT_META, EVENT_STREAM, PDUS, RELATIONS, ROOMS, ROOM_HEADS, ROOM_MEMBERS, TIMELINE, TRANSACTIONS, USER_ROOMS,
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
const MAX_PREV_EVENTS: usize = 20;

fn rules_for(version: &RoomVersionId) -> Result<ruma::room_version_rules::RoomVersionRules> {
    version.rules().ok_or_else(|| {
        Error::matrix(
            http::StatusCode::BAD_REQUEST,
            "M_UNSUPPORTED_ROOM_VERSION",
            format!("Room version {version} is not supported"),
        )
    })
}

fn random_id(len: usize) -> String {
    rand::thread_rng().sample_iter(Alphanumeric).take(len).map(char::from).collect()
}

impl Rooms {
    /// Builds, authorises and appends a local event to an existing room.
    pub fn append_local(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        new: NewEvent,
        txn: Option<TxnRef<'_>>,
    ) -> Result<Pdu> {
        check_limits(&new)?;
        let record = self.known_room(room_id)?;
        let mut counters = self.append_lock.lock();
        if let Some(t) = txn {
            if let Some(existing) = self.transaction(sender, t.device_id, &txn_scope(room_id, &new.kind, t.txn_id))? {
                drop(counters);
                // The first request may still be waiting for its write to be durable.
                self.stream.require_durable(self.stream.written())?;
                return self.pdu(&existing)?.ok_or_else(|| Error::internal("transaction points at a missing event"));
            }
        }
        let heads = self.heads(room_id)?;
        let pdu = self.build(&record.version, Some(room_id), &heads, sender, &new)?;
        let written = self.commit(&mut counters, pdu, &heads, txn, None)?;
        drop(counters);
        self.finish(written)
    }

    /// Builds and appends the `m.room.create` event of a new room; returns it (its
    /// `room_id` is the new room's id).
    pub fn append_create(&self, version: &RoomVersionId, sender: &UserId, content: Map<String, Value>) -> Result<Pdu> {
        let rules = rules_for(version)?;
        let room_id = if rules.event_format.require_room_create_room_id {
            Some(
                OwnedRoomId::try_from(format!("!{}:{}", random_id(18), self.server_name))
                    .map_err(|e| Error::internal(e.to_string()))?,
            )
        } else {
            None
        };
        let new = NewEvent::state("m.room.create", "", Value::Object(content));
        check_limits(&new)?;
        let mut counters = self.append_lock.lock();
        let heads = RoomHeads::default();
        let pdu = self.build(version, room_id.as_deref(), &heads, sender, &new)?;
        let record = RoomRecord { version: version.clone(), created_ts: now_millis() };
        let written = self.commit(&mut counters, pdu, &heads, None, Some(record))?;
        drop(counters);
        self.finish(written)
    }

    fn build(
        &self,
        version: &RoomVersionId,
        room_id: Option<&RoomId>,
        heads: &RoomHeads,
        sender: &UserId,
        new: &NewEvent,
    ) -> Result<Pdu> {
        let rules = rules_for(version)?;
        let map: std::sync::Arc<StateMap> = match heads.snapshot {
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
        obj.insert("origin_server_ts".into(), to_canonical(Value::from(now_millis()))?);
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
            let id = format!("${}:{}", random_id(18), self.server_name);
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

        // The rules fetch each auth event by id, and from v12 the create event: those were
        // just read from the state, so they are not read and parsed again.
        let create = self.state_event_shared(&map, &StateEventType::RoomCreate, "")?;
        let fetch = |id: &EventId| {
            auth_events
                .iter()
                .chain(&prev_events)
                .chain(&create)
                .find(|p| p.event_id == id)
                .cloned()
                .or_else(|| self.pdu_shared(id).ok().flatten())
        };
        state_res::check_state_independent_auth_rules(&rules.authorization, &pdu, fetch)
            .map_err(|e| Error::forbidden(format!("Refused by the room's rules: {e}")))?;
        state_res::check_state_dependent_auth_rules(&rules.authorization, &pdu, |ty, key| {
            self.state_event_shared(&map, ty, key).ok().flatten()
        })
        .map_err(|e| Error::forbidden(format!("Refused by the room's rules: {e}")))?;
        Ok(pdu)
    }

    /// Writes a built PDU and every index in one batch at the next stream position (not
    /// yet durable: see [`Rooms::finish`], called once the append lock is released).
    fn commit(
        &self,
        counters: &mut Counters,
        pdu: Pdu,
        heads: &RoomHeads,
        txn: Option<TxnRef<'_>>,
        new_room: Option<RoomRecord>,
    ) -> Result<Written> {
        let store = &*self.store;
        let room = pdu.room_id.as_str();
        let shared = std::sync::Arc::new(pdu.clone());
        let before = heads.snapshot;
        let written = |_: u64, (target, heads, meta): &(Option<ruma::OwnedUserId>, RoomHeads, EventMeta)| {
            self.written(shared, target, before, heads, meta)
        };
        let (stream, (target, _, _)) = self.stream.commit_deferred_then(
            |stream, batch| {
                let mut interner = Interner::new(&mut counters.next_short);
                let short = interner.event(store, batch, &pdu.event_id)?;
                if let Some(s) = heads.snapshot {
                    STATE_BEFORE_EVENT.put(batch, short, &s);
                }
                let mut new_heads = RoomHeads {
                    snapshot: heads.snapshot,
                    forward_extremities: vec![pdu.event_id.clone()],
                    depth: pdu.depth,
                };
                if let Some(key) = &pdu.state_key {
                    let sk = interner.state_key(store, batch, &pdu.kind.to_string(), key)?;
                    new_heads.snapshot =
                        Some(self.state.write_child(batch, &mut interner, heads.snapshot, vec![(sk, short)])?);
                }
                let json = serde_json::to_vec(&pdu.json).map_err(|e| Error::internal(e.to_string()))?;
                PDUS.put(batch, pdu.event_id.as_str(), &json);
                let meta = EventMeta {
                    room_id: pdu.room_id.clone(),
                    stream,
                    short,
                    txn: txn.map(|t| (t.device_id.to_owned(), t.txn_id.to_owned())),
                    redacted_by: None,
                };
                EVENT_META.put(batch, pdu.event_id.as_str(), &meta);
                if pdu.kind == TimelineEventType::RoomRedaction {
                    self.apply_redaction(batch, &pdu)?;
                }
                let content = pdu.content_value();
                if let Some(rel) = content.get("m.relates_to") {
                    if let (Some(rel_type), Some(target)) =
                        (rel.get("rel_type").and_then(Value::as_str), rel.get("event_id").and_then(Value::as_str))
                    {
                        if let Ok(event_id) = OwnedEventId::try_from(pdu.event_id.as_str()) {
                            RELATIONS.put(
                                batch,
                                (target, stream),
                                &RelationEntry {
                                    rel_type: rel_type.to_owned(),
                                    event_type: pdu.kind.to_string(),
                                    event_id,
                                },
                            );
                        }
                    }
                }
                TIMELINE.put(batch, (room, stream), &TimelineEntry::new(pdu.event_id.as_str(), &json));
                EVENT_STREAM.put(
                    batch,
                    stream,
                    &StreamEntry { room_id: pdu.room_id.clone(), event_id: pdu.event_id.clone() },
                );
                ROOM_HEADS.put(batch, room, &new_heads);
                let mut target = None;
                if pdu.kind == TimelineEventType::RoomMember {
                    self.members.note_member_event(&pdu.room_id, stream);
                    if let (Some(user), Some(membership)) = (
                        pdu.state_key.as_deref(),
                        pdu.content_value().get("membership").and_then(Value::as_str).map(str::to_owned),
                    ) {
                        USER_ROOMS.put(
                            batch,
                            (user, room),
                            &MembershipRecord {
                                membership: membership.clone(),
                                stream,
                                event_id: pdu.event_id.clone(),
                            },
                        );
                        ROOM_MEMBERS.put(batch, (room, user), &membership);
                        target = ruma::OwnedUserId::try_from(user).ok();
                    }
                }
                if let Some(t) = txn {
                    let scope = txn_scope(&pdu.room_id, &pdu.kind, t.txn_id);
                    TRANSACTIONS.put(batch, (pdu.sender.as_str(), t.device_id, &scope), &pdu.event_id.to_string());
                }
                if let Some(record) = &new_room {
                    ROOMS.put(batch, room, record);
                }
                Ok((target, new_heads, meta))
            },
            written,
        )?;
        Ok(Written { pdu, stream, target })
    }

    /// Updates what memory keeps once an event is in the database, before its position
    /// can become durable (so before any sync reads up to it): member lists, parsed PDUs,
    /// and redacted content.
    fn written(
        &self,
        pdu: std::sync::Arc<Pdu>,
        member_target: &Option<ruma::OwnedUserId>,
        before: Option<u64>,
        heads: &RoomHeads,
        meta: &EventMeta,
    ) {
        // Always replace: a reader that read the old heads before this write may only add
        // them where nothing is (see `Rooms::heads`).
        self.heads.lock().insert(pdu.room_id.clone(), heads.clone());
        if let Some(user) = member_target {
            self.members.invalidate(&pdu.room_id);
            self.members.invalidate_user(user);
        }
        let redacted = pdu.redaction_target();
        self.pdus.keep_new(pdu, meta.clone(), before);
        if let Some(redacted) = redacted {
            // No reader may keep the unredacted copy from here on.
            match self.state.short_event(&redacted) {
                Ok(short) => self.pdus.forget(&redacted, short),
                Err(_) => self.pdus.clear(),
            }
        }
    }

    /// Wakes the syncs a written event concerns once it is durable (one fsync may cover
    /// many appends; inside a request the HTTP layer waits for it, see `stream`).
    fn finish(&self, written: Written) -> Result<Pdu> {
        let Written { pdu, stream, target } = written;
        let joined = self.members_shared(&pdu.room_id, "join")?;
        let notifier = self.notifier.clone();
        self.stream.after_durable(stream, move || {
            notifier.notify(joined.iter().chain(target.as_ref()).map(|u| &**u), stream);
        })?;
        Ok(pdu)
    }
}

/// An event written at a stream position, not yet known durable.
struct Written {
    pdu: Pdu,
    stream: u64,
    /// The user a member event is about.
    target: Option<ruma::OwnedUserId>,
}

/// What a transaction id is unique within, besides the device: like Synapse, the request
/// it came with (room and kind of event), so the same id in another room is a new send.
fn txn_scope(room_id: &RoomId, kind: &TimelineEventType, txn_id: &str) -> String {
    format!("{room_id}|{kind}|{txn_id}")
}

fn check_limits(new: &NewEvent) -> Result<()> {
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
