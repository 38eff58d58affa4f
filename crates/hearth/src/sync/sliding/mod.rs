//! Simplified sliding sync (MSC4186): lists of the user's rooms ordered by recent activity,
//! windows into them, room subscriptions and extensions, sent as changes to a connection.
//!
//! A request names the record of what its connection was sent ([`connection`]); the answer
//! carries the rooms in the lists' ranges and the subscriptions that are new to the
//! connection (`initial`), changed since they were sent (new events, state, unread counts),
//! or asked for with more (a longer timeline, more `required_state`). The rooms' timelines
//! and state come from the same building blocks as `/sync` (the parent module), so
//! visibility, ignored users and redaction apply alike. Work follows what changed: a
//! room's activity is read again only when it has events since the last answer.

pub mod connection;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use ruma::{
    api::{client::sync::sync_events::v5 as ss, Direction},
    directory::RoomTypeFilter,
    events::room::member::MembershipState,
    OwnedRoomId, RoomId, UserId,
};
use serde_json::{json, Map, Value};

use connection::{Activity, RoomSent};
pub use connection::{ConnState, Connection, Connections};

use super::{
    ignored_users, invite_state, rooms_with_events, summary, without_room_id, SectionContext, SyncOptions, SyncSources,
    MAX_TIMELINE_LIMIT,
};
use crate::{
    error::{Error, Result},
    rooms::{
        backfill::{backfill_token, row_of},
        pdu::Pdu,
        state::StateMap,
        MembershipRecord, Rooms,
    },
    stream::StreamItem,
};

/// Lists one request may hold.
pub const MAX_LISTS: usize = 64;
/// Ranges one list may hold.
pub const MAX_RANGES: usize = 64;
/// Rooms one request may subscribe to.
pub const MAX_SUBSCRIPTIONS: usize = 500;
/// `required_state` entries of one list or subscription.
pub const MAX_REQUIRED_STATE: usize = 100;
/// Longest list name and `conn_id`.
pub const MAX_NAME: usize = 128;
/// Events looked at from a room's newest backwards to find its `bump_stamp`.
const BUMP_SCAN: usize = 20;

/// Event types that move a room up the list (as Synapse and Element X count activity:
/// messages and calls do, reactions, edits of state and receipts do not).
const BUMP_TYPES: &[&str] = &[
    "m.room.create",
    "m.room.message",
    "m.room.encrypted",
    "m.sticker",
    "m.call.invite",
    "m.poll.start",
    "m.beacon_info",
];

/// Refuses requests whose sizes are out of bounds, naming what.
pub fn validate(req: &ss::Request) -> Result<()> {
    if req.conn_id.as_ref().is_some_and(|c| c.len() > MAX_NAME) {
        return Err(Error::invalid_param(format!("conn_id is longer than {MAX_NAME} bytes")));
    }
    if req.lists.len() > MAX_LISTS {
        return Err(Error::invalid_param(format!("At most {MAX_LISTS} lists")));
    }
    if req.room_subscriptions.len() > MAX_SUBSCRIPTIONS {
        return Err(Error::invalid_param(format!("At most {MAX_SUBSCRIPTIONS} room subscriptions")));
    }
    for (name, list) in &req.lists {
        if name.len() > MAX_NAME {
            return Err(Error::invalid_param(format!("A list name is longer than {MAX_NAME} bytes")));
        }
        if list.ranges.len() > MAX_RANGES {
            return Err(Error::invalid_param(format!("List {name}: at most {MAX_RANGES} ranges")));
        }
        if let Some((start, end)) = list.ranges.iter().find(|(start, end)| start > end) {
            return Err(Error::invalid_param(format!("List {name}: range [{start}, {end}] ends before it starts")));
        }
        if list.room_details.required_state.len() > MAX_REQUIRED_STATE {
            return Err(Error::invalid_param(format!("List {name}: at most {MAX_REQUIRED_STATE} required_state")));
        }
    }
    if req.room_subscriptions.values().any(|s| s.required_state.len() > MAX_REQUIRED_STATE) {
        return Err(Error::invalid_param(format!("A subscription has more than {MAX_REQUIRED_STATE} required_state")));
    }
    Ok(())
}

/// What the lists and subscriptions that hold a room ask of it, merged.
#[derive(Debug, Clone, Default)]
struct RoomConfig {
    timeline_limit: usize,
    required: BTreeSet<(String, String)>,
}

