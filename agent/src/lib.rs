//! The k8s-ovs node agent library: the building blocks the agent's loop
//! calls (IPAM, netlink, OVSDB) and, later, the loop itself.

pub mod cni_server;
pub mod etcd_source;
pub mod ipam;
pub mod metrics;
pub mod netlink;
pub mod ovsdb;
pub mod pods;
