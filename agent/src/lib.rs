//! The k8s-ovs node agent.
//!
//! - `run`: start-up and the one loop every input goes through;
//! - `dataplane`: the node state and every change to it (pods, etcd, services),
//!   each ending in one atomic flow bundle;
//! - inputs: `cni_server` (the CNI plugin's socket), `etcd_source`, `kube_source`,
//!   `policy_source` (NetworkPolicies, and the pods and namespaces they select);
//!   `kube_events` posts warnings on pods (an invalid bandwidth annotation);
//! - edges: `ovsdb` (bridge and ports), `netlink` (veths, addresses, routes),
//!   `ipam` (addresses kept on disk), `iptables` (masquerade, netdev guard);
//! - `bandwidth`: pod rate limits (annotations, runtimeConfig) enforced with tc;
//! - `pods` (how a pod is named and recorded), `metrics`, `config`;
//!   `traffic` (per-tenant traffic from the switch's flow counters);
//! - `http` (metrics, health, and the read-only `/debug/pods` and
//!   `/debug/trace` behind `k8s-ovs-ctl trace`), `unixctl` (ovs-appctl's protocol).

pub mod bandwidth;
pub mod change_log;
pub mod cni_server;
pub mod config;
pub mod dataplane;
pub mod etcd_source;
pub mod http;
pub mod ipam;
pub mod iptables;
pub mod kube_events;
pub mod kube_source;
pub mod metrics;
pub mod netlink;
pub mod ovsdb;
pub mod pods;
pub mod policy_source;
pub mod run;
pub mod timing;
pub mod traffic;
pub mod unixctl;
pub mod view_follow;
