//! The global stream: one monotonic position for everything a client can sync.
//!
//! Events, receipts and account data each take the next position when they are written,
//! and the write happens under the same lock that hands out positions, so positions reach
//! the database in order. The disk sync happens after that lock is released, as a group
//! commit: whoever syncs first makes every write so far durable, and the others waiting
//! find their position already covered. "Committed up to" ([`Stream::now`]) advances only
//! after a sync, so it is a watermark a sync can read up to without seeing a write that is
//! not yet durable, or missing one still on its way to disk.
//!
//! Inside an HTTP request, an append does not even wait: it records its position in the
//! request ([`with_deferred_durability`]) and leaves the sync to the syncer thread, and the
//! HTTP layer awaits [`Stream::wait_durable`] before answering; the syncs it concerns are
//! woken by whoever advances the watermark past it. No thread is held while a slow disk
//! (an SD card, NFS) syncs. Outside a request (admin commands, tests driving services) an
//! append waits in place.
//!
//! Events are recorded in `event_stream` (position → room and event), non-event items in
//! `stream_log` (position → what changed): that is how an incremental sync finds what
//! changed since its token. The newest stretch of both is also kept in memory
//! ([`Recent`]), filled from the very batches written, so the syncs of clients keeping up
//! (nearly all of them) read it without touching the database.

use std::{
    cell::Cell,
    collections::VecDeque,
    future::Future,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Weak,
    },
    time::{Duration, Instant},
};

use parking_lot::{Condvar, Mutex};
use ruma::{OwnedEventId, OwnedRoomId, OwnedUserId};
use serde::{Deserialize, Serialize};

use crate::{
    error::{Error, Result},
    store::codec::json_value,
    store::{codec::ValueCodec, tables, Batch, KeyRange, Op, Order, Store, Table},
    sync::notifier::Notifier,
};

/// A non-event change on the stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum StreamItem {
    Receipt {
        room_id: OwnedRoomId,
    },
    AccountData {
        user_id: OwnedUserId,
        room_id: Option<OwnedRoomId>,
    },
    Presence {
        user_id: OwnedUserId,
    },
    /// A user's devices or cross-signing keys changed.
    DeviceList {
        user_id: OwnedUserId,
        /// The device whose keys changed (`None`: cross-signing keys, or a remote user's
        /// change as its server announced it).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        device_id: Option<String>,
        /// Whether the device was deleted.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        deleted: bool,
        /// A change only the user's own devices are told of (a new user-signing key, which
        /// no one else ever sees), neither other users nor other servers.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        private: bool,
    },
    /// To-device messages were queued, for this user and perhaps others. It keeps the
    /// position in the log: nothing reads the user, since syncs learn of queued messages
    /// from [`Marks`] and the table, and wake-ups come from the send.
    ToDevice {
        user_id: OwnedUserId,
    },
}

/// An event on the stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StreamEntry {
    pub room_id: OwnedRoomId,
    pub event_id: OwnedEventId,
}

json_value!(StreamItem, StreamEntry);

pub const STREAM_LOG: Table<u64, StreamItem> = Table::new(tables::STREAM_LOG);
pub const EVENT_STREAM: Table<u64, StreamEntry> = Table::new(tables::EVENT_STREAM);

/// How many stream positions [`Recent`] keeps (about 150 bytes each).
const RECENT_POSITIONS: usize = 2048;

/// The newest positions of the stream, as written: events and items after `from`.
///
/// Filled in [`Stream::commit_deferred`] from the batch itself, under the lock that hands
/// out positions and before the position can become durable, so a sync reading up to the
/// watermark finds everything at or below it here, and no writer can forget to record.
struct Recent {
    /// Every position after this one is here (if anything was logged at it).
    from: u64,
    /// Most entries kept ([`RECENT_POSITIONS`]; smaller in tests).
    capacity: usize,
    events: VecDeque<(u64, StreamEntry)>,
    items: VecDeque<(u64, StreamItem)>,
    /// The positions in `events` of each room's events, oldest first: a room's events are
    /// found without walking past every other room's (a first sync in a quiet room behind
    /// a busy one walked the whole memory for each room).
    by_room: std::collections::HashMap<OwnedRoomId, VecDeque<u64>>,
}

