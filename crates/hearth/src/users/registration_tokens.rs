//! Registration tokens: the static one from the configuration (Conduit's
//! `registration_token`, unlimited) and tokens kept in the database with an optional
//! number of uses and expiry, managed with `hearth admin create-token` and friends.
//!
//! A token is checked at the UIA stage and a use is consumed only when the account is
//! actually created, under a lock, so two registrations cannot both take the last use.

use std::sync::Arc;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::uiaa::TokenCheck;
use crate::{
    error::{Error, Result},
    store::codec::json_value,
    store::{tables, Batch, Store, Table},
    time::now_millis,
};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenRecord {
    /// How many registrations it allows (`None`: unlimited).
    pub uses_allowed: Option<u64>,
    /// Registrations completed with it.
    pub completed: u64,
    /// Milliseconds since the epoch after which it is refused.
    pub expiry_time: Option<u64>,
    pub created_ts: u64,
}

json_value!(TokenRecord);

impl TokenRecord {
    pub fn usable(&self, now: u64) -> bool {
        self.expiry_time.is_none_or(|t| now < t) && self.uses_allowed.is_none_or(|u| self.completed < u)
    }
}

pub const REGISTRATION_TOKENS: Table<String, TokenRecord> = Table::new(tables::REGISTRATION_TOKENS);

/// Longest token accepted (the spec allows 64 characters of `[A-Za-z0-9._~-]`).
pub const MAX_TOKEN_LEN: usize = 64;

pub struct RegistrationTokens {
    store: Arc<Store>,
    configured: Option<String>,
    lock: Mutex<()>,
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl RegistrationTokens {
    pub fn new(store: Arc<Store>, configured: Option<String>) -> Self {
        RegistrationTokens { store, configured, lock: Mutex::new(()) }
    }

    fn is_configured(&self, token: &str) -> bool {
        self.configured.as_deref().is_some_and(|c| constant_time_eq(c.as_bytes(), token.as_bytes()))
    }

    /// Registration needs a token when one is configured or any exists in the database.
    pub fn required(&self) -> Result<bool> {
        if self.configured.is_some() {
            return Ok(true);
        }
        let mut any = false;
        REGISTRATION_TOKENS.scan_all(&self.store, |_, _| {
            any = true;
            false
        })?;
        Ok(any)
    }

    /// Takes one use of `token` for a registration that is about to be completed.
    pub fn consume(&self, token: &str) -> Result<()> {
        if self.is_configured(token) {
            return Ok(());
        }
        let _guard = self.lock.lock();
        let mut record = REGISTRATION_TOKENS
            .get(&self.store, token)?
            .ok_or_else(|| Error::forbidden("Invalid registration token"))?;
        if !record.usable(now_millis()) {
            return Err(Error::forbidden("This registration token is used up or expired"));
        }
        record.completed += 1;
        let mut batch = Batch::new();
        REGISTRATION_TOKENS.put(&mut batch, token, &record);
        Ok(self.store.write(batch)?)
    }

    /// Creates a token (random 16 characters unless given).
    pub fn create(&self, token: Option<String>, uses_allowed: Option<u64>, expiry_time: Option<u64>) -> Result<String> {
        let token = token.unwrap_or_else(|| crate::random::alphanumeric(16));
        if token.is_empty()
            || token.len() > MAX_TOKEN_LEN
            || !token.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b'-'))
        {
            return Err(Error::invalid_param("Tokens are 1-64 characters of A-Z a-z 0-9 . _ ~ -"));
        }
        let _guard = self.lock.lock();
        if REGISTRATION_TOKENS.contains(&self.store, &token)? {
            return Err(Error::invalid_param("That token already exists"));
        }
        let mut batch = Batch::new();
        REGISTRATION_TOKENS.put(
            &mut batch,
            &token,
            &TokenRecord { uses_allowed, completed: 0, expiry_time, created_ts: now_millis() },
        );
        self.store.write(batch)?;
        Ok(token)
    }

    pub fn get(&self, token: &str) -> Result<Option<TokenRecord>> {
        Ok(REGISTRATION_TOKENS.get(&self.store, token)?)
    }

    /// Changes a token's limits (`None`: unchanged; `Some(None)`: no limit). `None` when
    /// there is no such token.
    pub fn update(
        &self,
        token: &str,
        uses_allowed: Option<Option<u64>>,
        expiry_time: Option<Option<u64>>,
    ) -> Result<Option<TokenRecord>> {
        let _guard = self.lock.lock();
        let Some(mut record) = REGISTRATION_TOKENS.get(&self.store, token)? else { return Ok(None) };
        if let Some(u) = uses_allowed {
            record.uses_allowed = u;
        }
        if let Some(e) = expiry_time {
            record.expiry_time = e;
        }
        let mut batch = Batch::new();
        REGISTRATION_TOKENS.put(&mut batch, token, &record);
        self.store.write(batch)?;
        Ok(Some(record))
    }

    pub fn list(&self) -> Result<Vec<(String, TokenRecord)>> {
        let mut out = Vec::new();
        REGISTRATION_TOKENS.scan_all(&self.store, |t, r| {
            out.push((t, r));
            true
        })?;
        Ok(out)
    }

    /// Deletes a token; false if there was none.
    pub fn revoke(&self, token: &str) -> Result<bool> {
        let _guard = self.lock.lock();
        if !REGISTRATION_TOKENS.contains(&self.store, token)? {
            return Ok(false);
        }
        let mut batch = Batch::new();
        REGISTRATION_TOKENS.delete(&mut batch, token);
        self.store.write(batch)?;
        Ok(true)
    }
}

impl TokenCheck for RegistrationTokens {
    fn is_valid(&self, token: &str) -> Result<bool> {
        if self.is_configured(token) {
            return Ok(true);
        }
        if token.len() > MAX_TOKEN_LEN {
            return Ok(false);
        }
        Ok(REGISTRATION_TOKENS.get(&self.store, token)?.is_some_and(|r| r.usable(now_millis())))
    }
}
