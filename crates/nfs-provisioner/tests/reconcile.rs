//! Every branch of provisioning and deletion, driven through kube's mocked API service: each test scripts the API
//! server's answers and asserts the exact requests (method, path, body fields) the provisioner sends, with temporary
//! directories standing in for the NFS shares.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

mod common;

use common::{mock_client, status, MockApi};
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use nfs_provisioner::config::Config;
use nfs_provisioner::metrics::Metrics;
use nfs_provisioner::reconcile::{ClaimOutcome, Provisioner, ReconcileError, VolumeOutcome};
use nfs_provisioner::share::DeleteOutcome;
use serde_json::{json, Value};
use tokio::task::JoinHandle;

/// Two shares in temporary directories, as the seed's two disks.
struct Cluster {
    dir: tempfile::TempDir,
    config: Arc<Config>,
}

impl Cluster {
    fn new() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("big")).unwrap();
        std::fs::create_dir(dir.path().join("small")).unwrap();
        let text = format!(
            r#"
            provisioner-names = ["hearth.chat/nfs"]
            provisioned-by = ["cluster.local/nfs-subdir-external-provisioner"]
            [[share]]
            name = "big"
            server = "192.168.3.10"
            path = "/storage"
            mount = "{big}"
            provisioner-names = ["nfs-provisioner-big"]
            [[share]]
            name = "small"
            server = "nas-small.home.arpa"
            path = "/export/k8s"
            mount = "{small}"
            provisioner-names = ["nfs-provisioner-small"]
            "#,
            big = dir.path().join("big").display(),
            small = dir.path().join("small").display(),
        );
        let config = Arc::new(Config::from_toml(&text, "test").unwrap());
        Cluster { dir, config }
    }

    fn big(&self) -> std::path::PathBuf {
        self.dir.path().join("big")
    }
    fn small(&self) -> std::path::PathBuf {
        self.dir.path().join("small")
    }

    /// A provisioner whose API server is the returned mock.
    fn provisioner(&self) -> (Arc<Provisioner>, Arc<Metrics>, MockApi) {
        let (client, api) = mock_client();
        let metrics = Arc::new(Metrics::default());
        let p = Arc::new(Provisioner::new(client, self.config.clone(), "test-pod", metrics.clone()));
        (p, metrics, api)
    }
}

/// Expects an `events.k8s.io/v1` event on the claim `choppa/conduit` and returns it.
async fn event(api: &mut MockApi, reason: &str) -> Value {
    let sent = api.answer("POST", "/apis/events.k8s.io/v1/namespaces/choppa/events", 201, json!({})).await;
    assert_eq!(sent["reason"], reason, "{sent}");
    assert_eq!(sent["action"], "Provision");
    assert_eq!(sent["regarding"]["kind"], "PersistentVolumeClaim");
    assert_eq!(sent["regarding"]["namespace"], "choppa");
    assert_eq!(sent["regarding"]["name"], "conduit");
    assert_eq!(sent["regarding"]["uid"], "c1a1");
    assert_eq!(sent["reportingController"], "hearth.chat/nfs-provisioner");
    assert_eq!(sent["reportingInstance"], "test-pod");
    assert_eq!(sent["type"], if reason == "ProvisioningFailed" { "Warning" } else { "Normal" });
    assert!(sent["eventTime"].is_string(), "{sent}");
    assert!(sent["metadata"]["name"].as_str().unwrap().starts_with("conduit."), "{sent}");
    sent
}

fn claim(annotations: Value, spec_extra: Value) -> PersistentVolumeClaim {
    let mut spec = json!({
        "storageClassName": "nfs-big", "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": "50Gi"}},
    });
    if let (Some(s), Some(e)) = (spec.as_object_mut(), spec_extra.as_object()) {
        s.extend(e.clone());
    }
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "conduit", "namespace": "choppa", "uid": "c1a1", "resourceVersion": "7",
                     "labels": {"app": "conduit"}, "annotations": annotations},
        "spec": spec,
    }))
    .unwrap()
}

fn ga(provisioner: &str) -> Value {
    json!({"volume.kubernetes.io/storage-provisioner": provisioner})
}

