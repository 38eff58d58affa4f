//! Client-server API: `GET /_matrix/client/v3/sync`.
//!
//! The request is parsed with ruma's types; the response is written directly as JSON from
//! what [`assemble`] gathered (events are already JSON there), serialised once.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use bytes::Bytes;
use ruma::{
    api::client::{
        filter::{FilterDefinition, LazyLoadOptions},
        sync::sync_events::v3::{self as sync_v3, Filter},
    },
    OwnedRoomId,
};
use serde_json::{json, Map, Value};

use crate::{
    api::RequestSlot,
    api::Ruma,
    error::{Error, Result},
    presence,
    rooms::pdu::EventJson,
    sync::{
        assemble,
        cache::{CacheKey, KeyCounts},
        EventFilter, LeftRoomSync, SyncOptions, SyncResult, SyncToken,
    },
    users::presence::STATES,
    Services,
};

/// Longest long-poll a client may ask for.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(120);

fn options(filter: Option<&FilterDefinition>, full_state: bool) -> SyncOptions {
    let mut o = SyncOptions { full_state, ..SyncOptions::default() };
    if let Some(f) = filter {
        let t = &f.room.timeline;
        if let Some(limit) = t.limit {
            o.timeline_limit = u64::from(limit).min(1000) as usize;
        }
        o.timeline = room_event_filter(t);
        o.state = room_event_filter(&f.room.state);
        o.ephemeral = room_event_filter(&f.room.ephemeral);
        o.room_account_data = room_event_filter(&f.room.account_data);
        o.presence = event_filter(&f.presence);
        o.account_data = event_filter(&f.account_data);
        o.rooms = EventFilter {
            rooms: f.room.rooms.as_ref().map(|r| r.iter().map(ToString::to_string).collect()),
            not_rooms: f.room.not_rooms.iter().map(ToString::to_string).collect(),
            ..EventFilter::default()
        };
        (o.lazy_load_members, o.include_redundant_members) = match &f.room.state.lazy_load_options {
            LazyLoadOptions::Enabled { include_redundant_members } => (true, *include_redundant_members),
            _ => (false, false),
        };
        o.include_leave = f.room.include_leave;
        o.unread_thread_notifications = t.unread_thread_notifications;
        o.federation_format = f.event_format == ruma::api::client::filter::EventFormat::Federation;
    }
    o
}

fn room_event_filter(f: &ruma::api::client::filter::RoomEventFilter) -> EventFilter {
    EventFilter {
        types: f.types.clone(),
        not_types: f.not_types.clone(),
        senders: f.senders.as_ref().map(|s| s.iter().map(ToString::to_string).collect()),
        not_senders: f.not_senders.iter().map(ToString::to_string).collect(),
        rooms: f.rooms.as_ref().map(|r| r.iter().map(ToString::to_string).collect()),
        not_rooms: f.not_rooms.iter().map(ToString::to_string).collect(),
    }
}

fn event_filter(f: &ruma::api::client::filter::Filter) -> EventFilter {
    EventFilter {
        types: f.types.clone(),
        not_types: f.not_types.clone(),
        senders: f.senders.as_ref().map(|s| s.iter().map(ToString::to_string).collect()),
        not_senders: f.not_senders.iter().map(ToString::to_string).collect(),
        ..EventFilter::default()
    }
}

