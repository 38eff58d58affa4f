//! `GET /_hearth/health`: the probe endpoint for Kubernetes (readiness, liveness, startup).
//!
//! Answers 200 `{"status":"ok"}` when the server serves requests and its database answers a
//! read and takes writes; 503 `M_UNAVAILABLE` otherwise (a restart is what brings a
//! database that stopped taking writes back). Not a Matrix endpoint, hence the `/_hearth` prefix.

use std::sync::Arc;

use axum::{extract::State, routing::get, Json, Router};
use http::StatusCode;
use serde_json::{json, Value};

use crate::{error::Error, store::tables::META, Services};

pub fn routes() -> Router<Arc<Services>> {
    Router::new().route("/_hearth/health", get(health))
}

async fn health(State(s): State<Arc<Services>>) -> Result<Json<Value>, Error> {
    if let Some(why) = s.store.failed() {
        tracing::error!(%why, "health check: the database refuses writes");
        return Err(Error::matrix(StatusCode::SERVICE_UNAVAILABLE, "M_UNAVAILABLE", "database refuses writes"));
    }
    match META.get(&s.store, "schema_version") {
        Ok(Some(_)) => Ok(Json(json!({"status": "ok"}))),
        Ok(None) => Err(Error::matrix(StatusCode::SERVICE_UNAVAILABLE, "M_UNAVAILABLE", "database not initialised")),
        Err(e) => {
            tracing::error!(error = %e, "health check: database read failed");
            Err(Error::matrix(StatusCode::SERVICE_UNAVAILABLE, "M_UNAVAILABLE", "database unavailable"))
        }
    }
}
