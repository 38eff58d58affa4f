//! Queries answered here for local users and by the user's own server for remote ones:
//! profiles (`/_matrix/federation/v1/query/profile`).

use std::{collections::BTreeMap, time::Duration};

use ruma::{ServerName, UserId};
use serde_json::Value;

use crate::{
    error::{Error, Result},
    transport::server_client::{ServerClient, ServerRequest},
    users::Users,
};

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
