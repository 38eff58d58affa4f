//! Synapse's registration token admin API, in its paths and shapes, for server admins:
//!
//! - `GET /_synapse/admin/v1/registration_tokens` (`valid=true|false` filters);
//! - `POST /_synapse/admin/v1/registration_tokens/new` (`token` or a random one of
//!   `length`, `uses_allowed`, `expiry_time` in ms): 200 with the token;
//! - `GET`/`PUT`/`DELETE /_synapse/admin/v1/registration_tokens/{token}`: `PUT` changes
//!   `uses_allowed` and `expiry_time` (`null` lifts a limit, an absent key keeps it).
//!
//! The tokens are the ones `hearth admin create-token` makes and `/register` consumes
//! ([`crate::users::registration_tokens`]); the one in the configuration is not listed.
//! Hearth takes a use when the account is created, so `pending` is always 0. Every
//! invalid value is 400 `M_INVALID_PARAM` naming the field, as on Synapse.

use std::{collections::HashMap, sync::Arc};

use axum::{
    body::Bytes,
    extract::{Path, Query, State},
    routing::{get, post},
    Json, Router,
};
use rand::Rng;
use serde_json::{json, Map, Value};

use super::{object, Params, ServerAdmin};
use crate::{
    error::{Error, Result},
    time::now_millis,
    users::registration_tokens::{TokenRecord, MAX_TOKEN_LEN},
    Services,
};

/// The characters of a token (the spec's grammar).
const TOKEN_CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._~-";

pub fn routes() -> Router<Arc<Services>> {
    Router::new()
        .route("/_synapse/admin/v1/registration_tokens", get(list))
        .route("/_synapse/admin/v1/registration_tokens/new", post(create))
        .route("/_synapse/admin/v1/registration_tokens/{token}", get(show).put(update).delete(remove))
}

fn shown(token: &str, r: &TokenRecord) -> Value {
    json!({
        "token": token,
        "uses_allowed": r.uses_allowed,
        "pending": 0,
        "completed": r.completed,
        "expiry_time": r.expiry_time,
    })
}

async fn list(
    State(s): State<Arc<Services>>,
    _: ServerAdmin,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>> {
    let valid = Params(query).flag("valid")?;
    let now = now_millis();
    let tokens: Vec<Value> = s
        .registration_tokens
        .list()?
        .iter()
        .filter(|(_, r)| valid.is_none_or(|v| r.usable(now) == v))
        .map(|(t, r)| shown(t, r))
        .collect();
    Ok(Json(json!({"registration_tokens": tokens})))
}

/// `uses_allowed`: absent, `null` or an integer ≥ 0 (a boolean is not an integer here).
fn uses_field(body: &Map<String, Value>) -> Result<Option<Option<u64>>> {
    match body.get("uses_allowed") {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(None)),
        Some(Value::Number(n)) if n.as_u64().is_some() => Ok(Some(n.as_u64())),
        Some(_) => Err(Error::invalid_param("uses_allowed must be a non-negative integer or null")),
    }
}

/// `expiry_time`: absent, `null` or a time in ms that is not in the past.
fn expiry_field(body: &Map<String, Value>) -> Result<Option<Option<u64>>> {
    match body.get("expiry_time") {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(None)),
        Some(Value::Number(n)) => match n.as_i64() {
            Some(t) if t < now_millis() as i64 => Err(Error::invalid_param("expiry_time must not be in the past")),
            Some(t) => Ok(Some(Some(t as u64))),
            None => Err(Error::invalid_param("expiry_time must be an integer or null")),
        },
        Some(_) => Err(Error::invalid_param("expiry_time must be an integer or null")),
    }
}

async fn create(State(s): State<Arc<Services>>, ServerAdmin(admin): ServerAdmin, body: Bytes) -> Result<Json<Value>> {
    let body = object(&body)?;
    let token = match body.get("token") {
        Some(Value::String(t)) => {
            if t.is_empty() || t.len() > MAX_TOKEN_LEN {
                return Err(Error::invalid_param(format!(
                    "token must not be empty and must not be longer than {MAX_TOKEN_LEN} characters"
                )));
            }
            if !t.bytes().all(|b| TOKEN_CHARS.contains(&b)) {
                return Err(Error::invalid_param("token must consist only of characters matched by [A-Za-z0-9._~-]"));
            }
            t.clone()
        }
        Some(_) => return Err(Error::invalid_param("token must be a string")),
        None => {
            let length = match body.get("length") {
                None => 16,
                Some(Value::Number(n)) => match n.as_u64() {
                    Some(l) if (1..=MAX_TOKEN_LEN as u64).contains(&l) => l as usize,
                    _ => {
                        return Err(Error::invalid_param(format!(
                            "length must be greater than zero and not greater than {MAX_TOKEN_LEN}"
                        )))
                    }
                },
                Some(_) => return Err(Error::invalid_param("length must be an integer")),
            };
            let mut rng = rand::thread_rng();
            (0..length).map(|_| char::from(TOKEN_CHARS[rng.gen_range(0..TOKEN_CHARS.len())])).collect()
        }
    };
    let uses = uses_field(&body)?.flatten();
    let expiry = expiry_field(&body)?.flatten();
    if s.registration_tokens.get(&token)?.is_some() {
        return Err(Error::invalid_param(format!("Token already exists: {token}")));
    }
    let token = s.registration_tokens.create(Some(token), uses, expiry)?;
    tracing::info!(%admin, "admin created a registration token");
    let record = s.registration_tokens.get(&token)?.ok_or_else(|| Error::internal("the new token vanished"))?;
    Ok(Json(shown(&token, &record)))
}

fn no_such(token: &str) -> Error {
    Error::not_found(format!("No such registration token: {token}"))
}

async fn show(State(s): State<Arc<Services>>, _: ServerAdmin, Path(token): Path<String>) -> Result<Json<Value>> {
    let record = s.registration_tokens.get(&token)?.ok_or_else(|| no_such(&token))?;
    Ok(Json(shown(&token, &record)))
}

async fn update(
    State(s): State<Arc<Services>>,
    ServerAdmin(admin): ServerAdmin,
    Path(token): Path<String>,
    body: Bytes,
) -> Result<Json<Value>> {
    let body = object(&body)?;
    let uses = uses_field(&body)?;
    let expiry = expiry_field(&body)?;
    let record = s.registration_tokens.update(&token, uses, expiry)?.ok_or_else(|| no_such(&token))?;
    tracing::info!(%admin, "admin changed a registration token");
    Ok(Json(shown(&token, &record)))
}

async fn remove(
    State(s): State<Arc<Services>>,
    ServerAdmin(admin): ServerAdmin,
    Path(token): Path<String>,
) -> Result<Json<Value>> {
    if !s.registration_tokens.revoke(&token)? {
        return Err(no_such(&token));
    }
    tracing::info!(%admin, "admin deleted a registration token");
    Ok(Json(json!({})))
}
