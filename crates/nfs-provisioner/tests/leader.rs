//! Leader election against the mocked API service: acquiring a missing Lease, renewing our own, following a live
//! holder, taking over only after the Lease stood still for a whole duration by our own clock, losing races with a
//! `409 Conflict`, and releasing on shutdown.

mod common;

use std::time::{Duration, Instant};

use common::{mock_client, status, MockApi};
use nfs_provisioner::leader::{LeaderElector, Role};
use serde_json::{json, Value};

const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/nfs-storage/leases/hearth-nfs-provisioner";
const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/nfs-storage/leases";

fn elector() -> (LeaderElector, MockApi) {
    let (client, api) = mock_client();
    let e = LeaderElector::new(client, "nfs-storage", "hearth-nfs-provisioner", "pod-a", Duration::from_secs(15));
    (e, api)
}

fn lease(holder: &str, version: &str, transitions: i32) -> Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "hearth-nfs-provisioner", "namespace": "nfs-storage", "resourceVersion": version},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15, "leaseTransitions": transitions,
                 "acquireTime": "2026-12-06T22:00:00.000000Z", "renewTime": "2026-12-06T22:00:05.000000Z"},
    })
}

/// Runs one attempt at `now` while the block answers as the API server.
macro_rules! attempt {
    ($elector:expr, $now:expr, $script:block) => {{
        let (role, ()) = tokio::join!($elector.try_acquire_or_renew($now), async $script);
        role.unwrap()
    }};
}

#[tokio::test]
async fn missing_lease_is_created_and_held() {
    let (mut e, mut api) = elector();
    let (role, sent) = tokio::join!(e.try_acquire_or_renew(Instant::now()), async {
        api.not_found("GET", LEASE).await;
        api.answer("POST", LEASES, 201, lease("pod-a", "1", 0)).await
    });
    assert_eq!(role.unwrap(), Role::Leader);
    assert_eq!(sent["metadata"]["name"], "hearth-nfs-provisioner");
    assert_eq!(sent["spec"]["holderIdentity"], "pod-a");
    assert_eq!(sent["spec"]["leaseDurationSeconds"], 15);
    assert_eq!(sent["spec"]["leaseTransitions"], 0);
    assert!(sent["spec"]["renewTime"].is_string());
    drop(e);
    api.no_more_requests().await;
}

#[tokio::test]
async fn losing_the_create_race_makes_a_follower() {
    let (mut e, mut api) = elector();
    let role = attempt!(e, Instant::now(), {
        api.not_found("GET", LEASE).await;
        api.answer("POST", LEASES, 409, status(409, "AlreadyExists")).await;
    });
    assert_eq!(role, Role::Follower(None));
}

#[tokio::test]
async fn own_lease_is_renewed_with_its_resource_version() {
    let (mut e, mut api) = elector();
    let (role, sent) = tokio::join!(e.try_acquire_or_renew(Instant::now()), async {
        api.answer("GET", LEASE, 200, lease("pod-a", "41", 3)).await;
        api.answer("PUT", LEASE, 200, lease("pod-a", "42", 3)).await
    });
    assert_eq!(role.unwrap(), Role::Leader);
    assert_eq!(sent["metadata"]["resourceVersion"], "41");
    assert_eq!(sent["spec"]["holderIdentity"], "pod-a");
    assert_eq!(sent["spec"]["leaseTransitions"], 3, "a renewal is not a transition");
    assert_eq!(sent["spec"]["acquireTime"], "2026-12-06T22:00:00.000000Z");
    assert_ne!(sent["spec"]["renewTime"], "2026-12-06T22:00:05.000000Z");
}

#[tokio::test]
async fn renewal_conflict_makes_a_follower() {
    let (mut e, mut api) = elector();
    let role = attempt!(e, Instant::now(), {
        api.answer("GET", LEASE, 200, lease("pod-a", "41", 0)).await;
        api.answer("PUT", LEASE, 409, status(409, "Conflict")).await;
    });
    assert_eq!(role, Role::Follower(Some("pod-a".into())));
}

#[tokio::test]
async fn live_holder_is_followed_and_taken_over_only_after_a_still_lease_duration() {
    let (mut e, mut api) = elector();
    let start = Instant::now();
    let role = attempt!(e, start, {
        api.answer("GET", LEASE, 200, lease("pod-b", "7", 2)).await;
    });
    assert_eq!(role, Role::Follower(Some("pod-b".into())));

    // Same resourceVersion, but not yet a whole duration since we first saw it.
    let role = attempt!(e, start + Duration::from_secs(14), {
        api.answer("GET", LEASE, 200, lease("pod-b", "7", 2)).await;
    });
    assert_eq!(role, Role::Follower(Some("pod-b".into())));

    let (role, sent) = tokio::join!(e.try_acquire_or_renew(start + Duration::from_secs(16)), async {
        api.answer("GET", LEASE, 200, lease("pod-b", "7", 2)).await;
        api.answer("PUT", LEASE, 200, lease("pod-a", "8", 3)).await
    });
    assert_eq!(role.unwrap(), Role::Leader);
    assert_eq!(sent["metadata"]["resourceVersion"], "7");
    assert_eq!(sent["spec"]["holderIdentity"], "pod-a");
    assert_eq!(sent["spec"]["leaseTransitions"], 3);
    assert_ne!(sent["spec"]["acquireTime"], "2026-12-06T22:00:00.000000Z");
}

#[tokio::test]
async fn a_holder_that_keeps_renewing_is_never_taken_over() {
    let (mut e, mut api) = elector();
    let start = Instant::now();
    for (i, version) in ["7", "8", "9"].into_iter().enumerate() {
        let now = start + Duration::from_secs(10 * i as u64);
        let role = attempt!(e, now, {
            api.answer("GET", LEASE, 200, lease("pod-b", version, 0)).await;
        });
        assert_eq!(role, Role::Follower(Some("pod-b".into())), "attempt {i}");
    }
}

#[tokio::test]
async fn released_lease_is_taken_at_once_and_a_lost_race_is_a_follower() {
    let (mut e, mut api) = elector();
    let role = attempt!(e, Instant::now(), {
        api.answer("GET", LEASE, 200, lease("", "7", 1)).await;
        api.answer("PUT", LEASE, 200, lease("pod-a", "8", 2)).await;
    });
    assert_eq!(role, Role::Leader);

    let (mut e, mut api) = elector();
    let role = attempt!(e, Instant::now(), {
        api.answer("GET", LEASE, 200, lease("", "7", 1)).await;
        api.answer("PUT", LEASE, 409, status(409, "Conflict")).await;
    });
    assert_eq!(role, Role::Follower(None));
}

#[tokio::test]
async fn release_empties_the_holder_only_if_it_is_us() {
    let (mut e, mut api) = elector();
    let (done, sent) = tokio::join!(e.release(), async {
        api.answer("GET", LEASE, 200, lease("pod-a", "9", 1)).await;
        api.answer("PUT", LEASE, 200, lease("", "10", 1)).await
    });
    done.unwrap();
    assert_eq!(sent["metadata"]["resourceVersion"], "9");
    assert_eq!(sent["spec"].get("holderIdentity"), None);
    assert_eq!(sent["spec"]["leaseDurationSeconds"], 1);

    let (mut e, mut api) = elector();
    let (done, ()) = tokio::join!(e.release(), async {
        api.answer("GET", LEASE, 200, lease("pod-b", "9", 1)).await;
    });
    done.unwrap();
    drop(e);
    api.no_more_requests().await;
}
