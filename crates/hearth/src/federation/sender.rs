//! The sender: this server's events to the other servers in their rooms.
//!
//! **Queueing** follows the event stream from a persisted position, as `/sync` does, and
//! only up to the durable watermark: each event sent by a local user is queued, in the
//! database, for every other server with a joined member in the room (and the server of a
//! leave or ban's target: a kicked or banned user's server hears of it; an invite goes by
//! `/invite`). The queue rows
//! and the new position are one write, so after `kill -9` the follower starts where the
//! last write left it, and an acknowledged event is either queued or still ahead of the
//! position. Events another server sent through this one (`send_join`, `send_leave`) are
//! queued by [`Sender::queue_pdu`] before the request is answered.
//!
//! **Delivery** is one task per destination: up to [`MAX_PDUS_PER_TXN`] queued PDUs and
//! [`MAX_EDUS_PER_TXN`] EDUs per transaction, one transaction in flight, retried under the
//! same id until the destination answers 200, then removed from the queue. Failures back
//! off exponentially up to [`MAX_BACKOFF`]; a request from the destination resets the
//! backoff at once ([`Sender::contacted`]). A destination that stays away while more than
//! [`MAX_BACKLOG`] events queue up for it gets only each room's newest event when it comes
//! back, and fetches the rest itself, as after any gap. EDUs (typing, receipts, …) are not persisted:
//! they are worth little once late, and go out promptly in the next transaction.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, VecDeque},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use parking_lot::Mutex;
use ruma::{OwnedServerName, RoomId, ServerName};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch, Notify};

use super::pdu::own_json;
use ruma::events::room::member::MembershipState;

use crate::{
    e2ee::Keys,
    error::{Error, Result},
    rooms::Rooms,
    store::{tables, Batch, KeyRange, Order, Store, Table},
    stream::{Stream, StreamItem},
    time::now_millis,
    transport::server_client::{ServerClient, ServerRequest},
    users::presence::Presence,
};

/// (destination, stream position) → event id.
pub const FEDERATION_QUEUE: Table<(String, u64), String> = Table::new(tables::FEDERATION_QUEUE);
/// (destination, sequence number) → an EDU queued durably ([`Sender::queue_durable_edu`]).
pub const FEDERATION_EDUS: Table<(String, u64), Value> = Table::new(tables::FEDERATION_EDUS);
/// `"position"` → the stream position queued up to.
pub const FEDERATION_SENDER: Table<String, u64> = Table::new(tables::FEDERATION_SENDER);

/// A device-list update's `stream_id` for a change at stream position `pos`.
pub(crate) fn stream_id(pos: u64) -> u64 {
    pos << DEVICE_BITS
}

/// The stream position the sender has queued events up to (`None` before its first run).
pub fn queued_up_to(store: &Store) -> Result<Option<u64>> {
    Ok(FEDERATION_SENDER.get(store, "position")?)
}

/// Every event waiting in a destination's queue.
pub fn queued_events(store: &Store) -> Result<std::collections::HashSet<ruma::OwnedEventId>> {
    let mut out = std::collections::HashSet::new();
    FEDERATION_QUEUE.scan_all(store, |_, id| {
        if let Ok(id) = ruma::OwnedEventId::try_from(id) {
            out.insert(id);
        }
        true
    })?;
    Ok(out)
}

pub const MAX_PDUS_PER_TXN: usize = 50;
/// Rows a destination's queue may hold while it is unreachable before only each room's
/// newest is kept ([`Sender::compact_backlog`]).
pub const MAX_BACKLOG: usize = 1000;
/// Most rows one compaction reads (the rest wait for the next one).
const MAX_SCANNED_BACKLOG: usize = 100_000;
pub const MAX_EDUS_PER_TXN: usize = 100;
/// Most EDUs held for one destination; past it the oldest are dropped.
const MAX_PENDING_EDUS: usize = 1000;
/// Most durable EDUs (to-device messages) waiting for one destination.
const MAX_DURABLE_EDUS: usize = 10_000;
/// Most local users whose device lists one remote join introduces.
const MAX_INTRODUCED_USERS: usize = 1000;
/// Most devices of one user in a device-list introduction.
const MAX_INTRODUCED_DEVICES: usize = 1 << DEVICE_BITS;
/// When device lists introduced to a server that joined through this one go out again:
/// it stores the join only after `send_join` answered (in a moment for a small room, later
/// for a big one), and drops updates about users it does not share a room with yet.
const INTRODUCTION_RETRIES: [Duration; 2] = [Duration::from_secs(1), Duration::from_secs(10)];
/// A device-list update's `stream_id` is its stream position shifted by this many bits,
/// with room for one id per device of an introduction at the same position.
const DEVICE_BITS: u32 = 10;
/// The longest wait between attempts to reach a destination.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60 * 60);
const FIRST_BACKOFF: Duration = Duration::from_secs(2);
const SEND_TIMEOUT: Duration = Duration::from_secs(60);
/// Most stream positions queued in one write.
const QUEUE_CHUNK: usize = 1000;