/// `GET /_matrix/client/v3/sync`
///
/// Initial or incremental; when nothing is new, waits up to `timeout` for the caller's
/// notifier and answers as soon as something for them is committed.
pub async fn sync_events(s: Arc<Services>, req: Ruma<sync_v3::Request>, slot: Option<RequestSlot>) -> Result<Bytes> {
    let caller = req.caller()?.clone();
    let body = req.body;
    // An initial sync may be answered from the cache of recent ones (see `sync::cache`).
    let cache_key = body.since.is_none().then(|| {
        let filter = match &body.filter {
            Some(Filter::FilterId(id)) => format!("id:{id}"),
            Some(f) => serde_json::to_string(f).unwrap_or_default(),
            None => String::new(),
        };
        CacheKey {
            user: caller.user_id.clone(),
            device: caller.device_id.to_string(),
            options: format!("{}|{}|{filter}", body.full_state, body.set_presence),
        }
    });
    let filter = match &body.filter {
        Some(Filter::FilterDefinition(def)) => Some(def.clone()),
        Some(Filter::FilterId(id)) => {
            Some(s.users.filter(&caller.user_id, id)?.ok_or_else(|| Error::invalid_param("Unknown filter id"))?)
        }
        // Filter is non-exhaustive.
        #[allow(unreachable_patterns)]
        Some(_) => None,
        None => None,
    };
    let opts = options(filter.as_ref(), body.full_state);
    let since = body.since.as_deref().map(SyncToken::parse).transpose()?;
    let timeout = body.timeout.unwrap_or_default().min(MAX_TIMEOUT);

    // Subscribe before reading, so a write between the read and the wait still wakes us.
    let mut rx = s.notifier.subscribe(&caller.user_id);
    let deadline = tokio::time::Instant::now() + timeout;
    // Presence the client asks to be in while syncing (`set_presence`, default online).
    // `offline` means this sync does not mark the user present; it does not set them
    // offline (as Synapse reads it: a phone's background sync must not hide its user),
    // except that a user with no presence yet is recorded offline, so that those who share
    // a room with them see a presence for them, as Synapse shows its default state.
    let state = body.set_presence.as_str();
    // Open for as long as this sync: presence does not time out while a client syncs.
    let _syncing = (state != "offline").then(|| s.presence.syncing(&caller.user_id));
    let unknown = || -> Result<bool> { Ok(s.presence.get(&caller.user_id)?.is_none()) };
    let mut own_presence = match STATES.contains(&state) && (state != "offline" || unknown()?) {
        true => presence::set_while_syncing(&s, &caller.user_id, state)?,
        false => None,
    };
    // This sync reads up to its own presence change, which is being made durable meanwhile
    // and is waited for before the answer leaves (`answer`).
    let own_pos = own_presence.as_ref().map_or(0, presence::PendingPresence::pos);
    let sources = s.sync_sources();
    let now_token = || SyncToken { pos: s.rooms.stream_now().max(own_pos), typing: s.typing.version() };
    let answer = |body: Bytes, pending: Option<presence::PendingPresence>| async move {
        if let Some(pending) = pending {
            pending.durable().await?;
        }
        Ok(body)
    };
    let key_counts = || -> Result<KeyCounts> {
        Ok(KeyCounts {
            one_time: s.keys.one_time_key_counts(&caller.user_id, caller.device_id.as_str())?,
            unused_fallback: s.keys.unused_fallback_types(&caller.user_id, caller.device_id.as_str())?,
        })
    };
    if let Some(key) = &cache_key {
        if let Some(body) = s.initial_sync_cache.get(key, now_token(), key_counts)? {
            return answer(body, own_presence.take()).await;
        }
    }
    let _building = match since.is_none() || opts.full_state {
        true => Some(s.initial_syncs.acquire().await.map_err(|_| Error::internal("shutting down"))?),
        false => None,
    };
    loop {
        let now = now_token();
        let result = assemble(&sources, &caller.user_id, caller.device_id.as_str(), since, now, &opts)?;
        let waiting_pays = since.is_some() && result.is_empty() && !opts.full_state;
        if !waiting_pays || tokio::time::Instant::now() >= deadline {
            let keys = KeyCounts {
                one_time: result.one_time_key_counts.clone(),
                unused_fallback: result.unused_fallback_key_types.clone(),
            };
            let body = serialise(result, now, &opts)?;
            let body = answer(body, own_presence.take()).await?;
            if let Some(key) = cache_key {
                s.initial_sync_cache.put(key, now, keys, body.clone());
            }
            return Ok(body);
        }
        // A sync whose filter hid its own presence change waits: the change is made
        // durable first, as any answer would have waited for it.
        if let Some(pending) = own_presence.take() {
            pending.durable().await?;
        }
        // Waiting is not work: the place under max_concurrent_requests goes back meanwhile.
        if let Some(slot) = &slot {
            slot.release();
        }
        let woken = tokio::time::timeout_at(deadline, rx.changed()).await;
        if let Some(slot) = &slot {
            slot.reacquire().await;
        }
        match woken {
            Ok(Ok(())) => continue,
            // Timed out (or the notifier went away): answer with what there is.
            _ => {
                let now = now_token();
                let result = assemble(&sources, &caller.user_id, caller.device_id.as_str(), since, now, &opts)?;
                return serialise(result, now, &opts);
            }
        }
    }
}

