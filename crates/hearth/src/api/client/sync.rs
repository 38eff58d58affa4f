//! Client-server API: `GET /_matrix/client/v3/sync`.

use std::{sync::Arc, time::Duration};

use ruma::{
    api::client::{
        filter::{FilterDefinition, LazyLoadOptions},
        sync::sync_events::{
            self,
            v3::{
                self as sync_v3, Filter, InvitedRoom, JoinedRoom, KnockedRoom, LeftRoom, RoomSummary, State,
                StateEvents, Timeline,
            },
        },
    },
    UInt,
};

use super::room::raw;
use crate::{
    api::Ruma,
    error::{Error, Result},
    sync::{assemble, SyncOptions, SyncResult, SyncSources, SyncToken},
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
        o.types = t.types.clone();
        o.not_types = t.not_types.clone();
        o.lazy_load_members = !matches!(f.room.state.lazy_load_options, LazyLoadOptions::Disabled);
        o.include_leave = f.room.include_leave;
        o.unread_thread_notifications = t.unread_thread_notifications;
    }
    o
}

/// `GET /_matrix/client/v3/sync`
///
/// Initial or incremental; when nothing is new, waits up to `timeout` for the caller's
/// notifier and answers as soon as something for them is committed.
pub async fn sync_events(s: Arc<Services>, req: Ruma<sync_v3::Request>) -> Result<sync_v3::Response> {
    let caller = req.caller()?.clone();
    let body = req.body;
    let filter = match &body.filter {
        Some(Filter::FilterDefinition(def)) => Some(def.clone()),
        Some(Filter::FilterId(id)) => Some(
            super::filter::load(&s, &caller.user_id, id)?.ok_or_else(|| Error::invalid_param("Unknown filter id"))?,
        ),
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
    let state = body.set_presence.as_str();
    if super::presence::STATES.contains(&state) {
        if let Some(pos) = s.presence.set(&caller.user_id, state, None)? {
            super::presence::notify_contacts(&s, &caller.user_id, pos)?;
        }
    }
    let sources = SyncSources {
        rooms: &s.rooms,
        typing: &s.typing,
        account_data: &s.account_data,
        presence: &s.presence,
        keys: &s.keys,
        to_device: &s.to_device,
        push: &s.push,
    };
    let now_token = || SyncToken { pos: s.rooms.stream_now(), typing: s.typing.version() };
    loop {
        let now = now_token();
        let result = assemble(&sources, &caller.user_id, caller.device_id.as_str(), since, now, &opts)?;
        let waiting_pays = since.is_some() && result.is_empty() && !opts.full_state;
        if !waiting_pays || tokio::time::Instant::now() >= deadline {
            return to_response(result, now);
        }
        match tokio::time::timeout_at(deadline, rx.changed()).await {
            Ok(Ok(())) => continue,
            // Timed out (or the notifier went away): answer with what there is.
            _ => {
                let now = now_token();
                let result = assemble(&sources, &caller.user_id, caller.device_id.as_str(), since, now, &opts)?;
                return to_response(result, now);
            }
        }
    }
}

fn to_response(result: SyncResult, now: SyncToken) -> Result<sync_v3::Response> {
    let mut res = sync_events::v3::Response::new(now.encode());
    res.account_data.events = result.account_data.iter().map(raw).collect::<Result<_>>()?;
    res.presence.events = result.presence.iter().map(raw).collect::<Result<_>>()?;
    res.to_device.events = result.to_device.iter().map(raw).collect::<Result<_>>()?;
    res.device_lists.changed = result.device_lists_changed;
    res.device_lists.left = result.device_lists_left;
    res.device_one_time_keys_count = result
        .one_time_key_counts
        .iter()
        .map(|(a, n)| (ruma::OneTimeKeyAlgorithm::from(a.as_str()), UInt::new(*n).unwrap_or_default()))
        .collect();
    res.device_unused_fallback_key_types =
        Some(result.unused_fallback_key_types.iter().map(|a| ruma::OneTimeKeyAlgorithm::from(a.as_str())).collect());
    for (room_id, r) in result.join {
        let mut joined = JoinedRoom::new();
        (joined.timeline, joined.state) = timeline_and_state(&r.timeline, r.limited, r.prev_batch, &r.state)?;
        joined.ephemeral.events = r.ephemeral.iter().map(raw).collect::<Result<_>>()?;
        joined.unread_notifications.notification_count = UInt::new(r.notification_count);
        joined.unread_notifications.highlight_count = UInt::new(r.highlight_count);
        for (root, (n, h)) in r.thread_counts {
            let mut c = ruma::api::client::sync::sync_events::UnreadNotificationsCount::new();
            c.notification_count = UInt::new(n);
            c.highlight_count = UInt::new(h);
            joined.unread_thread_notifications.insert(root, c);
        }
        joined.account_data.events = r.account_data.iter().map(raw).collect::<Result<_>>()?;
        let mut summary = RoomSummary::new();
        summary.heroes = r.heroes.iter().filter_map(|h| h.as_str().try_into().ok()).collect();
        summary.joined_member_count = UInt::new(r.joined_count);
        summary.invited_member_count = UInt::new(r.invited_count);
        joined.summary = summary;
        res.rooms.join.insert(room_id, joined);
    }
    for (room_id, stripped) in result.invite {
        let mut invited = InvitedRoom::new();
        invited.invite_state.events = stripped.iter().map(raw).collect::<Result<_>>()?;
        res.rooms.invite.insert(room_id, invited);
    }
    for (room_id, stripped) in result.knock {
        let mut knocked = KnockedRoom::new();
        knocked.knock_state.events = stripped.iter().map(raw).collect::<Result<_>>()?;
        res.rooms.knock.insert(room_id, knocked);
    }
    for (room_id, r) in result.leave {
        let mut left = LeftRoom::new();
        (left.timeline, left.state) = timeline_and_state(&r.timeline, r.limited, r.prev_batch, &r.state)?;
        res.rooms.leave.insert(room_id, left);
    }
    Ok(res)
}

/// A room's timeline and state sections in ruma's types.
fn timeline_and_state(
    events: &[serde_json::Value],
    limited: bool,
    prev_batch: Option<String>,
    state: &[serde_json::Value],
) -> Result<(Timeline, State)> {
    let mut timeline = Timeline::new();
    timeline.limited = limited;
    timeline.prev_batch = prev_batch;
    timeline.events = events.iter().map(raw).collect::<Result<_>>()?;
    let mut state_events = StateEvents::new();
    state_events.events = state.iter().map(raw).collect::<Result<_>>()?;
    Ok((timeline, State::Before(state_events)))
}

/// The `/sync` route: ruma's response, with empty `events` arrays written out.
///
/// ruma leaves out empty `events` lists (and whole empty sections). The spec allows that,
/// but matrix-nio validates a left room's `state` and every `timeline` against a schema
/// that requires `events`, and Synapse always sends them; so they are always present.
pub async fn sync_events_route(
    axum::extract::State(s): axum::extract::State<Arc<Services>>,
    req: Ruma<sync_v3::Request>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let res = match sync_events(s, req).await {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let http = match ruma::api::OutgoingResponseExt::try_into_http_response::<Vec<u8>>(res) {
        Ok(h) => h,
        Err(e) => return Error::internal(format!("cannot serialise sync: {e}")).into_response(),
    };
    let (parts, body) = http.into_parts();
    let Ok(mut json) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return axum::response::Response::from_parts(parts, axum::body::Body::from(body));
    };
    fill_empty_events(&mut json);
    let bytes = serde_json::to_vec(&json).unwrap_or(body);
    axum::response::Response::from_parts(parts, axum::body::Body::from(bytes))
}

fn fill_empty_events(json: &mut serde_json::Value) {
    let ensure = |obj: &mut serde_json::Value, key: &str| {
        if let Some(map) = obj.as_object_mut() {
            let section = map.entry(key).or_insert_with(|| serde_json::json!({}));
            if let Some(section) = section.as_object_mut() {
                section.entry("events").or_insert_with(|| serde_json::json!([]));
            }
        }
    };
    // `get_mut`, not indexing: indexing a missing key would insert a null.
    let Some(all) = json.get_mut("rooms") else { return };
    for kind in ["join", "leave"] {
        if let Some(rooms) = all.get_mut(kind).and_then(|r| r.as_object_mut()) {
            for room in rooms.values_mut() {
                for key in ["state", "timeline", "account_data"] {
                    ensure(room, key);
                }
                if kind == "join" {
                    ensure(room, "ephemeral");
                }
            }
        }
    }
    if let Some(rooms) = all.get_mut("invite").and_then(|r| r.as_object_mut()) {
        for room in rooms.values_mut() {
            ensure(room, "invite_state");
        }
    }
}
