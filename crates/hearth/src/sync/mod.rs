//! `/sync` assembly and the notifier that wakes it.
//!
//! A since-token is a stream position (`s<n>`). An incremental sync reads the global event
//! stream after `since` once and groups it by room, so its cost follows what happened, not
//! how many rooms the user is in; rooms whose membership changed are handled as new. When
//! nothing happened, the request waits on the user's notifier (subscribed before reading).

pub mod cache;
pub mod filter;
pub mod lazy;
pub mod notifier;
pub mod sliding;

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

pub use filter::EventFilter;

use ruma::{
    api::Direction,
    events::{room::member::MembershipState, TimelineEventType},
    OwnedRoomId, RoomId, UserId,
};
use serde_json::Value;

use crate::{
    e2ee::{to_device::ToDevice, Keys},
    error::{Error, Result},
    rooms::{
        backfill::{backfill_token, row_of},
        pdu::{EventJson, Pdu},
        state::StateMap,
        typing::Typing,
        Rooms,
    },
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
    /// Shared, not only borrowed: an initial sync's unread counting runs on a thread of
    /// its own (see [`run_counting`]).
    pub rooms: &'a Arc<Rooms>,
    pub typing: &'a Typing,
    pub account_data: &'a Arc<AccountData>,
    pub presence: &'a Presence,
    pub keys: &'a Keys,
    pub to_device: &'a ToDevice,
    pub push: &'a Arc<crate::push::Push>,
    /// Member events each device was sent (lazy loading).
    pub lazy: &'a lazy::SentMembers,
}

/// What a sync asks for, from its filter.
#[derive(Debug, Clone)]
pub struct SyncOptions {
    pub timeline_limit: usize,
    /// Each section's filter (see [`filter`]).
    pub timeline: EventFilter,
    pub state: EventFilter,
    pub ephemeral: EventFilter,
    pub room_account_data: EventFilter,
    pub presence: EventFilter,
    pub account_data: EventFilter,
    /// The room filter's own `rooms` / `not_rooms`.
    pub rooms: EventFilter,
    pub lazy_load_members: bool,
    /// With lazy loading, send a sender's member event even when this device had it.
    pub include_redundant_members: bool,
    pub include_leave: bool,
    pub full_state: bool,
    /// Count unread notifications per thread (MSC3773).
    pub unread_thread_notifications: bool,
    /// Room events as their PDUs (the filter's `event_format: federation`), with their
    /// ids: for clients that check signatures or walk the graph themselves.
    pub federation_format: bool,
    /// Whether this is `/sync` itself: it delivers and acknowledges to-device messages and
    /// keeps the device's lazy-loading record. The deprecated `/events` and `/initialSync`,
    /// built from the same assembly, touch neither.
    pub acknowledge: bool,
}

impl Default for SyncOptions {
    fn default() -> Self {
        SyncOptions {
            timeline_limit: 10,
            timeline: EventFilter::default(),
            state: EventFilter::default(),
            ephemeral: EventFilter::default(),
            room_account_data: EventFilter::default(),
            presence: EventFilter::default(),
            account_data: EventFilter::default(),
            rooms: EventFilter::default(),
            lazy_load_members: false,
            include_redundant_members: false,
            include_leave: false,
            full_state: false,
            unread_thread_notifications: false,
            federation_format: false,
            acknowledge: true,
        }
    }
}

/// Most timeline events per room in one sync.
pub const MAX_TIMELINE_LIMIT: usize = 100;

pub struct JoinedRoomSync {
    pub notification_count: u64,
    pub highlight_count: u64,
    /// Thread root → (notifications, highlights), when asked for.
    pub thread_counts: BTreeMap<ruma::OwnedEventId, (u64, u64)>,
    pub ephemeral: Vec<Value>,
    pub account_data: Vec<Value>,
    pub timeline: Vec<EventJson>,
    pub limited: bool,
    pub prev_batch: Option<String>,
    pub state: Vec<EventJson>,
    pub heroes: Vec<String>,
    pub joined_count: u64,
    pub invited_count: u64,
}