impl RoomConfig {
    fn merge(&mut self, timeline_limit: ruma::UInt, required: &[(ruma::events::StateEventType, String)]) {
        let limit = usize::try_from(u64::from(timeline_limit)).unwrap_or(usize::MAX).min(MAX_TIMELINE_LIMIT);
        self.timeline_limit = self.timeline_limit.max(limit);
        self.required.extend(required.iter().map(|(t, k)| (t.to_string(), k.clone())));
    }
}

/// An answer: the body's `lists`, `rooms` and `extensions`, and the record of what the
/// connection has been sent once it is delivered.
pub struct Answer {
    pub lists: Map<String, Value>,
    pub rooms: Map<String, Value>,
    pub extensions: Map<String, Value>,
    pub state: ConnState,
    /// Nothing the client has not seen: a long-poll waits on.
    pub empty: bool,
}

/// A room the user may list, with what filters and ordering read of it.
struct Candidate<'a> {
    room_id: &'a RoomId,
    rec: &'a MembershipRecord,
    activity: Activity,
}

/// Builds the answer to `req` for `user` (as `device`), from the connection's record
/// `prev` (none for a new connection) up to stream position `now` and typing version
/// `typing_now`.
pub fn assemble(
    src: &SyncSources<'_>,
    user: &UserId,
    device: &str,
    prev: Option<&ConnState>,
    req: &ss::Request,
    now: u64,
    typing_now: u64,
) -> Result<Answer> {
    let rooms = src.rooms;
    let since = prev.map(|p| p.pos);
    let mut st = prev.cloned().unwrap_or_default();
    st.pos = now;
    st.typing = typing_now;
    let memberships = rooms.user_memberships(user)?;
    let ignored = ignored_users(src.account_data, user)?;
    let (with_events, items) = match since {
        Some(s) => (rooms_with_events(rooms, s, now)?, rooms.stream.items_between(s, now)?),
        None => (BTreeSet::new(), Vec::new()),
    };

    // The rooms that can be listed: joined, invited and knocked; and rooms left since the
    // last answer that the connection had been sent, so that it learns of the leave.
    let mut candidates = Vec::new();
    for (room_id, rec) in memberships.iter() {
        if rec.stream > now {
            continue;
        }
        let listed = match rec.membership {
            MembershipState::Join | MembershipState::Invite | MembershipState::Knock => true,
            MembershipState::Leave | MembershipState::Ban => {
                since.is_some_and(|s| rec.stream > s) && st.rooms.contains_key(room_id)
            }
            _ => false,
        };
        if !listed {
            continue;
        }
        if rec.membership == MembershipState::Invite {
            let inviter = rooms.pdu_shared(&rec.event_id)?.map(|p| p.sender.to_string());
            if inviter.is_some_and(|i| ignored.contains(&i)) {
                continue;
            }
        }
        let known = st.activity.get(room_id).copied();
        let stale = known.is_none() || with_events.contains(room_id) || since.is_none_or(|s| rec.stream > s);
        let activity = match (known, stale) {
            (Some(a), false) => a,
            _ => activity(rooms, room_id, rec, now)?,
        };
        candidates.push(Candidate { room_id, rec, activity });
    }
    st.activity = candidates.iter().map(|c| (c.room_id.to_owned(), c.activity)).collect();
    // Most recent first; the room id breaks ties so that ranges are stable.
    candidates.sort_by(|a, b| b.activity.bump.cmp(&a.activity.bump).then_with(|| a.room_id.cmp(b.room_id)));

    let index: HashMap<&RoomId, usize> = candidates.iter().enumerate().map(|(i, c)| (c.room_id, i)).collect();
    let dm_rooms = direct_rooms(src, user)?;
    let mut facts = Facts { rooms, user, dm_rooms: &dm_rooms, cache: HashMap::new() };

    // The lists, and the window of rooms they and the subscriptions hold.
    let mut window: BTreeMap<OwnedRoomId, RoomConfig> = BTreeMap::new();
    let mut lists = Map::new();
    let mut counts_changed = prev.is_none();
    for (name, list) in &req.lists {
        let mut members = Vec::new();
        for c in &candidates {
            if facts.passes(c, list.filters.as_ref())? {
                members.push(c);
            }
        }
        for (start, end) in &list.ranges {
            let (start, end) = (u64::from(*start), u64::from(*end));
            let last = (members.len() as u64).saturating_sub(1).min(end);
            if members.is_empty() || start > last {
                continue;
            }
            for c in &members[start as usize..=last as usize] {
                window
                    .entry(c.room_id.to_owned())
                    .or_default()
                    .merge(list.room_details.timeline_limit, &list.room_details.required_state);
            }
        }
        counts_changed |= st.list_counts.get(name) != Some(&members.len());
        st.list_counts.insert(name.clone(), members.len());
        lists.insert(name.clone(), json!({"count": members.len()}));
    }
    st.list_counts.retain(|name, _| req.lists.contains_key(name));
    for (room_id, sub) in &req.room_subscriptions {
        // Only rooms the user is in (or invited to): a subscription shows nothing else.
        if index.contains_key(&&**room_id) {
            window.entry(room_id.clone()).or_default().merge(sub.timeline_limit, &sub.required_state);
        }
    }

    let receipt_rooms: BTreeSet<&RoomId> = items
        .iter()
        .filter_map(|(_, i)| match i {
            StreamItem::Receipt { room_id } => Some(room_id.as_ref()),
            _ => None,
        })
        .collect();
    let mut out_rooms = Map::new();
    let mut fresh_rooms = BTreeSet::new();
    for (room_id, config) in &window {
        let Some(c) = index.get(&&**room_id).map(|&i| &candidates[i]) else { continue };
        let builder = RoomBuilder { src, user, device, since, now, ignored: &ignored, facts: &mut facts };
        let sent = st.rooms.get(room_id);
        let receipts_moved = receipt_rooms.contains(&&**room_id);
        if let Some((json, record, fresh)) = builder.build(c, config, sent, receipts_moved)? {
            if fresh {
                fresh_rooms.insert(room_id.clone());
            }
            out_rooms.insert(room_id.to_string(), json);
            st.rooms.insert(room_id.clone(), record);
        }
    }
    // What the connection was sent of rooms the user is no longer in is forgotten, so that
    // a rejoin sends the room afresh.
    st.rooms.retain(|room_id, _| st.activity.contains_key(room_id));

    let extensions = extensions(src, user, device, req, prev, now, &window, &fresh_rooms, &receipt_rooms, &items)?;
    let extension_news = extensions.iter().any(|(name, value)| match name.as_str() {
        "to_device" => value["events"].as_array().is_some_and(|e| !e.is_empty()),
        "e2ee" => value.get("device_lists").is_some(),
        _ => true,
    });
    let empty = !counts_changed && out_rooms.is_empty() && !extension_news;
    Ok(Answer { lists, rooms: out_rooms, extensions, state: st, empty })
}

