//! Where inside a share a volume's directory goes: the StorageClass's `pathPattern`, expanded from the claim, then
//! normalised into a [`VolumePath`] that cannot leave the share.
//!
//! Placeholders, as nfs-subdir-external-provisioner defines them: `${.PVC.namespace}`, `${.PVC.name}`,
//! `${.PVC.labels.<key>}`, `${.PVC.annotations.<key>}`, and `${.PV.name}`. A label or annotation the claim does not
//! carry expands to nothing (as in nfs-subdir); any other placeholder is an error. An empty expansion, or no pattern,
//! gives nfs-subdir's default `<namespace>-<claim name>-<PV name>`.
//!
//! The expansion comes partly from the claim's author (labels and annotations), so it is hostile input. Normalising
//! refuses an absolute path, a NUL byte, a `..` that climbs above the share's root, and a result that is the root
//! itself. Symlinks are the file system's business and are checked when the directory is made (`share.rs`).

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

/// What a pattern may refer to.
#[derive(Debug, Clone, Default)]
pub struct PatternInput<'a> {
    pub namespace: &'a str,
    pub claim_name: &'a str,
    pub labels: Option<&'a BTreeMap<String, String>>,
    pub annotations: Option<&'a BTreeMap<String, String>>,
    pub pv_name: &'a str,
}

/// Why a path was refused; the message goes into the claim's `ProvisioningFailed` event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("pathPattern has a '${{' without its closing '}}'")]
    Unterminated,
    #[error("pathPattern names {0:?}, which is not one of .PVC.namespace, .PVC.name, .PVC.labels.<key>, .PVC.annotations.<key>, .PV.name")]
    UnknownPlaceholder(String),
    #[error("the volume path {0:?} is absolute; it must be relative to the share")]
    Absolute(String),
    #[error("the volume path contains a NUL byte")]
    Nul,
    #[error("the volume path {0:?} climbs out of the share with '..'")]
    ClimbsOut(String),
    #[error("the volume path {0:?} is the share's root itself")]
    Root(String),
}

/// A normalised, non-empty path relative to a share's root, with no `.`, `..` or empty components.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumePath(Vec<String>);

impl VolumePath {
    /// Normalises `raw` lexically. `a/../b` is `b`; `../b` is refused.
    pub fn parse(raw: &str) -> Result<VolumePath, PathError> {
        if raw.contains('\0') {
            return Err(PathError::Nul);
        }
        if raw.starts_with('/') {
            return Err(PathError::Absolute(raw.to_owned()));
        }
        let mut parts: Vec<String> = Vec::new();
        for part in raw.split('/') {
            match part {
                "" | "." => {}
                ".." => {
                    if parts.pop().is_none() {
                        return Err(PathError::ClimbsOut(raw.to_owned()));
                    }
                }
                p => parts.push(p.to_owned()),
            }
        }
        if parts.is_empty() {
            return Err(PathError::Root(raw.to_owned()));
        }
        Ok(VolumePath(parts))
    }

    pub fn components(&self) -> &[String] {
        &self.0
    }

    /// The path as a relative `PathBuf`, to join onto a share's mount.
    pub fn to_path_buf(&self) -> PathBuf {
        self.0.iter().collect()
    }
}

impl fmt::Display for VolumePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join("/"))
    }
}

/// nfs-subdir's default directory name.
pub fn default_name(input: &PatternInput<'_>) -> String {
    format!("{}-{}-{}", input.namespace, input.claim_name, input.pv_name)
}

/// The directory for a volume: the expanded pattern, or the default name when there is no pattern or it expands to
/// nothing; normalised so that it stays inside the share.
pub fn volume_path(pattern: Option<&str>, input: &PatternInput<'_>) -> Result<VolumePath, PathError> {
    let expanded = match pattern {
        Some(p) => expand(p, input)?,
        None => String::new(),
    };
    if expanded.is_empty() {
        VolumePath::parse(&default_name(input))
    } else {
        VolumePath::parse(&expanded)
    }
}

