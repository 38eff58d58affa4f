//! The file-system side of a volume: making its directory inside a share, removing, archiving or keeping it when the
//! volume goes, and the share's free space.
//!
//! Every operation walks the [`VolumePath`] one component at a time from the share's root, so that a symlink on the
//! way (planted by anyone who can write to the share) is noticed: one whose target resolves outside the share is
//! refused, and nothing is created or removed through it. The walk is not atomic against a concurrent attacker who
//! swaps a directory for a symlink between check and use; the share's writers are the cluster's own pods.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::path_pattern::VolumePath;

/// Mode and owner of a newly made volume directory (StorageClass parameters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirPermissions {
    pub mode: u32,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

impl Default for DirPermissions {
    fn default() -> Self {
        DirPermissions { mode: 0o755, uid: None, gid: None }
    }
}

/// What happens to a volume's directory when its PV is deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnDelete {
    Delete,
    Retain,
    /// Renamed to `archived-<name>-<UTC timestamp>` beside where it was.
    Archive,
}

/// What a delete did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeleteOutcome {
    Removed,
    Retained,
    Archived(PathBuf),
    /// There was nothing to remove: counts as success.
    AlreadyGone,
}

#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    #[error("the share's root {root} is not usable: {source}")]
    Root { root: String, source: io::Error },
    #[error("{path} is a symlink that leads outside the share")]
    SymlinkEscape { path: String },
    #[error("{path} exists and is not a directory")]
    NotADirectory { path: String },
    #[error("cannot {what} {path}: {source}")]
    Io { what: &'static str, path: String, source: io::Error },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ShareError + 'a {
    move |source| ShareError::Io { what, path: path.display().to_string(), source }
}

/// Makes the volume's directory (and any missing parents, with the same mode and owner) and returns its path inside
/// the pod. An existing directory is accepted as it is, so a retried provisioning reuses it.
pub fn create_volume_dir(root: &Path, rel: &VolumePath, perms: DirPermissions) -> Result<PathBuf, ShareError> {
    let root = canonical_root(root)?;
    let mut current = root.clone();
    for part in rel.components() {
        let next = current.join(part);
        match fs::symlink_metadata(&next) {
            Ok(meta) if meta.file_type().is_symlink() => current = follow_inside(&root, &next)?,
            Ok(meta) if meta.is_dir() => current = next,
            Ok(_) => return Err(ShareError::NotADirectory { path: next.display().to_string() }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                make_dir(&next, perms)?;
                current = next;
            }
            Err(e) => return Err(io_err("inspect", &next)(e)),
        }
    }
    Ok(current)
}

fn make_dir(path: &Path, perms: DirPermissions) -> Result<(), ShareError> {
    match fs::DirBuilder::new().mode(perms.mode).create(path) {
        Ok(()) => {}
        // Another attempt made it between our look and our mkdir: fine if it is a directory.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => return Ok(()),
        Err(e) => return Err(io_err("create", path)(e)),
    }
    // The umask may have narrowed the mode given to mkdir.
    fs::set_permissions(path, fs::Permissions::from_mode(perms.mode)).map_err(io_err("set the mode of", path))?;
    if perms.uid.is_some() || perms.gid.is_some() {
        std::os::unix::fs::lchown(path, perms.uid, perms.gid).map_err(io_err("change the owner of", path))?;
    }
    Ok(())
}

/// Removes, archives or keeps the volume's directory. A directory that is not there counts as success.
pub fn remove_volume_dir(
    root: &Path,
    rel: &VolumePath,
    action: OnDelete,
    timestamp: &str,
) -> Result<DeleteOutcome, ShareError> {
    let root = canonical_root(root)?;
    let Some(dir) = existing_inside(&root, rel)? else {
        return Ok(DeleteOutcome::AlreadyGone);
    };
    match action {
        OnDelete::Retain => Ok(DeleteOutcome::Retained),
        OnDelete::Delete => match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(DeleteOutcome::Removed),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(DeleteOutcome::AlreadyGone),
            Err(e) => Err(io_err("remove", &dir)(e)),
        },
        OnDelete::Archive => {
            let target = archive_target(&dir, timestamp);
            fs::rename(&dir, &target).map_err(io_err("archive", &dir))?;
            Ok(DeleteOutcome::Archived(target))
        }
    }
}

/// `archived-<name>-<timestamp>` beside `dir`, with a counter if that name is taken.
fn archive_target(dir: &Path, timestamp: &str) -> PathBuf {
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let parent = dir.parent().unwrap_or(dir);
    let base = format!("archived-{name}-{timestamp}");
    let mut candidate = parent.join(&base);
    let mut n = 1;
    while fs::symlink_metadata(&candidate).is_ok() {
        candidate = parent.join(format!("{base}-{n}"));
        n += 1;
    }
    candidate
}

