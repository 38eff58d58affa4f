//! A StorageClass's `parameters`, parsed once into [`ClassParameters`].
//!
//! | parameter | meaning | default |
//! |---|---|---|
//! | `share` | name of the configured share to use | the share listing the class's provisioner, or the only share |
//! | `pathPattern` | directory inside the share (see `path_pattern.rs`) | `<namespace>-<claim>-<PV name>` |
//! | `onDelete` | `delete`, `retain` or `archive` | from `archiveOnDelete` |
//! | `archiveOnDelete` | nfs-subdir's switch: `true` archives, `false` deletes | `true`, as in nfs-subdir |
//! | `directoryMode` | octal mode of new directories | `0755` |
//! | `directoryUid`, `directoryGid` | numeric owner of new directories | the provisioner's own |
//! | `refuseOverFreeSpace` | `true`: refuse a claim asking for more than the share's free space | `false` |
//!
//! Other parameters are ignored, as nfs-subdir ignores them, so existing classes keep working.
//!
//! A claim may set its own directory's owner and mode with the annotations newer
//! nfs-subdir releases read — `k8s-sigs.io/nfs-directory-uid`, `…-gid`, `…-mode` — which
//! override the class's (Hearth's own `overlays/nfs-big` asks for uid/gid 10001 this way).
//! The volume is the claim's alone, so this grants nothing beyond it; a set-user-id bit is
//! refused all the same.

use std::collections::BTreeMap;

use crate::config::parse_bool;
use crate::share::{DirPermissions, OnDelete};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassParameters {
    pub share: Option<String>,
    pub path_pattern: Option<String>,
    pub on_delete: OnDelete,
    pub permissions: DirPermissions,
    pub refuse_over_free_space: bool,
}

