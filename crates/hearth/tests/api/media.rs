//! The content repository over real HTTP, on both engines: uploads stream to disk under the
//! size limit, downloads (authenticated and legacy) give the same bytes back with the safe
//! headers, single ranges, identical uploads share one file, records and files survive a
//! restart, and a file no record names (an upload cut short) is swept at start.

use hearth::store::Backend;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sha2::Digest;

use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc,
};

use crate::{
    both_engines,
    common::{assert_error, TestServer, SERVER_NAME},
};

async fn upload(
    s: &TestServer,
    token: &str,
    bytes: Vec<u8>,
    content_type: &str,
    filename: Option<&str>,
) -> (StatusCode, Value) {
    let url = match filename {
        Some(f) => format!("{}/_matrix/media/v3/upload?filename={f}", s.base),
        None => format!("{}/_matrix/media/v3/upload", s.base),
    };
    let res = s
        .http
        .post(url)
        .bearer_auth(token)
        .header("content-type", content_type)
        .body(bytes)
        .send()
        .await
        .expect("upload");
    let status = res.status();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// An authenticated read of `/_matrix/client/v1/media/{what}`, with a `Range` when given.
async fn fetch(s: &TestServer, token: &str, what: &str, range: Option<&str>) -> reqwest::Response {
    let mut req = s.http.get(format!("{}/_matrix/client/v1/media/{what}", s.base)).bearer_auth(token);
    if let Some(r) = range {
        req = req.header("range", r);
    }
    req.send().await.expect("get")
}

fn media_path(uri: &str) -> String {
    uri.strip_prefix("mxc://").expect("an mxc uri").to_owned()
}

/// Files stored under the media folder, temporary ones aside.
fn stored_files(s: &TestServer) -> usize {
    let root = s.services().config.database_path.join("media");
    let mut n = 0;
    for l1 in std::fs::read_dir(&root).expect("media folder").flatten() {
        if l1.file_name() == "tmp" || l1.file_name() == "thumbnails" || !l1.path().is_dir() {
            continue;
        }
        for l2 in std::fs::read_dir(l1.path()).expect("level 2").flatten() {
            n += std::fs::read_dir(l2.path()).expect("files").count();
        }
    }
    n
}

async fn upload_and_download(b: Backend) {
    let mut s = TestServer::start(b).await;
    let (_, token, _) = s.register("alice", "a long password").await;
    let png: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
    let (status, up) = upload(&s, &token, png.clone(), "image/png", Some("cat.png")).await;
    assert_eq!(status, StatusCode::OK, "{up}");
    let path = media_path(up["content_uri"].as_str().expect("content_uri"));

    // Authenticated download: the bytes, and the safe headers.
    let res = fetch(&s, &token, &format!("download/{path}"), None).await;
    assert_eq!(res.status(), StatusCode::OK);
    let h = res.headers().clone();
    assert_eq!(h["content-type"], "image/png");
    assert_eq!(h["content-disposition"], "inline; filename=cat.png");
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["cross-origin-resource-policy"], "cross-origin");
    assert!(h["content-security-policy"].to_str().expect("csp").starts_with("sandbox"));
    assert_eq!(res.bytes().await.expect("body").to_vec(), png);
    // Without a token the authenticated route refuses; the legacy route serves.
    let res = s.http.get(format!("{}/_matrix/client/v1/media/download/{path}", s.base)).send().await.expect("get");
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let res = s.http.get(format!("{}/_matrix/media/v3/download/{path}/other.png", s.base)).send().await.expect("get");
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-disposition"], "inline; filename=other.png");
    assert_eq!(res.bytes().await.expect("body").to_vec(), png);

    // A single range.
    let res = fetch(&s, &token, &format!("download/{path}"), Some("bytes=10-19")).await;
    assert_eq!(res.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(res.headers()["content-range"], "bytes 10-19/5000");
    assert_eq!(res.bytes().await.expect("body").to_vec(), png[10..20].to_vec());
    let res = fetch(&s, &token, &format!("download/{path}"), Some("bytes=9000-")).await;
    assert_eq!(res.status(), StatusCode::RANGE_NOT_SATISFIABLE);

    // HTML and SVG are never inline; the same bytes twice share one file.
    for kind in ["text/html", "image/svg+xml"] {
        let (_, up) = upload(&s, &token, b"<svg onload=alert(1)>".to_vec(), kind, None).await;
        let p = media_path(up["content_uri"].as_str().expect("uri"));
        let res = s.http.get(format!("{}/_matrix/media/v3/download/{p}", s.base)).send().await.expect("get");
        assert!(res.headers()["content-disposition"].to_str().expect("cd").starts_with("attachment"), "{kind}");
    }
    let (_, again) = upload(&s, &token, png.clone(), "image/png", None).await;
    assert_ne!(again["content_uri"], up["content_uri"]);
    assert_eq!(stored_files(&s), 2, "the PNG twice and the markup twice: two files");

    // An unknown id here is 404; media of a server that cannot be reached is 502.
    for (p, status) in [
        (format!("{SERVER_NAME}/nope"), StatusCode::NOT_FOUND),
        ("elsewhere.invalid/abc".to_owned(), StatusCode::BAD_GATEWAY),
    ] {
        let res = fetch(&s, &token, &format!("download/{p}"), None).await;
        assert_eq!(res.status(), status, "{p}");
    }

    // Thumbnails of markup are refused, and so is a size that is no number.
    let (_, svg) = upload(&s, &token, b"<svg/>".to_vec(), "image/svg+xml", None).await;
    let svg = media_path(svg["content_uri"].as_str().expect("uri"));
    let res = s
        .http
        .get(format!("{}/_matrix/media/v3/thumbnail/{svg}?width=32&height=32", s.base))
        .send()
        .await
        .expect("get");
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let res = s
        .http
        .get(format!("{}/_matrix/media/v3/thumbnail/{path}?width=x&height=32", s.base))
        .send()
        .await
        .expect("get");
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);

    // Everything is still there after a restart.
    s.restart().await;
    let res = s
        .http
        .get(format!("{}/_matrix/client/v1/media/download/{path}", s.base))
        .bearer_auth(&token)
        .send()
        .await
        .expect("get");
    assert_eq!(res.bytes().await.expect("body").to_vec(), png);
}