fn class(name: &str, provisioner: &str, parameters: Value, extra: Value) -> Value {
    let mut c = json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": name},
        "provisioner": provisioner, "parameters": parameters, "reclaimPolicy": "Delete"});
    if let (Some(c), Some(e)) = (c.as_object_mut(), extra.as_object()) {
        c.extend(e.clone());
    }
    c
}

fn spawn_provision(
    p: Arc<Provisioner>,
    claim: PersistentVolumeClaim,
) -> JoinHandle<Result<ClaimOutcome, ReconcileError>> {
    tokio::spawn(async move { p.provision(&claim).await })
}

fn spawn_delete(p: Arc<Provisioner>, pv: PersistentVolume) -> JoinHandle<Result<VolumeOutcome, ReconcileError>> {
    tokio::spawn(async move { p.delete(&pv).await })
}

const CLASS_BIG: &str = "/apis/storage.k8s.io/v1/storageclasses/nfs-big";
const PV: &str = "/api/v1/persistentvolumes/pvc-c1a1";
const PVS: &str = "/api/v1/persistentvolumes";

fn mode_of(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

// ---- provisioning ----

#[tokio::test]
async fn claim_for_another_provisioner_sends_nothing() {
    let cluster = Cluster::new();
    let (p, _, api) = cluster.provisioner();
    let task = spawn_provision(p, claim(ga("rancher.io/local-path"), json!({})));
    assert_eq!(task.await.unwrap().unwrap(), ClaimOutcome::Ignored);
    api.no_more_requests().await;
}

#[tokio::test]
async fn bound_claim_sends_nothing() {
    let cluster = Cluster::new();
    let (p, _, api) = cluster.provisioner();
    let task = spawn_provision(p, claim(ga("nfs-provisioner-big"), json!({"volumeName": "pvc-c1a1"})));
    assert_eq!(task.await.unwrap().unwrap(), ClaimOutcome::Ignored);
    api.no_more_requests().await;
}

#[tokio::test]
async fn seed_claim_with_beta_annotation_becomes_a_pv_and_a_0755_directory() {
    let cluster = Cluster::new();
    let (p, metrics, mut api) = cluster.provisioner();
    let beta = json!({"volume.beta.kubernetes.io/storage-provisioner": "nfs-provisioner-big"});
    let task = spawn_provision(p, claim(beta, json!({})));
    let seed_class = class(
        "nfs-big",
        "nfs-provisioner-big",
        json!({"archiveOnDelete": "false"}),
        json!({"reclaimPolicy": "Retain"}),
    );
    assert_eq!(api.answer("GET", CLASS_BIG, 200, seed_class).await, Value::Null);
    api.not_found("GET", PV).await;
    let note = event(&mut api, "Provisioning").await;
    assert_eq!(note["note"], "External provisioner is provisioning volume for claim \"choppa/conduit\"");
    let pv = api.answer("POST", PVS, 201, json!({})).await;
    assert_eq!(pv["metadata"]["name"], "pvc-c1a1");
    assert_eq!(pv["metadata"]["annotations"]["pv.kubernetes.io/provisioned-by"], "nfs-provisioner-big");
    assert_eq!(
        pv["spec"]["nfs"],
        json!({"server": "192.168.3.10", "path": "/storage/choppa-conduit-pvc-c1a1", "readOnly": false})
    );
    assert_eq!(pv["spec"]["persistentVolumeReclaimPolicy"], "Retain");
    assert_eq!(pv["spec"]["storageClassName"], "nfs-big");
    assert_eq!(pv["spec"]["capacity"]["storage"], "50Gi");
    assert_eq!(pv["spec"]["claimRef"]["uid"], "c1a1");
    let done = event(&mut api, "ProvisioningSucceeded").await;
    assert_eq!(done["note"], "Successfully provisioned volume pvc-c1a1");
    assert_eq!(task.await.unwrap().unwrap(), ClaimOutcome::Provisioned("pvc-c1a1".into()));
    api.no_more_requests().await;
    let dir = cluster.big().join("choppa-conduit-pvc-c1a1");
    assert_eq!(mode_of(&dir), 0o755);
    assert_eq!(metrics.volumes_provisioned.load(std::sync::atomic::Ordering::Relaxed), 1);
}

/// Hearth's own claim (`overlays/nfs-big`) asks for its directory's mode (and owner) with
/// annotations; they win over the class's.
#[tokio::test]
async fn a_claims_directory_annotations_set_its_mode() {
    let cluster = Cluster::new();
    let (p, _, mut api) = cluster.provisioner();
    let annotations = json!({
        "volume.kubernetes.io/storage-provisioner": "nfs-provisioner-big",
        "k8s-sigs.io/nfs-directory-mode": "0770",
    });
    let task = spawn_provision(p, claim(annotations, json!({})));
    let seed_class = class("nfs-big", "nfs-provisioner-big", json!({"directoryMode": "0755"}), json!({}));
    api.answer("GET", CLASS_BIG, 200, seed_class).await;
    api.not_found("GET", PV).await;
    event(&mut api, "Provisioning").await;
    api.answer("POST", PVS, 201, json!({})).await;
    event(&mut api, "ProvisioningSucceeded").await;
    assert_eq!(task.await.unwrap().unwrap(), ClaimOutcome::Provisioned("pvc-c1a1".into()));
    api.no_more_requests().await;
    assert_eq!(mode_of(&cluster.big().join("choppa-conduit-pvc-c1a1")), 0o770);
}

#[tokio::test]
async fn share_parameter_and_path_pattern_choose_where_the_directory_goes() {
    let cluster = Cluster::new();
    let (p, _, mut api) = cluster.provisioner();
    let task = spawn_provision(p, claim(ga("hearth.chat/nfs"), json!({})));
    let params =
        json!({"share": "small", "pathPattern": "${.PVC.namespace}/${.PVC.labels.app}", "directoryMode": "0750"});
    api.answer(
        "GET",
        CLASS_BIG,
        200,
        class("nfs-big", "hearth.chat/nfs", params, json!({"mountOptions": ["nfsvers=4.1"]})),
    )
    .await;
    api.not_found("GET", PV).await;
    event(&mut api, "Provisioning").await;
    let pv = api.answer("POST", PVS, 201, json!({})).await;
    assert_eq!(pv["spec"]["nfs"]["server"], "nas-small.home.arpa");
    assert_eq!(pv["spec"]["nfs"]["path"], "/export/k8s/choppa/conduit");
    assert_eq!(pv["spec"]["mountOptions"], json!(["nfsvers=4.1"]));
    assert_eq!(pv["metadata"]["annotations"]["nfs.hearth.chat/share"], "small");
    event(&mut api, "ProvisioningSucceeded").await;
    assert_eq!(task.await.unwrap().unwrap(), ClaimOutcome::Provisioned("pvc-c1a1".into()));
    api.no_more_requests().await;
    assert_eq!(mode_of(&cluster.small().join("choppa/conduit")), 0o750);
    assert!(!cluster.big().join("choppa").exists());
}

#[tokio::test]
async fn existing_pv_means_already_provisioned() {
    let cluster = Cluster::new();
    let (p, _, mut api) = cluster.provisioner();
    let task = spawn_provision(p, claim(ga("nfs-provisioner-big"), json!({})));
    api.answer("GET", CLASS_BIG, 200, class("nfs-big", "nfs-provisioner-big", json!({}), json!({}))).await;
    api.answer(
        "GET",
        PV,
        200,
        json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "pvc-c1a1"}}),
    )
    .await;
    assert_eq!(task.await.unwrap().unwrap(), ClaimOutcome::AlreadyProvisioned);
    api.no_more_requests().await;
}

