//! Threads and bundled aggregations (spec: "Threading", "Aggregations of child events").
//!
//! Every event with an `m.thread` relation marks its root in [`THREAD_ROOTS`] with the
//! stream position of the newest reply, so `/threads` lists a room's threads newest
//! activity first without reading its timeline. A database from before this index is
//! indexed once at start-up from the relations index ([`Rooms::index_threads`]).
//!
//! Bundled aggregations are what a served event carries in `unsigned.m.relations`: for a
//! thread root, `m.thread` (the latest reply, the number of replies, whether the viewer
//! took part); for an edited event, `m.replace` (the newest edit by the original sender);
//! for a referenced one, `m.reference` (the ids of the events referencing it). Redacted
//! relating events count for nothing. The targets of such relations are noted in
//! [`BUNDLED_TARGETS`], so that serving any other event costs a point lookup, not a seek.

use ruma::{EventId, OwnedEventId, OwnedUserId, RoomId, UserId};
use serde_json::{json, Map, Value};

use super::{pdu::Pdu, timeline::token, Rooms, RELATIONS};
use crate::{
    error::Result,
    store::{tables, Batch, Order, Store, Table},
};

/// (room id, root event id) → the stream position of the thread's newest event.
pub const THREAD_ROOTS: Table<(String, String), u64> = Table::new(tables::THREAD_ROOTS);

/// Most threads one `/threads` page lists.
pub const MAX_THREADS: usize = 100;
/// Most relating events read for one event's aggregations: past it, counts stop there.
const MAX_AGGREGATED: usize = 10_000;
/// Most edits or references read to bundle one event's.
const MAX_BUNDLED: usize = 50;

/// The `META` key that says the thread index was built.
const INDEXED: &str = "thread_roots_indexed";

/// A thread root and the position of its newest event.
pub struct ThreadListing {
    pub roots: Vec<OwnedEventId>,
    pub next_batch: Option<String>,
}

/// Notes an `m.thread` reply at `pos` to `root` (in the append's batch).
pub fn note_reply(batch: &mut Batch, room: &RoomId, root: &str, pos: u64) {
    THREAD_ROOTS.put(batch, (room.as_str(), root), &pos);
}

/// Events that an edit, a thread reply or a reference points at (target id → nothing).
/// [`Rooms::bundled_aggregations`] looks here before it reads the relations index, so an
/// event nothing is bundled with (nearly every one) costs a point lookup, which the
/// engines' bloom filters answer cheaply, instead of a seek. Reactions are not bundled
/// and not noted. A marker may outlive its relations (a redacted edit): the seek then
/// finds nothing, as it would without the marker.
pub const BUNDLED_TARGETS: Table<String, ()> = Table::new(tables::BUNDLED_TARGETS);
/// `META` key: the bundled targets of relations from before the table are noted.
const BUNDLED_INDEXED: &str = "bundled_targets_indexed";

/// Whether a relation of this type is bundled with its target.
pub fn is_bundled(rel_type: &str) -> bool {
    matches!(rel_type, "m.thread" | "m.replace" | "m.reference")
}

/// Notes that `target` has a bundled relation (in the append's batch).
pub fn note_bundled(batch: &mut Batch, target: &str) {
    BUNDLED_TARGETS.put(batch, target, &());
}

impl Rooms {
    /// Builds the thread index from the relations index, once per database.
    pub(super) fn index_threads(store: &Store) -> Result<()> {
        if tables::META.get(store, INDEXED)?.is_some() {
            return Ok(());
        }
        let mut batch = Batch::new();
        let mut roots = 0usize;
        let mut latest: std::collections::HashMap<String, u64> = Default::default();
        RELATIONS.scan_all(store, |(target, pos), rel| {
            if rel.rel_type == "m.thread" {
                let entry = latest.entry(target).or_insert(pos);
                *entry = (*entry).max(pos);
            }
            true
        })?;
        for (root, pos) in latest {
            if let Some(meta) = super::EVENT_META.get(store, &root)? {
                THREAD_ROOTS.put(&mut batch, (meta.room_id.as_str(), root.as_str()), &pos);
                roots += 1;
            }
        }
        tables::META.put(&mut batch, INDEXED, &Vec::new());
        store.write(batch)?;
        if roots > 0 {
            tracing::info!(threads = roots, "indexed the threads of earlier messages");
        }
        Ok(())
    }

    /// Notes the bundled targets of the relations index, once per database (those from
    /// before [`BUNDLED_TARGETS`] was kept).
    pub(super) fn index_bundled_targets(store: &Store) -> Result<()> {
        if tables::META.get(store, BUNDLED_INDEXED)?.is_some() {
            return Ok(());
        }
        let mut batch = Batch::new();
        let mut targets = 0usize;
        RELATIONS.scan_all(store, |(target, _), rel| {
            if is_bundled(&rel.rel_type) {
                note_bundled(&mut batch, &target);
                targets += 1;
            }
            true
        })?;
        tables::META.put(&mut batch, BUNDLED_INDEXED, &Vec::new());
        store.write(batch)?;
        if targets > 0 {
            tracing::info!(relations = targets, "noted the edited, threaded and referenced events of earlier messages");
        }
        Ok(())
    }

