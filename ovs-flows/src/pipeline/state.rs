//! What a node's pipeline is computed from: everything the agent knows about
//! its node, its pods, the other nodes and the services. Plain data, no I/O.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use crate::flow::{Ipv4Prefix, Mac};

/// VNI 0: a global namespace reaches, and is reached by, every namespace.
pub const GLOBAL_VNI: u32 = 0;

/// Tenancy mode (etcd config `PluginName`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// `k8s-ovs-multitenant`: a pod reaches only its own VNI and global ones.
    #[default]
    MultiTenant,
    /// `k8s-ovs-subnet`: every pod reaches every pod (all traffic is VNI 0).
    SingleTenant,
}

/// A pod on this node, attached to the bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalPod {
    pub ofport: u32,
    pub ip: Ipv4Addr,
    pub mac: Mac,
    /// Kubernetes namespace; its VNI comes from [`NodeState::vnis`].
    pub namespace: String,
    /// Kubernetes pod name: NetworkPolicies select the pod by the labels
    /// the policy view has for (namespace, name).
    pub name: String,
    /// The OpenFlow meter policing what the pod sends (its egress limit on
    /// the userspace datapath), applied in SPOOF_GUARD; `None` = unpoliced.
    /// The agent adds the meter before any flow names it.
    pub egress_meter: Option<u32>,
}

/// Another node of the cluster, reached through the VXLAN tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteNode {
    /// Underlay address (the tunnel endpoint).
    pub ip: Ipv4Addr,
    /// Its pod subnet.
    pub subnet: Ipv4Prefix,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServicePort {
    pub protocol: Protocol,
    pub port: u16,
}

/// A ClusterIP service; reachable only from its own VNI or global pods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub ip: Ipv4Addr,
    pub namespace: String,
    pub ports: Vec<ServicePort>,
}

/// Everything the pipeline of one node depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeState {
    pub mode: Mode,
    /// This node's underlay address.
    pub node_ip: Ipv4Addr,
    /// This node's pod subnet.
    pub subnet: Ipv4Prefix,
    /// The gateway (tun0) address: the first address of `subnet`.
    pub gateway_ip: Ipv4Addr,
    /// tun0's MAC ([`Mac::for_ipv4`] of the gateway address; the agent sets it):
    /// frames the pipeline hands to the node kernel are addressed to it.
    pub gateway_mac: Mac,
    /// The whole pod network (etcd config `Network`).
    pub cluster_cidr: Ipv4Prefix,
    /// ClusterIP range (etcd config `ServiceNetwork`).
    pub service_cidr: Ipv4Prefix,
    /// Local pods by ofport.
    pub pods: BTreeMap<u32, LocalPod>,
    /// Other nodes by underlay address (this node is never among them).
    pub remote_nodes: BTreeMap<Ipv4Addr, RemoteNode>,
    /// Services by cluster IP.
    pub services: BTreeMap<Ipv4Addr, Service>,
    /// Namespace -> VNI (from etcd netnamespaces). A pod or service whose
    /// namespace has no VNI yet reaches nothing and is reached by nothing:
    /// its namespace id maps to no VNI (unknown means unreachable).
    pub vnis: BTreeMap<String, u32>,
    /// Namespace -> this node's id for it (see [`NodeState::assign_namespace_ids`]).
    pub namespace_ids: BTreeMap<String, u32>,
    /// Ids no namespace may take: after a restart, those the switch's kept
    /// service flows still name for namespaces not known yet (see
    /// [`super::recovered_namespace_ids`]).
    pub reserved_namespace_ids: BTreeSet<u32>,
    /// The cluster's NetworkPolicies with the pods and namespaces they
    /// select (shared: the agent swaps in a new view per change).
    pub policies: std::sync::Arc<crate::policy::PolicyView>,
}

impl NodeState {
    /// A node with no pods, peers or services yet.
    pub fn new(
        mode: Mode,
        node_ip: Ipv4Addr,
        subnet: Ipv4Prefix,
        cluster_cidr: Ipv4Prefix,
        service_cidr: Ipv4Prefix,
    ) -> NodeState {
        let gateway_ip = super::gateway_of(subnet);
        NodeState {
            mode,
            node_ip,
            subnet,
            gateway_ip,
            gateway_mac: Mac::for_ipv4(gateway_ip),
            cluster_cidr,
            service_cidr,
            pods: BTreeMap::new(),
            remote_nodes: BTreeMap::new(),
            services: BTreeMap::new(),
            vnis: BTreeMap::new(),
            namespace_ids: BTreeMap::new(),
            reserved_namespace_ids: BTreeSet::new(),
            policies: Default::default(),
        }
    }

