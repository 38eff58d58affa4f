//! Counters the provisioner exposes on `/metrics` in Prometheus' text format, written by hand: a handful of atomics
//! needs no metrics library.

use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Metrics {
    pub volumes_provisioned: AtomicU64,
    pub provisioning_failures: AtomicU64,
    pub volumes_deleted: AtomicU64,
    pub deletion_failures: AtomicU64,
    pub is_leader: AtomicBool,
}

impl Metrics {
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let counters = [
            ("nfs_provisioner_volumes_provisioned_total", "PersistentVolumes created", &self.volumes_provisioned),
            (
                "nfs_provisioner_provisioning_failures_total",
                "Failed provisioning attempts",
                &self.provisioning_failures,
            ),
            ("nfs_provisioner_volumes_deleted_total", "Released PersistentVolumes deleted", &self.volumes_deleted),
            ("nfs_provisioner_deletion_failures_total", "Failed deletion attempts", &self.deletion_failures),
        ];
        for (name, help, value) in counters {
            let _ =
                writeln!(out, "# HELP {name} {help}.\n# TYPE {name} counter\n{name} {}", value.load(Ordering::Relaxed));
        }
        let leader = u8::from(self.is_leader.load(Ordering::Relaxed));
        let _ = writeln!(
            out,
            "# HELP nfs_provisioner_is_leader 1 while this replica holds the lease.\n# TYPE nfs_provisioner_is_leader gauge\nnfs_provisioner_is_leader {leader}"
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_lists_every_counter_with_its_value() {
        let m = Metrics::default();
        Metrics::inc(&m.volumes_provisioned);
        Metrics::inc(&m.volumes_provisioned);
        m.is_leader.store(true, Ordering::Relaxed);
        let text = m.render();
        assert!(text.contains("\nnfs_provisioner_volumes_provisioned_total 2\n"), "{text}");
        assert!(text.contains("# TYPE nfs_provisioner_deletion_failures_total counter\n"), "{text}");
        assert!(text.contains("\nnfs_provisioner_is_leader 1\n"), "{text}");
    }
}
