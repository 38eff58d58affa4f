//! Client-server API: the content repository — upload, download and the limits — for
//! media stored on this server (see `media`).
//!
//! The authenticated `/_matrix/client/v1/media/*` reads need an access token; the legacy
//! `/_matrix/media/v3/{download,config}` are served too (Debian's Nheko 0.11 predates
//! authenticated media). Bodies stream both ways. Downloads carry the headers the spec
//! recommends: `Content-Disposition: inline` only for the spec's safe types (ruma's
//! list), `attachment` otherwise, the file name encoded per RFC 6266; a sandboxing
//! `Content-Security-Policy`; `X-Content-Type-Options: nosniff`;
//! `Cross-Origin-Resource-Policy: cross-origin`; long caching (media never changes).
//! A single `Range` is answered with 206.

use std::{collections::HashMap, sync::Arc};

use axum::{
    body::Body,
    extract::{Path, Query, Request, State},
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use http::{header, HeaderMap, HeaderValue, StatusCode};
use ruma::{
    api::client::media::is_safe_inline_content_type,
    http_headers::{ContentDisposition, ContentDispositionType},
    ServerName,
};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::{
    error::{Error, Result},
    media::thumbnail::{Method, PICTURE_TYPES},
    users::devices::Caller,
    Services,
};

pub fn routes() -> Router<Arc<Services>> {
    Router::new()
        .route("/_matrix/media/v3/upload", post(upload))
        .route("/_matrix/media/v1/create", post(create))
        .route("/_matrix/media/v3/upload/{server}/{media_id}", axum::routing::put(upload_created))
        .route("/_matrix/client/v1/media/config", get(config))
        .route("/_matrix/media/v3/config", get(config))
        .route("/_matrix/client/v1/media/download/{server}/{media_id}", get(download_authenticated))
        // An empty file name (matrix-nio asks `…/{mediaId}/`), as Synapse accepts.
        .route("/_matrix/client/v1/media/download/{server}/{media_id}/", get(download_authenticated))
        .route("/_matrix/client/v1/media/download/{server}/{media_id}/{file_name}", get(download_authenticated))
        .route("/_matrix/media/v3/download/{server}/{media_id}", get(download_legacy))
        .route("/_matrix/media/v3/download/{server}/{media_id}/", get(download_legacy))
        .route("/_matrix/media/v3/download/{server}/{media_id}/{file_name}", get(download_legacy))
        .route("/_matrix/client/v1/media/thumbnail/{server}/{media_id}", get(thumbnail_authenticated))
        .route("/_matrix/media/v3/thumbnail/{server}/{media_id}", get(thumbnail_legacy))
        .route("/_matrix/client/v1/media/preview_url", get(preview_url))
        .route("/_matrix/media/v3/preview_url", get(preview_url))
}

/// `GET /_matrix/client/v1/media/preview_url?url=…` (and the legacy path, which needs a
/// token too): see `media::preview`. `ts` is ignored: the preview kept for a day is given.
async fn preview_url(
    State(s): State<Arc<Services>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>> {
    let caller = caller(&s, &headers, &query)?;
    let url = query.get("url").ok_or_else(|| Error::missing_param("Missing url"))?;
    let preview = s.media.preview(url, &caller.user_id, &s.config.server_name).await?;
    Ok(Json(serde_json::Value::Object(preview)))
}

/// The caller, from `Authorization: Bearer` or (older clients) `?access_token=`. Guests
/// may only read media (the spec's guest list: download and thumbnail): everywhere else
/// they get `M_GUEST_ACCESS_FORBIDDEN`, as `api::guest` answers them on other routes.
fn caller(s: &Services, headers: &HeaderMap, query: &HashMap<String, String>) -> Result<Caller> {
    let caller = reader(s, headers, query)?;
    if caller.guest {
        return Err(crate::api::guest::forbidden());
    }
    Ok(caller)
}

/// As [`caller`], guests included (downloads and thumbnails).
fn reader(s: &Services, headers: &HeaderMap, query: &HashMap<String, String>) -> Result<Caller> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .or_else(|| query.get("access_token").map(String::as_str))
        .ok_or_else(Error::missing_token)?;
    s.users.authenticate(token)
}

/// `POST /_matrix/media/v3/upload`
async fn upload(
    State(s): State<Arc<Services>>,
    Query(query): Query<HashMap<String, String>>,
    req: Request,
) -> Result<Json<serde_json::Value>> {
    let caller = caller(&s, req.headers(), &query)?;
    let (body, content_type) = within_limit(&s, req).await?;
    let filename = query.get("filename").cloned();
    let media_id = s.media.upload(body, content_type, filename, caller.user_id.clone()).await?;
    thumbnail_soon(&s, &media_id);
    Ok(Json(json!({"content_uri": format!("mxc://{}/{}", s.config.server_name, media_id)})))
}

/// Starts making the thumbnails of a picture just uploaded, in the background: the
/// sender's client and everyone else's ask for one as soon as the message arrives.
fn thumbnail_soon(s: &Arc<Services>, media_id: &str) {
    let own = &s.config.server_name;
    let Ok((record, _)) = s.media.find(own, own, media_id) else { return };
    let media = s.media.clone();
    tokio::spawn(async move { media.pregenerate(&record).await });
}

/// An upload's body and content type, refused with 413 up front when its declared length
/// is past the limit (the stream is held to the limit again as it is read).
async fn within_limit(s: &Services, req: Request) -> Result<(Body, Option<String>)> {
    let declared =
        req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > s.media.max_size) {
        // Read (and drop) a little of the body first: a client still sending when the
        // answer comes often reports a broken connection instead of the 413.
        crate::media::drain(req.into_body()).await;
        return Err(Error::too_large(format!("Uploads are limited to {} bytes", s.media.max_size)));
    }
    let content_type = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
    Ok((req.into_body(), content_type))
}