// The answer is written straight into one buffer: room events arrive already written as
// JSON (`EventJson`) and are copied in as they are; the rest is small. Building a
// `serde_json::Value` tree first and serialising it was about a fifth of a first sync.

/// Writes `value` as JSON.
fn put<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) -> Result<()> {
    serde_json::to_writer(out, value).map_err(|e| Error::internal(format!("cannot serialise sync: {e}")))
}

/// A JSON object being written, its members separated as they come.
struct Obj<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

impl<'a> Obj<'a> {
    fn open(out: &'a mut Vec<u8>) -> Self {
        out.push(b'{');
        Obj { out, first: true }
    }

    /// Starts a member: what is written next into the returned buffer is its value.
    fn key(&mut self, key: &str) -> Result<&mut Vec<u8>> {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        put(self.out, key)?;
        self.out.push(b':');
        Ok(self.out)
    }

    fn member<T: serde::Serialize + ?Sized>(&mut self, key: &str, value: &T) -> Result<()> {
        put(self.key(key)?, value)
    }

    fn close(self) {
        self.out.push(b'}');
    }
}

/// `{"events": [...]}` of values.
fn events(out: &mut Vec<u8>, list: &[Value]) -> Result<()> {
    let mut o = Obj::open(out);
    o.member("events", list)?;
    o.close();
    Ok(())
}

/// A list of events already written.
fn written(out: &mut Vec<u8>, list: &[EventJson]) {
    out.push(b'[');
    for (i, e) in list.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(e.as_bytes());
    }
    out.push(b']');
}

/// `{"events": [...]}` of events already written.
fn written_events(out: &mut Vec<u8>, list: &[EventJson]) -> Result<()> {
    let mut o = Obj::open(out);
    written(o.key("events")?, list);
    o.close();
    Ok(())
}

fn timeline(out: &mut Vec<u8>, list: &[EventJson], limited: bool, prev_batch: Option<&str>) -> Result<()> {
    let mut o = Obj::open(out);
    written(o.key("events")?, list);
    o.member("limited", &limited)?;
    if let Some(p) = prev_batch {
        o.member("prev_batch", p)?;
    }
    o.close();
    Ok(())
}

/// A map of room id → section, left out when empty.
fn rooms_of<T>(
    rooms: &mut Obj<'_>,
    kind: &str,
    map: &BTreeMap<OwnedRoomId, T>,
    mut section: impl FnMut(&mut Vec<u8>, &T) -> Result<()>,
) -> Result<()> {
    if map.is_empty() {
        return Ok(());
    }
    let mut o = Obj::open(rooms.key(kind)?);
    for (room_id, r) in map {
        section(o.key(room_id.as_str())?, r)?;
    }
    o.close();
    Ok(())
}

/// `{key: {"events": [...]}}`: an invited or knocked room's stripped state.
fn one_list(out: &mut Vec<u8>, key: &str, list: &[Value]) -> Result<()> {
    let mut room = Obj::open(out);
    events(room.key(key)?, list)?;
    room.close();
    Ok(())
}

/// A left room's section, or a peeked one's (no account data).
fn left_room(out: &mut Vec<u8>, r: &LeftRoomSync, account_data: bool) -> Result<()> {
    let mut room = Obj::open(out);
    timeline(room.key("timeline")?, &r.timeline, r.limited, r.prev_batch.as_deref())?;
    written_events(room.key("state")?, &r.state)?;
    if account_data {
        events(room.key("account_data")?, &[])?;
    }
    room.close();
    Ok(())
}