    /// A room's threads, newest activity first, as `viewer` may list them: all, or only
    /// those the viewer started or replied in. `from` is the previous page's `next_batch`.
    pub fn threads(
        &self,
        room: &RoomId,
        viewer: &UserId,
        participated_only: bool,
        from: Option<u64>,
        limit: usize,
    ) -> Result<ThreadListing> {
        let until = self.require_visible(room, viewer)?;
        let mut all: Vec<(u64, String)> = THREAD_ROOTS
            .collect_prefix(&self.store, room.as_str())?
            .into_iter()
            .map(|(root, pos)| (pos, root))
            .filter(|(pos, _)| *pos <= until && from.is_none_or(|f| *pos < f))
            .collect();
        all.sort_by_key(|(pos, _)| std::cmp::Reverse(*pos));
        let mut roots = Vec::new();
        let mut next_batch = None;
        for (pos, root) in all {
            let Ok(root) = OwnedEventId::try_from(root) else { continue };
            let Some(pdu) = self.pdu_shared(&root)? else { continue };
            if self.event_meta(&root)?.is_some_and(|m| m.redacted_by.is_some()) {
                continue;
            }
            if participated_only && pdu.sender != viewer && !self.thread_summary(&root, Some(viewer))?.2 {
                continue;
            }
            if roots.len() == limit {
                next_batch = Some(token(pos + 1));
                break;
            }
            roots.push(root);
        }
        Ok(ThreadListing { roots, next_batch })
    }

    /// (latest reply, number of replies, whether `viewer` replied) of a thread.
    fn thread_summary(&self, root: &EventId, viewer: Option<&UserId>) -> Result<(Option<Pdu>, u64, bool)> {
        let mut count = 0u64;
        let mut latest = None;
        let mut participated = false;
        for (_, id, sender) in self.relating(root, "m.thread")? {
            count += 1;
            if viewer.is_some_and(|v| sender.as_deref() == Some(v)) {
                participated = true;
            }
            latest = Some(id);
        }
        let latest = match latest {
            Some(id) => self.pdu(&id)?,
            None => None,
        };
        Ok((latest, count, participated))
    }

    /// The events relating to `target` with `rel_type` that are not redacted, oldest
    /// first: (position, id, sender).
    fn relating(&self, target: &EventId, rel_type: &str) -> Result<Vec<(u64, OwnedEventId, Option<OwnedUserId>)>> {
        let mut found = Vec::new();
        let mut read = 0usize;
        RELATIONS.scan_prefix(&self.store, target.as_str(), Order::Ascending, |(_, pos), rel| {
            read += 1;
            if rel.rel_type == rel_type {
                found.push((pos, rel.event_id, rel.sender));
            }
            read < MAX_AGGREGATED
        })?;
        let mut out = Vec::with_capacity(found.len());
        for (pos, id, sender) in found {
            let Some(meta) = self.event_meta(&id)? else { continue };
            if meta.redacted_by.is_some() || meta.soft_failed {
                continue;
            }
            let sender = match sender {
                Some(s) => Some(s),
                // Rows written before senders were kept: read the event.
                None => self.pdu_shared(&id)?.map(|p| p.sender.clone()),
            };
            out.push((pos, id, sender));
        }
        Ok(out)
    }

    /// `unsigned.m.relations` for `pdu` as `viewer` sees it (`None` when nothing relates
    /// to it). `serve` renders the bundled events in client format.
    pub fn bundled_aggregations(
        &self,
        pdu: &Pdu,
        viewer: Option<&UserId>,
        serve: &dyn Fn(&Pdu) -> Value,
    ) -> Result<Option<Map<String, Value>>> {
        if !BUNDLED_TARGETS.contains(&self.store, pdu.event_id.as_str())? {
            return Ok(None);
        }
        let mut has = [false; 3];
        let mut read = 0usize;
        RELATIONS.scan_prefix(&self.store, pdu.event_id.as_str(), Order::Ascending, |_, rel| {
            read += 1;
            match rel.rel_type.as_str() {
                "m.thread" => has[0] = true,
                "m.replace" => has[1] = true,
                "m.reference" => has[2] = true,
                _ => {}
            }
            read < MAX_AGGREGATED && !has.iter().all(|h| *h)
        })?;
        if !has.iter().any(|h| *h) {
            return Ok(None);
        }
        let mut out = Map::new();
        if has[0] {
            let (latest, count, replied) = self.thread_summary(&pdu.event_id, viewer)?;
            if let Some(latest) = latest {
                let participated = replied || viewer.is_some_and(|v| pdu.sender == v);
                out.insert(
                    "m.thread".into(),
                    json!({"latest_event": serve(&latest), "count": count, "current_user_participated": participated}),
                );
            }
        }
        if has[1] {
            // The newest edit by the original sender, of the same event type (spec:
            // "Event replacements"); newest by origin_server_ts, then by event id.
            let mut newest: Option<Pdu> = None;
            for (_, id, sender) in self.relating(&pdu.event_id, "m.replace")?.into_iter().rev().take(MAX_BUNDLED) {
                if sender.as_deref() != Some(&*pdu.sender) {
                    continue;
                }
                let Some(edit) = self.pdu(&id)? else { continue };
                if edit.kind != pdu.kind || edit.state_key.is_some() {
                    continue;
                }
                let newer = newest.as_ref().is_none_or(|n| {
                    (edit.origin_server_ts, edit.event_id.as_str()) > (n.origin_server_ts, n.event_id.as_str())
                });
                if newer {
                    newest = Some(edit);
                }
            }
            if let Some(edit) = newest {
                out.insert("m.replace".into(), serve(&edit));
            }
        }
        if has[2] {
            let chunk: Vec<Value> = self
                .relating(&pdu.event_id, "m.reference")?
                .into_iter()
                .take(MAX_BUNDLED)
                .map(|(_, id, _)| json!({"event_id": id}))
                .collect();
            if !chunk.is_empty() {
                out.insert("m.reference".into(), json!({"chunk": chunk}));
            }
        }
        Ok((!out.is_empty()).then_some(out))
    }
}