/// One destination's delivery state.
#[derive(Default)]
struct Destination {
    wake: Notify,
    edus: Mutex<VecDeque<Value>>,
    /// Device lists introduced by a join ([`Sender::introduce_devices`]), each with the
    /// join's stream position and a time: held until the destination's queue has nothing
    /// at or before that position and the time has come, so that the join reaches the
    /// destination, and is stored there, first.
    introductions: Mutex<VecDeque<(u64, tokio::time::Instant, Value)>>,
    /// The wait before the next attempt after a failure; zero when healthy.
    backoff: Mutex<Duration>,
    /// When a transaction last failed and last went through (ms), and why it failed.
    last_failure_ts: AtomicU64,
    last_success_ts: AtomicU64,
    last_error: Mutex<Option<String>>,
}

/// What an operator sees of a destination (`hearth admin list-destinations`, Synapse's
/// destinations admin API). Times in ms since the epoch; what happened before this
/// start is not known.
#[derive(Debug, Clone)]
pub struct DestinationStatus {
    pub destination: OwnedServerName,
    /// Events waiting in its queue.
    pub queued: usize,
    /// The wait before the next attempt (zero when healthy).
    pub backoff: Duration,
    pub last_failure_ts: Option<u64>,
    pub last_success_ts: Option<u64>,
    pub last_error: Option<String>,
}

impl DestinationStatus {
    fn new(destination: OwnedServerName) -> Self {
        DestinationStatus {
            destination,
            queued: 0,
            backoff: Duration::ZERO,
            last_failure_ts: None,
            last_success_ts: None,
            last_error: None,
        }
    }
}

pub struct Sender {
    rooms: Arc<Rooms>,
    keys: Arc<Keys>,
    /// Local presence changes go out when set (`federate_presence`).
    presence: Option<Arc<Presence>>,
    /// The stream id of the last device-list update sent for each local user (since
    /// start): the next update's `prev_id`.
    last_device_update: Mutex<HashMap<ruma::OwnedUserId, u64>>,
    servers: Arc<ServerClient>,
    store: Arc<Store>,
    own: OwnedServerName,
    destinations: Mutex<HashMap<OwnedServerName, Arc<Destination>>>,
    /// Transaction ids are `<boot>-<counter>`: unique across restarts.
    boot: u64,
    counter: AtomicU64,
    stop: watch::Sender<bool>,
    /// Each new destination's name, for [`Sender::run`] to start its task.
    spawn_tx: mpsc::UnboundedSender<OwnedServerName>,
    spawn_rx: Mutex<Option<mpsc::UnboundedReceiver<OwnedServerName>>>,
}

impl Sender {
    pub fn new(
        rooms: Arc<Rooms>,
        servers: Arc<ServerClient>,
        store: Arc<Store>,
        own: OwnedServerName,
        keys: Arc<Keys>,
        presence: Option<Arc<Presence>>,
    ) -> Self {
        let (spawn_tx, spawn_rx) = mpsc::unbounded_channel();
        Sender {
            keys,
            presence,
            last_device_update: Mutex::default(),
            spawn_tx,
            spawn_rx: Mutex::new(Some(spawn_rx)),
            rooms,
            servers,
            store,
            own,
            destinations: Mutex::default(),
            boot: now_millis(),
            counter: AtomicU64::new(0),
            stop: watch::Sender::new(false),
        }
    }

    /// Queues an event for the room's servers except `except` (see the module doc), and
    /// wakes their tasks.
    pub fn queue_pdu(&self, room: &RoomId, event_id: &ruma::EventId, except: &[OwnedServerName]) -> Result<()> {
        let meta = self.rooms.event_meta(event_id)?.ok_or_else(|| Error::internal("queueing an unknown event"))?;
        let mut batch = Batch::new();
        let mut touched = Vec::new();
        for dest in super::servers_in_room(&self.rooms, room, &self.own)? {
            if !except.contains(&dest) {
                FEDERATION_QUEUE.put(&mut batch, (dest.as_str(), meta.stream), &event_id.to_string());
                touched.push(dest);
            }
        }
        self.store.write(batch)?;
        for dest in touched {
            self.destination(&dest).wake.notify_one();
        }
        Ok(())
    }