/// A room's activity: its newest event, and the newest event that bumps it (up to
/// [`BUMP_SCAN`] back; else the newest). An invite or a leave is its own activity.
fn activity(rooms: &Rooms, room_id: &RoomId, rec: &MembershipRecord, now: u64) -> Result<Activity> {
    if rec.membership != MembershipState::Join {
        return Ok(Activity { latest: rec.stream, bump: rec.stream });
    }
    let bumps = |pdu: &Pdu| BUMP_TYPES.contains(&pdu.kind.to_string().as_str());
    // The newest event is a message in most rooms: one read, not a page, settles it.
    let newest = rooms.page(room_id, now, Direction::Backward, 1, now, None)?;
    let Some((latest, pdu)) = newest.first() else {
        return Ok(Activity { latest: rec.stream, bump: rec.stream });
    };
    if bumps(pdu) {
        return Ok(Activity { latest: *latest, bump: *latest });
    }
    let page = rooms.page(room_id, now, Direction::Backward, BUMP_SCAN, now, None)?;
    let bump = page.iter().find(|(_, pdu)| bumps(pdu)).map_or(*latest, |(pos, _)| *pos);
    Ok(Activity { latest: *latest, bump })
}

/// Rooms named in the user's `m.direct` account data.
fn direct_rooms(src: &SyncSources<'_>, user: &UserId) -> Result<BTreeSet<String>> {
    let direct = src.account_data.get(user, None, "m.direct")?;
    Ok(direct
        .as_ref()
        .and_then(Value::as_object)
        .map(|m| {
            m.values().filter_map(Value::as_array).flatten().filter_map(Value::as_str).map(str::to_owned).collect()
        })
        .unwrap_or_default())
}

