//! Media across servers.
//!
//! - **Asked**: a client's download or thumbnail of another server's media makes this
//!   server fetch the file from it — first the authenticated federation endpoint
//!   (`GET /_matrix/federation/v1/media/download/{mediaId}`, signed; a `multipart/mixed`
//!   answer whose second part is the file, or a `Location` to fetch it from), then the
//!   legacy `GET /_matrix/media/v3/download/{server}/{mediaId}?allow_remote=false` for
//!   servers without it. Within the upload size limit and a time-out; a redirect is
//!   fetched through the outbound policy like any other URL. The caller streams it to disk.
//! - **Served**: [`multipart_frame`] frames the file, streamed from disk, for other servers.
//!
//! A fetched body is never held whole: multer reads the multipart answer as it streams,
//! and the file part goes straight to the media store, which caps its size.

use std::time::Duration;

use axum::body::Body;
use futures_util::StreamExt;
use http::header;
use ruma::ServerName;

use super::{receive::encode, Federation};
use crate::{
    error::{Error, Result},
    transport::server_client::ServerRequest,
};

/// How long fetching one file may take, its whole body included (the caller applies it
/// around fetching and storing: the body streams to disk as it arrives).
pub const MEDIA_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest metadata part (the first of the multipart answer) read.
const MAX_METADATA: usize = 64 * 1024;

/// A file another server is sending: its body is still arriving, to be streamed to disk
/// (the caller caps its size).
pub struct RemoteFile {
    pub body: Body,
    pub content_type: Option<String>,
    pub filename: Option<String>,
}

impl Federation {
    /// Fetches `server`'s media `media_id` (see the module doc); the body is at most `max`
    /// bytes, which the reader of [`RemoteFile::body`] enforces as it streams.
    pub async fn fetch_media(&self, server: &ServerName, media_id: &str, max: usize) -> Result<RemoteFile> {
        let path = format!("/_matrix/federation/v1/media/download/{}", encode(media_id));
        let req = ServerRequest::get(&path).limits(MEDIA_TIMEOUT, max);
        match self.servers.request_streamed(server, req).await {
            Ok(a) if a.status().is_success() => return self.read_multipart(a, max).await,
            Ok(a) if a.status() == http::StatusCode::NOT_FOUND => {
                // Perhaps a server without the authenticated endpoint: the legacy one.
                let body = read_capped(a, MAX_METADATA).await.unwrap_or_default();
                let body: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                if body.get("errcode").and_then(|e| e.as_str()) == Some("M_NOT_FOUND") {
                    return Err(Error::not_found(format!("{server} does not have this media")));
                }
            }
            Ok(a) => tracing::info!(%server, status = %a.status(), "federation media download refused"),
            Err(e) => return Err(Error::unavailable(format!("Cannot reach {server}: {e}"))),
        }
        let path =
            format!("/_matrix/media/v3/download/{}/{}?allow_remote=false", encode(server.as_str()), encode(media_id));
        let req = ServerRequest::get(&path).unsigned().limits(MEDIA_TIMEOUT, max);
        let a = self
            .servers
            .request_streamed(server, req)
            .await
            .map_err(|e| Error::unavailable(format!("Cannot reach {server}: {e}")))?;
        if a.status() == http::StatusCode::NOT_FOUND {
            return Err(Error::not_found(format!("{server} does not have this media")));
        }
        if !a.status().is_success() {
            return Err(Error::unavailable(format!("{server} answered {} for media", a.status())));
        }
        Ok(streamed(a))
    }

    /// The file part of a `multipart/mixed` answer (the second part; the first, metadata,
    /// is read and dropped), or the file its `Location` names.
    async fn read_multipart(&self, answer: reqwest::Response, max: usize) -> Result<RemoteFile> {
        let bad = |why: String| Error::unavailable(format!("A server sent media in an unreadable form: {why}"));
        let content_type = header_text(answer.headers(), header::CONTENT_TYPE).unwrap_or_default();
        let boundary = boundary(&content_type).ok_or_else(|| bad("no multipart boundary".into()))?;
        let limits = multer::SizeLimit::new().whole_stream((max + 2 * MAX_METADATA) as u64);
        let constraints = multer::Constraints::new().size_limit(limits);
        let mut parts = multer::Multipart::with_constraints(answer.bytes_stream(), boundary, constraints);
        let mut metadata =
            parts.next_field().await.map_err(|e| bad(e.to_string()))?.ok_or_else(|| bad("empty".into()))?;
        let mut read = 0;
        while let Some(chunk) = metadata.chunk().await.map_err(|e| bad(e.to_string()))? {
            read += chunk.len();
            if read > MAX_METADATA {
                return Err(bad("the metadata part is too large".into()));
            }
        }
        drop(metadata); // multer reads the next part only once the previous one is gone
        let file =
            parts.next_field().await.map_err(|e| bad(e.to_string()))?.ok_or_else(|| bad("no file part".into()))?;
        let part_headers = file.headers().clone();
        if let Some(location) = part_headers.get(header::LOCATION).and_then(|v| v.to_str().ok()) {
            let outbound = self.servers.outbound();
            let request = outbound
                .request(http::Method::GET, location)
                .map_err(|e| Error::unavailable(format!("Cannot fetch the media's location: {e}")))?;
            let fetched = outbound
                .send_streamed(request, MEDIA_TIMEOUT)
                .await
                .map_err(|e| Error::unavailable(format!("Cannot fetch the media's location: {e}")))?;
            if !fetched.status().is_success() {
                return Err(Error::unavailable(format!("The media's location answered {}", fetched.status())));
            }
            return Ok(streamed(fetched));
        }
        Ok(RemoteFile {
            content_type: header_text(&part_headers, header::CONTENT_TYPE),
            filename: filename_of(&part_headers),
            body: Body::from_stream(file),
        })
    }
}

