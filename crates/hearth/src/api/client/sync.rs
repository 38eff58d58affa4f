//! Client-server API: `GET /_matrix/client/v3/sync`.
//!
//! The request is parsed with ruma's types; the response is written directly as JSON from
//! what [`assemble`] gathered (events are already JSON there), serialised once.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use ruma::api::client::{
    filter::{FilterDefinition, LazyLoadOptions},
    sync::sync_events::v3::{self as sync_v3, Filter},
};
use serde_json::{json, Map, Value};

use crate::{
    api::RequestSlot,
    api::Ruma,
    error::{Error, Result},
    presence,
    sync::{
        assemble,
        cache::{CacheKey, KeyCounts},
        EventFilter, SyncOptions, SyncResult, SyncToken,
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
    if STATES.contains(&state) && (state != "offline" || unknown()?) {
        presence::set(&s.presence, &s.rooms, &s.notifier, &caller.user_id, state, None)?;
    }
    let sources = s.sync_sources();
    let now_token = || SyncToken { pos: s.rooms.stream_now(), typing: s.typing.version() };
    let key_counts = || -> Result<KeyCounts> {
        Ok(KeyCounts {
            one_time: s.keys.one_time_key_counts(&caller.user_id, caller.device_id.as_str())?,
            unused_fallback: s.keys.unused_fallback_types(&caller.user_id, caller.device_id.as_str())?,
        })
    };
    if let Some(key) = &cache_key {
        if let Some(body) = s.initial_sync_cache.get(key, now_token(), &key_counts()?) {
            return Ok(body);
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
            if let Some(key) = cache_key {
                s.initial_sync_cache.put(key, now, keys, body.clone());
            }
            return Ok(body);
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

// The response is built by moving the events' values into place. `json!` would serialise
// each value it is given into a new one: a deep copy of every event, which was about a
// tenth of a first sync.

fn events(list: Vec<Value>) -> Value {
    object([("events", Value::Array(list))])
}

fn object<const N: usize>(members: [(&str, Value); N]) -> Value {
    Value::Object(members.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
}

fn timeline(events_list: Vec<Value>, limited: bool, prev_batch: Option<String>) -> Value {
    let mut t = object([("events", Value::Array(events_list)), ("limited", Value::Bool(limited))]);
    if let (Some(p), Value::Object(map)) = (prev_batch, &mut t) {
        map.insert("prev_batch".into(), Value::String(p));
    }
    t
}

/// The response body, written straight from what `assemble` found.
///
/// Shaped as Synapse shapes it, which clients were built against: empty top-level
/// sections are left out, but every room section carries its `events` array (matrix-nio
/// validates a left room's `state` and every `timeline` against a schema that requires
/// it), `limited` is always there, and `signed_curve25519` is counted even at zero.
fn response_json(result: SyncResult, now: SyncToken, thread_counts: bool) -> Value {
    let mut out = Map::new();
    out.insert("next_batch".into(), json!(now.encode()));
    if !result.account_data.is_empty() {
        out.insert("account_data".into(), events(result.account_data));
    }
    if !result.presence.is_empty() {
        out.insert("presence".into(), events(result.presence));
    }
    if !result.to_device.is_empty() {
        out.insert("to_device".into(), events(result.to_device));
    }
    let mut device_lists = Map::new();
    if !result.device_lists_changed.is_empty() {
        device_lists.insert("changed".into(), json!(result.device_lists_changed));
    }
    if !result.device_lists_left.is_empty() {
        device_lists.insert("left".into(), json!(result.device_lists_left));
    }
    if !device_lists.is_empty() {
        out.insert("device_lists".into(), Value::Object(device_lists));
    }
    let mut otk = result.one_time_key_counts;
    otk.entry("signed_curve25519".into()).or_insert(0);
    out.insert("device_one_time_keys_count".into(), json!(otk));
    out.insert("device_unused_fallback_key_types".into(), json!(result.unused_fallback_key_types));

    let mut rooms = Map::new();
    let mut join = Map::new();
    for (room_id, r) in result.join {
        let mut room = object([
            ("timeline", timeline(r.timeline, r.limited, r.prev_batch)),
            ("state", events(r.state)),
            ("ephemeral", events(r.ephemeral)),
            ("account_data", events(r.account_data)),
            (
                "unread_notifications",
                json!({
                    "notification_count": r.notification_count,
                    "highlight_count": r.highlight_count,
                }),
            ),
        ]);
        let mut summary = json!({
            "m.joined_member_count": r.joined_count,
            "m.invited_member_count": r.invited_count,
        });
        if !r.heroes.is_empty() {
            summary["m.heroes"] = json!(r.heroes);
        }
        room["summary"] = summary;
        if thread_counts && !r.thread_counts.is_empty() {
            let threads: Map<String, Value> = r
                .thread_counts
                .into_iter()
                .map(|(root, (n, h))| (root.to_string(), json!({"notification_count": n, "highlight_count": h})))
                .collect();
            room["unread_thread_notifications"] = Value::Object(threads);
        }
        join.insert(room_id.to_string(), room);
    }
    let mut invite = Map::new();
    for (room_id, stripped) in result.invite {
        invite.insert(room_id.to_string(), object([("invite_state", events(stripped))]));
    }
    let mut knock = Map::new();
    for (room_id, stripped) in result.knock {
        knock.insert(room_id.to_string(), object([("knock_state", events(stripped))]));
    }
    let mut leave = Map::new();
    for (room_id, r) in result.leave {
        leave.insert(
            room_id.to_string(),
            object([
                ("timeline", timeline(r.timeline, r.limited, r.prev_batch)),
                ("state", events(r.state)),
                ("account_data", events(vec![])),
            ]),
        );
    }
    let mut peek = Map::new();
    for (room_id, r) in result.peek {
        peek.insert(
            room_id.to_string(),
            object([("timeline", timeline(r.timeline, r.limited, r.prev_batch)), ("state", events(r.state))]),
        );
    }
    for (kind, map) in [("join", join), ("invite", invite), ("knock", knock), ("leave", leave), ("peek", peek)] {
        if !map.is_empty() {
            rooms.insert(kind.into(), Value::Object(map));
        }
    }
    if !rooms.is_empty() {
        out.insert("rooms".into(), Value::Object(rooms));
    }
    Value::Object(out)
}

fn serialise(result: SyncResult, now: SyncToken, opts: &SyncOptions) -> Result<Bytes> {
    serde_json::to_vec(&response_json(result, now, opts.unread_thread_notifications))
        .map(Bytes::from)
        .map_err(|e| Error::internal(format!("cannot serialise sync: {e}")))
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
