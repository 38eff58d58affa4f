//! The two decisions the provisioner makes, each against a `kube::Client` so that tests drive them through a mocked
//! API service:
//!
//! **Provisioning a claim** ([`Provisioner::provision`]), in this order:
//! 1. skip a claim that is bound, being deleted, has no class, or whose storage-provisioner annotation (GA
//!    `volume.kubernetes.io/storage-provisioner` or beta `volume.beta.kubernetes.io/storage-provisioner`) is not ours;
//! 2. read its StorageClass; skip if the class names another provisioner;
//! 3. skip if `pvc-<uid>` already exists (an earlier attempt succeeded);
//! 4. refuse a claim with a `selector` (an event says why: dynamic provisioning cannot honour one);
//! 5. wait, silently, while a `WaitForFirstConsumer` claim has no `volume.kubernetes.io/selected-node`;
//! 6. record `Provisioning`; resolve the share and parameters, expand `pathPattern`, check free space if asked, make
//!    the directory, create the PV (an `AlreadyExists` answer is success); record `ProvisioningSucceeded`, or
//!    `ProvisioningFailed` naming why.
//!
//! **Deleting a released volume** ([`Provisioner::delete`]): only a PV that is `Released`, whose reclaim policy is
//! `Delete`, and whose `provisioned-by` is one of ours (or listed in `provisioned-by`). Its directory is removed,
//! archived or kept as the class's `onDelete` / `archiveOnDelete` says (archive if the class is gone), a missing
//! directory counts as success, then the PV is deleted. Under `Retain` nothing is ever touched.
//!
//! Outcomes that a retry cannot change are `Ok`; failures worth retrying are `Err`, which the controller requeues.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client};

use crate::class::ClassParameters;
use crate::config::{Config, Share};
use crate::events::{ClaimEvent, Recorder};
use crate::metrics::Metrics;
use crate::path_pattern::{volume_path, PatternInput, VolumePath};
use crate::pv::{build_pv, pv_name, PROVISIONED_BY, SHARE_ANNOTATION};
use crate::quantity;
use crate::share::{self, OnDelete};

pub const ANN_STORAGE_PROVISIONER: &str = "volume.kubernetes.io/storage-provisioner";
pub const ANN_BETA_STORAGE_PROVISIONER: &str = "volume.beta.kubernetes.io/storage-provisioner";
pub const ANN_SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";

/// What became of a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// Not this provisioner's claim, or nothing left to do (bound, being deleted).
    Ignored,
    AlreadyProvisioned,
    WaitingForFirstConsumer,
    /// Refused for a reason only a change to the claim or class can fix; the event names it.
    Refused(String),
    Provisioned(String),
}

/// What became of a PV.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeOutcome {
    Ignored,
    /// Not deleted for a reason only a person can fix (logged).
    Refused(String),
    Deleted(share::DeleteOutcome),
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("API request failed: {0}")]
    Api(#[from] kube::Error),
    #[error("{0}")]
    Retry(String),
}

pub struct Provisioner {
    client: Client,
    config: Arc<Config>,
    recorder: Recorder,
    metrics: Arc<Metrics>,
}

