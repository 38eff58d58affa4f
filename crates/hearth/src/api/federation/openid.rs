//! Server-server API: `GET /_matrix/federation/v1/openid/userinfo`, where a third party
//! exchanges a user's OpenID token for the user's id. Unauthenticated by design: the token
//! is the credential, so a request without one is 401, as an unknown one is.

use std::{collections::HashMap, sync::Arc};

use axum::{
    extract::{Query, State},
    Json,
};
use serde_json::{json, Value};

use crate::{
    error::{Error, Result},
    Services,
};

/// `GET /_matrix/federation/v1/openid/userinfo?access_token=…`
pub async fn get_openid_userinfo(
    State(s): State<Arc<Services>>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>> {
    let unknown =
        || Error::matrix(http::StatusCode::UNAUTHORIZED, "M_UNKNOWN_TOKEN", "Unknown or expired OpenID token");
    let token = query.get("access_token").filter(|t| !t.is_empty()).ok_or_else(unknown)?;
    match s.users.openid_user(token)? {
        Some(user) => Ok(Json(json!({"sub": user}))),
        None => Err(unknown()),
    }
}
