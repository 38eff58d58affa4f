//! Thumbnails of uploaded pictures (JPEG, PNG, GIF, WebP), made once per size bucket and
//! kept in `media/thumbnails/` beside the originals (regenerable: not in backups).
//!
//! - **Buckets**, as the servers Element is tuned for: 32×32 and 96×96 cropped, 320×240,
//!   640×480 and 800×600 scaled. A request gets the smallest bucket of its method that
//!   covers the size asked for (the largest when none does).
//! - **Never upscaled**: a picture no larger than the bucket is answered with itself.
//! - **EXIF orientation** is applied before scaling.
//! - **Decompression bombs** are refused by their declared size ([`MAX_PIXELS`]) before a
//!   pixel is decoded, and the decoder runs under an allocation limit; a picture that
//!   cannot be decoded is a 400, never a 500.
//! - Decoding runs on blocking threads, never more at once than there are cores.

use std::{io::Cursor, path::PathBuf};

use image::{imageops::FilterType, DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits};

use super::{Media, MediaRecord};
use crate::error::{Error, Result};

/// Largest picture thumbnailed, in pixels (a 40-megapixel photo).
pub const MAX_PIXELS: u64 = 40_000_000;
/// Most memory one decode may take.
const MAX_DECODE_BYTES: u64 = 256 * 1024 * 1024;

/// How a thumbnail fits its box.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Fills the box exactly, cutting what overflows.
    Crop,
    /// Fits inside the box, keeping the aspect ratio.
    Scale,
}

impl Method {
    pub fn parse(s: Option<&str>) -> Result<Method> {
        match s {
            None | Some("scale") => Ok(Method::Scale),
            Some("crop") => Ok(Method::Crop),
            Some(other) => Err(Error::invalid_param(format!("Unknown thumbnail method {other}"))),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Method::Crop => "crop",
            Method::Scale => "scale",
        }
    }
}

const BUCKETS: &[(u32, u32, Method)] = &[
    (32, 32, Method::Crop),
    (96, 96, Method::Crop),
    (320, 240, Method::Scale),
    (640, 480, Method::Scale),
    (800, 600, Method::Scale),
];

/// The bucket a request for `width`×`height` by `method` gets.
pub fn bucket(width: u32, height: u32, method: Method) -> (u32, u32, Method) {
    let of_method: Vec<_> = BUCKETS.iter().copied().filter(|b| b.2 == method).collect();
    of_method
        .iter()
        .copied()
        .find(|(w, h, _)| *w >= width && *h >= height)
        .or_else(|| of_method.last().copied())
        .unwrap_or((800, 600, Method::Scale))
}

/// Picture types thumbnailed.
pub const PICTURE_TYPES: &[&str] = &["image/jpeg", "image/png", "image/gif", "image/webp"];

impl Media {
    /// The thumbnail of a stored picture for a request, made now if need be: (its file,
    /// its content type), or `None` when the picture is no larger than the bucket (it is
    /// then its own thumbnail). Making one makes every bucket, from one decode.
    pub async fn thumbnail(
        &self,
        record: &MediaRecord,
        width: u32,
        height: u32,
        method: Method,
    ) -> Result<Option<(PathBuf, &'static str)>> {
        let bucket = bucket(width, height, method);
        if let Some(found) = self.made(&record.sha256, bucket).await {
            touch(&found.0).await;
            return Ok(Some(found));
        }
        // No larger than the bucket: the picture is its own thumbnail (read from its header).
        let original = self.file_path(&record.sha256);
        let (w, h) = tokio::task::spawn_blocking(move || {
            ImageReader::open(original)
                .map_err(undecodable)?
                .with_guessed_format()
                .map_err(undecodable)?
                .into_dimensions()
                .map_err(undecodable)
        })
        .await
        .map_err(|e| Error::internal(format!("thumbnail task: {e}")))??;
        if w <= bucket.0 && h <= bucket.1 {
            return Ok(None);
        }
        let _turn = self.thumbnailing.take(record.sha256.clone()).await;
        // Made while this request waited for its turn?
        if let Some(found) = self.made(&record.sha256, bucket).await {
            return Ok(Some(found));
        }
        self.make_buckets(record).await?;
        Ok(self.made(&record.sha256, bucket).await)
    }

    /// Makes the thumbnails of a picture just stored, before anyone asks (as Synapse does at
    /// upload), so the first look at it is quick. Errors are only logged: the picture may
    /// not decode, and a request will say so.
    pub async fn pregenerate(&self, record: &MediaRecord) {
        let essence = record.content_type.as_deref().unwrap_or("").split(';').next().unwrap_or("").trim().to_owned();
        if !PICTURE_TYPES.contains(&essence.to_ascii_lowercase().as_str()) {
            return;
        }
        let _turn = self.thumbnailing.take(record.sha256.clone()).await;
        // A request may have made them meanwhile (the smallest is made of any picture
        // larger than it).
        if self.made(&record.sha256, BUCKETS[0]).await.is_some() {
            return;
        }
        if let Err(e) = self.make_buckets(record).await {
            tracing::debug!(sha256 = %record.sha256, error = %e, "no thumbnails made of an uploaded picture");
        }
    }