/// The `boundary` parameter of a `multipart/*` content type (multer's own parser accepts
/// only `multipart/form-data`).
fn boundary(content_type: &str) -> Option<String> {
    let mut params = content_type.split(';');
    let kind = params.next()?.trim().to_ascii_lowercase();
    if !kind.starts_with("multipart/") {
        return None;
    }
    params
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("boundary"))
        .map(|(_, v)| v.trim().trim_matches('"').to_owned())
        .filter(|b| !b.is_empty())
}

/// A plain answer whose body is the file.
fn streamed(answer: reqwest::Response) -> RemoteFile {
    RemoteFile {
        content_type: header_text(answer.headers(), header::CONTENT_TYPE),
        filename: filename_of(answer.headers()),
        body: Body::from_stream(answer.bytes_stream()),
    }
}

/// A small body, read whole up to `cap` bytes (more: `None`).
async fn read_capped(answer: reqwest::Response, cap: usize) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    let mut stream = answer.bytes_stream();
    while let Some(chunk) = stream.next().await {
        body.extend_from_slice(&chunk.ok()?);
        if body.len() > cap {
            return None;
        }
    }
    Some(body)
}

fn header_text(headers: &http::HeaderMap, name: header::HeaderName) -> Option<String> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

fn filename_of(headers: &http::HeaderMap) -> Option<String> {
    headers
        .get(header::CONTENT_DISPOSITION)
        .and_then(|v| ruma::http_headers::ContentDisposition::try_from(v.as_bytes()).ok())
        .and_then(|d| d.filename)
}

/// The frame of a `multipart/mixed` answer to another server, around the file's bytes:
/// (its content type, what comes before the file, what comes after). The metadata part is
/// an empty object.
pub fn multipart_frame(content_type: &str, disposition: &str) -> (String, Vec<u8>, Vec<u8>) {
    let boundary: String = { crate::random::alphanumeric(32) };
    let head = format!(
        "--{boundary}\r\nContent-Type: application/json\r\n\r\n{{}}\r\n\
         --{boundary}\r\nContent-Type: {content_type}\r\nContent-Disposition: {disposition}\r\n\r\n"
    );
    let tail = format!("\r\n--{boundary}--\r\n");
    (format!("multipart/mixed; boundary={boundary}"), head.into_bytes(), tail.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn multipart_frame_reads_back() {
        let content: &[u8] = b"\x89PNG\r\n--not a boundary\r\n";
        let (kind, head, tail) = multipart_frame("image/png", "inline; filename=a.png");
        let body = [head, content.to_vec(), tail].concat();
        let boundary = boundary(&kind).expect("boundary");
        assert_eq!(super::boundary("multipart/mixed; boundary=\"a b\""), Some("a b".to_owned()));
        assert_eq!(super::boundary("text/plain; boundary=x"), None);
        let stream = futures_util::stream::once(async move { Ok::<_, std::io::Error>(bytes::Bytes::from(body)) });
        let mut parts = multer::Multipart::new(stream, boundary);
        let meta = parts.next_field().await.expect("read").expect("metadata");
        assert_eq!(meta.bytes().await.expect("bytes").as_ref(), b"{}");
        let file = parts.next_field().await.expect("read").expect("file");
        assert_eq!(file.content_type().map(|m| m.essence_str().to_owned()), Some("image/png".to_owned()));
        assert_eq!(filename_of(file.headers()), Some("a.png".to_owned()));
        assert_eq!(file.bytes().await.expect("bytes").as_ref(), content);
        assert!(parts.next_field().await.expect("end").is_none());
    }
}
