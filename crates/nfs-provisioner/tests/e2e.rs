//! The real `hearth-nfs-provisioner` binary against the fake API server of `fake_api/` on loopback, with temporary
//! directories standing in for the NFS shares. The test plays the users (claims) and the PV controller (binding,
//! releasing). Waits poll for an outcome with a generous cap that only guards against a hang; nothing asserts how
//! long anything took.

mod fake_api;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use fake_api::FakeApi;
use serde_json::{json, Value};
use tokio::process::{Child, Command};

struct Cluster {
    api: FakeApi,
    dir: tempfile::TempDir,
}

impl Cluster {
    async fn new() -> Cluster {
        let api = FakeApi::start().await;
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("big")).unwrap();
        std::fs::write(dir.path().join("kubeconfig"), api.kubeconfig()).unwrap();
        api.create(
            "storageclasses",
            "",
            json!({"metadata": {"name": "nfs-big"}, "provisioner": "nfs-provisioner-big",
            "reclaimPolicy": "Delete", "volumeBindingMode": "Immediate", "parameters": {}}),
        );
        Cluster { api, dir }
    }

    fn share(&self) -> PathBuf {
        self.dir.path().join("big")
    }

    /// Starts a replica of the binary named `identity`, with its own configuration file and health port.
    fn start(&self, identity: &str) -> Replica {
        // A free port for the health server: bound, noted, released.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let config = format!(
            r#"
            listen = "127.0.0.1:{port}"
            [leader-election]
            namespace = "nfs-storage"
            lease-duration-seconds = 3
            renew-every-seconds = 1
            [[share]]
            name = "big"
            server = "nas-big.home.arpa"
            path = "/storage"
            mount = "{}"
            provisioner-names = ["nfs-provisioner-big"]
            "#,
            self.share().display(),
        );
        let config_path = self.dir.path().join(format!("{identity}.toml"));
        std::fs::write(&config_path, config).unwrap();
        let log = self.dir.path().join(format!("{identity}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_hearth-nfs-provisioner"))
            .arg("--config")
            .arg(&config_path)
            .env("KUBECONFIG", self.dir.path().join("kubeconfig"))
            .env("POD_NAME", identity)
            .env("RUST_LOG", "info")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("KUBERNETES_SERVICE_PORT")
            .env_remove("NFS_PROVISIONER_CONFIG")
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out))
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        Replica { child, log, port }
    }

    /// A claim as a user makes it; the PV controller has already addressed it to the class's provisioner.
    fn claim(&self, name: &str, annotations: Value, class: &str) -> String {
        let mut annotations = annotations;
        annotations["volume.kubernetes.io/storage-provisioner"] = json!("nfs-provisioner-big");
        let claim = self.api.create(
            "persistentvolumeclaims",
            "choppa",
            json!({
                "metadata": {"name": name, "annotations": annotations},
                "spec": {"storageClassName": class, "accessModes": ["ReadWriteOnce"],
                         "resources": {"requests": {"storage": "1Mi"}}},
            }),
        );
        claim["metadata"]["uid"].as_str().unwrap().to_owned()
    }

    fn lease_holder(&self) -> Option<String> {
        let lease = self.api.get("leases", "nfs-storage", "hearth-nfs-provisioner")?;
        lease["spec"]["holderIdentity"].as_str().map(str::to_owned)
    }

    fn events_for(&self, claim: &str) -> Vec<Value> {
        self.api.list("events").into_iter().filter(|e| e["regarding"]["name"] == claim).collect()
    }

    fn logs(&self) -> String {
        let mut all = String::new();
        for entry in std::fs::read_dir(self.dir.path()).unwrap().flatten() {
            if entry.path().extension().is_some_and(|e| e == "log") {
                all += &format!("--- {}\n{}\n", entry.path().display(), std::fs::read_to_string(entry.path()).unwrap());
            }
        }
        all
    }

    /// Polls `done` until it holds; panics naming `what`, with the replicas' logs, if it never does.
    async fn wait_until(&self, what: &str, mut done: impl FnMut() -> bool) {
        for _ in 0..1200 {
            if done() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("never happened: {what}\n{}", self.logs());
    }
}

struct Replica {
    child: Child,
    log: PathBuf,
    port: u16,
}