pub struct LeftRoomSync {
    pub timeline: Vec<EventJson>,
    pub limited: bool,
    pub prev_batch: Option<String>,
    pub state: Vec<EventJson>,
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
    /// The default push rules, written, for a first sync of a user who has not changed
    /// theirs (who has, finds them in `account_data`): listed after `account_data`.
    pub push_rules: Option<EventJson>,
    pub join: BTreeMap<OwnedRoomId, JoinedRoomSync>,
    pub invite: BTreeMap<OwnedRoomId, Vec<Value>>,
    pub knock: BTreeMap<OwnedRoomId, Vec<Value>>,
    pub leave: BTreeMap<OwnedRoomId, LeftRoomSync>,
    /// Rooms the device peeks into (MSC2753), shaped as left rooms are.
    pub peek: BTreeMap<OwnedRoomId, LeftRoomSync>,
}

impl SyncResult {
    pub fn is_empty(&self) -> bool {
        self.account_data.is_empty()
            && self.push_rules.is_none()
            && self.to_device.is_empty()
            && self.device_lists_changed.is_empty()
            && self.device_lists_left.is_empty()
            && self.presence.is_empty()
            && self.join.is_empty()
            && self.invite.is_empty()
            && self.knock.is_empty()
            && self.leave.is_empty()
            && self.peek.is_empty()
    }
}

