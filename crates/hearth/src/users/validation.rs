//! Validation sessions of third-party addresses: the proof that a user receives mail at an
//! address (the client-server API's `requestToken` endpoints).
//!
//! A session is keyed by an id derived from the client's secret and the address, so a
//! client repeating its request (same secret, same address, same `send_attempt`) gets the
//! same session back and no second mail; a higher `send_attempt` sends a new token. The
//! token itself is kept only as its SHA-256. A session is good for [`SESSION_TTL_MS`] after
//! it was started; at most [`MAX_SESSIONS`] live at once (expired ones are swept when a new
//! one starts), since anyone may ask for a mail to be sent.

use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::Digest;

use super::Users;
use crate::{
    error::{Error, Result},
    store::{codec::json_value, tables, Batch, Table},
    time::now_millis,
};

/// How long a validation session lasts (a day).
pub const SESSION_TTL_MS: u64 = 24 * 60 * 60 * 1000;
/// Most validation sessions at once.
pub const MAX_SESSIONS: usize = 10_000;
/// The longest client secret and address accepted.
const MAX_FIELD: usize = 255;

/// Session id → the session.
pub const THREEPID_SESSIONS: Table<String, Session> = Table::new(tables::THREEPID_SESSIONS);

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Session {
    pub medium: String,
    pub address: String,
    /// SHA-256 of the client's secret (the id is derived from it too).
    pub secret_sha256: String,
    pub token_sha256: String,
    pub send_attempt: u64,
    pub created_at: u64,
    pub validated_at: Option<u64>,
}
json_value!(Session);

fn sha256_b64(input: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(input.as_bytes()))
}

/// What [`Users::start_validation`] decided.
pub struct Started {
    pub sid: String,
    /// The token to mail, when a mail is to be sent (a new session or a new attempt).
    pub token: Option<String>,
}

impl Users {
    /// Starts (or finds) the validation session of `address` for the client's secret.
    pub fn start_validation(
        &self,
        medium: &str,
        address: &str,
        client_secret: &str,
        send_attempt: u64,
    ) -> Result<Started> {
        if client_secret.is_empty()
            || client_secret.len() > MAX_FIELD
            || !client_secret.chars().all(|c| c.is_ascii_alphanumeric() || "._=-".contains(c))
        {
            return Err(Error::invalid_param("client_secret must be 1 to 255 characters of [0-9a-zA-Z.=_-]"));
        }
        if address.is_empty() || address.len() > MAX_FIELD {
            return Err(Error::invalid_param("The address is empty or too long"));
        }
        let sid = sha256_b64(&format!("hearth-3pid\0{client_secret}\0{medium}\0{address}"))[..24].to_owned();
        let now = now_millis();
        let live = |s: &Session| now.saturating_sub(s.created_at) < SESSION_TTL_MS;
        if let Some(existing) = THREEPID_SESSIONS.get(&self.store, &sid)?.filter(live) {
            if send_attempt <= existing.send_attempt {
                return Ok(Started { sid, token: None });
            }
        }
        let mut batch = Batch::new();
        let mut count = 0;
        THREEPID_SESSIONS.scan_all(&self.store, |id, s| {
            match live(&s) {
                true => count += 1,
                false => THREEPID_SESSIONS.delete(&mut batch, &id),
            }
            true
        })?;
        if count >= MAX_SESSIONS {
            return Err(Error::matrix(
                http::StatusCode::TOO_MANY_REQUESTS,
                "M_LIMIT_EXCEEDED",
                "Too many address validations in progress",
            ));
        }
        let token = crate::random::alphanumeric(32);
        let session = Session {
            medium: medium.to_owned(),
            address: address.to_owned(),
            secret_sha256: sha256_b64(client_secret),
            token_sha256: sha256_b64(&token),
            send_attempt,
            created_at: now,
            validated_at: None,
        };
        THREEPID_SESSIONS.put(&mut batch, &sid, &session);
        self.store.write(batch)?;
        Ok(Started { sid, token: Some(token) })
    }

    /// The token from the mail, with the session and the client's secret: marks the
    /// address validated.
    pub fn submit_validation(&self, sid: &str, client_secret: &str, token: &str) -> Result<()> {
        let mut session = self.live_session(sid, client_secret)?;
        if session.token_sha256 != sha256_b64(token) {
            return Err(Error::matrix(
                http::StatusCode::BAD_REQUEST,
                "M_THREEPID_AUTH_FAILED",
                "Wrong validation token",
            ));
        }
        if session.validated_at.is_none() {
            session.validated_at = Some(now_millis());
            let mut batch = Batch::new();
            THREEPID_SESSIONS.put(&mut batch, sid, &session);
            self.store.write(batch)?;
        }
        Ok(())
    }

    /// The address a session validated: (medium, address, when). 400
    /// `M_THREEPID_AUTH_FAILED` when the session is unknown, expired or not validated yet.
    pub fn validated(&self, sid: &str, client_secret: &str) -> Result<(String, String, u64)> {
        let session = self.live_session(sid, client_secret)?;
        match session.validated_at {
            Some(at) => Ok((session.medium, session.address, at)),
            None => Err(Error::matrix(
                http::StatusCode::BAD_REQUEST,
                "M_THREEPID_AUTH_FAILED",
                "That address has not been validated yet",
            )),
        }
    }

    fn live_session(&self, sid: &str, client_secret: &str) -> Result<Session> {
        let unknown =
            || Error::matrix(http::StatusCode::BAD_REQUEST, "M_THREEPID_AUTH_FAILED", "Unknown validation session");
        if sid.len() > MAX_FIELD {
            return Err(unknown());
        }
        let session = THREEPID_SESSIONS.get(&self.store, sid)?.ok_or_else(unknown)?;
        if session.secret_sha256 != sha256_b64(client_secret)
            || now_millis().saturating_sub(session.created_at) >= SESSION_TTL_MS
        {
            return Err(unknown());
        }
        Ok(session)
    }
}