impl Replica {
    /// Status code and body of `GET path` on this replica's health server, if it answers.
    async fn health(&self, path: &str) -> Option<(u16, String)> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.ok()?;
        conn.write_all(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes()).await.ok()?;
        let mut reply = String::new();
        conn.read_to_string(&mut reply).await.ok()?;
        let code = reply.split_whitespace().nth(1)?.parse().ok()?;
        Some((code, reply.split_once("\r\n\r\n")?.1.to_owned()))
    }

    async fn terminate(mut self) -> i32 {
        let pid = self.child.id().unwrap();
        let killed = std::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status().unwrap();
        assert!(killed.success());
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await;
        let status =
            status.unwrap_or_else(|_| panic!("no exit after SIGTERM\n{}", std::fs::read_to_string(&self.log).unwrap()));
        status.unwrap().code().unwrap_or(-1)
    }
}

fn mode_of(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

#[tokio::test]
async fn claim_becomes_a_pv_and_a_directory_and_is_archived_when_released() {
    let cluster = Cluster::new().await;
    let replica = cluster.start("pod-a");
    let uid = cluster.claim("conduit", json!({}), "nfs-big");
    let pv_name = format!("pvc-{uid}");
    cluster.wait_until("the claim's PV exists", || cluster.api.get("persistentvolumes", "", &pv_name).is_some()).await;

    let pv = cluster.api.get("persistentvolumes", "", &pv_name).unwrap();
    let dir_name = format!("choppa-conduit-{pv_name}");
    assert_eq!(
        pv["spec"]["nfs"],
        json!({"server": "nas-big.home.arpa", "path": format!("/storage/{dir_name}"), "readOnly": false})
    );
    assert_eq!(pv["spec"]["claimRef"]["uid"], uid.as_str());
    assert_eq!(pv["metadata"]["annotations"]["pv.kubernetes.io/provisioned-by"], "nfs-provisioner-big");
    assert_eq!(mode_of(&cluster.share().join(&dir_name)), 0o755);
    cluster
        .wait_until("ProvisioningSucceeded is recorded", || {
            cluster.events_for("conduit").iter().any(|e| e["reason"] == "ProvisioningSucceeded")
        })
        .await;
    std::fs::write(cluster.share().join(&dir_name).join("db"), b"rows").unwrap();
    assert_eq!(replica.health("/readyz").await, Some((200, "ready\n".to_owned())), "{}", cluster.logs());
    let (code, metrics) = replica.health("/metrics").await.unwrap();
    assert_eq!(code, 200);
    assert!(metrics.contains("\nnfs_provisioner_volumes_provisioned_total 1\n"), "{metrics}");
    assert!(metrics.contains("\nnfs_provisioner_is_leader 1\n"), "{metrics}");

    // The PV controller: the claim is bound, then deleted, and the volume is released.
    cluster.api.update("persistentvolumeclaims", "choppa", "conduit", |c| c["spec"]["volumeName"] = json!(pv_name));
    cluster.api.update("persistentvolumes", "", &pv_name, |p| p["status"] = json!({"phase": "Bound"}));
    cluster.api.delete("persistentvolumeclaims", "choppa", "conduit");
    cluster.api.update("persistentvolumes", "", &pv_name, |p| p["status"] = json!({"phase": "Released"}));
    cluster
        .wait_until("the released PV is deleted", || cluster.api.get("persistentvolumes", "", &pv_name).is_none())
        .await;
    let names: Vec<String> = std::fs::read_dir(cluster.share())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
    assert!(names[0].starts_with(&format!("archived-{dir_name}-")), "{names:?}");
    assert_eq!(std::fs::read(cluster.share().join(&names[0]).join("db")).unwrap(), b"rows");

    assert_eq!(replica.terminate().await, 0);
    assert_eq!(cluster.lease_holder(), None, "the lease is released on SIGTERM");

    // That run made every kind of call the binary has (Lease create, get and update; claims listed and watched;
    // volumes listed, watched, read, created and deleted; a class read; events created): the manifests' RBAC must
    // grant exactly these, no more.
    assert_eq!(
        cluster.api.rbac_requests(),
        rbac_rules_of_the_manifests(),
        "deploy/kubernetes/nfs-provisioner/base/rbac.yaml"
    );
}

/// The (API group, resource, verb) triples granted by `deploy/kubernetes/nfs-provisioner/base/rbac.yaml`, ClusterRole and
/// Role together. The file keeps each list in flow style on one line (`verbs: ["get", "list"]`), which is JSON, so no
/// YAML parser is needed here.
fn rbac_rules_of_the_manifests() -> std::collections::BTreeSet<(String, String, String)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/kubernetes/nfs-provisioner/base/rbac.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let list = |line: &str| -> Vec<String> {
        let value = line.split_once(':').map(|(_, v)| v).unwrap_or_default();
        let value = &value[..value.find(']').map_or(value.len(), |i| i + 1)];
        serde_json::from_str(value.trim())
            .unwrap_or_else(|e| panic!("{}: {line:?} is not a flow list: {e}", path.display()))
    };
    let mut rules: Vec<[Vec<String>; 3]> = Vec::new();
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("- apiGroups:") {
            rules.push([list(&format!(":{rest}")), Vec::new(), Vec::new()]);
        } else if let (Some(rule), true) = (rules.last_mut(), line.starts_with("resources:")) {
            rule[1] = list(line);
        } else if let (Some(rule), true) = (rules.last_mut(), line.starts_with("verbs:")) {
            rule[2] = list(line);
        }
    }
    assert!(!rules.is_empty(), "no rules found in {}", path.display());
    let mut triples = std::collections::BTreeSet::new();
    for [groups, resources, verbs] in &rules {
        for g in groups {
            for r in resources {
                for v in verbs {
                    triples.insert((g.clone(), r.clone(), v.clone()));
                }
            }
        }
    }
    triples
}