async fn uploads_past_the_limit_are_413(b: Backend) {
    let s = TestServer::start_with(b, |c| c.max_request_size = 4096).await;
    let (_, token, _) = s.register("alice", "a long password").await;
    let (status, config) = s.get("/_matrix/client/v1/media/config", Some(&token)).await;
    assert_eq!((status, config["m.upload.size"].as_u64()), (StatusCode::OK, Some(4096)));
    let (status, refused) = upload(&s, &token, vec![7u8; 5000], "application/octet-stream", None).await;
    assert_eq!((status, refused["errcode"].as_str()), (StatusCode::PAYLOAD_TOO_LARGE, Some("M_TOO_LARGE")));
    // Without a declared length (chunked): stopped while streaming.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = (0..10).map(|_| Ok(vec![1u8; 1000])).collect();
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    let res = s
        .http
        .post(format!("{}/_matrix/media/v3/upload", s.base))
        .bearer_auth(&token)
        .body(body)
        .send()
        .await
        .expect("post");
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(stored_files(&s), 0, "nothing of a refused upload stays");
    let (status, _) = upload(&s, &token, vec![7u8; 4096], "application/octet-stream", None).await;
    assert_eq!(status, StatusCode::OK, "exactly the limit is accepted");
}

async fn files_without_a_record_are_swept_at_start(b: Backend) {
    let mut s = TestServer::start(b).await;
    let (_, token, _) = s.register("alice", "a long password").await;
    let (_, kept) = upload(&s, &token, b"kept".to_vec(), "text/plain", None).await;
    let root = s.services().config.database_path.join("media");
    let orphan_dir = root.join("ab").join("cd");
    std::fs::create_dir_all(&orphan_dir).expect("mkdir");
    let orphan = orphan_dir.join("0".repeat(60));
    std::fs::write(&orphan, b"cut short").expect("write");
    std::fs::write(root.join("tmp").join("partial"), b"half").expect("write");
    // Conduit 0.10's layout: the content's SHA-256 split 2/2/60. A file named by the whole
    // hash (Hearth's first layout) is moved there at start.
    let sha: String = sha2::Sha256::digest(b"kept").iter().map(|b| format!("{b:02x}")).collect();
    let conduit_path = root.join(&sha[0..2]).join(&sha[2..4]).join(&sha[4..]);
    assert!(conduit_path.is_file(), "stored as Conduit 0.10 stores it");
    let old_path = root.join(&sha[0..2]).join(&sha[2..4]).join(&sha);
    std::fs::rename(&conduit_path, &old_path).expect("rename");
    s.restart().await;
    assert!(conduit_path.is_file() && !old_path.exists(), "moved to Conduit's layout");
    assert!(!orphan.exists(), "a file no record names is swept");
    assert!(!root.join("tmp").join("partial").exists(), "an unfinished upload is swept");
    let path = media_path(kept["content_uri"].as_str().expect("uri"));
    let res = s.http.get(format!("{}/_matrix/media/v3/download/{path}", s.base)).send().await.expect("get");
    assert_eq!(res.bytes().await.expect("body").to_vec(), b"kept".to_vec());
}

