//! Building the PersistentVolume for a claim, as the external-provisioner contract says: named `pvc-<claim uid>`,
//! bound in advance to its claim through `claimRef`, annotated `pv.kubernetes.io/provisioned-by`, carrying the class's
//! name, reclaim policy and mount options and the claim's access modes, volume mode and requested capacity, with an NFS
//! source pointing at the directory on the server.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    NFSVolumeSource, ObjectReference, PersistentVolume, PersistentVolumeClaim, PersistentVolumeSpec,
};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::config::Share;
use crate::path_pattern::VolumePath;

/// The annotation naming the provisioner that made a PV; the PV controller and we both read it.
pub const PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";
/// Our own annotation naming the share a PV lives on, so that a delete finds it even if the server is renamed.
pub const SHARE_ANNOTATION: &str = "nfs.hearth.chat/share";

/// The PV name for a claim: `pvc-<uid>`, as every external provisioner names it.
pub fn pv_name(claim_uid: &str) -> String {
    format!("pvc-{claim_uid}")
}

/// Why a claim cannot be given a PV.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClaimError {
    #[error("the claim has no uid")]
    NoUid,
    #[error("the claim requests no storage (spec.resources.requests.storage is unset)")]
    NoStorageRequest,
    #[error("volumeMode {0:?} is not supported: NFS volumes are Filesystem volumes")]
    UnsupportedVolumeMode(String),
}

/// The server-side path of a volume: the share's export path joined with the volume's directory.
pub fn server_path(share: &Share, dir: &VolumePath) -> String {
    format!("{}/{}", share.path.trim_end_matches('/'), dir)
}

