//! URL previews (`GET /_matrix/client/v1/media/preview_url`): the OpenGraph title,
//! description and picture of a page a user links to, as Element shows under a message.
//!
//! Off unless `url_preview_enabled`: a preview makes Hearth fetch a URL a user chose, so
//! every fetch goes through the outbound client and its address policy (checked on the
//! address actually connected to and on every redirect), with a time-out and a size cap.
//! At most [`MAX_FETCHES`] previews are fetched at once.
//!
//! - An HTML page is tokenised (html5ever's tokenizer; script and style content skipped)
//!   for its `og:*` meta tags, falling back to `<title>` and the `description` meta tag.
//!   Only the first [`MAX_HTML`] bytes are read.
//! - The page's `og:image` (or a URL that is itself a picture) is fetched under the same
//!   policy and stored as local media of the user who asked, so the preview names it by
//!   `mxc://`; its size and dimensions come with it.
//! - A preview is kept for a day (`URL_PREVIEWS`); housekeeping drops older ones.

use std::{
    cell::{Cell, RefCell},
    collections::BTreeMap,
    time::Duration,
};

use html5ever::tokenizer::{
    states::RawKind, BufferQueue, CharacterTokens, EndTag, StartTag, TagToken, Token, TokenSink, TokenSinkResult,
    Tokenizer,
};
use ruma::UserId;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{thumbnail::PICTURE_TYPES, Media};
use crate::{
    error::{Error, Result},
    store::{codec::json_value, tables, Batch, KeyRange, Order, Table},
    time::now_millis,
    transport::client::{OutboundClient, OutboundError},
};

/// Previews fetched at once.
pub const MAX_FETCHES: usize = 4;
/// How much of a page is read.
pub const MAX_HTML: usize = 1024 * 1024;
/// Largest picture fetched for a preview.
pub const MAX_IMAGE: usize = 10 * 1024 * 1024;
/// Longest URL previewed.
pub const MAX_URL: usize = 2048;
/// How long one fetch may take, redirects included.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a preview is kept.
pub const KEEP_MS: u64 = 24 * 60 * 60 * 1000;
/// Longest title and description kept, in characters.
const MAX_TITLE: usize = 300;
const MAX_DESCRIPTION: usize = 500;
/// Most meta tags read from one page.
const MAX_META: usize = 64;

/// A preview made earlier.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CachedPreview {
    pub preview: Map<String, Value>,
    pub expires_ts: u64,
}

json_value!(CachedPreview);

/// URL → its preview, for a day.
pub const URL_PREVIEWS: Table<String, CachedPreview> = Table::new(tables::URL_PREVIEWS);

/// What previews need: the outbound client, and the turns for fetching.
pub struct Previews {
    outbound: OutboundClient,
    fetching: tokio::sync::Semaphore,
}

impl Previews {
    pub fn new(outbound: OutboundClient) -> Self {
        Previews { outbound, fetching: tokio::sync::Semaphore::new(MAX_FETCHES) }
    }
}

impl Media {
    /// The preview of `url` for `requester`: kept from earlier, or fetched now.
    pub async fn preview(&self, url: &str, requester: &UserId, own: &ruma::ServerName) -> Result<Map<String, Value>> {
        let Some(previews) = &self.previews else {
            return Err(Error::matrix(
                http::StatusCode::NOT_FOUND,
                "M_UNRECOGNIZED",
                "URL previews are off on this server (url_preview_enabled)",
            ));
        };
        let parsed = checked_url(url)?;
        let key = parsed.as_str().to_owned();
        if let Some(cached) = URL_PREVIEWS.get(&self.store, key.as_str())? {
            if cached.expires_ts > now_millis() {
                return Ok(cached.preview);
            }
        }
        let _turn = previews.fetching.acquire().await.map_err(|_| Error::internal("shutting down"))?;
        let page = previews.outbound.get(parsed.as_str(), FETCH_TIMEOUT, MAX_IMAGE).await.map_err(unreachable)?;
        if !page.status.is_success() {
            return Err(Error::matrix(
                http::StatusCode::BAD_GATEWAY,
                "M_UNKNOWN",
                format!("The page answered {}", page.status),
            ));
        }
        let kind = content_type(&page.headers);
        let mut preview = Map::new();
        if PICTURE_TYPES.contains(&kind.as_str()) {
            let name = page.url.path_segments().and_then(|mut s| s.next_back()).map(str::to_owned);
            if let Some(name) = name.clone().filter(|n| !n.is_empty()) {
                preview.insert("og:title".into(), Value::String(name));
            }
            self.keep_picture(&mut preview, page.body, kind, name, requester, own).await?;
        } else if kind == "text/html" || kind == "application/xhtml+xml" {
            let html = &page.body[..page.body.len().min(MAX_HTML)];
            let meta = opengraph(&String::from_utf8_lossy(html));
            let image = meta.get("og:image").and_then(|i| page.url.join(i).ok());
            for (k, v) in meta {
                if k != "og:image" && !k.starts_with("og:image:") {
                    preview.insert(k, Value::String(v));
                }
            }
            if let Some(image) = image {
                // A page's picture that cannot be fetched leaves the preview without one.
                match previews.outbound.get(image.as_str(), FETCH_TIMEOUT, MAX_IMAGE).await {
                    Ok(pic)
                        if pic.status.is_success() && PICTURE_TYPES.contains(&content_type(&pic.headers).as_str()) =>
                    {
                        let name = pic.url.path_segments().and_then(|mut s| s.next_back()).map(str::to_owned);
                        let kind = content_type(&pic.headers);
                        self.keep_picture(&mut preview, pic.body, kind, name, requester, own).await?;
                    }
                    Ok(pic) => tracing::debug!(url = %image, status = %pic.status, "preview picture not usable"),
                    Err(e) => tracing::debug!(url = %image, error = %e, "preview picture not fetched"),
                }
            }
        }
        let mut batch = Batch::new();
        let cached = CachedPreview { preview: preview.clone(), expires_ts: now_millis() + KEEP_MS };
        URL_PREVIEWS.put(&mut batch, key.as_str(), &cached);
        self.store.write(batch)?;
        Ok(preview)
    }