/// `create`, then the content by `PUT`: a download waiting for it gets it, a second `PUT`
/// is 409, another user's is 403, an unknown id 404, and an 11th waiting id 429.
async fn asynchronous_uploads(b: Backend) {
    let s = TestServer::start(b).await;
    let (_, alice, _) = s.register("alice", "a long password").await;
    let (_, bob, _) = s.register("bob", "a long password").await;
    let (status, created) = s.post("/_matrix/media/v1/create", Some(&alice), serde_json::json!({})).await;
    assert_eq!(status, StatusCode::OK, "{created}");
    assert!(created["unused_expires_at"].as_u64().is_some(), "{created}");
    let path = media_path(created["content_uri"].as_str().expect("uri"));

    let early = fetch(&s, &bob, &format!("download/{path}?timeout_ms=100"), None).await;
    assert_eq!(early.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(early.json::<Value>().await.expect("json")["errcode"], "M_NOT_YET_UPLOADED");

    let waiting = {
        let (http, base, bob) = (s.http.clone(), s.base.clone(), bob.clone());
        let path = path.clone();
        tokio::spawn(async move {
            let res = http
                .get(format!("{base}/_matrix/client/v1/media/download/{path}?timeout_ms=20000"))
                .bearer_auth(bob)
                .send()
                .await
                .expect("get");
            (res.status(), res.bytes().await.expect("body").to_vec())
        })
    };
    let put = |token: &str, path: &str| {
        s.http
            .put(format!("{}/_matrix/media/v3/upload/{path}", s.base))
            .bearer_auth(token.to_owned())
            .header("content-type", "audio/ogg")
            .body(b"voice message".to_vec())
            .send()
    };
    assert_eq!(put(&alice, &path).await.expect("put").status(), StatusCode::OK);
    let (status, body) = waiting.await.expect("waiter");
    assert_eq!((status, body), (StatusCode::OK, b"voice message".to_vec()));
    let again = put(&alice, &path).await.expect("put");
    assert_eq!(again.status(), StatusCode::CONFLICT);
    assert_eq!(again.json::<Value>().await.expect("json")["errcode"], "M_CANNOT_OVERWRITE_MEDIA");

    let (_, other) = s.post("/_matrix/media/v1/create", Some(&alice), serde_json::json!({})).await;
    let other = media_path(other["content_uri"].as_str().expect("uri"));
    assert_eq!(put(&bob, &other).await.expect("put").status(), StatusCode::FORBIDDEN);
    let unknown = format!("{}/nope", path.split('/').next().expect("server"));
    assert_eq!(put(&alice, &unknown).await.expect("put").status(), StatusCode::NOT_FOUND);
    // `other` is pending: nine more are allowed, the next is refused.
    for _ in 0..9 {
        let (status, _) = s.post("/_matrix/media/v1/create", Some(&alice), serde_json::json!({})).await;
        assert_eq!(status, StatusCode::OK);
    }
    let (status, refused) = s.post("/_matrix/media/v1/create", Some(&alice), serde_json::json!({})).await;
    assert_eq!((status, refused["errcode"].as_str()), (StatusCode::TOO_MANY_REQUESTS, Some("M_LIMIT_EXCEEDED")));
}

/// A real picture, PNG-encoded: a gradient of `w`×`h`.
fn picture(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x % 256) as u8, (y % 256) as u8, 128]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).expect("encode");
    out.into_inner()
}

