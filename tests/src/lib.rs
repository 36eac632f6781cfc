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
mod lab;
pub mod netns;
pub mod ovs;
pub mod pki;
pub mod services;
pub mod sweep;
pub mod switch;
pub mod traffic;

pub use lab::{base_dir, Lab, LabConfig, Node, Pod, CTL_IP, DEFAULT_PREFIX, ETCD_PORT, FABRIC_PREFIX};
pub use netns::Netns;