/// The volume's directory if it exists, having checked that no symlink on the way leads out of the share. The last
/// component itself, if a symlink, is returned unresolved so that removing it removes the link, not its target.
fn existing_inside(root: &Path, rel: &VolumePath) -> Result<Option<PathBuf>, ShareError> {
    let mut current = root.to_path_buf();
    let parts = rel.components();
    for (i, part) in parts.iter().enumerate() {
        let next = current.join(part);
        let last = i + 1 == parts.len();
        match fs::symlink_metadata(&next) {
            Ok(meta) if meta.file_type().is_symlink() => {
                let resolved = follow_inside(root, &next)?;
                current = if last { next } else { resolved };
            }
            Ok(meta) if meta.is_dir() || last => current = next,
            Ok(_) => return Err(ShareError::NotADirectory { path: next.display().to_string() }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("inspect", &next)(e)),
        }
    }
    Ok(Some(current))
}

/// Resolves a symlink and insists that its target is inside `root` (already canonical).
fn follow_inside(root: &Path, link: &Path) -> Result<PathBuf, ShareError> {
    match fs::canonicalize(link) {
        Ok(target) if target.starts_with(root) => Ok(target),
        // A dangling link, or one that leads elsewhere: either way not a place to put a volume.
        _ => Err(ShareError::SymlinkEscape { path: link.display().to_string() }),
    }
}

fn canonical_root(root: &Path) -> Result<PathBuf, ShareError> {
    let canonical =
        fs::canonicalize(root).map_err(|source| ShareError::Root { root: root.display().to_string(), source })?;
    if !canonical.is_dir() {
        return Err(ShareError::Root {
            root: root.display().to_string(),
            source: io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
        });
    }
    Ok(canonical)
}