/// Where each key (a room, a user) last had some kind of change on the stream, since this
/// process started. A mark is set while the change is written, before its position can
/// become durable, so a sync reading up to the watermark never misses one; what changed
/// before start counts as changed at the start position.
pub struct Marks<K> {
    start: u64,
    last: Mutex<std::collections::HashMap<K, u64>>,
}

impl<K: std::hash::Hash + Eq> Marks<K> {
    pub fn new(start: u64) -> Self {
        Marks { start, last: Mutex::default() }
    }

    /// Records a change of `key` at `pos` (call it inside the commit's `fill`).
    pub fn note(&self, key: &K::Borrowed, pos: u64)
    where
        K: std::borrow::Borrow<K::Borrowed> + MarkKey,
    {
        let mut last = self.last.lock();
        match last.get_mut(key) {
            Some(p) => *p = (*p).max(pos),
            None => {
                last.insert(K::owned(key), pos);
            }
        }
    }

    /// Whether `key` may have changed after position `since`.
    pub fn changed_after(&self, key: &K::Borrowed, since: u64) -> bool
    where
        K: std::borrow::Borrow<K::Borrowed> + MarkKey,
    {
        self.last.lock().get(key).copied().unwrap_or(0).max(self.start) > since
    }
}

/// Keys of [`Marks`], looked up by their borrowed form.
pub trait MarkKey {
    type Borrowed: ?Sized + std::hash::Hash + Eq;
    fn owned(key: &Self::Borrowed) -> Self;
}

impl MarkKey for OwnedRoomId {
    type Borrowed = ruma::RoomId;
    fn owned(key: &ruma::RoomId) -> Self {
        key.to_owned()
    }
}

impl MarkKey for OwnedUserId {
    type Borrowed = ruma::UserId;
    fn owned(key: &ruma::UserId) -> Self {
        key.to_owned()
    }
}

/// What one batch logs on the stream: its event and its item, if any (`None`: unreadable).
type Logged = Option<(Option<StreamEntry>, Option<StreamItem>)>;

impl Recent {
    /// Reads what `batch` logs at its position (one value per key: a later put at the same
    /// position replaces an earlier one, as in the database).
    fn logged(batch: &Batch) -> Logged {
        let (mut event, mut item) = (None, None);
        for op in &batch.ops {
            let Op::Put { table, value, .. } = op else { continue };
            match *table {
                tables::EVENT_STREAM => event = Some(StreamEntry::decode_value(value).ok()?),
                tables::STREAM_LOG => item = Some(StreamItem::decode_value(value).ok()?),
                _ => {}
            }
        }
        Some((event, item))
    }

    /// Forgets everything up to `pos`: memory answers only after it.
    fn reset(&mut self, pos: u64) {
        self.events.clear();
        self.items.clear();
        self.by_room.clear();
        self.from = pos;
    }

    /// The event ids at `positions`, which are positions of `events`.
    fn ids_at(&self, positions: impl Iterator<Item = u64>) -> Vec<(u64, OwnedEventId)> {
        positions
            .filter_map(|pos| {
                let at = self.events.binary_search_by_key(&pos, |(p, _)| *p).ok()?;
                Some((pos, self.events[at].1.event_id.clone()))
            })
            .collect()
    }

