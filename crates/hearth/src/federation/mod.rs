//! Federation as a service, above `rooms` and `users` and below `api`: what Hearth does with
//! other servers.
//!
//! - [`query`]: profiles, aliases and public rooms, answered locally or asked remotely.
//! - [`pdu`]: the checks on a received PDU that come before its room (format, signatures,
//!   hashes).
//! - [`receive`]: a received PDU into its room, fetching what it misses (auth events,
//!   prev events, the state before them) from the server that sent it.
//! - [`backfill`]: a room's history from before this server joined, asked of others.
//! - [`serve`]: what other servers read of a room: events, state, auth chains, history.
//! - [`join`]: joins and leaves through another server, both ways (`make_join` /
//!   `send_join`, `make_leave` / `send_leave`).
//! - [`invite`]: invites across servers, both ways; [`knock`]: knocking, both ways.
//! - [`keys`]: end-to-end encryption across servers (keys, device lists, to-device).
//! - [`media`]: other servers' media fetched, ours served to them.
//! - [`presence`]: presence across servers (`federate_presence`).
//! - [`transactions`]: inbound `/send`.
//! - [`sender`]: outbound transactions, from a persisted queue per destination.
//! - [`compare`]: a room's state here beside another server's `state_ids`, for operators.
//!
//! `rooms` never calls up into here: the sender follows the event stream, as `/sync` does.
//! Every network wait happens before a room's append lock is taken; incoming events of one
//! room are handled one at a time ([`Federation::room_turn`]), then the append lock.

pub mod backfill;
pub mod compare;
pub mod device_lists;
pub mod edu;
pub mod hierarchy;
pub mod invite;
pub mod join;
pub mod keys;
pub mod knock;
pub mod media;
pub mod pdu;
pub mod presence;
pub mod query;
pub mod receive;
pub mod sender;
pub mod serve;
pub mod transactions;

use std::{collections::HashMap, sync::Arc};

use parking_lot::Mutex;
use ruma::{
    events::{room::server_acl::RoomServerAclEventContent, StateEventType},
    OwnedRoomId, OwnedServerName, RoomId, ServerName,
};

use crate::{
    e2ee::{to_device::ToDevice, Keys},
    error::{Error, Result},
    rooms::{typing::Typing, Rooms},
    server_key::ServerKey,
    store::Store,
    transport::{keys::ServerKeys, server_client::ServerClient},
    users::{presence::Presence, Users},
};

pub struct Federation {
    pub(crate) rooms: Arc<Rooms>,
    pub(crate) servers: Arc<ServerClient>,
    pub(crate) keys: Arc<ServerKeys>,
    pub(crate) server_key: Arc<ServerKey>,
    pub(crate) store: Arc<Store>,
    pub(crate) typing: Arc<Typing>,
    pub(crate) users: Arc<Users>,
    pub(crate) keys_e2ee: Arc<Keys>,
    pub(crate) to_device: Arc<ToDevice>,
    pub(crate) presence: Option<Arc<Presence>>,
    pub own: OwnedServerName,
    pub sender: Arc<sender::Sender>,
    /// One room's incoming events at a time: fetching what one misses and appending it
    /// must not interleave with another's.
    turns: Mutex<HashMap<OwnedRoomId, Arc<tokio::sync::Mutex<()>>>>,
    /// Inbound transactions already answered, by (origin, txn id).
    seen_txns: transactions::SeenTransactions,
    /// Remote users whose device lists are being synced in the background.
    resyncing: device_lists::Resyncing,
    /// Joins through other servers under way ([`join::JoinsUnderWay`]).
    joins: join::JoinsUnderWay,
    /// Most events a `send_join` answer may bring (`join_max_state_events`).
    join_max_events: usize,
}

/// What federation is built on: the services below it.
pub struct Parts {
    pub rooms: Arc<Rooms>,
    pub servers: Arc<ServerClient>,
    pub server_keys: Arc<ServerKeys>,
    pub server_key: Arc<ServerKey>,
    pub store: Arc<Store>,
    pub typing: Arc<Typing>,
    pub users: Arc<Users>,
    pub e2ee_keys: Arc<Keys>,
    pub to_device: Arc<ToDevice>,
    /// Presence, when it crosses servers (`federate_presence`).
    pub presence: Option<Arc<Presence>>,
    /// `join_max_state_events`.
    pub join_max_events: usize,
}