    /// Stores a fetched picture as local media and names it in the preview.
    async fn keep_picture(
        &self,
        preview: &mut Map<String, Value>,
        bytes: bytes::Bytes,
        kind: String,
        name: Option<String>,
        requester: &UserId,
        own: &ruma::ServerName,
    ) -> Result<()> {
        let size = bytes.len();
        let dimensions = image::ImageReader::new(std::io::Cursor::new(&bytes[..]))
            .with_guessed_format()
            .ok()
            .and_then(|r| r.into_dimensions().ok());
        let media_id = self.store_fetched(bytes, Some(kind.clone()), name, requester).await?;
        preview.insert("og:image".into(), Value::String(format!("mxc://{own}/{media_id}")));
        preview.insert("og:image:type".into(), Value::String(kind));
        preview.insert("matrix:image:size".into(), Value::from(size));
        if let Some((w, h)) = dimensions {
            preview.insert("og:image:width".into(), Value::from(w));
            preview.insert("og:image:height".into(), Value::from(h));
        }
        Ok(())
    }

    /// Drops previews older than a day.
    pub(super) fn forget_old_previews(&self) -> Result<()> {
        let now = now_millis();
        let mut batch = Batch::new();
        URL_PREVIEWS.scan_range(&self.store, &KeyRange::default(), Order::Ascending, |url, p| {
            if p.expires_ts <= now {
                URL_PREVIEWS.delete(&mut batch, url.as_str());
            }
            true
        })?;
        Ok(self.store.write(batch)?)
    }
}

