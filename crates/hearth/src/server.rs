//! The HTTP server: router, tower layers, listener and graceful shutdown.
//!
//! Layers, outermost first: request id → trace span → panic catcher (a bug answers 500
//! `M_UNKNOWN`, never a dropped connection) → CORS (web clients) → concurrency limit
//! (`max_concurrent_requests`; excess requests wait) → router. Unknown paths answer 404
//! and wrong methods 405, both `M_UNRECOGNIZED`.
//!
//! Innermost, requests that append events are answered only once those are durable, without
//! a thread waiting on the disk (see `stream`).
//!
//! The concurrency limit counts requests doing work: a `/sync` long-poll gives its slot
//! back while it waits for news (see [`RequestSlot`](crate::api::RequestSlot)), so idle clients never crowd out
//! working ones. Conduit counts them, so with its default of 100 a household's phones and
//! laptops could hold every slot while doing nothing.
//!
//! With `tls.certs` and `tls.key` the main listener speaks TLS (see [`crate::tls`]: a
//! renewed certificate is picked up by a worker this server owns); the `/metrics` listener
//! always stays plain HTTP, for a scraper inside the cluster.

use std::{
    future::Future,
    net::SocketAddr,
    sync::{atomic::Ordering::Relaxed, Arc},
    time::Duration,
};

use axum::{
    extract::{MatchedPath, State},
    response::IntoResponse,
    Router,
};
use http::{header, HeaderName, Method, StatusCode};
use tokio::{
    net::TcpListener,
    sync::{oneshot, Semaphore},
    task::JoinHandle,
};
use tower::ServiceBuilder;
use tower_http::{
    catch_panic::CatchPanicLayer,
    cors::{Any, CorsLayer},
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer},
    trace::TraceLayer,
};

use crate::{
    api,
    error::Error,
    tls::{ServerCert, TlsListener},
    Services,
};

static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The whole application router with its layers.
pub fn router(services: Arc<Services>) -> Router {
    let slots = services.request_slots.clone();
    let stream = services.stream.clone();
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
        .merge(api::federation::routes(services.config.allow_federation))
        .merge(api::health::routes())
        .merge(api::admin::routes())
        .fallback(|| async { Error::unrecognized(StatusCode::NOT_FOUND, "Unrecognized request") })
        .method_not_allowed_fallback(|| async {
            Error::unrecognized(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed")
        })
        .layer(axum::middleware::from_fn_with_state(services.clone(), record_metrics))
        .with_state(services)
        .layer(
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::new(REQUEST_ID.clone(), MakeRequestUuid))
                // One line per request, at debug, when it is answered (status and latency).
                .layer(
                    TraceLayer::new_for_http()
                        .make_span_with(|req: &http::Request<_>| {
                            let id = req.headers().get(&REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("-");
                            tracing::info_span!("request", id = %id, method = %req.method(), path = %req.uri().path())
                        })
                        .on_request(()),
                )
                .layer(PropagateRequestIdLayer::new(REQUEST_ID.clone()))
                .layer(CatchPanicLayer::custom(|_| {
                    tracing::error!("a request handler panicked; this is a bug");
                    Error::internal("panic").into_response()
                }))
                .layer(cors)
                // One semaphore for the whole router (axum applies layers per route).
                .layer(axum::middleware::from_fn_with_state(slots, limit_concurrency))
                .layer(axum::middleware::from_fn_with_state(stream, answer_when_durable)),
        )
}

/// Runs the handler with its appends' disk syncs deferred, and answers only once what it
/// wrote is durable (one sync covers every request waiting; no thread waits on the disk).
async fn answer_when_durable(
    State(stream): State<Arc<crate::stream::Stream>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let (res, wrote) = crate::stream::with_deferred_durability(next.run(req)).await;
    if wrote > 0 {
        if let Err(e) = stream.wait_durable(wrote).await {
            tracing::error!(error = %e, "a write could not be made durable; answering 500");
            return e.into_response();
        }
    }
    res
}

async fn limit_concurrency(
    State(slots): State<Arc<Semaphore>>,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let Ok(permit) = slots.clone().acquire_owned().await else {
        return Error::internal("shutting down").into_response();
    };
    let slot = api::RequestSlot::new(slots, permit);
    req.extensions_mut().insert(slot.clone());
    let res = next.run(req).await;
    slot.release();
    res
}

/// Counts each request by matched route (not raw path: ids would explode the label set).
async fn record_metrics(
    State(services): State<Arc<Services>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let route = req.extensions().get::<MatchedPath>().map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = req.method().to_string();
    let started = std::time::Instant::now();
    let res = next.run(req).await;
    services.metrics.record(&method, &route, res.status().as_u16(), started.elapsed());
    res
}

/// The metrics listener's router: `GET /metrics` only.
pub fn metrics_router(services: Arc<Services>) -> Router {
    Router::new()
        .route(
            "/metrics",
            axum::routing::get(|State(s): State<Arc<Services>>| async move {
                let db = s.store.size_on_disk().unwrap_or(0) as f64;
                let media = &s.media.counters;
                let counters = [
                    (
                        "hearth_database_syncs_total",
                        "Disk syncs made by the group commit (with hearth_stream_position: writes per sync).",
                        s.stream.syncs() as f64,
                    ),
                    ("hearth_media_uploads_total", "Media uploads stored.", media.uploads.load(Relaxed) as f64),
                    (
                        "hearth_media_downloads_total",
                        "Media downloads and thumbnails served.",
                        media.downloads.load(Relaxed) as f64,
                    ),
                ];
                let body = s.metrics.render(
                    &counters,
                    &[
                        (
                            "hearth_sync_waiters",
                            "Users with a /sync waiting for news.",
                            s.notifier.waiting_users() as f64,
                        ),
                        ("hearth_database_bytes", "Bytes the database occupies on disk.", db),
                        (
                            "hearth_media_bytes",
                            "Bytes of stored media files (identical files counted once; thumbnails not counted).",
                            media.bytes_stored.load(Relaxed) as f64,
                        ),
                        ("hearth_stream_position", "Newest committed stream position.", s.stream.now() as f64),
                    ],
                );
                ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
            }),
        )
        .with_state(services)
}

/// Serves until `shutdown` resolves, lets in-flight requests finish, then flushes the
/// database so everything acknowledged is on disk. With `tls`, connections are TLS
/// (handshakes run beside the accept loop, see [`TlsListener`]).
pub async fn serve(
    services: Arc<Services>,
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(services.clone()).into_make_service_with_connect_info::<SocketAddr>();
    match tls {
        None => {
            // No Nagle delay: a response's last small write (the end of a file) must not wait
            // for the client's delayed ACK, 40 ms on Linux (measured by bench/media.py).
            let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
                let _ = tcp.set_nodelay(true);
            });
            axum::serve(listener, app).with_graceful_shutdown(shutdown).await?
        }
        Some(config) => {
            // axum gives `ConnectInfo<SocketAddr>` to any listener wrapped in `TapIo` (its
            // own impl covers only the bare `TcpListener`); the tap itself does nothing.
            let listener = axum::serve::ListenerExt::tap_io(TlsListener::new(listener, config), |_| {});
            axum::serve(listener, app).with_graceful_shutdown(shutdown).await?
        }
    }
    tracing::info!("stopped accepting requests; flushing the database");
    if let Err(e) = services.store.flush() {
        tracing::error!(error = %e, "flushing the database at shutdown failed");
    }
    Ok(())
}

