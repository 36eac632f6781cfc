//! IP address management inside the node's subnet.
//!
//! [`Allocator`] is the pure part: which address a container interface gets,
//! given what is already handed out. [`IpamStore`] (in `ipam/store.rs`) keeps
//! an allocator on disk so that an agent restart never hands an address out
//! twice.
//!
//! Rules:
//! - the gateway is the first usable address of the subnet (network + 1) and
//!   is never handed out; the network and broadcast addresses neither;
//! - one address per (container id, interface name); asking again returns the
//!   same address (a repeated CNI ADD);
//! - allocation walks round-robin from the last address handed out, like
//!   host-local: deterministic for a given state, and a just-freed address is
//!   not reused at once, so peers' stale ARP/conntrack entries for a deleted
//!   pod do not hit the next pod.

mod store;

use std::collections::{BTreeMap, HashSet};
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;

pub use store::{IpamStore, StoreError};

/// Who holds an address: a container's interface.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Owner {
    pub container_id: String,
    pub ifname: String,
}

impl Owner {
    pub fn new(container_id: impl Into<String>, ifname: impl Into<String>) -> Owner {
        Owner { container_id: container_id.into(), ifname: ifname.into() }
    }
}

/// Why an allocator cannot be built or an address not handed out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    #[error("subnet {0} is too small for pods: it needs a gateway and at least one more usable address (prefix <= /30)")]
    SubnetTooSmall(Ipv4Network),
    #[error("subnet {subnet} is full: all {capacity} pod addresses are allocated")]
    SubnetFull { subnet: Ipv4Network, capacity: u32 },
    #[error("address {ip} of {owner:?} is outside the pod range of subnet {subnet}")]
    OutOfRange { ip: Ipv4Addr, owner: Owner, subnet: Ipv4Network },
    #[error("address {ip} is allocated twice: to {first:?} and {second:?}")]
    DuplicateAddress { ip: Ipv4Addr, first: Owner, second: Owner },
    #[error("{owner:?} holds two addresses: {first} and {second}")]
    DuplicateOwner { owner: Owner, first: Ipv4Addr, second: Ipv4Addr },
}

/// The allocation state of one subnet. Pure: no I/O.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocator {
    subnet: Ipv4Network,
    allocations: BTreeMap<Ipv4Addr, Owner>,
    /// The last address handed out; the next search starts after it.
    last: Option<Ipv4Addr>,
}

impl Allocator {
    /// An empty allocator for `subnet` (its host bits are ignored).
    pub fn new(subnet: Ipv4Network) -> Result<Allocator, IpamError> {
        let subnet = Ipv4Network::new(subnet.network(), subnet.prefix())
            .map_err(|_| IpamError::SubnetTooSmall(subnet))?;
        if subnet.prefix() > 30 {
            return Err(IpamError::SubnetTooSmall(subnet));
        }
        Ok(Allocator { subnet, allocations: BTreeMap::new(), last: None })
    }

    /// Rebuilds an allocator from saved allocations, checking that they are
    /// consistent (in range, no address or owner twice).
    pub fn restore(
        subnet: Ipv4Network,
        allocations: impl IntoIterator<Item = (Ipv4Addr, Owner)>,
        last: Option<Ipv4Addr>,
    ) -> Result<Allocator, IpamError> {
        let mut a = Allocator::new(subnet)?;
        let mut owners: BTreeMap<Owner, Ipv4Addr> = BTreeMap::new();
        for (ip, owner) in allocations {
            if !a.in_pod_range(ip) {
                return Err(IpamError::OutOfRange { ip, owner, subnet: a.subnet });
            }
            if let Some(prev) = owners.insert(owner.clone(), ip) {
                return Err(IpamError::DuplicateOwner { owner, first: prev, second: ip });
            }
            if let Some(first) = a.allocations.insert(ip, owner.clone()) {
                return Err(IpamError::DuplicateAddress { ip, first, second: owner });
            }
        }
        // A cursor outside the range (hand-edited file) only moves where the
        // search starts; it can never cause a double allocation.
        a.last = last.filter(|ip| a.in_pod_range(*ip));
        Ok(a)
    }

    pub fn subnet(&self) -> Ipv4Network {
        self.subnet
    }

    /// The node gateway (tun0): the first usable address (the pipeline's
    /// rule, so the flows and the allocator agree on it).
    pub fn gateway(&self) -> Ipv4Addr {
        ovs_flows::pipeline::gateway_of(ovs_flows::Ipv4Prefix::new(
            self.subnet.network(),
            self.subnet.prefix(),
        ))
    }

    /// How many addresses pods can get (usable addresses minus the gateway).
    pub fn capacity(&self) -> u32 {
        self.last_pod_u32() - self.first_pod_u32() + 1
    }

    pub fn last_allocated(&self) -> Option<Ipv4Addr> {
        self.last
    }

    /// Every allocation, by address.
    pub fn allocations(&self) -> impl Iterator<Item = (Ipv4Addr, &Owner)> {
        self.allocations.iter().map(|(ip, o)| (*ip, o))
    }

