//! Queries answered here for local users, aliases and rooms, and by their own server for
//! remote ones: profiles (`query/profile`), room aliases (`query/directory`) and the public
//! room directory (`publicRooms`).

use std::{collections::BTreeMap, time::Duration};

use ruma::{directory::PublicRoomsChunk, OwnedRoomId, OwnedServerName, RoomAliasId, ServerName, UInt, UserId};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::{
    error::{Error, Result},
    rooms::{
        directory::{Listing, MAX_LIMIT},
        Rooms,
    },
    transport::{
        client::Fetched,
        server_client::{ServerClient, ServerRequest},
    },
    users::Users,
};

/// How long a remote directory lookup may take, and the largest answer read.
const REMOTE_DIRECTORY_TIMEOUT: Duration = Duration::from_secs(15);
const MAX_REMOTE_DIRECTORY_BYTES: usize = 2 * 1024 * 1024;

/// Sends `req` to `server`: a 404 is "not found", anything else but success a 502.
async fn ask(servers: &ServerClient, server: &ServerName, req: ServerRequest<'_>, what: &str) -> Result<Fetched> {
    let answer = servers
        .request(server, req)
        .await
        .map_err(|e| Error::unavailable(format!("Cannot ask {server} for {what}: {e}")))?;
    if answer.status == http::StatusCode::NOT_FOUND {
        return Err(Error::not_found(format!("{server} does not know this {what}")));
    }
    if !answer.status.is_success() {
        return Err(Error::unavailable(format!("{server} answered {} for {what}", answer.status)));
    }
    Ok(answer)
}

/// The room `alias` names and servers that can help join it: from this server's aliases
/// for a local alias, else from the alias's server (`servers`; `None` when federation is
/// off, and then a remote alias is not found).
pub async fn room_alias(
    rooms: &Rooms,
    servers: Option<&ServerClient>,
    own: &ServerName,
    alias: &RoomAliasId,
) -> Result<(OwnedRoomId, Vec<OwnedServerName>)> {
    if alias.server_name() == own {
        return Ok((rooms.known_alias(alias)?, vec![own.to_owned()]));
    }
    let Some(servers) = servers else {
        return Err(Error::not_found("Room alias not found: this server does not federate"));
    };
    let path = format!("/_matrix/federation/v1/query/directory?room_alias={}", encode(alias.as_str()));
    let req = ServerRequest::get(&path).limits(REMOTE_DIRECTORY_TIMEOUT, MAX_REMOTE_DIRECTORY_BYTES);
    let answer = ask(servers, alias.server_name(), req, "room alias").await?;
    #[derive(Deserialize)]
    struct Answer {
        room_id: OwnedRoomId,
        servers: Vec<OwnedServerName>,
    }
    let a: Answer = serde_json::from_slice(&answer.body)
        .map_err(|e| Error::unavailable(format!("{} sent an invalid alias answer: {e}", alias.server_name())))?;
    // At most a few dozen servers are worth trying to join through.
    Ok((a.room_id, a.servers.into_iter().take(50).collect()))
}

/// One page of `server`'s public room directory (this server's when `server` is `None`
/// or this server), matching `term`.
pub async fn public_rooms(
    rooms: &Rooms,
    servers: Option<&ServerClient>,
    own: &ServerName,
    server: Option<&ServerName>,
    term: Option<&str>,
    since: Option<&str>,
    limit: Option<UInt>,
) -> Result<Listing> {
    let Some(server) = server.filter(|s| *s != own) else { return rooms.public_rooms(term, since, limit) };
    let Some(servers) = servers else {
        return Err(Error::not_found("Another server's directory: this server does not federate"));
    };
    let limit = limit.map_or(MAX_LIMIT as u64, |l| u64::from(l).min(MAX_LIMIT as u64));
    let mut body = json!({ "limit": limit });
    if let Some(since) = since {
        body["since"] = json!(since);
    }
    if let Some(term) = term {
        body["filter"] = json!({ "generic_search_term": term });
    }
    let req = ServerRequest::post("/_matrix/federation/v1/publicRooms", &body)
        .limits(REMOTE_DIRECTORY_TIMEOUT, MAX_REMOTE_DIRECTORY_BYTES);
    let answer = ask(servers, server, req, "public room directory").await?;
    #[derive(Deserialize)]
    struct Answer {
        chunk: Vec<PublicRoomsChunk>,
        next_batch: Option<String>,
        prev_batch: Option<String>,
        total_room_count_estimate: Option<u64>,
    }
    let a: Answer = serde_json::from_slice(&answer.body)
        .map_err(|e| Error::unavailable(format!("{server} sent an invalid directory page: {e}")))?;
    let total = a.total_room_count_estimate.unwrap_or(a.chunk.len() as u64);
    Ok(Listing { chunk: a.chunk.into_iter().take(MAX_LIMIT).collect(), next: a.next_batch, prev: a.prev_batch, total })
}

/// How long a remote profile lookup may take, and the largest answer read.
const REMOTE_PROFILE_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_REMOTE_PROFILE_BYTES: usize = 64 * 1024;

/// `user`'s public profile (all fields, or only `field`): from this server's data for a
/// local user, else from the user's server (`servers`; `None` when federation is off, and
/// then a remote user is not found). 404 for a user that does not exist (here or there);
/// 502 when their server cannot be asked, as on Synapse.
pub async fn profile(
    users: &Users,
    servers: Option<&ServerClient>,
    own: &ServerName,
    user: &UserId,
    field: Option<&str>,
) -> Result<BTreeMap<String, Value>> {
    if user.server_name() == own {
        if !users.is_active(user)? {
            return Err(Error::not_found("Profile not found"));
        }
        let mut all = users.profile(user)?;
        if let Some(f) = field {
            all.retain(|k, _| k == f);
        }
        return Ok(all);
    }
    let Some(servers) = servers else {
        return Err(Error::not_found("Profile not found: this server does not federate"));
    };
    let mut path = format!("/_matrix/federation/v1/query/profile?user_id={}", encode(user.as_str()));
    if let Some(f) = field {
        path.push_str(&format!("&field={}", encode(f)));
    }
    let req = ServerRequest::get(&path).limits(REMOTE_PROFILE_TIMEOUT, MAX_REMOTE_PROFILE_BYTES);
    let answer = servers
        .request(user.server_name(), req)
        .await
        .map_err(|e| Error::unavailable(format!("Cannot ask {} for the profile: {e}", user.server_name())))?;
    if answer.status == http::StatusCode::NOT_FOUND {
        return Err(Error::not_found("Profile not found"));
    }
    if !answer.status.is_success() {
        return Err(Error::unavailable(format!("{} answered {}", user.server_name(), answer.status)));
    }
    match serde_json::from_slice::<Value>(&answer.body) {
        Ok(Value::Object(map)) => Ok(map.into_iter().filter(|(k, _)| field.is_none_or(|f| f == k)).collect()),
        _ => Err(Error::unavailable(format!("{} sent a profile that is not a JSON object", user.server_name()))),
    }
}

/// Percent-encodes a query value (everything but the unreserved characters).
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}