#[tokio::test]
async fn class_of_another_provisioner_is_left_alone() {
    let cluster = Cluster::new();
    let (p, _, mut api) = cluster.provisioner();
    let task = spawn_provision(p, claim(ga("nfs-provisioner-big"), json!({})));
    api.answer("GET", CLASS_BIG, 200, class("nfs-big", "nfs-provisioner-small", json!({}), json!({}))).await;
    assert_eq!(task.await.unwrap().unwrap(), ClaimOutcome::Ignored);
    api.no_more_requests().await;
}

#[tokio::test]
async fn claim_with_selector_gets_a_clear_event_and_no_volume() {
    let cluster = Cluster::new();
    let (p, _, mut api) = cluster.provisioner();
    let selector = json!({"selector": {"matchLabels": {"disk": "big"}}});
    let task = spawn_provision(p, claim(ga("nfs-provisioner-big"), selector));
    api.answer("GET", CLASS_BIG, 200, class("nfs-big", "nfs-provisioner-big", json!({}), json!({}))).await;
    api.not_found("GET", PV).await;
    let event = event(&mut api, "ProvisioningFailed").await;
    assert!(event["note"].as_str().unwrap().contains("the claim has a selector"), "{event}");
    assert!(matches!(task.await.unwrap().unwrap(), ClaimOutcome::Refused(_)));
    api.no_more_requests().await;
    assert_eq!(std::fs::read_dir(cluster.big()).unwrap().count(), 0);
}