    /// Queues an EDU for `dest` (not persisted; see the module doc).
    pub fn queue_edu(&self, dest: &ServerName, edu: Value) {
        if dest == self.own {
            return;
        }
        let d = self.destination(dest);
        {
            let mut edus = d.edus.lock();
            if edus.len() >= MAX_PENDING_EDUS {
                edus.pop_front();
            }
            edus.push_back(edu);
        }
        d.wake.notify_one();
    }

    /// Queues an EDU for `dest` in the database, before the caller acknowledges it: a
    /// to-device message (a room key, say) a client was told was sent survives `kill -9`
    /// and goes out after a restart. At most [`MAX_DURABLE_EDUS`] wait per destination;
    /// past that the oldest are dropped.
    pub fn queue_durable_edu(&self, dest: &ServerName, edu: Value) -> Result<()> {
        if dest == self.own {
            return Ok(());
        }
        let seq = (self.boot << 20) | (self.counter.fetch_add(1, Ordering::Relaxed) & ((1 << 20) - 1));
        let mut batch = Batch::new();
        FEDERATION_EDUS.put(&mut batch, (dest.as_str(), seq), &edu);
        // Counted by key alone: the EDUs themselves are not read.
        let mut waiting = Vec::new();
        let range = KeyRange::prefix(&crate::store::codec::encode_key::<String>(dest.as_str()));
        FEDERATION_EDUS.scan_keys(&self.store, &range, Order::Ascending, |(_, seq)| {
            waiting.push(seq);
            true
        })?;
        if waiting.len() >= MAX_DURABLE_EDUS {
            tracing::warn!(%dest, "too many to-device messages wait for a server; dropping the oldest");
            for old in waiting.iter().take(waiting.len() + 1 - MAX_DURABLE_EDUS) {
                FEDERATION_EDUS.delete(&mut batch, (dest.as_str(), *old));
            }
        }
        self.store.write(batch)?;
        self.destination(dest).wake.notify_one();
        Ok(())
    }

    /// `server` just sent us a request: it is up, so retry at once.
    pub fn contacted(&self, server: &ServerName) {
        let found = self.destinations.lock().get(server).cloned();
        if let Some(d) = found {
            let mut backoff = d.backoff.lock();
            if !backoff.is_zero() {
                *backoff = Duration::ZERO;
                drop(backoff);
                d.wake.notify_one();
            }
        }
    }

    /// Every destination with queued events or contacted since start, by name.
    pub fn destinations(&self) -> Result<Vec<DestinationStatus>> {
        let mut found: std::collections::BTreeMap<OwnedServerName, DestinationStatus> = Default::default();
        FEDERATION_QUEUE.scan_all(&self.store, |(dest, _), _| {
            if let Ok(d) = OwnedServerName::try_from(dest) {
                found.entry(d.clone()).or_insert_with(|| DestinationStatus::new(d)).queued += 1;
            }
            true
        })?;
        let known = |ts: &AtomicU64| Some(ts.load(Ordering::Relaxed)).filter(|t| *t > 0);
        for (name, d) in self.destinations.lock().iter() {
            let status = found.entry(name.clone()).or_insert_with(|| DestinationStatus::new(name.clone()));
            status.backoff = *d.backoff.lock();
            status.last_failure_ts = known(&d.last_failure_ts);
            status.last_success_ts = known(&d.last_success_ts);
            status.last_error = d.last_error.lock().clone();
        }
        Ok(found.into_values().collect())
    }

    /// Tries a destination again at once (after its operator fixed it); whether it was
    /// waiting.
    pub fn retry_now(&self, server: &ServerName) -> bool {
        let waiting = self.is_backing_off(server);
        self.contacted(server);
        waiting
    }

    /// Whether the last attempt to reach `server` failed (it is backing off).
    pub fn is_backing_off(&self, server: &ServerName) -> bool {
        self.destinations.lock().get(server).is_some_and(|d| !d.backoff.lock().is_zero())
    }