/// CRC-32 (IEEE), as PNG chunks carry it.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

async fn thumbnail(s: &TestServer, token: &str, path: &str, query: &str) -> (StatusCode, Option<String>, Vec<u8>) {
    let res = fetch(s, token, &format!("thumbnail/{path}?{query}"), None).await;
    let status = res.status();
    let kind = res.headers().get("content-type").and_then(|v| v.to_str().ok()).map(str::to_owned);
    (status, kind, res.bytes().await.expect("body").to_vec())
}

/// A JPEG of `w`×`h` whose EXIF says to show it turned a quarter clockwise (orientation 6),
/// as phones store portrait photos.
fn jpeg_turned(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, _| image::Rgb([(x % 256) as u8, 90, 200]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Jpeg).expect("encode");
    let jpeg = out.into_inner();
    // APP1 "Exif": a big-endian TIFF header and one IFD entry, Orientation (0x0112) = 6.
    let mut tiff = b"MM\x00\x2a\x00\x00\x00\x08".to_vec();
    tiff.extend_from_slice(&[0x00, 0x01, 0x01, 0x12, 0x00, 0x03, 0x00, 0x00, 0x00, 0x01, 0x00, 0x06, 0x00, 0x00]);
    tiff.extend_from_slice(&[0x00, 0x00, 0x00, 0x00]);
    let mut app1 = b"Exif\x00\x00".to_vec();
    app1.extend_from_slice(&tiff);
    let len = u16::try_from(app1.len() + 2).expect("short");
    let mut turned = jpeg[..2].to_vec();
    turned.extend_from_slice(&[0xFF, 0xE1]);
    turned.extend_from_slice(&len.to_be_bytes());
    turned.extend_from_slice(&app1);
    turned.extend_from_slice(&jpeg[2..]);
    turned
}

