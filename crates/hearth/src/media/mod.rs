//! Media: uploaded files, stored under the data directory, and their records.
//!
//! - **Files** live in `media/` beside the database, named by the SHA-256 of their content
//!   split as Conduit 0.10 splits it by default (`media/ab/cd/<the other 60 hex digits>`):
//!   identical uploads share one file, and a Conduit media folder has the same shape.
//!   Files named by the whole hash (Hearth before this layout) are renamed at start.
//! - **An upload streams** to a temporary file while it is hashed and counted, never held
//!   whole in memory; past `max_request_size` it stops with 413. The file is fsynced, moved
//!   to its place, and its folder fsynced, *then* the record is committed durably: a 200
//!   means both are on disk. A crash can leave a file without a record (never a record
//!   without its file); [`Media::open`] sweeps such files and the temporary ones at start.
//! - **Records** (`MEDIA`, by media id) hold the hash, size, type, file name, uploader and
//!   time.
//! - **Backups** (`hearth admin backup` and the online backup) copy the files after the
//!   database's checkpoint ([`Media::backup_to`]); a restore copies them back with it.
//!
//! - **Asynchronous uploads**: `create` hands out an id (at most
//!   [`MAX_PENDING_PER_USER`] waiting per user, each for [`UNUSED_EXPIRES_MS`]); its
//!   creator uploads the content once; a download of it waits for the upload.
//!
//! - **Thumbnails** of pictures, once per size bucket ([`thumbnail`]).
//!
//! - **Other servers' media** is fetched over federation when first asked for and kept
//!   like local media (`REMOTE_MEDIA`); retention, quotas, quarantine and deletion are in
//!   [`manage`].

pub mod manage;
pub mod preview;
pub mod thumbnail;

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
    sync::Arc,
};

use futures_util::StreamExt;
use ruma::{OwnedUserId, ServerName};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::{
    error::{Error, Result},
    store::{codec::json_value, tables, Batch, KeyRange, Order, Store, Table},
    time::now_millis,
};

/// A stored upload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaRecord {
    /// SHA-256 of the content, lower-case hex: the file's name.
    pub sha256: String,
    pub size: u64,
    pub content_type: Option<String>,
    pub filename: Option<String>,
    pub uploader: OwnedUserId,
    pub created_ts: u64,
    /// Stored while `media_freeze_legacy` was on: served only through the authenticated
    /// endpoints.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub authenticated: bool,
    /// The server admin who quarantined it: never served (404), kept for inspection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quarantined_by: Option<OwnedUserId>,
    /// Last served (ms since the epoch, to the hour), for another server's media: what
    /// retention goes by. 0 for local media.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub last_access_ts: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

json_value!(MediaRecord);

/// Media id → record (local media).
pub const MEDIA: Table<String, MediaRecord> = Table::new(tables::MEDIA);

/// (server name, media id) → another server's media fetched here (its file is stored as
/// local files are, by hash).
pub const REMOTE_MEDIA: Table<(String, String), MediaRecord> = Table::new(tables::REMOTE_MEDIA);

/// An id handed out by `create` whose content is not uploaded yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingMedia {
    pub creator: OwnedUserId,
    /// Unused past this moment (ms since the epoch): the id is forgotten.
    pub expires_ts: u64,
}

json_value!(PendingMedia);

/// Media id → an id created for an asynchronous upload, not uploaded yet.
pub const PENDING_MEDIA: Table<String, PendingMedia> = Table::new(tables::PENDING_MEDIA);

/// Bytes read from a media file at a time when serving it (each read is a trip through
/// the blocking pool; tokio's default is 4 KiB).
pub const FILE_CHUNK: usize = 256 * 1024;

/// How long an id from `create` may wait for its upload.
pub const UNUSED_EXPIRES_MS: u64 = 24 * 60 * 60 * 1000;
/// Most ids one user may hold waiting for their upload (more: 429).
pub const MAX_PENDING_PER_USER: usize = 10;

/// Longest file name and content type kept.
const MAX_FILENAME_BYTES: usize = 255;
const MAX_CONTENT_TYPE_BYTES: usize = 255;