#[tokio::test]
async fn wait_for_first_consumer_waits_for_the_selected_node() {
    let cluster = Cluster::new();
    let wffc = class("nfs-big", "nfs-provisioner-big", json!({}), json!({"volumeBindingMode": "WaitForFirstConsumer"}));

    let (p, _, mut api) = cluster.provisioner();
    let task = spawn_provision(p, claim(ga("nfs-provisioner-big"), json!({})));
    api.answer("GET", CLASS_BIG, 200, wffc.clone()).await;
    api.not_found("GET", PV).await;
    assert_eq!(task.await.unwrap().unwrap(), ClaimOutcome::WaitingForFirstConsumer);
    api.no_more_requests().await;

    let (p, _, mut api) = cluster.provisioner();
    let selected = json!({"volume.kubernetes.io/storage-provisioner": "nfs-provisioner-big",
                          "volume.kubernetes.io/selected-node": "choppaserver-1"});
    let task = spawn_provision(p, claim(selected, json!({})));
    api.answer("GET", CLASS_BIG, 200, wffc).await;
    api.not_found("GET", PV).await;
    event(&mut api, "Provisioning").await;
    api.answer("POST", PVS, 201, json!({})).await;
    event(&mut api, "ProvisioningSucceeded").await;
    assert_eq!(task.await.unwrap().unwrap(), ClaimOutcome::Provisioned("pvc-c1a1".into()));
    api.no_more_requests().await;
}

#[tokio::test]
async fn hostile_path_pattern_annotation_is_refused_and_nothing_is_made_outside() {
    let cluster = Cluster::new();
    let (p, _, mut api) = cluster.provisioner();
    let annotations = json!({"volume.kubernetes.io/storage-provisioner": "nfs-provisioner-big",
                             "nfs.io/storage-path": "../small/stolen"});
    let task = spawn_provision(p, claim(annotations, json!({})));
    let params = json!({"pathPattern": "${.PVC.annotations.nfs.io/storage-path}"});
    api.answer("GET", CLASS_BIG, 200, class("nfs-big", "nfs-provisioner-big", params, json!({}))).await;
    api.not_found("GET", PV).await;
    event(&mut api, "Provisioning").await;
    let failed = event(&mut api, "ProvisioningFailed").await;
    assert_eq!(failed["note"], "the volume path \"../small/stolen\" climbs out of the share with '..'");
    assert!(matches!(task.await.unwrap().unwrap(), ClaimOutcome::Refused(_)));
    api.no_more_requests().await;
    assert!(!cluster.small().join("stolen").exists());
    assert_eq!(std::fs::read_dir(cluster.big()).unwrap().count(), 0);
}

#[tokio::test]
async fn symlink_out_of_the_share_is_refused_with_an_event() {
    let cluster = Cluster::new();
    let outside = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(outside.path(), cluster.big().join("choppa")).unwrap();
    let (p, _, mut api) = cluster.provisioner();
    let task = spawn_provision(p, claim(ga("nfs-provisioner-big"), json!({})));
    let params = json!({"pathPattern": "${.PVC.namespace}/${.PVC.name}"});
    api.answer("GET", CLASS_BIG, 200, class("nfs-big", "nfs-provisioner-big", params, json!({}))).await;
    api.not_found("GET", PV).await;
    event(&mut api, "Provisioning").await;
    let failed = event(&mut api, "ProvisioningFailed").await;
    assert!(failed["note"].as_str().unwrap().contains("symlink that leads outside the share"), "{failed}");
    assert!(task.await.unwrap().is_err(), "a file-system failure is retried");
    api.no_more_requests().await;
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
}

