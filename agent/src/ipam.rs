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

pub use store::{IpamStore, LogState, Recovery, StoreError};

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

/// An address a running pod's port on the bridge holds (its external_ids).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub ip: Ipv4Addr,
    pub owner: Owner,
    /// The OVS port, to name it in reports.
    pub port: String,
}

/// What [`Allocator::take_claims`] changed and refused.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClaimReport {
    /// Addresses the allocator lacked, now held for their port's pod.
    pub added: Vec<Claim>,
    /// Allocations a port contradicted (the address held for another
    /// container, or the container holding another address), dropped for
    /// the port's: the port is what runs.
    pub replaced: Vec<(Ipv4Addr, Owner)>,
    /// Claims outside the subnet's pod range (another subnet's pod, a
    /// hand-edited port): ignored.
    pub outside: Vec<Claim>,
    /// A claim of an address (or by an owner) that an earlier port already
    /// claimed: the first kept, this one ignored.
    pub conflicts: Vec<(Claim, Claim)>,
}

impl ClaimReport {
    /// Whether the allocator had to change.
    pub fn changed(&self) -> bool {
        !self.added.is_empty() || !self.replaced.is_empty()
    }
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

    /// Makes every address a pod's port holds allocated to that pod, over
    /// whatever the allocator held: the ports are what runs, so after this no
    /// running pod's address can be handed out again. Claims are taken in
    /// order; the first claim of an address (or of an owner) wins.
    pub fn take_claims(&mut self, claims: impl IntoIterator<Item = Claim>) -> ClaimReport {
        let mut report = ClaimReport::default();
        let mut by_ip: BTreeMap<Ipv4Addr, Claim> = BTreeMap::new();
        let mut by_owner: BTreeMap<Owner, Claim> = BTreeMap::new();
        for c in claims {
            if !self.in_pod_range(c.ip) {
                report.outside.push(c);
                continue;
            }
            if let Some(first) = by_ip.get(&c.ip).or_else(|| by_owner.get(&c.owner)) {
                report.conflicts.push((first.clone(), c));
                continue;
            }
            by_ip.insert(c.ip, c.clone());
            by_owner.insert(c.owner.clone(), c.clone());
            if self.allocations.get(&c.ip) == Some(&c.owner) {
                continue;
            }
            if let Some(old) = self.allocations.remove(&c.ip) {
                report.replaced.push((c.ip, old));
            }
            if let Some(old_ip) = self.lookup(&c.owner) {
                self.allocations.remove(&old_ip);
                report.replaced.push((old_ip, c.owner.clone()));
            }
            self.allocations.insert(c.ip, c.owner.clone());
            report.added.push(c);
        }
        report
    }