/// A background task with its shutdown signal (mini-redis's shape): [`Worker::stop`] asks
/// it to finish and waits until it has; dropping the `Worker` drops the sender, which the
/// task also takes as the signal to stop.
struct Worker {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Worker {
    fn spawn<F>(run: impl FnOnce(oneshot::Receiver<()>) -> F) -> Self
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let (stop, stopped) = oneshot::channel();
        Worker { stop, task: tokio::spawn(run(stopped)) }
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "a background worker ended badly");
        }
    }
}

/// A server started in the background (used by tests and by `main`).
pub struct Running {
    pub addr: SocketAddr,
    /// The metrics listener's address, when `metrics_port` is set.
    pub metrics_addr: Option<SocketAddr>,
    pub services: Arc<Services>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
    /// The presence time-out loop, when on.
    presence: Option<JoinHandle<()>>,
    /// The certificate served, when TLS is on.
    tls: Option<Arc<ServerCert>>,
    /// The worker that re-reads renewed TLS files, when TLS and reloading are on.
    tls_reload: Option<Worker>,
    /// The federation sender, when federation is on.
    sender: Option<Worker>,
    /// Media housekeeping (expired upload ids, retention).
    media_tidy: Option<Worker>,
    /// Push rule evaluation and delivery to push gateways.
    push: Option<Worker>,
    /// Transactions to the application services, when there are any.
    appservices: Option<Worker>,
    /// Self-destructing messages pruned when due.
    expiry: Option<Worker>,
    /// The admin channel `hearth admin` reaches the running server through.
    admin_channel: Option<Worker>,
    /// The search index, following the stream.
    search: Option<Worker>,
}