impl Federation {
    pub fn new(p: Parts) -> Self {
        let own = p.server_key.server_name().clone();
        let sender = Arc::new(sender::Sender::new(
            p.rooms.clone(),
            p.servers.clone(),
            p.store.clone(),
            own.clone(),
            p.e2ee_keys.clone(),
            p.presence.clone(),
        ));
        Federation {
            rooms: p.rooms,
            servers: p.servers,
            keys: p.server_keys,
            server_key: p.server_key,
            store: p.store,
            typing: p.typing,
            users: p.users,
            keys_e2ee: p.e2ee_keys,
            to_device: p.to_device,
            presence: p.presence,
            own,
            sender,
            turns: Mutex::default(),
            seen_txns: Default::default(),
            resyncing: Default::default(),
            joins: Default::default(),
            join_max_events: p.join_max_events,
        }
    }

    /// Waits for the room's turn (see the module doc).
    pub(crate) async fn room_turn(&self, room: &RoomId) -> tokio::sync::OwnedMutexGuard<()> {
        let turn = {
            let mut turns = self.turns.lock();
            // Forget the turns nobody holds, now and then.
            if turns.len() > 1024 {
                turns.retain(|_, t| Arc::strong_count(t) > 1);
            }
            turns.entry(room.to_owned()).or_default().clone()
        };
        turn.lock_owned().await
    }

    /// Whether the room's server ACL (`m.room.server_acl`) lets `server` take part.
    pub fn acl_allows(&self, room: &RoomId, server: &ServerName) -> Result<bool> {
        let Some(acl) = self.rooms.state_event(room, &StateEventType::RoomServerAcl, "")? else { return Ok(true) };
        match serde_json::from_str::<RoomServerAclEventContent>(acl.content.get()) {
            Ok(content) => Ok(content.is_allowed(server)),
            // An ACL that cannot be read allows nobody but this server, as Synapse does.
            Err(_) => Ok(server == self.own),
        }
    }

    /// Refuses `origin` where the room's ACL bans it (403 `M_FORBIDDEN`), and a room this
    /// server does not know (404).
    pub fn require_acl(&self, room: &RoomId, origin: &ServerName) -> Result<()> {
        self.rooms.known_room(room)?;
        if !self.acl_allows(room, origin)? {
            return Err(Error::forbidden(format!("{origin} is denied by the room's server ACL")));
        }
        Ok(())
    }

    /// Servers with a joined member in the room, this one excluded.
    pub fn servers_in_room(&self, room: &RoomId) -> Result<Vec<OwnedServerName>> {
        servers_in_room(&self.rooms, room, &self.own)
    }

    /// Refuses `origin` unless it has a member (joined or invited) in the room and the ACL
    /// lets it in: who may read a room's events and state.
    pub fn require_member_server(&self, room: &RoomId, origin: &ServerName) -> Result<()> {
        self.require_acl(room, origin)?;
        use ruma::events::room::member::MembershipState as M;
        for membership in [M::Join, M::Invite] {
            if self.rooms.members_shared(room, &membership)?.iter().any(|u| u.server_name() == origin) {
                return Ok(());
            }
        }
        Err(Error::forbidden(format!("{origin} is not in this room")))
    }
}

/// Servers with a joined member in the room, `own` excluded, sorted.
pub fn servers_in_room(rooms: &Rooms, room: &RoomId, own: &ServerName) -> Result<Vec<OwnedServerName>> {
    let joined = rooms.members_shared(room, &ruma::events::room::member::MembershipState::Join)?;
    let mut servers: Vec<OwnedServerName> =
        joined.iter().map(|u| u.server_name().to_owned()).filter(|s| s != own).collect();
    servers.sort();
    servers.dedup();
    Ok(servers)
}
