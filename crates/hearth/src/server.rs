//! The HTTP server: router, tower layers, listener and graceful shutdown.
//!
//! Layers, outermost first: request id → trace span → panic catcher (a bug answers 500
//! `M_UNKNOWN`, never a dropped connection) → CORS (web clients) → concurrency limit
//! (`max_concurrent_requests`; excess requests wait) → router. Unknown paths answer 404
//! and wrong methods 405, both `M_UNRECOGNIZED`.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use axum::{response::IntoResponse, Router};
use http::{header, HeaderName, Method, StatusCode};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tower::ServiceBuilder;
use tower_http::{
    catch_panic::CatchPanicLayer,
    cors::{Any, CorsLayer},
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer},
    trace::TraceLayer,
};

use crate::{api, error::Error, Services};

static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The whole application router with its layers.
pub fn router(services: Arc<Services>) -> Router {
    let max_concurrent = services.config.max_concurrent_requests as usize;
    let cors = CorsLayer::new()
        .allow_origin(Any)
        .allow_methods([Method::GET, Method::POST, Method::PUT, Method::DELETE, Method::OPTIONS])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::ACCEPT,
            HeaderName::from_static("x-requested-with"),
        ])
        .max_age(Duration::from_secs(86400));

    Router::new()
        .merge(api::client::routes())
        .merge(api::well_known::routes())
        .merge(api::key::routes())
        .merge(api::health::routes())
        .fallback(|| async { Error::unrecognized(StatusCode::NOT_FOUND, "Unrecognized request") })
        .method_not_allowed_fallback(|| async {
            Error::unrecognized(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed")
        })
        .with_state(services)
        .layer(
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::new(REQUEST_ID.clone(), MakeRequestUuid))
                .layer(TraceLayer::new_for_http().make_span_with(|req: &http::Request<_>| {
                    let id = req.headers().get(&REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("-");
                    tracing::info_span!("request", id = %id, method = %req.method(), path = %req.uri().path())
                }))
                .layer(PropagateRequestIdLayer::new(REQUEST_ID.clone()))
                .layer(CatchPanicLayer::custom(|_| {
                    tracing::error!("a request handler panicked; this is a bug");
                    Error::internal("panic").into_response()
                }))
                .layer(cors)
                // Global: axum applies layers per route, and a plain ConcurrencyLimitLayer
                // would give every route its own semaphore.
                .layer(tower::limit::GlobalConcurrencyLimitLayer::new(max_concurrent)),
        )
}

/// Serves until `shutdown` resolves, lets in-flight requests finish, then flushes the
/// database so everything acknowledged is on disk.
pub async fn serve(
    services: Arc<Services>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(services.clone()).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await?;
    tracing::info!("stopped accepting requests; flushing the database");
    if let Err(e) = services.store.flush() {
        tracing::error!(error = %e, "flushing the database at shutdown failed");
    }
    Ok(())
}

/// A server started in the background (used by tests and by `main`).
pub struct Running {
    pub addr: SocketAddr,
    pub services: Arc<Services>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Running {
    /// Binds `address:port` from the configuration (port 0 picks a free one) and serves.
    pub async fn start(services: Arc<Services>) -> std::io::Result<Self> {
        let listener = TcpListener::bind((services.config.address, services.config.port)).await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(services.clone(), listener, async move {
            let _ = stopped.await;
        }));
        Ok(Running { addr, services, stop: Some(stop), task })
    }

    /// Graceful stop: finish in-flight requests, flush, return.
    pub async fn stop(mut self) -> std::io::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.await.map_err(std::io::Error::other)?
    }
}
