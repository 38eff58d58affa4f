//! Media across servers.
//!
//! - **Asked**: a client's download or thumbnail of another server's media makes this
//!   server fetch the file from it — first the authenticated federation endpoint
//!   (`GET /_matrix/federation/v1/media/download/{mediaId}`, signed; a `multipart/mixed`
//!   answer whose second part is the file, or a `Location` to fetch it from), then the
//!   legacy `GET /_matrix/media/v3/download/{server}/{mediaId}?allow_remote=false` for
//!   servers without it. Within the upload size limit and a time-out; a redirect is
//!   fetched through the outbound policy like any other URL. The caller stores it.
//! - **Served**: [`multipart`] builds the answer for other servers.

use std::time::Duration;

use bytes::Bytes;
use http::header;
use ruma::ServerName;

use super::{receive::encode, Federation};
use crate::{
    error::{Error, Result},
    transport::server_client::ServerRequest,
};

const MEDIA_TIMEOUT: Duration = Duration::from_secs(60);

/// A file fetched from another server.
pub struct RemoteFile {
    pub bytes: Bytes,
    pub content_type: Option<String>,
    pub filename: Option<String>,
}

impl Federation {
    /// Fetches `server`'s media `media_id` (see the module doc), at most `max` bytes.
    pub async fn fetch_media(&self, server: &ServerName, media_id: &str, max: usize) -> Result<RemoteFile> {
        let path = format!("/_matrix/federation/v1/media/download/{}", encode(media_id));
        let req = ServerRequest::get(&path).limits(MEDIA_TIMEOUT, max + 64 * 1024);
        match self.servers.request(server, req).await {
            Ok(a) if a.status.is_success() => return self.read_multipart(&a.headers, a.body, max).await,
            Ok(a) if a.status == http::StatusCode::NOT_FOUND => {
                // Perhaps a server without the authenticated endpoint: the legacy one.
                let body: serde_json::Value = serde_json::from_slice(&a.body).unwrap_or_default();
                if body.get("errcode").and_then(|e| e.as_str()) == Some("M_NOT_FOUND") {
                    return Err(Error::not_found(format!("{server} does not have this media")));
                }
            }
            Ok(a) => tracing::info!(%server, status = %a.status, "federation media download refused"),
            Err(e) => return Err(Error::unavailable(format!("Cannot reach {server}: {e}"))),
        }
        let path =
            format!("/_matrix/media/v3/download/{}/{}?allow_remote=false", encode(server.as_str()), encode(media_id));
        let req = ServerRequest::get(&path).unsigned().limits(MEDIA_TIMEOUT, max);
        let a = self
            .servers
            .request(server, req)
            .await
            .map_err(|e| Error::unavailable(format!("Cannot reach {server}: {e}")))?;
        if a.status == http::StatusCode::NOT_FOUND {
            return Err(Error::not_found(format!("{server} does not have this media")));
        }
        if !a.status.is_success() {
            return Err(Error::unavailable(format!("{server} answered {} for media", a.status)));
        }
        Ok(RemoteFile {
            content_type: header_text(&a.headers, header::CONTENT_TYPE),
            filename: filename_of(&a.headers),
            bytes: a.body,
        })
    }