#[tokio::test]
async fn missing_class_is_reported_and_retried() {
    let cluster = Cluster::new();
    let (p, _, mut api) = cluster.provisioner();
    let task = spawn_provision(p, claim(ga("nfs-provisioner-big"), json!({})));
    api.not_found("GET", CLASS_BIG).await;
    let failed = event(&mut api, "ProvisioningFailed").await;
    assert_eq!(failed["note"], "StorageClass \"nfs-big\" does not exist");
    assert!(task.await.unwrap().is_err());
    api.no_more_requests().await;
}

#[tokio::test]
async fn unknown_share_and_bad_parameter_are_named_in_the_event() {
    let cluster = Cluster::new();
    for (params, why) in [
        (json!({"share": "huge"}), "StorageClass \"nfs-big\" names share \"huge\", which is not configured"),
        (
            json!({"onDelete": "shred"}),
            "StorageClass parameter onDelete is \"shred\"; expected delete, retain or archive",
        ),
    ] {
        let (p, _, mut api) = cluster.provisioner();
        let task = spawn_provision(p, claim(ga("nfs-provisioner-big"), json!({})));
        api.answer("GET", CLASS_BIG, 200, class("nfs-big", "nfs-provisioner-big", params, json!({}))).await;
        api.not_found("GET", PV).await;
        event(&mut api, "Provisioning").await;
        assert_eq!(event(&mut api, "ProvisioningFailed").await["note"], why);
        assert_eq!(task.await.unwrap().unwrap(), ClaimOutcome::Refused(why.to_owned()));
        api.no_more_requests().await;
    }
}

#[tokio::test]
async fn claim_larger_than_free_space_is_refused_when_the_class_asks() {
    let cluster = Cluster::new();
    let (p, _, mut api) = cluster.provisioner();
    let task =
        spawn_provision(p, claim(ga("nfs-provisioner-big"), json!({"resources": {"requests": {"storage": "1000Ei"}}})));
    let params = json!({"refuseOverFreeSpace": "true"});
    api.answer("GET", CLASS_BIG, 200, class("nfs-big", "nfs-provisioner-big", params, json!({}))).await;
    api.not_found("GET", PV).await;
    event(&mut api, "Provisioning").await;
    let failed = event(&mut api, "ProvisioningFailed").await;
    assert!(failed["note"].as_str().unwrap().starts_with("the claim asks for 1000Ei"), "{failed}");
    assert!(task.await.unwrap().is_err());
    api.no_more_requests().await;
    assert_eq!(std::fs::read_dir(cluster.big()).unwrap().count(), 0);
}

#[tokio::test]
async fn pv_that_already_exists_on_create_counts_as_success() {
    let cluster = Cluster::new();
    let (p, _, mut api) = cluster.provisioner();
    let task = spawn_provision(p, claim(ga("nfs-provisioner-big"), json!({})));
    api.answer("GET", CLASS_BIG, 200, class("nfs-big", "nfs-provisioner-big", json!({}), json!({}))).await;
    api.not_found("GET", PV).await;
    event(&mut api, "Provisioning").await;
    api.answer("POST", PVS, 409, status(409, "AlreadyExists")).await;
    event(&mut api, "ProvisioningSucceeded").await;
    assert_eq!(task.await.unwrap().unwrap(), ClaimOutcome::Provisioned("pvc-c1a1".into()));
    api.no_more_requests().await;
}

#[tokio::test]
async fn pv_create_failure_is_reported_and_retried() {
    let cluster = Cluster::new();
    let (p, metrics, mut api) = cluster.provisioner();
    let task = spawn_provision(p, claim(ga("nfs-provisioner-big"), json!({})));
    api.answer("GET", CLASS_BIG, 200, class("nfs-big", "nfs-provisioner-big", json!({}), json!({}))).await;
    api.not_found("GET", PV).await;
    event(&mut api, "Provisioning").await;
    api.answer("POST", PVS, 403, status(403, "Forbidden")).await;
    let failed = event(&mut api, "ProvisioningFailed").await;
    assert!(failed["note"].as_str().unwrap().starts_with("creating PersistentVolume pvc-c1a1 failed"), "{failed}");
    assert!(task.await.unwrap().is_err());
    api.no_more_requests().await;
    assert_eq!(metrics.provisioning_failures.load(std::sync::atomic::Ordering::Relaxed), 1);
}

// ---- deletion ----