/// The response body, written straight from what `assemble` found.
///
/// Shaped as Synapse shapes it, which clients were built against: empty top-level
/// sections are left out, but every room section carries its `events` array (matrix-nio
/// validates a left room's `state` and every `timeline` against a schema that requires
/// it), `limited` is always there, and `signed_curve25519` is counted even at zero.
fn response_json(out: &mut Vec<u8>, result: SyncResult, now: SyncToken, thread_counts: bool) -> Result<()> {
    let mut o = Obj::open(out);
    o.member("next_batch", &now.encode())?;
    if !result.account_data.is_empty() || result.push_rules.is_some() {
        let out = o.key("account_data")?;
        out.extend_from_slice(b"{\"events\":[");
        for (i, e) in result.account_data.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            put(out, e)?;
        }
        if let Some(rules) = &result.push_rules {
            if !result.account_data.is_empty() {
                out.push(b',');
            }
            out.extend_from_slice(rules.as_bytes());
        }
        out.extend_from_slice(b"]}");
    }
    if !result.presence.is_empty() {
        events(o.key("presence")?, &result.presence)?;
    }
    if !result.to_device.is_empty() {
        events(o.key("to_device")?, &result.to_device)?;
    }
    if !result.device_lists_changed.is_empty() || !result.device_lists_left.is_empty() {
        let mut lists = Obj::open(o.key("device_lists")?);
        if !result.device_lists_changed.is_empty() {
            lists.member("changed", &result.device_lists_changed)?;
        }
        if !result.device_lists_left.is_empty() {
            lists.member("left", &result.device_lists_left)?;
        }
        lists.close();
    }
    let mut otk = result.one_time_key_counts;
    otk.entry("signed_curve25519".into()).or_insert(0);
    o.member("device_one_time_keys_count", &otk)?;
    o.member("device_unused_fallback_key_types", &result.unused_fallback_key_types)?;

    let any_rooms = !(result.join.is_empty()
        && result.invite.is_empty()
        && result.knock.is_empty()
        && result.leave.is_empty()
        && result.peek.is_empty());
    if any_rooms {
        let mut rooms = Obj::open(o.key("rooms")?);
        rooms_of(&mut rooms, "join", &result.join, |out, r| {
            let mut room = Obj::open(out);
            timeline(room.key("timeline")?, &r.timeline, r.limited, r.prev_batch.as_deref())?;
            written_events(room.key("state")?, &r.state)?;
            events(room.key("ephemeral")?, &r.ephemeral)?;
            events(room.key("account_data")?, &r.account_data)?;
            room.member(
                "unread_notifications",
                &json!({"notification_count": r.notification_count, "highlight_count": r.highlight_count}),
            )?;
            let mut summary = json!({
                "m.joined_member_count": r.joined_count,
                "m.invited_member_count": r.invited_count,
            });
            if !r.heroes.is_empty() {
                summary["m.heroes"] = json!(r.heroes);
            }
            room.member("summary", &summary)?;
            if thread_counts && !r.thread_counts.is_empty() {
                let threads: Map<String, Value> = (r.thread_counts.iter())
                    .map(|(root, (n, h))| (root.to_string(), json!({"notification_count": n, "highlight_count": h})))
                    .collect();
                room.member("unread_thread_notifications", &threads)?;
            }
            room.close();
            Ok(())
        })?;
        rooms_of(&mut rooms, "invite", &result.invite, |out, stripped| one_list(out, "invite_state", stripped))?;
        rooms_of(&mut rooms, "knock", &result.knock, |out, stripped| one_list(out, "knock_state", stripped))?;
        rooms_of(&mut rooms, "leave", &result.leave, |out, r| left_room(out, r, true))?;
        rooms_of(&mut rooms, "peek", &result.peek, |out, r| left_room(out, r, false))?;
        rooms.close();
    }
    o.close();
    Ok(())
}

fn serialise(result: SyncResult, now: SyncToken, opts: &SyncOptions) -> Result<Bytes> {
    let mut out = Vec::with_capacity(16 * 1024);
    response_json(&mut out, result, now, opts.unread_thread_notifications)?;
    Ok(Bytes::from(out))
}

/// The `/sync` route.
pub async fn sync_events_route(
    axum::extract::State(s): axum::extract::State<Arc<Services>>,
    slot: Option<axum::Extension<RequestSlot>>,
    req: Ruma<sync_v3::Request>,
) -> axum::response::Response {
    json_response(sync_events(s, req, slot.map(|axum::Extension(slot)| slot)).await)
}

/// A JSON body already serialised (both syncs write theirs directly), or the error.
pub(super) fn json_response(body: Result<Bytes>) -> axum::response::Response {
    use axum::response::IntoResponse;
    match body {
        Ok(body) => (
            [(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"))],
            axum::body::Body::from(body),
        )
            .into_response(),
        Err(e) => e.into_response(),
    }
}
