//! What a server operator does to a server: make and change accounts, take them away,
//! delete and block rooms, take a backup. One implementation, used by every way in — the
//! `hearth admin` command on a stopped data directory, the same command over the running
//! server's admin channel, Synapse's admin API, and (for deactivation) the account's own
//! client request — so that each does exactly the same.
//!
//! Above `users`, `rooms`, `e2ee` and `media`, which it combines; below `api`. It makes no
//! network requests itself: leaves it writes reach other servers through the federation
//! sender, which follows the stream.

use std::{collections::VecDeque, path::Path, sync::Arc};

use parking_lot::Mutex;
use ruma::{events::room::member::MembershipState, OwnedRoomAliasId, OwnedRoomId, OwnedUserId, RoomId, UserId};
use serde::Serialize;

use crate::{
    e2ee::Keys,
    error::{Error, Result},
    media::Media,
    rooms::Rooms,
    store::Store,
    users::{NewAccount, Users},
};

pub struct Admin {
    store: Arc<Store>,
    users: Arc<Users>,
    keys: Arc<Keys>,
    rooms: Arc<Rooms>,
    media: Arc<Media>,
    /// Room deletions asked for through the API since start-up, newest last, for their
    /// status pages (Synapse keeps them about a day, and not across restarts either).
    deletions: Mutex<VecDeque<Deletion>>,
    /// Whether the server is serving (its federation sender running), which a purge of a
    /// room shared with other servers waits on.
    serving: std::sync::atomic::AtomicBool,
    federation: bool,
}

/// How long a purge waits for the federation sender to queue the members' leaves.
const SENDER_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Most room deletions remembered for their status.
const MAX_DELETIONS: usize = 1000;

/// A room deletion and how it ended.
#[derive(Debug, Clone)]
pub struct Deletion {
    pub delete_id: String,
    pub room_id: OwnedRoomId,
    pub outcome: std::result::Result<DeletedRoom, String>,
}

/// What a room deletion asks for.
#[derive(Debug, Clone, Default)]
pub struct DeleteRoom {
    /// Also block the room: no local user may join it again, nor another server through
    /// this one.
    pub block: bool,
    /// Also remove the room's history and state from the database (see [`Admin::purge_room`]).
    pub purge: bool,
    /// The admin who asked (recorded with a block).
    pub by: Option<OwnedUserId>,
}

/// What a room deletion did, in the words of Synapse's answer.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DeletedRoom {
    pub kicked_users: Vec<OwnedUserId>,
    pub failed_to_kick_users: Vec<OwnedUserId>,
    pub local_aliases: Vec<OwnedRoomAliasId>,
    /// Events removed from the database (0 without `purge`).
    #[serde(skip)]
    pub purged_events: usize,
}

impl Admin {
    pub fn new(
        store: Arc<Store>,
        users: Arc<Users>,
        keys: Arc<Keys>,
        rooms: Arc<Rooms>,
        media: Arc<Media>,
        federation: bool,
    ) -> Self {
        let serving = std::sync::atomic::AtomicBool::new(false);
        Admin { store, users, keys, rooms, media, deletions: Mutex::default(), serving, federation }
    }

    /// Called by the server once it serves (and its federation sender runs).
    pub fn set_serving(&self, serving: bool) {
        self.serving.store(serving, std::sync::atomic::Ordering::SeqCst);
    }

    /// Deletes a room (see [`Admin::delete_room`]) and remembers how it went under a new
    /// id, for Synapse's asynchronous deletion API. A room this server does not know is
    /// deleted without anything to do, as on Synapse.
    pub async fn delete_room_tracked(&self, room: &RoomId, how: &DeleteRoom) -> Deletion {
        let outcome = match self.delete_room(room, how).await {
            Ok(done) => Ok(done),
            Err(Error::Matrix { status: http::StatusCode::NOT_FOUND, .. }) => Ok(DeletedRoom::default()),
            Err(e) => Err(e.to_string()),
        };
        let delete_id: String = crate::random::alphanumeric(16);
        let deletion = Deletion { delete_id, room_id: room.to_owned(), outcome };
        let mut all = self.deletions.lock();
        if all.len() >= MAX_DELETIONS {
            all.pop_front();
        }
        all.push_back(deletion.clone());
        deletion
    }

    /// A remembered deletion by its id.
    pub fn deletion(&self, delete_id: &str) -> Option<Deletion> {
        self.deletions.lock().iter().find(|d| d.delete_id == delete_id).cloned()
    }

    /// The remembered deletions of a room, oldest first.
    pub fn deletions_of(&self, room: &RoomId) -> Vec<Deletion> {
        self.deletions.lock().iter().filter(|d| d.room_id == room).cloned().collect()
    }

