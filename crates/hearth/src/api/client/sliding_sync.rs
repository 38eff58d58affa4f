//! Client-server API: simplified sliding sync,
//! `POST /_matrix/client/unstable/org.matrix.simplified_msc3575/sync` (MSC4186).
//!
//! One request at a time per connection: a newer request makes a waiting one answer at
//! once (clients abandon a long-poll when their lists change), then takes its turn. The
//! answer is assembled by [`crate::sync::sliding`] and written as JSON directly, as `/sync`'s.

use std::sync::Arc;

use bytes::Bytes;
use ruma::api::client::sync::sync_events::v5 as ss;
use serde_json::{Map, Value};

use super::sync::{json_response, MAX_TIMEOUT};
use crate::{
    api::{RequestSlot, Ruma},
    error::{Error, Result},
    presence,
    sync::sliding,
    users::presence::STATES,
    Services,
};

/// `POST /_matrix/client/unstable/org.matrix.simplified_msc3575/sync`
///
/// A new connection (no `pos`) is answered at once; otherwise, when nothing is new, the
/// request waits up to `timeout` on the caller's notifier, as `/sync` does.
pub async fn sliding_sync(s: Arc<Services>, req: Ruma<ss::Request>, slot: Option<RequestSlot>) -> Result<Bytes> {
    let caller = req.caller()?.clone();
    let body = req.body;
    sliding::validate(&body)?;
    let (user, device) = (&caller.user_id, caller.device_id.as_str());
    let conn = s.sliding_connections.get(user, device, body.conn_id.as_deref().unwrap_or_default());
    // A request still waiting on this connection answers now; this one takes its turn.
    let ticket = conn.arrive();
    let mut records = conn.lock().await;
    let prev = records.at(body.pos.as_deref())?;

    let mut rx = s.notifier.subscribe(user);
    let state = body.set_presence.as_str();
    let _syncing = (state != "offline").then(|| s.presence.syncing(user));
    if STATES.contains(&state) {
        // Sliding sync answers from the stream's durable position: the change is waited
        // for here, not overlapped as `/sync` does.
        if let Some(pending) = presence::set_while_syncing(&s, user, state)? {
            pending.durable().await?;
        }
    }
    let timeout = body.timeout.unwrap_or_default().min(MAX_TIMEOUT);
    let deadline = tokio::time::Instant::now() + timeout;
    let sources = s.sync_sources();
    let answer = loop {
        let (now, typing) = (s.rooms.stream_now(), s.typing.version());
        let answer = sliding::assemble(&sources, user, device, prev.as_deref(), &body, now, typing)?;
        let expired = tokio::time::Instant::now() >= deadline || conn.superseded(ticket);
        if prev.is_none() || !answer.empty || expired {
            break answer;
        }
        // Waiting is not work: the place under max_concurrent_requests goes back meanwhile.
        if let Some(slot) = &slot {
            slot.release();
        }
        let woken = tokio::select! {
            changed = rx.changed() => changed.is_ok(),
            _ = tokio::time::sleep_until(deadline) => false,
            _ = conn.newer_request(ticket) => false,
        };
        if let Some(slot) = &slot {
            slot.reacquire().await;
        }
        if !woken {
            let (now, typing) = (s.rooms.stream_now(), s.typing.version());
            break sliding::assemble(&sources, user, device, prev.as_deref(), &body, now, typing)?;
        }
    };
    let pos = records.keep(answer.state);
    let mut out = Map::new();
    out.insert("pos".into(), Value::String(pos));
    if let Some(txn_id) = body.txn_id {
        out.insert("txn_id".into(), Value::String(txn_id));
    }
    out.insert("lists".into(), Value::Object(answer.lists));
    out.insert("rooms".into(), Value::Object(answer.rooms));
    out.insert("extensions".into(), Value::Object(answer.extensions));
    serde_json::to_vec(&Value::Object(out))
        .map(Bytes::from)
        .map_err(|e| Error::internal(format!("cannot serialise sliding sync: {e}")))
}

/// The sliding sync route.
pub async fn sliding_sync_route(
    axum::extract::State(s): axum::extract::State<Arc<Services>>,
    slot: Option<axum::Extension<RequestSlot>>,
    req: Ruma<ss::Request>,
) -> axum::response::Response {
    json_response(sliding_sync(s, req, slot.map(|axum::Extension(slot)| slot)).await)
}
