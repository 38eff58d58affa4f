//! `GET /_matrix/key/v2/server`: the server's own signed key document.
//!
//! Served whether or not federation is allowed: it only publishes a public key.

use std::sync::Arc;

use axum::Router;
use ruma::{api::federation::discovery::get_server_keys, serde::Raw};

use super::{Ruma, RumaRouter};
use crate::{
    error::{Error, Result},
    Services,
};

pub fn routes() -> Router<Arc<Services>> {
    Router::new().ruma(get_server_keys)
}

/// `GET /_matrix/key/v2/server`
pub async fn get_server_keys(
    s: Arc<Services>,
    _req: Ruma<get_server_keys::v2::Request>,
) -> Result<get_server_keys::v2::Response> {
    let doc = s.server_key.key_document()?;
    let raw = serde_json::value::to_raw_value(&doc).map_err(|e| Error::internal(e.to_string()))?;
    Ok(get_server_keys::v2::Response::new(Raw::from_json(raw)))
}