    /// A local user given as a localpart or a full id, that has an account here.
    pub fn local_user(&self, given: &str) -> Result<OwnedUserId> {
        self.users
            .parse_login_user(given)
            .filter(|id| self.users.account(id).ok().flatten().is_some())
            .ok_or_else(|| Error::not_found(format!("{given} is not a user of this server")))
    }

    /// Creates an account (without a password, it can log in only once given one); the
    /// first one on a server is its admin unless `admin` says no.
    pub fn create_user(&self, localpart: &str, password: Option<&str>, admin: Option<bool>) -> Result<OwnedUserId> {
        if let Err(problem) = self.users.check_new_localpart(localpart)? {
            let words = format!("cannot create {localpart}: {problem}");
            return Err(match problem.into_error() {
                Error::Matrix { status, errcode, .. } => Error::matrix(status, errcode, words),
                other => other,
            });
        }
        if let Some(p) = password {
            check_password(p)?;
        }
        self.users.create_account(NewAccount { localpart, password, admin, guest: false, appservice: false })
    }

    /// Sets a password; with `logout_devices`, every device of the user is logged out.
    pub fn reset_password(&self, user: &UserId, password: &str, logout_devices: bool) -> Result<()> {
        check_password(password)?;
        let account = self.users.account(user)?.ok_or_else(|| Error::not_found(format!("{user} has no account")))?;
        if account.deactivated {
            return Err(Error::invalid_param(format!("{user} is deactivated; reactivate it to give it a password")));
        }
        self.users.set_password(user, password)?;
        if logout_devices {
            self.logout_all(user)?;
        }
        Ok(())
    }

    /// Sets or removes (`None`) a profile field and copies it into the user's rooms, as a
    /// change of their own would.
    pub fn set_profile(&self, user: &UserId, field: &str, value: Option<String>) -> Result<()> {
        self.users.set_profile_string(user, field, value.clone())?;
        self.rooms.copy_profile_to_rooms(user, field, value.as_deref())
    }

    /// Logs out the named devices (unknown ones are skipped), announcing their removal.
    pub fn delete_devices(&self, user: &UserId, ids: &[ruma::OwnedDeviceId]) -> Result<()> {
        let known: Vec<ruma::OwnedDeviceId> =
            self.users.devices(user)?.into_iter().map(|(d, _)| d).filter(|d| ids.contains(d)).collect();
        self.users.delete_devices(user, &known)?;
        let names: Vec<String> = known.iter().map(ToString::to_string).collect();
        self.keys.forget_devices(&self.rooms, user, &names)
    }

    /// Logs out every device of the user, announcing the removed devices to those who
    /// share a room with them.
    pub fn logout_all(&self, user: &UserId) -> Result<()> {
        let devices: Vec<String> = self.users.devices(user)?.into_iter().map(|(d, _)| d.to_string()).collect();
        self.users.delete_all_devices_except(user, None)?;
        self.keys.forget_devices(&self.rooms, user, &devices)
    }

    /// Deactivates an account: no password, devices, tokens or profile; it leaves its
    /// rooms and declines its invites, as on Synapse. With `erase`, its messages are hidden
    /// from those who were not there to see them (`rooms::erasure`). A room that refuses a
    /// leave is logged and skipped.
    pub fn deactivate(&self, user: &UserId, erase: bool) -> Result<()> {
        let devices: Vec<String> = self.users.devices(user)?.into_iter().map(|(d, _)| d.to_string()).collect();
        self.users.deactivate(user)?;
        if erase {
            self.rooms.set_erased(user)?;
        }
        self.keys.forget_devices(&self.rooms, user, &devices)?;
        let rooms =
            self.rooms.rooms_of(user, &[MembershipState::Join, MembershipState::Invite, MembershipState::Knock])?;
        for (room_id, _) in rooms {
            if self.rooms.room(&room_id)?.is_none() {
                continue; // an invite to a room elsewhere: nothing here to leave
            }
            if let Err(e) = self.rooms.set_leave(&room_id, user, user, None) {
                tracing::info!(%room_id, %user, error = %e, "a deactivated user could not leave a room");
            }
        }
        Ok(())
    }