/// The users `user` ignores (`m.ignored_user_list`): their events and invites are not
/// shown to them.
fn ignored_users(account_data: &AccountData, user: &UserId) -> Result<BTreeSet<String>> {
    let list = account_data.get(user, None, "m.ignored_user_list")?;
    Ok(list
        .as_ref()
        .and_then(|v| v.get("ignored_users"))
        .and_then(Value::as_object)
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default())
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
    if since.is_none() && opts.acknowledge {
        src.lazy.reset(user, device);
    }
    let ignored = ignored_users(src.account_data, user)?;
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
    // A first sync always carries the push rules, defaults included. Stored rules are
    // among the account data just read (all of it, for such a sync); without them, the
    // user has the defaults.
    if (since.is_none() || opts.full_state)
        && !result.account_data.iter().any(|e| e["type"] == "m.push_rules")
        && opts.account_data.type_allowed("m.push_rules")
    {
        result.push_rules = Some(crate::push::rules::default_rules_event(user));
    }
    result.account_data.retain(|e| opts.account_data.type_allowed(e["type"].as_str().unwrap_or_default()));
    // Everyone sharing a room with the user (and the user), read only when needed.
    let contacts = Contacts::new(rooms, user);
    let presence_changed = items.iter().filter_map(|(_, i)| match i {
        StreamItem::Presence { user_id } => Some(user_id),
        _ => None,
    });
    result.presence = presence_events(src, &contacts, since.map(|_| presence_changed))?;
    result.presence.retain(|e| {
        opts.presence.allows(e["type"].as_str().unwrap_or("m.presence"), e["sender"].as_str().unwrap_or_default())
    });
    // End-to-end encryption: to-device messages (acknowledged by this `since`), device-list
    // changes of contacts, key counts.
    if let Some(s) = since {
        if opts.acknowledge {
            src.to_device.acknowledge(user, device, s)?;
        }
        let delta = src.keys.device_list_delta(rooms, user, s, now, &items, &with_events)?;
        result.device_lists_changed = delta.changed;
        result.device_lists_left = delta.left;
    }
    if opts.acknowledge {
        result.to_device = src.to_device.pending(user, device, now)?;
    }
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
    // sync builds, so a counting thread ([`run_counting`]) starts on it at once, and this
    // one joins in once the rooms' timelines and state are built. Not when every core
    // already has such a thread at work.
    let threads = opts.unread_thread_notifications;
    let helper = (since.is_none() && !joined.is_empty()).then(CountingHelper::take).flatten();
    let helper_done = helper.and_then(|permit| {
        let counting = Arc::new(Counting {
            rooms: joined.iter().map(|r| (*r).to_owned()).collect(),
            next: std::sync::atomic::AtomicUsize::new(0),
            counted: std::sync::Mutex::new(std::collections::HashMap::new()),
        });
        let (tx, rx) = std::sync::mpsc::channel();
        let (c, push, rooms, account_data) =
            (counting.clone(), src.push.clone(), src.rooms.clone(), src.account_data.clone());
        let user = user.to_owned();
        let job = Box::new(move || {
            let counted = c.count(&push, &rooms, &account_data, &user, now, threads);
            drop(permit);
            let _ = tx.send(counted);
        });
        run_counting(job).then_some((counting, rx))
    });
    for (room_id, rec) in memberships.iter() {
        if rec.stream > now {
            continue; // Committed after this sync's snapshot of the stream.
        }
        let is_new = since.is_none_or(|s| rec.stream > s);
        if !opts.rooms.room_allowed(room_id.as_str()) {
            continue;
        }
        let section = SectionContext { rooms, user, opts, viewer, lazy: src.lazy, ignored: &ignored };
        match rec.membership.as_str() {
            "join" => {
                let account_data = room_account.remove(room_id).unwrap_or_default();
                if !(is_new || opts.full_state || changed.contains(room_id) || !account_data.is_empty()) {
                    continue;
                }
                let room_id = room_id.clone();
                let eph_since = if is_new || opts.full_state { None } else { since_token };
                let mut ephemeral = Vec::new();
                let typing_wanted = opts.ephemeral.type_allowed("m.typing");
                if let Some(users) =
                    src.typing.typing_since(&room_id, eph_since.map(|t| t.typing)).filter(|_| typing_wanted)
                {
                    ephemeral.push(serde_json::json!({"type": "m.typing", "content": {"user_ids": users}}));
                }
                // After `since`, only rooms with a receipt item on the stream have new ones.
                let receipts_moved = eph_since.is_none()
                    || items.iter().any(|(_, i)| matches!(i, StreamItem::Receipt { room_id: r } if *r == room_id));
                if receipts_moved && opts.ephemeral.type_allowed("m.receipt") {
                    if let Some(receipts) = rooms.receipt_event(&room_id, eph_since.map(|t| t.pos), user)? {
                        ephemeral.push(receipts);
                    }
                }
                let from = if is_new || opts.full_state { None } else { since };
                let mut r = section.build(&room_id, from, now)?;
                // A room joined since the last sync is always `limited`, as Synapse marks
                // it: the client has no timeline of it to join up with.
                if is_new && since.is_some() && !r.timeline.is_empty() {
                    r.limited = true;
                }
                let account_data: Vec<Value> = account_data
                    .into_iter()
                    .filter(|e| opts.room_account_data.type_allowed(e["type"].as_str().unwrap_or_default()))
                    .collect();
                // Nothing left to show after filtering (only an ignored user spoke, say):
                // the room stays out, as if nothing had happened.
                let nothing = r.timeline.is_empty() && r.state.is_empty() && ephemeral.is_empty();
                if from.is_some() && nothing && account_data.is_empty() {
                    continue;
                }
                let (joined_count, invited_count, heroes) = summary(rooms, &room_id, user)?;
                let unread = match helper_done {
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
                let inviter = rooms.pdu(&rec.event_id)?.map(|p| p.sender.to_string());
                if inviter.is_some_and(|i| ignored.contains(&i)) {
                    continue; // an invite from someone the user ignores
                }
                result.invite.insert(room_id.clone(), invite_state(rooms, room_id, user)?);
            }
            "knock" if is_new => {
                result.knock.insert(room_id.clone(), invite_state(rooms, room_id, user)?);
            }
            "leave" | "ban" if (since.is_some() && is_new) || (since.is_none() && opts.include_leave) => {
                let until = rec.stream;
                // Incremental only from a point where the user was in the room: one who
                // joined and left within this batch gets the room's state afresh.
                let from = match since {
                    Some(s) if !opts.full_state && was_joined_at(rooms, room_id, user, s, until)? => Some(s),
                    _ => None,
                };
                let r = match rooms.room(room_id)? {
                    Some(_) => section.build(room_id, from, until)?,
                    // A room on another server never joined here (an invite rejected or
                    // withdrawn): its leave is all this server has of it.
                    None => Section {
                        timeline: (rooms.pdu_shared(&rec.event_id)?.into_iter())
                            .map(|leave| rooms.client_event_json(&leave, None, viewer))
                            .collect(),
                        limited: false,
                        prev_batch: None,
                        state: Vec::new(),
                    },
                };
                result.leave.insert(
                    room_id.clone(),
                    LeftRoomSync { timeline: r.timeline, limited: r.limited, prev_batch: r.prev_batch, state: r.state },
                );
            }
            _ => {}
        }
    }
    if let Some((counting, done)) = helper_done {
        counting.count(src.push, rooms, src.account_data, user, now, threads)?;
        done.recv().map_err(|_| Error::internal("counting unread events panicked"))??;
        let mut counts = counting.counted.lock().unwrap_or_else(|e| e.into_inner());
        for (room_id, sync) in result.join.iter_mut() {
            if let Some(c) = counts.remove(room_id) {
                (sync.notification_count, sync.highlight_count, sync.thread_counts) =
                    (c.notifications, c.highlights, c.threads);
            }
        }
    }
    // Rooms this device peeks into (MSC2753; see `rooms::peek`): the whole recent room the
    // first time after the peek began, new events after that, as a member's sync shows them.
    for (room_id, start) in rooms.peeks_of(user, device)? {
        if !opts.rooms.room_allowed(room_id.as_str()) || start > now {
            continue;
        }
        let joined = memberships.iter().any(|(r, rec)| *r == room_id && rec.membership == MembershipState::Join);
        if joined || !rooms.is_world_readable(&room_id)? {
            continue;
        }
        let from = match since {
            Some(s) if s >= start && !opts.full_state => Some(s),
            _ => None,
        };
        if from.is_some() && !changed.contains(&room_id) {
            continue;
        }
        let section = SectionContext { rooms, user, opts, viewer, lazy: src.lazy, ignored: &ignored };
        let r = section.build(&room_id, from, now)?;
        if from.is_some() && r.timeline.is_empty() && r.state.is_empty() {
            continue;
        }
        result.peek.insert(
            room_id,
            LeftRoomSync { timeline: r.timeline, limited: r.limited, prev_batch: r.prev_batch, state: r.state },
        );
    }
    // A room joined since `since` brings its members' presence, changed or not: the client
    // has never been told it (as Synapse does).
    if let Some(since) = since {
        let mut have: BTreeSet<String> =
            result.presence.iter().filter_map(|e| e["sender"].as_str().map(str::to_owned)).collect();
        for (room_id, rec) in memberships.iter() {
            if rec.membership != MembershipState::Join || rec.stream <= since || rec.stream > now {
                continue;
            }
            for member in rooms.members_shared(room_id, &MembershipState::Join)?.iter() {
                if have.insert(member.to_string()) {
                    if let Some(event) = src.presence.event(member)? {
                        let (kind, sender) = (event["type"].as_str(), event["sender"].as_str());
                        if opts.presence.allows(kind.unwrap_or("m.presence"), sender.unwrap_or_default()) {
                            result.presence.push(event);
                        }
                    }
                }
            }
        }
    }
    Ok(result)
}

/// The joined rooms of an initial sync whose unread events are being counted, shared by
/// the sync's thread and a counting thread: each takes the next room not yet taken.
struct Counting {
    rooms: Vec<OwnedRoomId>,
    next: std::sync::atomic::AtomicUsize,
    counted: std::sync::Mutex<std::collections::HashMap<OwnedRoomId, crate::push::unread::UnreadCounts>>,
}

impl Counting {
    fn count(
        &self,
        push: &crate::push::Push,
        rooms: &Rooms,
        account_data: &AccountData,
        user: &UserId,
        now: u64,
        threads: bool,
    ) -> Result<()> {
        while let Some(room) = self.rooms.get(self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed)) {
            let counts = push.unread_counts(rooms, account_data, room, user, now, threads)?;
            self.counted.lock().unwrap_or_else(|e| e.into_inner()).insert(room.clone(), counts);
        }
        Ok(())
    }
}