/// The PV for `claim`, in `dir` on `share`, made by `provisioner` for `class`.
pub fn build_pv(
    claim: &PersistentVolumeClaim,
    class: &StorageClass,
    share: &Share,
    dir: &VolumePath,
    provisioner: &str,
) -> Result<PersistentVolume, ClaimError> {
    let uid = claim.metadata.uid.as_deref().filter(|u| !u.is_empty()).ok_or(ClaimError::NoUid)?;
    let spec = claim.spec.clone().unwrap_or_default();
    let volume_mode = spec.volume_mode.unwrap_or_else(|| "Filesystem".to_owned());
    if volume_mode != "Filesystem" {
        return Err(ClaimError::UnsupportedVolumeMode(volume_mode));
    }
    let storage = spec
        .resources
        .and_then(|r| r.requests)
        .and_then(|mut r| r.remove("storage"))
        .ok_or(ClaimError::NoStorageRequest)?;
    Ok(PersistentVolume {
        metadata: ObjectMeta {
            name: Some(pv_name(uid)),
            annotations: Some(BTreeMap::from([
                (PROVISIONED_BY.to_owned(), provisioner.to_owned()),
                (SHARE_ANNOTATION.to_owned(), share.name.clone()),
            ])),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeSpec {
            access_modes: spec.access_modes,
            capacity: Some(BTreeMap::from([("storage".to_owned(), storage)])),
            claim_ref: Some(ObjectReference {
                api_version: Some("v1".to_owned()),
                kind: Some("PersistentVolumeClaim".to_owned()),
                namespace: claim.metadata.namespace.clone(),
                name: claim.metadata.name.clone(),
                uid: Some(uid.to_owned()),
                resource_version: claim.metadata.resource_version.clone(),
                ..ObjectReference::default()
            }),
            mount_options: class.mount_options.clone(),
            nfs: Some(NFSVolumeSource {
                server: share.server.clone(),
                path: server_path(share, dir),
                read_only: Some(false),
            }),
            persistent_volume_reclaim_policy: Some(class.reclaim_policy.clone().unwrap_or_else(|| "Delete".to_owned())),
            storage_class_name: class.metadata.name.clone(),
            volume_mode: Some(volume_mode),
            ..PersistentVolumeSpec::default()
        }),
        status: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claim(spec: serde_json::Value) -> PersistentVolumeClaim {
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": "conduit-pv-claim", "namespace": "choppa", "uid": "0b5e-11", "resourceVersion": "42"},
            "spec": spec,
        }))
        .unwrap()
    }

    fn class(extra: serde_json::Value) -> StorageClass {
        let mut base = json!({
            "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": "nfs-big"}, "provisioner": "nfs-provisioner-big",
        });
        if let (Some(b), Some(e)) = (base.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        serde_json::from_value(base).unwrap()
    }

    fn share() -> Share {
        Share {
            name: "big".into(),
            server: "nas-big.home.arpa".into(),
            path: "/storage/".into(),
            mount: "/shares/big".into(),
            provisioner_names: vec![],
        }
    }

    #[test]
    fn pv_follows_the_external_provisioner_contract() {
        let claim = claim(json!({
            "storageClassName": "nfs-big", "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "50Gi"}},
        }));
        let class = class(json!({"reclaimPolicy": "Retain", "mountOptions": ["nfsvers=4.1", "hard"]}));
        let dir = VolumePath::parse("choppa/conduit").unwrap();
        let pv = build_pv(&claim, &class, &share(), &dir, "nfs-provisioner-big").unwrap();
        assert_eq!(
            serde_json::to_value(&pv).unwrap(),
            json!({
                "apiVersion": "v1", "kind": "PersistentVolume",
                "metadata": {
                    "name": "pvc-0b5e-11",
                    "annotations": {
                        "pv.kubernetes.io/provisioned-by": "nfs-provisioner-big",
                        "nfs.hearth.chat/share": "big",
                    },
                },
                "spec": {
                    "accessModes": ["ReadWriteOnce"],
                    "capacity": {"storage": "50Gi"},
                    "claimRef": {
                        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                        "namespace": "choppa", "name": "conduit-pv-claim", "uid": "0b5e-11", "resourceVersion": "42",
                    },
                    "mountOptions": ["nfsvers=4.1", "hard"],
                    "nfs": {"server": "nas-big.home.arpa", "path": "/storage/choppa/conduit", "readOnly": false},
                    "persistentVolumeReclaimPolicy": "Retain",
                    "storageClassName": "nfs-big",
                    "volumeMode": "Filesystem",
                },
            })
        );
    }

    #[test]
    fn reclaim_policy_defaults_to_delete_as_for_any_class() {
        let claim = claim(json!({"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Mi"}}}));
        let pv = build_pv(&claim, &class(json!({})), &share(), &VolumePath::parse("v").unwrap(), "p").unwrap();
        let spec = pv.spec.unwrap();
        assert_eq!(spec.persistent_volume_reclaim_policy.as_deref(), Some("Delete"));
        assert_eq!(spec.mount_options, None);
        assert_eq!(spec.access_modes, Some(vec!["ReadWriteMany".to_owned()]));
    }

    #[test]
    fn block_volume_mode_is_refused() {
        let claim = claim(json!({"volumeMode": "Block", "resources": {"requests": {"storage": "1Mi"}}}));
        let err = build_pv(&claim, &class(json!({})), &share(), &VolumePath::parse("v").unwrap(), "p").unwrap_err();
        assert_eq!(err, ClaimError::UnsupportedVolumeMode("Block".into()));
    }

    #[test]
    fn claim_without_request_or_uid_is_refused() {
        let no_request = claim(json!({"accessModes": ["ReadWriteOnce"]}));
        let dir = VolumePath::parse("v").unwrap();
        assert_eq!(build_pv(&no_request, &class(json!({})), &share(), &dir, "p"), Err(ClaimError::NoStorageRequest));
        let mut no_uid = claim(json!({"resources": {"requests": {"storage": "1Mi"}}}));
        no_uid.metadata.uid = None;
        assert_eq!(build_pv(&no_uid, &class(json!({})), &share(), &dir, "p"), Err(ClaimError::NoUid));
    }
}
