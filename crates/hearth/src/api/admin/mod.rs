//! Operator endpoints on a running server, for server admins only (the first user, or
//! whoever `hearth admin make-admin` named): `POST /_hearth/admin/v1/backup`, and the
//! server-discovery cache (`GET` shows it, `DELETE` flushes it:
//! `/_hearth/admin/v1/federation/discovery`) — after fixing a peer's `.well-known`, an
//! operator need not wait out its cached failure.
//!
//! Media is looked after through the paths Synapse's admin API uses ([`media`]), so
//! synapse-admin and scripts written for Synapse work unchanged.
//!
//! An online backup is a RocksDB checkpoint or an SQLite `VACUUM INTO`: a consistent copy
//! taken while the server keeps serving. `hearth admin restore --from DIR` puts it back.

mod media;

use std::{path::PathBuf, sync::Arc};

use axum::{
    extract::{Request, State},
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
        .merge(media::routes())
}

#[derive(Deserialize)]
struct BackupRequest {
    /// An absent or empty directory on the server's filesystem.
    to: PathBuf,
}

/// Authorises a server admin by access token.
fn require_admin(s: &Services, req: &Request) -> Result<()> {
    require_admin_headers(s, req.headers()).map(|_| ())
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
        return Err(Error::forbidden("Only server admins may do this"));
    }
    Ok(caller.user_id)
}

async fn backup(State(s): State<Arc<Services>>, req: Request) -> Result<Json<Value>> {
    require_admin(&s, &req)?;
    let bytes =
        axum::body::to_bytes(req.into_body(), 64 * 1024).await.map_err(|_| Error::too_large("Request too large"))?;
    let body: BackupRequest = serde_json::from_slice(&bytes).map_err(|e| Error::bad_json(e.to_string()))?;
    if body.to.exists() && std::fs::read_dir(&body.to).map(|mut d| d.next().is_some()).unwrap_or(true) {
        return Err(Error::invalid_param("The backup directory must be absent or empty"));
    }
    let services = s.clone();
    let to = body.to.clone();
    tokio::task::spawn_blocking(move || -> Result<()> {
        services.store.backup(&to)?;
        // After the checkpoint: every file a record in it names is already on disk.
        services.media.backup_to(&to)
    })
    .await
    .map_err(|e| Error::internal(format!("backup task: {e}")))??;
    tracing::info!(to = %body.to.display(), "online backup written");
    Ok(Json(json!({"backup": body.to})))
}

/// `GET /_hearth/admin/v1/federation/discovery`: each cached `.well-known` answer, what it
/// said and for how long it is kept.
async fn discovery_cache(State(s): State<Arc<Services>>, req: Request) -> Result<Json<Value>> {
    require_admin(&s, &req)?;
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
async fn flush_discovery_cache(State(s): State<Arc<Services>>, req: Request) -> Result<Json<Value>> {
    require_admin(&s, &req)?;
    let flushed = s.transport.servers.resolver().cached().len();
    s.transport.servers.resolver().flush();
    Ok(Json(json!({"flushed": flushed})))
}