#[tokio::test]
async fn hostile_path_pattern_is_refused_and_nothing_is_created_outside_the_share() {
    let cluster = Cluster::new().await;
    cluster.api.create(
        "storageclasses",
        "",
        json!({"metadata": {"name": "nfs-by-annotation"},
        "provisioner": "nfs-provisioner-big", "reclaimPolicy": "Delete",
        "parameters": {"pathPattern": "${.PVC.annotations.nfs.io/storage-path}"}}),
    );
    let replica = cluster.start("pod-a");
    let uid = cluster.claim("evil", json!({"nfs.io/storage-path": "../escaped"}), "nfs-by-annotation");
    cluster
        .wait_until("ProvisioningFailed is recorded", || {
            cluster.events_for("evil").iter().any(|e| e["reason"] == "ProvisioningFailed")
        })
        .await;
    let failed = cluster.events_for("evil").into_iter().find(|e| e["reason"] == "ProvisioningFailed").unwrap();
    assert_eq!(failed["note"], "the volume path \"../escaped\" climbs out of the share with '..'");
    assert_eq!(failed["type"], "Warning");
    assert!(cluster.api.get("persistentvolumes", "", &format!("pvc-{uid}")).is_none());
    assert!(!cluster.dir.path().join("escaped").exists());
    assert_eq!(std::fs::read_dir(cluster.share()).unwrap().count(), 0);
    assert_eq!(replica.terminate().await, 0);
}

