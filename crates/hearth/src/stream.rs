//! The global stream: one monotonic position for everything a client can sync.
//!
//! Events, receipts and account data each take the next position when they are written,
//! and the write happens under the same lock that hands out positions. So positions are
//! committed in order, and "committed up to" ([`Stream::now`]) is a watermark a sync can
//! read up to without missing a write that is still on its way to disk.
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
        Ok(Stream { store, next: Mutex::new(last + 1), now: AtomicU64::new(last), notifier })
    }

    /// The newest committed position.
    pub fn now(&self) -> u64 {
        self.now.load(Ordering::Acquire)
    }

    /// Takes the next position, lets `fill` add the changes written at it, and commits
    /// them in one batch before anyone else gets a position.
    pub fn commit<T>(&self, fill: impl FnOnce(u64, &mut Batch) -> Result<T>) -> Result<(u64, T)> {
        let mut next = self.next.lock();
        let pos = *next;
        let mut batch = Batch::new();
        let out = fill(pos, &mut batch)?;
        self.store.write(batch)?;
        *next = pos + 1;
        self.now.store(pos, Ordering::Release);
        Ok((pos, out))
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