    /// An allocator rebuilt from the ports alone (the log is lost): every
    /// claimed address allocated, the cursor after the highest, so the next
    /// pods get addresses no running pod holds nor, likely, held lately.
    pub fn rebuild(
        subnet: Ipv4Network,
        claims: impl IntoIterator<Item = Claim>,
    ) -> Result<(Allocator, ClaimReport), IpamError> {
        let mut a = Allocator::new(subnet)?;
        let report = a.take_claims(claims);
        a.last = a.allocations.keys().next_back().copied();
        Ok((a, report))
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

    fn claim(ip_s: &str, c: &str) -> Claim {
        Claim { ip: ip(ip_s), owner: owner(c), port: format!("kov-{c}") }
    }

    #[test]
    fn a_rebuild_allocates_every_claimed_address_and_never_hands_one_out() {
        let s = net("10.1.0.0/29"); // pods .2 ..= .6
        let (mut a, report) =
            Allocator::rebuild(s, [claim("10.1.0.2", "a"), claim("10.1.0.4", "b")]).expect("rebuild");
        assert_eq!(report.added.len(), 2);
        assert!(report.outside.is_empty() && report.conflicts.is_empty() && report.replaced.is_empty());
        assert_eq!(a.lookup(&owner("a")), Some(ip("10.1.0.2")));
        assert_eq!(a.lookup(&owner("b")), Some(ip("10.1.0.4")));
        // A repeated ADD of a running pod gets its own address back.
        assert_eq!(a.allocate(&owner("a")).expect("ip"), ip("10.1.0.2"));
        // New pods: after the highest claimed address, then wrapping past
        // the claimed ones; the running pods' addresses never come out.
        let got: Vec<Ipv4Addr> =
            ["c", "d", "e"].iter().map(|c| a.allocate(&owner(c)).expect("free address")).collect();
        assert_eq!(got, ["10.1.0.5", "10.1.0.6", "10.1.0.3"].map(ip));
        assert!(a.allocate(&owner("f")).is_err(), "full: no claimed address reused");
    }

    #[test]
    fn a_claim_outside_the_subnet_is_ignored_and_reported() {
        let s = net("10.1.0.0/24");
        let claims = [claim("10.2.0.5", "other"), claim("10.1.0.1", "gw"), claim("10.1.0.9", "a")];
        let (a, report) = Allocator::rebuild(s, claims).expect("rebuild");
        let outside: Vec<&str> = report.outside.iter().map(|c| c.owner.container_id.as_str()).collect();
        assert_eq!(outside, ["other", "gw"]);
        assert_eq!(a.allocations().map(|(ip, _)| ip).collect::<Vec<_>>(), [ip("10.1.0.9")]);
    }

    #[test]
    fn two_ports_claiming_one_address_keep_the_first_and_report_the_other() {
        let s = net("10.1.0.0/24");
        let claims = [claim("10.1.0.5", "a"), claim("10.1.0.5", "b"), claim("10.1.0.6", "c")];
        let (a, report) = Allocator::rebuild(s, claims).expect("rebuild");
        assert_eq!(report.conflicts.len(), 1);
        let (kept, ignored) = &report.conflicts[0];
        assert_eq!((kept.owner.container_id.as_str(), ignored.owner.container_id.as_str()), ("a", "b"));
        assert_eq!(a.lookup(&owner("a")), Some(ip("10.1.0.5")));
        assert_eq!(a.lookup(&owner("b")), None);
        assert_eq!(a.len(), 2);
        // One owner on two ports (a copied external_ids): the first too.
        let (a, report) =
            Allocator::rebuild(s, [claim("10.1.0.5", "a"), claim("10.1.0.7", "a")]).expect("rebuild");
        assert_eq!(report.conflicts.len(), 1);
        assert_eq!(a.lookup(&owner("a")), Some(ip("10.1.0.5")));
        assert_eq!(a.len(), 1);
    }

    #[test]
    fn claims_over_a_log_fill_what_it_lacks_and_override_what_it_contradicts() {
        let s = net("10.1.0.0/24");
        let mut a = Allocator::restore(
            s,
            [(ip("10.1.0.2"), owner("a")), (ip("10.1.0.3"), owner("gone")), (ip("10.1.0.8"), owner("b"))],
            Some(ip("10.1.0.8")),
        )
        .expect("restore");
        // a as logged; the log's .3 is c's on the bridge; b runs with .9; d
        // is missing from the log (its tail lost).
        let report = a.take_claims([
            claim("10.1.0.2", "a"),
            claim("10.1.0.3", "c"),
            claim("10.1.0.9", "b"),
            claim("10.1.0.20", "d"),
        ]);
        let added: Vec<&str> = report.added.iter().map(|c| c.owner.container_id.as_str()).collect();
        assert_eq!(added, ["c", "b", "d"]);
        assert_eq!(report.replaced, [(ip("10.1.0.3"), owner("gone")), (ip("10.1.0.8"), owner("b"))]);
        let held: Vec<(Ipv4Addr, &str)> =
            a.allocations().map(|(ip, o)| (ip, o.container_id.as_str())).collect();
        assert_eq!(
            held,
            [(ip("10.1.0.2"), "a"), (ip("10.1.0.3"), "c"), (ip("10.1.0.9"), "b"), (ip("10.1.0.20"), "d")]
        );
        assert_eq!(a.last_allocated(), Some(ip("10.1.0.8")), "the log's cursor is kept");
        // Consistent again: taking the same claims changes nothing.
        assert!(!a.take_claims([claim("10.1.0.2", "a")]).changed());
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
