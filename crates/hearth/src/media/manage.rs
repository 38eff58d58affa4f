//! Looking after stored media, for operators: quarantine, deleting one item or all of a
//! user's, retention of other servers' media and of thumbnails by last access, and the
//! figures the metrics listener shows.
//!
//! Files are shared by every record naming the same content, so a record's deletion
//! removes its file only when no other record names it ([`Media::remove_unreferenced`],
//! under the exclusive side of the files lock an upload holds shared from placing its file
//! to committing its record). Thumbnails go with their original.
//!
//! Retention ([`Media::tidy`], hourly while `media_retention_days` is set) removes other
//! servers' media not served for that long (fetched again when next asked for) and
//! thumbnails not served for that long (made again). Local uploads, avatars among them,
//! are removed only by an admin.

use std::{
    collections::HashSet,
    path::PathBuf,
    sync::{atomic::AtomicU64, atomic::Ordering, Arc},
    time::{Duration, SystemTime},
};

use ruma::{ServerName, UserId};

use super::{Media, MediaRecord, MEDIA, PENDING_MEDIA, REMOTE_MEDIA};
use crate::{
    error::{Error, Result},
    store::{Batch, KeyRange, Order},
    time::now_millis,
};

/// How often a served item's last access is written down: at most once per this.
const ACCESS_GRANULARITY_MS: u64 = 60 * 60 * 1000;

/// Counters and gauges for the metrics listener.
#[derive(Debug, Default)]
pub struct Counters {
    /// Bytes of the original files under `media/` (shared files counted once).
    pub bytes_stored: AtomicU64,
    /// Uploads stored since start.
    pub uploads: AtomicU64,
    /// Downloads and thumbnails served since start.
    pub downloads: AtomicU64,
}

/// Which record a media id names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    Local(String),
    Remote(String, String),
}

impl Media {
    /// The record of `mxc://server/media_id`, local or fetched from its server.
    pub fn record(
        &self,
        own: &ServerName,
        server: &ServerName,
        media_id: &str,
    ) -> Result<Option<(Stored, MediaRecord)>> {
        if server == own {
            return Ok(MEDIA.get(&self.store, media_id)?.map(|r| (Stored::Local(media_id.to_owned()), r)));
        }
        let key = (server.as_str(), media_id);
        Ok(REMOTE_MEDIA.get(&self.store, key)?.map(|r| (Stored::Remote(server.to_string(), media_id.to_owned()), r)))
    }

    /// Notes that another server's media was served now (to the hour): retention goes by it.
    pub fn touch_remote(&self, server: &ServerName, media_id: &str, record: &MediaRecord) -> Result<()> {
        let now = now_millis();
        if now.saturating_sub(record.last_access_ts) < ACCESS_GRANULARITY_MS {
            return Ok(());
        }
        let mut batch = Batch::new();
        REMOTE_MEDIA.put(
            &mut batch,
            (server.as_str(), media_id),
            &MediaRecord { last_access_ts: now, ..record.clone() },
        );
        self.store.write(batch)?;
        Ok(())
    }

    /// Deletes one item (its record; its file and thumbnails unless other records share
    /// them). Whether there was such an item.
    pub async fn delete(&self, own: &ServerName, server: &ServerName, media_id: &str) -> Result<bool> {
        let Some((stored, record)) = self.record(own, server, media_id)? else { return Ok(false) };
        self.delete_records(vec![(stored, record)]).await?;
        Ok(true)
    }

    /// Every local upload of `user`, newest first: (media id, record).
    pub fn uploads_of(&self, user: &UserId) -> Result<Vec<(String, MediaRecord)>> {
        let mut found = Vec::new();
        MEDIA.scan_range(&self.store, &KeyRange::default(), Order::Ascending, |id, record| {
            if record.uploader == user {
                found.push((id, record));
            }
            true
        })?;
        found.sort_by(|a, b| b.1.created_ts.cmp(&a.1.created_ts).then_with(|| a.0.cmp(&b.0)));
        Ok(found)
    }

    /// Deletes every local upload of `user`; returns their media ids.
    pub async fn delete_uploads_of(&self, user: &UserId) -> Result<Vec<String>> {
        let uploads = self.uploads_of(user)?;
        let ids = uploads.iter().map(|(id, _)| id.clone()).collect();
        self.delete_records(uploads.into_iter().map(|(id, r)| (Stored::Local(id), r)).collect()).await?;
        Ok(ids)
    }

    /// Quarantines (`by` an admin) or releases (`None`) an item and every stored item with
    /// the same content: quarantined media is never served. Whether there was such an item.
    pub fn set_quarantined(
        &self,
        own: &ServerName,
        server: &ServerName,
        media_id: &str,
        by: Option<&UserId>,
    ) -> Result<bool> {
        let Some((_, record)) = self.record(own, server, media_id)? else { return Ok(false) };
        let by = by.map(ToOwned::to_owned);
        let mut batch = Batch::new();
        MEDIA.scan_range(&self.store, &KeyRange::default(), Order::Ascending, |id, r| {
            if r.sha256 == record.sha256 && r.quarantined_by != by {
                MEDIA.put(&mut batch, &id, &MediaRecord { quarantined_by: by.clone(), ..r });
            }
            true
        })?;
        REMOTE_MEDIA.scan_range(&self.store, &KeyRange::default(), Order::Ascending, |(srv, id), r| {
            if r.sha256 == record.sha256 && r.quarantined_by != by {
                let key = (srv.as_str(), id.as_str());
                REMOTE_MEDIA.put(&mut batch, key, &MediaRecord { quarantined_by: by.clone(), ..r });
            }
            true
        })?;
        self.store.write(batch)?;
        Ok(true)
    }

