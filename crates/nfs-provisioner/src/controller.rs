//! The running provisioner: two kube-runtime controllers (watchers on PersistentVolumeClaims and PersistentVolumes)
//! that hand each changed object to `reconcile`, while this replica holds the Lease.
//!
//! A failed reconcile is retried after [`RETRY_AFTER`]; a finished one waits for the object to change. Losing the
//! Lease stops both controllers and ends the process with an error status, so Kubernetes restarts it as a follower
//! (the same choice client-go's leader election makes): two replicas never provision at once for longer than a
//! renewal period.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use kube::api::ListParams;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Api, Client};
use tokio::sync::watch;
// Tokio's clock, not std's, so that tests can run these loops on paused time.
use tokio::time::Instant;

use crate::health::Health;
use crate::leader::{LeaderElector, Role};
use crate::reconcile::{Provisioner, ReconcileError};

/// How soon a failed provisioning or deletion is tried again.
pub const RETRY_AFTER: Duration = Duration::from_secs(15);

/// Why the provisioner stopped.
#[derive(Debug, PartialEq, Eq)]
pub enum Stopped {
    /// A signal asked it to.
    Shutdown,
    /// Another replica holds the Lease now.
    LostLease,
}

async fn reconcile_claim(claim: Arc<PersistentVolumeClaim>, p: Arc<Provisioner>) -> Result<Action, ReconcileError> {
    let outcome = p.provision(&claim).await?;
    tracing::debug!(claim = ?claim.metadata.name, ?outcome, "claim reconciled");
    Ok(Action::await_change())
}

async fn reconcile_volume(pv: Arc<PersistentVolume>, p: Arc<Provisioner>) -> Result<Action, ReconcileError> {
    let outcome = p.delete(&pv).await?;
    tracing::debug!(volume = ?pv.metadata.name, ?outcome, "volume reconciled");
    Ok(Action::await_change())
}

fn retry<K>(_: Arc<K>, error: &ReconcileError, _: Arc<Provisioner>) -> Action {
    tracing::warn!(%error, "will retry");
    Action::requeue(RETRY_AFTER)
}

/// Runs both controllers until `shutdown` turns true; marks `health` ready once claims and volumes can be listed.
pub async fn run_controllers(
    client: Client,
    provisioner: Arc<Provisioner>,
    health: Arc<Health>,
    shutdown: watch::Receiver<bool>,
) {
    let claims = Controller::new(Api::<PersistentVolumeClaim>::all(client.clone()), watcher::Config::default())
        .graceful_shutdown_on(wait_true(shutdown.clone()));
    let volumes = Controller::new(Api::<PersistentVolume>::all(client.clone()), watcher::Config::default())
        .graceful_shutdown_on(wait_true(shutdown));
    tokio::spawn(mark_ready_when_listable(client.clone(), health));
    let claims = claims.run(reconcile_claim, retry, provisioner.clone()).for_each(|r| async move {
        if let Err(e) = r {
            tracing::warn!(error = %e, "claim controller");
        }
    });
    let volumes = volumes.run(reconcile_volume, retry, provisioner).for_each(|r| async move {
        if let Err(e) = r {
            tracing::warn!(error = %e, "volume controller");
        }
    });
    futures::future::join(claims, volumes).await;
}

/// Marks `health` ready once claims and volumes can be listed (the API answers and RBAC allows it).
///
/// Not `Store::wait_until_ready`: kube-runtime's controller already waits on its store, and that wait keeps a single
/// waker, so a second waiter can leave one of the two asleep for ever (the end-to-end test caught this).
async fn mark_ready_when_listable(client: Client, health: Arc<Health>) {
    let one = ListParams::default().limit(1);
    loop {
        let claims = Api::<PersistentVolumeClaim>::all(client.clone()).list_metadata(&one).await;
        let volumes = Api::<PersistentVolume>::all(client.clone()).list_metadata(&one).await;
        match (claims, volumes) {
            (Ok(_), Ok(_)) => {
                health.ready.store(true, Ordering::Relaxed);
                tracing::info!("watching claims and volumes");
                return;
            }
            (Err(e), _) | (_, Err(e)) => tracing::warn!(error = %e, "cannot list claims or volumes yet"),
        }
        tokio::time::sleep(RETRY_AFTER).await;
    }
}

/// Resolves when the flag turns (or already is) true, or its sender is gone.
pub async fn wait_true(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

/// Tries for the Lease every `every` until this replica holds it (`true`) or `shutdown` turns true (`false`).
pub async fn acquire(
    elector: &mut LeaderElector,
    every: Duration,
    health: &Health,
    mut shutdown: watch::Receiver<bool>,
) -> bool {
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            biased;
            _ = shutdown.wait_for(|v| *v) => return false,
            _ = tick.tick() => {}
        }
        match elector.try_acquire_or_renew(Instant::now().into_std()).await {
            Ok(Role::Leader) => {
                tracing::info!(identity = elector.identity(), "acquired the lease");
                return true;
            }
            Ok(Role::Follower(holder)) => {
                // A standby that can read the Lease is healthy and ready to take over.
                health.ready.store(true, Ordering::Relaxed);
                tracing::debug!(?holder, "standing by");
            }
            Err(e) => tracing::warn!(error = %e, "cannot read or write the lease"),
        }
    }
}

/// Renews the Lease every `every` while holding it. Returns when `shutdown` turns true, or when the Lease is lost:
/// someone else holds it, or no renewal succeeded for `deadline`.
pub async fn keep(
    elector: &mut LeaderElector,
    every: Duration,
    deadline: Duration,
    mut shutdown: watch::Receiver<bool>,
) -> Stopped {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    let mut last_renewed = Instant::now();
    loop {
        tokio::select! {
            biased;
            _ = shutdown.wait_for(|v| *v) => return Stopped::Shutdown,
            _ = tick.tick() => {}
        }
        match elector.try_acquire_or_renew(Instant::now().into_std()).await {
            Ok(Role::Leader) => last_renewed = Instant::now(),
            Ok(Role::Follower(Some(holder))) if holder != elector.identity() => {
                tracing::error!(%holder, "the lease is held by another replica");
                return Stopped::LostLease;
            }
            Ok(Role::Follower(_)) => tracing::warn!("lease renewal conflicted; retrying"),
            Err(e) => tracing::warn!(error = %e, "lease renewal failed"),
        }
        if last_renewed.elapsed() >= deadline {
            tracing::error!(?deadline, "could not renew the lease in time");
            return Stopped::LostLease;
        }
    }
}
