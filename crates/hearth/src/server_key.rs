//! The server's ed25519 signing key: made at first start, kept in the database, used to
//! sign the server's key document now and every PDU and federation request later.
//!
//! The private key is stored as its PKCS#8 document in the `meta` table. Losing it means
//! other servers can no longer verify our old events, so it lives with the data and is
//! included in every backup.

use base64::{engine::general_purpose::STANDARD_NO_PAD, Engine as _};
use ruma::{
    serde::Base64,
    signatures::{sign_json, Ed25519KeyPair, KeyPair},
    CanonicalJsonObject, CanonicalJsonValue, OwnedServerName,
};
use serde::{Deserialize, Serialize};

use crate::{
    error::{Error, Result},
    store::codec::json_value,
    store::{tables::META, Batch, Store, StoreError},
    time::now_millis,
};

const META_KEY: &str = "server_signing_key";

/// How long other servers may cache our key document.
const VALIDITY_MS: u64 = 7 * 24 * 60 * 60 * 1000;

#[derive(Serialize, Deserialize)]
struct StoredKey {
    /// The key id's version part, as in `ed25519:<version>`.
    version: String,
    /// PKCS#8 v2 document, standard base64.
    pkcs8: String,
}

json_value!(StoredKey);

pub struct ServerKey {
    server_name: OwnedServerName,
    pair: Ed25519KeyPair,
    /// The signed key document as last served, and when it stops being fresh enough to
    /// serve (half its validity): `/_matrix/key/v2/server` answers from here.
    document: parking_lot::Mutex<Option<(CanonicalJsonObject, u64)>>,
}

impl ServerKey {
    /// Loads the key from the store, generating and saving one on first start.
    pub fn load_or_create(store: &Store, server_name: OwnedServerName) -> Result<Self, StoreError> {
        let stored: StoredKey = match META.get(store, META_KEY)? {
            Some(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| StoreError::Other(format!("stored signing key unreadable: {e}")))?,
            None => {
                let doc = Ed25519KeyPair::generate();
                let version: String = crate::random::alphanumeric(8);
                let stored = StoredKey { version, pkcs8: STANDARD_NO_PAD.encode(&*doc) };
                let mut batch = Batch::new();
                META.put(&mut batch, META_KEY, &serde_json::to_vec(&stored).unwrap_or_default());
                store.write(batch)?;
                tracing::info!(key_id = %format!("ed25519:{}", stored.version), "generated the server signing key");
                stored
            }
        };
        let doc = STANDARD_NO_PAD
            .decode(stored.pkcs8.trim_end_matches('='))
            .map_err(|e| StoreError::Other(format!("stored signing key unreadable: {e}")))?;
        let pair = Ed25519KeyPair::from_der(&doc, stored.version)
            .map_err(|e| StoreError::Other(format!("stored signing key unreadable: {e}")))?;
        Ok(ServerKey { server_name, pair, document: parking_lot::Mutex::new(None) })
    }

    /// `ed25519:<version>`.
    pub fn key_id(&self) -> String {
        format!("ed25519:{}", self.pair.version())
    }

    pub fn public_key(&self) -> Base64 {
        Base64::new(self.pair.public_key().to_vec())
    }

    pub fn key_pair(&self) -> &impl KeyPair {
        &self.pair
    }

    /// The key pair itself, for signing federation requests (`X-Matrix`).
    pub fn ed25519(&self) -> &Ed25519KeyPair {
        &self.pair
    }

    pub fn server_name(&self) -> &OwnedServerName {
        &self.server_name
    }

    /// Signs a canonical JSON object in place as this server.
    pub fn sign(&self, object: &mut CanonicalJsonObject) -> Result<()> {
        sign_json(self.server_name.as_str(), &self.pair, object)
            .map_err(|e| Error::internal(format!("signing failed: {e}")))
    }

    /// The signed key document served at `/_matrix/key/v2/server`: kept in memory and
    /// signed again once half of its validity has passed, so that serving it costs no
    /// signature and other servers always get at least 3.5 days of validity.
    pub fn key_document(&self) -> Result<CanonicalJsonObject> {
        let now = now_millis();
        let mut kept = self.document.lock();
        if let Some((doc, fresh_until)) = kept.as_ref() {
            if now < *fresh_until {
                return Ok(doc.clone());
            }
        }
        let doc = self.sign_key_document(now)?;
        *kept = Some((doc.clone(), now + VALIDITY_MS / 2));
        Ok(doc)
    }

    fn sign_key_document(&self, now: u64) -> Result<CanonicalJsonObject> {
        let mut verify_key = CanonicalJsonObject::new();
        verify_key.insert("key".into(), CanonicalJsonValue::String(self.public_key().encode()));
        let mut verify_keys = CanonicalJsonObject::new();
        verify_keys.insert(self.key_id(), CanonicalJsonValue::Object(verify_key));
        let mut doc = CanonicalJsonObject::new();
        doc.insert("server_name".into(), CanonicalJsonValue::String(self.server_name.to_string()));
        doc.insert("verify_keys".into(), CanonicalJsonValue::Object(verify_keys));
        doc.insert("old_verify_keys".into(), CanonicalJsonValue::Object(CanonicalJsonObject::new()));
        let until = (now + VALIDITY_MS) as i64;
        doc.insert("valid_until_ts".into(), CanonicalJsonValue::Integer(until.try_into().unwrap_or_default()));
        self.sign(&mut doc)?;
        Ok(doc)
    }
}