/// Replaces every placeholder in `pattern`.
pub fn expand(pattern: &str, input: &PatternInput<'_>) -> Result<String, PathError> {
    let mut out = String::with_capacity(pattern.len());
    let mut rest = pattern;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}').ok_or(PathError::Unterminated)?;
        out.push_str(&lookup(&after[..end], input)?);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn lookup(key: &str, input: &PatternInput<'_>) -> Result<String, PathError> {
    let from_map = |map: Option<&BTreeMap<String, String>>, k: &str| map.and_then(|m| m.get(k)).cloned();
    let value = match key.trim() {
        ".PVC.namespace" => Some(input.namespace.to_owned()),
        ".PVC.name" => Some(input.claim_name.to_owned()),
        ".PV.name" => Some(input.pv_name.to_owned()),
        k => {
            if let Some(label) = k.strip_prefix(".PVC.labels.").filter(|l| !l.is_empty()) {
                from_map(input.labels, label)
            } else if let Some(ann) = k.strip_prefix(".PVC.annotations.").filter(|a| !a.is_empty()) {
                from_map(input.annotations, ann)
            } else {
                return Err(PathError::UnknownPlaceholder(key.to_owned()));
            }
        }
    };
    Ok(value.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn maps() -> (BTreeMap<String, String>, BTreeMap<String, String>) {
        let labels = BTreeMap::from([("app".to_owned(), "conduit".to_owned())]);
        let annotations = BTreeMap::from([
            ("nfs.io/storage-path".to_owned(), "data".to_owned()),
            ("evil".to_owned(), "../../etc".to_owned()),
            ("abs".to_owned(), "/etc".to_owned()),
            ("nul".to_owned(), "a\0b".to_owned()),
            ("dots".to_owned(), "..".to_owned()),
        ]);
        (labels, annotations)
    }

    fn path(pattern: Option<&str>) -> Result<String, PathError> {
        let (labels, annotations) = maps();
        let input = PatternInput {
            namespace: "choppa",
            claim_name: "conduit-pv-claim",
            labels: Some(&labels),
            annotations: Some(&annotations),
            pv_name: "pvc-1234",
        };
        volume_path(pattern, &input).map(|p| p.to_string())
    }

    #[test]
    fn no_pattern_gives_nfs_subdirs_default_name() {
        assert_eq!(path(None).unwrap(), "choppa-conduit-pv-claim-pvc-1234");
    }

    #[test]
    fn every_placeholder_expands() {
        assert_eq!(
            path(Some(
                "${.PVC.namespace}/${.PVC.name}/${.PVC.labels.app}/${.PVC.annotations.nfs.io/storage-path}/${.PV.name}"
            ))
            .unwrap(),
            "choppa/conduit-pv-claim/conduit/data/pvc-1234"
        );
    }

    #[test]
    fn missing_label_expands_to_nothing_and_empty_result_falls_back_to_default() {
        assert_eq!(path(Some("${.PVC.labels.absent}")).unwrap(), "choppa-conduit-pv-claim-pvc-1234");
        assert_eq!(path(Some("")).unwrap(), "choppa-conduit-pv-claim-pvc-1234");
        assert_eq!(path(Some("x/${.PVC.labels.absent}")).unwrap(), "x");
    }

    #[test]
    fn annotation_climbing_out_with_dot_dot_is_refused() {
        assert_eq!(path(Some("${.PVC.annotations.evil}")), Err(PathError::ClimbsOut("../../etc".into())));
        assert_eq!(path(Some("a/${.PVC.annotations.evil}")), Err(PathError::ClimbsOut("a/../../etc".into())));
        assert_eq!(path(Some("${.PVC.annotations.dots}")), Err(PathError::ClimbsOut("..".into())));
    }

    #[test]
    fn dot_dot_that_stays_inside_is_normalised() {
        assert_eq!(path(Some("a/b/../c/./d//")).unwrap(), "a/c/d");
    }

    #[test]
    fn absolute_result_is_refused() {
        assert_eq!(path(Some("${.PVC.annotations.abs}")), Err(PathError::Absolute("/etc".into())));
        assert_eq!(path(Some("/data")), Err(PathError::Absolute("/data".into())));
    }

    #[test]
    fn nul_byte_is_refused() {
        assert_eq!(path(Some("${.PVC.annotations.nul}")), Err(PathError::Nul));
    }

    #[test]
    fn pattern_resolving_to_the_share_root_is_refused() {
        assert_eq!(path(Some("a/..")), Err(PathError::Root("a/..".into())));
        assert_eq!(path(Some("./")), Err(PathError::Root("./".into())));
    }

    #[test]
    fn unknown_or_unterminated_placeholder_is_refused() {
        assert_eq!(path(Some("${.PVC.uid}")), Err(PathError::UnknownPlaceholder(".PVC.uid".into())));
        assert_eq!(path(Some("${.PVC.labels.}")), Err(PathError::UnknownPlaceholder(".PVC.labels.".into())));
        assert_eq!(path(Some("${.PVC.name")), Err(PathError::Unterminated));
    }

    #[test]
    fn claim_without_labels_or_annotations_expands_them_to_nothing() {
        let input = PatternInput { namespace: "ns", claim_name: "c", pv_name: "pvc-1", ..Default::default() };
        assert_eq!(
            volume_path(Some("${.PVC.annotations.x}${.PVC.labels.y}"), &input).unwrap().to_string(),
            "ns-c-pvc-1"
        );
    }

    #[test]
    fn error_messages_say_what_is_wrong() {
        let msg = path(Some("${.PVC.annotations.evil}")).unwrap_err().to_string();
        assert!(msg.contains("climbs out of the share"), "{msg}");
    }
}
