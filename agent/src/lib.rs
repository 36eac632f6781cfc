//! The k8s-ovs node agent library: the building blocks the agent's loop
//! calls (IPAM, netlink, OVSDB) and, later, the loop itself.

pub mod ipam;
pub mod ovsdb;
