//! The provisioner's figures for `bench/nfs-provisioner.sh` (a benchmark, not a timed test: `#[ignore]`d, it asserts
//! only that the work got done). One binary, the leader, against the fake API server of `fake_api/` on loopback with
//! a temporary directory as the share:
//!
//! 1. idle: resident memory (`VmRSS`) once it leads and watches, after a few seconds at rest;
//! 2. a burst: N claims created at once; wall time until every PV exists, claims per second, the binary's CPU time
//!    per claim (`utime + stime` from `/proc/<pid>/stat`), resident and peak memory after;
//! 3. release: all N volumes released at once (class `onDelete: delete`); time until every PV is gone;
//! 4. idle again, then SIGTERM.
//!
//! The binary is `NFS_PROVISIONER_BENCH_BIN` (the script passes the release build) or the test's own build. It prints
//! one line `BENCH-JSON {…}` with every figure. N is `NFS_PROVISIONER_BENCH_CLAIMS` (default 200).

mod fake_api;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use fake_api::FakeApi;
use serde_json::json;
use tokio::process::Command;

/// `VmRSS` and `VmHWM` of `pid`, in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// User plus system CPU time of `pid`, in milliseconds.
fn cpu_ms(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<u64> = rest.split_whitespace().map(|f| f.parse().unwrap_or(0)).collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 of `rest` (from 1).
    let ticks = fields[11] + fields[12];
    // Clock ticks per second: 100 on every Linux this runs on (`getconf CLK_TCK`).
    ticks * 10
}

async fn wait_until(what: &str, log: &PathBuf, mut done: impl FnMut() -> bool) {
    for _ in 0..60_000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!("never happened: {what}\n{}", std::fs::read_to_string(log).unwrap_or_default());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run by bench/nfs-provisioner.sh"]
async fn provisioning_throughput_and_memory() {
    let claims: usize = std::env::var("NFS_PROVISIONER_BENCH_CLAIMS").ok().and_then(|v| v.parse().ok()).unwrap_or(200);
    let binary = std::env::var("NFS_PROVISIONER_BENCH_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_BIN_EXE_hearth-nfs-provisioner")));
    let api = FakeApi::start().await;
    let dir = tempfile::tempdir().unwrap();
    let share = dir.path().join("share");
    std::fs::create_dir(&share).unwrap();
    std::fs::write(dir.path().join("kubeconfig"), api.kubeconfig()).unwrap();
    api.create(
        "storageclasses",
        "",
        json!({"metadata": {"name": "bench"}, "provisioner": "nfs-provisioner-bench",
               "reclaimPolicy": "Delete", "volumeBindingMode": "Immediate", "parameters": {"onDelete": "delete"}}),
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = dir.path().join("provisioner.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\n[leader-election]\nnamespace = \"nfs-storage\"\n[[share]]\nname = \"bench\"\n\
             server = \"nas.home.arpa\"\npath = \"/storage\"\nmount = \"{}\"\nprovisioner-names = [\"nfs-provisioner-bench\"]\n",
            share.display()
        ),
    )
    .unwrap();
    let log = dir.path().join("provisioner.log");
    let out = std::fs::File::create(&log).unwrap();
    let mut child = Command::new(&binary)
        .arg("--config")
        .arg(&config)
        .env("KUBECONFIG", dir.path().join("kubeconfig"))
        .env("POD_NAME", "bench")
        .env("RUST_LOG", "warn")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .env_remove("NFS_PROVISIONER_CONFIG")
        .stdout(Stdio::from(out.try_clone().unwrap()))
        .stderr(Stdio::from(out))
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    let started = Instant::now();

    // 1. Leading and watching: the Lease is ours and a first claim went through.
    let holder = || {
        api.get("leases", "nfs-storage", "hearth-nfs-provisioner")
            .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_owned))
    };
    wait_until("the lease is taken", &log, || holder().as_deref() == Some("bench")).await;
    let warmup = make_claim(&api, "warmup");
    wait_until("the warm-up claim is provisioned", &log, || api.get("persistentvolumes", "", &warmup).is_some()).await;
    let ready_after = started.elapsed();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (idle_rss, idle_hwm) = memory_kib(pid);
    let cpu_before = cpu_ms(pid);

    // 2. A burst of claims.
    let t = Instant::now();
    let names: Vec<String> = (0..claims).map(|i| make_claim(&api, &format!("claim-{i}"))).collect();
    wait_until("every claim is provisioned", &log, || {
        let have = api.list("persistentvolumes").len();
        have == claims + 1
    })
    .await;
    let burst = t.elapsed();
    let cpu_burst = cpu_ms(pid) - cpu_before;
    let (after_rss, after_hwm) = memory_kib(pid);
    assert_eq!(std::fs::read_dir(&share).unwrap().count(), claims + 1);

    // 3. Every volume released at once (the PV controller's part, played here).
    let cpu_before = cpu_ms(pid);
    let t = Instant::now();
    for name in &names {
        api.update("persistentvolumes", "", name, |p| p["status"] = json!({"phase": "Released"}));
    }
    wait_until("every released volume is deleted", &log, || api.list("persistentvolumes").len() == 1).await;
    let release = t.elapsed();
    let cpu_release = cpu_ms(pid) - cpu_before;
    assert_eq!(std::fs::read_dir(&share).unwrap().count(), 1);

    // 4. At rest again, then SIGTERM.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (rest_rss, rest_hwm) = memory_kib(pid);
    let killed = std::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status().unwrap();
    assert!(killed.success());
    let t = Instant::now();
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait()).await.unwrap().unwrap();
    let exit = t.elapsed();
    assert_eq!(status.code(), Some(0), "{}", std::fs::read_to_string(&log).unwrap());

    let secs = burst.as_secs_f64();
    let figures = json!({
        "binary": binary.display().to_string(),
        "binary_bytes": std::fs::metadata(&binary).unwrap().len(),
        "claims": claims,
        "ready_ms": ready_after.as_millis(),
        "idle_rss_kib": idle_rss, "idle_hwm_kib": idle_hwm,
        "burst_ms": burst.as_millis(),
        "claims_per_second": (claims as f64 / secs * 10.0).round() / 10.0,
        "cpu_ms_per_claim": (cpu_burst as f64 / claims as f64 * 100.0).round() / 100.0,
        "after_burst_rss_kib": after_rss, "after_burst_hwm_kib": after_hwm,
        "release_ms": release.as_millis(),
        "deletions_per_second": (claims as f64 / release.as_secs_f64() * 10.0).round() / 10.0,
        "cpu_ms_per_deletion": (cpu_release as f64 / claims as f64 * 100.0).round() / 100.0,
        "rest_rss_kib": rest_rss, "rest_hwm_kib": rest_hwm,
        "sigterm_exit_ms": exit.as_millis(),
    });
    println!("BENCH-JSON {figures}");
}

/// A claim addressed to the bench class's provisioner; returns its PV's name.
fn make_claim(api: &FakeApi, name: &str) -> String {
    let claim = api.create(
        "persistentvolumeclaims",
        "bench",
        json!({
            "metadata": {"name": name,
                         "annotations": {"volume.kubernetes.io/storage-provisioner": "nfs-provisioner-bench"}},
            "spec": {"storageClassName": "bench", "accessModes": ["ReadWriteMany"],
                     "resources": {"requests": {"storage": "1Mi"}}},
        }),
    );
    format!("pvc-{}", claim["metadata"]["uid"].as_str().unwrap())
}
