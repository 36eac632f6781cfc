//! Pods as the agent records them: what one CNI ADD created, how it is named,
//! and how it is written into (and rebuilt from) the OVS port's
//! external_ids, so a restarted agent finds every running pod again.
//!
//! A pod has two identities here, and they must stay two:
//! - [`PodKey`], the CNI attachment (container id + interface): what the
//!   runtime names in ADD/DEL/CHECK/GC. A pod may have several, and a
//!   recreated sandbox is a new one for the same pod.
//! - [`PodName`], the Kubernetes pod (`namespace/name`): what annotations,
//!   Events and operators name.
//!
//! Two more types describe a pod outside the agent, each for a consumer
//! that knows nothing of CNI: `ovs_flows::pipeline::LocalPod` (the
//! pipeline's input, derived from [`PodRecord`] whenever flows are computed)
//! and `ovs_flows::trace::TracePod` (the `/debug/pods` wire format).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use cni::spec::{CniResult, Interface, IpConfig, Route};

use crate::bandwidth::{Limits, RuntimeBandwidth};
use ovs_flows::Mac;

/// One attachment: a container's interface (CNI's identity of an ADD).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PodKey {
    pub container_id: String,
    pub ifname: String,
}

/// A Kubernetes pod, as errors, Events and annotations name it: `namespace/name`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PodName {
    pub namespace: String,
    pub name: String,
}

impl PodName {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> PodName {
        PodName { namespace: namespace.into(), name: name.into() }
    }
}

impl std::fmt::Display for PodName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Everything the agent created for one attachment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRecord {
    pub key: PodKey,
    pub namespace: String,
    pub name: String,
    /// `CNI_NETNS` at ADD time.
    pub netns: String,
    /// Host end of the veth, also the OVS port name.
    pub host_veth: String,
    pub ofport: u32,
    pub ip: Ipv4Addr,
    pub mac: Mac,
    /// `runtimeConfig.bandwidth` of the ADD (kept: annotations can change
    /// later, the runtime's value cannot).
    pub runtime_bandwidth: Option<RuntimeBandwidth>,
    /// The shaping installed now.
    pub limits: Limits,
}

/// external_ids keys on the pod's OVS Interface.
pub mod ids {
    pub const CONTAINER_ID: &str = "k8s-ovs-container-id";
    pub const IFNAME: &str = "k8s-ovs-ifname";
    pub const POD_NAMESPACE: &str = "k8s-ovs-pod-namespace";
    pub const POD_NAME: &str = "k8s-ovs-pod-name";
    pub const NETNS: &str = "k8s-ovs-netns";
    pub const IP: &str = "k8s-ovs-ip";
    pub const MAC: &str = "k8s-ovs-mac";
    pub const RUNTIME_BANDWIDTH: &str = "k8s-ovs-runtime-bandwidth";
}

impl PodRecord {
    /// The Kubernetes pod this attachment belongs to.
    pub fn pod_name(&self) -> PodName {
        PodName::new(self.namespace.clone(), self.name.clone())
    }