/// A URL that may be previewed: `http` or `https`, with a host, not too long.
fn checked_url(url: &str) -> Result<reqwest::Url> {
    if url.len() > MAX_URL {
        return Err(Error::invalid_param(format!("URLs longer than {MAX_URL} bytes are not previewed")));
    }
    let parsed = reqwest::Url::parse(url).map_err(|e| Error::invalid_param(format!("Invalid URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
        return Err(Error::invalid_param("Only http and https URLs are previewed"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(Error::invalid_param("URLs with credentials are not previewed"));
    }
    Ok(parsed)
}

/// The content type's essence, lower case.
fn content_type(headers: &http::HeaderMap) -> String {
    let value = headers.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    value.split(';').next().unwrap_or_default().trim().to_ascii_lowercase()
}

/// An outbound failure as the client sees it: a refused address is 403, the rest 502/504.
fn unreachable(e: OutboundError) -> Error {
    match e {
        OutboundError::Refused(r) => Error::forbidden(format!("This URL may not be previewed: {r}")),
        OutboundError::TimedOut => {
            Error::matrix(http::StatusCode::GATEWAY_TIMEOUT, "M_UNKNOWN", "The page took too long to answer")
        }
        OutboundError::TooLarge(n) => {
            Error::matrix(http::StatusCode::BAD_GATEWAY, "M_TOO_LARGE", format!("The page is larger than {n} bytes"))
        }
        other => Error::matrix(http::StatusCode::BAD_GATEWAY, "M_UNKNOWN", format!("Cannot fetch the page: {other}")),
    }
}

/// The OpenGraph properties of a page (`og:*`), with `og:title` and `og:description`
/// filled from `<title>` and `<meta name="description">` when the page has none.
pub fn opengraph(html: &str) -> BTreeMap<String, String> {
    let input = BufferQueue::default();
    input.push_back(html.into());
    let tokenizer = Tokenizer::new(Scan::default(), Default::default());
    let _ = tokenizer.feed(&input);
    tokenizer.end();
    let scan = tokenizer.sink;
    let mut found = scan.og.into_inner();
    let description = scan.description.into_inner();
    let title = scan.title.into_inner();
    if !found.contains_key("og:title") && !title.trim().is_empty() {
        found.insert("og:title".into(), title.trim().to_owned());
    }
    if let (false, Some(d)) = (found.contains_key("og:description"), description) {
        found.insert("og:description".into(), d);
    }
    for (key, max) in [("og:title", MAX_TITLE), ("og:description", MAX_DESCRIPTION)] {
        if let Some(v) = found.get_mut(key) {
            *v = shortened(v, max);
        }
    }
    found
}

fn shortened(s: &str, max: usize) -> String {
    let collapsed = s.split_whitespace().collect::<Vec<_>>().join(" ");
    match collapsed.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &collapsed[..cut]),
        None => collapsed,
    }
}

/// What the tokenizer sink gathers.
#[derive(Default)]
struct Scan {
    og: RefCell<BTreeMap<String, String>>,
    description: RefCell<Option<String>>,
    title: RefCell<String>,
    in_title: Cell<bool>,
    metas: Cell<usize>,
}

impl TokenSink for Scan {
    type Handle = ();

    fn process_token(&self, token: Token, _line: u64) -> TokenSinkResult<()> {
        match token {
            TagToken(tag) if tag.kind == StartTag => match &*tag.name {
                "meta" if self.metas.get() < MAX_META => {
                    self.metas.set(self.metas.get() + 1);
                    let attr =
                        |name: &str| tag.attrs.iter().find(|a| &*a.name.local == name).map(|a| a.value.to_string());
                    let (Some(key), Some(content)) = (attr("property").or_else(|| attr("name")), attr("content"))
                    else {
                        return TokenSinkResult::Continue;
                    };
                    let key = key.to_ascii_lowercase();
                    if key.starts_with("og:") {
                        self.og.borrow_mut().entry(key).or_insert(content);
                    } else if key == "description" {
                        self.description.borrow_mut().get_or_insert(content);
                    }
                }
                "title" => {
                    self.in_title.set(true);
                    return TokenSinkResult::RawData(RawKind::Rcdata);
                }
                "script" => return TokenSinkResult::RawData(RawKind::ScriptData),
                "style" | "noscript" | "iframe" | "xmp" | "noembed" | "noframes" => {
                    return TokenSinkResult::RawData(RawKind::Rawtext)
                }
                "textarea" => return TokenSinkResult::RawData(RawKind::Rcdata),
                _ => {}
            },
            TagToken(tag) if tag.kind == EndTag && &*tag.name == "title" => self.in_title.set(false),
            CharacterTokens(text) if self.in_title.get() => {
                let mut title = self.title.borrow_mut();
                if title.len() < 4 * MAX_TITLE {
                    title.push_str(&text);
                }
            }
            _ => {}
        }
        TokenSinkResult::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opengraph_tags_win_over_title_and_description() {
        let found = opengraph(
            r#"<html><head><title>Plain title</title>
            <meta property="og:title" content="The OG title">
            <meta name="description" content="plain description">
            <meta property="og:image" content="/pic.png">
            <script>var x = '<meta property="og:description" content="from a script">';</script>
            </head><body>hello</body></html>"#,
        );
        assert_eq!(found.get("og:title").map(String::as_str), Some("The OG title"));
        assert_eq!(found.get("og:description").map(String::as_str), Some("plain description"));
        assert_eq!(found.get("og:image").map(String::as_str), Some("/pic.png"));
    }

    #[test]
    fn title_falls_back_and_is_shortened() {
        let long = "word ".repeat(200);
        let found = opengraph(&format!("<title>  A   page\n title </title><meta name=description content='{long}'>"));
        assert_eq!(found.get("og:title").map(String::as_str), Some("A page title"));
        let description = found.get("og:description").expect("description");
        assert_eq!(description.chars().count(), MAX_DESCRIPTION + 1, "cut, with an ellipsis");
    }

    #[test]
    fn broken_markup_gives_what_it_can() {
        assert!(opengraph("<meta property=og:title").is_empty());
        assert!(opengraph("\u{0}<<<>>>&&&;").is_empty());
        let found = opengraph("<meta property='og:title' content='ok'><title>never closed");
        assert_eq!(found.get("og:title").map(String::as_str), Some("ok"));
    }

    #[test]
    fn only_web_urls_are_previewed() {
        for bad in ["file:///etc/passwd", "ftp://x.org/", "http://user:pw@x.org/", "not a url", "http://"] {
            assert!(checked_url(bad).is_err(), "{bad}");
        }
        assert!(checked_url(&format!("https://x.org/{}", "a".repeat(MAX_URL))).is_err());
        assert!(checked_url("https://example.org/a?b=c").is_ok());
    }
}
