//! Key endpoints (`/_matrix/key/v2/*`): the server's own signed key document, and the
//! notary API, which serves other servers' key documents as Hearth last fetched them, with
//! Hearth's signature added.
//!
//! Served whether or not federation is allowed: they only publish public keys. The notary
//! asks only the origin itself (never another notary, so no loop can form), and when the
//! origin cannot be reached it serves what it has, even expired: the asker decides.

use std::sync::Arc;

use axum::Router;
use ruma::{
    api::federation::discovery::{get_remote_server_keys, get_remote_server_keys_batch, get_server_keys},
    serde::Raw,
    CanonicalJsonObject, MilliSecondsSinceUnixEpoch, ServerName,
};

use super::{Ruma, RumaRouter};
use crate::{
    error::{Error, Result},
    Services,
};

/// Most servers one batch query may ask about.
pub const MAX_SERVERS_PER_QUERY: usize = 100;

pub fn routes() -> Router<Arc<Services>> {
    Router::new()
        .ruma(get_server_keys)
        .ruma(get_remote_server_keys)
        .ruma(get_remote_server_keys_batch)
        // The deprecated form with a key id, which older servers (and sytest's) still ask:
        // the whole document, as Synapse answers it.
        .route("/_matrix/key/v2/server/{keyId}", axum::routing::get(server_keys_by_id))
        .route("/_matrix/key/v2/query/{serverName}/{keyId}", axum::routing::get(remote_keys_by_id))
}

/// `GET /_matrix/key/v2/query/{serverName}/{keyId}` (deprecated): the same answer as
/// without the id, as Synapse gives it.
async fn remote_keys_by_id(
    axum::extract::State(s): axum::extract::State<Arc<Services>>,
    axum::extract::Path((server, key_id)): axum::extract::Path<(String, String)>,
    axum::extract::Query(query): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> Result<axum::Json<serde_json::Value>> {
    let server = <&ServerName>::try_from(server.as_str()).map_err(|_| Error::invalid_param("Invalid server name"))?;
    let min = match query.get("minimum_valid_until_ts") {
        Some(ts) => ts.parse::<u64>().map_err(|_| Error::invalid_param("Invalid minimum_valid_until_ts"))?,
        // The spec's default: valid now.
        None => crate::time::now_millis(),
    };
    let docs = notarised(&s, server, min, &[key_id.as_str()]).await?;
    Ok(axum::Json(serde_json::json!({ "server_keys": docs })))
}

/// `GET /_matrix/key/v2/server/{keyId}` (deprecated): the same document as without the id.
async fn server_keys_by_id(
    axum::extract::State(s): axum::extract::State<Arc<Services>>,
) -> Result<axum::Json<CanonicalJsonObject>> {
    Ok(axum::Json(s.server_key.key_document()?))
}

fn raw(doc: &CanonicalJsonObject) -> Result<Raw<ruma::api::federation::discovery::ServerSigningKeys>> {
    let raw = serde_json::value::to_raw_value(doc).map_err(|e| Error::internal(e.to_string()))?;
    Ok(Raw::from_json(raw))
}

/// `GET /_matrix/key/v2/server`
pub async fn get_server_keys(
    s: Arc<Services>,
    _req: Ruma<get_server_keys::v2::Request>,
) -> Result<get_server_keys::v2::Response> {
    Ok(get_server_keys::v2::Response::new(raw(&s.server_key.key_document()?)?))
}

/// `server`'s key documents for a notary answer: ours, or the cached ones (fetched from
/// the origin first when there is none or the last is not valid until
/// `minimum_valid_until`), signed by us. With `key_ids`, the latest document listing each
/// of them, even one the origin no longer lists.
async fn notarised(
    s: &Services,
    server: &ServerName,
    minimum_valid_until: u64,
    key_ids: &[&str],
) -> Result<Vec<CanonicalJsonObject>> {
    if *server == *s.config.server_name {
        return Ok(vec![s.server_key.key_document()?]);
    }
    let keys = &s.transport.keys;
    // Nothing cached (0) is fetched whatever the minimum asked, 0 included; so is a key
    // named that no cached document lists.
    let cached = keys.cached_valid_until(server)?;
    let mut unknown_key = false;
    for id in key_ids {
        unknown_key |= !keys.has_document_for(server, id)?;
    }
    if cached == 0 || cached < minimum_valid_until || unknown_key {
        if let Err(e) = keys.fetch_from_origin(server).await {
            tracing::debug!(%server, error = %e, "notary: the origin did not give its keys; serving what is cached");
        }
    }
    keys.notarised_documents(server, key_ids)
}

fn millis(ts: MilliSecondsSinceUnixEpoch) -> u64 {
    u64::from(ts.get())
}

/// `GET /_matrix/key/v2/query/{serverName}`
pub async fn get_remote_server_keys(
    s: Arc<Services>,
    req: Ruma<get_remote_server_keys::v2::Request>,
) -> Result<get_remote_server_keys::v2::Response> {
    let min = millis(req.body.minimum_valid_until_ts);
    let docs = notarised(&s, &req.body.server_name, min, &[]).await?;
    Ok(get_remote_server_keys::v2::Response::new(docs.iter().map(raw).collect::<Result<_>>()?))
}

/// `POST /_matrix/key/v2/query`
pub async fn get_remote_server_keys_batch(
    s: Arc<Services>,
    req: Ruma<get_remote_server_keys_batch::v2::Request>,
) -> Result<get_remote_server_keys_batch::v2::Response> {
    if req.body.server_keys.len() > MAX_SERVERS_PER_QUERY {
        return Err(Error::invalid_param(format!("At most {MAX_SERVERS_PER_QUERY} servers per query")));
    }
    let now = crate::time::now_millis();
    // Fetched side by side, so a batch takes as long as its slowest origin (each fetch has
    // its own time-out), not the sum of them.
    let answers = futures_util::future::join_all(req.body.server_keys.iter().map(|(server, criteria)| {
        // The latest minimum asked for any key of the server; now when none is given.
        let min = criteria.values().filter_map(|c| c.minimum_valid_until_ts).map(millis).max().unwrap_or(now);
        let key_ids: Vec<&str> = criteria.keys().map(|id| id.as_str()).collect();
        let s = &s;
        async move { notarised(s, server, min, &key_ids).await }
    }))
    .await;
    let mut out = Vec::new();
    for docs in answers {
        for doc in docs? {
            out.push(raw(&doc)?);
        }
    }
    Ok(get_remote_server_keys_batch::v2::Response::new(out))
}