    /// The external_ids that let [`PodRecord::from_external_ids`] rebuild it.
    pub fn external_ids(&self) -> BTreeMap<String, String> {
        [
            (ids::CONTAINER_ID, self.key.container_id.clone()),
            (ids::IFNAME, self.key.ifname.clone()),
            (ids::POD_NAMESPACE, self.namespace.clone()),
            (ids::POD_NAME, self.name.clone()),
            (ids::NETNS, self.netns.clone()),
            (ids::IP, self.ip.to_string()),
            (ids::MAC, self.mac.to_string()),
        ]
        .into_iter()
        .chain(
            self.runtime_bandwidth
                .and_then(|b| serde_json::to_string(&b).ok())
                .map(|b| (ids::RUNTIME_BANDWIDTH, b)),
        )
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// Rebuilds a record from a port's name, ofport and external_ids; `None`
    /// for ports that are not pods of ours (vxlan0, tun0, foreign ports).
    pub fn from_external_ids(port: &str, ofport: u32, ext: &BTreeMap<String, String>) -> Option<PodRecord> {
        let get = |k: &str| ext.get(k).cloned();
        Some(PodRecord {
            key: PodKey { container_id: get(ids::CONTAINER_ID)?, ifname: get(ids::IFNAME)? },
            namespace: get(ids::POD_NAMESPACE).unwrap_or_default(),
            name: get(ids::POD_NAME).unwrap_or_default(),
            netns: get(ids::NETNS).unwrap_or_default(),
            host_veth: port.to_string(),
            ofport,
            ip: get(ids::IP)?.parse().ok()?,
            mac: get(ids::MAC)?.parse().ok()?,
            runtime_bandwidth: get(ids::RUNTIME_BANDWIDTH).and_then(|b| serde_json::from_str(&b).ok()),
            // Re-derived after a restart: read from the kernel, then the
            // annotations converge it.
            limits: Limits::NONE,
        })
    }

    /// The ADD result: host veth, the container's interface (with sandbox
    /// and MAC, which runtimes need to read the pod IP), the IP with the
    /// cluster prefix, and the default route through the node gateway.
    pub fn cni_result(&self, cluster_prefix: u8, gateway: Ipv4Addr, host_mac: Option<String>) -> CniResult {
        CniResult {
            cni_version: cni::spec::CURRENT_VERSION.to_string(),
            interfaces: vec![
                Interface { name: self.host_veth.clone(), mac: host_mac, mtu: None, sandbox: None },
                Interface {
                    name: self.key.ifname.clone(),
                    mac: Some(self.mac.to_string()),
                    mtu: None,
                    sandbox: Some(self.netns.clone()),
                },
            ],
            ips: vec![IpConfig {
                interface: Some(1),
                address: format!("{}/{cluster_prefix}", self.ip),
                gateway: Some(gateway.to_string()),
            }],
            routes: vec![Route { dst: "0.0.0.0/0".into(), gw: Some(gateway.to_string()) }],
            dns: Default::default(),
        }
    }
}

/// Every host-side pod veth starts with this (the netdev guard matches it).
pub const VETH_PREFIX: &str = "kov";

/// The host-side veth name: `kov` + 12 hex digits of a hash of the
/// attachment (15 characters, the kernel's limit), stable across restarts.
pub fn host_veth_name(key: &PodKey) -> String {
    // FNV-1a: tiny, deterministic, good enough to spread names.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.container_id.bytes().chain([0]).chain(key.ifname.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{VETH_PREFIX}{:012x}", h & 0xffff_ffff_ffff)
}

/// The pod MAC derived from its IP (`0a:58:` + the four address bytes, the
/// netlink module's convention), in the flow model's type.
pub fn mac_for_ip(ip: Ipv4Addr) -> Mac {
    Mac(crate::netlink::MacAddr::from_ipv4(ip).0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec() -> PodRecord {
        let key = PodKey { container_id: "c0ffee".into(), ifname: "eth0".into() };
        PodRecord {
            host_veth: host_veth_name(&key),
            key,
            namespace: "red".into(),
            name: "web-0".into(),
            netns: "/run/netns/x".into(),
            ofport: 7,
            ip: "172.11.0.5".parse().unwrap(),
            mac: mac_for_ip("172.11.0.5".parse().unwrap()),
            runtime_bandwidth: Some(RuntimeBandwidth {
                ingress_rate: 1000,
                ingress_burst: 2000,
                ..Default::default()
            }),
            limits: Limits::NONE,
        }
    }

    #[test]
    fn external_ids_round_trip() {
        let r = rec();
        let back = PodRecord::from_external_ids(&r.host_veth, 7, &r.external_ids());
        assert_eq!(back, Some(r));
        assert_eq!(PodRecord::from_external_ids("vxlan0", 1, &BTreeMap::new()), None);
    }

    #[test]
    fn names_are_stable_short_and_distinct() {
        let a = host_veth_name(&PodKey { container_id: "abc".into(), ifname: "eth0".into() });
        let b = host_veth_name(&PodKey { container_id: "abc".into(), ifname: "eth1".into() });
        assert_eq!(a.len(), 15);
        assert_ne!(a, b);
        assert_eq!(a, host_veth_name(&PodKey { container_id: "abc".into(), ifname: "eth0".into() }));
        assert_eq!(mac_for_ip("172.11.0.5".parse().unwrap()).to_string(), "0a:58:ac:0b:00:05");
    }

    #[test]
    fn result_names_the_sandbox_interface_and_gateway() {
        let r = rec().cni_result(16, "172.11.0.1".parse().unwrap(), None);
        assert_eq!(r.interfaces[1].sandbox.as_deref(), Some("/run/netns/x"));
        assert_eq!(r.ips[0].interface, Some(1));
        assert_eq!(r.ips[0].address, "172.11.0.5/16");
        assert_eq!(r.ips[0].gateway.as_deref(), Some("172.11.0.1"));
    }
}
