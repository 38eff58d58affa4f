//! The operator commands of `hearth admin …`: their arguments (parsed by clap on the
//! command line, carried as JSON over the admin channel) and what each does and prints.
//!
//! [`execute`] is the one place a command runs, whether the CLI opened a stopped server's
//! data directory itself or a running server received the command on its channel
//! ([`super::channel`]); the work is in [`crate::admin`] and the services, as for the
//! admin API.

use std::{fmt::Write as _, path::PathBuf, sync::Arc};

use clap::Subcommand;
use ruma::{OwnedRoomId, OwnedServerName, RoomAliasId, RoomId};
use serde::{Deserialize, Serialize};

use super::blocking;
use crate::{
    admin::DeleteRoom,
    error::{Error, Result},
    federation::compare::StateComparison,
    time::{iso8601, now_millis},
    Services,
};

const DAY_MS: u64 = 24 * 60 * 60 * 1000;

#[derive(Debug, Clone, Subcommand, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "kebab-case")]
pub enum Command {
    /// Create a local user. Without --password a random one is generated and printed.
    CreateUser {
        localpart: String,
        #[arg(long)]
        password: Option<String>,
        /// Make the user a server admin.
        #[arg(long)]
        admin: bool,
    },
    /// Set a user's password.
    ResetPassword {
        user: String,
        #[arg(long)]
        password: String,
        /// Also log out every device of the user.
        #[arg(long)]
        logout_devices: bool,
    },
    /// List local users.
    ListUsers,
    /// Make a user a server admin.
    MakeAdmin { user: String },
    /// Take server admin away from a user.
    RevokeAdmin { user: String },
    /// Deactivate a user: no password, no devices, leaves every room; the id stays taken.
    Deactivate {
        user: String,
        /// Also hide the user's messages from those who were not there to see them.
        #[arg(long)]
        erase: bool,
    },
    /// Create a registration token (random unless --token is given).
    CreateToken {
        #[arg(long)]
        token: Option<String>,
        /// How many registrations it allows (default: unlimited).
        #[arg(long)]
        uses: Option<u64>,
        /// Days until it expires (default: never).
        #[arg(long)]
        expires_in_days: Option<u64>,
    },
    /// List registration tokens with their uses and expiry.
    ListTokens,
    /// Delete a registration token.
    RevokeToken { token: String },
    /// List the rooms this server knows, largest first.
    ListRooms,
    /// Show one room (by id or local alias).
    ShowRoom { room: String },
    /// Make every local member leave a room, drop its local aliases, take it out of the
    /// directory and remove its history and state from the database.
    DeleteRoom {
        room: String,
        /// Also block it: nobody here may join it again.
        #[arg(long)]
        block: bool,
        /// Keep its history and state in the database.
        #[arg(long)]
        keep_history: bool,
    },
    /// Block a room: no local user may join it or be invited, nor another server join
    /// through this one.
    BlockRoom { room: String },
    /// Lift a room's block.
    UnblockRoom { room: String },
    /// Delete one media item, given as mxc://server/id.
    DeleteMedia { mxc: String },
    /// Never serve a media item (and every copy of its content) again, until released.
    QuarantineMedia {
        mxc: String,
        /// The admin recorded as having quarantined it (default: the first server admin).
        #[arg(long)]
        by: Option<String>,
    },
    /// Serve a quarantined media item again.
    UnquarantineMedia { mxc: String },
    /// Remove other servers' media not served for the given number of days.
    PurgeRemoteMedia {
        #[arg(long)]
        older_than_days: u64,
    },
    /// Other servers this one sends to: events queued, the wait before the next attempt,
    /// the last failure and success since start.
    ListDestinations,
    /// Try sending to a server again at once instead of waiting out its backoff.
    RetryDestination { server: String },
    /// Compare a room's state here with another server's: the state before one event
    /// (default: the newest here) beside what that server answers to `state_ids`.
    CompareState {
        /// The room, by id or local alias.
        room: String,
        /// The other server.
        server: String,
        /// The event to compare at (default: this server's newest forward extremity).
        #[arg(long)]
        event: Option<String>,
    },
    /// Show the cached answers of other servers' `.well-known` (federation discovery).
    ListDiscoveryCache,
    /// Forget every cached `.well-known` answer (after a peer fixed its delegation).
    FlushDiscoveryCache,
    /// Copy the whole database and media into an absent or empty directory. Safe while the
    /// server runs.
    Backup { to: PathBuf },
    /// Copy a backup into the (empty) configured database path; the server must be
    /// stopped.
    Restore { from: PathBuf },
}

