//! Leader election through a `coordination.k8s.io/v1` Lease, so that of several replicas only one provisions.
//!
//! The holder renews the Lease every few seconds. Another replica takes over only when the Lease has not changed for
//! a whole lease duration *as measured by its own clock* (it remembers when it first saw the current
//! `resourceVersion`), so clock skew between nodes cannot make it jump in early. Every write is a replace carrying the
//! `resourceVersion` that was read: if two replicas race, the API server accepts one and answers `409 Conflict` to the
//! other, which simply stays a follower. On shutdown the holder releases the Lease (empty holder), so a successor
//! need not wait for it to expire.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Client};

/// The result of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    Leader,
    /// Someone else holds the Lease (named, if known), or won a race for it.
    Follower(Option<String>),
}

pub struct LeaderElector {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
    /// The Lease's `resourceVersion` when last read, and when (by our clock) it was first seen.
    observed: Option<(String, Instant)>,
}

impl LeaderElector {
    pub fn new(client: Client, namespace: &str, name: &str, identity: &str, duration: Duration) -> Self {
        LeaderElector {
            api: Api::namespaced(client, namespace),
            name: name.to_owned(),
            identity: identity.to_owned(),
            duration,
            observed: None,
        }
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Acquires, renews or observes the Lease once; `now` is the local monotonic time of the attempt.
    pub async fn try_acquire_or_renew(&mut self, now: Instant) -> Result<Role, kube::Error> {
        let Some(lease) = self.api.get_opt(&self.name).await? else {
            return self.create().await;
        };
        let version = lease.metadata.resource_version.clone().unwrap_or_default();
        let first_seen = match &self.observed {
            Some((v, at)) if *v == version => *at,
            _ => now,
        };
        self.observed = Some((version, first_seen));
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        if holder.as_deref() == Some(self.identity.as_str()) {
            let renewed = LeaseSpec { renew_time: Some(MicroTime(Timestamp::now())), ..spec };
            return self.replace(lease, renewed, holder).await;
        }
        let their_duration =
            spec.lease_duration_seconds.and_then(|s| u64::try_from(s).ok()).map_or(self.duration, Duration::from_secs);
        if holder.is_some() && now.saturating_duration_since(first_seen) < their_duration {
            return Ok(Role::Follower(holder));
        }
        let stamp = MicroTime(Timestamp::now());
        let taken = LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.duration_seconds()),
            acquire_time: Some(stamp.clone()),
            renew_time: Some(stamp),
            lease_transitions: Some(spec.lease_transitions.unwrap_or(0).saturating_add(1)),
            ..spec
        };
        self.replace(lease, taken, holder).await
    }

    async fn create(&mut self) -> Result<Role, kube::Error> {
        let stamp = MicroTime(Timestamp::now());
        let lease = Lease {
            metadata: ObjectMeta { name: Some(self.name.clone()), ..ObjectMeta::default() },
            spec: Some(LeaseSpec {
                holder_identity: Some(self.identity.clone()),
                lease_duration_seconds: Some(self.duration_seconds()),
                acquire_time: Some(stamp.clone()),
                renew_time: Some(stamp),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        match self.api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(Role::Leader),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Role::Follower(None)),
            Err(e) => Err(e),
        }
    }

    /// Writes `spec` over `lease`, guarded by the `resourceVersion` it was read at.
    async fn replace(
        &mut self,
        mut lease: Lease,
        spec: LeaseSpec,
        holder: Option<String>,
    ) -> Result<Role, kube::Error> {
        lease.spec = Some(spec);
        match self.api.replace(&self.name, &PostParams::default(), &lease).await {
            Ok(written) => {
                // Our own write is not a sign of life from someone else.
                if let (Some(v), Some((_, at))) = (written.metadata.resource_version, &self.observed) {
                    self.observed = Some((v, *at));
                }
                Ok(Role::Leader)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Role::Follower(holder)),
            Err(e) => Err(e),
        }
    }

    /// Gives the Lease up if we hold it, so that a successor takes over at once.
    pub async fn release(&mut self) -> Result<(), kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.name).await? else { return Ok(()) };
        let spec = lease.spec.take().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        lease.spec = Some(LeaseSpec {
            holder_identity: None,
            lease_duration_seconds: Some(1),
            renew_time: Some(MicroTime(Timestamp::now())),
            ..spec
        });
        match self.api.replace(&self.name, &PostParams::default(), &lease).await {
            Ok(_) => Ok(()),
            // Someone else wrote it meanwhile: it is no longer ours to release.
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn duration_seconds(&self) -> i32 {
        i32::try_from(self.duration.as_secs()).unwrap_or(i32::MAX)
    }
}
