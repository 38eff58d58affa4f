//! Other servers' signing keys: fetched, verified, cached in the database, and served again
//! as a notary.
//!
//! - **From the origin**: `GET /_matrix/key/v2/server` on the server itself (for request
//!   authentication: the server is talking to us, so it is up).
//! - **From a notary**: `POST /_matrix/key/v2/query` on each of `trusted_servers` in turn,
//!   when the origin cannot be reached (joins bring events of servers that may be long gone).
//! - **Verified**: a document must name the server asked about and carry a valid signature
//!   of every key it lists; one from a notary must also carry the notary's own signature,
//!   checked with the notary's keys (fetched from the notary itself).
//! - **Cached** per (server, key id) with `valid_until_ts` and, for old keys, `expired_ts`,
//!   and the last document as the origin signed it (what the notary API serves, with our
//!   signature added). A fetched document never replaces a key still valid in the cache
//!   with different key bytes: a compromised or confused origin cannot swap a key that
//!   other servers' events are being checked against.
//! - **Validity**: a key verifies a signature made at time `ts` if `ts` is before its
//!   `valid_until_ts` (capped at the time it was fetched plus 7 days, as room versions 5
//!   and later require) or, for an old key, before its `expired_ts`.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use ruma::{
    serde::Base64, signatures::PublicKeyMap, CanonicalJsonObject, CanonicalJsonValue, OwnedServerName, ServerName,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::server_client::{ServerClient, ServerRequest};
use crate::{
    error::{Error, Result},
    server_key::ServerKey,
    store::{codec::json_value, tables, Batch, Store, Table},
    time::now_millis,
};

/// The most a key may be trusted past the moment it was fetched (room versions 5+).
pub const MAX_VALIDITY_MS: u64 = 7 * 24 * 60 * 60 * 1000;
/// Largest key document read (one server's, or a notary's answer for a batch).
const MAX_KEY_RESPONSE_BYTES: usize = 512 * 1024;
const KEY_FETCH_TIMEOUT: Duration = Duration::from_secs(15);
/// Most keys kept per server from one document.
const MAX_KEYS_PER_DOCUMENT: usize = 64;

/// One cached verify key of a remote server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteKey {
    /// The public key, unpadded base64.
    pub key: String,
    /// From the document; 0 for an old key.
    pub valid_until_ts: u64,
    /// When the key was fetched: validity for room versions 5+ stops 7 days later.
    pub fetched_ts: u64,
    /// For an old key (`old_verify_keys`): when it stopped being used.
    pub expired_ts: Option<u64>,
}

impl RemoteKey {
    /// Whether this key verifies a signature made at `ts`.
    pub fn valid_at(&self, ts: u64) -> bool {
        match self.expired_ts {
            Some(expired) => ts < expired,
            None => ts < self.valid_until_ts.min(self.fetched_ts.saturating_add(MAX_VALIDITY_MS)),
        }
    }
}

json_value!(RemoteKey);

/// (server name, key id) → key.
pub const REMOTE_KEYS: Table<(String, String), RemoteKey> = Table::new(tables::REMOTE_SERVER_KEYS);
/// Server name → its last key document, as it signed it (canonical JSON bytes).
pub const REMOTE_KEY_DOCUMENTS: Table<String, Vec<u8>> = Table::new(tables::REMOTE_KEY_DOCUMENTS);
/// (server name, key id) → the latest document listing that key: an origin that no longer
/// lists a key cannot make the notary forget it.
pub const REMOTE_KEY_DOCUMENTS_BY_ID: Table<(String, String), Vec<u8>> = Table::new(tables::REMOTE_KEY_DOCUMENTS_BY_ID);

pub struct ServerKeys {
    store: Arc<Store>,
    client: Arc<ServerClient>,
    own: Arc<ServerKey>,
    trusted: Vec<OwnedServerName>,
    /// One fetch per server at a time: a burst of requests from a server whose keys are not
    /// cached waits for one fetch instead of making one each.
    fetching: parking_lot::Mutex<BTreeMap<OwnedServerName, Arc<tokio::sync::Mutex<()>>>>,
}

impl ServerKeys {
    pub fn new(
        store: Arc<Store>,
        client: Arc<ServerClient>,
        own: Arc<ServerKey>,
        trusted: Vec<OwnedServerName>,
    ) -> Self {
        ServerKeys { store, client, own, trusted, fetching: Default::default() }
    }