/// Bytes available to an unprivileged writer on the share's file system.
pub fn free_bytes(root: &Path) -> Result<u64, ShareError> {
    let stat = rustix::fs::statvfs(root)
        .map_err(|e| ShareError::Root { root: root.display().to_string(), source: io::Error::from(e) })?;
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn rel(s: &str) -> VolumePath {
        VolumePath::parse(s).unwrap()
    }

    fn mode_of(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn creates_nested_directory_with_0755_by_default() {
        let share = tempfile::tempdir().unwrap();
        let dir = create_volume_dir(share.path(), &rel("ns/claim"), DirPermissions::default()).unwrap();
        assert_eq!(dir, share.path().canonicalize().unwrap().join("ns/claim"));
        assert_eq!(mode_of(&dir), 0o755);
        assert_eq!(mode_of(&share.path().join("ns")), 0o755);
    }

    #[test]
    fn mode_from_parameters_is_applied_despite_umask() {
        let share = tempfile::tempdir().unwrap();
        let perms = DirPermissions { mode: 0o2775, ..DirPermissions::default() };
        let dir = create_volume_dir(share.path(), &rel("v"), perms).unwrap();
        assert_eq!(mode_of(&dir), 0o2775);
    }

    #[test]
    fn owner_from_parameters_is_applied() {
        let share = tempfile::tempdir().unwrap();
        // Our own ids: changing to them works without privileges and still exercises the call.
        let meta = fs::metadata(share.path()).unwrap();
        let (uid, gid) = (std::os::unix::fs::MetadataExt::uid(&meta), std::os::unix::fs::MetadataExt::gid(&meta));
        let perms = DirPermissions { mode: 0o750, uid: Some(uid), gid: Some(gid) };
        let dir = create_volume_dir(share.path(), &rel("owned"), perms).unwrap();
        let meta = fs::metadata(dir).unwrap();
        assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), uid);
        assert_eq!(std::os::unix::fs::MetadataExt::gid(&meta), gid);
    }

    #[test]
    fn existing_directory_is_reused() {
        let share = tempfile::tempdir().unwrap();
        fs::create_dir(share.path().join("v")).unwrap();
        fs::write(share.path().join("v/data"), b"kept").unwrap();
        let dir = create_volume_dir(share.path(), &rel("v"), DirPermissions::default()).unwrap();
        assert_eq!(fs::read(dir.join("data")).unwrap(), b"kept");
    }

    #[test]
    fn symlink_leading_outside_is_refused_and_nothing_is_created_there() {
        let share = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        symlink(outside.path(), share.path().join("escape")).unwrap();
        let err = create_volume_dir(share.path(), &rel("escape/v"), DirPermissions::default()).unwrap_err();
        assert!(matches!(err, ShareError::SymlinkEscape { .. }), "{err}");
        assert!(!outside.path().join("v").exists());
    }

    #[test]
    fn dangling_symlink_is_refused() {
        let share = tempfile::tempdir().unwrap();
        symlink("/nonexistent/target", share.path().join("dangling")).unwrap();
        let err = create_volume_dir(share.path(), &rel("dangling/v"), DirPermissions::default()).unwrap_err();
        assert!(matches!(err, ShareError::SymlinkEscape { .. }), "{err}");
    }

    #[test]
    fn symlink_staying_inside_is_followed() {
        let share = tempfile::tempdir().unwrap();
        fs::create_dir(share.path().join("real")).unwrap();
        symlink("real", share.path().join("alias")).unwrap();
        let dir = create_volume_dir(share.path(), &rel("alias/v"), DirPermissions::default()).unwrap();
        assert!(share.path().join("real/v").is_dir());
        assert_eq!(dir, share.path().canonicalize().unwrap().join("real/v"));
    }

    #[test]
    fn file_in_the_way_is_refused() {
        let share = tempfile::tempdir().unwrap();
        fs::write(share.path().join("f"), b"").unwrap();
        let err = create_volume_dir(share.path(), &rel("f/v"), DirPermissions::default()).unwrap_err();
        assert!(matches!(err, ShareError::NotADirectory { .. }), "{err}");
    }

    #[test]
    fn missing_share_root_is_named() {
        let err = create_volume_dir(Path::new("/nonexistent/share"), &rel("v"), DirPermissions::default()).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/share"), "{err}");
    }

    #[test]
    fn delete_removes_nested_directory_and_keeps_its_parent() {
        let share = tempfile::tempdir().unwrap();
        fs::create_dir_all(share.path().join("ns/claim/sub")).unwrap();
        fs::write(share.path().join("ns/claim/sub/f"), b"x").unwrap();
        let out = remove_volume_dir(share.path(), &rel("ns/claim"), OnDelete::Delete, "t").unwrap();
        assert_eq!(out, DeleteOutcome::Removed);
        assert!(!share.path().join("ns/claim").exists());
        assert!(share.path().join("ns").is_dir());
    }

    #[test]
    fn missing_directory_counts_as_deleted() {
        let share = tempfile::tempdir().unwrap();
        for action in [OnDelete::Delete, OnDelete::Archive, OnDelete::Retain] {
            assert_eq!(remove_volume_dir(share.path(), &rel("a/b"), action, "t").unwrap(), DeleteOutcome::AlreadyGone);
        }
    }

    #[test]
    fn retain_leaves_data() {
        let share = tempfile::tempdir().unwrap();
        fs::create_dir(share.path().join("v")).unwrap();
        fs::write(share.path().join("v/f"), b"x").unwrap();
        assert_eq!(remove_volume_dir(share.path(), &rel("v"), OnDelete::Retain, "t").unwrap(), DeleteOutcome::Retained);
        assert_eq!(fs::read(share.path().join("v/f")).unwrap(), b"x");
    }

    #[test]
    fn archive_renames_beside_with_timestamp_and_never_overwrites() {
        let share = tempfile::tempdir().unwrap();
        let root = share.path().canonicalize().unwrap();
        fs::create_dir_all(root.join("ns/v")).unwrap();
        fs::write(root.join("ns/v/f"), b"1").unwrap();
        let out = remove_volume_dir(&root, &rel("ns/v"), OnDelete::Archive, "20261206T220000Z").unwrap();
        assert_eq!(out, DeleteOutcome::Archived(root.join("ns/archived-v-20261206T220000Z")));
        assert_eq!(fs::read(root.join("ns/archived-v-20261206T220000Z/f")).unwrap(), b"1");
        fs::create_dir_all(root.join("ns/v")).unwrap();
        let out = remove_volume_dir(&root, &rel("ns/v"), OnDelete::Archive, "20261206T220000Z").unwrap();
        assert_eq!(out, DeleteOutcome::Archived(root.join("ns/archived-v-20261206T220000Z-1")));
    }

    #[test]
    fn delete_through_escaping_symlink_is_refused_and_target_survives() {
        let share = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        fs::create_dir(outside.path().join("v")).unwrap();
        symlink(outside.path(), share.path().join("escape")).unwrap();
        let err = remove_volume_dir(share.path(), &rel("escape/v"), OnDelete::Delete, "t").unwrap_err();
        assert!(matches!(err, ShareError::SymlinkEscape { .. }), "{err}");
        assert!(outside.path().join("v").is_dir());
    }

    #[test]
    fn deleting_a_volume_that_is_an_inside_symlink_removes_only_the_link() {
        let share = tempfile::tempdir().unwrap();
        fs::create_dir(share.path().join("real")).unwrap();
        fs::write(share.path().join("real/f"), b"x").unwrap();
        symlink("real", share.path().join("v")).unwrap();
        assert_eq!(remove_volume_dir(share.path(), &rel("v"), OnDelete::Delete, "t").unwrap(), DeleteOutcome::Removed);
        assert!(fs::symlink_metadata(share.path().join("v")).is_err());
        assert!(share.path().join("real/f").exists());
    }

    #[test]
    fn free_space_of_a_real_directory_is_reported() {
        let share = tempfile::tempdir().unwrap();
        assert!(free_bytes(share.path()).is_ok());
        assert!(free_bytes(Path::new("/nonexistent/share")).is_err());
    }
}