    /// The destination's state, its task started on first use.
    fn destination(&self, dest: &ServerName) -> Arc<Destination> {
        let mut all = self.destinations.lock();
        if let Some(d) = all.get(dest) {
            return d.clone();
        }
        let d = Arc::new(Destination::default());
        all.insert(dest.to_owned(), d.clone());
        let _ = self.spawn_tx.send(dest.to_owned());
        d
    }

    /// Runs the follower and the delivery tasks until `stopped` fires.
    pub async fn run(self: Arc<Self>, stream: Arc<Stream>, stopped: tokio::sync::oneshot::Receiver<()>) {
        let mut tasks = tokio::task::JoinSet::new();
        let Some(mut spawn_rx) = self.spawn_rx.lock().take() else {
            return tracing::error!("the federation sender was started twice");
        };
        let mut running: BTreeSet<OwnedServerName> = BTreeSet::new();
        // Destinations with rows left from before a restart.
        match self.queued_destinations() {
            Ok(dests) => dests.into_iter().for_each(|d| self.destination(&d).wake.notify_one()),
            Err(e) => tracing::error!(error = %e, "cannot read the federation queue"),
        }
        let follower = {
            let this = self.clone();
            tokio::spawn(async move { this.follow(stream).await })
        };
        tokio::pin!(stopped);
        loop {
            tokio::select! {
                _ = &mut stopped => break,
                Some(dest) = spawn_rx.recv() => {
                    if running.insert(dest.clone()) {
                        let this = self.clone();
                        tasks.spawn(async move { this.deliver(dest).await });
                    }
                }
            }
        }
        let _ = self.stop.send(true);
        follower.abort();
        while tasks.join_next().await.is_some() {}
    }

