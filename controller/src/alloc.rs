//! The two allocators: VNIs for namespaces and subnets for nodes. Both are
//! rebuilt from the records in etcd before every plan (etcd is the truth);
//! only the cursor survives between plans, so a freed value is reused last
//! (agents may still hold flows for it a moment longer).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use etcd_schema::{NetworkConfig, MAX_VNI, MIN_VNI};
use ipnetwork::Ipv4Network;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    #[error("no free VNI left in {MIN_VNI}..={MAX_VNI}")]
    VnisExhausted,
    #[error("no free /{prefix} left in {network}")]
    SubnetsExhausted { network: Ipv4Network, prefix: u8 },
}

/// Next-fit allocator over 10..=2^24-1.
#[derive(Debug, Clone)]
pub struct VniAllocator {
    in_use: BTreeSet<u32>,
    cursor: u32,
}

impl Default for VniAllocator {
    fn default() -> Self {
        VniAllocator { in_use: BTreeSet::new(), cursor: MIN_VNI }
    }
}

impl VniAllocator {
    /// Replaces the in-use set (values outside the allocatable range are ignored).
    pub fn reset_in_use(&mut self, in_use: impl IntoIterator<Item = u32>) {
        self.in_use = in_use.into_iter().filter(|v| (MIN_VNI..=MAX_VNI).contains(v)).collect();
    }

    pub fn is_in_use(&self, vni: u32) -> bool {
        self.in_use.contains(&vni)
    }

    /// Hands out the next free VNI at or after the cursor (wrapping once).
    pub fn allocate(&mut self) -> Result<u32, AllocError> {
        let start = self.cursor.clamp(MIN_VNI, MAX_VNI);
        let found = (start..=MAX_VNI).chain(MIN_VNI..start).find(|v| !self.in_use.contains(v));
        let vni = found.ok_or(AllocError::VnisExhausted)?;
        self.in_use.insert(vni);
        self.cursor = if vni == MAX_VNI { MIN_VNI } else { vni + 1 };
        Ok(vni)
    }
}

/// Allocator of the `HostSubnetLength`-sized blocks of `Network`.
#[derive(Debug, Clone)]
pub struct SubnetAllocator {
    network: Ipv4Network,
    prefix: u8,
    in_use: BTreeSet<Ipv4Addr>,
    cursor: u64,
}

impl SubnetAllocator {
    pub fn new(config: &NetworkConfig) -> SubnetAllocator {
        SubnetAllocator {
            network: config.network,
            prefix: config.host_subnet_prefix(),
            in_use: BTreeSet::new(),
            cursor: 0,
        }
    }

    pub fn reset_in_use(&mut self, in_use: impl IntoIterator<Item = Ipv4Network>) {
        self.in_use = in_use.into_iter().map(|n| n.network()).collect();
    }

    pub fn is_in_use(&self, subnet: Ipv4Network) -> bool {
        self.in_use.contains(&subnet.network())
    }

    fn block(&self, index: u64) -> Option<Ipv4Network> {
        let step = 1u64 << (32 - self.prefix);
        let base = u64::from(u32::from(self.network.network())) + index * step;
        let base = u32::try_from(base).ok()?;
        Ipv4Network::new(Ipv4Addr::from(base), self.prefix).ok()
    }

    pub fn allocate(&mut self) -> Result<Ipv4Network, AllocError> {
        let count = 1u64 << (self.prefix - self.network.prefix());
        let start = self.cursor % count;
        for index in (start..count).chain(0..start) {
            let Some(block) = self.block(index) else { continue };
            if !self.in_use.contains(&block.network()) {
                self.in_use.insert(block.network());
                self.cursor = index + 1;
                return Ok(block);
            }
        }
        Err(AllocError::SubnetsExhausted { network: self.network, prefix: self.prefix })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(network: &str, host_bits: u8) -> NetworkConfig {
        NetworkConfig {
            name: "k8ssdn".into(),
            network: network.parse().expect("cidr"),
            host_subnet_length: host_bits,
            service_network: "10.96.0.0/12".parse().expect("cidr"),
            plugin: etcd_schema::PluginName::MultiTenant,
        }
    }

    #[test]
    fn vnis_start_at_10_skip_used_and_are_reused_after_release() {
        let mut a = VniAllocator::default();
        a.reset_in_use([0, 11]);
        assert_eq!(a.allocate(), Ok(10));
        assert_eq!(a.allocate(), Ok(12));
        // 10 released: next-fit hands out 13 first, 10 only after wrapping.
        a.reset_in_use([11, 12]);
        assert_eq!(a.allocate(), Ok(13));
        a.cursor = MAX_VNI;
        assert_eq!(a.allocate(), Ok(MAX_VNI));
        assert_eq!(a.allocate(), Ok(10));
    }

    #[test]
    fn vnis_exhaust_cleanly() {
        let mut a = VniAllocator::default();
        a.reset_in_use(MIN_VNI..=MAX_VNI);
        assert_eq!(a.allocate(), Err(AllocError::VnisExhausted));
    }

    #[test]
    fn subnets_are_blocks_of_host_subnet_length() {
        let c = config("172.11.0.0/16", 10);
        let mut a = SubnetAllocator::new(&c);
        a.reset_in_use(["172.11.0.0/22".parse().expect("cidr")]);
        assert_eq!(a.allocate().expect("one").to_string(), "172.11.4.0/22");
        assert_eq!(a.allocate().expect("two").to_string(), "172.11.8.0/22");
        let mut small = SubnetAllocator::new(&config("10.1.0.0/24", 7));
        assert_eq!(small.allocate().expect("a").to_string(), "10.1.0.0/25");
        assert_eq!(small.allocate().expect("b").to_string(), "10.1.0.128/25");
        assert!(matches!(small.allocate(), Err(AllocError::SubnetsExhausted { .. })));
        small.reset_in_use(["10.1.0.128/25".parse().expect("cidr")]);
        assert_eq!(small.allocate().expect("freed").to_string(), "10.1.0.0/25");
    }
}
