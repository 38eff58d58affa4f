//! Synapse's federation admin API, in its paths and shapes, for server admins:
//!
//! - `GET /_synapse/admin/v1/federation/destinations` (`from`, `limit`, `destination`
//!   substring, `order_by`, `dir`): the servers this one sends to;
//! - `GET /_synapse/admin/v1/federation/destinations/{destination}`: one of them;
//! - `POST …/destinations/{destination}/reset_connection`: try again at once instead of
//!   waiting out the backoff (400 when it is not waiting, as on Synapse).
//!
//! Hearth keeps the retry state in memory (a restart tries every destination at once), so
//! `retry_last_ts` and `failure_ts` tell of failures since start, and
//! `last_successful_stream_ordering` is `null`. `queued` (Hearth's own field) counts the
//! events waiting for the destination.

use std::{collections::HashMap, sync::Arc};

use axum::{
    extract::{Path, Query, State},
    routing::{get, post},
    Json, Router,
};
use ruma::OwnedServerName;
use serde_json::{json, Value};

use super::{users::compare, Params, ServerAdmin};
use crate::{
    error::{Error, Result},
    federation::sender::DestinationStatus,
    Services,
};

pub fn routes() -> Router<Arc<Services>> {
    Router::new()
        .route("/_synapse/admin/v1/federation/destinations", get(list))
        .route("/_synapse/admin/v1/federation/destinations/{destination}", get(show))
        .route("/_synapse/admin/v1/federation/destinations/{destination}/reset_connection", post(reset))
}

fn shown(d: &DestinationStatus) -> Value {
    let waiting = !d.backoff.is_zero();
    json!({
        "destination": d.destination,
        "retry_last_ts": d.last_failure_ts.unwrap_or(0),
        "retry_interval": d.backoff.as_millis() as u64,
        "failure_ts": if waiting { d.last_failure_ts } else { None },
        "last_successful_stream_ordering": null,
        "queued": d.queued,
    })
}

const ORDER: &[&str] =
    &["destination", "retry_last_ts", "retry_interval", "failure_ts", "last_successful_stream_ordering"];

async fn list(
    State(s): State<Arc<Services>>,
    _: ServerAdmin,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>> {
    let q = Params(query);
    let from = q.int("from", 0)?;
    let limit = q.int("limit", 100)?;
    let order = q.one_of("order_by", ORDER, "destination")?.to_owned();
    let backwards = q.one_of("dir", &["f", "b"], "f")? == "b";
    let part = q.text("destination").map(str::to_lowercase);
    let mut all: Vec<Value> = s
        .federation
        .sender
        .destinations()?
        .iter()
        .filter(|d| part.as_deref().is_none_or(|p| d.destination.as_str().to_lowercase().contains(p)))
        .map(shown)
        .collect();
    all.sort_by(|a, b| compare(&a[&order], &b[&order]).then_with(|| compare(&a["destination"], &b["destination"])));
    if backwards {
        all.reverse();
    }
    let total = all.len();
    let page: Vec<Value> = all.into_iter().skip(from).take(limit).collect();
    let mut body = json!({"destinations": page, "total": total});
    if from + limit < total {
        body["next_token"] = json!((from + limit).to_string());
    }
    Ok(Json(body))
}

fn find(s: &Services, raw: &str) -> Result<DestinationStatus> {
    let name =
        OwnedServerName::try_from(raw).map_err(|_| Error::invalid_param(format!("{raw} is not a server name")))?;
    s.federation
        .sender
        .destinations()?
        .into_iter()
        .find(|d| d.destination == name)
        .ok_or_else(|| Error::not_found("Unknown destination"))
}

async fn show(State(s): State<Arc<Services>>, _: ServerAdmin, Path(destination): Path<String>) -> Result<Json<Value>> {
    Ok(Json(shown(&find(&s, &destination)?)))
}

async fn reset(
    State(s): State<Arc<Services>>,
    ServerAdmin(admin): ServerAdmin,
    Path(destination): Path<String>,
) -> Result<Json<Value>> {
    let d = find(&s, &destination)?;
    if !s.federation.sender.retry_now(&d.destination) {
        return Err(Error::invalid_param("The retry timing does not need to be reset for this destination."));
    }
    tracing::info!(%admin, destination = %d.destination, "admin reset a destination's backoff");
    Ok(Json(json!({})))
}