    async fn read_multipart(&self, headers: &http::HeaderMap, body: Bytes, max: usize) -> Result<RemoteFile> {
        let bad = |why: &str| Error::unavailable(format!("A server sent media in an unreadable form: {why}"));
        let content_type = header_text(headers, header::CONTENT_TYPE).unwrap_or_default();
        let boundary = content_type
            .split(';')
            .filter_map(|p| p.trim().strip_prefix("boundary="))
            .next()
            .map(|b| b.trim_matches('"').to_owned())
            .ok_or_else(|| bad("no multipart boundary"))?;
        let parts = split_multipart(&body, &boundary).ok_or_else(|| bad("malformed multipart"))?;
        let (part_headers, content): Part<'_> = parts.get(1).cloned().ok_or_else(|| bad("no file part"))?;
        if let Some(location) = part_headers.get("location") {
            let fetched = self
                .servers
                .outbound()
                .get(location, MEDIA_TIMEOUT, max)
                .await
                .map_err(|e| Error::unavailable(format!("Cannot fetch the media's location: {e}")))?;
            if !fetched.status.is_success() {
                return Err(Error::unavailable(format!("The media's location answered {}", fetched.status)));
            }
            return Ok(RemoteFile {
                content_type: header_text(&fetched.headers, header::CONTENT_TYPE),
                filename: filename_of(&fetched.headers),
                bytes: fetched.body,
            });
        }
        let filename = part_headers
            .get("content-disposition")
            .and_then(|v| ruma::http_headers::ContentDisposition::try_from(v.as_bytes()).ok())
            .and_then(|d| d.filename);
        Ok(RemoteFile {
            content_type: part_headers.get("content-type").cloned(),
            filename,
            bytes: body.slice_ref(content),
        })
    }
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

/// One part of a `multipart/mixed` body: its headers by lower-case name, its content.
type Part<'a> = (std::collections::HashMap<String, String>, &'a [u8]);

/// The parts of a `multipart/mixed` body.
fn split_multipart<'a>(body: &'a [u8], boundary: &str) -> Option<Vec<Part<'a>>> {
    let delimiter = format!("--{boundary}");
    let find =
        |from: usize, needle: &[u8]| body[from..].windows(needle.len()).position(|w| w == needle).map(|p| p + from);
    let mut at = find(0, delimiter.as_bytes())? + delimiter.len();
    let mut parts = Vec::new();
    loop {
        if body[at..].starts_with(b"--") {
            return Some(parts);
        }
        let start = at + if body[at..].starts_with(b"\r\n") { 2 } else { 0 };
        let next = find(start, format!("\r\n{delimiter}").as_bytes())?;
        let part = &body[start..next];
        let split = part.windows(4).position(|w| w == b"\r\n\r\n");
        let (head, content) = match split {
            Some(i) => (&part[..i], &part[i + 4..]),
            None if part.starts_with(b"\r\n") => (&part[..0], &part[2..]),
            None => (part, &part[part.len()..]),
        };
        let mut headers = std::collections::HashMap::new();
        for line in std::str::from_utf8(head).ok()?.split("\r\n").filter(|l| !l.is_empty()) {
            let (k, v) = line.split_once(':')?;
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
        parts.push((headers, content));
        at = next + 2 + delimiter.len();
        if parts.len() > 8 {
            return None;
        }
    }
}

/// A `multipart/mixed` answer to another server: (its content type, its body): the
/// metadata part (an empty object), then the file.
pub fn multipart(content_type: &str, disposition: &str, content: &[u8]) -> (String, Vec<u8>) {
    let boundary: String = {
        use rand::{distributions::Alphanumeric, Rng};
        rand::thread_rng().sample_iter(Alphanumeric).take(32).map(char::from).collect()
    };
    let mut body = Vec::with_capacity(content.len() + 256);
    body.extend_from_slice(format!("--{boundary}\r\nContent-Type: application/json\r\n\r\n{{}}\r\n").as_bytes());
    body.extend_from_slice(
        format!("--{boundary}\r\nContent-Type: {content_type}\r\nContent-Disposition: {disposition}\r\n\r\n")
            .as_bytes(),
    );
    body.extend_from_slice(content);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/mixed; boundary={boundary}"), body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multipart_round_trip() {
        let (kind, body) = multipart("image/png", "inline; filename=a.png", b"\x89PNG\r\n--not a boundary\r\n");
        let boundary = kind.split("boundary=").nth(1).expect("boundary");
        let parts = split_multipart(&body, boundary).expect("parts");
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].1, b"{}");
        assert_eq!(parts[1].0.get("content-type").map(String::as_str), Some("image/png"));
        assert_eq!(parts[1].1, b"\x89PNG\r\n--not a boundary\r\n");
        assert!(split_multipart(b"garbage", boundary).is_none());
    }
}
