//! hearth-nfs-provisioner: provisions and deletes NFS-backed PersistentVolumes for any number of NFS shares from one
//! Deployment, and stands in for nfs-subdir-external-provisioner (its environment, StorageClass parameters and
//! volumes keep their meaning).
//!
//! Layout, bottom up:
//! - `config`: the shares and names, from a TOML file or nfs-subdir's environment, validated once;
//! - `class`: a StorageClass's parameters; `quantity`: request sizes as bytes;
//! - `path_pattern`: a volume's directory from `pathPattern`, normalised so it cannot leave the share;
//! - `share`: making, removing and archiving directories, refusing symlinks that lead out;
//! - `pv`: the PersistentVolume object for a claim; `events`: events on claims; `metrics`: counters;
//! - `reconcile`: provisioning a claim and deleting a released volume, against a `kube::Client`;
//! - `leader`: the Lease; `controller`: the watchers driving `reconcile` while leader; `health`: `/healthz`,
//!   `/readyz` and `/metrics`. The binary (`main.rs`) wires these together.

pub mod class;
pub mod config;
pub mod controller;
pub mod events;
pub mod health;
pub mod leader;
pub mod metrics;
pub mod path_pattern;
pub mod pv;
pub mod quantity;
pub mod reconcile;
pub mod share;
