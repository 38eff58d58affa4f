//! `hearth well-known`: only `/.well-known/matrix/{client,server,support}` (and a health check),
//! from the configuration alone, with no database.
//!
//! Hearth runs as one replica that `Recreate` stops before the new one starts: while it
//! restarts, nothing answers. A server that looks up `.well-known/matrix/server` then
//! caches "no delegation" for an hour or more, and cannot reach this server meanwhile. The
//! deployment therefore runs this mode as a second, replicated Deployment behind the apex
//! domain's `/.well-known/matrix` route: it stays up across Hearth's upgrades. The
//! documents are the ones Hearth itself serves (`api/well_known.rs`), from the same
//! settings.

use std::net::SocketAddr;

use axum::{http::header, response::IntoResponse, routing::get, Router};
use http::{HeaderValue, StatusCode};
use serde_json::{json, Value};

use crate::Config;

/// The `/.well-known/matrix/client` document, when served.
pub fn client_document(config: &Config) -> Option<Value> {
    config.allow_well_known.then(|| json!({"m.homeserver": {"base_url": config.client_base_url(config.port)}}))
}

/// The `/.well-known/matrix/support` document, when a support page or contact is set.
pub fn support_document(config: &Config) -> Option<Value> {
    let w = &config.well_known;
    let mut doc = serde_json::Map::new();
    if w.support_email.is_some() || w.support_mxid.is_some() {
        let mut contact = serde_json::Map::new();
        contact.insert("role".into(), json!(w.support_role.as_deref().unwrap_or("m.role.admin")));
        if let Some(email) = &w.support_email {
            contact.insert("email_address".into(), json!(email));
        }
        if let Some(mxid) = &w.support_mxid {
            contact.insert("matrix_id".into(), json!(mxid));
        }
        doc.insert("contacts".into(), json!([contact]));
    }
    if let Some(page) = &w.support_page {
        doc.insert("support_page".into(), json!(page));
    }
    (!doc.is_empty()).then_some(Value::Object(doc))
}

/// The `/.well-known/matrix/server` document, when served.
pub fn server_document(config: &Config) -> Option<Value> {
    (config.allow_well_known && config.allow_federation).then(|| json!({"m.server": config.federation_server()}))
}

fn answer(doc: Option<Value>) -> axum::response::Response {
    let (status, body) = match doc {
        Some(d) => (StatusCode::OK, d),
        None => (StatusCode::NOT_FOUND, json!({"errcode": "M_NOT_FOUND", "error": "Not served here"})),
    };
    let mut res = (status, body.to_string()).into_response();
    let headers = res.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    // Web clients read the client document across origins.
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    res
}

/// The router of this mode.
pub fn router(config: &Config) -> Router {
    let client = client_document(config);
    let server = server_document(config);
    let support = support_document(config);
    Router::new()
        .route("/.well-known/matrix/client", get(move || std::future::ready(answer(client.clone()))))
        .route("/.well-known/matrix/server", get(move || std::future::ready(answer(server.clone()))))
        .route("/.well-known/matrix/support", get(move || std::future::ready(answer(support.clone()))))
        .route("/_hearth/health", get(|| std::future::ready((StatusCode::OK, "ok"))))
        .fallback(|| std::future::ready(answer(None)))
}

/// Serves until `shutdown` resolves.
pub async fn serve(
    config: &Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let addr = SocketAddr::new(config.address, config.port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
    tracing::info!(%addr, "serving .well-known only");
    axum::serve(listener, router(config)).with_graceful_shutdown(shutdown).await
}
