//! Operator endpoints on a running server, for server admins only (the first user, or
//! whoever `hearth admin make-admin` named): `POST /_hearth/admin/v1/backup`, and the
//! server-discovery cache (`GET` shows it, `DELETE` flushes it:
//! `/_hearth/admin/v1/federation/discovery`) — after fixing a peer's `.well-known`, an
//! operator need not wait out its cached failure.
//!
//! Users ([`users`]), registration tokens ([`registration_tokens`]), rooms ([`rooms`]),
//! federation destinations ([`federation`]) and media ([`media`]) are looked after through the paths and shapes of Synapse's admin API,
//! so synapse-admin and scripts written for Synapse work unchanged;
//! `GET /_synapse/admin/v1/server_version` needs no login, as on Synapse. The same work
//! is reachable without HTTP through `hearth admin` ([`command`], [`channel`]).
//!
//! An online backup is a RocksDB checkpoint or an SQLite `VACUUM INTO`: a consistent copy
//! taken while the server keeps serving. `hearth admin restore --from DIR` puts it back.

pub mod channel;
pub mod command;
mod federation;
mod media;
mod registration_tokens;
mod rooms;
mod users;

use std::{path::PathBuf, sync::Arc};

use axum::{
    extract::State,
    routing::{get, post},
    Json, Router,
};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::{
    error::{Error, Result},
    Services,
};

pub fn routes() -> Router<Arc<Services>> {
    Router::new()
        .route("/_hearth/admin/v1/backup", post(backup))
        .route("/_hearth/admin/v1/federation/discovery", get(discovery_cache).delete(flush_discovery_cache))
        .route("/_synapse/admin/v1/server_version", get(server_version))
        .merge(media::routes())
        .merge(users::routes())
        .merge(registration_tokens::routes())
        .merge(rooms::routes())
        .merge(federation::routes())
}

/// `GET /_synapse/admin/v1/server_version`, without login (admin tools show it on their
/// login page).
async fn server_version() -> Json<Value> {
    Json(json!({"server_version": format!("Hearth {}", env!("CARGO_PKG_VERSION"))}))
}

#[derive(Deserialize)]
struct BackupRequest {
    /// An absent or empty directory on the server's filesystem.
    to: PathBuf,
}

/// The server admin a request comes from: an extractor that answers 401 without a valid
/// access token and 403 `M_FORBIDDEN` for anyone else, before anything of the request is
/// looked at (as Synapse does).
pub(crate) struct ServerAdmin(pub ruma::OwnedUserId);

impl axum::extract::FromRequestParts<Arc<Services>> for ServerAdmin {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut http::request::Parts, s: &Arc<Services>) -> Result<Self> {
        require_admin_headers(s, &parts.headers).map(ServerAdmin)
    }
}

/// Authorises a server admin by the access token in `headers`; the admin's user id.
fn require_admin_headers(s: &Services, headers: &http::HeaderMap) -> Result<ruma::OwnedUserId> {
    let token = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(Error::missing_token)?;
    let caller = s.users.authenticate(token.trim())?;
    if !s.users.account(&caller.user_id)?.is_some_and(|a| a.admin) {
        return Err(Error::forbidden("You are not a server admin"));
    }
    Ok(caller.user_id)
}

async fn backup(State(s): State<Arc<Services>>, _: ServerAdmin, bytes: axum::body::Bytes) -> Result<Json<Value>> {
    let body: BackupRequest = serde_json::from_slice(&bytes).map_err(|e| Error::bad_json(e.to_string()))?;
    let to = body.to.clone();
    blocking(move || s.admin.backup(&to)).await?;
    Ok(Json(json!({"backup": body.to})))
}

/// `GET /_hearth/admin/v1/federation/discovery`: each cached `.well-known` answer, what it
/// said and for how long it is kept.
async fn discovery_cache(State(s): State<Arc<Services>>, _: ServerAdmin) -> Result<Json<Value>> {
    let entries: Vec<Value> = s
        .transport
        .servers
        .resolver()
        .cached()
        .into_iter()
        .map(|c| {
            let delegated = match c.value {
                crate::transport::resolve::WellKnown::Delegated(d) => Some(d.to_string()),
                crate::transport::resolve::WellKnown::None => None,
            };
            json!({"host": c.host, "delegated_to": delegated, "expires_in_s": c.expires_in.as_secs()})
        })
        .collect();
    Ok(Json(json!({"well_known": entries})))
}

/// `DELETE /_hearth/admin/v1/federation/discovery`: forgets every cached answer.
async fn flush_discovery_cache(State(s): State<Arc<Services>>, _: ServerAdmin) -> Result<Json<Value>> {
    let flushed = s.transport.servers.resolver().cached().len();
    s.transport.servers.resolver().flush();
    Ok(Json(json!({"flushed": flushed})))
}

/// Runs blocking work (password hashing, a checkpoint) off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| Error::internal(format!("admin task: {e}")))?
}

/// A request's query parameters, read as Synapse reads them: integers that are not
/// negative, booleans that are exactly `true` or `false`, values from a fixed set.
pub(crate) struct Params(pub std::collections::HashMap<String, String>);

impl Params {
    pub fn int(&self, name: &str, default: usize) -> Result<usize> {
        match self.0.get(name) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| Error::invalid_param(format!("Query parameter {name} must be a non-negative integer"))),
        }
    }

    pub fn flag(&self, name: &str) -> Result<Option<bool>> {
        match self.0.get(name).map(String::as_str) {
            None => Ok(None),
            Some("true") => Ok(Some(true)),
            Some("false") => Ok(Some(false)),
            Some(_) => Err(Error::invalid_param(format!("Query parameter {name} must be true or false"))),
        }
    }

    pub fn one_of<'a>(&'a self, name: &str, allowed: &[&str], default: &'a str) -> Result<&'a str> {
        match self.0.get(name) {
            None => Ok(default),
            Some(v) if allowed.contains(&v.as_str()) => Ok(v),
            Some(_) => {
                Err(Error::invalid_param(format!("Query parameter {name} must be one of {}", allowed.join(", "))))
            }
        }
    }

    pub fn text(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }
}

/// A request body that must be a JSON object (`{}` at least), as Synapse requires.
pub(crate) fn object(body: &[u8]) -> Result<serde_json::Map<String, Value>> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(Error::bad_json("Content must be a JSON object.")),
        Err(_) => Err(Error::not_json("Content not JSON.")),
    }
}

/// An optional boolean field of a body; anything but a boolean is refused.
pub(crate) fn bool_field(body: &serde_json::Map<String, Value>, name: &str) -> Result<Option<bool>> {
    match body.get(name) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(Error::bad_json(format!("Param '{name}' must be a boolean, if given"))),
    }
}

/// A user id from a path, which must be one of this server's.
pub(crate) fn local_user_id(s: &Services, raw: &str) -> Result<ruma::OwnedUserId> {
    let user = ruma::OwnedUserId::try_from(raw).map_err(|_| Error::invalid_param(format!("{raw} is not a user id")))?;
    if user.server_name() != s.config.server_name {
        return Err(Error::invalid_param(format!("{user} is not a user of this server")));
    }
    Ok(user)
}