    fn record(&mut self, pos: u64, logged: Logged) {
        let Some((event, item)) = logged else {
            // Cannot happen (the values were just encoded); if it did, stop answering
            // from memory rather than miss something.
            return self.reset(pos);
        };
        if let Some(e) = event {
            match self.by_room.get_mut(&e.room_id) {
                Some(positions) => positions.push_back(pos),
                None => {
                    self.by_room.insert(e.room_id.clone(), VecDeque::from([pos]));
                }
            }
            self.events.push_back((pos, e));
        }
        if let Some(i) = item {
            self.items.push_back((pos, i));
        }
        while self.events.len() + self.items.len() > self.capacity {
            // Drop the oldest position of either kind; coverage starts after it.
            let oldest = match (self.events.front(), self.items.front()) {
                (Some((e, _)), Some((i, _))) => (*e).min(*i),
                (Some((e, _)), None) => *e,
                (None, Some((i, _))) => *i,
                (None, None) => break,
            };
            while self.events.front().is_some_and(|(p, _)| *p <= oldest) {
                let Some((pos, e)) = self.events.pop_front() else { break };
                if let Some(positions) = self.by_room.get_mut(&e.room_id) {
                    while positions.front().is_some_and(|p| *p <= pos) {
                        positions.pop_front();
                    }
                    if positions.is_empty() {
                        self.by_room.remove(&e.room_id);
                    }
                }
            }
            while self.items.front().is_some_and(|(p, _)| *p <= oldest) {
                self.items.pop_front();
            }
            self.from = oldest;
        }
    }

    /// Entries in (since, until] if memory covers them.
    fn between<T: Clone>(&self, list: &VecDeque<(u64, T)>, since: u64, until: u64) -> Option<Vec<(u64, T)>> {
        if since < self.from {
            return None;
        }
        let start = list.partition_point(|(p, _)| *p <= since);
        Some(list.range(start..).take_while(|(p, _)| *p <= until).cloned().collect())
    }
}

tokio::task_local! {
    /// Highest stream position the current request wrote and has not yet seen durable.
    static REQUEST_WRITES: Cell<u64>;
}

/// Runs a request's handler so that its appends do not wait for the disk; returns the
/// highest position it wrote (0 if none), which must be durable before it is answered
/// ([`Stream::wait_durable`]).
pub async fn with_deferred_durability<F: Future>(handler: F) -> (F::Output, u64) {
    REQUEST_WRITES
        .scope(Cell::new(0), async {
            let out = handler.await;
            (out, REQUEST_WRITES.with(Cell::get))
        })
        .await
}

/// Least time between the starts of two syncs of the syncer thread while writes arrive
/// side by side, several requests waiting for each sync ([`Stream::start_syncer`]). A
/// disk sync costs the kernel about 0.1 ms of CPU whatever it covers. With 21 clients
/// sending at once (`bench/send_cpu.py`) there were 0.47–0.57 syncs per message without
/// the wait and 0.18 with it: 0.89× the CPU per message, and the send latency no worse
/// (more requests share each wait). A lone writer never waits.
const GATHER: Duration = Duration::from_millis(2);

/// [`GATHER`], or `HEARTH_BENCH_SYNC_GATHER_US` microseconds (for the benchmarks that
/// weigh it; not a setting).
fn gather_spacing() -> Duration {
    std::env::var("HEARTH_BENCH_SYNC_GATHER_US").ok().and_then(|v| v.parse().ok()).map_or(GATHER, Duration::from_micros)
}

/// Work to run once a position is durable (waking the syncs an event concerns).
type AfterDurable = (u64, Box<dyn FnOnce() + Send>);

/// Wakes the syncer thread.
#[derive(Default)]
struct Kick {
    pending: Mutex<bool>,
    cv: Condvar,
    /// Set by tests to stand for a syncer thread that is gone or stuck.
    paused: std::sync::atomic::AtomicBool,
}

impl Kick {
    fn kick(&self) {
        *self.pending.lock() = true;
        self.cv.notify_one();
    }
}