/// Thumbnails: cropped and scaled to their bucket, made once, never upscaled, turned as
/// their EXIF says; a truncated picture and a decompression bomb are 400s, not 500s.
async fn thumbnails(b: Backend) {
    let s = TestServer::start(b).await;
    let (_, token, _) = s.register("alice", "a long password").await;
    let (_, up) = upload(&s, &token, picture(1000, 800), "image/png", None).await;
    let path = media_path(up["content_uri"].as_str().expect("uri"));

    let (status, kind, bytes) = thumbnail(&s, &token, &path, "width=96&height=96&method=crop").await;
    assert_eq!((status, kind.as_deref()), (StatusCode::OK, Some("image/jpeg")));
    let thumb = image::load_from_memory(&bytes).expect("a decodable thumbnail");
    assert_eq!((thumb.width(), thumb.height()), (96, 96));
    // 300×240 asked: the 320×240 bucket, the picture's 5:4 kept.
    let (_, _, bytes) = thumbnail(&s, &token, &path, "width=300&height=200&method=scale").await;
    let thumb = image::load_from_memory(&bytes).expect("decodable");
    assert_eq!((thumb.width(), thumb.height()), (300, 240));
    // Asked again: the same bytes (made once).
    let (_, _, again) = thumbnail(&s, &token, &path, "width=300&height=200&method=scale").await;
    assert_eq!(again, bytes);

    // A portrait photo stored sideways: 400×200 turned is 200×400, so 120×240 in 320×240
    // (unturned it would be 320×160).
    let (_, up) = upload(&s, &token, jpeg_turned(400, 200), "image/jpeg", None).await;
    let turned = media_path(up["content_uri"].as_str().expect("uri"));
    let (status, _, bytes) = thumbnail(&s, &token, &turned, "width=320&height=240&method=scale").await;
    assert_eq!(status, StatusCode::OK);
    let thumb = image::load_from_memory(&bytes).expect("decodable");
    assert_eq!((thumb.width(), thumb.height()), (120, 240), "EXIF orientation applied");

    // A picture smaller than the box is its own thumbnail.
    let small = picture(50, 40);
    let (_, up) = upload(&s, &token, small.clone(), "image/png", None).await;
    let small_path = media_path(up["content_uri"].as_str().expect("uri"));
    let (status, _, bytes) = thumbnail(&s, &token, &small_path, "width=320&height=240").await;
    assert_eq!((status, bytes), (StatusCode::OK, small));

    // A truncated picture, and one whose header claims 100,000 × 100,000 pixels.
    let mut truncated = picture(400, 300);
    truncated.truncate(truncated.len() / 2);
    let mut bomb = picture(1, 1);
    bomb[16..20].copy_from_slice(&100_000u32.to_be_bytes());
    bomb[20..24].copy_from_slice(&100_000u32.to_be_bytes());
    // The header chunk's checksum made right again, so only the size gives it away.
    let crc = crc32(&bomb[12..29]);
    bomb[29..33].copy_from_slice(&crc.to_be_bytes());
    for (name, bytes, why) in [("truncated", truncated, "Cannot make a thumbnail"), ("bomb", bomb, "pixels")] {
        let (_, up) = upload(&s, &token, bytes, "image/png", None).await;
        let p = media_path(up["content_uri"].as_str().expect("uri"));
        let (status, _, body) = thumbnail(&s, &token, &p, "width=96&height=96&method=crop").await;
        let body = String::from_utf8_lossy(&body);
        assert_eq!(status, StatusCode::BAD_REQUEST, "{name}: {body}");
        assert!(body.contains(why), "{name}: {body}");
    }
}