/// What filters and room entries read of a room, read once per request.
struct Facts<'a> {
    rooms: &'a Rooms,
    user: &'a UserId,
    dm_rooms: &'a BTreeSet<String>,
    cache: HashMap<OwnedRoomId, RoomFacts>,
}

#[derive(Clone)]
struct RoomFacts {
    encrypted: bool,
    room_type: Option<String>,
    is_dm: bool,
}

impl Facts<'_> {
    fn of(&mut self, room_id: &RoomId, rec: &MembershipRecord) -> Result<RoomFacts> {
        if let Some(f) = self.cache.get(room_id) {
            return Ok(f.clone());
        }
        let mut facts =
            RoomFacts { encrypted: false, room_type: None, is_dm: self.dm_rooms.contains(room_id.as_str()) };
        let joined_here =
            matches!(rec.membership, MembershipState::Join | MembershipState::Leave | MembershipState::Ban);
        if joined_here && self.rooms.room(room_id)?.is_some() {
            let map = self.rooms.current_state_map(room_id)?;
            facts.encrypted = self.rooms.state_event_shared(&map, &"m.room.encryption".into(), "")?.is_some();
            facts.room_type = self
                .rooms
                .state_event_shared(&map, &"m.room.create".into(), "")?
                .and_then(|p| p.content_value().get("type").and_then(Value::as_str).map(str::to_owned));
        } else {
            // An invite or knock: what its stripped state says.
            for event in invite_state(self.rooms, room_id, self.user)? {
                match event["type"].as_str() {
                    Some("m.room.encryption") => facts.encrypted = true,
                    Some("m.room.create") => {
                        facts.room_type = event["content"]["type"].as_str().map(str::to_owned);
                    }
                    Some("m.room.member") if event["state_key"] == self.user.as_str() => {
                        facts.is_dm |= event["content"]["is_direct"] == true;
                    }
                    _ => {}
                }
            }
        }
        self.cache.insert(room_id.to_owned(), facts.clone());
        Ok(facts)
    }

    /// Whether a room passes a list's filters (all of them: absent ones pass).
    fn passes(&mut self, c: &Candidate<'_>, filters: Option<&ss::request::ListFilters>) -> Result<bool> {
        let Some(f) = filters else { return Ok(true) };
        let invited = c.rec.membership == MembershipState::Invite;
        if f.is_invite.is_some_and(|want| want != invited) {
            return Ok(false);
        }
        let needs_facts =
            f.is_dm.is_some() || f.is_encrypted.is_some() || !f.room_types.is_empty() || !f.not_room_types.is_empty();
        if !needs_facts {
            return Ok(true);
        }
        let facts = self.of(c.room_id, c.rec)?;
        if f.is_dm.is_some_and(|want| want != facts.is_dm) || f.is_encrypted.is_some_and(|want| want != facts.encrypted)
        {
            return Ok(false);
        }
        let is = |filter: &RoomTypeFilter| match filter {
            RoomTypeFilter::Default => facts.room_type.is_none(),
            other => other.as_str() == facts.room_type.as_deref(),
        };
        if f.not_room_types.iter().any(is) {
            return Ok(false);
        }
        Ok(f.room_types.is_empty() || f.room_types.iter().any(is))
    }
}

/// Builds one room's entry.
struct RoomBuilder<'a, 'f> {
    src: &'a SyncSources<'a>,
    user: &'a UserId,
    device: &'a str,
    since: Option<u64>,
    now: u64,
    ignored: &'a BTreeSet<String>,
    facts: &'f mut Facts<'a>,
}