pub struct Media {
    root: PathBuf,
    store: Arc<Store>,
    /// Woken whenever an upload completes: downloads waiting for a pending id re-check.
    uploaded: tokio::sync::Notify,
    /// Pictures decoded at once (thumbnails): at most one per core.
    decoding: tokio::sync::Semaphore,
    /// Held shared from a file's placing to its record's commit, and exclusively while
    /// files are deleted: a deletion never removes a file an upload is about to name.
    files: tokio::sync::RwLock<()>,
    /// Bytes each local user has uploaded (counted at start from the records, kept up
    /// to date since): what the quota is checked against.
    usage: tokio::sync::Mutex<HashMap<OwnedUserId, u64>>,
    /// Largest upload accepted, in bytes.
    pub max_size: u64,
    /// What the operator set: quota, freeze, retention.
    pub settings: Settings,
    /// Figures for the metrics listener.
    pub counters: Arc<manage::Counters>,
    /// URL previews, when `url_preview_enabled`.
    previews: Option<preview::Previews>,
    /// Other servers' media being fetched.
    fetches: Turns<(String, String)>,
    /// Pictures being thumbnailed, by hash.
    thumbnailing: Turns<String>,
}

/// The operator's media settings (see [`crate::config::Config`]).
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// Most bytes one local user may upload; `None`: no limit.
    pub quota: Option<u64>,
    /// Mark new media authenticated-only.
    pub freeze_legacy: bool,
    /// How long remote media and thumbnails may go unread, in ms; `None`: forever.
    pub retention_ms: Option<u64>,
}

impl Settings {
    pub fn from_config(config: &crate::config::Config) -> Self {
        Settings {
            quota: (config.media_quota_mb > 0).then(|| config.media_quota_mb.saturating_mul(1024 * 1024)),
            freeze_legacy: config.media_freeze_legacy,
            retention_ms: (config.media_retention_days > 0)
                .then(|| config.media_retention_days.saturating_mul(24 * 60 * 60 * 1000)),
        }
    }
}