    /// Removes other servers' media last served before `before_ts` (ms since the epoch);
    /// returns how many items went.
    pub async fn purge_remote(&self, before_ts: u64) -> Result<usize> {
        let mut old = Vec::new();
        REMOTE_MEDIA.scan_range(&self.store, &KeyRange::default(), Order::Ascending, |(server, id), r| {
            if r.last_access_ts.max(r.created_ts) < before_ts {
                old.push((Stored::Remote(server, id), r));
            }
            true
        })?;
        let n = old.len();
        self.delete_records(old).await?;
        Ok(n)
    }

    /// Removes thumbnails not served since `before` (they are made again when asked for);
    /// returns how many went.
    pub async fn purge_thumbnails(&self, before: SystemTime) -> Result<usize> {
        let dir = self.root.join("thumbnails");
        tokio::task::spawn_blocking(move || {
            let mut removed = 0;
            let Ok(entries) = std::fs::read_dir(&dir) else { return Ok(0) };
            for entry in entries.flatten() {
                let old = entry.metadata().and_then(|m| m.modified()).is_ok_and(|t| t < before);
                if old && std::fs::remove_file(entry.path()).is_ok() {
                    removed += 1;
                }
            }
            Ok(removed)
        })
        .await
        .map_err(|e| Error::internal(format!("purging thumbnails: {e}")))?
    }

    /// One round of housekeeping: expired asynchronous-upload ids and URL previews, and with retention on,
    /// old remote media and thumbnails.
    pub async fn tidy(&self) -> Result<()> {
        let now = now_millis();
        let mut batch = Batch::new();
        PENDING_MEDIA.scan_range(&self.store, &KeyRange::default(), Order::Ascending, |id, p| {
            if p.expires_ts <= now {
                PENDING_MEDIA.delete(&mut batch, id.as_str());
            }
            true
        })?;
        self.store.write(batch)?;
        self.forget_old_previews()?;
        if let Some(keep) = self.settings.retention_ms {
            let cutoff = now.saturating_sub(keep);
            let media = self.purge_remote(cutoff).await?;
            let before = SystemTime::UNIX_EPOCH + Duration::from_millis(cutoff);
            let thumbnails = self.purge_thumbnails(before).await?;
            if media + thumbnails > 0 {
                tracing::info!(media, thumbnails, "media retention: removed what was not served for a while");
            }
        }
        Ok(())
    }

    /// Deletes records, then the files and thumbnails no remaining record names.
    async fn delete_records(&self, records: Vec<(Stored, MediaRecord)>) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let mut batch = Batch::new();
        let mut usage = self.usage.lock().await;
        for (stored, record) in &records {
            match stored {
                Stored::Local(id) => {
                    MEDIA.delete(&mut batch, id.as_str());
                    if let Some(used) = usage.get_mut(&record.uploader) {
                        *used = used.saturating_sub(record.size);
                    }
                }
                Stored::Remote(server, id) => REMOTE_MEDIA.delete(&mut batch, (server.as_str(), id.as_str())),
            }
        }
        self.store.write(batch)?;
        drop(usage);
        self.remove_unreferenced(records.into_iter().map(|(_, r)| r.sha256).collect()).await
    }

    /// Removes the files (and thumbnails) of these hashes that no record names any more.
    pub(super) async fn remove_unreferenced(&self, hashes: Vec<String>) -> Result<()> {
        let _exclusive = self.files.write().await;
        let mut unreferenced: HashSet<String> = hashes.into_iter().collect();
        MEDIA.scan_range(&self.store, &KeyRange::default(), Order::Ascending, |_, r| {
            unreferenced.remove(&r.sha256);
            !unreferenced.is_empty()
        })?;
        REMOTE_MEDIA.scan_range(&self.store, &KeyRange::default(), Order::Ascending, |_, r| {
            unreferenced.remove(&r.sha256);
            !unreferenced.is_empty()
        })?;
        if unreferenced.is_empty() {
            return Ok(());
        }
        let files: Vec<PathBuf> = unreferenced.iter().map(|sha| self.file_path(sha)).collect();
        let thumbnails = self.root.join("thumbnails");
        let counters = self.counters.clone();
        tokio::task::spawn_blocking(move || {
            for file in files {
                if let Ok(meta) = std::fs::metadata(&file) {
                    if std::fs::remove_file(&file).is_ok() {
                        let _ = counters
                            .bytes_stored
                            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| Some(n.saturating_sub(meta.len())));
                    }
                }
            }
            let Ok(entries) = std::fs::read_dir(&thumbnails) else { return };
            for entry in entries.flatten() {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if name.split('-').next().is_some_and(|sha| unreferenced.contains(sha)) {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        })
        .await
        .map_err(|e| Error::internal(format!("removing media files: {e}")))
    }
}

/// Runs [`Media::tidy`] hourly until `stop`.
pub async fn keep_tidy(media: Arc<Media>, mut stop: tokio::sync::oneshot::Receiver<()>) {
    let mut every = tokio::time::interval(Duration::from_secs(60 * 60));
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = every.tick() => {
                if let Err(e) = media.tidy().await {
                    tracing::warn!(error = %e, "media housekeeping failed; trying again in an hour");
                }
            }
        }
    }
}