pub struct Stream {
    store: Arc<Store>,
    /// (highest durable position, sync failures so far), for requests awaiting durability.
    durable_tx: tokio::sync::watch::Sender<(u64, u64)>,
    after_durable: Mutex<Vec<AfterDurable>>,
    kick: Arc<Kick>,
    next: Mutex<u64>,
    /// Highest position written to the database (not necessarily durable yet).
    written: AtomicU64,
    /// Held while syncing; the value is the highest position known durable.
    durable: Mutex<u64>,
    /// Highest position durable, with every position before it: what syncs read up to.
    now: AtomicU64,
    /// Syncs made so far (each covers every write before it: the group commit's groups).
    syncs: AtomicU64,
    /// Requests waiting in [`Stream::wait_durable`] right now: the syncer's sign that
    /// writes arrive side by side.
    waiters: std::sync::atomic::AtomicUsize,
    recent: Mutex<Recent>,
    pub notifier: Arc<Notifier>,
}

impl Stream {
    pub fn open(store: Arc<Store>, notifier: Arc<Notifier>) -> Result<Self> {
        let mut last = 0;
        for name in [tables::EVENT_STREAM, tables::STREAM_LOG] {
            let t: Table<u64, Vec<u8>> = Table::new(name);
            t.scan_range(&store, &KeyRange::default(), Order::Descending, |k, _| {
                last = last.max(k);
                false
            })?;
        }
        Ok(Stream {
            store,
            durable_tx: tokio::sync::watch::Sender::new((last, 0)),
            after_durable: Mutex::new(Vec::new()),
            kick: Arc::new(Kick::default()),
            next: Mutex::new(last + 1),
            written: AtomicU64::new(last),
            durable: Mutex::new(last),
            now: AtomicU64::new(last),
            syncs: AtomicU64::new(0),
            waiters: Default::default(),
            recent: Mutex::new(Recent {
                from: last,
                capacity: RECENT_POSITIONS,
                events: VecDeque::new(),
                items: VecDeque::new(),
                by_room: Default::default(),
            }),
            notifier,
        })
    }

    /// The newest committed position.
    pub fn now(&self) -> u64 {
        self.now.load(Ordering::Acquire)
    }

    /// Takes the next position, lets `fill` add the changes written at it, writes them in
    /// one batch before anyone else gets a position, and returns once they are durable.
    pub fn commit<T>(&self, fill: impl FnOnce(u64, &mut Batch) -> Result<T>) -> Result<(u64, T)> {
        let (pos, out) = self.commit_deferred(fill)?;
        self.make_durable(pos)?;
        Ok((pos, out))
    }

    /// [`Stream::commit`] without the wait for the disk: for callers holding a lock of
    /// their own, who must call [`Stream::make_durable`] after releasing it and before
    /// acknowledging or announcing the write.
    pub fn commit_deferred<T>(&self, fill: impl FnOnce(u64, &mut Batch) -> Result<T>) -> Result<(u64, T)> {
        self.commit_deferred_then(fill, |_, _| {})
    }

    /// [`Stream::commit_deferred`], running `written` once the batch is in the database
    /// and before the position can become durable, so before any sync may read up to it:
    /// the place to drop what memory keeps of the data just changed.
    pub fn commit_deferred_then<T>(
        &self,
        fill: impl FnOnce(u64, &mut Batch) -> Result<T>,
        written: impl FnOnce(u64, &T),
    ) -> Result<(u64, T)> {
        let mut next = self.next.lock();
        let pos = *next;
        let mut batch = Batch::new();
        let out = fill(pos, &mut batch)?;
        let logged = Recent::logged(&batch);
        if let Err(e) = self.store.write_deferred(batch) {
            // Whether it reached the database is unknown: memory no longer says.
            self.recent.lock().reset(pos);
            return Err(e.into());
        }
        // Recorded before `written` moves, so before any sync can read up to `pos`.
        self.recent.lock().record(pos, logged);
        written(pos, &out);
        *next = pos + 1;
        self.written.store(pos, Ordering::Release);
        Ok((pos, out))
    }

