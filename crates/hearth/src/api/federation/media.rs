//! Server-server API: this server's media for other servers
//! (`/_matrix/federation/v1/media/{download,thumbnail}/{mediaId}`), as `multipart/mixed`:
//! a metadata part, then the file (see `federation::media`).

use std::{collections::HashMap, sync::Arc};

use futures_util::StreamExt;

use axum::{
    extract::{Path, Query, Request, State},
    response::{IntoResponse, Response},
    routing::get,
    Router,
};
use http::{header, HeaderValue, StatusCode};
use ruma::http_headers::{ContentDisposition, ContentDispositionType};

use crate::{
    error::{Error, Result},
    federation::media::multipart_frame,
    media::thumbnail::{Method, PICTURE_TYPES},
    Services,
};

pub fn routes() -> Router<Arc<Services>> {
    Router::new()
        .route("/_matrix/federation/v1/media/download/{media_id}", get(download))
        .route("/_matrix/federation/v1/media/thumbnail/{media_id}", get(thumbnail))
}

/// The origin of a signed request (401 otherwise).
async fn origin(s: &Services, req: Request) -> Result<ruma::OwnedServerName> {
    let (parts, _) = req.into_parts();
    crate::api::verify_server_request(s, &parts, &[]).await
}

/// The file as a `multipart/mixed` answer, streamed from disk.
async fn answer(name: Option<String>, file: &std::path::Path, content_type: &str) -> Result<Response> {
    let io = |e: std::io::Error| Error::internal(format!("reading media: {e}"));
    let opened = tokio::fs::File::open(file).await.map_err(io)?;
    let size = opened.metadata().await.map_err(io)?.len();
    let disposition = ContentDisposition::new(ContentDispositionType::Inline).with_filename(name).to_string();
    let (kind, head, tail) = multipart_frame(content_type, &disposition);
    let length = head.len() as u64 + size + tail.len() as u64;
    let chunks = futures_util::stream::once(async move { Ok::<_, std::io::Error>(bytes::Bytes::from(head)) })
        .chain(tokio_util::io::ReaderStream::with_capacity(opened, crate::media::FILE_CHUNK))
        .chain(futures_util::stream::once(async move { Ok(bytes::Bytes::from(tail)) }));
    let mut res = (StatusCode::OK, axum::body::Body::from_stream(chunks)).into_response();
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_str(&kind).map_err(|e| Error::internal(e.to_string()))?);
    res.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    Ok(res)
}

/// `GET /_matrix/federation/v1/media/download/{mediaId}`
async fn download(State(s): State<Arc<Services>>, Path(media_id): Path<String>, req: Request) -> Result<Response> {
    origin(&s, req).await?;
    let own = s.config.server_name.clone();
    let (record, path) = s.media.find(&own, &own, &media_id)?;
    let kind = record.content_type.clone().unwrap_or_else(|| "application/octet-stream".to_owned());
    answer(record.filename.clone(), &path, &kind).await
}

/// `GET /_matrix/federation/v1/media/thumbnail/{mediaId}`
async fn thumbnail(
    State(s): State<Arc<Services>>,
    Path(media_id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    req: Request,
) -> Result<Response> {
    origin(&s, req).await?;
    let dim = |name: &str| -> Result<u32> {
        let v = query.get(name).ok_or_else(|| Error::missing_param(format!("Missing {name}")))?;
        v.parse::<u32>().ok().filter(|n| *n > 0).ok_or_else(|| Error::invalid_param(format!("Invalid {name}")))
    };
    let (width, height) = (dim("width")?, dim("height")?);
    let method = Method::parse(query.get("method").map(String::as_str))?;
    let own = s.config.server_name.clone();
    let (record, original) = s.media.find(&own, &own, &media_id)?;
    let essence =
        record.content_type.as_deref().unwrap_or("").split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if !PICTURE_TYPES.contains(&essence.as_str()) {
        return Err(Error::matrix(StatusCode::BAD_REQUEST, "M_UNKNOWN", "This media is not a picture"));
    }
    match s.media.thumbnail(&record, width, height, method).await? {
        Some((path, kind)) => answer(None, &path, kind).await,
        None => answer(None, &original, &essence).await,
    }
}