impl RoomBuilder<'_, '_> {
    /// The room's entry, the record of what was sent, and whether it is `initial`; `None`
    /// when the connection has nothing new to be told of it.
    fn build(
        self,
        c: &Candidate<'_>,
        config: &RoomConfig,
        sent: Option<&RoomSent>,
        receipts_moved: bool,
    ) -> Result<Option<(Value, RoomSent, bool)>> {
        let rooms = self.src.rooms;
        let (room_id, rec) = (c.room_id, c.rec);
        // New to the connection, or in it anew (joined, invited): sent in full. A leave is
        // sent as what happened since, ending with the leave.
        let entered =
            matches!(rec.membership, MembershipState::Join | MembershipState::Invite | MembershipState::Knock);
        let fresh = sent.is_none_or(|s| s.membership != rec.membership && entered);
        let facts = self.facts.of(room_id, rec)?;
        let mut room = Map::new();
        room.insert("bump_stamp".into(), json!(c.activity.bump));
        if facts.is_dm {
            room.insert("is_dm".into(), json!(true));
        }
        if matches!(rec.membership, MembershipState::Invite | MembershipState::Knock) {
            if !fresh {
                return Ok(None);
            }
            let stripped = invite_state(rooms, room_id, self.user)?;
            if let Some(name) = stripped.iter().find(|e| e["type"] == "m.room.name") {
                if let Some(n) = name["content"]["name"].as_str().filter(|n| !n.is_empty()) {
                    room.insert("name".into(), json!(n));
                }
            }
            room.insert("invite_state".into(), Value::Array(stripped));
            room.insert("initial".into(), json!(true));
            let record = RoomSent {
                membership: rec.membership.clone(),
                through: c.activity.latest,
                timeline_limit: config.timeline_limit,
                required: config.required.clone(),
                state: HashMap::new(),
                counts: (0, 0),
            };
            return Ok(Some((Value::Object(room), record, true)));
        }

        // Joined, or left since the last answer: a timeline up to now (or the leave).
        let until = if rec.membership == MembershipState::Join { self.now } else { rec.stream };
        let joined = rec.membership == MembershipState::Join;
        let (newer, expanded, more_state) = match sent.filter(|_| !fresh) {
            Some(s) => (
                c.activity.latest > s.through,
                config.timeline_limit > s.timeline_limit,
                !config.required.is_subset(&s.required),
            ),
            None => (true, false, false),
        };
        // Unread counts are counted only for a room being sent or where a receipt moved.
        if !fresh && !newer && !expanded && !more_state && !receipts_moved {
            return Ok(None);
        }
        let counts = match joined {
            true => {
                let u =
                    self.src.push.unread_counts(rooms, self.src.account_data, room_id, self.user, self.now, false)?;
                (u.notifications, u.highlights)
            }
            false => (0, 0),
        };
        let counts_moved = sent.is_some_and(|s| s.counts != counts);
        if !fresh && !newer && !expanded && !more_state && !counts_moved {
            return Ok(None);
        }
        // The timeline: the newest events when fresh or asked for more, else what is new.
        let from = match sent {
            Some(s) if !fresh && !expanded => Some(s.through),
            _ => None,
        };
        let wants_timeline = fresh || expanded || newer;
        let opts = SyncOptions { timeline_limit: config.timeline_limit, acknowledge: false, ..SyncOptions::default() };
        let section = SectionContext {
            rooms,
            user: self.user,
            opts: &opts,
            viewer: Some((self.user, self.device)),
            lazy: self.src.lazy,
            ignored: self.ignored,
        };
        let (page, limited, gap) = match wants_timeline && config.timeline_limit > 0 {
            true => section.timeline(room_id, from, until)?,
            false => (Vec::new(), false, None),
        };
        let mut timeline = Vec::with_capacity(page.len());
        for (_, pdu) in &page {
            let meta = rooms.event_meta(&pdu.event_id)?;
            timeline.push(without_room_id(rooms.client_event(pdu, meta.as_ref(), Some((self.user, self.device)))));
        }
        if wants_timeline {
            let prev_batch = match gap {
                Some(pos) => Some(backfill_token(row_of(pos, 0))),
                None => page.first().map(|(pos, _)| crate::rooms::timeline::token(pos.saturating_sub(1))),
            };
            if let Some(p) = prev_batch {
                room.insert("prev_batch".into(), json!(p));
            }
            // More history than sent: the client may page back (or, when the room is not
            // new to it, must drop what it holds: a longer timeline replaces it).
            if limited || (expanded && !fresh) {
                room.insert("limited".into(), json!(true));
            }
            let live = self.since.map_or(0, |s| page.iter().filter(|(pos, _)| *pos > s).count());
            room.insert("num_live".into(), json!(live));
        }
        if !timeline.is_empty() {
            room.insert("timeline".into(), Value::Array(timeline));
        }

        // The state asked for, as of the timeline's end: what was not sent already.
        let map = match joined {
            true => rooms.current_state_map(room_id)?,
            false => rooms.state_after(&rec.event_id)?,
        };
        let senders: BTreeSet<&str> = page.iter().map(|(_, p)| p.sender.as_str()).collect();
        let wanted = required_state(rooms, &map, &config.required, self.user, &senders)?;
        let mut state = match sent.filter(|_| !fresh) {
            Some(s) => s.state.clone(),
            None => HashMap::new(),
        };
        let mut required = Vec::new();
        for pdu in wanted {
            let key = (pdu.kind.to_string(), pdu.state_key.clone().unwrap_or_default());
            if state.get(&key).map(String::as_str) == Some(pdu.event_id.as_str()) {
                continue;
            }
            state.insert(key, pdu.event_id.to_string());
            required.push(without_room_id(rooms.client_event(&pdu, None, None)));
        }
        if !required.is_empty() {
            room.insert("required_state".into(), Value::Array(required));
        }

        // What names the room, and its counts.
        let (joined_count, invited_count, heroes) = summary(rooms, room_id, self.user)?;
        let named = |kind: &str, field: &str| -> Result<Option<String>> {
            Ok(rooms
                .state_event_shared(&map, &kind.into(), "")?
                .and_then(|p| p.content_value().get(field).and_then(Value::as_str).map(str::to_owned))
                .filter(|v| !v.is_empty()))
        };
        if let Some(name) = named("m.room.name", "name")? {
            room.insert("name".into(), json!(name));
        }
        if let Some(avatar) = named("m.room.avatar", "url")? {
            room.insert("avatar".into(), json!(avatar));
        }
        if !heroes.is_empty() {
            let mut list = Vec::new();
            for hero in heroes {
                let mut entry = Map::new();
                if let Some(member) = rooms.state_event_shared(&map, &"m.room.member".into(), &hero)? {
                    let content = member.content_value();
                    for (field, shown) in [("displayname", "displayname"), ("avatar_url", "avatar_url")] {
                        if let Some(v) = content.get(field).and_then(Value::as_str) {
                            entry.insert(shown.into(), json!(v));
                        }
                    }
                }
                entry.insert("user_id".into(), json!(hero));
                list.push(Value::Object(entry));
            }
            room.insert("heroes".into(), Value::Array(list));
        }
        room.insert("joined_count".into(), json!(joined_count));
        room.insert("invited_count".into(), json!(invited_count));
        room.insert("notification_count".into(), json!(counts.0));
        room.insert("highlight_count".into(), json!(counts.1));
        if fresh {
            room.insert("initial".into(), json!(true));
        }
        let record = RoomSent {
            membership: rec.membership.clone(),
            through: c.activity.latest.max(sent.map_or(0, |s| s.through)),
            timeline_limit: config.timeline_limit.max(sent.filter(|_| !fresh).map_or(0, |s| s.timeline_limit)),
            required: match sent.filter(|_| !fresh) {
                Some(s) => s.required.union(&config.required).cloned().collect(),
                None => config.required.clone(),
            },
            state,
            counts,
        };
        Ok(Some((Value::Object(room), record, fresh)))
    }
}