impl Default for ClassParameters {
    fn default() -> Self {
        ClassParameters {
            share: None,
            path_pattern: None,
            on_delete: OnDelete::Archive,
            permissions: DirPermissions::default(),
            refuse_over_free_space: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("StorageClass parameter {name} is {value:?}; expected {expected}")]
pub struct ParameterError {
    pub name: &'static str,
    pub value: String,
    pub expected: &'static str,
}

impl ClassParameters {
    pub fn parse(parameters: Option<&BTreeMap<String, String>>) -> Result<ClassParameters, ParameterError> {
        let empty = BTreeMap::new();
        let p = parameters.unwrap_or(&empty);
        let get = |k: &str| p.get(k).map(String::as_str);
        let mut out = ClassParameters {
            share: get("share").filter(|s| !s.is_empty()).map(str::to_owned),
            path_pattern: get("pathPattern").map(str::to_owned),
            ..ClassParameters::default()
        };
        out.on_delete = match get("onDelete").map(str::to_ascii_lowercase).as_deref() {
            Some("delete") => OnDelete::Delete,
            Some("retain") => OnDelete::Retain,
            Some("archive") => OnDelete::Archive,
            Some(other) if !other.is_empty() => {
                return Err(ParameterError {
                    name: "onDelete",
                    value: other.to_owned(),
                    expected: "delete, retain or archive",
                })
            }
            _ => match get("archiveOnDelete") {
                None | Some("") => OnDelete::Archive,
                Some(v) => match parse_bool(v) {
                    Some(true) => OnDelete::Archive,
                    Some(false) => OnDelete::Delete,
                    None => return Err(bool_error("archiveOnDelete", v)),
                },
            },
        };
        if let Some(v) = get("directoryMode") {
            let mode = u32::from_str_radix(v.trim_start_matches("0o"), 8).ok().filter(|m| *m <= 0o7777);
            out.permissions.mode = mode.ok_or(ParameterError {
                name: "directoryMode",
                value: v.to_owned(),
                expected: "an octal mode such as 0755 or 2775",
            })?;
        }
        out.permissions.uid = parse_id("directoryUid", get("directoryUid"))?;
        out.permissions.gid = parse_id("directoryGid", get("directoryGid"))?;
        if let Some(v) = get("refuseOverFreeSpace") {
            out.refuse_over_free_space = parse_bool(v).ok_or_else(|| bool_error("refuseOverFreeSpace", v))?;
        }
        Ok(out)
    }
}

/// Claim annotations that set its directory's owner and mode.
pub const ANN_DIRECTORY_UID: &str = "k8s-sigs.io/nfs-directory-uid";
pub const ANN_DIRECTORY_GID: &str = "k8s-sigs.io/nfs-directory-gid";
pub const ANN_DIRECTORY_MODE: &str = "k8s-sigs.io/nfs-directory-mode";

impl ClassParameters {
    /// The parameters with a claim's directory annotations applied over the class's.
    pub fn with_claim(mut self, annotations: Option<&BTreeMap<String, String>>) -> Result<Self, ParameterError> {
        let Some(a) = annotations else { return Ok(self) };
        if let Some(v) = a.get(ANN_DIRECTORY_MODE) {
            let mode = u32::from_str_radix(v.trim_start_matches("0o"), 8).ok().filter(|m| *m <= 0o3777);
            self.permissions.mode = mode.ok_or(ParameterError {
                name: ANN_DIRECTORY_MODE,
                value: v.to_owned(),
                expected: "an octal mode such as 0770 or 2775, without the set-user-id bit",
            })?;
        }
        if let Some(uid) = parse_id(ANN_DIRECTORY_UID, a.get(ANN_DIRECTORY_UID).map(String::as_str))? {
            self.permissions.uid = Some(uid);
        }
        if let Some(gid) = parse_id(ANN_DIRECTORY_GID, a.get(ANN_DIRECTORY_GID).map(String::as_str))? {
            self.permissions.gid = Some(gid);
        }
        Ok(self)
    }
}

fn bool_error(name: &'static str, value: &str) -> ParameterError {
    ParameterError { name, value: value.to_owned(), expected: "true or false" }
}

fn parse_id(name: &'static str, value: Option<&str>) -> Result<Option<u32>, ParameterError> {
    match value {
        None | Some("") => Ok(None),
        Some(v) => v.parse::<u32>().map(Some).map_err(|_| ParameterError {
            name,
            value: v.to_owned(),
            expected: "a numeric user or group id",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&str, &str)]) -> Result<ClassParameters, ParameterError> {
        let map: BTreeMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        ClassParameters::parse(Some(&map))
    }

    #[test]
    fn a_claims_directory_annotations_override_the_class() {
        let claim: BTreeMap<String, String> =
            [(ANN_DIRECTORY_UID, "10001"), (ANN_DIRECTORY_GID, "10001"), (ANN_DIRECTORY_MODE, "0770")]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        let p =
            parse(&[("directoryMode", "0755"), ("directoryUid", "1000")]).unwrap().with_claim(Some(&claim)).unwrap();
        assert_eq!((p.permissions.mode, p.permissions.uid, p.permissions.gid), (0o770, Some(10001), Some(10001)));
        // None: the class's stand.
        let p = parse(&[("directoryUid", "1000")]).unwrap().with_claim(None).unwrap();
        assert_eq!((p.permissions.mode, p.permissions.uid), (0o755, Some(1000)));
        for (key, bad) in [(ANN_DIRECTORY_MODE, "4755"), (ANN_DIRECTORY_MODE, "rwx"), (ANN_DIRECTORY_UID, "-1")] {
            let claim = BTreeMap::from([(key.to_owned(), bad.to_owned())]);
            assert_eq!(ClassParameters::default().with_claim(Some(&claim)).unwrap_err().name, key, "{bad}");
        }
    }

    #[test]
    fn no_parameters_archive_like_nfs_subdir_with_0755() {
        assert_eq!(ClassParameters::parse(None).unwrap(), ClassParameters::default());
        assert_eq!(ClassParameters::default().on_delete, OnDelete::Archive);
        assert_eq!(ClassParameters::default().permissions.mode, 0o755);
    }

    #[test]
    fn seed_classes_archive_on_delete_false_deletes_and_unknown_keys_are_ignored() {
        let p = parse(&[("archiveOnDelete", "false"), ("reclaimPolicy", "Retain")]).unwrap();
        assert_eq!(p.on_delete, OnDelete::Delete);
    }

    #[test]
    fn on_delete_wins_over_archive_on_delete() {
        assert_eq!(parse(&[("onDelete", "retain"), ("archiveOnDelete", "false")]).unwrap().on_delete, OnDelete::Retain);
        assert_eq!(parse(&[("onDelete", "Archive")]).unwrap().on_delete, OnDelete::Archive);
        assert_eq!(parse(&[("onDelete", "delete")]).unwrap().on_delete, OnDelete::Delete);
    }

    #[test]
    fn every_parameter_is_read() {
        let p = parse(&[
            ("share", "big"),
            ("pathPattern", "${.PVC.namespace}"),
            ("directoryMode", "2770"),
            ("directoryUid", "1000"),
            ("directoryGid", "100"),
            ("refuseOverFreeSpace", "true"),
        ])
        .unwrap();
        assert_eq!(
            p,
            ClassParameters {
                share: Some("big".into()),
                path_pattern: Some("${.PVC.namespace}".into()),
                on_delete: OnDelete::Archive,
                permissions: DirPermissions { mode: 0o2770, uid: Some(1000), gid: Some(100) },
                refuse_over_free_space: true,
            }
        );
    }

    #[test]
    fn bad_values_are_named() {
        assert_eq!(parse(&[("onDelete", "shred")]).unwrap_err().name, "onDelete");
        assert_eq!(parse(&[("archiveOnDelete", "perhaps")]).unwrap_err().name, "archiveOnDelete");
        assert_eq!(parse(&[("directoryMode", "0999")]).unwrap_err().name, "directoryMode");
        assert_eq!(parse(&[("directoryMode", "77777")]).unwrap_err().name, "directoryMode");
        assert_eq!(parse(&[("directoryUid", "-1")]).unwrap_err().name, "directoryUid");
        assert_eq!(parse(&[("directoryGid", "users")]).unwrap_err().name, "directoryGid");
        assert_eq!(parse(&[("refuseOverFreeSpace", "yes")]).unwrap_err().name, "refuseOverFreeSpace");
        let msg = parse(&[("onDelete", "shred")]).unwrap_err().to_string();
        assert_eq!(msg, "StorageClass parameter onDelete is \"shred\"; expected delete, retain or archive");
    }
}
