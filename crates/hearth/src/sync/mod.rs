//! `/sync` assembly and the notifier that wakes it.
//!
//! A since-token is a stream position (`s<n>`). An incremental sync reads the global event
//! stream after `since` once and groups it by room, so its cost follows what happened, not
//! how many rooms the user is in; rooms whose membership changed are handled as new. When
//! nothing happened, the request waits on the user's notifier (subscribed before reading).

pub mod cache;
pub mod notifier;

use std::collections::{BTreeMap, BTreeSet};

use ruma::{api::Direction, events::room::member::MembershipState, OwnedRoomId, RoomId, UserId};
use serde_json::Value;

use crate::{
    e2ee::{to_device::ToDevice, Keys},
    error::{Error, Result},
    rooms::{pdu::Pdu, state::StateMap, typing::Typing, Rooms},
    stream::StreamItem,
    users::{account_data::AccountData, presence::Presence},
};

/// A sync position: the stream position and the typing version (`s<pos>_<typing>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncToken {
    pub pos: u64,
    pub typing: u64,
}

impl SyncToken {
    pub fn parse(token: &str) -> Result<Self> {
        let bad = || Error::invalid_param("Invalid since token");
        let rest = token.strip_prefix('s').ok_or_else(bad)?;
        let (pos, typing) = rest.split_once('_').unwrap_or((rest, "0"));
        Ok(SyncToken { pos: pos.parse().map_err(|_| bad())?, typing: typing.parse().map_err(|_| bad())? })
    }

    pub fn encode(&self) -> String {
        format!("s{}_{}", self.pos, self.typing)
    }
}

/// The services a sync reads from.
pub struct SyncSources<'a> {
    pub rooms: &'a Rooms,
    pub typing: &'a Typing,
    pub account_data: &'a AccountData,
    pub presence: &'a Presence,
    pub keys: &'a Keys,
    pub to_device: &'a ToDevice,
    pub push: &'a crate::push::Push,
}

/// What a sync asks for, from its filter.
#[derive(Debug, Clone)]
pub struct SyncOptions {
    pub timeline_limit: usize,
    pub types: Option<Vec<String>>,
    pub not_types: Vec<String>,
    pub lazy_load_members: bool,
    pub include_leave: bool,
    pub full_state: bool,
    /// Count unread notifications per thread (MSC3773).
    pub unread_thread_notifications: bool,
}

impl Default for SyncOptions {
    fn default() -> Self {
        SyncOptions {
            timeline_limit: 10,
            types: None,
            not_types: vec![],
            lazy_load_members: false,
            include_leave: false,
            full_state: false,
            unread_thread_notifications: false,
        }
    }
}

/// Most events of a room looked at for membership changes in one incremental sync.
const MAX_MEMBER_SCAN: usize = 1000;

/// Most timeline events per room in one sync.
pub const MAX_TIMELINE_LIMIT: usize = 100;

pub struct JoinedRoomSync {
    pub notification_count: u64,
    pub highlight_count: u64,
    /// Thread root → (notifications, highlights), when asked for.
    pub thread_counts: BTreeMap<ruma::OwnedEventId, (u64, u64)>,
    pub ephemeral: Vec<Value>,
    pub account_data: Vec<Value>,
    pub timeline: Vec<Value>,
    pub limited: bool,
    pub prev_batch: Option<String>,
    pub state: Vec<Value>,
    pub heroes: Vec<String>,
    pub joined_count: u64,
    pub invited_count: u64,
}

pub struct LeftRoomSync {
    pub timeline: Vec<Value>,
    pub limited: bool,
    pub prev_batch: Option<String>,
    pub state: Vec<Value>,
}

#[derive(Default)]
pub struct SyncResult {
    pub to_device: Vec<Value>,
    /// Users whose devices or cross-signing keys changed (for E2EE clients to re-query).
    pub device_lists_changed: Vec<ruma::OwnedUserId>,
    /// Users who no longer share any room with the user.
    pub device_lists_left: Vec<ruma::OwnedUserId>,
    pub one_time_key_counts: BTreeMap<String, u64>,
    pub unused_fallback_key_types: Vec<String>,
    pub presence: Vec<Value>,
    pub account_data: Vec<Value>,
    pub join: BTreeMap<OwnedRoomId, JoinedRoomSync>,
    pub invite: BTreeMap<OwnedRoomId, Vec<Value>>,
    pub knock: BTreeMap<OwnedRoomId, Vec<Value>>,
    pub leave: BTreeMap<OwnedRoomId, LeftRoomSync>,
}

