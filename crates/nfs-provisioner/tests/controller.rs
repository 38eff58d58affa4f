//! The Lease loops of the running binary (`controller::acquire` and `controller::keep`) against the mocked API
//! service, on tokio's paused clock: time moves only when every task waits, so renewals, expiry and deadlines are
//! exercised without real waiting and without timing assertions.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{mock_client, status, MockApi};
use nfs_provisioner::controller::{acquire, keep, Stopped};
use nfs_provisioner::health::Health;
use nfs_provisioner::leader::LeaderElector;
use serde_json::{json, Value};
use tokio::sync::watch;

const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/nfs-storage/leases/hearth-nfs-provisioner";
const SECOND: Duration = Duration::from_secs(1);

fn elector() -> (LeaderElector, MockApi) {
    let (client, api) = mock_client();
    let e = LeaderElector::new(client, "nfs-storage", "hearth-nfs-provisioner", "pod-a", Duration::from_secs(3));
    (e, api)
}

fn lease(holder: &str, version: &str) -> Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "hearth-nfs-provisioner", "namespace": "nfs-storage", "resourceVersion": version},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 3, "leaseTransitions": 0,
                 "renewTime": "2026-12-06T22:00:05.000000Z"},
    })
}

#[tokio::test(start_paused = true)]
async fn standby_is_ready_and_takes_the_lease_once_it_stood_still_for_a_duration() {
    let (mut e, mut api) = elector();
    let health = Health::default();
    let (_tx, rx) = watch::channel(false);
    let (leading, sent) = tokio::join!(acquire(&mut e, SECOND, &health, rx), async {
        // Seen at 0 s, 1 s and 2 s: pod-b's lease is still live; at 3 s it has stood still for its duration.
        for _ in 0..4 {
            api.answer("GET", LEASE, 200, lease("pod-b", "7")).await;
        }
        api.answer("PUT", LEASE, 200, lease("pod-a", "8")).await
    });
    assert!(leading);
    assert_eq!(sent["spec"]["holderIdentity"], "pod-a");
    assert!(health.ready.load(Ordering::Relaxed), "a standby that can read the lease is ready");
    drop(e);
    api.no_more_requests().await;
}

#[tokio::test(start_paused = true)]
async fn shutdown_while_standing_by_sends_nothing() {
    let (mut e, api) = elector();
    let (tx, rx) = watch::channel(false);
    tx.send(true).unwrap();
    assert!(!acquire(&mut e, SECOND, &Health::default(), rx).await);
    drop(e);
    api.no_more_requests().await;
}

#[tokio::test(start_paused = true)]
async fn leader_stops_at_once_when_another_replica_holds_the_lease() {
    let (mut e, mut api) = elector();
    let (_tx, rx) = watch::channel(false);
    let (stopped, _) = tokio::join!(keep(&mut e, SECOND, 2 * SECOND, rx), async {
        api.answer("GET", LEASE, 200, lease("pod-b", "9")).await
    });
    assert_eq!(stopped, Stopped::LostLease);
}

#[tokio::test(start_paused = true)]
async fn leader_gives_up_when_no_renewal_succeeds_before_the_deadline() {
    let (mut e, mut api) = elector();
    let (_tx, rx) = watch::channel(false);
    let (stopped, ()) = tokio::join!(keep(&mut e, SECOND, 2 * SECOND, rx), async {
        api.answer("GET", LEASE, 500, status(500, "InternalError")).await;
        api.answer("GET", LEASE, 500, status(500, "InternalError")).await;
    });
    assert_eq!(stopped, Stopped::LostLease);
    drop(e);
    api.no_more_requests().await;
}

#[tokio::test(start_paused = true)]
async fn leader_rides_out_a_conflict_renews_and_stops_on_shutdown() {
    let (mut e, mut api) = elector();
    let (tx, rx) = watch::channel(false);
    let (stopped, ()) = tokio::join!(keep(&mut e, SECOND, 2 * SECOND, rx), async {
        api.answer("GET", LEASE, 200, lease("pod-a", "10")).await;
        api.answer("PUT", LEASE, 409, status(409, "Conflict")).await;
        api.answer("GET", LEASE, 200, lease("pod-a", "11")).await;
        let renewal = api.answer("PUT", LEASE, 200, lease("pod-a", "12")).await;
        assert_eq!(renewal["metadata"]["resourceVersion"], "11");
        tx.send(true).unwrap();
    });
    assert_eq!(stopped, Stopped::Shutdown);
    drop(e);
    api.no_more_requests().await;
}