/// Work for a counting thread.
type CountingJob = Box<dyn FnOnce() + Send>;

/// Hands `job` to one of the threads kept for counting initial syncs' unread events (one
/// per core, started with the first such sync); `false` if they cannot be started. Kept,
/// not started per sync: a thread's start and end were a tenth of a first sync's CPU.
fn run_counting(job: CountingJob) -> bool {
    static POOL: std::sync::OnceLock<Option<std::sync::Mutex<std::sync::mpsc::Sender<CountingJob>>>> =
        std::sync::OnceLock::new();
    let pool = POOL.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<CountingJob>();
        let rx = Arc::new(std::sync::Mutex::new(rx));
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut started = 0;
        for _ in 0..cores {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new().name("hearth-counting".into()).spawn(move || loop {
                let job = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                match job {
                    // A panic drops the job's sender: its sync answers with an error.
                    Ok(job) => drop(std::panic::catch_unwind(std::panic::AssertUnwindSafe(job))),
                    Err(_) => return,
                }
            });
            started += usize::from(spawned.is_ok());
        }
        (started > 0).then(|| std::sync::Mutex::new(tx))
    });
    match pool {
        Some(tx) => tx.lock().unwrap_or_else(|e| e.into_inner()).send(job).is_ok(),
        None => false,
    }
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
    timeline: Vec<EventJson>,
    limited: bool,
    prev_batch: Option<String>,
    state: Vec<EventJson>,
}