impl SyncResult {
    pub fn is_empty(&self) -> bool {
        self.account_data.is_empty()
            && self.to_device.is_empty()
            && self.device_lists_changed.is_empty()
            && self.device_lists_left.is_empty()
            && self.presence.is_empty()
            && self.join.is_empty()
            && self.invite.is_empty()
            && self.knock.is_empty()
            && self.leave.is_empty()
    }
}

fn type_allowed(opts: &SyncOptions, kind: &str) -> bool {
    let m = |p: &String| match p.strip_suffix('*') {
        Some(prefix) => kind.starts_with(prefix),
        None => p == kind,
    };
    opts.types.as_ref().is_none_or(|t| t.iter().any(m)) && !opts.not_types.iter().any(m)
}

/// Rooms with events in (since, now].
fn rooms_with_events(rooms: &Rooms, since: u64, now: u64) -> Result<BTreeSet<OwnedRoomId>> {
    Ok(rooms.stream.events_between(since, now)?.into_iter().map(|(_, e)| e.room_id).collect())
}

/// Assembles a sync for `user` (as `device`) from `since` up to `now`.
pub fn assemble(
    src: &SyncSources<'_>,
    user: &UserId,
    device: &str,
    since_token: Option<SyncToken>,
    now_token: SyncToken,
    opts: &SyncOptions,
) -> Result<SyncResult> {
    let rooms = src.rooms;
    let since = since_token.map(|t| t.pos);
    let now = now_token.pos;
    let mut result = SyncResult::default();
    let with_events = match since {
        Some(s) => rooms_with_events(rooms, s, now)?,
        None => BTreeSet::new(),
    };
    // Everything else that happened since `since`, read once.
    let items = match since {
        Some(s) => rooms.stream.items_between(s, now)?,
        None => Vec::new(),
    };
    let mut changed = with_events.clone();
    // Receipts and typing changes put a room in the sync too.
    for (_, item) in &items {
        if let StreamItem::Receipt { room_id } = item {
            changed.insert(room_id.clone());
        }
    }
    if let Some(t) = since_token {
        changed.extend(src.typing.rooms_changed_since(t.typing));
    }
    let account_changed =
        |u: &UserId| items.iter().any(|(_, i)| matches!(i, StreamItem::AccountData { user_id, .. } if user_id == u));
    let account = if since.is_none() || opts.full_state || account_changed(user) {
        src.account_data.changes(user, if opts.full_state { None } else { since })?
    } else {
        Default::default()
    };
    result.account_data = account.global;
    // A first sync always carries the push rules, defaults included.
    if (since.is_none() || opts.full_state) && !result.account_data.iter().any(|e| e["type"] == "m.push_rules") {
        result.account_data.push(crate::push::rules_event(src.account_data, user)?);
    }
    // Everyone sharing a room with the user (and the user), read only when needed.
    let contacts = Contacts::new(rooms, user);
    let presence_changed = items.iter().filter_map(|(_, i)| match i {
        StreamItem::Presence { user_id } => Some(user_id),
        _ => None,
    });
    result.presence = presence_events(src, &contacts, since.map(|_| presence_changed))?;
    // End-to-end encryption: to-device messages (acknowledged by this `since`), device-list
    // changes of contacts, key counts.
    if let Some(s) = since {
        src.to_device.acknowledge(user, device, s)?;
        let mut changed = Vec::new();
        for (_, item) in &items {
            if let StreamItem::DeviceList { user_id, .. } = item {
                if contacts.contains(user_id)? {
                    changed.push(user_id.clone());
                }
            }
        }
        // Membership changes in rooms the user is or was in: new members' devices must be
        // queried (changed); people who no longer share any room are `left`.
        let mut left = Vec::new();
        for room in &with_events {
            if !rooms.member_event_after(room, s) || rooms.membership(room, user)?.is_none() {
                continue;
            }
            for (_, pdu) in rooms.page(room, now, Direction::Backward, MAX_MEMBER_SCAN, now, Some(s))? {
                if pdu.kind.to_string() != "m.room.member" {
                    continue;
                }
                let Some(target) = pdu.state_key.as_deref().and_then(|k| ruma::OwnedUserId::try_from(k).ok()) else {
                    continue;
                };
                if *target == *user {
                    continue;
                }
                if contacts.contains(&target)? {
                    changed.push(target);
                } else {
                    left.push(target);
                }
            }
        }
        changed.sort();
        changed.dedup();
        left.sort();
        left.dedup();
        result.device_lists_changed = changed;
        result.device_lists_left = left;
    }
    result.to_device = src.to_device.pending(user, device, now)?;
    result.one_time_key_counts = src.keys.one_time_key_counts(user, device)?;
    result.unused_fallback_key_types = src.keys.unused_fallback_types(user, device)?;
    let mut room_account = account.rooms;
    let viewer = Some((user, device));
    // Every membership (join, invite, knock, leave, ban), shared with the memberships cache.
    let memberships = rooms.user_memberships(user)?;
    let joined: Vec<&RoomId> = memberships
        .iter()
        .filter(|(_, rec)| rec.membership == MembershipState::Join && rec.stream <= now)
        .map(|(room, _)| room.as_ref())
        .collect();
    // The largest part of an initial sync is counting unread events in every joined room
    // (push rules over all the history the user has not read). It needs nothing else the
    // sync builds, so a second thread starts on it at once, and this one joins in once the
    // rooms' timelines and state are built. Not when every core already has such a thread.
    let helper = (since.is_none() && !joined.is_empty()).then(CountingHelper::take).flatten();
    let next_room = std::sync::atomic::AtomicUsize::new(0);
    let counted = std::sync::Mutex::new(std::collections::HashMap::new());
    let count_rooms = || -> Result<()> {
        while let Some(room) = joined.get(next_room.fetch_add(1, std::sync::atomic::Ordering::Relaxed)) {
            let counts =
                src.push.unread_counts(rooms, src.account_data, room, user, now, opts.unread_thread_notifications)?;
            counted.lock().unwrap_or_else(|e| e.into_inner()).insert((*room).to_owned(), counts);
        }
        Ok(())
    };
    std::thread::scope(|scope| -> Result<()> {
        let counting = helper.as_ref().map(|_| scope.spawn(count_rooms));
        for (room_id, rec) in memberships.iter() {
            if rec.stream > now {
                continue; // Committed after this sync's snapshot of the stream.
            }
            let is_new = since.is_none_or(|s| rec.stream > s);
            match rec.membership.as_str() {
                "join" => {
                    let account_data = room_account.remove(room_id).unwrap_or_default();
                    if !(is_new || opts.full_state || changed.contains(room_id) || !account_data.is_empty()) {
                        continue;
                    }
                    let room_id = room_id.clone();
                    let eph_since = if is_new || opts.full_state { None } else { since_token };
                    let mut ephemeral = Vec::new();
                    if let Some(users) = src.typing.typing_since(&room_id, eph_since.map(|t| t.typing)) {
                        ephemeral.push(serde_json::json!({"type": "m.typing", "content": {"user_ids": users}}));
                    }
                    // After `since`, only rooms with a receipt item on the stream have new ones.
                    let receipts_moved = eph_since.is_none()
                        || items.iter().any(|(_, i)| matches!(i, StreamItem::Receipt { room_id: r } if *r == room_id));
                    if receipts_moved {
                        if let Some(receipts) = rooms.receipt_event(&room_id, eph_since.map(|t| t.pos), user)? {
                            ephemeral.push(receipts);
                        }
                    }
                    let from = if is_new || opts.full_state { None } else { since };
                    let r = room_section(rooms, &room_id, user, from, now, opts, viewer)?;
                    let (joined_count, invited_count, heroes) = summary(rooms, &room_id, user)?;
                    let unread = match counting {
                        Some(_) => Default::default(), // filled in below
                        None => src.push.unread_counts(
                            rooms,
                            src.account_data,
                            &room_id,
                            user,
                            now,
                            opts.unread_thread_notifications,
                        )?,
                    };
                    result.join.insert(
                        room_id,
                        JoinedRoomSync {
                            notification_count: unread.notifications,
                            highlight_count: unread.highlights,
                            thread_counts: unread.threads,
                            ephemeral,
                            account_data,
                            timeline: r.timeline,
                            limited: r.limited,
                            prev_batch: r.prev_batch,
                            state: r.state,
                            heroes,
                            joined_count,
                            invited_count,
                        },
                    );
                }
                "invite" if is_new => {
                    result.invite.insert(room_id.clone(), invite_state(rooms, room_id, user)?);
                }
                "knock" if is_new => {
                    result.knock.insert(room_id.clone(), invite_state(rooms, room_id, user)?);
                }
                "leave" | "ban" if (since.is_some() && is_new) || (since.is_none() && opts.include_leave) => {
                    let until = rec.stream;
                    let from = if since.is_some() && !opts.full_state { since } else { None };
                    let r = room_section(rooms, room_id, user, from, until, opts, viewer)?;
                    result.leave.insert(
                        room_id.clone(),
                        LeftRoomSync {
                            timeline: r.timeline,
                            limited: r.limited,
                            prev_batch: r.prev_batch,
                            state: r.state,
                        },
                    );
                }
                _ => {}
            }
        }
        if let Some(handle) = counting {
            count_rooms()?;
            handle.join().map_err(|_| Error::internal("counting unread events panicked"))??;
            let mut counts = counted.lock().unwrap_or_else(|e| e.into_inner());
            for (room_id, sync) in result.join.iter_mut() {
                if let Some(c) = counts.remove(room_id) {
                    (sync.notification_count, sync.highlight_count, sync.thread_counts) =
                        (c.notifications, c.highlights, c.threads);
                }
            }
        }
        Ok(())
    })?;
    drop(helper);
    Ok(result)
}