impl Command {
    /// The command's name on the command line.
    pub fn name(&self) -> &'static str {
        match self {
            Command::CreateUser { .. } => "create-user",
            Command::ResetPassword { .. } => "reset-password",
            Command::ListUsers => "list-users",
            Command::MakeAdmin { .. } => "make-admin",
            Command::RevokeAdmin { .. } => "revoke-admin",
            Command::Deactivate { .. } => "deactivate",
            Command::CreateToken { .. } => "create-token",
            Command::ListTokens => "list-tokens",
            Command::RevokeToken { .. } => "revoke-token",
            Command::ListRooms => "list-rooms",
            Command::ShowRoom { .. } => "show-room",
            Command::DeleteRoom { .. } => "delete-room",
            Command::BlockRoom { .. } => "block-room",
            Command::UnblockRoom { .. } => "unblock-room",
            Command::DeleteMedia { .. } => "delete-media",
            Command::QuarantineMedia { .. } => "quarantine-media",
            Command::UnquarantineMedia { .. } => "unquarantine-media",
            Command::PurgeRemoteMedia { .. } => "purge-remote-media",
            Command::ListDestinations => "list-destinations",
            Command::RetryDestination { .. } => "retry-destination",
            Command::CompareState { .. } => "compare-state",
            Command::ListDiscoveryCache => "list-discovery-cache",
            Command::FlushDiscoveryCache => "flush-discovery-cache",
            Command::Backup { .. } => "backup",
            Command::Restore { .. } => "restore",
        }
    }
}