    /// Deletes a room from this server's point of view: every local member leaves (an
    /// invite is declined, a knock withdrawn) and forgets it, its local aliases go, and it
    /// leaves the public directory; with `block`, nobody can bring it back; with `purge`,
    /// its history and state leave the database too ([`Admin::purge_room`]). Other
    /// servers' members stay in it. A room this server does not know can still be blocked.
    pub async fn delete_room(&self, room: &RoomId, how: &DeleteRoom) -> Result<DeletedRoom> {
        if how.block {
            self.rooms.set_blocked(room, how.by.as_deref(), true)?;
        }
        let mut done = DeletedRoom::default();
        if self.rooms.room(room)?.is_none() {
            if how.block {
                return Ok(done);
            }
            return Err(Error::not_found(format!("{room} is not a room this server knows")));
        }
        let mut local = Vec::new();
        for state in [MembershipState::Join, MembershipState::Invite, MembershipState::Knock] {
            local.extend(
                self.rooms.members(room, &state)?.into_iter().filter(|u| u.server_name() == self.rooms.server_name),
            );
        }
        for user in local {
            match self.rooms.set_leave(room, &user, &user, None).and_then(|_| self.rooms.forget(room, &user)) {
                Ok(()) => done.kicked_users.push(user),
                Err(e) => {
                    tracing::warn!(%room, %user, error = %e, "a member of a deleted room could not leave it");
                    done.failed_to_kick_users.push(user);
                }
            }
        }
        for alias in self.rooms.local_aliases(room)? {
            self.rooms.delete_alias(&alias)?;
            done.local_aliases.push(alias);
        }
        self.rooms.set_published(room, false)?;
        if how.purge {
            done.purged_events = self.purge_room(room).await?;
        }
        tracing::info!(%room, block = how.block, by = ?how.by, left = done.kicked_users.len(), "room deleted");
        Ok(done)
    }

    /// Removes a room without local members from the database (`rooms::purge`); the
    /// number of events removed.
    ///
    /// The local members' leaves must reach the other servers in the room first: the
    /// purge waits until the federation sender has queued them (the queued events are
    /// kept until sent). A server that is not running has no sender, so a room shared with
    /// other servers is purged only by a running one: the command then says so.
    pub async fn purge_room(&self, room: &RoomId) -> Result<usize> {
        let local = |u: &OwnedUserId| u.server_name() == self.rooms.server_name;
        for state in [MembershipState::Join, MembershipState::Invite, MembershipState::Knock] {
            if self.rooms.members(room, &state)?.iter().any(local) {
                return Err(Error::invalid_param(format!("{room} still has local members; delete it first")));
            }
        }
        let shared = !crate::federation::servers_in_room(&self.rooms, room, &self.rooms.server_name)?.is_empty();
        if shared && self.federation {
            // The leaves were written but, inside a request, not yet made durable (the
            // answer waits for that): the follower reads only durable positions.
            let until = self.rooms.stream.written();
            self.rooms.stream.wait_durable(until).await?;
            let serving = self.serving.load(std::sync::atomic::Ordering::SeqCst);
            if !serving {
                return Err(Error::invalid_param(format!(
                    "{room} is shared with other servers: purge it while the server runs, so that the \
                     members' leaves reach them (or delete it now without purging)"
                )));
            }
            let deadline = tokio::time::Instant::now() + SENDER_WAIT;
            while crate::federation::sender::queued_up_to(&self.store)?.unwrap_or(0) < until {
                if tokio::time::Instant::now() >= deadline {
                    return Err(Error::matrix(
                        http::StatusCode::SERVICE_UNAVAILABLE,
                        "M_UNKNOWN",
                        "the federation sender has not caught up with the leaves yet; try the purge again",
                    ));
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
        let keep = crate::federation::sender::queued_events(&self.store)?;
        let rooms = self.rooms.clone();
        let room_id = room.to_owned();
        let purged = tokio::task::spawn_blocking(move || rooms.purge(&room_id, &keep))
            .await
            .map_err(|e| Error::internal(format!("purge task: {e}")))??;
        Ok(purged.events)
    }

    /// Copies the database and the media into `to`, which must be absent or empty. Safe
    /// while the server runs: a RocksDB checkpoint or an SQLite `VACUUM INTO`.
    pub fn backup(&self, to: &Path) -> Result<()> {
        if to.exists() && std::fs::read_dir(to).map(|mut d| d.next().is_some()).unwrap_or(true) {
            return Err(Error::invalid_param(format!("the backup directory {} must be absent or empty", to.display())));
        }
        // The operator's mistakes (a missing parent, a read-only place) are found here and
        // named, before the engine would fail on them with its own words.
        let unwritable = |e: std::io::Error| Error::invalid_param(format!("cannot write to {}: {e}", to.display()));
        std::fs::create_dir_all(to).map_err(unwritable)?;
        let probe = to.join(".hearth-write-test");
        std::fs::write(&probe, b"").and_then(|()| std::fs::remove_file(&probe)).map_err(unwritable)?;
        self.store.backup(to)?;
        // After the checkpoint: every file a record in it names is already on disk.
        self.media.backup_to(to)?;
        tracing::info!(to = %to.display(), "backup written");
        Ok(())
    }
}

/// Refuses passwords no one should have: empty, or longer than anyone types.
fn check_password(password: &str) -> Result<()> {
    if password.is_empty() {
        return Err(Error::invalid_param("the password is empty"));
    }
    if password.len() > 512 {
        return Err(Error::invalid_param("the password is longer than 512 bytes"));
    }
    Ok(())
}