    pub fn len(&self) -> usize {
        self.allocations.len()
    }

    pub fn is_empty(&self) -> bool {
        self.allocations.is_empty()
    }

    /// The address held by `owner`, if any.
    pub fn lookup(&self, owner: &Owner) -> Option<Ipv4Addr> {
        self.allocations.iter().find(|(_, o)| *o == owner).map(|(ip, _)| *ip)
    }

    /// Addresses held by any interface of a container.
    pub fn lookup_container(&self, container_id: &str) -> Vec<(Ipv4Addr, &Owner)> {
        self.allocations().filter(|(_, o)| o.container_id == container_id).collect()
    }

    /// The address for `owner`: the one it already holds, else the next free
    /// one after the last handed out (wrapping around).
    pub fn allocate(&mut self, owner: &Owner) -> Result<Ipv4Addr, IpamError> {
        if let Some(ip) = self.lookup(owner) {
            return Ok(ip);
        }
        let (first, end) = (self.first_pod_u32(), self.last_pod_u32());
        let start = match self.last.map(u32::from) {
            Some(l) if l < end => l + 1,
            _ => first,
        };
        let candidates = (start..=end).chain(first..start).map(Ipv4Addr::from);
        for ip in candidates {
            if let std::collections::btree_map::Entry::Vacant(free) = self.allocations.entry(ip) {
                free.insert(owner.clone());
                self.last = Some(ip);
                return Ok(ip);
            }
        }
        Err(IpamError::SubnetFull { subnet: self.subnet, capacity: self.capacity() })
    }

    /// Frees what `owner` holds; `None` when it held nothing (idempotent).
    pub fn release(&mut self, owner: &Owner) -> Option<Ipv4Addr> {
        let ip = self.lookup(owner)?;
        self.allocations.remove(&ip);
        Some(ip)
    }

    /// Frees every interface of a container (a CNI DEL without interface).
    pub fn release_container(&mut self, container_id: &str) -> Vec<Ipv4Addr> {
        let ips: Vec<Ipv4Addr> =
            self.allocations().filter(|(_, o)| o.container_id == container_id).map(|(ip, _)| ip).collect();
        for ip in &ips {
            self.allocations.remove(ip);
        }
        ips
    }

    /// Frees every allocation whose container is not in `keep` (leaks of
    /// containers that died without a DEL); returns what it freed.
    pub fn gc(&mut self, keep: &HashSet<String>) -> Vec<(Ipv4Addr, Owner)> {
        let leaked: Vec<Ipv4Addr> =
            self.allocations().filter(|(_, o)| !keep.contains(&o.container_id)).map(|(ip, _)| ip).collect();
        leaked.into_iter().filter_map(|ip| self.allocations.remove(&ip).map(|o| (ip, o))).collect()
    }

    fn first_pod_u32(&self) -> u32 {
        u32::from(self.gateway()) + 1
    }

    fn last_pod_u32(&self) -> u32 {
        u32::from(self.subnet.broadcast()) - 1
    }

