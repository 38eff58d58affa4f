//! Push delivery: notifications to the users' push gateways (the push gateway API's
//! `POST /_matrix/push/v1/notify`), so that phones ring.
//!
//! **Evaluation** follows the stream into the notification log ([`Notifications`]), one
//! write per step with its position: nothing is logged twice or skipped across a restart.
//!
//! **Delivery** is one task per pusher, which sends the user's logged notifications after
//! the pusher's own persisted position, in order, one at a time, and moves the position
//! only once the gateway answered 2xx: after `kill -9` a notification is sent again at
//! most once (the one in flight), never lost. Failures back off from [`FIRST_BACKOFF`],
//! doubling up to [`MAX_BACKOFF`]; a notification older than [`MAX_AGE_MS`] is skipped
//! rather than ringing a phone a day late; a pushkey the gateway rejects removes its
//! pusher. Gateways are reached through the outbound client, so the address policy
//! (denylist, LAN allowlist) applies to the address connected to, with a time-out and a
//! size cap on the answer. Nothing here runs on a request's path: a slow gateway delays
//! no message and no sync.
//!
//! A read receipt that lowers a user's badge (the count of rooms with unread
//! notifications) sends a counts-only push, so the app icon follows; these are best
//! effort (one attempt, not persisted), as a badge is only ever worth its latest value.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use parking_lot::Mutex;
use ruma::{
    events::{StateEventType, TimelineEventType},
    push::Action,
    OwnedUserId, UserId,
};
use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, watch, Notify};

use super::notifications::{Notification, Notifications};
use crate::{
    error::{Error, Result},
    rooms::Rooms,
    stream::{Stream, StreamItem},
    time::now_millis,
    transport::client::OutboundClient,
    users::{pushers::Pusher, Users},
};

pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);
pub const MAX_BACKOFF: Duration = Duration::from_secs(60 * 60);
/// A notification older than this is not sent any more (a day).
pub const MAX_AGE_MS: u64 = 24 * 60 * 60 * 1000;
/// How long a gateway has to answer.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest answer read from a gateway.
const MAX_ANSWER: usize = 64 * 1024;

/// (user, app id, pushkey).
type PusherKey = (OwnedUserId, String, String);

/// One pusher's task handle.
#[derive(Default)]
struct Slot {
    wake: Notify,
    /// A badge update is wanted.
    badge: AtomicBool,
    /// The badge last sent (`u64::MAX`: none yet).
    last_badge: AtomicU64,
}

pub struct PushSender {
    notifications: Notifications,
    users: Arc<Users>,
    rooms: Arc<Rooms>,
    outbound: OutboundClient,
    slots: Mutex<HashMap<PusherKey, Arc<Slot>>>,
    spawn_tx: mpsc::UnboundedSender<PusherKey>,
    spawn_rx: Mutex<Option<mpsc::UnboundedReceiver<PusherKey>>>,
    stop: watch::Sender<bool>,
}

/// What a gateway made of a push.
enum Outcome {
    Delivered,
    /// The gateway no longer knows this pushkey.
    Rejected,
}

impl PushSender {
    pub fn new(notifications: Notifications, users: Arc<Users>, rooms: Arc<Rooms>, outbound: OutboundClient) -> Self {
        let (spawn_tx, spawn_rx) = mpsc::unbounded_channel();
        PushSender {
            notifications,
            users,
            rooms,
            outbound,
            slots: Mutex::new(HashMap::new()),
            spawn_tx,
            spawn_rx: Mutex::new(Some(spawn_rx)),
            stop: watch::Sender::new(false),
        }
    }

    pub fn notifications(&self) -> &Notifications {
        &self.notifications
    }

    fn slot(&self, key: &PusherKey) -> Arc<Slot> {
        self.slots
            .lock()
            .entry(key.clone())
            .or_insert_with(|| Arc::new(Slot { last_badge: AtomicU64::new(u64::MAX), ..Slot::default() }))
            .clone()
    }

    /// A pusher was registered, changed or removed: its task starts (or looks again).
    pub fn pusher_changed(&self, user: &UserId, app_id: &str, pushkey: &str) {
        let key = (user.to_owned(), app_id.to_owned(), pushkey.to_owned());
        self.slot(&key).wake.notify_one();
        let _ = self.spawn_tx.send(key);
    }