fn released_pv(
    provisioned_by: &str,
    policy: &str,
    class: &str,
    server: &str,
    path: &str,
    phase: &str,
) -> PersistentVolume {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": "pvc-c1a1", "annotations": {"pv.kubernetes.io/provisioned-by": provisioned_by}},
        "spec": {"persistentVolumeReclaimPolicy": policy, "storageClassName": class,
                 "nfs": {"server": server, "path": path}, "capacity": {"storage": "1Mi"}},
        "status": {"phase": phase},
    }))
    .unwrap()
}

fn volume_with_data(share: &Path, rel: &str) {
    std::fs::create_dir_all(share.join(rel)).unwrap();
    std::fs::write(share.join(rel).join("db"), b"rows").unwrap();
}

#[tokio::test]
async fn released_volume_is_deleted_with_its_nested_directory() {
    let cluster = Cluster::new();
    volume_with_data(&cluster.big(), "choppa/conduit");
    let (p, metrics, mut api) = cluster.provisioner();
    let pv =
        released_pv("nfs-provisioner-big", "Delete", "nfs-big", "192.168.3.10", "/storage/choppa/conduit", "Released");
    let task = spawn_delete(p, pv);
    api.answer(
        "GET",
        CLASS_BIG,
        200,
        class("nfs-big", "nfs-provisioner-big", json!({"onDelete": "delete"}), json!({})),
    )
    .await;
    api.answer(
        "DELETE",
        PV,
        200,
        json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "pvc-c1a1"}}),
    )
    .await;
    assert_eq!(task.await.unwrap().unwrap(), VolumeOutcome::Deleted(DeleteOutcome::Removed));
    api.no_more_requests().await;
    assert!(!cluster.big().join("choppa/conduit").exists());
    assert!(cluster.big().join("choppa").is_dir());
    assert_eq!(metrics.volumes_deleted.load(std::sync::atomic::Ordering::Relaxed), 1);
}

#[tokio::test]
async fn archive_on_delete_default_renames_with_a_timestamp() {
    let cluster = Cluster::new();
    volume_with_data(&cluster.big(), "choppa-conduit-pvc-c1a1");
    let (p, _, mut api) = cluster.provisioner();
    let pv = released_pv(
        "nfs-provisioner-big",
        "Delete",
        "nfs-big",
        "192.168.3.10",
        "/storage/choppa-conduit-pvc-c1a1",
        "Released",
    );
    let task = spawn_delete(p, pv);
    api.answer("GET", CLASS_BIG, 200, class("nfs-big", "nfs-provisioner-big", json!({}), json!({}))).await;
    api.answer("DELETE", PV, 200, json!({})).await;
    let outcome = task.await.unwrap().unwrap();
    api.no_more_requests().await;
    let VolumeOutcome::Deleted(DeleteOutcome::Archived(target)) = outcome else { panic!("not archived: {outcome:?}") };
    let name = target.file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.starts_with("archived-choppa-conduit-pvc-c1a1-"), "{name}");
    assert_eq!(std::fs::read(target.join("db")).unwrap(), b"rows");
    assert!(!cluster.big().join("choppa-conduit-pvc-c1a1").exists());
}

#[tokio::test]
async fn on_delete_retain_keeps_the_data_and_deletes_the_pv() {
    let cluster = Cluster::new();
    volume_with_data(&cluster.big(), "v");
    let (p, _, mut api) = cluster.provisioner();
    let pv = released_pv("nfs-provisioner-big", "Delete", "nfs-big", "192.168.3.10", "/storage/v", "Released");
    let task = spawn_delete(p, pv);
    api.answer(
        "GET",
        CLASS_BIG,
        200,
        class("nfs-big", "nfs-provisioner-big", json!({"onDelete": "retain"}), json!({})),
    )
    .await;
    api.answer("DELETE", PV, 200, json!({})).await;
    assert_eq!(task.await.unwrap().unwrap(), VolumeOutcome::Deleted(DeleteOutcome::Retained));
    api.no_more_requests().await;
    assert_eq!(std::fs::read(cluster.big().join("v/db")).unwrap(), b"rows");
}