/// Initial syncs counting on a second thread right now.
static COUNTING_HELPERS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The right to run a second counting thread for one initial sync: at most one per core,
/// so that many clients syncing from scratch at once (after a restart, say) do not start
/// a thread each only to compete for the same cores and malloc arenas.
struct CountingHelper;

impl CountingHelper {
    fn take() -> Option<CountingHelper> {
        static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
        let cores = *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        COUNTING_HELPERS
            .fetch_update(std::sync::atomic::Ordering::AcqRel, std::sync::atomic::Ordering::Acquire, |n| {
                (n < cores).then_some(n + 1)
            })
            .ok()
            .map(|_| CountingHelper)
    }
}

impl Drop for CountingHelper {
    fn drop(&mut self) {
        COUNTING_HELPERS.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

struct Section {
    timeline: Vec<Value>,
    limited: bool,
    prev_batch: Option<String>,
    state: Vec<Value>,
}

/// Timeline after `from` (or the latest events, with full state, when `from` is None) up to `until`.
fn room_section(
    rooms: &Rooms,
    room_id: &RoomId,
    user: &UserId,
    from: Option<u64>,
    until: u64,
    opts: &SyncOptions,
    viewer: Option<(&UserId, &str)>,
) -> Result<Section> {
    let limit = opts.timeline_limit.clamp(1, MAX_TIMELINE_LIMIT);
    // Newest first, one more than needed to know whether the timeline is limited.
    let mut page = rooms.page(room_id, until, Direction::Backward, limit + 1, until, from)?;
    let limited = page.len() > limit;
    page.truncate(limit);
    let mut page = rooms.filter_visible(page, user)?;
    page.truncate(limit);
    page.reverse();
    let events: Vec<&(u64, std::sync::Arc<Pdu>)> =
        page.iter().filter(|(_, p)| type_allowed(opts, &p.kind.to_string())).collect();
    let prev_batch = page.first().map(|(pos, _)| crate::rooms::timeline::token(pos.saturating_sub(1)));

    // State: everything before the timeline when starting fresh; after a gap, what changed
    // between `since` and the start of the timeline.
    let mut state = Vec::new();
    if from.is_none() || limited {
        let mut map: StateMap = match page.first() {
            Some((_, first)) => (*rooms.state_before(&first.event_id)?).clone(),
            None => (*rooms.current_state_map(room_id)?).clone(),
        };
        if let Some(since) = from {
            if let Some((_, last_seen)) = rooms.page(room_id, since, Direction::Backward, 1, until, None)?.first() {
                let known = rooms.state_after(&last_seen.event_id)?;
                map.retain(|k, v| known.get(k) != Some(v));
            }
        }
        let senders: BTreeSet<String> =
            page.iter().map(|(_, p)| p.sender.to_string()).chain([user.to_string()]).collect();
        let in_timeline: BTreeSet<&str> = page.iter().map(|(_, p)| p.event_id.as_str()).collect();
        for pdu in rooms.state_events(&map)? {
            if in_timeline.contains(pdu.event_id.as_str()) {
                continue;
            }
            if opts.lazy_load_members
                && pdu.kind.to_string() == "m.room.member"
                && !senders.contains(pdu.state_key.as_deref().unwrap_or_default())
            {
                continue;
            }
            state.push(without_room_id(rooms.client_event(&pdu, None, None)));
        }
    }
    let mut timeline = Vec::with_capacity(events.len());
    for (_, pdu) in events {
        let meta = rooms.event_meta(&pdu.event_id)?;
        timeline.push(without_room_id(rooms.client_event(pdu, meta.as_ref(), viewer)));
    }
    Ok(Section { timeline, limited, prev_batch, state })
}

/// Sync's events are `ClientEventWithoutRoomID`: the room is the key they are listed under.
fn without_room_id(mut event: Value) -> Value {
    if let Some(fields) = event.as_object_mut() {
        fields.remove("room_id");
    }
    event
}

/// (joined count, invited count, heroes): heroes are up to five other members.
fn summary(rooms: &Rooms, room_id: &RoomId, user: &UserId) -> Result<(u64, u64, Vec<String>)> {
    let joined = rooms.members_shared(room_id, &MembershipState::Join)?;
    let invited = rooms.members_shared(room_id, &MembershipState::Invite)?;
    let heroes = joined.iter().chain(invited.iter()).filter(|u| *u != user).take(5).map(|u| u.to_string()).collect();
    Ok((joined.len() as u64, invited.len() as u64, heroes))
}

/// Stripped state shown with an invite or knock: what a client needs to show the room.
fn invite_state(rooms: &Rooms, room_id: &RoomId, user: &UserId) -> Result<Vec<Value>> {
    if rooms.room(room_id)?.is_none() {
        // A room on another server: the state its invite came with, and the invite.
        let mut out = rooms.remote_invite_state(user, room_id)?;
        if let Some(rec) = rooms.membership(room_id, user)? {
            if let Some(invite) = rooms.pdu(&rec.event_id)? {
                out.push(invite.to_stripped_json());
            }
        }
        return Ok(out);
    }
    let map = rooms.current_state_map(room_id)?;
    let mut out = Vec::new();
    for pdu in rooms.state_events(&map)? {
        let kind = pdu.kind.to_string();
        let keep = crate::rooms::PREVIEW_STATE_TYPES.contains(&kind.as_str())
            || (kind == "m.room.member" && (pdu.state_key.as_deref() == Some(user.as_str()) || pdu.sender == user));
        if keep {
            out.push(pdu.to_stripped_json());
        }
    }
    Ok(out)
}

/// The user and everyone sharing a joined room with them: member lists are read on the
/// first question, so a sync with nothing to filter reads none.
struct Contacts<'a> {
    rooms: &'a Rooms,
    user: &'a UserId,
    lists: std::cell::OnceCell<Vec<std::sync::Arc<[ruma::OwnedUserId]>>>,
}

impl<'a> Contacts<'a> {
    fn new(rooms: &'a Rooms, user: &'a UserId) -> Self {
        Contacts { rooms, user, lists: std::cell::OnceCell::new() }
    }