    /// The keys of `server` named by `key_ids` that verify a signature made at `ts`, fetched
    /// from the origin and then from the notaries when the cache lacks any of them. The
    /// answer holds only keys that passed; a caller that needs one missing fails its check.
    pub async fn keys_for(&self, server: &ServerName, key_ids: &[String], ts: u64) -> Result<PublicKeyMap> {
        if *server == **self.own.server_name() {
            let mut set = BTreeMap::new();
            set.insert(self.own.key_id(), self.own.public_key());
            return Ok(BTreeMap::from([(server.to_string(), set)]));
        }
        let mut found = self.cached(server, key_ids, ts)?;
        if found.len() >= key_ids.len() {
            return Ok(BTreeMap::from([(server.to_string(), found)]));
        }
        let turn = self.fetching.lock().entry(server.to_owned()).or_default().clone();
        let _fetching = turn.lock().await;
        // Another request may have fetched them while this one waited.
        found = self.cached(server, key_ids, ts)?;
        if found.len() < key_ids.len() {
            if let Err(e) = self.fetch_from_origin(server).await {
                tracing::debug!(%server, error = %e, "cannot fetch keys from the origin");
            }
            found = self.cached(server, key_ids, ts)?;
        }
        for notary in &self.trusted {
            if found.len() >= key_ids.len() {
                break;
            }
            if let Err(e) = self.fetch_from_notary(notary, server, key_ids, ts).await {
                tracing::debug!(%server, %notary, error = %e, "cannot fetch keys from the notary");
            }
            found = self.cached(server, key_ids, ts)?;
        }
        drop(_fetching);
        // Forget the turn once nobody waits for it, so the map does not grow with every
        // server ever seen.
        let mut fetching = self.fetching.lock();
        if fetching.get(server).is_some_and(|t| Arc::strong_count(t) <= 2) {
            fetching.remove(server);
        }
        drop(fetching);
        Ok(BTreeMap::from([(server.to_string(), found)]))
    }

    fn cached(&self, server: &ServerName, key_ids: &[String], ts: u64) -> Result<BTreeMap<String, Base64>> {
        let mut found = BTreeMap::new();
        for id in key_ids {
            let Some(k) = REMOTE_KEYS.get(&self.store, (server.as_str(), id.as_str()))? else { continue };
            if !k.valid_at(ts) {
                continue;
            }
            if let Ok(key) = Base64::parse(&k.key) {
                found.insert(id.clone(), key);
            }
        }
        Ok(found)
    }

    /// Fetches `server`'s key document from the server itself, and keeps it if it verifies.
    pub async fn fetch_from_origin(&self, server: &ServerName) -> Result<()> {
        let fetched = self
            .client
            .request(
                server,
                ServerRequest::get("/_matrix/key/v2/server")
                    .unsigned()
                    .limits(KEY_FETCH_TIMEOUT, MAX_KEY_RESPONSE_BYTES),
            )
            .await
            .map_err(|e| Error::unavailable(e.to_string()))?;
        if !fetched.status.is_success() {
            return Err(Error::unavailable(format!("{server} answered {} for its keys", fetched.status)));
        }
        let doc: CanonicalJsonObject = serde_json::from_slice(&fetched.body)
            .map_err(|e| Error::unavailable(format!("{server}'s key document is not canonical JSON: {e}")))?;
        self.keep(server, doc, None)
    }

    /// Asks `notary` for `server`'s keys `key_ids`, valid at least until `valid_at`, and
    /// keeps what verifies. The key ids are named: Synapse answers a query for "all keys"
    /// from its cache only and never asks the origin for them.
    pub async fn fetch_from_notary(
        &self,
        notary: &ServerName,
        server: &ServerName,
        key_ids: &[String],
        valid_at: u64,
    ) -> Result<()> {
        // The notary's own keys first, from the notary itself.
        let notary_keys = self.keys_for_notary(notary).await?;
        let criteria: serde_json::Map<String, Value> =
            key_ids.iter().map(|id| (id.clone(), serde_json::json!({ "minimum_valid_until_ts": valid_at }))).collect();
        let body = serde_json::json!({ "server_keys": { server.as_str(): criteria } });
        let fetched = self
            .client
            .request(
                notary,
                ServerRequest::post("/_matrix/key/v2/query", &body)
                    .unsigned()
                    .limits(KEY_FETCH_TIMEOUT, MAX_KEY_RESPONSE_BYTES),
            )
            .await
            .map_err(|e| Error::unavailable(e.to_string()))?;
        if !fetched.status.is_success() {
            return Err(Error::unavailable(format!("notary {notary} answered {}", fetched.status)));
        }
        #[derive(Deserialize)]
        struct Answer {
            server_keys: Vec<Value>,
        }
        let answer: Answer = serde_json::from_slice(&fetched.body)
            .map_err(|e| Error::unavailable(format!("notary {notary}'s answer is not valid: {e}")))?;
        for doc in answer.server_keys.into_iter().take(MAX_KEYS_PER_DOCUMENT) {
            let Ok(doc) = serde_json::from_value::<CanonicalJsonObject>(doc) else { continue };
            if doc.get("server_name").and_then(CanonicalJsonValue::as_str) != Some(server.as_str()) {
                continue;
            }
            if let Err(e) = self.keep(server, doc, Some((notary, &notary_keys))) {
                tracing::debug!(%server, %notary, error = %e, "a notary's key document was refused");
            }
        }
        Ok(())
    }