    /// Runs evaluation and the delivery tasks until `stopped` fires.
    pub async fn run(self: Arc<Self>, stream: Arc<Stream>, stopped: tokio::sync::oneshot::Receiver<()>) {
        let Some(mut spawn_rx) = self.spawn_rx.lock().take() else {
            return tracing::error!("the push sender was started twice");
        };
        match self.users.all_pushers() {
            Ok(all) => {
                for (user, p) in all {
                    let _ = self.spawn_tx.send((user, p.app_id, p.pushkey));
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot read the pushers"),
        }
        let follower = {
            let this = self.clone();
            tokio::spawn(async move { this.follow(stream).await })
        };
        let mut tasks = tokio::task::JoinSet::new();
        let mut running = std::collections::BTreeSet::new();
        tokio::pin!(stopped);
        loop {
            tokio::select! {
                _ = &mut stopped => break,
                Some(key) = spawn_rx.recv() => {
                    if running.insert(key.clone()) {
                        let this = self.clone();
                        tasks.spawn(async move { this.deliver(key).await });
                    }
                }
                Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                    if let Ok(key) = done {
                        running.remove(&key);
                        // Registered again while its task was ending: start it again.
                        if !*self.stop.borrow() && self.users.pusher(&key.0, &key.1, &key.2).ok().flatten().is_some() {
                            let _ = self.spawn_tx.send(key);
                        }
                    }
                }
            }
        }
        let _ = self.stop.send(true);
        follower.abort();
        while tasks.join_next().await.is_some() {}
    }

    /// Evaluates the stream as it grows (see the module doc) and wakes the pushers of the
    /// users who got notifications, or whose badge may have dropped.
    async fn follow(&self, stream: Arc<Stream>) {
        let mut durable = stream.watch_durable();
        let mut stop = self.stop.subscribe();
        let mut pos = match self.notifications.start() {
            Ok(p) => p,
            Err(e) => return tracing::error!(error = %e, "cannot read the push position"),
        };
        loop {
            let now = stream.now();
            if now > pos {
                match self.notifications.evaluate_between(pos, now) {
                    Ok((reached, notified)) => {
                        self.wake_users(notified.iter().map(|u| &**u), false);
                        self.note_receipts(pos, reached);
                        pos = reached;
                        continue;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "evaluating push rules failed; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                }
            }
            tokio::select! {
                changed = durable.changed() => if changed.is_err() { return },
                _ = stop.changed() => return,
            }
        }
    }

    /// Receipts in (since, until]: the pushers of the rooms' local members look at their
    /// badge again, and their unread marks behind the receipts are deleted.
    fn note_receipts(&self, since: u64, until: u64) {
        let items = match self.rooms.stream.items_between(since, until) {
            Ok(items) => items,
            Err(e) => return tracing::warn!(error = %e, "cannot read receipts for badges"),
        };
        let mut rooms = std::collections::BTreeSet::new();
        for (_, item) in items {
            if let StreamItem::Receipt { room_id } = item {
                rooms.insert(room_id);
            }
        }
        for room in rooms {
            match self.notifications.readers_in(&room) {
                Ok(members) => {
                    self.wake_users(members.iter().map(|u| &**u), true);
                    // Marks behind the readers' new receipts may not count again.
                    if let Err(e) = self.notifications.trim_marks(&room) {
                        tracing::warn!(%room, error = %e, "cannot trim unread marks");
                    }
                }
                Err(e) => tracing::warn!(%room, error = %e, "cannot read a room's members for badges"),
            }
        }
    }

    fn wake_users<'a>(&self, users: impl Iterator<Item = &'a UserId>, badge: bool) {
        let users: std::collections::BTreeSet<&UserId> = users.collect();
        for (key, slot) in self.slots.lock().iter() {
            if users.contains(&*key.0) {
                if badge {
                    slot.badge.store(true, Ordering::SeqCst);
                }
                slot.wake.notify_one();
            }
        }
    }

    /// One pusher's delivery loop (see the module doc); returns its key when the pusher
    /// is gone or the server stops.
    async fn deliver(self: Arc<Self>, key: PusherKey) -> PusherKey {
        let slot = self.slot(&key);
        let mut stop = self.stop.subscribe();
        let mut backoff = FIRST_BACKOFF;
        let (user, app_id, pushkey) = (&key.0, key.1.as_str(), key.2.as_str());
        loop {
            if *stop.borrow() {
                break;
            }
            let pusher = match self.users.pusher(user, app_id, pushkey) {
                Ok(Some(p)) => p,
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(%user, error = %e, "cannot read a pusher");
                    tokio::time::sleep(FIRST_BACKOFF).await;
                    continue;
                }
            };
            let next = match self.notifications.after(user, pusher.delivered, 1) {
                Ok(rows) => rows.into_iter().next(),
                Err(e) => {
                    tracing::warn!(%user, error = %e, "cannot read notifications");
                    tokio::time::sleep(FIRST_BACKOFF).await;
                    continue;
                }
            };
            let Some((pos, notification)) = next else {
                if slot.badge.swap(false, Ordering::SeqCst) {
                    self.send_badge(user, &pusher, &slot).await;
                }
                tokio::select! {
                    _ = slot.wake.notified() => {}
                    _ = stop.changed() => {}
                }
                continue;
            };
            let outcome = if now_millis().saturating_sub(notification.ts) > MAX_AGE_MS {
                Ok(Outcome::Delivered)
            } else {
                self.send_notification(user, &pusher, &notification, &slot).await
            };
            match outcome {
                Ok(Outcome::Delivered) => {
                    backoff = FIRST_BACKOFF;
                    if let Err(e) = self.users.set_pusher_delivered(user, app_id, pushkey, pos) {
                        tracing::warn!(%user, error = %e, "cannot record a push as delivered");
                    }
                }
                Ok(Outcome::Rejected) => {
                    tracing::info!(%user, app_id, "the push gateway rejected a pushkey; removing its pusher");
                    if let Err(e) = self.users.delete_pusher(user, app_id, pushkey) {
                        tracing::warn!(%user, error = %e, "cannot remove a rejected pusher");
                    }
                    break;
                }
                Err(e) => {
                    tracing::info!(%user, app_id, error = %e, retry_in = ?backoff, "push gateway unreachable");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.changed() => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
        self.slots.lock().remove(&key);
        key
    }

    async fn send_notification(
        &self,
        user: &UserId,
        pusher: &Pusher,
        n: &Notification,
        slot: &Slot,
    ) -> Result<Outcome> {
        let Some(pdu) = self.rooms.pdu_shared(&n.event_id)? else {
            // The event is gone (purged): nothing to say.
            return Ok(Outcome::Delivered);
        };
        let badge = self.notifications.badge(user)?;
        let tweaks = tweaks(&n.actions);
        let encrypted = pdu.kind == TimelineEventType::RoomEncrypted;
        let loud = encrypted || tweaks.contains_key("sound") || tweaks.get("highlight") == Some(&json!(true));
        let mut notification = Map::new();
        notification.insert("event_id".into(), json!(pdu.event_id));
        notification.insert("room_id".into(), json!(pdu.room_id));
        notification.insert("prio".into(), json!(if loud { "high" } else { "low" }));
        let missed_calls = self.notifications.missed_calls(user)?;
        notification.insert("counts".into(), json!({"unread": badge, "missed_calls": missed_calls}));
        notification.insert("devices".into(), json!([device(pusher, tweaks)]));
        if pusher.data.get("format").and_then(Value::as_str) != Some("event_id_only") {
            // Synapse still sends the event id as `id` too (push gateway API r0), and
            // gateways and sytest read it.
            notification.insert("id".into(), json!(pdu.event_id));
            notification.insert("type".into(), json!(pdu.kind.to_string()));
            notification.insert("sender".into(), json!(pdu.sender));
            notification.insert("content".into(), pdu.content_value());
            // A room on another server that the user is only invited to is known here by
            // the stripped state its invite came with.
            let stripped = match self.rooms.room(&pdu.room_id)? {
                Some(_) => Vec::new(),
                None => self.rooms.remote_invite_state(user, &pdu.room_id)?,
            };
            let state = |kind: StateEventType, key: &str, field: &str| -> Result<Option<Value>> {
                let content = match stripped.is_empty() {
                    false => stripped
                        .iter()
                        .find(|e| e["type"] == kind.to_string().as_str() && e["state_key"] == key)
                        .map(|e| e["content"].clone()),
                    true => self.rooms.state_event(&pdu.room_id, &kind, key)?.map(|p| p.content_value()),
                };
                Ok(content.and_then(|c| c.get(field).filter(|v| v.is_string()).cloned()))
            };
            if let Some(name) = state(StateEventType::RoomMember, pdu.sender.as_str(), "displayname")? {
                notification.insert("sender_display_name".into(), name);
            }
            // The room's name as a client would show it: its name, else its alias.
            let alias = state(StateEventType::RoomCanonicalAlias, "", "alias")?;
            if let Some(name) = state(StateEventType::RoomName, "", "name")?.or_else(|| alias.clone()) {
                notification.insert("room_name".into(), name);
            }
            if let Some(alias) = alias {
                notification.insert("room_alias".into(), alias);
            }
            if pdu.kind == TimelineEventType::RoomMember {
                notification.insert("membership".into(), pdu.content_value()["membership"].clone());
                notification.insert("user_is_target".into(), json!(pdu.state_key.as_deref() == Some(user.as_str())));
            }
        }
        let outcome = self.post(pusher, json!({"notification": notification})).await?;
        slot.last_badge.store(badge, Ordering::SeqCst);
        Ok(outcome)
    }

    /// A counts-only push when the badge changed since the last one sent (best effort).
    async fn send_badge(&self, user: &UserId, pusher: &Pusher, slot: &Slot) {
        let badge = match self.notifications.badge(user) {
            Ok(b) => b,
            Err(e) => return tracing::warn!(%user, error = %e, "cannot count a badge"),
        };
        if slot.last_badge.load(Ordering::SeqCst) == badge {
            return;
        }
        let body = json!({"notification": {
            "prio": "low",
            "counts": {"unread": badge},
            "devices": [device(pusher, Map::new())],
        }});
        match self.post(pusher, body).await {
            Ok(_) => slot.last_badge.store(badge, Ordering::SeqCst),
            Err(e) => tracing::info!(%user, error = %e, "a badge update did not reach the push gateway"),
        }
    }

    async fn post(&self, pusher: &Pusher, body: Value) -> Result<Outcome> {
        let url =
            pusher.data.get("url").and_then(Value::as_str).ok_or_else(|| Error::internal("pusher without url"))?;
        let request = self
            .outbound
            .request(reqwest::Method::POST, url)
            .map_err(|e| Error::unavailable(e.to_string()))?
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(serde_json::to_vec(&body).map_err(|e| Error::internal(e.to_string()))?);
        let answer = self
            .outbound
            .send(request, SEND_TIMEOUT, MAX_ANSWER)
            .await
            .map_err(|e| Error::unavailable(e.to_string()))?;
        if !answer.status.is_success() {
            return Err(Error::unavailable(format!("the push gateway answered {}", answer.status)));
        }
        let rejected = serde_json::from_slice::<Value>(&answer.body)
            .ok()
            .and_then(|v| v.get("rejected").and_then(Value::as_array).cloned())
            .unwrap_or_default();
        if rejected.iter().any(|k| k.as_str() == Some(pusher.pushkey.as_str())) {
            return Ok(Outcome::Rejected);
        }
        Ok(Outcome::Delivered)
    }
}

/// The `devices` entry for a pusher: its data echoed without the gateway's `url` (Element
/// X keeps a secret there), `pushkey_ts` in seconds.
fn device(pusher: &Pusher, tweaks: Map<String, Value>) -> Value {
    let mut data = pusher.data.clone();
    data.remove("url");
    json!({
        "app_id": pusher.app_id,
        "pushkey": pusher.pushkey,
        "pushkey_ts": pusher.pushkey_ts / 1000,
        "data": data,
        "tweaks": tweaks,
    })
}

/// The `set_tweak` actions as the gateway's `tweaks` object (`highlight` alone means true).
fn tweaks(actions: &[Action]) -> Map<String, Value> {
    let mut out = Map::new();
    for action in actions {
        let Ok(Value::Object(a)) = serde_json::to_value(action) else { continue };
        if let Some(name) = a.get("set_tweak").and_then(Value::as_str) {
            out.insert(name.to_owned(), a.get("value").cloned().unwrap_or(json!(true)));
        }
    }
    out
}