/// Most events looked at to fill a filtered timeline (events the filter refuses are
/// passed over until the limit is reached or this many were read).
const MAX_FILTER_SCAN: usize = 1000;

/// Events with their stream positions.
type Positioned = Vec<(u64, Arc<Pdu>)>;

/// What building a room's section reads, besides the room.
struct SectionContext<'a> {
    rooms: &'a Rooms,
    user: &'a UserId,
    opts: &'a SyncOptions,
    viewer: Option<(&'a UserId, &'a str)>,
    lazy: &'a lazy::SentMembers,
    ignored: &'a BTreeSet<String>,
}

impl SectionContext<'_> {
    /// Whether `pdu` is part of the room's current state. Such events are shown in the
    /// timeline even where history visibility hides the time they were sent (a join while
    /// the user was away from a `joined` room), as Synapse shows them: the client would
    /// otherwise hold state it never saw arrive.
    fn is_current_state(&self, room_id: &RoomId, pdu: &Pdu) -> Result<bool> {
        let Some(key) = pdu.state_key.as_deref() else { return Ok(false) };
        let kind = ruma::events::StateEventType::from(pdu.kind.to_string());
        Ok(self.rooms.state_event(room_id, &kind, key)?.is_some_and(|current| current.event_id == pdu.event_id))
    }

    /// The newest events up to `until` and after `from` that the user may see and the
    /// timeline filter passes (oldest first), whether older ones were left out, and the
    /// position of an event with history missing behind it (a rejoin), where the timeline
    /// then starts: what lies behind it is not the timeline's past but the gap's history
    /// (see [`crate::rooms::backfill`]), which `/messages` pages through.
    fn timeline(&self, room_id: &RoomId, from: Option<u64>, until: u64) -> Result<(Positioned, bool, Option<u64>)> {
        let limit = self.opts.timeline_limit.min(MAX_TIMELINE_LIMIT);
        let filter = &self.opts.timeline;
        let batch = (limit + 1).max(20);
        let mut picked = Vec::new();
        let mut scanned = 0;
        let mut at = until;
        let limited = loop {
            let page = self.rooms.page(room_id, at, Direction::Backward, batch, until, from)?;
            let exhausted = page.len() < batch;
            scanned += page.len();
            if let Some((pos, _)) = page.last() {
                at = pos.saturating_sub(1);
            }
            // What the user may see, as they may see it (an erased sender's events redacted).
            let visible: BTreeMap<u64, Arc<Pdu>> =
                self.rooms.filter_visible(page.clone(), self.user)?.into_iter().collect();
            for (pos, pdu) in page {
                let sender = pdu.sender.as_str();
                let wanted = filter.allows(&pdu.kind.to_string(), sender) && !self.ignored.contains(sender);
                if !wanted {
                    continue;
                }
                match visible.get(&pos) {
                    Some(seen) => picked.push((pos, seen.clone())),
                    None if self.is_current_state(room_id, &pdu)? => picked.push((pos, pdu)),
                    None => {}
                }
            }
            if picked.len() > limit {
                break true;
            }
            if exhausted || at == 0 {
                break false;
            }
            if scanned >= MAX_FILTER_SCAN {
                break true;
            }
        };
        picked.truncate(limit);
        // Newest first here: the first event with a gap behind it starts the timeline.
        // This server's events never open one (their prev events are the room's heads),
        // but for its users' joins through another server.
        let own = self.user.server_name();
        let mut gap = None;
        for (i, (pos, pdu)) in picked.iter().enumerate() {
            let may_open = pdu.sender.server_name() != own || pdu.kind == TimelineEventType::RoomMember;
            if may_open && self.rooms.event_meta(&pdu.event_id)?.is_some_and(|m| m.gap_behind) {
                gap = Some((i, *pos));
                break;
            }
        }
        let (limited, gap) = match gap {
            Some((i, pos)) => {
                picked.truncate(i + 1);
                (true, Some(pos))
            }
            None => (limited, None),
        };
        picked.reverse();
        Ok((picked, limited, gap))
    }

    /// A room's timeline after `from` (or the latest events, with full state, when `from` is
    /// None) up to `until`, and its state as the spec splits it:
    /// - fresh (an initial sync, a new join, `full_state`): the state before the timeline;
    /// - after a gap (`limited`): what changed between `from` and the timeline's start;
    /// - with lazy-loaded members, only the member events of the timeline's senders (and
    ///   the user's own) among those, plus, in incremental syncs, senders' member events
    ///   this device was not sent yet (all of them with `include_redundant_members`).
    fn build(&self, room_id: &RoomId, from: Option<u64>, until: u64) -> Result<Section> {
        let (rooms, user, opts) = (self.rooms, self.user, self.opts);
        let (page, limited, gap) = self.timeline(room_id, from, until)?;
        // A fresh section whose timeline holds everything (not limited) gets "now" as its
        // prev_batch, as Synapse gives it: paging back from there returns the timeline again
        // (clients drop what they hold) and then ends, where a token before the first event
        // would return nothing. sytest pages back from it and expects events.
        let prev_batch = match (from, limited, gap) {
            (_, _, Some(pos)) => Some(backfill_token(row_of(pos, 0))),
            (None, false, _) if !page.is_empty() => Some(crate::rooms::timeline::token(until)),
            _ => page.first().map(|(pos, _)| crate::rooms::timeline::token(pos.saturating_sub(1))),
        };
        let senders: BTreeSet<&str> = page.iter().map(|(_, p)| p.sender.as_str()).collect();
        let in_timeline: BTreeSet<&str> = page.iter().map(|(_, p)| p.event_id.as_str()).collect();
        let before_timeline = || -> Result<StateMap> {
            Ok(match page.first() {
                Some((_, first)) => (*rooms.state_before(&first.event_id)?).clone(),
                None => (*rooms.current_state_map(room_id)?).clone(),
            })
        };
        let device = self.viewer.map(|(_, d)| d);
        let mut state = Vec::new();
        let mut chosen: BTreeSet<String> = BTreeSet::new();
        let is_member = |pdu: &Pdu| pdu.kind.to_string() == "m.room.member";
        if from.is_none() || limited {
            let mut map = before_timeline()?;
            let mut delta = None;
            if let Some(since) = from {
                if let Some((_, last_seen)) = rooms.page(room_id, since, Direction::Backward, 1, until, None)?.first() {
                    let known = rooms.state_after(&last_seen.event_id)?;
                    let full = map.clone();
                    map.retain(|k, v| known.get(k) != Some(v));
                    delta = Some(full);
                }
            }
            for pdu in rooms.state_events(&map)? {
                if in_timeline.contains(pdu.event_id.as_str()) {
                    continue;
                }
                // Fresh state carries only the members the timeline needs; a gap's changes
                // carry every member that changed.
                let key = pdu.state_key.as_deref().unwrap_or_default();
                if opts.lazy_load_members
                    && is_member(&pdu)
                    && delta.is_none()
                    && key != user.as_str()
                    && !senders.contains(key)
                {
                    continue;
                }
                chosen.insert(pdu.event_id.to_string());
                state.push(pdu);
            }
            // After a gap, the senders' member events from before it, as below.
            if let (Some(full), true) = (delta, opts.lazy_load_members) {
                self.add_sender_members(room_id, &full, &senders, &in_timeline, device, &mut chosen, &mut state)?;
            }
        } else if opts.lazy_load_members && !page.is_empty() {
            let map = before_timeline()?;
            self.add_sender_members(room_id, &map, &senders, &in_timeline, device, &mut chosen, &mut state)?;
        }
        state.retain(|pdu| opts.state.allows(&pdu.kind.to_string(), pdu.sender.as_str()));
        if let (Some(device), true) = (device, opts.lazy_load_members && opts.acknowledge) {
            let members = state
                .iter()
                .chain(page.iter().map(|(_, p)| p))
                .filter(|p| is_member(p))
                .filter_map(|p| Some((p.state_key.as_deref()?, p.event_id.as_str())));
            self.lazy.mark(user, device, room_id, members);
        }
        // Events are written as JSON here, once; the answer copies them as they are.
        let shown = |pdu: &Pdu, meta: Option<&crate::rooms::EventMeta>, viewer| match opts.federation_format {
            true => {
                EventJson::from_value(&federation_event(pdu, without_room_id(rooms.client_event(pdu, meta, viewer))))
            }
            false => rooms.client_event_json(pdu, meta, viewer),
        };
        let state = state.iter().map(|pdu| shown(pdu, None, None)).collect();
        let mut timeline = Vec::with_capacity(page.len());
        for (_, pdu) in &page {
            let meta = rooms.event_meta(&pdu.event_id)?;
            timeline.push(shown(pdu, meta.as_ref(), self.viewer));
        }
        Ok(Section { timeline, limited, prev_batch, state })
    }

    /// The member events (in `map`) of the timeline's senders that this device was not sent
    /// yet, or all of them with `include_redundant_members`; the user's own only when new.
    #[allow(clippy::too_many_arguments)]
    fn add_sender_members(
        &self,
        room_id: &RoomId,
        map: &StateMap,
        senders: &BTreeSet<&str>,
        in_timeline: &BTreeSet<&str>,
        device: Option<&str>,
        chosen: &mut BTreeSet<String>,
        state: &mut Vec<Arc<Pdu>>,
    ) -> Result<()> {
        for sender in senders {
            let Some(pdu) = self.rooms.state_event_shared(map, &"m.room.member".into(), sender)? else { continue };
            if in_timeline.contains(pdu.event_id.as_str()) || chosen.contains(pdu.event_id.as_str()) {
                continue;
            }
            let sent = device.is_some_and(|d| self.lazy.was_sent(self.user, d, room_id, sender, pdu.event_id.as_str()));
            let redundant_wanted = self.opts.include_redundant_members && *sender != self.user.as_str();
            if sent && !redundant_wanted {
                continue;
            }
            chosen.insert(pdu.event_id.to_string());
            state.push(pdu);
        }
        Ok(())
    }
}