    /// The notary's current keys, from the cache or the notary itself.
    async fn keys_for_notary(&self, notary: &ServerName) -> Result<BTreeMap<String, Base64>> {
        let now = now_millis();
        let valid_ids = |store: &Store| -> Result<Vec<String>> {
            Ok(REMOTE_KEYS
                .collect_prefix(store, notary.as_str())?
                .into_iter()
                .filter(|(_, k)| k.valid_at(now))
                .map(|(id, _)| id)
                .collect())
        };
        let mut ids = valid_ids(&self.store)?;
        if ids.is_empty() {
            self.fetch_from_origin(notary).await?;
            ids = valid_ids(&self.store)?;
        }
        self.cached(notary, &ids, now)
    }

    /// Verifies a key document of `server` (and the notary's signature on it, when it came
    /// through one) and caches its keys and the document.
    fn keep(
        &self,
        server: &ServerName,
        doc: CanonicalJsonObject,
        via: Option<(&ServerName, &BTreeMap<String, Base64>)>,
    ) -> Result<()> {
        let refuse = |why: String| Error::unavailable(format!("{server}'s key document: {why}"));
        if doc.get("server_name").and_then(CanonicalJsonValue::as_str) != Some(server.as_str()) {
            return Err(refuse("it names another server".into()));
        }
        let now = now_millis();
        let keys = parse_keys(&doc, "verify_keys", now).map_err(refuse)?;
        let old = parse_keys(&doc, "old_verify_keys", now).map_err(refuse)?;
        if keys.is_empty() {
            return Err(refuse("it lists no key".into()));
        }
        // Every current key must have signed the document. `verify_json` checks every
        // server that signed, so each check sees only the signatures of the one it is about
        // (a notary's document carries the notary's signature too).
        let own = signed_only_by(&doc, server.as_str());
        for (id, k) in &keys {
            let key = Base64::parse(&k.key).map_err(|e| refuse(format!("key {id}: {e}")))?;
            let map = BTreeMap::from([(server.to_string(), BTreeMap::from([(id.clone(), key)]))]);
            ruma::signatures::verify_json(&map, &own).map_err(|e| refuse(format!("signature of {id}: {e}")))?;
        }
        if let Some((notary, notary_keys)) = via {
            let map = BTreeMap::from([(notary.to_string(), notary_keys.clone())]);
            ruma::signatures::verify_json(&map, &signed_only_by(&doc, notary.as_str()))
                .map_err(|e| refuse(format!("notary {notary}'s signature: {e}")))?;
        }
        // Only the document as the origin signed it is kept, without a notary's signature.
        let kept_doc = own;
        let mut batch = Batch::new();
        for (id, key) in keys.iter().chain(&old) {
            let cached = REMOTE_KEYS.get(&self.store, (server.as_str(), id.as_str()))?;
            if let Some(c) = &cached {
                if c.key != key.key && c.expired_ts.is_none() && c.valid_at(now) {
                    tracing::warn!(%server, key_id = %id, "a key document changes a key still valid in the cache; keeping the cached one");
                    continue;
                }
            }
            REMOTE_KEYS.put(&mut batch, (server.as_str(), id.as_str()), key);
        }
        let bytes = serde_json::to_vec(&kept_doc).map_err(|e| Error::internal(e.to_string()))?;
        let valid_until = valid_until_of(&bytes);
        for (id, _) in &keys {
            let key = (server.as_str(), id.as_str());
            if REMOTE_KEY_DOCUMENTS_BY_ID.get(&self.store, key)?.is_none_or(|kept| valid_until_of(&kept) <= valid_until)
            {
                REMOTE_KEY_DOCUMENTS_BY_ID.put(&mut batch, key, &bytes);
            }
        }
        REMOTE_KEY_DOCUMENTS.put(&mut batch, server.as_str(), &bytes);
        self.store.write(batch)?;
        Ok(())
    }