impl Provisioner {
    pub fn new(client: Client, config: Arc<Config>, instance: &str, metrics: Arc<Metrics>) -> Self {
        let recorder = Recorder::new(client.clone(), instance);
        Provisioner { client, config, recorder, metrics }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The provisioner name a claim is addressed to, if it is one of ours.
    fn addressed_to_us<'c>(&self, claim: &'c PersistentVolumeClaim) -> Option<&'c str> {
        let annotations = claim.metadata.annotations.as_ref()?;
        let names = self.config.answered_names();
        [ANN_STORAGE_PROVISIONER, ANN_BETA_STORAGE_PROVISIONER]
            .iter()
            .filter_map(|k| annotations.get(*k))
            .map(String::as_str)
            .find(|name| names.contains(name))
    }

    pub async fn provision(&self, claim: &PersistentVolumeClaim) -> Result<ClaimOutcome, ReconcileError> {
        let spec = claim.spec.clone().unwrap_or_default();
        if spec.volume_name.as_deref().is_some_and(|v| !v.is_empty()) || claim.metadata.deletion_timestamp.is_some() {
            return Ok(ClaimOutcome::Ignored);
        }
        let Some(provisioner) = self.addressed_to_us(claim) else { return Ok(ClaimOutcome::Ignored) };
        let Some(class_name) = spec.storage_class_name.as_deref().filter(|c| !c.is_empty()) else {
            return Ok(ClaimOutcome::Ignored);
        };
        let Some(uid) = claim.metadata.uid.as_deref().filter(|u| !u.is_empty()) else {
            return Ok(ClaimOutcome::Ignored);
        };

        let classes: Api<StorageClass> = Api::all(self.client.clone());
        let Some(class) = classes.get_opt(class_name).await? else {
            return self.fail(claim, format!("StorageClass {class_name:?} does not exist"), true).await;
        };
        if class.provisioner != provisioner {
            return Ok(ClaimOutcome::Ignored);
        }
        let volumes: Api<PersistentVolume> = Api::all(self.client.clone());
        let name = pv_name(uid);
        if volumes.get_opt(&name).await?.is_some() {
            return Ok(ClaimOutcome::AlreadyProvisioned);
        }
        if spec.selector.is_some() {
            let why = "the claim has a selector, which a dynamically provisioned volume cannot satisfy; remove \
                       spec.selector or bind the claim to an existing volume";
            return self.fail(claim, why.to_owned(), false).await;
        }
        let selected_node = claim.metadata.annotations.as_ref().and_then(|a| a.get(ANN_SELECTED_NODE));
        if class.volume_binding_mode.as_deref() == Some("WaitForFirstConsumer") && selected_node.is_none() {
            return Ok(ClaimOutcome::WaitingForFirstConsumer);
        }

        let claim_ref = claim_key(claim);
        self.recorder
            .claim(
                claim,
                ClaimEvent::Provisioning,
                &format!("External provisioner is provisioning volume for claim {claim_ref:?}"),
            )
            .await;
        match self.make_volume(claim, &class, provisioner, &name).await {
            Ok(pv) => {
                Metrics::inc(&self.metrics.volumes_provisioned);
                tracing::info!(claim = %claim_ref, volume = %pv, "provisioned");
                self.recorder
                    .claim(claim, ClaimEvent::ProvisioningSucceeded, &format!("Successfully provisioned volume {pv}"))
                    .await;
                Ok(ClaimOutcome::Provisioned(pv))
            }
            Err(Failure { why, retry }) => self.fail(claim, why, retry).await,
        }
    }

    /// Everything between the `Provisioning` event and the outcome: directory, then PV.
    async fn make_volume(
        &self,
        claim: &PersistentVolumeClaim,
        class: &StorageClass,
        provisioner: &str,
        name: &str,
    ) -> Result<String, Failure> {
        let params = ClassParameters::parse(class.parameters.as_ref())
            .and_then(|p| p.with_claim(claim.metadata.annotations.as_ref()))
            .map_err(Failure::permanent)?;
        let share = self.share_for(class, &params)?;
        let input = PatternInput {
            namespace: claim.metadata.namespace.as_deref().unwrap_or("default"),
            claim_name: claim.metadata.name.as_deref().unwrap_or_default(),
            labels: claim.metadata.labels.as_ref(),
            annotations: claim.metadata.annotations.as_ref(),
            pv_name: name,
        };
        let dir = volume_path(params.path_pattern.as_deref(), &input).map_err(Failure::permanent)?;
        let pv = build_pv(claim, class, share, &dir, provisioner).map_err(Failure::permanent)?;
        if params.refuse_over_free_space {
            check_free_space(share, &pv)?;
        }
        share::create_volume_dir(&share.mount, &dir, params.permissions).map_err(Failure::retry)?;
        let volumes: Api<PersistentVolume> = Api::all(self.client.clone());
        match volumes.create(&PostParams::default(), &pv).await {
            Ok(_) => Ok(name.to_owned()),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(name.to_owned()),
            Err(e) => Err(Failure { why: format!("creating PersistentVolume {name} failed: {e}"), retry: true }),
        }
    }

    fn share_for<'a>(&'a self, class: &StorageClass, params: &ClassParameters) -> Result<&'a Share, Failure> {
        let class_name = class.metadata.name.as_deref().unwrap_or_default();
        match &params.share {
            Some(name) => self.config.share(name).ok_or_else(|| {
                Failure::permanent(format!("StorageClass {class_name:?} names share {name:?}, which is not configured"))
            }),
            None => self.config.default_share_for(&class.provisioner).ok_or_else(|| {
                Failure::permanent(format!(
                    "StorageClass {class_name:?} has no share parameter and several shares are configured; set \
                     parameters.share to one of them"
                ))
            }),
        }
    }

    /// Records `ProvisioningFailed` and returns the outcome: `Err` to retry, `Refused` otherwise.
    async fn fail(
        &self,
        claim: &PersistentVolumeClaim,
        why: String,
        retry: bool,
    ) -> Result<ClaimOutcome, ReconcileError> {
        Metrics::inc(&self.metrics.provisioning_failures);
        tracing::warn!(claim = %claim_key(claim), reason = %why, "provisioning failed");
        self.recorder.claim(claim, ClaimEvent::ProvisioningFailed, &why).await;
        if retry {
            Err(ReconcileError::Retry(why))
        } else {
            Ok(ClaimOutcome::Refused(why))
        }
    }

    pub async fn delete(&self, pv: &PersistentVolume) -> Result<VolumeOutcome, ReconcileError> {
        let Some(name) = pv.metadata.name.as_deref() else { return Ok(VolumeOutcome::Ignored) };
        let provisioned_by = pv.metadata.annotations.as_ref().and_then(|a| a.get(PROVISIONED_BY));
        if !provisioned_by.is_some_and(|p| self.config.may_delete_provisioned_by(p)) {
            return Ok(VolumeOutcome::Ignored);
        }
        let spec = pv.spec.clone().unwrap_or_default();
        let released = pv.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Released");
        // Under Retain (or Recycle, or no policy) the data is never ours to touch.
        let reclaim_delete = spec.persistent_volume_reclaim_policy.as_deref() == Some("Delete");
        if !released || !reclaim_delete || pv.metadata.deletion_timestamp.is_some() {
            return Ok(VolumeOutcome::Ignored);
        }
        let Some(nfs) = spec.nfs.as_ref() else {
            return self.refuse_delete(name, "it has no NFS source".to_owned());
        };
        let share_name = pv.metadata.annotations.as_ref().and_then(|a| a.get(SHARE_ANNOTATION));
        let Some((share, dir)) = self.locate(share_name.map(String::as_str), &nfs.server, &nfs.path) else {
            let why = format!("no configured share holds {}:{}", nfs.server, nfs.path);
            return self.refuse_delete(name, why);
        };
        let on_delete = self.on_delete(spec.storage_class_name.as_deref()).await?;
        let stamp = Timestamp::now().strftime("%Y%m%dT%H%M%SZ").to_string();
        let outcome = match share::remove_volume_dir(&share.mount, &dir, on_delete, &stamp) {
            Ok(o) => o,
            Err(e) => {
                Metrics::inc(&self.metrics.deletion_failures);
                return Err(ReconcileError::Retry(format!("volume {name}: {e}")));
            }
        };
        let volumes: Api<PersistentVolume> = Api::all(self.client.clone());
        match volumes.delete(name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => {
                Metrics::inc(&self.metrics.deletion_failures);
                return Err(e.into());
            }
        }
        Metrics::inc(&self.metrics.volumes_deleted);
        tracing::info!(volume = name, outcome = ?outcome, "deleted released volume");
        Ok(VolumeOutcome::Deleted(outcome))
    }

    fn refuse_delete(&self, name: &str, why: String) -> Result<VolumeOutcome, ReconcileError> {
        Metrics::inc(&self.metrics.deletion_failures);
        tracing::warn!(volume = name, reason = %why, "not deleting released volume");
        Ok(VolumeOutcome::Refused(why))
    }

    /// The share and directory of a PV: by our share annotation if present, else by server and export path (the way
    /// nfs-subdir's volumes are found).
    fn locate(&self, share_name: Option<&str>, server: &str, path: &str) -> Option<(&Share, VolumePath)> {
        let candidates: Vec<&Share> = match share_name.and_then(|n| self.config.share(n)) {
            Some(s) => vec![s],
            None => self.config.shares.iter().filter(|s| s.server.eq_ignore_ascii_case(server)).collect(),
        };
        candidates.into_iter().find_map(|share| {
            let export = share.path.trim_end_matches('/');
            let rest = path.strip_prefix(export)?.strip_prefix('/')?;
            VolumePath::parse(rest).ok().map(|dir| (share, dir))
        })
    }

    /// What the PV's class says to do with the data; archive when the class is gone, so nothing is lost.
    async fn on_delete(&self, class_name: Option<&str>) -> Result<OnDelete, ReconcileError> {
        let Some(class_name) = class_name.filter(|c| !c.is_empty()) else { return Ok(OnDelete::Archive) };
        let classes: Api<StorageClass> = Api::all(self.client.clone());
        let Some(class) = classes.get_opt(class_name).await? else { return Ok(OnDelete::Archive) };
        ClassParameters::parse(class.parameters.as_ref())
            .map(|p| p.on_delete)
            .map_err(|e| ReconcileError::Retry(format!("StorageClass {class_name:?}: {e}")))
    }
}

