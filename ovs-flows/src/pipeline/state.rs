//! What a node's pipeline is computed from: everything the agent knows about
//! its node, its pods, the other nodes and the services. Plain data, no I/O.

use std::collections::BTreeMap;
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
    /// namespace has no VNI yet gets no flows: unknown means unreachable.
    pub vnis: BTreeMap<String, u32>,
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
        }
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