    /// Follows the stream (see the module doc) and wakes every destination that got rows.
    async fn follow(&self, stream: Arc<Stream>) {
        let mut durable = stream.watch_durable();
        let mut pos = match FEDERATION_SENDER.get(&self.store, "position") {
            Ok(Some(p)) => p,
            // First start: what happened before federation existed is not sent.
            Ok(None) => stream.now(),
            Err(e) => return tracing::error!(error = %e, "cannot read the sender's position"),
        };
        let mut stop = self.stop.subscribe();
        loop {
            let now = stream.now();
            if now > pos {
                match self.queue_between(pos, now) {
                    Ok((reached, touched)) => {
                        pos = reached;
                        for dest in touched {
                            self.destination(&dest).wake.notify_one();
                        }
                        continue;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "queueing events for other servers failed; retrying");
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

    /// Queues the local events in (since, until], at most [`QUEUE_CHUNK`] of them; returns
    /// the position reached and the destinations that got rows.
    fn queue_between(&self, since: u64, until: u64) -> Result<(u64, BTreeSet<OwnedServerName>)> {
        let events = self.rooms.stream.events_between(since, until)?;
        let (events, reached) = if events.len() > QUEUE_CHUNK {
            let reached = events[QUEUE_CHUNK - 1].0;
            (&events[..QUEUE_CHUNK], reached)
        } else {
            (&events[..], until)
        };
        let mut batch = Batch::new();
        let mut touched = BTreeSet::new();
        let mut joins = Vec::new();
        for (pos, entry) in events {
            let Some(pdu) = self.rooms.pdu_shared(&entry.event_id)? else { continue };
            if pdu.membership() == Some(MembershipState::Join) {
                joins.push((*pos, pdu.clone()));
            }
            if pdu.sender.server_name() != self.own {
                continue;
            }
            let mut dests = super::servers_in_room(&self.rooms, &entry.room_id, &self.own)?;
            // A kicked or banned user's server hears of it (an invite goes by `/invite`).
            if matches!(pdu.membership(), Some(MembershipState::Leave | MembershipState::Ban)) {
                if let Some(target) = pdu.state_key.as_deref().and_then(|k| ruma::UserId::parse(k).ok()) {
                    if target.server_name() != self.own && !dests.iter().any(|d| d == target.server_name()) {
                        dests.push(target.server_name().to_owned());
                    }
                }
            }
            for dest in dests {
                FEDERATION_QUEUE.put(&mut batch, (dest.as_str(), *pos), &entry.event_id.to_string());
                touched.insert(dest);
            }
        }
        FEDERATION_SENDER.put(&mut batch, "position", &reached);
        self.store.write(batch)?;
        self.send_device_changes(since, reached);
        for (pos, join) in joins {
            if let Err(e) = self.introduce_devices(pos, &join) {
                tracing::warn!(event = %join.event_id, error = %e, "cannot introduce device lists after a join");
            }
        }
        Ok((reached, touched))
    }

    /// A join that brings servers together in a room: a local user's join sends their
    /// device list (and presence) to the servers already in the room, and the first member
    /// of another server sends that server the device lists (and presence) of the room's
    /// local members. A server
    /// that knew nothing of a user resyncs through `user/devices`; one that did takes the
    /// keys as sent. The updates go out once the join has reached the destination, so that
    /// it knows the user shares a room with it (Synapse drops updates otherwise).
    fn introduce_devices(&self, pos: u64, join: &crate::rooms::pdu::Pdu) -> Result<()> {
        let Some(joiner) = join.state_key.as_deref().and_then(|k| ruma::UserId::parse(k).ok()) else { return Ok(()) };
        let before = self.rooms.joined_in(&*self.rooms.state_before(&join.event_id)?)?;
        if before.contains(&joiner) {
            return Ok(()); // A new display name or avatar, not a join.
        }
        // Lists kept of the other side's users may have missed changes while no room was
        // shared: they are synced afresh when next asked for.
        if joiner.server_name() == self.own {
            let remote = before.iter().filter(|u| u.server_name() != self.own).map(|u| &**u);
            self.keys.forget_remote_devices(remote, pos)?;
        } else {
            self.keys.forget_remote_devices([&*joiner], pos)?;
        }
        let mut introduce: Vec<(OwnedServerName, ruma::OwnedUserId)> = Vec::new();
        if joiner.server_name() == self.own {
            let servers: BTreeSet<&ServerName> =
                before.iter().map(|u| u.server_name()).filter(|s| *s != self.own).collect();
            introduce.extend(servers.into_iter().map(|s| (s.to_owned(), joiner.clone())));
        } else if !before.iter().any(|u| u.server_name() == joiner.server_name()) {
            let locals = before.iter().filter(|u| u.server_name() == self.own).take(MAX_INTRODUCED_USERS);
            introduce.extend(locals.map(|u| (joiner.server_name().to_owned(), u.clone())));
        }
        // A local user's join reaches the others through the queue (or was stored by the
        // resident before it answered `send_join`). Another server's join through this one
        // is stored there only after `send_join` answered, so its introduction goes at once
        // and again later ([`INTRODUCTION_RETRIES`]), should the first have come too early.
        let now = tokio::time::Instant::now();
        let mut dues = vec![now];
        if joiner.server_name() != self.own {
            dues.extend(INTRODUCTION_RETRIES.iter().map(|after| now + *after));
        }
        let mut by_server: BTreeMap<OwnedServerName, Vec<Value>> = BTreeMap::new();
        for (server, user) in introduce {
            let edus = by_server.entry(server).or_default();
            let devices = self.keys.device_keys(&user)?;
            for (i, (device, keys)) in devices.into_iter().take(MAX_INTRODUCED_DEVICES).enumerate() {
                let content = json!({
                    "user_id": user,
                    "device_id": device,
                    "stream_id": stream_id(pos) + i as u64,
                    "prev_id": [],
                    "keys": keys,
                });
                edus.push(json!({"edu_type": "m.device_list_update", "content": content}));
            }
            // Their presence too: it is otherwise sent only when it changes.
            edus.extend(self.presence_edu(&user));
        }
        for (server, edus) in by_server {
            let d = self.destination(&server);
            {
                let mut held = d.introductions.lock();
                for due in &dues {
                    for edu in &edus {
                        if held.len() >= MAX_PENDING_EDUS {
                            held.pop_front();
                        }
                        held.push_back((pos, *due, edu.clone()));
                    }
                }
            }
            d.wake.notify_one();
        }
        Ok(())
    }

    /// Device-list EDUs for the local users' key changes in (since, until] (see
    /// `federation::keys`). Not persisted: a change lost in a crash is found again by the
    /// other server's next resync.
    fn send_device_changes(&self, since: u64, until: u64) {
        let items = match self.rooms.stream.items_between(since, until) {
            Ok(items) => items,
            Err(e) => return tracing::warn!(error = %e, "cannot read device-list changes"),
        };
        for (pos, item) in items {
            if let StreamItem::Presence { user_id } = &item {
                self.send_presence(user_id);
                continue;
            }
            let StreamItem::DeviceList { user_id, device_id, deleted, private } = item else { continue };
            if user_id.server_name() != self.own || private {
                continue;
            }
            let edu = match self.device_change_edu(&user_id, device_id.as_deref(), deleted, pos) {
                Ok(edu) => edu,
                Err(e) => {
                    tracing::warn!(user = %user_id, error = %e, "cannot describe a device change");
                    continue;
                }
            };
            for server in self.servers_sharing_a_room(&user_id) {
                self.queue_edu(&server, edu.clone());
            }
        }
    }

    /// An `m.presence` EDU for a local user's changed presence, to every server sharing a
    /// room with them.
    fn send_presence(&self, user: &ruma::UserId) {
        let Some(edu) = self.presence_edu(user) else { return };
        for server in self.servers_sharing_a_room(user) {
            self.queue_edu(&server, edu.clone());
        }
    }

    /// An `m.presence` EDU with a local user's current presence, when presence crosses
    /// servers and the user has one.
    fn presence_edu(&self, user: &ruma::UserId) -> Option<Value> {
        let presence = self.presence.as_ref()?;
        if user.server_name() != self.own {
            return None;
        }
        let event = presence.event(user).ok()??;
        let mut entry = event["content"].clone();
        entry["user_id"] = json!(user);
        Some(json!({"edu_type": "m.presence", "content": {"push": [entry]}}))
    }

    /// Other servers with a joined member in a room `user` has joined.
    fn servers_sharing_a_room(&self, user: &ruma::UserId) -> BTreeSet<OwnedServerName> {
        let mut servers = BTreeSet::new();
        for (room, _) in self.rooms.rooms_of(user, &[MembershipState::Join]).unwrap_or_default() {
            servers.extend(super::servers_in_room(&self.rooms, &room, &self.own).unwrap_or_default());
        }
        servers
    }

    /// `m.device_list_update` for a device, or `m.signing_key_update` for cross-signing.
    fn device_change_edu(&self, user: &ruma::UserId, device: Option<&str>, deleted: bool, pos: u64) -> Result<Value> {
        let Some(device) = device else {
            let mut content = json!({"user_id": user});
            if let Some(k) = self.keys.cross_signing_key(user, "master")? {
                content["master_key"] = k;
            }
            if let Some(k) = self.keys.cross_signing_key(user, "self_signing")? {
                content["self_signing_key"] = k;
            }
            return Ok(json!({"edu_type": "m.signing_key_update", "content": content}));
        };
        let prev = self.last_device_update.lock().insert(user.to_owned(), stream_id(pos));
        let mut content = json!({
            "user_id": user,
            "device_id": device,
            "stream_id": stream_id(pos),
            "prev_id": prev.into_iter().collect::<Vec<u64>>(),
        });
        if deleted {
            content["deleted"] = json!(true);
        } else if let Some(keys) = self.keys.device_keys(user)?.remove(device) {
            content["keys"] = keys;
        }
        Ok(json!({"edu_type": "m.device_list_update", "content": content}))
    }

    /// The `stream_id` of the last device-list update sent for a local user since start,
    /// which `user/devices` answers with, so that the next update follows on from it.
    pub fn last_device_update(&self, user: &ruma::UserId) -> Option<u64> {
        self.last_device_update.lock().get(user).copied()
    }

    /// Destinations with queued rows or durable EDUs.
    fn queued_destinations(&self) -> Result<BTreeSet<OwnedServerName>> {
        let mut dests = BTreeSet::new();
        FEDERATION_QUEUE.scan_range(&self.store, &KeyRange::default(), Order::Ascending, |(dest, _), _| {
            if let Ok(d) = OwnedServerName::try_from(dest) {
                dests.insert(d);
            }
            true
        })?;
        FEDERATION_EDUS.scan_range(&self.store, &KeyRange::default(), Order::Ascending, |(dest, _), _| {
            if let Ok(d) = OwnedServerName::try_from(dest) {
                dests.insert(d);
            }
            true
        })?;
        Ok(dests)
    }

    /// The next rows of a destination's queue, oldest first.
    fn next_rows(&self, dest: &ServerName) -> Result<Vec<(u64, String)>> {
        let mut rows = Vec::new();
        FEDERATION_QUEUE.scan_prefix(&self.store, dest.as_str(), Order::Ascending, |(_, pos), id| {
            rows.push((pos, id));
            rows.len() < MAX_PDUS_PER_TXN
        })?;
        Ok(rows)
    }

    /// After a long outage a destination gets the rooms' latest events, not the whole
    /// backlog: once its queue holds more than [`MAX_BACKLOG`] rows, only the newest row of
    /// each room is kept. The destination fetches what it lacks before those
    /// (`get_missing_events`, then the state), as after any gap.
    fn compact_backlog(&self, dest: &ServerName) -> Result<()> {
        let mut rows: Vec<(u64, String)> = Vec::new();
        FEDERATION_QUEUE.scan_prefix(&self.store, dest.as_str(), Order::Ascending, |(_, pos), id| {
            rows.push((pos, id));
            rows.len() <= MAX_SCANNED_BACKLOG
        })?;
        if rows.len() <= MAX_BACKLOG {
            return Ok(());
        }
        let mut newest: HashMap<ruma::OwnedRoomId, u64> = HashMap::new();
        let mut room_of = Vec::with_capacity(rows.len());
        for (pos, id) in &rows {
            let room = ruma::OwnedEventId::try_from(id.as_str())
                .ok()
                .and_then(|e| self.rooms.event_meta(&e).ok().flatten())
                .map(|m| m.room_id);
            if let Some(r) = &room {
                let n = newest.entry(r.clone()).or_insert(*pos);
                *n = (*n).max(*pos);
            }
            room_of.push(room);
        }
        let mut batch = Batch::new();
        let mut dropped = 0;
        for ((pos, _), room) in rows.iter().zip(room_of) {
            let keep = room.is_some_and(|r| newest.get(&r) == Some(pos));
            if !keep {
                FEDERATION_QUEUE.delete(&mut batch, (dest.as_str(), *pos));
                dropped += 1;
            }
        }
        self.store.write(batch)?;
        tracing::info!(%dest, dropped, rooms = newest.len(), "long outage: only the rooms' latest events stay queued");
        Ok(())
    }

    /// One destination's delivery loop (see the module doc).
    async fn deliver(&self, dest: OwnedServerName) {
        let d = self.destination(&dest);
        let mut stop = self.stop.subscribe();
        loop {
            if *stop.borrow() {
                return;
            }
            let rows = match self.next_rows(&dest) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(%dest, error = %e, "cannot read the federation queue");
                    Vec::new()
                }
            };
            // Durable EDUs first (removed once the transaction is taken), then the rest.
            let mut durable: Vec<u64> = Vec::new();
            let mut edus: Vec<Value> = Vec::new();
            if let Err(e) =
                FEDERATION_EDUS.scan_prefix(&self.store, dest.as_str(), Order::Ascending, |(_, seq), edu| {
                    durable.push(seq);
                    edus.push(edu);
                    edus.len() < MAX_EDUS_PER_TXN
                })
            {
                tracing::error!(%dest, error = %e, "cannot read the durable EDUs");
            }
            {
                let mut pending = d.edus.lock();
                let n = pending.len().min(MAX_EDUS_PER_TXN - edus.len());
                edus.extend(pending.drain(..n));
            }
            // Introductions whose join is no longer waiting in the queue, once due.
            let next_due = {
                let first_queued = rows.first().map_or(u64::MAX, |(pos, _)| *pos);
                let now = tokio::time::Instant::now();
                let mut held = d.introductions.lock();
                while edus.len() < MAX_EDUS_PER_TXN
                    && held.front().is_some_and(|(pos, due, _)| *pos < first_queued && *due <= now)
                {
                    edus.extend(held.pop_front().map(|(_, _, edu)| edu));
                }
                held.front().map(|(_, due, _)| *due)
            };
            if rows.is_empty() && edus.is_empty() {
                let wait = next_due.unwrap_or_else(|| tokio::time::Instant::now() + MAX_BACKOFF);
                tokio::select! {
                    _ = d.wake.notified() => continue,
                    _ = tokio::time::sleep_until(wait) => continue,
                    _ = stop.changed() => return,
                }
            }
            let mut pdus = Vec::with_capacity(rows.len());
            for (_, id) in &rows {
                let Ok(event_id) = ruma::OwnedEventId::try_from(id.as_str()) else { continue };
                if let Ok(Some(pdu)) = self.rooms.pdu_shared(&event_id) {
                    pdus.push(own_json(&pdu));
                }
            }
            let txn_id = format!("{}-{}", self.boot, self.counter.fetch_add(1, Ordering::Relaxed));
            let body = json!({
                "origin": self.own,
                "origin_server_ts": now_millis(),
                "pdus": pdus,
                "edus": edus,
            });
            // The same transaction until it is taken.
            loop {
                match self.send(&dest, &txn_id, &body).await {
                    Ok(()) => {
                        *d.backoff.lock() = Duration::ZERO;
                        d.last_success_ts.store(now_millis(), Ordering::Relaxed);
                        let mut batch = Batch::new();
                        for (pos, _) in &rows {
                            FEDERATION_QUEUE.delete(&mut batch, (dest.as_str(), *pos));
                        }
                        for seq in &durable {
                            FEDERATION_EDUS.delete(&mut batch, (dest.as_str(), *seq));
                        }
                        if let Err(e) = self.store.write(batch) {
                            tracing::error!(%dest, error = %e, "cannot remove sent events from the queue");
                        }
                        break;
                    }
                    Err(e) => {
                        d.last_failure_ts.store(now_millis(), Ordering::Relaxed);
                        *d.last_error.lock() = Some(e.to_string());
                        let wait = {
                            let mut backoff = d.backoff.lock();
                            *backoff = (*backoff * 2).clamp(FIRST_BACKOFF, MAX_BACKOFF);
                            *backoff
                        };
                        tracing::info!(%dest, error = %e, retry_in_s = wait.as_secs(), "cannot reach a server");
                        if let Err(e) = self.compact_backlog(&dest) {
                            tracing::warn!(%dest, error = %e, "cannot compact the queue");
                        }
                        tokio::select! {
                            _ = tokio::time::sleep(wait) => {}
                            // Woken early: `contacted` reset the backoff, or new work came.
                            _ = d.wake.notified() => {}
                            _ = stop.changed() => return,
                        }
                    }
                }
            }
        }
    }

    async fn send(&self, dest: &ServerName, txn_id: &str, body: &Value) -> std::result::Result<(), String> {
        let path = format!("/_matrix/federation/v1/send/{txn_id}");
        let req = ServerRequest { method: http::Method::PUT, ..ServerRequest::post(&path, body) }
            .limits(SEND_TIMEOUT, 1024 * 1024);
        let answer = self.servers.request(dest, req).await.map_err(|e| e.to_string())?;
        if answer.status.is_success() {
            Ok(())
        } else {
            Err(format!("answered {}", answer.status))
        }
    }
}

#[cfg(test)]
mod tests {
    use ruma::{owned_user_id, RoomVersionId};
    use serde_json::json;

    use super::*;
    use crate::{rooms::append::NewEvent, store::Backend, Config, Services};

    /// A backlog past [`MAX_BACKLOG`] keeps only each room's newest event.
    #[test]
    fn a_long_backlog_keeps_each_rooms_newest_event() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = Config {
            server_name: "sender.test".try_into().expect("server name"),
            database_path: dir.path().join("data"),
            database_backend: Backend::Rocksdb,
            database_fsync: false,
            ..Config::default()
        };
        let s = Services::open(config).expect("open");
        let alice = owned_user_id!("@alice:sender.test");
        let dest: OwnedServerName = "away.test".try_into().expect("name");
        let mut batch = Batch::new();
        let mut newest = Vec::new();
        for room in 0..2 {
            let content = json!({"creator": alice}).as_object().cloned().expect("object");
            let room_id = s.rooms.append_create(&RoomVersionId::V11, &alice, content, None).expect("create").room_id;
            let join = NewEvent::state("m.room.member", alice.as_str(), json!({"membership": "join"}));
            s.rooms.append_local(&room_id, &alice, join, None).expect("join");
            let mut last = None;
            for i in 0..(MAX_BACKLOG / 2 + 10) {
                let body = json!({"body": format!("{room}-{i}")}).as_object().cloned().expect("object");
                let pdu = s
                    .rooms
                    .append_local(&room_id, &alice, NewEvent::message("m.room.message", body), None)
                    .expect("send");
                let pos = s.rooms.event_meta(&pdu.event_id).expect("meta").expect("meta").stream;
                FEDERATION_QUEUE.put(&mut batch, (dest.as_str(), pos), &pdu.event_id.to_string());
                last = Some(pdu.event_id);
            }
            newest.push(last.expect("sent").to_string());
        }
        s.store.write(batch).expect("write");
        s.federation.sender.compact_backlog(&dest).expect("compact");
        let mut left: Vec<String> = Vec::new();
        FEDERATION_QUEUE
            .scan_prefix(&s.store, dest.as_str(), Order::Ascending, |_, id| {
                left.push(id);
                true
            })
            .expect("scan");
        left.sort();
        newest.sort();
        assert_eq!(left, newest);
    }
}