impl Running {
    /// Binds `address:port` from the configuration (port 0 picks a free one) and serves.
    /// An error says what failed (the TLS files, or the address that could not be bound).
    pub async fn start(services: Arc<Services>) -> std::io::Result<Self> {
        let config = &services.config;
        // The TLS files first: a bad certificate stops start-up before anything listens.
        let tls = match config.tls_files() {
            Some((certs, key)) => {
                let invalid = |e: crate::tls::TlsError| std::io::Error::new(std::io::ErrorKind::InvalidInput, e);
                let cert = Arc::new(ServerCert::load(certs, key).map_err(invalid)?);
                Some((cert.clone(), crate::tls::server_config(cert).map_err(invalid)?))
            }
            None => None,
        };
        let listener = bind(config.address, config.port).await?;
        let addr = listener.local_addr()?;
        services.set_listening_port(addr.port());
        services.admin.set_serving(true);
        let (stop, stopped) = oneshot::channel::<()>();
        let mut metrics_addr = None;
        let metrics_stop = if services.config.metrics_port != 0 {
            let ml = bind(services.config.address, services.config.metrics_port).await?;
            metrics_addr = Some(ml.local_addr()?);
            let (tx, rx) = oneshot::channel::<()>();
            let app = metrics_router(services.clone());
            tokio::spawn(async move {
                let _ = axum::serve(ml, app)
                    .with_graceful_shutdown(async move {
                        let _ = rx.await;
                    })
                    .await;
            });
            Some(tx)
        } else {
            None
        };
        let timeout = services.config.presence_offline_timeout_s;
        let presence = (timeout > 0).then(|| {
            let timeout = Duration::from_secs(timeout);
            tokio::spawn(crate::presence::time_out_presence(Arc::downgrade(&services), timeout))
        });
        let every = Duration::from_secs(services.config.tls_reload_interval_s);
        let tls_reload = match &tls {
            Some((cert, _)) if !every.is_zero() => {
                let cert = cert.clone();
                Some(Worker::spawn(move |stop| crate::tls::reload_certificates(cert, every, stop)))
            }
            _ => None,
        };
        let sender = services.config.allow_federation.then(|| {
            let sender = services.federation.sender.clone();
            let stream = services.stream.clone();
            Worker::spawn(move |stop| sender.run(stream, stop))
        });
        let media = services.media.clone();
        let media_tidy = Some(Worker::spawn(move |stop| crate::media::manage::keep_tidy(media, stop)));
        let expiry = {
            let rooms = services.rooms.clone();
            let weak = Arc::downgrade(&services);
            let forget = move |rooms: &[ruma::OwnedRoomId]| {
                let Some(s) = weak.upgrade() else { return };
                for room in rooms {
                    for member in s
                        .rooms
                        .members_shared(room, &ruma::events::room::member::MembershipState::Join)
                        .iter()
                        .flat_map(|m| m.iter())
                    {
                        s.initial_sync_cache.forget_user(member);
                    }
                }
            };
            Some(Worker::spawn(move |stop| crate::rooms::expiry::run(rooms, forget, stop)))
        };
        let push = {
            let push = services.push_sender.clone();
            let stream = services.stream.clone();
            Some(Worker::spawn(move |stop| push.run(stream, stop)))
        };
        let appservices = (!services.appservices.is_empty()).then(|| {
            let sender = services.appservice_sender.clone();
            let stream = services.stream.clone();
            Worker::spawn(move |stop| sender.run(stream, stop))
        });
        let admin_channel = crate::api::admin::channel::socket_path(config).and_then(|path| {
            match crate::api::admin::channel::bind(&path) {
                Ok(listener) => {
                    tracing::info!(socket = %path.display(), "admin channel open (hearth admin talks to this server)");
                    let services = services.clone();
                    Some(Worker::spawn(move |stop| crate::api::admin::channel::serve(services, listener, path, stop)))
                }
                Err(e) => {
                    tracing::warn!(
                        socket = %path.display(),
                        error = %e,
                        "no admin channel: hearth admin cannot reach this server while it runs (set admin_socket)"
                    );
                    None
                }
            }
        });
        let search = {
            let search = services.search.clone();
            let stream = services.stream.clone();
            Some(Worker::spawn(move |stop| search.run(stream, stop)))
        };
        let (tls, tls_config) = tls.unzip();
        let task = tokio::spawn(serve(services.clone(), listener, tls_config, async move {
            let _ = stopped.await;
            if let Some(tx) = metrics_stop {
                let _ = tx.send(());
            }
        }));
        Ok(Running {
            addr,
            metrics_addr,
            services,
            stop: Some(stop),
            task,
            presence,
            tls,
            tls_reload,
            sender,
            media_tidy,
            push,
            appservices,
            expiry,
            admin_channel,
            search,
        })
    }

    /// The certificate the main listener serves, when TLS is on.
    pub fn tls(&self) -> Option<&Arc<ServerCert>> {
        self.tls.as_ref()
    }

    /// Graceful stop: finish in-flight requests, flush, return.
    pub async fn stop(mut self) -> std::io::Result<()> {
        self.services.admin.set_serving(false);
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(presence) = self.presence.take() {
            presence.abort();
        }
        if let Some(reload) = self.tls_reload.take() {
            reload.stop().await;
        }
        if let Some(sender) = self.sender.take() {
            sender.stop().await;
        }
        if let Some(push) = self.push.take() {
            push.stop().await;
        }
        if let Some(appservices) = self.appservices.take() {
            appservices.stop().await;
        }
        if let Some(expiry) = self.expiry.take() {
            expiry.stop().await;
        }
        if let Some(tidy) = self.media_tidy.take() {
            tidy.stop().await;
        }
        if let Some(channel) = self.admin_channel.take() {
            channel.stop().await;
        }
        if let Some(search) = self.search.take() {
            search.stop().await;
        }
        self.task.await.map_err(std::io::Error::other)?
    }
}

/// Binds a listener; the error names the address.
async fn bind(address: std::net::IpAddr, port: u16) -> std::io::Result<TcpListener> {
    TcpListener::bind((address, port))
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {}: {e}", SocketAddr::new(address, port))))
}
