//! Events on claims, through `events.k8s.io/v1`: `Provisioning`, `ProvisioningSucceeded` and `ProvisioningFailed`,
//! the same reasons the external-provisioner library uses, so `kubectl describe pvc` reads as users expect.
//!
//! Each event is a plain create with a fresh name; no series or deduplication. A failure to record an event is logged
//! and never fails the provisioning it describes.

use k8s_openapi::api::core::v1::{ObjectReference, PersistentVolumeClaim};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Client};

/// The `reportingController` of every event.
pub const REPORTING_CONTROLLER: &str = "hearth.chat/nfs-provisioner";

/// The kinds of event this provisioner records on a claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimEvent {
    Provisioning,
    ProvisioningSucceeded,
    ProvisioningFailed,
}

impl ClaimEvent {
    pub fn reason(self) -> &'static str {
        match self {
            ClaimEvent::Provisioning => "Provisioning",
            ClaimEvent::ProvisioningSucceeded => "ProvisioningSucceeded",
            ClaimEvent::ProvisioningFailed => "ProvisioningFailed",
        }
    }

    fn type_(self) -> &'static str {
        match self {
            ClaimEvent::ProvisioningFailed => "Warning",
            _ => "Normal",
        }
    }
}

/// Records events in the claim's namespace.
#[derive(Clone)]
pub struct Recorder {
    client: Client,
    /// `reportingInstance`: this replica (the pod name).
    instance: String,
}

impl Recorder {
    pub fn new(client: Client, instance: impl Into<String>) -> Self {
        Recorder { client, instance: instance.into() }
    }

    /// Records `event` with `note` on `claim`; logs, and otherwise ignores, a failure.
    pub async fn claim(&self, claim: &PersistentVolumeClaim, event: ClaimEvent, note: &str) {
        let namespace = claim.metadata.namespace.clone().unwrap_or_else(|| "default".to_owned());
        let claim_name = claim.metadata.name.clone().unwrap_or_default();
        let now = Timestamp::now();
        let body = Event {
            metadata: ObjectMeta {
                name: Some(format!("{claim_name}.{:x}", now.as_nanosecond())),
                namespace: Some(namespace.clone()),
                ..ObjectMeta::default()
            },
            action: Some("Provision".to_owned()),
            event_time: Some(MicroTime(now)),
            note: Some(truncate(note, 1024)),
            reason: Some(event.reason().to_owned()),
            regarding: Some(ObjectReference {
                api_version: Some("v1".to_owned()),
                kind: Some("PersistentVolumeClaim".to_owned()),
                namespace: Some(namespace.clone()),
                name: Some(claim_name.clone()),
                uid: claim.metadata.uid.clone(),
                resource_version: claim.metadata.resource_version.clone(),
                ..ObjectReference::default()
            }),
            reporting_controller: Some(REPORTING_CONTROLLER.to_owned()),
            reporting_instance: Some(self.instance.clone()),
            type_: Some(event.type_().to_owned()),
            ..Event::default()
        };
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        if let Err(e) = api.create(&PostParams::default(), &body).await {
            tracing::warn!(claim = %format!("{namespace}/{claim_name}"), reason = event.reason(), error = %e,
                "could not record an event on the claim");
        }
    }
}

/// At most `max` bytes of `s`, cut at a character boundary (the API refuses longer notes).
fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn long_notes_are_cut_at_a_character_boundary() {
        let note = "é".repeat(600);
        let cut = super::truncate(&note, 1024);
        assert_eq!(cut.len(), 1024);
        assert_eq!(super::truncate(&"é".repeat(3), 5), "éé");
        assert_eq!(super::truncate("short", 1024), "short");
    }
}
