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
//! Non-event items are recorded in `stream_log` (position → what changed), which is how an
//! incremental sync finds receipts and account data changed since its token.

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc,
};

use parking_lot::Mutex;
use ruma::{OwnedRoomId, OwnedUserId};
use serde::{Deserialize, Serialize};

use crate::{
    error::Result,
    json_value,
    store::{tables, Batch, KeyRange, Order, Store, Table},
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
    },
    /// A to-device message for a device was queued.
    ToDevice {
        user_id: OwnedUserId,
    },
}

json_value!(StreamItem);

pub const STREAM_LOG: Table<u64, StreamItem> = Table::new(tables::STREAM_LOG);

pub struct Stream {
    store: Arc<Store>,
    next: Mutex<u64>,
    /// Highest position written to the database (not necessarily durable yet).
    written: AtomicU64,
    /// Held while syncing; the value is the highest position known durable.
    durable: Mutex<u64>,
    /// Highest position durable, with every position before it: what syncs read up to.
    now: AtomicU64,
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
            next: Mutex::new(last + 1),
            written: AtomicU64::new(last),
            durable: Mutex::new(last),
            now: AtomicU64::new(last),
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
        let mut next = self.next.lock();
        let pos = *next;
        let mut batch = Batch::new();
        let out = fill(pos, &mut batch)?;
        self.store.write_deferred(batch)?;
        *next = pos + 1;
        self.written.store(pos, Ordering::Release);
        Ok((pos, out))
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
        let wait = || -> Result<()> {
            let mut durable = self.durable.lock();
            if *durable >= pos {
                return Ok(());
            }
            let target = self.written();
            self.store.sync()?;
            *durable = target;
            self.now.fetch_max(target, Ordering::AcqRel);
            Ok(())
        };
        let multi_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        if multi_thread {
            tokio::task::block_in_place(wait)
        } else {
            wait()
        }
    }

    /// Non-event items in (since, until], in order.
    pub fn items_between(&self, since: u64, until: u64) -> Result<Vec<(u64, StreamItem)>> {
        let range = KeyRange {
            lower: Some(crate::store::codec::encode_key::<u64>(since.saturating_add(1))),
            upper: Some(crate::store::codec::encode_key::<u64>(until.saturating_add(1))),
        };
        let mut out = Vec::new();
        STREAM_LOG.scan_range(&self.store, &range, Order::Ascending, |k, v| {
            out.push((k, v));
            true
        })?;
        Ok(out)
    }
}