/// What operators look after: a user's quota, the freeze of the legacy endpoints (media
/// from before it stays readable), quarantine (every copy of the content), deleting one
/// item (a shared file stays) and all of a user's (their quota freed), the stored-bytes
/// figure, and retention of thumbnails by last access.
async fn operators(b: Backend) {
    let mut s = TestServer::start_with(b, |c| {
        c.max_request_size = 2 * 1024 * 1024;
        c.media_quota_mb = 1;
    })
    .await;
    let (_, admin, _) = s.register("admin", "a long password").await;
    let (alice_id, alice, _) = s.register("alice", "a long password").await;
    let octets = "application/octet-stream";
    let stored = |s: &TestServer| s.services().media.counters.bytes_stored.load(std::sync::atomic::Ordering::Relaxed);

    // The quota: alice's second 600 kB passes her MiB; the admin's own quota is apart.
    let (status, first) = upload(&s, &alice, vec![1u8; 600_000], octets, None).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let (status, refused) = upload(&s, &alice, vec![2u8; 600_000], octets, None).await;
    assert_eq!((status, refused["errcode"].as_str()), (StatusCode::BAD_REQUEST, Some("M_RESOURCE_LIMIT_EXCEEDED")));
    let (status, _) = upload(&s, &admin, vec![3u8; 300_000], octets, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(stored_files(&s), 2, "nothing of the refused upload stays");
    assert_eq!(stored(&s), 900_000);

    // The freeze: what was stored before stays readable without a token, what comes after
    // only with one.
    let before = media_path(first["content_uri"].as_str().expect("uri"));
    s.config_mut().media_freeze_legacy = true;
    s.restart().await;
    assert_eq!(stored(&s), 900_000, "counted again at start");
    let (_, after) = upload(&s, &alice, b"after the freeze".to_vec(), "text/plain", None).await;
    let after = media_path(after["content_uri"].as_str().expect("uri"));
    let legacy = |p: &str| s.http.get(format!("{}/_matrix/media/v3/download/{p}", s.base)).send();
    assert_eq!(legacy(&before).await.expect("get").status(), StatusCode::OK);
    assert_eq!(legacy(&after).await.expect("get").status(), StatusCode::NOT_FOUND);
    assert_eq!(fetch(&s, &alice, &format!("download/{after}"), None).await.status(), StatusCode::OK);

    // The admin lists alice's uploads, newest first; alice herself may not.
    let listing = format!("/_synapse/admin/v1/users/{alice_id}/media");
    let (status, listed) = s.get(&listing, Some(&admin)).await;
    assert_eq!((status, listed["total"].as_u64()), (StatusCode::OK, Some(2)), "{listed}");
    assert_eq!(Some(listed["media"][0]["media_id"].as_str().expect("id")), after.split('/').nth(1));
    assert_eq!(listed["media"][1]["media_length"], 600_000);
    let (status, _) = s.get(&listing, Some(&alice)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // Quarantine: the same bytes uploaded by someone else are blocked too, and come back.
    let (_, shared_a) = upload(&s, &alice, b"the same bytes".to_vec(), "text/plain", None).await;
    let (_, shared_b) = upload(&s, &admin, b"the same bytes".to_vec(), "text/plain", None).await;
    let shared_a = media_path(shared_a["content_uri"].as_str().expect("uri"));
    let shared_b = media_path(shared_b["content_uri"].as_str().expect("uri"));
    let (status, _) = s.post(&format!("/_synapse/admin/v1/media/quarantine/{shared_a}"), Some(&admin), json!({})).await;
    assert_eq!(status, StatusCode::OK);
    for p in [&shared_a, &shared_b] {
        assert_eq!(fetch(&s, &admin, &format!("download/{p}"), None).await.status(), StatusCode::NOT_FOUND, "{p}");
    }
    let (_, listed) = s.get(&listing, Some(&admin)).await;
    assert_eq!(listed["media"][0]["quarantined_by"], format!("@admin:{SERVER_NAME}"));
    let unquarantine = format!("/_synapse/admin/v1/media/unquarantine/{shared_b}");
    assert_eq!(s.post(&unquarantine, Some(&admin), json!({})).await.0, StatusCode::OK);
    assert_eq!(fetch(&s, &admin, &format!("download/{shared_a}"), None).await.status(), StatusCode::OK);

    // Deleting one item keeps the file another record shares; an unknown item is 404.
    let (status, deleted) =
        s.request(Method::DELETE, &format!("/_synapse/admin/v1/media/{shared_b}"), Some(&admin), None).await;
    assert_eq!((status, deleted["total"].as_u64()), (StatusCode::OK, Some(1)), "{deleted}");
    assert_eq!(fetch(&s, &admin, &format!("download/{shared_b}"), None).await.status(), StatusCode::NOT_FOUND);
    assert_eq!(fetch(&s, &admin, &format!("download/{shared_a}"), None).await.status(), StatusCode::OK);
    let gone = format!("/_synapse/admin/v1/media/{SERVER_NAME}/nothing");
    assert_eq!(s.request(Method::DELETE, &gone, Some(&admin), None).await.0, StatusCode::NOT_FOUND);

    // Deleting all of alice's: her files go, and her quota is free again.
    let (status, deleted) = s.request(Method::DELETE, &listing, Some(&admin), None).await;
    assert_eq!((status, deleted["total"].as_u64()), (StatusCode::OK, Some(3)), "{deleted}");
    assert_eq!(fetch(&s, &admin, &format!("download/{before}"), None).await.status(), StatusCode::NOT_FOUND);
    assert_eq!(stored_files(&s), 1, "only the admin's upload is left");
    assert_eq!(stored(&s), 300_000);
    let (status, _) = upload(&s, &alice, vec![4u8; 600_000], octets, None).await;
    assert_eq!(status, StatusCode::OK, "alice's quota is free again");

    // Retention: a thumbnail not served for longer than the setting goes at the next tidy.
    s.config_mut().media_retention_days = 1;
    s.restart().await;
    let (_, pic) = upload(&s, &alice, picture(200, 100), "image/png", None).await;
    let pic = media_path(pic["content_uri"].as_str().expect("uri"));
    let (status, _, _) = thumbnail(&s, &alice, &pic, "width=32&height=32&method=crop").await;
    assert_eq!(status, StatusCode::OK);
    let thumbs = s.services().config.database_path.join("media").join("thumbnails");
    let made: Vec<_> = std::fs::read_dir(&thumbs).expect("thumbnails").flatten().map(|e| e.path()).collect();
    assert_eq!(made.len(), 2, "the two crops a 200×100 picture is larger than: {made:?}");
    s.services().media.tidy().await.expect("tidy");
    assert!(made.iter().all(|m| m.exists()), "thumbnails just made are kept");
    let two_days_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(2 * 24 * 60 * 60);
    std::fs::File::options().append(true).open(&made[0]).expect("open").set_modified(two_days_ago).expect("mtime");
    s.services().media.tidy().await.expect("tidy");
    assert!(!made[0].exists(), "a thumbnail unread for two days is removed");
    assert!(made[1].exists(), "one read lately is kept");
    let (status, _, _) = thumbnail(&s, &alice, &pic, "width=32&height=32&method=crop").await;
    assert_eq!(status, StatusCode::OK, "and made again when asked for");
}

/// A small site on loopback for previews: a page with OpenGraph tags naming a picture by a
/// relative URL, the bare picture, and a page that redirects to a denied address. Returns
/// its port and the count of requests it answered.
async fn preview_site(pic: Vec<u8>) -> (u16, Arc<AtomicUsize>) {
    use axum::{response::IntoResponse, routing::get, Router};
    let hits = Arc::new(AtomicUsize::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let page = r#"<!doctype html><html><head><title>ignored</title>
        <meta property="og:title" content="Garden party">
        <meta property="og:description" content="Bring a chair.">
        <meta property="og:image" content="/pic.png">
        </head><body><script>document.write('<meta property="og:title" content="no">')</script></body></html>"#;
    let counted = |hits: Arc<AtomicUsize>| {
        move |req: axum::extract::Request, next: axum::middleware::Next| {
            let hits = hits.clone();
            async move {
                hits.fetch_add(1, Ordering::SeqCst);
                next.run(req).await
            }
        }
    };
    let app = Router::new()
        .route("/page", get(move || async move { ([("content-type", "text/html; charset=utf-8")], page) }))
        .route("/pic.png", get(move || async move { ([("content-type", "image/png")], pic).into_response() }))
        .route(
            "/away",
            get(move || async move {
                (StatusCode::FOUND, [("location", format!("http://127.0.0.2:{port}/page"))]).into_response()
            }),
        )
        .layer(axum::middleware::from_fn(counted(hits.clone())));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (port, hits)
}

fn preview_path(url: &str) -> String {
    let encoded: String = url::form_urlencoded::byte_serialize(url.as_bytes()).collect();
    format!("/_matrix/client/v1/media/preview_url?url={encoded}")
}

/// URL previews: off by default (404); on, a page's OpenGraph title, description and
/// picture (stored here, same bytes back), kept for a day (no second fetch), a bare picture,
/// and the address policy on the connected address and on redirects: loopback is refused
/// unless the allowlist admits it, by IP or by a name resolving to it.
async fn url_previews(b: Backend) {
    let pic = picture(120, 80);
    let (port, hits) = preview_site(pic.clone()).await;
    let page = format!("http://127.0.0.1:{port}/page");

    let off = TestServer::start(b).await;
    let (_, token, _) = off.register("alice", "a long password").await;
    let got = off.get(&preview_path(&page), Some(&token)).await;
    assert_error(&got, 404, "M_UNRECOGNIZED");
    drop(off);

    let s = TestServer::start_with(b, |c| {
        c.url_preview_enabled = true;
        c.ip_range_allowlist = vec!["127.0.0.1/32".parse().expect("range")];
    })
    .await;
    let (_, token, _) = s.register("alice", "a long password").await;
    let (status, preview) = s.get(&preview_path(&page), Some(&token)).await;
    assert_eq!(status, StatusCode::OK, "{preview}");
    assert_eq!(preview["og:title"], "Garden party");
    assert_eq!(preview["og:description"], "Bring a chair.");
    assert_eq!((preview["og:image:width"].as_u64(), preview["og:image:height"].as_u64()), (Some(120), Some(80)));
    assert_eq!(preview["matrix:image:size"].as_u64(), Some(pic.len() as u64));
    let image = media_path(preview["og:image"].as_str().expect("og:image"));
    let res = fetch(&s, &token, &format!("download/{image}"), None).await;
    assert_eq!(res.bytes().await.expect("body").to_vec(), pic, "the page's picture, stored here");
    let fetched = hits.load(Ordering::SeqCst);
    assert_eq!(fetched, 2, "the page and its picture");
    let (status, again) = s.get(&preview_path(&page), Some(&token)).await;
    assert_eq!((status, &again), (StatusCode::OK, &preview));
    assert_eq!(hits.load(Ordering::SeqCst), fetched, "kept: not fetched again");

    // A URL that is itself a picture; the legacy path (with a token).
    let bare = format!("http://127.0.0.1:{port}/pic.png");
    let legacy = preview_path(&bare).replace("/_matrix/client/v1/media/", "/_matrix/media/v3/");
    let (status, preview) = s.get(&legacy, Some(&token)).await;
    assert_eq!(status, StatusCode::OK, "{preview}");
    assert_eq!(preview["og:image:type"], "image/png");
    assert_eq!(preview["og:title"], "pic.png");
    assert_eq!(s.get(&legacy, None).await.0, StatusCode::UNAUTHORIZED);

    // A redirect to an address outside the allowlist, and URLs that are no web pages.
    let got = s.get(&preview_path(&format!("http://127.0.0.1:{port}/away")), Some(&token)).await;
    assert_error(&got, 403, "M_FORBIDDEN");
    for bad in ["file:///etc/passwd", "gopher://127.0.0.1/", "nonsense"] {
        assert_error(&s.get(&preview_path(bad), Some(&token)).await, 400, "M_INVALID_PARAM");
    }
    assert_error(&s.get("/_matrix/client/v1/media/preview_url", Some(&token)).await, 400, "M_MISSING_PARAM");
    drop(s);

    // The default policy: loopback is refused, by address and by a name resolving to it.
    let strict = TestServer::start_with(b, |c| c.url_preview_enabled = true).await;
    let (_, token, _) = strict.register("alice", "a long password").await;
    let before = hits.load(Ordering::SeqCst);
    for url in [page.clone(), format!("http://localhost:{port}/page")] {
        let got = strict.get(&preview_path(&url), Some(&token)).await;
        assert_error(&got, 403, "M_FORBIDDEN");
    }
    assert_eq!(hits.load(Ordering::SeqCst), before, "nothing reached the site");
}

/// Identical bytes uploaded at the same moment by several clients: every upload gets its
/// own id, all read back, and the bytes are stored once.
async fn concurrent_identical_uploads_share_one_file(b: Backend) {
    let s = TestServer::start(b).await;
    let (_, token, _) = s.register("alice", "a long password").await;
    let bytes: Vec<u8> = (0..40_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let uploads = futures_util::future::join_all(
        (0..6).map(|_| upload(&s, &token, bytes.clone(), "application/octet-stream", None)),
    )
    .await;
    let mut ids = std::collections::BTreeSet::new();
    for (status, up) in uploads {
        assert_eq!(status, StatusCode::OK, "{up}");
        let path = media_path(up["content_uri"].as_str().expect("uri"));
        assert_eq!(
            fetch(&s, &token, &format!("download/{path}"), None).await.bytes().await.expect("body").to_vec(),
            bytes
        );
        ids.insert(path);
    }
    assert_eq!(ids.len(), 6, "six ids");
    assert_eq!(stored_files(&s), 1, "one file");
}

both_engines!(
    concurrent_identical_uploads_share_one_file,
    url_previews,
    operators,
    thumbnails,
    upload_and_download,
    uploads_past_the_limit_are_413,
    files_without_a_record_are_swept_at_start,
    asynchronous_uploads
);