#[tokio::test]
async fn reclaim_policy_retain_never_touches_data_or_pv() {
    let cluster = Cluster::new();
    volume_with_data(&cluster.big(), "v");
    let (p, _, api) = cluster.provisioner();
    let pv = released_pv("nfs-provisioner-big", "Retain", "nfs-big", "192.168.3.10", "/storage/v", "Released");
    assert_eq!(spawn_delete(p, pv).await.unwrap().unwrap(), VolumeOutcome::Ignored);
    api.no_more_requests().await;
    assert_eq!(std::fs::read(cluster.big().join("v/db")).unwrap(), b"rows");
}

#[tokio::test]
async fn bound_volume_and_strangers_volume_are_left_alone() {
    let cluster = Cluster::new();
    volume_with_data(&cluster.big(), "v");
    for pv in [
        released_pv("nfs-provisioner-big", "Delete", "nfs-big", "192.168.3.10", "/storage/v", "Bound"),
        released_pv("example.com/other", "Delete", "nfs-big", "192.168.3.10", "/storage/v", "Released"),
    ] {
        let (p, _, api) = cluster.provisioner();
        assert_eq!(spawn_delete(p, pv).await.unwrap().unwrap(), VolumeOutcome::Ignored);
        api.no_more_requests().await;
    }
    assert!(cluster.big().join("v/db").exists());
}

#[tokio::test]
async fn nfs_subdir_volume_is_found_by_server_and_path_and_deleted() {
    let cluster = Cluster::new();
    volume_with_data(&cluster.small(), "old-claim");
    let (p, _, mut api) = cluster.provisioner();
    let pv = released_pv(
        "cluster.local/nfs-subdir-external-provisioner",
        "Delete",
        "nfs-small",
        "nas-small.home.arpa",
        "/export/k8s/old-claim",
        "Released",
    );
    let task = spawn_delete(p, pv);
    let params = json!({"archiveOnDelete": "false"});
    api.answer(
        "GET",
        "/apis/storage.k8s.io/v1/storageclasses/nfs-small",
        200,
        class("nfs-small", "x", params, json!({})),
    )
    .await;
    api.answer("DELETE", PV, 200, json!({})).await;
    assert_eq!(task.await.unwrap().unwrap(), VolumeOutcome::Deleted(DeleteOutcome::Removed));
    api.no_more_requests().await;
    assert!(!cluster.small().join("old-claim").exists());
}

#[tokio::test]
async fn missing_directory_and_missing_pv_count_as_success() {
    let cluster = Cluster::new();
    let (p, _, mut api) = cluster.provisioner();
    let pv = released_pv("nfs-provisioner-big", "Delete", "nfs-big", "192.168.3.10", "/storage/gone", "Released");
    let task = spawn_delete(p, pv);
    api.answer(
        "GET",
        CLASS_BIG,
        200,
        class("nfs-big", "nfs-provisioner-big", json!({"onDelete": "delete"}), json!({})),
    )
    .await;
    api.not_found("DELETE", PV).await;
    assert_eq!(task.await.unwrap().unwrap(), VolumeOutcome::Deleted(DeleteOutcome::AlreadyGone));
    api.no_more_requests().await;
}

#[tokio::test]
async fn class_gone_archives_rather_than_deletes() {
    let cluster = Cluster::new();
    volume_with_data(&cluster.big(), "v");
    let (p, _, mut api) = cluster.provisioner();
    let pv = released_pv("nfs-provisioner-big", "Delete", "nfs-big", "192.168.3.10", "/storage/v", "Released");
    let task = spawn_delete(p, pv);
    api.not_found("GET", CLASS_BIG).await;
    api.answer("DELETE", PV, 200, json!({})).await;
    assert!(matches!(task.await.unwrap().unwrap(), VolumeOutcome::Deleted(DeleteOutcome::Archived(_))));
    api.no_more_requests().await;
    assert!(!cluster.big().join("v").exists());
}

#[tokio::test]
async fn volume_outside_every_share_is_refused_without_requests() {
    let cluster = Cluster::new();
    for (server, path) in
        [("10.9.9.9", "/storage/v"), ("192.168.3.10", "/elsewhere/v"), ("192.168.3.10", "/storage/../etc")]
    {
        let (p, _, api) = cluster.provisioner();
        let pv = released_pv("nfs-provisioner-big", "Delete", "nfs-big", server, path, "Released");
        assert!(matches!(spawn_delete(p, pv).await.unwrap().unwrap(), VolumeOutcome::Refused(_)), "{server}:{path}");
        api.no_more_requests().await;
    }
}