    /// The namespaces this node's flows name: those of its pods and of the
    /// services.
    pub fn namespaces_in_use(&self) -> BTreeSet<&str> {
        self.pods
            .values()
            .map(|p| p.namespace.as_str())
            .chain(self.services.values().map(|s| s.namespace.as_str()))
            .collect()
    }

    /// Gives every namespace in use an id of this node and frees the ids of
    /// the others. Ids are sticky: a namespace keeps its id for as long as it
    /// is in use, so pod and service flows (which carry the id, not the VNI)
    /// never change when a VNI does, or when another namespace comes or goes.
    /// A new namespace gets the lowest free id from 1 (0 is "no namespace").
    pub fn assign_namespace_ids(&mut self) {
        self.namespace_ids = self.assigned_namespace_ids();
    }

    /// What [`NodeState::assign_namespace_ids`] would make of the ids,
    /// without changing them: the ids of the namespaces in use kept, the
    /// others dropped, and a new one given the lowest id free (reserved ids
    /// included) from 1.
    pub fn assigned_namespace_ids(&self) -> BTreeMap<String, u32> {
        let in_use = self.namespaces_in_use();
        let mut ids: BTreeMap<String, u32> = self
            .namespace_ids
            .iter()
            .filter(|(ns, _)| in_use.contains(ns.as_str()))
            .map(|(ns, id)| (ns.clone(), *id))
            .collect();
        let mut taken: BTreeSet<u32> = ids.values().chain(&self.reserved_namespace_ids).copied().collect();
        let mut next = 1;
        for ns in in_use {
            if ids.contains_key(ns) {
                continue;
            }
            while taken.contains(&next) {
                next += 1;
            }
            taken.insert(next);
            ids.insert(ns.to_string(), next);
        }
        ids
    }

    /// The VNI traffic of `namespace` carries: its own in multi-tenant mode,
    /// always 0 in single-tenant mode; `None` while it is unknown.
    pub fn vni_of(&self, namespace: &str) -> Option<u32> {
        match self.mode {
            Mode::SingleTenant => Some(GLOBAL_VNI),
            Mode::MultiTenant => self.vnis.get(namespace).copied(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> NodeState {
        let p = |a: [u8; 4], l| Ipv4Prefix::new(Ipv4Addr::from(a), l);
        NodeState::new(
            Mode::MultiTenant,
            Ipv4Addr::new(192, 0, 2, 1),
            p([10, 1, 0, 0], 24),
            p([10, 1, 0, 0], 16),
            p([10, 96, 0, 0], 12),
        )
    }

    fn pod(ofport: u32, namespace: &str) -> LocalPod {
        LocalPod {
            ofport,
            ip: Ipv4Addr::new(10, 1, 0, ofport as u8),
            mac: Mac::for_ipv4(Ipv4Addr::new(10, 1, 0, ofport as u8)),
            namespace: namespace.into(),
            name: format!("pod{ofport}"),
            egress_meter: None,
        }
    }

    #[test]
    fn namespace_ids_are_sticky_and_reused_only_when_free() {
        let mut s = node();
        s.pods.insert(3, pod(3, "red"));
        s.pods.insert(4, pod(4, "blue"));
        s.assign_namespace_ids();
        let (red, blue) = (s.namespace_ids["red"], s.namespace_ids["blue"]);
        assert_eq!(BTreeSet::from([red, blue]), BTreeSet::from([1, 2]));
        // A namespace sorting before both changes neither id.
        s.services.insert(
            Ipv4Addr::new(10, 96, 0, 10),
            Service { ip: Ipv4Addr::new(10, 96, 0, 10), namespace: "aaa".into(), ports: vec![] },
        );
        s.assign_namespace_ids();
        assert_eq!((s.namespace_ids["red"], s.namespace_ids["blue"], s.namespace_ids["aaa"]), (red, blue, 3));
        // A VNI change changes no id.
        s.vnis.insert("red".into(), 7);
        s.assign_namespace_ids();
        assert_eq!(s.namespace_ids["red"], red);
        // Blue's last pod goes: its id is freed, and the next new namespace takes it.
        s.pods.remove(&4);
        s.assign_namespace_ids();
        assert!(!s.namespace_ids.contains_key("blue"));
        s.pods.insert(5, pod(5, "green"));
        s.assign_namespace_ids();
        assert_eq!(s.namespace_ids["green"], blue);
        assert_eq!(s.namespace_ids.len(), 3);
    }
}