    fn lists(&self) -> Result<&[std::sync::Arc<[ruma::OwnedUserId]>]> {
        if let Some(l) = self.lists.get() {
            return Ok(l);
        }
        let mut lists = Vec::new();
        for room in self.rooms.joined_rooms(self.user)? {
            lists.push(self.rooms.members_shared(&room, &MembershipState::Join)?);
        }
        Ok(self.lists.get_or_init(|| lists))
    }

    fn contains(&self, other: &UserId) -> Result<bool> {
        Ok(other == self.user || self.lists()?.iter().any(|l| l.binary_search_by(|u| (**u).cmp(other)).is_ok()))
    }

    fn all(&self) -> Result<BTreeSet<ruma::OwnedUserId>> {
        let mut out: BTreeSet<ruma::OwnedUserId> = self.lists()?.iter().flat_map(|l| l.iter().cloned()).collect();
        out.insert(self.user.to_owned());
        Ok(out)
    }
}

/// Presence of the user and of everyone sharing a room with them: all of it on a first
/// sync, else that of the `changed` users who are contacts.
fn presence_events<'u>(
    src: &SyncSources<'_>,
    contacts: &Contacts<'_>,
    changed: Option<impl Iterator<Item = &'u ruma::OwnedUserId>>,
) -> Result<Vec<Value>> {
    let candidates: Vec<ruma::OwnedUserId> = match changed {
        Some(users) => {
            let mut out = Vec::new();
            for u in users {
                if contacts.contains(u)? {
                    out.push(u.clone());
                }
            }
            out
        }
        None => contacts.all()?.into_iter().collect(),
    };
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for u in candidates {
        if seen.insert(u.clone()) {
            if let Some(ev) = src.presence.event(&u)? {
                out.push(ev);
            }
        }
    }
    Ok(out)
}
