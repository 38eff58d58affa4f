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
    /// then its own thumbnail).
    pub async fn thumbnail(
        &self,
        record: &MediaRecord,
        width: u32,
        height: u32,
        method: Method,
    ) -> Result<Option<(PathBuf, &'static str)>> {
        let (bw, bh, method) = bucket(width, height, method);
        let dir = self.root.join("thumbnails");
        let stem = format!("{}-{bw}x{bh}-{}", record.sha256, method.name());
        for (ext, kind) in [("jpg", "image/jpeg"), ("png", "image/png")] {
            let path = dir.join(format!("{stem}.{ext}"));
            if tokio::fs::try_exists(&path).await.unwrap_or(false) {
                touch(&path).await;
                return Ok(Some((path, kind)));
            }
        }
        let _turn = self.decoding.acquire().await.map_err(|_| Error::internal("shutting down"))?;
        let original = self.file_path(&record.sha256);
        let made = tokio::task::spawn_blocking(move || make(&original, bw, bh, method))
            .await
            .map_err(|e| Error::internal(format!("thumbnail task: {e}")))??;
        let Some((bytes, ext, kind)) = made else { return Ok(None) };
        let io = |e: std::io::Error| Error::internal(format!("storing a thumbnail: {e}"));
        tokio::fs::create_dir_all(&dir).await.map_err(io)?;
        let path = dir.join(format!("{stem}.{ext}"));
        let tmp = self.root.join("tmp").join(format!("{stem}.{ext}"));
        tokio::fs::write(&tmp, bytes).await.map_err(io)?;
        tokio::fs::rename(&tmp, &path).await.map_err(io)?;
        Ok(Some((path, kind)))
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

/// Decodes, orients, scales and encodes (see the module doc): (bytes, extension, type),
/// or `None` when the picture fits the box already.
fn make(
    original: &std::path::Path,
    bw: u32,
    bh: u32,
    method: Method,
) -> Result<Option<(Vec<u8>, &'static str, &'static str)>> {
    let data = std::fs::read(original).map_err(|e| Error::internal(format!("reading media: {e}")))?;
    let reader = || ImageReader::new(Cursor::new(&data)).with_guessed_format().map_err(undecodable);
    let (w, h) = reader()?.into_dimensions().map_err(undecodable)?;
    if u64::from(w) * u64::from(h) > MAX_PIXELS {
        return Err(undecodable(format!("{w}×{h} is more than {MAX_PIXELS} pixels")));
    }
    if w <= bw && h <= bh {
        return Ok(None);
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
    let thumb = match method {
        Method::Scale => picture.thumbnail(bw, bh),
        Method::Crop => picture.resize_to_fill(bw, bh, FilterType::Triangle),
    };
    let mut out = Cursor::new(Vec::new());
    if thumb.color().has_alpha() {
        thumb.write_to(&mut out, ImageFormat::Png).map_err(undecodable)?;
        Ok(Some((out.into_inner(), "png", "image/png")))
    } else {
        thumb.to_rgb8().write_to(&mut out, ImageFormat::Jpeg).map_err(undecodable)?;
        Ok(Some((out.into_inner(), "jpg", "image/jpeg")))
    }
}