/// The state events of `map` that `required` asks for: `(type, state_key)` pairs where
/// either may be `*`, and a member's state key may be `$ME` (the user) or `$LAZY` (the
/// timeline's senders).
fn required_state(
    rooms: &Rooms,
    map: &StateMap,
    required: &BTreeSet<(String, String)>,
    user: &UserId,
    senders: &BTreeSet<&str>,
) -> Result<Vec<std::sync::Arc<Pdu>>> {
    if required.iter().any(|(t, k)| t == "*" || k == "*") {
        let matches = |pdu: &Pdu| {
            let (kind, key) = (pdu.kind.to_string(), pdu.state_key.as_deref().unwrap_or_default());
            required.iter().any(|(t, k)| {
                (t == "*" || *t == kind)
                    && (k == "*"
                        || k == key
                        || (k == "$ME" && key == user.as_str())
                        || (k == "$LAZY" && kind == "m.room.member" && senders.contains(key)))
            })
        };
        return Ok(rooms.state_events(map)?.into_iter().filter(|p| matches(p)).collect());
    }
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for (kind, key) in required {
        let keys: Vec<&str> = match key.as_str() {
            "$ME" => vec![user.as_str()],
            "$LAZY" if kind == "m.room.member" => senders.iter().copied().collect(),
            "$LAZY" => Vec::new(),
            other => vec![other],
        };
        for key in keys {
            if let Some(pdu) = rooms.state_event_shared(map, &kind.as_str().into(), key)? {
                if seen.insert(pdu.event_id.clone()) {
                    out.push(pdu);
                }
            }
        }
    }
    Ok(out)
}