    /// Syncs made so far by [`Stream::make_durable`] and the syncer.
    pub fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }

    /// The highest position written so far (durable or not).
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Acquire)
    }

    /// Returns once position `pos` is durable, syncing the database if nobody else has.
    ///
    /// Waiting is blocking (a mutex held across an fsync); inside the multi-threaded
    /// runtime it is announced with `block_in_place`, so other requests keep running and
    /// many writers can wait on, and be covered by, one sync.
    pub fn make_durable(&self, pos: u64) -> Result<()> {
        if self.now() >= pos {
            return Ok(());
        }
        let multi_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        if multi_thread {
            tokio::task::block_in_place(|| self.sync_up_to(pos))
        } else {
            self.sync_up_to(pos)
        }
    }

    /// Makes `pos` durable unless someone already has: one fsync covers every write so
    /// far. Then advances the watermark and runs what waited for it.
    fn sync_up_to(&self, pos: u64) -> Result<()> {
        let mut durable = self.durable.lock();
        if *durable >= pos {
            return Ok(());
        }
        let target = self.written();
        if let Err(e) = self.store.sync() {
            self.durable_tx.send_modify(|(_, failures)| *failures += 1);
            return Err(e.into());
        }
        *durable = target;
        self.syncs.fetch_add(1, Ordering::Relaxed);
        self.now.fetch_max(target, Ordering::AcqRel);
        drop(durable);
        self.run_after_durable();
        self.durable_tx.send_modify(|(d, _)| *d = (*d).max(target));
        Ok(())
    }

    fn run_after_durable(&self) {
        let now = self.now();
        let ready: Vec<AfterDurable> = {
            let mut waiting = self.after_durable.lock();
            let (ready, rest) = std::mem::take(&mut *waiting).into_iter().partition(|(pos, _)| *pos <= now);
            *waiting = rest;
            ready
        };
        for (_, then) in ready {
            then();
        }
    }

    /// Runs `then` once `pos` is durable. Inside a request run by
    /// [`with_deferred_durability`] this returns at once (the request is answered only
    /// after [`Stream::wait_durable`]); elsewhere it syncs first.
    pub fn after_durable(&self, pos: u64, then: impl FnOnce() + Send + 'static) -> Result<()> {
        if REQUEST_WRITES.try_with(|w| w.set(w.get().max(pos))).is_err() {
            self.make_durable(pos)?;
            then();
            return Ok(());
        }
        self.after_durable.lock().push((pos, Box::new(then)));
        // The watermark may have passed `pos` before `then` was queued.
        if self.now() >= pos {
            self.run_after_durable();
        }
        self.kick.kick();
        Ok(())
    }

    /// Records that the current request must not be answered before `pos` is durable
    /// (outside a request: waits for it here).
    pub fn require_durable(&self, pos: u64) -> Result<()> {
        self.after_durable(pos, || ())
    }

    /// The durable watermark as it moves (with the count of failed syncs): what background
    /// followers of the stream (the federation sender) wait on.
    pub fn watch_durable(&self) -> tokio::sync::watch::Receiver<(u64, u64)> {
        self.durable_tx.subscribe()
    }

    /// Waits, without holding a thread, until `pos` is durable; the syncer thread (started
    /// by [`Stream::start_syncer`]) does the sync. Should that thread not have done it
    /// within half a second (gone, or stuck behind a very slow disk), the sync is also
    /// started from tokio's blocking pool; the two never sync twice for one position. An
    /// error if a sync failed meanwhile.
    pub async fn wait_durable(self: &Arc<Self>, pos: u64) -> Result<()> {
        struct Waiting<'a>(&'a std::sync::atomic::AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::Relaxed);
            }
        }
        self.waiters.fetch_add(1, Ordering::Relaxed);
        let _waiting = Waiting(&self.waiters);
        let mut rx = self.durable_tx.subscribe();
        let failures_before = rx.borrow().1;
        self.kick.kick();
        loop {
            let (durable, failures) = *rx.borrow_and_update();
            if durable >= pos || self.now() >= pos {
                return Ok(());
            }
            if failures != failures_before {
                return Err(Error::internal("the database could not be synced to disk"));
            }
            match tokio::time::timeout(Duration::from_millis(500), rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(Error::internal("shutting down")),
                Err(_) => {
                    let stream = self.clone();
                    let synced = tokio::task::spawn_blocking(move || stream.sync_up_to(pos)).await;
                    match synced {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => return Err(e),
                        Err(e) => return Err(Error::internal(format!("syncing the database failed: {e}"))),
                    }
                }
            }
        }
    }

    /// Keeps every disk sync (and so every acknowledgement of a write) waiting while the
    /// guard lives. For tests that check nothing is answered before it is durable.
    #[doc(hidden)]
    pub fn hold_syncs(&self) -> parking_lot::MutexGuard<'_, u64> {
        self.durable.lock()
    }

    /// Makes the syncer thread ignore its work, as if it were gone: for tests of the
    /// fallback in [`Stream::wait_durable`].
    #[doc(hidden)]
    pub fn pause_syncer(&self, paused: bool) {
        self.kick.paused.store(paused, Ordering::Relaxed);
    }

    /// Starts the thread that syncs deferred writes when kicked. It ends once the stream
    /// is dropped.
    pub fn start_syncer(self: &Arc<Self>) -> std::io::Result<()> {
        let stream: Weak<Stream> = Arc::downgrade(self);
        let kick = self.kick.clone();
        let gather = gather_spacing();
        // When the last sync started, and whether several requests waited for it.
        let mut last: Option<(Instant, bool)> = None;
        std::thread::Builder::new().name("hearth-syncer".into()).spawn(move || loop {
            {
                let mut pending = kick.pending.lock();
                if !*pending {
                    kick.cv.wait_for(&mut pending, Duration::from_millis(200));
                }
                *pending = false;
            }
            let Some(stream) = stream.upgrade() else { return };
            if kick.paused.load(Ordering::Relaxed) {
                continue;
            }
            if stream.written() <= stream.now() {
                continue;
            }
            // Writes arriving side by side (several requests waited for the last sync):
            // wait until `gather` after the last sync began, so that one sync covers more
            // of them. A lone writer (even one request writing several positions, such as
            // a room's creation), or the first write after a quiet spell, is synced at once.
            if let Some((began, several)) = last {
                let until = began + gather;
                if several && !stream.store.sync_is_free() {
                    std::thread::sleep(until.saturating_duration_since(Instant::now()));
                }
            }
            let written = stream.written();
            last = Some((Instant::now(), stream.waiters.load(Ordering::Relaxed) > 1));
            if let Err(e) = stream.sync_up_to(written) {
                tracing::error!(error = %e, "syncing the database failed; writes are not acknowledged");
            }
        })?;
        Ok(())
    }

    /// Events in (since, until], in order.
    pub fn events_between(&self, since: u64, until: u64) -> Result<Vec<(u64, StreamEntry)>> {
        self.between(&EVENT_STREAM, |r| &r.events, since, until)
    }

    /// Positions and ids of `room`'s events in (since, until], oldest first, when memory
    /// covers them (`None`: read the room's timeline instead).
    pub fn room_events(&self, room: &ruma::RoomId, since: u64, until: u64) -> Option<Vec<(u64, OwnedEventId)>> {
        let recent = self.recent.lock();
        if since < recent.from {
            return None;
        }
        let Some(positions) = recent.by_room.get(room) else { return Some(Vec::new()) };
        let start = positions.partition_point(|p| *p <= since);
        Some(recent.ids_at(positions.range(start..).copied().take_while(|p| *p <= until)))
    }

    /// The newest `count` events of `room` at or before `until`, oldest first, when memory
    /// holds that many of them (`None`: it holds fewer, and older ones may be on disk).
    pub fn room_newest(&self, room: &ruma::RoomId, until: u64, count: usize) -> Option<Vec<(u64, OwnedEventId)>> {
        let recent = self.recent.lock();
        let positions = match recent.by_room.get(room) {
            Some(positions) => positions,
            None if count == 0 => return Some(Vec::new()),
            None => return None,
        };
        let end = positions.partition_point(|p| *p <= until);
        let start = end.checked_sub(count)?;
        Some(recent.ids_at(positions.range(start..end).copied()))
    }

    /// Non-event items in (since, until], in order.
    pub fn items_between(&self, since: u64, until: u64) -> Result<Vec<(u64, StreamItem)>> {
        self.between(&STREAM_LOG, |r| &r.items, since, until)
    }

    /// Entries of `table` in (since, until]: from memory when it covers them.
    fn between<V: ValueCodec + Clone>(
        &self,
        table: &Table<u64, V>,
        kept: fn(&Recent) -> &VecDeque<(u64, V)>,
        since: u64,
        until: u64,
    ) -> Result<Vec<(u64, V)>> {
        {
            let recent = self.recent.lock();
            if let Some(found) = recent.between(kept(&recent), since, until) {
                return Ok(found);
            }
        }
        let range = KeyRange {
            lower: Some(crate::store::codec::encode_key::<u64>(since.saturating_add(1))),
            upper: Some(crate::store::codec::encode_key::<u64>(until.saturating_add(1))),
        };
        let mut out = Vec::new();
        table.scan_range(&self.store, &range, Order::Ascending, |k, v| {
            out.push((k, v));
            true
        })?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use ruma::{owned_event_id, owned_room_id, owned_user_id};

    use super::*;
    use crate::store::{Backend, Durability};

    fn from_disk<V: ValueCodec>(store: &Store, table: &Table<u64, V>, since: u64, until: u64) -> Vec<(u64, V)> {
        let range = KeyRange {
            lower: Some(crate::store::codec::encode_key::<u64>(since + 1)),
            upper: Some(crate::store::codec::encode_key::<u64>(until + 1)),
        };
        let mut out = Vec::new();
        table
            .scan_range(store, &range, Order::Ascending, |k, v| {
                out.push((k, v));
                true
            })
            .expect("scan");
        out
    }

    fn json<T: Serialize>(list: &[(u64, T)]) -> String {
        serde_json::to_string(list).expect("serialise")
    }

    /// Memory answers exactly what the database holds, and gives way to it for tokens
    /// older than what it keeps, also after a restart.
    #[test]
    fn recent_stretch_matches_the_database() {
        for backend in [Backend::Rocksdb, Backend::Sqlite] {
            let dir = tempfile::tempdir().expect("tempdir");
            let store = Arc::new(Store::open(dir.path(), backend, Durability::Process, 8).expect("open"));
            let stream = Stream::open(store.clone(), Arc::new(Notifier::default())).expect("stream");
            stream.recent.lock().capacity = 5;
            let room = owned_room_id!("!r:example.org");
            let user = owned_user_id!("@u:example.org");
            for i in 0..24u64 {
                stream
                    .commit(|pos, batch| {
                        match i % 4 {
                            0 | 1 => EVENT_STREAM.put(
                                batch,
                                pos,
                                &StreamEntry { room_id: room.clone(), event_id: owned_event_id!("$e") },
                            ),
                            2 => {
                                // Two puts at one position: the later one is what counts.
                                STREAM_LOG.put(batch, pos, &StreamItem::Presence { user_id: user.clone() });
                                STREAM_LOG.put(batch, pos, &StreamItem::Receipt { room_id: room.clone() });
                            }
                            _ => {} // a position that logs nothing
                        }
                        Ok(())
                    })
                    .expect("commit");
            }
            let now = stream.now();
            assert_eq!(now, 24);
            {
                let recent = stream.recent.lock();
                assert!(recent.from > 10, "old positions were let go ({})", recent.from);
                let kept = recent.between(&recent.events, recent.from, now).expect("memory covers its own stretch");
                assert!(!kept.is_empty() && kept.iter().all(|(p, _)| *p > recent.from));
                assert!(recent.between(&recent.items, recent.from - 1, now).is_none());
            }
            for reopened in [false, true] {
                let stream = match reopened {
                    false => &stream,
                    true => &Stream::open(store.clone(), Arc::new(Notifier::default())).expect("reopen"),
                };
                for since in 0..=now {
                    for until in [since, since + 2, now] {
                        let events = stream.events_between(since, until).expect("events");
                        assert_eq!(json(&events), json(&from_disk(&store, &EVENT_STREAM, since, until)));
                        let items = stream.items_between(since, until).expect("items");
                        assert_eq!(json(&items), json(&from_disk(&store, &STREAM_LOG, since, until)));
                    }
                }
            }
        }
    }

    /// A room's newest events come from memory only when it holds as many as asked,
    /// and are then the room's newest on disk.
    #[test]
    fn newest_events_of_a_room() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(Store::open(dir.path(), Backend::Rocksdb, Durability::Process, 8).expect("open"));
        let stream = Stream::open(store.clone(), Arc::new(Notifier::default())).expect("stream");
        stream.recent.lock().capacity = 6;
        let rooms = [owned_room_id!("!a:example.org"), owned_room_id!("!b:example.org")];
        for i in 0..12u64 {
            // Room a at 1, 3, 4, 6, 7, 9, 10, 12; room b at the others.
            let room = rooms[usize::from(i % 3 == 1)].clone();
            let event_id = OwnedEventId::try_from(format!("$e{i}")).expect("id");
            stream
                .commit(|pos, batch| {
                    EVENT_STREAM.put(batch, pos, &StreamEntry { room_id: room.clone(), event_id: event_id.clone() });
                    Ok(())
                })
                .expect("commit");
        }
        let on_disk = |room: &ruma::RoomId, until: u64, count: usize| {
            let all = from_disk(&store, &EVENT_STREAM, 0, until);
            let mine: Vec<(u64, OwnedEventId)> =
                all.into_iter().filter(|(_, e)| e.room_id == room).map(|(p, e)| (p, e.event_id)).collect();
            mine[mine.len().saturating_sub(count)..].to_vec()
        };
        let now = stream.now();
        for room in &rooms {
            for until in [now, now - 1, now - 3] {
                for count in 1..=3 {
                    if let Some(got) = stream.room_newest(room, until, count) {
                        assert_eq!(got, on_disk(room, until, count), "{room} until {until}, {count}");
                    }
                }
            }
        }
        // A room's events in a span, from the per-room index, are the disk's.
        let from = stream.recent.lock().from;
        for room in &rooms {
            for since in 0..=now {
                for until in [since, since + 2, now] {
                    let got = stream.room_events(room, since, until);
                    assert_eq!(got.is_some(), since >= from, "{room} ({since}, {until}]");
                    let want: Vec<(u64, OwnedEventId)> = from_disk(&store, &EVENT_STREAM, since, until)
                        .into_iter()
                        .filter(|(_, e)| e.room_id == *room)
                        .map(|(p, e)| (p, e.event_id))
                        .collect();
                    if let Some(got) = got {
                        assert_eq!(got, want, "{room} ({since}, {until}]");
                    }
                }
            }
        }
        assert!(stream.room_newest(&rooms[0], now, 2).is_some(), "memory holds the newest two of room a");
        assert_eq!(stream.room_newest(&rooms[0], now, 6), None, "memory holds six positions, not six of room a");
        assert_eq!(stream.room_newest(&rooms[1], now, 3), None);
    }
}
