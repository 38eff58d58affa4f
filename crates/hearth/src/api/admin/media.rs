//! Media administration at the paths and in the shapes of Synapse's admin API (its
//! `media` and `users/{userId}/media` pages), so synapse-admin and operators' scripts work
//! unchanged:
//!
//! - `GET    /_synapse/admin/v1/users/{userId}/media` (`from`, `limit`): a user's uploads;
//! - `DELETE /_synapse/admin/v1/users/{userId}/media`: deletes them all;
//! - `DELETE /_synapse/admin/v1/media/{serverName}/{mediaId}`: one item (another server's
//!   too: the copy kept here, fetched again if asked for);
//! - `POST   /_synapse/admin/v1/media/quarantine/{serverName}/{mediaId}` and
//!   `…/unquarantine/…`: never served while quarantined, with every copy of its content;
//! - `POST   /_synapse/admin/v1/purge_media_cache?before_ts=`: other servers' media not
//!   served since then.
//!
//! Server admins only; the work is in `media::manage`.

use std::{collections::HashMap, sync::Arc};

use axum::{
    extract::{Path, Query, State},
    routing::{delete, get, post},
    Json, Router,
};
use ruma::{OwnedUserId, ServerName};
use serde_json::{json, Value};

use super::ServerAdmin;
use crate::{
    error::{Error, Result},
    Services,
};

/// Most items one page of a user's media lists.
const MAX_PAGE: usize = 1000;

pub fn routes() -> Router<Arc<Services>> {
    Router::new()
        .route("/_synapse/admin/v1/users/{user_id}/media", get(list_user_media).delete(delete_user_media))
        .route("/_synapse/admin/v1/media/{server}/{media_id}", delete(delete_media))
        .route("/_synapse/admin/v1/media/quarantine/{server}/{media_id}", post(quarantine))
        .route("/_synapse/admin/v1/media/unquarantine/{server}/{media_id}", post(unquarantine))
        .route("/_synapse/admin/v1/purge_media_cache", post(purge_media_cache))
}

fn local_user(s: &Services, user_id: &str) -> Result<OwnedUserId> {
    let user = OwnedUserId::try_from(user_id).map_err(|_| Error::invalid_param("Invalid user id"))?;
    if user.server_name() != s.config.server_name {
        return Err(Error::invalid_param("Only local users have uploads here"));
    }
    Ok(user)
}

fn server_name(server: &str) -> Result<&ServerName> {
    <&ServerName>::try_from(server).map_err(|_| Error::invalid_param("Invalid server name"))
}

/// `GET /_synapse/admin/v1/users/{userId}/media`: newest first, `from` an offset.
async fn list_user_media(
    State(s): State<Arc<Services>>,
    _: ServerAdmin,
    Path(user_id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>> {
    let user = local_user(&s, &user_id)?;
    let number = |name: &str, default: usize| -> Result<usize> {
        match query.get(name) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| Error::invalid_param(format!("Invalid {name}"))),
        }
    };
    let from = number("from", 0)?;
    let limit = number("limit", 100)?.min(MAX_PAGE);
    let uploads = s.media.uploads_of(&user)?;
    let total = uploads.len();
    let page: Vec<Value> = uploads
        .into_iter()
        .skip(from)
        .take(limit)
        .map(|(media_id, r)| {
            json!({
                "media_id": media_id,
                "media_type": r.content_type,
                "media_length": r.size,
                "upload_name": r.filename,
                "created_ts": r.created_ts,
                "last_access_ts": r.last_access_ts.max(r.created_ts),
                "quarantined_by": r.quarantined_by,
                "safe_from_quarantine": false,
            })
        })
        .collect();
    let mut body = json!({"media": page, "total": total});
    if from + limit < total {
        body["next_token"] = json!(from + limit);
    }
    Ok(Json(body))
}

/// `DELETE /_synapse/admin/v1/users/{userId}/media`
async fn delete_user_media(
    State(s): State<Arc<Services>>,
    ServerAdmin(admin): ServerAdmin,
    Path(user_id): Path<String>,
) -> Result<Json<Value>> {
    let user = local_user(&s, &user_id)?;
    let deleted = s.media.delete_uploads_of(&user).await?;
    tracing::info!(%admin, %user, count = deleted.len(), "admin deleted a user's media");
    Ok(Json(json!({"deleted_media": deleted, "total": deleted.len()})))
}

/// `DELETE /_synapse/admin/v1/media/{serverName}/{mediaId}`
async fn delete_media(
    State(s): State<Arc<Services>>,
    ServerAdmin(admin): ServerAdmin,
    Path((server, media_id)): Path<(String, String)>,
) -> Result<Json<Value>> {
    if !s.media.delete(&s.config.server_name, server_name(&server)?, &media_id).await? {
        return Err(Error::not_found("Unknown media"));
    }
    tracing::info!(%admin, %server, %media_id, "admin deleted media");
    Ok(Json(json!({"deleted_media": [media_id], "total": 1})))
}

async fn quarantine(
    State(s): State<Arc<Services>>,
    ServerAdmin(admin): ServerAdmin,
    Path((server, media_id)): Path<(String, String)>,
) -> Result<Json<Value>> {
    set_quarantined(&s, &server, &media_id, Some(&admin))
}

async fn unquarantine(
    State(s): State<Arc<Services>>,
    _: ServerAdmin,
    Path((server, media_id)): Path<(String, String)>,
) -> Result<Json<Value>> {
    set_quarantined(&s, &server, &media_id, None)
}

fn set_quarantined(s: &Services, server: &str, media_id: &str, by: Option<&ruma::UserId>) -> Result<Json<Value>> {
    if !s.media.set_quarantined(&s.config.server_name, server_name(server)?, media_id, by)? {
        return Err(Error::not_found("Unknown media"));
    }
    tracing::info!(?by, %server, %media_id, quarantined = by.is_some(), "admin changed media quarantine");
    Ok(Json(json!({})))
}

/// `POST /_synapse/admin/v1/purge_media_cache?before_ts=…`
async fn purge_media_cache(
    State(s): State<Arc<Services>>,
    _: ServerAdmin,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>> {
    let before_ts = query
        .get("before_ts")
        .ok_or_else(|| Error::missing_param("Missing before_ts"))?
        .parse::<u64>()
        .map_err(|_| Error::invalid_param("Invalid before_ts"))?;
    let deleted = s.media.purge_remote(before_ts).await?;
    Ok(Json(json!({"deleted": deleted})))
}