    /// The stored thumbnail of a bucket, if made (and not the picture itself).
    async fn made(&self, sha256: &str, (bw, bh, method): (u32, u32, Method)) -> Option<(PathBuf, &'static str)> {
        let stem = format!("{sha256}-{bw}x{bh}-{}", method.name());
        for (ext, kind) in [("jpg", "image/jpeg"), ("png", "image/png")] {
            let path = self.root.join("thumbnails").join(format!("{stem}.{ext}"));
            if tokio::fs::try_exists(&path).await.unwrap_or(false) {
                return Some((path, kind));
            }
        }
        None
    }

    /// Decodes the picture once and stores a thumbnail for every bucket it is larger than.
    async fn make_buckets(&self, record: &MediaRecord) -> Result<()> {
        let _turn = self.decoding.acquire().await.map_err(|_| Error::internal("shutting down"))?;
        let original = self.file_path(&record.sha256);
        let made = tokio::task::spawn_blocking(move || make(&original))
            .await
            .map_err(|e| Error::internal(format!("thumbnail task: {e}")))??;
        let dir = self.root.join("thumbnails");
        let io = |e: std::io::Error| Error::internal(format!("storing a thumbnail: {e}"));
        tokio::fs::create_dir_all(&dir).await.map_err(io)?;
        for ((bw, bh, method), (bytes, ext)) in made {
            let name = format!("{}-{bw}x{bh}-{}.{ext}", record.sha256, method.name());
            let tmp = self.root.join("tmp").join(&name);
            tokio::fs::write(&tmp, bytes).await.map_err(io)?;
            tokio::fs::rename(&tmp, dir.join(&name)).await.map_err(io)?;
        }
        Ok(())
    }
}

/// Marks a thumbnail as just served (its modification time, once a day at most), so
/// retention keeps the ones still in use.
async fn touch(path: &std::path::Path) {
    let path = path.to_owned();
    let _ = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        let now = std::time::SystemTime::now();
        let modified = std::fs::metadata(&path)?.modified()?;
        if now.duration_since(modified).unwrap_or_default() > std::time::Duration::from_secs(24 * 60 * 60) {
            std::fs::File::options().append(true).open(&path)?.set_modified(now)?;
        }
        Ok(())
    })
    .await;
}

fn undecodable(e: impl std::fmt::Display) -> Error {
    Error::matrix(http::StatusCode::BAD_REQUEST, "M_UNKNOWN", format!("Cannot make a thumbnail of this picture: {e}"))
}

/// Decodes and orients the picture once, then scales and encodes it for every bucket it is
/// larger than (see the module doc): (bucket, (bytes, extension)). Smaller buckets are
/// made from a first reduction to the largest, when it still covers them.
type Made = Vec<((u32, u32, Method), (Vec<u8>, &'static str))>;

fn make(original: &std::path::Path) -> Result<Made> {
    let data = std::fs::read(original).map_err(|e| Error::internal(format!("reading media: {e}")))?;
    let reader = || ImageReader::new(Cursor::new(&data)).with_guessed_format().map_err(undecodable);
    let (w, h) = reader()?.into_dimensions().map_err(undecodable)?;
    if u64::from(w) * u64::from(h) > MAX_PIXELS {
        return Err(undecodable(format!("{w}×{h} is more than {MAX_PIXELS} pixels")));
    }
    let larger: Vec<_> = BUCKETS.iter().copied().filter(|(bw, bh, _)| w > *bw || h > *bh).collect();
    if larger.is_empty() {
        return Ok(Vec::new());
    }
    let mut reader = reader()?;
    let mut limits = Limits::default();
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    limits.max_image_width = Some(w);
    limits.max_image_height = Some(h);
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(undecodable)?;
    let orientation = decoder.orientation().map_err(undecodable)?;
    let mut picture = DynamicImage::from_decoder(decoder).map_err(undecodable)?;
    picture.apply_orientation(orientation);
    // One reduction to twice the largest bucket, the others made from it when it covers
    // them: resampling a 12-megapixel photo five times is most of the work otherwise.
    let reduced_copy;
    let reduced = if w > 1600 || h > 1200 {
        reduced_copy = picture.thumbnail(1600, 1200);
        &reduced_copy
    } else {
        &picture
    };
    let mut made = Vec::with_capacity(larger.len());
    for (bw, bh, method) in larger {
        let source = match method {
            Method::Scale => reduced,
            // Filling the box must not enlarge the reduced copy.
            Method::Crop if reduced.width() >= bw * 2 && reduced.height() >= bh * 2 => reduced,
            Method::Crop => &picture,
        };
        let thumb = match method {
            Method::Scale => source.thumbnail(bw, bh),
            Method::Crop => source.resize_to_fill(bw, bh, FilterType::Triangle),
        };
        let mut out = Cursor::new(Vec::new());
        let ext = if thumb.color().has_alpha() {
            thumb.write_to(&mut out, ImageFormat::Png).map_err(undecodable)?;
            "png"
        } else {
            thumb.to_rgb8().write_to(&mut out, ImageFormat::Jpeg).map_err(undecodable)?;
            "jpg"
        };
        made.push(((bw, bh, method), (out.into_inner(), ext)));
    }
    Ok(made)
}