/// The extensions the request turned on, over the rooms of the window.
#[allow(clippy::too_many_arguments)]
fn extensions(
    src: &SyncSources<'_>,
    user: &UserId,
    device: &str,
    req: &ss::Request,
    prev: Option<&ConnState>,
    now: u64,
    window: &BTreeMap<OwnedRoomId, RoomConfig>,
    fresh_rooms: &BTreeSet<OwnedRoomId>,
    receipt_rooms: &BTreeSet<&RoomId>,
    items: &[(u64, StreamItem)],
) -> Result<Map<String, Value>> {
    let ext = &req.extensions;
    let since = prev.map(|p| p.pos);
    let mut out = Map::new();
    if ext.to_device.enabled == Some(true) {
        // Its own token, as `/sync`'s `since`: what it names was delivered and is deleted.
        if let Some(token) = &ext.to_device.since {
            let acknowledged: u64 = token.parse().map_err(|_| Error::invalid_param("Invalid to_device since token"))?;
            src.to_device.acknowledge(user, device, acknowledged)?;
        }
        let events = src.to_device.pending(user, device, now)?;
        out.insert("to_device".into(), json!({"next_batch": now.to_string(), "events": events}));
    }
    if ext.e2ee.enabled == Some(true) {
        let mut e2ee = Map::new();
        if let Some(s) = since {
            let with_events = rooms_with_events(src.rooms, s, now)?;
            let delta = src.keys.device_list_delta(src.rooms, user, s, now, items, &with_events)?;
            if !delta.changed.is_empty() || !delta.left.is_empty() {
                e2ee.insert("device_lists".into(), json!({"changed": delta.changed, "left": delta.left}));
            }
        }
        let mut counts = src.keys.one_time_key_counts(user, device)?;
        counts.entry("signed_curve25519".into()).or_insert(0);
        e2ee.insert("device_one_time_keys_count".into(), json!(counts));
        e2ee.insert("device_unused_fallback_key_types".into(), json!(src.keys.unused_fallback_types(user, device)?));
        out.insert("e2ee".into(), Value::Object(e2ee));
    }
    if ext.account_data.enabled == Some(true) {
        let changes = src.account_data.changes(user, since)?;
        let mut global = changes.global;
        if since.is_none() && !global.iter().any(|e| e["type"] == "m.push_rules") {
            global.push(crate::push::rules::default_rules_event(user).to_value());
        }
        let mut by_room = changes.rooms;
        // Rooms new to the connection bring all their account data, changed or not.
        if since.is_some() && !fresh_rooms.is_empty() {
            let all = src.account_data.changes(user, None)?.rooms;
            for room_id in fresh_rooms {
                if let Some(events) = all.get(room_id) {
                    by_room.insert(room_id.clone(), events.clone());
                }
            }
        }
        by_room.retain(|room_id, events| window.contains_key(room_id) && !events.is_empty());
        let mut account = Map::new();
        if !global.is_empty() {
            account.insert("global".into(), Value::Array(global));
        }
        if !by_room.is_empty() {
            let rooms: Map<String, Value> =
                by_room.into_iter().map(|(r, events)| (r.to_string(), Value::Array(events))).collect();
            account.insert("rooms".into(), Value::Object(rooms));
        }
        if !account.is_empty() {
            out.insert("account_data".into(), Value::Object(account));
        }
    }
    if ext.receipts.enabled == Some(true) {
        let mut receipts = Map::new();
        for room_id in window.keys() {
            let from = match fresh_rooms.contains(room_id) || since.is_none() {
                true => None,
                false if receipt_rooms.contains(&&**room_id) => since,
                false => continue,
            };
            if let Some(event) = src.rooms.receipt_event(room_id, from, user)? {
                receipts.insert(room_id.to_string(), without_room_id(event));
            }
        }
        if !receipts.is_empty() {
            out.insert("receipts".into(), json!({"rooms": receipts}));
        }
    }
    if ext.typing.enabled == Some(true) {
        let mut typing = Map::new();
        for room_id in window.keys() {
            let from = match fresh_rooms.contains(room_id) {
                true => None,
                false => prev.map(|p| p.typing),
            };
            if let Some(users) = src.typing.typing_since(room_id, from) {
                typing.insert(room_id.to_string(), json!({"type": "m.typing", "content": {"user_ids": users}}));
            }
        }
        if !typing.is_empty() {
            out.insert("typing".into(), json!({"rooms": typing}));
        }
    }
    Ok(out)
}