    fn in_pod_range(&self, ip: Ipv4Addr) -> bool {
        (self.first_pod_u32()..=self.last_pod_u32()).contains(&u32::from(ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn net(s: &str) -> Ipv4Network {
        s.parse().expect("test subnet")
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().expect("test ip")
    }

    pub(super) fn owner(c: &str) -> Owner {
        Owner::new(c, "eth0")
    }

    #[test]
    fn gateway_is_first_usable_and_never_allocated() {
        let mut a = Allocator::new(net("10.1.0.0/29")).expect("alloc");
        assert_eq!(a.gateway(), ip("10.1.0.1"));
        assert_eq!(a.capacity(), 5); // .2 ..= .6
        let got: Vec<Ipv4Addr> =
            (0..5).map(|i| a.allocate(&owner(&format!("c{i}"))).expect("free address")).collect();
        assert_eq!(got, ["10.1.0.2", "10.1.0.3", "10.1.0.4", "10.1.0.5", "10.1.0.6"].map(ip));
    }

    #[test]
    fn host_bits_of_the_subnet_are_ignored() {
        let a = Allocator::new(net("10.1.0.77/24")).expect("alloc");
        assert_eq!(a.subnet(), net("10.1.0.0/24"));
        assert_eq!(a.gateway(), ip("10.1.0.1"));
    }

    #[test]
    fn repeated_allocation_for_the_same_owner_returns_the_same_address() {
        let mut a = Allocator::new(net("10.1.0.0/24")).expect("alloc");
        let first = a.allocate(&owner("c1")).expect("ip");
        a.allocate(&owner("c2")).expect("ip");
        assert_eq!(a.allocate(&owner("c1")).expect("ip"), first);
        assert_eq!(a.len(), 2);
        // Another interface of the same container is another owner.
        let other = a.allocate(&Owner::new("c1", "net1")).expect("ip");
        assert_ne!(other, first);
    }

    #[test]
    fn full_subnet_is_a_clear_error_and_release_makes_room() {
        let mut a = Allocator::new(net("10.1.0.0/30")).expect("alloc");
        assert_eq!(a.capacity(), 1);
        assert_eq!(a.allocate(&owner("c1")).expect("ip"), ip("10.1.0.2"));
        let err = a.allocate(&owner("c2")).expect_err("full");
        assert_eq!(err, IpamError::SubnetFull { subnet: net("10.1.0.0/30"), capacity: 1 });
        assert!(err.to_string().contains("is full"));
        assert_eq!(a.release(&owner("c1")), Some(ip("10.1.0.2")));
        assert_eq!(a.release(&owner("c1")), None, "release is idempotent");
        assert_eq!(a.allocate(&owner("c2")).expect("ip"), ip("10.1.0.2"));
    }

    #[test]
    fn too_small_subnets_are_rejected() {
        assert_eq!(Allocator::new(net("10.1.0.0/31")), Err(IpamError::SubnetTooSmall(net("10.1.0.0/31"))));
        assert!(Allocator::new(net("10.1.0.4/32")).is_err());
    }

    #[test]
    fn a_freed_address_is_not_reused_before_the_range_wraps() {
        let mut a = Allocator::new(net("10.1.0.0/29")).expect("alloc");
        let c1 = a.allocate(&owner("c1")).expect("ip");
        a.release(&owner("c1"));
        let c2 = a.allocate(&owner("c2")).expect("ip");
        assert_ne!(c1, c2);
        // Fill the rest; the search wraps around and finds the freed one.
        for i in 3..=5 {
            a.allocate(&owner(&format!("c{i}"))).expect("ip");
        }
        assert_eq!(a.allocate(&owner("c6")).expect("wraps to the freed address"), c1);
    }

    #[test]
    fn allocation_is_deterministic_for_a_given_state() {
        let mut a = Allocator::new(net("10.1.0.0/24")).expect("alloc");
        for i in 0..10 {
            a.allocate(&owner(&format!("c{i}"))).expect("ip");
        }
        a.release(&owner("c3"));
        let mut b = a.clone();
        assert_eq!(a.allocate(&owner("x")), b.allocate(&owner("x")));
    }

    #[test]
    fn gc_frees_only_containers_not_kept() {
        let mut a = Allocator::new(net("10.1.0.0/24")).expect("alloc");
        for c in ["a", "b", "c"] {
            a.allocate(&owner(c)).expect("ip");
        }
        a.allocate(&Owner::new("b", "net1")).expect("ip");
        let keep: HashSet<String> = ["b".to_string()].into();
        let freed = a.gc(&keep);
        let freed_owners: Vec<&str> = freed.iter().map(|(_, o)| o.container_id.as_str()).collect();
        assert_eq!(freed_owners, ["a", "c"]);
        assert_eq!(a.len(), 2);
        assert!(a.gc(&keep).is_empty(), "gc is idempotent");
    }

    #[test]
    fn release_container_frees_all_its_interfaces() {
        let mut a = Allocator::new(net("10.1.0.0/24")).expect("alloc");
        a.allocate(&Owner::new("c", "eth0")).expect("ip");
        a.allocate(&Owner::new("c", "net1")).expect("ip");
        a.allocate(&owner("d")).expect("ip");
        assert_eq!(a.release_container("c").len(), 2);
        assert_eq!(a.lookup_container("c").len(), 0);
        assert_eq!(a.len(), 1);
    }

    #[test]
    fn restore_rejects_inconsistent_state() {
        let s = net("10.1.0.0/24");
        let gw = Allocator::restore(s, [(ip("10.1.0.1"), owner("a"))], None);
        assert!(matches!(gw, Err(IpamError::OutOfRange { .. })), "{gw:?}");
        let outside = Allocator::restore(s, [(ip("10.2.0.5"), owner("a"))], None);
        assert!(matches!(outside, Err(IpamError::OutOfRange { .. })));
        let bcast = Allocator::restore(s, [(ip("10.1.0.255"), owner("a"))], None);
        assert!(matches!(bcast, Err(IpamError::OutOfRange { .. })));
        let dup_owner =
            Allocator::restore(s, [(ip("10.1.0.5"), owner("a")), (ip("10.1.0.6"), owner("a"))], None);
        assert!(matches!(dup_owner, Err(IpamError::DuplicateOwner { .. })));
        let dup_ip =
            Allocator::restore(s, [(ip("10.1.0.5"), owner("a")), (ip("10.1.0.5"), owner("b"))], None);
        assert!(matches!(dup_ip, Err(IpamError::DuplicateAddress { .. })));
    }

    #[test]
    fn restore_continues_after_the_saved_cursor() {
        let s = net("10.1.0.0/24");
        let mut a =
            Allocator::restore(s, [(ip("10.1.0.7"), owner("a"))], Some(ip("10.1.0.9"))).expect("restore");
        assert_eq!(a.allocate(&owner("b")).expect("ip"), ip("10.1.0.10"));
        let mut end = Allocator::restore(s, [], Some(ip("10.1.0.254"))).expect("restore");
        assert_eq!(end.allocate(&owner("b")).expect("wraps"), ip("10.1.0.2"));
    }
}