impl Media {
    /// The media folder beside the database (`<database_path>/media`), created if need
    /// be, with files no record names and unfinished uploads swept.
    pub fn open(database_path: &Path, store: Arc<Store>, max_size: u64, settings: Settings) -> Result<Self> {
        let root = database_path.join("media");
        std::fs::create_dir_all(root.join("tmp")).map_err(|e| Error::internal(format!("media folder: {e}")))?;
        let cores = std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get);
        let media = Media {
            root,
            store,
            uploaded: tokio::sync::Notify::new(),
            decoding: tokio::sync::Semaphore::new(cores),
            files: tokio::sync::RwLock::new(()),
            usage: tokio::sync::Mutex::new(HashMap::new()),
            max_size,
            settings,
            counters: Arc::default(),
            previews: None,
            fetches: Turns::default(),
            thumbnailing: Turns::default(),
        };
        media.sweep()?;
        Ok(media)
    }

    /// Turns URL previews on, fetching through `outbound`.
    pub fn with_previews(mut self, outbound: crate::transport::client::OutboundClient) -> Self {
        self.previews = Some(preview::Previews::new(outbound));
        self
    }

    fn file_path(&self, sha256: &str) -> PathBuf {
        self.root.join(&sha256[0..2]).join(&sha256[2..4]).join(&sha256[4..])
    }

    /// Removes unfinished uploads and files that no record names (a crash between the
    /// file's move and the record's commit).
    fn sweep(&self) -> Result<()> {
        let io = |e: std::io::Error| Error::internal(format!("sweeping media: {e}"));
        for entry in std::fs::read_dir(self.root.join("tmp")).map_err(io)? {
            let _ = std::fs::remove_file(entry.map_err(io)?.path());
        }
        let mut known = HashSet::new();
        let mut usage: HashMap<OwnedUserId, u64> = HashMap::new();
        MEDIA.scan_range(&self.store, &KeyRange::default(), Order::Ascending, |_, rec| {
            *usage.entry(rec.uploader).or_default() += rec.size;
            known.insert(rec.sha256);
            true
        })?;
        *self.usage.try_lock().map_err(|_| Error::internal("media usage in use at start"))? = usage;
        REMOTE_MEDIA.scan_range(&self.store, &KeyRange::default(), Order::Ascending, |_, rec| {
            known.insert(rec.sha256);
            true
        })?;
        let mut swept = 0;
        let mut stored = 0;
        for level1 in std::fs::read_dir(&self.root).map_err(io)? {
            let level1 = level1.map_err(io)?.path();
            if !level1.is_dir() || level1.file_name().is_some_and(|n| n == "tmp" || n == "thumbnails") {
                continue;
            }
            for level2 in std::fs::read_dir(&level1).map_err(io)? {
                let level2 = level2.map_err(io)?.path();
                if !level2.is_dir() {
                    continue;
                }
                let prefix: String =
                    [&level1, &level2].iter().filter_map(|p| p.file_name().and_then(|n| n.to_str())).collect();
                for file in std::fs::read_dir(&level2).map_err(io)? {
                    let mut file = file.map_err(io)?.path();
                    let mut name = file.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
                    // Named by the whole hash (the layout before Conduit's): renamed.
                    if name.len() == 64 && name.starts_with(&prefix) {
                        let renamed = level2.join(&name[4..]);
                        std::fs::rename(&file, &renamed).map_err(io)?;
                        file = renamed;
                        name = name[4..].to_owned();
                    }
                    let name = format!("{prefix}{name}");
                    if !known.contains(&name) {
                        let _ = std::fs::remove_file(&file);
                        swept += 1;
                    } else {
                        stored += std::fs::metadata(&file).map_or(0, |m| m.len());
                    }
                }
            }
        }
        if swept > 0 {
            tracing::info!(swept, "removed media files no record names (an upload cut short)");
        }
        self.counters.bytes_stored.store(stored, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Stores an upload streamed from `body` (see the module doc); returns its media id.
    pub async fn upload(
        &self,
        body: axum::body::Body,
        content_type: Option<String>,
        filename: Option<String>,
        uploader: OwnedUserId,
    ) -> Result<String> {
        self.store_upload(body, content_type, filename, uploader, None).await
    }

    /// An id for an upload to come (`POST /media/v1/create`): (media id, expiry).
    pub fn create(&self, creator: &ruma::UserId) -> Result<(String, u64)> {
        let now = now_millis();
        let mut mine = 0;
        let mut expired = Vec::new();
        PENDING_MEDIA.scan_range(&self.store, &KeyRange::default(), Order::Ascending, |id, p| {
            if p.expires_ts <= now {
                expired.push(id);
            } else if p.creator == creator {
                mine += 1;
            }
            true
        })?;
        if mine >= MAX_PENDING_PER_USER {
            return Err(Error::matrix(
                http::StatusCode::TOO_MANY_REQUESTS,
                "M_LIMIT_EXCEEDED",
                format!("At most {MAX_PENDING_PER_USER} uploads may be pending at once"),
            ));
        }
        let media_id = crate::random::alphanumeric(24);
        let expires_ts = now + UNUSED_EXPIRES_MS;
        let mut batch = Batch::new();
        for id in &expired {
            PENDING_MEDIA.delete(&mut batch, id.as_str());
        }
        PENDING_MEDIA.put(&mut batch, &media_id, &PendingMedia { creator: creator.to_owned(), expires_ts });
        self.store.write(batch)?;
        Ok((media_id, expires_ts))
    }

    /// The content of an id from [`Media::create`] (`PUT /media/v3/upload/…`): only by its
    /// creator, once (409 `M_CANNOT_OVERWRITE_MEDIA`), before it expires (else 404).
    pub async fn upload_created(
        &self,
        media_id: &str,
        body: axum::body::Body,
        content_type: Option<String>,
        filename: Option<String>,
        uploader: OwnedUserId,
    ) -> Result<()> {
        if MEDIA.get(&self.store, media_id)?.is_some() {
            return Err(Error::matrix(http::StatusCode::CONFLICT, "M_CANNOT_OVERWRITE_MEDIA", "Already uploaded"));
        }
        let pending = PENDING_MEDIA.get(&self.store, media_id)?.filter(|p| p.expires_ts > now_millis());
        let Some(pending) = pending else { return Err(Error::not_found("Unknown or expired media id")) };
        if pending.creator != uploader {
            return Err(Error::forbidden("Only the creator of a media id may upload its content"));
        }
        self.store_upload(body, content_type, filename, uploader, Some(media_id.to_owned())).await.map(|_| ())
    }

    /// Whether an id is waiting for its upload.
    pub fn is_pending(&self, media_id: &str) -> Result<bool> {
        Ok(PENDING_MEDIA.get(&self.store, media_id)?.is_some_and(|p| p.expires_ts > now_millis()))
    }

    /// Waits until some upload completes, or `timeout`.
    pub async fn wait_for_uploads(&self, timeout: std::time::Duration) {
        let _ = tokio::time::timeout(timeout, self.uploaded.notified()).await;
    }

    async fn store_upload(
        &self,
        body: axum::body::Body,
        content_type: Option<String>,
        filename: Option<String>,
        uploader: OwnedUserId,
        created_id: Option<String>,
    ) -> Result<String> {
        let (limit, over) = self.upload_limit(&uploader).await;
        let (mut record, _, placed) = self.keep(body, content_type, filename, uploader, limit, over).await?;
        record.authenticated = self.settings.freeze_legacy;
        let media_id = created_id.clone().unwrap_or_else(|| crate::random::alphanumeric(24));
        let mut usage = self.usage.lock().await;
        let used = usage.get(&record.uploader).copied().unwrap_or(0);
        if self.settings.quota.is_some_and(|quota| used + record.size > quota) {
            // Another upload of the same user's finished first.
            drop(usage);
            drop(placed);
            self.remove_unreferenced(vec![record.sha256]).await?;
            return Err(quota_exceeded());
        }
        // Durable before the answer (`Store::write` syncs as the durability setting says).
        let mut batch = Batch::new();
        MEDIA.put(&mut batch, &media_id, &record);
        if created_id.is_some() {
            PENDING_MEDIA.delete(&mut batch, media_id.as_str());
        }
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.write(batch)).await.map_err(|e| Error::internal(e.to_string()))??;
        usage.insert(record.uploader.clone(), used + record.size);
        drop(usage);
        drop(placed);
        self.counters.uploads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.uploaded.notify_waiters();
        Ok(media_id)
    }

    /// How many bytes `uploader` may upload now, and the error past it: the upload limit,
    /// or what is left of their quota.
    async fn upload_limit(&self, uploader: &ruma::UserId) -> (u64, fn(u64) -> Error) {
        let too_large: fn(u64) -> Error = |max| Error::too_large(format!("Uploads are limited to {max} bytes"));
        let Some(quota) = self.settings.quota else { return (self.max_size, too_large) };
        let left = quota.saturating_sub(self.usage.lock().await.get(uploader).copied().unwrap_or(0));
        if left < self.max_size {
            (left, |_| quota_exceeded())
        } else {
            (self.max_size, too_large)
        }
    }

    /// Streams `body` into `tmp`, hashing and counting; fsyncs it. Past `limit` bytes the
    /// upload stops with `over(limit)`. Returns (hash, size).
    async fn write_file(
        &self,
        body: axum::body::Body,
        tmp: &Path,
        limit: u64,
        over: fn(u64) -> Error,
    ) -> Result<(String, u64)> {
        let io = |e: std::io::Error| Error::internal(format!("writing media: {e}"));
        let mut file = tokio::fs::File::create(tmp).await.map_err(io)?;
        let mut hasher = Sha256::new();
        let mut size: u64 = 0;
        let mut stream = body.into_data_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| Error::bad_json(format!("upload interrupted: {e}")))?;
            size += chunk.len() as u64;
            if size > limit {
                drain_stream(&mut stream).await;
                return Err(over(limit));
            }
            hasher.update(&chunk);
            file.write_all(&chunk).await.map_err(io)?;
        }
        file.sync_all().await.map_err(io)?;
        let sha256 = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
        Ok((sha256, size))
    }

    /// Another server's media fetched earlier: its record and file.
    pub fn find_remote(&self, server: &ServerName, media_id: &str) -> Result<Option<(MediaRecord, PathBuf)>> {
        let Some(record) = REMOTE_MEDIA.get(&self.store, (server.as_str(), media_id))? else { return Ok(None) };
        let path = self.file_path(&record.sha256);
        Ok(Some((record, path)))
    }

    /// Keeps another server's media, streamed from it (at most the upload limit), as local
    /// files are kept; returns its record and file.
    pub async fn store_remote(
        &self,
        server: &ServerName,
        media_id: &str,
        body: axum::body::Body,
        content_type: Option<String>,
        filename: Option<String>,
    ) -> Result<(MediaRecord, PathBuf)> {
        let uploader = ruma::OwnedUserId::try_from(format!("@media:{server}"))
            .map_err(|e| Error::internal(format!("a server's media user: {e}")))?;
        let too_large: fn(u64) -> Error = |max| Error::too_large(format!("Media is limited to {max} bytes"));
        let (mut record, path, placed) =
            self.keep(body, content_type, filename, uploader, self.max_size, too_large).await?;
        record.authenticated = self.settings.freeze_legacy;
        record.last_access_ts = record.created_ts;
        let mut batch = Batch::new();
        REMOTE_MEDIA.put(&mut batch, (server.as_str(), media_id), &record);
        self.store.write(batch)?;
        drop(placed);
        Ok((record, path))
    }

    /// Keeps something Hearth fetched on a user's behalf (a URL preview's picture) as their
    /// local media; it counts towards their usage but is not refused by their quota.
    pub async fn store_fetched(
        &self,
        bytes: bytes::Bytes,
        content_type: Option<String>,
        filename: Option<String>,
        owner: &ruma::UserId,
    ) -> Result<String> {
        let too_large: fn(u64) -> Error = |max| Error::too_large(format!("Media is limited to {max} bytes"));
        let body = axum::body::Body::from(bytes);
        let (mut record, _, placed) =
            self.keep(body, content_type, filename, owner.to_owned(), self.max_size, too_large).await?;
        record.authenticated = self.settings.freeze_legacy;
        let media_id = crate::random::alphanumeric(24);
        let mut usage = self.usage.lock().await;
        let mut batch = Batch::new();
        MEDIA.put(&mut batch, &media_id, &record);
        self.store.write(batch)?;
        *usage.entry(record.uploader).or_default() += record.size;
        drop(placed);
        Ok(media_id)
    }

    /// Writes a body to its file (see the module doc) and describes it: the record to
    /// commit, the file's place, and the guard to hold until the record is committed (no
    /// deletion removes the file meanwhile).
    async fn keep(
        &self,
        body: axum::body::Body,
        content_type: Option<String>,
        filename: Option<String>,
        uploader: OwnedUserId,
        limit: u64,
        over: fn(u64) -> Error,
    ) -> Result<(MediaRecord, PathBuf, tokio::sync::RwLockReadGuard<'_, ()>)> {
        // Removed if this is dropped before the file is placed: an error, or a caller that
        // gave up (a time-out, a client gone).
        let tmp = TmpFile(self.root.join("tmp").join(crate::random::alphanumeric(24)));
        let (sha256, size) = self.write_file(body, &tmp.0, limit, over).await?;
        let placed = self.files.read().await;
        let path = self.place(&tmp.0, &sha256, size).await?;
        let record = MediaRecord {
            sha256,
            size,
            content_type: content_type.filter(|t| t.len() <= MAX_CONTENT_TYPE_BYTES),
            filename: filename.filter(|n| n.len() <= MAX_FILENAME_BYTES),
            uploader,
            created_ts: now_millis(),
            authenticated: false,
            quarantined_by: None,
            last_access_ts: 0,
        };
        Ok((record, path, placed))
    }

    /// Moves a written temporary file to its place by hash (or drops it when the same bytes
    /// are there already) and syncs the folder; returns the place.
    async fn place(&self, tmp: &Path, sha256: &str, size: u64) -> Result<PathBuf> {
        let path = self.file_path(sha256);
        let io = |e: std::io::Error| Error::internal(format!("storing media: {e}"));
        let dir = path.parent().ok_or_else(|| Error::internal("media path without a folder"))?.to_owned();
        tokio::fs::create_dir_all(&dir).await.map_err(io)?;
        if tokio::fs::try_exists(&path).await.map_err(io)? {
            let _ = tokio::fs::remove_file(tmp).await;
        } else {
            tokio::fs::rename(tmp, &path).await.map_err(io)?;
            self.counters.bytes_stored.fetch_add(size, std::sync::atomic::Ordering::Relaxed);
        }
        sync_dir(&dir).await.map_err(io)?;
        Ok(path)
    }

    /// A local upload's record and the path of its file; 404 for anything else.
    pub fn find(&self, own: &ServerName, server: &ServerName, media_id: &str) -> Result<(MediaRecord, PathBuf)> {
        if server != own {
            return Err(Error::not_found("Media of other servers is not served yet"));
        }
        let record = MEDIA.get(&self.store, media_id)?.filter(|r| r.quarantined_by.is_none());
        let record = record.ok_or_else(|| Error::not_found("Media not found"))?;
        let path = self.file_path(&record.sha256);
        Ok((record, path))
    }
}