/// What an error says to an operator: the words, without Matrix's error code.
pub fn in_words(e: &Error) -> String {
    match e {
        Error::Matrix { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

/// Runs a command on `s`; what it prints on success.
pub async fn execute(s: &Arc<Services>, cmd: Command) -> Result<String> {
    let mut out = String::new();
    match cmd {
        Command::CreateUser { localpart, password, admin } => {
            let generated = password.is_none();
            let password = password.unwrap_or_else(|| s.users.random_localpart() + &s.users.random_localpart());
            let admin_service = s.clone();
            // What an operator types: `Alice`, `@alice` or `@alice:server` all mean alice.
            let lp = localpart.trim_start_matches('@').split(':').next().unwrap_or_default().to_lowercase();
            let pw = password.clone();
            let id = blocking(move || admin_service.admin.create_user(&lp, Some(&pw), admin.then_some(true))).await?;
            let _ = writeln!(out, "created {id}");
            if generated {
                let _ = writeln!(out, "password: {password}");
            }
        }
        Command::ResetPassword { user, password, logout_devices } => {
            let id = s.admin.local_user(&user)?;
            let services = s.clone();
            let target = id.clone();
            blocking(move || services.admin.reset_password(&target, &password, logout_devices)).await?;
            let _ = writeln!(out, "password of {id} changed");
        }
        Command::ListUsers => {
            for (id, a) in s.users.list_accounts()? {
                let mut flags = Vec::new();
                if a.admin {
                    flags.push("admin");
                }
                if a.guest {
                    flags.push("guest");
                }
                if a.deactivated {
                    flags.push("deactivated");
                }
                let _ = writeln!(out, "{id}\tcreated={}\t{}", iso8601(a.created_ts), flags.join(","));
            }
        }
        Command::MakeAdmin { user } => {
            let id = s.admin.local_user(&user)?;
            s.users.set_admin(&id, true)?;
            let _ = writeln!(out, "{id} is a server admin");
        }
        Command::RevokeAdmin { user } => {
            let id = s.admin.local_user(&user)?;
            s.users.set_admin(&id, false)?;
            let _ = writeln!(out, "{id} is no longer a server admin");
        }
        Command::Deactivate { user, erase } => {
            let id = s.admin.local_user(&user)?;
            s.admin.deactivate(&id, erase)?;
            let _ = writeln!(out, "deactivated {id}");
        }
        Command::CreateToken { token, uses, expires_in_days } => {
            let expiry = expires_in_days.map(|d| now_millis().saturating_add(d.saturating_mul(DAY_MS)));
            let token = s.registration_tokens.create(token, uses, expiry)?;
            let _ = writeln!(out, "{token}");
        }
        Command::ListTokens => {
            for (t, r) in s.registration_tokens.list()? {
                let uses = r.uses_allowed.map_or("unlimited".to_owned(), |u| u.to_string());
                let expiry = r.expiry_time.map_or("never".to_owned(), iso8601);
                let state = if r.usable(now_millis()) { "valid" } else { "used up or expired" };
                let _ = writeln!(out, "{t}\tcompleted={}\tuses_allowed={uses}\texpires={expiry}\t{state}", r.completed);
            }
        }
        Command::RevokeToken { token } => {
            if !s.registration_tokens.revoke(&token)? {
                return Err(Error::not_found(format!("there is no registration token {token}")));
            }
            let _ = writeln!(out, "revoked {token}");
        }
        Command::ListRooms => {
            let mut rooms = Vec::new();
            for id in s.rooms.all_rooms()? {
                if let Some(summary) = s.rooms.summary(&id)? {
                    rooms.push(summary);
                }
            }
            rooms.sort_by(|a, b| b.joined_members.cmp(&a.joined_members).then_with(|| a.room_id.cmp(&b.room_id)));
            for r in rooms {
                let blocked = if s.rooms.blocked(&r.room_id)?.is_some() { "\tblocked" } else { "" };
                let _ = writeln!(
                    out,
                    "{}\tmembers={} (local {})\tversion={}\tname={}{blocked}",
                    r.room_id,
                    r.joined_members,
                    r.joined_local_members,
                    r.version,
                    r.name.as_deref().unwrap_or("-"),
                );
            }
        }
        Command::ShowRoom { room } => {
            let id = room_id(s, &room)?;
            let summary =
                s.rooms.summary(&id)?.ok_or_else(|| Error::not_found(format!("{room} is not a room here")))?;
            let mut shown = serde_json::to_value(&summary).map_err(|e| Error::internal(e.to_string()))?;
            shown["created"] = serde_json::Value::String(iso8601(summary.created_ts));
            shown["blocked"] = serde_json::Value::Bool(s.rooms.blocked(&id)?.is_some());
            let _ = writeln!(out, "{}", serde_json::to_string_pretty(&shown).unwrap_or_default());
        }
        Command::DeleteRoom { room, block, keep_history } => {
            let id = room_id(s, &room)?;
            let done = s.admin.delete_room(&id, &DeleteRoom { block, purge: !keep_history, by: None }).await?;
            let _ = writeln!(
                out,
                "deleted {id}: {} local member(s) left, {} could not, {} alias(es) removed, {} event(s) purged{}",
                done.kicked_users.len(),
                done.failed_to_kick_users.len(),
                done.local_aliases.len(),
                done.purged_events,
                if block { ", blocked" } else { "" },
            );
        }
        Command::BlockRoom { room } => {
            let id = room_id(s, &room)?;
            s.rooms.set_blocked(&id, None, true)?;
            let _ = writeln!(out, "blocked {id}");
        }
        Command::UnblockRoom { room } => {
            let id = room_id(s, &room)?;
            s.rooms.set_blocked(&id, None, false)?;
            let _ = writeln!(out, "unblocked {id}");
        }
        Command::DeleteMedia { mxc } => {
            let (server, media_id) = parse_mxc(&mxc)?;
            if !s.media.delete(&s.config.server_name, &server, &media_id).await? {
                return Err(Error::not_found(format!("there is no media {mxc}")));
            }
            let _ = writeln!(out, "deleted {mxc}");
        }
        Command::QuarantineMedia { mxc, by } => {
            let by = match by {
                Some(by) => s.admin.local_user(&by)?,
                None => s
                    .users
                    .list_accounts()?
                    .into_iter()
                    .find(|(_, a)| a.admin && !a.deactivated)
                    .and_then(|(id, _)| ruma::OwnedUserId::try_from(id).ok())
                    .ok_or_else(|| {
                        Error::invalid_param(
                            "there is no server admin to record as having quarantined it: name one with --by",
                        )
                    })?,
            };
            quarantine(s, &mxc, Some(&by), &mut out)?
        }
        Command::UnquarantineMedia { mxc } => quarantine(s, &mxc, None, &mut out)?,
        Command::PurgeRemoteMedia { older_than_days } => {
            let before = now_millis().saturating_sub(older_than_days.saturating_mul(DAY_MS));
            let n = s.media.purge_remote(before).await?;
            let _ = writeln!(out, "removed {n} item(s) of other servers' media not served since {}", iso8601(before));
        }
        Command::ListDestinations => {
            for d in s.federation.sender.destinations()? {
                let when = |t: Option<u64>| t.map_or("-".to_owned(), iso8601);
                let _ = writeln!(
                    out,
                    "{}\tqueued={}\tretry_in={}s\tlast_failure={}\tlast_success={}{}",
                    d.destination,
                    d.queued,
                    d.backoff.as_secs(),
                    when(d.last_failure_ts),
                    when(d.last_success_ts),
                    d.last_error.map(|e| format!("\terror={e}")).unwrap_or_default(),
                );
            }
        }
        Command::RetryDestination { server } => {
            let name = OwnedServerName::try_from(server.as_str())
                .map_err(|_| Error::invalid_param(format!("{server} is not a server name")))?;
            let waiting = s.federation.sender.retry_now(&name);
            let _ = writeln!(out, "{name}: {}", if waiting { "trying again now" } else { "was not waiting" });
        }
        Command::CompareState { room, server, event } => {
            let room = room_id(s, &room)?;
            let name = OwnedServerName::try_from(server.as_str())
                .map_err(|_| Error::invalid_param(format!("{server} is not a server name")))?;
            let event = event
                .map(|e| {
                    ruma::OwnedEventId::try_from(e.as_str())
                        .map_err(|_| Error::invalid_param(format!("{e} is not an event id")))
                })
                .transpose()?;
            let c = s.federation.compare_state(&room, &name, event.as_deref()).await?;
            write_comparison(&mut out, &room, &name, &c);
        }
        Command::ListDiscoveryCache => {
            for c in s.transport.servers.resolver().cached() {
                let to = match c.value {
                    crate::transport::resolve::WellKnown::Delegated(d) => d.to_string(),
                    crate::transport::resolve::WellKnown::None => "(no delegation)".to_owned(),
                };
                let _ = writeln!(out, "{}\t{to}\tkept for {} s", c.host, c.expires_in.as_secs());
            }
        }
        Command::FlushDiscoveryCache => {
            let n = s.transport.servers.resolver().cached().len();
            s.transport.servers.resolver().flush();
            let _ = writeln!(out, "forgot {n} cached answer(s)");
        }
        Command::Backup { to } => {
            let services = s.clone();
            let dest = to.clone();
            blocking(move || services.admin.backup(&dest)).await?;
            let _ = writeln!(out, "backup written to {}", to.display());
        }
        Command::Restore { .. } => {
            return Err(Error::invalid_param(
                "restore replaces the whole database: stop the server, then run hearth admin restore",
            ));
        }
    }
    Ok(out)
}

/// A room given by id or by local alias.
/// A state comparison as an operator reads it: a verdict line, then one line per entry
/// that differs.
fn write_comparison(out: &mut String, room: &RoomId, server: &ruma::ServerName, c: &StateComparison) {
    let verdict = if c.identical() { "identical" } else { "DIFFERENT" };
    let _ =
        writeln!(out, "{verdict}: state of {room} before {} here and on {server} ({} entries the same)", c.at, c.same);
    for ((t, k), here, there) in &c.differ {
        let _ = writeln!(out, "differs\t{t}\t{k:?}\there={here}\tthere={there}");
    }
    for ((t, k), id) in &c.only_here {
        let _ = writeln!(out, "only here\t{t}\t{k:?}\t{id}");
    }
    for ((t, k), id) in &c.only_there {
        let _ = writeln!(out, "only there\t{t}\t{k:?}\t{id}");
    }
    for id in &c.unknown_here {
        let _ = writeln!(out, "only there\t(event not held here)\t{id}");
    }
}

fn room_id(s: &Services, given: &str) -> Result<OwnedRoomId> {
    if let Ok(id) = <&RoomId>::try_from(given) {
        return Ok(id.to_owned());
    }
    let alias = <&RoomAliasId>::try_from(given)
        .map_err(|_| Error::invalid_param(format!("{given} is neither a room id (!…) nor an alias (#…)")))?;
    s.rooms.resolve_alias(alias.as_str())?.ok_or_else(|| Error::not_found(format!("no room has the alias {given}")))
}

fn parse_mxc(mxc: &str) -> Result<(OwnedServerName, String)> {
    let bad = || Error::invalid_param(format!("{mxc} is not a media address (mxc://server/id)"));
    let rest = mxc.strip_prefix("mxc://").ok_or_else(bad)?;
    let (server, id) = rest.split_once('/').ok_or_else(bad)?;
    let server = OwnedServerName::try_from(server).map_err(|_| bad())?;
    if id.is_empty() || id.contains('/') {
        return Err(bad());
    }
    Ok((server, id.to_owned()))
}

/// Quarantines (`by` an admin) or releases (`None`) a media item.
fn quarantine(s: &Services, mxc: &str, by: Option<&ruma::UserId>, out: &mut String) -> Result<()> {
    let (server, media_id) = parse_mxc(mxc)?;
    if !s.media.set_quarantined(&s.config.server_name, &server, &media_id, by)? {
        return Err(Error::not_found(format!("there is no media {mxc}")));
    }
    let _ = writeln!(out, "{} {mxc}", if by.is_some() { "quarantined" } else { "released" });
    Ok(())
}