/// `POST /_matrix/media/v1/create`: an id for an upload to come.
async fn create(
    State(s): State<Arc<Services>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>> {
    let caller = caller(&s, &headers, &query)?;
    let (media_id, expires) = s.media.create(&caller.user_id)?;
    Ok(Json(json!({
        "content_uri": format!("mxc://{}/{}", s.config.server_name, media_id),
        "unused_expires_at": expires,
    })))
}

/// `PUT /_matrix/media/v3/upload/{serverName}/{mediaId}`: the content of a created id.
async fn upload_created(
    State(s): State<Arc<Services>>,
    Path((server, media_id)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    req: Request,
) -> Result<Json<serde_json::Value>> {
    let caller = caller(&s, req.headers(), &query)?;
    if server != s.config.server_name.as_str() {
        return Err(Error::forbidden("Media ids of other servers cannot be uploaded here"));
    }
    let (body, content_type) = within_limit(&s, req).await?;
    let filename = query.get("filename").cloned();
    s.media.upload_created(&media_id, body, content_type, filename, caller.user_id.clone()).await?;
    thumbnail_soon(&s, &media_id);
    Ok(Json(json!({})))
}

/// `GET /_matrix/client/v1/media/config` (and the legacy `/_matrix/media/v3/config`)
async fn config(
    State(s): State<Arc<Services>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>> {
    caller(&s, &headers, &query)?;
    Ok(Json(json!({"m.upload.size": s.media.max_size})))
}

/// `GET /_matrix/client/v1/media/download/{serverName}/{mediaId}[/{fileName}]`
async fn download_authenticated(
    State(s): State<Arc<Services>>,
    Path(params): Path<HashMap<String, String>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response> {
    reader(&s, &headers, &query)?;
    download_named(&s, &params, &query, &headers, Access::Authenticated).await
}

/// `GET /_matrix/media/v3/download/{serverName}/{mediaId}[/{fileName}]` (legacy, no token)
async fn download_legacy(
    State(s): State<Arc<Services>>,
    Path(params): Path<HashMap<String, String>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response> {
    download_named(&s, &params, &query, &headers, Access::Legacy).await
}

/// Which family of endpoints a read came through: with `media_freeze_legacy`, media
/// stored since is served only through the authenticated ones.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Access {
    Authenticated,
    Legacy,
}

async fn download_named(
    s: &Services,
    params: &HashMap<String, String>,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    access: Access,
) -> Result<Response> {
    let part = |k: &str| params.get(k).map(String::as_str).unwrap_or_default();
    let file_name = params.get("file_name").filter(|n| !n.is_empty()).cloned();
    wait_while_pending(s, part("media_id"), query).await?;
    download(s, part("server"), part("media_id"), file_name, headers, access).await
}

/// Longest wait for a created id's upload (`timeout_ms`, 20 s by default as in the spec).
const MAX_UPLOAD_WAIT_MS: u64 = 60_000;

/// A download of an id created but not uploaded yet waits for the upload up to
/// `timeout_ms`, then 504 `M_NOT_YET_UPLOADED`.
async fn wait_while_pending(s: &Services, media_id: &str, query: &HashMap<String, String>) -> Result<()> {
    let wait = query.get("timeout_ms").and_then(|t| t.parse::<u64>().ok()).unwrap_or(20_000).min(MAX_UPLOAD_WAIT_MS);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_millis(wait);
    while s.media.is_pending(media_id)? {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return Err(Error::matrix(StatusCode::GATEWAY_TIMEOUT, "M_NOT_YET_UPLOADED", "Not uploaded yet"));
        }
        // Woken by any upload; re-checked at least every second.
        s.media.wait_for_uploads(left.min(std::time::Duration::from_secs(1))).await;
    }
    Ok(())
}

async fn thumbnail_authenticated(
    State(s): State<Arc<Services>>,
    Path((server, media_id)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response> {
    reader(&s, &headers, &query)?;
    thumbnail(&s, &server, &media_id, &query, Access::Authenticated).await
}

async fn thumbnail_legacy(
    State(s): State<Arc<Services>>,
    Path((server, media_id)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response> {
    thumbnail(&s, &server, &media_id, &query, Access::Legacy).await
}

/// A thumbnail of a stored picture (see `media::thumbnail`): `width` and `height` are
/// required, `method` is `crop` or `scale`; anything but a picture is a 400.
async fn thumbnail(
    s: &Services,
    server: &str,
    media_id: &str,
    query: &HashMap<String, String>,
    access: Access,
) -> Result<Response> {
    let dim = |name: &str| -> Result<u32> {
        let v = query.get(name).ok_or_else(|| Error::missing_param(format!("Missing {name}")))?;
        v.parse::<u32>().ok().filter(|n| *n > 0).ok_or_else(|| Error::invalid_param(format!("Invalid {name}")))
    };
    let (width, height) = (dim("width")?, dim("height")?);
    let method = Method::parse(query.get("method").map(String::as_str))?;
    wait_while_pending(s, media_id, query).await?;
    let server_name = <&ServerName>::try_from(server).map_err(|_| Error::not_found("Media not found"))?;
    let (record, original) = located(s, server_name, media_id, access).await?;
    let essence =
        record.content_type.as_deref().unwrap_or("").split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if !PICTURE_TYPES.contains(&essence.as_str()) {
        return Err(Error::matrix(StatusCode::BAD_REQUEST, "M_UNKNOWN", "This media is not a picture"));
    }
    match s.media.thumbnail(&record, width, height, method).await? {
        Some((path, kind)) => {
            let size = tokio::fs::metadata(&path).await.map_err(|e| Error::internal(e.to_string()))?.len();
            serve_file(&path, size, kind, None, &HeaderMap::new()).await
        }
        // No larger than the box: the picture is its own thumbnail.
        None => serve_file(&original, record.size, &essence, None, &HeaderMap::new()).await,
    }
}

/// A single `bytes=a-b`, `bytes=a-` or `bytes=-n` range within `size`: (start, end
/// inclusive). `None` when there is no usable single range (the whole file is sent);
/// `Err` when the range lies outside the file (416).
fn parse_range(headers: &HeaderMap, size: u64) -> std::result::Result<Option<(u64, u64)>, ()> {
    let Some(spec) = headers.get(header::RANGE).and_then(|v| v.to_str().ok()) else { return Ok(None) };
    let Some(spec) = spec.trim().strip_prefix("bytes=") else { return Ok(None) };
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((a, b)) = spec.split_once('-') else { return Ok(None) };
    let (start, end) = match (a.trim(), b.trim()) {
        ("", n) => {
            let n: u64 = n.parse().map_err(|_| ())?;
            if n == 0 {
                return Err(());
            }
            (size.saturating_sub(n), size.saturating_sub(1))
        }
        (a, "") => (a.parse().map_err(|_| ())?, size.saturating_sub(1)),
        (a, b) => (a.parse().map_err(|_| ())?, b.parse::<u64>().map_err(|_| ())?.min(size.saturating_sub(1))),
    };
    if size == 0 || start > end || start >= size {
        return Err(());
    }
    Ok(Some((start, end)))
}

async fn download(
    s: &Services,
    server: &str,
    media_id: &str,
    file_name: Option<String>,
    headers: &HeaderMap,
    access: Access,
) -> Result<Response> {
    let server = <&ServerName>::try_from(server).map_err(|_| Error::not_found("Media not found"))?;
    let (record, path) = located(s, server, media_id, access).await?;
    let content_type = record.content_type.clone().unwrap_or_else(|| "application/octet-stream".to_owned());
    serve_file(&path, record.size, &content_type, file_name.or(record.filename.clone()), headers).await
}

/// A file held here: a local upload, or another server's media, fetched from it now if
/// this server does not have it yet (federation on). Quarantined media, and media frozen
/// out of the legacy endpoints, is not found.
async fn located(
    s: &Services,
    server: &ServerName,
    media_id: &str,
    access: Access,
) -> Result<(crate::media::MediaRecord, std::path::PathBuf)> {
    let (record, path) = fetched(s, server, media_id).await?;
    if record.quarantined_by.is_some() || (access == Access::Legacy && record.authenticated) {
        return Err(Error::not_found("Media not found"));
    }
    s.media.counters.downloads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Ok((record, path))
}

async fn fetched(
    s: &Services,
    server: &ServerName,
    media_id: &str,
) -> Result<(crate::media::MediaRecord, std::path::PathBuf)> {
    if server == s.config.server_name {
        return s.media.find(&s.config.server_name, server, media_id);
    }
    if let Some((record, path)) = s.media.find_remote(server, media_id)? {
        s.media.touch_remote(server, media_id, &record)?;
        return Ok((record, path));
    }
    if !s.config.allow_federation {
        return Err(Error::not_found("Media of other servers is not fetched: federation is off"));
    }
    let _turn = s.media.fetch_turn(server, media_id).await;
    if let Some(found) = s.media.find_remote(server, media_id)? {
        return Ok(found); // fetched while this request waited for its turn
    }
    let max = usize::try_from(s.media.max_size).unwrap_or(usize::MAX);
    let fetch = async {
        let file = s.federation.fetch_media(server, media_id, max).await?;
        s.media.store_remote(server, media_id, file.body, file.content_type, file.filename).await
    };
    tokio::time::timeout(crate::federation::media::MEDIA_TIMEOUT, fetch)
        .await
        .map_err(|_| Error::matrix(StatusCode::GATEWAY_TIMEOUT, "M_UNKNOWN", format!("{server} took too long")))?
}

/// A stored file as a response: the safe headers of the module doc, a single range.
async fn serve_file(
    path: &std::path::Path,
    size: u64,
    content_type: &str,
    name: Option<String>,
    headers: &HeaderMap,
) -> Result<Response> {
    let io = |e: std::io::Error| Error::internal(format!("reading media: {e}"));
    let mut file = tokio::fs::File::open(path).await.map_err(io)?;
    let essence = content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    let disposition = if is_safe_inline_content_type(&essence) {
        ContentDispositionType::Inline
    } else {
        ContentDispositionType::Attachment
    };
    let disposition = ContentDisposition::new(disposition).with_filename(name).to_string();

    let (status, start, len) = match parse_range(headers, size) {
        Ok(None) => (StatusCode::OK, 0, size),
        Ok(Some((start, end))) => (StatusCode::PARTIAL_CONTENT, start, end - start + 1),
        Err(()) => {
            let mut res =
                Error::matrix(StatusCode::RANGE_NOT_SATISFIABLE, "M_UNKNOWN", "Range not satisfiable").into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                res.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return Ok(res);
        }
    };
    if start > 0 {
        file.seek(std::io::SeekFrom::Start(start)).await.map_err(io)?;
    }
    // Large reads: each is a trip through the blocking pool (4 KiB by default).
    let body = Body::from_stream(tokio_util::io::ReaderStream::with_capacity(file.take(len), crate::media::FILE_CHUNK));
    let mut res = (status, body).into_response();
    let h = res.headers_mut();
    let value =
        |v: &str| HeaderValue::from_str(v).unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream"));
    h.insert(header::CONTENT_TYPE, value(content_type));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_str(&disposition).unwrap_or(HeaderValue::from_static("attachment")),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("sandbox; default-src 'none'; script-src 'none'; plugin-types application/pdf; style-src 'unsafe-inline'; media-src 'self'; object-src 'self'"),
    );
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::HeaderName::from_static("cross-origin-resource-policy"), HeaderValue::from_static("cross-origin"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=31536000, immutable"));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if status == StatusCode::PARTIAL_CONTENT {
        if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{}/{size}", start + len - 1)) {
            h.insert(header::CONTENT_RANGE, v);
        }
    }
    Ok(res)
}