/// Whether `user` was joined to `room_id` at stream position `at` (by the state after the
/// room's last event up to then).
fn was_joined_at(rooms: &Rooms, room_id: &RoomId, user: &UserId, at: u64, until: u64) -> Result<bool> {
    let Some((_, last)) = rooms.page(room_id, at, Direction::Backward, 1, until.max(at), None)?.into_iter().next()
    else {
        return Ok(false);
    };
    let state = rooms.state_after(&last.event_id)?;
    Ok(rooms
        .state_event_shared(&state, &"m.room.member".into(), user.as_str())?
        .is_some_and(|p| p.content_value().get("membership").and_then(Value::as_str) == Some("join")))
}

/// An event in the federation format: its PDU (as shown, so redacted if it was), with its
/// id and the client form's `unsigned`.
fn federation_event(pdu: &Pdu, client: Value) -> Value {
    let mut event = serde_json::to_value(&pdu.json).unwrap_or(Value::Null);
    if let (Some(fields), Value::Object(client)) = (event.as_object_mut(), client) {
        fields.insert("event_id".into(), Value::String(pdu.event_id.to_string()));
        fields.remove("unsigned");
        if let Some(unsigned) = client.get("unsigned") {
            fields.insert("unsigned".into(), unsigned.clone());
        }
    }
    event
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
    // Heroes name a room that has no name of its own (nor a canonical alias), as Synapse.
    let state = rooms.current_state_map(room_id)?;
    let named = |kind: &str, field: &str| -> Result<bool> {
        Ok(rooms
            .state_event_shared(&state, &kind.into(), "")?
            .is_some_and(|p| p.content_value().get(field).and_then(Value::as_str).is_some_and(|v| !v.is_empty())))
    };
    if named("m.room.name", "name")? || named("m.room.canonical_alias", "alias")? {
        return Ok((joined.len() as u64, invited.len() as u64, Vec::new()));
    }
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
    // The inviter's own member event too: clients name who invited (Element X's "… invited
    // you") from it.
    let inviter = match rooms.membership(room_id, user)? {
        Some(rec) => rooms.pdu_shared(&rec.event_id)?.map(|p| p.sender.clone()),
        None => None,
    };
    let map = rooms.current_state_map(room_id)?;
    let mut out = Vec::new();
    for pdu in rooms.state_events(&map)? {
        let kind = pdu.kind.to_string();
        let key = pdu.state_key.as_deref();
        let keep = crate::rooms::PREVIEW_STATE_TYPES.contains(&kind.as_str())
            || (kind == "m.room.member"
                && (key == Some(user.as_str())
                    || pdu.sender == user
                    || inviter.as_deref().is_some_and(|i| key == Some(i.as_str()))));
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
