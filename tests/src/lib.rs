//! The k8s-ovs lab: a cluster in a box on real Open vSwitch, real etcd and
//! real network namespaces, used by the end-to-end tests and the benchmarks.
//!
//! Start with [`Lab::start`]; see `lab.rs` for the topology.

pub mod cluster;
pub mod cmd;
pub mod etcd;
pub mod forge;
pub mod kube_api;
pub mod kube_proxy;
pub mod kubectl;
pub mod kubelet;
mod lab;
pub mod netns;
pub mod ovs;
pub mod pki;
pub mod policy_eval;
pub mod raw;
pub mod services;
pub mod sweep;
pub mod switch;
pub mod tenancy;
pub mod traffic;

pub use lab::{base_dir, Lab, LabConfig, Node, Pod, CTL_IP, DEFAULT_PREFIX, ETCD_PORT, FABRIC_PREFIX};
pub use netns::Netns;

#[doc(hidden)]
pub use anyhow;

/// Whether this process can build a lab (network namespaces, OVS, etcd):
/// root only.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The first line of every lab test: without root the test returns at once
/// with one line saying so, so a contributor's `cargo test` runs the unit
/// tests. With `K8S_OVS_LAB=required` (what CI sets) a missing root fails
/// the test instead: CI never passes by skipping.
#[macro_export]
macro_rules! needs_root {
    () => {
        if !$crate::is_root() {
            if std::env::var("K8S_OVS_LAB").as_deref() == Ok("required") {
                return Err($crate::anyhow::anyhow!(
                    "lab test at {}:{} needs root, and K8S_OVS_LAB=required",
                    file!(),
                    line!()
                ));
            }
            eprintln!(
                "skipped: lab test at {}:{} needs root (network namespaces, OVS, etcd)",
                file!(),
                line!()
            );
            return Ok(());
        }
    };
}