    /// Key documents of `server`, as it signed them, with this server's signature added
    /// (the notary API's answer): the last one when `key_ids` is empty, else the latest
    /// listing each of them (once each). Empty when none is cached.
    pub fn notarised_documents(&self, server: &ServerName, key_ids: &[&str]) -> Result<Vec<CanonicalJsonObject>> {
        let mut stored = Vec::new();
        if key_ids.is_empty() {
            stored.extend(REMOTE_KEY_DOCUMENTS.get(&self.store, server.as_str())?);
        }
        for id in key_ids {
            if let Some(bytes) = REMOTE_KEY_DOCUMENTS_BY_ID.get(&self.store, (server.as_str(), *id))? {
                if !stored.contains(&bytes) {
                    stored.push(bytes);
                }
            }
        }
        let mut docs = Vec::with_capacity(stored.len());
        for bytes in stored {
            let mut doc: CanonicalJsonObject =
                serde_json::from_slice(&bytes).map_err(|e| Error::internal(format!("stored key document: {e}")))?;
            self.own.sign(&mut doc)?;
            docs.push(doc);
        }
        Ok(docs)
    }

    /// Whether a document of `server` listing key `key_id` is cached.
    pub fn has_document_for(&self, server: &ServerName, key_id: &str) -> Result<bool> {
        Ok(REMOTE_KEY_DOCUMENTS_BY_ID.get(&self.store, (server.as_str(), key_id))?.is_some())
    }

    /// `valid_until_ts` of the cached document of `server` (0 when none).
    pub fn cached_valid_until(&self, server: &ServerName) -> Result<u64> {
        Ok(REMOTE_KEY_DOCUMENTS.get(&self.store, server.as_str())?.map_or(0, |bytes| valid_until_of(&bytes)))
    }
}

/// `valid_until_ts` of a stored key document (0 when unreadable).
fn valid_until_of(bytes: &[u8]) -> u64 {
    let doc: Value = serde_json::from_slice(bytes).unwrap_or_default();
    doc.get("valid_until_ts").and_then(Value::as_u64).unwrap_or(0)
}

/// `doc` with the signatures of `signer` alone.
fn signed_only_by(doc: &CanonicalJsonObject, signer: &str) -> CanonicalJsonObject {
    let mut copy = doc.clone();
    if let Some(CanonicalJsonValue::Object(sigs)) = copy.get_mut("signatures") {
        sigs.retain(|name, _| name == signer);
    }
    copy
}

/// The keys under `field` (`verify_keys` or `old_verify_keys`) of a key document.
fn parse_keys(
    doc: &CanonicalJsonObject,
    field: &str,
    now: u64,
) -> std::result::Result<Vec<(String, RemoteKey)>, String> {
    let valid_until = doc.get("valid_until_ts").and_then(|v| match v {
        CanonicalJsonValue::Integer(i) => u64::try_from(i64::from(*i)).ok(),
        _ => None,
    });
    let Some(CanonicalJsonValue::Object(entries)) = doc.get(field) else {
        return if field == "verify_keys" { Err("no verify_keys".into()) } else { Ok(Vec::new()) };
    };
    if entries.len() > MAX_KEYS_PER_DOCUMENT {
        return Err(format!("more than {MAX_KEYS_PER_DOCUMENT} keys"));
    }
    let mut out = Vec::new();
    for (id, entry) in entries {
        if !id.starts_with("ed25519:") {
            continue;
        }
        let CanonicalJsonValue::Object(entry) = entry else { return Err(format!("{field}.{id} is not an object")) };
        let Some(key) = entry.get("key").and_then(CanonicalJsonValue::as_str) else {
            return Err(format!("{field}.{id} has no key"));
        };
        let expired_ts = match field {
            "old_verify_keys" => Some(
                entry
                    .get("expired_ts")
                    .and_then(|v| match v {
                        CanonicalJsonValue::Integer(i) => u64::try_from(i64::from(*i)).ok(),
                        _ => None,
                    })
                    .ok_or_else(|| format!("{field}.{id} has no expired_ts"))?,
            ),
            _ => None,
        };
        out.push((
            id.clone(),
            RemoteKey {
                key: key.trim_end_matches('=').to_owned(),
                valid_until_ts: if expired_ts.is_some() { 0 } else { valid_until.ok_or("no valid_until_ts")? },
                fetched_ts: now,
                expired_ts,
            },
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validity_is_capped_at_seven_days_after_fetching() {
        let k =
            RemoteKey { key: "k".into(), valid_until_ts: 100 * MAX_VALIDITY_MS, fetched_ts: 1000, expired_ts: None };
        assert!(k.valid_at(1000 + MAX_VALIDITY_MS - 1));
        assert!(!k.valid_at(1000 + MAX_VALIDITY_MS));
        let short = RemoteKey { valid_until_ts: 2000, ..k.clone() };
        assert!(short.valid_at(1999) && !short.valid_at(2000));
        let old = RemoteKey { valid_until_ts: 0, expired_ts: Some(5000), ..k };
        assert!(old.valid_at(4999) && !old.valid_at(5000), "an old key verifies what was signed before it expired");
    }
}
