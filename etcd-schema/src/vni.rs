//! VXLAN network identifiers (K8S-OVS "NetID"): which values mean what.

use std::ops::RangeInclusive;

/// NetID 0: the namespace is global (reaches and is reached by every namespace).
pub const GLOBAL_VNI: u32 = 0;
/// 1-9 are reserved by K8S-OVS and never handed out nor accepted on a record.
pub const RESERVED_VNIS: RangeInclusive<u32> = 1..=9;
/// The first VNI the allocator hands out.
pub const MIN_VNI: u32 = 10;
/// A VXLAN VNI has 24 bits.
pub const MAX_VNI: u32 = (1 << 24) - 1;

/// Why a NetID may not stand on a record, or `None` when it may.
pub fn validate_vni(vni: u64) -> Option<&'static str> {
    if vni > u64::from(MAX_VNI) {
        Some("out of range: a VNI has 24 bits (0 = global, 10..=16777215)")
    } else if RESERVED_VNIS.contains(&(vni as u32)) {
        Some("reserved: 1-9 are never used (0 = global, 10..=16777215)")
    } else {
        None
    }
}

/// True for the VNIs an allocator may hand to a namespace of its own.
pub fn is_allocatable_vni(vni: u32) -> bool {
    (MIN_VNI..=MAX_VNI).contains(&vni)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vni_ranges_follow_k8s_ovs() {
        assert_eq!(validate_vni(0), None);
        assert!(validate_vni(1).is_some());
        assert!(validate_vni(9).is_some());
        assert_eq!(validate_vni(10), None);
        assert_eq!(validate_vni(16_777_215), None);
        assert!(validate_vni(16_777_216).is_some());
        assert!(!is_allocatable_vni(GLOBAL_VNI));
        assert!(!is_allocatable_vni(9));
        assert!(is_allocatable_vni(10));
        assert!(is_allocatable_vni(MAX_VNI));
        assert!(!is_allocatable_vni(MAX_VNI + 1));
    }
}