#[tokio::test]
async fn only_the_lease_holder_provisions_and_a_standby_takes_over_when_it_is_killed() {
    let cluster = Cluster::new().await;
    let mut first = cluster.start("pod-a");
    cluster.wait_until("pod-a holds the lease", || cluster.lease_holder().as_deref() == Some("pod-a")).await;
    let second = cluster.start("pod-b");
    let mut standby_ready = false;
    for _ in 0..600 {
        if second.health("/readyz").await.is_some_and(|(code, _)| code == 200) {
            standby_ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(standby_ready, "a standby that can read the lease is ready\n{}", cluster.logs());
    let (_, standby_metrics) = second.health("/metrics").await.unwrap();
    assert!(standby_metrics.contains("\nnfs_provisioner_is_leader 0\n"), "{standby_metrics}");

    let uid = cluster.claim("one", json!({}), "nfs-big");
    cluster
        .wait_until("claim one is provisioned", || {
            cluster.api.get("persistentvolumes", "", &format!("pvc-{uid}")).is_some()
        })
        .await;
    cluster
        .wait_until("claim one's success is recorded", || {
            cluster.events_for("one").iter().any(|e| e["reason"] == "ProvisioningSucceeded")
        })
        .await;
    let instances: Vec<Value> = cluster.events_for("one").iter().map(|e| e["reportingInstance"].clone()).collect();
    assert!(instances.iter().all(|i| i == "pod-a"), "{instances:?}");
    assert_eq!(cluster.lease_holder().as_deref(), Some("pod-a"));

    first.child.kill().await.unwrap();
    cluster.wait_until("pod-b takes the lease over", || cluster.lease_holder().as_deref() == Some("pod-b")).await;
    let uid = cluster.claim("two", json!({}), "nfs-big");
    cluster
        .wait_until("claim two is provisioned", || {
            cluster.api.get("persistentvolumes", "", &format!("pvc-{uid}")).is_some()
        })
        .await;
    cluster
        .wait_until("claim two's success is recorded", || {
            cluster.events_for("two").iter().any(|e| e["reason"] == "ProvisioningSucceeded")
        })
        .await;
    let instances: Vec<Value> = cluster.events_for("two").iter().map(|e| e["reportingInstance"].clone()).collect();
    assert!(instances.iter().all(|i| i == "pod-b"), "{instances:?}");
    let lease = cluster.api.get("leases", "nfs-storage", "hearth-nfs-provisioner").unwrap();
    assert_eq!(lease["spec"]["leaseTransitions"], 1);

    assert_eq!(second.terminate().await, 0);
}

#[tokio::test]
async fn wait_for_first_consumer_claim_is_provisioned_only_once_a_node_is_selected() {
    let cluster = Cluster::new().await;
    cluster.api.create(
        "storageclasses",
        "",
        json!({"metadata": {"name": "nfs-wait"}, "provisioner": "nfs-provisioner-big",
        "reclaimPolicy": "Delete", "volumeBindingMode": "WaitForFirstConsumer", "parameters": {}}),
    );
    let replica = cluster.start("pod-a");
    let waiting = cluster.claim("waiting", json!({}), "nfs-wait");
    // A claim of an Immediate class, made after it: once it is provisioned, the waiting claim has been seen too.
    let immediate = cluster.claim("immediate", json!({}), "nfs-big");
    cluster
        .wait_until("the Immediate claim is provisioned", || {
            cluster.api.get("persistentvolumes", "", &format!("pvc-{immediate}")).is_some()
        })
        .await;
    assert!(cluster.api.get("persistentvolumes", "", &format!("pvc-{waiting}")).is_none());
    assert!(cluster.events_for("waiting").is_empty(), "waiting for a consumer is silent");

    // The scheduler picks a node for the claim's first pod.
    cluster.api.update("persistentvolumeclaims", "choppa", "waiting", |c| {
        c["metadata"]["annotations"]["volume.kubernetes.io/selected-node"] = json!("odroid-n2");
    });
    cluster
        .wait_until("the claim is provisioned once a node is selected", || {
            cluster.api.get("persistentvolumes", "", &format!("pvc-{waiting}")).is_some()
        })
        .await;
    assert!(cluster.share().join(format!("choppa-waiting-pvc-{waiting}")).is_dir());
    assert_eq!(replica.terminate().await, 0);
}

#[tokio::test]
async fn volumes_nfs_subdir_made_are_deleted_by_their_class_and_retained_ones_are_not_touched() {
    let cluster = Cluster::new().await;
    // As nfs-subdir-external-provisioner left them: its provisioner name, the server and path only (no share
    // annotation), a directory named <namespace>-<claim>-<pv>.
    cluster.api.create(
        "storageclasses",
        "",
        json!({"metadata": {"name": "nfs-subdir-delete"}, "provisioner": "nfs-provisioner-big",
        "reclaimPolicy": "Delete", "parameters": {"archiveOnDelete": "false"}}),
    );
    let old_volume = |name: &str, class: &str, policy: &str| {
        let dir = format!("choppa-{name}-pvc-{name}");
        std::fs::create_dir(cluster.share().join(&dir)).unwrap();
        std::fs::write(cluster.share().join(&dir).join("data"), b"rows").unwrap();
        cluster.api.create(
            "persistentvolumes",
            "",
            json!({"metadata": {"name": format!("pvc-{name}"),
                                "annotations": {"pv.kubernetes.io/provisioned-by": "nfs-provisioner-big"}},
                   "spec": {"storageClassName": class, "persistentVolumeReclaimPolicy": policy,
                            "capacity": {"storage": "1Mi"}, "accessModes": ["ReadWriteOnce"],
                            "nfs": {"server": "nas-big.home.arpa", "path": format!("/storage/{dir}")},
                            "claimRef": {"namespace": "choppa", "name": name}},
                   "status": {"phase": "Released"}}),
        );
        dir
    };
    let kept = old_volume("kept", "nfs-big", "Retain");
    let dropped = old_volume("dropped", "nfs-subdir-delete", "Delete");
    let replica = cluster.start("pod-a");
    cluster
        .wait_until("the released Delete volume is deleted", || {
            cluster.api.get("persistentvolumes", "", "pvc-dropped").is_none()
        })
        .await;
    assert!(!cluster.share().join(&dropped).exists(), "archiveOnDelete \"false\" removes the directory");
    // Both volumes were in the controller's first list; the Retain one is left exactly as it was.
    assert_eq!(cluster.api.get("persistentvolumes", "", "pvc-kept").unwrap()["status"]["phase"], "Released");
    assert_eq!(std::fs::read(cluster.share().join(&kept).join("data")).unwrap(), b"rows");
    assert_eq!(replica.terminate().await, 0);
}