/// Why provisioning stopped, and whether trying again could help.
struct Failure {
    why: String,
    retry: bool,
}

impl Failure {
    fn permanent(e: impl std::fmt::Display) -> Self {
        Failure { why: e.to_string(), retry: false }
    }
    fn retry(e: impl std::fmt::Display) -> Self {
        Failure { why: e.to_string(), retry: true }
    }
}

fn check_free_space(share: &Share, pv: &PersistentVolume) -> Result<(), Failure> {
    let requested = pv.spec.as_ref().and_then(|s| s.capacity.as_ref()).and_then(|c| c.get("storage"));
    let Some(requested) = requested else { return Ok(()) };
    let bytes = quantity::parse_bytes(&requested.0)
        .ok_or_else(|| Failure::permanent(format!("cannot read the requested size {:?}", requested.0)))?;
    let free = share::free_bytes(&share.mount).map_err(Failure::retry)?;
    if bytes > u128::from(free) {
        return Err(Failure::retry(format!(
            "the claim asks for {} ({bytes} bytes) but share {:?} has only {free} bytes free",
            requested.0, share.name
        )));
    }
    Ok(())
}

fn claim_key(claim: &PersistentVolumeClaim) -> String {
    format!(
        "{}/{}",
        claim.metadata.namespace.as_deref().unwrap_or_default(),
        claim.metadata.name.as_deref().unwrap_or_default()
    )
}