/// How much of a refused upload is still read (and dropped) before the 413: enough for a
/// client to finish sending a modest overshoot and read the answer; past it the
/// connection is closed.
const DRAIN_BYTES: usize = 1024 * 1024;

/// Reads and drops up to [`DRAIN_BYTES`] of a body.
pub async fn drain(body: axum::body::Body) {
    drain_stream(&mut body.into_data_stream()).await;
}

async fn drain_stream(stream: &mut axum::body::BodyDataStream) {
    let mut read = 0;
    while read < DRAIN_BYTES {
        match stream.next().await {
            Some(Ok(chunk)) => read += chunk.len(),
            _ => break,
        }
    }
}

impl Media {
    /// Copies every stored file into `dest/media`, for a backup. Run *after* the
    /// database's checkpoint: a record in the checkpoint has its file written before it,
    /// so the copy holds every file the checkpoint names (perhaps a few more, swept when
    /// the backup is started). Files never change once written.
    pub fn backup_to(&self, dest: &Path) -> Result<()> {
        let io = |e: std::io::Error| Error::internal(format!("backing up media: {e}"));
        let target = dest.join("media");
        for l1 in std::fs::read_dir(&self.root).map_err(io)? {
            let l1 = l1.map_err(io)?;
            // Thumbnails are made again on demand: not worth the backup's space.
            if l1.file_name() == "tmp" || l1.file_name() == "thumbnails" || !l1.file_type().map_err(io)?.is_dir() {
                continue;
            }
            for l2 in std::fs::read_dir(l1.path()).map_err(io)? {
                let l2 = l2.map_err(io)?;
                let dir = target.join(l1.file_name()).join(l2.file_name());
                std::fs::create_dir_all(&dir).map_err(io)?;
                for file in std::fs::read_dir(l2.path()).map_err(io)? {
                    let file = file.map_err(io)?;
                    std::fs::copy(file.path(), dir.join(file.file_name())).map_err(io)?;
                }
            }
        }
        std::fs::create_dir_all(target.join("tmp")).map_err(io)?;
        Ok(())
    }
}

/// A temporary file, removed when dropped (once placed, it is gone already).
struct TmpFile(PathBuf);

impl Drop for TmpFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// One piece of work at a time per key (a remote item's fetch, a picture's thumbnails):
/// the others wait for it, then find its result stored.
pub struct Turns<K>(parking_lot::Mutex<HashMap<K, Arc<tokio::sync::Mutex<()>>>>);

impl<K> Default for Turns<K> {
    fn default() -> Self {
        Turns(parking_lot::Mutex::default())
    }
}

impl<K: std::hash::Hash + Eq> Turns<K> {
    /// Waits for `key`'s turn; it ends when the returned guard is dropped.
    pub async fn take(&self, key: K) -> Turn<'_, K> {
        let lock = self.0.lock().entry(key).or_default().clone();
        Turn { turns: self, _guard: lock.lock_owned().await }
    }
}

/// A turn of [`Turns`]; ends when dropped.
pub struct Turn<'a, K: std::hash::Hash + Eq> {
    turns: &'a Turns<K>,
    _guard: tokio::sync::OwnedMutexGuard<()>,
}

impl<K: std::hash::Hash + Eq> Drop for Turn<'_, K> {
    fn drop(&mut self) {
        // Forget the keys no one else waits for (only the map still holds their lock).
        self.turns.0.lock().retain(|_, lock| Arc::strong_count(lock) > 1);
    }
}

impl Media {
    /// Waits for the turn to fetch `server`'s `media_id`: concurrent asks for the same item
    /// fetch it once.
    pub async fn fetch_turn(&self, server: &ServerName, media_id: &str) -> Turn<'_, (String, String)> {
        self.fetches.take((server.to_string(), media_id.to_owned())).await
    }
}

/// Past a user's quota (`media_quota_mb`), as Synapse words it.
fn quota_exceeded() -> Error {
    Error::matrix(
        http::StatusCode::BAD_REQUEST,
        "M_RESOURCE_LIMIT_EXCEEDED",
        "Media upload limit exceeded: this account's media quota is used up",
    )
}

/// fsyncs a folder, so a file moved into it survives a crash.
async fn sync_dir(dir: &Path) -> std::io::Result<()> {
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || std::fs::File::open(&dir)?.sync_all()).await.map_err(std::io::Error::other)?
}
